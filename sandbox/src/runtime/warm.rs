//! Warming a fresh sandbox before its job: one run of a tiny built-in component, so the process
//! has touched the code and data a real execution needs (page faults, Wasmtime's signal stack,
//! the runtime) while it waits in the pool, not on the request path.

use std::time::Instant;

use alga_shared::limits::Limits;
use wasmtime::component::Component;

use super::guest::Prepared;
use super::host::DenyAll;
use super::output::Capture;

/// The warm-up component, built from `warm/warm.wat`.
pub const WARM_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/warm.wasm"));

/// Compiles the warm-up component (once, in the fork server: it is the runner's own code).
pub fn compile(prep: &Prepared) -> wasmtime::Result<Vec<u8>> {
    Component::new(&prep.engine, WARM_WASM)?.serialize()
}

/// Runs the warm-up component once; returns how long it took, in microseconds.
pub fn run(prep: &Prepared, rt: &tokio::runtime::Runtime, artifact: &[u8]) -> wasmtime::Result<u64> {
    let start = Instant::now();
    // SAFETY: `artifact` is the output of `compile` above, by this same engine, kept in the fork
    // server's memory and never exposed to anything else.
    let component = unsafe { Component::deserialize(&prep.engine, artifact) }?;
    let pre = prep.linker.instantiate_pre(&component)?;
    let capture = Capture::new(0);
    let mut store = prep.store(Limits::default(), Box::new(DenyAll), &capture);
    store.set_fuel(1_000_000)?;
    store.set_epoch_deadline(u64::MAX / 2);
    let value = rt.block_on(async {
        let instance = pre.instantiate_async(&mut store).await?;
        let run = instance.get_typed_func::<(), (u32,)>(&mut store, "run")?;
        let (value,) = run.call_async(&mut store, ()).await?;
        wasmtime::Result::<u32>::Ok(value)
    })?;
    debug_assert_eq!(value, 42);
    Ok(start.elapsed().as_micros() as u64)
}

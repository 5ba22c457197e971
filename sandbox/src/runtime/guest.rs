//! The per-execution store data and the linker built once per engine.

use alga_shared::bindings::Runner;
use alga_shared::limits::Limits;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::host::HostBridge;
use super::limiter::Budget;
use super::output::Capture;
use crate::sys;

/// What a guest's store holds: WASI state, the bridge to the host APIs, the memory budget.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) bridge: Box<dyn HostBridge>,
    pub(super) budget: Budget,
    pub(super) limits: Limits,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// An engine and the linker with every import of the world (and WASI) defined. Built once —
/// in the fork server before any sandbox is forked — and shared by every execution.
pub struct Prepared {
    pub engine: Engine,
    pub linker: Linker<GuestState>,
}

impl Prepared {
    pub fn new(engine: Engine) -> wasmtime::Result<Self> {
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Runner::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |s| s)?;
        Ok(Prepared { engine, linker })
    }

    /// A store for one execution. WASI gets no environment, arguments, stdin, directories or
    /// network; stdout and stderr go to `capture`; both random generators are seeded from the
    /// kernel here, in the process that runs the guest, never inherited across `fork`
    /// (09-measured.md: a seed inherited from the fork server gave every sandbox the same bytes).
    pub fn store(&self, limits: Limits, bridge: Box<dyn HostBridge>, capture: &Capture) -> Store<GuestState> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(capture.stdout())
            .stderr(capture.stderr())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .secure_random(StdRng::from_seed(sys::random_seed()))
            .insecure_random(StdRng::from_seed(sys::random_seed()))
            .insecure_random_seed(u128::from_le_bytes(sys::random_seed()[..16].try_into().unwrap_or([0; 16])));
        let state = GuestState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            bridge,
            budget: Budget::new(limits.memory_bytes),
            limits,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.budget);
        store
    }
}

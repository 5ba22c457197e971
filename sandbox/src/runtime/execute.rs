//! Running `handler` once.

use std::ptr::NonNull;
use std::time::{Duration, Instant};

use alga_shared::bindings::{ExecuteResponse, Runner, RunnerPre};
use alga_shared::channel::micros_since;
use alga_shared::limits::Limits;
use alga_shared::protocol::{ExecStats, ExecuteJob, Failure, Phases};
use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use super::guest::{GuestState, Prepared};
use super::host::{BridgeError, DenyAll, HostBridge, HostCallLimit, WrongReply};
use super::limiter::MemoryLimitExceeded;
use super::output::Capture;

/// Longest operator-facing failure message kept, in bytes.
const MAX_MESSAGE: usize = 4 * 1024;

/// Where a compiled artifact is.
#[derive(Debug, Clone, Copy)]
pub enum ArtifactBytes<'a> {
    /// A page-aligned mapping that stays valid and unmodified as long as the execution runs: the
    /// code runs in place, nothing is copied (a sandbox's mapping of the sealed memfd).
    InPlace(NonNull<[u8]>),
    /// Bytes that are copied into fresh code memory first.
    Copy(&'a [u8]),
}

/// Deserializes `artifact`, instantiates it and calls `handler` with `job.request`, under the
/// job's memory, fuel and epoch limits. The caller arranges for the engine's epoch to pass
/// `epoch_deadline` when the wall-clock deadline is reached.
///
/// # Safety
/// `artifact` must be the output of [`super::compile::compile`] by an engine with the same
/// fingerprint as `prep.engine`, unmodified since (Wasmtime's contract for `deserialize`: the
/// bytes are trusted native code); an `InPlace` region must stay mapped and unmodified as long as
/// the returned [`Remains`] lives (they hold the component that runs from it).
pub unsafe fn execute(
    prep: &Prepared,
    rt: &tokio::runtime::Runtime,
    artifact: ArtifactBytes<'_>,
    job: &ExecuteJob,
    bridge: Box<dyn HostBridge>,
    epoch_deadline: u64,
) -> (Result<ExecuteResponse, Failure>, ExecStats, Remains) {
    let start = Instant::now();
    let mut stats = ExecStats::default();
    // SAFETY: the caller's contract is this function's.
    let pre = match unsafe { load(prep, artifact, &mut stats.phases_us) } {
        Ok(pre) => pre,
        Err(failure) => return (Err(failure), stats, Remains::default()),
    };
    let (result, stats, mut remains) = run(prep, rt, &pre, job, bridge, epoch_deadline, (start, stats));
    remains._loaded = Some(pre);
    (result, stats, remains)
}

/// What an execution leaves behind: the instance's store (its memory) and, when the execution
/// loaded the artifact itself, the component. Dropping them unmaps their memory, page by page;
/// a sandbox answers first and exits without dropping them, so the answer does not wait for
/// that and the exit frees the whole address space in one pass.
#[derive(Default)]
#[must_use]
pub struct Remains {
    _store: Option<Store<GuestState>>,
    _loaded: Option<Loaded>,
}

/// Deserializes `artifact` and links it.
///
/// # Safety
/// As for [`execute`].
unsafe fn load(prep: &Prepared, artifact: ArtifactBytes<'_>, phases: &mut Phases) -> Result<Loaded, Failure> {
    let start = Instant::now();
    let loaded = match artifact {
        // SAFETY: the caller guarantees the region holds our compiler's output for this engine
        // configuration and stays mapped and unmodified while the component lives (in the
        // `Remains` that `execute` returns).
        ArtifactBytes::InPlace(region) => unsafe { Component::deserialize_raw(&prep.engine, region) }.or_else(|_| {
            // The kernel may refuse to make a memfd mapping executable (vm.memfd_noexec): copy.
            // SAFETY: as above; the same bytes, copied.
            unsafe { Component::deserialize(&prep.engine, region.as_ref()) }
        }),
        // SAFETY: the caller guarantees the bytes are our compiler's output for this engine
        // configuration, unmodified.
        ArtifactBytes::Copy(bytes) => unsafe { Component::deserialize(&prep.engine, bytes) },
    };
    let component = loaded.map_err(|e| Failure::Internal { message: message(&e, "loading the compiled artifact") })?;
    phases.load_us = micros_since(start);
    let mark = Instant::now();
    let pre = link(prep, &component).map_err(|e| Failure::InvalidComponent { message: message(&e, "linking") })?;
    phases.link_us = micros_since(mark);
    Ok(pre)
}

/// A component deserialized and linked: what instantiation starts from.
pub type Loaded = RunnerPre<GuestState>;

fn link(prep: &Prepared, component: &Component) -> wasmtime::Result<Loaded> {
    prep.linker.instantiate_pre(component).and_then(RunnerPre::new)
}

/// Loads and links the artifact in the file at `path`: Wasmtime then knows the file behind the
/// code and maps each instance's memory image copy-on-write from it, instead of copying the
/// data in.
///
/// # Safety
/// The file must hold the output of [`super::compile::compile`] by an engine with the same
/// fingerprint as `prep.engine`, and nothing may modify it while the component lives (a memfd
/// sealed against writes).
pub unsafe fn preload(prep: &Prepared, path: &str) -> wasmtime::Result<Loaded> {
    // SAFETY: the caller guarantees the file's contents, see above.
    let component = unsafe { Component::deserialize_file(&prep.engine, path) }?;
    // Now rather than at the first instantiation: the images that map from the file.
    component.initialize_copy_on_write_image()?;
    link(prep, &component)
}

/// An instance made before its job arrived (in a preloaded sandbox, while it waits): its store
/// holds placeholder limits and a bridge that answers nothing; [`call_instantiated`] sets the
/// job's before calling.
pub struct Instantiated {
    store: Store<GuestState>,
    runner: Runner,
    capture: Capture,
    /// Fuel and time the instantiation took; the job is charged both.
    fuel_used: u64,
    took: Duration,
}

impl Instantiated {
    /// How long instantiating took (charged to the job's deadline).
    pub fn took(&self) -> Duration {
        self.took
    }
}

/// Most fuel and time a guest's instantiation may take before its job: component start
/// functions are guest code, and a sandbox is preloaded for every execution, so this is kept
/// small; an instantiation that needs more happens with the job instead, under its limits.
const AHEAD_FUEL: u64 = 100_000_000;
const AHEAD_DEADLINE: Duration = Duration::from_millis(100);

/// Instantiates `pre` before its job: with a memory budget of `memory_bytes`, host calls answered
/// with their deny value (no tenant is known yet) and a deadline of [`AHEAD_DEADLINE`]. Guest
/// code may run (a component's start functions) but sees nothing of any tenant. On error the
/// caller instantiates at the job instead, which reports the failure under the job's limits.
pub fn instantiate_ahead(
    prep: &Prepared,
    rt: &tokio::runtime::Runtime,
    pre: &Loaded,
    memory_bytes: u64,
) -> wasmtime::Result<Instantiated> {
    let capture = Capture::new(Limits::default().max_output_bytes as usize);
    let limits = Limits { memory_bytes, ..Limits::default() };
    let mut store = prep.store(limits, Box::new(DenyAll), &capture);
    store.set_fuel(AHEAD_FUEL)?;
    store.set_epoch_deadline(1);
    store.epoch_deadline_trap();
    let start = Instant::now();
    crate::sys::arm_alarm(AHEAD_DEADLINE)?;
    let runner = rt.block_on(pre.instantiate_async(&mut store));
    // Disarmed; had it fired, the epoch moved on, and the job's deadline counts from there.
    crate::sys::arm_alarm(Duration::ZERO)?;
    let fuel_used = AHEAD_FUEL.saturating_sub(store.get_fuel()?);
    Ok(Instantiated { store, runner: runner?, capture, fuel_used, took: start.elapsed() })
}

/// Calls `handler` of an instance made ahead, under the job's memory, output, fuel and epoch
/// limits and with its host bridge.
pub fn call_instantiated(
    ahead: Instantiated,
    rt: &tokio::runtime::Runtime,
    job: &ExecuteJob,
    bridge: Box<dyn HostBridge>,
    epoch_deadline: u64,
    start: Instant,
) -> (Result<ExecuteResponse, Failure>, ExecStats, Remains) {
    let Instantiated { mut store, runner, capture, fuel_used, took: _ } = ahead;
    let mut stats = ExecStats::default();
    let state = store.data_mut();
    state.bridge = bridge;
    state.limits = job.limits;
    let within = state.budget.set_limit(job.limits.memory_bytes);
    capture.set_budget(job.limits.max_output_bytes as usize);
    // The fuel instantiating took counts, as it would have with the job.
    let fuel_left = job.limits.fuel.saturating_sub(fuel_used);
    let fuel_set = store.set_fuel(fuel_left).is_ok();
    store.set_epoch_deadline(epoch_deadline);
    store.epoch_deadline_trap();
    let result = if fuel_left == 0 {
        Err(Failure::FuelExhausted)
    } else if within {
        let called = Instant::now();
        let response = rt.block_on(runner.call_handler(&mut store, &job.request));
        stats.phases_us.call_us = micros_since(called);
        response.map_err(|e| classify(&e)).and_then(|r| check_response(r, job.limits.max_response_bytes))
    } else {
        // The instance already holds more than this job allows: as if instantiating had failed.
        Err(Failure::MemoryLimit)
    };
    finish(&store, &capture, job, fuel_set, start, &mut stats);
    (result, stats, Remains { _store: Some(store), _loaded: None })
}

/// Fills in what the store and the capture know once the call ended.
fn finish(
    store: &Store<GuestState>,
    capture: &Capture,
    job: &ExecuteJob,
    fuel_set: bool,
    start: Instant,
    stats: &mut ExecStats,
) {
    if fuel_set {
        stats.fuel_consumed = job.limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    }
    stats.memory_peak_bytes = store.data().budget.peak();
    let captured = capture.take();
    stats.stdout = captured.stdout;
    stats.stderr = captured.stderr;
    stats.output_truncated = captured.truncated;
    stats.run_us = micros_since(start);
}

/// Instantiates the loaded component and calls `handler` with `job.request`, under the job's
/// memory, fuel and epoch limits. `(start, stats)`: when the job arrived, and what loading it
/// measured.
pub fn run(
    prep: &Prepared,
    rt: &tokio::runtime::Runtime,
    pre: &Loaded,
    job: &ExecuteJob,
    bridge: Box<dyn HostBridge>,
    epoch_deadline: u64,
    (start, mut stats): (Instant, ExecStats),
) -> (Result<ExecuteResponse, Failure>, ExecStats, Remains) {
    let mark = Instant::now();
    let capture = Capture::new(job.limits.max_output_bytes as usize);
    let mut store = prep.store(job.limits, bridge, &capture);
    let fuel_set = store.set_fuel(job.limits.fuel).is_ok();
    store.set_epoch_deadline(epoch_deadline);
    store.epoch_deadline_trap();
    stats.phases_us.link_us += micros_since(mark);

    let mark = Instant::now();
    let result = rt.block_on(async {
        let runner = pre.instantiate_async(&mut store).await?;
        stats.phases_us.instantiate_us = micros_since(mark);
        let called = Instant::now();
        let response = runner.call_handler(&mut store, &job.request).await;
        stats.phases_us.call_us = micros_since(called);
        response
    });

    finish(&store, &capture, job, fuel_set, start, &mut stats);

    let result = match result {
        Ok(response) => check_response(response, job.limits.max_response_bytes),
        Err(e) => Err(classify(&e)),
    };
    (result, stats, Remains { _store: Some(store), _loaded: None })
}

fn check_response(response: ExecuteResponse, max_body: u64) -> Result<ExecuteResponse, Failure> {
    let len = response.body.as_ref().map_or(0, |b| b.len() as u64);
    if len > max_body {
        return Err(Failure::GuestTrap {
            kind: "response_too_large".into(),
            message: format!("response body of {len} bytes exceeds the limit of {max_body} bytes"),
        });
    }
    Ok(response)
}

/// Turns the error that ended a guest call into a typed failure.
pub fn classify(e: &wasmtime::Error) -> Failure {
    if e.downcast_ref::<MemoryLimitExceeded>().is_some() {
        return Failure::MemoryLimit;
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => Failure::Timeout,
            Trap::OutOfFuel => Failure::FuelExhausted,
            other => Failure::GuestTrap { kind: snake_case(&format!("{other:?}")), message: message(e, "") },
        };
    }
    if let Some(limit) = e.downcast_ref::<HostCallLimit>() {
        return Failure::GuestTrap { kind: "host_call_limit".into(), message: limit.to_string() };
    }
    if e.downcast_ref::<BridgeError>().is_some() || e.downcast_ref::<WrongReply>().is_some() {
        return Failure::Internal { message: message(e, "") };
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Failure::GuestTrap { kind: "exit".into(), message: format!("guest called exit({})", exit.0) };
    }
    Failure::GuestTrap { kind: "error".into(), message: message(e, "") }
}

fn message(e: &wasmtime::Error, context: &str) -> String {
    let mut text = if context.is_empty() { String::new() } else { format!("{context}: ") };
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    text.push_str(&chain.join(": "));
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_kinds_are_snake_case() {
        assert_eq!(snake_case("UnreachableCodeReached"), "unreachable_code_reached");
        assert_eq!(snake_case("StackOverflow"), "stack_overflow");
    }

    #[test]
    fn classification() {
        assert_eq!(classify(&wasmtime::Error::new(Trap::Interrupt)), Failure::Timeout);
        assert_eq!(classify(&wasmtime::Error::new(Trap::OutOfFuel)), Failure::FuelExhausted);
        assert_eq!(classify(&wasmtime::Error::new(MemoryLimitExceeded { limit: 1 })), Failure::MemoryLimit);
        match classify(&wasmtime::Error::new(Trap::UnreachableCodeReached)) {
            Failure::GuestTrap { kind, .. } => assert_eq!(kind, "unreachable_code_reached"),
            other => panic!("{other:?}"),
        }
    }
}

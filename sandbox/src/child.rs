//! The life of one sandbox process, from `clone` to `_exit`: wait for the fork server's go,
//! harden, report ready, run one job, report, exit. It never returns into the fork server's code
//! and runs no destructor of the state it inherited.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alga_shared::channel::{Job, SandboxEnd};
use alga_shared::protocol::{ExecStats, Failure, HostCall, HostReply, LogLevel, SandboxMode};

use crate::forkserver::Server;
use crate::harden::{self, Input};
use crate::runtime::host::{BridgeError, HostBridge};
use crate::runtime::{compile, execute, warm};
use crate::sys::{self, Mapping};

/// Exit codes of a sandbox that did not finish its job normally.
pub mod exit_code {
    /// The fork server went away before letting the child run.
    pub const ABORTED: i32 = 70;
    /// A hardening layer failed.
    pub const HARDENING: i32 = 71;
    /// The IPC channel failed (the supervisor went away or broke the protocol).
    pub const CHANNEL: i32 = 72;
    /// A panic in the runner's own code.
    pub const PANIC: i32 = 101;
}

/// Host calls from the guest, over the sandbox's IPC socket.
struct IpcBridge(Arc<Mutex<SandboxEnd>>);

impl IpcBridge {
    fn end(&self) -> std::sync::MutexGuard<'_, SandboxEnd> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HostBridge for IpcBridge {
    fn call(&mut self, call: HostCall) -> Result<HostReply, BridgeError> {
        self.end().call(call).map_err(|e| BridgeError(e.to_string()))
    }
    fn log(&mut self, level: LogLevel, message: String) -> Result<(), BridgeError> {
        self.end().log(level, message).map_err(|e| BridgeError(e.to_string()))
    }
}

/// What the child needs from the fork server's spawn request.
pub struct Spawn<'a> {
    pub ipc: OwnedFd,
    /// The compiled artifact to preload (execution sandboxes made for one extension).
    pub artifact: Option<OwnedFd>,
    pub go: OwnedFd,
    pub mode: SandboxMode,
    pub cgroups: &'a [String],
}

/// Entry point of the new process. Never returns.
pub fn main(server: &Server, spawn: Spawn<'_>) -> ! {
    // Die with the fork server. Set before waiting for "go": if the parent died before this line,
    // the go pipe's write end is closed and the read below returns 0, so we exit anyway.
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    let mut byte = [0u8; 1];
    let go = nix::unistd::read(&spawn.go, &mut byte);
    drop(spawn.go);
    if go != Ok(1) {
        sys::exit_now(exit_code::ABORTED);
    }
    // No panic message may go anywhere (the standard streams are closed below); the supervisor
    // learns about a panic from the channel closing and the exit code.
    std::panic::set_hook(Box::new(|_| {}));
    let code = std::panic::catch_unwind(AssertUnwindSafe(|| {
        run(server, spawn.ipc, spawn.artifact, spawn.mode, spawn.cgroups)
    }))
    .unwrap_or(exit_code::PANIC);
    sys::exit_now(code)
}

fn run(server: &Server, ipc: OwnedFd, artifact: Option<OwnedFd>, mode: SandboxMode, cgroups: &[String]) -> i32 {
    let plan = server.plan();
    let input = Input {
        plan,
        cgroups,
        namespaces: server.namespaces(),
        shared_namespaces: server.shared_namespaces(),
        uid: server.uid(),
        gid: server.gid(),
        privileged: server.privileged(),
        filter: server.filter(mode),
    };
    // An artifact to preload is opened again as a file, through the host's /proc (the fork
    // server's own root is empty): the working directory goes there now, while the descriptor
    // of /proc is still open, and back to the empty root right after loading.
    if artifact.is_some() && nix::unistd::fchdir(server.proc_dir()).is_err() {
        return exit_code::HARDENING;
    }
    let mut preloaded: Option<execute::Loaded> = None;
    let mut load = |fd: BorrowedFd<'_>| -> std::io::Result<()> {
        let path = format!("self/fd/{}", fd.as_raw_fd());
        // SAFETY: the supervisor sends only artifacts this runner's compile sandbox produced with
        // an engine of the same fingerprint, whose SHA-256 it checked before sealing the memfd
        // against any write, grow or shrink; the component keeps the file open and mapped.
        let loaded = unsafe { execute::preload(server.prepared(), &path) };
        std::env::set_current_dir("/")?;
        preloaded = Some(loaded.map_err(|e| std::io::Error::other(format!("loading the artifact: {e:#}")))?);
        Ok(())
    };
    let preload = artifact.map(|artifact| harden::Preload { artifact, load: &mut load });
    let hardened = match harden::harden(ipc, &input, preload) {
        Ok(h) => h,
        Err(e) => {
            if let Some(ipc) = e.ipc {
                let message = format!("hardening layer `{}` failed: {}", e.layer, e.source);
                let _ =
                    SandboxEnd::new(ipc, plan.max_frame).failed(Failure::Internal { message }, ExecStats::default());
            }
            return exit_code::HARDENING;
        }
    };
    // From here on every layer is in place; the first tenant byte arrives with the job.
    let mut end = SandboxEnd::new(hardened.ipc, plan.max_frame);
    // Warm up while waiting in the pool rather than on the request path.
    let mut layers = hardened.report;
    if mode == SandboxMode::Execute {
        match warm::run(server.prepared(), server.runtime(), server.warm_artifact()) {
            Ok(us) => layers.step_us[5] = u32::try_from(us).unwrap_or(u32::MAX),
            Err(e) => {
                let message = format!("warm-up: {e}");
                let _ = end.failed(Failure::Internal { message }, ExecStats::default());
                return exit_code::HARDENING;
            }
        }
    }
    // A preloaded artifact is instantiated now too, in the hardened sandbox, so the job only
    // calls; if that fails it is instantiated again with the job, which reports the failure.
    let mut ahead = preloaded.as_ref().and_then(|pre| {
        let memory = alga_shared::limits::Limits::default().memory_bytes;
        execute::instantiate_ahead(server.prepared(), server.runtime(), pre, memory).ok()
    });
    if end.ready(layers).is_err() {
        return exit_code::CHANNEL;
    }
    let job = match end.recv_job() {
        Ok(job) => job,
        Err(_) => return exit_code::CHANNEL,
    };
    let sent = match job {
        Job::Execute(job, None) => {
            let Some(pre) = preloaded else {
                let message = "an execution without its artifact, and none was preloaded".to_string();
                return report(&mut end, Err(Failure::Internal { message }), ExecStats::default());
            };
            let start = Instant::now();
            let ahead = ahead.take();
            // The time instantiating ahead took counts against the job's, as it would have with it.
            let charged = ahead.as_ref().map_or(Duration::ZERO, execute::Instantiated::took);
            let timeout = Duration::from_millis(job.limits.timeout_ms).saturating_sub(charged);
            let _ = sys::arm_alarm(timeout.max(Duration::from_millis(1)));
            let end = Arc::new(Mutex::new(end));
            let bridge = Box::new(IpcBridge(end.clone()));
            let (result, stats, remains) = match ahead {
                Some(instance) => execute::call_instantiated(instance, server.runtime(), &job, bridge, 1, start),
                None => {
                    let loaded = (start, ExecStats::default());
                    execute::run(server.prepared(), server.runtime(), &pre, &job, bridge, 1, loaded)
                }
            };
            let mut end = end.lock().unwrap_or_else(|p| p.into_inner());
            exit_keeping(report(&mut end, result, stats), (remains, pre));
        }
        Job::Execute(_, Some(_)) if preloaded.is_some() => {
            let message = "an execution with an artifact, but another one was preloaded".to_string();
            return report(&mut end, Err(Failure::Internal { message }), ExecStats::default());
        }
        Job::Execute(job, Some(artifact)) => {
            let map = match Mapping::new(artifact.as_fd(), job.artifact_len as usize) {
                Ok(m) => m,
                Err(e) => {
                    let message = format!("mapping the artifact: {e}");
                    return report(&mut end, Err(Failure::Internal { message }), ExecStats::default());
                }
            };
            drop(artifact);
            let _ = sys::arm_alarm(Duration::from_millis(job.limits.timeout_ms));
            let end = Arc::new(Mutex::new(end));
            let bridge = Box::new(IpcBridge(end.clone()));
            let artifact = execute::ArtifactBytes::InPlace(map.raw());
            // SAFETY: the artifact was produced by this runner's own compile sandbox with an
            // engine of the same fingerprint; the supervisor recorded its SHA-256 at compile time
            // and checked it before handing it over, as a memfd sealed against any write, grow or
            // shrink, so the bytes mapped here are exactly the checked ones, and `map` outlives the
            // call. This is Wasmtime's contract for `deserialize` (the bytes are trusted native
            // code).
            let (result, stats, remains) =
                unsafe { execute::execute(server.prepared(), server.runtime(), artifact, &job, bridge, 1) };
            let mut end = end.lock().unwrap_or_else(|p| p.into_inner());
            exit_keeping(report(&mut end, result, stats), (remains, map));
        }
        Job::Compile(job, wasm) => {
            let map = match Mapping::new(wasm.as_fd(), job.wasm_len as usize) {
                Ok(m) => m,
                Err(e) => {
                    let message = format!("mapping the component: {e}");
                    return report(&mut end, Err(Failure::Internal { message }), ExecStats::default());
                }
            };
            drop(wasm);
            match compile::compile(server.prepared(), map.bytes()) {
                Ok((artifact, _)) if artifact.len() as u64 > job.max_artifact_bytes => end.failed(
                    Failure::InvalidComponent {
                        message: format!(
                            "the compiled component is {} bytes, over the limit of {} bytes",
                            artifact.len(),
                            job.max_artifact_bytes
                        ),
                    },
                    ExecStats::default(),
                ),
                Ok((artifact, info)) => end.compiled(info, &artifact),
                Err(failure) => end.failed(failure, ExecStats::default()),
            }
            .map(|()| end.wait_closed())
        }
        Job::Probe(action) if plan.test_probes => return crate::probe::run(&action, &mut end),
        Job::Probe(_) => return exit_code::CHANNEL,
    };
    if sent.is_ok() { 0 } else { exit_code::CHANNEL }
}

/// Exits with `code` once an execution has answered, without dropping `kept` (the instance, the
/// component and its mapping) or anything else: the exit unmaps the whole address space in one
/// pass, where dropping them first would unmap region by region, for nothing.
fn exit_keeping<T>(code: i32, kept: T) -> ! {
    std::mem::forget(kept);
    sys::exit_now(code)
}

fn report(
    end: &mut SandboxEnd,
    result: Result<alga_shared::bindings::ExecuteResponse, Failure>,
    stats: ExecStats,
) -> i32 {
    let sent = match result {
        Ok(response) => end.done(response, stats),
        Err(failure) => end.failed(failure, stats),
    };
    if sent.is_err() {
        return exit_code::CHANNEL;
    }
    end.wait_closed();
    0
}

//! The supervisor's handle on one sandbox process: created through the fork server, checked
//! when it reports ready, killed through its pidfd and its cgroup, reaped in the background.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alga_shared::channel::SupervisorEnd;
use alga_shared::frame::FrameError;
use alga_shared::limits::Limits;
use alga_shared::protocol::{ExitStatus, Failure, HardeningReport, Level, Requirement, SandboxMode, SandboxMsg};
use tokio::sync::oneshot;

use crate::exec::artifacts::Artifact;
use crate::exec::cgroups::{CgroupSlots, HeldSlot};
use crate::exec::forkserver::{ForkServer, ForkServerError};
use crate::exec::settings::Settings;
use crate::ops::metrics::Metrics;

/// Why no sandbox could be created.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("creating a sandbox cgroup")]
    Cgroup(#[source] std::io::Error),
    #[error(transparent)]
    ForkServer(#[from] ForkServerError),
    #[error("sandbox channel")]
    Channel(#[from] FrameError),
    #[error("sandbox did not report ready within {0:?}")]
    NotReady(Duration),
    #[error("sandbox could not harden itself: {0}")]
    Hardening(String),
    #[error("sandbox broke the protocol before its first job: {0}")]
    Violation(String),
    #[error("sandbox died before reporting ready ({})", describe_exit(.0))]
    Died(Option<ExitStatus>),
    #[error("sandbox is not in the cgroup it was given ({0})")]
    NotInCgroup(String),
    #[error("the runner is shutting down: no new sandbox")]
    Stopping,
}

/// What creating, killing and reaping sandboxes takes: the settings, the fork server, the cgroup
/// slots, the runtime background tasks (reapers) run on, and where their figures go.
pub struct Spawner {
    pub handle: tokio::runtime::Handle,
    pub settings: Settings,
    pub fork: Arc<ForkServer>,
    pub cgroups: CgroupSlots,
    pub counters: Counters,
    /// The runner's metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// Turns true once, at shutdown: running executions end with the `shutdown` outcome.
    pub stop: tokio::sync::watch::Sender<bool>,
    /// Sandboxes created and not yet reaped.
    pub live: Arc<Live>,
}

impl Spawner {
    /// Ends every running execution (outcome `shutdown`); their sandboxes are killed and reaped.
    pub fn stop_executions(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until every sandbox created so far has been reaped (its exit reported by the fork
    /// server, its slot returned), at most `limit`; false when some were not.
    pub async fn all_reaped(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.live.idle.notified();
            if self.live.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                return false;
            }
        }
    }
}

/// How many sandboxes are alive or not yet reaped: each [`Sandbox`] holds a [`LiveGuard`].
#[derive(Debug, Default)]
pub struct Live {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One sandbox's share of [`Live`]; gives it back when the sandbox is dropped (reaped).
struct LiveGuard(Arc<Live>);

impl LiveGuard {
    fn new(live: &Arc<Live>) -> Self {
        live.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        LiveGuard(live.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Counters of events worth an operator's attention.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sandboxes that reported their result and then did not exit cleanly (e.g. seccomp killed
    /// them on the way out).
    pub unclean_exits: std::sync::atomic::AtomicU64,
}

/// One live, hardened sandbox waiting for (or running) its only job.
pub struct Sandbox {
    pub pid: u32,
    pidfd: OwnedFd,
    pub end: SupervisorEnd,
    exit: Option<oneshot::Receiver<ExitStatus>>,
    /// The exit status once known.
    status: Option<ExitStatus>,
    pub slot: Option<HeldSlot>,
    pub layers: HardeningReport,
    pub mode: SandboxMode,
    pub ready_at: Instant,
    /// Set once the sandbox reported its result: from then on it must exit with code 0.
    pub finished: bool,
    /// The memory limit its cgroup has now, in bytes (set again only when a job needs another).
    memory_limit: Option<u64>,
    /// The cgroup's OOM-kill counter when the sandbox was created: a higher count at its death
    /// means the OOM killer ended it. Read off the request path.
    pub oom_baseline: Option<u64>,
    /// The SHA-256 of the artifact it preloaded: it takes a job for that artifact only, sent
    /// without the memfd.
    pub preloaded: Option<String>,
    _live: LiveGuard,
}

impl Sandbox {
    /// Creates and hardens a sandbox; returns once it reported ready and was checked.
    pub async fn create(spawner: &Arc<Spawner>, mode: SandboxMode) -> Result<Sandbox, SpawnError> {
        Sandbox::create_with(spawner, mode, None).await
    }

    /// Creates and hardens an execution sandbox that loaded `artifact` while hardening
    /// (see [`alga_shared::protocol::ForkRequest::Spawn`]); it runs only a job for that artifact.
    pub async fn create_preloaded(spawner: &Arc<Spawner>, artifact: &Artifact) -> Result<Sandbox, SpawnError> {
        Sandbox::create_with(spawner, SandboxMode::Execute, Some(artifact)).await
    }

    async fn create_with(
        spawner: &Arc<Spawner>,
        mode: SandboxMode,
        preload: Option<&Artifact>,
    ) -> Result<Sandbox, SpawnError> {
        let started = Instant::now();
        let sandbox = Sandbox::create_timed(spawner, mode, preload).await;
        if sandbox.is_ok() {
            let runner = &spawner.metrics.runner;
            let histogram =
                if preload.is_some() { &runner.preload_duration_seconds } else { &runner.spawn_duration_seconds };
            histogram.observe(started.elapsed().as_secs_f64());
        }
        sandbox
    }

    async fn create_timed(
        spawner: &Arc<Spawner>,
        mode: SandboxMode,
        preload: Option<&Artifact>,
    ) -> Result<Sandbox, SpawnError> {
        // Counted from before the slot is taken, so shutdown waits for creations under way too;
        // none starts once the runner is stopping.
        let live = LiveGuard::new(&spawner.live);
        if *spawner.stop.borrow() {
            return Err(SpawnError::Stopping);
        }
        let slot = spawner.cgroups.acquire().map_err(SpawnError::Cgroup)?;
        // The usual limit, set before the process exists: a reused slot still has its last
        // job's, and a preloaded sandbox runs guest code (start functions) before it is ready.
        let memory = match mode {
            SandboxMode::Execute => Limits::default().memory_bytes + spawner.settings.runtime_overhead_bytes,
            SandboxMode::Compile => spawner.settings.compile_memory_bytes,
        };
        let memory_limit = slot.as_ref().and_then(|held| set_memory(spawner, held, memory));
        let dirs: Vec<String> =
            slot.iter().flat_map(|s| s.dirs.iter()).map(|d| d.to_string_lossy().into_owned()).collect();
        let procs = slot.as_ref().map(|s| s.procs()).unwrap_or_default();
        let spawned = match spawner.fork.spawn(mode, dirs, &procs, preload.map(Artifact::fd)).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(slot) = slot {
                    spawner.cgroups.release(slot);
                }
                return Err(e.into());
            }
        };
        let end = SupervisorEnd::new(spawned.ipc, spawner.settings.plan.max_frame).map_err(FrameError::Io)?;
        let mut sandbox = Sandbox {
            pid: spawned.pid,
            pidfd: spawned.pidfd,
            end,
            exit: Some(spawned.exit),
            status: None,
            slot,
            layers: placeholder_report(),
            mode,
            ready_at: Instant::now(),
            finished: false,
            memory_limit,
            oom_baseline: None,
            preloaded: preload.map(|a| a.sha256.clone()),
            _live: live,
        };
        match sandbox.await_ready(spawner).await {
            Ok(layers) => {
                sandbox.layers = layers;
                if let Some(slot) = &sandbox.slot {
                    sandbox.oom_baseline = Some(spawner.cgroups.oom_kills(slot));
                }
                sandbox.ready_at = Instant::now();
                Ok(sandbox)
            }
            Err(SpawnError::Channel(FrameError::Closed)) => {
                // It died before reporting: say how.
                let status = sandbox.wait_exit(spawner, Duration::from_secs(2)).await;
                sandbox.reap(spawner);
                Err(SpawnError::Died(status))
            }
            Err(e) => {
                sandbox.kill(spawner);
                sandbox.reap(spawner);
                Err(e)
            }
        }
    }

    async fn await_ready(&self, spawner: &Spawner) -> Result<HardeningReport, SpawnError> {
        let timeout = spawner.settings.ready_timeout;
        let first = tokio::time::timeout(timeout, self.end.recv()).await.map_err(|_| SpawnError::NotReady(timeout))?;
        let layers = match first {
            Ok((SandboxMsg::Ready { layers }, _)) => layers,
            Ok((SandboxMsg::Failed { failure: Failure::Internal { message }, .. }, _)) => {
                return Err(SpawnError::Hardening(message));
            }
            Ok((other, _)) => {
                return Err(SpawnError::Violation(format!("sent {} instead of Ready", msg_name(&other))));
            }
            Err(e) => return Err(e.into()),
        };
        check_layers(&layers, spawner)?;
        if let Some(slot) = &self.slot {
            // The sandbox's own report is informational; the supervisor checks membership itself.
            let members = spawner.cgroups.pids(slot);
            if !members.contains(&self.pid) {
                return Err(SpawnError::NotInCgroup(format!("{} lists {members:?}", slot.name)));
            }
        }
        Ok(layers)
    }

    /// Sets the cgroup memory limit to `bytes` unless it already is.
    pub fn limit_memory(&mut self, spawner: &Spawner, bytes: u64) {
        let Some(slot) = &self.slot else { return };
        if self.memory_limit == Some(bytes) {
            return;
        }
        if let Some(set) = set_memory(spawner, slot, bytes) {
            self.memory_limit = Some(set);
        }
    }

    /// True when the cgroup's OOM killer struck since the sandbox was created.
    pub fn oom_killed(&self, spawner: &Spawner) -> bool {
        match (&self.slot, self.oom_baseline) {
            (Some(slot), Some(before)) => spawner.cgroups.oom_kills(slot) > before,
            _ => false,
        }
    }

    /// Kills the sandbox (through its pidfd, which cannot hit a recycled pid) and anything in
    /// its cgroup.
    pub fn kill(&self, spawner: &Spawner) {
        let _ = alga_sandbox::sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        if let Some(slot) = &self.slot {
            spawner.cgroups.kill(slot);
        }
    }

    /// True when the process already exited (e.g. killed from outside while pooled).
    pub fn has_exited(&mut self) -> bool {
        match &mut self.exit {
            Some(rx) => !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            None => true,
        }
    }

    /// Waits (at most `limit`) for the fork server to report the exit; kills the sandbox if it
    /// is still running after `limit`.
    pub async fn wait_exit(&mut self, spawner: &Spawner, limit: Duration) -> Option<ExitStatus> {
        let Some(mut rx) = self.exit.take() else {
            return self.status;
        };
        self.status = match tokio::time::timeout(limit, &mut rx).await {
            Ok(status) => status.ok(),
            Err(_) => {
                self.kill(spawner);
                tokio::time::timeout(Duration::from_secs(5), rx).await.ok().and_then(Result::ok)
            }
        };
        self.status
    }

    /// Hands the sandbox to a background task that waits for its exit and returns its cgroup
    /// slot. Its process was killed or is about to exit by itself.
    pub fn reap(mut self, spawner: &Arc<Spawner>) {
        let spawner = spawner.clone();
        spawner.handle.clone().spawn(async move {
            // A sandbox with a result waits for this before it exits (see `SandboxEnd::wait_closed`).
            self.end.close();
            let status = self.wait_exit(&spawner, Duration::from_secs(10)).await;
            if status.is_none() {
                tracing::error!(pid = self.pid, "sandbox exit was never reported");
            } else if self.finished && status != Some(ExitStatus::Code(0)) {
                spawner.counters.unclean_exits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(pid = self.pid, exit = %describe_exit(&status), "sandbox reported its result, then did not exit cleanly");
            }
            if let Some(slot) = self.slot.take() {
                let cgroups = spawner.clone();
                let _ = tokio::task::spawn_blocking(move || cgroups.cgroups.release(slot)).await;
            }
        });
    }
}

/// Sets the memory limit of `slot`; returns it when set (a failure is logged: the sandbox keeps
/// Wasmtime's own limit).
fn set_memory(spawner: &Spawner, slot: &HeldSlot, bytes: u64) -> Option<u64> {
    match spawner.cgroups.set_memory(slot, bytes) {
        Ok(()) => Some(bytes),
        Err(e) => {
            tracing::warn!(error = %e, "setting the sandbox memory limit failed");
            None
        }
    }
}

/// Refuses a sandbox whose hardening is weaker than the plan requires.
fn check_layers(layers: &HardeningReport, spawner: &Spawner) -> Result<(), SpawnError> {
    let plan = &spawner.settings.plan;
    if layers.seccomp.level != Level::Full && !plan.seccomp_log_only {
        return Err(SpawnError::Hardening(format!("seccomp not enforced: {}", layers.seccomp.detail)));
    }
    if layers.credentials.level != Level::Full {
        return Err(SpawnError::Hardening(format!("credentials: {}", layers.credentials.detail)));
    }
    if plan.landlock == Requirement::Required && layers.landlock.level != Level::Full {
        return Err(SpawnError::Hardening(format!("landlock required: {}", layers.landlock.detail)));
    }
    Ok(())
}

fn placeholder_report() -> HardeningReport {
    use alga_shared::protocol::{LayerStatus, NamespaceSet};
    let none = || LayerStatus::missing("not reported yet");
    HardeningReport {
        hygiene: none(),
        cgroup: none(),
        namespaces: none(),
        namespace_set: NamespaceSet::default(),
        credentials: none(),
        landlock: none(),
        landlock_abi: 0,
        seccomp: none(),
        step_us: [0; 6],
    }
}

/// A message's variant name, for operator-facing details.
pub fn msg_name(m: &SandboxMsg) -> &'static str {
    match m {
        SandboxMsg::Ready { .. } => "Ready",
        SandboxMsg::HostCall { .. } => "HostCall",
        SandboxMsg::Log { .. } => "Log",
        SandboxMsg::Done { .. } => "Done",
        SandboxMsg::Failed { .. } => "Failed",
        SandboxMsg::Compiled { .. } => "Compiled",
        SandboxMsg::ArtifactChunk { .. } => "ArtifactChunk",
    }
}

/// Describes an exit status for operators, naming the exit codes a sandbox uses.
pub fn describe_exit(status: &Option<ExitStatus>) -> String {
    use alga_sandbox::child::exit_code;
    match status {
        None => "exit status unknown".into(),
        Some(ExitStatus::Code(exit_code::ABORTED)) => "exit code 70: the fork server went away".into(),
        Some(ExitStatus::Code(exit_code::HARDENING)) => "exit code 71: a hardening layer failed".into(),
        Some(ExitStatus::Code(exit_code::CHANNEL)) => "exit code 72: its IPC channel failed".into(),
        Some(ExitStatus::Code(exit_code::PANIC)) => "exit code 101: the runner panicked inside the sandbox".into(),
        Some(ExitStatus::Code(c)) => format!("exit code {c}"),
        Some(ExitStatus::Signal { signal, syscall: Some(nr) }) if *signal == libc::SIGSYS => {
            format!("killed by seccomp for {}", alga_shared::syscalls::describe(*nr))
        }
        Some(ExitStatus::Signal { signal, .. }) => format!("killed by signal {signal}"),
    }
}

//! The supervisor's side of the fork server: starting it (by exec, so it is single-threaded from
//! birth) and asking it for sandboxes.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alga_shared::channel::ForkClientEnd;
use alga_shared::frame::{DEFAULT_MAX_FRAME, FrameError};
use alga_shared::protocol::{ExitStatus, ForkEvent, NamespaceSet, SandboxMode, SandboxPlan};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::sync::oneshot;

/// The argument that makes the `alga-runner` binary run as the fork server.
pub const FORK_SERVER_ARG: &str = "__fork-server";
/// The descriptor number of the control socket in the fork server.
const CONTROL_FD: i32 = 3;
/// How long the fork server may take to load the engine and report.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ForkServerError {
    #[error("starting the fork server process")]
    Exec(#[source] io::Error),
    #[error("fork server did not start: {0}")]
    Start(String),
    #[error("fork server channel")]
    Channel(#[from] FrameError),
    #[error("the fork server is gone")]
    Gone,
    #[error("the fork server could not create a sandbox: {0}")]
    Spawn(String),
}

/// A fork server process that was started but not yet told how to harden sandboxes.
pub struct Process {
    child: std::process::Child,
    control: OwnedFd,
}

impl Process {
    /// Starts `/proc/self/exe __fork-server`. Call this from a thread that lives as long as the
    /// service (the main thread): the fork server dies when the *thread* that started it exits
    /// (`PR_SET_PDEATHSIG` is per thread, 09-measured.md finding 9).
    pub fn start() -> Result<Self, ForkServerError> {
        Self::start_with(std::path::Path::new("/proc/self/exe"))
    }

    /// Like [`Process::start`], with the `alga-runner` binary at `exe` (tests and benchmarks that
    /// drive the library from their own process use the real binary as the fork server).
    pub fn start_with(exe: &std::path::Path) -> Result<Self, ForkServerError> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| ForkServerError::Exec(e.into()))?;
        let parent = std::process::id() as libc::pid_t;
        let theirs_raw = theirs.as_raw_fd();
        let mut cmd = Command::new(exe);
        cmd.arg(FORK_SERVER_ARG).env_clear().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, getppid, dup2, _exit); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The supervisor may already have died before PDEATHSIG was set.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                // dup2 clears CLOEXEC on the new descriptor, so the control socket survives exec.
                if libc::dup2(theirs_raw, CONTROL_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(ForkServerError::Exec)?;
        drop(theirs);
        Ok(Process { child, control: ours })
    }
}

/// A sandbox process the fork server created.
pub struct Spawned {
    pub pid: u32,
    pub pidfd: OwnedFd,
    /// The supervisor's end of the sandbox's IPC socket.
    pub ipc: OwnedFd,
    /// Resolves with the exit status once the fork server has reaped it.
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// What a spawn request resolves to: the pid, its pidfd and the receiver of its exit status.
type SpawnAnswer = Result<(u32, OwnedFd, oneshot::Receiver<ExitStatus>), String>;

struct Waiters {
    spawns: HashMap<u64, oneshot::Sender<SpawnAnswer>>,
    exits: HashMap<u32, oneshot::Sender<ExitStatus>>,
}

/// A running fork server.
pub struct ForkServer {
    end: Arc<ForkClientEnd>,
    waiters: Arc<Mutex<Waiters>>,
    alive: Arc<AtomicBool>,
    next_token: AtomicU64,
    fingerprint: String,
    namespaces: NamespaceSet,
    pid: u32,
    child: Mutex<std::process::Child>,
}

impl ForkServer {
    /// Sends the hardening plan, waits for the fork server to report, and starts the task that
    /// dispatches its events. Call inside a Tokio runtime.
    pub async fn connect(process: Process, plan: SandboxPlan) -> Result<Arc<Self>, ForkServerError> {
        let end = Arc::new(ForkClientEnd::new(process.control, DEFAULT_MAX_FRAME).map_err(FrameError::Io)?);
        end.start(plan).await?;
        let started = tokio::time::timeout(START_TIMEOUT, end.recv())
            .await
            .map_err(|_| ForkServerError::Start(format!("no answer within {START_TIMEOUT:?}")))?;
        let (fingerprint, namespaces, pid) = match started {
            Ok((ForkEvent::Started { engine_fingerprint, namespaces, pid }, None)) => {
                (engine_fingerprint, namespaces, pid)
            }
            Ok(_) => return Err(ForkServerError::Start("unexpected first message".into())),
            Err(FrameError::Closed) => {
                return Err(ForkServerError::Start("it exited during start-up (its error is on stderr)".into()));
            }
            Err(e) => return Err(e.into()),
        };
        let waiters = Arc::new(Mutex::new(Waiters { spawns: HashMap::new(), exits: HashMap::new() }));
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(dispatch(end.clone(), waiters.clone(), alive.clone()));
        Ok(Arc::new(ForkServer {
            end,
            waiters,
            alive,
            next_token: AtomicU64::new(1),
            fingerprint,
            namespaces,
            pid,
            child: Mutex::new(process.child),
        }))
    }

    /// The engine fingerprint: names the code-generation settings artifacts are compiled with.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The namespaces sandboxes get on this host.
    pub fn namespaces(&self) -> NamespaceSet {
        self.namespaces
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Asks for one sandbox, placed in the cgroup whose directories and open `cgroup.procs`
    /// files are given; it preloads the artifact in `preload`, if any.
    pub async fn spawn(
        &self,
        mode: SandboxMode,
        cgroups: Vec<String>,
        cgroup_procs: &[BorrowedFd<'_>],
        preload: Option<BorrowedFd<'_>>,
    ) -> Result<Spawned, ForkServerError> {
        if !self.is_alive() {
            return Err(ForkServerError::Gone);
        }
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| ForkServerError::Exec(e.into()))?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().spawns.insert(token, tx);
        if let Err(e) = self.end.spawn(token, mode, cgroups, theirs.as_fd(), preload, cgroup_procs).await {
            self.lock().spawns.remove(&token);
            return Err(e.into());
        }
        drop(theirs);
        match rx.await {
            Ok(Ok((pid, pidfd, exit))) => Ok(Spawned { pid, pidfd, ipc: ours, exit }),
            Ok(Err(e)) => Err(ForkServerError::Spawn(e)),
            Err(_) => Err(ForkServerError::Gone),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the fork server (closing its channel ends it; its sandboxes die with it).
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn dispatch(end: Arc<ForkClientEnd>, waiters: Arc<Mutex<Waiters>>, alive: Arc<AtomicBool>) {
    let lock = || waiters.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        match end.recv().await {
            Ok((ForkEvent::Spawned { token, pid }, Some(pidfd))) => {
                let (tx, rx) = oneshot::channel();
                let mut w = lock();
                w.exits.insert(pid, tx);
                if let Some(waiter) = w.spawns.remove(&token) {
                    let _ = waiter.send(Ok((pid, pidfd, rx)));
                }
            }
            Ok((ForkEvent::SpawnFailed { token, error }, _)) => {
                if let Some(waiter) = lock().spawns.remove(&token) {
                    let _ = waiter.send(Err(error));
                }
            }
            Ok((ForkEvent::Exited { pid, status }, _)) => {
                if let Some(waiter) = lock().exits.remove(&pid) {
                    let _ = waiter.send(status);
                }
            }
            Ok(_) => {
                tracing::error!("fork server sent an unexpected message; stopping the channel");
                break;
            }
            Err(e) => {
                if !matches!(e, FrameError::Closed) {
                    tracing::error!(error = %e, "fork server channel failed");
                }
                break;
            }
        }
    }
    alive.store(false, Ordering::Relaxed);
    // Dropping the senders wakes every waiter with an error.
    let mut w = lock();
    w.spawns.clear();
    w.exits.clear();
}

/// Runs the fork server in this process if `args` asks for it; returns otherwise. Call first
/// thing in `main`, before anything starts a thread.
pub fn run_if_requested(args: &[std::ffi::OsString]) {
    if args.get(1).is_some_and(|a| a == FORK_SERVER_ARG) {
        // SAFETY: the supervisor placed the control socket at CONTROL_FD with dup2 just before
        // exec; nothing else in this fresh process owns it.
        let control = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(CONTROL_FD) };
        alga_sandbox::forkserver::main(control);
    }
}

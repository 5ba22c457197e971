//! The fork server: a small single-threaded process, started by exec from the supervisor, that
//! creates every sandbox (05-sandbox.md, "Lifecycle"; 09-measured.md, finding 1).
//!
//! It loads the engine and builds the linker once, then for each request `clone`s a child into
//! new namespaces, maps its ids, places it in its cgroup, lets it run, and sends its pidfd to the
//! supervisor. It reaps every child (peeking at a seccomp death to name the refused syscall) and
//! reports each exit. It never runs tenant code and never loads an artifact, so it does not grow
//! with the components it serves.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;

use alga_policies::{BpfProgram, COMPILE, EXECUTE, SeccompMode, SeccompPolicy};
use alga_shared::channel::ForkServerEnd;
use alga_shared::frame::{DEFAULT_MAX_FRAME, FrameError};
use alga_shared::protocol::{ExitStatus, ForkRequest, NamespaceSet, SandboxMode, SandboxPlan};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use wasmtime::Engine;

use crate::audit::AuditLog;
use crate::child;
use crate::runtime::{engine, guest::Prepared, warm};
use crate::sys::{self, Cloned};

/// Why the fork server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ForkServerError {
    #[error("control channel")]
    Channel(#[from] FrameError),
    #[error("the first message must be `Start`")]
    NoStart,
    #[error("seccomp policy")]
    Policy(#[from] alga_policies::PolicyError),
    #[error("creating the Wasmtime engine: {0}")]
    Engine(String),
    #[error("installing the deadline signal handler")]
    Signal(#[source] io::Error),
    #[error("opening /proc")]
    Proc(#[source] io::Error),
    #[error("building the sandboxes' runtime")]
    Runtime(#[source] io::Error),
}

/// The engine whose epoch the deadline timer (SIGALRM) advances.
static EPOCH_ENGINE: OnceLock<Engine> = OnceLock::new();

extern "C" fn on_deadline(_signal: libc::c_int) {
    // Async-signal-safe: an atomic load and an atomic add.
    if let Some(engine) = EPOCH_ENGINE.get() {
        engine.increment_epoch();
    }
}

/// State shared with every child at `clone` time.
pub struct Server {
    plan: SandboxPlan,
    prepared: Prepared,
    /// The built-in warm-up component, compiled (see `runtime::warm`).
    warm: Vec<u8>,
    filters: BTreeMap<String, Vec<BpfProgram>>,
    /// Namespaces each sandbox gets at its `clone`.
    namespaces: NamespaceSet,
    /// Namespaces the fork server entered once; every sandbox shares them.
    shared: NamespaceSet,
    uid: u32,
    gid: u32,
    root: bool,
    /// `/proc`, opened before the fork server left the host's filesystem.
    proc: std::fs::File,
    /// The Tokio runtime a sandbox drives WASI's futures on: current-thread, timers only (it
    /// parks on a futex and owns no descriptor or thread). Built once here; each child gets its
    /// own copy with the rest of its memory, never shared with another process.
    runtime: tokio::runtime::Runtime,
}

impl Server {
    pub fn plan(&self) -> &SandboxPlan {
        &self.plan
    }
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }
    /// `/proc` of the host (the fork server's own root is empty).
    pub fn proc_dir(&self) -> &std::fs::File {
        &self.proc
    }
    pub fn warm_artifact(&self) -> &[u8] {
        &self.warm
    }
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }
    pub fn namespaces(&self) -> NamespaceSet {
        self.namespaces
    }
    pub fn shared_namespaces(&self) -> NamespaceSet {
        self.shared
    }
    pub fn uid(&self) -> u32 {
        self.uid
    }
    pub fn gid(&self) -> u32 {
        self.gid
    }
    /// True when the child has privileges to drop: the fork server runs as root, or the child
    /// gets a user namespace (in which it starts with every capability).
    pub fn privileged(&self) -> bool {
        self.root || self.namespaces.user
    }
    pub fn filter(&self, mode: SandboxMode) -> &[BpfProgram] {
        let name = match mode {
            SandboxMode::Execute => EXECUTE,
            SandboxMode::Compile => COMPILE,
        };
        &self.filters[name]
    }

    fn clone_flags(&self) -> libc::c_int {
        flags_of(self.namespaces)
    }
}

fn flags_of(ns: NamespaceSet) -> libc::c_int {
    let mut f = 0;
    for (on, flag) in [
        (ns.user, libc::CLONE_NEWUSER),
        (ns.pid, libc::CLONE_NEWPID),
        (ns.net, libc::CLONE_NEWNET),
        (ns.ipc, libc::CLONE_NEWIPC),
        (ns.uts, libc::CLONE_NEWUTS),
        (ns.mount, libc::CLONE_NEWNS),
    ] {
        if on {
            f |= flag;
        }
    }
    f
}

/// Whether a child can be created with `ns`: clones one that exits at once.
fn can_clone(ns: NamespaceSet) -> bool {
    match sys::clone_process(flags_of(ns)) {
        Ok(Cloned::Child) => sys::exit_now(0),
        Ok(Cloned::Parent { pidfd, .. }) => {
            let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
            true
        }
        Err(_) => false,
    }
}

/// The namespaces of `wanted` this kernel lets us create (unprivileged user namespaces may be
/// disabled; without root, the others need a user namespace).
pub fn probe_namespaces(wanted: NamespaceSet) -> NamespaceSet {
    if can_clone(wanted) {
        return wanted;
    }
    let user = wanted.user && can_clone(NamespaceSet { user: true, ..NamespaceSet::default() });
    let base = NamespaceSet { user, ..NamespaceSet::default() };
    let mut got = base;
    let one = |f: fn(&mut NamespaceSet)| {
        let mut ns = base;
        f(&mut ns);
        can_clone(ns)
    };
    got.pid = wanted.pid && one(|n| n.pid = true);
    got.net = wanted.net && one(|n| n.net = true);
    got.ipc = wanted.ipc && one(|n| n.ipc = true);
    got.uts = wanted.uts && one(|n| n.uts = true);
    got.mount = wanted.mount && one(|n| n.mount = true);
    got
}

/// Moves the fork server into fresh, empty mount, network, IPC and UTS namespaces, which every
/// sandbox then inherits; its root becomes an empty read-only tmpfs. They need not be per
/// sandbox: a sandbox in its own user namespace cannot mount in a mount namespace it does not
/// own, an empty network namespace has no interface (not even a loopback that is up), sandboxes
/// cannot create sockets or IPC objects (seccomp), and Landlock scopes abstract sockets and
/// signals to each sandbox. Creating, emptying and destroying these per sandbox cost about
/// 0.5 ms of CPU per execution and an expedited RCU grace period per unmount
/// (docs/performance.md).
fn share_namespaces(wanted: NamespaceSet) -> NamespaceSet {
    use nix::sched::{CloneFlags, unshare};
    let mut shared = NamespaceSet::default();
    for (want, flag, mark) in [
        (wanted.net, CloneFlags::CLONE_NEWNET, &mut shared.net as &mut bool),
        (wanted.ipc, CloneFlags::CLONE_NEWIPC, &mut shared.ipc),
        (wanted.uts, CloneFlags::CLONE_NEWUTS, &mut shared.uts),
    ] {
        if want && unshare(flag).is_ok() {
            *mark = true;
        }
    }
    if shared.uts {
        let _ = nix::unistd::sethostname("sandbox");
    }
    if wanted.mount && unshare(CloneFlags::CLONE_NEWNS).is_ok() && crate::harden::empty_root().is_ok() {
        shared.mount = true;
    }
    shared
}

/// Runs the fork server on `control` until the supervisor closes it. Never returns.
pub fn main(control: OwnedFd) -> ! {
    let code = match run(control) {
        Ok(()) => 0,
        Err(e) => {
            let mut msg = format!("alga-runner fork server: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            let _ = writeln!(io::stderr(), "{msg}");
            1
        }
    };
    sys::exit_now(code)
}

fn run(control: OwnedFd) -> Result<(), ForkServerError> {
    let mut chan = ForkServerEnd::new(control, DEFAULT_MAX_FRAME);
    let plan = match chan.recv_request()? {
        (ForkRequest::Start { plan }, fds) if fds.is_empty() => plan,
        _ => return Err(ForkServerError::NoStart),
    };
    let policy = match &plan.seccomp_policy {
        Some(json) => SeccompPolicy::parse(json)?,
        None => SeccompPolicy::embedded()?,
    };
    let mode = if plan.seccomp_log_only { SeccompMode::Log } else { SeccompMode::Enforce };
    let filters = policy.compile(mode)?;

    let engine = engine::engine().map_err(|e| ForkServerError::Engine(e.to_string()))?;
    let fingerprint = engine::fingerprint(&engine);
    let _ = EPOCH_ENGINE.set(engine.clone());
    sys::install_signal_handler(libc::SIGALRM, on_deadline).map_err(ForkServerError::Signal)?;
    let prepared = Prepared::new(engine).map_err(|e| ForkServerError::Engine(e.to_string()))?;
    let warm = warm::compile(&prepared).map_err(|e| ForkServerError::Engine(format!("warm-up component: {e}")))?;

    let root = nix::unistd::geteuid().is_root();
    // Everything the fork server needs from the filesystem is opened now: /proc (for id maps and
    // OOM scores) and the kernel log. cgroup files arrive as descriptors with each request.
    let proc = std::fs::File::open("/proc").map_err(ForkServerError::Proc)?;
    let mut audit = AuditLog::open();
    let namespaces = probe_namespaces(plan.namespaces);
    let shared = if root { share_namespaces(plan.namespaces) } else { NamespaceSet::default() };
    let namespaces = namespaces.without(shared);
    let (uid, gid) =
        if root { (plan.uid, plan.gid) } else { (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()) };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(ForkServerError::Runtime)?;
    let server = Server { plan, prepared, warm, filters, namespaces, shared, uid, gid, root, proc, runtime };
    chan.started(fingerprint, namespaces.union(shared))?;

    let mut children: HashMap<u32, OwnedFd> = HashMap::new();
    loop {
        let (control_ready, exited) = {
            let mut fds = Vec::with_capacity(children.len() + 1);
            fds.push(PollFd::new(chan.as_fd(), PollFlags::POLLIN));
            let pids: Vec<u32> = children.keys().copied().collect();
            for pid in &pids {
                fds.push(PollFd::new(children[pid].as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(FrameError::Io(e.into()).into()),
            }
            let control_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            let exited: Vec<u32> = pids
                .iter()
                .zip(&fds[1..])
                .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(pid, _)| *pid)
                .collect();
            (control_ready, exited)
        };
        for pid in exited {
            if let Some(pidfd) = children.remove(&pid) {
                let status = reap(pid, &pidfd, &mut audit);
                chan.exited(pid, status)?;
            }
        }
        if control_ready {
            match chan.recv_request() {
                Ok((ForkRequest::Spawn { token, mode, cgroups, preload }, mut fds))
                    if fds.len() > usize::from(preload) =>
                {
                    let ipc = fds.remove(0);
                    // The artifact is only passed on: the fork server never maps it.
                    let artifact = preload.then(|| fds.remove(0));
                    match spawn(&server, ipc, artifact, mode, &cgroups, &fds) {
                        Ok(child) => {
                            // Report before letting the child run, so a busy child cannot delay
                            // the report (it would otherwise run first on this CPU).
                            chan.spawned(token, child.pid, child.pidfd.as_fd())?;
                            // A failed write leaves the child to read end-of-file and exit; the
                            // supervisor then learns it died before reporting ready.
                            let _ = child.go();
                            children.insert(child.pid, child.pidfd);
                        }
                        Err(e) => chan.spawn_failed(token, e.to_string())?,
                    }
                }
                Ok((ForkRequest::Spawn { token, .. }, _)) => {
                    chan.spawn_failed(token, "spawn request without its socket".into())?;
                }
                Ok((ForkRequest::Start { .. }, _)) => return Err(ForkServerError::NoStart),
                // The supervisor is gone: stop; our children follow (PR_SET_PDEATHSIG).
                Err(FrameError::Closed) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A sandbox that exists, is placed, and waits for [`Child::go`].
struct Child {
    pid: u32,
    pidfd: OwnedFd,
    go: OwnedFd,
}

impl Child {
    /// Lets the child run its hardening.
    fn go(self: &Child) -> io::Result<()> {
        nix::unistd::write(&self.go, &[1])?;
        Ok(())
    }
}

/// Creates one sandbox: maps its ids and puts it in its cgroup while it waits, before it runs.
fn spawn(
    server: &Server,
    ipc: OwnedFd,
    artifact: Option<OwnedFd>,
    mode: SandboxMode,
    cgroups: &[String],
    cgroup_procs: &[OwnedFd],
) -> io::Result<Child> {
    let (go_read, go_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match sys::clone_process(server.clone_flags())? {
        Cloned::Child => {
            drop(go_write);
            child::main(server, child::Spawn { ipc, artifact, go: go_read, mode, cgroups })
        }
        Cloned::Parent { pid, pidfd } => {
            drop(go_read);
            drop(ipc);
            drop(artifact);
            let pid = pid as u32;
            match place(server, pid, cgroup_procs) {
                Ok(()) => Ok(Child { pid, pidfd, go: go_write }),
                Err(e) => {
                    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                    let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
                    Err(e)
                }
            }
        }
    }
}

/// Score that makes the kernel's OOM killer pick a sandbox before anything else.
const OOM_SCORE_ADJ: &str = "1000";

/// Maps the child's user and group ids, raises its OOM score and puts it in its cgroup.
fn place(server: &Server, pid: u32, cgroup_procs: &[OwnedFd]) -> io::Result<()> {
    let write = |name: &str, value: &str| -> io::Result<()> {
        let path = format!("{pid}/{name}");
        let fd = nix::fcntl::openat(
            &server.proc,
            path.as_str(),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("opening /proc/{path}: {e}")))?;
        nix::unistd::write(&fd, value.as_bytes())
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("writing /proc/{path}: {e}")))?;
        Ok(())
    };
    if server.namespaces.user {
        if !server.root {
            // Without CAP_SETGID in the parent namespace, setgroups must be denied first.
            write("setgroups", "deny")?;
        }
        write("uid_map", &format!("{0} {0} 1\n", server.uid))?;
        write("gid_map", &format!("{0} {0} 1\n", server.gid))?;
    }
    write("oom_score_adj", OOM_SCORE_ADJ)?;
    let pid = pid.to_string();
    for procs in cgroup_procs {
        nix::unistd::write(procs, pid.as_bytes())
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("joining the sandbox cgroup: {e}")))?;
    }
    Ok(())
}

/// Collects a child's exit status; for a SIGSYS death (seccomp) it looks up the refused syscall
/// in the kernel's audit records.
fn reap(pid: u32, pidfd: &OwnedFd, audit: &mut AuditLog) -> ExitStatus {
    match waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED) {
        Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => {
            let syscall = if signal == nix::sys::signal::Signal::SIGSYS { audit.syscall_of(pid) } else { None };
            ExitStatus::Signal { signal: signal as i32, syscall }
        }
        Ok(_) | Err(_) => ExitStatus::Code(-1),
    }
}

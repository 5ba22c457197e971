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
use crate::runtime::{engine, guest::Prepared};
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
    filters: BTreeMap<String, BpfProgram>,
    namespaces: NamespaceSet,
    uid: u32,
    gid: u32,
    root: bool,
}

impl Server {
    pub fn plan(&self) -> &SandboxPlan {
        &self.plan
    }
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }
    pub fn namespaces(&self) -> NamespaceSet {
        self.namespaces
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
    pub fn filter(&self, mode: SandboxMode) -> &BpfProgram {
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
        (ForkRequest::Start { plan }, None) => plan,
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

    let root = nix::unistd::geteuid().is_root();
    let namespaces = probe_namespaces(plan.namespaces);
    let (uid, gid) =
        if root { (plan.uid, plan.gid) } else { (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()) };
    let server = Server { plan, prepared, filters, namespaces, uid, gid, root };
    chan.started(fingerprint, namespaces)?;

    let mut audit = AuditLog::open();
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
                Ok((ForkRequest::Spawn { token, mode, cgroup_procs }, Some(ipc))) => {
                    match spawn(&server, ipc, mode, &cgroup_procs) {
                        Ok((pid, pidfd)) => {
                            chan.spawned(token, pid, pidfd.as_fd())?;
                            children.insert(pid, pidfd);
                        }
                        Err(e) => chan.spawn_failed(token, e.to_string())?,
                    }
                }
                Ok((ForkRequest::Spawn { token, .. }, None)) => {
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

/// Creates one sandbox. The child waits until its ids are mapped and it is in its cgroup.
fn spawn(server: &Server, ipc: OwnedFd, mode: SandboxMode, cgroup_procs: &[String]) -> io::Result<(u32, OwnedFd)> {
    let (go_read, go_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match sys::clone_process(server.clone_flags())? {
        Cloned::Child => {
            drop(go_write);
            let cgroups: Vec<String> =
                cgroup_procs.iter().map(|p| p.trim_end_matches("/cgroup.procs").to_string()).collect();
            child::main(server, child::Spawn { ipc, go: go_read, mode, cgroups: &cgroups })
        }
        Cloned::Parent { pid, pidfd } => {
            drop(go_read);
            drop(ipc);
            let pid = pid as u32;
            match place(server, pid, cgroup_procs)
                .and_then(|()| nix::unistd::write(&go_write, &[1]).map_err(io::Error::from))
            {
                Ok(_) => Ok((pid, pidfd)),
                Err(e) => {
                    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                    let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
                    Err(e)
                }
            }
        }
    }
}

/// Maps the child's user and group ids and puts it in its cgroup, before it runs.
fn place(server: &Server, pid: u32, cgroup_procs: &[String]) -> io::Result<()> {
    if server.namespaces.user {
        let proc = format!("/proc/{pid}");
        if !server.root {
            // Without CAP_SETGID in the parent namespace, setgroups must be denied first.
            std::fs::write(format!("{proc}/setgroups"), "deny")?;
        }
        std::fs::write(format!("{proc}/uid_map"), format!("{0} {0} 1\n", server.uid))?;
        std::fs::write(format!("{proc}/gid_map"), format!("{0} {0} 1\n", server.gid))?;
    }
    for procs in cgroup_procs {
        std::fs::write(procs, pid.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("joining cgroup {procs}: {e}")))?;
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

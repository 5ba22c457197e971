//! The one ordered hardening sequence of a sandbox process (05-sandbox.md, "Hardening layers").
//!
//! Order and why:
//! 1. hygiene first, so nothing inherited (descriptors, environment, core dumps) survives into
//!    the later layers or the guest;
//! 2. cgroup: the fork server placed the process in its own cgroup before letting it run; this
//!    step records where it is;
//! 3. namespaces were created at `clone` (user, pid, mount) or entered once by the fork server for
//!    all its sandboxes (empty net, ipc, uts); the mount namespace is emptied here, while the
//!    process still has the capabilities (in its user namespace) that mounting needs;
//! 4. credentials: drop to the unprivileged user and every capability, then `no_new_privs` —
//!    after mounting (needs capabilities), before Landlock (which needs `no_new_privs`);
//! 5. Landlock: no filesystem, no TCP, no abstract sockets, no signals out (a preloaded sandbox
//!    loads its artifact after this step: Landlock leaves its memfd, on the kernel's internal
//!    shmem mount, readable and every file refused);
//! 6. seccomp last: it forbids the very syscalls the steps above use (mount, setuid, prctl,
//!    landlock_*).
//!
//! Each layer returns its achieved level as data ([`HardeningReport`]); tenant bytes arrive only
//! after this function returns.

mod credentials;
mod hygiene;
mod landlock;
mod namespaces;
mod seccomp;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::sys;
use alga_policies::BpfProgram;
use alga_shared::protocol::{HardeningReport, LayerStatus, Level, NamespaceSet, Requirement, SandboxPlan};

pub use self::landlock::kernel_abi as landlock_abi;
pub use self::namespaces::empty_root;

/// The descriptor number the IPC socket has inside every sandbox.
pub const IPC_FD: i32 = 3;

/// Everything the hardening sequence needs.
pub struct Input<'a> {
    pub plan: &'a SandboxPlan,
    /// cgroup directories the fork server placed this process in (empty: no cgroup).
    pub cgroups: &'a [String],
    /// Namespaces the process was created in.
    pub namespaces: NamespaceSet,
    /// Namespaces it shares with the fork server's other sandboxes.
    pub shared_namespaces: NamespaceSet,
    /// The user and group to become (already mapped in the user namespace, if any).
    pub uid: u32,
    pub gid: u32,
    /// True when the process has privileges to drop (root, or a fresh user namespace).
    pub privileged: bool,
    pub filter: &'a [BpfProgram],
}

/// A layer failed in a way that must stop the sandbox.
#[derive(Debug, thiserror::Error)]
#[error("hardening layer `{layer}` failed: {source}")]
pub struct HardenError {
    pub layer: &'static str,
    #[source]
    pub source: io::Error,
    /// The IPC socket, when hygiene got that far, so the failure can be reported.
    pub ipc: Option<OwnedFd>,
}

/// A compiled artifact to load once the namespaces, credentials and Landlock are in place, while
/// the process can still open a file (its own descriptor, through the host's `/proc/self/fd`:
/// seccomp comes after) and before the job — the first bytes of a tenant's request — arrives.
pub struct Preload<'a> {
    /// The artifact's sealed memfd.
    pub artifact: OwnedFd,
    /// Loads it; called once, with the descriptor (closed afterwards).
    pub load: &'a mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>,
}

/// A fully hardened process: its IPC socket and the report.
pub struct Hardened {
    pub ipc: OwnedFd,
    pub report: HardeningReport,
}

/// Applies the six layers in order. `ipc` is the sandbox's end of its IPC socket; it ends up at
/// [`IPC_FD`].
pub fn harden(ipc: OwnedFd, input: &Input<'_>, preload: Option<Preload<'_>>) -> Result<Hardened, HardenError> {
    let start = Instant::now();
    let (artifact, load) = match preload {
        Some(p) => (Some(p.artifact), Some(p.load)),
        None => (None, None),
    };
    let (ipc, artifact, hygiene) = hygiene::apply(ipc, artifact, input.plan.max_open_files)
        .map_err(|source| HardenError { layer: "hygiene", source, ipc: None })?;
    let hygiene_us = micros(start);
    let preload = artifact.zip(load).map(|(artifact, load)| Preload { artifact, load });
    match harden_rest(input, hygiene, hygiene_us, ipc.as_fd(), preload) {
        Ok(report) => Ok(Hardened { ipc, report }),
        Err((layer, source)) => Err(HardenError { layer, source, ipc: Some(ipc) }),
    }
}

fn micros(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

fn harden_rest(
    input: &Input<'_>,
    hygiene: LayerStatus,
    hygiene_us: u32,
    ipc: BorrowedFd<'_>,
    preload: Option<Preload<'_>>,
) -> Result<HardeningReport, (&'static str, io::Error)> {
    let at = |layer: &'static str| move |e: io::Error| (layer, e);
    let mut step_us = [hygiene_us, 0, 0, 0, 0, 0];
    let mut mark = Instant::now();
    let mut lap = |i: usize| {
        step_us[i] = micros(mark);
        mark = Instant::now();
    };

    let cgroup = if input.cgroups.is_empty() {
        LayerStatus::missing("no cgroup: the host offers no usable cgroup controllers")
    } else {
        LayerStatus::full(format!("member of {}", input.cgroups.join(", ")))
    };

    let (namespaces, namespace_set) =
        namespaces::apply(input.namespaces, input.shared_namespaces, input.plan.namespaces)
            .map_err(at("namespaces"))?;
    lap(1);

    let credentials = credentials::apply(input.uid, input.gid, input.privileged).map_err(at("credentials"))?;
    // Changing the effective uid or gid clears the parent-death signal: arm it again, then make
    // sure the supervisor did not die before it was armed (its end of the IPC socket would be
    // closed). Without this a sandbox outlives a killed supervisor until its own deadline.
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong).map_err(at("credentials"))?;
    if sys::peer_closed(ipc) {
        return Err(("credentials", io::Error::other("the supervisor is gone")));
    }
    lap(2);

    let (landlock, landlock_abi) = landlock::apply().map_err(at("landlock"))?;
    lap(3);
    if input.plan.landlock == Requirement::Required && landlock.level != Level::Full {
        return Err(("landlock", io::Error::other(format!("required but not fully enforced: {}", landlock.detail))));
    }

    // The artifact is loaded here: in the sandbox's namespaces, with its credentials and under
    // Landlock, which denies every file but leaves a memfd reopened through /proc/self/fd alone
    // (it lives on the kernel's internal shmem mount): the parse of the compile sandbox's output
    // can read that artifact and nothing else. Seccomp, which forbids opening files, comes after.
    if let Some(Preload { artifact, load }) = preload {
        load(artifact.as_fd()).map_err(at("preload"))?;
        lap(4); // restarts the clock: seccomp's own time overwrites this slot below
    }

    let seccomp = seccomp::apply(input.filter, input.plan.seccomp_log_only).map_err(at("seccomp"))?;
    lap(4);

    let report = HardeningReport {
        hygiene,
        cgroup,
        namespaces,
        namespace_set,
        credentials,
        landlock,
        landlock_abi,
        seccomp,
        step_us,
    };
    Ok(report)
}

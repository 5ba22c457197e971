//! Layer 1: nothing inherited survives.

use std::io;
use std::os::fd::OwnedFd;

use alga_shared::protocol::LayerStatus;

use super::IPC_FD;
use crate::sys;

pub fn apply(
    ipc: OwnedFd,
    artifact: Option<OwnedFd>,
    max_open_files: u64,
) -> io::Result<(OwnedFd, Option<OwnedFd>, LayerStatus)> {
    // Descriptors: only the IPC socket stays, at a fixed number (and the artifact to preload, if
    // any, right after it); the standard streams go too (nothing in a sandbox may print; results
    // travel over IPC).
    // The artifact first goes above both target numbers, so that moving the IPC socket to its
    // place cannot close it.
    let artifact = artifact.map(|fd| sys::move_fd_above(fd, IPC_FD + 2)).transpose()?;
    let ipc = sys::move_fd(ipc, IPC_FD)?;
    let artifact = artifact.map(|fd| sys::move_fd(fd, IPC_FD + 1)).transpose()?;
    sys::close_from(IPC_FD + 1 + i32::from(artifact.is_some()))?;
    for fd in 0..=2 {
        sys::close_raw(fd);
    }
    // SAFETY (of the environment change below): this process is single-threaded, so nothing reads
    // the environment concurrently.
    for (key, _) in std::env::vars_os() {
        // SAFETY: single-threaded process, see above.
        unsafe { std::env::remove_var(key) };
    }
    sys::prctl(libc::PR_SET_DUMPABLE, 0)?;
    sys::set_rlimit(libc::RLIMIT_CORE, 0)?;
    sys::set_rlimit(libc::RLIMIT_FSIZE, 0)?;
    sys::set_rlimit(libc::RLIMIT_NOFILE, max_open_files)?;
    nix::unistd::setsid()?;
    let kept = if artifact.is_some() { "IPC and the artifact to preload (read-only)" } else { "IPC" };
    Ok((
        ipc,
        artifact,
        LayerStatus::full(format!(
            "descriptors closed but {kept}; empty environment; not dumpable; RLIMIT_CORE=0, RLIMIT_FSIZE=0, \
             RLIMIT_NOFILE={max_open_files}; own session; oom_score_adj=1000 (set by the fork server); dies \
             with its parent"
        )),
    ))
}

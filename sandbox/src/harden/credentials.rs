//! Layer 4: an unprivileged user with no capability, for good.

use std::io;

use alga_shared::protocol::LayerStatus;
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};

use crate::sys;

/// Highest capability number probed when emptying the bounding set.
const MAX_CAP: libc::c_ulong = 63;

pub fn apply(uid: u32, gid: u32, privileged: bool) -> io::Result<LayerStatus> {
    if privileged {
        // The bounding set first: dropping from it needs CAP_SETPCAP, gone after setuid.
        for cap in 0..=MAX_CAP {
            match sys::prctl(libc::PR_CAPBSET_DROP, cap) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break, // past the last capability
                Err(e) => return Err(e),
            }
        }
        setgroups(&[])?;
        setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))?;
        setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))?;
    }
    sys::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong)?;
    sys::clear_capabilities()?;
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;

    let now = nix::unistd::getuid().as_raw();
    if !sys::capabilities_empty()? || sys::prctl(libc::PR_GET_NO_NEW_PRIVS, 0)? != 1 {
        return Err(io::Error::other("capabilities or no_new_privs did not stick"));
    }
    Ok(LayerStatus::full(format!(
        "uid {now}, gid {}; no capabilities (effective, permitted, inheritable, ambient{}); no_new_privs",
        nix::unistd::getgid().as_raw(),
        if privileged { ", bounding" } else { "" }
    )))
}

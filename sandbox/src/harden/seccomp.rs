//! Layer 6: the seccomp allowlist from `policies/`, last.

use std::io;

use alga_policies::BpfProgram;
use alga_shared::protocol::LayerStatus;

/// Installs `programs`: the allowlist first in the list, then programs answering some allowed
/// syscalls with an errno. They are installed last to first, so the allowlist (which does not
/// allow `seccomp` itself) goes in last; the kernel runs every installed program on each syscall
/// and takes the most restrictive answer, so the order does not change what is enforced.
pub fn apply(programs: &[BpfProgram], log_only: bool) -> io::Result<LayerStatus> {
    let Some(allowlist) = programs.first() else {
        return Err(io::Error::other("no seccomp allowlist to install"));
    };
    for program in programs.iter().rev() {
        seccompiler::apply_filter(program).map_err(io::Error::other)?;
    }
    let answered = if programs.len() > 1 { "; some allowed syscalls answered with an errno" } else { "" };
    Ok(if log_only {
        LayerStatus::partial("log mode: syscalls outside the allowlist are logged, not refused")
    } else {
        LayerStatus::full(format!(
            "allowlist of {} BPF instructions; anything else kills the process{answered}",
            allowlist.len()
        ))
    })
}

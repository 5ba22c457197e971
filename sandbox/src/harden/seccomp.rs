//! Layer 6: the seccomp allowlist from `policies/`, last.

use std::io;

use alga_policies::BpfProgram;
use alga_shared::protocol::LayerStatus;

pub fn apply(filter: &BpfProgram, log_only: bool) -> io::Result<LayerStatus> {
    seccompiler::apply_filter(filter).map_err(io::Error::other)?;
    Ok(if log_only {
        LayerStatus::partial("log mode: syscalls outside the allowlist are logged, not refused")
    } else {
        LayerStatus::full(format!("allowlist of {} BPF instructions; anything else kills the process", filter.len()))
    })
}

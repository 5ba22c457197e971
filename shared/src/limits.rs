//! Per-execution limits (05-sandbox.md, "Limits per execution").

use serde::{Deserialize, Serialize};

pub const MIB: u64 = 1024 * 1024;

/// What one execution may use. Every field is enforced by the sandbox where it can be and again
/// by the supervisor, which never trusts the sandbox to have done it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock deadline in milliseconds (default 5 000, operator maximum 60 000).
    pub timeout_ms: u64,
    /// Bytes of all linear memories and tables together (default 256 MiB).
    pub memory_bytes: u64,
    /// Wasmtime fuel units (default 10¹¹); always metered.
    pub fuel: u64,
    /// Host calls other than logging (default 10 000).
    pub max_host_calls: u32,
    /// Bytes of host-call arguments and replies together (default 64 MiB).
    pub max_host_call_bytes: u64,
    /// Log lines kept; later lines are dropped and counted (default 1 000).
    pub max_log_lines: u32,
    /// Bytes per log message before truncation (default 8 KiB).
    pub max_log_line_bytes: u32,
    /// Bytes of stdout and stderr together (default 64 KiB).
    pub max_output_bytes: u32,
    /// Bytes of the response body (default 10 MiB).
    pub max_response_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 5_000,
            memory_bytes: 256 * MIB,
            fuel: 100_000_000_000,
            max_host_calls: 10_000,
            max_host_call_bytes: 64 * MIB,
            max_log_lines: 1_000,
            max_log_line_bytes: 8 * 1024,
            max_output_bytes: 64 * 1024,
            max_response_bytes: 10 * MIB,
        }
    }
}

/// A caller's request to change the three tunable limits; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitRequest {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub fuel: Option<u64>,
}

/// The operator's ceilings. A request never raises a limit above them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitCeilings {
    pub max_timeout_ms: u64,
    pub max_memory_bytes: u64,
    pub max_fuel: u64,
}

impl Default for LimitCeilings {
    fn default() -> Self {
        LimitCeilings { max_timeout_ms: 60_000, max_memory_bytes: 4096 * MIB, max_fuel: u64::MAX }
    }
}

impl Limits {
    /// The limits of one execution: the install's values replace the defaults (capped by the
    /// operator's ceilings), then the caller's values may only lower them, never raise them.
    /// Zero values are ignored: a zero deadline or memory budget is never meant.
    pub fn resolve(self, install: &LimitRequest, caller: &LimitRequest, ceilings: &LimitCeilings) -> Self {
        let mut l = self;
        if let Some(t) = install.timeout_ms.filter(|t| *t > 0) {
            l.timeout_ms = t;
        }
        if let Some(m) = install.memory_mb.filter(|m| *m > 0) {
            l.memory_bytes = m.saturating_mul(MIB);
        }
        if let Some(f) = install.fuel.filter(|f| *f > 0) {
            l.fuel = f;
        }
        l.timeout_ms = l.timeout_ms.min(ceilings.max_timeout_ms);
        l.memory_bytes = l.memory_bytes.min(ceilings.max_memory_bytes);
        l.fuel = l.fuel.min(ceilings.max_fuel);
        if let Some(t) = caller.timeout_ms.filter(|t| *t > 0) {
            l.timeout_ms = l.timeout_ms.min(t);
        }
        if let Some(m) = caller.memory_mb.filter(|m| *m > 0) {
            l.memory_bytes = l.memory_bytes.min(m.saturating_mul(MIB));
        }
        if let Some(f) = caller.fuel.filter(|f| *f > 0) {
            l.fuel = l.fuel.min(f);
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_values_are_capped_by_ceilings() {
        let ceilings = LimitCeilings { max_timeout_ms: 10_000, max_memory_bytes: 512 * MIB, max_fuel: 1_000 };
        let install = LimitRequest { timeout_ms: Some(90_000), memory_mb: Some(64), fuel: None };
        let l = Limits::default().resolve(&install, &LimitRequest::default(), &ceilings);
        assert_eq!(l.timeout_ms, 10_000);
        assert_eq!(l.memory_bytes, 64 * MIB);
        assert_eq!(l.fuel, 1_000, "the default is capped too");
    }

    #[test]
    fn the_caller_only_lowers_and_zero_is_ignored() {
        let install = LimitRequest { timeout_ms: Some(2_000), memory_mb: None, fuel: None };
        let caller = LimitRequest { timeout_ms: Some(30_000), memory_mb: Some(0), fuel: Some(5) };
        let l = Limits::default().resolve(&install, &caller, &LimitCeilings::default());
        assert_eq!(l.timeout_ms, 2_000, "the caller cannot raise the install's deadline");
        assert_eq!(l.memory_bytes, 256 * MIB);
        assert_eq!(l.fuel, 5);
    }
}

//! The typed outcome of one execution (05-sandbox.md, "Outcomes"). Each outcome maps to one
//! envelope status and error (02-http-api.md), one metric label and one execution-record status.

use serde::{Deserialize, Serialize};

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `handler` returned a response.
    Completed,
    /// The guest trapped (or broke a guest-side rule such as the response size); `kind` is a
    /// short stable name.
    GuestTrap { kind: String },
    /// The wall-clock deadline passed.
    Timeout,
    /// A memory or table growth went past the limit, or the cgroup's OOM killer ended it.
    MemoryLimit,
    /// The fuel budget ran out.
    FuelExhausted,
    /// seccomp killed the sandbox; `syscall` names the refused call when it could be read.
    SeccompViolation { syscall: String },
    /// The sandbox broke the IPC protocol and was killed.
    ProtocolViolation { detail: String },
    /// The sandbox died from a signal that no other outcome explains.
    Crashed { signal: i32 },
    /// No sandbox could be created.
    SpawnFailed,
    /// The supervisor was shutting down.
    Shutdown,
    /// The component is not a component of the `alga:extension/runner` world (refused before
    /// any tenant code ran).
    InvalidComponent,
}

impl Outcome {
    /// Stable name, used as the metric label and in the execution record.
    /// Every value [`Outcome::label`] gives (metrics show each from the start, at 0).
    pub const LABELS: [&'static str; 11] = [
        "completed",
        "guest_trap",
        "timeout",
        "memory_limit",
        "fuel_exhausted",
        "seccomp_violation",
        "protocol_violation",
        "crashed",
        "spawn_failed",
        "shutdown",
        "invalid_component",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::GuestTrap { .. } => "guest_trap",
            Outcome::Timeout => "timeout",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::FuelExhausted => "fuel_exhausted",
            Outcome::SeccompViolation { .. } => "seccomp_violation",
            Outcome::ProtocolViolation { .. } => "protocol_violation",
            Outcome::Crashed { .. } => "crashed",
            Outcome::SpawnFailed => "spawn_failed",
            Outcome::Shutdown => "shutdown",
            Outcome::InvalidComponent => "invalid_component",
        }
    }

    /// The envelope status and error code a caller sees for a failed execution, or `None` for
    /// `Completed` (the guest's own status is used). Operator-only details (which syscall, what
    /// protocol rule) never reach the caller.
    pub fn envelope_error(&self) -> Option<(u16, String)> {
        let (status, error) = match self {
            Outcome::Completed => return None,
            Outcome::GuestTrap { kind } => (500, format!("execute_failed: {kind}")),
            Outcome::Timeout => (504, "timeout".into()),
            Outcome::MemoryLimit => (500, "memory_limit_exceeded".into()),
            Outcome::FuelExhausted => (500, "fuel_exhausted".into()),
            Outcome::SeccompViolation { .. } | Outcome::ProtocolViolation { .. } | Outcome::Crashed { .. } => {
                (500, "sandbox_violation".into())
            }
            Outcome::SpawnFailed => (503, "overloaded".into()),
            Outcome::Shutdown => (503, "shutting_down".into()),
            Outcome::InvalidComponent => (502, "invalid_component".into()),
        };
        Some((status, error))
    }

    /// True for the outcomes an operator must look at: the sandbox itself misbehaved.
    pub fn is_violation(&self) -> bool {
        matches!(self, Outcome::SeccompViolation { .. } | Outcome::ProtocolViolation { .. } | Outcome::Crashed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_listed() {
        let all = [
            Outcome::Completed,
            Outcome::GuestTrap { kind: String::new() },
            Outcome::Timeout,
            Outcome::MemoryLimit,
            Outcome::FuelExhausted,
            Outcome::SeccompViolation { syscall: String::new() },
            Outcome::ProtocolViolation { detail: String::new() },
            Outcome::Crashed { signal: 0 },
            Outcome::SpawnFailed,
            Outcome::Shutdown,
            Outcome::InvalidComponent,
        ];
        assert_eq!(all.map(|o| o.label()), Outcome::LABELS);
    }

    #[test]
    fn table_matches_the_spec() {
        assert_eq!(Outcome::Completed.envelope_error(), None);
        assert_eq!(Outcome::Timeout.envelope_error(), Some((504, "timeout".into())));
        assert_eq!(Outcome::MemoryLimit.envelope_error(), Some((500, "memory_limit_exceeded".into())));
        assert_eq!(Outcome::FuelExhausted.envelope_error(), Some((500, "fuel_exhausted".into())));
        assert_eq!(
            Outcome::GuestTrap { kind: "unreachable".into() }.envelope_error(),
            Some((500, "execute_failed: unreachable".into()))
        );
        for hidden in [
            Outcome::SeccompViolation { syscall: "socket (41)".into() },
            Outcome::ProtocolViolation { detail: "bad frame".into() },
            Outcome::Crashed { signal: 11 },
        ] {
            let (status, error) = hidden.envelope_error().unwrap();
            assert_eq!((status, error.as_str()), (500, "sandbox_violation"), "details stay operator-side");
        }
    }
}

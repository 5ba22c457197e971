//! Security policies as data (`policies/`), loaded, validated and reported at start.
//!
//! The seccomp allowlists live in `seccomp/<arch>.json` in seccompiler's JSON format, with one
//! `comment` on every rule saying why the sandbox needs that syscall. This crate embeds them,
//! refuses a rule without its reason, and compiles them to BPF for a chosen mode.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use seccompiler::BpfProgram;

/// The allowlist file for the architecture this binary was built for.
#[cfg(target_arch = "x86_64")]
pub const SECCOMP_JSON: &str = include_str!("../seccomp/x86_64.json");
#[cfg(target_arch = "aarch64")]
pub const SECCOMP_JSON: &str = include_str!("../seccomp/aarch64.json");

/// The filter applied to a sandbox that runs one execution.
pub const EXECUTE: &str = "execute";
/// The filter applied to a sandbox that compiles one component.
pub const COMPILE: &str = "compile";

/// How a filter treats a syscall that is not on its allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Kill the whole process (production).
    Enforce,
    /// Allow it and log it to the kernel audit log (policy development only: find missing
    /// syscalls with `dmesg | grep 'type=1326'`).
    Log,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("seccomp policy is not valid JSON of the expected shape: {0}")]
    Shape(#[from] serde_json::Error),
    #[error("seccomp policy: filter `{filter}`, rule for `{syscall}` has no comment saying why it is needed")]
    MissingReason { filter: String, syscall: String },
    #[error("seccomp policy: filter `{filter}` lists `{syscall}` twice without argument rules")]
    Duplicate { filter: String, syscall: String },
    #[error("seccomp policy: filter `{filter}` must kill the process on a mismatch (found {found})")]
    NotKill { filter: String, found: String },
    #[error(
        "seccomp policy: filter `{filter}` answers `{syscall}` with ENOSYS but does not allow it; add it to `filter` too (otherwise the kill on a mismatch wins)"
    )]
    EnosysNotAllowed { filter: String, syscall: String },
    #[error("seccomp policy: filter `{0}` is missing")]
    MissingFilter(String),
    #[error("seccomp policy does not compile: {0}")]
    Compile(#[from] seccompiler::Error),
}

/// One allowlist rule as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub syscall: String,
    pub comment: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    mismatch_action: Value,
    match_action: Value,
    filter: Vec<Rule>,
    /// Allowed syscalls that nevertheless fail with ENOSYS, for callers that have a fallback
    /// (installed as a second filter: the kernel takes the most restrictive answer of all filters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    enosys: Vec<Rule>,
}

/// A validated seccomp policy: named filters, each an allowlist with a reason on every rule.
#[derive(Debug, Clone)]
pub struct SeccompPolicy {
    filters: BTreeMap<String, Filter>,
}

impl SeccompPolicy {
    /// The policy embedded in this binary.
    pub fn embedded() -> Result<Self, PolicyError> {
        Self::parse(SECCOMP_JSON)
    }

    /// Parses and validates a policy file.
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        let filters: BTreeMap<String, Filter> = serde_json::from_str(json)?;
        for name in [EXECUTE, COMPILE] {
            if !filters.contains_key(name) {
                return Err(PolicyError::MissingFilter(name.into()));
            }
        }
        for (name, f) in &filters {
            if f.mismatch_action != "kill_process" {
                return Err(PolicyError::NotKill { filter: name.clone(), found: f.mismatch_action.to_string() });
            }
            let mut plain = BTreeSet::new();
            for rule in &f.filter {
                if rule.comment.trim().is_empty() {
                    return Err(PolicyError::MissingReason { filter: name.clone(), syscall: rule.syscall.clone() });
                }
                if rule.args.is_none() && !plain.insert(rule.syscall.as_str()) {
                    return Err(PolicyError::Duplicate { filter: name.clone(), syscall: rule.syscall.clone() });
                }
            }
            for rule in &f.enosys {
                if rule.comment.trim().is_empty() {
                    return Err(PolicyError::MissingReason { filter: name.clone(), syscall: rule.syscall.clone() });
                }
                if !plain.contains(rule.syscall.as_str()) {
                    return Err(PolicyError::EnosysNotAllowed { filter: name.clone(), syscall: rule.syscall.clone() });
                }
            }
        }
        Ok(SeccompPolicy { filters })
    }

    /// The syscalls a filter allows (each once, in file order).
    pub fn syscalls(&self, filter: &str) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.filters
            .get(filter)
            .map(|f| f.filter.iter().map(|r| r.syscall.as_str()).filter(|s| seen.insert(*s)).collect())
            .unwrap_or_default()
    }

    /// The rules of a filter, with their reasons.
    pub fn rules(&self, filter: &str) -> &[Rule] {
        self.filters.get(filter).map_or(&[], |f| &f.filter)
    }

    /// A copy of this policy with every rule for `syscall` removed from `filter` (used by the
    /// test that proves each allowed syscall is needed).
    pub fn without(&self, filter: &str, syscall: &str) -> Self {
        let mut copy = self.clone();
        if let Some(f) = copy.filters.get_mut(filter) {
            f.filter.retain(|r| r.syscall != syscall);
            f.enosys.retain(|r| r.syscall != syscall);
        }
        copy
    }

    /// The policy as JSON in the file format (for a fork server started with a custom policy).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.filters).unwrap_or_default()
    }

    /// The syscalls of `filter` that fail with ENOSYS.
    pub fn enosys(&self, filter: &str) -> Vec<&str> {
        self.filters.get(filter).map(|f| f.enosys.iter().map(|r| r.syscall.as_str()).collect()).unwrap_or_default()
    }

    /// Compiles each filter into the BPF programs to install, in order: its allowlist, then (when
    /// it has `enosys` syscalls) the program answering those with ENOSYS.
    pub fn compile(&self, mode: SeccompMode) -> Result<BTreeMap<String, Vec<BpfProgram>>, PolicyError> {
        // seccompiler reads its own dialect (comments included), one object per program, named
        // `<filter>/0` and `<filter>/1` so that they sort in installation order.
        let mut programs = serde_json::Map::new();
        for (name, f) in &self.filters {
            let mismatch = if mode == SeccompMode::Log { Value::from("log") } else { f.mismatch_action.clone() };
            let allow =
                serde_json::json!({ "mismatch_action": mismatch, "match_action": f.match_action, "filter": f.filter });
            programs.insert(format!("{name}/0"), allow);
            if !f.enosys.is_empty() {
                let refuse = serde_json::json!({
                    "mismatch_action": "allow",
                    "match_action": { "errno": ENOSYS },
                    "filter": f.enosys,
                });
                programs.insert(format!("{name}/1"), refuse);
            }
        }
        let json = serde_json::to_vec(&programs)?;
        let arch = std::env::consts::ARCH.try_into().map_err(seccompiler::Error::Backend)?;
        let compiled: BTreeMap<String, BpfProgram> =
            seccompiler::compile_from_json(json.as_slice(), arch)?.into_iter().collect();
        let mut out: BTreeMap<String, Vec<BpfProgram>> = BTreeMap::new();
        for (key, program) in compiled {
            let name = key.split('/').next().unwrap_or_default().to_string();
            out.entry(name).or_default().push(program);
        }
        Ok(out)
    }
}

/// ENOSYS: the same number on every Linux architecture this runs on.
const ENOSYS: u32 = 38;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_policy_is_valid_and_compiles() {
        let p = SeccompPolicy::embedded().unwrap();
        assert!(p.syscalls(EXECUTE).contains(&"recvfrom"));
        let bpf = p.compile(SeccompMode::Enforce).unwrap();
        assert!(!bpf[EXECUTE][0].is_empty());
        assert!(!bpf[COMPILE][0].is_empty());
        // memfd_create is answered with ENOSYS by a second program in execution sandboxes.
        assert_eq!(p.enosys(EXECUTE), ["memfd_create"]);
        assert_eq!(bpf[EXECUTE].len(), 2);
        assert_eq!(bpf[COMPILE].len(), 1);
        p.compile(SeccompMode::Log).unwrap();
    }

    #[test]
    fn forbidden_syscalls_are_not_on_any_list() {
        let p = SeccompPolicy::embedded().unwrap();
        for filter in [EXECUTE, COMPILE] {
            let allowed = p.syscalls(filter);
            for forbidden in [
                "open",
                "openat",
                "openat2",
                "socket",
                "connect",
                "execve",
                "execveat",
                "fork",
                "vfork",
                "clone",
                "clone3",
                "ptrace",
                "mount",
                "umount2",
                "kill",
                "tkill",
                "tgkill",
                "bpf",
                "keyctl",
                "userfaultfd",
                "perf_event_open",
                "unshare",
                "setns",
                "setrlimit",
                "prlimit64",
                "pidfd_open",
                "process_vm_writev",
            ] {
                assert!(!allowed.contains(&forbidden), "{filter} must not allow {forbidden}");
            }
        }
    }

    #[test]
    fn a_rule_without_a_reason_is_refused() {
        let json = r#"{
            "execute": {"mismatch_action": "kill_process", "match_action": "allow",
                        "filter": [{"syscall": "read", "comment": " "}]},
            "compile": {"mismatch_action": "kill_process", "match_action": "allow", "filter": []}
        }"#;
        let err = SeccompPolicy::parse(json).unwrap_err();
        assert!(matches!(err, PolicyError::MissingReason { ref syscall, .. } if syscall == "read"), "{err}");
    }

    #[test]
    fn a_policy_that_does_not_kill_is_refused() {
        let json = r#"{
            "execute": {"mismatch_action": "allow", "match_action": "allow", "filter": []},
            "compile": {"mismatch_action": "kill_process", "match_action": "allow", "filter": []}
        }"#;
        assert!(matches!(SeccompPolicy::parse(json), Err(PolicyError::NotKill { .. })));
    }

    #[test]
    fn enosys_needs_the_syscall_allowed() {
        let json = r#"{
            "execute": {"mismatch_action": "kill_process", "match_action": "allow", "filter": [],
                        "enosys": [{"syscall": "memfd_create", "comment": "fallback"}]},
            "compile": {"mismatch_action": "kill_process", "match_action": "allow", "filter": []}
        }"#;
        let err = SeccompPolicy::parse(json).unwrap_err();
        assert!(matches!(err, PolicyError::EnosysNotAllowed { ref syscall, .. } if syscall == "memfd_create"), "{err}");
        assert!(err.to_string().contains("add it to `filter`"), "{err}");
    }

    #[test]
    fn without_removes_a_syscall() {
        let p = SeccompPolicy::embedded().unwrap().without(EXECUTE, "recvfrom");
        assert!(!p.syscalls(EXECUTE).contains(&"recvfrom"));
        assert!(p.syscalls(COMPILE).contains(&"recvfrom"));
    }
}

//! The seccomp allowlists are minimal: removing any one allowed syscall breaks a real workload
//! (so every entry is needed), and the workload passes with the full list.

use std::path::Path;

use alga_policies::{COMPILE, EXECUTE, SeccompPolicy};
use alga_runner::exec::executor::{self, Report};
use alga_shared::bindings::HttpHeader;
use alga_shared::capability::Capability;
use alga_shared::limits::Limits;
use alga_shared::outcome::Outcome;
use alga_tests::{Harness, fixture_bytes, request};

fn harness(policy: &SeccompPolicy, cache: &Path) -> Harness {
    let json = policy.to_json();
    let cache = cache.to_path_buf();
    Harness::with(move |s| {
        s.plan.seccomp_policy = Some(json);
        s.cache_dir = cache;
    })
}

fn completed(r: &Report) -> bool {
    r.outcome == Outcome::Completed
}

/// Runs the execution workload; returns what went wrong, if anything.
fn execute_workload(h: &Harness) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |what: &str, ok: bool, r: &Report| {
        if !ok {
            problems.push(format!("{what}: {:?} {:?}", r.outcome, r.detail));
        }
    };

    // A large request: many small allocations (heap growth) and large buffers (remapping).
    let echo = h.artifact("echo");
    let mut big = request("/big");
    big.http.headers = (0..20_000).map(|i| HttpHeader { name: format!("x-h{i}"), value: "v".repeat(16) }).collect();
    big.http.body = Some(vec![b'b'; 1 << 20]);
    let r = h.execute_artifact(&echo, big, Limits::default(), &[]);
    check("echo (large request)", completed(&r), &r);

    let r = h.execute("logger", "/?lines=5", Limits::default(), &[]);
    check("logger", completed(&r) && r.stdout == b"to stdout\n" && r.logs.len() == 5, &r);

    let r = h.execute("storage", "/", Limits::default(), &[Capability::StorageKv]);
    check("storage", completed(&r) && r.host_calls >= 9, &r);

    let r = h.execute("trap", "/", Limits::default(), &[]);
    check("trap", matches!(&r.outcome, Outcome::GuestTrap { kind } if kind == "unreachable_code_reached"), &r);

    let r = h.execute("trap", "/?kind=recursion", Limits::default(), &[]);
    check("stack overflow", matches!(&r.outcome, Outcome::GuestTrap { kind } if kind == "stack_overflow"), &r);

    let r = h.execute("spin", "/", Limits { timeout_ms: 200, ..Limits::default() }, &[]);
    check("spin (deadline timer)", r.outcome == Outcome::Timeout && r.detail.is_none(), &r);

    let r = h.execute("membomb", "/", Limits { memory_bytes: 32 << 20, ..Limits::default() }, &[]);
    check("membomb", r.outcome == Outcome::MemoryLimit, &r);

    let r = h.execute("huge", "/?mb=3", Limits::default(), &[]);
    check("huge (3 MiB body)", completed(&r), &r);

    let r = h.execute("random", "/", Limits::default(), &[]);
    check("random", completed(&r), &r);

    let r = h.execute("sleeper", "/?ms=30", Limits::default(), &[]);
    check("sleeper (WASI timer)", completed(&r), &r);

    unclean_exits(h, &mut problems);
    problems
}

/// A sandbox that reported its result must still exit cleanly (exit_group is allowed).
fn unclean_exits(h: &Harness, problems: &mut Vec<String>) {
    std::thread::sleep(std::time::Duration::from_millis(100));
    let unclean = h.core.spawner.counters.unclean_exits.load(std::sync::atomic::Ordering::Relaxed);
    if unclean > 0 {
        problems.push(format!("{unclean} sandboxes did not exit cleanly after their result"));
    }
}

/// Compiles two components in fresh compile sandboxes; returns what went wrong.
fn compile_workload(h: &Harness) -> Vec<String> {
    let mut problems = Vec::new();
    for name in ["echo", "storage"] {
        if let Err(e) = h.rt.block_on(executor::compile(&h.core, &fixture_bytes(name))) {
            problems.push(format!("compiling {name}: {e}"));
        }
    }
    unclean_exits(h, &mut problems);
    problems
}

fn check_minimal(filter: &str, workload: fn(&Harness) -> Vec<String>, share_cache: bool) {
    let policy = SeccompPolicy::embedded().unwrap();
    let shared = tempfile::tempdir().unwrap();

    let baseline = workload(&harness(&policy, shared.path()));
    assert!(baseline.is_empty(), "the {filter} workload fails with the full allowlist: {baseline:#?}");

    let mut unneeded = Vec::new();
    for syscall in policy.syscalls(filter) {
        let own = tempfile::tempdir().unwrap();
        let cache = if share_cache { shared.path() } else { own.path() };
        let problems = workload(&harness(&policy.without(filter, syscall), cache));
        if problems.is_empty() {
            unneeded.push(syscall.to_string());
        } else {
            eprintln!("{filter} without {syscall}: {}", problems[0]);
        }
    }
    assert!(unneeded.is_empty(), "the {filter} filter allows syscalls nothing needed: {unneeded:?}");
}

#[test]
fn every_syscall_of_the_execute_filter_is_needed() {
    check_minimal(EXECUTE, execute_workload, true);
}

#[test]
fn every_syscall_of_the_compile_filter_is_needed() {
    check_minimal(COMPILE, compile_workload, false);
}

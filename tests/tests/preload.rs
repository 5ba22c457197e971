//! Preloaded sandboxes: after an execution of an artifact, sandboxes that loaded that artifact
//! while they were created serve its next executions — with every limit and outcome exactly as
//! on a generic sandbox, each sandbox still running one job, and never for another artifact.

use std::time::Duration;

use alga_shared::limits::Limits;
use alga_shared::outcome::Outcome;
use alga_tests::server::wait_until;
use alga_tests::{Harness, request};

#[test]
fn executions_after_the_first_run_on_preloaded_sandboxes() {
    let h = Harness::with(|s| {
        s.preloaded_per_artifact = 2;
        s.preloaded_max = 3;
    });
    let echo = h.artifact("echo");
    let first = h.execute_artifact(&echo, request("/first"), Limits::default(), &[]);
    assert_eq!(first.outcome, Outcome::Completed, "{:?}", first.detail);
    assert_eq!(h.core.preloaded.stats().misses, 1);
    wait_until("two echo sandboxes preloaded", || {
        let stats = h.core.preloaded.stats();
        assert_eq!(stats.failures, 0, "a preload failed: {:?}", h.core.preloaded.last_failure());
        stats.ready == 2
    });

    let mut pids = std::collections::HashSet::new();
    for i in 0..20 {
        let r = h.execute_artifact(&echo, request(&format!("/again/{i}")), Limits::default(), &[]);
        assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.detail);
        let body =
            String::from_utf8_lossy(r.response.as_ref().unwrap().body.as_deref().unwrap_or_default()).into_owned();
        assert!(body.contains(&format!("/again/{i}")), "execution {i} answered {body}");
        assert_eq!(r.phases_us.load_us, 0, "a preloaded sandbox loads nothing on the request path");
        assert!(pids.insert(r.pid), "sandbox {} ran a second job", r.pid);
        std::thread::sleep(Duration::from_millis(30));
    }
    let stats = h.core.preloaded.stats();
    assert!(stats.hits >= 15, "most executions found a preloaded sandbox: {stats:?}");
    assert_eq!(stats.failures, 0, "{stats:?}");

    // Another artifact gets its own shelf; the global cap (3) makes room by retiring echo's.
    let logger = h.artifact("logger");
    for _ in 0..3 {
        let r = h.execute_artifact(&logger, request("/?lines=2"), Limits::default(), &[]);
        assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.detail);
        assert_eq!(r.logs.len(), 2);
        assert_eq!(r.stdout, b"to stdout\n");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until("preloads settle", || h.core.preloaded.stats().loading == 0);
    let stats = h.core.preloaded.stats();
    assert!(stats.ready <= 3, "the global cap holds: {stats:?}");
    let r = h.execute_artifact(&echo, request("/after"), Limits::default(), &[]);
    assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.detail);
}

/// A fixture, its URL, the limits, and the outcome expected.
type Case = (&'static str, &'static str, Limits, fn(&Outcome) -> bool);

#[test]
fn limits_and_outcomes_hold_on_preloaded_sandboxes() {
    let h = Harness::new();
    // Each fixture runs once to get preloaded, then is checked on a preloaded sandbox.
    let cases: [Case; 5] = [
        // Less memory than the component's initial memory: refused as on a generic sandbox, even
        // though the preloaded sandbox instantiated it ahead, under the default limit.
        ("echo", "/", Limits { memory_bytes: 64 << 10, ..Limits::default() }, |o| *o == Outcome::MemoryLimit),
        ("spin", "/", Limits { timeout_ms: 200, ..Limits::default() }, |o| *o == Outcome::Timeout),
        ("membomb", "/", Limits { memory_bytes: 32 << 20, ..Limits::default() }, |o| *o == Outcome::MemoryLimit),
        (
            "trap",
            "/",
            Limits::default(),
            |o| matches!(o, Outcome::GuestTrap { kind } if kind == "unreachable_code_reached"),
        ),
        ("spin", "/", Limits { fuel: 10_000_000, timeout_ms: 10_000, ..Limits::default() }, |o| {
            *o == Outcome::FuelExhausted
        }),
    ];
    for (name, url, limits, expected) in cases {
        let artifact = h.artifact(name);
        let before = h.core.preloaded.stats().hits;
        for round in 0..2 {
            if round == 1 {
                wait_until("a preloaded sandbox", || h.core.preloaded.stats().ready > 0);
            }
            let r = h.execute_artifact(&artifact, request(url), limits, &[]);
            assert!(expected(&r.outcome), "{name} (round {round}): {:?} {:?}", r.outcome, r.detail);
        }
        assert!(h.core.preloaded.stats().hits > before, "{name} ran on a preloaded sandbox");
    }
}

#[test]
fn preloading_can_be_turned_off() {
    let h = Harness::with(|s| s.preloaded_per_artifact = 0);
    let echo = h.artifact("echo");
    for _ in 0..3 {
        let r = h.execute_artifact(&echo, request("/"), Limits::default(), &[]);
        assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.detail);
        assert!(r.phases_us.load_us > 0, "loaded on the request path");
    }
    let stats = h.core.preloaded.stats();
    assert_eq!((stats.hits, stats.misses, stats.ready, stats.loading), (0, 0, 0, 0), "{stats:?}");
}

#[test]
fn idle_preloaded_sandboxes_retire() {
    let h = Harness::with(|s| s.pool_max_idle = Duration::from_millis(300));
    let echo = h.artifact("echo");
    let r = h.execute_artifact(&echo, request("/"), Limits::default(), &[]);
    assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.detail);
    wait_until("a preloaded sandbox", || h.core.preloaded.stats().ready > 0);
    let fork_server = h.core.spawner.fork.pid();
    // No more executions: the idle ones retire (checked every half idle limit) and are reaped.
    wait_until("the preloaded sandboxes retired", || h.core.preloaded.stats().ready == 0);
    wait_until("and reaped", || alga_tests::children_of(fork_server).is_empty());
}

#[test]
fn an_execution_does_not_wait_for_a_preload_that_cannot_start() {
    // No room for any preloaded sandbox, and every artifact counts as large: the execution tries
    // to start a preload once, none starts, and it runs on a generic sandbox (it used to spin).
    let h = std::sync::Arc::new(Harness::with(|s| {
        s.preloaded_max = 0;
        s.preload_wait_min_bytes = 0;
    }));
    let echo = h.artifact("echo");
    let (tx, rx) = std::sync::mpsc::channel();
    let runner = h.clone();
    std::thread::spawn(move || {
        let r = runner.execute_artifact(&echo, request("/"), Limits::default(), &[]);
        let _ = tx.send(r);
    });
    let r = rx.recv_timeout(Duration::from_secs(20)).expect("the execution never ended");
    assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.detail);
    let stats = h.core.preloaded.stats();
    assert_eq!((stats.hits, stats.misses, stats.ready, stats.loading), (0, 1, 0, 0), "{stats:?}");
}

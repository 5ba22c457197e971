//! Process-per-execution at volume: after 1 000 sequential and 1 000 concurrent executions no
//! sandbox process, cgroup member or descriptor is left behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alga_runner::exec::executor;
use alga_shared::capability::CapabilitySet;
use alga_shared::limits::Limits;
use alga_shared::outcome::Outcome;
use alga_shared::protocol::ExecuteJob;
use alga_tests::{Harness, children_of, host_context, open_fds, request};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn thousands_of_executions_leave_nothing_behind() {
    let h = Harness::with(|s| s.pool_size = 4);
    let artifact = h.artifact("echo");
    // Let the pool fill so its sandboxes are part of the baseline.
    wait_until("the warm pool fills", || h.core.pool.stats().ready == 4);
    let fds_before = open_fds();

    for i in 0..1_000 {
        let report = h.execute_artifact(&artifact, request(&format!("/seq/{i}")), Limits::default(), &[]);
        assert_eq!(report.outcome, Outcome::Completed, "execution {i}: {:?}", report.detail);
    }

    let concurrent = h.rt.block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(8));
        let mut tasks = Vec::new();
        for i in 0..1_000 {
            let core = h.core.clone();
            let artifact = artifact.clone();
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire().await.unwrap();
                let job = ExecuteJob {
                    request: request(&format!("/conc/{i}")),
                    limits: Limits::default(),
                    capabilities: CapabilitySet::defaults(),
                    artifact_len: artifact.len,
                };
                executor::execute(&core, &artifact, job, &host_context(CapabilitySet::defaults())).await.outcome
            }));
        }
        let mut completed = 0;
        for t in tasks {
            if t.await.unwrap() == Outcome::Completed {
                completed += 1;
            }
        }
        completed
    });
    assert_eq!(concurrent, 1_000);

    let stats = h.core.pool.stats();
    assert!(stats.hits > 0, "the warm pool served executions: {stats:?}");
    let preloaded = h.core.preloaded.stats();
    assert!(preloaded.hits > 0, "preloaded sandboxes served executions: {preloaded:?}");

    // Only the refilled pool and the preloaded sandboxes remain: every executed sandbox was reaped.
    let fork_server = h.core.spawner.fork.pid();
    let waiting = || h.core.pool.stats().ready + h.core.preloaded.stats().ready + h.core.preloaded.stats().loading;
    wait_until("only pooled and preloaded sandboxes remain", || children_of(fork_server).len() <= waiting());

    // Stop the pool and drop the preloaded: then nothing at all is left, in the process table or
    // in any cgroup slot.
    h.core.pool.stop();
    h.core.preloaded.stop();
    wait_until("every sandbox is gone", || children_of(fork_server).is_empty());
    if let Some(_version) = h.core.spawner.cgroups.version() {
        for base in slot_dirs(&h) {
            let procs = std::fs::read_to_string(base.join("cgroup.procs")).unwrap_or_default();
            assert!(procs.trim().is_empty(), "{} still has members: {procs}", base.display());
        }
    }
    wait_until("descriptors no more than before the executions", || open_fds() <= fds_before);
}

fn slot_dirs(h: &Harness) -> Vec<std::path::PathBuf> {
    let _ = h;
    let mut dirs = Vec::new();
    let me = std::process::id();
    for hierarchy in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
        let Ok(walk) = walk(std::path::Path::new(hierarchy), 6) else { continue };
        dirs.extend(walk.into_iter().filter(|d| {
            d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sb-"))
                && d.parent()
                    .and_then(|p| p.file_name())
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("alga-runner.{me}-")))
        }));
    }
    dirs
}

fn walk(dir: &std::path::Path, depth: usize) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    if depth == 0 {
        return Ok(out);
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push(p.clone());
            out.extend(walk(&p, depth - 1).unwrap_or_default());
        }
    }
    Ok(out)
}

#[test]
fn two_executions_get_different_random_bytes() {
    let h = Harness::new();
    let a = h.execute("random", "/", Limits::default(), &[]);
    let b = h.execute("random", "/", Limits::default(), &[]);
    let body =
        |r: &alga_runner::exec::executor::Report| String::from_utf8(r.response.clone().unwrap().body.unwrap()).unwrap();
    let (a, b) = (body(&a), body(&b));
    let (a_secure, a_insecure) = a.split_once(':').unwrap();
    let (b_secure, b_insecure) = b.split_once(':').unwrap();
    assert_ne!(a_secure, b_secure, "wasi:random/random repeated across sandboxes");
    assert_ne!(a_insecure, b_insecure, "wasi:random/insecure repeated across sandboxes");
    assert_eq!(a_secure.len(), 64);
}

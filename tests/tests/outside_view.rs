//! A running sandbox as the kernel sees it from outside: `/proc/<pid>/status`, its descriptors
//! and its cgroup.

use std::time::{Duration, Instant};

use alga_runner::exec::executor;
use alga_shared::capability::CapabilitySet;
use alga_shared::limits::{Limits, MIB};
use alga_shared::outcome::Outcome;
use alga_shared::protocol::ExecuteJob;
use alga_tests::{Harness, children_of, host_context, request, skip_unless};

fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{name} missing from /proc/<pid>/status"))
}

#[test]
fn a_running_sandbox_is_locked_down() {
    let h = Harness::new();
    let artifact = h.artifact("spin");
    // The compile sandbox is hardened too: let it go before looking for the execution's sandbox.
    let settle = Instant::now() + Duration::from_secs(5);
    while !children_of(h.core.spawner.fork.pid()).is_empty() {
        assert!(Instant::now() < settle, "the compile sandbox did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    let limits = Limits { timeout_ms: 4_000, memory_bytes: 64 * MIB, ..Limits::default() };
    let job = ExecuteJob {
        request: request("/"),
        limits,
        capabilities: CapabilitySet::defaults(),
        artifact_len: artifact.len,
    };
    let core = h.core.clone();
    let running = h.rt.spawn(async move {
        let host = host_context(CapabilitySet::defaults());
        executor::execute(&core, &artifact, job, &host).await
    });

    // Find the sandbox running the job among the fork server's children: hardened, and the one
    // burning CPU (the guest spins). Idle pooled or preloaded sandboxes are hardened too, but
    // wait for a job with the default memory limit: picking one of them was this test's flake.
    let cpu_ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let pid = loop {
        let hardened: Vec<(u32, u64)> = children_of(h.core.spawner.fork.pid())
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| s.contains("Seccomp:\t2"))
            })
            .map(|pid| (pid, cpu_ticks(pid)))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let busiest = hardened.iter().map(|&(pid, before)| (cpu_ticks(pid).saturating_sub(before), pid)).max();
        if let Some((used, pid)) = busiest
            && used > 0
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "no hardened sandbox started running the job");
    };

    // A descendant of this (supervising) process: sandbox -> fork server -> us. No double fork.
    let ppid = |pid: u32| -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(ppid(pid), h.core.spawner.fork.pid());
    assert_eq!(ppid(h.core.spawner.fork.pid()), std::process::id());

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "Seccomp"), "2");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, caps), "0000000000000000", "{caps}");
    }
    let uid = status_field(&status, "Uid");
    assert!(uid.split_whitespace().all(|u| u == "65534"), "runs as the unprivileged sandbox user: {uid}");

    // Descriptors: its IPC socket and (at most) its artifact, nothing inherited.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_link(e.path()).unwrap().to_string_lossy().into_owned())
        .collect();
    let sockets = fds.iter().filter(|f| f.starts_with("socket:")).count();
    assert_eq!(sockets, 1, "{fds:?}");
    assert!(fds.iter().all(|f| f.starts_with("socket:") || f.starts_with("/memfd:alga-artifact")), "{fds:?}");

    // Its own cgroup, with the execution's memory limit (plus the runtime overhead) set.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    if let Some(version) = h.core.spawner.cgroups.version() {
        let expected = limits.memory_bytes + h.core.spawner.settings.runtime_overhead_bytes;
        let memory_dir = match version {
            alga_sandbox::cgroup::Version::V1 => {
                let path = cgroup.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string())).unwrap();
                assert!(path.contains("/alga-runner.") && path.contains("/sb-"), "own slot: {path}");
                format!("/sys/fs/cgroup/memory{path}")
            }
            alga_sandbox::cgroup::Version::V2 => {
                let path = cgroup.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)).unwrap();
                format!("/sys/fs/cgroup{path}")
            }
        };
        let limit_file = match version {
            alga_sandbox::cgroup::Version::V1 => "memory.limit_in_bytes",
            alga_sandbox::cgroup::Version::V2 => "memory.max",
        };
        let limit: u64 = std::fs::read_to_string(format!("{memory_dir}/{limit_file}")).unwrap().trim().parse().unwrap();
        assert_eq!(limit, expected);
    }

    let report = h.rt.block_on(running).unwrap();
    assert_eq!(report.outcome, Outcome::Timeout);
    assert_eq!(report.pid, pid, "the sandbox inspected is the one that ran the job");
    skip_unless!(
        h.core.spawner.cgroups.version().is_some(),
        "no usable cgroup hierarchy (the cgroup checks above did not run)"
    );
}

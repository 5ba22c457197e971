//! Where sandboxes sit in the process tree, and what happens when the supervisor dies.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alga_tests::{children_of, fixture, runner_bin};

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(false)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sandboxes_are_descendants_and_die_with_the_supervisor() {
    let state = tempfile::tempdir().unwrap();
    let mut supervisor = Command::new(runner_bin())
        .args(["exec", "--timeout-ms", "30000", "--component"])
        .arg(fixture("spin"))
        .env("ALGA_RUNNER_STATE_DIR", state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let supervisor_pid = supervisor.id();

    // supervisor -> fork server -> sandbox (running the guest, fully hardened).
    let mut fork_server = 0;
    let mut sandbox = 0;
    wait_for("a running sandbox under the fork server", Duration::from_secs(10), || {
        for fs in children_of(supervisor_pid) {
            for sb in children_of(fs) {
                // Hardened, and still there a second later: the spinning guest's sandbox, not
                // the compile sandbox that ran before it (hardened too, but gone once done).
                if std::fs::read_to_string(format!("/proc/{sb}/status")).is_ok_and(|s| s.contains("Seccomp:\t2")) {
                    std::thread::sleep(Duration::from_secs(1));
                    if !alive(sb) {
                        continue;
                    }
                    fork_server = fs;
                    sandbox = sb;
                    return true;
                }
            }
        }
        false
    });
    let cgroup = std::fs::read_to_string(format!("/proc/{sandbox}/cgroup")).unwrap();

    // kill -9 the supervisor: the fork server and the sandbox follow it (PR_SET_PDEATHSIG).
    supervisor.kill().unwrap();
    supervisor.wait().unwrap();
    wait_for("the fork server to die", Duration::from_secs(5), || !alive(fork_server));
    // Promptly, not at its own deadline (a uid change clears the parent-death signal; the sandbox
    // arms it again after dropping its credentials).
    wait_for("the sandbox to die", Duration::from_secs(2), || !alive(sandbox));

    // The next supervisor sweeps the cgroup the dead one left behind.
    if let Some(path) = cgroup.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string())) {
        let slot = std::path::PathBuf::from(format!("/sys/fs/cgroup/memory{path}"));
        let dir = slot.parent().unwrap().to_path_buf();
        assert!(dir.exists(), "the crashed supervisor's cgroup directory is still there before the sweep");
        let out = Command::new(runner_bin())
            .args(["exec", "--component"])
            .arg(fixture("echo"))
            .env("ALGA_RUNNER_STATE_DIR", state.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(!dir.exists(), "{} was not swept", dir.display());
    }
}

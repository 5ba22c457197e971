//! The systemd side: the unit verifies cleanly, its exposure score cannot get worse than the one
//! recorded in docs/operations.md, and the real service speaks the notify protocol (READY after
//! the self-test and the warm pool, watchdog keep-alives, STOPPING at shutdown).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alga_tests::server::{Options, Server, Signer};
use alga_tests::{runner_bin, skip_unless};

/// The exposure level `systemd-analyze security --offline=yes` gives the unit (docs/operations.md).
const RECORDED_EXPOSURE: f64 = 5.4;

fn unit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/alga-runner.service")
}

fn have_systemd_analyze() -> bool {
    Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// A copy of the unit whose ExecStart binary exists on this build host.
fn unit_copy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit()).unwrap();
    let copy = dir.join("alga-runner.service");
    std::fs::write(&copy, text.replace("/usr/bin/alga-runner", &runner_bin().display().to_string())).unwrap();
    copy
}

#[test]
fn the_unit_verifies_and_its_exposure_does_not_grow() {
    skip_unless!(have_systemd_analyze(), "systemd-analyze is not installed");
    let dir = tempfile::tempdir().unwrap();
    let copy = unit_copy(dir.path());
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify said:\n{said}");

    let out = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&copy).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for alga-runner.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(level <= RECORDED_EXPOSURE, "the unit's exposure grew to {level} (recorded {RECORDED_EXPOSURE})");
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md")).unwrap();
    assert!(docs.contains(&format!("{RECORDED_EXPOSURE}")), "docs/operations.md records the exposure level");
}

#[test]
fn the_service_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify");
    let listener = UnixDatagram::bind(&socket).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let signer = Signer::new();
    let mut server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![("NOTIFY_SOCKET".into(), socket.display().to_string()), ("WATCHDOG_USEC".into(), "200000".into())],
    });
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = listener.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let first = next();
    assert!(first.starts_with("READY=1\nSTATUS=serving on"), "{first}");
    // /readyz agrees once READY was sent.
    assert_eq!(server.request("GET", "/readyz", None, &[], None).status, 200);
    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        if next() == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5), "keep-alives every half interval");
    assert!(server.stop().success());
    let mut last = String::new();
    while let Ok(n) = listener.recv(&mut buf) {
        last = String::from_utf8_lossy(&buf[..n]).to_string();
        if last.starts_with("STOPPING=1") {
            break;
        }
    }
    assert!(last.starts_with("STOPPING=1"), "{last}");
}

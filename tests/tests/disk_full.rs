//! The state on a full filesystem (a small tmpfs): an execution whose record cannot be made
//! durable is never answered as a success, `/readyz` says not ready while writes fail, the
//! service recovers by itself once space returns (no restart), and every execution that was
//! answered 200 is in the log, then and after a restart.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use alga_tests::fixture_bytes;
use alga_tests::server::{ADMIN_TOKEN, Options, Server, Signer, envelope, manifest, pack};
use alga_tests::skip_unless;
use serde_json::{Value, json};

const TENANT: &str = "tenant-full";

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes zeros into `path` until the filesystem refuses more; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    let _ = f.sync_all();
    written
}

/// Whether a `WATCHDOG=1` arrives within a second, once what was sent before (and during the
/// watchdog's half-interval of 100 ms) is drained.
fn watchdog_pings(notify: &UnixDatagram) -> bool {
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = [0u8; 256];
    notify.set_nonblocking(true).unwrap();
    while notify.recv(&mut buf).is_ok() {}
    notify.set_nonblocking(false).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    while let Ok(n) = notify.recv(&mut buf) {
        if &buf[..n] == b"WATCHDOG=1" {
            return true;
        }
    }
    false
}

#[test]
fn a_full_disk_never_answers_an_unrecorded_success() {
    let fs = Tmpfs::mount(48);
    skip_unless!(fs.is_some(), "cannot mount a tmpfs (needs root and mount(8))");
    let fs = fs.unwrap();
    let state = fs.path().join("state");
    // systemd's watchdog, played by a datagram socket: keep-alives go on while the database
    // fails (a restart would not bring the space back; the service recovers in place).
    let notify_dir = tempfile::tempdir().unwrap();
    let notify = UnixDatagram::bind(notify_dir.path().join("notify")).unwrap();
    let signer = Signer::new();
    let mut server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![
            ("NOTIFY_SOCKET".into(), notify_dir.path().join("notify").display().to_string()),
            ("WATCHDOG_USEC".into(), "200000".into()),
            ("ALGA_RUNNER_STATE_DIR".into(), state.display().to_string()),
            ("ALGA_RUNNER_QUOTAS__TENANT_RATE_PER_S".into(), "0".into()),
            ("ALGA_RUNNER_QUOTAS__EXTENSION_RATE_PER_S".into(), "0".into()),
        ],
    });
    let bytes = pack(&manifest("com.example.full", "1.0.0", &[]), &fixture_bytes("echo"));
    assert_eq!(server.publish(&bytes, &signer.sign(&bytes, "com.example.full", "1.0.0")).status, 201);
    let hash = alga_shared::bundle::content_hash(&bytes);
    assert_eq!(server.install(TENANT, "com.example.full", &json!({"version": "1.0.0"})).status, 201);
    assert_eq!(server.request("GET", "/readyz", None, &[], None).status, 200);
    assert!(watchdog_pings(&notify), "keep-alives while healthy");

    let filler = fs.path().join("filler");
    assert!(fill(&filler) > 0, "the filler wrote nothing");
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..4000 {
        let mut env = envelope(TENANT, "com.example.full", &hash, "/");
        env["context"]["request_id"] = json!(format!("full-{i}"));
        let answer = server.execute(&env).json();
        match (answer["status"].as_u64(), answer["error"].as_str()) {
            (Some(200), None) => acknowledged.push(format!("full-{i}")),
            (Some(503), Some("storage_unavailable")) => {
                refused += 1;
                if refused == 1 {
                    let ready = server.request("GET", "/readyz", None, &[], None);
                    assert_eq!(
                        ready.status,
                        503,
                        "not ready while writes fail: {}",
                        String::from_utf8_lossy(&ready.body)
                    );
                    assert_eq!(ready.json()["checks"]["storage"], false);
                    assert!(watchdog_pings(&notify), "keep-alives stopped after a failed flush");
                }
                if refused >= 20 {
                    break;
                }
            }
            other => panic!("execution {i} on a full disk answered {other:?}: {answer}"),
        }
    }
    assert!(refused > 0, "4000 executions on a full disk were all answered 200");
    eprintln!("on a full disk: {} executions answered 200 and recorded, then {refused} refused", acknowledged.len());

    // Space returns: the service recovers by itself, and every acknowledged execution is in the
    // log, then and after a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while server.request("GET", "/readyz", None, &[], None).status != 200 {
        assert!(std::time::Instant::now() < deadline, "not ready 15 s after space returned:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.log_text().contains("the database recovered"), "{}", server.log_text());
    let mut env = envelope(TENANT, "com.example.full", &hash, "/");
    env["context"]["request_id"] = json!("after-recovery");
    let answer = server.execute(&env).json();
    assert_eq!(answer["status"], 200, "an execution after recovering: {answer}");
    acknowledged.push("after-recovery".into());
    assert_all_recorded(&server, &acknowledged);
    server.restart();
    assert_all_recorded(&server, &acknowledged);
}

/// Every acknowledged request id has its execution record.
fn assert_all_recorded(server: &Server, acknowledged: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tenants/{TENANT}/executions?limit=500&cursor={c}"),
            None => format!("/v1/tenants/{TENANT}/executions?limit=500"),
        };
        let page: Value = server.request("GET", &path, Some(ADMIN_TOKEN), &[], None).json();
        for item in page["items"].as_array().unwrap() {
            seen.insert(item["request_id"].as_str().unwrap_or_default().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let lost: Vec<&String> = acknowledged.iter().filter(|r| !seen.contains(*r)).collect();
    assert!(lost.is_empty(), "{} acknowledged executions have no record: {:?}", lost.len(), &lost[..lost.len().min(5)]);
}

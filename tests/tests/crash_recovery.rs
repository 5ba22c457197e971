//! `kill -9` of the real supervisor during publishes and during executions, then a restart on the
//! same state: no orphan process or cgroup, every acknowledged write kept, database and blob
//! store consistent.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alga_tests::fixture_bytes;
use alga_tests::server::{
    ADMIN_TOKEN, Server, Signer, alive, cgroup_dirs_of, descendants, envelope, manifest, pack, wait_until, wait_within,
};
use serde_json::json;

const TENANT: &str = "tenant-crash";

/// The registry and the blob store agree: each version's bundle is stored, each stored bundle has
/// a version, no temp file is left.
fn assert_consistent(server: &Server) -> BTreeSet<String> {
    let versions = server.all_versions();
    let hashes: BTreeSet<String> = versions
        .iter()
        .map(|v| v["content_hash"].as_str().unwrap().trim_start_matches("sha256:").to_string())
        .collect();
    let blobs: BTreeSet<String> = server.blob_files().into_iter().collect();
    assert_eq!(hashes, blobs, "version records and stored bundles disagree");
    hashes
}

#[test]
fn kill_9_during_publishes_then_restart() {
    let signer = Arc::new(Signer::new());
    let mut server = Server::start(&signer);
    let url = server.url.clone();

    // An upload cut off mid-body.
    let bytes = pack(&manifest("com.example.partial", "1.0.0", &[]), &fixture_bytes("echo"));
    let sig = signer.sign(&bytes, "com.example.partial", "1.0.0");
    let mut stream = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "POST /v1/bundles HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/octet-stream\r\n\
         x-alga-signature: {}\r\ncontent-length: {}\r\n\r\n",
        base64_encode(sig.as_bytes()),
        bytes.len()
    )
    .unwrap();
    stream.write_all(&bytes[..bytes.len() / 2]).unwrap();

    // Publishes in a loop, acknowledged ones remembered, while the supervisor is killed.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let publisher = {
        let (signer, acknowledged, url) = (signer.clone(), acknowledged.clone(), url.clone());
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
            for i in 0..1000 {
                let version = format!("1.0.{i}");
                let bytes = pack(&manifest("com.example.crash", &version, &[]), &fixture_bytes("echo"));
                let sig = base64_encode(signer.sign(&bytes, "com.example.crash", &version).as_bytes());
                let r = agent
                    .post(&format!("{url}/v1/bundles"))
                    .set("authorization", &format!("Bearer {ADMIN_TOKEN}"))
                    .set("x-alga-signature", &sig)
                    .send_bytes(&bytes);
                match r {
                    Ok(r) if r.status() == 201 => acknowledged.lock().unwrap().push(version),
                    Ok(r) => panic!("publish {version}: {}", r.status()),
                    Err(ureq::Error::Status(s, r)) => panic!("publish {version}: {s} {}", r.into_string().unwrap()),
                    Err(_) => return, // the supervisor is gone
                }
            }
        })
    };
    wait_until("a few publishes went through", || acknowledged.lock().unwrap().len() >= 3);
    let old_pid = server.pid();
    let tree = descendants(old_pid);
    assert!(!tree.is_empty(), "the supervisor should have a fork server and sandboxes");
    server.kill9();
    publisher.join().unwrap();
    drop(stream);
    wait_until("every process of the killed supervisor is gone", || tree.iter().all(|p| !alive(*p)));

    server.restart();
    assert!(
        cgroup_dirs_of(old_pid).is_empty(),
        "cgroups of the killed supervisor remain: {:?}",
        cgroup_dirs_of(old_pid)
    );
    let hashes = assert_consistent(&server);
    let stored: BTreeSet<String> =
        server.all_versions().iter().map(|v| v["version"].as_str().unwrap().to_string()).collect();
    for v in acknowledged.lock().unwrap().iter() {
        assert!(stored.contains(v), "acknowledged publish {v} lost (stored: {stored:?})");
    }
    assert!(!hashes.is_empty());
    assert_eq!(server.admin_get("/v1/extensions/com.example.partial").status, 404);
    let blob_dir = server.state_dir().join("bundles/sha256");
    assert!(
        alga_tests::server::list_names(&blob_dir).iter().all(|n| !n.starts_with('.')),
        "temp files left in the blob store"
    );

    // The registry works on: install and execute an acknowledged version.
    let version = acknowledged.lock().unwrap()[0].clone();
    let a = server.install(TENANT, "com.example.crash", &json!({"version": version}));
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let hash = a.json()["content_hash"].as_str().unwrap().to_string();
    assert_eq!(server.execute(&envelope(TENANT, "com.example.crash", &hash, "/")).json()["status"], 200);
}

#[test]
fn kill_9_during_executions_then_restart() {
    let signer = Signer::new();
    let mut server = Server::start(&signer);
    let bytes = pack(&manifest("com.example.sleepy", "1.0.0", &[]), &fixture_bytes("sleeper"));
    let published = server.publish(&bytes, &signer.sign(&bytes, "com.example.sleepy", "1.0.0"));
    assert_eq!(published.status, 201);
    let hash = published.json()["content_hash"].as_str().unwrap().to_string();
    assert_eq!(server.install(TENANT, "com.example.sleepy", &json!({"version": "1.0.0"})).status, 201);

    // Acknowledged executions are in the log, even when the supervisor dies right after the answer.
    for _ in 0..3 {
        let mut env = envelope(TENANT, "com.example.sleepy", &hash, "/");
        env["http"]["query"] = json!({"ms": "1"});
        assert_eq!(server.execute(&env).json()["status"], 200);
    }
    server.restart();
    let log = server.admin_get(&format!("/v1/tenants/{TENANT}/executions")).json();
    assert_eq!(log["items"].as_array().unwrap().len(), 3, "acknowledged executions lost: {log}");

    // Long executions in flight when the supervisor dies.
    let url = server.url.clone();
    let runners: Vec<_> = (0..3)
        .map(|_| {
            let (url, hash) = (url.clone(), hash.clone());
            std::thread::spawn(move || {
                let mut env = envelope(TENANT, "com.example.sleepy", &hash, "/");
                env["http"]["query"] = json!({"ms": "30000"});
                env["limits"] = json!({"timeout_ms": 40000});
                let _ = ureq::post(&format!("{url}/v1/execute"))
                    .set("authorization", &format!("Bearer {}", alga_tests::server::SERVICE_TOKEN))
                    .send_json(env);
            })
        })
        .collect();
    let old_pid = server.pid();
    // Each execution is a sandbox, a grandchild of the supervisor (under its fork server).
    wait_until("three sandboxes are running", || descendants(old_pid).len() >= 4);
    let tree = descendants(old_pid);
    server.kill9();
    for r in runners {
        r.join().unwrap();
    }
    // They die with it, not at their own deadline (30 s away).
    wait_within("every sandbox of the killed supervisor is gone", Duration::from_secs(3), || {
        tree.iter().all(|p| !alive(*p))
    });

    server.restart();
    assert!(
        cgroup_dirs_of(old_pid).is_empty(),
        "cgroups of the killed supervisor remain: {:?}",
        cgroup_dirs_of(old_pid)
    );
    assert_consistent(&server);
    let log = server.admin_get(&format!("/v1/tenants/{TENANT}/executions")).json();
    let records = log["items"].as_array().unwrap();
    assert_eq!(records.len(), 3, "the three acknowledged executions, and no other: {log}");
    let mut env = envelope(TENANT, "com.example.sleepy", &hash, "/");
    env["http"]["query"] = json!({"ms": "1"});
    assert_eq!(server.execute(&env).json()["status"], 200);

    // A graceful stop reaps every sandbox and removes every cgroup it made.
    let pid = server.pid();
    let tree = descendants(pid);
    let status = server.stop();
    assert!(status.success(), "graceful shutdown exit status: {status}");
    assert!(tree.iter().all(|p| !alive(*p)), "sandboxes survived a graceful stop");
    assert!(cgroup_dirs_of(pid).is_empty(), "cgroups survived a graceful stop: {:?}", cgroup_dirs_of(pid));
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn an_execution_cut_off_by_the_shutdown_is_recorded_as_shutdown() {
    let signer = Signer::new();
    let options = alga_tests::server::Options {
        trust_lines: vec![signer.public()],
        env: vec![("ALGA_RUNNER_SERVER__SHUTDOWN_GRACE_MS".into(), "300".into())],
    };
    let mut server = Server::start_with(options);
    let bytes = pack(&manifest("com.example.cutoff", "1.0.0", &[]), &fixture_bytes("sleeper"));
    assert_eq!(server.publish(&bytes, &signer.sign(&bytes, "com.example.cutoff", "1.0.0")).status, 201);
    let hash = alga_shared::bundle::content_hash(&bytes);
    assert_eq!(server.install(TENANT, "com.example.cutoff", &json!({"version": "1.0.0"})).status, 201);

    // An execution far longer than the grace, in flight when SIGTERM arrives.
    let url = server.url.clone();
    let runner = std::thread::spawn(move || {
        let mut env = envelope(TENANT, "com.example.cutoff", &hash, "/");
        env["http"]["query"] = json!({"ms": "20000"});
        env["limits"] = json!({"timeout_ms": 30000});
        let _ = ureq::post(&format!("{url}/v1/execute"))
            .set("authorization", &format!("Bearer {}", alga_tests::server::SERVICE_TOKEN))
            .send_json(env);
    });
    wait_until("the execution is admitted", || {
        server.admin_get(&format!("/v1/tenants/{TENANT}/quotas")).json()["in_flight"]["tenant_in_flight"] == 1
    });
    let pid = server.pid();
    let started = std::time::Instant::now();
    let status = server.stop();
    assert!(status.success(), "graceful shutdown exit status: {status}");
    assert!(started.elapsed() < Duration::from_secs(15), "the shutdown waited for the execution's own end");
    runner.join().unwrap();
    assert!(cgroup_dirs_of(pid).is_empty(), "cgroups survived the stop: {:?}", cgroup_dirs_of(pid));
    let log = server.log_text();
    for unwanted in ["sandbox exit was never reported", "sandbox violation", "not reaped in time"] {
        assert!(!log.contains(unwanted), "`{unwanted}` in the log:\n{log}");
    }

    // Its record survived the stop, with the `shutdown` outcome.
    server.restart();
    let records = server.admin_get(&format!("/v1/tenants/{TENANT}/executions")).json();
    let items = records["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{records}");
    assert_eq!(items[0]["outcome"], "shutdown", "{records}");
    assert_eq!(items[0]["status"], 503, "{records}");
}

//! The execution log through the real service and CLI: records with their last log lines,
//! per-tenant visibility, retention by count, and the hash chain that `alga-runner executions
//! --verify` checks — intact, then broken by an edit made directly in the database.

use std::process::Command;

use alga_runner::registry::{ExecutionRecord, SledRegistry, decode, encode};
use alga_tests::fixture_bytes;
use alga_tests::runner_bin;
use alga_tests::server::{ADMIN_TOKEN, Options, Server, Signer, deploy, hostapi_manifest, install_for};
use serde_json::json;

fn verify(server: &Server, tenant: &str, offline: bool) -> (i32, String) {
    let token = server.dir.path().join("admin.token");
    std::fs::write(&token, ADMIN_TOKEN).unwrap();
    let mut cmd = Command::new(runner_bin());
    cmd.args(["executions", "--tenant", tenant, "--verify"]);
    if offline {
        cmd.arg("--state-dir").arg(server.state_dir());
    } else {
        cmd.args(["--url", &server.url]).arg("--token-file").arg(&token);
    }
    let out = cmd.output().expect("running alga-runner executions --verify");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn records_chain_and_verify() {
    let signer = Signer::new();
    let mut server = Server::start(&signer);
    let d =
        deploy(&server, &signer, &hostapi_manifest("com.example.log", &[]), &fixture_bytes("hostapi"), "t1", json!({}));
    install_for(&server, &d, "1.0.0", "t2", json!({}));
    server.report("t1", &d, "/log?n=150", None);
    for i in 0..4 {
        server.report("t1", &d, &format!("/context?i={i}"), None);
    }
    server.report("t2", &d, "/context", None);

    let page = server.admin_get("/v1/tenants/t1/executions?limit=10").json();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{page}");
    assert!(items.iter().all(|r| r["tenant"] == "t1"), "only t1's records");
    let logged = &items[4];
    let logs = logged["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 100, "the last 100 lines are kept");
    assert_eq!(logs.last().unwrap(), "[warn] the last line");
    assert_eq!(logged["seq"], 1);
    assert_eq!(items[0]["seq"], 5);
    assert_eq!(items[0]["prev_hash"].as_str().unwrap().len(), 64);
    let t2 = server.admin_get("/v1/tenants/t2/executions").json();
    assert_eq!(t2["items"].as_array().unwrap().len(), 1);
    assert_eq!(t2["items"][0]["seq"], 1, "each tenant has its own chain");
    // The guest's log lines are in the service log with the execution's identity, at the level
    // the guest logged them (a `log-warn` line is a WARN line of the service).
    let hash = d.content_hash.clone();
    server.wait_for_log("the guest's last line", |log| {
        log.lines().any(|l| {
            l.contains("the last line")
                && l.contains(&hash)
                && l.contains("\"tenant\":\"t1\"")
                && l.contains("\"level\":\"WARN\"")
        })
    });

    let (code, out) = verify(&server, "t1", false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 5 record(s)"), "{out}");

    // Edit one record in the database (the service stopped), as someone covering tracks would.
    server.stop();
    let (code, out) = verify(&server, "t1", true);
    assert_eq!(code, 0, "offline, before the edit: {out}");
    {
        let db = SledRegistry::open(&server.state_dir().join("db")).unwrap();
        let tree = db.db().tree("extension_execution_log").unwrap();
        let (k, v) = tree
            .iter()
            .find_map(|kv| {
                let (k, v) = kv.unwrap();
                let r: ExecutionRecord = decode(&v).unwrap();
                (r.tenant == "t1" && r.seq == 3).then_some((k, v))
            })
            .expect("record #3");
        let mut r: ExecutionRecord = decode(&v).unwrap();
        r.status = 503;
        tree.insert(k, encode(&r)).unwrap();
        db.db().flush().unwrap();
    }
    let (code, out) = verify(&server, "t1", true);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record #4") && out.contains("BROKEN"), "{out}");
    let (code, out) = verify(&server, "t2", true);
    assert_eq!(code, 0, "t2 untouched: {out}");
    server.restart();
    let (code, out) = verify(&server, "t1", false);
    assert_eq!(code, 1, "through the running service too: {out}");
}

#[test]
fn retention_keeps_the_newest_and_the_chain_verifiable() {
    let signer = Signer::new();
    let server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![("ALGA_RUNNER_EXECUTIONS__MAX_PER_TENANT".into(), "3".into())],
    });
    let d =
        deploy(&server, &signer, &hostapi_manifest("com.example.log", &[]), &fixture_bytes("hostapi"), "t1", json!({}));
    for i in 0..6 {
        server.report("t1", &d, &format!("/context?i={i}"), None);
    }
    let page = server.admin_get("/v1/tenants/t1/executions").json();
    let seqs: Vec<u64> = page["items"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [6, 5, 4]);
    let (code, out) = verify(&server, "t1", false);
    assert_eq!(code, 0, "{out}");
}

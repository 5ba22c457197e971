//! context, user, config, metrics and idempotency through a real guest and the real service —
//! including that tenant B never sees tenant A's idempotency entries, whatever key it passes.

use alga_tests::fixture_bytes;
use alga_tests::server::{SERVICE_TOKEN, Server, Signer, deploy, envelope, hostapi_manifest, install_for};
use serde_json::{Value, json};

#[test]
fn context_user_config_and_metrics() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.misc", &[]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "config": { "region": "eu" } }),
    );
    let install_id = server.admin_get(&format!("/v1/tenants/t1/installs/{}", d.name)).json()["install_id"].clone();

    let ctx = server.report("t1", &d, "/context", None);
    assert_eq!(ctx["tenant"], "t1");
    assert_eq!(ctx["extension"], d.extension_id.as_str());
    assert!(ctx["install"].as_str().unwrap().contains(install_id.as_str().unwrap()), "{ctx}");
    assert_eq!(server.report("t1", &d, "/config?key=region", None), json!({ "ok": "Some(\"eu\")" }));
    assert_eq!(server.report("t1", &d, "/config?key=other", None), json!({ "ok": "None" }));

    // No user in the envelope: not-available; with one: the user, with the tenant of the execution.
    assert_eq!(server.report("t1", &d, "/user", None), json!({ "err": "not-available" }));
    let mut env = envelope("t1", &d.extension_id, &d.content_hash, "/user");
    env["user"] = json!({ "user_id": "u-7", "user_email": "a@example.com", "user_name": "A", "user_type": "internal", "company_name": "Acme", "client_id": "c-1" });
    let user: Value = serde_json::from_slice(&server.execute(&env).envelope_body()).unwrap();
    assert_eq!(user, json!({ "ok": { "user_id": "u-7", "client_id": "Some(\"c-1\")", "tenant": "t1" } }));

    server.report("t1", &d, "/metrics?name=orders", None);
    server.report("t1", &d, "/metrics?name=orders", None);
    server.report("t1", &d, "/metrics?name=Not-Valid", None);
    let metrics = server.request("GET", "/metrics", None, &[], None);
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.contains(&format!("alga_runner_extension_orders_total{{extension=\"{}\"}} 2", d.extension_id)),
        "{text}"
    );
    assert!(text.contains("alga_runner_extension_metrics_dropped_total 1"), "{text}");
}

#[test]
fn idempotency_entries_belong_to_one_tenant() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.idem", &["cap:storage.kv"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": ["storage.kv"] }),
    );
    install_for(&server, &d, "1.0.0", "t2", json!({ "granted_capabilities": ["storage.kv"] }));
    let call = |tenant: &str, path: &str, query: Value| -> Value {
        let mut env = envelope(tenant, &d.extension_id, &d.content_hash, path);
        env["http"]["method"] = json!("POST");
        env["http"]["query"] = query;
        env["http"]["body_b64"] = json!("dg==");
        let body = serde_json::to_vec(&env).unwrap();
        let answer = server.request(
            "POST",
            "/v1/execute",
            Some(SERVICE_TOKEN),
            &[("content-type", "application/json"), ("x-idempotency-key", "same-key")],
            Some(&body),
        );
        serde_json::from_slice(&answer.envelope_body()).unwrap()
    };
    assert_eq!(call("t1", "/storage/put", json!({ "key": "k" })), json!({ "ok": 1 }));
    assert_eq!(call("t1", "/storage/put", json!({ "key": "k" })), json!({ "ok": 1 }), "a replay, not a second put");
    assert_eq!(server.report("t1", &d, "/storage/get?key=k", None), json!({ "ok": "v", "rev": 1 }));
    // Tenant B with the same key runs its own execution in its own store.
    assert_eq!(call("t2", "/storage/put", json!({ "key": "k" })), json!({ "ok": 1 }));
    assert_eq!(call("t2", "/context", json!({})), json!({ "ok": 1 }), "still B's cached put (same key, B's entry)");
    assert_eq!(server.report("t2", &d, "/storage/get?key=k", None), json!({ "ok": "v", "rev": 1 }));
    let b_records = server.admin_get("/v1/tenants/t2/executions").json();
    assert!(b_records["items"].as_array().unwrap().iter().all(|r| r["tenant"] == "t2"));
}

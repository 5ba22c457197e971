//! `POST /v1/events` against the real service: subscriptions made at install from the
//! manifest's `events`, handlers run with the topic in their request, 202 with the execution
//! ids, and no handler after an upgrade without the event, a disable, or an uninstall.

use alga_tests::fixture_bytes;
use alga_tests::server::{
    ADMIN_TOKEN, SERVICE_TOKEN, Server, Signer, deploy, hostapi_manifest, install_for, pack, wait_until,
};
use serde_json::{Value, json};

fn publish_event(server: &Server, tenant: &str, topic: &str) -> Vec<String> {
    let body = serde_json::to_vec(&json!({ "tenant": tenant, "topic": topic, "payload": { "ticket": 7 } })).unwrap();
    let answer =
        server.request("POST", "/v1/events", Some(SERVICE_TOKEN), &[("content-type", "application/json")], Some(&body));
    assert_eq!(answer.status, 202, "{}", String::from_utf8_lossy(&answer.body));
    answer.json()["execution_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

fn record(server: &Server, tenant: &str, id: &str) -> Option<Value> {
    let page = server.admin_get(&format!("/v1/tenants/{tenant}/executions?limit=100")).json();
    page["items"].as_array()?.iter().find(|r| r["execution_id"] == id).cloned()
}

#[test]
fn subscribed_handlers_run_with_the_topic() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let mut manifest = hostapi_manifest("com.example.events", &[]);
    manifest["events"] = json!([{ "topic": "ticket.created", "handler": "on_ticket" }]);
    let d = deploy(&server, &signer, &manifest, &fixture_bytes("hostapi"), "t1", json!({}));
    install_for(&server, &d, "1.0.0", "t2", json!({}));

    let ids = publish_event(&server, "t1", "ticket.created");
    assert_eq!(ids.len(), 1, "one subscribed install in t1");
    let mut found = None;
    wait_until("the event execution to be recorded", || {
        found = record(&server, "t1", &ids[0]);
        found.is_some()
    });
    let r = found.expect("the event's execution is recorded under its id");
    assert_eq!(r["trigger"], "event:ticket.created");
    assert_eq!(r["endpoint"], "on_ticket");
    assert_eq!(r["status"], 200, "{r}");
    let logs = r["logs"].as_array().unwrap();
    assert!(
        logs.iter()
            .any(|l| l.as_str().unwrap().contains("event ticket.created")
                && l.as_str().unwrap().contains("\"ticket\":7")),
        "{logs:?}"
    );
    assert!(record(&server, "t2", &ids[0]).is_none(), "t2's log does not hold t1's event");

    assert!(publish_event(&server, "t1", "ticket.closed").is_empty(), "no subscription for that topic");
    assert!(publish_event(&server, "t3", "ticket.created").is_empty(), "a tenant without installs");

    // Disabled: no handler. Uninstalled: no handler.
    install_for(&server, &d, "1.0.0", "t2", json!({ "enabled": false }));
    assert!(publish_event(&server, "t2", "ticket.created").is_empty());
    let gone = server.request("DELETE", &format!("/v1/tenants/t1/installs/{}", d.name), Some(ADMIN_TOKEN), &[], None);
    assert_eq!(gone.status, 204);
    assert!(publish_event(&server, "t1", "ticket.created").is_empty());

    // An upgrade to a version without the event removes the subscription.
    install_for(&server, &d, "1.0.0", "t1", json!({}));
    assert_eq!(publish_event(&server, "t1", "ticket.created").len(), 1);
    let mut v2 = hostapi_manifest("com.example.events", &[]);
    v2["version"] = json!("2.0.0");
    let bytes = pack(&v2, &fixture_bytes("hostapi"));
    assert_eq!(server.publish(&bytes, &signer.sign(&bytes, "com.example.events", "2.0.0")).status, 201);
    install_for(&server, &d, "2.0.0", "t1", json!({}));
    assert!(publish_event(&server, "t1", "ticket.created").is_empty());

    let bad = server.request("POST", "/v1/events", Some(SERVICE_TOKEN), &[], Some(br#"{"tenant":"t1"}"#));
    assert_eq!((bad.status, bad.code().as_str()), (422, "invalid_event"));
    let unauth = server.request("POST", "/v1/events", Some(ADMIN_TOKEN), &[], Some(br#"{"tenant":"t1","topic":"x"}"#));
    assert_eq!(unauth.status, 401, "the service token, not the admin token");
}

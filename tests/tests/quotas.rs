//! Quotas against the real service: token-bucket rate limits (429 `rate_limited` with
//! `retry-after`), per-window invocation caps, concurrency (429 `quota_exceeded`), the global
//! queue (503 `overloaded`), and the usage windows every execution updates.

use std::time::Duration;

use alga_tests::fixture_bytes;
use alga_tests::server::{Options, SERVICE_TOKEN, Server, Signer, deploy, hostapi_manifest};
use serde_json::json;

fn start(env: &[(&str, &str)]) -> (Server, Signer) {
    let signer = Signer::new();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    (Server::start_with(Options { trust_lines: vec![signer.public()], env }), signer)
}

#[test]
fn rate_limits_answer_429_with_retry_after_and_usage_is_recorded() {
    let (server, signer) =
        start(&[("ALGA_RUNNER_QUOTAS__TENANT_RATE_PER_S", "0.2"), ("ALGA_RUNNER_QUOTAS__TENANT_BURST", "3")]);
    let d =
        deploy(&server, &signer, &hostapi_manifest("com.example.q", &[]), &fixture_bytes("hostapi"), "t1", json!({}));
    for _ in 0..3 {
        assert_eq!(server.call("t1", &d, "GET", "/context", None).json()["status"], 200);
    }
    let limited = server.call("t1", &d, "GET", "/context", None).json();
    assert_eq!((limited["status"].as_u64(), limited["error"].as_str()), (Some(429), Some("rate_limited")), "{limited}");
    let retry: u64 = limited["headers"]["retry-after"].as_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{limited}");
    // The gateway answers the same refusal as problem+json with the header.
    let gw =
        server.request("GET", &format!("/api/ext/{}/", d.name), Some(SERVICE_TOKEN), &[("x-alga-tenant", "t1")], None);
    assert_eq!((gw.status, gw.code().as_str()), (429, "rate_limited"));
    assert!(gw.header("retry-after").is_some());

    let usage = server.admin_get("/v1/tenants/t1/quotas").json();
    let window = &usage["windows"][0];
    assert_eq!(window["extension_name"], "com.example.q");
    assert_eq!(window["invocations"], 3, "refused calls are not invocations: {usage}");
    assert!(window["fuel"].as_u64().unwrap() > 0);
    assert_eq!(usage["limits"]["tenant_burst"], 3.0);
    let other = server.admin_get("/v1/tenants/t2/quotas").json();
    assert_eq!(other["windows"], json!([]), "another tenant sees none of t1's usage");
}

#[test]
fn window_caps_concurrency_and_the_global_queue() {
    let (server, signer) = start(&[
        ("ALGA_RUNNER_QUOTAS__TENANT_INVOCATIONS_PER_WINDOW", "2"),
        ("ALGA_RUNNER_QUOTAS__MAX_CONCURRENT", "1"),
        ("ALGA_RUNNER_QUOTAS__QUEUE_TIMEOUT_MS", "200"),
        ("ALGA_RUNNER_QUOTAS__EXTENSION_CONCURRENCY", "1"),
    ]);
    let d =
        deploy(&server, &signer, &hostapi_manifest("com.example.q", &[]), &fixture_bytes("hostapi"), "t1", json!({}));
    let spin = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.spin", &[]),
        &fixture_bytes("spin"),
        "t2",
        json!({ "limits": { "timeout_ms": 3000 } }),
    );

    // Two invocations per window for t1, then quota_exceeded until the window ends.
    for _ in 0..2 {
        assert_eq!(server.call("t1", &d, "GET", "/context", None).json()["status"], 200);
    }
    let capped = server.call("t1", &d, "GET", "/context", None).json();
    assert_eq!(capped["error"], "quota_exceeded", "{capped}");

    // t2's spinning execution holds the one slot: t2's second call hits its extension's
    // concurrency cap, and a third tenant waits in the global queue until it gives up.
    std::thread::scope(|s| {
        let busy = s.spawn(|| server.call("t2", &spin, "GET", "/", None).json());
        std::thread::sleep(Duration::from_millis(500));
        let second = server.call("t2", &spin, "GET", "/", None).json();
        assert_eq!(second["error"], "quota_exceeded", "{second}");
        alga_tests::server::install_for(&server, &d, "1.0.0", "t3", json!({}));
        let queued = server.call("t3", &d, "GET", "/context", None).json();
        assert_eq!((queued["status"].as_u64(), queued["error"].as_str()), (Some(503), Some("overloaded")), "{queued}");
        assert_eq!(busy.join().unwrap()["error"], "timeout");
    });
    assert_eq!(server.call("t3", &d, "GET", "/context", None).json()["status"], 200, "the slot is free again");
}

//! `/metrics` against the real service, fed by real executions: the series of 07-operations.md
//! with fixed label sets, and the opt-in extension label.

use alga_tests::fixture_bytes;
use alga_tests::server::{Options, Server, Signer, deploy, hostapi_manifest};
use serde_json::json;

fn scrape(server: &Server) -> String {
    let m = server.request("GET", "/metrics", None, &[], None);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap_or("").starts_with("application/openmetrics-text"));
    String::from_utf8_lossy(&m.body).to_string()
}

/// The value of the sample line starting with `prefix` (name and labels).
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample `{prefix}` in:\n{text}"))
}

#[test]
fn executions_host_calls_quotas_and_requests_are_counted() {
    let signer = Signer::new();
    let server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![
            ("ALGA_RUNNER_QUOTAS__TENANT_RATE_PER_S".into(), "0.01".into()),
            ("ALGA_RUNNER_QUOTAS__TENANT_BURST".into(), "4".into()),
        ],
    });
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.m", &["cap:storage.kv"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({}),
    );
    for _ in 0..3 {
        server.report("t1", &d, "/storage/get?key=k", None);
    }
    server.report("t1", &d, "/context", None);
    let limited = server.call("t1", &d, "GET", "/context", None).json();
    assert_eq!(limited["error"], "rate_limited");

    let text = scrape(&server);
    assert_eq!(value(&text, "alga_runner_executions_total{outcome=\"completed\"}"), 4.0);
    assert_eq!(value(&text, "alga_runner_execution_duration_seconds_count"), 4.0);
    assert_eq!(value(&text, "alga_runner_execution_fuel_consumed_count"), 4.0);
    assert_eq!(value(&text, "alga_runner_host_calls_total{api=\"storage\",result=\"denied\"}"), 3.0, "not granted");
    assert_eq!(value(&text, "alga_runner_host_calls_total{api=\"context\",result=\"ok\"}"), 1.0);
    assert_eq!(value(&text, "alga_runner_quota_rejections_total{kind=\"rate_limited\"}"), 1.0);
    assert_eq!(value(&text, "alga_runner_bundle_verifications_total{stage=\"publish\",result=\"ok\"}"), 1.0);
    assert_eq!(value(&text, "alga_runner_bundle_verifications_total{stage=\"install\",result=\"ok\"}"), 1.0);
    assert_eq!(
        value(&text, "alga_runner_bundle_verifications_total{stage=\"load\",result=\"ok\"}"),
        1.0,
        "once, then cached"
    );
    assert_eq!(value(&text, "alga_runner_http_requests_total{route=\"/v1/execute\",status=\"200\"}"), 5.0);
    assert!(value(&text, "alga_runner_sandbox_spawn_duration_seconds_count") >= 1.0);
    // Preloaded sandboxes are created in the background: one has been by now, or soon is.
    alga_tests::server::wait_until("a preloaded sandbox's creation timed", || {
        value(&scrape(&server), "alga_runner_sandbox_preload_duration_seconds_count") >= 1.0
    });
    assert!(text.contains("alga_runner_sandbox_pool_ready "), "{text}");
    assert!(text.contains("alga_runner_sandbox_preloaded_ready "), "{text}");
    // The first execution found no preloaded sandbox; each later one either did or did not.
    let count = |result: &str| {
        let prefix = format!("alga_runner_sandbox_preloads_total{{result=\"{result}\"}}");
        if text.contains(&prefix) { value(&text, &prefix) } else { 0.0 }
    };
    assert!(count("miss") >= 1.0, "{text}");
    assert_eq!(count("hit") + count("miss"), 4.0, "{text}");
    assert_eq!(count("failed"), 0.0, "{text}");
    assert!(text.contains("alga_runner_egress_bytes_total"), "{text}");
    assert!(!text.contains(&d.extension_id), "no extension label unless asked for:\n{text}");
    assert!(!text.contains("t1"), "never a tenant label");
}

#[test]
fn the_extension_label_is_opt_in() {
    let signer = Signer::new();
    let server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![("ALGA_RUNNER_METRICS__PER_EXTENSION".into(), "true".into())],
    });
    let d =
        deploy(&server, &signer, &hostapi_manifest("com.example.m", &[]), &fixture_bytes("hostapi"), "t1", json!({}));
    server.report("t1", &d, "/context", None);
    let text = scrape(&server);
    let line = format!("alga_runner_executions_total{{outcome=\"completed\",extension=\"{}\"}}", d.extension_id);
    assert_eq!(value(&text, &line), 1.0);
}

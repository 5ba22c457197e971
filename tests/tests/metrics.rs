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

#[test]
fn a_fresh_service_shows_its_build_its_process_and_every_counter_at_zero() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let text = scrape(&server);
    let build = text.lines().find(|l| l.starts_with("alga_runner_build_info{")).expect("build info");
    assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{build}");
    assert!(build.contains("wasmtime=\"48.") && build.contains("commit=\""), "{build}");
    assert!(build.ends_with(" 1"), "{build}");
    // Present (the CPU time of a process that just started may still be under one tick).
    assert!(value(&text, "process_cpu_seconds_total ") >= 0.0);
    for series in ["process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_start_time_seconds"]
    {
        assert!(value(&text, &format!("{series} ")) > 0.0, "{series}");
    }
    // Nothing happened yet, and every fixed series is there, at 0.
    for series in [
        "alga_runner_sandbox_violations_total{kind=\"seccomp_violation\"}",
        "alga_runner_sandbox_violations_total{kind=\"crashed\"}",
        "alga_runner_quota_rejections_total{kind=\"rate_limited\"}",
        "alga_runner_quota_rejections_total{kind=\"overloaded\"}",
        "alga_runner_executions_total{outcome=\"timeout\"}",
        "alga_runner_bundle_verifications_total{stage=\"load\",result=\"failed\"}",
        "alga_runner_bundle_fetches_total{result=\"corrupt\"}",
    ] {
        assert_eq!(value(&text, series), 0.0, "{series}");
    }
    assert!(text.ends_with("# EOF\n"), "the exposition still ends with its marker");
    assert_eq!(value(&text, "alga_runner_executions_in_flight "), 0.0);
    assert_eq!(value(&text, "alga_runner_executions_queued "), 0.0);
    // The first scrape is in the second one's request durations, by route pattern and class.
    let again = scrape(&server);
    assert_eq!(
        value(&again, "alga_runner_http_request_duration_seconds_count{route=\"/metrics\",status_class=\"2xx\"}"),
        1.0
    );

    // --version names the commit and the Wasmtime it links.
    let out = std::process::Command::new(alga_tests::runner_bin()).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with(&format!("alga-runner {} (commit ", env!("CARGO_PKG_VERSION"))), "{version}");
    assert!(version.contains(", wasmtime 48."), "{version}");
    // Completion scripts for the shells clap knows.
    for (shell, marker) in
        [("bash", "complete -F"), ("zsh", "#compdef alga-runner"), ("fish", "complete -c alga-runner")]
    {
        let out = std::process::Command::new(alga_tests::runner_bin()).args(["completions", shell]).output().unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && script.contains(marker) && script.contains("prefetch"), "{shell}: {script}");
    }
}

#[test]
fn readyz_fails_while_a_required_layer_is_not_full_and_start_says_which() {
    let signer = Signer::new();
    // Without cgroups the cgroup layer is missing; requiring it keeps the service out of rotation.
    let env = |require: &str| {
        vec![
            ("ALGA_RUNNER_SANDBOX__CGROUPS".to_string(), "false".to_string()),
            ("ALGA_RUNNER_SANDBOX__REQUIRE".to_string(), require.to_string()),
        ]
    };
    let strict = Server::start_with(Options { trust_lines: vec![signer.public()], env: env("seccomp,cgroup") });
    let ready = strict.request("GET", "/readyz", None, &[], None);
    assert_eq!(ready.status, 503, "{}", String::from_utf8_lossy(&ready.body));
    assert_eq!(ready.json()["checks"]["required_layers"]["not_full"], json!(["cgroup"]));
    assert!(strict.log_text().lines().any(|l| l.contains("a hardening layer is not full") && l.contains("cgroup")));
    let lenient = Server::start_with(Options { trust_lines: vec![signer.public()], env: env("seccomp") });
    // Ready once its warm pool has filled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while lenient.request("GET", "/readyz", None, &[], None).status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready: {}", lenient.log_text());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ready = strict.request("GET", "/readyz", None, &[], None);
    assert_eq!(ready.status, 503, "still not ready: {}", String::from_utf8_lossy(&ready.body));
    assert_eq!(ready.json()["checks"]["pool"]["target"], 1, "the pool is not what holds it back");
    assert!(lenient.log_text().contains("a hardening layer is not full"), "warned even when not required");
}

#[test]
fn a_port_in_use_ends_the_start_before_anything_is_created() {
    let signer = Signer::new();
    let running = Server::start(&signer);
    let port = running.url.rsplit(':').next().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let child = std::process::Command::new(alga_tests::runner_bin())
        .args(["serve"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ALGA_RUNNER_LISTEN", format!("127.0.0.1:{port}"))
        .env("ALGA_RUNNER_STATE_DIR", &state)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("listening on 127.0.0.1:{port}")), "{stderr}");
    assert!(!state.exists(), "no state directory was created");
    assert!(alga_tests::server::cgroup_dirs_of(pid).is_empty(), "no cgroup was created");
    assert!(stderr.contains("the trust bundle holds no key"), "an empty trust bundle is said: {stderr}");
}

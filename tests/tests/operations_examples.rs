//! The examples operators copy (docs/operations/): the Prometheus alert rules parse with
//! `promtool` (Debian's `prometheus` package), and every series the rules and the Grafana
//! dashboard name is one a running alga-runner exports.

use std::path::{Path, PathBuf};
use std::process::Command;

use alga_tests::fixture_bytes;
use alga_tests::server::{Server, Signer, deploy, manifest};
use alga_tests::skip_unless;
use serde_json::json;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations").join(name)
}

/// Every `alga_runner_*` and `process_*` name in `text`.
fn series_named(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in ["alga_runner_", "process_"] {
        for (i, _) in text.match_indices(prefix) {
            if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
                continue;
            }
            let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Whether the exposition declares the family a sample name belongs to.
fn exported(exposition: &str, name: &str) -> bool {
    let family = ["_bucket", "_count", "_sum", "_total"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
    [name, family].iter().any(|f| exposition.contains(&format!("# TYPE {f} ")))
}

#[test]
fn the_alert_rules_parse_and_name_only_exported_series() {
    let promtool = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    skip_unless!(promtool, "promtool is not installed (apt-get install prometheus)");
    let rules = example("alerts.yml");
    let out = Command::new("promtool").args(["check", "rules"]).arg(&rules).output().unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"), "{}", String::from_utf8_lossy(&out.stdout));

    // A service that has run one execution and answered one request: the families that have
    // samples only once something happened (histograms, request counters) are there too.
    let signer = Signer::new();
    let server = Server::start(&signer);
    let d =
        deploy(&server, &signer, &manifest("com.example.ops", "1.0.0", &[]), &fixture_bytes("echo"), "t1", json!({}));
    assert_eq!(server.call("t1", &d, "GET", "/", None).json()["status"], 200);
    server.request("GET", "/metrics", None, &[], None);
    let exposition = String::from_utf8_lossy(&server.request("GET", "/metrics", None, &[], None).body).to_string();
    let dashboard = std::fs::read_to_string(example("grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()), "the dashboard has panels");
    for (what, text) in
        [("alerts.yml", std::fs::read_to_string(&rules).unwrap()), ("grafana-dashboard.json", dashboard)]
    {
        let names = series_named(&text);
        assert!(names.len() >= 5, "{what} names series: {names:?}");
        for name in names {
            assert!(exported(&exposition, &name), "{what} names {name}, which alga-runner does not export");
        }
    }
}

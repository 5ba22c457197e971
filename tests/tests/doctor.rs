//! `alga-runner doctor` reports each layer, and a real sandbox's own report.

use std::process::Command;

use alga_tests::runner_bin;
use serde_json::Value;

#[test]
fn doctor_reports_every_layer_as_json() {
    let out = Command::new(runner_bin()).args(["doctor", "--json"]).output().unwrap();
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    for layer in ["seccomp", "landlock", "cgroup", "namespaces", "no_new_privs"] {
        let status = v[layer]["status"].as_str().unwrap_or_else(|| panic!("{layer} missing: {v}"));
        assert!(["ok", "partial", "missing"].contains(&status), "{layer}: {status}");
        assert!(v[layer]["detail"].is_string());
    }
    assert!(v["landlock"]["abi"].is_u64());
    assert!(v["cgroup"].get("version").is_some() && v["cgroup"]["controllers"].is_array());
    assert_eq!(out.status.code(), Some(if v["ok"] == true { 0 } else { 1 }));
    assert_eq!(v["seccomp"]["status"], "ok", "{v}");
    assert_eq!(v["self_test"]["status"], "ok", "{v}");
    assert_eq!(v["self_test"]["layers"]["seccomp"]["level"], "full", "{v}");
}

#[test]
fn a_required_layer_that_is_missing_fails_the_doctor() {
    let out = Command::new(runner_bin()).args(["doctor", "--json", "--no-self-test"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Require every layer: the exit code follows whether all of them are ok.
    let mut cmd = Command::new(runner_bin());
    cmd.args(["doctor", "--json", "--no-self-test"]);
    for layer in ["landlock", "cgroup", "namespaces"] {
        cmd.args(["--require", layer]);
    }
    let all = cmd.output().unwrap();
    let all_ok = ["seccomp", "landlock", "cgroup", "namespaces", "no_new_privs"].iter().all(|l| v[l]["status"] == "ok");
    assert_eq!(all.status.code(), Some(if all_ok { 0 } else { 1 }));
    let text = Command::new(runner_bin()).args(["doctor", "--no-self-test"]).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("landlock"));
}

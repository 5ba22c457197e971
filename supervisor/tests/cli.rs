//! The binary's command line: usage errors and help. (Its presence also makes `cargo test`
//! build the `alga-runner` binary that the end-to-end tests in `tests/` drive.)

use std::process::Command;

fn runner() -> Command {
    Command::new(env!("CARGO_BIN_EXE_alga-runner"))
}

#[test]
fn help_names_every_subcommand() {
    let out = runner().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["exec", "doctor"] {
        assert!(text.contains(sub), "{text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = runner().args(["exec"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "missing --component");
    let out = runner().args(["exec", "--component", "x.wasm", "--header", "no-colon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected `name: value`"));
    let out = runner().args(["doctor", "--require", "nonsense"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_missing_component_file_is_an_infrastructure_error() {
    let out = runner().args(["exec", "--component", "/nonexistent/x.wasm"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.wasm"));
}

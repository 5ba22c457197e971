//! `alga-runner exec` as an extension author uses it: the real binary, a real sandbox, one JSON
//! object on stdout. Each fixture's exact outcome.

use std::path::Path;
use std::process::Command;

use alga_tests::{CORE_MODULE, fixture, runner_bin};
use base64::Engine;
use serde_json::Value;

struct Exec {
    json: Value,
    code: Option<i32>,
}

fn exec(state: &Path, args: &[&str]) -> Exec {
    let out = Command::new(runner_bin())
        .arg("exec")
        .args(args)
        .env("ALGA_RUNNER_STATE_DIR", state)
        .output()
        .expect("running alga-runner exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("stdout is not one JSON object ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    Exec { json, code: out.status.code() }
}

fn run(state: &Path, name: &str, extra: &[&str]) -> Value {
    let component = fixture(name);
    let mut args = vec!["--component", component.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = exec(state, &args);
    assert_eq!(r.code, Some(0), "exec is attempted: exit 0 whatever the outcome: {}", r.json);
    r.json
}

fn body(v: &Value) -> String {
    let b64 = v["body_b64"].as_str().unwrap_or_else(|| panic!("no body: {v}"));
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

#[test]
fn echo_answers_with_method_url_headers_and_body() {
    let state = tempfile::tempdir().unwrap();
    let body_file = state.path().join("body");
    std::fs::write(&body_file, b"ping").unwrap();
    let v = run(
        state.path(),
        "echo",
        &[
            "--method",
            "put",
            "--path",
            "/items/7?q=1&r=2",
            "--header",
            "X-Trace:  abc ",
            "--body-file",
            body_file.to_str().unwrap(),
        ],
    );
    assert_eq!(v["outcome"], "completed");
    assert_eq!(v["status"], 200);
    assert_eq!(v["error"], Value::Null);
    assert_eq!(v["headers"]["x-ext-echo"], "1");
    let b = body(&v);
    assert!(b.contains(r#""method":"PUT""#), "{b}");
    assert!(b.contains(r#""url":"/items/7?q=1&r=2""#), "the guest url is --path as given: {b}");
    assert!(b.contains(r#"["x-trace","abc"]"#), "name lower-cased, value trimmed: {b}");
    assert!(b.contains(r#""body_hex":"70696e67""#), "{b}");
    for key in ["duration_ms", "memory_peak_bytes", "fuel_consumed", "logs"] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    assert!(v["fuel_consumed"].as_u64().unwrap() > 0);
    assert!(v["memory_peak_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn logger_lines_output_context_and_config() {
    let state = tempfile::tempdir().unwrap();
    let v = run(state.path(), "logger", &["--path", "/?lines=3", "--tenant", "acme", "--config", "greeting=hi"]);
    assert_eq!(v["outcome"], "completed");
    let logs: Vec<&str> = v["logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(logs, ["[info] line 0", "[warn] line 1", "[error] line 2"]);
    assert_eq!(v["stdout"], "to stdout\n");
    assert_eq!(v["stderr"], "to stderr\n");
    let b = body(&v);
    assert!(b.contains(r#""tenant":"acme""#), "{b}");
    assert!(b.contains(r#""greeting":"hi""#), "{b}");
    assert!(b.contains("not-available"), "no user for a local execution: {b}");
}

#[test]
fn log_lines_past_the_cap_are_dropped_and_counted() {
    let state = tempfile::tempdir().unwrap();
    let v = run(state.path(), "logger", &["--path", "/?lines=1200"]);
    assert_eq!(v["outcome"], "completed", "a log flood never fails the execution");
    let logs = v["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 1_001);
    assert_eq!(logs[1_000], "[alga-runner] 200 more log lines dropped (limit reached)");
    let long = run(state.path(), "logger", &["--path", "/?lines=1&size=20000"]);
    let line = long["logs"][0].as_str().unwrap();
    assert!(line.len() <= 8 * 1024 + 10 && line.ends_with("[truncated]"), "{}", line.len());
}

#[test]
fn storage_round_trip_with_the_capability_and_denied_without() {
    let state = tempfile::tempdir().unwrap();
    let v = run(state.path(), "storage", &["--capability", "storage.kv"]);
    let b = body(&v);
    for expected in [
        r#""put":"ok rev Some(1)""#,
        r#""get":"ok one rev Some(1)""#,
        r#""cas":"ok Some(2)""#,
        r#""list":"ok [\"a\", \"b\"]""#,
        r#""list_after_a":"ok [\"b\"]""#,
        r#""delete":"ok ()""#,
    ] {
        assert!(b.contains(expected), "{expected} in {b}");
    }
    assert!(b.contains(r#""cas_stale":"err StorageError"#) && b.contains("conflict"), "{b}");
    assert!(b.contains(r#""delete_again":"err"#) && b.contains("missing"), "{b}");

    let denied = body(&run(state.path(), "storage", &[]));
    assert!(denied.contains("denied"), "without cap:storage.kv every call is denied, not a trap: {denied}");
}

#[test]
fn hostile_guests_end_with_their_exact_outcome() {
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let cases: &[(&str, &[&str], &str, &str)] = &[
        ("spin", &["--timeout-ms", "300"], "timeout", "timeout"),
        ("spin", &["--fuel", "1000000"], "fuel_exhausted", "fuel_exhausted"),
        ("membomb", &["--memory-mb", "64"], "memory_limit", "memory_limit_exceeded"),
        ("trap", &[], "guest_trap", "execute_failed: unreachable_code_reached"),
        ("trap", &["--path", "/?kind=recursion"], "guest_trap", "execute_failed: stack_overflow"),
        ("huge", &[], "guest_trap", "execute_failed: response_too_large"),
        ("flood", &[], "guest_trap", "execute_failed: host_call_limit"),
    ];
    for (name, args, outcome, error) in cases {
        let v = run(s, name, args);
        assert_eq!(v["outcome"], *outcome, "{name} {args:?}: {v}");
        assert_eq!(v["error"], *error, "{name} {args:?}: {v}");
    }
    let bad_status = run(s, "trap", &["--path", "/?kind=status"]);
    assert_eq!(bad_status["outcome"], "completed");
    assert_eq!(bad_status["status"], 502);
    assert_eq!(bad_status["error"], "invalid_guest_response");
    let timeout = run(s, "spin", &["--timeout-ms", "300"]);
    assert!(timeout["duration_ms"].as_f64().unwrap() < 1_500.0, "{timeout}");
}

#[test]
fn non_components_and_other_worlds_are_refused_before_running() {
    let state = tempfile::tempdir().unwrap();
    let core_module = state.path().join("core.wasm");
    std::fs::write(&core_module, CORE_MODULE).unwrap();
    let v = exec(state.path(), &["--component", core_module.to_str().unwrap()]);
    assert_eq!(v.code, Some(0));
    assert_eq!(v.json["outcome"], "invalid_component");
    assert!(v.json["error"].as_str().unwrap().contains("core WebAssembly module"), "{}", v.json);

    let v = run(state.path(), "wrong-world", &[]);
    assert_eq!(v["outcome"], "invalid_component");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("does not export `handler"), "{e}");
    assert!(e.contains("wasi:cli/run"), "names what it exports instead: {e}");
}

#[test]
fn compiled_artifacts_are_cached_and_checked() {
    let state = tempfile::tempdir().unwrap();
    run(state.path(), "echo", &[]);
    let cache = state.path().join("cache");
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1, "one directory per component hash");
    let dir = entries[0].path();
    let files: Vec<String> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(files.iter().any(|f| f.ends_with(".cwasm")) && files.iter().any(|f| f.ends_with(".sha256")), "{files:?}");

    // Tamper with the cached artifact: it is refused, recompiled, and the execution still works.
    let cwasm = dir.join(files.iter().find(|f| f.ends_with(".cwasm")).unwrap());
    let mut bytes = std::fs::read(&cwasm).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&cwasm, &bytes).unwrap();
    let v = run(state.path(), "echo", &[]);
    assert_eq!(v["outcome"], "completed", "{v}");
    assert_ne!(std::fs::read(&cwasm).unwrap(), bytes, "the tampered file was replaced");
}

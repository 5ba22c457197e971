//! The JavaScript sample extension (examples/hello-js), built from source with the pinned
//! componentize-js, packed, signed, published, installed and executed through the HTTP API:
//! host APIs from JS, the time, an uncaught exception with its message and stack in the
//! execution record, and hostile JS (an endless loop, a memory bomb) stopped by the limits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use alga_tests::server::{Server, Signer, envelope, pack_with_ui};
use alga_tests::skip_unless;
use serde_json::{Value, json};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-js")
}

/// Builds the component with the example's own build (npm ci on its lockfile, then build.mjs
/// with `flags`).
fn build(flags: &[&str]) -> Result<Vec<u8>, String> {
    let dir = example();
    if !dir.join("node_modules/@bytecodealliance/componentize-js").is_dir() {
        let out = Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("npm ci failed: {}", String::from_utf8_lossy(&o.stderr))),
            Err(e) => return Err(format!("npm: {e}")),
        }
    }
    let wasm = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hello-js{}.wasm", flags.join("")));
    let out = Command::new("node")
        .arg("build.mjs")
        .arg(&wasm)
        .args(flags)
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("node: {e}"))?;
    if !out.status.success() {
        return Err(format!("build.mjs failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    std::fs::read(&wasm).map_err(|e| e.to_string())
}

fn have_node() -> bool {
    Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success())
        && Command::new("npm").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn the_js_sample_runs_under_every_layer() {
    skip_unless!(have_node(), "node and npm are needed to build the JS sample (apt-get install npm)");
    let component = build(&[]).expect("building the JS sample");
    assert!(component.len() > 5 << 20, "a StarlingMonkey component is large: {} bytes", component.len());

    let signer = Signer::new();
    let server = Server::start(&signer);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(example().join("bundle/manifest.json")).unwrap()).unwrap();
    let index = std::fs::read(example().join("bundle/ui/index.html")).unwrap();
    let bytes = pack_with_ui(&manifest, &component, &[("index.html", &index)]);
    let started = Instant::now();
    let published_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let published = server.publish(&bytes, &signer.sign(&bytes, "com.example.hello-js", "1.0.0"));
    assert_eq!(published.status, 201, "{}", String::from_utf8_lossy(&published.body));
    let hash = published.json()["content_hash"].as_str().unwrap().to_string();
    let installed = server.install(
        "t1",
        "com.example.hello-js",
        &json!({ "version": "1.0.0", "granted_capabilities": ["storage.kv", "secrets.get", "http.fetch"] }),
    );
    assert_eq!(installed.status, 201);

    let call = |method: &str, path: &str, body: Option<&str>, limits: Value| -> Value {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let mut env = envelope("t1", "com.example.hello-js", &hash, p);
        env["http"]["method"] = json!(method);
        if let Some((k, v)) = q.split_once('=') {
            env["http"]["query"] = json!({ k: v });
        }
        if let Some(b) = body {
            env["http"]["body_b64"] = json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b));
        }
        env["limits"] = limits;
        server.execute(&env).json()
    };
    let body = |env: &Value| -> Value {
        let b =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, env["body_b64"].as_str().unwrap_or(""))
                .unwrap();
        serde_json::from_slice(&b).unwrap_or(Value::Null)
    };

    let first = call("GET", "/hello?name=Ada", None, json!({}));
    eprintln!("publish to first execution: {:?}", started.elapsed());
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(body(&first), json!({ "greeting": "Hello, Ada!", "visits": 1 }));
    assert_eq!(
        body(&call("GET", "/hello?name=Ada", None, json!({}))),
        json!({ "greeting": "Hello, Ada!", "visits": 2 })
    );
    let who = body(&call("GET", "/whoami", None, json!({})));
    assert_eq!((who["tenant"].as_str(), who["user"].as_str()), (Some("t1"), Some("(not-available)")));
    assert_eq!(
        body(&call("GET", "/secret?key=api_key", None, json!({}))),
        json!({ "present": false, "error": "missing" })
    );
    assert_eq!(
        body(&call("POST", "/fetch", Some("http://127.0.0.1:9/"), json!({}))),
        json!({ "error": "not-allowed" })
    );
    let now = body(&call("GET", "/time", None, json!({})))["now"].as_u64().unwrap();
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(real.abs_diff(now) < 60_000, "Date.now() is the real time: {now} vs {real}");

    // The newest execution record's outcome and log lines.
    let last_record = || -> (String, Vec<String>) {
        let records = server.admin_get("/v1/tenants/t1/executions?limit=1").json();
        let record = &records["items"][0];
        let logs = record["logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
        (record["outcome"].as_str().unwrap_or("").to_string(), logs)
    };
    // console.log / console.error: the guest's stdout and stderr, in the record.
    assert_eq!(call("GET", "/console", None, json!({}))["status"], 200);
    let (_, logs) = last_record();
    assert!(logs.iter().any(|l| l == "[stdout] to stdout from console.log"), "{logs:?}");
    assert!(logs.iter().any(|l| l == "[stderr] to stderr from console.error"), "{logs:?}");
    // A promise callback queued by the handler runs before the execution ends; a timer never does.
    assert_eq!(call("GET", "/later", None, json!({}))["status"], 200);
    let (_, logs) = last_record();
    assert!(logs.iter().any(|l| l == "[stdout] the promise callback ran"), "{logs:?}");
    assert!(!logs.iter().any(|l| l.contains("the timer ran")), "{logs:?}");
    // Math.random and crypto.getRandomValues differ between executions (each instance seeds
    // its own, though preloaded sandboxes instantiate before their job).
    let (r1, r2) = (body(&call("GET", "/random", None, json!({}))), body(&call("GET", "/random", None, json!({}))));
    assert_ne!(r1["math"], r2["math"], "{r1} {r2}");
    assert_ne!(r1["bytes"], r2["bytes"], "{r1} {r2}");
    // Module-level code ran when the component was built (componentize-js snapshots the module).
    assert_eq!(r1["moduleEvaluatedAt"], r2["moduleEvaluatedAt"], "{r1} {r2}");
    assert!(r1["moduleEvaluatedAt"].as_u64().unwrap() < published_at, "{r1}");

    // An uncaught exception: guest_trap for the caller, message and stack in the record.
    let thrown = call("GET", "/throw", None, json!({}));
    assert_eq!(thrown["status"], 500);
    assert!(thrown["error"].as_str().unwrap().starts_with("execute_failed"), "{thrown}");
    let (outcome, logs) = last_record();
    assert_eq!(outcome, "guest_trap");
    assert!(logs.iter().any(|l| l == "[stderr] the sample threw on purpose"), "{logs:?}");
    assert!(logs.iter().any(|l| l.contains("handler@source.js")), "the stack too: {logs:?}");

    // Hostile JS: stopped by the deadline and by the memory limit.
    let spin = call("GET", "/spin", None, json!({ "timeout_ms": 1500 }));
    assert_eq!((spin["status"].as_u64(), spin["error"].as_str()), (Some(504), Some("timeout")), "{spin}");
    let bomb = call("GET", "/bomb", None, json!({ "memory_mb": 64 }));
    assert_eq!((bomb["status"].as_u64(), bomb["error"].as_str()), (Some(500), Some("memory_limit_exceeded")), "{bomb}");
    // And the extension still works afterwards.
    assert_eq!(call("GET", "/hello?name=Ada", None, json!({}))["status"], 200);
    // These executions ran on sandboxes that preloaded the artifact (its memory image mapped
    // copy-on-write from the file), and no preload failed.
    let preloaded = server.admin_get("/readyz").json()["checks"]["preloaded"].clone();
    assert!(preloaded["hits"].as_u64() > Some(3), "{preloaded}");
    assert_eq!(preloaded["failures"], 0, "{preloaded}");

    // Built with componentize-js's default features, the component imports wasi:http: refused
    // at publish, naming the import (nothing may bypass the egress policy).
    let with_http = build(&["--with-wasi-http"]).expect("building the wasi:http variant");
    let mut m2 = manifest.clone();
    m2["version"] = json!("1.0.1");
    let bytes = pack_with_ui(&m2, &with_http, &[("index.html", &index)]);
    let refused = server.publish(&bytes, &signer.sign(&bytes, "com.example.hello-js", "1.0.1"));
    assert_eq!((refused.status, refused.code().as_str()), (400, "invalid_bundle"));
    let detail = refused.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.contains("wasi:http"), "{detail}");
}

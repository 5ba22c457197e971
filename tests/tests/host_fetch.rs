//! `http.fetch` through a real guest and the real service, against loopback servers the tests
//! start (allowed only through explicit address entries): the allowlists and their
//! intersection, SSRF refusals after DNS, redirects returned, size and time bounds, hop-by-hop
//! headers, egress accounting.

use std::time::{Duration, Instant};

use alga_tests::fixture_bytes;
use alga_tests::server::{Deployed, Options, Server, Signer, deploy, hostapi_manifest};
use alga_tests::upstream::{Reply, Upstream};
use serde_json::{Value, json};

fn upstream() -> Upstream {
    Upstream::start(|r| match r.target.as_str() {
        "/ok" => Reply::new(200, "hello from upstream").header("x-upstream", "1").header("keep-alive", "timeout=5"),
        "/redirect" => Reply::new(302, "").header("location", "http://denied.invalid/"),
        "/big" => Reply::new(200, vec![b'x'; 100 * 1024]),
        "/slow" => Reply::new(200, "late").delay(Duration::from_secs(20)),
        _ => Reply::new(404, "no such path"),
    })
}

struct Setup {
    server: Server,
    d: Deployed,
}

/// A server whose operator allowlist is `operator`, and the hostapi fixture with `manifest_egress`
/// installed with `install` settings.
fn setup(operator: &str, manifest_egress: &[String], install: Value) -> Setup {
    setup_manifest(operator, Some(manifest_egress), install)
}

/// As [`setup`]; `None`: the manifest has no `egress` field (as Alga's validator requires).
fn setup_manifest(operator: &str, manifest_egress: Option<&[String]>, install: Value) -> Setup {
    let signer = Signer::new();
    let server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![
            ("EXT_EGRESS_ALLOWLIST".into(), operator.into()),
            ("ALGA_RUNNER_EGRESS__MAX_RESPONSE_KB".into(), "64".into()),
        ],
    });
    let mut manifest = hostapi_manifest("com.example.fetch", &["cap:http.fetch"]);
    if let Some(list) = manifest_egress {
        manifest["egress"] = json!(list);
    }
    let d = deploy(&server, &signer, &manifest, &fixture_bytes("hostapi"), "t1", install);
    Setup { server, d }
}

/// Waits for the log line of a refused fetch that names `list` as the list that refused it.
fn refused_by(server: &Server, list: &str) {
    let line = format!("is not in the {list} egress allowlist");
    server.wait_for_log(&line, |log| log.contains(&line));
}

fn fetch(s: &Setup, url: &str) -> Value {
    s.server.report("t1", &s.d, "/fetch", Some(url.as_bytes()))
}

#[test]
fn allowed_by_every_list_and_refused_otherwise() {
    let up = upstream();
    let entry = format!("127.0.0.1:{}", up.port);
    let s = setup(&entry, std::slice::from_ref(&entry), json!({ "granted_capabilities": ["http.fetch"] }));

    let ok = s.server.report("t1", &s.d, "/fetch?header=proxy-authorization%3Asecret", Some(up.url("/ok").as_bytes()));
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["body"], "hello from upstream");
    let headers: Vec<String> =
        ok["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_string()).collect();
    assert!(headers.contains(&"x-upstream".to_string()), "{headers:?}");
    assert!(!headers.contains(&"keep-alive".to_string()), "hop-by-hop dropped from the answer: {headers:?}");
    let seen = up.received().pop().unwrap();
    assert_eq!(seen.header("x-from-guest"), Some("1"));
    assert_eq!(seen.header("proxy-authorization"), None, "hop-by-hop dropped from the request");
    assert_eq!(seen.header("host"), Some(entry.as_str()));

    // Not allowlisted: another port, a name nobody listed, a 10.x literal, another scheme.
    let other_port = format!("http://127.0.0.1:{}/ok", up.port.wrapping_add(1).max(1));
    assert_eq!(fetch(&s, &other_port), json!({ "err": "not-allowed" }));
    assert_eq!(fetch(&s, "http://api.example.com/"), json!({ "err": "not-allowed" }));
    assert_eq!(fetch(&s, "http://10.1.2.3/"), json!({ "err": "not-allowed" }));
    assert_eq!(fetch(&s, "ftp://127.0.0.1/"), json!({ "err": "invalid-url" }));
    assert_eq!(fetch(&s, "not a url"), json!({ "err": "invalid-url" }));

    // A redirect is returned to the guest, not followed (the target is not even allowed).
    let redirect = fetch(&s, &up.url("/redirect"));
    assert_eq!(redirect["status"], 302, "{redirect}");
    assert!(
        redirect["headers"].as_array().unwrap().iter().any(|h| h[0] == "location" && h[1] == "http://denied.invalid/")
    );

    // Over the configured response limit (64 KiB): transport.
    assert_eq!(fetch(&s, &up.url("/big")), json!({ "err": "transport" }));

    // Egress bytes are in the execution record.
    let records = s.server.admin_get("/v1/tenants/t1/executions?limit=20").json();
    let counted: u64 =
        records["items"].as_array().unwrap().iter().map(|r| r["egress_bytes"].as_u64().unwrap_or(0)).sum();
    assert!(counted >= "hello from upstream".len() as u64, "egress bytes recorded: {records}");
}

#[test]
fn loopback_by_name_is_refused_without_an_address_entry() {
    let up = upstream();
    let by_name = format!("localhost:{}", up.port);
    let s = setup(&by_name, std::slice::from_ref(&by_name), json!({ "granted_capabilities": ["http.fetch"] }));
    // `localhost` is listed, but it resolves to 127.0.0.1, which no entry names: SSRF refusal.
    assert_eq!(fetch(&s, &format!("http://localhost:{}/ok", up.port)), json!({ "err": "not-allowed" }));
    assert!(up.received().is_empty(), "nothing reached the upstream");
}

#[test]
fn an_address_entry_does_not_let_a_name_be_resolved() {
    let up = upstream();
    let entry = format!("127.0.0.1:{}", up.port);
    let s = setup(&entry, std::slice::from_ref(&entry), json!({ "granted_capabilities": ["http.fetch"] }));
    // No list names a host: no name is looked up, whether it resolves to the listed address
    // (`localhost`) or not at all — both answer alike, so DNS is neither a channel nor an oracle.
    assert_eq!(fetch(&s, &format!("http://localhost:{}/ok", up.port)), json!({ "err": "not-allowed" }));
    assert_eq!(fetch(&s, &format!("http://no-such-name.invalid:{}/ok", up.port)), json!({ "err": "not-allowed" }));
    assert!(up.received().is_empty(), "nothing reached the upstream");
    // The address itself stays reachable.
    assert_eq!(fetch(&s, &up.url("/ok"))["status"], 200);
}

#[test]
fn the_install_list_narrows_and_the_capability_gates() {
    let up = upstream();
    let entry = format!("127.0.0.1:{}", up.port);
    // The install's list does not contain the upstream: the intersection is empty for it.
    let s = setup(
        &entry,
        std::slice::from_ref(&entry),
        json!({ "granted_capabilities": ["http.fetch"], "egress_allowlist": ["api.example.com"] }),
    );
    assert_eq!(fetch(&s, &up.url("/ok")), json!({ "err": "not-allowed" }));
    // Without the grant: the deny value.
    let s = setup(&entry, std::slice::from_ref(&entry), json!({ "granted_capabilities": [] }));
    assert_eq!(fetch(&s, &up.url("/ok")), json!({ "err": "not-allowed" }));
    // The operator's list empty: nothing (Alga gap: empty meant everything).
    let s = setup("", std::slice::from_ref(&entry), json!({ "granted_capabilities": ["http.fetch"] }));
    assert_eq!(fetch(&s, &up.url("/ok")), json!({ "err": "not-allowed" }));
    assert!(up.received().is_empty(), "nothing reached the upstream");
}

#[test]
fn a_manifest_without_egress_leaves_operator_and_install_and_a_refusal_names_its_list() {
    let up = upstream();
    let entry = format!("127.0.0.1:{}", up.port);
    let grant = json!({ "granted_capabilities": ["http.fetch"] });
    // No manifest list: the operator's alone decides (Alga's manifests cannot carry one).
    let s = setup_manifest(&entry, None, grant.clone());
    assert_eq!(fetch(&s, &up.url("/ok"))["status"], 200);
    // Still deny by default: the operator's list is empty unless configured.
    let s = setup_manifest("", None, grant);
    assert_eq!(fetch(&s, &up.url("/ok")), json!({ "err": "not-allowed" }));
    refused_by(&s.server, "operator");
    // The install's list narrows it, and the refusal says so.
    let narrowed = json!({ "granted_capabilities": ["http.fetch"], "egress_allowlist": ["api.example.com"] });
    let s = setup_manifest(&entry, None, narrowed);
    assert_eq!(fetch(&s, &up.url("/ok")), json!({ "err": "not-allowed" }));
    refused_by(&s.server, "install");
    // A manifest list that is present but empty still allows nothing.
    let s = setup_manifest(&entry, Some(&[]), json!({ "granted_capabilities": ["http.fetch"] }));
    assert_eq!(fetch(&s, &up.url("/ok")), json!({ "err": "not-allowed" }));
    refused_by(&s.server, "manifest");
    assert_eq!(up.received().len(), 1, "only the allowed fetch reached the upstream");
}

#[test]
fn a_slow_server_is_cut_at_the_execution_deadline() {
    let up = upstream();
    let entry = format!("127.0.0.1:{}", up.port);
    let s = setup(
        &entry,
        std::slice::from_ref(&entry),
        json!({ "granted_capabilities": ["http.fetch"], "limits": { "timeout_ms": 1500 } }),
    );
    let start = Instant::now();
    let answer = s.server.call("t1", &s.d, "POST", "/fetch", Some(up.url("/slow").as_bytes()));
    let took = start.elapsed();
    let env = answer.json();
    // The fetch ends at the deadline: the guest either sees `transport` or is stopped as timed out.
    let guest_saw_transport = env["status"] == 200
        && serde_json::from_slice::<Value>(&answer.envelope_body()).ok() == Some(json!({ "err": "transport" }));
    assert!(guest_saw_transport || env["error"] == "timeout", "{env}");
    assert!(took < Duration::from_secs(10), "bounded by the deadline, not the server's 20 s: {took:?}");
}

#[test]
fn a_per_extension_operator_list_and_the_envelopes_list_narrow_too() {
    let up = upstream();
    let entry = format!("127.0.0.1:{}", up.port);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[egress.extensions]\n\"com.example.narrowed\" = [\"api.example.com\"]\n").unwrap();
    let signer = Signer::new();
    let server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![
            ("EXT_EGRESS_ALLOWLIST".into(), entry.clone()),
            ("ALGA_RUNNER_CONFIG".into(), config.display().to_string()),
        ],
    });
    let grant = json!({ "granted_capabilities": ["http.fetch"] });
    let deploy_named = |name: &str| {
        let manifest = hostapi_manifest(name, &["cap:http.fetch"]);
        deploy(&server, &signer, &manifest, &fixture_bytes("hostapi"), "t1", grant.clone())
    };
    let narrowed = deploy_named("com.example.narrowed");
    let other = deploy_named("com.example.other");
    let fetch_as = |d: &Deployed, envelope_list: Option<Value>| {
        let mut env = alga_tests::server::envelope("t1", &d.extension_id, &d.content_hash, "/fetch");
        env["http"]["method"] = json!("POST");
        env["http"]["body_b64"] =
            json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, up.url("/ok")));
        if let Some(list) = envelope_list {
            env["egress_allowlist"] = list;
        }
        server.execute(&env)
    };
    // The operator's list for this extension leaves out the upstream.
    let refused = fetch_as(&narrowed, None);
    assert_eq!(serde_json::from_slice::<Value>(&refused.envelope_body()).unwrap(), json!({ "err": "not-allowed" }));
    refused_by(&server, "extension");
    // Another extension has only the operator's list.
    let allowed = fetch_as(&other, None);
    assert_eq!(serde_json::from_slice::<Value>(&allowed.envelope_body()).unwrap()["status"], 200);
    // The envelope's list (an extension of Alga's wire format) narrows one execution.
    let refused = fetch_as(&other, Some(json!(["api.example.com"])));
    assert_eq!(serde_json::from_slice::<Value>(&refused.envelope_body()).unwrap(), json!({ "err": "not-allowed" }));
    refused_by(&server, "envelope");
    let allowed = fetch_as(&other, Some(json!([entry])));
    assert_eq!(serde_json::from_slice::<Value>(&allowed.envelope_body()).unwrap()["status"], 200);
    // A bad entry is refused before anything runs, naming it.
    let bad = fetch_as(&other, Some(json!(["http://x.example/"])));
    assert_eq!((bad.status, bad.code().as_str()), (422, "invalid_request"));
    assert_eq!(up.received().len(), 2, "only the two allowed fetches reached the upstream");
}

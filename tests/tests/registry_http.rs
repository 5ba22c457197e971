//! The registry and `/v1/execute` over HTTP, against the real `alga-runner serve`: publish →
//! install → execute, tokens, envelopes, idempotency, yank, uninstall, trust reloads.

use alga_tests::fixture_bytes;
use alga_tests::server::{ADMIN_TOKEN, Options, SERVICE_TOKEN, Server, Signer, envelope, manifest, pack};
use serde_json::{Value, json};

const TENANT: &str = "tenant-a";

/// Publishes the echo fixture as `name` `version`; returns (content hash, publish answer body).
fn publish_echo(server: &Server, signer: &Signer, name: &str, version: &str, caps: &[&str]) -> (String, Value) {
    let bytes = pack(&manifest(name, version, caps), &fixture_bytes("echo"));
    let answer = server.publish(&bytes, &signer.sign(&bytes, name, version));
    assert_eq!(answer.status, 201, "publish: {}", String::from_utf8_lossy(&answer.body));
    let body = answer.json();
    (body["content_hash"].as_str().unwrap().to_string(), body)
}

#[test]
fn publish_install_execute_round_trip() {
    let signer = Signer::new();
    let server = Server::start(&signer);

    // Publish: 201 with the documented body; the same bytes again: 200, same body.
    let bytes = pack(&manifest("com.example.echo", "1.0.0", &["storage.kv"]), &fixture_bytes("echo"));
    let sig = signer.sign(&bytes, "com.example.echo", "1.0.0");
    let first = server.publish(&bytes, &sig);
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    let published = first.json();
    for field in ["extension_id", "name", "version", "content_hash", "size_bytes", "signer_key_id"] {
        assert!(!published[field].is_null(), "publish answer lacks {field}: {published}");
    }
    assert_eq!(published["signer_key_id"], signer.key_id.as_str());
    assert_eq!(published["size_bytes"], bytes.len());
    let hash = published["content_hash"].as_str().unwrap().to_string();
    assert_eq!(hash, alga_shared::bundle::content_hash(&bytes));
    let again = server.publish(&bytes, &sig);
    assert_eq!(again.status, 200);
    assert_eq!(again.json(), published);
    assert_eq!(server.blob_files(), vec![hash.trim_start_matches("sha256:").to_string()]);

    // Reads, by registry id and by name.
    let id = published["extension_id"].as_str().unwrap();
    for key in [id, "com.example.echo"] {
        let ext = server.admin_get(&format!("/v1/extensions/{key}"));
        assert_eq!(ext.status, 200, "GET /v1/extensions/{key}");
        assert_eq!(ext.json()["name"], "com.example.echo");
        let versions = server.admin_get(&format!("/v1/extensions/{key}/versions")).json();
        assert_eq!(versions["items"][0]["version"], "1.0.0");
        assert_eq!(versions["items"][0]["content_hash"], hash.as_str());
    }
    assert_eq!(server.admin_get("/v1/extensions/com.example.nothing").code(), "extension_not_found");

    // The same version with other contents: 409.
    let other = pack(&manifest("com.example.echo", "1.0.0", &[]), &fixture_bytes("echo"));
    let conflict = server.publish(&other, &signer.sign(&other, "com.example.echo", "1.0.0"));
    assert_eq!((conflict.status, conflict.code().as_str()), (409, "version_conflict"));

    // Install: grants must be a subset of the manifest's capabilities.
    let denied = server.install(
        TENANT,
        "com.example.echo",
        &json!({"version": "1.0.0", "granted_capabilities": ["http.fetch"]}),
    );
    assert_eq!(denied.status, 422, "{}", String::from_utf8_lossy(&denied.body));
    let installed = server.install(TENANT, id, &json!({"version": "1.0.0", "granted_capabilities": ["storage.kv"]}));
    assert_eq!(installed.status, 201, "{}", String::from_utf8_lossy(&installed.body));
    let install = installed.json();
    assert_eq!(install["content_hash"], hash.as_str());
    assert!(install["install_id"].is_string());
    let listed = server.admin_get(&format!("/v1/tenants/{TENANT}/installs")).json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // Execute: the guest's answer in the envelope; the request id comes back.
    let mut env = envelope(TENANT, "com.example.echo", &hash, "/items/7");
    env["http"]["query"] = json!({"q": "1"});
    env["http"]["body_b64"] = json!("aGk=");
    let answer = server.request(
        "POST",
        "/v1/execute",
        Some(SERVICE_TOKEN),
        &[("content-type", "application/json"), ("x-request-id", "req-round-trip-1")],
        Some(&serde_json::to_vec(&env).unwrap()),
    );
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.header("x-request-id"), Some("req-round-trip-1"));
    let result = answer.json();
    assert_eq!(result["status"], 200, "{result}");
    assert!(result["error"].is_null());
    assert_eq!(result["headers"]["x-ext-echo"], "1");
    let echoed: Value = serde_json::from_slice(&answer.envelope_body()).unwrap();
    assert_eq!(echoed["tenant"], TENANT);
    assert_eq!(echoed["url"], "/items/7?q=1");
    assert_eq!(echoed["body_hex"], "6869");

    // One execution record, with its figures.
    let log = server.admin_get(&format!("/v1/tenants/{TENANT}/executions")).json();
    let records = log["items"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{log}");
    let r = &records[0];
    assert_eq!(r["request_id"], "req-round-trip-1");
    assert_eq!(r["status"], 200);
    assert_eq!(r["content_hash"], hash.as_str());
    assert!(r["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(r["memory_peak_bytes"].as_u64().unwrap() > 0);

    // A content hash other than the installed one, another tenant, a disabled install: not installed.
    let other_hash = format!("sha256:{}", "0".repeat(64));
    for env in
        [envelope(TENANT, "com.example.echo", &other_hash, "/"), envelope("tenant-b", "com.example.echo", &hash, "/")]
    {
        let r = server.execute(&env).json();
        assert_eq!((r["status"].as_u64(), r["error"].as_str()), (Some(404), Some("not_installed")), "{r}");
    }

    // A capability the caller provides but the install was not granted: denied.
    let mut env = envelope(TENANT, "com.example.echo", &hash, "/");
    env["providers"] = json!(["http.fetch"]);
    let r = server.execute(&env).json();
    assert_eq!((r["status"].as_u64(), r["error"].as_str()), (Some(403), Some("capability_denied")), "{r}");

    // Idempotency: the same key answers the stored response and runs nothing.
    let before =
        server.admin_get(&format!("/v1/tenants/{TENANT}/executions")).json()["items"].as_array().unwrap().len();
    let body = serde_json::to_vec(&envelope(TENANT, "com.example.echo", &hash, "/once")).unwrap();
    let headers = [("content-type", "application/json"), ("x-idempotency-key", "k1")];
    let a = server.request("POST", "/v1/execute", Some(SERVICE_TOKEN), &headers, Some(&body));
    let b = server.request("POST", "/v1/execute", Some(SERVICE_TOKEN), &headers, Some(&body));
    assert_eq!(a.json(), b.json());
    let after = server.admin_get(&format!("/v1/tenants/{TENANT}/executions")).json()["items"].as_array().unwrap().len();
    assert_eq!(after, before + 1, "an idempotent replay must not execute again");

    // Pages: `limit` and the opaque `next_cursor`; a cursor the API never gave out is refused.
    let first = server.admin_get(&format!("/v1/tenants/{TENANT}/executions?limit=1")).json();
    assert_eq!(first["items"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"].as_str().expect("a next page").to_string();
    let second = server.admin_get(&format!("/v1/tenants/{TENANT}/executions?limit=1&cursor={cursor}")).json();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_ne!(first["items"][0]["execution_id"], second["items"][0]["execution_id"]);
    for bad in ["/v1/tenants/tenant-a/executions?cursor=zz", "/v1/extensions/com.example.echo/versions?cursor=9.9.9"] {
        let a = server.admin_get(bad);
        assert_eq!((a.status, a.code().as_str()), (400, "invalid_cursor"), "{bad}");
    }

    // Yank: no new installs; the existing install keeps running.
    let yank = server.request("DELETE", "/v1/extensions/com.example.echo/versions/1.0.0", Some(ADMIN_TOKEN), &[], None);
    assert!(yank.status == 200 || yank.status == 204, "yank: {}", yank.status);
    let refused = server.install("tenant-c", "com.example.echo", &json!({"version": "1.0.0"}));
    assert_eq!((refused.status, refused.code().as_str()), (409, "version_yanked"));
    assert_eq!(server.execute(&envelope(TENANT, "com.example.echo", &hash, "/")).json()["status"], 200);
    // ... and may still change its settings.
    let changed = server.install(TENANT, "com.example.echo", &json!({"version": "1.0.0", "config": {"mode": "b"}}));
    assert_eq!(changed.status, 200, "{}", String::from_utf8_lossy(&changed.body));

    // Uninstall: gone, and executions answer not_installed.
    let gone = server.request(
        "DELETE",
        &format!("/v1/tenants/{TENANT}/installs/com.example.echo"),
        Some(ADMIN_TOKEN),
        &[],
        None,
    );
    assert!(gone.status == 200 || gone.status == 204, "uninstall: {}", gone.status);
    assert_eq!(server.admin_get(&format!("/v1/tenants/{TENANT}/installs/com.example.echo")).status, 404);
    let r = server.execute(&envelope(TENANT, "com.example.echo", &hash, "/")).json();
    assert_eq!(r["error"], "not_installed");

    // Everything the service wrote is under its state directory (its working directory holds
    // only what the test put there).
    let mut names = alga_tests::server::list_names(server.dir.path());
    names.retain(|n| !n.starts_with("serve-") && n != "trust.pub");
    assert_eq!(names, ["state"], "files outside the state directory");
}

#[test]
fn limits_are_capped_by_the_install_and_the_operator() {
    let signer = Signer::new();
    let options = alga_tests::server::Options {
        trust_lines: vec![signer.public()],
        env: vec![
            ("ALGA_RUNNER_LIMITS__MAX_TIMEOUT_MS".into(), "1000".into()),
            ("ALGA_RUNNER_LIMITS__DEFAULT_TIMEOUT_MS".into(), "1000".into()),
        ],
    };
    let server = Server::start_with(options);
    let bytes = pack(&manifest("com.example.sleepy", "1.0.0", &[]), &fixture_bytes("sleeper"));
    assert_eq!(server.publish(&bytes, &signer.sign(&bytes, "com.example.sleepy", "1.0.0")).status, 201);
    let hash = alga_shared::bundle::content_hash(&bytes);
    let run = |tenant: &str, sleep_ms: u64, timeout_ms: u64| -> Value {
        let mut env = envelope(tenant, "com.example.sleepy", &hash, "/");
        env["http"]["query"] = json!({"ms": sleep_ms.to_string()});
        env["limits"] = json!({"timeout_ms": timeout_ms});
        server.execute(&env).json()
    };
    let outcome = |v: &Value| (v["status"].as_u64().unwrap(), v["error"].as_str().map(String::from));

    // The install's limit wins over a caller asking for more.
    let a = server.install("slow", "com.example.sleepy", &json!({"version": "1.0.0", "limits": {"timeout_ms": 200}}));
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(outcome(&run("slow", 600, 5000)), (504, Some("timeout".into())));
    assert_eq!(outcome(&run("slow", 20, 5000)), (200, None));
    // A caller may lower it.
    assert_eq!(outcome(&run("slow", 150, 100)), (504, Some("timeout".into())));

    // Without an install limit, the operator's maximum caps the caller.
    assert_eq!(server.install("free", "com.example.sleepy", &json!({"version": "1.0.0"})).status, 201);
    assert_eq!(outcome(&run("free", 1500, 5000)), (504, Some("timeout".into())));
    assert_eq!(outcome(&run("free", 300, 5000)), (200, None));
    let log = server.admin_get("/v1/tenants/free/executions").json();
    assert_eq!(log["items"][1]["outcome"], "timeout", "{log}");
}

#[test]
fn tokens_envelopes_and_routing_headers() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let (hash, _) = publish_echo(&server, &signer, "com.example.tokens", "1.0.0", &[]);
    assert_eq!(server.install(TENANT, "com.example.tokens", &json!({"version": "1.0.0"})).status, 201);
    let good = serde_json::to_vec(&envelope(TENANT, "com.example.tokens", &hash, "/")).unwrap();
    let ct = [("content-type", "application/json")];

    // Missing, wrong and crossed tokens: 401 problem+json, and nothing runs.
    for token in [None, Some("wrong"), Some(ADMIN_TOKEN)] {
        let a = server.request("POST", "/v1/execute", token, &ct, Some(&good));
        assert_eq!((a.status, a.code().as_str()), (401, "unauthorized"), "execute with {token:?}");
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
        assert!(a.header("x-request-id").is_some());
    }
    for token in [None, Some("wrong"), Some(SERVICE_TOKEN)] {
        let a = server.request("GET", "/v1/extensions", token, &[], None);
        assert_eq!((a.status, a.code().as_str()), (401, "unauthorized"), "registry read with {token:?}");
        let p = server.request("POST", "/v1/bundles", token, &[], Some(b"x"));
        assert_eq!(p.status, 401);
    }
    // The bearer scheme is required; a token as a bare header value is not accepted.
    let a = server.request("POST", "/v1/execute", None, &[("authorization", SERVICE_TOKEN)], Some(&good));
    assert_eq!(a.status, 401);
    assert_eq!(server.admin_get(&format!("/v1/tenants/{TENANT}/executions")).json()["items"], json!([]));

    // Malformed envelopes: not JSON (400), missing or wrong fields (422, naming the field).
    let bad_json = server.request("POST", "/v1/execute", Some(SERVICE_TOKEN), &ct, Some(b"{not json"));
    assert_eq!((bad_json.status, bad_json.code().as_str()), (400, "invalid_json"));
    let cases: Vec<(Value, &str)> = vec![
        (json!({"http": {"method": "GET", "path": "/"}}), "context"),
        (
            json!({"context": {"extension_id": "x", "content_hash": hash}, "http": {"method": "GET", "path": "/"}}),
            "tenant_id",
        ),
        (
            json!({"context": {"tenant_id": "bad tenant!", "extension_id": "x", "content_hash": hash}, "http": {"method": "GET", "path": "/"}}),
            "tenant_id",
        ),
        (
            json!({"context": {"tenant_id": "t", "extension_id": "x", "content_hash": "md5:abc"}, "http": {"method": "GET", "path": "/"}}),
            "content_hash",
        ),
        (
            json!({"context": {"tenant_id": "t", "extension_id": "x", "content_hash": hash}, "http": {"method": "GET", "path": "no-slash"}}),
            "path",
        ),
        (
            json!({"context": {"tenant_id": "t", "extension_id": "x", "content_hash": hash}, "http": {"method": "GET", "path": "/", "body_b64": "***"}}),
            "body_b64",
        ),
        (
            json!({"context": {"tenant_id": "t", "extension_id": "x", "content_hash": hash}, "http": {"method": 7, "path": "/"}}),
            "method",
        ),
    ];
    for (body, field) in cases {
        let a =
            server.request("POST", "/v1/execute", Some(SERVICE_TOKEN), &ct, Some(&serde_json::to_vec(&body).unwrap()));
        assert_eq!(a.status, 422, "{body}: {}", String::from_utf8_lossy(&a.body));
        let problem = a.json();
        assert_eq!(problem["code"], "invalid_request");
        assert!(problem["detail"].as_str().unwrap_or("").contains(field), "detail should name {field}: {problem}");
    }

    // Routing headers must agree with the body.
    let mismatch = server.request(
        "POST",
        "/v1/execute",
        Some(SERVICE_TOKEN),
        &[("content-type", "application/json"), ("x-alga-tenant", "someone-else")],
        Some(&good),
    );
    assert_eq!((mismatch.status, mismatch.code().as_str()), (400, "routing_mismatch"));
    let mismatch = server.request(
        "POST",
        "/v1/execute",
        Some(SERVICE_TOKEN),
        &[("content-type", "application/json"), ("x-alga-tenant", TENANT), ("x-alga-extension", "com.example.other")],
        Some(&good),
    );
    assert_eq!((mismatch.status, mismatch.code().as_str()), (400, "routing_mismatch"));
    let matching = server.request(
        "POST",
        "/v1/execute",
        Some(SERVICE_TOKEN),
        &[("content-type", "application/json"), ("x-alga-tenant", TENANT), ("x-alga-extension", "com.example.tokens")],
        Some(&good),
    );
    assert_eq!(matching.json()["status"], 200);

    // An envelope over the body limit: 413.
    let big = vec![b' '; 17 << 20];
    let a = server.request("POST", "/v1/execute", Some(SERVICE_TOKEN), &ct, Some(&big));
    assert_eq!((a.status, a.code().as_str()), (413, "payload_too_large"));

    // A known path with a method it does not take: 405 naming the ones it does; an unknown path: 404.
    let a = server.request("GET", "/v1/execute", Some(SERVICE_TOKEN), &[], None);
    assert_eq!((a.status, a.code().as_str(), a.header("allow")), (405, "method_not_allowed", Some("POST")));
    let a = server.request("GET", "/v1/nothing", Some(SERVICE_TOKEN), &[], None);
    assert_eq!((a.status, a.code().as_str()), (404, "route_not_found"));

    // Health and readiness: open, with every hardening layer listed.
    assert_eq!(server.request("GET", "/healthz", None, &[], None).status, 200);
    let ready = server.request("GET", "/readyz", None, &[], None);
    assert_eq!(ready.status, 200, "{}", String::from_utf8_lossy(&ready.body));
    let ready = ready.json();
    for layer in ["namespaces", "seccomp", "landlock", "cgroup"] {
        assert!(ready.to_string().contains(layer), "readyz lacks {layer}: {ready}");
    }
}

#[test]
fn trust_reload_revokes_and_restores_a_key() {
    let signer = Signer::new();
    let mut server = Server::start(&signer);
    let (hash, _) = publish_echo(&server, &signer, "com.example.revoke", "1.0.0", &[]);
    assert_eq!(server.install(TENANT, "com.example.revoke", &json!({"version": "1.0.0"})).status, 201);
    let env = envelope(TENANT, "com.example.revoke", &hash, "/");
    assert_eq!(server.execute(&env).json()["status"], 200);

    // Revoke the key (an empty trust bundle is valid) and reload over HTTP: the bundle in the
    // execution cache is verified again and refused.
    server.write_trust(&[]);
    let reload = server.request("POST", "/v1/admin/reload", Some(ADMIN_TOKEN), &[], None);
    assert_eq!(reload.status, 200, "{}", String::from_utf8_lossy(&reload.body));
    let r = server.execute(&env).json();
    assert_eq!((r["status"].as_u64(), r["error"].as_str()), (Some(502), Some("bundle_verification_failed")), "{r}");
    // New installs of it are refused too.
    let a = server.install("tenant-new", "com.example.revoke", &json!({"version": "1.0.0"}));
    assert_eq!((a.status, a.code().as_str()), (403, "signer_untrusted"), "{}", String::from_utf8_lossy(&a.body));

    // Trust it again, by SIGHUP this time.
    server.write_trust(&[signer.public()]);
    // SAFETY: kill(2) with the pid of our own child and a valid signal has no memory effects.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    alga_tests::server::wait_until("the SIGHUP reload restores the key", || {
        server.execute(&env).json()["status"] == 200
    });

    // A bundle changed on disk behind the runner's back is refused at load (after a restart the
    // execution cache is empty, so the bundle is read, hashed and verified again).
    let blob = server.state_dir().join("bundles/sha256").join(hash.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    server.restart();
    let r = server.execute(&env).json();
    assert_eq!((r["status"].as_u64(), r["error"].as_str()), (Some(502), Some("bundle_verification_failed")), "{r}");
}

#[test]
fn a_publisher_scoped_key_signs_only_its_publisher() {
    let signer = Signer::new();
    let options = alga_tests::server::Options {
        trust_lines: vec![format!("{} publisher=Other Corp", signer.public())],
        ..Default::default()
    };
    let server = Server::start_with(options);
    let bytes = pack(&manifest("com.example.scoped", "1.0.0", &[]), &fixture_bytes("echo"));
    let a = server.publish(&bytes, &signer.sign(&bytes, "com.example.scoped", "1.0.0"));
    assert_eq!((a.status, a.code().as_str()), (403, "signer_untrusted"), "{}", String::from_utf8_lossy(&a.body));
    assert!(server.blob_files().is_empty());
    assert!(server.all_versions().is_empty());

    let mut m = manifest("com.example.scoped", "1.0.0", &[]);
    m["publisher"] = json!("Other Corp");
    let bytes = pack(&m, &fixture_bytes("echo"));
    let a = server.publish(&bytes, &signer.sign(&bytes, "com.example.scoped", "1.0.0"));
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
}

#[test]
fn a_name_scoped_key_cannot_take_another_publishers_names() {
    let (owner, squatter) = (Signer::new(), Signer::new());
    let options = alga_tests::server::Options {
        trust_lines: vec![
            format!(r#"{} publisher="Example Inc" names=com.example.*"#, owner.public()),
            format!("{} names=org.squat.*,org.squat", squatter.public()),
        ],
        ..Default::default()
    };
    let server = Server::start_with(options);
    // The squatter's key is trusted, but not for this name: refused before anything is stored.
    let mut m = manifest("com.example.taken", "1.0.0", &[]);
    m["publisher"] = json!("Example Inc");
    let bytes = pack(&m, &fixture_bytes("echo"));
    let a = server.publish(&bytes, &squatter.sign(&bytes, "com.example.taken", "1.0.0"));
    assert_eq!((a.status, a.code().as_str()), (403, "signer_untrusted"), "{}", String::from_utf8_lossy(&a.body));
    let detail = a.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("org.squat.*,org.squat") && detail.contains("com.example.taken"), "{detail}");
    assert!(detail.contains("key "), "the key is named: {detail}");
    assert!(server.blob_files().is_empty());
    assert!(server.all_versions().is_empty());
    // The owner publishes it; the squatter keeps its own names.
    let a = server.publish(&bytes, &owner.sign(&bytes, "com.example.taken", "1.0.0"));
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let own = pack(&manifest("org.squat.tool", "1.0.0", &[]), &fixture_bytes("echo"));
    assert_eq!(server.publish(&own, &squatter.sign(&own, "org.squat.tool", "1.0.0")).status, 201);
}

#[test]
fn concurrent_publishes_of_one_bundle_store_it_once() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let bytes = pack(&manifest("com.example.race", "1.0.0", &[]), &fixture_bytes("echo"));
    let sig = signer.sign(&bytes, "com.example.race", "1.0.0");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| server.publish(&bytes, &sig).status)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "{statuses:?}");
    let hash = alga_shared::bundle::content_hash(&bytes);
    let hex = hash.trim_start_matches("sha256:");
    assert_eq!(server.blob_files(), [hex], "one blob, no temporary file left");
    let stored = std::fs::read(server.state_dir().join("bundles/sha256").join(hex)).unwrap();
    assert_eq!(stored, bytes, "the stored copy is whole");
}

#[test]
fn stored_copies_are_checked_at_load_and_restored_by_a_reupload() {
    let signer = Signer::new();
    let mut server = Server::start(&signer);
    let (hash, _) = publish_echo(&server, &signer, "com.example.stored", "1.0.0", &[]);
    let other = pack(&manifest("com.example.other", "1.0.0", &[]), &fixture_bytes("sleeper"));
    assert_eq!(server.publish(&other, &signer.sign(&other, "com.example.other", "1.0.0")).status, 201);
    assert_eq!(server.install(TENANT, "com.example.stored", &json!({"version": "1.0.0"})).status, 201);
    let env = envelope(TENANT, "com.example.stored", &hash, "/");
    assert_eq!(server.execute(&env).json()["status"], 200);

    // Compiled code swapped in the cache (with its neighbouring hash file, so the cache's own
    // check passes): refused, because it is not the code compiled at publish.
    let cache = server.state_dir().join("cache");
    let dir_of = |wasm: &[u8]| cache.join(alga_runner::exec::artifacts::sha256_hex(wasm));
    let (mine, theirs) = (dir_of(&fixture_bytes("echo")), dir_of(&fixture_bytes("sleeper")));
    server.kill9();
    for name in alga_tests::server::list_names(&theirs) {
        std::fs::copy(theirs.join(&name), mine.join(&name)).unwrap();
    }
    server.restart();
    let r = server.execute(&env).json();
    assert_eq!((r["status"].as_u64(), r["error"].as_str()), (Some(502), Some("bundle_verification_failed")), "{r}");

    // Without any cache, the component is compiled again, to the same code.
    server.kill9();
    std::fs::remove_dir_all(&cache).unwrap();
    server.restart();
    assert_eq!(server.execute(&env).json()["status"], 200);

    // The stored bundle lost: the version is unavailable (installs say how to repair it), and
    // uploading the same bytes again restores it.
    server.kill9();
    std::fs::remove_file(server.state_dir().join("bundles/sha256").join(hash.trim_start_matches("sha256:"))).unwrap();
    server.restart();
    let versions = server.admin_get("/v1/extensions/com.example.stored/versions").json();
    assert_eq!(versions["items"][0]["state"], "unavailable", "{versions}");
    let a = server.install("tenant-b", "com.example.stored", &json!({"version": "1.0.0"}));
    assert_eq!((a.status, a.code().as_str()), (409, "version_unavailable"));
    let bytes = pack(&manifest("com.example.stored", "1.0.0", &[]), &fixture_bytes("echo"));
    let again = server.publish(&bytes, &signer.sign(&bytes, "com.example.stored", "1.0.0"));
    assert_eq!(again.status, 200, "{}", String::from_utf8_lossy(&again.body));
    assert_eq!(server.admin_get("/v1/extensions/com.example.stored/versions").json()["items"][0]["state"], "active");
    assert_eq!(server.install("tenant-b", "com.example.stored", &json!({"version": "1.0.0"})).status, 201);
    assert_eq!(server.execute(&env).json()["status"], 200);
}

#[test]
fn the_state_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    // A shell's usual umask, which made the database world-readable before; the server inherits
    // it at spawn, and this binary's own umask is put back right after.
    let before = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let signer = Signer::new();
    let server = Server::start(&signer);
    nix::sys::stat::umask(before);
    let (hash, _) = publish_echo(&server, &signer, "com.example.private", "1.0.0", &[]);
    assert_eq!(server.install("t1", "com.example.private", &json!({ "version": "1.0.0" })).status, 201);
    assert_eq!(server.execute(&envelope("t1", "com.example.private", &hash, "/")).status, 200);
    let mut open = Vec::new();
    let mut seen = 0;
    let mut stack = vec![server.state_dir()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        seen += 1;
        if meta.permissions().mode() & 0o077 != 0 {
            open.push(format!("{} {:o}", path.display(), meta.permissions().mode() & 0o7777));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen > 5, "walked only {seen} entries");
    assert!(open.is_empty(), "state readable by others:\n{}", open.join("\n"));
}

#[test]
fn a_loopback_listener_without_tokens_says_so_at_start() {
    let signer = Signer::new();
    let options = alga_tests::server::Options {
        trust_lines: vec![signer.public()],
        env: vec![("ALGA_RUNNER_ADMIN_TOKEN".into(), String::new())],
    };
    let server = Server::start_with(options);
    let log = server.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("listening without a service or an admin token"))
        .unwrap_or_else(|| panic!("no warning in the start log:\n{log}"));
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    assert!(warning.contains("\"admin_token\":false") && warning.contains("\"service_token\":true"), "{warning}");
}

#[test]
fn a_body_that_arrives_too_slowly_is_cut_off() {
    use std::io::{Read, Write};
    let signer = Signer::new();
    let options = alga_tests::server::Options {
        trust_lines: vec![signer.public()],
        env: vec![("ALGA_RUNNER_SERVER__BODY_TIMEOUT_MS".into(), "1000".into())],
    };
    let server = Server::start_with(options);
    let addr = server.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    // Headers promise 1 000 bytes; ten arrive, then nothing.
    write!(
        s,
        "POST /v1/execute HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {SERVICE_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"context\""
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("request_timeout") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer after {:?}: {e}", started.elapsed()),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("server.body_timeout_ms"), "the answer names the setting: {text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "held for {:?}", started.elapsed());
}

#[test]
fn two_tokens_of_each_kind_are_valid_during_a_rotation() {
    let signer = Signer::new();
    let dir = tempfile::tempdir().unwrap();
    let service_file = dir.path().join("service-tokens");
    // A credential file holding the new token and the old one, one per line.
    std::fs::write(&service_file, "service-token-new\nservice-token-old\n").unwrap();
    let server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![
            ("ALGA_RUNNER_SERVICE_TOKEN".into(), String::new()),
            ("ALGA_RUNNER_AUTH__SERVICE_TOKEN_FILE".into(), service_file.display().to_string()),
            ("ALGA_RUNNER_AUTH__ADMIN_TOKENS".into(), "admin-token-old".into()),
        ],
    });
    for admin in [ADMIN_TOKEN, "admin-token-old"] {
        assert_eq!(server.request("GET", "/v1/extensions", Some(admin), &[], None).status, 200, "{admin}");
    }
    assert_eq!(server.request("GET", "/v1/extensions", Some("admin-token-other"), &[], None).status, 401);
    let (_, published) = publish_echo(&server, &signer, "com.example.rotate", "1.0.0", &[]);
    let id = published["extension_id"].as_str().unwrap();
    let hash = published["content_hash"].as_str().unwrap();
    server.install("t1", id, &json!({ "version": "1.0.0" }));
    let env = serde_json::to_vec(&envelope("t1", id, hash, "/")).unwrap();
    for service in ["service-token-new", "service-token-old"] {
        let a =
            server.request("POST", "/v1/execute", Some(service), &[("content-type", "application/json")], Some(&env));
        assert_eq!(a.status, 200, "{service}: {}", String::from_utf8_lossy(&a.body));
    }
    let a =
        server.request("POST", "/v1/execute", Some(SERVICE_TOKEN), &[("content-type", "application/json")], Some(&env));
    assert_eq!(a.status, 401, "the token the file does not hold");

    // Three of a kind is a configuration error, named.
    let out = std::process::Command::new(alga_tests::runner_bin())
        .args(["serve"])
        .env("ALGA_RUNNER_STATE_DIR", dir.path().join("state"))
        .env("ALGA_RUNNER_ADMIN_TOKEN", "a")
        .env("ALGA_RUNNER_AUTH__ADMIN_TOKENS", "b,c")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3 admin tokens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

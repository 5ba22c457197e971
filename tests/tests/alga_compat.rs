//! What an Alga host sends its runner, accepted in both modes (12-host-registry.md, "Both
//! modes"): the service token as `x-runner-service-token` or a trusted source address, content
//! hashes in any case with or without `sha256:`, a `not_installed` that names what it looked
//! for (in the answer and in one log line), Vault Transit secret envelopes, and manifests as
//! Alga's tooling writes them.

use alga_tests::fixture_bytes;
use alga_tests::server::{
    ADMIN_TOKEN, Options, SERVICE_TOKEN, Server, Signer, deploy, envelope, hostapi_manifest, manifest, pack,
};
use alga_tests::upstream::{Reply, Upstream};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde_json::{Value, json};

fn post(server: &Server, headers: &[(&str, &str)], envelope: &Value) -> (u16, Value) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let body = serde_json::to_vec(envelope).unwrap();
    let answer = server.request("POST", "/v1/execute", None, &all, Some(&body));
    let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, json)
}

#[test]
fn an_alga_hosts_token_header_any_hash_spelling_and_a_refusal_that_names_what_it_looked_for() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let d =
        deploy(&server, &signer, &manifest("com.example.alga", "1.0.0", &[]), &fixture_bytes("echo"), "t1", json!({}));
    let env = envelope("t1", &d.extension_id, &d.content_hash, "/");

    // The service token as Alga's host sends it.
    let (status, answer) = post(&server, &[("x-runner-service-token", SERVICE_TOKEN)], &env);
    assert_eq!((status, answer["status"].clone()), (200, json!(200)), "{answer}");
    let (status, answer) = post(&server, &[("x-runner-service-token", "not-the-token")], &env);
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = post(&server, &[], &env);
    assert_eq!(status, 401);
    assert!(answer["detail"].as_str().unwrap_or("").contains("x-runner-service-token"), "{answer}");
    // Only the service token comes that way: an admin route still wants its bearer token.
    let admin = server.request("GET", "/v1/extensions", None, &[("x-runner-service-token", ADMIN_TOKEN)], None);
    assert_eq!(admin.status, 401);

    // Upper case, without the prefix.
    let token = [("x-runner-service-token", SERVICE_TOKEN)];
    let shouting = d.content_hash.trim_start_matches("sha256:").to_ascii_uppercase();
    let (_, answer) = post(&server, &token, &envelope("t1", &d.extension_id, &shouting, "/"));
    assert_eq!(answer["status"], 200, "{answer}");

    // Refusals name what they looked for, and each logs one line.
    let (_, answer) = post(&server, &token, &envelope("t9", &d.extension_id, &d.content_hash, "/"));
    assert_eq!((answer["status"].clone(), answer["error"].clone()), (json!(404), json!("not_installed")));
    let detail = answer["detail"].as_str().unwrap();
    assert!(detail.contains("`t9`") && detail.contains(&d.extension_id), "{detail}");
    let other = format!("sha256:{}", "0".repeat(64));
    let (_, answer) = post(&server, &token, &envelope("t1", &d.extension_id, &other, "/"));
    let detail = answer["detail"].as_str().unwrap();
    assert!(detail.contains(&d.content_hash) && detail.contains(&other), "{detail}");
    let refusals = |log: &str| log.lines().filter(|l| l.contains("execution refused: not_installed")).count();
    server.wait_for_log("two refusals", |log| refusals(log) >= 2);
    assert_eq!(refusals(&server.log_text()), 2, "one line per refusal");
}

#[test]
fn a_trusted_source_needs_no_token_on_host_routes_and_admin_routes_still_do() {
    let signer = Signer::new();
    let start = |sources: &str| {
        Server::start_with(Options {
            trust_lines: vec![signer.public()],
            env: vec![("ALGA_RUNNER_AUTH__TRUSTED_SOURCES".into(), sources.into())],
        })
    };
    let server = start("10.0.0.0/8, 127.0.0.1");
    let d =
        deploy(&server, &signer, &manifest("com.example.gw", "1.0.0", &[]), &fixture_bytes("echo"), "t1", json!({}));
    let env = envelope("t1", &d.extension_id, &d.content_hash, "/");
    // Alga's /api/ext gateway sends no credential: from a trusted source that is enough.
    let (status, answer) = post(&server, &[], &env);
    assert_eq!((status, answer["status"].clone()), (200, json!(200)), "{answer}");
    let gateway =
        server.request("GET", &format!("/api/ext/{}/", d.extension_id), None, &[("x-alga-tenant", "t1")], None);
    assert_eq!(gateway.status, 200, "{}", String::from_utf8_lossy(&gateway.body));
    // Never for the admin routes.
    assert_eq!(server.request("GET", "/v1/extensions", None, &[], None).status, 401);
    assert!(server.log_text().contains("run executions without the service token"), "start warns");

    // Loopback not listed: the token is needed again.
    let server = start("10.0.0.0/8");
    let d =
        deploy(&server, &signer, &manifest("com.example.gw", "1.0.0", &[]), &fixture_bytes("echo"), "t1", json!({}));
    let (status, _) = post(&server, &[], &envelope("t1", &d.extension_id, &d.content_hash, "/"));
    assert_eq!(status, 401);
}

/// Vault Transit's `decrypt` as Vault answers it, with a real AES-256-GCM key: ciphertexts are
/// `vault:v1:<base64 of nonce, ciphertext and tag>`.
struct TransitStandIn {
    key: [u8; 32],
}

impl TransitStandIn {
    fn seal(&self, plaintext: &[u8]) -> String {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.key).unwrap());
        let nonce_bytes = [7u8; NONCE_LEN];
        let mut sealed = plaintext.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::empty(), &mut sealed).unwrap();
        let mut out = nonce_bytes.to_vec();
        out.extend(sealed);
        format!("vault:v1:{}", STANDARD.encode(out))
    }

    fn open(&self, ciphertext: &str) -> Option<Vec<u8>> {
        let raw = STANDARD.decode(ciphertext.strip_prefix("vault:v1:")?).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.key).unwrap());
        let mut rest = rest.to_vec();
        let plain =
            key.open_in_place(Nonce::try_assume_unique_for_key(nonce).ok()?, Aad::empty(), &mut rest).ok()?.to_vec();
        Some(plain)
    }
}

#[test]
fn vault_transit_envelopes_open_through_vault() {
    const VAULT_TOKEN: &str = "s.test-vault-token";
    let transit = std::sync::Arc::new(TransitStandIn { key: [42u8; 32] });
    let vault = {
        let transit = transit.clone();
        Upstream::start(move |r| {
            if r.header("x-vault-token") != Some(VAULT_TOKEN) {
                return Reply::json(403, &json!({ "errors": ["permission denied"] }));
            }
            if r.method != "POST" || r.target != "/v1/transit/decrypt/alga-ext" {
                return Reply::json(404, &json!({ "errors": ["no handler for route"] }));
            }
            let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
            match transit.open(body["ciphertext"].as_str().unwrap_or("")) {
                Some(plain) => Reply::json(200, &json!({ "data": { "plaintext": STANDARD.encode(plain) } })),
                None => Reply::json(400, &json!({ "errors": ["cipher: message authentication failed"] })),
            }
        })
    };
    let signer = Signer::new();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, format!("{VAULT_TOKEN}\n")).unwrap();
    let server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![
            ("VAULT_ADDR".into(), vault.url("")),
            ("ALGA_VAULT_TOKEN_FILE".into(), token_file.display().to_string()),
        ],
    });
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.vault", &["cap:secrets.get"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": ["secrets.get"] }),
    );
    // What Alga's installConfig.ts writes: the plaintext is the JSON object, Vault seals it.
    let ciphertext = transit.seal(br#"{"api_key":"from-vault-PLAINTEXT"}"#);
    let mut env = envelope("t1", &d.extension_id, &d.content_hash, "/secrets/get");
    env["http"]["query"] = json!({ "key": "api_key" });
    env["secret_envelope"] = json!({
        "ciphertext_b64": ciphertext, "algorithm": "vault-transit:v1", "key_path": "alga-ext",
        "mount": "transit", "version": 1, "expires_at": "2099-01-01T00:00:00Z"
    });
    let answer = server.execute(&env);
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(
        serde_json::from_slice::<Value>(&answer.envelope_body()).unwrap(),
        json!({ "ok": "from-vault-PLAINTEXT" })
    );
    let asked = vault.received().pop().unwrap();
    assert_eq!(asked.header("x-vault-token"), Some(VAULT_TOKEN));

    // A tampered ciphertext: Vault refuses, the execution does not run.
    let mut tampered = env.clone();
    let mut raw = STANDARD.decode(ciphertext.strip_prefix("vault:v1:").unwrap()).unwrap();
    raw[NONCE_LEN] ^= 1;
    tampered["secret_envelope"]["ciphertext_b64"] = json!(format!("vault:v1:{}", STANDARD.encode(raw)));
    let refused = server.execute(&tampered);
    assert_eq!((refused.status, refused.code().as_str()), (422, "secret_decrypt_failed"));
    // No key named: said before Vault is asked.
    let mut keyless = env.clone();
    keyless["secret_envelope"]["key_path"] = Value::Null;
    let refused = server.execute(&keyless);
    assert_eq!((refused.status, refused.code().as_str()), (422, "secret_decrypt_failed"));
    assert!(refused.json()["detail"].as_str().unwrap_or("").contains("key_path"), "{}", refused.json());
    // No usable token (read on every call): 503, the envelope is not the problem.
    std::fs::write(&token_file, "").unwrap();
    let refused = server.execute(&env);
    assert_eq!((refused.status, refused.code().as_str()), (503, "secret_store_unavailable"));
    assert!(!server.log_text().contains("from-vault-PLAINTEXT"), "the plaintext is never logged");
}

#[test]
fn a_manifest_as_alga_writes_it_publishes_with_warnings_for_what_is_ignored() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let mut m = manifest("com.example.lenient", "1.0.0", &["context.read", "cap:log.emit"]);
    m["entry"] = json!("dist/main.wasm#handler");
    m["ui"]["hooks"] = json!({ "appMenu": { "label": "L" }, "clientPortalMenu": { "label": "C" } });
    m["api"]["endpoints"][0]["schedulable"] = json!(true);
    m["sbom"] = json!("sbom.spdx.json");
    m["colour"] = json!("blue");
    let bytes = pack(&m, &fixture_bytes("echo"));
    let published = server.publish(&bytes, &signer.sign(&bytes, "com.example.lenient", "1.0.0"));
    assert_eq!(published.status, 201, "{}", String::from_utf8_lossy(&published.body));
    let warnings = published.json()["warnings"].clone();
    assert_eq!(warnings.as_array().map(Vec::len), Some(1), "{warnings}");
    assert!(warnings[0].as_str().unwrap().starts_with("$.colour: unknown field"), "{warnings}");
}

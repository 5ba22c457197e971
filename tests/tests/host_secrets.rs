//! The `secrets` host API through a real guest and the real service: write-only install
//! secrets sealed with the node key, the Alga inline envelope (and its expiry), capability and
//! tenant isolation, and a scan of every log line and database file for the plaintexts (and the
//! tokens).

use std::path::Path;

use alga_tests::fixture_bytes;
use alga_tests::server::{ADMIN_TOKEN, SERVICE_TOKEN, Server, Signer, deploy, envelope, hostapi_manifest, install_for};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

const STORED: &str = "stored-PLAINTEXT-7f2a9c";
const ENVELOPED: &str = "enveloped-PLAINTEXT-91be4d";

/// Every file under `dir`, recursively, with its bytes.
fn all_files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all_files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}

#[test]
fn secrets_are_write_only_sealed_overlaid_and_never_logged() {
    let signer = Signer::new();
    let mut server = Server::start(&signer);
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.secrets", &["cap:secrets.get"]),
        &fixture_bytes("hostapi"),
        "tenant-a",
        json!({ "granted_capabilities": ["secrets.get"] }),
    );
    let path = format!("/v1/tenants/tenant-a/installs/{}/secrets", d.name);
    let body = serde_json::to_vec(&json!({ "api_key": STORED, "other": "x" })).unwrap();
    let put = server.request("PUT", &path, Some(ADMIN_TOKEN), &[("content-type", "application/json")], Some(&body));
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.json(), json!({ "keys": ["api_key", "other"] }));
    let read = server.admin_get(&path);
    assert_eq!(read.json(), json!({ "keys": ["api_key", "other"] }), "only names come back");
    let bad = server.request("PUT", &path, Some(ADMIN_TOKEN), &[], Some(br#"{"n": 1}"#));
    assert_eq!((bad.status, bad.code().as_str()), (422, "invalid_secrets"));

    assert_eq!(server.report("tenant-a", &d, "/secrets/get?key=api_key", None), json!({ "ok": STORED }));
    assert_eq!(server.report("tenant-a", &d, "/secrets/get?key=nope", None), json!({ "err": "missing" }));

    // The envelope's secrets overlay the stored ones.
    let ct = STANDARD.encode(serde_json::to_vec(&json!({ "env_key": ENVELOPED, "other": "from-envelope" })).unwrap());
    let mut env = envelope("tenant-a", &d.extension_id, &d.content_hash, "/secrets/get");
    env["http"]["query"] = json!({ "key": "env_key" });
    env["secret_envelope"] =
        json!({ "ciphertext_b64": ct, "algorithm": "inline/base64", "expires_at": "2099-01-01T00:00:00Z" });
    let answer = server.execute(&env);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&answer.envelope_body()).unwrap(),
        json!({ "ok": ENVELOPED })
    );
    env["http"]["query"] = json!({ "key": "other" });
    let answer = server.execute(&env);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&answer.envelope_body()).unwrap(),
        json!({ "ok": "from-envelope" })
    );
    env["http"]["path"] = json!("/secrets/keys");
    let keys = server.execute(&env);
    assert!(String::from_utf8_lossy(&keys.envelope_body()).contains("env_key"));

    // An expired envelope is refused before anything runs.
    env["secret_envelope"]["expires_at"] = json!("2020-01-01T00:00:00Z");
    let expired = server.execute(&env);
    assert_eq!((expired.status, expired.code().as_str()), (422, "secret_envelope_expired"));
    env["secret_envelope"] = json!({ "ciphertext_b64": ct, "algorithm": "vault-transit:v1", "key_path": "k" });
    let vault = server.execute(&env);
    assert_eq!((vault.status, vault.code().as_str()), (422, "secret_decrypt_failed"));

    // Tenant B: without the grant, the deny values; with it, none of A's secrets.
    install_for(&server, &d, "1.0.0", "tenant-b", json!({ "granted_capabilities": [] }));
    assert_eq!(server.report("tenant-b", &d, "/secrets/get?key=api_key", None), json!({ "err": "denied" }));
    assert_eq!(server.report("tenant-b", &d, "/secrets/keys", None), json!({ "ok": "[]" }));
    install_for(&server, &d, "1.0.0", "tenant-b", json!({ "granted_capabilities": ["secrets.get"] }));
    assert_eq!(server.report("tenant-b", &d, "/secrets/get?key=api_key", None), json!({ "err": "missing" }));
    let b_path = format!("/v1/tenants/tenant-b/installs/{}/secrets", d.name);
    assert_eq!(server.admin_get(&b_path).json(), json!({ "keys": [] }));

    // After a restart the sealed secrets open again (the node key persists).
    server.restart();
    assert_eq!(server.report("tenant-a", &d, "/secrets/get?key=api_key", None), json!({ "ok": STORED }));

    // Nothing on disk — database, blobs, logs — holds a plaintext.
    server.stop();
    let mut files = Vec::new();
    all_files(server.dir.path(), &mut files);
    assert!(files.iter().any(|(p, _)| p.contains("serve-")), "the server's logs are scanned too");
    assert!(files.iter().any(|(p, _)| p.contains("/db/")), "the database is scanned");
    for (path, bytes) in &files {
        for secret in [STORED, ENVELOPED, SERVICE_TOKEN, ADMIN_TOKEN] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} found in {path}");
        }
    }
    let key = std::fs::metadata(server.state_dir().join("node.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    // Uninstall deletes the secrets: a new install has none.
    server.restart();
    let gone =
        server.request("DELETE", &format!("/v1/tenants/tenant-a/installs/{}", d.name), Some(ADMIN_TOKEN), &[], None);
    assert_eq!(gone.status, 204);
    install_for(&server, &d, "1.0.0", "tenant-a", json!({ "granted_capabilities": ["secrets.get"] }));
    assert_eq!(server.admin_get(&path).json(), json!({ "keys": [] }));
}

//! Host-registry mode end to end (12-host-registry.md): a stand-in Alga host on loopback plays
//! its registry endpoints, its ext-storage API and a ui-proxy route, checking the credentials
//! and the ids it receives; bundles are put into the real S3 server (Garage) at Alga's keys with
//! a detached minisign signature, and the runner is configured with Alga's environment names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use alga_tests::cluster::{metric, node_key_of};
use alga_tests::fixture_bytes;
use alga_tests::garage::Garage;
use alga_tests::server::{
    ADMIN_TOKEN, Options, SERVICE_TOKEN, Server, Signer, hostapi_manifest, pack_with_ui, percent_decode,
};
use alga_tests::skip_unless;
use alga_tests::upstream::{Received, Reply, Upstream};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

const AUTH_KEY: &str = "alga-auth-key-for-tests";
const STORAGE_TOKEN: &str = "runner-storage-token-for-tests";
const HOST_API_TOKEN: &str = "host-api-token-for-tests";
const TENANT: &str = "0f1e2d3c-tenant";
const EXTENSION: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const INSTALL: &str = "b3f1a7e2-install";
const VERSION: &str = "5d2c-version";

/// What the stand-in host knows and saw.
#[derive(Default)]
struct HostState {
    /// (tenant, extension, content hash) the registry calls valid.
    valid: BTreeSet<(String, String, String)>,
    /// Per-install app domains: host → (tenant, extension, hash).
    domains: BTreeMap<String, (String, String, String)>,
    /// (install, namespace, key) → (base64 value, revision).
    storage: BTreeMap<(String, String, String), (String, u64)>,
    /// Install ids storage calls named.
    storage_installs: Vec<String>,
}

fn query(target: &str) -> BTreeMap<String, String> {
    let q = target.split_once('?').map_or("", |(_, q)| q);
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}

/// Alga's ext-storage route, as its service answers (install-scoped, revisions, `ifRevision`,
/// 404 for a missing key, `success: false` for deleting one, pages with `nextCursor`).
fn storage(state: &mut HostState, install: &str, r: &Received) -> Reply {
    if r.header("x-runner-auth") != Some(STORAGE_TOKEN) {
        return Reply::json(401, &json!({ "error": "Unauthorized", "code": "UNAUTHORIZED" }));
    }
    if install != INSTALL {
        return Reply::json(404, &json!({ "error": "install not found", "code": "NOT_FOUND" }));
    }
    state.storage_installs.push(install.to_string());
    let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let ns = body["namespace"].as_str().unwrap_or("").to_string();
    let id = |key: &str| (install.to_string(), ns.clone(), key.to_string());
    match body["operation"].as_str() {
        Some("get") => match state.storage.get(&id(body["key"].as_str().unwrap_or(""))) {
            Some((value, revision)) => Reply::json(
                200,
                &json!({ "namespace": ns, "key": body["key"], "revision": revision, "value": value,
                         "metadata": { "encoding": "base64-bytes" }, "ttlExpiresAt": null }),
            ),
            None => Reply::json(404, &json!({ "error": "Not found", "code": "NOT_FOUND" })),
        },
        Some("put") => {
            let key = body["key"].as_str().unwrap_or("").to_string();
            let current = state.storage.get(&id(&key)).map(|(_, r)| *r);
            if let Some(want) = body["ifRevision"].as_u64()
                && current != Some(want)
            {
                return Reply::json(409, &json!({ "error": "Revision mismatch", "code": "REVISION_MISMATCH" }));
            }
            let revision = current.unwrap_or(0) + 1;
            state.storage.insert(id(&key), (body["value"].as_str().unwrap_or("").to_string(), revision));
            Reply::json(200, &json!({ "namespace": ns, "key": key, "revision": revision }))
        }
        Some("delete") => {
            let existed = state.storage.remove(&id(body["key"].as_str().unwrap_or(""))).is_some();
            Reply::json(200, &json!({ "success": existed }))
        }
        Some("list") => {
            let after = body["cursor"].as_str().and_then(|c| {
                let raw = URL_SAFE_NO_PAD.decode(c).ok()?;
                serde_json::from_slice::<Value>(&raw).ok()?["key"].as_str().map(str::to_string)
            });
            let limit = body["limit"].as_u64().unwrap_or(25).min(100) as usize;
            let items: Vec<Value> = state
                .storage
                .iter()
                .filter(|((i, n, k), _)| i == install && *n == ns && after.as_ref().is_none_or(|a| k > a))
                .take(limit)
                .map(|((_, _, k), (v, rev))| {
                    json!({ "key": k, "revision": rev, "value": v, "metadata": { "encoding": "base64-bytes" } })
                })
                .collect();
            let next = (items.len() == limit)
                .then(|| URL_SAFE_NO_PAD.encode(json!({ "key": items.last().unwrap()["key"] }).to_string()));
            Reply::json(200, &json!({ "items": items, "nextCursor": next }))
        }
        _ => Reply::json(400, &json!({ "error": "Validation error" })),
    }
}

fn alga_host(state: Arc<Mutex<HostState>>) -> Upstream {
    Upstream::start(move |r| {
        let mut s = state.lock().unwrap();
        let path = r.target.split('?').next().unwrap_or("");
        if path.starts_with("/api/installs/") && r.header("x-api-key") != Some(AUTH_KEY) {
            return Reply::json(401, &json!({ "error": "unauthorized" }));
        }
        match path {
            "/api/installs/validate" => {
                let q = query(&r.target);
                let key = (q["tenant"].clone(), q["extension"].clone(), q["hash"].clone());
                Reply::json(200, &json!({ "valid": s.valid.contains(&key) }))
            }
            "/api/installs/lookup-by-host" => match s.domains.get(&query(&r.target)["host"]) {
                Some((t, e, h)) => Reply::json(200, &json!({ "tenant_id": t, "extension_id": e, "content_hash": h })),
                None => Reply::json(404, &json!({ "error": "not found" })),
            },
            p if p.starts_with("/api/internal/ext-storage/install/") => {
                let install = percent_decode(&p["/api/internal/ext-storage/install/".len()..]);
                storage(&mut s, &install, r)
            }
            p if p.starts_with("/ui-proxy/") => Reply::new(200, "from the host's ui-proxy"),
            _ => Reply::json(404, &json!({ "error": "no such route" })),
        }
    })
}

/// A bundle put where Alga's server puts it: the bytes at `key`, the signature at `key.minisig`.
struct Placed {
    hash: String,
    hex: String,
}

fn bundle_bytes(version: &str) -> Vec<u8> {
    let mut manifest = hostapi_manifest("com.example.hosted", &["cap:storage.kv", "cap:ui.proxy", "cap:secrets.get"]);
    manifest["version"] = json!(version);
    pack_with_ui(&manifest, &fixture_bytes("hostapi"), &[("index.html", b"<!doctype html><p>hosted</p>")])
}

fn hash_of(bytes: &[u8]) -> (String, String) {
    let hash = alga_shared::bundle::content_hash(bytes);
    let hex = hash.trim_start_matches("sha256:").to_string();
    (hash, hex)
}

fn put(garage: &Garage, bucket: &str, key: &str, bytes: Vec<u8>) {
    let (rt, client) = garage.client(bucket, "");
    rt.block_on(client.put(client.key(key.to_string()), bytes)).unwrap_or_else(|e| panic!("putting {key}: {e}"));
}

fn place(
    garage: &Garage,
    bucket: &str,
    key_of: impl Fn(&str) -> String,
    bytes: Vec<u8>,
    sig: Option<String>,
) -> Placed {
    let (hash, hex) = hash_of(&bytes);
    let key = key_of(&hex);
    put(garage, bucket, &key, bytes);
    if let Some(sig) = sig {
        put(garage, bucket, &format!("{key}.minisig"), sig.into_bytes());
    }
    Placed { hash, hex }
}

fn alga_key(hex: &str) -> String {
    format!("tenants/{TENANT}/extensions/{EXTENSION}/sha256/{hex}/bundle.tar.zst")
}

/// What Alga's gateway sends for `path`: no credential, the host's ids, its grants.
fn envelope(hash: &str, path: &str) -> Value {
    json!({
        "context": { "request_id": "req-1", "tenant_id": TENANT, "extension_id": EXTENSION, "install_id": INSTALL,
                     "version_id": VERSION, "content_hash": hash, "config": {} },
        "http": { "method": "GET", "path": path, "query": {}, "headers": {} },
        "limits": { "timeout_ms": 10000 },
        "providers": ["cap:context.read", "cap:storage.kv", "cap:ui.proxy", "cap:invoice.manual.create"],
    })
}

fn execute(server: &Server, env: &Value, headers: &[(&str, &str)]) -> Value {
    let mut all =
        vec![("content-type", "application/json"), ("x-alga-tenant", TENANT), ("x-alga-extension", EXTENSION)];
    all.extend_from_slice(headers);
    let answer = server.request("POST", "/v1/execute", None, &all, Some(&serde_json::to_vec(env).unwrap()));
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    answer.json()
}

fn guest(answer: &Value) -> Value {
    let body = STANDARD.decode(answer["body_b64"].as_str().unwrap_or("")).unwrap();
    serde_json::from_slice(&body).unwrap_or_else(|_| panic!("not JSON: {answer}"))
}

fn storage_call(server: &Server, hash: &str, op: &str, query: Value, body: Option<&[u8]>) -> Value {
    let mut env = envelope(hash, &format!("/storage/{op}"));
    env["http"]["query"] = query;
    if let Some(b) = body {
        env["http"]["method"] = json!("POST");
        env["http"]["body_b64"] = json!(STANDARD.encode(b));
    }
    let answer = execute(server, &env, &[]);
    assert_eq!(answer["status"], 200, "{answer}");
    guest(&answer)
}

fn runner_env(garage: &Garage, bucket: &str, host: &Upstream) -> Vec<(String, String)> {
    let mut env = garage.alga_env(bucket);
    env.extend(
        [
            ("ALGA_RUNNER_REGISTRY__MODE", "host".to_string()),
            ("REGISTRY_BASE_URL", host.url("")),
            ("ALGA_AUTH_KEY", AUTH_KEY.into()),
            ("RUNNER_STORAGE_API_TOKEN", STORAGE_TOKEN.into()),
            ("ALGA_RUNNER_HOST_API__BASE_URL", host.url("")),
            ("ALGA_RUNNER_HOST_API__TOKEN", HOST_API_TOKEN.into()),
            ("UI_PROXY_BASE_URL", host.url("/ui-proxy")),
            ("ALGA_RUNNER_AUTH__TRUSTED_SOURCES", "127.0.0.1/32".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    env
}

#[test]
fn an_alga_host_owns_the_registry_and_the_runner_fetches_verifies_and_runs_by_content_hash() {
    let garage = Garage::get();
    skip_unless!(garage.is_ok(), format!("no S3 server: {}", garage.as_ref().err().unwrap()));
    let garage = garage.unwrap();
    let bucket = garage.bucket();
    let signer = Signer::new();
    let state = Arc::new(Mutex::new(HostState::default()));
    let host = alga_host(state.clone());

    // The bundle Alga's server stored, signed by a key the runner trusts.
    let bytes = bundle_bytes("1.0.0");
    let sig = signer.sign(&bytes, "com.example.hosted", "1.0.0");
    let b = place(garage, &bucket, alga_key, bytes, Some(sig));
    state.lock().unwrap().valid.insert((TENANT.into(), EXTENSION.into(), b.hash.clone()));
    state
        .lock()
        .unwrap()
        .domains
        .insert("t1-ext.apps.example.com".into(), (TENANT.into(), EXTENSION.into(), b.hash.clone()));

    let server =
        Server::start_with(Options { trust_lines: vec![signer.public()], env: runner_env(garage, &bucket, &host) });

    // Execute, from the gateway (a trusted source, no credential): the guest sees the host's ids.
    let answer = execute(&server, &envelope(&b.hash, "/context"), &[]);
    assert_eq!(answer["status"], 200, "{answer}\n{}", server.log_text());
    let context = guest(&answer);
    assert_eq!(context["tenant"], TENANT);
    assert_eq!(context["extension"], EXTENSION);
    assert!(context["install"].as_str().unwrap().contains(INSTALL), "{context}");
    // A hash in another spelling names the same bundle.
    let shouting = envelope(&b.hex.to_ascii_uppercase(), "/context");
    assert_eq!(execute(&server, &shouting, &[("x-runner-service-token", SERVICE_TOKEN)])["status"], 200);

    // Storage goes to the host, under the host's install id.
    assert_eq!(storage_call(&server, &b.hash, "put", json!({ "key": "a" }), Some(b"one")), json!({ "ok": 1 }));
    assert_eq!(storage_call(&server, &b.hash, "put", json!({ "key": "a" }), Some(b"two")), json!({ "ok": 2 }));
    assert_eq!(
        storage_call(&server, &b.hash, "put", json!({ "key": "a", "rev": "1" }), Some(b"x")),
        json!({ "err": "conflict" })
    );
    assert_eq!(storage_call(&server, &b.hash, "get", json!({ "key": "a" }), None), json!({ "ok": "two", "rev": 2 }));
    assert_eq!(storage_call(&server, &b.hash, "get", json!({ "key": "nope" }), None), json!({ "err": "missing" }));
    assert_eq!(storage_call(&server, &b.hash, "delete", json!({ "key": "nope" }), None), json!({ "err": "missing" }));
    for i in 0..105 {
        let key = format!("k{i:03}");
        storage_call(&server, &b.hash, "put", json!({ "ns": "many", "key": key }), Some(b"v"));
    }
    let first = storage_call(&server, &b.hash, "list", json!({ "ns": "many" }), None);
    assert_eq!(first["ok"].as_array().unwrap().len(), 100);
    let rest = storage_call(&server, &b.hash, "list", json!({ "ns": "many", "cursor": "k099" }), None);
    assert_eq!(rest["ok"], json!(["k100", "k101", "k102", "k103", "k104"]), "the guest pages past the first page");
    {
        let s = state.lock().unwrap();
        assert_eq!(s.storage[&(INSTALL.to_string(), "ns".to_string(), "a".to_string())].0, STANDARD.encode("two"));
        assert!(s.storage_installs.iter().all(|i| i == INSTALL));
    }

    // A retry with the same idempotency key is answered once: the host stored one write.
    let mut retry = envelope(&b.hash, "/storage/put");
    retry["http"]["query"] = json!({ "key": "once" });
    retry["http"]["method"] = json!("POST");
    retry["http"]["body_b64"] = json!(STANDARD.encode("v"));
    let first = execute(&server, &retry, &[("x-idempotency-key", "idem-1")]);
    let second = execute(&server, &retry, &[("x-idempotency-key", "idem-1")]);
    assert_eq!(guest(&first), json!({ "ok": 1 }));
    assert_eq!(guest(&second), json!({ "ok": 1 }), "the replay, not a second write");
    assert_eq!(state.lock().unwrap().storage[&(INSTALL.into(), "ns".into(), "once".into())].1, 1);

    // ui-proxy goes to the host with the host's ids.
    let mut proxy = envelope(&b.hash, "/ui-proxy");
    proxy["http"]["query"] = json!({ "route": "/status" });
    assert_eq!(guest(&execute(&server, &proxy, &[])), json!({ "ok": "from the host's ui-proxy" }));
    let seen = host.received().into_iter().rev().find(|r| r.target.starts_with("/ui-proxy/")).unwrap();
    assert_eq!(seen.header("x-ext-install-id"), Some(INSTALL));
    assert_eq!(seen.header("x-alga-extension"), Some(EXTENSION));

    // Grants are the envelope's providers bounded by the manifest: secrets.get was not provided,
    // invoice.manual.create is not in the manifest (dropped, not refused).
    let mut secret = envelope(&b.hash, "/secrets/get");
    secret["http"]["query"] = json!({ "key": "api_key" });
    secret["secret_envelope"] =
        json!({ "algorithm": "inline/base64", "ciphertext_b64": STANDARD.encode(r#"{"api_key":"k-123"}"#) });
    assert_eq!(guest(&execute(&server, &secret, &[])), json!({ "err": "denied" }));
    secret["providers"] = json!(["cap:secrets.get"]);
    assert_eq!(guest(&execute(&server, &secret, &[])), json!({ "ok": "k-123" }));

    // The execution log keeps the host's ids.
    let log = server.admin_get(&format!("/v1/tenants/{TENANT}/executions?limit=1")).json();
    let last = &log["items"][0];
    assert_eq!((last["install_id"].clone(), last["version_id"].clone()), (json!(INSTALL), json!(VERSION)), "{log}");
    assert_eq!(last["extension_id"], EXTENSION);

    // /ext-ui: the host's registry decides, the tenant must be named.
    let ui = |tenant: Option<&str>| {
        let q = tenant.map(|t| format!("?tenant={t}")).unwrap_or_default();
        server.request("GET", &format!("/ext-ui/{EXTENSION}/{}/index.html{q}", b.hash), None, &[], None)
    };
    let page = ui(Some(TENANT));
    assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
    assert!(String::from_utf8_lossy(&page.body).contains("hosted"));
    assert_eq!(ui(Some("another-tenant")).status, 404, "the host says that install is not valid");
    assert_eq!(ui(None).status, 404, "no tenant named");
    let by_header = server.request(
        "GET",
        &format!("/ext-ui/{EXTENSION}/{}/index.html", b.hash),
        None,
        &[("x-tenant-id", TENANT)],
        None,
    );
    assert_eq!(by_header.status, 200);
    // The per-install app domain redirects (307) to its UI, which the client follows.
    let root = server.request("GET", "/", None, &[("host", "t1-ext.apps.example.com:8080")], None);
    assert_eq!(root.status, 200, "{}", String::from_utf8_lossy(&root.body));
    assert!(String::from_utf8_lossy(&root.body).contains("hosted"));
    assert_eq!(server.request("GET", "/", None, &[("host", "unknown.example.com")], None).status, 404);

    // The local registry's admin routes say where that state lives.
    let publish = server.request("POST", "/v1/bundles", Some(ADMIN_TOKEN), &[], Some(b"x"));
    assert_eq!((publish.status, publish.code().as_str()), (404, "not_in_host_mode"));
    let installs = server.request("GET", &format!("/v1/tenants/{TENANT}/installs"), Some(ADMIN_TOKEN), &[], None);
    assert_eq!((installs.status, installs.code().as_str()), (404, "not_in_host_mode"));
    assert!(installs.json()["detail"].as_str().unwrap().contains("live in the host"));

    // Refusals: never executed unsigned, tampered or of another hash; each says why.
    let refused = |hash: &str| {
        let answer = execute(&server, &envelope(hash, "/context"), &[]);
        (
            answer["status"].as_u64().unwrap(),
            answer["error"].as_str().unwrap_or("").to_string(),
            answer["detail"].as_str().unwrap_or("").to_string(),
        )
    };
    let unsigned = place(garage, &bucket, alga_key, bundle_bytes("1.0.1"), None);
    let (status, error, detail) = refused(&unsigned.hash);
    assert_eq!((status, error.as_str()), (502, "bundle_verification_failed"));
    assert!(detail.contains(".minisig"), "{detail}");
    // Tampered: the signature is another bundle's.
    let other = bundle_bytes("1.0.2");
    let other_sig = signer.sign(&other, "com.example.hosted", "1.0.2");
    let tampered = place(garage, &bucket, alga_key, bundle_bytes("1.0.3"), Some(other_sig));
    let (status, error, _) = refused(&tampered.hash);
    assert_eq!((status, error.as_str()), (502, "bundle_verification_failed"));
    // Signed by a key the runner does not trust.
    let stranger = Signer::new();
    let v104 = bundle_bytes("1.0.4");
    let untrusted =
        place(garage, &bucket, alga_key, v104.clone(), Some(stranger.sign(&v104, "com.example.hosted", "1.0.4")));
    let (status, _, detail) = refused(&untrusted.hash);
    assert_eq!(status, 502, "{detail}");
    // Hash mismatch: the object at a hash's key holds other (validly signed) bytes.
    let v105 = bundle_bytes("1.0.5");
    let (claimed, claimed_hex) = hash_of(&bundle_bytes("1.0.6"));
    put(garage, &bucket, &alga_key(&claimed_hex), v105.clone());
    put(
        garage,
        &bucket,
        &format!("{}.minisig", alga_key(&claimed_hex)),
        signer.sign(&v105, "com.example.hosted", "1.0.5").into_bytes(),
    );
    let (status, _, detail) = refused(&claimed);
    assert_eq!(status, 502);
    assert!(detail.contains("not the content hash asked for"), "{detail}");
    // One signature at the tenant-independent key serves the copy at the tenant's key.
    let v107 = bundle_bytes("1.0.7");
    let (h107, hex107) = hash_of(&v107);
    let sig107 = signer.sign(&v107, "com.example.hosted", "1.0.7");
    put(garage, &bucket, &alga_key(&hex107), v107);
    put(garage, &bucket, &format!("sha256/{hex107}/bundle.tar.zst.minisig"), sig107.into_bytes());
    assert_eq!(execute(&server, &envelope(&h107, "/context"), &[])["status"], 200);
    // Nothing there: not_installed, naming every key tried.
    let (status, error, detail) = refused(&format!("sha256:{}", "ab".repeat(32)));
    assert_eq!((status, error.as_str()), (404, "not_installed"));
    assert!(
        detail.contains("tenants/") && detail.contains(&format!("sha256/{}/bundle.tar.zst", "ab".repeat(32))),
        "{detail}"
    );
    let failed = metric(&server, "alga_runner_bundle_verifications_total{stage=\"load\",result=\"failed\"}");
    assert!(failed >= 3.0, "tampered, untrusted and mismatched counted: {failed}");

    // Prefetch: a bundle at the plain key is readied before its first request, and a second
    // host with the cluster's node key takes the compiled artifact instead of compiling.
    let v2 = bundle_bytes("2.0.0");
    let v2_sig = signer.sign(&v2, "com.example.hosted", "2.0.0");
    let plain = place(garage, &bucket, |hex| format!("sha256/{hex}/bundle.tar.zst"), v2, Some(v2_sig));
    let body =
        serde_json::to_vec(&json!({ "content_hash": plain.hash, "tenant": TENANT, "extension": EXTENSION })).unwrap();
    let ready = server.request(
        "POST",
        "/v1/bundles/prefetch",
        Some(ADMIN_TOKEN),
        &[("content-type", "application/json")],
        Some(&body),
    );
    assert_eq!(ready.status, 200, "{}", String::from_utf8_lossy(&ready.body));
    assert_eq!(ready.json()["version"], "2.0.0");
    // Every version carries the same component: compiled once, on this host, and vouched for.
    assert_eq!(metric(&server, "alga_runner_artifact_loads_total{source=\"compiled\"}"), 1.0);
    let mut env = runner_env(garage, &bucket, &host);
    env.push(node_key_of(&server));
    let second = Server::start_with(Options { trust_lines: vec![signer.public()], env });
    assert_eq!(execute(&second, &envelope(&plain.hash, "/context"), &[])["status"], 200);
    assert_eq!(metric(&second, "alga_runner_artifact_loads_total{source=\"shared\"}"), 1.0);
    assert_eq!(metric(&second, "alga_runner_artifact_loads_total{source=\"compiled\"}"), 0.0);
    // A host without the node key cannot vouch: it compiles for itself.
    let third =
        Server::start_with(Options { trust_lines: vec![signer.public()], env: runner_env(garage, &bucket, &host) });
    assert_eq!(execute(&third, &envelope(&plain.hash, "/context"), &[])["status"], 200);
    assert_eq!(metric(&third, "alga_runner_artifact_loads_total{source=\"shared\"}"), 0.0);
}

#[test]
fn host_mode_refuses_to_start_without_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(alga_tests::runner_bin())
        .args(["serve"])
        .env("ALGA_RUNNER_STATE_DIR", dir.path())
        .env("ALGA_RUNNER_REGISTRY__MODE", "host")
        .env("BUNDLE_STORE_BASE", "ftp://nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needed in ["BUNDLE_STORE_BASE", "registry.base_url", "registry.auth_key", "[blobs] backend"] {
        assert!(stderr.contains(needed), "{needed} not named in:\n{stderr}");
    }
}

/// The archive `alga pack` makes from an extension built with Alga's published tools runs in
/// both modes, unchanged but for the detached signature: published into a local-mode runner,
/// and fetched from Alga's key by a host-mode runner.
#[test]
fn what_alga_pack_makes_runs_in_both_modes() {
    skip_unless!(alga_tests::alga_sample::tools_missing().is_none(), alga_tests::alga_sample::tools_missing().unwrap());
    let garage = Garage::get();
    skip_unless!(garage.is_ok(), format!("no S3 server: {}", garage.as_ref().err().unwrap()));
    let garage = garage.unwrap();
    let out = tempfile::tempdir().unwrap();
    let archive = alga_tests::alga_sample::pack(out.path()).expect("building and packing the Alga sample");
    let bytes = std::fs::read(&archive).unwrap();
    let (hash, hex) = hash_of(&bytes);
    let sidecar = std::fs::read_to_string(out.path().join("bundle.sha256")).unwrap();
    assert_eq!(sidecar.trim(), hex, "alga pack's sidecar names the same hash");
    let signer = Signer::new();
    let signature = signer.sign(&bytes, "com.example.hello-alga", "1.0.0");

    // Local mode: published as it is, installed, executed.
    let local = Server::start(&signer);
    let published = local.publish(&bytes, &signature);
    assert_eq!(published.status, 201, "{}", String::from_utf8_lossy(&published.body));
    assert_eq!(published.json()["content_hash"], hash.as_str());
    let install = local.install(
        "t1",
        "com.example.hello-alga",
        &json!({ "version": "1.0.0", "granted_capabilities": ["storage.kv"] }),
    );
    assert!(matches!(install.status, 200 | 201), "{}", String::from_utf8_lossy(&install.body));
    let id = published.json()["extension_id"].as_str().unwrap().to_string();
    // Readied before its first request, through the CLI.
    let prefetched = std::process::Command::new(alga_tests::runner_bin())
        .args(["prefetch", &hex, "--url", &local.url])
        .env("ALGA_RUNNER_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(prefetched.status.success(), "{}", String::from_utf8_lossy(&prefetched.stderr));
    let ready: Value = serde_json::from_slice(&prefetched.stdout).unwrap();
    assert_eq!((ready["name"].clone(), ready["content_hash"].clone()), (json!("com.example.hello-alga"), json!(hash)));
    let mut env = alga_tests::server::envelope("t1", &id, &hash, "/hello");
    env["http"]["query"] = json!({ "name": "Ada" });
    let answer = local.execute(&env);
    assert_eq!(answer.json()["status"], 200, "{}\n{}", answer.json(), local.log_text());
    let hello: Value = serde_json::from_slice(&answer.envelope_body()).unwrap();
    assert_eq!(hello["message"], "Hello, Ada!");
    assert_eq!(hello["tenant"], "t1");

    // Host mode: the same bytes at Alga's key, the signature beside them.
    let bucket = garage.bucket();
    put(garage, &bucket, &alga_key(&hex), bytes);
    put(garage, &bucket, &format!("{}.minisig", alga_key(&hex)), signature.into_bytes());
    let state = Arc::new(Mutex::new(HostState::default()));
    let host = alga_host(state.clone());
    let server =
        Server::start_with(Options { trust_lines: vec![signer.public()], env: runner_env(garage, &bucket, &host) });
    let mut hello = envelope(&hash, "/hello");
    hello["http"]["query"] = json!({ "name": "Grace" });
    let answer = execute(&server, &hello, &[]);
    assert_eq!(answer["status"], 200, "{answer}\n{}", server.log_text());
    let body = guest(&answer);
    assert_eq!((body["message"].clone(), body["install"].clone()), (json!("Hello, Grace!"), json!(INSTALL)));
    let mut visit = envelope(&hash, "/visits");
    visit["http"]["method"] = json!("POST");
    assert_eq!(guest(&execute(&server, &visit, &[])), json!({ "visits": 1 }));
    assert_eq!(guest(&execute(&server, &visit, &[])), json!({ "visits": 2 }));
    assert_eq!(
        state.lock().unwrap().storage[&(INSTALL.into(), "visits".into(), "count".into())].1,
        2,
        "in the host's storage"
    );
}

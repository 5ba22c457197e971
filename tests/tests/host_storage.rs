//! The `storage` host API through a real guest and the real service: its semantics, isolation
//! between installs and tenants, durability across `kill -9`, and the purge on uninstall.

use alga_tests::fixture_bytes;
use alga_tests::server::{Server, Signer, deploy, hostapi_manifest, install_for};
use serde_json::json;

#[test]
fn storage_semantics_through_a_guest() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.kv", &["cap:storage.kv"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": ["storage.kv"] }),
    );
    let r = |path: &str, body: Option<&[u8]>| server.report("t1", &d, path, body);
    assert_eq!(r("/storage/get?key=a", None), json!({ "err": "missing" }));
    assert_eq!(r("/storage/delete?key=a", None), json!({ "err": "missing" }), "delete of a missing key");
    assert_eq!(r("/storage/put?key=a", Some(b"one")), json!({ "ok": 1 }));
    assert_eq!(r("/storage/put?key=a", Some(b"two")), json!({ "ok": 2 }));
    assert_eq!(r("/storage/put?key=a&rev=1", Some(b"x")), json!({ "err": "conflict" }), "stale revision");
    assert_eq!(r("/storage/put?key=new&rev=1", Some(b"x")), json!({ "err": "conflict" }), "CAS on a missing key");
    assert_eq!(r("/storage/put?key=a&rev=2", Some(b"three")), json!({ "ok": 3 }));
    assert_eq!(r("/storage/get?key=a", None), json!({ "ok": "three", "rev": 3 }));
    assert_eq!(r("/storage/put?key=a%2Fb", Some(b"x")), json!({ "err": "denied" }), "`/` in a key");
    let big = vec![b'x'; 64 * 1024 + 1];
    assert_eq!(r("/storage/put?key=big", Some(&big)), json!({ "err": "denied" }), "value over 64 KiB");
    for k in ["c", "b", "d"] {
        r(&format!("/storage/put?key={k}"), Some(b"v"));
    }
    assert_eq!(r("/storage/list", None), json!({ "ok": ["a", "b", "c", "d"] }), "key order");
    assert_eq!(r("/storage/list?cursor=b", None), json!({ "ok": ["c", "d"] }), "strictly after the cursor");
    assert_eq!(r("/storage/delete?key=a", None), json!({ "ok": null }));
    assert_eq!(r("/storage/get?key=a", None), json!({ "err": "missing" }));
}

#[test]
fn storage_is_denied_without_the_grant_and_isolated_between_tenants() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.kv", &["cap:storage.kv"]),
        &fixture_bytes("hostapi"),
        "tenant-a",
        json!({ "granted_capabilities": ["storage.kv"] }),
    );
    // Tenant B installs the same extension without granting storage: the deny value, no trap.
    install_for(&server, &d, "1.0.0", "tenant-b", json!({ "granted_capabilities": [] }));
    assert_eq!(server.report("tenant-b", &d, "/storage/get?key=k", None), json!({ "err": "denied" }));
    assert_eq!(server.report("tenant-b", &d, "/storage/put?key=k", Some(b"b")), json!({ "err": "denied" }));

    // With the grant, B has its own store: it cannot read A's value, whatever it passes.
    server.report("tenant-a", &d, "/storage/put?key=k", Some(b"a's secret"));
    install_for(&server, &d, "1.0.0", "tenant-b", json!({ "granted_capabilities": ["storage.kv"] }));
    assert_eq!(server.report("tenant-b", &d, "/storage/get?key=k", None), json!({ "err": "missing" }));
    assert_eq!(server.report("tenant-b", &d, "/storage/list", None), json!({ "ok": [] }));
    // An envelope naming A's install id for tenant B is not B's install: not_installed.
    let a_install = server.admin_get(&format!("/v1/tenants/tenant-a/installs/{}", d.name)).json()["install_id"].clone();
    let mut env = alga_tests::server::envelope("tenant-b", &d.extension_id, &d.content_hash, "/storage/get");
    env["context"]["install_id"] = a_install;
    env["http"]["query"] = json!({ "key": "k" });
    let answer = server.execute(&env).json();
    assert_eq!((answer["status"].as_u64(), answer["error"].as_str()), (Some(404), Some("not_installed")));
    assert_eq!(server.report("tenant-a", &d, "/storage/get?key=k", None), json!({ "ok": "a's secret", "rev": 1 }));
}

#[test]
fn acknowledged_puts_survive_kill_9_and_uninstall_purges() {
    let signer = Signer::new();
    let mut server = Server::start(&signer);
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.kv", &["cap:storage.kv"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": ["storage.kv"] }),
    );
    for i in 0..20 {
        assert_eq!(server.report("t1", &d, &format!("/storage/put?key=k{i:02}"), Some(b"v")), json!({ "ok": 1 }));
    }
    // The last acknowledged put is followed immediately by kill -9: no graceful flush.
    server.kill9();
    server.restart();
    let listed = server.report("t1", &d, "/storage/list", None);
    assert_eq!(listed["ok"].as_array().map(Vec::len), Some(20), "every acknowledged put survived: {listed}");

    // Uninstall purges; a new install of the same extension starts empty.
    let gone = server.request(
        "DELETE",
        &format!("/v1/tenants/t1/installs/{}", d.name),
        Some(alga_tests::server::ADMIN_TOKEN),
        &[],
        None,
    );
    assert_eq!(gone.status, 204);
    install_for(&server, &d, "1.0.0", "t1", json!({ "granted_capabilities": ["storage.kv"] }));
    assert_eq!(server.report("t1", &d, "/storage/list", None), json!({ "ok": [] }));
    assert_eq!(server.report("t1", &d, "/storage/get?key=k00", None), json!({ "err": "missing" }));
}

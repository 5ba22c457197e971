//! What WASI gives a guest: no filesystem, no sockets, and no `wasi:http` bypass of the egress
//! policy (a component importing `wasi:http/outgoing-handler` cannot link, so it is refused at publish).

use std::net::TcpListener;
use std::time::Duration;

use alga_tests::fixture_bytes;
use alga_tests::server::{Server, Signer, deploy, hostapi_manifest, pack};
use serde_json::json;

#[test]
fn no_filesystem_and_no_sockets() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.wasi", &[]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({}),
    );
    let fs = server.report("t1", &d, "/wasi/fs", None);
    for result in fs.as_array().expect("a list of results") {
        assert!(result.as_str().unwrap().starts_with("error"), "a filesystem call succeeded: {fs}");
    }

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let tcp = server.report("t1", &d, &format!("/wasi/tcp?port={port}"), None);
    assert!(tcp["err"].as_str().is_some_and(|e| e.contains("access-denied") || e.contains("AccessDenied")), "{tcp}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(listener.accept().is_err(), "the guest reached a loopback listener");
}

#[test]
fn a_component_importing_wasi_http_is_refused_at_publish() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let manifest = hostapi_manifest("com.example.wasihttp", &["cap:http.fetch"]);
    let bytes = pack(&manifest, &fixture_bytes("wasi_http"));
    let answer = server.publish(&bytes, &signer.sign(&bytes, "com.example.wasihttp", "1.0.0"));
    assert_eq!((answer.status, answer.code().as_str()), (400, "invalid_bundle"));
    let detail = answer.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.contains("wasi:http") && detail.contains("does not provide"), "{detail}");
    assert!(server.admin_get("/v1/extensions/com.example.wasihttp").status == 404, "nothing was stored");
}

//! `ANY /api/ext/{extension}/{path...}` against the real service: install and endpoint
//! resolution, header allowlists both ways, HEAD and OPTIONS, body cap, timeout, CORS only for
//! configured origins, problem+json errors.

use alga_tests::fixture_bytes;
use alga_tests::server::{Answer, Deployed, Options, SERVICE_TOKEN, Server, Signer, deploy, hostapi_manifest};
use serde_json::{Value, json};

fn start(env: Vec<(String, String)>) -> (Server, Deployed, Signer) {
    let signer = Signer::new();
    let server = Server::start_with(Options { trust_lines: vec![signer.public()], env });
    let d =
        deploy(&server, &signer, &hostapi_manifest("com.example.gw", &[]), &fixture_bytes("hostapi"), "t1", json!({}));
    (server, d, signer)
}

fn gw(server: &Server, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
    let mut all = vec![("x-alga-tenant", "t1")];
    all.extend_from_slice(headers);
    server.request(method, &format!("/api/ext/{path}"), Some(SERVICE_TOKEN), &all, body)
}

#[test]
fn routes_filter_headers_and_answer_like_the_guest() {
    let (server, d, _) = start(vec![]);
    let echo = gw(
        &server,
        "GET",
        "com.example.gw/items/42?x=1&y=two",
        &[("cookie", "session=abc"), ("accept", "text/plain"), ("x-custom", "no"), ("x-alga-user-id", "u1")],
        None,
    );
    assert_eq!(echo.status, 200, "{}", String::from_utf8_lossy(&echo.body));
    let seen: Value = serde_json::from_slice(&echo.body).unwrap();
    assert_eq!(seen["url"], "/items/42?x=1&y=two");
    let names: Vec<&str> = seen["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap()).collect();
    assert!(
        names.contains(&"accept") && names.contains(&"x-alga-tenant") && names.contains(&"x-alga-extension"),
        "{names:?}"
    );
    for never in ["authorization", "cookie", "x-custom"] {
        assert!(!names.contains(&never), "{never} reached the guest: {names:?}");
    }
    assert!(echo.header("x-request-id").is_some());
    assert!(echo.header("access-control-allow-origin").is_none(), "no CORS unless configured");

    // By registry id too; the guest's headers pass through the outbound allowlist.
    let h = gw(&server, "GET", &format!("{}/headers", d.extension_id), &[("origin", "https://app.example")], None);
    assert_eq!(h.status, 201);
    assert_eq!(h.body, b"with headers");
    assert_eq!(h.header("x-ext-trace"), Some("t1"));
    assert_eq!(h.header("etag"), Some("\"v1\""));
    assert_eq!(h.header("location"), Some("/next"));
    for never in ["set-cookie", "access-control-allow-origin", "x-powered-by"] {
        assert!(h.header(never).is_none(), "{never} left the gateway");
    }
    let away = gw(&server, "GET", "com.example.gw/redirect-away", &[], None);
    assert_eq!(away.status, 302);
    assert!(away.header("location").is_none(), "a cross-origin location is dropped");

    for root in ["com.example.gw", "com.example.gw/"] {
        let r = gw(&server, "GET", root, &[], None);
        assert_eq!(r.status, 200, "{root}");
        assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap()["url"], "/", "{root}");
    }
    let head = gw(&server, "HEAD", "com.example.gw/items/7", &[], None);
    assert_eq!((head.status, head.body.len()), (200, 0));
    let options = gw(&server, "OPTIONS", "com.example.gw/items", &[], None);
    assert_eq!(options.status, 204);
    assert_eq!(options.header("allow"), Some("OPTIONS, POST"));

    let problem = |a: &Answer| (a.status, a.code(), a.header("content-type").unwrap_or("").to_string());
    let p = problem(&gw(&server, "DELETE", "com.example.gw/items", &[], None));
    assert_eq!(p, (404, "endpoint_not_found".into(), "application/problem+json".into()));
    assert_eq!(problem(&gw(&server, "GET", "com.example.none/", &[], None)).1, "not_installed");
    let other_tenant =
        server.request("GET", "/api/ext/com.example.gw/", Some(SERVICE_TOKEN), &[("x-alga-tenant", "t2")], None);
    assert_eq!((other_tenant.status, other_tenant.code().as_str()), (404, "not_installed"));
    let no_tenant = server.request("GET", "/api/ext/com.example.gw/", Some(SERVICE_TOKEN), &[], None);
    assert_eq!((no_tenant.status, no_tenant.code().as_str()), (400, "missing_tenant"));
    let no_token = server.request("GET", "/api/ext/com.example.gw/", None, &[("x-alga-tenant", "t1")], None);
    assert_eq!(no_token.status, 401);

    // Gateway executions are in the execution log with their endpoint.
    let records = server.admin_get("/v1/tenants/t1/executions?limit=50").json();
    assert!(
        records["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["trigger"] == "gateway" && r["endpoint"] == "GET /items/:id"),
        "{records}"
    );
}

#[test]
fn body_cap_timeout_and_cors_when_configured() {
    let (server, _, signer) = start(vec![
        ("ALGA_RUNNER_GATEWAY__MAX_BODY_MB".into(), "1".into()),
        ("EXT_GATEWAY_TIMEOUT_MS".into(), "1000".into()),
        ("ALGA_RUNNER_GATEWAY__CORS_ALLOWED_ORIGINS".into(), "https://app.example".into()),
    ]);
    let big = vec![b'x'; 2 << 20];
    let too_large =
        gw(&server, "POST", "com.example.gw/items", &[("content-type", "application/octet-stream")], Some(&big));
    assert_eq!((too_large.status, too_large.code().as_str()), (413, "payload_too_large"));
    let small = gw(&server, "POST", "com.example.gw/items", &[("content-type", "text/plain")], Some(b"hi"));
    assert_eq!(small.status, 200);

    let allowed = gw(&server, "GET", "com.example.gw/", &[("origin", "https://app.example")], None);
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://app.example"));
    let preflight = gw(&server, "OPTIONS", "com.example.gw/items", &[("origin", "https://app.example")], None);
    assert_eq!(preflight.header("access-control-allow-methods"), Some("OPTIONS, POST"));
    let other = gw(&server, "GET", "com.example.gw/", &[("origin", "https://evil.example")], None);
    assert!(other.header("access-control-allow-origin").is_none());

    let spin =
        deploy(&server, &signer, &hostapi_manifest("com.example.spin", &[]), &fixture_bytes("spin"), "t1", json!({}));
    let timed_out = gw(&server, "GET", &format!("{}/", spin.name), &[], None);
    assert_eq!((timed_out.status, timed_out.code().as_str()), (504, "timeout"));
}

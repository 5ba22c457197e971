//! The host-forwarded interfaces (ui-proxy, scheduler, invoicing, clients, services) through a
//! real guest and the real service, against a small host application the test starts: the
//! requests it receives (path, `x-runner-auth`, JSON body) and the Alga status mappings; and the
//! deny values without a configured host API or without the grants.

use alga_tests::fixture_bytes;
use alga_tests::server::{Deployed, Options, Server, Signer, deploy, hostapi_manifest, install_for};
use alga_tests::upstream::{Received, Reply, Upstream};
use serde_json::{Value, json};

const HOST_TOKEN: &str = "host-api-token-5551";
const CAPS: &[&str] =
    &["cap:ui.proxy", "cap:scheduler.manage", "cap:invoice.manual.create", "cap:client.read", "cap:service.read"];

fn host_app(r: &Received) -> Reply {
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let op = body["operation"].as_str().unwrap_or("");
    let path = r.target.split('?').next().unwrap_or("");
    if !path.starts_with("/api/internal/") {
        // ui-proxy: the guest's routes never carry the runner's credential.
        if r.header("x-runner-auth").is_some() {
            return Reply::new(400, "a ui-proxy request carried x-runner-auth");
        }
        if path.ends_with("/hello") {
            return Reply::new(200, "proxied hello");
        }
        return Reply::new(404, "no route");
    }
    if r.header("x-runner-auth") != Some(HOST_TOKEN) {
        return Reply::new(401, "no token");
    }
    if path.starts_with("/api/internal/ext-clients/install/") {
        return match op {
            "list" => Reply::json(
                200,
                &json!({
                    "items": [{ "clientId": "c1", "clientName": "Acme", "isInactive": false }],
                    "totalCount": 1, "page": body["input"]["page"], "pageSize": body["input"]["pageSize"]
                }),
            ),
            "get" => Reply::json(200, &json!({ "item": null })),
            _ => Reply::new(400, "bad op"),
        };
    }
    if path.starts_with("/api/internal/ext-services/install/") {
        return Reply::new(403, "NOT_ALLOWED");
    }
    if path.starts_with("/api/internal/ext-scheduler/install/") {
        return match op {
            "list" => Reply::json(
                200,
                &json!({ "schedules": [
                { "id": "s1", "endpointPath": "/jobs", "endpointMethod": "POST", "cron": "0 * * * *", "timezone": "UTC", "enabled": true },
                { "broken": true }
            ] }),
            ),
            "create" => Reply::new(400, "bad cron"),
            _ => Reply::new(500, "no"),
        };
    }
    if path.starts_with("/api/internal/ext-invoicing/install/") {
        return Reply::json(
            200,
            &json!({ "success": true, "invoice": { "invoiceId": "inv-1", "invoiceNumber": "INV-0001", "total": 100.0 } }),
        );
    }
    Reply::new(404, "no route")
}

fn setup(with_host_api: bool) -> (Server, Deployed, Option<Upstream>) {
    setup_with(with_host_api, true)
}

/// `ui_proxy`: whether `host_api.ui_proxy_base_url` is set (to the same host application).
fn setup_with(with_host_api: bool, ui_proxy: bool) -> (Server, Deployed, Option<Upstream>) {
    let signer = Signer::new();
    let host = with_host_api.then(|| Upstream::start(host_app));
    let mut env = Vec::new();
    if let Some(h) = &host {
        env.push(("ALGA_RUNNER_HOST_API__BASE_URL".to_string(), h.url("")));
        env.push(("ALGA_RUNNER_HOST_API__TOKEN".to_string(), HOST_TOKEN.to_string()));
        if ui_proxy {
            env.push(("UI_PROXY_BASE_URL".to_string(), h.url("")));
        }
    }
    let server = Server::start_with(Options { trust_lines: vec![signer.public()], env });
    let grants: Vec<&str> = CAPS.iter().map(|c| c.trim_start_matches("cap:")).collect();
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.fwd", CAPS),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": grants }),
    );
    (server, d, host)
}

fn text(v: &Value) -> String {
    v.to_string()
}

#[test]
fn forwarded_to_the_host_application_with_the_alga_mappings() {
    let (server, d, host) = setup(true);
    let host = host.unwrap();
    let install_id = server.admin_get(&format!("/v1/tenants/t1/installs/{}", d.name)).json()["install_id"]
        .as_str()
        .unwrap()
        .to_string();

    let clients = server.report("t1", &d, "/clients/list?page=2&page_size=10", None);
    assert!(text(&clients).contains("Acme") && text(&clients).contains("page: 2"), "{clients}");
    let seen = host.received().pop().unwrap();
    assert_eq!(seen.target, format!("/api/internal/ext-clients/install/{install_id}"));
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.header("x-runner-auth"), Some(HOST_TOKEN));
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!((body["operation"].as_str(), body["input"]["pageSize"].as_u64()), (Some("list"), Some(10)));
    assert_eq!(server.report("t1", &d, "/clients/get?id=c9", None), json!({ "ok": "None" }));
    // Validated before any call: page size 0 is invalid-input.
    let before = host.received().len();
    assert_eq!(server.report("t1", &d, "/clients/list?page_size=0", None), json!({ "err": "invalid-input" }));
    assert_eq!(host.received().len(), before, "no request for invalid input");

    // 403 from the host: not-allowed.
    assert_eq!(server.report("t1", &d, "/services/list", None), json!({ "err": "not-allowed" }));

    // Scheduler: malformed items dropped; a 400 on create is a validation failure.
    let schedules = server.report("t1", &d, "/scheduler/list", None);
    assert!(text(&schedules).contains("id: \\\"s1\\\"") && !text(&schedules).contains("broken"), "{schedules}");
    let created = server.report("t1", &d, "/scheduler/create?payload=%7B%7D", None);
    assert!(text(&created).contains("success: false") && text(&created).contains("ValidationFailed"), "{created}");

    let invoice = server.report("t1", &d, "/invoice", None);
    assert!(text(&invoice).contains("success: true") && text(&invoice).contains("INV-0001"), "{invoice}");

    // ui-proxy: routes under the extension id; 404 is route-not-found.
    assert_eq!(server.report("t1", &d, "/ui-proxy?route=%2Fhello", None), json!({ "ok": "proxied hello" }));
    let proxied = host.received().pop().unwrap();
    assert_eq!(proxied.target, format!("/{}/hello", d.extension_id));
    assert_eq!(proxied.header("x-alga-tenant"), Some("t1"));
    assert_eq!(server.report("t1", &d, "/ui-proxy?route=%2Fnowhere", None), json!({ "err": "route-not-found" }));
    assert_eq!(server.report("t1", &d, "/ui-proxy?route=%2F..%2Fadmin", None), json!({ "err": "bad-request" }));

    // Without the grants: the deny values, and nothing reaches the host.
    install_for(&server, &d, "1.0.0", "t2", json!({ "granted_capabilities": [] }));
    let before = host.received().len();
    assert_eq!(server.report("t2", &d, "/clients/list", None), json!({ "err": "not-allowed" }));
    assert_eq!(server.report("t2", &d, "/ui-proxy?route=%2Fhello", None), json!({ "err": "denied" }));
    assert_eq!(server.report("t2", &d, "/scheduler/list", None), json!({ "err": "denied" }));
    assert_eq!(host.received().len(), before);
}

#[test]
fn without_a_host_api_the_interfaces_answer_their_deny_values() {
    let (server, d, _) = setup(false);
    assert_eq!(server.report("t1", &d, "/clients/list", None), json!({ "err": "not-allowed" }));
    assert_eq!(server.report("t1", &d, "/services/get?id=x", None), json!({ "err": "not-allowed" }));
    assert_eq!(server.report("t1", &d, "/scheduler/list", None), json!({ "err": "denied" }));
    assert_eq!(server.report("t1", &d, "/ui-proxy?route=%2Fhello", None), json!({ "err": "route-not-found" }));
    let invoice = server.report("t1", &d, "/invoice", None);
    assert!(text(&invoice).contains("success: false"), "{invoice}");
}

#[test]
fn ui_proxy_cannot_forge_the_runners_internal_calls() {
    // Only `base_url`: ui-proxy has nowhere to go and does not fall back to the internal API.
    let (server, d, host) = setup_with(true, false);
    let host = host.unwrap();
    let install_id = server.admin_get(&format!("/v1/tenants/t1/installs/{}", d.name)).json()["install_id"]
        .as_str()
        .unwrap()
        .to_string();
    let route = format!("api%2Finternal%2Fext-invoicing%2Finstall%2F{install_id}");
    assert_eq!(server.report("t1", &d, &format!("/ui-proxy?route={route}"), None), json!({ "err": "route-not-found" }));
    assert_eq!(server.report("t1", &d, "/ui-proxy?route=%2Fhello", None), json!({ "err": "route-not-found" }));
    assert!(host.received().is_empty(), "nothing reached the host: {:?}", host.received());

    // ui-proxy pointed at the same host application: the internal API stays out of reach in
    // every spelling, and ordinary routes arrive without the runner's credential.
    let (server, d, host) = setup_with(true, true);
    let host = host.unwrap();
    for route in [
        "api%2Finternal%2Fext-invoicing%2Finstall%2Fi1",
        "%2Fapi%2Finternal%2Fext-invoicing%2Finstall%2Fi1",
        "api%2F%2Finternal%2Fext-scheduler%2Finstall%2Fi1",
        "api%2FInternal%2Fext-clients%2Finstall%2Fi1",
        "api%2F%2569nternal%2Fext-services%2Finstall%2Fi1",
    ] {
        let answer = server.report("t1", &d, &format!("/ui-proxy?route={route}"), None);
        assert_eq!(answer, json!({ "err": "route-not-found" }), "{route}");
    }
    assert_eq!(
        server.report("t1", &d, "/ui-proxy?route=api%2F.%2Finternal%2Fext-invoicing%2Finstall%2Fi1", None),
        json!({ "err": "bad-request" })
    );
    assert!(host.received().is_empty(), "nothing reached the host: {:?}", host.received());
    assert_eq!(server.report("t1", &d, "/ui-proxy?route=%2Fhello", None), json!({ "ok": "proxied hello" }));
    let proxied = host.received().pop().unwrap();
    assert_eq!(proxied.header("x-runner-auth"), None);
}

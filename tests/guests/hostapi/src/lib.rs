//! Calls one host API per request, chosen by the path, and answers a JSON report of what the
//! supervisor replied — so tests drive every host API through a real component:
//! `/storage/{put,get,delete,list}`, `/secrets/{get,keys}`, `/fetch`, `/context`, `/user`,
//! `/config`, `/log`, `/metrics`, `/ui-proxy`, `/clients/*`, `/services/*`, `/scheduler/*`,
//! `/invoice`, `/headers`, `/wasi/{fs,tcp}`; anything else echoes the request.
include!("../../common/guest.rs");

use alga::extension::types::{
    ClientsListInput, CreateManualInvoiceInput, CreateScheduleInput, ManualInvoiceItemInput, ServicesListInput,
    StorageEntry,
};
use alga::extension::{
    clients, config, context, http, invoicing, logging, metrics, scheduler, secrets, services, storage, ui_proxy,
    user_v2,
};

/// Percent-decoding of a query value (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn q(url: &str, name: &str) -> Option<String> {
    query_param(url, name).map(|v| decode(&v))
}

fn text(bytes: &[u8]) -> String {
    json_str(&String::from_utf8_lossy(bytes))
}

/// The error as its WIT case name (`denied`, `not-allowed`, ...), from its Debug text.
fn err<E: core::fmt::Debug>(e: E) -> String {
    let debug = format!("{e:?}");
    let name = debug
        .split_once("name: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or(debug.as_str(), |(name, _)| name)
        .to_string();
    format!("{{\"err\":{}}}", json_str(&name))
}

fn ok(v: String) -> String {
    format!("{{\"ok\":{v}}}")
}

fn debug<T: core::fmt::Debug>(v: &T) -> String {
    json_str(&format!("{v:?}"))
}

fn storage_call(op: &str, url: &str, body: &[u8]) -> String {
    let ns = q(url, "ns").unwrap_or_else(|| "ns".into());
    let key = q(url, "key").unwrap_or_default();
    match op {
        "put" => {
            let revision = q(url, "rev").and_then(|r| r.parse().ok());
            let entry = StorageEntry { namespace: ns, key, value: body.to_vec(), revision };
            match storage::put(&entry) {
                Ok(e) => ok(format!("{}", e.revision.unwrap_or(0))),
                Err(e) => err(e),
            }
        }
        "get" => match storage::get(&ns, &key) {
            Ok(e) => format!("{{\"ok\":{},\"rev\":{}}}", text(&e.value), e.revision.unwrap_or(0)),
            Err(e) => err(e),
        },
        "delete" => match storage::delete(&ns, &key) {
            Ok(()) => ok("null".into()),
            Err(e) => err(e),
        },
        "list" => match storage::list_entries(&ns, q(url, "cursor").as_deref()) {
            Ok(entries) => {
                let keys: Vec<String> = entries.iter().map(|e| json_str(&e.key)).collect();
                ok(format!("[{}]", keys.join(",")))
            }
            Err(e) => err(e),
        },
        _ => err("unknown storage op"),
    }
}

fn fetch(url: &str, body: &[u8]) -> String {
    let target = String::from_utf8_lossy(body).into_owned();
    let method = q(url, "method").unwrap_or_else(|| "GET".into());
    let mut headers = vec![HttpHeader { name: "x-from-guest".into(), value: "1".into() }];
    if let Some(h) = q(url, "header") {
        if let Some((n, v)) = h.split_once(':') {
            headers.push(HttpHeader { name: n.into(), value: v.into() });
        }
    }
    let payload = q(url, "payload").map(String::into_bytes);
    let request = alga::extension::types::HttpRequest { method, url: target, headers, body: payload };
    match http::fetch(&request) {
        Ok(r) => {
            let hs: Vec<String> =
                r.headers.iter().map(|h| format!("[{},{}]", json_str(&h.name), json_str(&h.value))).collect();
            let body = r.body.unwrap_or_default();
            format!(
                "{{\"status\":{},\"headers\":[{}],\"body\":{},\"body_len\":{}}}",
                r.status,
                hs.join(","),
                text(&body[..body.len().min(4096)]),
                body.len()
            )
        }
        Err(e) => err(e),
    }
}

fn wasi_tcp(url: &str) -> String {
    use wasi::sockets::instance_network::instance_network;
    use wasi::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    use wasi::sockets::tcp_create_socket::create_tcp_socket;
    let port: u16 = q(url, "port").and_then(|p| p.parse().ok()).unwrap_or(9);
    let network = instance_network();
    let socket = match create_tcp_socket(IpAddressFamily::Ipv4) {
        Ok(s) => s,
        Err(e) => return err(format!("create: {e:?}")),
    };
    let addr = IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address: (127, 0, 0, 1) });
    if let Err(e) = socket.start_connect(&network, addr) {
        return err(format!("connect: {e:?}"));
    }
    socket.subscribe().block();
    match socket.finish_connect() {
        Ok(_) => ok("\"connected\"".into()),
        Err(e) => err(format!("connect: {e:?}")),
    }
}

fn wasi_fs() -> String {
    let reads = [
        std::fs::read("/etc/passwd").map(|_| ()).map_err(|e| e.to_string()),
        std::fs::read_dir("/").map(|_| ()).map_err(|e| e.to_string()),
        std::fs::read_dir(".").map(|_| ()).map_err(|e| e.to_string()),
        std::fs::write("x", b"y").map_err(|e| e.to_string()),
    ];
    let all: Vec<String> = reads.iter().map(|r| match r {
        Ok(()) => json_str("ok"),
        Err(e) => json_str(&format!("error: {e}")),
    }).collect();
    format!("[{}]", all.join(","))
}

fn host_forwarded(path: &str, url: &str, body: &[u8]) -> String {
    match path {
        "/ui-proxy" => {
            let route = q(url, "route").unwrap_or_default();
            let payload = (!body.is_empty()).then(|| body.to_vec());
            match ui_proxy::call_route(&route, payload.as_deref()) {
                Ok(bytes) => ok(text(&bytes)),
                Err(e) => err(e),
            }
        }
        "/clients/list" => {
            let input = ClientsListInput {
                search: q(url, "search"),
                include_inactive: None,
                page: q(url, "page").and_then(|p| p.parse().ok()),
                page_size: q(url, "page_size").and_then(|p| p.parse().ok()),
            };
            match clients::list_clients(&input) {
                Ok(r) => ok(debug(&r)),
                Err(e) => err(e),
            }
        }
        "/clients/get" => match clients::get_client(&q(url, "id").unwrap_or_default()) {
            Ok(r) => ok(debug(&r)),
            Err(e) => err(e),
        },
        "/services/list" => {
            let input = ServicesListInput {
                search: None,
                item_kind: None,
                is_active: None,
                billing_method: None,
                page: None,
                page_size: None,
            };
            match services::list_services(&input) {
                Ok(r) => ok(debug(&r)),
                Err(e) => err(e),
            }
        }
        "/services/get" => match services::get_service(&q(url, "id").unwrap_or_default()) {
            Ok(r) => ok(debug(&r)),
            Err(e) => err(e),
        },
        "/scheduler/list" => match scheduler::list_schedules() {
            Ok(r) => ok(debug(&r)),
            Err(e) => err(e),
        },
        "/scheduler/create" => {
            let input = CreateScheduleInput {
                endpoint: q(url, "endpoint").unwrap_or_else(|| "/jobs".into()),
                cron: q(url, "cron").unwrap_or_else(|| "0 * * * *".into()),
                timezone: None,
                enabled: Some(true),
                name: Some("nightly".into()),
                payload: q(url, "payload"),
            };
            ok(debug(&scheduler::create_schedule(&input)))
        }
        "/invoice" => {
            let input = CreateManualInvoiceInput {
                client_id: q(url, "client").unwrap_or_else(|| "c1".into()),
                items: vec![ManualInvoiceItemInput {
                    service_id: "s1".into(),
                    quantity: 2.0,
                    description: "work".into(),
                    rate: 50.0,
                    is_discount: None,
                    discount_type: None,
                    applies_to_item_id: None,
                    applies_to_service_id: None,
                }],
                invoice_date: None,
                due_date: None,
                po_number: Some("PO-1".into()),
            };
            ok(debug(&invoicing::create_manual_invoice(&input)))
        }
        _ => err("unknown host-forwarded call"),
    }
}

impl Guest for Fixture {
    fn handler(request: ExecuteRequest) -> ExecuteResponse {
        let url = request.http.url.clone();
        let path = url.split('?').next().unwrap_or("").to_string();
        let body = request.http.body.clone().unwrap_or_default();
        let report = match path.as_str() {
            p if p.starts_with("/storage/") => storage_call(&p["/storage/".len()..], &url, &body),
            "/secrets/get" => match secrets::get(&q(&url, "key").unwrap_or_default()) {
                Ok(v) => ok(json_str(&v)),
                Err(e) => err(e),
            },
            "/secrets/keys" => ok(debug(&secrets::list_keys())),
            "/fetch" => fetch(&url, &body),
            "/context" => {
                let c = context::get_context();
                format!(
                    "{{\"tenant\":{},\"extension\":{},\"install\":{},\"request_id\":{}}}",
                    json_str(&c.tenant_id),
                    json_str(&c.extension_id),
                    debug(&c.install_id),
                    debug(&c.request_id)
                )
            }
            "/user" => match user_v2::get_user() {
                Ok(u) => ok(format!(
                    "{{\"user_id\":{},\"client_id\":{},\"tenant\":{}}}",
                    json_str(&u.user_id),
                    debug(&u.client_id),
                    json_str(&u.tenant_id)
                )),
                Err(e) => err(e),
            },
            "/config" => ok(debug(&config::get(&q(&url, "key").unwrap_or_default()))),
            "/log" => {
                let n: u32 = q(&url, "n").and_then(|n| n.parse().ok()).unwrap_or(1);
                for i in 0..n {
                    logging::log_info(&format!("line {i}"));
                }
                logging::log_warn("the last line");
                ok(format!("{n}"))
            }
            "/metrics" => {
                metrics::counter_add(&q(&url, "name").unwrap_or_else(|| "calls".into()), 1);
                ok("null".into())
            }
            "/headers" => {
                let mut r = respond(201, "text/plain", b"with headers".to_vec());
                for (n, v) in [
                    ("set-cookie", "session=stolen"),
                    ("x-ext-trace", "t1"),
                    ("access-control-allow-origin", "*"),
                    ("etag", "\"v1\""),
                    ("location", "/next"),
                    ("x-powered-by", "guest"),
                    ("connection", "close"),
                ] {
                    r.headers.push(HttpHeader { name: n.into(), value: v.into() });
                }
                return r;
            }
            "/redirect-away" => {
                let mut r = respond(302, "text/plain", Vec::new());
                r.headers.push(HttpHeader { name: "location".into(), value: "https://evil.example/".into() });
                return r;
            }
            p if p.starts_with("/__alga/events/") => {
                let topic = request.http.headers.iter().find(|h| h.name == "x-alga-event-topic").map(|h| h.value.clone());
                logging::log_info(&format!("event {} {}", topic.unwrap_or_default(), String::from_utf8_lossy(&body)));
                ok("null".into())
            }
            "/wasi/fs" => wasi_fs(),
            "/wasi/tcp" => wasi_tcp(&url),
            p if ["/ui-proxy", "/clients/", "/services/", "/scheduler/", "/invoice"]
                .iter()
                .any(|pre| p.starts_with(pre)) =>
            {
                host_forwarded(p, &url, &body)
            }
            _ => {
                let headers: Vec<String> = request
                    .http
                    .headers
                    .iter()
                    .map(|h| format!("[{},{}]", json_str(&h.name), json_str(&h.value)))
                    .collect();
                format!(
                    "{{\"method\":{},\"url\":{},\"headers\":[{}],\"body\":{}}}",
                    json_str(&request.http.method),
                    json_str(&url),
                    headers.join(","),
                    text(&body)
                )
            }
        };
        respond(200, "application/json", report.into_bytes())
    }
}

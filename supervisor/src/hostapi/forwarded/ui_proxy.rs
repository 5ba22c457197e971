//! The ui-proxy interface: the URL, method, headers and body of a guest's route call to the
//! host application's ui-proxy, and the mapping of its answer (passed through untouched on
//! success).

use alga_shared::bindings::ProxyError;

use super::wire::{Headers, QUERY, SEGMENT, UNRESERVED, is_success, percent_encode, usable_id};
use super::{ForwardContext, ForwardRequest, TransportFailure};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// An absolute http(s) base URL split into what ui-proxy builds on.
#[derive(Debug)]
struct BaseUrl {
    /// `scheme://authority`, scheme lower-cased.
    origin: String,
    /// The base path's segments, as configured (already URL text), trailing empty one dropped.
    segments: Vec<String>,
}

impl BaseUrl {
    /// `None` for anything but an absolute http(s) URL with a host, in plain visible ASCII. The
    /// base's own query and fragment are dropped: the route decides the query.
    fn parse(raw: &str) -> Option<BaseUrl> {
        let raw = raw.trim();
        if !raw.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return None;
        }
        let (scheme, rest) = raw.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at_checked(end)?;
        if authority.is_empty() {
            return None;
        }
        let path = tail.split(['?', '#']).next().unwrap_or_default();
        let mut segments: Vec<String> = match path.strip_prefix('/') {
            Some(p) => p.split('/').map(str::to_string).collect(),
            None => Vec::new(),
        };
        if segments.last().is_some_and(String::is_empty) {
            segments.pop();
        }
        Some(BaseUrl { origin: format!("{scheme}://{authority}"), segments })
    }
}

/// The ui-proxy URL: the base path, then — unless the route is a platform API (`/api/…` or
/// `api/…`) — the extension id, then the route's non-empty segments; the route's query (after
/// its first `?`) is copied.
fn ui_proxy_url(base: &BaseUrl, route: &str, extension_id: &str) -> Result<String, ProxyError> {
    let (path, query) = match route.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (route, None),
    };
    let platform_api = path.starts_with("/api/") || path.starts_with("api/");
    let mut segments = base.segments.clone();
    if !platform_api {
        segments.push(percent_encode(extension_id, UNRESERVED));
    }
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err(ProxyError::BadRequest);
        }
        segments.push(percent_encode(segment, SEGMENT));
    }
    let mut url = format!("{}/{}", base.origin, segments.join("/"));
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(&percent_encode(q, QUERY));
    }
    Ok(url)
}

/// Whether `url` would reach an internal API (`…/api/internal/…`, where the other forwarded
/// interfaces go with the runner's credential) however a lenient server reads its path:
/// percent-encoding decoded up to four times, any case, `\` as `/`, `;parameters` dropped, empty
/// and `.` segments skipped, `..` resolved. Anywhere in the path, not only below `base_url`'s:
/// the same application may answer under several prefixes.
fn reaches_internal_api(url: &str) -> bool {
    let Ok(target) = url::Url::parse(url) else { return true };
    lenient_segments(target.path()).windows(2).any(|pair| pair == ["api", "internal"])
}

/// A URL path's segments as the most lenient server would see them (see [`reaches_internal_api`]).
fn lenient_segments(path: &str) -> Vec<String> {
    let mut text = path.replace('\\', "/");
    for _ in 0..4 {
        let decoded = percent_encoding::percent_decode_str(&text).decode_utf8_lossy().replace('\\', "/");
        if decoded == text {
            break;
        }
        text = decoded;
    }
    let mut segments: Vec<String> = Vec::new();
    for raw in text.to_lowercase().split('/') {
        match raw.split(';').next().unwrap_or_default().trim() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s.to_string()),
        }
    }
    segments
}

pub(super) fn ui_proxy_request(
    route: &str,
    payload: Option<&[u8]>,
    ctx: &ForwardContext,
) -> Result<ForwardRequest, ProxyError> {
    let base = ctx.ui_proxy_base_url.and_then(BaseUrl::parse).ok_or(ProxyError::RouteNotFound)?;
    if ctx.tenant_id.is_empty() || !usable_id(ctx.extension_id) {
        return Err(ProxyError::Internal);
    }
    let route = route.trim();
    if route.is_empty() {
        return Err(ProxyError::BadRequest);
    }
    let url = ui_proxy_url(&base, route, ctx.extension_id)?;
    if reaches_internal_api(&url) {
        return Err(ProxyError::RouteNotFound);
    }
    let headers = ui_proxy_headers(ctx, payload.is_some());
    let method = if payload.is_some() { "POST" } else { "GET" };
    Ok(ForwardRequest { method, url, headers, body: payload.map(<[u8]>::to_vec) })
}

fn ui_proxy_headers(ctx: &ForwardContext, has_body: bool) -> Vec<(String, String)> {
    let mut h = Headers::default();
    h.push("x-request-id", ctx.request_id.filter(|r| !r.is_empty()).unwrap_or("ui-proxy-call"));
    h.push("x-alga-tenant", ctx.tenant_id);
    h.push("x-alga-extension", ctx.extension_id);
    h.push_opt("x-ext-install-id", ctx.install_id);
    h.push_opt("x-ext-version-id", ctx.version_id);
    h.push_opt("x-api-key", ctx.api_key);
    if let Some(u) = ctx.user {
        h.push("x-user-id", &u.user_id);
        h.push("x-user-email", &u.user_email);
    }
    if ctx.ui_proxy_sends_token {
        h.push("x-runner-auth", ctx.token);
    }
    if has_body {
        h.push("content-type", "application/json");
    }
    h.0
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

fn proxy_status_error(status: u16) -> ProxyError {
    match status {
        401 | 403 | 429 => ProxyError::Denied,
        404 => ProxyError::RouteNotFound,
        400..=499 => ProxyError::BadRequest,
        _ => ProxyError::Internal,
    }
}

/// A 2xx answer's body goes to the guest as it is; ui-proxy does not interpret it.
pub(super) fn proxy_reply(answer: Result<(u16, Vec<u8>), TransportFailure>) -> Result<Vec<u8>, ProxyError> {
    match answer {
        Err(_) => Err(ProxyError::Internal),
        Ok((status, body)) if is_success(status) => Ok(body),
        Ok((status, _)) => Err(proxy_status_error(status)),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use alga_shared::protocol::HostReply;

    use super::super::tests::{ctx, header, ok, proxy_call, transport, user};
    use super::super::{reply, request};
    use super::*;

    fn proxy_url(route: &str) -> Result<String, ProxyError> {
        ui_proxy_request(route, None, &ctx()).map(|r| r.url)
    }

    #[test]
    fn ui_proxy_url_rules() {
        let base = "http://127.0.0.1:3000/api/ui-proxy";
        assert_eq!(proxy_url("/items/1").unwrap(), format!("{base}/com.example.ext/items/1"));
        assert_eq!(proxy_url("items//1/").unwrap(), format!("{base}/com.example.ext/items/1"));
        assert_eq!(proxy_url("/api/v1/tickets").unwrap(), format!("{base}/api/v1/tickets"));
        assert_eq!(proxy_url("api/v1/tickets").unwrap(), format!("{base}/api/v1/tickets"));
        assert_eq!(proxy_url("/apix/y").unwrap(), format!("{base}/com.example.ext/apix/y"));
        assert_eq!(proxy_url("/api").unwrap(), format!("{base}/com.example.ext/api"));
        assert_eq!(proxy_url("  /a?x=1&y=%20z  ").unwrap(), format!("{base}/com.example.ext/a?x=1&y=%20z"));
        assert_eq!(proxy_url("/a?").unwrap(), format!("{base}/com.example.ext/a"));
        assert_eq!(proxy_url("/a?b?c#d").unwrap(), format!("{base}/com.example.ext/a?b?c%23d"));
        assert_eq!(proxy_url("?q=1").unwrap(), format!("{base}/com.example.ext?q=1"));
        // Segments are encoded, `%` included, so nothing decodes into a separator or a dot segment.
        assert_eq!(
            proxy_url("/a b/%2e%2e/x%2Fy/\\..").unwrap(),
            format!("{base}/com.example.ext/a%20b/%252e%252e/x%252Fy/%5C..")
        );
        for bad in ["/a/../b", "..", "/api/./x", "./a", "/a/.?x=1"] {
            assert_eq!(proxy_url(bad), Err(ProxyError::BadRequest), "{bad}");
        }
        for empty in ["", "   ", "\t\n"] {
            assert_eq!(proxy_url(empty), Err(ProxyError::BadRequest));
        }
        // Through the public entry point the refusal is the guest's reply.
        assert_eq!(request(&proxy_call("/..", None), &ctx()), Err(HostReply::Proxy(Err(ProxyError::BadRequest))));
    }

    #[test]
    fn ui_proxy_base_url_variants() {
        let url = |base: &'static str| {
            let c = ForwardContext { ui_proxy_base_url: Some(base), ..ctx() };
            ui_proxy_request("/x", None, &c).map(|r| r.url)
        };
        assert_eq!(url("http://h:1").unwrap(), "http://h:1/com.example.ext/x");
        assert_eq!(url("HTTPS://h/").unwrap(), "https://h/com.example.ext/x");
        assert_eq!(url("http://h/p//?base=q#f").unwrap(), "http://h/p//com.example.ext/x");
        for bad in ["", "   ", "h:1/x", "ftp://h/", "http://", "http:///x", "http://h x/", "http://hé/"] {
            assert_eq!(url(bad), Err(ProxyError::RouteNotFound), "{bad}");
        }
        // An unusable base wins over an empty route, as in Alga; no base at all is the same.
        for base in [Some(""), None] {
            let c = ForwardContext { ui_proxy_base_url: base, ..ctx() };
            assert_eq!(request(&proxy_call("", None), &c), Err(HostReply::Proxy(Err(ProxyError::RouteNotFound))));
            assert_eq!(request(&proxy_call("/x", None), &c), Err(HostReply::Proxy(Err(ProxyError::RouteNotFound))));
        }
    }

    #[test]
    fn ui_proxy_without_tenant_or_extension_is_internal() {
        for c in [
            ForwardContext { tenant_id: "", ..ctx() },
            ForwardContext { extension_id: "", ..ctx() },
            ForwardContext { extension_id: "..", ..ctx() },
        ] {
            assert_eq!(request(&proxy_call("/x", None), &c), Err(HostReply::Proxy(Err(ProxyError::Internal))));
        }
    }

    #[test]
    fn ui_proxy_method_body_and_headers() {
        let u = user();
        let c = ForwardContext { user: Some(&u), ..ctx() };
        let r = request(&proxy_call("/x", Some(b"{\"a\":1}")), &c).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        let expected = [
            ("x-request-id", "req-1"),
            ("x-alga-tenant", "t1"),
            ("x-alga-extension", "com.example.ext"),
            ("x-ext-install-id", "inst-1"),
            ("x-ext-version-id", "ver-1"),
            ("x-api-key", "key-9"),
            ("x-user-id", "u1"),
            ("x-user-email", "u1@example.com"),
            ("content-type", "application/json"),
        ];
        let got: Vec<(&str, &str)> = r.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(got, expected);

        // An empty payload is still a POST.
        let r = request(&proxy_call("/x", Some(b"")), &ctx()).unwrap();
        assert_eq!((r.method, r.body.as_deref()), ("POST", Some(&b""[..])));
        assert_eq!(header(&r, "content-type"), Some("application/json"));

        let c = ForwardContext { request_id: None, install_id: None, version_id: None, api_key: None, ..ctx() };
        let r = request(&proxy_call("/x", None), &c).unwrap();
        assert_eq!((r.method, r.body.as_deref()), ("GET", None));
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-request-id", "x-alga-tenant", "x-alga-extension"]);
        assert_eq!(header(&r, "x-request-id"), Some("ui-proxy-call"));

        // The host-API credential only when the operator asks for it.
        let c = ForwardContext { ui_proxy_sends_token: true, ..ctx() };
        assert_eq!(header(&request(&proxy_call("/x", None), &c).unwrap(), "x-runner-auth"), Some("tok-123"));
    }

    #[test]
    fn ui_proxy_never_reaches_the_internal_api() {
        // The ui-proxy base is the host application's root, as when an operator points both at it.
        for base in ["http://127.0.0.1:3000/", "http://localhost:3000"] {
            let c = ForwardContext { ui_proxy_base_url: Some(base), ..ctx() };
            let url = |route: &str| ui_proxy_request(route, None, &c).map(|r| r.url);
            for route in [
                "api/internal/ext-invoicing/install/inst-1",
                "/api/internal/ext-invoicing/install/inst-1",
                "api//internal/ext-scheduler/install/x",
                "/api///internal//ext-clients/install/x",
                "api/INTERNAL/ext-services/install/x",
                "api/%69nternal/ext-invoicing/install/x",
                "api/%2569nternal/ext-invoicing/install/x",
                "api/internal;x=1/ext-invoicing/install/x",
                "api/internal%2Fext-invoicing/install/x",
                "api/internal",
            ] {
                assert_eq!(url(route), Err(ProxyError::RouteNotFound), "{base} {route}");
            }
            for dot in ["api/./internal/x", "api/internal/../internal/x"] {
                assert_eq!(url(dot), Err(ProxyError::BadRequest), "{dot}");
            }
            // Other platform APIs and extension routes still go through.
            assert!(url("/api/v1/tickets").is_ok());
            assert!(url("/internal/x").is_ok(), "under the extension id");
            // Not a platform route, so under the extension id, but still an api/internal pair.
            assert_eq!(url("API/internal/x"), Err(ProxyError::RouteNotFound));
        }
        // Under any base path: with base_url `http://h/psa/`, a ui-proxy base of the host's root
        // still cannot reach `/api/internal/` (the app may answer there too), nor anything deeper.
        for ui_base in ["http://h/psa", "http://h/"] {
            let c = ForwardContext { base_url: "http://h/psa/", ui_proxy_base_url: Some(ui_base), ..ctx() };
            let url = |route: &str| ui_proxy_request(route, None, &c).map(|r| r.url);
            assert_eq!(url("api/internal/x"), Err(ProxyError::RouteNotFound), "{ui_base}");
            assert_eq!(url("api/v1/x/api/internal/y"), Err(ProxyError::RouteNotFound), "{ui_base}");
            assert!(url("api/v1/internal").is_ok(), "{ui_base}");
        }
        assert_eq!(lenient_segments("/a/%252e%252e/b;v=1//C"), ["b", "c"], "decoded twice, then resolved");
    }

    #[test]
    fn ui_proxy_status_mapping() {
        let call = proxy_call("/x", None);
        let table = [
            (401, ProxyError::Denied),
            (403, ProxyError::Denied),
            (429, ProxyError::Denied),
            (404, ProxyError::RouteNotFound),
            (400, ProxyError::BadRequest),
            (405, ProxyError::BadRequest),
            (422, ProxyError::BadRequest),
            (500, ProxyError::Internal),
            (504, ProxyError::Internal),
            (301, ProxyError::Internal),
        ];
        for (status, want) in table {
            assert_eq!(reply(&call, ok(status, "x")), HostReply::Proxy(Err(want)), "{status}");
        }
        assert_eq!(reply(&call, transport()), HostReply::Proxy(Err(ProxyError::Internal)));
        // Success passes the bytes through untouched, JSON or not.
        assert_eq!(reply(&call, Ok((200, vec![0, 159, 146, 150]))), HostReply::Proxy(Ok(vec![0, 159, 146, 150])));
        assert_eq!(reply(&call, ok(204, "")), HostReply::Proxy(Ok(vec![])));
    }
}

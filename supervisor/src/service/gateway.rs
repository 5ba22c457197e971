//! `ANY /api/ext/{extension}/{path...}` — gateway mode (02-http-api.md): the runner plays the
//! host's extension gateway. Resolve the tenant's enabled install, match the request against the
//! version's endpoints, pass allowlisted headers in, run, and pass the guest's allowlisted
//! headers out. Errors are problem+json with the codes of the envelope table.

use std::collections::BTreeMap;
use std::sync::Arc;

use alga_shared::bindings::HttpHeader;
use alga_shared::limits::LimitRequest;
use alga_shared::manifest::Endpoint;

use super::Service;
use super::execute::{self, Answer, ExecuteCommand, INBOUND_HEADERS, Trigger};
use crate::hostapi::UserInfo;
use crate::secrets::SecretMap;
use crate::service::problem::Problem;

/// One gateway request, as the HTTP layer read it.
#[derive(Debug)]
pub struct GatewayRequest {
    pub request_id: String,
    pub tenant: String,
    pub extension: String,
    pub method: String,
    /// `/` plus the path after the extension.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request's own `Host`, for same-origin `location` headers.
    pub host: Option<String>,
}

/// What the HTTP layer answers.
#[derive(Debug)]
pub enum GatewayAnswer {
    /// `OPTIONS`: 204 with the methods the path takes.
    Options {
        allow: String,
    },
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

/// Response headers of the guest that may reach the caller (besides `x-ext-*`).
const OUTBOUND_HEADERS: &[&str] = &["content-type", "content-language", "cache-control", "etag", "last-modified"];

/// Whether `path` (`/a/b`) matches the endpoint pattern (`/a/:id`): segment-wise, `:param`
/// matches one non-empty segment, a trailing `/` does not matter.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let segs = |s: &str| -> Vec<String> {
        s.trim_matches('/').split('/').filter(|x| !x.is_empty()).map(str::to_string).collect()
    };
    let (p, a) = (segs(pattern), segs(path));
    p.len() == a.len() && p.iter().zip(&a).all(|(p, a)| p.starts_with(':') || p == a)
}

/// The endpoint for `method` and `path` (HEAD matches GET), and every method the path takes.
pub fn match_endpoint<'a>(endpoints: &'a [Endpoint], method: &str, path: &str) -> (Option<&'a Endpoint>, Vec<String>) {
    let wanted = if method == "HEAD" { "GET" } else { method };
    let on_path: Vec<&Endpoint> = endpoints.iter().filter(|e| path_matches(&e.path, path)).collect();
    let found = on_path.iter().find(|e| e.method.eq_ignore_ascii_case(wanted)).copied();
    let mut methods: Vec<String> = on_path.iter().map(|e| e.method.to_ascii_uppercase()).collect();
    if methods.iter().any(|m| m == "GET") {
        methods.push("HEAD".into());
    }
    if !methods.is_empty() {
        methods.push("OPTIONS".into());
    }
    methods.sort();
    methods.dedup();
    (found, methods)
}

/// The user the host named in the gateway's user headers.
fn user_of(headers: &[(String, String)]) -> Option<UserInfo> {
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let user_id = get("x-alga-user-id")?;
    Some(UserInfo {
        user_id,
        user_email: get("x-alga-user-email").unwrap_or_default(),
        user_name: get("x-alga-user-name").unwrap_or_default(),
        user_type: get("x-alga-user-type").unwrap_or_default(),
        client_name: String::new(),
        client_id: get("x-alga-client-id"),
        additional_fields: Vec::new(),
    })
}

/// A `location` the guest set: one that resolves, by the WHATWG URL rules a browser follows, to
/// this very origin (`host`, the request's `Host`). Control characters and backslashes are
/// refused outright: browsers drop the first and read the second as `/`, which is how
/// `/\evil.example/` or `/<TAB>/evil.example/` would leave the origin.
fn location_allowed(value: &str, host: Option<&str>) -> bool {
    if value.is_empty() || value.chars().any(|c| c.is_control() || c == '\\') {
        return false;
    }
    // Without a `Host`, only values that stay on whatever origin this is: a stand-in origin.
    let origin = host.unwrap_or("origin.invalid");
    // The page may be http or https (behind a proxy this service cannot tell), and a value with
    // a scheme resolves differently against each (`http:evil.example` is a path on an http page
    // and another host on an https one): it must stay on this origin against both.
    ["http", "https"].iter().all(|scheme| {
        let Ok(base) = url::Url::parse(&format!("{scheme}://{origin}/")) else { return false };
        let Ok(target) = base.join(value) else { return false };
        matches!(target.scheme(), "http" | "https")
            && target.host_str().is_some_and(|h| base.host_str().is_some_and(|b| h.eq_ignore_ascii_case(b)))
            && target.port() == base.port()
            && target.username().is_empty()
            && target.password().is_none()
    })
}

/// The guest's headers the caller may see.
pub fn outbound_headers(guest: &BTreeMap<String, String>, host: Option<&str>) -> Vec<(String, String)> {
    guest
        .iter()
        .filter(|(name, value)| {
            OUTBOUND_HEADERS.contains(&name.as_str())
                || (name.starts_with("x-ext-"))
                || (name.as_str() == "location" && location_allowed(value, host))
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// The problem+json of an envelope error (the codes of the envelope table).
fn problem_of(env: &Answer) -> Problem {
    let error = env.error.as_deref().unwrap_or("execute_failed");
    let (code, detail) = error.split_once(": ").unwrap_or((error, ""));
    let (code, title): (&'static str, &str) = match code {
        "not_installed" => ("not_installed", "the extension is not installed for this tenant"),
        "capability_denied" => ("capability_denied", "a capability was not granted"),
        "rate_limited" => ("rate_limited", "too many requests"),
        "quota_exceeded" => ("quota_exceeded", "quota exceeded"),
        "overloaded" => ("overloaded", "no sandbox became free in time"),
        "bundle_verification_failed" => ("bundle_verification_failed", "the extension's bundle failed verification"),
        "timeout" => ("timeout", "the extension did not answer in time"),
        "memory_limit_exceeded" => ("memory_limit_exceeded", "the extension ran out of memory"),
        "fuel_exhausted" => ("fuel_exhausted", "the extension ran out of fuel"),
        "sandbox_violation" => ("sandbox_violation", "the extension's sandbox was stopped"),
        "invalid_guest_response" => ("invalid_guest_response", "the extension answered something invalid"),
        _ => ("execute_failed", "the extension failed"),
    };
    let mut p = Problem::new(env.status, code, title);
    if !detail.is_empty() {
        p = p.detail(detail);
    }
    p.retry_after = env.headers.get("retry-after").and_then(|v| v.parse().ok());
    p
}

pub async fn handle(svc: &Arc<Service>, req: GatewayRequest) -> Result<GatewayAnswer, Problem> {
    super::installs::check_tenant(&req.tenant)?;
    let Some(target) = execute::resolve_enabled(svc, &req.tenant, &req.extension).await? else {
        return Err(Problem::not_found(
            "not_installed",
            format!("`{}` is not installed (or not enabled) for tenant {}", req.extension, req.tenant),
        ));
    };
    let (endpoint, methods) = match_endpoint(&target.version.endpoints, &req.method, &req.path);
    if req.method == "OPTIONS" && !methods.is_empty() {
        return Ok(GatewayAnswer::Options { allow: methods.join(", ") });
    }
    let Some(endpoint) = endpoint else {
        let detail = if methods.is_empty() {
            format!("{} has no endpoint {}", target.ext.name, req.path)
        } else {
            format!("{} {} is not an endpoint; this path takes {}", req.method, req.path, methods.join(", "))
        };
        return Err(Problem::not_found("endpoint_not_found", detail));
    };
    let endpoint_label = format!("{} {}", endpoint.method.to_ascii_uppercase(), endpoint.path);

    let mut headers: Vec<HttpHeader> = req
        .headers
        .iter()
        .filter(|(k, _)| INBOUND_HEADERS.contains(&k.as_str()))
        .map(|(name, value)| HttpHeader { name: name.clone(), value: value.clone() })
        .collect();
    headers.push(HttpHeader { name: "x-alga-tenant".into(), value: req.tenant.clone() });
    headers.push(HttpHeader { name: "x-alga-extension".into(), value: target.ext.id.clone() });
    let idempotency_key = req.headers.iter().find(|(k, _)| k == "x-idempotency-key").map(|(_, v)| v.clone());
    let url = match &req.query {
        Some(q) if !q.is_empty() => format!("{}?{q}", req.path),
        _ => req.path.clone(),
    };
    let cmd = ExecuteCommand {
        request_id: req.request_id.clone(),
        tenant: req.tenant.clone(),
        extension: target.ext.id.clone(),
        install_id: Some(target.install.install_id.clone()),
        version_id: Some(target.install.version_id.clone()),
        content_hash: target.install.content_hash.clone(),
        method: req.method.clone(),
        url,
        path: req.path.clone(),
        headers,
        body: (!req.body.is_empty() || !matches!(req.method.as_str(), "GET" | "HEAD")).then(|| req.body.clone()),
        config: BTreeMap::new(),
        limits: LimitRequest { timeout_ms: Some(svc.config.gateway.timeout_ms), ..LimitRequest::default() },
        providers: None,
        user: user_of(&req.headers),
        secrets: SecretMap::default(),
        vault_envelope: None,
        egress_allowlist: None,
        idempotency_key,
    };
    let answer = execute::run(svc, &target, cmd, Trigger::Gateway { endpoint: endpoint_label }, None).await?;
    if answer.error.is_some() {
        return Err(problem_of(&answer));
    }
    let body = if req.method == "HEAD" { Vec::new() } else { answer.body.unwrap_or_default() };
    Ok(GatewayAnswer::Response {
        status: answer.status,
        headers: outbound_headers(&answer.headers, req.host.as_deref()),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(method: &str, path: &str) -> Endpoint {
        Endpoint { method: method.into(), path: path.into(), handler: "h".into() }
    }

    #[test]
    fn endpoints_match_segment_wise() {
        let eps = [ep("GET", "/items/:id"), ep("POST", "/items"), ep("GET", "/")];
        assert_eq!(match_endpoint(&eps, "GET", "/items/42").0.map(|e| e.path.as_str()), Some("/items/:id"));
        assert_eq!(match_endpoint(&eps, "HEAD", "/items/42").0.map(|e| e.method.as_str()), Some("GET"));
        assert!(match_endpoint(&eps, "GET", "/items/").0.is_none(), "`:id` needs a non-empty segment");
        assert!(match_endpoint(&eps, "GET", "/items/1/2").0.is_none());
        assert!(match_endpoint(&eps, "DELETE", "/items").0.is_none());
        assert_eq!(match_endpoint(&eps, "DELETE", "/items").1, ["OPTIONS", "POST"]);
        assert_eq!(match_endpoint(&eps, "OPTIONS", "/items/7").1, ["GET", "HEAD", "OPTIONS"]);
        assert!(match_endpoint(&eps, "GET", "/").0.is_some());
        assert!(match_endpoint(&eps, "GET", "/other").1.is_empty());
    }

    #[test]
    fn only_allowlisted_guest_headers_leave() {
        let guest: BTreeMap<String, String> = [
            ("content-type", "text/plain"),
            ("set-cookie", "a=b"),
            ("access-control-allow-origin", "*"),
            ("x-ext-trace", "1"),
            ("connection", "close"),
            ("etag", "\"1\""),
            ("x-powered-by", "guest"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let names: Vec<String> = outbound_headers(&guest, Some("runner.example")).into_iter().map(|h| h.0).collect();
        assert_eq!(names, ["content-type", "etag", "x-ext-trace"]);
        for (loc, ok) in [
            ("/next", true),
            ("next", true),
            ("//evil.example/", false),
            ("https://evil.example/", false),
            ("https://runner.example/x", true),
            ("javascript:alert(1)", false),
            ("/\\evil.example/", false),
            ("\\\\evil.example/", false),
            ("/\t/evil.example/", false),
            ("\t//evil.example/", false),
            ("/\n/evil.example/", false),
            ("https:evil.example", false),
            ("http:evil.example", false),
            ("http:/evil.example", false),
            ("HTTP:evil.example", false),
            ("http:next", false),
            ("http://runner.example:8080/", false),
            ("https://user@runner.example/", false),
            ("///evil.example/", false),
            ("/%2F/evil.example/", true),
            ("../up?x=1#f", true),
            ("", false),
        ] {
            assert_eq!(location_allowed(loc, Some("runner.example")), ok, "{loc}");
        }
    }
}

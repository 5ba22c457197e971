//! The transport of the host-forwarded interfaces: the request [`super`] describes is
//! sent to the host application configured by the operator (`host_api.base_url`, and
//! `host_api.ui_proxy_base_url` for ui-proxy), bounded by the
//! execution's deadline and a response size, and the answer mapped back. The destination is the
//! operator's, not the tenant's: the egress allowlists do not apply to it.

use std::net::SocketAddr;
use std::sync::Arc;

use alga_shared::bindings::HttpHeader;
use alga_shared::protocol::{HostCall, HostReply};
use tokio::time::Instant;
use tokio_rustls::rustls;

use super::{self as forward, ForwardContext, TransportFailure};
use crate::hostapi::HostContext;

/// Where the host application is.
#[derive(Clone)]
pub struct HostApi {
    pub base_url: String,
    /// Where ui-proxy routes go (`None`: ui-proxy answers `route-not-found`).
    pub ui_proxy_base_url: Option<String>,
    pub token: String,
    /// Whether ui-proxy requests carry `token` too (operator's choice; default no).
    pub ui_proxy_sends_token: bool,
    pub max_response_bytes: usize,
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for HostApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostApi").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

pub async fn call(ctx: &HostContext, call: HostCall, deadline: Instant) -> HostReply {
    let Some(api) = &ctx.env.host_api else { return forward::not_configured(&call) };
    let fctx = ForwardContext {
        base_url: &api.base_url,
        ui_proxy_base_url: api.ui_proxy_base_url.as_deref(),
        token: &api.token,
        ui_proxy_sends_token: api.ui_proxy_sends_token,
        request_id: ctx.request_id.as_deref(),
        tenant_id: &ctx.tenant_id,
        extension_id: &ctx.extension_id,
        install_id: ctx.install_id.as_deref(),
        version_id: ctx.version_id.as_deref(),
        user: ctx.user.as_ref(),
        api_key: ctx.secrets.0.get("api_key").map(String::as_str),
    };
    let request = match forward::request(&call, &fctx) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let answer = match tokio::time::timeout_at(deadline, send(api, request)).await {
        Ok(a) => a,
        Err(_) => Err(TransportFailure("the execution's time ran out".into())),
    };
    if let Err(e) = &answer {
        tracing::warn!(request_id = ?ctx.request_id, tenant = %ctx.tenant_id, api = call.api(), error = %e.0, "host API call failed");
    }
    forward::reply(&call, answer)
}

async fn send(api: &HostApi, request: forward::ForwardRequest) -> Result<(u16, Vec<u8>), TransportFailure> {
    let body = request.body.unwrap_or_default();
    operator_request(&api.tls, request.method, &request.url, request.headers, body, api.max_response_bytes)
        .await
        .map_err(TransportFailure)
}

/// Sends one request to a destination the operator configured (the host application, Vault):
/// resolved as it is, no egress list applies. Answers the status and at most `max_response`
/// body bytes.
pub async fn operator_request(
    tls: &Arc<rustls::ClientConfig>,
    method: &str,
    url: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    max_response: usize,
) -> Result<(u16, Vec<u8>), String> {
    let url = url::Url::parse(url).map_err(|e| format!("URL `{url}`: {e}"))?;
    let host = url.host_str().ok_or("no host")?.to_string();
    let port = url.port_or_known_default().ok_or("no port")?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    let method = hyper::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let headers: Vec<HttpHeader> = headers.into_iter().map(|(name, value)| HttpHeader { name, value }).collect();
    let out = crate::hostapi::fetch::Outgoing { url: &url, method, headers: &headers, body };
    let sent = crate::hostapi::fetch::send(tls, &addrs, out, max_response).await;
    sent.result.map(|(status, _, body)| (status, body)).map_err(|f| f.1)
}

//! `http.fetch`, performed by the supervisor (04-host-api.md): parse and check the URL, resolve
//! the host, vet every address against the egress policy (SSRF included), connect to a vetted
//! address only (so a DNS answer cannot change between the check and the connection), send one
//! HTTP/1.1 request and read a bounded answer. Redirects are returned, never followed; hop-by-hop
//! headers are dropped both ways; everything is bounded by the execution's remaining deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use alga_shared::bindings::{HttpError, HttpHeader, HttpRequest, HttpResponse};
use alga_shared::protocol::HostReply;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls;

use super::HostContext;
use alga_shared::egress::{Destination, Policy, Refusal, Rule};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus the ones the
/// runner sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The operator's side of `http.fetch`, shared by every execution.
#[derive(Clone)]
pub struct FetchSettings {
    /// `EXT_EGRESS_ALLOWLIST`, parsed.
    pub operator: Vec<Rule>,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for FetchSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchSettings")
            .field("operator", &self.operator)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl FetchSettings {
    pub fn new(operator: Vec<Rule>, max_request_bytes: usize, max_response_bytes: usize) -> Self {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The ring provider supports the safe default protocol versions; this cannot fail.
        let mut tls = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
        {
            Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
            Err(_) => rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        FetchSettings { operator, max_request_bytes, max_response_bytes, tls: Arc::new(tls) }
    }

    /// Nothing allowed (the default of a runner without an egress configuration).
    pub fn deny_all() -> Self {
        FetchSettings::new(Vec::new(), 1 << 20, 10 << 20)
    }
}

/// Why a fetch failed, for the log; the guest sees only the `http-error` case.
pub struct Failed(pub HttpError, pub String);

fn fail<T>(kind: HttpError, why: impl Into<String>) -> Result<T, Failed> {
    Err(Failed(kind, why.into()))
}

pub async fn fetch(ctx: &HostContext, request: HttpRequest, deadline: Instant) -> HostReply {
    let mut policy = Policy::new(&ctx.env.fetch.operator);
    for (name, rules) in &ctx.egress.lists {
        policy = policy.and(name, Some(rules));
    }
    let result = tokio::time::timeout_at(deadline, perform(ctx, &policy, request)).await;
    HostReply::Http(match result {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(Failed(kind, why))) => {
            tracing::info!(request_id = ?ctx.request_id, tenant = %ctx.tenant_id, extension = %ctx.extension_id, error = ?kind, %why, "http.fetch refused or failed");
            Err(kind)
        }
        Err(_) => {
            tracing::info!(request_id = ?ctx.request_id, tenant = %ctx.tenant_id, "http.fetch ran out of the execution's time");
            Err(HttpError::Transport)
        }
    })
}

async fn perform(ctx: &HostContext, policy: &Policy<'_>, request: HttpRequest) -> Result<HttpResponse, Failed> {
    let settings = &ctx.env.fetch;
    let url =
        // The URL itself is not logged: a guest may carry a credential in it.
        url::Url::parse(&request.url).or_else(|e| fail(HttpError::InvalidUrl, format!("unparsable URL: {e}")))?;
    let default_port = match url.scheme() {
        "http" => 80,
        "https" => 443,
        other => return fail(HttpError::InvalidUrl, format!("scheme `{other}` (only http and https)")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return fail(HttpError::InvalidUrl, "credentials in the URL");
    }
    let Some(host) = url.host() else { return fail(HttpError::InvalidUrl, "no host") };
    let method = hyper::Method::from_bytes(request.method.trim().to_ascii_uppercase().as_bytes())
        .or_else(|_| fail(HttpError::InvalidUrl, format!("method `{}`", request.method)))?;
    let port = url.port().unwrap_or(default_port);
    let body = request.body.unwrap_or_default();
    if body.len() > settings.max_request_bytes {
        return fail(
            HttpError::Transport,
            format!("request body of {} bytes is over {}", body.len(), settings.max_request_bytes),
        );
    }

    let name = match &host {
        url::Host::Domain(d) => Some(*d),
        url::Host::Ipv4(_) | url::Host::Ipv6(_) => None,
    };
    let dest = Destination::new(name, port, default_port);
    if let Some(list) = policy.refusing_list(&dest) {
        let why = match name {
            Some(_) => format!(
                "{host}:{port} is not in the {list} egress allowlist (a host name needs a name entry in every \
                 list; IP and CIDR entries only vet the addresses a listed name resolves to)"
            ),
            None => format!("{host}:{port} is not in the {list} egress allowlist"),
        };
        return fail(HttpError::NotAllowed, why);
    }
    let addrs: Vec<IpAddr> = match &host {
        url::Host::Ipv4(a) => vec![IpAddr::V4(*a)],
        url::Host::Ipv6(a) => vec![IpAddr::V6(*a)],
        url::Host::Domain(d) => match tokio::net::lookup_host((*d, port)).await {
            Ok(it) => it.map(|sa| sa.ip()).collect(),
            Err(e) => return fail(HttpError::Transport, format!("resolving {d}: {e}")),
        },
    };
    let mut vetted = Vec::new();
    let mut refusal = (Refusal::NotListed, None);
    for addr in addrs {
        match policy.check(&dest, addr) {
            Ok(()) => vetted.push(SocketAddr::new(addr, port)),
            Err(r) => refusal = (r, policy.refusing_list_for(&dest, addr)),
        }
    }
    if vetted.is_empty() {
        let why = match refusal {
            (Refusal::NotListed, list) => {
                format!("{host}:{port} is not in the {} egress allowlist", list.unwrap_or("operator"))
            }
            (Refusal::InternalAddress, _) => {
                format!("{host}:{port} resolves to an internal address no allowlist entry names")
            }
        };
        return fail(HttpError::NotAllowed, why);
    }

    let outgoing = Outgoing { url: &url, method, headers: &request.headers, body };
    let outcome = send(&settings.tls, &vetted, outgoing, settings.max_response_bytes).await;
    let sent = outcome.sent;
    ctx.egress_bytes.fetch_add(sent + outcome.received, Ordering::Relaxed);
    outcome.result.map(|(status, headers, body)| HttpResponse { status, headers, body: Some(body) })
}

/// What one exchange did: its result and the bytes that crossed (counted even on failure).
pub struct Sent {
    pub result: Result<(u16, Vec<HttpHeader>, Vec<u8>), Failed>,
    pub sent: u64,
    pub received: u64,
}

/// One request to send.
pub struct Outgoing<'a> {
    pub url: &'a url::Url,
    pub method: hyper::Method,
    pub headers: &'a [HttpHeader],
    pub body: Vec<u8>,
}

/// Sends one request to one of `addrs` (already vetted by the caller) and reads the answer, at
/// most `max_response` body bytes. Hop-by-hop headers are dropped both ways; the `Host` header is
/// the URL's authority.
pub async fn send(
    tls: &Arc<rustls::ClientConfig>,
    addrs: &[SocketAddr],
    out: Outgoing<'_>,
    max_response: usize,
) -> Sent {
    let mut counts = (0u64, 0u64);
    let result = send_counted(tls, addrs, out, max_response, &mut counts).await;
    Sent { result, sent: counts.0, received: counts.1 }
}

async fn send_counted(
    tls_config: &Arc<rustls::ClientConfig>,
    addrs: &[SocketAddr],
    Outgoing { url, method, headers, body }: Outgoing<'_>,
    max_response: usize,
    counts: &mut (u64, u64),
) -> Result<(u16, Vec<HttpHeader>, Vec<u8>), Failed> {
    let Some(host) = url.host() else { return fail(HttpError::InvalidUrl, "no host") };
    let stream = connect(addrs).await?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let mut builder = hyper::Request::builder().method(method).uri(target).header(hyper::header::HOST, &authority);
    counts.0 += (body.len() + authority.len()) as u64;
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&name.as_str()) || name == "host" || name == "content-length" {
            continue;
        }
        if let (Ok(n), Ok(v)) =
            (hyper::header::HeaderName::from_bytes(name.as_bytes()), hyper::header::HeaderValue::from_str(&h.value))
        {
            counts.0 += (name.len() + h.value.len()) as u64;
            builder = builder.header(n, v);
        }
    }
    let req = builder.body(Full::new(Bytes::from(body))).or_else(|e| fail(HttpError::InvalidUrl, e.to_string()))?;
    if url.scheme() == "https" {
        let name = match &host {
            url::Host::Domain(d) => rustls::pki_types::ServerName::try_from(d.to_string())
                .or_else(|e| fail(HttpError::InvalidUrl, e.to_string()))?,
            url::Host::Ipv4(a) => rustls::pki_types::ServerName::IpAddress(IpAddr::V4(*a).into()),
            url::Host::Ipv6(a) => rustls::pki_types::ServerName::IpAddress(IpAddr::V6(*a).into()),
        };
        let connector = tokio_rustls::TlsConnector::from(tls_config.clone());
        let stream =
            connector.connect(name, stream).await.or_else(|e| fail(HttpError::Transport, format!("TLS: {e}")))?;
        exchange(stream, req, max_response, &mut counts.1).await
    } else {
        exchange(stream, req, max_response, &mut counts.1).await
    }
}

async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, Failed> {
    let mut last = String::new();
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connecting to {a}: {e}"),
        }
    }
    fail(HttpError::Transport, last)
}

/// Sends the request on a fresh connection and reads the answer, at most `max` body bytes.
async fn exchange<S>(
    stream: S,
    req: hyper::Request<Full<Bytes>>,
    max: usize,
    received: &mut u64,
) -> Result<(u16, Vec<HttpHeader>, Vec<u8>), Failed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let transport = |e: hyper::Error| Failed(HttpError::Transport, e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(transport)?;
    // The connection's driver; aborted when this call ends, whatever the outcome.
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender.send_request(req).await.map_err(transport)?;
    let (parts, mut body) = response.into_parts();
    if let Some(len) =
        parts.headers.get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > max as u64
    {
        return fail(HttpError::Transport, format!("response body of {len} bytes is over {max}"));
    }
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(transport)?;
        if let Some(chunk) = frame.data_ref() {
            if data.len() + chunk.len() > max {
                return fail(HttpError::Transport, format!("response body over {max} bytes"));
            }
            data.extend_from_slice(chunk);
            *received += chunk.len() as u64;
        }
    }
    drop(driver);
    let mut headers = Vec::new();
    for (name, value) in &parts.headers {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        headers.push(HttpHeader {
            name: name.as_str().to_string(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        });
    }
    Ok((parts.status.as_u16(), headers, data))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

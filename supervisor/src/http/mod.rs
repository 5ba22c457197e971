//! The HTTP layer (actix-web): each route authenticates, parses and validates into a typed
//! command, hands it to the service, and maps the answer. Errors are problem+json
//! ([`problem::Problem`]); every response carries `x-request-id`.

pub mod problem;
mod routes;
pub mod sdk;

use std::sync::Arc;

use actix_web::dev::{Service as _, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpMessage, HttpRequest, HttpServer, web};
use futures_util::StreamExt;
use subtle::ConstantTimeEq;

use crate::service::{Service, valid_request_id};
use problem::Problem;

/// The request id of a request: the caller's `x-request-id` when valid, else a new one.
#[derive(Debug, Clone)]
pub struct RequestId {
    pub id: String,
    /// True when the caller sent it.
    pub from_caller: bool,
}

pub fn request_id(req: &HttpRequest) -> RequestId {
    req.extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(|| RequestId { id: new_request_id(), from_caller: false })
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Checks `Authorization: Bearer <token>` against `tokens` when any is configured (two during a
/// rotation); the service token may also come as `x-runner-service-token` (what an Alga host
/// sends its runner).
pub fn authorize(req: &HttpRequest, tokens: &[String], which: &str) -> Result<(), Problem> {
    if tokens.is_empty() {
        return Ok(());
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let given = bearer.or_else(|| header("x-runner-service-token").filter(|_| which == "service")).map(str::trim);
    match given {
        // Constant time in the tokens' content (`subtle`), every token compared: only lengths
        // can leak.
        Some(g)
            if tokens.iter().fold(subtle::Choice::from(0), |ok, t| ok | g.as_bytes().ct_eq(t.as_bytes())).into() =>
        {
            Ok(())
        }
        Some(_) => Err(Problem::unauthorized(format!("the bearer token is not the {which} token"))),
        None if which == "service" => Err(Problem::unauthorized(
            "this route needs `Authorization: Bearer <service token>` or `x-runner-service-token: <service token>`",
        )),
        None => Err(Problem::unauthorized(format!("this route needs `Authorization: Bearer <{which} token>`"))),
    }
}

/// Authorizes a host application's request (execute, gateway, events): from a trusted source
/// (`auth.trusted_sources`, Alga's gateway sends no credential) or with the service token.
pub fn authorize_service(req: &HttpRequest, svc: &Service) -> Result<(), Problem> {
    if let Some(peer) = req.peer_addr()
        && svc.trusted_sources.iter().any(|n| n.contains(peer.ip()))
    {
        return Ok(());
    }
    authorize(req, &svc.service_tokens, "service")
}

/// How long a request body may take to arrive (`server.body_timeout_ms`), as app data.
#[derive(Debug, Clone, Copy)]
struct BodyTimeout(std::time::Duration);

/// Reads a request body up to `limit` bytes (413 past it), streaming, without trusting
/// `Content-Length`, within the body deadline (408 past it: a slow sender holds no worker).
pub async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: u64) -> Result<Vec<u8>, Problem> {
    if let Some(len) =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(Problem::too_large(limit));
    }
    let timeout = req.app_data::<BodyTimeout>().map_or(std::time::Duration::from_secs(30), |t| t.0);
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| Problem::bad_request("invalid_body", format!("reading the body: {e}")))?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(Problem::too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
        Err(Problem::new(408, "request_timeout", "the request body arrived too slowly").detail(format!(
            "the whole body must arrive within {} ms (server.body_timeout_ms); send it faster or raise the setting",
            timeout.as_millis()
        )))
    })
}

/// Runs the HTTP server until it is told to stop (SIGTERM, SIGINT); in-flight requests get
/// `grace` to finish.
pub async fn serve(
    service: Arc<Service>,
    listener: std::net::TcpListener,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    let metrics = service.core.spawner.metrics.clone();
    let body_timeout = BodyTimeout(std::time::Duration::from_millis(service.config.server.body_timeout_ms));
    let data = web::Data::from(service);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
    HttpServer::new(move || {
        let metrics = metrics.clone();
        App::new()
            .app_data(data.clone())
            .app_data(body_timeout)
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                Problem::bad_request("invalid_query", format!("the query string is not valid: {e}")).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|e, _| {
                Problem::bad_request("invalid_path", format!("the path is not valid: {e}")).into()
            }))
            .wrap_fn(move |req, srv| {
                let metrics = metrics.clone();
                let rid = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| valid_request_id(v))
                    .map(|v| RequestId { id: v.to_string(), from_caller: true })
                    .unwrap_or_else(|| RequestId { id: new_request_id(), from_caller: false });
                req.extensions_mut().insert(rid.clone());
                let started = std::time::Instant::now();
                let span =
                    tracing::info_span!("request", request_id = %rid.id, method = %req.method(), path = %req.path());
                let fut = tracing::Instrument::instrument(srv.call(req), span);
                async move {
                    let mut res: ServiceResponse = fut.await?;
                    // The route pattern, not the path: a fixed set of label values.
                    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
                    metrics.http_request(&route, res.status().as_u16(), started.elapsed());
                    let name = HeaderName::from_static("x-request-id");
                    if !res.headers().contains_key(&name)
                        && let Ok(v) = HeaderValue::from_str(&rid.id)
                    {
                        res.headers_mut().insert(name, v);
                    }
                    Ok(res)
                }
            })
            .configure(routes::configure)
            .default_service(web::to(|req: HttpRequest| async move {
                Err::<actix_web::HttpResponse, Problem>(Problem::not_found(
                    "route_not_found",
                    format!("no route {} {}", req.method(), req.path()),
                ))
            }))
    })
    .workers(workers)
    .shutdown_timeout(grace.as_secs().max(1))
    .listen(listener)?
    .run()
    .await
}

/// Streams `count` bytes of `file` from `start`, 64 KiB at a time (never the whole file in
/// memory).
pub async fn file_stream(
    file: std::path::PathBuf,
    start: u64,
    count: u64,
) -> Result<impl futures_util::Stream<Item = Result<actix_web::web::Bytes, std::io::Error>> + use<>, Problem> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f =
        tokio::fs::File::open(&file).await.map_err(|e| Problem::internal(format!("{}: {e}", file.display())))?;
    f.seek(std::io::SeekFrom::Start(start)).await.map_err(|e| Problem::internal(e.to_string()))?;
    Ok(futures_util::stream::unfold((f, count), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; left.min(64 * 1024) as usize];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(actix_web::web::Bytes::from(buf)), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    }))
}

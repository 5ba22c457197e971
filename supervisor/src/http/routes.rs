//! The routes (02-http-api.md). Thin: authenticate, parse, call the service, map.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::problem::Problem;
use super::{authorize, authorize_service, read_body, request_id};
use crate::service::gateway::{GatewayAnswer, GatewayRequest};
use crate::service::{Service, execute, gateway, installs, publish, reads};

type Svc = web::Data<Service>;
type Query = web::Query<HashMap<String, String>>;

/// Body limit of small JSON requests (installs), in bytes.
const SMALL_BODY: u64 = 256 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", "GET").route(web::get().to(healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(readyz)))
        .service(resource("/metrics", "GET").route(web::get().to(metrics)))
        .service(resource("/openapi.json", "GET").route(web::get().to(openapi)))
        .service(resource("/v1/execute", "POST").route(web::post().to(execute_route)))
        .service(resource("/v1/bundles", "POST").route(web::post().to(publish_route)))
        .service(resource("/v1/bundles/prefetch", "POST").route(web::post().to(prefetch_route)))
        .service(resource("/", "GET").route(web::get().to(app_domain)))
        .service(resource("/v1/extensions", "GET").route(web::get().to(list_extensions)))
        .service(resource("/v1/extensions/{id}", "GET").route(web::get().to(get_extension)))
        .service(resource("/v1/extensions/{id}/versions", "GET").route(web::get().to(list_versions)))
        .service(resource("/v1/extensions/{id}/versions/{version}", "DELETE").route(web::delete().to(yank_version)))
        .service(resource("/v1/tenants/{tenant}/installs", "GET").route(web::get().to(list_installs)))
        .service(
            resource("/v1/tenants/{tenant}/installs/{extension}", "GET, PUT, DELETE")
                .route(web::put().to(put_install))
                .route(web::get().to(get_install))
                .route(web::delete().to(delete_install)),
        )
        .service(
            resource("/v1/tenants/{tenant}/installs/{extension}/secrets", "GET, PUT")
                .route(web::put().to(put_secrets))
                .route(web::get().to(get_secrets)),
        )
        .service(resource("/v1/tenants/{tenant}/executions", "GET").route(web::get().to(list_executions)))
        .service(resource("/v1/tenants/{tenant}/executions/chain", "GET").route(web::get().to(execution_chain)))
        .service(resource("/v1/tenants/{tenant}/quotas", "GET").route(web::get().to(tenant_quotas)))
        .service(resource("/v1/admin/reload", "POST").route(web::post().to(reload)))
        .service(resource("/v1/events", "POST").route(web::post().to(events_route)))
        .service(
            resource("/ext-ui/{extension}/{content_hash}/{path:.*}", "GET, HEAD")
                .route(web::get().to(ext_ui))
                .route(web::head().to(ext_ui)),
        )
        .service(resource("/sdk/v1/{file}", "GET, HEAD").route(web::get().to(sdk_file)).route(web::head().to(sdk_file)))
        .service(
            resource("/ext-ui/{extension}/{content_hash}", "GET, HEAD")
                .route(web::get().to(ext_ui))
                .route(web::head().to(ext_ui)),
        )
        .service(
            web::resource(["/api/ext/{extension}", "/api/ext/{extension}/{path:.*}"])
                .route(web::route().to(gateway_route)),
        );
}

/// A resource that answers 405 (with `Allow`) to methods it has no route for.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        let problem = Problem::new(405, "method_not_allowed", "method not allowed").detail(format!(
            "{} {} is not a route; this path takes {allow}",
            req.method(),
            req.path()
        ));
        let mut response = actix_web::ResponseError::error_response(&problem);
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, actix_web::http::header::HeaderValue::from_static(allow));
        response
    }))
}

fn admin(req: &HttpRequest, svc: &Service) -> Result<(), Problem> {
    authorize(req, &svc.admin_tokens, "admin")
}

/// Refuses a route of the local registry in host-registry mode, saying where that state lives.
fn local_registry(svc: &Service, what: &str) -> Result<(), Problem> {
    if svc.host_registry.is_none() {
        return Ok(());
    }
    Err(Problem::not_found(
        "not_in_host_mode",
        format!(
            "{what}: this runner serves the host application's registry (registry.mode = \"host\"): bundles, \
             installs, grants and secrets live in the host (Alga's extension registry and its object store), not \
             here"
        ),
    ))
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The OpenAPI 3.1 description of every route (kept in step with this file by a test).
async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("cache-control", "no-cache"))
        .body(include_str!("openapi.json"))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Ready when storage answers, the trust bundle is loaded, the sandbox self-test passed and the
/// warm pool has filled (it has a ready sandbox, or has already handed one out: a pool drained by
/// traffic refills in the background and executions meanwhile get fresh sandboxes, so that is no
/// reason to leave a load balancer's rotation); the body lists every hardening layer's level.
async fn readyz(svc: Svc) -> HttpResponse {
    // Readable, and the last flush reached the disk (a full disk fails writes, not reads).
    let storage = svc.registry.extensions(None, 1).await.is_ok() && svc.commit.healthy();
    let self_test = svc.self_test_ok.load(Ordering::Relaxed);
    let pool = svc.core.pool.stats();
    let preloaded = svc.core.preloaded.stats();
    let pool_ok = pool.target == 0 || pool.ready > 0 || pool.hits > 0;
    let shutting_down = svc.shutting_down.load(Ordering::Relaxed);
    let layers = svc.self_test.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or(json!(null));
    // `sandbox.require`: layers that must be full (known once the self-test ran).
    let required = &svc.config.sandbox.require;
    let not_full: Vec<&String> = required.iter().filter(|l| layers[l.as_str()]["level"] != "full").collect();
    let ready =
        storage && self_test && pool_ok && !shutting_down && svc.core.spawner.fork.is_alive() && not_full.is_empty();
    let body = json!({
        "ready": ready,
        "checks": {
            "storage": storage,
            "trust": { "loaded": true, "keys": svc.trust().bundle.keys().len() },
            "self_test": self_test,
            "fork_server": svc.core.spawner.fork.is_alive(),
            "pool": { "ready": pool.ready, "target": pool.target, "hits": pool.hits, "misses": pool.misses },
            "preloaded": {
                "ready": preloaded.ready, "loading": preloaded.loading, "hits": preloaded.hits,
                "misses": preloaded.misses, "failures": preloaded.failures,
            },
            "shutting_down": shutting_down,
            "required_layers": { "required": required, "not_full": not_full },
        },
        "layers": layers,
        "cgroup": svc.core.spawner.cgroups.version().map_or("none".to_string(), |v| v.to_string()),
    });
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

/// Prometheus metrics (no token, like `/healthz`).
async fn metrics(svc: Svc) -> HttpResponse {
    svc.core.spawner.metrics.runner.pool_ready.set(svc.core.pool.stats().ready as i64);
    svc.core.spawner.metrics.runner.preloaded_ready.set(svc.core.preloaded.stats().ready as i64);
    let (in_flight, queued) = svc.quotas.load();
    svc.core.spawner.metrics.runner.executions_in_flight.set(in_flight);
    svc.core.spawner.metrics.runner.executions_queued.set(queued);
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(svc.host_env.metrics.render())
}

async fn execute_route(req: HttpRequest, payload: web::Payload, svc: Svc) -> Result<HttpResponse, Problem> {
    authorize_service(&req, &svc)?;
    let content_type = header(&req, "content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(Problem::new(415, "unsupported_media_type", "the body must be JSON")
            .detail(format!("content-type `{content_type}`; send application/json")));
    }
    let body = read_body(&req, payload, svc.config.execute.max_request_mb << 20).await?;
    let envelope = execute::parse_envelope(&body)?;
    let rid = request_id(&req);
    let cmd = envelope.into_command(
        rid.from_caller.then_some(rid.id),
        (header(&req, "x-alga-tenant"), header(&req, "x-alga-extension")),
        header(&req, "x-idempotency-key"),
    )?;
    let request_id = cmd.request_id.clone();
    let response = execute::execute(&svc.into_inner(), cmd).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("x-request-id", request_id))
        .insert_header(("cache-control", "no-store"))
        .json(response))
}

async fn publish_route(req: HttpRequest, payload: web::Payload, svc: Svc) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "publishing")?;
    let signature = match header(&req, "x-alga-signature") {
        Some(b64) => {
            let bytes = STANDARD.decode(b64.trim()).map_err(|e| {
                Problem::new(401, "signature_invalid", "the bundle's signature is not valid")
                    .detail(format!("x-alga-signature is not base64 of a .minisig file: {e}"))
            })?;
            String::from_utf8(bytes).map_err(|_| {
                Problem::new(401, "signature_invalid", "the bundle's signature is not valid")
                    .detail("x-alga-signature does not decode to a .minisig text file")
            })?
        }
        None => {
            return Err(Problem::new(401, "signature_invalid", "the bundle is not signed")
                .detail("send the base64 of the bundle's .minisig file in the x-alga-signature header"));
        }
    };
    let body = read_body(&req, payload, svc.config.bundles.max_compressed_mb << 20).await?;
    let (created, published) = publish::publish(&svc.into_inner(), body, signature).await?;
    let mut response = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(response.json(published))
}

fn limit(q: &Query) -> Result<Option<usize>, Problem> {
    q.get("limit")
        .map(|l| {
            l.parse::<usize>()
                .map_err(|_| Problem::bad_request("invalid_query", format!("limit `{l}` is not a number")))
        })
        .transpose()
}

/// `POST /v1/bundles/prefetch`: the host (service token) or an operator (admin token) readies a
/// bundle before its first execution.
async fn prefetch_route(req: HttpRequest, payload: web::Payload, svc: Svc) -> Result<HttpResponse, Problem> {
    if authorize_service(&req, &svc).is_err() {
        admin(&req, &svc).map_err(|_| {
            Problem::unauthorized("this route needs the service token (as for /v1/execute) or the admin token")
        })?;
    }
    let body = read_body(&req, payload, SMALL_BODY).await?;
    let request = crate::service::json::json_body(&body, "invalid_request", "the request is not valid")?;
    let done = crate::service::prefetch::prefetch(&svc.into_inner(), request).await?;
    Ok(HttpResponse::Ok().json(done))
}

/// `GET /` on a per-install app domain (host mode): the host's registry says which install the
/// `Host` serves, and the answer redirects to its UI.
async fn app_domain(req: HttpRequest, svc: Svc) -> Result<HttpResponse, Problem> {
    let no_route = || Problem::not_found("route_not_found", "no route GET /");
    let Some(host) = &svc.host_registry else { return Err(no_route()) };
    let name = header(&req, "host").unwrap_or_default();
    let Some(install) = host.install_by_host(&name).await else {
        return Err(Problem::not_found("not_found", format!("the host's registry knows no install at `{name}`")));
    };
    let location = install.ui_location();
    Ok(HttpResponse::TemporaryRedirect()
        .insert_header(("location", location))
        .insert_header(("cache-control", "no-store"))
        .finish())
}

async fn list_extensions(req: HttpRequest, svc: Svc, q: Query) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "the extension registry")?;
    Ok(HttpResponse::Ok().json(reads::extensions(&svc, q.get("cursor").map(String::as_str), limit(&q)?).await?))
}

async fn get_extension(req: HttpRequest, svc: Svc, id: web::Path<String>) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "the extension registry")?;
    Ok(HttpResponse::Ok().json(reads::extension(&svc, &id).await?))
}

async fn list_versions(req: HttpRequest, svc: Svc, id: web::Path<String>, q: Query) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "the extension registry")?;
    Ok(HttpResponse::Ok().json(reads::versions(&svc, &id, q.get("cursor").map(String::as_str), limit(&q)?).await?))
}

async fn yank_version(req: HttpRequest, svc: Svc, path: web::Path<(String, String)>) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "the extension registry")?;
    let (id, version) = path.into_inner();
    Ok(HttpResponse::Ok().json(reads::yank(&svc, &id, &version).await?))
}

async fn list_installs(req: HttpRequest, svc: Svc, tenant: web::Path<String>) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "installs")?;
    Ok(HttpResponse::Ok().json(json!({ "items": installs::list(&svc, &tenant).await? })))
}

async fn put_install(
    req: HttpRequest,
    payload: web::Payload,
    svc: Svc,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "installs")?;
    let (tenant, extension) = path.into_inner();
    let body = read_body(&req, payload, SMALL_BODY).await?;
    let request: installs::InstallRequest =
        crate::service::json::json_body(&body, "invalid_install", "the install request is not valid")?;
    let (created, view) = installs::put(&svc.into_inner(), &tenant, &extension, request).await?;
    let mut response = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(response.json(view))
}

async fn get_install(req: HttpRequest, svc: Svc, path: web::Path<(String, String)>) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "installs")?;
    let (tenant, extension) = path.into_inner();
    Ok(HttpResponse::Ok().json(installs::get(&svc, &tenant, &extension).await?))
}

async fn delete_install(
    req: HttpRequest,
    svc: Svc,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "installs")?;
    let (tenant, extension) = path.into_inner();
    installs::delete(&svc, &tenant, &extension).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn put_secrets(
    req: HttpRequest,
    payload: web::Payload,
    svc: Svc,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "install secrets")?;
    let (tenant, extension) = path.into_inner();
    let body = read_body(&req, payload, SMALL_BODY * 64).await?;
    let map: std::collections::BTreeMap<String, String> = serde_json::from_slice(&body).map_err(|_| {
        Problem::new(422, "invalid_secrets", "the secrets are not valid")
            .detail("the body must be a JSON object whose values are all strings")
    })?;
    let keys = installs::put_secrets(&svc, &tenant, &extension, crate::secrets::SecretMap(map)).await?;
    Ok(HttpResponse::Ok().json(json!({ "keys": keys })))
}

async fn get_secrets(req: HttpRequest, svc: Svc, path: web::Path<(String, String)>) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    local_registry(&svc, "install secrets")?;
    let (tenant, extension) = path.into_inner();
    Ok(HttpResponse::Ok().json(json!({ "keys": installs::secret_keys(&svc, &tenant, &extension).await? })))
}

async fn list_executions(
    req: HttpRequest,
    svc: Svc,
    tenant: web::Path<String>,
    q: Query,
) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    let page = reads::executions(
        &svc,
        &tenant,
        q.get("extension").map(String::as_str),
        q.get("status").map(String::as_str),
        q.get("cursor").cloned(),
        limit(&q)?,
    )
    .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// The head of the tenant's execution hash chain (`alga-runner executions --verify` checks the
/// records against it).
async fn execution_chain(req: HttpRequest, svc: Svc, tenant: web::Path<String>) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    installs::check_tenant(&tenant)?;
    Ok(HttpResponse::Ok().json(svc.registry.chain_head(&tenant).await?))
}

async fn tenant_quotas(req: HttpRequest, svc: Svc, tenant: web::Path<String>) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    Ok(HttpResponse::Ok().json(crate::service::usage::view(&svc, &tenant).await?))
}

/// `ANY /api/ext/{extension}/{path...}`: the gateway. CORS headers only for configured origins.
async fn gateway_route(req: HttpRequest, payload: web::Payload, svc: Svc) -> HttpResponse {
    let answer = gateway_answer(&req, payload, &svc).await;
    let mut response = match answer {
        Ok(GatewayAnswer::Options { allow }) => {
            let mut r = HttpResponse::NoContent();
            r.insert_header(("allow", allow.clone()));
            if cors_origin(&req, &svc).is_some() {
                r.insert_header(("access-control-allow-methods", allow));
                r.insert_header(("access-control-allow-headers", "content-type, x-idempotency-key, x-request-id"));
                r.insert_header(("access-control-max-age", "600"));
            }
            r.finish()
        }
        Ok(GatewayAnswer::Response { status, headers, body }) => {
            let code =
                actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
            let mut r = HttpResponse::build(code);
            for (name, value) in headers {
                r.append_header((name, value));
            }
            r.body(body)
        }
        Err(problem) => actix_web::ResponseError::error_response(&problem),
    };
    if let Some(origin) = cors_origin(&req, &svc)
        && let Ok(v) = actix_web::http::header::HeaderValue::from_str(&origin)
    {
        let h = response.headers_mut();
        h.insert(actix_web::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(actix_web::http::header::VARY, actix_web::http::header::HeaderValue::from_static("origin"));
    }
    response
}

/// The request's `Origin` when it is one of `gateway.cors_allowed_origins`.
fn cors_origin(req: &HttpRequest, svc: &Service) -> Option<String> {
    let origin = header(req, "origin")?;
    svc.config.gateway.cors_allowed_origins.iter().any(|o| o == &origin).then_some(origin)
}

async fn gateway_answer(req: &HttpRequest, payload: web::Payload, svc: &Svc) -> Result<GatewayAnswer, Problem> {
    authorize_service(req, svc)?;
    local_registry(svc, "the gateway's install lookup (Alga's gateway calls /v1/execute)")?;
    let tenant = header(req, "x-alga-tenant").ok_or_else(|| {
        Problem::bad_request("missing_tenant", "the gateway needs the tenant in the `x-alga-tenant` header")
    })?;
    let extension = req.match_info().get("extension").unwrap_or_default().to_string();
    // The raw path after `/api/ext/{extension}` (the route matched, so the prefix is there).
    let rest = req.uri().path().get("/api/ext/".len()..).unwrap_or("");
    let path = match rest.find('/') {
        Some(i) if i + 1 < rest.len() => rest[i..].to_string(),
        _ => "/".to_string(),
    };
    let body = read_body(req, payload, svc.config.gateway.max_body_mb << 20).await?;
    let headers = req
        .headers()
        .iter()
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str().to_ascii_lowercase(), v.to_string())))
        .collect();
    let request = GatewayRequest {
        request_id: request_id(req).id,
        tenant,
        extension,
        method: req.method().as_str().to_ascii_uppercase(),
        path,
        query: req.uri().query().map(str::to_string),
        headers,
        body,
        host: header(req, "host"),
    };
    gateway::handle(&svc.clone().into_inner(), request).await
}

async fn events_route(req: HttpRequest, payload: web::Payload, svc: Svc) -> Result<HttpResponse, Problem> {
    authorize_service(&req, &svc)?;
    local_registry(&svc, "event subscriptions")?;
    let body = read_body(&req, payload, svc.config.execute.max_request_mb << 20).await?;
    let event: crate::service::events::EventRequest =
        crate::service::json::json_body(&body, "invalid_event", "the event is not valid")?;
    let ids = crate::service::events::publish(&svc.into_inner(), event, request_id(&req).id).await?;
    Ok(HttpResponse::Accepted().json(json!({ "execution_ids": ids })))
}

/// `GET|HEAD /ext-ui/{extension}/{content_hash}/{path...}`: UI files for iframes, streamed.
async fn ext_ui(req: HttpRequest, svc: Svc, q: Query) -> Result<HttpResponse, Problem> {
    use crate::service::ui::{self, UiAnswer, UiRequest};
    // The raw path after the hash: the path rules decode it exactly once.
    // `/ext-ui/{extension}/{content_hash}/{path}`: the fifth piece of the split is the path.
    let path = req.uri().path().splitn(5, '/').nth(4).unwrap_or("").to_string();
    let request = UiRequest {
        extension: req.match_info().get("extension").unwrap_or_default().to_string(),
        content_hash: req.match_info().get("content_hash").unwrap_or_default().to_string(),
        path,
        tenant: q.get("tenant").cloned().or_else(|| header(&req, "x-tenant-id")),
        if_none_match: header(&req, "if-none-match"),
        range: header(&req, "range"),
    };
    let answer = ui::resolve(&svc.clone().into_inner(), &request).await?;
    const IMMUTABLE: &str = "public, max-age=31536000, immutable";
    let mut r = match &answer {
        UiAnswer::NotModified { .. } => HttpResponse::NotModified(),
        UiAnswer::RangeNotSatisfiable { .. } => HttpResponse::RangeNotSatisfiable(),
        UiAnswer::File { range: Some(_), .. } => HttpResponse::PartialContent(),
        UiAnswer::File { .. } => HttpResponse::Ok(),
    };
    r.insert_header(("x-content-type-options", "nosniff"));
    if !matches!(answer, UiAnswer::RangeNotSatisfiable { .. }) {
        // A UI in an iframe sandboxed without allow-same-origin has an opaque origin: its module
        // scripts load in CORS mode. These are public, content-addressed files.
        r.insert_header(("access-control-allow-origin", "*"));
    }
    match answer {
        UiAnswer::NotModified { etag } => {
            Ok(r.insert_header(("etag", etag)).insert_header(("cache-control", IMMUTABLE)).finish())
        }
        UiAnswer::RangeNotSatisfiable { len } => Ok(r
            .insert_header(("content-range", format!("bytes */{len}")))
            .insert_header(("cache-control", "no-store"))
            .finish()),
        UiAnswer::File { file, len, etag, mime, html, range } => {
            r.insert_header(("etag", etag))
                .insert_header(("cache-control", IMMUTABLE))
                .insert_header(("accept-ranges", "bytes"))
                .content_type(mime);
            if html {
                r.insert_header(("content-security-policy", ui::content_security_policy(&svc)));
            }
            let (start, count) = match range {
                Some((s, e)) => {
                    r.insert_header(("content-range", format!("bytes {s}-{e}/{len}")));
                    (s, e - s + 1)
                }
                None => (0, len),
            };
            let stream = crate::http::file_stream(file, start, count).await?;
            Ok(r.body(actix_web::body::SizedStream::new(count, stream)))
        }
    }
}

/// The iframe SDK: `/sdk/v1/iframe-bridge.js` (host pages) and `/sdk/v1/extension.js` (extension
/// UIs), plain ES modules, with the caching rules of `/ext-ui`.
async fn sdk_file(req: HttpRequest, file: web::Path<String>) -> Result<HttpResponse, Problem> {
    let Some((body, etag)) = crate::http::sdk::file(&file) else {
        return Err(Problem::not_found(
            "not_found",
            format!("no SDK file `{file}`; there are iframe-bridge.js and extension.js"),
        ));
    };
    let fresh =
        header(&req, "if-none-match").is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    r.insert_header(("etag", etag))
        .insert_header(("cache-control", "public, max-age=31536000, immutable"))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("access-control-allow-origin", "*"))
        .content_type("text/javascript; charset=utf-8");
    Ok(if fresh { r.finish() } else { r.body(body) })
}

async fn reload(req: HttpRequest, svc: Svc) -> Result<HttpResponse, Problem> {
    admin(&req, &svc)?;
    let keys = svc.reload_trust_everywhere().await.map_err(|e| {
        Problem::new(422, "invalid_trust_bundle", "the trust bundle cannot be loaded").detail(e.to_string())
    })?;
    Ok(HttpResponse::Ok().json(json!({ "keys": keys })))
}

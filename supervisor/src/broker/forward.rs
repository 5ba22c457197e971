//! The "host-forwarded" host APIs (ui-proxy, scheduler, invoicing, clients, services): how a
//! guest's host call becomes an HTTP request to the host application, and how the host
//! application's answer becomes the guest's reply.
//!
//! This module does no networking: [`request`] describes the request, the caller sends it (bounded
//! by the execution's deadline and a body size limit), and [`reply`] maps what came back. Keeping
//! the mapping pure makes every wire detail of `10-alga-wire.md` B testable without a server.
//!
//! Everything in the host application's answer is untrusted: it is parsed from
//! [`serde_json::Value`] by hand (the bindgen types' serde derive does not speak Alga's JSON), no
//! path here panics on any input, and a malformed answer becomes the interface's `internal`-like
//! value instead of a trap.

use std::fmt::{self, Write as _};

use alga_shared::bindings::{
    ClientReadError, ClientSummary, ClientsListInput, ClientsListResult, CreateManualInvoiceInput,
    CreateManualInvoiceResult, CreateScheduleInput, CreateScheduleResult, DeleteScheduleResult, DiscountType,
    EndpointInfo, ManualInvoiceItemInput, ProxyError, ScheduleInfo, SchedulerError, ServiceBillingMethod,
    ServiceItemKind, ServiceReadError, ServiceSummary, ServicesListInput, ServicesListResult, UpdateScheduleInput,
    UpdateScheduleResult,
};
use alga_shared::protocol::{HostCall, HostReply, invoice_failure};
use serde_json::{Map, Value, json};

use super::UserInfo;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// What the caller knows about the execution.
#[derive(Clone, Copy)]
pub struct ForwardContext<'a> {
    /// `host_api.base_url`, e.g. `http://127.0.0.1:3000` (may end with `/`).
    pub base_url: &'a str,
    /// The base for ui-proxy (the caller passes `host_api.base_url` when there is no separate one).
    pub ui_proxy_base_url: &'a str,
    /// The host API token, sent as `x-runner-auth`.
    pub token: &'a str,
    pub request_id: Option<&'a str>,
    pub tenant_id: &'a str,
    pub extension_id: &'a str,
    pub install_id: Option<&'a str>,
    pub version_id: Option<&'a str>,
    pub user: Option<&'a UserInfo>,
    /// The install's secret `api_key`, sent by ui-proxy as `x-api-key`.
    pub api_key: Option<&'a str>,
}

/// Debug without the token and the API key: a context may end up in a log line.
impl fmt::Debug for ForwardContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardContext")
            .field("base_url", &self.base_url)
            .field("ui_proxy_base_url", &self.ui_proxy_base_url)
            .field("token", &REDACTED)
            .field("request_id", &self.request_id)
            .field("tenant_id", &self.tenant_id)
            .field("extension_id", &self.extension_id)
            .field("install_id", &self.install_id)
            .field("version_id", &self.version_id)
            .field("user", &self.user.map(|u| &u.user_id))
            .field("api_key", &self.api_key.map(|_| REDACTED))
            .finish()
    }
}

/// One HTTP request for the caller to send to the host application.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    /// `GET` or `POST`.
    pub method: &'static str,
    pub url: String,
    /// Lower-case names. Values never contain control characters (see [`Headers::push`]).
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// Debug with the credential headers redacted and the body reduced to its length.
impl fmt::Debug for ForwardRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), if is_credential(name) { REDACTED } else { value.as_str() }))
            .collect();
        f.debug_struct("ForwardRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body_len", &self.body.as_ref().map(Vec::len))
            .finish()
    }
}

/// How the transport failed (network error, timeout, body too large). Its text is for the
/// supervisor's log only: the guest gets an `internal`-like value without it, since it could name
/// the host application's address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host API transport failed: {0}")]
pub struct TransportFailure(pub String);

/// True for the calls this module handles.
pub fn is_forwarded(call: &HostCall) -> bool {
    call_kind(call).is_some()
}

/// The request to send for `call`, or `Err(reply)` when the call is answered without one
/// (validation failure, missing install id, unusable ui-proxy base URL, or a call this module
/// does not handle, which gets its deny value).
///
/// The large `Err` is deliberate: it is the finished reply, built once per host call and handed
/// straight back to the guest, never carried up a chain of `?`.
#[expect(clippy::result_large_err, reason = "the error is the guest's reply, returned once per call")]
pub fn request(call: &HostCall, ctx: &ForwardContext) -> Result<ForwardRequest, HostReply> {
    match call_kind(call) {
        None => Err(call.deny_reply()),
        Some(Kind::UiProxy { route, payload }) => {
            ui_proxy_request(route, payload, ctx).map_err(|e| HostReply::Proxy(Err(e)))
        }
        Some(Kind::Api(api)) => {
            // The gate comes before validation, as in Alga: without an install there is
            // nothing the call could ever be allowed to do.
            let install_id = ctx.install_id.filter(|id| usable_id(id)).ok_or_else(|| missing_install(call))?;
            let body = api_body(call, ctx.user).map_err(|r| refused(call, r))?;
            Ok(api_request(ctx, api, install_id, &body))
        }
    }
}

/// Maps the host application's answer (status and body) or a transport failure to the guest's
/// reply, with the Alga status mappings of `10-alga-wire.md` B.
pub fn reply(call: &HostCall, answer: Result<(u16, Vec<u8>), TransportFailure>) -> HostReply {
    use HostCall::*;
    match call {
        UiProxyCallRoute { .. } => HostReply::Proxy(proxy_reply(answer)),
        SchedulerList => HostReply::Schedules(scheduler_answer(answer).and_then(|v| schedule_list(&v))),
        SchedulerGet { .. } => HostReply::Schedule(scheduler_answer(answer).and_then(|v| schedule_one(&v))),
        SchedulerCreate { .. } => HostReply::ScheduleCreated(create_result(scheduler_answer(answer))),
        SchedulerUpdate { .. } => HostReply::ScheduleUpdated(update_result(scheduler_answer(answer))),
        SchedulerDelete { .. } => HostReply::ScheduleDeleted(delete_result(scheduler_answer(answer))),
        SchedulerGetEndpoints => HostReply::Endpoints(scheduler_answer(answer).and_then(|v| endpoint_list(&v))),
        InvoicingCreateManualInvoice { .. } => HostReply::Invoice(invoice_result(json_answer(answer))),
        ClientsList { .. } => HostReply::Clients(
            read_answer(answer, client_error).and_then(|v| page_of(&v, client_summary).map_err(|_| client_internal())),
        ),
        ClientsGet { .. } => HostReply::Client(
            read_answer(answer, client_error).and_then(|v| item_of(&v, client_summary).map_err(|_| client_internal())),
        ),
        ServicesList { .. } => HostReply::Services(
            read_answer(answer, service_error)
                .and_then(|v| page_of(&v, service_summary).map_err(|_| service_internal())),
        ),
        ServicesGet { .. } => HostReply::Service(
            read_answer(answer, service_error)
                .and_then(|v| item_of(&v, service_summary).map_err(|_| service_internal())),
        ),
        other => other.deny_reply(),
    }
}

/// The reply when no host API is configured: the interface's deny value, except ui-proxy, which
/// answers `route-not-found` as Alga does without `UI_PROXY_BASE_URL`.
pub fn not_configured(call: &HostCall) -> HostReply {
    match call {
        HostCall::UiProxyCallRoute { .. } => HostReply::Proxy(Err(ProxyError::RouteNotFound)),
        other => other.deny_reply(),
    }
}

// ---------------------------------------------------------------------------------------------
// Which calls, which endpoint
// ---------------------------------------------------------------------------------------------

const REDACTED: &str = "<redacted>";

/// The host application's internal APIs, one per interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Scheduler,
    Invoicing,
    Clients,
    Services,
}

impl Api {
    /// The path segment after `/api/internal/`.
    fn path(self) -> &'static str {
        match self {
            Api::Scheduler => "ext-scheduler",
            Api::Invoicing => "ext-invoicing",
            Api::Clients => "ext-clients",
            Api::Services => "ext-services",
        }
    }
}

/// How a forwarded call travels: ui-proxy has its own URL scheme, the others share one.
enum Kind<'c> {
    UiProxy { route: &'c str, payload: Option<&'c [u8]> },
    Api(Api),
}

fn call_kind(call: &HostCall) -> Option<Kind<'_>> {
    use HostCall::*;
    Some(match call {
        UiProxyCallRoute { route, payload } => Kind::UiProxy { route, payload: payload.as_deref() },
        SchedulerList
        | SchedulerGet { .. }
        | SchedulerCreate { .. }
        | SchedulerUpdate { .. }
        | SchedulerDelete { .. }
        | SchedulerGetEndpoints => Kind::Api(Api::Scheduler),
        InvoicingCreateManualInvoice { .. } => Kind::Api(Api::Invoicing),
        ClientsList { .. } | ClientsGet { .. } => Kind::Api(Api::Clients),
        ServicesList { .. } | ServicesGet { .. } => Kind::Api(Api::Services),
        _ => return None,
    })
}

/// An identifier that can stand as a URL path segment: not blank, and not a dot segment (which a
/// URL parser would resolve, even percent-encoded, into another path).
fn usable_id(id: &str) -> bool {
    !id.trim().is_empty() && id != "." && id != ".."
}

/// What Alga's gates answer when the execution has no install id.
fn missing_install(call: &HostCall) -> HostReply {
    use HostCall::*;
    const SCHEDULER: &str = "Install ID missing";
    match call {
        SchedulerList => HostReply::Schedules(Err(SchedulerError::Denied)),
        SchedulerGet { .. } => HostReply::Schedule(Err(SchedulerError::Denied)),
        SchedulerGetEndpoints => HostReply::Endpoints(Err(SchedulerError::Denied)),
        SchedulerCreate { .. } => HostReply::ScheduleCreated(create_failure(SCHEDULER.into(), None)),
        SchedulerUpdate { .. } => HostReply::ScheduleUpdated(update_failure(SCHEDULER.into(), None)),
        SchedulerDelete { .. } => HostReply::ScheduleDeleted(delete_failure(SCHEDULER.into())),
        InvoicingCreateManualInvoice { .. } => {
            HostReply::Invoice(invoice_failure("Permission denied: install_id missing".into()))
        }
        other => other.deny_reply(),
    }
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

/// Header names whose values are credentials.
fn is_credential(name: &str) -> bool {
    name.eq_ignore_ascii_case("x-runner-auth") || name.eq_ignore_ascii_case("x-api-key")
}

/// A header list that refuses values an HTTP client would reject or that would split a header:
/// such a header is left out rather than failing the whole call (a missing credential simply
/// makes the host application answer 401).
#[derive(Default)]
struct Headers(Vec<(String, String)>);

impl Headers {
    fn push(&mut self, name: &str, value: &str) {
        if value.chars().all(|c| c == '\t' || !c.is_control()) {
            self.0.push((name.to_string(), value.to_string()));
        }
    }

    fn push_opt(&mut self, name: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.push(name, v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Percent-encoding
// ---------------------------------------------------------------------------------------------

/// Percent-encodes every byte `keep` refuses, so the result is plain ASCII.
fn percent_encode(s: &str, keep: fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// RFC 3986 unreserved characters: what an identifier we insert keeps verbatim.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` without `%`: a guest's route segment keeps these, and `%` is encoded so that
/// `%2F` or `%2e%2e` stay literal text instead of becoming a separator or a dot segment.
fn is_segment_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@')
}

/// What a query copied "raw" keeps: visible ASCII except the characters a URL parser would
/// encode in a query anyway (`#` above all, which would otherwise start a fragment).
fn is_query_char(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && !matches!(b, b'"' | b'#' | b'<' | b'>' | b'\'')
}

// ---------------------------------------------------------------------------------------------
// Internal APIs (scheduler, invoicing, clients, services): requests
// ---------------------------------------------------------------------------------------------

/// `POST {base}/api/internal/ext-<name>/install/{install_id}` with the JSON body.
fn api_request(ctx: &ForwardContext, api: Api, install_id: &str, body: &Value) -> ForwardRequest {
    let url = format!(
        "{}/api/internal/{}/install/{}",
        ctx.base_url.trim().trim_end_matches('/'),
        api.path(),
        percent_encode(install_id, is_unreserved)
    );
    let mut headers = Headers::default();
    headers.push("content-type", "application/json");
    headers.push("x-runner-auth", ctx.token);
    headers.push_opt("x-request-id", ctx.request_id);
    ForwardRequest { method: "POST", url, headers: headers.0, body: Some(body.to_string().into_bytes()) }
}

/// Why a guest's input is refused before any request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// A schedule payload that is not a JSON object or array.
    Payload,
    /// A page or page size out of range.
    Page,
    /// Not an internal-API call at all.
    NotForwarded,
}

/// The guest's reply for a refusal, shaped by the call.
fn refused(call: &HostCall, why: Refused) -> HostReply {
    use HostCall::*;
    match (why, call) {
        (Refused::Payload, SchedulerCreate { .. }) => {
            HostReply::ScheduleCreated(create_failure(PAYLOAD_ERROR.into(), Some(payload_field_errors())))
        }
        (Refused::Payload, SchedulerUpdate { .. }) => {
            HostReply::ScheduleUpdated(update_failure(PAYLOAD_ERROR.into(), Some(payload_field_errors())))
        }
        (Refused::Page, ClientsList { .. }) => HostReply::Clients(Err(ClientReadError::InvalidInput)),
        (Refused::Page, ServicesList { .. }) => HostReply::Services(Err(ServiceReadError::InvalidInput)),
        (_, other) => other.deny_reply(),
    }
}

/// The JSON body of an internal-API call, or why the guest's input is refused before any request.
fn api_body(call: &HostCall, user: Option<&UserInfo>) -> Result<Value, Refused> {
    use HostCall::*;
    match call {
        SchedulerList => Ok(Value::Object(operation("list"))),
        SchedulerGet { schedule_id } => Ok(with_schedule_id("get", schedule_id)),
        SchedulerCreate { input } => schedule_create_body(input),
        SchedulerUpdate { schedule_id, input } => schedule_update_body(schedule_id, input),
        SchedulerDelete { schedule_id } => Ok(with_schedule_id("delete", schedule_id)),
        SchedulerGetEndpoints => Ok(Value::Object(operation("getEndpoints"))),
        InvoicingCreateManualInvoice { input } => Ok(invoice_body(input)),
        ClientsList { input } => clients_list_body(input, user).ok_or(Refused::Page),
        ClientsGet { client_id } => Ok(read_body("get", json!({ "clientId": client_id }), user)),
        ServicesList { input } => services_list_body(input, user).ok_or(Refused::Page),
        ServicesGet { service_id } => Ok(read_body("get", json!({ "serviceId": service_id }), user)),
        _ => Err(Refused::NotForwarded),
    }
}

/// A body holding just `"operation"`.
fn operation(name: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("operation".into(), Value::from(name));
    body
}

/// Inserts `key` only when the value is present: Alga omits absent optionals.
fn put_opt<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        map.insert(key.into(), v.into());
    }
}

// --- scheduler ---

/// The text Alga answers when a schedule's payload is not a JSON object or array.
const PAYLOAD_ERROR: &str = "Payload must be valid JSON object or array";

fn with_schedule_id(op: &str, schedule_id: &str) -> Value {
    let mut body = operation(op);
    body.insert("scheduleId".into(), Value::from(schedule_id));
    Value::Object(body)
}

/// The guest passes the payload as a JSON string; the host application wants the JSON itself.
/// Anything but an object or an array is refused (so is the empty string: the WIT's "empty
/// clears" is not what Alga does).
fn schedule_payload(raw: &str) -> Option<Value> {
    serde_json::from_str::<Value>(raw).ok().filter(|v| v.is_object() || v.is_array())
}

/// The field errors Alga reports with [`PAYLOAD_ERROR`].
fn payload_field_errors() -> String {
    json!({ "payload": PAYLOAD_ERROR }).to_string()
}

fn schedule_create_body(input: &CreateScheduleInput) -> Result<Value, Refused> {
    let mut body = operation("create");
    body.insert("endpoint".into(), Value::from(input.endpoint.as_str()));
    body.insert("cron".into(), Value::from(input.cron.as_str()));
    put_opt(&mut body, "timezone", input.timezone.as_deref());
    put_opt(&mut body, "enabled", input.enabled);
    put_opt(&mut body, "name", input.name.as_deref());
    if let Some(raw) = &input.payload {
        let payload = schedule_payload(raw).ok_or(Refused::Payload)?;
        body.insert("payload".into(), payload);
    }
    Ok(Value::Object(body))
}

fn schedule_update_body(schedule_id: &str, input: &UpdateScheduleInput) -> Result<Value, Refused> {
    let mut body = operation("update");
    body.insert("scheduleId".into(), Value::from(schedule_id));
    put_opt(&mut body, "endpoint", input.endpoint.as_deref());
    put_opt(&mut body, "cron", input.cron.as_deref());
    put_opt(&mut body, "timezone", input.timezone.as_deref());
    put_opt(&mut body, "enabled", input.enabled);
    put_opt(&mut body, "name", input.name.as_deref());
    if let Some(raw) = &input.payload {
        let payload = schedule_payload(raw).ok_or(Refused::Payload)?;
        body.insert("payload".into(), payload);
    }
    Ok(Value::Object(body))
}

// --- invoicing ---

/// JSON has no NaN or infinity; Alga sends 0 for them.
fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

fn discount_type_name(d: DiscountType) -> &'static str {
    match d {
        DiscountType::Percentage => "percentage",
        DiscountType::Fixed => "fixed",
    }
}

fn invoice_item(item: &ManualInvoiceItemInput) -> Value {
    let mut m = Map::new();
    m.insert("serviceId".into(), Value::from(item.service_id.as_str()));
    m.insert("quantity".into(), Value::from(finite_or_zero(item.quantity)));
    m.insert("description".into(), Value::from(item.description.as_str()));
    m.insert("rate".into(), Value::from(finite_or_zero(item.rate)));
    put_opt(&mut m, "isDiscount", item.is_discount);
    put_opt(&mut m, "discountType", item.discount_type.map(discount_type_name));
    put_opt(&mut m, "appliesToItemId", item.applies_to_item_id.as_deref());
    put_opt(&mut m, "appliesToServiceId", item.applies_to_service_id.as_deref());
    Value::Object(m)
}

fn invoice_body(input: &CreateManualInvoiceInput) -> Value {
    let mut body = operation("createManualInvoice");
    body.insert("clientId".into(), Value::from(input.client_id.as_str()));
    body.insert("items".into(), Value::Array(input.items.iter().map(invoice_item).collect()));
    put_opt(&mut body, "invoiceDate", input.invoice_date.as_deref());
    put_opt(&mut body, "dueDate", input.due_date.as_deref());
    put_opt(&mut body, "poNumber", input.po_number.as_deref());
    Value::Object(body)
}

// --- clients and services ---

/// Page and page size with Alga's defaults (1 and 25), or `None` when out of range
/// (page ≥ 1, 1 ≤ page size ≤ 100): refused as `invalid-input` before any request.
fn page_window(page: Option<u32>, page_size: Option<u32>) -> Option<(u32, u32)> {
    let page = page.unwrap_or(1);
    let page_size = page_size.unwrap_or(25);
    (page >= 1 && (1..=100).contains(&page_size)).then_some((page, page_size))
}

/// `{operation, input, user?}`. The user goes with every read so the host application applies
/// the end user's own permissions (its RBAC check); an execution without a user reads as the
/// install.
fn read_body(op: &str, input: Value, user: Option<&UserInfo>) -> Value {
    let mut body = operation(op);
    body.insert("input".into(), input);
    if let Some(u) = user {
        body.insert("user".into(), json!({ "userId": u.user_id, "userType": u.user_type }));
    }
    Value::Object(body)
}

fn clients_list_body(input: &ClientsListInput, user: Option<&UserInfo>) -> Option<Value> {
    let (page, page_size) = page_window(input.page, input.page_size)?;
    let mut m = Map::new();
    put_opt(&mut m, "search", input.search.as_deref());
    put_opt(&mut m, "includeInactive", input.include_inactive);
    m.insert("page".into(), Value::from(page));
    m.insert("pageSize".into(), Value::from(page_size));
    Some(read_body("list", Value::Object(m), user))
}

fn item_kind_name(k: ServiceItemKind) -> &'static str {
    match k {
        ServiceItemKind::Service => "service",
        ServiceItemKind::Product => "product",
    }
}

fn billing_method_name(b: ServiceBillingMethod) -> &'static str {
    match b {
        ServiceBillingMethod::Fixed => "fixed",
        ServiceBillingMethod::Hourly => "hourly",
        ServiceBillingMethod::Usage => "usage",
    }
}

fn services_list_body(input: &ServicesListInput, user: Option<&UserInfo>) -> Option<Value> {
    let (page, page_size) = page_window(input.page, input.page_size)?;
    let mut m = Map::new();
    put_opt(&mut m, "search", input.search.as_deref());
    put_opt(&mut m, "itemKind", input.item_kind.map(item_kind_name));
    put_opt(&mut m, "isActive", input.is_active);
    put_opt(&mut m, "billingMethod", input.billing_method.map(billing_method_name));
    m.insert("page".into(), Value::from(page));
    m.insert("pageSize".into(), Value::from(page_size));
    Some(read_body("list", Value::Object(m), user))
}

// ---------------------------------------------------------------------------------------------
// ui-proxy: request
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
        segments.push(percent_encode(extension_id, is_unreserved));
    }
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err(ProxyError::BadRequest);
        }
        segments.push(percent_encode(segment, is_segment_char));
    }
    let mut url = format!("{}/{}", base.origin, segments.join("/"));
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(&percent_encode(q, is_query_char));
    }
    Ok(url)
}

fn ui_proxy_request(route: &str, payload: Option<&[u8]>, ctx: &ForwardContext) -> Result<ForwardRequest, ProxyError> {
    let base = BaseUrl::parse(ctx.ui_proxy_base_url).ok_or(ProxyError::RouteNotFound)?;
    if ctx.tenant_id.is_empty() || !usable_id(ctx.extension_id) {
        return Err(ProxyError::Internal);
    }
    let route = route.trim();
    if route.is_empty() {
        return Err(ProxyError::BadRequest);
    }
    let url = ui_proxy_url(&base, route, ctx.extension_id)?;
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
    h.push("x-runner-auth", ctx.token);
    if has_body {
        h.push("content-type", "application/json");
    }
    h.0
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Why an answer carries no usable JSON.
#[derive(Debug)]
enum Failure {
    Transport,
    /// A non-2xx status, with the body (invoicing quotes it to the guest).
    Status(u16, Vec<u8>),
    /// A 2xx whose body is not JSON.
    NotJson,
}

/// The JSON of a 2xx answer. `serde_json` bounds nesting depth, so a hostile body cannot
/// exhaust the stack.
fn json_answer(answer: Result<(u16, Vec<u8>), TransportFailure>) -> Result<Value, Failure> {
    match answer {
        Err(_) => Err(Failure::Transport),
        Ok((status, body)) if !is_success(status) => Err(Failure::Status(status, body)),
        Ok((_, body)) => serde_json::from_slice(&body).map_err(|_| Failure::NotJson),
    }
}

/// A required part of an answer is missing or has the wrong type.
#[derive(Debug)]
struct Malformed;

/// The first of `keys` holding a string (accepting camelCase or snake_case spellings).
fn str_of(obj: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| obj.get(*k).and_then(Value::as_str)).map(str::to_string)
}

/// An optional string: absent or null is `None`, another type is malformed.
fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, Malformed> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Malformed),
    }
}

fn req_str(obj: &Map<String, Value>, key: &str) -> Result<String, Malformed> {
    opt_str(obj, key)?.ok_or(Malformed)
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, Malformed> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Malformed),
    }
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, Malformed> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(Malformed),
    }
}

fn req_u32(obj: &Map<String, Value>, key: &str) -> Result<u32, Malformed> {
    obj.get(key).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()).ok_or(Malformed)
}

/// Field errors as the guest receives them: a string is kept, other JSON is serialised, null is
/// none.
fn field_errors_of(obj: &Map<String, Value>) -> Option<String> {
    match obj.get("fieldErrors").or_else(|| obj.get("field_errors"))? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

// --- ui-proxy ---

fn proxy_status_error(status: u16) -> ProxyError {
    match status {
        401 | 403 | 429 => ProxyError::Denied,
        404 => ProxyError::RouteNotFound,
        400..=499 => ProxyError::BadRequest,
        _ => ProxyError::Internal,
    }
}

/// A 2xx answer's body goes to the guest as it is; ui-proxy does not interpret it.
fn proxy_reply(answer: Result<(u16, Vec<u8>), TransportFailure>) -> Result<Vec<u8>, ProxyError> {
    match answer {
        Err(_) => Err(ProxyError::Internal),
        Ok((status, body)) if is_success(status) => Ok(body),
        Ok((status, _)) => Err(proxy_status_error(status)),
    }
}

// --- scheduler ---

fn scheduler_status_error(status: u16) -> SchedulerError {
    match status {
        401 | 403 => SchedulerError::Denied,
        404 => SchedulerError::NotFound,
        400 => SchedulerError::ValidationFailed,
        429 => SchedulerError::QuotaExceeded,
        _ => SchedulerError::Internal,
    }
}

fn scheduler_answer(answer: Result<(u16, Vec<u8>), TransportFailure>) -> Result<Value, SchedulerError> {
    json_answer(answer).map_err(|f| match f {
        Failure::Status(status, _) => scheduler_status_error(status),
        Failure::Transport | Failure::NotJson => SchedulerError::Internal,
    })
}

/// The text create/update/delete put in `error` on failure: the error's Rust name, as Alga
/// formats it (`ValidationFailed`, ...). The server's own field errors are not passed on.
fn scheduler_error_name(e: SchedulerError) -> &'static str {
    match e {
        SchedulerError::NotFound => "NotFound",
        SchedulerError::ValidationFailed => "ValidationFailed",
        SchedulerError::QuotaExceeded => "QuotaExceeded",
        SchedulerError::Denied => "Denied",
        SchedulerError::Internal => "Internal",
    }
}

/// A schedule record; `None` when a required field is missing or mistyped. Optional fields of
/// the wrong type read as absent, as in Alga.
fn schedule_info(v: &Value) -> Option<ScheduleInfo> {
    let o = v.as_object()?;
    Some(ScheduleInfo {
        id: str_of(o, &["id"])?,
        endpoint_path: str_of(o, &["endpointPath", "endpoint_path"])?,
        endpoint_method: str_of(o, &["endpointMethod", "endpoint_method"])?,
        name: str_of(o, &["name"]),
        cron: str_of(o, &["cron"])?,
        timezone: str_of(o, &["timezone"])?,
        enabled: o.get("enabled").and_then(Value::as_bool)?,
        payload: match o.get("payload") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        },
        last_run_at: str_of(o, &["lastRunAt", "last_run_at"]),
        last_run_status: str_of(o, &["lastRunStatus", "last_run_status"]),
        last_error: str_of(o, &["lastError", "last_error"]),
        created_at: str_of(o, &["createdAt", "created_at"]),
    })
}

fn endpoint_info(v: &Value) -> Option<EndpointInfo> {
    let o = v.as_object()?;
    Some(EndpointInfo {
        id: str_of(o, &["id"])?,
        method: str_of(o, &["method"])?,
        path: str_of(o, &["path"])?,
        handler: str_of(o, &["handler"])?,
        schedulable: o.get("schedulable").and_then(Value::as_bool)?,
    })
}

/// `key`'s array with the malformed items dropped (Alga's behaviour); an answer without the
/// array at all is malformed.
fn lenient_list<T>(v: &Value, key: &str, item: fn(&Value) -> Option<T>) -> Result<Vec<T>, SchedulerError> {
    let items = v.get(key).and_then(Value::as_array).ok_or(SchedulerError::Internal)?;
    Ok(items.iter().filter_map(item).collect())
}

fn schedule_list(v: &Value) -> Result<Vec<ScheduleInfo>, SchedulerError> {
    lenient_list(v, "schedules", schedule_info)
}

fn endpoint_list(v: &Value) -> Result<Vec<EndpointInfo>, SchedulerError> {
    lenient_list(v, "endpoints", endpoint_info)
}

/// `{schedule: obj|null}`: null or absent is "no such schedule", a malformed record is not.
fn schedule_one(v: &Value) -> Result<Option<ScheduleInfo>, SchedulerError> {
    let o = v.as_object().ok_or(SchedulerError::Internal)?;
    match o.get("schedule") {
        None | Some(Value::Null) => Ok(None),
        Some(s) => schedule_info(s).map(Some).ok_or(SchedulerError::Internal),
    }
}

fn create_failure(error: String, field_errors: Option<String>) -> CreateScheduleResult {
    CreateScheduleResult { success: false, schedule_id: None, error: Some(error), field_errors }
}

fn update_failure(error: String, field_errors: Option<String>) -> UpdateScheduleResult {
    UpdateScheduleResult { success: false, error: Some(error), field_errors }
}

fn delete_failure(error: String) -> DeleteScheduleResult {
    DeleteScheduleResult { success: false, error: Some(error) }
}

/// The object of a mutation's 2xx answer, or the error name the result carries.
fn mutation_object(answer: Result<Value, SchedulerError>) -> Result<Map<String, Value>, String> {
    match answer {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(scheduler_error_name(SchedulerError::Internal).into()),
        Err(e) => Err(scheduler_error_name(e).into()),
    }
}

/// `success` is what the host application says; it must say so (absent reads as failure).
fn success_of(o: &Map<String, Value>) -> bool {
    o.get("success").and_then(Value::as_bool).unwrap_or(false)
}

fn create_result(answer: Result<Value, SchedulerError>) -> CreateScheduleResult {
    match mutation_object(answer) {
        Err(e) => create_failure(e, None),
        Ok(o) => CreateScheduleResult {
            success: success_of(&o),
            schedule_id: str_of(&o, &["scheduleId", "schedule_id"]),
            error: str_of(&o, &["error"]),
            field_errors: field_errors_of(&o),
        },
    }
}

fn update_result(answer: Result<Value, SchedulerError>) -> UpdateScheduleResult {
    match mutation_object(answer) {
        Err(e) => update_failure(e, None),
        Ok(o) => UpdateScheduleResult {
            success: success_of(&o),
            error: str_of(&o, &["error"]),
            field_errors: field_errors_of(&o),
        },
    }
}

fn delete_result(answer: Result<Value, SchedulerError>) -> DeleteScheduleResult {
    match mutation_object(answer) {
        Err(e) => delete_failure(e),
        Ok(o) => DeleteScheduleResult { success: success_of(&o), error: str_of(&o, &["error"]) },
    }
}

// --- invoicing ---

/// Invoicing reports failures as text in the result, never as an error value. An HTTP error
/// quotes the host application's body (bounded by the caller); a transport failure does not
/// quote its cause.
fn invoice_failure_text(f: Failure) -> String {
    match f {
        Failure::Transport => "transport failure".into(),
        Failure::Status(status, body) => format!("http {status}: {}", String::from_utf8_lossy(&body)),
        Failure::NotJson => "invalid JSON response".into(),
    }
}

fn invoice_result(answer: Result<Value, Failure>) -> CreateManualInvoiceResult {
    let o = match answer {
        Err(f) => return invoice_failure(invoice_failure_text(f)),
        Ok(Value::Object(o)) => o,
        Ok(_) => return invoice_failure("invalid response".into()),
    };
    let invoice = o.get("invoice").and_then(Value::as_object);
    // A field may sit at the top level or inside `invoice`; the top level wins.
    let text = |keys: &[&str]| str_of(&o, keys).or_else(|| invoice.and_then(|i| str_of(i, keys)));
    let number = |key: &str| {
        o.get(key).and_then(Value::as_f64).or_else(|| invoice.and_then(|i| i.get(key)).and_then(Value::as_f64))
    };
    CreateManualInvoiceResult {
        success: success_of(&o),
        invoice_id: text(&["invoiceId", "invoice_id"]),
        invoice_number: text(&["invoiceNumber", "invoice_number"]),
        status: text(&["status"]),
        subtotal: number("subtotal"),
        tax: number("tax"),
        total: number("total"),
        error: str_of(&o, &["error"]),
        field_errors: field_errors_of(&o),
    }
}

// --- clients and services ---

/// The status mapping shared by clients and services, as an interface-neutral value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadError {
    NotAllowed,
    InvalidInput,
    Internal,
}

fn read_answer<E>(answer: Result<(u16, Vec<u8>), TransportFailure>, map: fn(ReadError) -> E) -> Result<Value, E> {
    json_answer(answer).map_err(|f| {
        map(match f {
            Failure::Status(401 | 403, _) => ReadError::NotAllowed,
            Failure::Status(400, _) => ReadError::InvalidInput,
            Failure::Status(..) | Failure::Transport | Failure::NotJson => ReadError::Internal,
        })
    })
}

fn client_error(e: ReadError) -> ClientReadError {
    match e {
        ReadError::NotAllowed => ClientReadError::NotAllowed,
        ReadError::InvalidInput => ClientReadError::InvalidInput,
        ReadError::Internal => ClientReadError::Internal,
    }
}

fn service_error(e: ReadError) -> ServiceReadError {
    match e {
        ReadError::NotAllowed => ServiceReadError::NotAllowed,
        ReadError::InvalidInput => ServiceReadError::InvalidInput,
        ReadError::Internal => ServiceReadError::Internal,
    }
}

fn client_internal() -> ClientReadError {
    ClientReadError::Internal
}

fn service_internal() -> ServiceReadError {
    ServiceReadError::Internal
}

/// The list shape both read interfaces share.
trait Page<T>: Sized {
    fn page(items: Vec<T>, total_count: u32, page: u32, page_size: u32) -> Self;
}

impl Page<ClientSummary> for ClientsListResult {
    fn page(items: Vec<ClientSummary>, total_count: u32, page: u32, page_size: u32) -> Self {
        ClientsListResult { items, total_count, page, page_size }
    }
}

impl Page<ServiceSummary> for ServicesListResult {
    fn page(items: Vec<ServiceSummary>, total_count: u32, page: u32, page_size: u32) -> Self {
        ServicesListResult { items, total_count, page, page_size }
    }
}

/// `{items, totalCount, page, pageSize}`; one malformed item makes the whole answer malformed
/// (unlike the scheduler, a read is all or nothing in Alga).
fn page_of<T, P: Page<T>>(v: &Value, item: fn(&Value) -> Result<T, Malformed>) -> Result<P, Malformed> {
    let o = v.as_object().ok_or(Malformed)?;
    let items = o.get("items").and_then(Value::as_array).ok_or(Malformed)?;
    let items = items.iter().map(item).collect::<Result<Vec<T>, Malformed>>()?;
    Ok(P::page(items, req_u32(o, "totalCount")?, req_u32(o, "page")?, req_u32(o, "pageSize")?))
}

/// `{item: obj|null}`: null is "not found", an absent `item` is malformed.
fn item_of<T>(v: &Value, item: fn(&Value) -> Result<T, Malformed>) -> Result<Option<T>, Malformed> {
    match v.as_object().ok_or(Malformed)?.get("item").ok_or(Malformed)? {
        Value::Null => Ok(None),
        found => item(found).map(Some),
    }
}

fn client_summary(v: &Value) -> Result<ClientSummary, Malformed> {
    let o = v.as_object().ok_or(Malformed)?;
    Ok(ClientSummary {
        client_id: req_str(o, "clientId")?,
        client_name: req_str(o, "clientName")?,
        client_type: opt_str(o, "clientType")?,
        is_inactive: opt_bool(o, "isInactive")?.unwrap_or(false),
        default_currency_code: opt_str(o, "defaultCurrencyCode")?,
        account_manager_id: opt_str(o, "accountManagerId")?,
        account_manager_name: opt_str(o, "accountManagerName")?,
        billing_email: opt_str(o, "billingEmail")?,
    })
}

fn item_kind(name: &str) -> Result<ServiceItemKind, Malformed> {
    match name {
        "service" => Ok(ServiceItemKind::Service),
        "product" => Ok(ServiceItemKind::Product),
        _ => Err(Malformed),
    }
}

fn billing_method(name: &str) -> Result<ServiceBillingMethod, Malformed> {
    match name {
        "fixed" => Ok(ServiceBillingMethod::Fixed),
        "hourly" => Ok(ServiceBillingMethod::Hourly),
        "usage" => Ok(ServiceBillingMethod::Usage),
        _ => Err(Malformed),
    }
}

/// A service summary: both enums must be valid; rate, unit and activity have Alga's defaults.
fn service_summary(v: &Value) -> Result<ServiceSummary, Malformed> {
    let o = v.as_object().ok_or(Malformed)?;
    Ok(ServiceSummary {
        service_id: req_str(o, "serviceId")?,
        service_name: req_str(o, "serviceName")?,
        item_kind: item_kind(&req_str(o, "itemKind")?)?,
        billing_method: billing_method(&req_str(o, "billingMethod")?)?,
        service_type_id: opt_str(o, "serviceTypeId")?,
        service_type_name: opt_str(o, "serviceTypeName")?,
        default_rate: opt_f64(o, "defaultRate")?.unwrap_or(0.0),
        unit_of_measure: opt_str(o, "unitOfMeasure")?.unwrap_or_default(),
        is_active: opt_bool(o, "isActive")?.unwrap_or(true),
        sku: opt_str(o, "sku")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ForwardContext<'static> {
        ForwardContext {
            base_url: "http://127.0.0.1:3000/",
            ui_proxy_base_url: "http://127.0.0.1:3000/api/ui-proxy/",
            token: "tok-123",
            request_id: Some("req-1"),
            tenant_id: "t1",
            extension_id: "com.example.ext",
            install_id: Some("inst-1"),
            version_id: Some("ver-1"),
            user: None,
            api_key: Some("key-9"),
        }
    }

    fn user() -> UserInfo {
        UserInfo {
            user_id: "u1".into(),
            user_email: "u1@example.com".into(),
            user_type: "internal".into(),
            ..UserInfo::default()
        }
    }

    fn header<'r>(r: &'r ForwardRequest, name: &str) -> Option<&'r str> {
        r.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn body_json(r: &ForwardRequest) -> Value {
        serde_json::from_slice(r.body.as_deref().unwrap_or_default()).unwrap()
    }

    fn ok(status: u16, body: &str) -> Result<(u16, Vec<u8>), TransportFailure> {
        Ok((status, body.as_bytes().to_vec()))
    }

    fn transport() -> Result<(u16, Vec<u8>), TransportFailure> {
        Err(TransportFailure("connection refused".into()))
    }

    fn create_input(payload: Option<&str>) -> CreateScheduleInput {
        CreateScheduleInput {
            endpoint: "/jobs/run".into(),
            cron: "*/5 * * * *".into(),
            timezone: None,
            enabled: Some(true),
            name: Some("every five".into()),
            payload: payload.map(str::to_string),
        }
    }

    fn update_input() -> UpdateScheduleInput {
        UpdateScheduleInput {
            endpoint: None,
            cron: Some("0 * * * *".into()),
            timezone: None,
            enabled: None,
            name: None,
            payload: None,
        }
    }

    fn clients_input(page: Option<u32>, page_size: Option<u32>) -> ClientsListInput {
        ClientsListInput { search: None, include_inactive: None, page, page_size }
    }

    fn services_input(page: Option<u32>, page_size: Option<u32>) -> ServicesListInput {
        ServicesListInput { search: None, item_kind: None, is_active: None, billing_method: None, page, page_size }
    }

    fn proxy_call(route: &str, payload: Option<&[u8]>) -> HostCall {
        HostCall::UiProxyCallRoute { route: route.into(), payload: payload.map(<[u8]>::to_vec) }
    }

    fn proxy_url(route: &str) -> Result<String, ProxyError> {
        ui_proxy_request(route, None, &ctx()).map(|r| r.url)
    }

    fn invoice_call() -> HostCall {
        HostCall::InvoicingCreateManualInvoice {
            input: CreateManualInvoiceInput {
                client_id: "c1".into(),
                items: vec![
                    ManualInvoiceItemInput {
                        service_id: "s1".into(),
                        quantity: 2.0,
                        description: "work".into(),
                        rate: f64::NAN,
                        is_discount: None,
                        discount_type: None,
                        applies_to_item_id: None,
                        applies_to_service_id: None,
                    },
                    ManualInvoiceItemInput {
                        service_id: "s2".into(),
                        quantity: 1.0,
                        description: "discount".into(),
                        rate: 10.0,
                        is_discount: Some(true),
                        discount_type: Some(DiscountType::Percentage),
                        applies_to_item_id: Some("i1".into()),
                        applies_to_service_id: None,
                    },
                ],
                invoice_date: None,
                due_date: Some("2026-09-01".into()),
                po_number: None,
            },
        }
    }

    const SCHEDULE: &str = r#"{"id":"s1","endpointPath":"/jobs/run","endpointMethod":"POST","name":"n",
        "cron":"* * * * *","timezone":"UTC","enabled":true,"payload":{"a":1},"lastRunAt":"2026-01-01"}"#;

    const CLIENT: &str = r#"{"clientId":"c1","clientName":"Acme","clientType":"company","isInactive":false,
        "defaultCurrencyCode":"USD","accountManagerId":null,"billingEmail":"b@acme.test"}"#;

    const SERVICE: &str = r#"{"serviceId":"s1","serviceName":"Support","itemKind":"service","billingMethod":"hourly",
        "serviceTypeId":"st1","serviceTypeName":"Labor","defaultRate":125.5,"unitOfMeasure":"hour","isActive":false,
        "sku":"SUP-1"}"#;

    // --- which calls ---

    #[test]
    fn forwarded_calls_are_recognised() {
        assert!(is_forwarded(&proxy_call("/x", None)));
        assert!(is_forwarded(&HostCall::SchedulerList));
        assert!(is_forwarded(&invoice_call()));
        assert!(is_forwarded(&HostCall::ClientsGet { client_id: "c".into() }));
        assert!(is_forwarded(&HostCall::ServicesList { input: services_input(None, None) }));
        assert!(!is_forwarded(&HostCall::ContextGet));
        assert!(!is_forwarded(&HostCall::StorageGet { namespace: "n".into(), key: "k".into() }));
    }

    #[test]
    fn calls_not_forwarded_get_their_deny_value() {
        let call = HostCall::SecretsGet { key: "k".into() };
        assert_eq!(request(&call, &ctx()), Err(call.deny_reply()));
        assert_eq!(reply(&call, ok(200, "{}")), call.deny_reply());
    }

    #[test]
    fn not_configured_is_route_not_found_for_ui_proxy_and_deny_otherwise() {
        assert_eq!(not_configured(&proxy_call("/x", None)), HostReply::Proxy(Err(ProxyError::RouteNotFound)));
        assert_eq!(not_configured(&HostCall::SchedulerList), HostReply::Schedules(Err(SchedulerError::Denied)));
        let list = HostCall::ClientsList { input: clients_input(None, None) };
        assert_eq!(not_configured(&list), HostReply::Clients(Err(ClientReadError::NotAllowed)));
        let svc = HostCall::ServicesGet { service_id: "s".into() };
        assert_eq!(not_configured(&svc), HostReply::Service(Err(ServiceReadError::NotAllowed)));
        assert!(matches!(not_configured(&invoice_call()), HostReply::Invoice(r) if !r.success));
    }

    // --- missing install id ---

    #[test]
    fn missing_or_blank_install_id_gets_the_alga_gate_value_without_a_request() {
        for install in [None, Some(""), Some("  "), Some("..")] {
            let c = ForwardContext { install_id: install, ..ctx() };
            assert_eq!(request(&HostCall::SchedulerList, &c), Err(HostReply::Schedules(Err(SchedulerError::Denied))));
            assert_eq!(
                request(&HostCall::SchedulerGetEndpoints, &c),
                Err(HostReply::Endpoints(Err(SchedulerError::Denied)))
            );
            match request(&HostCall::SchedulerCreate { input: create_input(None) }, &c) {
                Err(HostReply::ScheduleCreated(r)) => {
                    assert!(!r.success);
                    assert_eq!(r.error.as_deref(), Some("Install ID missing"));
                }
                other => panic!("{other:?}"),
            }
            match request(&invoice_call(), &c) {
                Err(HostReply::Invoice(r)) => {
                    assert!(!r.success);
                    assert_eq!(r.error.as_deref(), Some("Permission denied: install_id missing"));
                }
                other => panic!("{other:?}"),
            }
            let list = HostCall::ClientsList { input: clients_input(None, None) };
            assert_eq!(request(&list, &c), Err(HostReply::Clients(Err(ClientReadError::NotAllowed))));
            let get = HostCall::ServicesGet { service_id: "s".into() };
            assert_eq!(request(&get, &c), Err(HostReply::Service(Err(ServiceReadError::NotAllowed))));
        }
    }

    // --- scheduler requests ---

    #[test]
    fn scheduler_list_request_shape() {
        let r = request(&HostCall::SchedulerList, &ctx()).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.url, "http://127.0.0.1:3000/api/internal/ext-scheduler/install/inst-1");
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(header(&r, "x-runner-auth"), Some("tok-123"));
        assert_eq!(header(&r, "x-request-id"), Some("req-1"));
        assert_eq!(body_json(&r), json!({ "operation": "list" }));
    }

    #[test]
    fn install_id_is_percent_encoded_and_request_id_is_optional() {
        let c = ForwardContext { install_id: Some("a b/../c?d"), request_id: None, base_url: "http://h:1//", ..ctx() };
        let r = request(&HostCall::SchedulerGetEndpoints, &c).unwrap();
        assert_eq!(r.url, "http://h:1/api/internal/ext-scheduler/install/a%20b%2F..%2Fc%3Fd");
        assert_eq!(header(&r, "x-request-id"), None);
        assert_eq!(body_json(&r), json!({ "operation": "getEndpoints" }));
    }

    #[test]
    fn scheduler_get_and_delete_send_the_schedule_id() {
        let r = request(&HostCall::SchedulerGet { schedule_id: "s1".into() }, &ctx()).unwrap();
        assert_eq!(body_json(&r), json!({ "operation": "get", "scheduleId": "s1" }));
        let r = request(&HostCall::SchedulerDelete { schedule_id: "s2".into() }, &ctx()).unwrap();
        assert_eq!(body_json(&r), json!({ "operation": "delete", "scheduleId": "s2" }));
    }

    #[test]
    fn scheduler_create_sends_the_parsed_payload_and_omits_absent_fields() {
        let call = HostCall::SchedulerCreate { input: create_input(Some(r#"{"x":[1,2]}"#)) };
        let r = request(&call, &ctx()).unwrap();
        assert_eq!(
            body_json(&r),
            json!({
                "operation": "create", "endpoint": "/jobs/run", "cron": "*/5 * * * *",
                "enabled": true, "name": "every five", "payload": { "x": [1, 2] }
            })
        );
    }

    #[test]
    fn scheduler_update_sends_the_id_and_given_fields() {
        let mut input = update_input();
        input.payload = Some("[1]".into());
        let r = request(&HostCall::SchedulerUpdate { schedule_id: "s1".into(), input }, &ctx()).unwrap();
        assert_eq!(
            body_json(&r),
            json!({ "operation": "update", "scheduleId": "s1", "cron": "0 * * * *", "payload": [1] })
        );
    }

    #[test]
    fn invalid_schedule_payload_is_refused_with_field_errors() {
        for bad in ["", "not json", "42", "\"text\"", "{"] {
            match request(&HostCall::SchedulerCreate { input: create_input(Some(bad)) }, &ctx()) {
                Err(HostReply::ScheduleCreated(r)) => {
                    assert!(!r.success);
                    assert_eq!(r.schedule_id, None);
                    assert_eq!(r.error.as_deref(), Some(PAYLOAD_ERROR));
                    let fe: Value = serde_json::from_str(r.field_errors.as_deref().unwrap()).unwrap();
                    assert_eq!(fe, json!({ "payload": PAYLOAD_ERROR }));
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let mut input = update_input();
        input.payload = Some("nope".into());
        match request(&HostCall::SchedulerUpdate { schedule_id: "s".into(), input }, &ctx()) {
            Err(HostReply::ScheduleUpdated(r)) => {
                assert!(!r.success);
                assert_eq!(r.error.as_deref(), Some(PAYLOAD_ERROR));
                assert!(r.field_errors.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    // --- scheduler answers ---

    #[test]
    fn scheduler_status_mapping() {
        let table = [
            (401, SchedulerError::Denied),
            (403, SchedulerError::Denied),
            (404, SchedulerError::NotFound),
            (400, SchedulerError::ValidationFailed),
            (429, SchedulerError::QuotaExceeded),
            (409, SchedulerError::Internal),
            (500, SchedulerError::Internal),
            (503, SchedulerError::Internal),
            (302, SchedulerError::Internal),
        ];
        for (status, want) in table {
            assert_eq!(reply(&HostCall::SchedulerList, ok(status, "{}")), HostReply::Schedules(Err(want)), "{status}");
            assert_eq!(
                reply(&HostCall::SchedulerGet { schedule_id: "s".into() }, ok(status, "")),
                HostReply::Schedule(Err(want))
            );
            assert_eq!(reply(&HostCall::SchedulerGetEndpoints, ok(status, "")), HostReply::Endpoints(Err(want)));
        }
        assert_eq!(reply(&HostCall::SchedulerList, transport()), HostReply::Schedules(Err(SchedulerError::Internal)));
        assert_eq!(
            reply(&HostCall::SchedulerList, ok(200, "<html>")),
            HostReply::Schedules(Err(SchedulerError::Internal))
        );
        assert_eq!(reply(&HostCall::SchedulerList, ok(200, "")), HostReply::Schedules(Err(SchedulerError::Internal)));
    }

    #[test]
    fn scheduler_mutations_name_the_error_on_http_failure() {
        let create = HostCall::SchedulerCreate { input: create_input(None) };
        let update = HostCall::SchedulerUpdate { schedule_id: "s".into(), input: update_input() };
        let delete = HostCall::SchedulerDelete { schedule_id: "s".into() };
        let body = r#"{"success":false,"error":"bad cron","fieldErrors":{"cron":"x"}}"#;
        for (status, name) in
            [(400, "ValidationFailed"), (403, "Denied"), (404, "NotFound"), (429, "QuotaExceeded"), (500, "Internal")]
        {
            assert_eq!(
                reply(&create, ok(status, body)),
                HostReply::ScheduleCreated(create_failure(name.into(), None)),
                "{status}"
            );
            assert_eq!(reply(&update, ok(status, body)), HostReply::ScheduleUpdated(update_failure(name.into(), None)));
            assert_eq!(reply(&delete, ok(status, body)), HostReply::ScheduleDeleted(delete_failure(name.into())));
        }
        assert_eq!(reply(&create, transport()), HostReply::ScheduleCreated(create_failure("Internal".into(), None)));
        assert_eq!(reply(&delete, ok(200, "[]")), HostReply::ScheduleDeleted(delete_failure("Internal".into())));
        assert_eq!(reply(&update, ok(200, "{")), HostReply::ScheduleUpdated(update_failure("Internal".into(), None)));
    }

    #[test]
    fn scheduler_mutation_success_answers_are_read() {
        let create = HostCall::SchedulerCreate { input: create_input(None) };
        let answer = ok(201, r#"{"success":true,"scheduleId":"s9","fieldErrors":null}"#);
        assert_eq!(
            reply(&create, answer),
            HostReply::ScheduleCreated(CreateScheduleResult {
                success: true,
                schedule_id: Some("s9".into()),
                error: None,
                field_errors: None
            })
        );
        let answer = ok(200, r#"{"success":false,"schedule_id":"s8","error":"e","field_errors":{"cron":["bad"]}}"#);
        match reply(&create, answer) {
            HostReply::ScheduleCreated(r) => {
                assert!(!r.success);
                assert_eq!(r.schedule_id.as_deref(), Some("s8"));
                assert_eq!(r.error.as_deref(), Some("e"));
                assert_eq!(r.field_errors.as_deref(), Some(r#"{"cron":["bad"]}"#));
            }
            other => panic!("{other:?}"),
        }
        let update = HostCall::SchedulerUpdate { schedule_id: "s".into(), input: update_input() };
        assert_eq!(
            reply(&update, ok(200, r#"{"success":true}"#)),
            HostReply::ScheduleUpdated(UpdateScheduleResult { success: true, error: None, field_errors: None })
        );
        let delete = HostCall::SchedulerDelete { schedule_id: "s".into() };
        assert_eq!(
            reply(&delete, ok(200, r#"{"success":true}"#)),
            HostReply::ScheduleDeleted(DeleteScheduleResult { success: true, error: None })
        );
        // `success` must be stated.
        assert_eq!(
            reply(&delete, ok(200, "{}")),
            HostReply::ScheduleDeleted(DeleteScheduleResult { success: false, error: None })
        );
    }

    #[test]
    fn schedule_list_accepts_both_casings_and_drops_malformed_items() {
        let snake = r#"{"id":"s2","endpoint_path":"/b","endpoint_method":"GET","cron":"c","timezone":"UTC",
            "enabled":false,"payload":"raw","last_run_status":"ok","created_at":"2026"}"#;
        let body = format!(r#"{{"schedules":[{SCHEDULE},{snake},{{"id":"broken"}},7,null]}}"#);
        match reply(&HostCall::SchedulerList, ok(200, &body)) {
            HostReply::Schedules(Ok(list)) => {
                assert_eq!(list.len(), 2);
                assert_eq!(list[0].id, "s1");
                assert_eq!(list[0].endpoint_path, "/jobs/run");
                assert_eq!(list[0].payload.as_deref(), Some(r#"{"a":1}"#));
                assert_eq!(list[0].last_run_at.as_deref(), Some("2026-01-01"));
                assert_eq!(list[1].endpoint_method, "GET");
                assert!(!list[1].enabled);
                assert_eq!(list[1].payload.as_deref(), Some("raw"));
                assert_eq!(list[1].last_run_status.as_deref(), Some("ok"));
                assert_eq!(list[1].created_at.as_deref(), Some("2026"));
                assert_eq!(list[1].name, None);
            }
            other => panic!("{other:?}"),
        }
        for malformed in ["{}", r#"{"schedules":{}}"#, "[]", "null"] {
            assert_eq!(
                reply(&HostCall::SchedulerList, ok(200, malformed)),
                HostReply::Schedules(Err(SchedulerError::Internal)),
                "{malformed}"
            );
        }
    }

    #[test]
    fn schedule_get_reads_null_as_none() {
        let get = HostCall::SchedulerGet { schedule_id: "s1".into() };
        assert_eq!(reply(&get, ok(200, r#"{"schedule":null}"#)), HostReply::Schedule(Ok(None)));
        assert_eq!(reply(&get, ok(200, "{}")), HostReply::Schedule(Ok(None)));
        match reply(&get, ok(200, &format!(r#"{{"schedule":{SCHEDULE}}}"#))) {
            HostReply::Schedule(Ok(Some(s))) => assert_eq!((s.id.as_str(), s.cron.as_str()), ("s1", "* * * * *")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reply(&get, ok(200, r#"{"schedule":{"id":1}}"#)),
            HostReply::Schedule(Err(SchedulerError::Internal))
        );
        assert_eq!(reply(&get, ok(200, "3")), HostReply::Schedule(Err(SchedulerError::Internal)));
    }

    #[test]
    fn endpoints_are_read_and_malformed_ones_dropped() {
        let body = r#"{"endpoints":[{"id":"e1","method":"POST","path":"/jobs","handler":"h","schedulable":true},
            {"id":"e2","method":"GET","path":"/x","handler":"h"}]}"#;
        assert_eq!(
            reply(&HostCall::SchedulerGetEndpoints, ok(200, body)),
            HostReply::Endpoints(Ok(vec![EndpointInfo {
                id: "e1".into(),
                method: "POST".into(),
                path: "/jobs".into(),
                handler: "h".into(),
                schedulable: true
            }]))
        );
    }

    // --- invoicing ---

    #[test]
    fn invoicing_request_shape() {
        let r = request(&invoice_call(), &ctx()).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.url, "http://127.0.0.1:3000/api/internal/ext-invoicing/install/inst-1");
        assert_eq!(header(&r, "x-runner-auth"), Some("tok-123"));
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(
            body_json(&r),
            json!({
                "operation": "createManualInvoice",
                "clientId": "c1",
                "items": [
                    { "serviceId": "s1", "quantity": 2.0, "description": "work", "rate": 0.0 },
                    { "serviceId": "s2", "quantity": 1.0, "description": "discount", "rate": 10.0,
                      "isDiscount": true, "discountType": "percentage", "appliesToItemId": "i1" }
                ],
                "dueDate": "2026-09-01"
            })
        );
    }

    #[test]
    fn invoicing_failures_are_result_texts() {
        let call = invoice_call();
        let text = |answer| match reply(&call, answer) {
            HostReply::Invoice(r) => {
                assert!(!r.success);
                r.error.unwrap()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(text(ok(400, r#"{"error":"bad"}"#)), r#"http 400: {"error":"bad"}"#);
        assert_eq!(text(ok(500, "boom")), "http 500: boom");
        assert_eq!(text(Ok((502, vec![0xff, b'x']))), "http 502: \u{fffd}x");
        assert_eq!(text(transport()), "transport failure");
        assert_eq!(text(ok(201, "not json")), "invalid JSON response");
        assert_eq!(text(ok(201, "[1]")), "invalid response");
    }

    #[test]
    fn invoicing_result_fields_come_from_top_level_or_invoice() {
        let body = r#"{"success":true,"invoiceId":"top","invoice":{"invoiceId":"nested","invoiceNumber":"INV-7",
            "status":"draft","subtotal":100,"tax":7.5,"total":107.5},"total":108,"fieldErrors":{"items":"x"}}"#;
        assert_eq!(
            reply(&invoice_call(), ok(201, body)),
            HostReply::Invoice(CreateManualInvoiceResult {
                success: true,
                invoice_id: Some("top".into()),
                invoice_number: Some("INV-7".into()),
                status: Some("draft".into()),
                subtotal: Some(100.0),
                tax: Some(7.5),
                total: Some(108.0),
                error: None,
                field_errors: Some(r#"{"items":"x"}"#.into()),
            })
        );
        match reply(&invoice_call(), ok(200, r#"{"fieldErrors":"already text","total":"12"}"#)) {
            HostReply::Invoice(r) => {
                assert!(!r.success);
                assert_eq!(r.field_errors.as_deref(), Some("already text"));
                assert_eq!(r.total, None, "a non-number total is absent");
            }
            other => panic!("{other:?}"),
        }
    }

    // --- clients ---

    #[test]
    fn clients_list_request_shape_with_defaults_and_user() {
        let u = user();
        let c = ForwardContext { user: Some(&u), ..ctx() };
        let call = HostCall::ClientsList {
            input: ClientsListInput {
                search: Some("ac".into()),
                include_inactive: Some(true),
                page: None,
                page_size: None,
            },
        };
        let r = request(&call, &c).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.url, "http://127.0.0.1:3000/api/internal/ext-clients/install/inst-1");
        assert_eq!(header(&r, "x-runner-auth"), Some("tok-123"));
        assert_eq!(header(&r, "x-request-id"), Some("req-1"));
        assert_eq!(
            body_json(&r),
            json!({
                "operation": "list",
                "input": { "search": "ac", "includeInactive": true, "page": 1, "pageSize": 25 },
                "user": { "userId": "u1", "userType": "internal" }
            })
        );
    }

    #[test]
    fn clients_get_request_shape() {
        let r = request(&HostCall::ClientsGet { client_id: "c1".into() }, &ctx()).unwrap();
        assert_eq!(body_json(&r), json!({ "operation": "get", "input": { "clientId": "c1" } }));
    }

    #[test]
    fn clients_page_window_is_validated_before_any_request() {
        for (page, size) in [(Some(0), None), (None, Some(0)), (None, Some(101)), (Some(0), Some(0))] {
            let call = HostCall::ClientsList { input: clients_input(page, size) };
            assert_eq!(request(&call, &ctx()), Err(HostReply::Clients(Err(ClientReadError::InvalidInput))));
        }
        let call = HostCall::ClientsList { input: clients_input(Some(7), Some(100)) };
        let r = request(&call, &ctx()).unwrap();
        assert_eq!(body_json(&r)["input"], json!({ "page": 7, "pageSize": 100 }));
        let call = HostCall::ClientsList { input: clients_input(Some(u32::MAX), Some(1)) };
        assert!(request(&call, &ctx()).is_ok());
    }

    #[test]
    fn clients_status_mapping() {
        let list = HostCall::ClientsList { input: clients_input(None, None) };
        let get = HostCall::ClientsGet { client_id: "c".into() };
        let table = [
            (401, ClientReadError::NotAllowed),
            (403, ClientReadError::NotAllowed),
            (400, ClientReadError::InvalidInput),
            (404, ClientReadError::Internal),
            (429, ClientReadError::Internal),
            (500, ClientReadError::Internal),
        ];
        for (status, want) in table {
            assert_eq!(reply(&list, ok(status, "{}")), HostReply::Clients(Err(want)), "{status}");
            assert_eq!(reply(&get, ok(status, "{}")), HostReply::Client(Err(want)), "{status}");
        }
        assert_eq!(reply(&list, transport()), HostReply::Clients(Err(ClientReadError::Internal)));
        assert_eq!(reply(&get, ok(200, "nope")), HostReply::Client(Err(ClientReadError::Internal)));
    }

    #[test]
    fn clients_list_answer_is_all_or_nothing() {
        let list = HostCall::ClientsList { input: clients_input(None, None) };
        let body = format!(r#"{{"items":[{CLIENT}],"totalCount":41,"page":2,"pageSize":20}}"#);
        match reply(&list, ok(200, &body)) {
            HostReply::Clients(Ok(r)) => {
                assert_eq!((r.total_count, r.page, r.page_size), (41, 2, 20));
                assert_eq!(
                    r.items,
                    vec![ClientSummary {
                        client_id: "c1".into(),
                        client_name: "Acme".into(),
                        client_type: Some("company".into()),
                        is_inactive: false,
                        default_currency_code: Some("USD".into()),
                        account_manager_id: None,
                        account_manager_name: None,
                        billing_email: Some("b@acme.test".into()),
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        let malformed = [
            format!(r#"{{"items":[{CLIENT},{{"clientId":"c2"}}],"totalCount":2,"page":1,"pageSize":25}}"#),
            format!(
                r#"{{"items":[{CLIENT},{{"clientId":"c2","clientName":"B","isInactive":"no"}}],"totalCount":2,"page":1,"pageSize":25}}"#
            ),
            format!(r#"{{"items":[{CLIENT}],"page":1,"pageSize":25}}"#),
            format!(r#"{{"items":[{CLIENT}],"totalCount":-1,"page":1,"pageSize":25}}"#),
            format!(r#"{{"items":[{CLIENT}],"totalCount":5000000000,"page":1,"pageSize":25}}"#),
            r#"{"totalCount":0,"page":1,"pageSize":25}"#.to_string(),
            "[]".to_string(),
        ];
        for body in malformed {
            assert_eq!(reply(&list, ok(200, &body)), HostReply::Clients(Err(ClientReadError::Internal)), "{body}");
        }
    }

    #[test]
    fn clients_get_answer() {
        let get = HostCall::ClientsGet { client_id: "c1".into() };
        assert_eq!(reply(&get, ok(200, r#"{"item":null}"#)), HostReply::Client(Ok(None)));
        assert_eq!(reply(&get, ok(200, "{}")), HostReply::Client(Err(ClientReadError::Internal)));
        assert_eq!(
            reply(&get, ok(200, r#"{"item":{"clientId":"c1"}}"#)),
            HostReply::Client(Err(ClientReadError::Internal))
        );
        match reply(&get, ok(200, r#"{"item":{"clientId":"c1","clientName":"A"}}"#)) {
            HostReply::Client(Ok(Some(c))) => {
                assert_eq!(c.client_name, "A");
                assert!(!c.is_inactive);
            }
            other => panic!("{other:?}"),
        }
    }

    // --- services ---

    #[test]
    fn services_list_request_shape() {
        let call = HostCall::ServicesList {
            input: ServicesListInput {
                search: None,
                item_kind: Some(ServiceItemKind::Product),
                is_active: Some(false),
                billing_method: Some(ServiceBillingMethod::Usage),
                page: Some(3),
                page_size: None,
            },
        };
        let r = request(&call, &ctx()).unwrap();
        assert_eq!(r.url, "http://127.0.0.1:3000/api/internal/ext-services/install/inst-1");
        assert_eq!(header(&r, "x-runner-auth"), Some("tok-123"));
        assert_eq!(
            body_json(&r),
            json!({
                "operation": "list",
                "input": { "itemKind": "product", "isActive": false, "billingMethod": "usage", "page": 3, "pageSize": 25 }
            })
        );
        let bad = HostCall::ServicesList { input: services_input(None, Some(500)) };
        assert_eq!(request(&bad, &ctx()), Err(HostReply::Services(Err(ServiceReadError::InvalidInput))));
        let u = user();
        let c = ForwardContext { user: Some(&u), ..ctx() };
        let r = request(&HostCall::ServicesGet { service_id: "s1".into() }, &c).unwrap();
        assert_eq!(
            body_json(&r),
            json!({ "operation": "get", "input": { "serviceId": "s1" }, "user": { "userId": "u1", "userType": "internal" } })
        );
    }

    #[test]
    fn services_status_mapping() {
        let list = HostCall::ServicesList { input: services_input(None, None) };
        for (status, want) in [
            (401, ServiceReadError::NotAllowed),
            (403, ServiceReadError::NotAllowed),
            (400, ServiceReadError::InvalidInput),
            (404, ServiceReadError::Internal),
            (502, ServiceReadError::Internal),
        ] {
            assert_eq!(reply(&list, ok(status, "{}")), HostReply::Services(Err(want)), "{status}");
        }
        assert_eq!(reply(&list, transport()), HostReply::Services(Err(ServiceReadError::Internal)));
    }

    #[test]
    fn services_answers_need_valid_enums_and_get_defaults() {
        let list = HostCall::ServicesList { input: services_input(None, None) };
        let minimal = r#"{"serviceId":"s2","serviceName":"Box","itemKind":"product","billingMethod":"fixed"}"#;
        let body = format!(r#"{{"items":[{SERVICE},{minimal}],"totalCount":2,"page":1,"pageSize":25}}"#);
        match reply(&list, ok(200, &body)) {
            HostReply::Services(Ok(r)) => {
                assert_eq!(r.items.len(), 2);
                let full = &r.items[0];
                assert_eq!(full.item_kind, ServiceItemKind::Service);
                assert_eq!(full.billing_method, ServiceBillingMethod::Hourly);
                assert_eq!(full.default_rate, 125.5);
                assert_eq!(full.unit_of_measure, "hour");
                assert!(!full.is_active);
                assert_eq!(full.sku.as_deref(), Some("SUP-1"));
                let min = &r.items[1];
                assert_eq!(min.default_rate, 0.0);
                assert_eq!(min.unit_of_measure, "");
                assert!(min.is_active);
                assert_eq!(min.service_type_id, None);
            }
            other => panic!("{other:?}"),
        }
        let get = HostCall::ServicesGet { service_id: "s".into() };
        for bad in [
            r#"{"item":{"serviceId":"s","serviceName":"n","itemKind":"thing","billingMethod":"fixed"}}"#,
            r#"{"item":{"serviceId":"s","serviceName":"n","itemKind":"service","billingMethod":"weekly"}}"#,
            r#"{"item":{"serviceId":"s","serviceName":"n","itemKind":"service"}}"#,
            r#"{"item":{"serviceId":"s","serviceName":"n","itemKind":"service","billingMethod":"fixed","defaultRate":"1"}}"#,
            r#"{"other":1}"#,
        ] {
            assert_eq!(reply(&get, ok(200, bad)), HostReply::Service(Err(ServiceReadError::Internal)), "{bad}");
        }
        assert_eq!(reply(&get, ok(200, r#"{"item":null}"#)), HostReply::Service(Ok(None)));
    }

    // --- ui-proxy ---

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
            let c = ForwardContext { ui_proxy_base_url: base, ..ctx() };
            ui_proxy_request("/x", None, &c).map(|r| r.url)
        };
        assert_eq!(url("http://h:1").unwrap(), "http://h:1/com.example.ext/x");
        assert_eq!(url("HTTPS://h/").unwrap(), "https://h/com.example.ext/x");
        assert_eq!(url("http://h/p//?base=q#f").unwrap(), "http://h/p//com.example.ext/x");
        for bad in ["", "   ", "h:1/x", "ftp://h/", "http://", "http:///x", "http://h x/", "http://hé/"] {
            assert_eq!(url(bad), Err(ProxyError::RouteNotFound), "{bad}");
        }
        // An unusable base wins over an empty route, as in Alga.
        let c = ForwardContext { ui_proxy_base_url: "", ..ctx() };
        assert_eq!(request(&proxy_call("", None), &c), Err(HostReply::Proxy(Err(ProxyError::RouteNotFound))));
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
            ("x-runner-auth", "tok-123"),
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
        assert_eq!(names, ["x-request-id", "x-alga-tenant", "x-alga-extension", "x-runner-auth"]);
        assert_eq!(header(&r, "x-request-id"), Some("ui-proxy-call"));
    }

    #[test]
    fn header_values_with_control_characters_are_left_out() {
        let c = ForwardContext { tenant_id: "t1\r\nx-evil: 1", request_id: Some("r\n1"), ..ctx() };
        let r = request(&proxy_call("/x", None), &c).unwrap();
        assert_eq!(header(&r, "x-alga-tenant"), None);
        assert_eq!(header(&r, "x-request-id"), None);
        assert!(r.headers.iter().all(|(_, v)| !v.contains(['\r', '\n'])));
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

    // --- robustness ---

    #[test]
    fn debug_output_redacts_credentials() {
        let r = request(&proxy_call("/x", None), &ctx()).unwrap();
        let shown = format!("{r:?} {:?}", ctx());
        assert!(!shown.contains("tok-123"), "{shown}");
        assert!(!shown.contains("key-9"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn hostile_answers_never_panic() {
        let calls = [
            proxy_call("/x", None),
            HostCall::SchedulerList,
            HostCall::SchedulerGet { schedule_id: "s".into() },
            HostCall::SchedulerCreate { input: create_input(None) },
            HostCall::SchedulerUpdate { schedule_id: "s".into(), input: update_input() },
            HostCall::SchedulerDelete { schedule_id: "s".into() },
            HostCall::SchedulerGetEndpoints,
            invoice_call(),
            HostCall::ClientsList { input: clients_input(None, None) },
            HostCall::ClientsGet { client_id: "c".into() },
            HostCall::ServicesList { input: services_input(None, None) },
            HostCall::ServicesGet { service_id: "s".into() },
        ];
        let deep = "[".repeat(100_000);
        let bodies: Vec<Vec<u8>> = vec![
            vec![],
            b"null".to_vec(),
            b"[]".to_vec(),
            b"{}".to_vec(),
            b"\"s\"".to_vec(),
            b"1e400".to_vec(),
            vec![0xff, 0xfe, 0x00],
            deep.into_bytes(),
            br#"{"schedules":[[],{}],"endpoints":[1],"items":[null],"item":[],"schedule":"x","invoice":7,
                "success":"yes","totalCount":1.5,"page":-3,"pageSize":null,"fieldErrors":[1]}"#
                .to_vec(),
        ];
        for call in &calls {
            for body in &bodies {
                for status in [0, 100, 200, 299, 300, 400, 404, 599, u16::MAX] {
                    let _ = reply(call, Ok((status, body.clone())));
                }
            }
            let _ = reply(call, transport());
        }
    }
}

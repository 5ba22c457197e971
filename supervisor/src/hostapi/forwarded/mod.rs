//! The "host-forwarded" host APIs (ui-proxy, scheduler, invoicing, clients, services): how a
//! guest's host call becomes an HTTP request to the host application, and how the host
//! application's answer becomes the guest's reply.
//!
//! Only [`transport`] touches the network: [`request`] describes the request, the transport sends
//! it (bounded by the execution's deadline and a body size limit), and [`reply`] maps what came
//! back. Keeping the mapping pure makes every wire detail of `10-alga-wire.md` B testable without a
//! server.
//!
//! Everything in the host application's answer is untrusted: it is parsed from
//! [`serde_json::Value`] by hand (the bindgen types' serde derive does not speak Alga's JSON), no
//! path here panics on any input, and a malformed answer becomes the interface's `internal`-like
//! value instead of a trap.
//!
//! This file holds the public API and the dispatch of a [`HostCall`] to its interface's module
//! (`ui_proxy`, `scheduler`, `invoicing`, `clients`, `services`); what those share is in `wire`
//! and, for the two read interfaces, `reads`.

pub mod transport;

mod clients;
mod invoicing;
mod reads;
mod scheduler;
mod services;
mod ui_proxy;
mod wire;

/// Percent-encoding of one URL path segment or query value (RFC 3986 unreserved kept).
pub use wire::{UNRESERVED, percent_encode};

use std::fmt;

use alga_shared::bindings::{ClientReadError, ProxyError, SchedulerError, ServiceReadError};
use alga_shared::protocol::{HostCall, HostReply, invoice_failure};
use serde_json::{Value, json};

use super::UserInfo;
use wire::{REDACTED, Refused, is_credential, operation, usable_id};

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// What the caller knows about the execution.
#[derive(Clone, Copy)]
pub struct ForwardContext<'a> {
    /// `host_api.base_url`, e.g. `http://127.0.0.1:3000` (may end with `/`).
    pub base_url: &'a str,
    /// `host_api.ui_proxy_base_url`: where ui-proxy routes go; `None`, ui-proxy answers
    /// `route-not-found` (it never falls back to `base_url`, where the internal API is).
    pub ui_proxy_base_url: Option<&'a str>,
    /// The host API token, sent as `x-runner-auth` to the internal API.
    pub token: &'a str,
    /// Whether ui-proxy requests carry the token too (`host_api.ui_proxy_sends_token`, default
    /// false: Alga's runner never sends a credential there).
    pub ui_proxy_sends_token: bool,
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
    /// Lower-case names. Values never contain control characters (see [`wire::Headers::push`]).
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
            ui_proxy::ui_proxy_request(route, payload, ctx).map_err(|e| HostReply::Proxy(Err(e)))
        }
        Some(Kind::Api(api)) => {
            // The gate comes before validation, as in Alga: without an install there is
            // nothing the call could ever be allowed to do.
            let install_id = ctx.install_id.filter(|id| usable_id(id)).ok_or_else(|| missing_install(call))?;
            let body = api_body(call, ctx.user).map_err(|r| refused(call, r))?;
            Ok(wire::api_request(ctx, api, install_id, &body))
        }
    }
}

/// Maps the host application's answer (status and body) or a transport failure to the guest's
/// reply, with the Alga status mappings of `10-alga-wire.md` B.
pub fn reply(call: &HostCall, answer: Result<(u16, Vec<u8>), TransportFailure>) -> HostReply {
    use HostCall::*;
    use clients::{client_error, client_internal, client_summary};
    use reads::{item_of, page_of, read_answer};
    use scheduler::{
        create_result, delete_result, endpoint_list, schedule_list, schedule_one, scheduler_answer, update_result,
    };
    use services::{service_error, service_internal, service_summary};
    match call {
        UiProxyCallRoute { .. } => HostReply::Proxy(ui_proxy::proxy_reply(answer)),
        SchedulerList => HostReply::Schedules(scheduler_answer(answer).and_then(|v| schedule_list(&v))),
        SchedulerGet { .. } => HostReply::Schedule(scheduler_answer(answer).and_then(|v| schedule_one(&v))),
        SchedulerCreate { .. } => HostReply::ScheduleCreated(create_result(scheduler_answer(answer))),
        SchedulerUpdate { .. } => HostReply::ScheduleUpdated(update_result(scheduler_answer(answer))),
        SchedulerDelete { .. } => HostReply::ScheduleDeleted(delete_result(scheduler_answer(answer))),
        SchedulerGetEndpoints => HostReply::Endpoints(scheduler_answer(answer).and_then(|v| endpoint_list(&v))),
        InvoicingCreateManualInvoice { .. } => HostReply::Invoice(invoicing::invoice_result(wire::json_answer(answer))),
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

/// What Alga's gates answer when the execution has no install id.
fn missing_install(call: &HostCall) -> HostReply {
    use HostCall::*;
    use scheduler::{create_failure, delete_failure, update_failure};
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

/// The guest's reply for a refusal, shaped by the call.
fn refused(call: &HostCall, why: Refused) -> HostReply {
    use HostCall::*;
    use scheduler::{PAYLOAD_ERROR, create_failure, payload_field_errors, update_failure};
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
    use reads::read_body;
    use scheduler::{schedule_create_body, schedule_update_body, with_schedule_id};
    match call {
        SchedulerList => Ok(Value::Object(operation("list"))),
        SchedulerGet { schedule_id } => Ok(with_schedule_id("get", schedule_id)),
        SchedulerCreate { input } => schedule_create_body(input),
        SchedulerUpdate { schedule_id, input } => schedule_update_body(schedule_id, input),
        SchedulerDelete { schedule_id } => Ok(with_schedule_id("delete", schedule_id)),
        SchedulerGetEndpoints => Ok(Value::Object(operation("getEndpoints"))),
        InvoicingCreateManualInvoice { input } => Ok(invoicing::invoice_body(input)),
        ClientsList { input } => clients::clients_list_body(input, user).ok_or(Refused::Page),
        ClientsGet { client_id } => Ok(read_body("get", json!({ "clientId": client_id }), user)),
        ServicesList { input } => services::services_list_body(input, user).ok_or(Refused::Page),
        ServicesGet { service_id } => Ok(read_body("get", json!({ "serviceId": service_id }), user)),
        _ => Err(Refused::NotForwarded),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The dispatch's own tests, and the fixtures every interface module's tests share.
#[cfg(test)]
mod tests {
    use alga_shared::bindings::{
        ClientsListInput, CreateManualInvoiceInput, CreateScheduleInput, DiscountType, ManualInvoiceItemInput,
        ServicesListInput, UpdateScheduleInput,
    };

    use super::*;

    pub(super) fn ctx() -> ForwardContext<'static> {
        ForwardContext {
            base_url: "http://127.0.0.1:3000/",
            ui_proxy_base_url: Some("http://127.0.0.1:3000/api/ui-proxy/"),
            token: "tok-123",
            ui_proxy_sends_token: false,
            request_id: Some("req-1"),
            tenant_id: "t1",
            extension_id: "com.example.ext",
            install_id: Some("inst-1"),
            version_id: Some("ver-1"),
            user: None,
            api_key: Some("key-9"),
        }
    }

    pub(super) fn user() -> UserInfo {
        UserInfo {
            user_id: "u1".into(),
            user_email: "u1@example.com".into(),
            user_type: "internal".into(),
            ..UserInfo::default()
        }
    }

    pub(super) fn header<'r>(r: &'r ForwardRequest, name: &str) -> Option<&'r str> {
        r.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub(super) fn body_json(r: &ForwardRequest) -> Value {
        serde_json::from_slice(r.body.as_deref().unwrap_or_default()).unwrap()
    }

    pub(super) fn ok(status: u16, body: &str) -> Result<(u16, Vec<u8>), TransportFailure> {
        Ok((status, body.as_bytes().to_vec()))
    }

    pub(super) fn transport() -> Result<(u16, Vec<u8>), TransportFailure> {
        Err(TransportFailure("connection refused".into()))
    }

    pub(super) fn create_input(payload: Option<&str>) -> CreateScheduleInput {
        CreateScheduleInput {
            endpoint: "/jobs/run".into(),
            cron: "*/5 * * * *".into(),
            timezone: None,
            enabled: Some(true),
            name: Some("every five".into()),
            payload: payload.map(str::to_string),
        }
    }

    pub(super) fn update_input() -> UpdateScheduleInput {
        UpdateScheduleInput {
            endpoint: None,
            cron: Some("0 * * * *".into()),
            timezone: None,
            enabled: None,
            name: None,
            payload: None,
        }
    }

    pub(super) fn clients_input(page: Option<u32>, page_size: Option<u32>) -> ClientsListInput {
        ClientsListInput { search: None, include_inactive: None, page, page_size }
    }

    pub(super) fn services_input(page: Option<u32>, page_size: Option<u32>) -> ServicesListInput {
        ServicesListInput { search: None, item_kind: None, is_active: None, billing_method: None, page, page_size }
    }

    pub(super) fn proxy_call(route: &str, payload: Option<&[u8]>) -> HostCall {
        HostCall::UiProxyCallRoute { route: route.into(), payload: payload.map(<[u8]>::to_vec) }
    }

    pub(super) fn invoice_call() -> HostCall {
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

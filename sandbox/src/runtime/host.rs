//! The guest's imports. Each one becomes a [`HostCall`] sent to the supervisor, which checks the
//! capability and performs the call; this side only converts arguments and results. Logging is
//! the exception: a log line is sent without waiting for an answer.

use alga_shared::bindings::alga::extension as wit;
use alga_shared::bindings::*;
use alga_shared::protocol::{HostCall, HostReply, LogLevel};

use super::guest::GuestState;

/// How the runtime reaches whoever performs host calls: the supervisor over IPC in a sandbox, or
/// an in-process broker in benchmarks and tests.
pub trait HostBridge: Send {
    /// One blocking round trip.
    fn call(&mut self, call: HostCall) -> Result<HostReply, BridgeError>;
    /// Sends one log line; no answer.
    fn log(&mut self, level: LogLevel, message: String) -> Result<(), BridgeError>;
}

/// A bridge for guest code that runs with no job (a warm-up, an instantiation ahead of its job):
/// every host call gets its interface's deny value, log lines go nowhere.
pub struct DenyAll;

impl HostBridge for DenyAll {
    fn call(&mut self, call: HostCall) -> Result<HostReply, BridgeError> {
        Ok(call.deny_reply())
    }
    fn log(&mut self, _: LogLevel, _: String) -> Result<(), BridgeError> {
        Ok(())
    }
}

/// The channel to the supervisor failed; the guest traps.
#[derive(Debug, thiserror::Error)]
#[error("host call channel failed: {0}")]
pub struct BridgeError(pub String);

/// The supervisor refused the call because the execution went past its host-call budget.
#[derive(Debug, thiserror::Error)]
#[error("host call budget exhausted: {0}")]
pub struct HostCallLimit(pub String);

/// The supervisor answered with a reply of another kind than the call asked for.
#[derive(Debug, thiserror::Error)]
#[error("supervisor answered a `{call}` call with an unrelated reply")]
pub struct WrongReply {
    call: &'static str,
}

impl GuestState {
    fn round_trip(&mut self, call: HostCall) -> wasmtime::Result<HostReply> {
        match self.bridge.call(call).map_err(wasmtime::Error::new)? {
            HostReply::LimitExceeded { detail } => Err(wasmtime::Error::new(HostCallLimit(detail))),
            reply => Ok(reply),
        }
    }

    fn emit_log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let message = truncate_on_char_boundary(message, self.limits.max_log_line_bytes as usize);
        self.bridge.log(level, message).map_err(wasmtime::Error::new)
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate_on_char_boundary(mut s: String, max: usize) -> String {
    const MARK: &str = " [truncated]";
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(MARK);
    s
}

/// Unwraps the expected reply variant or traps.
macro_rules! expect {
    ($reply:expr, $variant:ident, $call:literal) => {
        match $reply {
            HostReply::$variant(v) => Ok(v),
            _ => Err(wasmtime::Error::new(WrongReply { call: $call })),
        }
    };
}

impl wit::types::Host for GuestState {}

impl wit::context::Host for GuestState {
    fn get_context(&mut self) -> wasmtime::Result<ContextData> {
        expect!(self.round_trip(HostCall::ContextGet)?, Context, "context.get-context")
    }
}

impl wit::secrets::Host for GuestState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<String, SecretError>> {
        expect!(self.round_trip(HostCall::SecretsGet { key })?, Secret, "secrets.get")
    }
    fn list_keys(&mut self) -> wasmtime::Result<Vec<String>> {
        expect!(self.round_trip(HostCall::SecretsListKeys)?, SecretKeys, "secrets.list-keys")
    }
}

impl wit::http::Host for GuestState {
    fn fetch(&mut self, request: HttpRequest) -> wasmtime::Result<Result<HttpResponse, HttpError>> {
        expect!(self.round_trip(HostCall::HttpFetch { request })?, Http, "http.fetch")
    }
}

impl wit::storage::Host for GuestState {
    fn get(&mut self, namespace: String, key: String) -> wasmtime::Result<Result<StorageEntry, StorageError>> {
        expect!(self.round_trip(HostCall::StorageGet { namespace, key })?, StorageEntry, "storage.get")
    }
    fn put(&mut self, entry: StorageEntry) -> wasmtime::Result<Result<StorageEntry, StorageError>> {
        expect!(self.round_trip(HostCall::StoragePut { entry })?, StorageEntry, "storage.put")
    }
    fn delete(&mut self, namespace: String, key: String) -> wasmtime::Result<Result<(), StorageError>> {
        expect!(self.round_trip(HostCall::StorageDelete { namespace, key })?, StorageUnit, "storage.delete")
    }
    fn list_entries(
        &mut self,
        namespace: String,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<Vec<StorageEntry>, StorageError>> {
        expect!(
            self.round_trip(HostCall::StorageListEntries { namespace, cursor })?,
            StorageEntries,
            "storage.list-entries"
        )
    }
}

impl wit::logging::Host for GuestState {
    fn log_info(&mut self, message: String) -> wasmtime::Result<()> {
        self.emit_log(LogLevel::Info, message)
    }
    fn log_warn(&mut self, message: String) -> wasmtime::Result<()> {
        self.emit_log(LogLevel::Warn, message)
    }
    fn log_error(&mut self, message: String) -> wasmtime::Result<()> {
        self.emit_log(LogLevel::Error, message)
    }
}

impl wit::ui_proxy::Host for GuestState {
    fn call_route(&mut self, route: String, payload: Option<Vec<u8>>) -> wasmtime::Result<Result<Vec<u8>, ProxyError>> {
        expect!(self.round_trip(HostCall::UiProxyCallRoute { route, payload })?, Proxy, "ui-proxy.call-route")
    }
}

impl wit::user::Host for GuestState {
    fn get_user(&mut self) -> wasmtime::Result<Result<UserData, UserError>> {
        expect!(self.round_trip(HostCall::UserGet)?, User, "user.get-user")
    }
}

impl wit::user_v2::Host for GuestState {
    fn get_user(&mut self) -> wasmtime::Result<Result<UserDataV2, UserError>> {
        expect!(self.round_trip(HostCall::UserV2Get)?, UserV2, "user-v2.get-user")
    }
}

impl wit::scheduler::Host for GuestState {
    fn list_schedules(&mut self) -> wasmtime::Result<Result<Vec<ScheduleInfo>, SchedulerError>> {
        expect!(self.round_trip(HostCall::SchedulerList)?, Schedules, "scheduler.list-schedules")
    }
    fn get_schedule(&mut self, schedule_id: String) -> wasmtime::Result<Result<Option<ScheduleInfo>, SchedulerError>> {
        expect!(self.round_trip(HostCall::SchedulerGet { schedule_id })?, Schedule, "scheduler.get-schedule")
    }
    fn create_schedule(&mut self, input: CreateScheduleInput) -> wasmtime::Result<CreateScheduleResult> {
        expect!(self.round_trip(HostCall::SchedulerCreate { input })?, ScheduleCreated, "scheduler.create-schedule")
    }
    fn update_schedule(
        &mut self,
        schedule_id: String,
        input: UpdateScheduleInput,
    ) -> wasmtime::Result<UpdateScheduleResult> {
        expect!(
            self.round_trip(HostCall::SchedulerUpdate { schedule_id, input })?,
            ScheduleUpdated,
            "scheduler.update-schedule"
        )
    }
    fn delete_schedule(&mut self, schedule_id: String) -> wasmtime::Result<DeleteScheduleResult> {
        expect!(
            self.round_trip(HostCall::SchedulerDelete { schedule_id })?,
            ScheduleDeleted,
            "scheduler.delete-schedule"
        )
    }
    fn get_endpoints(&mut self) -> wasmtime::Result<Result<Vec<EndpointInfo>, SchedulerError>> {
        expect!(self.round_trip(HostCall::SchedulerGetEndpoints)?, Endpoints, "scheduler.get-endpoints")
    }
}

impl wit::invoicing::Host for GuestState {
    fn create_manual_invoice(
        &mut self,
        input: CreateManualInvoiceInput,
    ) -> wasmtime::Result<CreateManualInvoiceResult> {
        expect!(
            self.round_trip(HostCall::InvoicingCreateManualInvoice { input })?,
            Invoice,
            "invoicing.create-manual-invoice"
        )
    }
}

impl wit::clients::Host for GuestState {
    fn list_clients(
        &mut self,
        input: ClientsListInput,
    ) -> wasmtime::Result<Result<ClientsListResult, ClientReadError>> {
        expect!(self.round_trip(HostCall::ClientsList { input })?, Clients, "clients.list-clients")
    }
    fn get_client(&mut self, client_id: String) -> wasmtime::Result<Result<Option<ClientSummary>, ClientReadError>> {
        expect!(self.round_trip(HostCall::ClientsGet { client_id })?, Client, "clients.get-client")
    }
}

impl wit::services::Host for GuestState {
    fn list_services(
        &mut self,
        input: ServicesListInput,
    ) -> wasmtime::Result<Result<ServicesListResult, ServiceReadError>> {
        expect!(self.round_trip(HostCall::ServicesList { input })?, Services, "services.list-services")
    }
    fn get_service(
        &mut self,
        service_id: String,
    ) -> wasmtime::Result<Result<Option<ServiceSummary>, ServiceReadError>> {
        expect!(self.round_trip(HostCall::ServicesGet { service_id })?, Service, "services.get-service")
    }
}

impl wit::config::Host for GuestState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        expect!(self.round_trip(HostCall::ConfigGet { key })?, ConfigValue, "config.get")
    }
    fn list(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        expect!(self.round_trip(HostCall::ConfigList)?, ConfigEntries, "config.list")
    }
}

impl wit::metrics::Host for GuestState {
    fn counter_add(&mut self, name: String, value: u64) -> wasmtime::Result<()> {
        match self.round_trip(HostCall::MetricsCounterAdd { name, value })? {
            HostReply::Unit => Ok(()),
            _ => Err(wasmtime::Error::new(WrongReply { call: "metrics.counter-add" })),
        }
    }
    fn histogram_observe(&mut self, name: String, value: f64) -> wasmtime::Result<()> {
        match self.round_trip(HostCall::MetricsHistogramObserve { name, value })? {
            HostReply::Unit => Ok(()),
            _ => Err(wasmtime::Error::new(WrongReply { call: "metrics.histogram-observe" })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::truncate_on_char_boundary;

    #[test]
    fn truncation_respects_char_boundaries() {
        let s = "é".repeat(10); // 20 bytes
        let t = truncate_on_char_boundary(s.clone(), 15);
        assert!(t.len() <= 15, "{t}");
        assert!(t.ends_with(" [truncated]"));
        assert_eq!(truncate_on_char_boundary("short".into(), 15), "short");
    }
}

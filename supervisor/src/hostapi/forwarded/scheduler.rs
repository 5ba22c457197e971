//! The scheduler interface (`ext-scheduler`): the request bodies of list, get, create, update,
//! delete and getEndpoints, and the mapping of schedules, endpoints and mutation results.

use alga_shared::bindings::{
    CreateScheduleInput, CreateScheduleResult, DeleteScheduleResult, EndpointInfo, ScheduleInfo, SchedulerError,
    UpdateScheduleInput, UpdateScheduleResult,
};
use serde_json::{Map, Value, json};

use super::TransportFailure;
use super::wire::{Failure, Refused, field_errors_of, json_answer, operation, put_opt, str_of, success_of};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// The text Alga answers when a schedule's payload is not a JSON object or array.
pub(super) const PAYLOAD_ERROR: &str = "Payload must be valid JSON object or array";

pub(super) fn with_schedule_id(op: &str, schedule_id: &str) -> Value {
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
pub(super) fn payload_field_errors() -> String {
    json!({ "payload": PAYLOAD_ERROR }).to_string()
}

pub(super) fn schedule_create_body(input: &CreateScheduleInput) -> Result<Value, Refused> {
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

pub(super) fn schedule_update_body(schedule_id: &str, input: &UpdateScheduleInput) -> Result<Value, Refused> {
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

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

fn scheduler_status_error(status: u16) -> SchedulerError {
    match status {
        401 | 403 => SchedulerError::Denied,
        404 => SchedulerError::NotFound,
        400 => SchedulerError::ValidationFailed,
        429 => SchedulerError::QuotaExceeded,
        _ => SchedulerError::Internal,
    }
}

pub(super) fn scheduler_answer(answer: Result<(u16, Vec<u8>), TransportFailure>) -> Result<Value, SchedulerError> {
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

pub(super) fn schedule_list(v: &Value) -> Result<Vec<ScheduleInfo>, SchedulerError> {
    lenient_list(v, "schedules", schedule_info)
}

pub(super) fn endpoint_list(v: &Value) -> Result<Vec<EndpointInfo>, SchedulerError> {
    lenient_list(v, "endpoints", endpoint_info)
}

/// `{schedule: obj|null}`: null or absent is "no such schedule", a malformed record is not.
pub(super) fn schedule_one(v: &Value) -> Result<Option<ScheduleInfo>, SchedulerError> {
    let o = v.as_object().ok_or(SchedulerError::Internal)?;
    match o.get("schedule") {
        None | Some(Value::Null) => Ok(None),
        Some(s) => schedule_info(s).map(Some).ok_or(SchedulerError::Internal),
    }
}

pub(super) fn create_failure(error: String, field_errors: Option<String>) -> CreateScheduleResult {
    CreateScheduleResult { success: false, schedule_id: None, error: Some(error), field_errors }
}

pub(super) fn update_failure(error: String, field_errors: Option<String>) -> UpdateScheduleResult {
    UpdateScheduleResult { success: false, error: Some(error), field_errors }
}

pub(super) fn delete_failure(error: String) -> DeleteScheduleResult {
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

pub(super) fn create_result(answer: Result<Value, SchedulerError>) -> CreateScheduleResult {
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

pub(super) fn update_result(answer: Result<Value, SchedulerError>) -> UpdateScheduleResult {
    match mutation_object(answer) {
        Err(e) => update_failure(e, None),
        Ok(o) => UpdateScheduleResult {
            success: success_of(&o),
            error: str_of(&o, &["error"]),
            field_errors: field_errors_of(&o),
        },
    }
}

pub(super) fn delete_result(answer: Result<Value, SchedulerError>) -> DeleteScheduleResult {
    match mutation_object(answer) {
        Err(e) => delete_failure(e),
        Ok(o) => DeleteScheduleResult { success: success_of(&o), error: str_of(&o, &["error"]) },
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use alga_shared::protocol::{HostCall, HostReply};

    use super::super::tests::{body_json, create_input, ctx, header, ok, transport, update_input};
    use super::super::{reply, request};
    use super::*;

    const SCHEDULE: &str = r#"{"id":"s1","endpointPath":"/jobs/run","endpointMethod":"POST","name":"n",
        "cron":"* * * * *","timezone":"UTC","enabled":true,"payload":{"a":1},"lastRunAt":"2026-01-01"}"#;

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
}

//! The clients interface (`ext-clients`): the list request body and the mapping of client
//! summaries and read errors.

use alga_shared::bindings::{ClientReadError, ClientSummary, ClientsListInput, ClientsListResult};
use serde_json::{Map, Value};

use super::UserInfo;
use super::reads::{Page, ReadError, page_window, read_body};
use super::wire::{Malformed, opt_bool, opt_str, put_opt, req_str};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

pub(super) fn clients_list_body(input: &ClientsListInput, user: Option<&UserInfo>) -> Option<Value> {
    let (page, page_size) = page_window(input.page, input.page_size)?;
    let mut m = Map::new();
    put_opt(&mut m, "search", input.search.as_deref());
    put_opt(&mut m, "includeInactive", input.include_inactive);
    m.insert("page".into(), Value::from(page));
    m.insert("pageSize".into(), Value::from(page_size));
    Some(read_body("list", Value::Object(m), user))
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

pub(super) fn client_error(e: ReadError) -> ClientReadError {
    match e {
        ReadError::NotAllowed => ClientReadError::NotAllowed,
        ReadError::InvalidInput => ClientReadError::InvalidInput,
        ReadError::Internal => ClientReadError::Internal,
    }
}

pub(super) fn client_internal() -> ClientReadError {
    ClientReadError::Internal
}

impl Page<ClientSummary> for ClientsListResult {
    fn page(items: Vec<ClientSummary>, total_count: u32, page: u32, page_size: u32) -> Self {
        ClientsListResult { items, total_count, page, page_size }
    }
}

pub(super) fn client_summary(v: &Value) -> Result<ClientSummary, Malformed> {
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

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use alga_shared::protocol::{HostCall, HostReply};
    use serde_json::json;

    use super::super::tests::{body_json, clients_input, ctx, header, ok, transport, user};
    use super::super::{ForwardContext, reply, request};
    use super::*;

    const CLIENT: &str = r#"{"clientId":"c1","clientName":"Acme","clientType":"company","isInactive":false,
        "defaultCurrencyCode":"USD","accountManagerId":null,"billingEmail":"b@acme.test"}"#;

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
}

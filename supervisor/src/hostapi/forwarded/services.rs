//! The services interface (`ext-services`): the list request body and the mapping of service
//! summaries (with their item kind and billing method) and read errors.

use alga_shared::bindings::{
    ServiceBillingMethod, ServiceItemKind, ServiceReadError, ServiceSummary, ServicesListInput, ServicesListResult,
};
use serde_json::{Map, Value};

use super::UserInfo;
use super::reads::{Page, ReadError, page_window, read_body};
use super::wire::{Malformed, opt_bool, opt_f64, opt_str, put_opt, req_str};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

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

pub(super) fn services_list_body(input: &ServicesListInput, user: Option<&UserInfo>) -> Option<Value> {
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
// Answers
// ---------------------------------------------------------------------------------------------

pub(super) fn service_error(e: ReadError) -> ServiceReadError {
    match e {
        ReadError::NotAllowed => ServiceReadError::NotAllowed,
        ReadError::InvalidInput => ServiceReadError::InvalidInput,
        ReadError::Internal => ServiceReadError::Internal,
    }
}

pub(super) fn service_internal() -> ServiceReadError {
    ServiceReadError::Internal
}

impl Page<ServiceSummary> for ServicesListResult {
    fn page(items: Vec<ServiceSummary>, total_count: u32, page: u32, page_size: u32) -> Self {
        ServicesListResult { items, total_count, page, page_size }
    }
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
pub(super) fn service_summary(v: &Value) -> Result<ServiceSummary, Malformed> {
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
    use alga_shared::protocol::{HostCall, HostReply};
    use serde_json::json;

    use super::super::tests::{body_json, ctx, header, ok, services_input, transport, user};
    use super::super::{ForwardContext, reply, request};
    use super::*;

    const SERVICE: &str = r#"{"serviceId":"s1","serviceName":"Support","itemKind":"service","billingMethod":"hourly",
        "serviceTypeId":"st1","serviceTypeName":"Labor","defaultRate":125.5,"unitOfMeasure":"hour","isActive":false,
        "sku":"SUP-1"}"#;

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
}

//! The invoicing interface (`ext-invoicing`): the manual-invoice request body and the mapping of
//! its result, which reports every failure as text.

use alga_shared::bindings::{
    CreateManualInvoiceInput, CreateManualInvoiceResult, DiscountType, ManualInvoiceItemInput,
};
use alga_shared::protocol::invoice_failure;
use serde_json::{Map, Value};

use super::wire::{Failure, field_errors_of, operation, put_opt, str_of, success_of};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

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

pub(super) fn invoice_body(input: &CreateManualInvoiceInput) -> Value {
    let mut body = operation("createManualInvoice");
    body.insert("clientId".into(), Value::from(input.client_id.as_str()));
    body.insert("items".into(), Value::Array(input.items.iter().map(invoice_item).collect()));
    put_opt(&mut body, "invoiceDate", input.invoice_date.as_deref());
    put_opt(&mut body, "dueDate", input.due_date.as_deref());
    put_opt(&mut body, "poNumber", input.po_number.as_deref());
    Value::Object(body)
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

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

pub(super) fn invoice_result(answer: Result<Value, Failure>) -> CreateManualInvoiceResult {
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

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use alga_shared::protocol::HostReply;
    use serde_json::json;

    use super::super::tests::{body_json, ctx, header, invoice_call, ok, transport};
    use super::super::{reply, request};
    use super::*;

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
}

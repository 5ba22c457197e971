//! What the two read interfaces (clients and services) share: the page window, the request body
//! carrying the end user, the status mapping, and the list and item answer shapes.

use serde_json::{Value, json};

use super::TransportFailure;
use super::UserInfo;
use super::wire::{Failure, Malformed, json_answer, operation, req_u32};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Page and page size with Alga's defaults (1 and 25), or `None` when out of range
/// (page ≥ 1, 1 ≤ page size ≤ 100): refused as `invalid-input` before any request.
pub(super) fn page_window(page: Option<u32>, page_size: Option<u32>) -> Option<(u32, u32)> {
    let page = page.unwrap_or(1);
    let page_size = page_size.unwrap_or(25);
    (page >= 1 && (1..=100).contains(&page_size)).then_some((page, page_size))
}

/// `{operation, input, user?}`. The user goes with every read so the host application applies
/// the end user's own permissions (its RBAC check); an execution without a user reads as the
/// install.
pub(super) fn read_body(op: &str, input: Value, user: Option<&UserInfo>) -> Value {
    let mut body = operation(op);
    body.insert("input".into(), input);
    if let Some(u) = user {
        body.insert("user".into(), json!({ "userId": u.user_id, "userType": u.user_type }));
    }
    Value::Object(body)
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// The status mapping shared by clients and services, as an interface-neutral value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadError {
    NotAllowed,
    InvalidInput,
    Internal,
}

pub(super) fn read_answer<E>(
    answer: Result<(u16, Vec<u8>), TransportFailure>,
    map: fn(ReadError) -> E,
) -> Result<Value, E> {
    json_answer(answer).map_err(|f| {
        map(match f {
            Failure::Status(401 | 403, _) => ReadError::NotAllowed,
            Failure::Status(400, _) => ReadError::InvalidInput,
            Failure::Status(..) | Failure::Transport | Failure::NotJson => ReadError::Internal,
        })
    })
}

/// The list shape both read interfaces share.
pub(super) trait Page<T>: Sized {
    fn page(items: Vec<T>, total_count: u32, page: u32, page_size: u32) -> Self;
}

/// `{items, totalCount, page, pageSize}`; one malformed item makes the whole answer malformed
/// (unlike the scheduler, a read is all or nothing in Alga).
pub(super) fn page_of<T, P: Page<T>>(v: &Value, item: fn(&Value) -> Result<T, Malformed>) -> Result<P, Malformed> {
    let o = v.as_object().ok_or(Malformed)?;
    let items = o.get("items").and_then(Value::as_array).ok_or(Malformed)?;
    let items = items.iter().map(item).collect::<Result<Vec<T>, Malformed>>()?;
    Ok(P::page(items, req_u32(o, "totalCount")?, req_u32(o, "page")?, req_u32(o, "pageSize")?))
}

/// `{item: obj|null}`: null is "not found", an absent `item` is malformed.
pub(super) fn item_of<T>(v: &Value, item: fn(&Value) -> Result<T, Malformed>) -> Result<Option<T>, Malformed> {
    match v.as_object().ok_or(Malformed)?.get("item").ok_or(Malformed)? {
        Value::Null => Ok(None),
        found => item(found).map(Some),
    }
}

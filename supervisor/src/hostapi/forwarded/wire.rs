//! Wire helpers the host-forwarded interfaces share: header lists, percent-encoding, the
//! internal-API request, and reading JSON answers by hand.

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use super::{Api, ForwardContext, ForwardRequest, TransportFailure};

pub(super) const REDACTED: &str = "<redacted>";

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

/// Header names whose values are credentials.
pub(super) fn is_credential(name: &str) -> bool {
    name.eq_ignore_ascii_case("x-runner-auth") || name.eq_ignore_ascii_case("x-api-key")
}

/// A header list that refuses values an HTTP client would reject or that would split a header:
/// such a header is left out rather than failing the whole call (a missing credential simply
/// makes the host application answer 401).
#[derive(Default)]
pub(super) struct Headers(pub(super) Vec<(String, String)>);

impl Headers {
    pub(super) fn push(&mut self, name: &str, value: &str) {
        if value.chars().all(|c| c == '\t' || !c.is_control()) {
            self.0.push((name.to_string(), value.to_string()));
        }
    }

    pub(super) fn push_opt(&mut self, name: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.push(name, v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Percent-encoding
// ---------------------------------------------------------------------------------------------
//
// Each set lists the bytes to encode (as `%XX`, upper-case hex); bytes outside ASCII are always
// encoded, so an encoded string is plain ASCII. Use with [`utf8_percent_encode`].

/// Everything but the RFC 3986 unreserved characters (ASCII letters and digits, `-._~`): what an
/// identifier we insert keeps verbatim.
pub const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Everything but RFC 3986 `pchar` without `%`: a guest's route segment keeps these, and `%` is
/// encoded so that `%2F` or `%2e%2e` stay literal text instead of becoming a separator or a dot
/// segment.
pub(super) const SEGMENT: &AsciiSet = &UNRESERVED
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// What a query copied "raw" encodes: everything but visible ASCII, and the characters a URL
/// parser would encode in a query anyway (`#` above all, which would otherwise start a fragment).
pub(super) const QUERY: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'<').add(b'>').add(b'\'');

/// Percent-encodes every byte of `s` that `set` lists, and every non-ASCII byte.
pub fn percent_encode(s: &str, set: &'static AsciiSet) -> String {
    utf8_percent_encode(s, set).to_string()
}

// ---------------------------------------------------------------------------------------------
// Internal APIs (scheduler, invoicing, clients, services): requests
// ---------------------------------------------------------------------------------------------

/// An identifier that can stand as a URL path segment: not blank, and not a dot segment (which a
/// URL parser would resolve, even percent-encoded, into another path).
pub(super) fn usable_id(id: &str) -> bool {
    !id.trim().is_empty() && id != "." && id != ".."
}

/// `POST {base}/api/internal/ext-<name>/install/{install_id}` with the JSON body.
pub(super) fn api_request(ctx: &ForwardContext, api: Api, install_id: &str, body: &Value) -> ForwardRequest {
    let url = format!(
        "{}/api/internal/{}/install/{}",
        ctx.base_url.trim().trim_end_matches('/'),
        api.path(),
        percent_encode(install_id, UNRESERVED)
    );
    let mut headers = Headers::default();
    headers.push("content-type", "application/json");
    headers.push("x-runner-auth", ctx.token);
    headers.push_opt("x-request-id", ctx.request_id);
    ForwardRequest { method: "POST", url, headers: headers.0, body: Some(body.to_string().into_bytes()) }
}

/// Why a guest's input is refused before any request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// A schedule payload that is not a JSON object or array.
    Payload,
    /// A page or page size out of range.
    Page,
    /// Not an internal-API call at all.
    NotForwarded,
}

/// A body holding just `"operation"`.
pub(super) fn operation(name: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("operation".into(), Value::from(name));
    body
}

/// Inserts `key` only when the value is present: Alga omits absent optionals.
pub(super) fn put_opt<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        map.insert(key.into(), v.into());
    }
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

pub(super) fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Why an answer carries no usable JSON.
#[derive(Debug)]
pub(super) enum Failure {
    Transport,
    /// A non-2xx status, with the body (invoicing quotes it to the guest).
    Status(u16, Vec<u8>),
    /// A 2xx whose body is not JSON.
    NotJson,
}

/// The JSON of a 2xx answer. `serde_json` bounds nesting depth, so a hostile body cannot
/// exhaust the stack.
pub(super) fn json_answer(answer: Result<(u16, Vec<u8>), TransportFailure>) -> Result<Value, Failure> {
    match answer {
        Err(_) => Err(Failure::Transport),
        Ok((status, body)) if !is_success(status) => Err(Failure::Status(status, body)),
        Ok((_, body)) => serde_json::from_slice(&body).map_err(|_| Failure::NotJson),
    }
}

/// A required part of an answer is missing or has the wrong type.
#[derive(Debug)]
pub(super) struct Malformed;

/// The first of `keys` holding a string (accepting camelCase or snake_case spellings).
pub(super) fn str_of(obj: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| obj.get(*k).and_then(Value::as_str)).map(str::to_string)
}

/// An optional string: absent or null is `None`, another type is malformed.
pub(super) fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, Malformed> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Malformed),
    }
}

pub(super) fn req_str(obj: &Map<String, Value>, key: &str) -> Result<String, Malformed> {
    opt_str(obj, key)?.ok_or(Malformed)
}

pub(super) fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, Malformed> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Malformed),
    }
}

pub(super) fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, Malformed> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(Malformed),
    }
}

pub(super) fn req_u32(obj: &Map<String, Value>, key: &str) -> Result<u32, Malformed> {
    obj.get(key).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()).ok_or(Malformed)
}

/// Field errors as the guest receives them: a string is kept, other JSON is serialised, null is
/// none.
pub(super) fn field_errors_of(obj: &Map<String, Value>) -> Option<String> {
    match obj.get("fieldErrors").or_else(|| obj.get("field_errors"))? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// `success` is what the host application says; it must say so (absent reads as failure).
pub(super) fn success_of(o: &Map<String, Value>) -> bool {
    o.get("success").and_then(Value::as_bool).unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use alga_shared::protocol::HostCall;
    use serde_json::json;

    use super::super::tests::{body_json, ctx, header, proxy_call};
    use super::super::{ForwardContext, request};
    use super::*;

    /// The hand-written encoder these sets replaced, kept as the reference they must match.
    fn reference_encode(s: &str, keep: fn(u8) -> bool) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if keep(b) {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
        out
    }

    fn is_unreserved(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
    }

    fn is_segment_char(b: u8) -> bool {
        is_unreserved(b)
            || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@')
    }

    fn is_query_char(b: u8) -> bool {
        (0x21..=0x7e).contains(&b) && !matches!(b, b'"' | b'#' | b'<' | b'>' | b'\'')
    }

    #[test]
    fn percent_encoding_sets_match_the_former_predicates() {
        type Keep = fn(u8) -> bool;
        let sets: [(&AsciiSet, Keep); 3] =
            [(UNRESERVED, is_unreserved), (SEGMENT, is_segment_char), (QUERY, is_query_char)];
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        let tricky = [
            "",
            "%",
            "%2F%2e%2E",
            " ",
            "a b",
            "/",
            "?",
            "#",
            "a/b?c=d&e#f",
            "~",
            "-._",
            "AZaz09",
            "!$&'()*+,;=:@",
            "\"<>\\^`{|}[]",
            "\t\r\n\0\u{7f}",
            "é",
            "日本語",
            "emoji 🦀",
            "\u{80}\u{ff}\u{10ffff}",
            every_ascii.as_str(),
        ];
        for (set, keep) in sets {
            for s in tricky {
                assert_eq!(percent_encode(s, set), reference_encode(s, keep), "{s:?}");
            }
        }
        // A few spelled out, so the expectations do not depend on the reference alone.
        assert_eq!(percent_encode("a b/%?#~-._é", UNRESERVED), "a%20b%2F%25%3F%23~-._%C3%A9");
        assert_eq!(percent_encode("a b/%?#~-._é:@!", SEGMENT), "a%20b%2F%25%3F%23~-._%C3%A9:@!");
        assert_eq!(percent_encode("a b/%?#~-._é\"'<>", QUERY), "a%20b/%?%23~-._%C3%A9%22%27%3C%3E");
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
    fn header_values_with_control_characters_are_left_out() {
        let c = ForwardContext { tenant_id: "t1\r\nx-evil: 1", request_id: Some("r\n1"), ..ctx() };
        let r = request(&proxy_call("/x", None), &c).unwrap();
        assert_eq!(header(&r, "x-alga-tenant"), None);
        assert_eq!(header(&r, "x-request-id"), None);
        assert!(r.headers.iter().all(|(_, v)| !v.contains(['\r', '\n'])));
    }
}

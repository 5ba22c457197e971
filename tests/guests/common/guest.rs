// Shared by every fixture through `include!`: the world's bindings and two tiny helpers.
wit_bindgen::generate!({
    world: "runner",
    path: "../../../shared/wit",
    generate_all,
});

#[allow(unused_imports)]
use alga::extension::types::HttpHeader;

#[allow(dead_code)]
fn respond(status: u16, content_type: &str, body: Vec<u8>) -> ExecuteResponse {
    ExecuteResponse {
        status,
        headers: vec![HttpHeader { name: "content-type".into(), value: content_type.into() }],
        body: Some(body),
    }
}

/// The value of `name` in the request's query string.
#[allow(dead_code)]
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// Minimal JSON string escaping, so fixtures need no JSON crate.
#[allow(dead_code)]
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Fixture;
export!(Fixture);

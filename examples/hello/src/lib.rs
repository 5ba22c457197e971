//! The sample extension: `GET /hello?name=Ada` answers a greeting and how many times this tenant
//! has greeted that name, kept in the tenant's storage with a compare-and-swap on the revision.

wit_bindgen::generate!({
    world: "runner",
    path: "../../shared/wit",
    generate_all,
});

use alga::extension::types::{HttpHeader, StorageEntry, StorageError};
use alga::extension::{logging, storage};

struct Hello;
export!(Hello);

/// The value of `name` in a URL's query string, if any.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// Adds one to the counter stored for `name`, retrying when another execution got there first.
fn count_visit(name: &str) -> Result<u64, StorageError> {
    for _ in 0..5 {
        let (count, revision) = match storage::get("visits", name) {
            Ok(e) => (String::from_utf8_lossy(&e.value).parse::<u64>().unwrap_or(0), e.revision),
            Err(StorageError::Missing) => (0, None),
            Err(e) => return Err(e),
        };
        let next = StorageEntry {
            namespace: "visits".into(),
            key: name.into(),
            value: (count + 1).to_string().into_bytes(),
            revision,
        };
        match storage::put(&next) {
            Ok(_) => return Ok(count + 1),
            Err(StorageError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StorageError::Conflict)
}

impl Guest for Hello {
    fn handler(request: ExecuteRequest) -> ExecuteResponse {
        let name = query_param(&request.http.url, "name").filter(|n| !n.is_empty()).unwrap_or_else(|| "world".into());
        let name: String = name.chars().filter(|c| c.is_alphanumeric() || *c == '-').take(64).collect();
        let (status, body) = match count_visit(&name) {
            Ok(n) => {
                logging::log_info(&format!("greeted {name} ({n})"));
                (200, format!("{{\"greeting\":\"Hello, {name}!\",\"visits\":{n}}}"))
            }
            Err(e) => {
                logging::log_error(&format!("storage failed: {e:?}"));
                (503, "{\"error\":\"storage unavailable\"}".to_string())
            }
        };
        ExecuteResponse {
            status,
            headers: vec![HttpHeader { name: "content-type".into(), value: "application/json".into() }],
            body: Some(body.into_bytes()),
        }
    }
}

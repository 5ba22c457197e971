//! JSON request bodies into typed commands, with errors that name the field.

use crate::service::problem::Problem;

/// Parses a JSON request body into `T`: 400 `invalid_json` when it is not JSON, 422 `code`
/// (with `title`) naming the field when it does not fit.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], code: &'static str, title: &str) -> Result<T, Problem> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| Problem::new(422, code, title).detail(json_error_detail(&e)))
}

/// Names where in a JSON body a field was wrong: `$.context: missing field `tenant_id``.
pub fn json_error_detail(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let at = if path == "." { "$".to_string() } else { format!("$.{path}") };
    format!("{at}: {}", e.inner())
}

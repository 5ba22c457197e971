//! Errors as `application/problem+json` (RFC 9457) with a stable machine code, mapped to HTTP in
//! one place (`crate::http::problem`). The service answers with these; it knows nothing of the
//! HTTP server.

use alga_shared::manifest::FieldError;
use serde::Serialize;

/// An API error: the status, a stable `code`, a title, and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: String,
    pub status: u16,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Per-field errors (invalid manifests, invalid installs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds for a `retry-after` header (quota refusals).
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: u16, code: &'static str, title: impl Into<String>) -> Self {
        Problem {
            kind: "about:blank",
            title: title.into(),
            status,
            code,
            detail: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(400, code, "bad request").detail(detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(404, code, "not found").detail(detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Problem::new(401, "unauthorized", "missing or wrong bearer token").detail(detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Problem::new(500, "internal_error", "the runner failed").detail(detail)
    }

    pub fn too_large(max: u64) -> Self {
        Problem::new(413, "payload_too_large", "request body too large")
            .detail(format!("the body is over the limit of {max} bytes"))
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl From<crate::registry::StoreError> for Problem {
    fn from(e: crate::registry::StoreError) -> Self {
        tracing::error!(error = %crate::error_chain(&e), "registry failure");
        match e {
            crate::registry::StoreError::Postgres(e) if e.is_unavailable() => {
                Problem::new(503, "storage_unavailable", "the database cannot be reached; retry later")
            }
            _ => Problem::internal("the registry database failed; see the service log"),
        }
    }
}

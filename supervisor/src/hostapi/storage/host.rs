//! `storage` in host-registry mode: every call goes to the host application's storage API,
//! `POST {base}/api/internal/ext-storage/install/{install_id}` with `x-runner-auth`, in Alga's
//! request and status mapping (10-alga-wire.md §B), so that several runner replicas share it
//! through the host. The host's semantics and limits hold, not 04-host-api.md's; the
//! differences are in docs/alga.md.

use std::sync::Arc;
use std::time::Duration;

use alga_shared::bindings::{StorageEntry, StorageError};
use alga_shared::protocol::HostReply;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_rustls::rustls;

use crate::hostapi::HostContext;
use crate::hostapi::forwarded::transport::operator_request;
use crate::hostapi::forwarded::{UNRESERVED, percent_encode};

/// The most a storage answer may be (a list page of 100 values of 64 KiB, base64, with JSON).
const MAX_ANSWER: usize = 16 << 20;
/// How long one call may take (Alga's runner allows 30 s), within the execution's deadline.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Entries asked for per list page (the host's maximum).
const PAGE: u32 = 100;

/// Where the host's storage API is.
#[derive(Clone)]
pub struct HostStorage {
    /// Without a trailing `/` or a terminal `/api`.
    pub base_url: String,
    /// `None`: storage calls answer `internal` (logged).
    pub token: Option<String>,
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for HostStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostStorage").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl HostStorage {
    pub fn new(base_url: &str, token: Option<String>, tls: Arc<rustls::ClientConfig>) -> Self {
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/api").unwrap_or(base).to_string();
        HostStorage { base_url: base, token, tls }
    }

    /// One call: the status and the JSON answer (`Value::Null` when there is none).
    async fn call(&self, ctx: &HostContext, body: Value, deadline: Instant) -> Result<(u16, Value), StorageError> {
        let Some(token) = &self.token else {
            tracing::error!("storage in host mode needs registry.storage_token (RUNNER_STORAGE_API_TOKEN)");
            return Err(StorageError::Internal);
        };
        let Some(install) = ctx.install_id.as_deref() else { return Err(StorageError::Internal) };
        let url = format!("{}/api/internal/ext-storage/install/{}", self.base_url, percent_encode(install, UNRESERVED));
        let headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-runner-auth".into(), token.clone()),
            ("x-request-id".into(), ctx.request_id.clone().unwrap_or_default()),
        ];
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let sent = operator_request(&self.tls, "POST", &url, headers, bytes, MAX_ANSWER);
        let deadline = deadline.min(Instant::now() + TIMEOUT);
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok((status, answer))) => Ok((status, serde_json::from_slice(&answer).unwrap_or(Value::Null))),
            Ok(Err(e)) => {
                tracing::warn!(request_id = ?ctx.request_id, error = %e, "the host's storage API failed");
                Err(StorageError::Internal)
            }
            Err(_) => {
                tracing::warn!(request_id = ?ctx.request_id, "the host's storage API did not answer in time");
                Err(StorageError::Internal)
            }
        }
    }
}

/// Alga's status mapping: 401, 403 and 429 deny, 404 is missing, 409 a conflict, anything
/// else (400 validation and limits included) internal.
fn error_of(status: u16) -> StorageError {
    match status {
        401 | 403 | 429 => StorageError::Denied,
        404 => StorageError::Missing,
        409 => StorageError::Conflict,
        _ => StorageError::Internal,
    }
}

/// A stored value's bytes, as Alga's runner reads them: `base64-bytes` metadata → base64; an
/// object with `_bytes_b64` → that; a string → its base64 decoding if it is one, else its UTF-8;
/// anything else → its JSON text.
fn value_bytes(value: &Value, metadata: &Value) -> Option<Vec<u8>> {
    if metadata.get("encoding").and_then(Value::as_str) == Some("base64-bytes") {
        return STANDARD.decode(value.as_str()?).ok();
    }
    if let Some(b64) = value.get("_bytes_b64").and_then(Value::as_str) {
        return STANDARD.decode(b64).ok();
    }
    match value {
        Value::String(s) => Some(STANDARD.decode(s).unwrap_or_else(|_| s.as_bytes().to_vec())),
        other => serde_json::to_vec(other).ok(),
    }
}

fn revision_of(v: &Value) -> Option<u64> {
    v.get("revision").and_then(Value::as_u64)
}

fn entry_of(namespace: &str, item: &Value) -> Option<StorageEntry> {
    let key = item.get("key")?.as_str()?.to_string();
    let value = value_bytes(item.get("value").unwrap_or(&Value::Null), item.get("metadata").unwrap_or(&Value::Null))?;
    Some(StorageEntry { namespace: namespace.to_string(), key, value, revision: revision_of(item) })
}

pub async fn get(s: &HostStorage, ctx: &HostContext, namespace: &str, key: &str, deadline: Instant) -> HostReply {
    let body = json!({ "operation": "get", "namespace": namespace, "key": key });
    HostReply::StorageEntry(match s.call(ctx, body, deadline).await {
        Ok((200, mut answer)) => {
            answer["key"] = json!(key);
            entry_of(namespace, &answer).ok_or(StorageError::Internal)
        }
        Ok((status, _)) => Err(error_of(status)),
        Err(e) => Err(e),
    })
}

pub async fn put(s: &HostStorage, ctx: &HostContext, e: StorageEntry, deadline: Instant) -> HostReply {
    let mut body = json!({
        "operation": "put",
        "namespace": e.namespace,
        "key": e.key,
        "value": STANDARD.encode(&e.value),
        "metadata": { "encoding": "base64-bytes" },
    });
    if let Some(r) = e.revision {
        body["ifRevision"] = json!(r);
    }
    HostReply::StorageEntry(match s.call(ctx, body, deadline).await {
        Ok((200 | 201, answer)) => Ok(StorageEntry { revision: revision_of(&answer), ..e }),
        Ok((status, _)) => Err(error_of(status)),
        Err(e) => Err(e),
    })
}

/// A delete the host answers `success: false` is of a key it does not have: `missing` (Alga's
/// runner says `conflict`).
pub async fn delete(s: &HostStorage, ctx: &HostContext, namespace: &str, key: &str, deadline: Instant) -> HostReply {
    let body = json!({ "operation": "delete", "namespace": namespace, "key": key });
    HostReply::StorageUnit(match s.call(ctx, body, deadline).await {
        Ok((200 | 204, answer)) if answer.get("success") == Some(&Value::Bool(false)) => Err(StorageError::Missing),
        Ok((200 | 204, _)) => Ok(()),
        Ok((status, _)) => Err(error_of(status)),
        Err(e) => Err(e),
    })
}

/// The guest's cursor is the last key it saw (as in local mode); the host's is its own encoding
/// of that key, base64url of `{"key": ...}` (Alga's `nextCursor`), so a guest pages through
/// everything (Alga's runner drops the cursor and serves only the first page).
pub async fn list(
    s: &HostStorage,
    ctx: &HostContext,
    namespace: &str,
    cursor: Option<&str>,
    deadline: Instant,
) -> HostReply {
    let mut body = json!({
        "operation": "list",
        "namespace": namespace,
        "includeValues": true,
        "includeMetadata": true,
        "limit": PAGE,
    });
    if let Some(c) = cursor {
        body["cursor"] = json!(URL_SAFE_NO_PAD.encode(json!({ "key": c }).to_string()));
    }
    HostReply::StorageEntries(match s.call(ctx, body, deadline).await {
        Ok((200, answer)) => match answer.get("items").and_then(Value::as_array) {
            Some(items) => items.iter().map(|i| entry_of(namespace, i).ok_or(StorageError::Internal)).collect(),
            None => Err(StorageError::Internal),
        },
        Ok((status, _)) => Err(error_of(status)),
        Err(e) => Err(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_as_alga_reads_them() {
        let b64 = json!({ "encoding": "base64-bytes" });
        assert_eq!(value_bytes(&json!("aGk="), &b64), Some(b"hi".to_vec()));
        assert_eq!(value_bytes(&json!({ "_bytes_b64": "aGk=" }), &Value::Null), Some(b"hi".to_vec()));
        assert_eq!(value_bytes(&json!("aGk="), &Value::Null), Some(b"hi".to_vec()));
        assert_eq!(value_bytes(&json!("not base64!"), &Value::Null), Some(b"not base64!".to_vec()));
        assert_eq!(value_bytes(&json!({ "a": 1 }), &Value::Null), Some(br#"{"a":1}"#.to_vec()));
        assert_eq!(value_bytes(&json!("%%%"), &b64), None, "undecodable: internal");
    }

    #[test]
    fn statuses_map_as_alga_maps_them() {
        for (status, want) in [
            (401, StorageError::Denied),
            (403, StorageError::Denied),
            (429, StorageError::Denied),
            (404, StorageError::Missing),
            (409, StorageError::Conflict),
            (400, StorageError::Internal),
            (500, StorageError::Internal),
        ] {
            assert_eq!(error_of(status), want, "{status}");
        }
    }

    #[test]
    fn the_base_loses_a_terminal_api() {
        let tls = crate::hostapi::fetch::FetchSettings::deny_all().tls;
        assert_eq!(
            HostStorage::new("https://psa.example.com/api/", None, tls.clone()).base_url,
            "https://psa.example.com"
        );
        assert_eq!(HostStorage::new("https://psa.example.com", None, tls).base_url, "https://psa.example.com");
    }
}

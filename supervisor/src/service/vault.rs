//! Vault Transit, for Alga's preferred secret envelopes (10-alga-wire.md §A): the envelope's
//! ciphertext goes to `POST {vault.address}/v1/{mount}/decrypt/{key_path}` with the token, and
//! the plaintext that comes back is the base64 of a JSON object of strings. The token is read
//! from `vault.token_file` on every call, so a rotated token needs no restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_rustls::rustls;

use super::secret_envelope::{SecretEnvelope, decrypt_failed, secrets_of};
use crate::config::VaultConfig;
use crate::hostapi::forwarded::transport::operator_request;
use crate::secrets::SecretMap;
use crate::service::problem::Problem;

/// Largest Vault answer read (a decrypt answer is a few KiB).
const MAX_ANSWER: usize = 1 << 20;

/// A configured Vault.
pub struct Vault {
    address: String,
    token: Token,
    mount: String,
    namespace: Option<String>,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

enum Token {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("address", &self.address).field("mount", &self.mount).finish_non_exhaustive()
    }
}

fn unavailable(detail: String) -> Problem {
    Problem::new(503, "secret_store_unavailable", "Vault cannot open the secret envelope now").detail(detail)
}

impl Vault {
    /// `None` when `vault.address` is not set.
    pub fn new(config: &VaultConfig, tls: Arc<rustls::ClientConfig>) -> Option<Vault> {
        let address = config.address.as_ref()?.trim_end_matches('/').to_string();
        let token = match (&config.token, &config.token_file) {
            (Some(t), _) => Token::Inline(t.clone()),
            (None, Some(f)) => Token::File(f.clone()),
            (None, None) => Token::File(PathBuf::from("/run/secrets/alga_vault_token")),
        };
        Some(Vault {
            address,
            token,
            mount: config.mount.clone(),
            namespace: config.namespace.clone().filter(|n| !n.trim().is_empty()),
            timeout: Duration::from_millis(config.timeout_ms),
            tls,
        })
    }

    fn token(&self) -> Result<String, Problem> {
        let token = match &self.token {
            Token::Inline(t) => t.trim().to_string(),
            Token::File(f) => std::fs::read_to_string(f)
                .map_err(|e| unavailable(format!("reading the Vault token {}: {e}", f.display())))?
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            return Err(unavailable("the Vault token is empty (vault.token_file)".into()));
        }
        Ok(token)
    }

    /// Decrypts a Vault Transit envelope into its secrets.
    pub async fn open(&self, envelope: &SecretEnvelope) -> Result<SecretMap, Problem> {
        let key = envelope.key_path.as_deref().map(str::trim).filter(|k| !k.is_empty()).ok_or_else(|| {
            decrypt_failed("$.secret_envelope.key_path: a Vault Transit envelope needs the Transit key's name")
        })?;
        let mount = envelope.mount.as_deref().map(str::trim).filter(|m| !m.is_empty()).unwrap_or(&self.mount);
        for (what, value) in [("key_path", key), ("mount", mount)] {
            if value.split('/').any(|s| s.is_empty() || s == "." || s == "..") || value.contains(['?', '#']) {
                return Err(decrypt_failed(format!("$.secret_envelope.{what}: `{value}` is not a Vault path")));
            }
        }
        let url = format!("{}/v1/{mount}/decrypt/{key}", self.address);
        let mut headers =
            vec![("content-type".to_string(), "application/json".to_string()), ("x-vault-token".into(), self.token()?)];
        if let Some(ns) = &self.namespace {
            headers.push(("x-vault-namespace".into(), ns.clone()));
        }
        let body = serde_json::to_vec(&json!({ "ciphertext": envelope.ciphertext_b64.trim() })).unwrap_or_default();
        let sent = operator_request(&self.tls, "POST", &url, headers, body, MAX_ANSWER);
        let (status, answer) = tokio::time::timeout(self.timeout, sent)
            .await
            .map_err(|_| unavailable(format!("Vault at {} did not answer within {:?}", self.address, self.timeout)))?
            .map_err(|e| unavailable(format!("Vault at {}: {e}", self.address)))?;
        if status >= 500 || status == 429 {
            return Err(unavailable(format!("Vault answered {status} to decrypt with `{mount}/{key}`")));
        }
        if status != 200 {
            return Err(decrypt_failed(format!(
                "Vault refused to decrypt with `{mount}/{key}` ({status}): check the key, the mount and the \
                 token's policy"
            )));
        }
        let plaintext = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.pointer("/data/plaintext").and_then(|p| p.as_str()).map(str::to_string))
            .ok_or_else(|| decrypt_failed("Vault's answer has no data.plaintext"))?;
        secrets_of(&plaintext, "the Vault plaintext")
    }
}

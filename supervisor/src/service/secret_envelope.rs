//! The Alga secret envelope of `/v1/execute` (10-alga-wire.md §A): `inline/base64` carries the
//! base64 of a JSON object string → string. Vault Transit envelopes are refused with a clear
//! error (this runner has no Vault configuration). An envelope past its `expires_at` is refused.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::secrets::SecretMap;
use crate::service::problem::Problem;

#[derive(Deserialize)]
pub struct SecretEnvelope {
    #[serde(default)]
    pub ciphertext_b64: String,
    #[serde(default)]
    pub algorithm: String,
    #[serde(default)]
    pub expires_at: Option<String>,
}

impl std::fmt::Debug for SecretEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEnvelope")
            .field("algorithm", &self.algorithm)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn decrypt_failed(detail: impl Into<String>) -> Problem {
    Problem::new(422, "secret_decrypt_failed", "the secret envelope cannot be opened").detail(detail)
}

impl SecretEnvelope {
    /// Opens the envelope at `now_ms` (Unix milliseconds).
    pub fn open(&self, now_ms: u64) -> Result<SecretMap, Problem> {
        if let Some(expires) = self.expires_at.as_deref().filter(|e| !e.trim().is_empty()) {
            let at = parse_rfc3339_ms(expires.trim()).ok_or_else(|| {
                decrypt_failed(format!("$.secret_envelope.expires_at: `{expires}` is not an RFC 3339 time"))
            })?;
            if at <= now_ms {
                return Err(Problem::new(422, "secret_envelope_expired", "the secret envelope has expired")
                    .detail(format!("$.secret_envelope.expires_at is {expires}; send a fresh envelope")));
            }
        }
        if self.ciphertext_b64.trim().is_empty() {
            return Ok(SecretMap::default());
        }
        let algorithm = self.algorithm.trim().to_ascii_lowercase();
        if algorithm.starts_with("vault-transit") {
            return Err(decrypt_failed(
                "$.secret_envelope.algorithm: Vault Transit envelopes are not supported by this runner; \
                 send inline/base64 envelopes or store the secrets with PUT .../secrets",
            ));
        }
        let bytes = STANDARD
            .decode(self.ciphertext_b64.trim())
            .map_err(|e| decrypt_failed(format!("$.secret_envelope.ciphertext_b64: not base64: {e}")))?;
        let map: BTreeMap<String, String> = serde_json::from_slice(&bytes).map_err(|_| {
            decrypt_failed("$.secret_envelope.ciphertext_b64: must be base64 of a JSON object of strings")
        })?;
        Ok(SecretMap(map))
    }
}

/// An RFC 3339 time (`2026-11-25T12:00:00.5Z`, `2026-11-25T13:00:00+01:00`) in Unix
/// milliseconds; `None` when it is not one, or before 1970.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2026-11-25T12:00:00.5Z"), Some(1_795_608_000_500));
        assert_eq!(parse_rfc3339_ms("2026-11-25T13:00:00+01:00"), Some(1_795_608_000_000));
        for bad in ["2026-11-25", "2026-13-01T00:00:00Z", "2026-11-25T00:00:00", "x026-11-25T00:00:00Z"] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    fn env(ct: &str, alg: &str, expires: Option<&str>) -> SecretEnvelope {
        SecretEnvelope { ciphertext_b64: ct.into(), algorithm: alg.into(), expires_at: expires.map(str::to_string) }
    }

    #[test]
    fn inline_envelopes_open_and_expired_or_vault_ones_do_not() {
        let ct = STANDARD.encode(br#"{"api_key":"k1"}"#);
        let now = 1_795_608_000_000;
        let map = env(&ct, "inline/base64", Some("2030-01-01T00:00:00Z")).open(now).unwrap();
        assert_eq!(map.0.get("api_key").map(String::as_str), Some("k1"));
        assert_eq!(env("", "inline/base64", None).open(now).unwrap(), SecretMap::default());
        let expired = env(&ct, "inline/base64", Some("2020-01-01T00:00:00Z")).open(now).unwrap_err();
        assert_eq!(expired.code, "secret_envelope_expired");
        assert_eq!(env(&ct, "vault-transit:v1", None).open(now).unwrap_err().code, "secret_decrypt_failed");
        let numbers = STANDARD.encode(br#"{"n":1}"#);
        assert_eq!(env(&numbers, "inline/base64", None).open(now).unwrap_err().code, "secret_decrypt_failed");
        assert!(!format!("{:?}", env(&ct, "inline/base64", None)).contains(&ct), "Debug hides the ciphertext");
    }
}

//! The Alga secret envelope of `/v1/execute` (10-alga-wire.md §A): `inline/base64` carries the
//! base64 of a JSON object string → string; `vault-transit:*` carries a Vault Transit ciphertext
//! whose plaintext is that base64 ([`super::vault`] decrypts it). An envelope past its
//! `expires_at` is refused.

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
    /// Vault Transit: the key's name (`ALGA_VAULT_TRANSIT_KEY` on the host).
    #[serde(default)]
    pub key_path: Option<String>,
    /// Vault Transit: the engine's mount (default `vault.mount`).
    #[serde(default)]
    pub mount: Option<String>,
}

/// What opening an envelope without Vault gives.
#[derive(Debug)]
pub enum Opened {
    Secrets(SecretMap),
    /// A Vault Transit envelope: decrypt it ([`super::vault::Vault::open`]).
    Vault,
}

impl std::fmt::Debug for SecretEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEnvelope")
            .field("algorithm", &self.algorithm)
            .field("expires_at", &self.expires_at)
            .field("key_path", &self.key_path)
            .field("mount", &self.mount)
            .finish_non_exhaustive()
    }
}

pub fn decrypt_failed(detail: impl Into<String>) -> Problem {
    Problem::new(422, "secret_decrypt_failed", "the secret envelope cannot be opened").detail(detail)
}

impl SecretEnvelope {
    /// Opens the envelope at `now_ms` (Unix milliseconds), or says it needs Vault.
    pub fn open(&self, now_ms: u64) -> Result<Opened, Problem> {
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
            return Ok(Opened::Secrets(SecretMap::default()));
        }
        if self.is_vault() {
            return Ok(Opened::Vault);
        }
        secrets_of(self.ciphertext_b64.trim(), "$.secret_envelope.ciphertext_b64").map(Opened::Secrets)
    }

    /// Whether the envelope is Vault Transit (`algorithm` starts with `vault-transit`).
    pub fn is_vault(&self) -> bool {
        self.algorithm.trim().to_ascii_lowercase().starts_with("vault-transit")
    }
}

/// The secrets in `b64`: base64 of a JSON object of strings (`what` names it in errors).
pub fn secrets_of(b64: &str, what: &str) -> Result<SecretMap, Problem> {
    let bytes = STANDARD.decode(b64).map_err(|e| decrypt_failed(format!("{what}: not base64: {e}")))?;
    let map: BTreeMap<String, String> = serde_json::from_slice(&bytes)
        .map_err(|_| decrypt_failed(format!("{what}: must be base64 of a JSON object of strings")))?;
    Ok(SecretMap(map))
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
        SecretEnvelope {
            ciphertext_b64: ct.into(),
            algorithm: alg.into(),
            expires_at: expires.map(str::to_string),
            key_path: None,
            mount: None,
        }
    }

    #[test]
    fn inline_envelopes_open_vault_ones_need_vault_and_expired_ones_do_not() {
        let ct = STANDARD.encode(br#"{"api_key":"k1"}"#);
        let now = 1_795_608_000_000;
        let secrets = |o: Opened| match o {
            Opened::Secrets(s) => s,
            Opened::Vault => panic!("not a Vault envelope"),
        };
        let map = secrets(env(&ct, "inline/base64", Some("2030-01-01T00:00:00Z")).open(now).unwrap());
        assert_eq!(map.0.get("api_key").map(String::as_str), Some("k1"));
        assert_eq!(secrets(env("", "inline/base64", None).open(now).unwrap()), SecretMap::default());
        let expired = env(&ct, "inline/base64", Some("2020-01-01T00:00:00Z")).open(now).unwrap_err();
        assert_eq!(expired.code, "secret_envelope_expired");
        assert!(matches!(env("vault:v1:x", " Vault-Transit:v1", None).open(now).unwrap(), Opened::Vault));
        let expired = env("vault:v1:x", "vault-transit:v1", Some("2020-01-01T00:00:00Z")).open(now).unwrap_err();
        assert_eq!(expired.code, "secret_envelope_expired", "expiry is checked before Vault is asked");
        let numbers = STANDARD.encode(br#"{"n":1}"#);
        assert_eq!(env(&numbers, "inline/base64", None).open(now).unwrap_err().code, "secret_decrypt_failed");
        assert!(!format!("{:?}", env(&ct, "inline/base64", None)).contains(&ct), "Debug hides the ciphertext");
    }
}

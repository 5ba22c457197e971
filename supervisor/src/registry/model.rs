//! The records of the registry (06-data.md). Stored as one schema-version byte followed by JSON,
//! so a record is readable with standard tools and old layouts are recognisable.

use std::collections::BTreeMap;

use alga_shared::limits::LimitRequest;
use alga_shared::manifest::{Endpoint, EventSubscription, Ui};
use serde::{Deserialize, Serialize};

/// The layout version of every record written by this build.
pub const SCHEMA_VERSION: u8 = 1;

/// An extension (all its versions share it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionRecord {
    /// UUID v7.
    pub id: String,
    /// Reverse-domain manifest name, unique.
    pub name: String,
    pub publisher: String,
    /// Unix milliseconds.
    pub created_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    Active,
    /// No new installs; existing installs keep running until upgraded.
    Yanked,
    /// The registry has the record but the bundle's blob is missing.
    Unavailable,
}

/// One published version of an extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub extension_id: String,
    pub version: String,
    /// UUID v7.
    pub version_id: String,
    pub runtime: String,
    pub capabilities: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    pub events: Vec<EventSubscription>,
    /// The manifest's `egress`; `None` when it has none (no list of its own). Records written
    /// before this distinction hold `[]`, which still bounds, as it did when they were written.
    #[serde(default)]
    pub egress: Option<Vec<String>>,
    pub ui: Option<Ui>,
    pub entry: String,
    pub content_hash: String,
    pub state: VersionState,
    pub created_at: u64,
}

/// A stored, verified bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    pub content_hash: String,
    pub extension_id: String,
    pub version_id: String,
    pub size: u64,
    /// The `.minisig` text.
    pub signature: String,
    pub signer_key_id: String,
    pub trusted_comment: String,
    pub verified_at: u64,
    /// SHA-256 (hex) of the component inside the bundle, if it has one.
    pub component_sha256: Option<String>,
    /// SHA-256 (hex) of the compiled artifact, per engine fingerprint.
    pub artifacts: BTreeMap<String, String>,
    /// Strong ETag of each file of the `ui/` tree (paths relative to `ui/`), computed at publish.
    #[serde(default)]
    pub ui_etags: BTreeMap<String, String>,
}

/// A tenant's install of an extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub tenant: String,
    pub extension_id: String,
    /// UUID v7, stable across upgrades.
    pub install_id: String,
    pub version_id: String,
    pub version: String,
    pub content_hash: String,
    pub granted_capabilities: Vec<String>,
    pub config: BTreeMap<String, String>,
    /// `None`: no install-level restriction beyond the manifest and the operator.
    pub egress_allowlist: Option<Vec<String>>,
    pub limits: LimitRequest,
    pub enabled: bool,
    pub created_at: u64,
    pub updated_at: u64,
}

/// An install's subscription to an event topic (from its version's manifest `events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub tenant: String,
    pub topic: String,
    pub install_id: String,
    pub extension_id: String,
    pub handler: String,
}

/// What executions of one extension used in one window (`extension_quota_usage`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub invocations: u64,
    /// Wall-clock milliseconds the guest ran (an upper bound of its CPU time).
    pub cpu_ms: u64,
    /// Peak memory (MiB) × duration (ms), summed.
    pub memory_mib_ms: u64,
    pub fuel: u64,
    pub egress_bytes: u64,
}

impl UsageRecord {
    pub fn add(&mut self, other: &UsageRecord) {
        self.invocations += other.invocations;
        self.cpu_ms += other.cpu_ms;
        self.memory_mib_ms += other.memory_mib_ms;
        self.fuel += other.fuel;
        self.egress_bytes += other.egress_bytes;
    }
}

/// One execution, as the execution log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub execution_id: String,
    pub request_id: String,
    pub tenant: String,
    pub extension_id: String,
    pub install_id: String,
    pub version_id: String,
    pub content_hash: String,
    pub method: String,
    pub path: String,
    /// The endpoint matched (gateway), or the event topic's handler (events).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// What started it: `envelope`, `gateway` or `event:<topic>`.
    #[serde(default)]
    pub trigger: String,
    /// The envelope status the caller got.
    pub status: u16,
    /// The outcome's label (`completed`, `timeout`, ...).
    pub outcome: String,
    pub error: Option<String>,
    /// Operator-facing detail (never shown to the caller).
    pub detail: Option<String>,
    pub duration_ms: f64,
    pub memory_peak_bytes: u64,
    pub fuel: u64,
    pub egress_bytes: u64,
    pub host_calls: u32,
    /// The last log lines (at most 100), `[level] message`.
    pub logs: Vec<String>,
    pub created_at: u64,
    /// Position in the tenant's chain (1 for the first record).
    #[serde(default)]
    pub seq: u64,
    /// SHA-256 of the tenant's previous record as stored ([`super::chain`]).
    #[serde(default)]
    pub prev_hash: String,
}

/// Versions newest (highest semver) first; strings that are not semver compare as text.
pub fn newest_first(a: &VersionRecord, b: &VersionRecord) -> std::cmp::Ordering {
    match (semver::Version::parse(&a.version), semver::Version::parse(&b.version)) {
        (Ok(x), Ok(y)) => y.cmp(&x),
        _ => b.version.cmp(&a.version),
    }
}

/// The opaque cursor of the execution log page that ends at record `seq` (the hex of the record
/// key's order bytes, newest first).
pub fn execution_cursor(seq: u64) -> String {
    hex::encode((u64::MAX - seq).to_be_bytes())
}

/// The record a cursor ends at (`None`: not a cursor this API gave out).
pub fn cursor_seq(cursor: &str) -> Option<u64> {
    let bytes: [u8; 8] = hex::decode(cursor).ok()?.try_into().ok()?;
    Some(u64::MAX - u64::from_be_bytes(bytes))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A fresh UUID v7 (time-ordered).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![SCHEMA_VERSION];
    // Serialising these plain structs cannot fail.
    out.extend(serde_json::to_vec(record).unwrap_or_default());
    out
}

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record written by a newer alga-runner (schema {0}, this build reads {SCHEMA_VERSION})")]
    Newer(u8),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        Some((&SCHEMA_VERSION, json)) => serde_json::from_slice(json).map_err(|e| DecodeError::Corrupt(e.to_string())),
        Some((&v, _)) if v > SCHEMA_VERSION => Err(DecodeError::Newer(v)),
        Some((v, _)) => Err(DecodeError::Corrupt(format!("unknown schema {v}"))),
        None => Err(DecodeError::Corrupt("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_their_schema_byte() {
        let r = ExtensionRecord { id: new_id(), name: "com.example.a".into(), publisher: "E".into(), created_at: 1 };
        let bytes = encode(&r);
        assert_eq!(bytes[0], SCHEMA_VERSION);
        assert_eq!(decode::<ExtensionRecord>(&bytes).unwrap(), r);
        let mut newer = bytes.clone();
        newer[0] = SCHEMA_VERSION + 1;
        assert!(matches!(decode::<ExtensionRecord>(&newer), Err(DecodeError::Newer(_))));
    }
}

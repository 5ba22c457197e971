//! The execution log as a hash chain per tenant (tamper-evident): every record carries its
//! sequence number and the SHA-256 of the previous record of the same tenant, and the chain's
//! head (the newest hash) and anchor (the hash of the last record retention removed) are kept
//! beside the records. Changing, removing or reordering a record breaks the chain at that point;
//! [`verify`] finds where. Operators who copy the head hash elsewhere can also detect a rewrite of
//! the whole chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{ExecutionRecord, encode};

/// The `prev_hash` of a tenant's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain's state for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// The sequence number the next record gets (the first is 1).
    pub next_seq: u64,
    /// Hash of the newest record (GENESIS when there is none yet).
    pub head_hash: String,
    /// Sequence number of the oldest record retention kept.
    pub first_seq: u64,
    /// The `prev_hash` the oldest kept record must carry.
    pub anchor_hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead { next_seq: 1, head_hash: GENESIS.into(), first_seq: 1, anchor_hash: GENESIS.into() }
    }
}

impl ChainHead {
    /// How many records the chain holds.
    pub fn len(&self) -> u64 {
        self.next_seq - self.first_seq
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Retention of the execution log, per tenant.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_records: u64,
    /// Records older than this (Unix ms) go.
    pub max_age_ms: u64,
}

/// Records pruned per append at most (the periodic sweep takes the rest).
pub const PRUNE_PER_APPEND: usize = 16;

impl Retention {
    /// Whether a chain of `len` records keeps its oldest one, created at `created_at` (Unix ms).
    /// The newest record always stays, so the chain keeps its head.
    pub fn keeps_oldest(&self, len: u64, created_at: u64, now: u64) -> bool {
        len <= 1 || (len <= self.max_records && created_at >= now.saturating_sub(self.max_age_ms))
    }
}

/// SHA-256 (hex) of a record as stored.
pub fn hash_of_bytes(stored: &[u8]) -> String {
    hex::encode(Sha256::digest(stored))
}

/// SHA-256 (hex) of a record, over its stored encoding.
pub fn record_hash(r: &ExecutionRecord) -> String {
    hash_of_bytes(&encode(r))
}

/// What a verification found.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub tenant: String,
    pub records: u64,
    pub first_seq: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// Empty when the chain is intact.
    pub problems: Vec<String>,
}

impl ChainReport {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks `oldest_first` (every record of the tenant, oldest first) against `head`.
pub fn verify(tenant: &str, head: &ChainHead, oldest_first: impl IntoIterator<Item = ExecutionRecord>) -> ChainReport {
    let mut problems = Vec::new();
    let mut expected_seq = head.first_seq;
    let mut prev = head.anchor_hash.clone();
    let mut count = 0;
    for r in oldest_first {
        count += 1;
        if r.tenant != tenant {
            problems.push(format!("record {} belongs to tenant `{}`", r.execution_id, r.tenant));
        }
        if r.seq != expected_seq {
            problems.push(format!("expected record #{expected_seq}, found #{} ({})", r.seq, r.execution_id));
        }
        if r.prev_hash != prev {
            problems.push(format!(
                "record #{} ({}) does not follow its predecessor: prev_hash {} but the previous record hashes to {}",
                r.seq, r.execution_id, r.prev_hash, prev
            ));
        }
        expected_seq = r.seq + 1;
        prev = record_hash(&r);
    }
    if expected_seq != head.next_seq {
        problems.push(format!(
            "the chain head says the newest record is #{}, the newest found is #{}",
            head.next_seq.saturating_sub(1),
            expected_seq.saturating_sub(1)
        ));
    }
    if prev != head.head_hash {
        problems.push(format!("the newest record hashes to {prev}, the chain head holds {}", head.head_hash));
    }
    ChainReport {
        tenant: tenant.to_string(),
        records: count,
        first_seq: head.first_seq,
        head_seq: head.next_seq.saturating_sub(1),
        head_hash: head.head_hash.clone(),
        problems,
    }
}

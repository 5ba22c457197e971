//! The `storage` backend on sled: the `kv` tree of the supervisor's database (06-data.md).
//!
//! Keys are byte-ordered so a namespace's keys scan in key order:
//! `tenant 0x00 install 0x00 'v' <namespace length, u16 BE> namespace key` holds a value, and
//! `tenant 0x00 install 0x00 'u'` the install's usage (bytes, keys per namespace). The namespace
//! is length-prefixed, so no namespace or key content can reach into another's range. A write and
//! its usage change are one transaction, so the quotas hold under concurrent executions.
//! Durability is the caller's: writes are made durable by the database's flush (group commit).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::db::SledDb;

use super::{KvError, KvStore, PutResult, Scope, Stored, limits};

/// Layout version of stored values and usage records.
const VALUE_SCHEMA: u8 = 1;

#[derive(Debug, Clone)]
pub struct SledKv {
    db: Arc<SledDb>,
}

/// The tree of the database the values and usage records live in.
const TREE: &str = "kv";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Usage {
    /// Key bytes plus value bytes over the install.
    bytes: u64,
    /// Keys per namespace (a namespace with no key is not listed).
    namespaces: BTreeMap<String, u32>,
}

fn scope_prefix(scope: &Scope) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.tenant.len() + scope.install.len() + 2);
    k.extend_from_slice(scope.tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(scope.install.as_bytes());
    k.push(0);
    k
}

fn namespace_prefix(scope: &Scope, namespace: &str) -> Vec<u8> {
    let mut k = scope_prefix(scope);
    k.push(b'v');
    // Namespaces are at most 128 characters (512 bytes): the length always fits.
    k.extend_from_slice(&(namespace.len() as u16).to_be_bytes());
    k.extend_from_slice(namespace.as_bytes());
    k
}

fn value_key(scope: &Scope, namespace: &str, key: &str) -> Vec<u8> {
    let mut k = namespace_prefix(scope, namespace);
    k.extend_from_slice(key.as_bytes());
    k
}

fn usage_key(scope: &Scope) -> Vec<u8> {
    let mut k = scope_prefix(scope);
    k.push(b'u');
    k
}

fn encode_value(revision: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + value.len());
    out.push(VALUE_SCHEMA);
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(&crate::registry::now_ms().to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_value(bytes: &[u8]) -> Result<Stored, KvError> {
    match bytes.split_first() {
        Some((&VALUE_SCHEMA, rest)) if rest.len() >= 16 => {
            let mut rev = [0u8; 8];
            rev.copy_from_slice(&rest[..8]);
            Ok(Stored { value: rest[16..].to_vec(), revision: u64::from_be_bytes(rev) })
        }
        _ => Err(KvError("corrupt stored value (unknown layout)".into())),
    }
}

fn decode_usage(bytes: Option<&[u8]>) -> Result<Usage, KvError> {
    match bytes {
        None => Ok(Usage::default()),
        Some([VALUE_SCHEMA, json @ ..]) => {
            serde_json::from_slice(json).map_err(|e| KvError(format!("corrupt usage record: {e}")))
        }
        Some(_) => Err(KvError("corrupt usage record (unknown layout)".into())),
    }
}

fn encode_usage(u: &Usage) -> Vec<u8> {
    let mut out = vec![VALUE_SCHEMA];
    out.extend(serde_json::to_vec(u).unwrap_or_default());
    out
}

/// Why a transaction stopped early.
enum Stop {
    Decided(PutResult),
    Corrupt(KvError),
}

fn db_error(e: sled::Error) -> KvError {
    KvError(format!("database: {e}"))
}

impl SledKv {
    pub fn new(db: Arc<SledDb>) -> Self {
        SledKv { db }
    }

    fn tree(&self) -> Result<sled::Tree, KvError> {
        self.db.tree(TREE).map_err(db_error)
    }

    /// Every stored value: (scope, namespace, key, value) (for `migrate`).
    pub fn dump(&self) -> Result<Vec<(Scope, String, String, Stored)>, KvError> {
        let corrupt = || KvError("corrupt storage key".into());
        let mut out = Vec::new();
        for kv in self.tree()?.iter() {
            let (k, v) = kv.map_err(db_error)?;
            // tenant 0 install 0 'v' <u16 namespace length> namespace key (usage records: 'u')
            let mut parts = k.splitn(3, |b| *b == 0);
            let (Some(tenant), Some(install), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(corrupt());
            };
            let Some((&b'v', rest)) = rest.split_first() else { continue };
            let len =
                u16::from_be_bytes(rest.get(..2).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?) as usize;
            let namespace = rest.get(2..2 + len).ok_or_else(corrupt)?;
            let key = &rest[2 + len..];
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupt());
            let scope = Scope { tenant: text(tenant)?, install: text(install)? };
            out.push((scope, text(namespace)?, text(key)?, decode_value(&v)?));
        }
        Ok(out)
    }

    /// A backend on a private temporary database (one-off local runs: `alga-runner exec`, tests
    /// of the sandbox core). Gone when the process ends.
    pub fn temporary() -> Result<Self, KvError> {
        Ok(SledKv { db: Arc::new(SledDb::temporary().map_err(db_error)?) })
    }
}

#[async_trait::async_trait]
impl KvStore for SledKv {
    async fn get(&self, scope: &Scope, namespace: &str, key: &str) -> Result<Option<Stored>, KvError> {
        self.tree()?.get(value_key(scope, namespace, key)).map_err(db_error)?.map(|v| decode_value(&v)).transpose()
    }

    async fn put(
        &self,
        scope: &Scope,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<PutResult, KvError> {
        let vkey = value_key(scope, namespace, key);
        let ukey = usage_key(scope);
        let result = self.tree()?.transaction(|t| {
            let stop = |s| Err(ConflictableTransactionError::Abort(s));
            let current = match t.get(&vkey)? {
                Some(bytes) => match decode_value(&bytes) {
                    Ok(s) => Some(s),
                    Err(e) => return stop(Stop::Corrupt(e)),
                },
                None => None,
            };
            if let Some(want) = expected
                && current.as_ref().map(|c| c.revision) != Some(want)
            {
                return stop(Stop::Decided(PutResult::Conflict));
            }
            let mut usage = match decode_usage(t.get(&ukey)?.as_deref()) {
                Ok(u) => u,
                Err(e) => return stop(Stop::Corrupt(e)),
            };
            if current.is_none() {
                let keys = usage.namespaces.get(namespace).copied().unwrap_or(0);
                if keys as usize >= limits::KEYS_PER_NAMESPACE
                    || (keys == 0 && usage.namespaces.len() >= limits::NAMESPACES)
                {
                    return stop(Stop::Decided(PutResult::QuotaExceeded));
                }
            }
            let old_bytes = current.as_ref().map_or(0, |c| (key.len() + c.value.len()) as u64);
            let bytes = usage.bytes.saturating_sub(old_bytes) + (key.len() + value.len()) as u64;
            if bytes > limits::BYTES_PER_INSTALL {
                return stop(Stop::Decided(PutResult::QuotaExceeded));
            }
            let revision = current.as_ref().map_or(1, |c| c.revision + 1);
            usage.bytes = bytes;
            if current.is_none() {
                *usage.namespaces.entry(namespace.to_string()).or_default() += 1;
            }
            t.insert(vkey.as_slice(), encode_value(revision, &value))?;
            t.insert(ukey.as_slice(), encode_usage(&usage))?;
            Ok(PutResult::Written { revision })
        });
        match result {
            Ok(r) => Ok(r),
            Err(TransactionError::Abort(Stop::Decided(r))) => Ok(r),
            Err(TransactionError::Abort(Stop::Corrupt(e))) => Err(e),
            Err(TransactionError::Storage(e)) => Err(db_error(e)),
        }
    }

    async fn delete(&self, scope: &Scope, namespace: &str, key: &str) -> Result<bool, KvError> {
        let vkey = value_key(scope, namespace, key);
        let ukey = usage_key(scope);
        let result = self.tree()?.transaction(|t| {
            let Some(old) = t.remove(vkey.as_slice())? else { return Ok(false) };
            let old_len = old.len().saturating_sub(17);
            let mut usage = decode_usage(t.get(&ukey)?.as_deref())
                .map_err(|e| ConflictableTransactionError::Abort(Stop::Corrupt(e)))?;
            usage.bytes = usage.bytes.saturating_sub((key.len() + old_len) as u64);
            if let Some(n) = usage.namespaces.get_mut(namespace) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    usage.namespaces.remove(namespace);
                }
            }
            t.insert(ukey.as_slice(), encode_usage(&usage))?;
            Ok(true)
        });
        match result {
            Ok(existed) => Ok(existed),
            Err(TransactionError::Abort(Stop::Corrupt(e))) => Err(e),
            Err(TransactionError::Abort(Stop::Decided(_))) => Err(KvError("unexpected abort".into())),
            Err(TransactionError::Storage(e)) => Err(db_error(e)),
        }
    }

    async fn list(
        &self,
        scope: &Scope,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, KvError> {
        let prefix = namespace_prefix(scope, namespace);
        let start = match after {
            Some(a) => Bound::Excluded(value_key(scope, namespace, a)),
            None => Bound::Included(prefix.clone()),
        };
        let mut out = Vec::new();
        for kv in self.tree()?.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = kv.map_err(db_error)?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let key =
                String::from_utf8(k[prefix.len()..].to_vec()).map_err(|_| KvError("corrupt key (not UTF-8)".into()))?;
            out.push((key, decode_value(&v)?));
        }
        Ok(out)
    }

    async fn purge(&self, scope: &Scope) -> Result<u64, KvError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in self.tree()?.scan_prefix(scope_prefix(scope)).keys() {
            batch.remove(k.map_err(db_error)?);
            n += 1;
        }
        self.tree()?.apply_batch(batch).map_err(db_error)?;
        Ok(n)
    }

    async fn flush(&self) -> Result<(), KvError> {
        // An fsync: off the async workers.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| KvError(format!("the flush task failed: {e}")))?
            .map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(t: &str, i: &str) -> Scope {
        Scope { tenant: t.into(), install: i.into() }
    }

    #[tokio::test]
    async fn a_namespace_cannot_reach_into_another() {
        let kv = SledKv::temporary().unwrap();
        let s = scope("t", "i");
        // Without the length prefix, ("a", "bc") and ("ab", "c") would share bytes.
        kv.put(&s, "a", "bc", b"1".to_vec(), None).await.unwrap();
        kv.put(&s, "ab", "c", b"2".to_vec(), None).await.unwrap();
        assert_eq!(kv.list(&s, "a", None, 100).await.unwrap().len(), 1);
        assert_eq!(kv.list(&s, "ab", None, 100).await.unwrap().len(), 1);
        assert_eq!(kv.get(&s, "a", "bc").await.unwrap().unwrap().value, b"1");
    }

    #[tokio::test]
    async fn usage_follows_writes_and_deletes_and_purge_empties_one_install() {
        let kv = SledKv::temporary().unwrap();
        let (a, b) = (scope("t", "i1"), scope("t", "i2"));
        kv.put(&a, "ns", "k", vec![0; 10], None).await.unwrap();
        kv.put(&a, "ns", "k", vec![0; 20], None).await.unwrap();
        kv.put(&b, "ns", "k", vec![0; 5], None).await.unwrap();
        let usage = decode_usage(kv.tree().unwrap().get(usage_key(&a)).unwrap().as_deref()).unwrap();
        assert_eq!(usage.bytes, 21);
        assert_eq!(usage.namespaces.get("ns"), Some(&1));
        assert!(kv.delete(&a, "ns", "k").await.unwrap());
        assert!(!kv.delete(&a, "ns", "k").await.unwrap());
        let usage = decode_usage(kv.tree().unwrap().get(usage_key(&a)).unwrap().as_deref()).unwrap();
        assert_eq!((usage.bytes, usage.namespaces.len()), (0, 0));
        kv.put(&a, "ns", "x", vec![1], None).await.unwrap();
        assert_eq!(kv.purge(&a).await.unwrap(), 2, "the value and the usage record");
        assert!(kv.get(&a, "ns", "x").await.unwrap().is_none());
        assert_eq!(kv.get(&b, "ns", "k").await.unwrap().unwrap().value, vec![0; 5], "the other install keeps its data");
    }
}

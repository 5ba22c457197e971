//! `storage`: a key-value store scoped by (tenant, install), with the semantics and limits of
//! 04-host-api.md. The rules live here; a [`KvStore`] backend only stores (in memory for now).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;

use alga_shared::bindings::{StorageEntry, StorageError};
use alga_shared::protocol::HostReply;

use super::HostContext;

/// Limits of the storage API (04-host-api.md).
pub mod limits {
    pub const NAMESPACE_CHARS: usize = 128;
    pub const KEY_CHARS: usize = 256;
    pub const VALUE_BYTES: usize = 64 * 1024;
    pub const NAMESPACES: usize = 32;
    pub const KEYS_PER_NAMESPACE: usize = 5_120;
    pub const BYTES_PER_INSTALL: u64 = 256 * 1024 * 1024;
    pub const LIST_PAGE: usize = 100;
}

/// Whose data: one tenant's install.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub tenant: String,
    pub install: String,
}

/// A stored value and its revision (1 for the first write, +1 per write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub value: Vec<u8>,
    pub revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    Written {
        revision: u64,
    },
    /// Compare-and-swap failed: the revision differs or the key is absent.
    Conflict,
    /// The install's namespace, key or byte quota would be exceeded.
    QuotaExceeded,
}

#[derive(Debug, thiserror::Error)]
#[error("storage backend: {0}")]
pub struct KvError(pub String);

/// A storage backend. Implementations enforce the quotas in [`limits`] atomically with writes.
pub trait KvStore: Send + Sync + fmt::Debug {
    fn get(&self, scope: &Scope, namespace: &str, key: &str) -> Result<Option<Stored>, KvError>;
    fn put(
        &self,
        scope: &Scope,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<PutResult, KvError>;
    /// Returns whether the key existed.
    fn delete(&self, scope: &Scope, namespace: &str, key: &str) -> Result<bool, KvError>;
    /// Up to `limit` entries in key order, strictly after `after`.
    fn list(
        &self,
        scope: &Scope,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, KvError>;
}

fn valid_namespace(ns: &str) -> bool {
    let n = ns.chars().count();
    (1..=limits::NAMESPACE_CHARS).contains(&n)
}

fn valid_key(key: &str) -> bool {
    let n = key.chars().count();
    (1..=limits::KEY_CHARS).contains(&n) && !key.contains('/')
}

fn entry(namespace: &str, key: &str, stored: Stored) -> StorageEntry {
    StorageEntry { namespace: namespace.into(), key: key.into(), value: stored.value, revision: Some(stored.revision) }
}

fn backend_failure(e: KvError) -> StorageError {
    tracing::error!(error = %e, "storage backend failed");
    StorageError::Internal
}

pub fn get(ctx: &HostContext, namespace: &str, key: &str) -> HostReply {
    HostReply::StorageEntry((|| {
        if !valid_namespace(namespace) || !valid_key(key) {
            return Err(StorageError::Denied);
        }
        match ctx.storage.get(&ctx.storage_scope(), namespace, key).map_err(backend_failure)? {
            Some(s) => Ok(entry(namespace, key, s)),
            None => Err(StorageError::Missing),
        }
    })())
}

pub fn put(ctx: &HostContext, e: StorageEntry) -> HostReply {
    HostReply::StorageEntry((|| {
        if !valid_namespace(&e.namespace) || !valid_key(&e.key) || e.value.len() > limits::VALUE_BYTES {
            return Err(StorageError::Denied);
        }
        let result = ctx
            .storage
            .put(&ctx.storage_scope(), &e.namespace, &e.key, e.value.clone(), e.revision)
            .map_err(backend_failure)?;
        match result {
            PutResult::Written { revision } => {
                Ok(StorageEntry { namespace: e.namespace, key: e.key, value: e.value, revision: Some(revision) })
            }
            PutResult::Conflict => Err(StorageError::Conflict),
            PutResult::QuotaExceeded => Err(StorageError::Denied),
        }
    })())
}

pub fn delete(ctx: &HostContext, namespace: &str, key: &str) -> HostReply {
    HostReply::StorageUnit((|| {
        if !valid_namespace(namespace) || !valid_key(key) {
            return Err(StorageError::Denied);
        }
        // Alga gap: deleting a missing key said `conflict`; here it is `missing`.
        match ctx.storage.delete(&ctx.storage_scope(), namespace, key).map_err(backend_failure)? {
            true => Ok(()),
            false => Err(StorageError::Missing),
        }
    })())
}

pub fn list(ctx: &HostContext, namespace: &str, cursor: Option<&str>) -> HostReply {
    HostReply::StorageEntries((|| {
        if !valid_namespace(namespace) {
            return Err(StorageError::Denied);
        }
        let page =
            ctx.storage.list(&ctx.storage_scope(), namespace, cursor, limits::LIST_PAGE).map_err(backend_failure)?;
        Ok(page.into_iter().map(|(k, s)| entry(namespace, &k, s)).collect())
    })())
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct InstallData {
    namespaces: BTreeMap<String, BTreeMap<String, Stored>>,
    bytes: u64,
}

/// An in-memory backend. Not durable: the service uses it for now, so guest storage does not
/// survive a restart yet (docs/service.md, "Not yet").
#[derive(Debug, Default)]
pub struct MemoryKv {
    data: Mutex<HashMap<Scope, InstallData>>,
}

impl MemoryKv {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Scope, InstallData>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KvStore for MemoryKv {
    fn get(&self, scope: &Scope, namespace: &str, key: &str) -> Result<Option<Stored>, KvError> {
        Ok(self.lock().get(scope).and_then(|d| d.namespaces.get(namespace)).and_then(|n| n.get(key)).cloned())
    }

    fn put(
        &self,
        scope: &Scope,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<PutResult, KvError> {
        let mut all = self.lock();
        let data = all.entry(scope.clone()).or_default();
        let ns_count = data.namespaces.len();
        let current = data.namespaces.get(namespace).and_then(|n| n.get(key)).cloned();
        if let Some(want) = expected
            && current.as_ref().map(|c| c.revision) != Some(want)
        {
            return Ok(PutResult::Conflict);
        }
        let keys_in_ns = data.namespaces.get(namespace).map_or(0, BTreeMap::len);
        if current.is_none()
            && (keys_in_ns >= limits::KEYS_PER_NAMESPACE || (keys_in_ns == 0 && ns_count >= limits::NAMESPACES))
        {
            return Ok(PutResult::QuotaExceeded);
        }
        let old_bytes = current.as_ref().map_or(0, |c| (key.len() + c.value.len()) as u64);
        let new_bytes = (key.len() + value.len()) as u64;
        let bytes = data.bytes - old_bytes + new_bytes;
        if bytes > limits::BYTES_PER_INSTALL {
            return Ok(PutResult::QuotaExceeded);
        }
        let revision = current.map_or(1, |c| c.revision + 1);
        data.bytes = bytes;
        data.namespaces.entry(namespace.to_string()).or_default().insert(key.to_string(), Stored { value, revision });
        Ok(PutResult::Written { revision })
    }

    fn delete(&self, scope: &Scope, namespace: &str, key: &str) -> Result<bool, KvError> {
        let mut all = self.lock();
        let Some(data) = all.get_mut(scope) else {
            return Ok(false);
        };
        let Some(ns) = data.namespaces.get_mut(namespace) else {
            return Ok(false);
        };
        let Some(old) = ns.remove(key) else {
            return Ok(false);
        };
        data.bytes -= (key.len() + old.value.len()) as u64;
        if ns.is_empty() {
            data.namespaces.remove(namespace);
        }
        Ok(true)
    }

    fn list(
        &self,
        scope: &Scope,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, KvError> {
        let all = self.lock();
        let Some(ns) = all.get(scope).and_then(|d| d.namespaces.get(namespace)) else {
            return Ok(Vec::new());
        };
        let iter: Box<dyn Iterator<Item = (&String, &Stored)>> = match after {
            Some(a) => Box::new(ns.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))),
            None => Box::new(ns.iter()),
        };
        Ok(iter.take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::ctx;
    use super::*;
    use alga_shared::capability::Capability;

    fn e(key: &str, value: &str, revision: Option<u64>) -> StorageEntry {
        StorageEntry { namespace: "ns".into(), key: key.into(), value: value.into(), revision }
    }

    fn rev(r: HostReply) -> Result<Option<u64>, StorageError> {
        match r {
            HostReply::StorageEntry(r) => r.map(|e| e.revision),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn revisions_and_compare_and_swap() {
        let c = ctx(&[Capability::StorageKv]);
        assert_eq!(rev(put(&c, e("a", "1", None))), Ok(Some(1)));
        assert_eq!(rev(put(&c, e("a", "2", None))), Ok(Some(2)));
        assert_eq!(rev(put(&c, e("a", "3", Some(1)))), Err(StorageError::Conflict));
        assert_eq!(rev(put(&c, e("a", "3", Some(2)))), Ok(Some(3)));
        assert_eq!(rev(put(&c, e("new", "x", Some(1)))), Err(StorageError::Conflict), "CAS on a missing key");
        assert_eq!(rev(get(&c, "ns", "a")), Ok(Some(3)));
    }

    #[test]
    fn missing_keys_are_missing_for_get_and_delete() {
        let c = ctx(&[Capability::StorageKv]);
        assert_eq!(rev(get(&c, "ns", "nope")), Err(StorageError::Missing));
        assert_eq!(delete(&c, "ns", "nope"), HostReply::StorageUnit(Err(StorageError::Missing)));
    }

    #[test]
    fn listing_pages_in_key_order_after_the_cursor() {
        let c = ctx(&[Capability::StorageKv]);
        for i in (0..150).rev() {
            put(&c, e(&format!("k{i:03}"), "v", None));
        }
        let keys = |r: HostReply| match r {
            HostReply::StorageEntries(Ok(v)) => v.into_iter().map(|e| e.key).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let first = keys(list(&c, "ns", None));
        assert_eq!(first.len(), 100);
        assert_eq!(first[0], "k000");
        let second = keys(list(&c, "ns", Some(first.last().unwrap())));
        assert_eq!(second.len(), 50);
        assert_eq!(second[0], "k100");
    }

    #[test]
    fn limits_are_denied() {
        let c = ctx(&[Capability::StorageKv]);
        assert_eq!(rev(put(&c, e("a/b", "v", None))), Err(StorageError::Denied), "slash in key");
        assert_eq!(rev(put(&c, e(&"k".repeat(257), "v", None))), Err(StorageError::Denied));
        let big =
            StorageEntry { namespace: "ns".into(), key: "k".into(), value: vec![0; 64 * 1024 + 1], revision: None };
        assert_eq!(rev(put(&c, big)), Err(StorageError::Denied));
        for i in 0..32 {
            let entry = StorageEntry { namespace: format!("n{i}"), key: "k".into(), value: vec![], revision: None };
            assert!(rev(put(&c, entry)).is_ok());
        }
        let one_more = StorageEntry { namespace: "n32".into(), key: "k".into(), value: vec![], revision: None };
        assert_eq!(rev(put(&c, one_more)), Err(StorageError::Denied), "33rd namespace");
    }

    #[test]
    fn installs_do_not_see_each_other() {
        let a = ctx(&[Capability::StorageKv]);
        let mut b = a.clone();
        b.install_id = Some("other".into());
        put(&a, e("secret", "a's", None));
        assert_eq!(rev(get(&b, "ns", "secret")), Err(StorageError::Missing));
        let mut other_tenant = a.clone();
        other_tenant.tenant_id = "t2".into();
        assert_eq!(rev(get(&other_tenant, "ns", "secret")), Err(StorageError::Missing));
    }
}

//! `storage`: a key-value store scoped by (tenant, install), with the semantics and limits of
//! 04-host-api.md. The rules live here; a [`KvStore`] backend only stores (on sled:
//! [`sled`]). A write is durable before the guest hears of it.

use std::fmt;

use alga_shared::bindings::{StorageEntry, StorageError};
use alga_shared::protocol::HostReply;

use super::HostContext;

pub mod host;
pub mod postgres;
pub mod sled;

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
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + fmt::Debug {
    async fn get(&self, scope: &Scope, namespace: &str, key: &str) -> Result<Option<Stored>, KvError>;
    async fn put(
        &self,
        scope: &Scope,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<PutResult, KvError>;
    /// Returns whether the key existed.
    async fn delete(&self, scope: &Scope, namespace: &str, key: &str) -> Result<bool, KvError>;
    /// Up to `limit` entries in key order, strictly after `after`.
    async fn list(
        &self,
        scope: &Scope,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, KvError>;
    /// Deletes everything of one install (uninstall); returns how many records went.
    async fn purge(&self, scope: &Scope) -> Result<u64, KvError>;
    /// Makes every write so far durable.
    async fn flush(&self) -> Result<(), KvError>;
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

/// A write the backend refused: the database is not healthy until it recovers.
fn write_failure(ctx: &HostContext, e: KvError) -> StorageError {
    if let Some(commit) = &ctx.env.commit {
        commit.write_failed(&e.to_string());
    }
    backend_failure(e)
}

pub async fn get(ctx: &HostContext, namespace: &str, key: &str) -> HostReply {
    HostReply::StorageEntry(
        async {
            if !valid_namespace(namespace) || !valid_key(key) {
                return Err(StorageError::Denied);
            }
            match ctx.env.storage.get(&ctx.storage_scope(), namespace, key).await.map_err(backend_failure)? {
                Some(s) => Ok(entry(namespace, key, s)),
                None => Err(StorageError::Missing),
            }
        }
        .await,
    )
}

pub async fn put(ctx: &HostContext, e: StorageEntry) -> HostReply {
    let generation = ctx.env.generation();
    let reply = HostReply::StorageEntry(
        async {
            if !valid_namespace(&e.namespace) || !valid_key(&e.key) || e.value.len() > limits::VALUE_BYTES {
                return Err(StorageError::Denied);
            }
            let result = ctx
                .env
                .storage
                .put(&ctx.storage_scope(), &e.namespace, &e.key, e.value.clone(), e.revision)
                .await
                .map_err(|e| write_failure(ctx, e))?;
            match result {
                PutResult::Written { revision } => {
                    Ok(StorageEntry { namespace: e.namespace, key: e.key, value: e.value, revision: Some(revision) })
                }
                PutResult::Conflict => Err(StorageError::Conflict),
                PutResult::QuotaExceeded => Err(StorageError::Denied),
            }
        }
        .await,
    );
    durable(ctx, generation, reply).await
}

/// Answers only once a successful write is on disk: an acknowledged `put` or `delete` survives
/// `kill -9` of the supervisor. A failed flush turns the answer into `internal`.
async fn durable(ctx: &HostContext, generation: u64, reply: HostReply) -> HostReply {
    let wrote = matches!(reply, HostReply::StorageEntry(Ok(_)) | HostReply::StorageUnit(Ok(())));
    if !wrote {
        return reply;
    }
    match ctx.env.durable(generation).await {
        Ok(()) => reply,
        Err(e) => {
            tracing::error!(error = %e, "making a storage write durable failed");
            match reply {
                HostReply::StorageEntry(_) => HostReply::StorageEntry(Err(StorageError::Internal)),
                _ => HostReply::StorageUnit(Err(StorageError::Internal)),
            }
        }
    }
}

pub async fn delete(ctx: &HostContext, namespace: &str, key: &str) -> HostReply {
    let generation = ctx.env.generation();
    let reply = HostReply::StorageUnit(
        async {
            if !valid_namespace(namespace) || !valid_key(key) {
                return Err(StorageError::Denied);
            }
            // Alga gap: deleting a missing key said `conflict`; here it is `missing`.
            match ctx
                .env
                .storage
                .delete(&ctx.storage_scope(), namespace, key)
                .await
                .map_err(|e| write_failure(ctx, e))?
            {
                true => Ok(()),
                false => Err(StorageError::Missing),
            }
        }
        .await,
    );
    durable(ctx, generation, reply).await
}

pub async fn list(ctx: &HostContext, namespace: &str, cursor: Option<&str>) -> HostReply {
    HostReply::StorageEntries(
        async {
            if !valid_namespace(namespace) {
                return Err(StorageError::Denied);
            }
            let page = ctx
                .env
                .storage
                .list(&ctx.storage_scope(), namespace, cursor, limits::LIST_PAGE)
                .await
                .map_err(backend_failure)?;
            Ok(page.into_iter().map(|(k, s)| entry(namespace, &k, s)).collect())
        }
        .await,
    )
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

    #[tokio::test]
    async fn revisions_and_compare_and_swap() {
        let c = ctx(&[Capability::StorageKv]);
        assert_eq!(rev(put(&c, e("a", "1", None)).await), Ok(Some(1)));
        assert_eq!(rev(put(&c, e("a", "2", None)).await), Ok(Some(2)));
        assert_eq!(rev(put(&c, e("a", "3", Some(1))).await), Err(StorageError::Conflict));
        assert_eq!(rev(put(&c, e("a", "3", Some(2))).await), Ok(Some(3)));
        assert_eq!(rev(put(&c, e("new", "x", Some(1))).await), Err(StorageError::Conflict), "CAS on a missing key");
        assert_eq!(rev(get(&c, "ns", "a").await), Ok(Some(3)));
    }

    #[tokio::test]
    async fn missing_keys_are_missing_for_get_and_delete() {
        let c = ctx(&[Capability::StorageKv]);
        assert_eq!(rev(get(&c, "ns", "nope").await), Err(StorageError::Missing));
        assert_eq!(delete(&c, "ns", "nope").await, HostReply::StorageUnit(Err(StorageError::Missing)));
    }

    #[tokio::test]
    async fn listing_pages_in_key_order_after_the_cursor() {
        let c = ctx(&[Capability::StorageKv]);
        for i in (0..150).rev() {
            put(&c, e(&format!("k{i:03}"), "v", None)).await;
        }
        let keys = |r: HostReply| match r {
            HostReply::StorageEntries(Ok(v)) => v.into_iter().map(|e| e.key).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let first = keys(list(&c, "ns", None).await);
        assert_eq!(first.len(), 100);
        assert_eq!(first[0], "k000");
        let second = keys(list(&c, "ns", Some(first.last().unwrap())).await);
        assert_eq!(second.len(), 50);
        assert_eq!(second[0], "k100");
    }

    #[tokio::test]
    async fn limits_are_denied() {
        let c = ctx(&[Capability::StorageKv]);
        assert_eq!(rev(put(&c, e("a/b", "v", None)).await), Err(StorageError::Denied), "slash in key");
        assert_eq!(rev(put(&c, e(&"k".repeat(257), "v", None)).await), Err(StorageError::Denied));
        let big =
            StorageEntry { namespace: "ns".into(), key: "k".into(), value: vec![0; 64 * 1024 + 1], revision: None };
        assert_eq!(rev(put(&c, big).await), Err(StorageError::Denied));
        for i in 0..32 {
            let entry = StorageEntry { namespace: format!("n{i}"), key: "k".into(), value: vec![], revision: None };
            assert!(rev(put(&c, entry).await).is_ok());
        }
        let one_more = StorageEntry { namespace: "n32".into(), key: "k".into(), value: vec![], revision: None };
        assert_eq!(rev(put(&c, one_more).await), Err(StorageError::Denied), "33rd namespace");
    }

    #[tokio::test]
    async fn installs_do_not_see_each_other() {
        let a = ctx(&[Capability::StorageKv]);
        let mut b = a.clone();
        b.install_id = Some("other".into());
        put(&a, e("secret", "a's", None)).await;
        assert_eq!(rev(get(&b, "ns", "secret").await), Err(StorageError::Missing));
        let mut other_tenant = a.clone();
        other_tenant.tenant_id = "t2".into();
        assert_eq!(rev(get(&other_tenant, "ns", "secret").await), Err(StorageError::Missing));
    }
}

//! The embedded registry on sled: one database directory, one tree per record kind
//! (06-data.md), byte-ordered keys so range scans give the listed order.

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use crate::db::SledDb;

use super::chain::{ChainHead, PRUNE_PER_APPEND, Retention, hash_of_bytes};
use super::model::*;
use super::{ExecutionQuery, PublishOutcome, RegistryStore, StoreError};

const SEP: u8 = 0;

// The trees (06-data.md); `install_by_content_hash` says which bundles are installed
// (`content hash 0x00 tenant` → nothing), kept with the installs in their transactions, since
// `/ext-ui` asks it on every asset request; `extension_execution_chain` holds each tenant's chain
// head.
const EXTENSIONS: &str = "extension_registry";
const BY_NAME: &str = "extension_by_name";
const VERSIONS: &str = "extension_version";
const BUNDLES: &str = "extension_bundle";
const INSTALLS: &str = "tenant_extension_install";
const EXECUTIONS: &str = "extension_execution_log";
const CHAINS: &str = "extension_execution_chain";
const SUBSCRIPTIONS: &str = "extension_event_subscription";
const INSTALLED_HASHES: &str = "install_by_content_hash";
const USAGE: &str = "extension_quota_usage";

/// Free space the database's filesystem must have again before a failed database is reopened.
const RECOVERY_FREE_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct SledRegistry {
    db: Arc<SledDb>,
    /// Appends to a chain are serialized (each needs the previous head).
    chain_lock: Arc<Mutex<()>>,
}

fn hash_key(content_hash: &str, tenant: &str) -> Vec<u8> {
    key(&[content_hash.as_bytes(), tenant.as_bytes()])
}

fn subscription_key(s: &SubscriptionRecord) -> Vec<u8> {
    key(&[s.tenant.as_bytes(), s.topic.as_bytes(), s.install_id.as_bytes(), s.handler.as_bytes()])
}

fn execution_key(tenant: &str, seq: u64) -> Vec<u8> {
    key(&[tenant.as_bytes(), &(u64::MAX - seq).to_be_bytes()])
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p);
    }
    k
}

fn prefix(first: &str) -> Vec<u8> {
    let mut k = first.as_bytes().to_vec();
    k.push(SEP);
    k
}

fn get<T: for<'de> serde::Deserialize<'de>>(tree: &Tree, k: impl AsRef<[u8]>) -> Result<Option<T>, StoreError> {
    match tree.get(k)? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

fn scan<T: for<'de> serde::Deserialize<'de>>(tree: &Tree, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
    tree.scan_prefix(prefix).map(|kv| Ok(decode(&kv?.1)?)).collect()
}

enum Abort {
    Outcome(Box<PublishOutcome>),
    Decode(DecodeError),
}

fn tx_decode<T: for<'de> serde::Deserialize<'de>>(bytes: &[u8]) -> Result<T, ConflictableTransactionError<Abort>> {
    decode(bytes).map_err(|e| ConflictableTransactionError::Abort(Abort::Decode(e)))
}

impl SledRegistry {
    /// Opens (or creates) the database at `path`. A database written by a newer alga-runner is
    /// refused.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::on(Arc::new(SledDb::open(path)?))
    }

    /// The registry in an open database.
    pub fn on(db: Arc<SledDb>) -> Result<Self, StoreError> {
        let meta = db.tree("meta")?;
        match meta.get("schema")? {
            Some(v) if v.first().copied().unwrap_or(0) > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema { found: v[0] });
            }
            Some(_) => {}
            None => {
                meta.insert("schema", vec![SCHEMA_VERSION])?;
                db.flush()?;
            }
        }
        let registry = SledRegistry { db, chain_lock: Arc::new(Mutex::new(())) };
        registry.index_installed_hashes()?;
        Ok(registry)
    }

    /// The database (the guests' storage and the secrets live beside the registry, so one flush
    /// makes all of them durable).
    pub fn db(&self) -> &Arc<SledDb> {
        &self.db
    }

    fn tree(&self, name: &str) -> Result<Tree, StoreError> {
        Ok(self.db.tree(name)?)
    }

    /// Applies retention to every tenant's chain (the periodic sweep).
    fn prune_all(&self, retention: &Retention) -> Result<u64, StoreError> {
        let mut pruned = 0;
        let tenants: Vec<String> = self
            .tree(CHAINS)?
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect::<Result<_, StoreError>>()?;
        for tenant in tenants {
            let _serial = self.chain_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut head: ChainHead = get(&self.tree(CHAINS)?, tenant.as_bytes())?.unwrap_or_default();
            let before = head.first_seq;
            let mut batch = sled::Batch::default();
            self.prune_into(&tenant, &mut head, retention, usize::MAX, &mut batch)?;
            if head.first_seq != before {
                pruned += head.first_seq - before;
                (&self.tree(EXECUTIONS)?, &self.tree(CHAINS)?)
                    .transaction(|(execs, chains)| {
                        execs.apply_batch(&batch)?;
                        chains.insert(tenant.as_bytes(), encode(&head))?;
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e| StoreError::Transaction(format!("{e:?}")))?;
            }
        }
        Ok(pruned)
    }

    /// Every install of every tenant (for `migrate`).
    pub fn all_installs(&self) -> Result<Vec<InstallRecord>, StoreError> {
        scan(&self.tree(INSTALLS)?, b"")
    }

    /// Every event subscription (for `migrate`).
    pub fn all_subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        scan(&self.tree(SUBSCRIPTIONS)?, b"")
    }

    /// Every usage window: (tenant, extension id, window start, usage) (for `migrate`).
    pub fn all_usage(&self) -> Result<Vec<(String, String, u64, UsageRecord)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(USAGE)?.iter() {
            let (k, v) = kv?;
            // tenant, SEP, extension id, SEP, 8-byte window start
            let corrupt = || DecodeError::Corrupt("usage key".into());
            let (head, window) = k.split_at(k.len().checked_sub(8).ok_or_else(corrupt)?);
            let head = head.strip_suffix(&[SEP]).ok_or_else(corrupt)?;
            let at = head.iter().position(|b| *b == SEP).ok_or_else(corrupt)?;
            out.push((
                String::from_utf8_lossy(&head[..at]).into_owned(),
                String::from_utf8_lossy(&head[at + 1..]).into_owned(),
                u64::from_be_bytes(window.try_into().map_err(|_| corrupt())?),
                decode(&v)?,
            ));
        }
        Ok(out)
    }

    /// The tenant's execution records exactly as stored, oldest first (for `migrate`: the chain
    /// hashes cover these bytes).
    pub fn raw_executions(&self, tenant: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out: Vec<Vec<u8>> = self
            .tree(EXECUTIONS)?
            .scan_prefix(prefix(tenant))
            .values()
            .map(|v| Ok(v?.to_vec()))
            .collect::<Result<_, StoreError>>()?;
        out.reverse();
        Ok(out)
    }

    /// Keys of the install's subscriptions (a scan; installs are rare admin operations).
    fn subscription_keys(&self, tenant: &str, install_id: &str) -> Result<Vec<sled::IVec>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(SUBSCRIPTIONS)?.scan_prefix(prefix(tenant)) {
            let (k, v) = kv?;
            let s: SubscriptionRecord = decode(&v)?;
            if s.install_id == install_id {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Moves the oldest records retention no longer keeps into `batch` (at most `max`), and the
    /// anchor past them. The newest record always stays, so the chain keeps its head.
    fn prune_into(
        &self,
        tenant: &str,
        head: &mut ChainHead,
        retention: &Retention,
        max: usize,
        batch: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut n = 0;
        while n < max && head.len() > 1 {
            let k = execution_key(tenant, head.first_seq);
            let Some(bytes) = self.tree(EXECUTIONS)?.get(&k)? else { break };
            let oldest: ExecutionRecord = decode(&bytes)?;
            if retention.keeps_oldest(head.len(), oldest.created_at, now) {
                break;
            }
            head.anchor_hash = hash_of_bytes(&bytes);
            head.first_seq += 1;
            batch.remove(k);
            n += 1;
        }
        Ok(())
    }

    /// Builds the content-hash index of a database written before it existed.
    fn index_installed_hashes(&self) -> Result<(), StoreError> {
        if !self.tree(INSTALLED_HASHES)?.is_empty() {
            return Ok(());
        }
        for v in self.tree(INSTALLS)?.iter().values() {
            let i: InstallRecord = decode(&v?)?;
            self.tree(INSTALLED_HASHES)?.insert(hash_key(&i.content_hash, &i.tenant), &[])?;
        }
        Ok(())
    }

    /// Flushes (off the async workers: an fsync), then answers `value`; fails when the
    /// database was opened again since `generation`, taken before the write.
    async fn durable<T>(&self, generation: u64, value: T) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush_since(generation))
            .await
            .map_err(|e| StoreError::Transaction(format!("the flush task failed: {e}")))??;
        Ok(value)
    }
}

#[async_trait::async_trait]
impl RegistryStore for SledRegistry {
    async fn extension(&self, id_or_name: &str) -> Result<Option<ExtensionRecord>, StoreError> {
        if let Some(e) = get(&self.tree(EXTENSIONS)?, id_or_name)? {
            return Ok(Some(e));
        }
        match self.tree(BY_NAME)?.get(id_or_name)? {
            Some(id) => get(&self.tree(EXTENSIONS)?, id),
            None => Ok(None),
        }
    }

    async fn extensions(&self, after: Option<&str>, limit: usize) -> Result<Vec<ExtensionRecord>, StoreError> {
        let start = match after {
            Some(a) => Bound::Excluded(a.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self.tree(BY_NAME)?.range::<Vec<u8>, _>((start, Bound::Unbounded)).take(limit) {
            let (_, id) = kv?;
            if let Some(e) = get(&self.tree(EXTENSIONS)?, id)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn versions(&self, extension_id: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let mut v: Vec<VersionRecord> = scan(&self.tree(VERSIONS)?, &prefix(extension_id))?;
        v.sort_by(newest_first);
        Ok(v)
    }

    async fn version(&self, extension_id: &str, version: &str) -> Result<Option<VersionRecord>, StoreError> {
        get(&self.tree(VERSIONS)?, key(&[extension_id.as_bytes(), version.as_bytes()]))
    }

    async fn version_by_id(&self, extension_id: &str, version_id: &str) -> Result<Option<VersionRecord>, StoreError> {
        Ok(self.versions(extension_id).await?.into_iter().find(|v| v.version_id == version_id))
    }

    async fn bundle(&self, content_hash: &str) -> Result<Option<BundleRecord>, StoreError> {
        get(&self.tree(BUNDLES)?, content_hash)
    }

    async fn bundles(&self) -> Result<Vec<BundleRecord>, StoreError> {
        scan(&self.tree(BUNDLES)?, b"")
    }

    async fn publish(
        &self,
        extension: ExtensionRecord,
        version: VersionRecord,
        bundle: BundleRecord,
    ) -> Result<PublishOutcome, StoreError> {
        let generation = self.db.generation();
        let result = (&self.tree(BY_NAME)?, &self.tree(EXTENSIONS)?, &self.tree(VERSIONS)?, &self.tree(BUNDLES)?)
            .transaction(|(by_name, exts, vers, bundles)| {
                let abort = |a| Err(ConflictableTransactionError::Abort(a));
                let ext: ExtensionRecord = match by_name.get(extension.name.as_bytes())? {
                    Some(id) => match exts.get(&id)? {
                        Some(bytes) => tx_decode(&bytes)?,
                        None => return abort(Abort::Decode(DecodeError::Corrupt("dangling name index".into()))),
                    },
                    None => {
                        by_name.insert(extension.name.as_bytes(), extension.id.as_bytes())?;
                        exts.insert(extension.id.as_bytes(), encode(&extension))?;
                        extension.clone()
                    }
                };
                if ext.publisher != extension.publisher {
                    return abort(Abort::Outcome(Box::new(PublishOutcome::NameTaken { publisher: ext.publisher })));
                }
                let vkey = key(&[ext.id.as_bytes(), version.version.as_bytes()]);
                if let Some(bytes) = vers.get(&vkey)? {
                    let existing: VersionRecord = tx_decode(&bytes)?;
                    return abort(Abort::Outcome(Box::new(if existing.content_hash == version.content_hash {
                        PublishOutcome::AlreadyPublished { extension: ext, version: existing }
                    } else {
                        PublishOutcome::VersionConflict { existing_hash: existing.content_hash }
                    })));
                }
                let version = VersionRecord { extension_id: ext.id.clone(), ..version.clone() };
                let bundle = BundleRecord { extension_id: ext.id.clone(), ..bundle.clone() };
                vers.insert(vkey, encode(&version))?;
                bundles.insert(bundle.content_hash.as_bytes(), encode(&bundle))?;
                Ok(PublishOutcome::Created { extension: ext, version })
            });
        match result {
            Ok(outcome) => self.durable(generation, outcome).await,
            Err(TransactionError::Abort(Abort::Outcome(o))) => Ok(*o),
            Err(TransactionError::Abort(Abort::Decode(e))) => Err(e.into()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    async fn put_version(&self, version: &VersionRecord) -> Result<(), StoreError> {
        let generation = self.db.generation();
        self.tree(VERSIONS)?
            .insert(key(&[version.extension_id.as_bytes(), version.version.as_bytes()]), encode(version))?;
        self.durable(generation, ()).await
    }

    async fn put_bundle(&self, bundle: &BundleRecord) -> Result<(), StoreError> {
        let generation = self.db.generation();
        self.tree(BUNDLES)?.insert(bundle.content_hash.as_bytes(), encode(bundle))?;
        self.durable(generation, ()).await
    }

    async fn install(&self, tenant: &str, extension_id: &str) -> Result<Option<InstallRecord>, StoreError> {
        get(&self.tree(INSTALLS)?, key(&[tenant.as_bytes(), extension_id.as_bytes()]))
    }

    async fn installs(&self, tenant: &str) -> Result<Vec<InstallRecord>, StoreError> {
        scan(&self.tree(INSTALLS)?, &prefix(tenant))
    }

    async fn put_install(
        &self,
        install: &InstallRecord,
        subscriptions: &[SubscriptionRecord],
    ) -> Result<(), StoreError> {
        let generation = self.db.generation();
        let stale = self.subscription_keys(&install.tenant, &install.install_id)?;
        let ikey = key(&[install.tenant.as_bytes(), install.extension_id.as_bytes()]);
        (&self.tree(INSTALLS)?, &self.tree(SUBSCRIPTIONS)?, &self.tree(INSTALLED_HASHES)?)
            .transaction(|(installs, subs, hashes)| {
                if let Some(old) = installs.insert(ikey.as_slice(), encode(install))?
                    && let Ok(old) = decode::<InstallRecord>(&old)
                {
                    hashes.remove(hash_key(&old.content_hash, &old.tenant))?;
                }
                hashes.insert(hash_key(&install.content_hash, &install.tenant), &[])?;
                for k in &stale {
                    subs.remove(k.clone())?;
                }
                for s in subscriptions {
                    subs.insert(subscription_key(s), encode(s))?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Transaction(format!("{e:?}")))?;
        self.durable(generation, ()).await
    }

    async fn delete_install(&self, tenant: &str, extension_id: &str) -> Result<Option<InstallRecord>, StoreError> {
        let generation = self.db.generation();
        let ikey = key(&[tenant.as_bytes(), extension_id.as_bytes()]);
        let Some(old) = get::<InstallRecord>(&self.tree(INSTALLS)?, &ikey)? else { return Ok(None) };
        let stale = self.subscription_keys(tenant, &old.install_id)?;
        (&self.tree(INSTALLS)?, &self.tree(SUBSCRIPTIONS)?, &self.tree(INSTALLED_HASHES)?)
            .transaction(|(installs, subs, hashes)| {
                installs.remove(ikey.as_slice())?;
                hashes.remove(hash_key(&old.content_hash, &old.tenant))?;
                for k in &stale {
                    subs.remove(k.clone())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Transaction(format!("{e:?}")))?;
        self.durable(generation, Some(old)).await
    }

    async fn installed_anywhere(&self, content_hash: &str) -> Result<bool, StoreError> {
        Ok(self.tree(INSTALLED_HASHES)?.scan_prefix(key(&[content_hash.as_bytes(), b""])).next().transpose()?.is_some())
    }

    async fn subscriptions(&self, tenant: &str, topic: &str) -> Result<Vec<SubscriptionRecord>, StoreError> {
        scan(&self.tree(SUBSCRIPTIONS)?, &key(&[tenant.as_bytes(), topic.as_bytes(), b""]))
    }

    async fn add_usage(
        &self,
        tenant: &str,
        extension_id: &str,
        window_start: u64,
        delta: &UsageRecord,
    ) -> Result<(), StoreError> {
        let k = key(&[tenant.as_bytes(), extension_id.as_bytes(), &window_start.to_be_bytes()]);
        self.tree(USAGE)?.update_and_fetch(k, |old| {
            let mut u: UsageRecord = old.and_then(|b| decode(b).ok()).unwrap_or_default();
            u.add(delta);
            Some(encode(&u))
        })?;
        Ok(())
    }

    async fn usage(&self, tenant: &str, since: u64) -> Result<Vec<(String, u64, UsageRecord)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(USAGE)?.scan_prefix(prefix(tenant)) {
            let (k, v) = kv?;
            let rest = &k[tenant.len() + 1..];
            // extension id, SEP, 8-byte window start
            if rest.len() < 9 {
                continue;
            }
            let (ext, window) = rest.split_at(rest.len() - 8);
            let window_start = u64::from_be_bytes(window.try_into().unwrap_or([0; 8]));
            if window_start < since {
                continue;
            }
            let ext = String::from_utf8_lossy(&ext[..ext.len() - 1]).into_owned();
            out.push((ext, window_start, decode(&v)?));
        }
        Ok(out)
    }

    async fn record_execution(
        &self,
        mut r: ExecutionRecord,
        retention: &Retention,
    ) -> Result<ExecutionRecord, StoreError> {
        let _serial = self.chain_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut head: ChainHead = get(&self.tree(CHAINS)?, r.tenant.as_bytes())?.unwrap_or_default();
        r.seq = head.next_seq;
        r.prev_hash = head.head_hash.clone();
        let bytes = encode(&r);
        head.head_hash = hash_of_bytes(&bytes);
        head.next_seq += 1;
        let mut batch = sled::Batch::default();
        batch.insert(execution_key(&r.tenant, r.seq), bytes);
        self.prune_into(&r.tenant, &mut head, retention, PRUNE_PER_APPEND, &mut batch)?;
        // The record and the head change together (one transaction over both trees).
        (&self.tree(EXECUTIONS)?, &self.tree(CHAINS)?)
            .transaction(|(execs, chains)| {
                execs.apply_batch(&batch)?;
                chains.insert(r.tenant.as_bytes(), encode(&head))?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Transaction(format!("{e:?}")))?;
        Ok(r)
    }

    async fn prune_executions(&self, retention: &Retention) -> Result<u64, StoreError> {
        // A scan of every tenant's oldest records under the chain lock: off the async workers.
        let (this, retention) = (self.clone(), *retention);
        tokio::task::spawn_blocking(move || this.prune_all(&retention))
            .await
            .map_err(|e| StoreError::Transaction(format!("the pruning task failed: {e}")))?
    }

    async fn chain_head(&self, tenant: &str) -> Result<ChainHead, StoreError> {
        Ok(get(&self.tree(CHAINS)?, tenant.as_bytes())?.unwrap_or_default())
    }

    async fn chain_tenants(&self) -> Result<Vec<String>, StoreError> {
        self.tree(CHAINS)?.iter().keys().map(|k| Ok(String::from_utf8_lossy(&k?).into_owned())).collect()
    }

    async fn executions_oldest_first(&self, tenant: &str) -> Result<Vec<ExecutionRecord>, StoreError> {
        let mut out: Vec<ExecutionRecord> = scan(&self.tree(EXECUTIONS)?, &prefix(tenant))?;
        out.reverse();
        Ok(out)
    }

    async fn executions(
        &self,
        tenant: &str,
        q: &ExecutionQuery,
    ) -> Result<(Vec<ExecutionRecord>, Option<String>), StoreError> {
        let p = prefix(tenant);
        let start = match q.after.as_deref().and_then(|c| hex::decode(c).ok()) {
            Some(suffix) => {
                let mut k = p.clone();
                k.extend(suffix);
                Bound::Excluded(k)
            }
            None => Bound::Included(p.clone()),
        };
        let mut out = Vec::new();
        let mut last_key = None;
        for kv in self.tree(EXECUTIONS)?.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = kv?;
            if !k.starts_with(&p) {
                break;
            }
            let r: ExecutionRecord = decode(&v)?;
            if q.extension_id.as_ref().is_some_and(|e| e != &r.extension_id)
                || q.outcome.as_ref().is_some_and(|o| o != &r.outcome)
            {
                continue;
            }
            out.push(r);
            last_key = Some(k);
            if out.len() >= q.limit {
                break;
            }
        }
        let cursor = if out.len() >= q.limit { last_key.map(|k| hex::encode(&k[p.len()..])) } else { None };
        Ok((out, cursor))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let generation = self.db.generation();
        self.durable(generation, ()).await
    }

    async fn recover(&self) -> Result<(), StoreError> {
        // Space has returned only when there is room for more than a probe: a disk with a few
        // kilobytes left would take the probe and fail the next real writes (flapping).
        if let Some(free) = self.db.free_bytes()
            && free < RECOVERY_FREE_BYTES
        {
            return Err(StoreError::Transaction(format!(
                "{free} bytes free; waiting for at least {RECOVERY_FREE_BYTES}"
            )));
        }
        // Reopening waits for the failed instance's files: off the async workers.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.reopen())
            .await
            .map_err(|e| StoreError::Transaction(format!("the reopen task failed: {e}")))??;
        let generation = self.db.generation();
        // A write and its flush: on a disk still full, this fails (and the next attempt reopens
        // again).
        self.tree("meta")?.insert("probe", &now_ms().to_be_bytes())?;
        self.durable(generation, ()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(name: &str, publisher: &str) -> ExtensionRecord {
        ExtensionRecord { id: new_id(), name: name.into(), publisher: publisher.into(), created_at: now_ms() }
    }

    fn version(v: &str, hash: &str) -> VersionRecord {
        VersionRecord {
            extension_id: String::new(),
            version: v.into(),
            version_id: new_id(),
            runtime: "wasm32-wasi@1".into(),
            capabilities: vec![],
            endpoints: vec![],
            events: vec![],
            egress: None,
            ui: None,
            entry: "dist/main.wasm".into(),
            content_hash: hash.into(),
            state: VersionState::Active,
            created_at: now_ms(),
        }
    }

    fn bundle(hash: &str) -> BundleRecord {
        BundleRecord {
            content_hash: hash.into(),
            extension_id: String::new(),
            version_id: String::new(),
            size: 1,
            signature: String::new(),
            signer_key_id: "K".into(),
            trusted_comment: String::new(),
            verified_at: 0,
            component_sha256: None,
            artifacts: Default::default(),
            ui_etags: Default::default(),
        }
    }

    #[tokio::test]
    async fn publish_is_idempotent_and_detects_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let r = SledRegistry::open(dir.path()).unwrap();
        let e = ext("com.example.a", "P");
        let first = r.publish(e.clone(), version("1.0.0", "h1"), bundle("h1")).await.unwrap();
        let PublishOutcome::Created { extension, .. } = first else { panic!("{first:?}") };
        assert!(matches!(
            r.publish(ext("com.example.a", "P"), version("1.0.0", "h1"), bundle("h1")).await.unwrap(),
            PublishOutcome::AlreadyPublished { .. }
        ));
        assert!(matches!(
            r.publish(ext("com.example.a", "P"), version("1.0.0", "h2"), bundle("h2")).await.unwrap(),
            PublishOutcome::VersionConflict { .. }
        ));
        assert!(matches!(
            r.publish(ext("com.example.a", "Q"), version("2.0.0", "h3"), bundle("h3")).await.unwrap(),
            PublishOutcome::NameTaken { .. }
        ));
        r.publish(ext("com.example.a", "P"), version("1.10.0", "h4"), bundle("h4")).await.unwrap();
        r.publish(ext("com.example.a", "P"), version("1.2.0", "h5"), bundle("h5")).await.unwrap();
        let versions: Vec<String> = r.versions(&extension.id).await.unwrap().into_iter().map(|v| v.version).collect();
        assert_eq!(versions, ["1.10.0", "1.2.0", "1.0.0"], "newest semver first");
        assert_eq!(r.extension("com.example.a").await.unwrap().unwrap().id, extension.id, "by name");
        assert_eq!(r.extension(&extension.id).await.unwrap().unwrap().name, "com.example.a", "by id");
        assert!(r.bundle("h2").await.unwrap().is_none(), "a conflicting bundle is not stored");
    }

    #[tokio::test]
    async fn executions_page_newest_first_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let r = SledRegistry::open(dir.path()).unwrap();
        for i in 0..5u64 {
            for tenant in ["t1", "t2"] {
                r.record_execution(execution(tenant, i), &KEEP_ALL).await.unwrap();
            }
        }
        let q = ExecutionQuery { limit: 3, ..Default::default() };
        let (page, cursor) = r.executions("t1", &q).await.unwrap();
        assert_eq!(page.iter().map(|e| e.request_id.as_str()).collect::<Vec<_>>(), ["r4", "r3", "r2"]);
        let (rest, end) = r.executions("t1", &ExecutionQuery { after: cursor, ..q }).await.unwrap();
        assert_eq!(rest.iter().map(|e| e.request_id.as_str()).collect::<Vec<_>>(), ["r1", "r0"]);
        assert!(end.is_none());
        assert!(rest.iter().all(|e| e.tenant == "t1"));
    }

    const KEEP_ALL: Retention = Retention { max_records: 1000, max_age_ms: u64::MAX };

    fn execution(tenant: &str, i: u64) -> ExecutionRecord {
        ExecutionRecord {
            execution_id: new_id(),
            request_id: format!("r{i}"),
            tenant: tenant.into(),
            extension_id: "e".into(),
            install_id: "i".into(),
            version_id: "v".into(),
            content_hash: "h".into(),
            method: "GET".into(),
            path: "/".into(),
            endpoint: None,
            trigger: "envelope".into(),
            status: 200,
            outcome: "completed".into(),
            error: None,
            detail: None,
            duration_ms: 1.0 / 3.0,
            memory_peak_bytes: 0,
            fuel: 0,
            egress_bytes: 0,
            host_calls: 0,
            logs: vec![],
            created_at: now_ms() - 10 + i,
            seq: 0,
            prev_hash: String::new(),
        }
    }

    async fn verify(r: &SledRegistry, tenant: &str) -> super::super::chain::ChainReport {
        super::super::chain::verify(
            tenant,
            &r.chain_head(tenant).await.unwrap(),
            r.executions_oldest_first(tenant).await.unwrap(),
        )
    }

    #[tokio::test]
    async fn the_execution_log_is_a_hash_chain_that_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let r = SledRegistry::open(dir.path()).unwrap();
        for i in 0..5 {
            let stored = r.record_execution(execution("t1", i), &KEEP_ALL).await.unwrap();
            assert_eq!(stored.seq, i + 1);
        }
        r.record_execution(execution("t2", 0), &KEEP_ALL).await.unwrap();
        let report = verify(&r, "t1").await;
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.records, 5);

        // Retention keeps the newest 3; the anchor keeps the chain verifiable.
        let three = Retention { max_records: 3, max_age_ms: u64::MAX };
        assert_eq!(r.prune_executions(&three).await.unwrap(), 2);
        let report = verify(&r, "t1").await;
        assert!(report.intact() && report.records == 3 && report.first_seq == 3, "{report:?}");

        // Edit a stored record (its status): the chain breaks right after it.
        let k = execution_key("t1", 4);
        let mut edited: ExecutionRecord = decode(&r.tree(EXECUTIONS).unwrap().get(&k).unwrap().unwrap()).unwrap();
        edited.status = 500;
        r.tree(EXECUTIONS).unwrap().insert(&k, encode(&edited)).unwrap();
        let report = verify(&r, "t1").await;
        assert!(report.problems.iter().any(|p| p.contains("record #5")), "{report:?}");

        // Remove the newest record: the head no longer matches.
        r.tree(EXECUTIONS)
            .unwrap()
            .insert(
                &k,
                encode(&{
                    edited.status = 200;
                    edited
                }),
            )
            .unwrap();
        assert!(verify(&r, "t1").await.intact());
        r.tree(EXECUTIONS).unwrap().remove(execution_key("t1", 5)).unwrap();
        assert!(!verify(&r, "t1").await.intact());
        assert!(verify(&r, "t2").await.intact(), "another tenant's chain is untouched");
    }

    #[tokio::test]
    async fn retention_by_age_on_append() {
        let dir = tempfile::tempdir().unwrap();
        let r = SledRegistry::open(dir.path()).unwrap();
        let mut old = execution("t1", 0);
        old.created_at = 1;
        r.record_execution(old, &KEEP_ALL).await.unwrap();
        let day = Retention { max_records: 1000, max_age_ms: 86_400_000 };
        r.record_execution(execution("t1", 1), &day).await.unwrap();
        let kept = r.executions_oldest_first("t1").await.unwrap();
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        assert!(verify(&r, "t1").await.intact());
    }

    fn install(tenant: &str, hash: &str) -> InstallRecord {
        InstallRecord {
            tenant: tenant.into(),
            extension_id: "e".into(),
            install_id: new_id(),
            version_id: "v".into(),
            version: "1.0.0".into(),
            content_hash: hash.into(),
            granted_capabilities: vec![],
            config: Default::default(),
            egress_allowlist: None,
            limits: Default::default(),
            enabled: true,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[tokio::test]
    async fn the_content_hash_index_follows_installs_upgrades_and_uninstalls() {
        let dir = tempfile::tempdir().unwrap();
        let r = SledRegistry::open(dir.path()).unwrap();
        r.put_install(&install("t1", "h1"), &[]).await.unwrap();
        r.put_install(&install("t2", "h1"), &[]).await.unwrap();
        assert!(r.installed_anywhere("h1").await.unwrap());
        r.put_install(&install("t1", "h2"), &[]).await.unwrap();
        assert!(r.installed_anywhere("h1").await.unwrap(), "t2 is still on h1");
        r.delete_install("t2", "e").await.unwrap();
        assert!(!r.installed_anywhere("h1").await.unwrap(), "the upgrade and the uninstall removed h1");
        assert!(r.installed_anywhere("h2").await.unwrap());
        assert!(!r.installed_anywhere("h").await.unwrap(), "a prefix of a hash is not the hash");
        // A database written before the index: rebuilt at open.
        r.tree(INSTALLED_HASHES).unwrap().clear().unwrap();
        drop(r);
        let r = SledRegistry::open(dir.path()).unwrap();
        assert!(r.installed_anywhere("h2").await.unwrap());
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta").unwrap().insert("schema", vec![SCHEMA_VERSION + 1]).unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(SledRegistry::open(dir.path()), Err(StoreError::NewerSchema { .. })));
    }
}

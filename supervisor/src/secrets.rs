//! Install secrets, encrypted at rest with the node key (06-data.md `install_secrets`):
//! XChaCha20-Poly1305 with a random 24-byte nonce per write, the tenant and install id as
//! associated data (a sealed map copied under another install does not open). The node key is a
//! 32-byte file, mode 0600, generated at first start, or a systemd credential
//! (`LoadCredential=node-key:...`, read from `$CREDENTIALS_DIRECTORY/node-key`).
//!
//! Plaintext values never reach a log: [`SecretMap`] prints its key names only.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::db::SledDb;
use crate::db::postgres::{Pg, PgError};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Layout version of a sealed record.
const SEALED_SCHEMA: u8 = 1;
const NONCE_LEN: usize = 24;
/// The credential name systemd exposes under `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "node-key";
/// The credential of the key a rotation replaces.
pub const PREVIOUS_CREDENTIAL_NAME: &str = "node-key-previous";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("node key {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    #[error("database: {0}")]
    Backend(String),
    #[error("the stored secrets of install {0} do not open with this node key (wrong key, or tampered)")]
    Open(String),
    #[error("sealing secrets failed")]
    Seal,
}

/// A secret map whose values never print.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretMap(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()?;
        f.write_str(" (values redacted)")
    }
}

/// The node's secret key, and during a rotation the key it replaces.
pub struct NodeKey {
    cipher: XChaCha20Poly1305,
    /// The key being replaced (`<file>.previous`, or the `node-key-previous` credential): what it
    /// sealed still opens until `rotate-node-key` has sealed everything again.
    pub previous: Option<Box<NodeKey>>,
    /// Where it came from, for the operator.
    pub source: PathBuf,
    /// Names the key without revealing it: hex SHA-256 of a label and the key, first 16 digits.
    /// Hosts sharing a database must share the key; the database keeps this to check it.
    pub fingerprint: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey").field("source", &self.source).finish_non_exhaustive()
    }
}

impl NodeKey {
    /// The systemd credential when there is one, else `file`, created (0600, 32 random bytes)
    /// when missing. A key file readable by others is refused.
    pub fn load_or_create(file: &Path) -> Result<NodeKey, SecretsError> {
        if let Some(key) = NodeKey::load(file)? {
            return Ok(key);
        }
        let key = NodeKey::generate(file)?;
        tracing::info!(path = %file.display(), "generated the node key (keep it: without it stored secrets cannot be read)");
        Ok(key)
    }

    /// The systemd credential when there is one, else `file`; `None` when neither exists. The
    /// previous key of a rotation comes along when there is one.
    pub fn load(file: &Path) -> Result<Option<NodeKey>, SecretsError> {
        let Some(mut key) = NodeKey::load_one(file, CREDENTIAL_NAME)? else { return Ok(None) };
        let previous = PathBuf::from(format!("{}.previous", file.display()));
        key.previous = NodeKey::load_one(&previous, PREVIOUS_CREDENTIAL_NAME)?.map(Box::new);
        Ok(Some(key))
    }

    fn load_one(file: &Path, credential: &str) -> Result<Option<NodeKey>, SecretsError> {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join(credential);
            if path.exists() {
                return NodeKey::read(&path, false).map(Some);
            }
        }
        if file.exists() { NodeKey::read(file, true).map(Some) } else { Ok(None) }
    }

    /// Writes a new random key to `file` (0600), which must not exist.
    pub fn generate(file: &Path) -> Result<NodeKey, SecretsError> {
        let err = |detail: String| SecretsError::Key { path: file.to_path_buf(), detail };
        let key = alga_sandbox::sys::random_seed();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .map_err(|e| err(format!("creating: {e}")))?;
        f.write_all(&key).and_then(|()| f.sync_all()).map_err(|e| err(format!("writing: {e}")))?;
        NodeKey::read(file, true)
    }

    /// Whether this key (or the one it replaces) has `fingerprint`.
    pub fn answers_to(&self, fingerprint: &str) -> bool {
        self.fingerprint == fingerprint || self.previous.as_ref().is_some_and(|p| p.fingerprint == fingerprint)
    }

    fn read(path: &Path, check_mode: bool) -> Result<NodeKey, SecretsError> {
        let err = |detail: String| SecretsError::Key { path: path.to_path_buf(), detail };
        if check_mode {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(|e| err(e.to_string()))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(err(format!("mode {:o} lets others read it; chmod 600 it", mode & 0o777)));
            }
        }
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| err(format!("must hold exactly 32 bytes, holds {}", bytes.len())))?;
        let fingerprint = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(b"alga-runner node key fingerprint\0");
            h.update(key);
            hex::encode(h.finalize())[..16].to_string()
        };
        Ok(NodeKey {
            cipher: XChaCha20Poly1305::new(&key.into()),
            previous: None,
            source: path.to_path_buf(),
            fingerprint,
        })
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let seed = alga_sandbox::sys::random_seed();
        let nonce = XNonce::from_slice(&seed[..NONCE_LEN]);
        let ct = self.cipher.encrypt(nonce, Payload { msg: plaintext, aad }).map_err(|_| SecretsError::Seal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEALED_SCHEMA);
        out.extend_from_slice(&seed[..NONCE_LEN]);
        out.extend(ct);
        Ok(out)
    }

    /// A token only holders of this key can make, saying `value` under `label` (e.g. the
    /// SHA-256 of a compiled artifact another host may load).
    pub fn vouch(&self, label: &[u8], value: &[u8]) -> Result<Vec<u8>, SecretsError> {
        self.seal(label, value)
    }

    /// The value `token` vouches for under `label`, when this key (or the previous key) made
    /// it with [`NodeKey::vouch`]; `None` for anything else.
    pub fn vouched(&self, label: &[u8], token: &[u8]) -> Option<Vec<u8>> {
        self.open(label, token)
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let opened = match sealed.split_first() {
            Some((&SEALED_SCHEMA, rest)) if rest.len() > NONCE_LEN => {
                let (nonce, ct) = rest.split_at(NONCE_LEN);
                self.cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).ok()
            }
            _ => None,
        };
        opened.or_else(|| self.previous.as_ref()?.open(aad, sealed))
    }
}

/// Where sealed maps are kept: one per (tenant, install), replaced whole. Writes are durable
/// when they return.
#[async_trait::async_trait]
pub trait SealedStore: Send + Sync + std::fmt::Debug {
    async fn get(&self, tenant: &str, install_id: &str) -> Result<Option<Vec<u8>>, SecretsError>;
    async fn put(&self, tenant: &str, install_id: &str, sealed: Vec<u8>) -> Result<(), SecretsError>;
    async fn delete(&self, tenant: &str, install_id: &str) -> Result<(), SecretsError>;
    /// Every sealed map: (tenant, install id, sealed bytes).
    async fn all(&self) -> Result<Vec<(String, String, Vec<u8>)>, SecretsError>;
    /// Replaces the map only if it is still `old` (durably); false when it changed meanwhile.
    async fn replace(&self, tenant: &str, install_id: &str, old: &[u8], new: Vec<u8>) -> Result<bool, SecretsError>;
}

/// The `install_secrets` tree of the embedded database.
#[derive(Debug)]
pub struct SledSecrets {
    db: Arc<SledDb>,
}

const TREE: &str = "install_secrets";

impl SledSecrets {
    pub fn new(db: Arc<SledDb>) -> Self {
        SledSecrets { db }
    }

    /// Every sealed map: (tenant, install id, sealed bytes) (for `migrate`; the same node key
    /// opens them wherever they are copied, since the associated data is tenant and install).
    pub fn dump(&self) -> Result<Vec<(String, String, Vec<u8>)>, SecretsError> {
        let mut out = Vec::new();
        for kv in self.db.tree(TREE)?.iter() {
            let (k, v) = kv?;
            let at = k.iter().position(|b| *b == 0).ok_or(SecretsError::Backend("corrupt secrets key".into()))?;
            out.push((
                String::from_utf8_lossy(&k[..at]).into_owned(),
                String::from_utf8_lossy(&k[at + 1..]).into_owned(),
                v.to_vec(),
            ));
        }
        Ok(out)
    }

    /// Flushes (off the async workers), failing when the database was opened again since
    /// `generation`, taken before the write.
    async fn flush(&self, generation: u64) -> Result<(), SecretsError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush_since(generation))
            .await
            .map_err(|e| SecretsError::Backend(format!("the flush task failed: {e}")))??;
        Ok(())
    }
}

#[async_trait::async_trait]
impl SealedStore for SledSecrets {
    async fn get(&self, tenant: &str, install_id: &str) -> Result<Option<Vec<u8>>, SecretsError> {
        Ok(self.db.tree(TREE)?.get(record_key(tenant, install_id))?.map(|v| v.to_vec()))
    }

    async fn put(&self, tenant: &str, install_id: &str, sealed: Vec<u8>) -> Result<(), SecretsError> {
        let generation = self.db.generation();
        self.db.tree(TREE)?.insert(record_key(tenant, install_id), sealed)?;
        self.flush(generation).await
    }

    async fn delete(&self, tenant: &str, install_id: &str) -> Result<(), SecretsError> {
        let generation = self.db.generation();
        self.db.tree(TREE)?.remove(record_key(tenant, install_id))?;
        self.flush(generation).await
    }

    async fn all(&self) -> Result<Vec<(String, String, Vec<u8>)>, SecretsError> {
        self.dump()
    }

    async fn replace(&self, tenant: &str, install_id: &str, old: &[u8], new: Vec<u8>) -> Result<bool, SecretsError> {
        let generation = self.db.generation();
        let swapped = self.db.tree(TREE)?.compare_and_swap(record_key(tenant, install_id), Some(old), Some(new))?;
        self.flush(generation).await?;
        Ok(swapped.is_ok())
    }
}

/// The `install_secrets` table of the shared database.
#[derive(Debug)]
pub struct PgSecrets {
    pg: Pg,
}

impl PgSecrets {
    pub fn new(pg: Pg) -> Self {
        PgSecrets { pg }
    }
}

fn pg_error(e: impl Into<PgError>) -> SecretsError {
    SecretsError::Backend(crate::error_chain(&e.into()))
}

#[async_trait::async_trait]
impl SealedStore for PgSecrets {
    async fn get(&self, tenant: &str, install_id: &str) -> Result<Option<Vec<u8>>, SecretsError> {
        let c = self.pg.client().await.map_err(pg_error)?;
        let row = c
            .query_opt(
                "SELECT sealed FROM install_secrets WHERE tenant = $1 AND install_id = $2",
                &[&tenant, &install_id],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.map(|r| r.get("sealed")))
    }

    async fn put(&self, tenant: &str, install_id: &str, sealed: Vec<u8>) -> Result<(), SecretsError> {
        let c = self.pg.client().await.map_err(pg_error)?;
        c.execute(
            "INSERT INTO install_secrets (tenant, install_id, sealed) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, install_id) DO UPDATE SET sealed = excluded.sealed",
            &[&tenant, &install_id, &sealed],
        )
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    async fn delete(&self, tenant: &str, install_id: &str) -> Result<(), SecretsError> {
        let c = self.pg.client().await.map_err(pg_error)?;
        c.execute("DELETE FROM install_secrets WHERE tenant = $1 AND install_id = $2", &[&tenant, &install_id])
            .await
            .map_err(pg_error)?;
        Ok(())
    }
    async fn all(&self) -> Result<Vec<(String, String, Vec<u8>)>, SecretsError> {
        let c = self.pg.client().await.map_err(pg_error)?;
        let rows = c.query("SELECT tenant, install_id, sealed FROM install_secrets", &[]).await.map_err(pg_error)?;
        Ok(rows.iter().map(|r| (r.get("tenant"), r.get("install_id"), r.get("sealed"))).collect())
    }

    async fn replace(&self, tenant: &str, install_id: &str, old: &[u8], new: Vec<u8>) -> Result<bool, SecretsError> {
        let c = self.pg.client().await.map_err(pg_error)?;
        let n = c
            .execute(
                "UPDATE install_secrets SET sealed = $4 WHERE tenant = $1 AND install_id = $2 AND sealed = $3",
                &[&tenant, &install_id, &old, &new],
            )
            .await
            .map_err(pg_error)?;
        Ok(n == 1)
    }
}

/// Install secrets: sealed with the node key, kept in a [`SealedStore`].
#[derive(Debug)]
pub struct SecretStore {
    sealed: Arc<dyn SealedStore>,
    key: NodeKey,
}

/// The associated data of an install's sealed map: its tenant and install id.
fn record_key(tenant: &str, install_id: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(install_id.as_bytes());
    k
}

impl SecretStore {
    pub fn new(sealed: Arc<dyn SealedStore>, key: NodeKey) -> Self {
        SecretStore { sealed, key }
    }

    /// Replaces the install's secrets, durably.
    pub async fn put(&self, tenant: &str, install_id: &str, map: &SecretMap) -> Result<(), SecretsError> {
        let json = serde_json::to_vec(&map.0).map_err(|_| SecretsError::Seal)?;
        let sealed = self.key.seal(&record_key(tenant, install_id), &json)?;
        self.sealed.put(tenant, install_id, sealed).await
    }

    pub async fn get(&self, tenant: &str, install_id: &str) -> Result<SecretMap, SecretsError> {
        let Some(sealed) = self.sealed.get(tenant, install_id).await? else { return Ok(SecretMap::default()) };
        let plain = self
            .key
            .open(&record_key(tenant, install_id), &sealed)
            .ok_or_else(|| SecretsError::Open(install_id.to_string()))?;
        serde_json::from_slice(&plain).map(SecretMap).map_err(|_| SecretsError::Open(install_id.to_string()))
    }

    /// Removes the install's secrets (uninstall), durably.
    pub async fn delete(&self, tenant: &str, install_id: &str) -> Result<(), SecretsError> {
        self.sealed.delete(tenant, install_id).await
    }

    /// Seals every stored map again with the current key (the second step of a rotation: the
    /// maps the previous key sealed still open meanwhile). Returns how many were sealed again.
    pub async fn reseal_all(&self) -> Result<usize, SecretsError> {
        let mut resealed = 0;
        for (tenant, install, old) in self.sealed.all().await? {
            let aad = record_key(&tenant, &install);
            let plain = self.key.open(&aad, &old).ok_or_else(|| SecretsError::Open(install.clone()))?;
            let new = self.key.seal(&aad, &plain)?;
            // A map replaced meanwhile (by any host) was sealed with the new key already.
            if self.sealed.replace(&tenant, &install, &old, new).await? {
                resealed += 1;
            }
        }
        Ok(resealed)
    }

    /// The key maps are sealed with.
    pub fn key(&self) -> &NodeKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> (SecretStore, Arc<SledSecrets>) {
        let sealed = Arc::new(SledSecrets::new(Arc::new(SledDb::temporary().unwrap())));
        (SecretStore::new(sealed.clone(), NodeKey::load_or_create(&dir.join("node.key")).unwrap()), sealed)
    }

    #[tokio::test]
    async fn sealed_at_rest_and_bound_to_the_install() {
        let dir = tempfile::tempdir().unwrap();
        let (s, raw_store) = store(dir.path());
        let map = SecretMap(BTreeMap::from([("api_key".to_string(), "PLAINTEXT-VALUE".to_string())]));
        s.put("t1", "i1", &map).await.unwrap();
        assert_eq!(s.get("t1", "i1").await.unwrap(), map);
        assert_eq!(s.get("t2", "i1").await.unwrap(), SecretMap::default(), "another tenant has none");
        let raw = raw_store.get("t1", "i1").await.unwrap().unwrap();
        assert!(!raw.windows(15).any(|w| w == b"PLAINTEXT-VALUE"), "encrypted at rest");
        // Copied under another tenant, the sealed map does not open.
        raw_store.put("t2", "i1", raw).await.unwrap();
        assert!(matches!(s.get("t2", "i1").await, Err(SecretsError::Open(_))));
        assert_eq!(format!("{map:?}"), "{\"api_key\"} (values redacted)");
        s.delete("t1", "i1").await.unwrap();
        assert_eq!(s.get("t1", "i1").await.unwrap(), SecretMap::default());
    }

    #[test]
    fn the_key_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let a = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = a.seal(b"aad", b"x").unwrap();
        let b = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(b.open(b"aad", &sealed).as_deref(), Some(&b"x"[..]), "the same key after a restart");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(NodeKey::load_or_create(&path), Err(SecretsError::Key { .. })));
    }
}

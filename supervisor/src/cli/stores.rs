//! Opening the configured storage backend (`[storage]`): the embedded sled database in the state
//! directory, or a PostgreSQL database that several hosts share, migrated on start, with the
//! node key checked against the one the database's secrets are sealed with.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, redacted_url};
use crate::db::postgres::{Pg, PgError};
use crate::hostapi::storage::postgres::PgKv;
use crate::hostapi::storage::sled::SledKv;
use crate::registry::{BlobStore, PgRegistry, S3Settings, SharedBlobs, SledRegistry, StoreError};
use crate::secrets::{NodeKey, PgSecrets, SecretStore, SledSecrets};
use crate::service::Stores;
use crate::service::bundles::Bundles;

/// Why the backend did not open.
#[derive(Debug)]
pub enum OpenError {
    /// A configuration the operator must change (exit 78): the message says what.
    Config(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for OpenError {
    fn from(e: anyhow::Error) -> Self {
        OpenError::Other(e)
    }
}

/// Opens the backend, or says why on stderr and gives the exit code (78 for a configuration
/// the operator must change).
pub fn open_or_exit(config: &Config, rt: &tokio::runtime::Runtime) -> anyhow::Result<Result<Stores, u8>> {
    or_exit(open(config, rt))
}

/// What opened, or the exit code once a configuration problem is said on stderr (78).
pub fn or_exit<T>(opened: Result<T, OpenError>) -> anyhow::Result<Result<T, u8>> {
    match opened {
        Ok(s) => Ok(Ok(s)),
        Err(OpenError::Config(message)) => {
            eprintln!("error: {message}");
            Ok(Err(super::EXIT_CONFIG))
        }
        Err(OpenError::Other(e)) => Err(e),
    }
}

/// Opens the bundle stores `[blobs]` names: the state directory's blob store alone (`fs`), or
/// the object store with the state directory as its bounded cache (`s3`). The bucket is
/// probed: a missing bucket or refused credentials exit 78; an unreachable store is only
/// logged (cached bundles keep running, others answer 503 until it is back).
pub fn open_blobs(config: &Config, rt: &tokio::runtime::Runtime) -> Result<Bundles, OpenError> {
    let dir = config.state.dir.join("bundles").join("sha256");
    let max_bytes = config.bundles.max_compressed_mb << 20;
    if config.blobs.backend != "s3" {
        let local = BlobStore::open(dir).map_err(|e| anyhow::Error::new(e).context("opening the blob store"))?;
        return Ok(Bundles { local, shared: None, max_bytes });
    }
    let shared = open_shared(config, rt)?;
    match rt.block_on(shared.probe()) {
        Ok(()) => tracing::info!(store = %shared.label(), "the object store answers"),
        Err(e) if e.is_config() => {
            return Err(OpenError::Config(format!(
                "blobs: {} refused this host: {} (check blobs.bucket and the credentials)",
                shared.label(),
                crate::error_chain(&e)
            )));
        }
        Err(e) => tracing::warn!(
            error = %crate::error_chain(&e),
            "the object store cannot be reached; cached bundles run, others answer 503 until it is back"
        ),
    }
    let local = BlobStore::open_cache(dir, config.blobs.cache_max_mb << 20)
        .map_err(|e| anyhow::Error::new(e).context("opening the bundle cache"))?;
    Ok(Bundles { local, shared: Some(shared), max_bytes })
}

/// A client for the bucket `[blobs]` names (whatever its `backend` says); requests run on `rt`.
pub fn open_shared(config: &Config, rt: &tokio::runtime::Runtime) -> Result<SharedBlobs, OpenError> {
    let b = &config.blobs;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (id, secret) = config.blobs_credentials(&env).map_err(|e| OpenError::Config(format!("blobs: {e}")))?;
    let (Some(access_key_id), Some(secret_access_key)) = (id, secret) else {
        return Err(OpenError::Config(
            "blobs: no credentials for the object store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
             blobs.access_key_id (or blobs.access_key_id_file) and blobs.secret_access_key_file"
                .into(),
        ));
    };
    let ca_pem = match &b.ca_file {
        Some(f) => Some(
            std::fs::read(f).map_err(|e| OpenError::Config(format!("blobs.ca_file: reading {}: {e}", f.display())))?,
        ),
        None => None,
    };
    let settings = S3Settings {
        endpoint: b.endpoint.clone(),
        bucket: b.bucket.clone().unwrap_or_default(),
        region: b.region.clone(),
        prefix: b.prefix.clone(),
        access_key_id,
        secret_access_key,
        allow_http: b.allow_http,
        ca_pem,
        timeout: Duration::from_millis(b.timeout_ms),
    };
    SharedBlobs::open(&settings, rt.handle().clone()).map_err(|e| OpenError::Config(e.to_string()))
}

/// Opens the backend the configuration names.
pub fn open(config: &Config, rt: &tokio::runtime::Runtime) -> Result<Stores, OpenError> {
    let key_file = config.state.dir.join("node.key");
    match config.storage.backend.as_str() {
        "postgres" => rt.block_on(open_postgres(config, &key_file)),
        _ => open_sled(config, &key_file),
    }
}

fn open_sled(config: &Config, key_file: &Path) -> Result<Stores, OpenError> {
    let registry = match SledRegistry::open(&config.state.dir.join("db")) {
        Ok(r) => r,
        Err(e @ StoreError::NewerSchema { .. }) => return Err(OpenError::Config(e.to_string())),
        Err(e) => return Err(anyhow::Error::new(e).context("opening the database").into()),
    };
    let node_key = NodeKey::load_or_create(key_file).map_err(|e| OpenError::Config(e.to_string()))?;
    Ok(Stores {
        storage: Arc::new(SledKv::new(registry.db().clone())),
        secrets: SecretStore::new(Arc::new(SledSecrets::new(registry.db().clone())), node_key),
        registry: Arc::new(registry),
        shared: None,
    })
}

async fn open_postgres(config: &Config, key_file: &Path) -> Result<Stores, OpenError> {
    let url = config
        .storage_url()
        .map_err(|e| OpenError::Config(format!("storage.url_file: {e}")))?
        .ok_or_else(|| OpenError::Config("storage.url: required with storage.backend = \"postgres\"".into()))?;
    let st = &config.storage;
    let pg = Pg::connect(&url, st.pool_size, Duration::from_millis(st.statement_timeout_ms), st.ca_file.as_deref())
        .map_err(|e| OpenError::Config(e.to_string()))?;
    let at = redacted_url(&url);
    match pg.migrate().await {
        Ok(m) if m.from != m.to => tracing::info!(from = m.from, to = m.to, database = %at, "database schema migrated"),
        Ok(_) => {}
        Err(e @ PgError::Newer { .. }) => return Err(OpenError::Config(format!("{at}: {e}"))),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("preparing the database {at}")).into()),
    }
    let node_key = node_key(&pg, key_file).await?;
    tracing::info!(database = %at, node_key = %node_key.fingerprint, "storage on PostgreSQL");
    Ok(Stores {
        registry: Arc::new(PgRegistry::new(pg.clone())),
        storage: Arc::new(PgKv::new(pg.clone())),
        secrets: SecretStore::new(Arc::new(PgSecrets::new(pg.clone())), node_key),
        shared: Some(pg),
    })
}

/// The node key, which must be the one every host sharing the database uses: the database keeps
/// its fingerprint (written by the first host, changed by `rotate-node-key`). During a rotation a
/// host's previous key may be the one the database names. A host without a key generates one
/// only when the database has none yet.
pub async fn node_key(pg: &Pg, key_file: &Path) -> Result<NodeKey, OpenError> {
    let read = || async {
        let c = pg.client().await?;
        let row = c.query_opt("SELECT value FROM runner_meta WHERE key = 'node_key_fingerprint'", &[]).await?;
        Ok::<_, PgError>(row.map(|r| r.get::<_, String>(0)))
    };
    let failed = |e: PgError| OpenError::Other(anyhow::Error::new(e).context("reading the node key fingerprint"));
    let stored = read().await.map_err(failed)?;
    let key = match (NodeKey::load(key_file).map_err(|e| OpenError::Config(e.to_string()))?, &stored) {
        (Some(key), _) => key,
        (None, None) => NodeKey::load_or_create(key_file).map_err(|e| OpenError::Config(e.to_string()))?,
        (None, Some(fingerprint)) => {
            return Err(OpenError::Config(format!(
                "node key: this host has none ({} does not exist, and no node-key credential), but the database's \
                 secrets are sealed with the key whose fingerprint is {fingerprint}: copy that key from another host \
                 (or give it as the node-key credential); a new key would not open them",
                key_file.display()
            )));
        }
    };
    let c = pg.client().await.map_err(failed)?;
    c.execute(
        "INSERT INTO runner_meta (key, value) VALUES ('node_key_fingerprint', $1) ON CONFLICT (key) DO NOTHING",
        &[&key.fingerprint],
    )
    .await
    .map_err(|e| failed(e.into()))?;
    let stored = read().await.map_err(failed)?.unwrap_or_default();
    if stored != key.fingerprint && key.answers_to(&stored) {
        tracing::warn!(
            new = %key.fingerprint,
            previous = %stored,
            "node key rotation in progress: the database's secrets are sealed with the previous key; once every host \
             has the new key, run alga-runner rotate-node-key"
        );
    } else if stored != key.fingerprint {
        return Err(OpenError::Config(format!(
            "node key: {} has fingerprint {}, but the database's secrets are sealed with the key whose fingerprint is \
             {stored}; every host sharing a database must use the same node key (copy it from another host)",
            key.source.display(),
            key.fingerprint
        )));
    }
    Ok(key)
}

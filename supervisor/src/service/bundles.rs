//! Where the service keeps bundle bytes: the local blob store alone (`[blobs] backend = "fs"`),
//! or the object store several hosts share with the local store as its bounded cache (`s3`).

use super::problem::Problem;
use crate::ops::metrics::Metrics;
use crate::registry::shared_blobs::{SharedBlobError, SharedBlobs};
use crate::registry::{BlobStore, RegistryStore};

/// Why a bundle's bytes could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BundleBytesError {
    /// No store holds it.
    #[error("bundle {0} is in no store")]
    Missing(String),
    /// The object store holds other bytes under its name.
    #[error("the object store's copy of {0} does not match its hash")]
    Corrupt(String),
    /// The object store cannot be reached: worth a retry.
    #[error(transparent)]
    Unavailable(#[from] SharedBlobError),
    /// The local disk failed.
    #[error("{0}")]
    Local(String),
}

impl BundleBytesError {
    /// What an HTTP caller is told.
    pub fn problem(&self) -> Problem {
        match self {
            BundleBytesError::Unavailable(e) => {
                tracing::warn!(error = %e, "the object store failed");
                Problem::new(503, "storage_unavailable", "the object store cannot be reached; retry later")
            }
            BundleBytesError::Corrupt(_) => {
                Problem::new(502, "bundle_verification_failed", "the stored bundle no longer matches its hash")
            }
            e => Problem::internal(e.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Bundles {
    /// Every bundle (fs), or the cache of the shared ones (s3).
    pub local: BlobStore,
    pub shared: Option<SharedBlobs>,
    /// The largest bundle the object store may send (`bundles.max_compressed_mb`).
    pub max_bytes: u64,
}

impl Bundles {
    /// The bytes of `content_hash`: from the local store, else fetched from the object store,
    /// checked against the hash and kept in the cache. Blocking disk work runs off the caller's
    /// thread. The caller still verifies what it gets (hash and signature) before using it.
    pub async fn read(&self, content_hash: &str, metrics: &Metrics) -> Result<Vec<u8>, BundleBytesError> {
        let (local, hash) = (self.local.clone(), content_hash.to_string());
        let cached = tokio::task::spawn_blocking(move || local.get(&hash))
            .await
            .map_err(|e| BundleBytesError::Local(format!("reading the bundle: {e}")))?;
        let err = match cached {
            Ok(bytes) => return Ok(bytes),
            Err(e) => e,
        };
        let Some(shared) = &self.shared else {
            return Err(if err.kind() == std::io::ErrorKind::NotFound {
                BundleBytesError::Missing(content_hash.to_string())
            } else {
                BundleBytesError::Local(err.to_string())
            });
        };
        let fetched = match shared.get(shared.bundle_key(content_hash), self.max_bytes).await {
            Ok(Some(bytes)) => Vec::from(bytes),
            Ok(None) => {
                metrics.bundle_fetch("missing");
                return Err(BundleBytesError::Missing(content_hash.to_string()));
            }
            // More than any bundle may be: not the bundle, whatever it is.
            Err(e @ SharedBlobError::TooLarge { .. }) => {
                metrics.bundle_fetch("corrupt");
                tracing::warn!(error = %e, "the object store's copy of a bundle is too large");
                return Err(BundleBytesError::Corrupt(content_hash.to_string()));
            }
            Err(e) => {
                metrics.bundle_fetch("failed");
                return Err(e.into());
            }
        };
        let (local, hash) = (self.local.clone(), content_hash.to_string());
        tokio::task::spawn_blocking(move || {
            if alga_shared::bundle::content_hash(&fetched) != hash {
                return Err(BundleBytesError::Corrupt(hash));
            }
            match local.put(&hash, &fetched) {
                Ok(()) => local.release(&hash),
                // The cache is only a cache: the bytes are still good for this use.
                Err(e) => tracing::warn!(content_hash = %hash, error = %e, "caching a fetched bundle failed"),
            }
            Ok(fetched)
        })
        .await
        .map_err(|e| BundleBytesError::Local(format!("checking the fetched bundle: {e}")))?
        .inspect(|_| {
            metrics.bundle_fetch("ok");
            tracing::info!(content_hash, store = %shared.label(), "fetched a bundle from the object store");
        })
        .inspect_err(|_| metrics.bundle_fetch("corrupt"))
    }

    /// Puts a bundle (already stored locally) and its signature in the object store, when
    /// there is one, so that every host can fetch it; the local copy may be evicted from then on.
    pub async fn share(&self, content_hash: &str, bytes: bytes::Bytes, signature: &str) -> Result<(), SharedBlobError> {
        let Some(shared) = &self.shared else { return Ok(()) };
        shared.put_once(shared.bundle_key(content_hash), bytes).await?;
        shared.put_once(shared.signature_key(content_hash), bytes::Bytes::from(signature.to_string())).await?;
        self.local.release(content_hash);
        Ok(())
    }

    /// Puts a bundle back into the object store whatever is there now (its publisher sent the
    /// same bytes again: a copy that went missing or bad is repaired).
    pub async fn repair(
        &self,
        content_hash: &str,
        bytes: bytes::Bytes,
        signature: &str,
    ) -> Result<(), SharedBlobError> {
        let Some(shared) = &self.shared else { return Ok(()) };
        shared.put(shared.bundle_key(content_hash), bytes).await?;
        shared.put(shared.signature_key(content_hash), bytes::Bytes::from(signature.to_string())).await?;
        self.local.release(content_hash);
        Ok(())
    }

    /// At start, with an object store: every bundle the local store holds that the object store
    /// lacks (a host switched from `fs` to `s3`) is put there, so that the cache may evict it;
    /// those found there may be evicted at once. Stops at the first failure of the store (the
    /// bundles it did not reach stay, not evictable, until the next start).
    pub async fn adopt(&self, registry: &dyn RegistryStore) {
        let Some(shared) = &self.shared else { return };
        let (mut found, mut put) = (0, 0);
        for hash in self.local.list().unwrap_or_default() {
            let step = async {
                if shared.exists(shared.bundle_key(&hash)).await? {
                    found += 1;
                    self.local.release(&hash);
                    return Ok(());
                }
                // Only bundles a record refers to (and so with a signature) are worth sharing.
                let Ok(Some(record)) = registry.bundle(&hash).await else { return Ok(()) };
                let signature = record.signature;
                let (local, h) = (self.local.clone(), hash.clone());
                let bytes = tokio::task::spawn_blocking(move || local.get(&h))
                    .await
                    .map_err(|e| SharedBlobError::Task(e.to_string()))?
                    .map_err(|e| SharedBlobError::Task(format!("reading {hash}: {e}")))?;
                if alga_shared::bundle::content_hash(&bytes) != hash {
                    tracing::error!(content_hash = %hash, "a local bundle no longer matches its hash; not shared");
                    return Ok(());
                }
                self.share(&hash, bytes::Bytes::from(bytes), &signature).await?;
                put += 1;
                Ok::<_, SharedBlobError>(())
            };
            if let Err(e) = step.await {
                tracing::warn!(error = %e, "checking the local bundles against the object store stopped");
                break;
            }
        }
        tracing::info!(found, put, "local bundles checked against the object store");
    }
}

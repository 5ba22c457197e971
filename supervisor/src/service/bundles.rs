//! Where the service keeps bundle bytes: the local blob store alone (`[blobs] backend = "fs"`),
//! or the object store several hosts share with the local store as its bounded cache (`s3`).

use super::problem::Problem;
use crate::ops::metrics::Metrics;
use crate::registry::BlobStore;
use crate::registry::shared_blobs::{SharedBlobError, SharedBlobs};

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
        let fetched = match shared.get(shared.bundle_key(content_hash)).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                metrics.bundle_fetch("missing");
                return Err(BundleBytesError::Missing(content_hash.to_string()));
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
            if let Err(e) = local.put(&hash, &fetched) {
                // The cache is only a cache: the bytes are still good for this use.
                tracing::warn!(content_hash = %hash, error = %e, "caching a fetched bundle failed");
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

    /// Whether some store holds `content_hash` (the object store is asked when the cache
    /// lacks it).
    pub async fn is_stored(&self, content_hash: &str) -> Result<bool, SharedBlobError> {
        if self.local.exists(content_hash) {
            return Ok(true);
        }
        match &self.shared {
            Some(shared) => shared.exists(shared.bundle_key(content_hash)).await,
            None => Ok(false),
        }
    }

    /// Puts a bundle (already stored locally) and its signature in the object store, when
    /// there is one, so that every host can fetch it.
    pub async fn share(&self, content_hash: &str, bytes: bytes::Bytes, signature: &str) -> Result<(), SharedBlobError> {
        let Some(shared) = &self.shared else { return Ok(()) };
        shared.put_once(shared.bundle_key(content_hash), bytes).await?;
        shared.put_once(shared.signature_key(content_hash), bytes::Bytes::from(signature.to_string())).await
    }

    /// Takes a bundle no record refers to (a publish refused after it was shared) out of the
    /// object store again.
    pub async fn withdraw(&self, content_hash: &str) {
        let Some(shared) = &self.shared else { return };
        for key in [shared.bundle_key(content_hash), shared.signature_key(content_hash)] {
            if let Err(e) = shared.delete(key).await {
                tracing::warn!(content_hash, error = %e, "removing a refused bundle from the object store failed");
            }
        }
    }
}

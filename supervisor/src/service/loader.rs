//! The execution cache: a bundle enters it (first use after start, after a trust reload) only
//! after its stored bytes are hashed again and its signature verified again against the current
//! trust bundle; its compiled artifact's own SHA-256 is checked before use (03-bundles.md,
//! "Where verification happens", step 3).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alga_shared::bundle;
use alga_shared::signing::{self, Identity, TrustBundle};

use super::Service;
use super::bundles::BundleBytesError;
use crate::exec::artifacts::{Artifact, ArtifactError, sha256_hex};
use crate::exec::executor;
use crate::registry::{BundleRecord, ExtensionRecord, VersionRecord};

/// A bundle ready to execute.
#[derive(Debug)]
pub struct Loaded {
    pub content_hash: String,
    /// The trust generation it was verified under.
    pub generation: u64,
    pub artifact: Arc<Artifact>,
}

/// Why a bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bundle failed verification (hash, signature, revoked key): 502
    /// `bundle_verification_failed`.
    #[error("{0}")]
    Verification(String),
    /// The object store holding the bundle cannot be reached: 503 `storage_unavailable`.
    #[error("{0}")]
    Unavailable(String),
    /// The runner failed (disk, compile sandbox).
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug, Default)]
pub struct Loader {
    cache: Mutex<HashMap<String, Arc<Loaded>>>,
}

/// How a compiled artifact from the object store is known to be the right one.
#[derive(Debug, Clone, Copy)]
pub enum ArtifactCheck<'a> {
    /// Its SHA-256 was recorded at publish in the registry (local mode).
    Recorded(&'a BundleRecord),
    /// A token of the node key beside it says its SHA-256 (host-registry mode: there is no
    /// publish record, and the bucket is shared with the host, so only hosts holding the node
    /// key can vouch for native code).
    Vouched,
}

impl Loader {
    pub fn cached(&self, content_hash: &str, generation: u64) -> Option<Arc<Loaded>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(content_hash).filter(|l| l.generation == generation).cloned()
    }

    /// The loaded bundle, verifying and compiling it first if needed.
    pub async fn load(
        &self,
        svc: &Arc<Service>,
        ext: &ExtensionRecord,
        version: &VersionRecord,
    ) -> Result<Arc<Loaded>, LoadError> {
        let trust = svc.trust();
        if let Some(l) = self.cached(&version.content_hash, trust.generation) {
            return Ok(l);
        }
        let hash = version.content_hash.clone();
        // Reading, hashing, verifying and unpacking a bundle is blocking work: off the async workers.
        let record = svc
            .registry
            .bundle(&hash)
            .await
            .map_err(|e| LoadError::Internal(crate::error_chain(&e)))?
            .ok_or_else(|| LoadError::Verification(format!("no bundle record for {hash}")))?;
        let bytes = svc.blobs.read(&hash, &svc.core.spawner.metrics).await.map_err(|e| match e {
            BundleBytesError::Unavailable(e) => LoadError::Unavailable(e.to_string()),
            BundleBytesError::Local(m) => LoadError::Internal(m),
            e @ (BundleBytesError::Missing(_) | BundleBytesError::Corrupt(_)) => LoadError::Verification(e.to_string()),
        })?;
        let (record, wasm) = {
            let (svc, ext, version, trust) = (svc.clone(), ext.clone(), version.clone(), trust.clone());
            let metrics = svc.core.spawner.metrics.clone();
            let checked = svc
                .clone()
                .blocking(move || verify_and_extract(&svc, bytes, record, &ext, &version, &trust.bundle))
                .await
                .map_err(|p| LoadError::Internal(p.to_string()))?;
            if !matches!(checked, Err(LoadError::Internal(_))) {
                metrics.verification("load", checked.is_ok());
            }
            checked?
        };
        let artifact = artifact_of(svc, &hash, ArtifactCheck::Recorded(&record), wasm).await?;
        // The compiled code must be the code compiled at publish (compilation is deterministic;
        // the cache's own check only proves the file matches its neighbouring hash file).
        if let Some(expected) = record.artifacts.get(svc.core.spawner.fork.fingerprint())
            && *expected != artifact.sha256
        {
            return Err(LoadError::Verification(format!(
                "the compiled code of {hash} is not the code compiled at publish (sha256 {} instead of {expected})",
                artifact.sha256
            )));
        }
        Ok(self.keep(hash, trust.generation, artifact))
    }

    /// Loads a component already verified (hash, signature, identity) under trust generation
    /// `generation` (host-registry mode).
    pub async fn load_verified(
        &self,
        svc: &Arc<Service>,
        content_hash: &str,
        generation: u64,
        wasm: Vec<u8>,
    ) -> Result<Arc<Loaded>, LoadError> {
        let artifact = artifact_of(svc, content_hash, ArtifactCheck::Vouched, wasm).await?;
        Ok(self.keep(content_hash.to_string(), generation, artifact))
    }

    fn keep(&self, hash: String, generation: u64, artifact: Arc<Artifact>) -> Arc<Loaded> {
        let loaded = Arc::new(Loaded { content_hash: hash.clone(), generation, artifact });
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(hash, loaded.clone());
        loaded
    }
}

/// What a vouch token of an artifact is bound to: its key in the object store.
fn vouch_label(key: &object_store::path::Path) -> Vec<u8> {
    let mut label = b"alga-runner compiled artifact\0".to_vec();
    label.extend_from_slice(key.as_ref().as_bytes());
    label
}

/// The SHA-256 (hex) the object store's vouch token beside the artifact says, when a node key
/// of this cluster made it.
async fn vouched_sha(svc: &Service, key: &object_store::path::Path) -> Option<String> {
    let shared = svc.blobs.shared.as_ref()?;
    let token = shared.get(vouch_key(key), 4096).await.ok()??;
    let sha = svc.secrets.key().vouched(&vouch_label(key), &token)?;
    String::from_utf8(sha).ok()
}

fn vouch_key(key: &object_store::path::Path) -> object_store::path::Path {
    object_store::path::Path::from(format!("{key}.vouch"))
}

/// The compiled artifact of `wasm`: this host's, else the one another host stored in the object
/// store (used only when its SHA-256 is the one recorded at publish), else compiled here (and
/// shared for the next host).
async fn artifact_of(
    svc: &Arc<Service>,
    content_hash: &str,
    check: ArtifactCheck<'_>,
    wasm: Vec<u8>,
) -> Result<Arc<Artifact>, LoadError> {
    let core = svc.core.clone();
    let fingerprint = core.spawner.fork.fingerprint().to_string();
    let wasm_sha = sha256_hex(&wasm);
    let cached = {
        let (core, wasm_sha) = (core.clone(), wasm_sha.clone());
        svc.blocking(move || core.artifacts.lookup(&wasm_sha)).await.map_err(|p| LoadError::Internal(p.to_string()))?
    };
    if let Ok(Some(a)) = cached {
        return Ok(a);
    }
    let expected = match check {
        ArtifactCheck::Recorded(record) => record.artifacts.get(&fingerprint).cloned(),
        ArtifactCheck::Vouched => match &svc.blobs.shared {
            Some(shared) => vouched_sha(svc, &shared.artifact_key(&wasm_sha, &fingerprint)).await,
            None => None,
        },
    };
    let mut bad_copy = false;
    if let (Some(shared), Some(expected)) = (&svc.blobs.shared, &expected) {
        let max = core.spawner.settings.max_artifact_bytes;
        match shared.get(shared.artifact_key(&wasm_sha, &fingerprint), max).await {
            Ok(Some(bytes)) => {
                // Hashing tens of megabytes and sealing them into a memfd: blocking work.
                let (core, key, want) = (core.clone(), wasm_sha.clone(), expected.clone());
                let checked = svc
                    .blocking(move || {
                        let sha = sha256_hex(&bytes);
                        if sha != want {
                            return Ok(Err(sha));
                        }
                        core.artifacts.store(&key, &bytes).map(Ok)
                    })
                    .await
                    .map_err(|p| LoadError::Internal(p.to_string()))?
                    .map_err(|e| LoadError::Internal(format!("caching the shared artifact: {e}")))?;
                match checked {
                    Ok(stored) => {
                        svc.core.spawner.metrics.artifact_load("shared");
                        tracing::info!(content_hash, "using the compiled artifact another host stored");
                        return Ok(stored);
                    }
                    Err(sha256) => {
                        bad_copy = true;
                        tracing::warn!(
                            content_hash,
                            %sha256,
                            %expected,
                            "the object store's compiled artifact is not the one recorded at publish; compiling \
                             instead (and putting the right one back)"
                        )
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "fetching the compiled artifact failed; compiling instead"),
        }
    }
    let artifact = svc
        .on_core(async move { executor::artifact_for(&core, &wasm).await })
        .await
        .map_err(|p| LoadError::Internal(p.to_string()))?
        .map_err(|e| match e {
            ArtifactError::Invalid(m) => LoadError::Verification(format!("the component no longer compiles: {m}")),
            ArtifactError::Failed(m) => LoadError::Internal(m),
        })?;
    svc.core.spawner.metrics.artifact_load("compiled");
    match check {
        ArtifactCheck::Recorded(_) if expected.as_ref() == Some(&artifact.sha256) => {
            share_artifact(svc, &artifact, &fingerprint, bad_copy).await;
        }
        ArtifactCheck::Recorded(_) => {}
        ArtifactCheck::Vouched => share_vouched(svc, &artifact, &fingerprint).await,
    }
    Ok(artifact)
}

/// Puts a compiled artifact and the node key's token for its SHA-256 in the object store
/// (host-registry mode), over what is there: a host that compiled has the right bytes.
async fn share_vouched(svc: &Service, artifact: &Arc<Artifact>, fingerprint: &str) {
    let Some(shared) = &svc.blobs.shared else { return };
    let key = shared.artifact_key(&artifact.wasm_sha256, fingerprint);
    let token = match svc.secrets.key().vouch(&vouch_label(&key), artifact.sha256.as_bytes()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "vouching for a compiled artifact failed; other hosts will compile it");
            return;
        }
    };
    share_artifact(svc, artifact, fingerprint, true).await;
    if let Err(e) = shared.put(vouch_key(&key), token).await {
        tracing::warn!(error = %e, "sharing a compiled artifact's token failed; other hosts will compile it");
    }
}

/// Puts a compiled artifact in the object store (when there is one) for the other hosts, over
/// what is there when `replace` (a bad copy); a failure only costs them a compile.
pub async fn share_artifact(svc: &Service, artifact: &Arc<Artifact>, fingerprint: &str, replace: bool) {
    let Some(shared) = &svc.blobs.shared else { return };
    // A copy of tens of megabytes: blocking work.
    let copy = artifact.clone();
    let bytes = match svc.blocking(move || copy.read()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading a compiled artifact to share it failed");
            return;
        }
        Err(p) => {
            tracing::warn!(error = %p, "reading a compiled artifact to share it failed");
            return;
        }
    };
    let key = shared.artifact_key(&artifact.wasm_sha256, fingerprint);
    let put = if replace { shared.put(key, bytes).await } else { shared.put_once(key, bytes).await };
    if let Err(e) = put {
        tracing::warn!(error = %e, "sharing a compiled artifact failed; other hosts will compile it themselves");
    }
}

/// Checks a stored bundle's bytes against its hash and its signature against the trust
/// bundle in force, and returns its record and its component.
fn verify_and_extract(
    svc: &Service,
    bytes: Vec<u8>,
    record: BundleRecord,
    ext: &ExtensionRecord,
    version: &VersionRecord,
    trust: &TrustBundle,
) -> Result<(BundleRecord, Vec<u8>), LoadError> {
    let hash = &version.content_hash;
    if bundle::content_hash(&bytes) != *hash {
        return Err(LoadError::Verification(format!("the stored bytes of {hash} no longer match their hash")));
    }
    let verified =
        signing::verify_bytes(trust, &bytes, &record.signature).map_err(|e| LoadError::Verification(e.to_string()))?;
    let identity =
        Identity { name: &ext.name, version: &version.version, publisher: &ext.publisher, content_hash: hash };
    signing::check_identity(&verified, identity).map_err(|e| LoadError::Verification(e.to_string()))?;
    let opened = bundle::open(&bytes, &svc.archive_limits()).map_err(|e| LoadError::Verification(e.to_string()))?;
    let wasm = opened.component().ok_or_else(|| LoadError::Verification(format!("{hash} has no component")))?.to_vec();
    Ok((record, wasm))
}

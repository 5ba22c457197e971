//! Publishing a bundle (`POST /v1/bundles`): signature over the exact bytes first, then archive
//! safety and the manifest, then the signature's identity, then compilation in a sandbox; only
//! then is anything stored (blob, then the registry records in one transaction).

use std::collections::BTreeMap;
use std::sync::Arc;

use alga_shared::bundle::{self, BundleError};
use alga_shared::signing::{self, Identity, SignatureError};
use serde::Serialize;

use super::Service;
use super::bundles::BundleBytesError;
use crate::exec::artifacts::{ArtifactError, sha256_hex};
use crate::exec::executor;
use crate::registry::ui_tree::UI_PREFIX;
use crate::registry::{
    BundleRecord, ExtensionRecord, PublishOutcome, UiTrees, VersionRecord, VersionState, new_id, now_ms,
};
use crate::service::problem::Problem;

/// What `POST /v1/bundles` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub extension_id: String,
    pub name: String,
    pub version: String,
    pub content_hash: String,
    pub size_bytes: u64,
    pub signer_key_id: String,
    /// Manifest fields accepted but ignored (unknown to this runner and to Alga's schema), each
    /// as `$.path: message`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

pub fn signature_problem(e: &SignatureError) -> Problem {
    if e.is_untrusted() {
        Problem::new(403, "signer_untrusted", "the bundle is not signed by a trusted key").detail(e.to_string())
    } else {
        Problem::new(401, "signature_invalid", "the bundle's signature is not valid").detail(e.to_string())
    }
}

pub fn bundle_problem(e: BundleError) -> Problem {
    match e {
        BundleError::TooLarge { max, .. } => Problem::too_large(max),
        BundleError::Invalid(detail) => {
            Problem::new(400, "invalid_bundle", "the bundle archive is not acceptable").detail(detail)
        }
        BundleError::Manifest(errors) => Problem::new(422, "invalid_manifest", "the bundle's manifest is not valid")
            .detail(format!("{} problem(s) in manifest.json", errors.0.len()))
            .errors(errors.0),
    }
}

/// Publishes `bytes` signed by `signature` (the `.minisig` text). Returns whether it was new.
pub async fn publish(svc: &Arc<Service>, bytes: Vec<u8>, signature: String) -> Result<(bool, Published), Problem> {
    let trust = svc.trust();
    let limits = svc.archive_limits();
    // Verifying (hashing the whole upload) and unpacking are blocking work: off the async workers.
    let sig = signature.clone();
    let metrics = svc.core.spawner.metrics.clone();
    let (bytes, verified, opened) = svc
        .blocking(move || -> Result<_, Problem> {
            let verified = signing::verify_bytes(&trust.bundle, &bytes, &sig);
            metrics.verification("publish", verified.is_ok());
            let verified = verified.map_err(|e| signature_problem(&e))?;
            let opened = bundle::open(&bytes, &limits).map_err(bundle_problem)?;
            Ok((bytes, verified, opened))
        })
        .await??;
    let manifest = &opened.manifest;
    signing::check_identity(&verified, Identity::of(manifest, &opened.content_hash))
        .map_err(|e| signature_problem(&e))?;

    let published = |extension_id: String| Published {
        extension_id,
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        content_hash: opened.content_hash.clone(),
        size_bytes: opened.size,
        signer_key_id: verified.key_id.clone(),
        warnings: manifest.warnings.iter().map(ToString::to_string).collect(),
    };

    // Answer a re-upload or a conflict before doing any work.
    if let Some(ext) = svc.registry.extension(&manifest.name).await? {
        if ext.publisher != manifest.publisher {
            return Err(name_taken(&manifest.name, &ext.publisher));
        }
        if let Some(existing) = svc.registry.version(&ext.id, &manifest.version).await? {
            if existing.content_hash != opened.content_hash {
                return Err(version_conflict(&manifest.name, &manifest.version, &existing.content_hash));
            }
            // The same bytes again: if the stored copy went missing, this upload restores it.
            if existing.state == VersionState::Unavailable
                || !svc.blobs.local.exists(&existing.content_hash)
                || !svc.ui_trees.exists(&existing.content_hash)
            {
                restore(svc, existing, bytes, &signature, ui_files(&opened.files)).await?;
            } else if svc.blobs.shared.is_some() {
                // The object store's copy may be the one that went missing or bad.
                svc.blobs
                    .repair(&existing.content_hash, bytes::Bytes::from(bytes), &signature)
                    .await
                    .map_err(|e| BundleBytesError::from(e).problem())?;
            }
            return Ok((false, published(ext.id)));
        }
    }

    // Compile now, in a sandbox: a component that does not compile or is of another world is
    // refused before anything is stored.
    let mut artifacts = BTreeMap::new();
    let mut compiled = None;
    let component_sha256 = match opened.component() {
        Some(wasm) => {
            let wasm = wasm.to_vec();
            let core = svc.core.clone();
            let sha = sha256_hex(&wasm);
            let artifact =
                svc.on_core(async move { executor::artifact_for(&core, &wasm).await }).await?.map_err(|e| match e {
                    ArtifactError::Invalid(m) => {
                        Problem::new(400, "invalid_bundle", "the bundle's component is not acceptable")
                            .detail(format!("{}: {m}", manifest.entry))
                    }
                    ArtifactError::Failed(m) => Problem::internal(format!("compiling the component: {m}")),
                })?;
            artifacts.insert(svc.core.spawner.fork.fingerprint().to_string(), artifact.sha256.clone());
            compiled = Some(artifact);
            Some(sha)
        }
        None => None,
    };
    if !opened.ignored_precompiled().is_empty() {
        tracing::info!(
            bundle = %opened.content_hash,
            files = ?opened.ignored_precompiled(),
            "precompiled code in the bundle is ignored: the runner compiles components itself"
        );
    }

    let now = now_ms();
    let extension = ExtensionRecord {
        id: new_id(),
        name: manifest.name.clone(),
        publisher: manifest.publisher.clone(),
        created_at: now,
    };
    let version_id = new_id();
    let version = VersionRecord {
        extension_id: String::new(),
        version: manifest.version.clone(),
        version_id: version_id.clone(),
        runtime: manifest.runtime.clone(),
        capabilities: manifest.capabilities.names().into_iter().map(String::from).collect(),
        endpoints: manifest.endpoints.clone(),
        events: manifest.events.clone(),
        egress: manifest.egress.clone(),
        ui: manifest.ui.clone(),
        entry: manifest.entry.clone(),
        content_hash: opened.content_hash.clone(),
        state: VersionState::Active,
        created_at: now,
    };
    let record = BundleRecord {
        content_hash: opened.content_hash.clone(),
        extension_id: String::new(),
        version_id,
        size: opened.size,
        signature: signature.clone(),
        signer_key_id: verified.key_id.clone(),
        trusted_comment: verified.trusted_comment.clone(),
        verified_at: now,
        component_sha256,
        artifacts,
        ui_etags: UiTrees::etags(&opened.files),
    };
    let ui_files = ui_files(&opened.files);

    let hash = opened.content_hash.clone();
    let bytes = bytes::Bytes::from(bytes);
    {
        let (svc, hash, bytes) = (svc.clone(), hash.clone(), bytes.clone());
        svc.clone()
            .blocking(move || -> Result<(), Problem> {
                // The UI tree first: it is the step that can still find a bundle unusable, and the
                // blob is stored only once it is done. Content-addressed: a tree left by a lost
                // race is the same tree; one left by a failed blob write is swept at start.
                svc.ui_trees.extract(&hash, &ui_files).map_err(|e| Problem::internal(e.to_string()))?;
                svc.blobs.local.put(&hash, &bytes).map_err(|e| Problem::internal(format!("storing the bundle: {e}")))
            })
            .await??;
    }
    // Every host must be able to fetch the bundle once its record exists: shared first.
    if let Err(e) = svc.blobs.share(&hash, bytes, &signature).await {
        // Not published: this host's copy would stay, unshared and so never evicted.
        if let Ok(None) = svc.registry.bundle(&hash).await {
            forget_local(svc, &hash).await;
        }
        return Err(BundleBytesError::from(e).problem());
    }
    if let Some(artifact) = &compiled {
        super::loader::share_artifact(svc, artifact, svc.core.spawner.fork.fingerprint(), false).await;
    }
    // What a publish that failed or lost a race leaves in the object store stays there: another
    // host may have committed a record for the same bytes since (content addressed).
    let outcome = match svc.registry.publish(extension, version, record).await {
        Ok(o) => o,
        Err(e) => {
            if let Ok(None) = svc.registry.bundle(&hash).await {
                forget_local(svc, &hash).await;
            }
            return Err(e.into());
        }
    };
    if !matches!(outcome, PublishOutcome::Created { .. } | PublishOutcome::AlreadyPublished { .. }) {
        // Lost a race or refused: no record points at the blob.
        if svc.registry.bundle(&hash).await?.is_none() {
            forget_local(svc, &hash).await;
        }
    }
    match outcome {
        PublishOutcome::Created { extension, version } => {
            tracing::info!(extension = %extension.name, version = %version.version, content_hash = %version.content_hash, signer = %verified.key_id, "bundle published");
            Ok((true, published(extension.id)))
        }
        PublishOutcome::AlreadyPublished { extension, .. } => Ok((false, published(extension.id))),
        PublishOutcome::VersionConflict { existing_hash } => {
            Err(version_conflict(&manifest.name, &manifest.version, &existing_hash))
        }
        PublishOutcome::NameTaken { publisher } => Err(name_taken(&manifest.name, &publisher)),
    }
}

/// Removes this host's copy of a bundle no record refers to (off the async workers).
async fn forget_local(svc: &Arc<Service>, hash: &str) {
    let (local, hash) = (svc.blobs.local.clone(), hash.to_string());
    let _ = svc.blocking(move || local.remove(&hash)).await;
}

/// The `ui/` files of a bundle.
fn ui_files(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    files.iter().filter(|(p, _)| p.starts_with(UI_PREFIX)).map(|(p, b)| (p.clone(), b.clone())).collect()
}

/// Puts back the stored copy of a version whose bundle (or UI tree) went missing, and makes it
/// available.
async fn restore(
    svc: &Arc<Service>,
    mut version: VersionRecord,
    bytes: Vec<u8>,
    signature: &str,
    ui: BTreeMap<String, Vec<u8>>,
) -> Result<(), Problem> {
    let (svc2, hash) = (svc.clone(), version.content_hash.clone());
    let bytes = bytes::Bytes::from(bytes);
    let local = bytes.clone();
    svc.blocking(move || -> Result<(), Problem> {
        svc2.blobs.local.put(&hash, &local).map_err(|e| Problem::internal(format!("storing the bundle: {e}")))?;
        svc2.ui_trees.extract(&hash, &ui).map_err(|e| Problem::internal(e.to_string()))
    })
    .await??;
    svc.blobs.repair(&version.content_hash, bytes, signature).await.map_err(|e| BundleBytesError::from(e).problem())?;
    if version.state == VersionState::Unavailable {
        version.state = VersionState::Active;
        svc.registry.put_version(&version).await?;
    }
    tracing::warn!(content_hash = %version.content_hash, version = %version.version, "a missing bundle was restored by its re-upload");
    Ok(())
}

fn name_taken(name: &str, publisher: &str) -> Problem {
    Problem::new(409, "name_taken", "the extension name belongs to another publisher")
        .detail(format!("`{name}` is registered by publisher `{publisher}`"))
}

fn version_conflict(name: &str, version: &str, existing: &str) -> Problem {
    Problem::new(409, "version_conflict", "this name and version were published with other contents")
        .detail(format!("{name} {version} is already published as {existing}; publish a new version number"))
}

//! Installs: a tenant's chosen version of an extension, with its grants, config, egress and
//! limits. Installing re-verifies the bundle against the current trust bundle (03-bundles.md,
//! "Where verification happens", step 2).

use std::collections::BTreeMap;
use std::sync::Arc;

use alga_shared::bundle;
use alga_shared::capability::{Capability, CapabilitySet};
use alga_shared::limits::LimitRequest;
use alga_shared::manifest::{FieldError, egress_problem};
use alga_shared::signing::{self, Identity};
use serde::{Deserialize, Serialize};

use super::Service;
use super::bundles::BundleBytesError;
use super::publish::signature_problem;
use crate::registry::{
    ExtensionRecord, InstallRecord, SubscriptionRecord, VersionRecord, VersionState, new_id, now_ms,
};
use crate::secrets::SecretMap;
use crate::service::problem::Problem;

/// The body of `PUT /v1/tenants/{tenant}/installs/{extension}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    /// A version (`1.2.0`) or a version id.
    pub version: String,
    #[serde(default)]
    pub granted_capabilities: Vec<String>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub egress_allowlist: Option<Vec<String>>,
    #[serde(default)]
    pub limits: Option<LimitRequest>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// An install as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstallView {
    #[serde(flatten)]
    pub record: InstallRecord,
    pub extension_name: String,
}

/// A tenant id: 1..128 of `[A-Za-z0-9._:-]`.
pub fn valid_tenant(t: &str) -> bool {
    (1..=128).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

pub fn check_tenant(t: &str) -> Result<(), Problem> {
    if valid_tenant(t) {
        Ok(())
    } else {
        Err(Problem::bad_request("invalid_tenant", format!("tenant `{t}` must be 1 to 128 of A-Z a-z 0-9 . _ : -")))
    }
}

pub async fn find_extension(svc: &Service, id_or_name: &str) -> Result<ExtensionRecord, Problem> {
    svc.registry.extension(id_or_name).await?.ok_or_else(|| {
        Problem::not_found("extension_not_found", format!("no extension `{id_or_name}` in the registry"))
    })
}

async fn find_version(svc: &Service, ext: &ExtensionRecord, wanted: &str) -> Result<VersionRecord, Problem> {
    if let Some(v) = svc.registry.version(&ext.id, wanted).await? {
        return Ok(v);
    }
    svc.registry
        .version_by_id(&ext.id, wanted)
        .await?
        .ok_or_else(|| Problem::not_found("version_not_found", format!("{} has no version `{wanted}`", ext.name)))
}

/// Creates or updates an install. Returns whether it was created.
pub async fn put(
    svc: &Arc<Service>,
    tenant: &str,
    extension: &str,
    req: InstallRequest,
) -> Result<(bool, InstallView), Problem> {
    check_tenant(tenant)?;
    let ext = find_extension(svc, extension).await?;
    let version = find_version(svc, &ext, &req.version).await?;
    let current = svc.registry.install(tenant, &ext.id).await?;
    let staying = current.as_ref().is_some_and(|c| c.version_id == version.version_id);
    match version.state {
        VersionState::Active => {}
        // An install already on a yanked version keeps it (and may change its settings).
        VersionState::Yanked if staying => {}
        VersionState::Yanked => {
            return Err(Problem::new(409, "version_yanked", "this version was yanked")
                .detail(format!("{} {} takes no new installs; install a newer version", ext.name, version.version)));
        }
        VersionState::Unavailable => {
            return Err(Problem::new(409, "version_unavailable", "this version's bundle is missing").detail(format!(
                "the bundle of {} {} is not in the blob store; publish it again",
                ext.name, version.version
            )));
        }
    }

    let mut errors = Vec::new();
    let manifest_caps = CapabilitySet::parse(version.capabilities.iter().map(String::as_str)).unwrap_or_default();
    let mut granted = Vec::new();
    for (i, name) in req.granted_capabilities.iter().enumerate() {
        match name.parse::<Capability>() {
            Ok(cap) if manifest_caps.contains(cap) => granted.push(cap.name().to_string()),
            Ok(cap) => errors.push(FieldError {
                path: format!("$.granted_capabilities[{i}]"),
                message: format!("{cap} is not requested by the manifest of {} {}", ext.name, version.version),
            }),
            Err(e) => errors.push(FieldError { path: format!("$.granted_capabilities[{i}]"), message: e.to_string() }),
        }
    }
    for (i, entry) in req.egress_allowlist.iter().flatten().enumerate() {
        if let Some(problem) = egress_problem(entry) {
            errors
                .push(FieldError { path: format!("$.egress_allowlist[{i}]"), message: format!("`{entry}` {problem}") });
        }
    }
    if !errors.is_empty() {
        return Err(Problem::new(422, "invalid_install", "the install request is not valid")
            .detail(format!("{} problem(s)", errors.len()))
            .errors(errors));
    }

    reverify(svc, &ext, &version).await?;

    let (created, record) = {
        let now = now_ms();
        let existing = svc.registry.install(tenant, &ext.id).await?;
        let record = InstallRecord {
            tenant: tenant.to_string(),
            extension_id: ext.id.clone(),
            install_id: existing.as_ref().map_or_else(new_id, |e| e.install_id.clone()),
            version_id: version.version_id.clone(),
            version: version.version.clone(),
            content_hash: version.content_hash.clone(),
            granted_capabilities: granted,
            config: req.config,
            egress_allowlist: req.egress_allowlist,
            limits: req.limits.unwrap_or_default(),
            enabled: req.enabled.unwrap_or(true),
            created_at: existing.as_ref().map_or(now, |e| e.created_at),
            updated_at: now,
        };
        let subscriptions: Vec<SubscriptionRecord> = version
            .events
            .iter()
            .map(|e| SubscriptionRecord {
                tenant: record.tenant.clone(),
                topic: e.topic.clone(),
                install_id: record.install_id.clone(),
                extension_id: record.extension_id.clone(),
                handler: e.handler.clone(),
            })
            .collect();
        svc.registry.put_install(&record, &subscriptions).await?;
        (existing.is_none(), record)
    };
    tracing::info!(tenant = %record.tenant, extension = %ext.name, version = %record.version, install = %record.install_id, "install saved");
    Ok((created, InstallView { record, extension_name: ext.name }))
}

/// Verifies the stored bundle again against the current trust bundle.
async fn reverify(svc: &Arc<Service>, ext: &ExtensionRecord, version: &VersionRecord) -> Result<(), Problem> {
    let hash = &version.content_hash;
    let record =
        svc.registry.bundle(hash).await?.ok_or_else(|| Problem::internal(format!("no bundle record for {hash}")))?;
    let bytes = svc.blobs.read(hash, &svc.core.spawner.metrics).await.map_err(|e| match e {
        BundleBytesError::Missing(_) | BundleBytesError::Local(_) => {
            Problem::new(409, "version_unavailable", "this version's bundle is missing").detail(format!(
                "the bundle of {} {} cannot be read ({e}); publish it again to restore it",
                ext.name, version.version
            ))
        }
        e => e.problem(),
    })?;
    let (svc2, ext, version) = (svc.clone(), ext.clone(), version.clone());
    let trust = svc.trust();
    // Hashing and verifying the bundle is blocking work: off the async workers.
    svc.blocking(move || -> Result<(), Problem> {
        let hash = &version.content_hash;
        if bundle::content_hash(&bytes) != *hash {
            svc2.core.spawner.metrics.verification("install", false);
            return Err(Problem::new(
                502,
                "bundle_verification_failed",
                "the stored bundle no longer matches its hash",
            ));
        }
        let verified = signing::verify_bytes(&trust.bundle, &bytes, &record.signature);
        svc2.core.spawner.metrics.verification("install", verified.is_ok());
        let verified = verified.map_err(|e| signature_problem(&e))?;
        let id = Identity { name: &ext.name, version: &version.version, publisher: &ext.publisher, content_hash: hash };
        signing::check_identity(&verified, id).map_err(|e| signature_problem(&e))
    })
    .await?
}

pub async fn get(svc: &Service, tenant: &str, extension: &str) -> Result<InstallView, Problem> {
    check_tenant(tenant)?;
    let ext = find_extension(svc, extension).await?;
    let record = svc.registry.install(tenant, &ext.id).await?.ok_or_else(|| {
        Problem::not_found("not_installed", format!("{} is not installed for tenant {tenant}", ext.name))
    })?;
    Ok(InstallView { record, extension_name: ext.name })
}

pub async fn list(svc: &Service, tenant: &str) -> Result<Vec<InstallView>, Problem> {
    check_tenant(tenant)?;
    let mut out = Vec::new();
    for record in svc.registry.installs(tenant).await? {
        let name = svc.registry.extension(&record.extension_id).await?.map(|e| e.name).unwrap_or_default();
        out.push(InstallView { record, extension_name: name });
    }
    Ok(out)
}

/// Replaces the install's secrets (write-only: the answer names the keys, never a value).
pub async fn put_secrets(svc: &Service, tenant: &str, extension: &str, map: SecretMap) -> Result<Vec<String>, Problem> {
    let view = get(svc, tenant, extension).await?;
    let mut errors = Vec::new();
    for (k, v) in &map.0 {
        if k.is_empty() || k.len() > 256 || k.chars().any(char::is_control) {
            errors.push(FieldError {
                path: format!("$.{k}"),
                message: "a key is 1 to 256 characters, no control characters".into(),
            });
        }
        if v.len() > 64 * 1024 {
            errors.push(FieldError { path: format!("$.{k}"), message: "a value is at most 64 KiB".into() });
        }
    }
    if map.0.len() > 256 {
        errors.push(FieldError { path: "$".into(), message: format!("{} keys; at most 256", map.0.len()) });
    }
    if !errors.is_empty() {
        return Err(Problem::new(422, "invalid_secrets", "the secrets are not valid").errors(errors));
    }
    svc.secrets
        .put(tenant, &view.record.install_id, &map)
        .await
        .map_err(|e| Problem::internal(format!("storing the secrets failed: {}", crate::error_chain(&e))))?;
    tracing::info!(tenant, extension = %view.extension_name, install = %view.record.install_id, keys = ?map, "install secrets replaced");
    Ok(map.0.into_keys().collect())
}

/// The names of the install's secrets.
pub async fn secret_keys(svc: &Service, tenant: &str, extension: &str) -> Result<Vec<String>, Problem> {
    let view = get(svc, tenant, extension).await?;
    let map = svc
        .secrets
        .get(tenant, &view.record.install_id)
        .await
        .map_err(|e| Problem::internal(format!("reading the secrets failed: {}", crate::error_chain(&e))))?;
    Ok(map.0.into_keys().collect())
}

/// Uninstalls, and purges what belonged to the install: its secrets and storage. The install record goes
/// first (durably), so a crash in between leaves only unreachable data under an install id that
/// is never reused, never an install whose data vanished.
pub async fn delete(svc: &Service, tenant: &str, extension: &str) -> Result<InstallView, Problem> {
    check_tenant(tenant)?;
    let ext = find_extension(svc, extension).await?;
    let record = svc.registry.delete_install(tenant, &ext.id).await?.ok_or_else(|| {
        Problem::not_found("not_installed", format!("{} is not installed for tenant {tenant}", ext.name))
    })?;
    svc.secrets.delete(tenant, &record.install_id).await.map_err(|e| {
        Problem::internal(format!("uninstalled, but deleting the install's secrets failed: {}", crate::error_chain(&e)))
    })?;
    let scope = crate::hostapi::storage::Scope { tenant: tenant.to_string(), install: record.install_id.clone() };
    let storage = &svc.host_env.storage;
    let purge_failed = |e: crate::hostapi::storage::KvError| {
        Problem::internal(format!(
            "uninstalled, but purging the install's storage failed (its data is unreachable but still on disk): {e}"
        ))
    };
    let purged = storage.purge(&scope).await.map_err(purge_failed)?;
    storage.flush().await.map_err(purge_failed)?;
    tracing::info!(tenant, extension = %ext.name, install = %record.install_id, storage_records = purged, "uninstalled and purged");
    Ok(InstallView { record, extension_name: ext.name })
}

//! `POST /v1/bundles/prefetch`: readies a bundle before its first execution — fetched,
//! verified and compiled (or another host's compiled artifact taken) — so a host can do it at
//! install time instead of making the first user wait for a large component to compile.

use std::sync::Arc;
use std::time::Instant;

use alga_shared::bundle::normalize_hash;
use serde::{Deserialize, Serialize};

use super::Service;
use super::host_registry::HostRefusal;
use super::problem::Problem;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchRequest {
    pub content_hash: String,
    /// Host mode: the tenant whose key holds the bundle (local mode: not needed).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Host mode: the host's registry id of the extension (local mode: not needed).
    #[serde(default)]
    pub extension: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Prefetched {
    pub content_hash: String,
    pub name: String,
    pub version: String,
    /// How long readying it took here, in milliseconds (near 0 when it was ready).
    pub took_ms: u64,
}

pub async fn prefetch(svc: &Arc<Service>, req: PrefetchRequest) -> Result<Prefetched, Problem> {
    let start = Instant::now();
    let hash = normalize_hash(&req.content_hash).ok_or_else(|| {
        Problem::new(422, "invalid_request", "the request is not valid")
            .detail("$.content_hash: must be 64 hex digits, with or without `sha256:`")
    })?;
    let (name, version) = match &svc.host_registry {
        Some(host) => {
            let (Some(tenant), Some(extension)) = (&req.tenant, &req.extension) else {
                return Err(Problem::new(422, "invalid_request", "the request is not valid").detail(
                    "$.tenant and $.extension: required in host mode (they name the object key of the bundle)",
                ));
            };
            let (bundle, wasm) =
                host.bundle(svc, tenant, extension, &hash, true).await.map_err(HostRefusal::problem)?;
            host.loaded(svc, &bundle, wasm).await.map_err(HostRefusal::problem)?;
            (bundle.manifest.name.clone(), bundle.manifest.version.clone())
        }
        None => {
            let record =
                svc.registry.bundle(&hash).await?.ok_or_else(|| {
                    Problem::not_found("bundle_not_found", format!("no bundle {hash} is published here"))
                })?;
            let ext = svc
                .registry
                .extension(&record.extension_id)
                .await?
                .ok_or_else(|| Problem::internal(format!("no extension record for {hash}")))?;
            let version = svc
                .registry
                .version_by_id(&ext.id, &record.version_id)
                .await?
                .ok_or_else(|| Problem::internal(format!("no version record for {hash}")))?;
            svc.loader.load(svc, &ext, &version).await.map_err(|e| HostRefusal::from(e).problem())?;
            (ext.name, version.version)
        }
    };
    let took_ms = start.elapsed().as_millis() as u64;
    tracing::info!(content_hash = %hash, %name, %version, took_ms, "bundle prefetched");
    Ok(Prefetched { content_hash: hash, name, version, took_ms })
}

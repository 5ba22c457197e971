//! Host-registry mode (`[registry] mode = "host"`; docs/alga.md): the registry is the host
//! application's (an Alga deployment). A bundle is found by content hash — this host's cache,
//! else the object store at the host's keys — hashed, verified against the trust bundle with the
//! detached signature beside it, and never executed unsigned. Installs are the host's: the
//! envelope names them, and `/ext-ui` asks the host's registry endpoints whether one is valid.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alga_shared::bundle;
use alga_shared::capability::Capability;
use alga_shared::manifest::Manifest;
use alga_shared::signing::{self, Identity};
use serde::Deserialize;
use tokio_rustls::rustls;

use super::Service;
use super::execute::{ExecuteCommand, Target};
use super::installs::valid_tenant;
use super::loader::{LoadError, Loaded};
use crate::config::RegistryConfig;
use crate::hostapi::forwarded::transport::operator_request;
use crate::hostapi::forwarded::{UNRESERVED, percent_encode};
use crate::registry::{ExtensionRecord, InstallRecord, UiTrees, VersionRecord, VersionState, now_ms};

/// Largest detached signature read (a minisign signature is a few hundred bytes).
const MAX_SIGNATURE: u64 = 64 * 1024;
/// Largest registry answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// How long a registry call may take (Alga's runner allows 750 ms).
const REGISTRY_TIMEOUT: Duration = Duration::from_millis(1500);
/// Registry answers kept at most (each cache).
const CACHE_ENTRIES: usize = 10_000;

/// Why a host-mode bundle or install is refused.
#[derive(Debug, thiserror::Error)]
pub enum HostRefusal {
    /// Nothing at any key, or ids that cannot name one: 404 `not_installed`.
    #[error("{0}")]
    NotFound(String),
    /// Found, but not the bytes asked for or not signed by a trusted key: 502
    /// `bundle_verification_failed`.
    #[error("{0}")]
    Verification(String),
    /// The object store cannot be reached: 503 `storage_unavailable`.
    #[error("{0}")]
    Unavailable(String),
    /// The runner failed (disk, compile sandbox).
    #[error("{0}")]
    Internal(String),
}

impl HostRefusal {
    /// What an HTTP caller (prefetch, `/ext-ui`) is told.
    pub fn problem(self) -> super::problem::Problem {
        use super::problem::Problem;
        match self {
            HostRefusal::NotFound(m) => Problem::not_found("bundle_not_found", m),
            HostRefusal::Verification(m) => {
                tracing::warn!(detail = %m, "a bundle failed verification");
                Problem::new(502, "bundle_verification_failed", "the bundle failed verification").detail(m)
            }
            HostRefusal::Unavailable(m) => {
                tracing::warn!(error = %m, "the object store failed");
                Problem::new(503, "storage_unavailable", "the object store cannot be reached; retry later").detail(m)
            }
            HostRefusal::Internal(m) => Problem::internal(m),
        }
    }
}

impl From<LoadError> for HostRefusal {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Verification(m) => HostRefusal::Verification(m),
            LoadError::Unavailable(m) => HostRefusal::Unavailable(m),
            LoadError::Internal(m) => HostRefusal::Internal(m),
        }
    }
}

/// A bundle fetched and verified under one trust generation.
#[derive(Debug)]
pub struct HostBundle {
    pub content_hash: String,
    pub generation: u64,
    pub manifest: Manifest,
    /// Strong ETag of each `ui/` file (paths relative to `ui/`), its tree extracted.
    pub ui_etags: BTreeMap<String, String>,
}

/// What the host says about a per-install app domain.
#[derive(Debug, Clone, Deserialize)]
pub struct DomainInstall {
    pub tenant_id: String,
    pub extension_id: String,
    pub content_hash: String,
}

impl DomainInstall {
    /// Where its UI is served: `/ext-ui/{extension}/{hash}/?tenant={tenant}`.
    pub fn ui_location(&self) -> String {
        format!(
            "/ext-ui/{}/{}/?tenant={}",
            encode(&self.extension_id),
            encode(&self.content_hash),
            encode(&self.tenant_id)
        )
    }
}

/// Answers kept for a while, bounded (the oldest go first when full).
struct TtlCache<V> {
    ttl: Duration,
    entries: HashMap<String, (Instant, V)>,
}

impl<V: Clone> TtlCache<V> {
    fn get(&self, key: &str) -> Option<V> {
        self.entries.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, v)| v.clone())
    }

    fn put(&mut self, key: String, value: V) {
        if self.entries.len() >= CACHE_ENTRIES {
            self.entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if self.entries.len() >= CACHE_ENTRIES
                && let Some(oldest) = self.entries.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (Instant::now(), value));
    }
}

/// The host's registry, as this runner reaches it.
pub struct HostRegistry {
    keys: Vec<String>,
    prefix: String,
    base_url: String,
    auth_key: String,
    tls: Arc<rustls::ClientConfig>,
    validations: Mutex<TtlCache<bool>>,
    domains: Mutex<TtlCache<Option<DomainInstall>>>,
    bundles: Mutex<HashMap<String, Arc<HostBundle>>>,
}

impl std::fmt::Debug for HostRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostRegistry")
            .field("base_url", &self.base_url)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Ids that go into object keys and URLs: 1 to 128 of `A-Z a-z 0-9 . _ : -`, not `.` or `..`.
fn valid_id(id: &str) -> bool {
    valid_tenant(id) && id != "." && id != ".."
}

impl HostRegistry {
    pub fn new(config: &RegistryConfig, auth_key: String, tls: Arc<rustls::ClientConfig>) -> HostRegistry {
        let ttl = Duration::from_secs(config.validate_cache_s);
        HostRegistry {
            keys: config.bundle_keys.clone(),
            prefix: config.bundle_prefix.trim_matches('/').to_string(),
            base_url: config.base_url.clone().unwrap_or_default().trim_end_matches('/').to_string(),
            auth_key,
            tls,
            validations: Mutex::new(TtlCache { ttl, entries: HashMap::new() }),
            domains: Mutex::new(TtlCache { ttl, entries: HashMap::new() }),
            bundles: Mutex::default(),
        }
    }

    /// The object keys of a bundle, in the order they are tried.
    pub fn keys_of(&self, tenant: &str, extension: &str, content_hash: &str) -> Vec<String> {
        let hex = content_hash.strip_prefix("sha256:").unwrap_or(content_hash);
        self.keys
            .iter()
            .map(|t| {
                let key = t.replace("{tenant}", tenant).replace("{extension}", extension).replace("{hex}", hex);
                if self.prefix.is_empty() { key } else { format!("{}/{key}", self.prefix) }
            })
            .collect()
    }

    fn cached_bundle(&self, content_hash: &str, generation: u64) -> Option<Arc<HostBundle>> {
        let bundles = self.bundles.lock().unwrap_or_else(|p| p.into_inner());
        bundles.get(content_hash).filter(|b| b.generation == generation).cloned()
    }

    /// The verified bundle `content_hash` (normalised `sha256:<hex>`) of `extension` for
    /// `tenant`, and its component when it was verified just now. A bundle verified under the
    /// trust in force is not fetched again unless `to_run` and it is not loaded yet.
    pub async fn bundle(
        &self,
        svc: &Arc<Service>,
        tenant: &str,
        extension: &str,
        content_hash: &str,
        to_run: bool,
    ) -> Result<(Arc<HostBundle>, Option<Vec<u8>>), HostRefusal> {
        let trust = svc.trust();
        // An execution needs the loaded component; a UI request the extracted tree (a file
        // check, kept off the execution path).
        if let Some(b) = self.cached_bundle(content_hash, trust.generation)
            && match to_run {
                true => svc.loader.cached(content_hash, trust.generation).is_some(),
                false => svc.ui_trees.exists(content_hash),
            }
        {
            return Ok((b, None));
        }
        if !valid_id(tenant) || !valid_id(extension) {
            return Err(HostRefusal::NotFound(format!(
                "tenant `{tenant}` and extension `{extension}` must be 1 to 128 of A-Z a-z 0-9 . _ : - to name \
                 an object key"
            )));
        }
        let (bytes, signature, key, from_cache) = self.fetch(svc, tenant, extension, content_hash).await?;
        let (svc2, hash) = (svc.clone(), content_hash.to_string());
        let checked = svc
            .blocking(move || verify(&svc2, &bytes, &signature, &hash, &key, from_cache))
            .await
            .map_err(|p| HostRefusal::Internal(p.to_string()))?;
        svc.core.spawner.metrics.verification("load", checked.is_ok());
        let (manifest, ui_etags, wasm) = checked?;
        let bundle = Arc::new(HostBundle {
            content_hash: content_hash.to_string(),
            generation: trust.generation,
            manifest,
            ui_etags,
        });
        self.bundles.lock().unwrap_or_else(|p| p.into_inner()).insert(content_hash.to_string(), bundle.clone());
        Ok((bundle, wasm))
    }

    /// The bundle's bytes (this host's cache, else the first key holding it), the detached
    /// signature beside it, the key, and whether the bytes came from the cache.
    async fn fetch(
        &self,
        svc: &Service,
        tenant: &str,
        extension: &str,
        content_hash: &str,
    ) -> Result<(Vec<u8>, String, String, bool), HostRefusal> {
        let Some(shared) = &svc.blobs.shared else {
            return Err(HostRefusal::Internal("host mode without an object store".into()));
        };
        let metrics = &svc.core.spawner.metrics;
        let unavailable = |e: crate::registry::shared_blobs::SharedBlobError| {
            metrics.bundle_fetch("failed");
            HostRefusal::Unavailable(e.to_string())
        };
        let local = svc.blobs.local.clone();
        let hash = content_hash.to_string();
        let cached = tokio::task::spawn_blocking(move || local.get(&hash).ok())
            .await
            .map_err(|e| HostRefusal::Internal(format!("reading the bundle cache: {e}")))?;
        let keys = self.keys_of(tenant, extension, content_hash);
        for key in &keys {
            let bytes = match &cached {
                Some(b) => b.clone(),
                None => match shared.get(object_store::path::Path::from(key.as_str()), svc.blobs.max_bytes).await {
                    Ok(Some(b)) => Vec::from(b),
                    Ok(None) => continue,
                    Err(e @ crate::registry::shared_blobs::SharedBlobError::TooLarge { .. }) => {
                        metrics.bundle_fetch("corrupt");
                        return Err(HostRefusal::Verification(format!("the object at {key}: {e}")));
                    }
                    Err(e) => return Err(unavailable(e)),
                },
            };
            // Beside the object; else beside any other key of the bundle (one signature at the
            // tenant-independent key serves every tenant's copy).
            let mut found = None;
            for sig_key in std::iter::once(key).chain(keys.iter().filter(|k| *k != key)).map(|k| format!("{k}.minisig"))
            {
                match shared.get(object_store::path::Path::from(sig_key.as_str()), MAX_SIGNATURE).await {
                    Ok(Some(s)) => {
                        found = Some((s, sig_key));
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            let (signature, sig_key) = match found {
                Some(f) => f,
                None if cached.is_some() => break,
                None => {
                    metrics.bundle_fetch("corrupt");
                    return Err(HostRefusal::Verification(format!(
                        "{key} has no detached signature at {key}.minisig (nor beside the bundle's other keys): sign \
                         the bundle (minisign or alga-runner sign) and put the .minisig beside it; unsigned bundles \
                         never run"
                    )));
                }
            };
            let signature = String::from_utf8(signature.to_vec())
                .map_err(|_| HostRefusal::Verification(format!("{sig_key} is not a minisign signature (not UTF-8)")))?;
            if cached.is_none() {
                metrics.bundle_fetch("ok");
                tracing::info!(content_hash, %key, "fetched a bundle from the host's object store");
            }
            return Ok((bytes, signature, key.clone(), cached.is_some()));
        }
        if cached.is_some() {
            return Err(HostRefusal::Verification(format!(
                "no detached signature for {content_hash} at any of: {}",
                keys.iter().map(|k| format!("{k}.minisig")).collect::<Vec<_>>().join(", ")
            )));
        }
        metrics.bundle_fetch("missing");
        Err(HostRefusal::NotFound(format!(
            "no bundle {content_hash} for tenant `{tenant}` and extension `{extension}` in {} at any of: {}",
            shared.label(),
            keys.join(", ")
        )))
    }

    /// The verified, loaded bundle an execution runs, and the target built from the envelope.
    pub async fn target(&self, svc: &Arc<Service>, cmd: &ExecuteCommand) -> Result<Target, HostRefusal> {
        let Some(install_id) = cmd.install_id.clone().filter(|i| !i.is_empty()) else {
            return Err(HostRefusal::NotFound(
                "host mode: context.install_id is required (the host's install id: storage and host calls are \
                 keyed by it)"
                    .into(),
            ));
        };
        let (bundle, wasm) = self.bundle(svc, &cmd.tenant, &cmd.extension, &cmd.content_hash, true).await?;
        let loaded = self.loaded(svc, &bundle, wasm).await?;
        Ok(target_of(cmd, install_id, &bundle, loaded))
    }

    /// The bundle's compiled component (compiling it, or taking another host's, if needed).
    pub async fn loaded(
        &self,
        svc: &Arc<Service>,
        bundle: &HostBundle,
        wasm: Option<Vec<u8>>,
    ) -> Result<Arc<Loaded>, HostRefusal> {
        if let Some(l) = svc.loader.cached(&bundle.content_hash, bundle.generation) {
            return Ok(l);
        }
        // `bundle(.., to_run = true)` gives the component unless the bundle is loaded already.
        let Some(wasm) = wasm else {
            return Err(HostRefusal::Verification(format!("{} has no component to run", bundle.content_hash)));
        };
        Ok(svc.loader.load_verified(svc, &bundle.content_hash, bundle.generation, wasm).await?)
    }

    async fn registry_get<T: for<'de> Deserialize<'de>>(
        &self,
        path_and_query: &str,
    ) -> Result<(u16, Option<T>), String> {
        let url = format!("{}{path_and_query}", self.base_url);
        let headers =
            vec![("x-api-key".to_string(), self.auth_key.clone()), ("accept".into(), "application/json".into())];
        let sent = operator_request(&self.tls, "GET", &url, headers, Vec::new(), MAX_ANSWER);
        let (status, body) = tokio::time::timeout(REGISTRY_TIMEOUT, sent)
            .await
            .map_err(|_| format!("{} did not answer within {REGISTRY_TIMEOUT:?}", self.base_url))??;
        Ok((status, serde_json::from_slice(&body).ok()))
    }

    /// Whether the host says `tenant` has `extension` installed on `content_hash`
    /// (`GET {base}/api/installs/validate`), cached for `validate_cache_s`; a failure is "no".
    pub async fn install_valid(&self, tenant: &str, extension: &str, content_hash: &str) -> bool {
        let cache_key = format!("{tenant}\0{extension}\0{content_hash}");
        if let Some(v) = self.validations.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
            return v;
        }
        #[derive(Deserialize)]
        struct Validity {
            #[serde(default)]
            valid: bool,
        }
        let query = format!(
            "/api/installs/validate?tenant={}&extension={}&hash={}",
            encode(tenant),
            encode(extension),
            encode(content_hash)
        );
        let valid = match self.registry_get::<Validity>(&query).await {
            Ok((status, answer)) => (200..300).contains(&status) && answer.is_some_and(|a| a.valid),
            Err(e) => {
                tracing::warn!(error = %e, tenant, extension, "the host's registry did not validate an install");
                false
            }
        };
        self.validations.lock().unwrap_or_else(|p| p.into_inner()).put(cache_key, valid);
        valid
    }

    /// The install a per-install app domain serves (`GET {base}/api/installs/lookup-by-host`),
    /// cached like validations; `None` when the host knows none or cannot be asked.
    pub async fn install_by_host(&self, host: &str) -> Option<DomainInstall> {
        let host =
            host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        let host = host.to_ascii_lowercase();
        if let Some(v) = self.domains.lock().unwrap_or_else(|p| p.into_inner()).get(&host) {
            return v;
        }
        let found = match self
            .registry_get::<DomainInstall>(&format!("/api/installs/lookup-by-host?host={}", encode(&host)))
            .await
        {
            Ok((200, Some(d))) if valid_id(&d.tenant_id) && valid_id(&d.extension_id) => Some(d),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, %host, "the host's registry did not resolve an app domain");
                None
            }
        };
        self.domains.lock().unwrap_or_else(|p| p.into_inner()).put(host, found.clone());
        found
    }
}

fn encode(s: &str) -> String {
    percent_encode(s, UNRESERVED)
}

/// Checks fetched bytes: their hash, the detached signature against the trust bundle in force,
/// the signer's scope against the manifest; extracts the UI tree. Returns the manifest, the UI's
/// ETags and the component (if any).
#[allow(clippy::type_complexity)]
fn verify(
    svc: &Service,
    bytes: &[u8],
    signature: &str,
    content_hash: &str,
    key: &str,
    from_cache: bool,
) -> Result<(Manifest, BTreeMap<String, String>, Option<Vec<u8>>), HostRefusal> {
    let actual = bundle::content_hash(bytes);
    if actual != content_hash {
        return Err(HostRefusal::Verification(format!(
            "the object at {key} hashes to {actual}, not the content hash asked for, {content_hash}"
        )));
    }
    let trust = svc.trust();
    let verified = signing::verify_bytes(&trust.bundle, bytes, signature)
        .map_err(|e| HostRefusal::Verification(format!("{key}.minisig: {e}")))?;
    let opened =
        bundle::open(bytes, &svc.archive_limits()).map_err(|e| HostRefusal::Verification(format!("{key}: {e}")))?;
    let m = &opened.manifest;
    let identity = Identity { name: &m.name, version: &m.version, publisher: &m.publisher, content_hash };
    signing::check_identity(&verified, identity)
        .map_err(|e| HostRefusal::Verification(format!("{key}.minisig: {e}")))?;
    svc.ui_trees
        .extract(content_hash, &opened.files)
        .map_err(|e| HostRefusal::Internal(format!("extracting the UI: {e}")))?;
    // In the object store already: the cache may evict it.
    if !from_cache {
        match svc.blobs.local.put(content_hash, bytes) {
            Ok(()) => svc.blobs.local.release(content_hash),
            Err(e) => tracing::warn!(content_hash, error = %e, "caching a fetched bundle failed"),
        }
    }
    let wasm = opened.component().map(<[u8]>::to_vec);
    Ok((opened.manifest.clone(), UiTrees::etags(&opened.files), wasm))
}

/// The target of an execution in host mode: the host's ids, the manifest's version, grants from
/// the envelope's `providers` bounded by the manifest's capabilities.
fn target_of(cmd: &ExecuteCommand, install_id: String, bundle: &HostBundle, loaded: Arc<Loaded>) -> Target {
    let m = &bundle.manifest;
    let version_id = cmd.version_id.clone().filter(|v| !v.is_empty()).unwrap_or_else(|| bundle.content_hash.clone());
    let asked: Vec<Capability> = cmd.providers.iter().flatten().filter_map(|p| p.parse().ok()).collect();
    let granted: Vec<String> = Capability::ALL
        .into_iter()
        .filter(|c| asked.contains(c) && m.capabilities.contains(*c))
        .map(|c| c.name().to_string())
        .collect();
    let ext = ExtensionRecord {
        id: cmd.extension.clone(),
        name: m.name.clone(),
        publisher: m.publisher.clone(),
        created_at: 0,
    };
    let version = VersionRecord {
        extension_id: cmd.extension.clone(),
        version: m.version.clone(),
        version_id: version_id.clone(),
        runtime: m.runtime.clone(),
        capabilities: m.capabilities.iter().map(|c| c.name().to_string()).collect(),
        endpoints: m.endpoints.clone(),
        events: m.events.clone(),
        egress: m.egress.clone(),
        ui: m.ui.clone(),
        entry: m.entry.clone(),
        content_hash: bundle.content_hash.clone(),
        state: VersionState::Active,
        created_at: 0,
    };
    let now = now_ms();
    let install = InstallRecord {
        tenant: cmd.tenant.clone(),
        extension_id: cmd.extension.clone(),
        install_id,
        version_id,
        version: m.version.clone(),
        content_hash: bundle.content_hash.clone(),
        granted_capabilities: granted,
        config: BTreeMap::new(),
        egress_allowlist: None,
        limits: Default::default(),
        enabled: true,
        created_at: now,
        updated_at: now,
    };
    Target { ext, install, version, loaded: Some(loaded) }
}

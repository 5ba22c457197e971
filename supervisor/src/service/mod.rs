//! The service: registry, trust, and the execution core, with one module per command the HTTP
//! layer hands over (publish, installs, execute, reads). Handlers parse and validate; the work
//! happens here.

pub mod bundles;
pub mod events;
pub mod execute;
pub mod gateway;
pub mod host_registry;
pub mod idempotency;
pub mod installs;
pub mod json;
pub mod loader;
pub mod prefetch;
pub mod problem;
pub mod publish;
pub mod quotas;
pub mod quotas_shared;
pub mod reads;
pub mod secret_envelope;
pub mod ui;
pub mod usage;
pub mod vault;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use alga_shared::bundle::ArchiveLimits;
use alga_shared::limits::{Limits, MIB};
use alga_shared::signing::{TrustBundle, TrustError};

use crate::config::Config;
use crate::exec::Core;
use crate::hostapi::fetch::FetchSettings;
use crate::hostapi::forwarded::transport::HostApi;
use crate::hostapi::{HostEnv, KvStore};
use crate::registry::RegistryStore;
use crate::registry::chain::Retention;
use crate::service::problem::Problem;
use alga_shared::egress::Rule;

/// The notification channel of changes other hosts must follow, and its messages.
const CHANGES: &str = "alga_runner_changes";
const TRUST_RELOAD: &str = "trust-reload";

/// The trust bundle in force, and a generation that changes on every reload (so bundles in the
/// execution cache are verified again).
#[derive(Debug)]
pub struct Trust {
    pub bundle: TrustBundle,
    pub generation: u64,
}

/// A request id a caller may choose: 1..128 of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// The backends of the registry, the guests' storage and the secrets (`[storage]`).
pub struct Stores {
    pub registry: Arc<dyn RegistryStore>,
    pub storage: Arc<dyn KvStore>,
    pub secrets: crate::secrets::SecretStore,
    /// The database other hosts may share (their bundles are not in this host's blob store),
    /// for what the hosts coordinate through it.
    pub shared: Option<crate::db::postgres::Pg>,
}

pub struct Service {
    pub config: Config,
    pub core: Arc<Core>,
    pub registry: Arc<dyn RegistryStore>,
    /// Bundle bytes: the local store, and the object store several hosts share.
    pub blobs: bundles::Bundles,
    trust: RwLock<Arc<Trust>>,
    pub loader: loader::Loader,
    /// Claims and answers of `x-idempotency-key` (in memory, or shared in PostgreSQL).
    pub idempotency: Arc<dyn idempotency::Idempotency>,
    /// The database several hosts share, when the storage backend is PostgreSQL.
    pub shared: Option<crate::db::postgres::Pg>,
    /// This host's id among those sharing the database (a fresh UUID per start).
    pub host_id: String,
    /// Admission: rate limits, concurrency caps, the global queue.
    pub quotas: quotas::Quotas,
    /// The extracted `ui/` trees of the bundles.
    pub ui_trees: crate::registry::UiTrees,
    /// Install secrets, sealed with the node key.
    pub secrets: crate::secrets::SecretStore,
    /// The host-API backends every execution's broker uses.
    pub host_env: Arc<HostEnv>,
    /// The valid service tokens (none: open; two during a rotation).
    pub service_tokens: Vec<String>,
    /// The host's registry (`registry.mode = "host"`); `None`: this runner's own registry.
    pub host_registry: Option<host_registry::HostRegistry>,
    /// Vault Transit for secret envelopes (`None`: `vault.address` unset).
    pub vault: Option<vault::Vault>,
    /// `auth.trusted_sources`, parsed (validated at load).
    pub trusted_sources: Vec<alga_shared::egress::Network>,
    /// The valid admin tokens.
    pub admin_tokens: Vec<String>,
    /// Set once the sandbox self-test passed.
    pub self_test_ok: AtomicBool,
    pub self_test: Mutex<Option<serde_json::Value>>,
    pub shutting_down: AtomicBool,
    /// Held (read) by every execution from admission to its durable record; shutdown takes it
    /// (write) to wait until each one is recorded.
    pub in_flight: Arc<tokio::sync::RwLock<()>>,
    /// Makes execution records durable before their answer, one flush per group.
    pub commit: Arc<crate::registry::commit::GroupCommit>,
}

impl Service {
    pub fn new(
        config: Config,
        core: Arc<Core>,
        stores: Stores,
        blobs: bundles::Bundles,
        trust: TrustBundle,
    ) -> std::io::Result<Self> {
        let Stores { registry, storage, secrets, shared } = stores;
        let service_tokens = config.service_tokens()?;
        let admin_tokens = config.admin_tokens()?;
        let idempotency: Arc<dyn idempotency::Idempotency> = match &shared {
            Some(pg) => Arc::new(idempotency::Shared::new(
                pg.clone(),
                std::time::Duration::from_secs(config.execute.idempotency_ttl_s),
            )),
            None => Arc::new(idempotency::Local::new(idempotency::Cache::new(
                config.execute.idempotency_entries,
                (config.execute.idempotency_max_mb << 20) as usize,
                config.execute.idempotency_ttl_s,
            ))),
        };
        let commit = Arc::new(crate::registry::commit::GroupCommit::default());
        // The configuration was validated at load: every operator entry parses.
        let operator = Rule::parse_list(&config.egress.allowlist).map_err(std::io::Error::other)?;
        let fetch = FetchSettings::new(
            operator,
            (config.egress.max_request_kb << 10) as usize,
            (config.egress.max_response_kb << 10) as usize,
        );
        let host_api = match (&config.host_api.base_url, config.host_api_token()?) {
            (Some(base), Some(token)) => Some(HostApi {
                base_url: base.clone(),
                ui_proxy_base_url: config.host_api.ui_proxy_base_url.clone(),
                token,
                ui_proxy_sends_token: config.host_api.ui_proxy_sends_token,
                max_response_bytes: (config.egress.max_response_kb << 10) as usize,
                tls: fetch.tls.clone(),
            }),
            _ => None,
        };
        let vault = vault::Vault::new(&config.vault, fetch.tls.clone());
        let host_storage = match (config.registry.mode, &config.registry.storage_base_url, &config.registry.base_url) {
            (crate::config::RegistryMode::Host, Some(base), _)
            | (crate::config::RegistryMode::Host, None, Some(base)) => {
                Some(crate::hostapi::storage::host::HostStorage::new(
                    base,
                    config.registry_storage_token()?,
                    fetch.tls.clone(),
                ))
            }
            _ => None,
        };
        let host_registry = match config.registry.mode {
            crate::config::RegistryMode::Host => Some(host_registry::HostRegistry::new(
                &config.registry,
                config.registry_auth_key()?.unwrap_or_default(),
                fetch.tls.clone(),
            )),
            crate::config::RegistryMode::Local => None,
        };
        let ui_trees = crate::registry::UiTrees::open(config.state.dir.join("ui"))?;
        core.spawner.metrics.set_per_extension(config.metrics.per_extension);
        Ok(Service {
            ui_trees,
            quotas: quotas::Quotas::new(config.quotas.clone(), shared.clone().map(quotas_shared::SharedAdmission::new)),
            secrets,
            host_env: Arc::new(HostEnv {
                storage,
                commit: Some(commit.clone()),
                fetch,
                host_api,
                metrics: core.spawner.metrics.clone(),
                host_storage,
            }),
            core,
            registry,
            blobs,
            trust: RwLock::new(Arc::new(Trust { bundle: trust, generation: 0 })),
            loader: loader::Loader::default(),
            idempotency,
            shared,
            host_id: crate::registry::new_id(),
            service_tokens,
            admin_tokens,
            vault,
            host_registry,
            trusted_sources: config
                .auth
                .trusted_sources
                .iter()
                .filter_map(|s| alga_shared::egress::Network::parse(s))
                .collect(),
            self_test_ok: AtomicBool::new(false),
            self_test: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            in_flight: Arc::default(),
            commit,
            config,
        })
    }

    /// Starts the group-commit flusher (execution records, storage writes), the sweep that ages
    /// execution records out (and, on a shared database, expired idempotency entries and quota
    /// leases), and the renewal of this host's quota leases.
    pub fn start_flusher(self: &Arc<Self>) {
        let registry = Arc::downgrade(&self.registry);
        self.core.spawner.handle.spawn(self.commit.clone().run(registry));
        if let Some(admission) = self.quotas.shared() {
            self.core.spawner.handle.spawn(admission.clone().renew());
        }
        let (registry, retention) = (Arc::downgrade(&self.registry), self.retention());
        let shared = self.shared.clone();
        let admission = self.quotas.shared().cloned();
        let quotas = self.config.quotas.clone();
        self.core.spawner.handle.spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(600));
            loop {
                every.tick().await;
                let Some(store) = registry.upgrade() else { return };
                match store.prune_executions(&retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(records = n, "execution records aged out"),
                    Err(e) => tracing::error!(error = %crate::error_chain(&e), "pruning execution records failed"),
                }
                if let Some(pg) = &shared
                    && let Err(e) = idempotency::sweep_shared(pg).await
                {
                    tracing::error!(error = %crate::error_chain(&e), "removing expired idempotency entries failed");
                }
                if let Some(admission) = &admission
                    && let Err(e) = admission.sweep(&quotas).await
                {
                    tracing::error!(error = %crate::error_chain(&e), "removing expired quota leases failed");
                }
            }
        });
    }

    /// The execution log's retention.
    pub fn retention(&self) -> Retention {
        let e = &self.config.executions;
        Retention { max_records: e.max_per_tenant, max_age_ms: e.retention_days.saturating_mul(86_400_000) }
    }

    pub fn trust(&self) -> Arc<Trust> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the trust bundle here and, on a shared database, asks every other host to reload
    /// its own (`POST /v1/admin/reload`). Their reloads follow within a second.
    pub async fn reload_trust_everywhere(&self) -> Result<usize, TrustError> {
        let keys = self.reload_trust()?;
        if let Some(pg) = &self.shared
            && let Err(e) = pg.notify(CHANGES, &format!("{TRUST_RELOAD} {}", self.host_id)).await
        {
            tracing::error!(error = %crate::error_chain(&e), "telling the other hosts to reload their trust bundles failed");
        }
        Ok(keys)
    }

    /// Follows the other hosts' changes on a shared database: a trust reload on one host is done
    /// on every host.
    pub fn follow_other_hosts(self: &Arc<Self>) {
        let Some(pg) = self.shared.clone() else { return };
        let svc = Arc::downgrade(self);
        self.core.spawner.handle.spawn(async move {
            pg.listen(CHANGES, move |payload| {
                let Some(svc) = svc.upgrade() else { return };
                let reload = match &payload {
                    // Listening (again): a reload may have been missed meanwhile.
                    None => true,
                    Some(p) => p.strip_prefix(TRUST_RELOAD).is_some_and(|from| from.trim() != svc.host_id),
                };
                if reload && let Err(e) = svc.reload_trust() {
                    tracing::error!(error = %e, "reloading the trust bundle another host asked for failed; keeping the previous one");
                }
            })
            .await
        });
    }

    /// Loads the trust bundle again (SIGHUP, `POST /v1/admin/reload`). A key that is gone is
    /// revoked: bundles it signed fail at their next load and install.
    pub fn reload_trust(&self) -> Result<usize, TrustError> {
        // Read and swap under the lock: of two concurrent reloads (SIGHUP and the admin route),
        // the one that read the file last is the one in force.
        let mut trust = self.trust.write().unwrap_or_else(|p| p.into_inner());
        let bundle = TrustBundle::load(&self.config.trust.bundle)?;
        let keys = bundle.keys().len();
        let generation = trust.generation + 1;
        *trust = Arc::new(Trust { bundle, generation });
        drop(trust);
        tracing::info!(keys, generation, "trust bundle reloaded");
        Ok(keys)
    }

    pub fn archive_limits(&self) -> ArchiveLimits {
        ArchiveLimits {
            max_compressed: self.config.bundles.max_compressed_mb * MIB,
            max_uncompressed: self.config.bundles.max_uncompressed_mb * MIB,
            ..ArchiveLimits::default()
        }
    }

    /// The limits an execution starts from, before install and caller values.
    pub fn default_limits(&self) -> Limits {
        let l = &self.config.limits;
        Limits {
            timeout_ms: l.default_timeout_ms,
            memory_bytes: l.default_memory_mb * MIB,
            fuel: l.default_fuel,
            ..Limits::default()
        }
    }

    /// Runs blocking work (database, files) off the async threads.
    pub async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Problem> {
        self.core
            .spawner
            .handle
            .spawn_blocking(f)
            .await
            .map_err(|e| Problem::internal(format!("background task failed: {e}")))
    }

    /// Runs a future on the execution core's runtime (where sandboxes' sockets live), from any
    /// other runtime (the HTTP workers).
    pub async fn on_core<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, Problem> {
        self.core.spawner.handle.spawn(f).await.map_err(|e| Problem::internal(format!("execution task failed: {e}")))
    }
}

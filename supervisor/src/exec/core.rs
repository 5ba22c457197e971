//! The execution core as one value: the spawner (settings, fork server, cgroup slots), the warm
//! pool, the preloaded sandboxes and the artifact cache.

use std::sync::Arc;

use alga_sandbox::cgroup::SlotLimits;
use alga_shared::limits::MIB;

use crate::exec::artifacts::ArtifactCache;
use crate::exec::cgroups::CgroupSlots;
use crate::exec::forkserver::{self, ForkServer, ForkServerError};
use crate::exec::pool::Pool;
use crate::exec::preload::Preloaded;
use crate::exec::sandbox::{Counters, Spawner};
use crate::exec::settings::Settings;

/// How long shutdown waits for killed sandboxes to be reaped (each takes milliseconds; a busy
/// host may need more than a few).
const REAP_AT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Core {
    /// Creates, kills and reaps sandboxes; holds the settings and the metrics.
    pub spawner: Arc<Spawner>,
    pub pool: Arc<Pool>,
    /// Sandboxes that preloaded one artifact, for its next executions.
    pub preloaded: Arc<Preloaded>,
    pub artifacts: ArtifactCache,
}

/// The cgroup limits every slot is created with (memory is set again per job).
pub fn slot_limits(settings: &Settings) -> SlotLimits {
    SlotLimits {
        memory_bytes: 256 * MIB + settings.runtime_overhead_bytes,
        pids: settings.pids_max,
        cpu_quota_us: settings.cpu_percent.map(|p| u64::from(p) * 1_000),
        cpu_period_us: 100_000,
    }
}

impl Core {
    /// Detects cgroups (which may move this process into a leaf cgroup on v2) — call before
    /// starting the fork server so it and its sandboxes start in the right place.
    pub fn detect_cgroups(settings: &Settings) -> CgroupSlots {
        CgroupSlots::new(settings.cgroups, slot_limits(settings))
    }

    /// Connects to a started fork server and starts the warm pool. Call inside a Tokio runtime.
    pub async fn start(
        process: forkserver::Process,
        cgroups: CgroupSlots,
        settings: Settings,
    ) -> Result<Arc<Core>, ForkServerError> {
        let fork = ForkServer::connect(process, settings.plan.clone()).await?;
        let artifacts = ArtifactCache::new(settings.cache_dir.clone(), fork.fingerprint().to_string());
        let pool_size = settings.pool_size;
        let spawner = Arc::new(Spawner {
            handle: tokio::runtime::Handle::current(),
            settings,
            fork,
            cgroups,
            counters: Counters::default(),
            metrics: Arc::default(),
            stop: tokio::sync::watch::Sender::new(false),
            live: Arc::default(),
        });
        let pool = Arc::new(Pool::new(spawner.clone(), pool_size));
        let preloaded = Arc::new(Preloaded::new(spawner.clone(), pool.clone()));
        pool.start_refill();
        preloaded.start_retiring();
        Ok(Arc::new(Core { spawner, pool, preloaded, artifacts }))
    }

    /// Ends running executions (outcome `shutdown`), stops the pool and the preloaded sandboxes,
    /// waits until every sandbox is reaped while the fork server can still report their exits,
    /// then stops the fork server and removes every cgroup.
    pub async fn shutdown(&self) {
        self.spawner.stop_executions();
        self.pool.stop();
        self.preloaded.stop();
        if !self.spawner.all_reaped(REAP_AT_SHUTDOWN).await {
            tracing::warn!(
                limit_s = REAP_AT_SHUTDOWN.as_secs(),
                "some sandboxes were not reaped in time at shutdown; stopping the fork server kills them"
            );
        }
        self.spawner.fork.stop();
        self.spawner.cgroups.shutdown();
    }
}

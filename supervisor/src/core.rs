//! The execution core as one value: settings, the fork server, cgroup slots, the warm pool and
//! the artifact cache.

use std::sync::Arc;

use alga_sandbox::cgroup::SlotLimits;
use alga_shared::limits::MIB;

use crate::artifacts::ArtifactCache;
use crate::cgroups::CgroupSlots;
use crate::forkserver::{self, ForkServer, ForkServerError};
use crate::pool::Pool;
use crate::preload::Preloaded;
use crate::settings::Settings;

/// Counters of events worth an operator's attention.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sandboxes that reported their result and then did not exit cleanly (e.g. seccomp killed
    /// them on the way out).
    pub unclean_exits: std::sync::atomic::AtomicU64,
}

pub struct Core {
    /// The runtime the core's background tasks (reapers, pool refill) run on, whichever runtime
    /// a caller is on.
    pub handle: tokio::runtime::Handle,
    pub settings: Settings,
    pub fork: Arc<ForkServer>,
    pub cgroups: CgroupSlots,
    pub pool: Pool,
    /// Sandboxes that preloaded one artifact, for its next executions.
    pub preloaded: Preloaded,
    pub artifacts: ArtifactCache,
    pub counters: Counters,
    /// The runner's metrics (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
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
        let pool = Pool::new(settings.pool_size);
        let handle = tokio::runtime::Handle::current();
        let core = Arc::new(Core {
            handle,
            settings,
            fork,
            cgroups,
            pool,
            preloaded: Preloaded::default(),
            artifacts,
            counters: Counters::default(),
            metrics: Arc::default(),
        });
        Pool::start_refill(&core);
        Preloaded::start_retiring(&core);
        Ok(core)
    }

    /// Stops the pool and the fork server (every sandbox dies with it) and removes every cgroup.
    pub async fn shutdown(self: &Arc<Self>) {
        Pool::stop(self);
        Preloaded::stop(self);
        // Give the reapers a moment to collect what was just killed, then stop everything.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        self.fork.stop();
        self.cgroups.shutdown();
    }
}

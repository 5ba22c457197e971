//! Settings of the execution core. (The service's TOML configuration maps onto these.)

use std::path::PathBuf;
use std::time::Duration;

use alga_shared::limits::{LimitCeilings, MIB};
use alga_shared::protocol::SandboxPlan;

/// How sandboxes are created, limited and pooled.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How the fork server hardens each sandbox.
    pub plan: SandboxPlan,
    /// Ready sandboxes kept in the warm pool (default: 2 × CPUs). 0 disables the pool.
    pub pool_size: usize,
    /// A pooled sandbox idle longer than this is retired and replaced (default 60 s).
    pub pool_max_idle: Duration,
    /// Sandboxes kept ready per artifact that preloaded it (default 4). 0 disables preloading.
    pub preloaded_per_artifact: usize,
    /// Preloaded sandboxes in all, ready or being created (default 16); at the cap, the least
    /// recently used artifact's idle sandbox makes room.
    pub preloaded_max: usize,
    /// An execution of an artifact at least this large with no preloaded sandbox on the way
    /// starts one and waits for it briefly rather than take a generic sandbox, where its memory
    /// image would be copied (default 4 MiB; fixed, not a configuration key).
    pub preload_wait_min_bytes: u64,
    /// Bytes added to an execution's memory limit for its cgroup: the runtime itself, the
    /// mapped artifact, stacks (default 128 MiB).
    pub runtime_overhead_bytes: u64,
    /// Tasks allowed in a sandbox cgroup (default 8: the sandbox is one thread).
    pub pids_max: u64,
    /// CPU quota of one sandbox, in percent of one CPU (default 100; `None`: unlimited).
    pub cpu_percent: Option<u32>,
    /// Memory of a compile sandbox (default 2 GiB).
    pub compile_memory_bytes: u64,
    /// Deadline of one compilation (default 120 s).
    pub compile_timeout: Duration,
    /// Largest compiled artifact accepted (default 512 MiB).
    pub max_artifact_bytes: u64,
    /// How long after its deadline a sandbox that has not answered is killed (default 200 ms).
    pub kill_grace: Duration,
    /// How long a new sandbox may take to report ready (default 10 s).
    pub ready_timeout: Duration,
    /// Operator ceilings for per-execution limits.
    pub ceilings: LimitCeilings,
    /// Where compiled artifacts are cached.
    pub cache_dir: PathBuf,
    /// Use cgroups when the host offers them (default true).
    pub cgroups: bool,
}

impl Settings {
    /// Defaults for this machine, caching artifacts under `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Settings {
            plan: SandboxPlan::default(),
            pool_size: cpus * 2,
            pool_max_idle: Duration::from_secs(60),
            preloaded_per_artifact: 4,
            preloaded_max: 16,
            preload_wait_min_bytes: 4 * MIB,
            runtime_overhead_bytes: 128 * MIB,
            pids_max: 8,
            cpu_percent: Some(100),
            compile_memory_bytes: 2048 * MIB,
            compile_timeout: Duration::from_secs(120),
            max_artifact_bytes: 512 * MIB,
            kill_grace: Duration::from_millis(200),
            ready_timeout: Duration::from_secs(10),
            ceilings: LimitCeilings::default(),
            cache_dir,
            cgroups: true,
        }
    }
}

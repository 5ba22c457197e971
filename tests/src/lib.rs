//! Helpers shared by the end-to-end tests: the guest fixtures, the `alga-runner` binary, a
//! harness that drives the real execution core (with the real binary as its fork server) from
//! the test process, and named skips.

pub mod alga_sample;
pub mod cluster;
pub mod garage;
pub mod postgres;
pub mod server;
pub mod test_servers;
pub mod tls;
pub mod upstream;
pub mod webdriver;

use std::path::PathBuf;
use std::sync::Arc;

use alga_runner::exec::Core;
use alga_runner::exec::artifacts::Artifact;
use alga_runner::exec::executor::{self, Report};
use alga_runner::exec::forkserver;
use alga_runner::exec::settings::Settings;
use alga_runner::hostapi::{HostContext, HostEnv};
use alga_shared::bindings::{ContextData, ExecuteRequest, HttpHeader, HttpRequest};
use alga_shared::capability::{Capability, CapabilitySet};
use alga_shared::limits::Limits;
use alga_shared::protocol::{ExecuteJob, ProbeAction};

/// Path of a guest fixture component built from `tests/guests/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("ALGA_GUESTS_DIR"));
    for file in [format!("{}.wasm", name.replace('-', "_")), format!("{name}.wasm")] {
        if dir.join(&file).exists() {
            return dir.join(file);
        }
    }
    panic!("guest fixture {name} was not built (looked in {})", dir.display())
}

/// The bytes of a guest fixture.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
}

/// A valid core WebAssembly module (not a component): the 8-byte empty module.
pub const CORE_MODULE: &[u8] = b"\0asm\x01\0\0\0";

/// The `alga-runner` binary built by the same `cargo test --workspace` run.
pub fn runner_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ALGA_RUNNER_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    let exe = std::env::current_exe().expect("own executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [dir.join("alga-runner"), dir.parent().map(|p| p.join("alga-runner")).unwrap_or_default()];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "no alga-runner binary next to {}: run the tests with `cargo test --workspace` (it builds the \
             binary), build it with `cargo build -p alga-runner`, or set ALGA_RUNNER_BIN",
            exe.display()
        )
    })
}

/// Skips the calling test when `available` is false, saying so by name with the reason. With
/// `ALGA_RUNNER_REQUIRE_ALL_FEATURES=1` (set by CI, whose machines have every feature) a skip
/// fails instead, so nothing is ever skipped silently where it should run.
#[macro_export]
macro_rules! skip_unless {
    ($available:expr, $reason:expr) => {
        if !$available {
            let test = std::thread::current().name().unwrap_or("?").to_string();
            if std::env::var_os("ALGA_RUNNER_REQUIRE_ALL_FEATURES").is_some_and(|v| v == "1") {
                panic!("{test}: required kernel feature missing: {}", $reason);
            }
            eprintln!("SKIPPED {test}: {}", $reason);
            return;
        }
    };
}

/// Starts the real execution core (the real binary as its fork server, an artifact cache in a
/// temporary directory) with the settings `adjust` makes; returns its runtime, the core and the
/// cache directory (removed when dropped).
pub fn start_core(adjust: impl FnOnce(&mut Settings)) -> (tokio::runtime::Runtime, Arc<Core>, tempfile::TempDir) {
    let cache = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::new(cache.path().to_path_buf());
    adjust(&mut settings);
    let cgroups = Core::detect_cgroups(&settings);
    let process = forkserver::Process::start_with(&runner_bin()).expect("starting the fork server");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let core = rt.block_on(Core::start(process, cgroups, settings)).expect("starting the core");
    (rt, core, cache)
}

/// The real execution core, driven from this test process. Its fork server is the real
/// `alga-runner` binary; sandboxes are real processes with every hardening layer.
pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub core: Arc<Core>,
    _cache: tempfile::TempDir,
}

impl Harness {
    /// A core with the warm pool disabled.
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    /// A core whose settings `adjust` changes first (the pool is off unless it turns it on).
    pub fn with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let (rt, core, cache) = start_core(|settings| {
            settings.pool_size = 0;
            settings.plan.test_probes = true;
            adjust(settings);
        });
        Harness { rt, core, _cache: cache }
    }

    /// The compiled artifact of a fixture (compiled in a compile sandbox, then cached).
    pub fn artifact(&self, name: &str) -> Arc<Artifact> {
        let wasm = fixture_bytes(name);
        self.rt.block_on(executor::artifact_for(&self.core, &wasm)).unwrap_or_else(|e| panic!("compiling {name}: {e}"))
    }

    /// Runs one execution of a fixture.
    pub fn execute(&self, name: &str, url: &str, limits: Limits, caps: &[Capability]) -> Report {
        let artifact = self.artifact(name);
        self.execute_artifact(&artifact, request(url), limits, caps)
    }

    pub fn execute_artifact(
        &self,
        artifact: &Arc<Artifact>,
        request: ExecuteRequest,
        limits: Limits,
        caps: &[Capability],
    ) -> Report {
        let grants: CapabilitySet = caps.iter().copied().collect();
        let capabilities = CapabilitySet::effective(&grants, &grants, None);
        let host = host_context(capabilities.clone());
        let job = ExecuteJob { request, limits, capabilities, artifact_len: artifact.len };
        self.rt.block_on(executor::execute(&self.core, artifact, job, &host))
    }

    /// Runs a test probe in a fresh, fully hardened sandbox.
    pub fn probe(&self, action: ProbeAction) -> Report {
        let host = host_context(CapabilitySet::defaults());
        let limits = Limits { timeout_ms: 3_000, ..Limits::default() };
        self.rt.block_on(executor::probe(&self.core, action, limits, &host))
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Let background reapers return their slots, then tear everything down.
        self.rt.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self.core.shutdown().await;
        });
    }
}

pub fn host_context(capabilities: CapabilitySet) -> HostContext {
    HostContext {
        request_id: Some("test-request".into()),
        tenant_id: "tenant-a".into(),
        extension_id: "com.example.fixture".into(),
        install_id: Some("install-1".into()),
        version_id: Some("1.0.0".into()),
        user: None,
        config: Default::default(),
        capabilities,
        secrets: Default::default(),
        egress: Default::default(),
        egress_bytes: Default::default(),
        env: Arc::new(HostEnv::local().expect("a temporary storage database")),
    }
}

/// A POST request for `url` with a small body.
pub fn request(url: &str) -> ExecuteRequest {
    ExecuteRequest {
        context: ContextData {
            request_id: Some("test-request".into()),
            tenant_id: "tenant-a".into(),
            extension_id: "com.example.fixture".into(),
            install_id: Some("install-1".into()),
            version_id: Some("1.0.0".into()),
        },
        http: HttpRequest {
            method: "POST".into(),
            url: url.into(),
            headers: vec![HttpHeader { name: "content-type".into(), value: "text/plain".into() }],
            body: Some(b"hello".to_vec()),
        },
    }
}

/// Pids of the processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Field 4 (after the parenthesised command, which may contain spaces) is the parent pid.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else { continue };
        if after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Number of open descriptors of this process, not counting the `cgroup.procs` files the
/// supervisor keeps open for each reusable cgroup slot (bounded by the slot cache).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten().filter(|e| !std::fs::read_link(e.path()).is_ok_and(|t| t.ends_with("cgroup.procs"))).count()
        })
        .unwrap_or(0)
}

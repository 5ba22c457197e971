//! alga-runner's benchmark: p50, p99 and executions per second for the echo fixture, side by side
//! in one run:
//!
//! - in-process: the component instantiated and called on a warm engine in this process (what
//!   in-process runners do; the lower bound);
//! - hardened, warm pool: alga-runner's path (fork server, every layer, a pre-hardened sandbox
//!   taken from the pool);
//! - hardened, no pool: the same, but each sandbox is created and hardened on the request path;
//! - exec per sandbox: the alternative process model, a freshly exec'd `alga-runner` process
//!   (engine set-up included) per sandbox instead of the fork server;
//! - naive: a fresh `alga-runner exec` process per request that compiles the component each time.
//!
//! Build everything in release first: `cargo build --release -p alga-runner -p alga-tests`, then
//! `target/release/alga-bench [--quick]`. Pin it for stable figures (`taskset -c 0,1`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use alga_runner::core::Core;
use alga_runner::executor;
use alga_runner::forkserver;
use alga_runner::settings::Settings;
use alga_sandbox::runtime::{compile, engine, guest::Prepared, host::BridgeError, host::HostBridge};
use alga_shared::bindings::RunnerPre;
use alga_shared::capability::CapabilitySet;
use alga_shared::limits::Limits;
use alga_shared::protocol::{ExecuteJob, HostCall, HostReply, LogLevel};
use alga_tests::{fixture, fixture_bytes, host_context, request, runner_bin};

struct Figures {
    name: String,
    concurrency: usize,
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Figures {
    fn row(&mut self) -> String {
        self.latencies.sort();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            self.latencies[i].as_secs_f64() * 1e3
        };
        format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.0} |",
            self.name,
            self.concurrency,
            self.latencies.len(),
            pct(0.5),
            pct(0.99),
            self.latencies.len() as f64 / self.wall.as_secs_f64()
        )
    }
}

struct NullBridge;

impl HostBridge for NullBridge {
    fn call(&mut self, call: HostCall) -> Result<HostReply, BridgeError> {
        Ok(call.deny_reply())
    }
    fn log(&mut self, _: LogLevel, _: String) -> Result<(), BridgeError> {
        Ok(())
    }
}

/// In-process lower bound: one engine, one component, one `InstancePre`; per call a new store,
/// instantiation and the call.
fn in_process(n: usize, concurrency: usize) -> Figures {
    let prep = Arc::new(Prepared::new(engine::engine().unwrap()).unwrap());
    let (artifact, _) = compile::compile(&prep, &fixture_bytes("echo")).unwrap();
    // SAFETY: the artifact was just compiled by this engine configuration.
    let component = unsafe { wasmtime::component::Component::deserialize(&prep.engine, &artifact) }.unwrap();
    let pre = RunnerPre::new(prep.linker.instantiate_pre(&component).unwrap()).unwrap();
    let start = Instant::now();
    let per_thread = n / concurrency;
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let prep = prep.clone();
            let pre = pre.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                let req = request("/bench");
                let mut lat = Vec::with_capacity(per_thread);
                for _ in 0..per_thread {
                    let t = Instant::now();
                    let capture = alga_sandbox::runtime::output::Capture::new(64 * 1024);
                    let mut store = prep.store(Limits::default(), Box::new(NullBridge), &capture);
                    store.set_fuel(u64::MAX / 2).unwrap();
                    store.set_epoch_deadline(u64::MAX / 2);
                    let resp = rt
                        .block_on(async {
                            let r = pre.instantiate_async(&mut store).await?;
                            r.call_handler(&mut store, &req).await
                        })
                        .unwrap();
                    assert_eq!(resp.status, 200);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let latencies = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    Figures { name: "in-process, warm engine".into(), concurrency, latencies, wall: start.elapsed() }
}

fn core(pool: usize) -> (tokio::runtime::Runtime, Arc<Core>, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(cache.path().to_path_buf());
    settings.pool_size = pool;
    let cgroups = Core::detect_cgroups(&settings);
    let process = forkserver::Process::start_with(&runner_bin()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let core = rt.block_on(Core::start(process, cgroups, settings)).unwrap();
    (rt, core, cache)
}

fn hardened(name: &str, pool: usize, n: usize, concurrency: usize) -> Figures {
    let (rt, core, _cache) = core(pool);
    let artifact = rt.block_on(executor::artifact_for(&core, &fixture_bytes("echo"))).unwrap();
    if pool > 0 {
        // Start measuring with a warm pool.
        while core.pool.stats().ready < pool {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let start = Instant::now();
    let latencies = rt.block_on(async {
        let per_task = n / concurrency;
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let core = core.clone();
                let artifact = artifact.clone();
                tokio::spawn(async move {
                    let host = host_context(CapabilitySet::defaults());
                    let mut lat = Vec::with_capacity(per_task);
                    for _ in 0..per_task {
                        let job = ExecuteJob {
                            request: request("/bench"),
                            limits: Limits::default(),
                            capabilities: CapabilitySet::defaults(),
                            artifact_len: artifact.len,
                        };
                        let t = Instant::now();
                        let r = executor::execute(&core, &artifact, job, &host).await;
                        assert_eq!(r.outcome, alga_shared::outcome::Outcome::Completed, "{:?}", r.detail);
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let wall = start.elapsed();
    rt.block_on(core.shutdown());
    Figures { name: name.into(), concurrency, latencies, wall }
}

/// The exec model: every sandbox comes from a freshly exec'd `alga-runner` (its start-up, engine
/// and linker included), instead of a fork from the long-lived fork server.
fn exec_per_sandbox(n: usize) -> Figures {
    let (rt, core, _cache) = core(0);
    let artifact = rt.block_on(executor::artifact_for(&core, &fixture_bytes("echo"))).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let mut settings = Settings::new(cache.path().to_path_buf());
        settings.pool_size = 0;
        let cgroups = Core::detect_cgroups(&settings);
        let process = forkserver::Process::start_with(&runner_bin()).unwrap();
        let fresh = rt.block_on(Core::start(process, cgroups, settings)).unwrap();
        let job = ExecuteJob {
            request: request("/bench"),
            limits: Limits::default(),
            capabilities: CapabilitySet::defaults(),
            artifact_len: artifact.len,
        };
        let r = rt.block_on(executor::execute(&fresh, &artifact, job, &host_context(CapabilitySet::defaults())));
        assert_eq!(r.outcome, alga_shared::outcome::Outcome::Completed);
        latencies.push(t.elapsed());
        rt.block_on(fresh.shutdown());
    }
    let wall = start.elapsed();
    rt.block_on(core.shutdown());
    Figures { name: "exec per sandbox (no fork server)".into(), concurrency: 1, latencies, wall }
}

/// The naive design: a fresh process per request that compiles the component each time.
fn naive(n: usize) -> Figures {
    let component = fixture("echo");
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let cache = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let out = std::process::Command::new(runner_bin())
            .args(["exec", "--component"])
            .arg(&component)
            .arg("--cache-dir")
            .arg(cache.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        latencies.push(t.elapsed());
    }
    Figures {
        name: "naive: new process + compile per request".into(),
        concurrency: 1,
        latencies,
        wall: start.elapsed(),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 400 } else { 4_000 };
    let mut rows = Vec::new();
    for c in [1, 4] {
        rows.push(in_process(n, c));
    }
    for c in [1, 4] {
        rows.push(hardened("hardened, warm pool", 8, n, c));
    }
    for c in [1, 4] {
        rows.push(hardened("hardened, no pool", 0, n / 4, c));
    }
    rows.push(exec_per_sandbox(if quick { 20 } else { 100 }));
    rows.push(naive(if quick { 5 } else { 20 }));
    println!("| path | concurrency | executions | p50 ms | p99 ms | executions/s |");
    println!("|---|---|---|---|---|---|");
    for r in &mut rows {
        println!("{}", r.row());
    }
}

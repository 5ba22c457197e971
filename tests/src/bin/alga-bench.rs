//! alga-runner's benchmark: p50, p99 and executions per second for the echo fixture, side by side
//! in one run:
//!
//! - in-process: the component instantiated and called on a warm engine in this process (what
//!   in-process runners do; the lower bound);
//! - hardened, warm pool: alga-runner's path (fork server, every layer, a pre-hardened sandbox:
//!   one that preloaded the artifact, else one from the pool);
//! - hardened, no pool: the same without the generic pool (`--no-preload`: without preloaded
//!   sandboxes either, so each sandbox is created and hardened on the request path);
//! - exec per sandbox: the alternative process model, a freshly exec'd `alga-runner` process
//!   (engine set-up included) per sandbox instead of the fork server;
//! - naive: a fresh `alga-runner exec` process per request that compiles the component each time.
//!
//! Build everything in release first: `cargo build --release -p alga-runner -p alga-tests --bins`,
//! then `target/release/alga-bench [--quick]`. Pin it for stable figures (`taskset -c 0,1`).
//!
//! Other modes, for the performance notes: `--breakdown` (hot path alone, and the cost of
//! creating and hardening a sandbox with and without each namespace), `--hot-path`, `--ping`
//! (the IPC hand-over alone), `--deserialize` (artifact loading in this process),
//! `--cgroup-ops` (cgroup file operations), `--http` (`POST /v1/execute` end to end against the
//! real `alga-runner serve`: HTTP, envelope, registry lookups, the execution record made durable),
//! `--js FILE.wasm` (the JS sample: publish, HTTP, the hot path and in-process, memory),
//! `--hot-path [--preloaded] [--js FILE.wasm]`, `--phases --js FILE.wasm` (in-process load,
//! link, instantiate and call; `COW=1` with copy-on-write memory images).

use std::sync::Arc;
use std::time::{Duration, Instant};

use alga_runner::exec::Core;
use alga_runner::exec::executor;
use alga_runner::exec::forkserver;
use alga_runner::exec::sandbox::Sandbox;
use alga_runner::exec::settings::Settings;
use alga_sandbox::runtime::{compile, engine, guest::Prepared, host::DenyAll};
use alga_shared::bindings::RunnerPre;
use alga_shared::capability::CapabilitySet;
use alga_shared::limits::Limits;
use alga_shared::protocol::ExecuteJob;
use alga_shared::protocol::{NamespaceSet, SandboxMode};
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

/// The service for the HTTP benchmarks: a pool of 8, rate limits off (the default buckets would
/// cap one tenant at 100/s; the other quotas apply).
fn bench_server() -> (alga_tests::server::Signer, alga_tests::server::Server) {
    let signer = alga_tests::server::Signer::new();
    let server = bench_server_with(&signer, Vec::new());
    (signer, server)
}

/// A service for the benchmarks (a warm pool of 8, rate limits off) with `env` on top.
fn bench_server_with(signer: &alga_tests::server::Signer, env: Vec<(String, String)>) -> alga_tests::server::Server {
    use alga_tests::server::{Options, Server};
    let mut all = vec![
        ("ALGA_RUNNER_SANDBOX__POOL_SIZE".into(), "8".into()),
        ("ALGA_RUNNER_QUOTAS__TENANT_RATE_PER_S".into(), "0".into()),
        ("ALGA_RUNNER_QUOTAS__EXTENSION_RATE_PER_S".into(), "0".into()),
    ];
    all.extend(env);
    Server::start_with(Options { trust_lines: vec![signer.public()], env: all })
}

/// `POST /v1/execute` against the real service, executed by `concurrency` keep-alive clients:
/// the echo fixture (no host call), and the hostapi fixture making one durable storage `put`;
/// on the embedded sled backend, on PostgreSQL with the S3 test server (a private cluster and a
/// Garage, as the tests run them), and on two hosts sharing both (the clients split between
/// them). Rate limits are off (the
/// defaults would cap one tenant at 100/s); the other quotas apply (on PostgreSQL: the cluster's).
fn http(n: usize) -> Vec<Figures> {
    let signer = alga_tests::server::Signer::new();
    let sled = bench_server_with(&signer, Vec::new());
    let mut rows = http_on(&signer, &[&sled], "sled", n);
    drop(sled);
    match alga_tests::postgres::PgCluster::get() {
        Ok(cluster) => {
            let url = cluster.database();
            // With the S3 test server: each host its own state directory, the bundles in a
            // bucket. Without it: the second host shares the first one's state directory.
            let garage = alga_tests::garage::Garage::get();
            let shared = garage.as_ref().ok().map(|g| alga_tests::cluster::Cluster {
                url: url.clone(),
                garage: g,
                bucket: g.bucket(),
            });
            if let Err(e) = &garage {
                eprintln!("no S3 server ({e}): the two hosts share one state directory");
            }
            let pg_env = || match &shared {
                Some(c) => c.env(),
                None => vec![
                    ("ALGA_RUNNER_STORAGE__BACKEND".to_string(), "postgres".to_string()),
                    ("ALGA_RUNNER_STORAGE__URL".to_string(), url.clone()),
                ],
            };
            let a = bench_server_with(&signer, pg_env());
            let label = if shared.is_some() { "PostgreSQL + S3" } else { "PostgreSQL" };
            rows.extend(http_on(&signer, &[&a], label, n));
            let mut env = pg_env();
            if shared.is_some() {
                env.push(alga_tests::cluster::node_key_of(&a));
            } else {
                env.push(("ALGA_RUNNER_STATE_DIR".into(), a.state_dir().display().to_string()));
            }
            let b = bench_server_with(&signer, env);
            rows.extend(http_on(&signer, &[&a, &b], &format!("{label}, two hosts"), n));
        }
        Err(e) => eprintln!("no PostgreSQL rows: {e}"),
    }
    rows
}

/// The HTTP rows against `hosts` (the first one publishes; clients take the hosts in turn).
fn http_on(
    signer: &alga_tests::server::Signer,
    hosts: &[&alga_tests::server::Server],
    backend: &str,
    n: usize,
) -> Vec<Figures> {
    use alga_tests::server::{deploy, envelope, hostapi_manifest, manifest};
    let server = hosts[0];
    let echo = deploy(
        server,
        signer,
        &manifest("com.example.bench", "1.0.0", &[]),
        &fixture_bytes("echo"),
        "bench",
        serde_json::json!({}),
    );
    let kv = deploy(
        server,
        signer,
        &hostapi_manifest("com.example.benchkv", &["cap:storage.kv"]),
        &fixture_bytes("hostapi"),
        "bench",
        serde_json::json!({ "granted_capabilities": ["storage.kv"] }),
    );
    let mut put = envelope("bench", &kv.extension_id, &kv.content_hash, "/storage/put");
    put["http"]["method"] = serde_json::json!("POST");
    put["http"]["query"] = serde_json::json!({ "key": "k" });
    put["http"]["body_b64"] = serde_json::json!("dmFsdWU=");
    let mut rows = Vec::new();
    for (name, env) in [
        ("HTTP /v1/execute, warm pool", envelope("bench", &echo.extension_id, &echo.content_hash, "/bench")),
        ("HTTP /v1/execute, one storage put", put),
    ] {
        let name = format!("{name} ({backend})");
        rows.extend(http_rows(hosts, &name, &serde_json::to_vec(&env).unwrap(), n));
    }
    rows
}

fn http_rows(hosts: &[&alga_tests::server::Server], name: &str, body: &[u8], n: usize) -> Vec<Figures> {
    let mut rows = Vec::new();
    for concurrency in [1, 4] {
        // Warm up: the bundle enters each host's execution cache, the pools fill.
        for host in hosts {
            for _ in 0..20 {
                host.execute(&serde_json::from_slice(body).unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        let threads: Vec<_> = (0..concurrency)
            .map(|i| {
                let (url, body) = (format!("{}/v1/execute", hosts[i % hosts.len()].url), body.to_vec());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new().build();
                    let mut lat = Vec::new();
                    for _ in 0..n / concurrency {
                        let t = Instant::now();
                        let r = agent
                            .post(&url)
                            .set("authorization", &format!("Bearer {}", alga_tests::server::SERVICE_TOKEN))
                            .set("content-type", "application/json")
                            .send_bytes(&body)
                            .unwrap();
                        let text = r.into_string().unwrap();
                        assert!(text.starts_with("{\"status\":200"), "{text}");
                        let env: serde_json::Value = serde_json::from_str(&text).unwrap();
                        let guest = base64::Engine::decode(
                            &base64::engine::general_purpose::STANDARD,
                            env["body_b64"].as_str().unwrap_or(""),
                        )
                        .unwrap();
                        assert!(!guest.starts_with(b"{\"err\""), "{}", String::from_utf8_lossy(&guest));
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let latencies = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        rows.push(Figures { name: name.into(), concurrency, latencies, wall: start.elapsed() });
    }
    rows
}

/// In-process lower bound: one engine, one component, one `InstancePre`; per call a new store,
/// instantiation and the call.
fn in_process(n: usize, concurrency: usize) -> Figures {
    in_process_of("in-process, warm engine", &fixture_bytes("echo"), ("POST", "/bench"), n, concurrency)
}

fn in_process_of(name: &str, wasm: &[u8], (method, url): (&str, &str), n: usize, concurrency: usize) -> Figures {
    let prep = Arc::new(Prepared::new(engine::engine().unwrap()).unwrap());
    let (artifact, _) = compile::compile(&prep, wasm).unwrap();
    // SAFETY: the artifact was just compiled by this engine configuration.
    let component = unsafe { wasmtime::component::Component::deserialize(&prep.engine, &artifact) }.unwrap();
    let pre = RunnerPre::new(prep.linker.instantiate_pre(&component).unwrap()).unwrap();
    let start = Instant::now();
    let per_thread = n / concurrency;
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let prep = prep.clone();
            let pre = pre.clone();
            let (method, url) = (method.to_string(), url.to_string());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                let mut req = request(&url);
                if method == "GET" {
                    req.http.method = method.clone();
                    req.http.body = None;
                }
                let mut lat = Vec::with_capacity(per_thread);
                for _ in 0..per_thread {
                    let t = Instant::now();
                    let capture = alga_sandbox::runtime::output::Capture::new(64 * 1024);
                    let mut store = prep.store(Limits::default(), Box::new(DenyAll), &capture);
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
    Figures { name: name.into(), concurrency, latencies, wall: start.elapsed() }
}

/// Where an in-process JS execution's time goes: deserializing, instantiating, the call.
fn js_phases(path: &str, cow: bool) {
    let wasm = std::fs::read(path).unwrap();
    let mut config = engine::config();
    config.memory_init_cow(cow);
    let prep = Prepared::new(wasmtime::Engine::new(&config).unwrap()).unwrap();
    let artifact = prep.engine.precompile_component(&wasm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("js.cwasm");
    std::fs::write(&file, &artifact).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let mut req = request("/time");
    req.http.method = "GET".into();
    req.http.body = None;
    for round in 0..5 {
        let t = Instant::now();
        // SAFETY: just compiled by this engine configuration.
        let component = unsafe { wasmtime::component::Component::deserialize_file(&prep.engine, &file) }.unwrap();
        let load = t.elapsed();
        let t = Instant::now();
        let pre = RunnerPre::new(prep.linker.instantiate_pre(&component).unwrap()).unwrap();
        let link = t.elapsed();
        let (mut inst, mut call) = (Duration::ZERO, Duration::ZERO);
        let n = 50;
        for _ in 0..n {
            let capture = alga_sandbox::runtime::output::Capture::new(64 * 1024);
            let mut store = prep.store(Limits::default(), Box::new(DenyAll), &capture);
            store.set_fuel(u64::MAX / 2).unwrap();
            store.set_epoch_deadline(u64::MAX / 2);
            rt.block_on(async {
                let t = Instant::now();
                let r = pre.instantiate_async(&mut store).await.unwrap();
                inst += t.elapsed();
                let t = Instant::now();
                let resp = r.call_handler(&mut store, &req).await.unwrap();
                call += t.elapsed();
                assert_eq!(resp.status, 200);
            });
        }
        println!(
            "round {round} cow={cow}: load {load:?}, link {link:?}, instantiate {:?}, call {:?}",
            inst / n,
            call / n
        );
    }
}

/// The JS sample (`--js FILE.wasm`, built by examples/hello-js/build.mjs): publish → first
/// execution, `POST /v1/execute` at concurrency 1 and 4, the same component in-process on a warm
/// engine, and the fork server's memory before and after.
fn js(path: &str, n: usize) {
    use alga_tests::server::{envelope, pack_with_ui};
    let wasm = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (build it: node examples/hello-js/build.mjs {path})"));
    let (signer, server) = bench_server();
    let fork_server = alga_tests::server::descendants(server.pid()).into_iter().min().expect("the fork server");
    let rss = |pid: u32| -> String {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
            .unwrap_or_default()
    };
    let fork_before = rss(fork_server);
    let manifest = serde_json::json!({
        "name": "com.example.bench-js", "publisher": "Example Inc", "version": "1.0.0", "runtime": "wasm-js@1",
        "capabilities": [], "api": { "endpoints": [ { "method": "GET", "path": "/time", "handler": "time" } ] }
    });
    let bytes = pack_with_ui(&manifest, &wasm, &[]);
    let t = Instant::now();
    assert_eq!(server.publish(&bytes, &signer.sign(&bytes, "com.example.bench-js", "1.0.0")).status, 201);
    let published = t.elapsed();
    server.install("bench", "com.example.bench-js", &serde_json::json!({ "version": "1.0.0" }));
    let hash = alga_shared::bundle::content_hash(&bytes);
    let env = envelope("bench", "com.example.bench-js", &hash, "/time");
    let first = server.execute(&env);
    assert_eq!(first.json()["status"], 200, "{}", String::from_utf8_lossy(&first.body));
    let first_execution = t.elapsed();
    println!(
        "JS component {} KiB: publish (verify + compile) {published:?}, publish → first execution {first_execution:?}",
        wasm.len() / 1024
    );
    println!("| path | concurrency | executions | p50 ms | p99 ms | executions/s |");
    println!("|---|---|---|---|---|---|");
    for mut r in http_rows(&[&server], "JS sample, HTTP /v1/execute", &serde_json::to_vec(&env).unwrap(), n) {
        println!("{}", r.row());
    }
    let ready = server.admin_get("/readyz").json();
    let preload_stats = ready["checks"]["preloaded"].clone();
    // The sandbox's own per-execution cost, without HTTP: a preloaded, hardened sandbox gets the
    // job, instantiates, calls, answers (the same measure as the in-process rows below).
    let mut hot = hot_path(n / 4, &wasm, ("GET", "/time"), true);
    hot.name = "JS sample, hot path: preloaded sandbox, no HTTP".into();
    println!("{}", hot.row());
    for c in [1, 4] {
        println!("{}", in_process_of("JS sample, in-process, warm engine", &wasm, ("GET", "/time"), n, c).row());
    }
    println!("preloaded sandboxes over those executions: {preload_stats}");
    println!("fork server VmRSS: {fork_before} before, {} after {} JS executions", rss(fork_server), 2 * n + 41);

    // One JS sandbox while it runs (an endless loop, stopped at 1.5 s): its resident memory and
    // page faults, read from /proc while it spins. The idle pool sandboxes show the baseline.
    let pool: Vec<u32> = alga_tests::server::descendants(fork_server);
    let mut spin = envelope("bench", "com.example.bench-js", &hash, "/spin");
    spin["limits"] = serde_json::json!({ "timeout_ms": 1500 });
    let spinning = std::thread::spawn({
        let url = server.url.clone();
        let body = serde_json::to_vec(&spin).unwrap();
        move || {
            ureq::post(&format!("{url}/v1/execute"))
                .set("authorization", &format!("Bearer {}", alga_tests::server::SERVICE_TOKEN))
                .set("content-type", "application/json")
                .send_bytes(&body)
                .map_or_else(|e| e.to_string(), |r| r.into_string().unwrap_or_default())
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    let faults = |pid: u32| -> (u64, u64) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
        // After the command name: state is field 3; minflt is 10 and majflt 12 (1-based).
        (
            fields.get(7).and_then(|v| v.parse().ok()).unwrap_or(0),
            fields.get(9).and_then(|v| v.parse().ok()).unwrap_or(0),
        )
    };
    let kib = |s: String| s.trim_end_matches(" kB").trim().parse::<u64>().unwrap_or(0);
    let mut rows: Vec<(u32, u64, (u64, u64))> =
        alga_tests::server::descendants(fork_server).into_iter().map(|p| (p, kib(rss(p)), faults(p))).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    if let Some((pid, rss_kib, (minflt, majflt))) = rows.first() {
        let idle: Vec<u64> = rows.iter().filter(|r| pool.contains(&r.0) && r.0 != *pid).map(|r| r.1).collect();
        // Resident, proportional and private memory of each idle sandbox (kB), from smaps_rollup.
        let rollup = |pid: u32| -> (u64, u64, u64) {
            let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            let field = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            (field("Rss:"), field("Pss:"), field("Private_Clean:") + field("Private_Dirty:"))
        };
        let idle_memory: Vec<(u64, u64, u64)> =
            rows.iter().filter(|r| pool.contains(&r.0) && r.0 != *pid).map(|r| rollup(r.0)).collect();
        println!("idle sandboxes (Rss, Pss, private) kB: {idle_memory:?}");
        println!(
            "a JS sandbox while it runs (pid {pid}): VmRSS {rss_kib} kB, {minflt} minor and {majflt} major page faults; idle pool sandboxes: {idle:?} kB"
        );
    }
    let answer = spinning.join().unwrap();
    assert!(answer.contains("timeout"), "{answer}");
}

fn core(pool: usize) -> (tokio::runtime::Runtime, Arc<Core>, tempfile::TempDir) {
    // `--no-preload`: executions take generic sandboxes only (to compare).
    let preload = !std::env::args().any(|a| a == "--no-preload");
    alga_tests::start_core(|s| {
        s.pool_size = pool;
        if !preload {
            s.preloaded_per_artifact = 0;
        }
    })
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

/// Creating and hardening one sandbox (what the pool does off the request path), with the given
/// namespaces.
fn spawn_cost(name: &str, ns: alga_shared::protocol::NamespaceSet, n: usize) -> Figures {
    let (rt, core, _cache) = alga_tests::start_core(|s| {
        s.pool_size = 0;
        s.plan.namespaces = ns;
    });
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    let mut steps: Vec<[u32; 6]> = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let sb = rt.block_on(Sandbox::create(&core.spawner, SandboxMode::Execute)).unwrap();
        latencies.push(t.elapsed());
        steps.push(sb.layers.step_us);
        sb.kill(&core.spawner);
        rt.block_on(async { sb.reap(&core.spawner) });
    }
    let wall = start.elapsed();
    rt.block_on(core.shutdown());
    let median = |i: usize| {
        let mut v: Vec<u32> = steps.iter().map(|s| s[i]).collect();
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "{name}: inside the sandbox (median µs): hygiene {}, namespaces {}, credentials {}, landlock {}, seccomp {}, warm-up {}",
        median(0),
        median(1),
        median(2),
        median(3),
        median(4),
        median(5)
    );
    Figures { name: name.into(), concurrency: 1, latencies, wall }
}

/// The hot path alone: handing a job to an already hardened sandbox and getting the result
/// (sandboxes are created beforehand, in batches, outside the measurement).
fn hot_path(n: usize, wasm: &[u8], (method, url): (&'static str, &'static str), preloaded: bool) -> Figures {
    let (rt, core, _cache) = core(0);
    let artifact = rt.block_on(executor::artifact_for(&core, wasm)).unwrap();
    // Measured inside a task on the runtime, as a request handler would run.
    let (latencies, phases, in_sandbox) = rt.block_on({
        let core = core.clone();
        async move {
            tokio::spawn(async move {
                let host = host_context(CapabilitySet::defaults());
                let (mut latencies, mut phases, mut in_sandbox) = (Vec::new(), Vec::new(), Vec::new());
                while latencies.len() < n {
                    let mut batch = Vec::new();
                    for _ in 0..50.min(n - latencies.len()) {
                        batch.push(if preloaded {
                            Sandbox::create_preloaded(&core.spawner, &artifact).await.unwrap()
                        } else {
                            Sandbox::create(&core.spawner, SandboxMode::Execute).await.unwrap()
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    for sb in batch {
                        let mut req = request(url);
                        if method == "GET" {
                            req.http.method = method.into();
                            req.http.body = None;
                        }
                        let job = ExecuteJob {
                            request: req,
                            limits: Limits::default(),
                            capabilities: CapabilitySet::defaults(),
                            artifact_len: artifact.len,
                        };
                        let t = Instant::now();
                        let r = executor::run(&core, sb, &artifact, job, &host).await;
                        latencies.push(t.elapsed());
                        assert_eq!(r.outcome, alga_shared::outcome::Outcome::Completed, "{:?}", r.detail);
                        in_sandbox.push(r.sandbox_us);
                        phases.push(r.phases_us);
                    }
                }
                (latencies, phases, in_sandbox)
            })
            .await
            .unwrap()
        }
    });
    let mut in_sandbox = in_sandbox;
    in_sandbox.sort();
    let median = |f: fn(&alga_shared::protocol::Phases) -> u64| {
        let mut v: Vec<u64> = phases.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "hot path: median {} µs inside the sandbox: load {} µs, link {} µs, instantiate {} µs, call {} µs",
        in_sandbox[n / 2],
        median(|p| p.load_us),
        median(|p| p.link_us),
        median(|p| p.instantiate_us),
        median(|p| p.call_us)
    );
    let busy = latencies.iter().sum();
    rt.block_on(core.shutdown());
    let name = if preloaded {
        "hot path only (sandbox already hardened, artifact preloaded)"
    } else {
        "hot path only (sandbox already hardened)"
    };
    Figures { name: name.into(), concurrency: 1, latencies, wall: busy }
}

/// The IPC hand-over alone: a hardened sandbox given a test probe that answers at once.
fn ping(n: usize) -> Figures {
    let (rt, core, _cache) = alga_tests::start_core(|s| {
        s.pool_size = 0;
        s.plan.test_probes = true;
    });
    let latencies = rt.block_on({
        let core = core.clone();
        async move {
            tokio::spawn(async move {
                let host = host_context(CapabilitySet::defaults());
                let mut lat = Vec::with_capacity(n);
                while lat.len() < n {
                    let mut batch = Vec::new();
                    for _ in 0..50.min(n - lat.len()) {
                        batch.push(Sandbox::create(&core.spawner, SandboxMode::Execute).await.unwrap());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    for sb in batch {
                        let probe = alga_shared::protocol::ProbeAction::FloodLogs { count: 0 };
                        let t = Instant::now();
                        let r =
                            executor::drive(&core, sb, executor::Work::Probe(probe, Limits::default()), &host).await;
                        lat.push(t.elapsed());
                        assert_eq!(r.outcome, alga_shared::outcome::Outcome::Completed);
                    }
                }
                lat
            })
            .await
            .unwrap()
        }
    });
    rt.block_on(core.shutdown());
    let wall = latencies.iter().sum();
    Figures { name: "IPC hand-over (probe answering at once)".into(), concurrency: 1, latencies, wall }
}

/// Memory of idle pooled sandboxes (hardened and warmed, waiting for a job) and of the fork
/// server, from `/proc/<pid>/smaps_rollup`.
fn idle_memory() {
    let (rt, core, _cache) = core(4);
    while core.pool.stats().ready < 4 {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let field = |pid: u32, name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().trim_end_matches(" kB").trim().parse().ok()))
            .unwrap_or(0)
    };
    let show = |what: &str, pid: u32| {
        println!(
            "{what}: Rss {} kB, Pss {} kB, Private_Dirty {} kB (pid {pid})",
            field(pid, "Rss:"),
            field(pid, "Pss:"),
            field(pid, "Private_Dirty:")
        )
    };
    show("fork server", core.spawner.fork.pid());
    for pid in alga_tests::children_of(core.spawner.fork.pid()) {
        show("idle pooled sandbox", pid);
    }
    rt.block_on(core.shutdown());
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
    if std::env::args().any(|a| a == "--deserialize") {
        let prep = Prepared::new(engine::engine().unwrap()).unwrap();
        let (artifact, _) = compile::compile(&prep, &fixture_bytes("echo")).unwrap();
        for _ in 0..3 {
            let t = Instant::now();
            let rounds: u32 = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(100);
            for _ in 0..rounds {
                // SAFETY: just compiled by this engine configuration.
                let c = unsafe { wasmtime::component::Component::deserialize(&prep.engine, &artifact) }.unwrap();
                std::hint::black_box(c);
            }
            let t2 = Instant::now();
            // SAFETY: as above.
            let c = unsafe { wasmtime::component::Component::deserialize(&prep.engine, &artifact) }.unwrap();
            for _ in 0..100 {
                std::hint::black_box(prep.linker.instantiate_pre(&c).unwrap());
            }
            let pre_each = t2.elapsed() / 100;
            let memfd = alga_runner::exec::artifacts::sealed_memfd("bench", &artifact).unwrap();
            let map = alga_sandbox::sys::Mapping::new(std::os::fd::AsFd::as_fd(&memfd), artifact.len()).unwrap();
            let t3 = Instant::now();
            for _ in 0..rounds {
                // SAFETY: the mapping holds this engine's artifact and outlives the component.
                let c = unsafe { wasmtime::component::Component::deserialize_raw(&prep.engine, map.raw()) }.unwrap();
                std::hint::black_box(c);
            }
            println!(
                "in-process: deserialize {} KiB: {:?} each (in place: {:?}); instantiate_pre: {:?} each",
                artifact.len() / 1024,
                (t2 - t) / rounds,
                t3.elapsed() / rounds,
                pre_each
            );
        }
        return;
    }
    if std::env::args().any(|a| a == "--cgroup-ops") {
        let (rt, core, _cache) = core(0);
        let slot = core.spawner.cgroups.acquire().unwrap().expect("cgroups in use");
        let t = Instant::now();
        for i in 0..1000u64 {
            core.spawner.cgroups.set_memory(&slot, (256 + (i % 2)) << 20).unwrap();
        }
        let set = t.elapsed() / 1000;
        let t = Instant::now();
        for _ in 0..1000 {
            std::hint::black_box(core.spawner.cgroups.oom_kills(&slot));
        }
        let oom = t.elapsed() / 1000;
        let t = Instant::now();
        for _ in 0..1000 {
            std::hint::black_box(core.spawner.cgroups.pids(&slot));
        }
        let pids_read = t.elapsed() / 1000;
        // Attaching: move a sleeping child between two slots, one hierarchy at a time.
        let other = core.spawner.cgroups.acquire().unwrap().unwrap();
        let mut child = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let pid = child.id().to_string();
        for (i, (a, b)) in slot.procs_files().iter().zip(other.procs_files().iter()).enumerate() {
            let t = Instant::now();
            for _ in 0..200 {
                std::fs::write(a, &pid).unwrap();
                std::fs::write(b, &pid).unwrap();
            }
            println!("attach to hierarchy {i} ({}): {:?}", a.display(), t.elapsed() / 400);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        println!("cgroup set_memory {set:?}, oom_kills {oom:?}, pids {pids_read:?}");
        core.spawner.cgroups.release(other);
        core.spawner.cgroups.release(slot);
        rt.block_on(core.shutdown());
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let preloaded = args.iter().any(|a| a == "--preloaded");
    let js_file = args.iter().position(|a| a == "--js").map(|i| args.get(i + 1).expect("--js FILE.wasm").clone());
    if let (Some(path), true) = (&js_file, args.iter().any(|a| a == "--hot-path")) {
        // The JS sample's hot path and its phases inside the sandbox.
        let wasm = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut f = hot_path(if quick { 100 } else { 500 }, &wasm, ("GET", "/time"), preloaded);
        println!("{}", f.row());
        return;
    }
    if let (Some(path), true) = (&js_file, args.iter().any(|a| a == "--phases")) {
        js_phases(path, std::env::var("COW").is_ok());
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--js") {
        js(args.get(i + 1).expect("--js FILE.wasm"), if quick { 200 } else { 2_000 });
        return;
    }
    if std::env::args().any(|a| a == "--http") {
        let n = if quick { 400 } else { 4_000 };
        println!("| path | concurrency | executions | p50 ms | p99 ms | executions/s |");
        println!("|---|---|---|---|---|---|");
        for mut r in http(n) {
            println!("{}", r.row());
        }
        return;
    }
    if std::env::args().any(|a| a == "--idle-memory") {
        idle_memory();
        return;
    }
    if std::env::args().any(|a| a == "--ping") {
        let mut f = ping(if quick { 100 } else { 1000 });
        println!("{}", f.row());
        return;
    }
    if std::env::args().any(|a| a == "--hot-path") {
        let mut f = hot_path(if quick { 200 } else { 2000 }, &fixture_bytes("echo"), ("POST", "/bench"), preloaded);
        println!("{}", f.row());
        return;
    }
    if std::env::args().any(|a| a == "--breakdown") {
        let n = if quick { 100 } else { 500 };
        let mut rows = vec![
            hot_path(n, &fixture_bytes("echo"), ("POST", "/bench"), false),
            hot_path(n, &fixture_bytes("echo"), ("POST", "/bench"), true),
            spawn_cost("create + harden, all namespaces", NamespaceSet::ALL, n),
            spawn_cost("create + harden, no net namespace", NamespaceSet { net: false, ..NamespaceSet::ALL }, n),
            spawn_cost("create + harden, no user namespace", NamespaceSet { user: false, ..NamespaceSet::ALL }, n),
            spawn_cost("create + harden, no mount namespace", NamespaceSet { mount: false, ..NamespaceSet::ALL }, n),
            spawn_cost("create + harden, no namespaces", NamespaceSet::default(), n),
        ];
        println!("| step | concurrency | count | p50 ms | p99 ms | per second |");
        println!("|---|---|---|---|---|---|");
        for r in &mut rows {
            println!("{}", r.row());
        }
        return;
    }
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

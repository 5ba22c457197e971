//! A real S3-compatible server for the tests: Garage (an object store written in Rust), built
//! from crates.io by `tests/run` into `~/.cache/alga-runner-tools/bin` (outside the clone, like
//! the build cache). One single-node server per test process, on free loopback ports, stopped
//! when the process exits; each test takes a bucket of its own ([`Garage::bucket`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::test_servers::{free_port, stop_at_exit, sweep_stale};

pub struct Garage {
    /// `http://127.0.0.1:<port>`: the S3 API.
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    dir: PathBuf,
    bin: PathBuf,
    pid: i32,
}

static BUCKETS: AtomicU32 = AtomicU32::new(0);

/// The Garage binary: `$ALGA_RUNNER_GARAGE`, the tools cache `tests/run` builds it into, or PATH.
pub fn garage_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ALGA_RUNNER_GARAGE") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let cached = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/alga-runner-tools/bin/garage"));
    if let Some(p) = cached.filter(|p| p.is_file()) {
        return Some(p);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("garage")).find(|p| p.is_file())
}

impl Garage {
    /// The server of this test process, started on first use; `Err` says why there is none.
    pub fn get() -> Result<&'static Garage, String> {
        static GARAGE: OnceLock<Result<Garage, String>> = OnceLock::new();
        GARAGE.get_or_init(Garage::start).as_ref().map_err(Clone::clone)
    }

    /// Another server of this test process (one a test may stop); it stops when the process
    /// exits.
    pub fn start() -> Result<Garage, String> {
        let bin = garage_bin().ok_or(
            "no Garage binary (tests/run builds it: cargo install garage --locked --root ~/.cache/alga-runner-tools)",
        )?;
        sweep_stale("alga-runner-garage-");
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let dir = PathBuf::from(format!("/var/tmp/alga-runner-garage-{}-{s3}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let secret: String =
            (0..32).map(|i| format!("{:02x}", (s3 as usize * 31 + i * 17 + rpc as usize) % 256)).collect();
        let config = format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"lmdb\"\nreplication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
             [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.localhost\"\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("garage.toml"), config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("garage.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(dir.join("garage.toml"))
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting garage: {e}"))?;
        stop_at_exit(child.id(), libc::SIGKILL)?;
        let mut garage = Garage {
            endpoint: format!("http://127.0.0.1:{s3}"),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            dir,
            bin,
            pid: child.id() as i32,
        };
        // `status` goes through the server's RPC port (`node id` would only read the key file).
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = garage.cli(&["status"]) {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(garage.dir.join("garage.log")).unwrap_or_default();
                return Err(format!("garage did not answer within 30 s: {e}\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let node = garage.cli(&["node", "id", "-q"])?;
        let node = node.split('@').next().unwrap_or_default().to_string();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
        garage.cli(&["layout", "apply", "--version", "1"])?;
        garage.cli(&["key", "create", "alga-tests"])?;
        let info = garage.cli(&["key", "info", "alga-tests", "--show-secret"])?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| format!("no `{name}` in garage's key info:\n{info}"))
        };
        garage.access_key_id = field("Key ID:")?;
        garage.secret_access_key = field("Secret key:")?;
        Ok(garage)
    }

    /// Runs one `garage` admin command against the server; its output, or why it failed.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("garage.toml"))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!("garage {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// A new, empty bucket the test key may read and write; its name.
    pub fn bucket(&self) -> String {
        let name = format!("alga-t{}-{}", std::process::id(), BUCKETS.fetch_add(1, Ordering::SeqCst));
        // A server just started may still be settling its layout: a few tries.
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Err(e) = self.cli(&["bucket", "create", &name]) {
            if e.contains("already exists") {
                break;
            }
            assert!(Instant::now() < deadline, "{e}");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.cli(&["bucket", "allow", "--read", "--write", "--owner", &name, "--key", "alga-tests"])
            .unwrap_or_else(|e| panic!("{e}"));
        name
    }

    /// The environment that points a runner's `[blobs]` at `bucket` on this server.
    pub fn blobs_env(&self, bucket: &str) -> Vec<(String, String)> {
        [
            ("ALGA_RUNNER_BLOBS__BACKEND", "s3"),
            ("ALGA_RUNNER_BLOBS__ENDPOINT", &self.endpoint),
            ("ALGA_RUNNER_BLOBS__BUCKET", bucket),
            ("ALGA_RUNNER_BLOBS__REGION", "garage"),
            ("ALGA_RUNNER_BLOBS__ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", &self.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_access_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The environment Alga's runner reads for its object store, pointing at `bucket`: one URL,
    /// path-style, and Alga's credential names.
    pub fn alga_env(&self, bucket: &str) -> Vec<(String, String)> {
        [
            ("BUNDLE_STORE_BASE", format!("{}/{bucket}", self.endpoint)),
            ("S3_ACCESS_KEY", self.access_key_id.clone()),
            ("S3_SECRET_KEY", self.secret_access_key.clone()),
            ("S3_REGION", "garage".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The runner's own S3 client for `bucket` under `prefix`, on a runtime of its own.
    pub fn client(&self, bucket: &str, prefix: &str) -> (tokio::runtime::Runtime, alga_runner::registry::SharedBlobs) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let settings = alga_runner::registry::S3Settings {
            endpoint: Some(self.endpoint.clone()),
            bucket: bucket.to_string(),
            region: "garage".into(),
            prefix: prefix.to_string(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            allow_http: true,
            ca_pem: None,
            timeout: Duration::from_secs(10),
        };
        let client = alga_runner::registry::SharedBlobs::open(&settings, rt.handle().clone()).unwrap();
        (rt, client)
    }

    /// The bundles (content hashes) in `bucket` under `prefix`, listed with the runner's own S3
    /// client.
    pub fn bundles_in(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (rt, client) = self.client(bucket, prefix);
        let mut found = rt.block_on(client.bundles()).unwrap_or_else(|e| panic!("listing {bucket}: {e}"));
        found.sort();
        found
    }

    /// The S3 API's port.
    pub fn port(&self) -> u16 {
        self.endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap()
    }

    /// The server's process id (a test may stop it to simulate an outage).
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

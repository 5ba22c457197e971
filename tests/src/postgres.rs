//! A private PostgreSQL cluster for the tests: Debian's server (installed by `tests/run`),
//! `initdb`'d on first use into a directory under `/var/tmp` (the `postgres` user must reach it:
//! not under a 0700 temporary directory), run as the `postgres` user on a free loopback port,
//! one per test process and stopped when the process exits. Each test takes a database of its
//! own ([`PgCluster::database`]).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::test_servers::{free_port, stop_at_exit, sweep_stale};

pub struct PgCluster {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    uid: u32,
    gid: u32,
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The newest installed server's `bin` directory (`/usr/lib/postgresql/<major>/bin`).
fn server_bin() -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("postgres").is_file() && bin.join("initdb").is_file())
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin)
}

fn postgres_user() -> Option<(u32, u32)> {
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let uid = String::from_utf8(out.stdout).ok()?.trim().parse().ok()?;
    let out = Command::new("id").args(["-g", "postgres"]).output().ok()?;
    let gid = String::from_utf8(out.stdout).ok()?.trim().parse().ok()?;
    Some((uid, gid))
}

impl PgCluster {
    /// The cluster of this test process, started on first use; `Err` says why there is none.
    pub fn get() -> Result<&'static PgCluster, String> {
        static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();
        CLUSTER.get_or_init(|| PgCluster::start(&[])).as_ref().map_err(Clone::clone)
    }

    /// Another cluster of this test process, with these settings (`name=value`), e.g. TLS. It
    /// stops when the process exits.
    pub fn start(settings: &[String]) -> Result<PgCluster, String> {
        let bin = server_bin().ok_or("no PostgreSQL server (apt-get install postgresql; tests/run does)")?;
        let (uid, gid) = postgres_user().ok_or("no `postgres` user (apt-get install postgresql)")?;
        sweep_stale("alga-runner-pg-");
        let dir = PathBuf::from(format!("/var/tmp/alga-runner-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(dir.join("data"), Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        let initdb = Command::new(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .uid(uid)
            .gid(gid)
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !initdb.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr)));
        }
        let port = free_port();
        let log = std::fs::File::create(dir.join("postgres.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .uid(uid)
            .gid(gid)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        // SIGQUIT is the postmaster's immediate shutdown (its backends follow it).
        stop_at_exit(child.id(), libc::SIGQUIT)?;
        let cluster = PgCluster { port, dir, bin, uid, gid };
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.psql("postgres", "SELECT 1").is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(cluster.dir.join("postgres.log")).unwrap_or_default();
                return Err(format!("postgres did not accept connections within 30 s:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    /// Runs one SQL command with `psql` as the `postgres` user; its output, or why it failed.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let psql = self.bin.join("psql");
        let psql = if psql.is_file() { psql } else { PathBuf::from("psql") };
        let out = Command::new(psql)
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A new, empty database; its URL.
    pub fn database(&self) -> String {
        let name = format!("t{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
        self.url(&name)
    }

    /// The cluster's own directory (owned by the `postgres` user): where files it must read go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes `file` the `postgres` user's, readable by it alone (a key the server must accept).
    pub fn give(&self, file: &Path) {
        std::os::unix::fs::chown(file, Some(self.uid), Some(self.gid)).unwrap();
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

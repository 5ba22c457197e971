//! Several runner hosts for the tests: real `alga-runner serve` processes, each with its own
//! state directory, sharing a fresh PostgreSQL database and a fresh bucket of a real Garage
//! server, and one node key (given to the later hosts as the `node-key` systemd credential).

use crate::garage::Garage;
use crate::postgres::PgCluster;
use crate::server::{Options, Server, Signer};

/// What the hosts share: a fresh database and a fresh bucket.
pub struct Cluster {
    pub url: String,
    pub garage: &'static Garage,
    pub bucket: String,
}

/// A fresh database and bucket, or why the test cannot run (a named skip).
pub fn cluster() -> Result<Cluster, String> {
    let pg = PgCluster::get().map_err(|e| format!("no PostgreSQL: {e}"))?;
    let garage = Garage::get().map_err(|e| format!("no S3 server: {e}"))?;
    Ok(Cluster { url: pg.database(), garage, bucket: garage.bucket() })
}

/// Host A, and host B on the same database and bucket, with no rate limits and concurrency
/// caps above what the tests send at once (a cap's places come back just after each answer).
pub fn two_hosts(signer: &Signer, c: &Cluster) -> (Server, Server) {
    let quotas = [
        ("TENANT_RATE_PER_S", "0"),
        ("EXTENSION_RATE_PER_S", "0"),
        ("TENANT_CONCURRENCY", "64"),
        ("EXTENSION_CONCURRENCY", "64"),
    ];
    two_hosts_with(signer, c, &quotas)
}

/// Host A and host B with these `[quotas]` settings.
pub fn two_hosts_with(signer: &Signer, c: &Cluster, quotas: &[(&str, &str)]) -> (Server, Server) {
    let env = quotas.iter().map(|(k, v)| (format!("ALGA_RUNNER_QUOTAS__{k}"), v.to_string())).collect();
    two_hosts_env(signer, c, env)
}

/// Host A and host B with this extra environment, each with its own state directory; B gets
/// A's node key the way an operator gives it, as the `node-key` systemd credential.
pub fn two_hosts_env(signer: &Signer, c: &Cluster, extra: Vec<(String, String)>) -> (Server, Server) {
    let mut env = c.env();
    env.extend(extra);
    let a = Server::start_with(Options { trust_lines: vec![signer.public()], env: env.clone() });
    env.push(node_key_of(&a));
    let b = Server::start_with(Options { trust_lines: vec![signer.public()], env });
    assert_ne!(a.state_dir(), b.state_dir());
    (a, b)
}

/// The environment that gives another host `host`'s node key, as the `node-key` systemd
/// credential (a directory beside `host`'s state, removed with it).
pub fn node_key_of(host: &Server) -> (String, String) {
    let credentials = host.dir.path().join("credentials-of-the-next-host");
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::copy(host.state_dir().join("node.key"), credentials.join("node-key")).unwrap();
    ("CREDENTIALS_DIRECTORY".to_string(), credentials.display().to_string())
}

/// The value of one series in `host`'s `/metrics` (0 when absent).
pub fn metric(host: &Server, series: &str) -> f64 {
    let text = String::from_utf8(host.request("GET", "/metrics", None, &[], None).body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

impl Cluster {
    /// A fresh database and a fresh bucket on `garage` (a server of the test's own).
    pub fn on(garage: &'static Garage) -> Result<Cluster, String> {
        let pg = PgCluster::get().map_err(|e| format!("no PostgreSQL: {e}"))?;
        Ok(Cluster { url: pg.database(), garage, bucket: garage.bucket() })
    }

    /// The environment of a host on this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("ALGA_RUNNER_STORAGE__BACKEND".to_string(), "postgres".to_string()),
            ("ALGA_RUNNER_STORAGE__URL".to_string(), self.url.clone()),
        ];
        env.extend(self.garage.blobs_env(&self.bucket));
        env
    }

    /// The bundles in the bucket (content hashes), read with the runner's own S3 client.
    pub fn bundles_in_bucket(&self) -> Vec<String> {
        self.garage.bundles_in(&self.bucket, "")
    }
}

//! The commands that talk to a running supervisor with the admin token: `publish`, `install`,
//! `uninstall`, `list`, `executions`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::registry::ExecutionRecord;
use crate::registry::chain::ChainHead;

#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// The supervisor [default: $ALGA_RUNNER_URL, else http://127.0.0.1:8080].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// File holding the admin token [default: $ALGA_RUNNER_ADMIN_TOKEN].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The bundle to publish.
    pub bundle: PathBuf,
    /// Its signature [default: BUNDLE.minisig].
    #[arg(long, value_name = "FILE")]
    pub sig: Option<PathBuf>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The extension (registry id or manifest name).
    pub extension: String,
    /// The tenant to install it for.
    #[arg(long)]
    pub tenant: String,
    /// The version to install (e.g. 1.2.0).
    #[arg(long)]
    pub version: String,
    /// A capability to grant (repeatable); must be one the manifest requests.
    #[arg(long = "grant", value_name = "CAP")]
    pub grants: Vec<String>,
    /// An install config entry, `key=value` (repeatable).
    #[arg(long = "config", value_name = "K=V")]
    pub config: Vec<String>,
    /// An egress allowlist entry for this install (repeatable).
    #[arg(long = "egress", value_name = "HOST")]
    pub egress: Vec<String>,
    /// The install's deadline per execution, in milliseconds (capped by the operator's maximum).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// The install's memory per execution, in MiB (capped by the operator's maximum).
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// The install's fuel per execution (capped by the operator's maximum).
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Install disabled.
    #[arg(long)]
    pub disabled: bool,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, clap::Args)]
pub struct PrefetchArgs {
    /// The bundle's content hash (`sha256:<hex>`, or the hex alone).
    pub content_hash: String,
    /// Host-registry mode: the tenant whose object key holds the bundle.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Host-registry mode: the host's registry id of the extension.
    #[arg(long)]
    pub extension: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The extension (registry id or manifest name).
    pub extension: String,
    /// The tenant to uninstall it for.
    #[arg(long)]
    pub tenant: String,
    /// Delete the install's storage and secrets now rather than after the grace period.
    #[arg(long)]
    pub purge: bool,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// List this tenant's installs (without it: the extensions in the registry).
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, clap::Args)]
pub struct ExecutionsArgs {
    /// The tenant whose executions to show.
    #[arg(long)]
    pub tenant: String,
    /// Only this extension (registry id or manifest name).
    #[arg(long)]
    pub extension: Option<String>,
    /// Only this outcome (completed, timeout, ...).
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Keep printing new executions as they are recorded.
    #[arg(long)]
    pub follow: bool,
    /// Check the tenant's hash chain instead of listing: recompute every record's hash and
    /// compare with the next record and the chain head. Exit 0 when intact, 1 when not.
    #[arg(long, conflicts_with = "follow")]
    pub verify: bool,
    /// With --verify: read the database in this state directory directly (the service must be
    /// stopped), instead of asking the running supervisor.
    #[arg(long, requires = "verify")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub remote: Remote,
}

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(remote: &Remote) -> anyhow::Result<Self> {
        let base = remote
            .url
            .clone()
            .or_else(|| std::env::var("ALGA_RUNNER_URL").ok())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_string();
        let token = match &remote.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading --token-file {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("ALGA_RUNNER_ADMIN_TOKEN").ok(),
        };
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(300)).build();
        Ok(Client { base, token, agent })
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let mut r = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.set("authorization", &format!("Bearer {t}"));
        }
        r
    }

    /// Sends and returns (status, JSON body); HTTP errors are answers too.
    fn send(&self, r: Result<ureq::Response, ureq::Error>) -> anyhow::Result<(u16, Value)> {
        let response = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => bail!("cannot reach the supervisor at {}: {e}", self.base),
        };
        let status = response.status();
        let text = response.into_string().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }
}

/// Prints an answer; returns the exit code.
fn report(status: u16, body: &Value) -> u8 {
    if (200..300).contains(&status) {
        if !body.is_null() && body != &Value::String(String::new()) {
            println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
        }
        0
    } else {
        let code = body.get("code").and_then(Value::as_str).unwrap_or("error");
        let detail = body.get("detail").and_then(Value::as_str).unwrap_or("");
        eprintln!("error: {status} {code}: {detail}");
        if let Some(errors) = body.get("errors").and_then(Value::as_array) {
            for e in errors {
                eprintln!("  - {}: {}", e["path"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("?"));
            }
        }
        EXIT_FAILURE
    }
}

/// What a path segment or query value keeps verbatim: RFC 3986 unreserved characters and `:`.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b':');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

pub fn publish(args: PublishArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.remote)?;
    let bytes = std::fs::read(&args.bundle).with_context(|| format!("reading {}", args.bundle.display()))?;
    let sig_file = args.sig.unwrap_or_else(|| {
        let mut p = args.bundle.as_os_str().to_owned();
        p.push(".minisig");
        PathBuf::from(p)
    });
    let sig = std::fs::read(&sig_file).with_context(|| {
        format!("reading the signature {} (sign the bundle first: alga-runner sign)", sig_file.display())
    })?;
    eprintln!("uploading {} ({} bytes); the runner verifies and compiles it...", args.bundle.display(), bytes.len());
    let progress = Progress::start("verifying and compiling");
    let r = client
        .request("POST", "/v1/bundles")
        .set("content-type", "application/octet-stream")
        .set("x-alga-signature", &STANDARD.encode(&sig))
        .send_bytes(&bytes);
    drop(progress);
    let (status, body) = client.send(r)?;
    // What the runner accepted but ignores, said where the author reads it.
    if let Some(warnings) = body.get("warnings").and_then(|w| w.as_array()) {
        for w in warnings.iter().filter_map(|w| w.as_str()) {
            eprintln!("warning: manifest.json {w}");
        }
    }
    Ok(report(status, &body))
}

/// Readies a bundle (fetched, verified, compiled) before its first execution.
pub fn prefetch(args: PrefetchArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.remote)?;
    let mut body = json!({ "content_hash": args.content_hash });
    if let Some(t) = &args.tenant {
        body["tenant"] = json!(t);
    }
    if let Some(e) = &args.extension {
        body["extension"] = json!(e);
    }
    let progress = Progress::start("fetching, verifying and compiling");
    let r = client.request("POST", "/v1/bundles/prefetch").send_json(body);
    drop(progress);
    let (status, body) = client.send(r)?;
    Ok(report(status, &body))
}

/// Elapsed time on a terminal while a long request runs (a large JS component compiles for
/// seconds); nothing when stderr is not a terminal.
struct Progress {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(what: &'static str) -> Progress {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Progress { stop: None, thread: None };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            loop {
                eprint!("\r  {what}… {:.0} s", start.elapsed().as_secs_f64());
                if !matches!(
                    rx.recv_timeout(Duration::from_millis(500)),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                ) {
                    break;
                }
            }
            eprint!("\r{}\r", " ".repeat(what.len() + 16));
        });
        Progress { stop: Some(tx), thread: Some(thread) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn install(args: InstallArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.remote)?;
    let mut config = serde_json::Map::new();
    for c in &args.config {
        let Some((k, v)) = c.split_once('=') else {
            eprintln!("error: --config {c:?}: expected key=value");
            return Ok(EXIT_USAGE);
        };
        config.insert(k.to_string(), json!(v));
    }
    let mut body = json!({
        "version": args.version,
        "granted_capabilities": args.grants,
        "config": config,
        "enabled": !args.disabled,
        "limits": { "timeout_ms": args.timeout_ms, "memory_mb": args.memory_mb, "fuel": args.fuel },
    });
    if !args.egress.is_empty() {
        body["egress_allowlist"] = json!(args.egress);
    }
    let path = format!("/v1/tenants/{}/installs/{}", enc(&args.tenant), enc(&args.extension));
    let (status, body) = client.send(client.request("PUT", &path).send_json(body))?;
    Ok(report(status, &body))
}

pub fn uninstall(args: UninstallArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.remote)?;
    let mut path = format!("/v1/tenants/{}/installs/{}", enc(&args.tenant), enc(&args.extension));
    if args.purge {
        path.push_str("?purge=true");
    }
    let (status, body) = client.send(client.request("DELETE", &path).call())?;
    Ok(report(status, &body))
}

pub fn list(args: ListArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.remote)?;
    let path = match &args.tenant {
        Some(t) => format!("/v1/tenants/{}/installs", enc(t)),
        None => "/v1/extensions".to_string(),
    };
    let (status, body) = client.send(client.request("GET", &path).call())?;
    Ok(report(status, &body))
}

/// `executions --verify`: the records and the head come from the running supervisor (or the
/// database itself); the hashes are recomputed here, over each record's stored encoding.
fn verify_chain(args: &ExecutionsArgs) -> anyhow::Result<u8> {
    let (head, records) = match &args.state_dir {
        Some(dir) => {
            let db = crate::registry::SledRegistry::open(&dir.join("db"))
                .with_context(|| format!("opening the database in {} (is the service stopped?)", dir.display()))?;
            use crate::registry::RegistryStore;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                anyhow::Ok((db.chain_head(&args.tenant).await?, db.executions_oldest_first(&args.tenant).await?))
            })?
        }
        None => {
            let client = Client::new(&args.remote)?;
            let tenant = enc(&args.tenant);
            let (status, body) =
                client.send(client.request("GET", &format!("/v1/tenants/{tenant}/executions/chain")).call())?;
            if !(200..300).contains(&status) {
                return Ok(report(status, &body));
            }
            let head: ChainHead = serde_json::from_value(body).context("the chain head")?;
            let mut records: Vec<ExecutionRecord> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut path = format!("/v1/tenants/{tenant}/executions?limit=1000");
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={}", enc(c)));
                }
                let (status, body) = client.send(client.request("GET", &path).call())?;
                if !(200..300).contains(&status) {
                    return Ok(report(status, &body));
                }
                for item in body["items"].as_array().cloned().unwrap_or_default() {
                    records.push(serde_json::from_value(item).context("an execution record")?);
                }
                cursor = body["next_cursor"].as_str().map(str::to_string);
                if cursor.is_none() {
                    break;
                }
            }
            records.reverse();
            (head, records)
        }
    };
    let report = crate::registry::chain::verify(&args.tenant, &head, records);
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    if report.intact() {
        eprintln!("intact: {} record(s), head #{} {}", report.records, report.head_seq, report.head_hash);
        Ok(0)
    } else {
        eprintln!("BROKEN: {} problem(s) in the execution chain of tenant {}", report.problems.len(), args.tenant);
        Ok(EXIT_FAILURE)
    }
}

pub fn executions(args: ExecutionsArgs) -> anyhow::Result<u8> {
    if args.verify {
        return verify_chain(&args);
    }
    let client = Client::new(&args.remote)?;
    let mut query = format!("limit={}", args.limit);
    if let Some(e) = &args.extension {
        query.push_str(&format!("&extension={}", enc(e)));
    }
    if let Some(s) = &args.status {
        query.push_str(&format!("&status={}", enc(s)));
    }
    let path = format!("/v1/tenants/{}/executions?{query}", enc(&args.tenant));
    let mut seen = std::collections::HashSet::new();
    loop {
        let (status, body) = client.send(client.request("GET", &path).call())?;
        if !(200..300).contains(&status) {
            return Ok(report(status, &body));
        }
        let items = body["items"].as_array().cloned().unwrap_or_default();
        // Oldest first, like a log.
        for item in items.iter().rev() {
            let id = item["execution_id"].as_str().unwrap_or_default().to_string();
            if seen.insert(id) {
                println!("{}", serde_json::to_string(item).unwrap_or_default());
            }
        }
        if !args.follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

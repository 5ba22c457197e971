//! `alga-runner exec`: one local execution in a real sandbox, for extension authors and tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use alga_shared::bindings::{ContextData, ExecuteRequest, HttpHeader, HttpRequest};
use alga_shared::capability::CapabilitySet;
use alga_shared::limits::{LimitRequest, Limits};
use alga_shared::protocol::ExecuteJob;
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::exec::Core;
use crate::exec::artifacts::ArtifactError;
use crate::exec::executor::{self, Report};
use crate::exec::forkserver;
use crate::exec::settings::Settings;
use crate::hostapi::{HostContext, HostEnv};

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The component to run (a component of the alga:extension/runner world).
    #[arg(long, value_name = "FILE.wasm")]
    pub component: PathBuf,
    /// HTTP method the guest sees.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Path (and query string) the guest sees as its request URL.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// A request header, `name: value` (repeatable); the name is lower-cased.
    #[arg(long = "header", value_name = "K:V")]
    pub headers: Vec<String>,
    /// File whose bytes are the request body.
    #[arg(long, value_name = "F")]
    pub body_file: Option<PathBuf>,
    /// Wall-clock deadline, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub timeout_ms: u64,
    /// Memory limit of all linear memories and tables together, in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mb: u64,
    /// Fuel budget (Wasmtime fuel units).
    #[arg(long, default_value_t = 100_000_000_000)]
    pub fuel: u64,
    /// A capability to grant, e.g. `storage.kv` (repeatable); defaults are always granted.
    #[arg(long = "capability", value_name = "CAP")]
    pub capabilities: Vec<String>,
    /// Tenant id the guest sees.
    #[arg(long, default_value = "local")]
    pub tenant: String,
    /// Extension id the guest sees.
    #[arg(long, default_value = "local.extension")]
    pub extension: String,
    /// An install config entry, `key=value` (repeatable).
    #[arg(long = "config", value_name = "K=V")]
    pub config: Vec<String>,
    /// Directory for cached compiled artifacts [default: $ALGA_RUNNER_STATE_DIR/cache, else
    /// $XDG_CACHE_HOME/alga-runner, else ~/.cache/alga-runner].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Policy development only: log syscalls outside the seccomp allowlist (kernel audit log,
    /// `dmesg | grep type=1326`) instead of killing the sandbox.
    #[arg(long, hide = true)]
    pub seccomp_log: bool,
}

/// A usage error found after parsing (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

struct Parsed {
    headers: Vec<HttpHeader>,
    config: BTreeMap<String, String>,
    capabilities: CapabilitySet,
    body: Option<Vec<u8>>,
    wasm: Vec<u8>,
}

fn parse(args: &ExecArgs) -> anyhow::Result<Parsed> {
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h.split_once(':').ok_or_else(|| UsageError(format!("--header {h:?}: expected `name: value`")))?;
        let name = k.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(UsageError(format!("--header {h:?}: the name is empty")).into());
        }
        headers.push(HttpHeader { name, value: v.trim().to_string() });
    }
    let mut config = BTreeMap::new();
    for c in &args.config {
        let (k, v) = c.split_once('=').ok_or_else(|| UsageError(format!("--config {c:?}: expected `key=value`")))?;
        config.insert(k.to_string(), v.to_string());
    }
    let capabilities = CapabilitySet::parse(args.capabilities.iter().map(String::as_str)).map_err(|bad| {
        UsageError(format!("--capability: {}", bad.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("; ")))
    })?;
    if !args.path.starts_with('/') {
        return Err(UsageError(format!("--path {:?}: must start with `/`", args.path)).into());
    }
    let body = match &args.body_file {
        Some(f) => Some(std::fs::read(f).with_context(|| format!("reading --body-file {}", f.display()))?),
        None => None,
    };
    let wasm =
        std::fs::read(&args.component).with_context(|| format!("reading --component {}", args.component.display()))?;
    Ok(Parsed { headers, config, capabilities, body, wasm })
}

pub fn default_cache_dir() -> PathBuf {
    if let Some(state) = std::env::var_os("ALGA_RUNNER_STATE_DIR") {
        return PathBuf::from(state).join("cache");
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("alga-runner");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache/alga-runner");
    }
    std::env::temp_dir().join("alga-runner-cache")
}

/// Runs the subcommand: prints one JSON object, returns the process exit code.
pub fn run(args: ExecArgs) -> anyhow::Result<u8> {
    let parsed = match parse(&args) {
        Ok(p) => p,
        Err(e) if e.is::<UsageError>() => {
            eprintln!("error: {e}");
            return Ok(super::EXIT_USAGE);
        }
        Err(e) => return Err(e),
    };
    let mut settings = Settings::new(args.cache_dir.clone().unwrap_or_else(default_cache_dir));
    // One execution: a warm pool or preloaded sandboxes would only add sandboxes nobody uses.
    settings.pool_size = 0;
    settings.preloaded_per_artifact = 0;
    settings.plan.seccomp_log_only = args.seccomp_log;
    let cgroups = Core::detect_cgroups(&settings);
    // Started here, on the main thread, before the runtime exists (see forkserver::Process).
    let process = forkserver::Process::start().context("starting the fork server")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let out = rt.block_on(async move {
        let core = Core::start(process, cgroups, settings).await.context("starting the sandbox core")?;
        let out = execute(&core, &args, parsed).await;
        // Let the background reaper return the cgroup slot before everything is torn down.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        core.shutdown().await;
        out
    })?;
    println!("{out}");
    Ok(0)
}

/// Runs the execution; an error means it could not be attempted (the runner failed).
async fn execute(core: &Arc<Core>, args: &ExecArgs, p: Parsed) -> anyhow::Result<Value> {
    let started = std::time::Instant::now();
    let artifact = match executor::artifact_for(core, &p.wasm).await {
        Ok(a) => a,
        Err(ArtifactError::Invalid(message)) => {
            return Ok(json!({
                "status": null, "headers": {}, "body_b64": null,
                "error": format!("invalid_component: {message}"),
                "outcome": "invalid_component", "detail": message,
                "duration_ms": started.elapsed().as_secs_f64() * 1e3,
                "memory_peak_bytes": 0, "fuel_consumed": 0, "logs": [],
            }));
        }
        Err(ArtifactError::Failed(e)) => anyhow::bail!("compiling the component: {e}"),
    };
    let limits = Limits::default().resolve(
        &LimitRequest { timeout_ms: Some(args.timeout_ms), memory_mb: Some(args.memory_mb), fuel: Some(args.fuel) },
        &LimitRequest::default(),
        &core.spawner.settings.ceilings,
    );
    let capabilities = CapabilitySet::effective(&p.capabilities, &p.capabilities, None);
    let request_id = format!("exec-{}", std::process::id());
    let request = ExecuteRequest {
        context: ContextData {
            request_id: Some(request_id.clone()),
            tenant_id: args.tenant.clone(),
            extension_id: args.extension.clone(),
            install_id: None,
            version_id: None,
        },
        http: HttpRequest {
            method: args.method.to_ascii_uppercase(),
            url: args.path.clone(),
            headers: p.headers,
            body: p.body,
        },
    };
    let host = HostContext {
        request_id: Some(request_id),
        tenant_id: args.tenant.clone(),
        extension_id: args.extension.clone(),
        install_id: None,
        version_id: None,
        user: None,
        config: p.config,
        capabilities: capabilities.clone(),
        secrets: Default::default(),
        egress: Default::default(),
        egress_bytes: Default::default(),
        env: Arc::new(HostEnv::local().context("opening a temporary storage database")?),
    };
    let job = ExecuteJob { request, limits, capabilities, artifact_len: artifact.len };
    let report = executor::execute(core, &artifact, job, &host).await;
    if report.outcome == alga_shared::outcome::Outcome::SpawnFailed {
        anyhow::bail!("no sandbox could be created: {}", report.detail.unwrap_or_default());
    }
    Ok(report_json(&report))
}

/// The JSON object `exec` prints.
pub fn report_json(r: &Report) -> Value {
    let (status, error, headers, body) = match (&r.response, r.outcome.envelope_error()) {
        (Some(resp), None) => {
            let mut headers = serde_json::Map::new();
            for h in &resp.headers {
                let name = h.name.to_ascii_lowercase();
                match headers.get_mut(&name) {
                    Some(Value::String(existing)) => {
                        existing.push_str(", ");
                        existing.push_str(&h.value);
                    }
                    _ => {
                        headers.insert(name, Value::String(h.value.clone()));
                    }
                }
            }
            if (100..=599).contains(&resp.status) {
                (
                    json!(resp.status),
                    Value::Null,
                    Value::Object(headers),
                    resp.body.as_ref().map(|b| STANDARD.encode(b)),
                )
            } else {
                (json!(502), json!("invalid_guest_response"), json!({}), None)
            }
        }
        (_, Some((status, error))) => (json!(status), json!(error), json!({}), None),
        (None, None) => (json!(500), json!("execute_failed: no response"), json!({}), None),
    };
    let mut logs: Vec<Value> = r.logs.iter().map(|l| json!(format!("[{}] {}", l.level.as_str(), l.message))).collect();
    if r.logs_dropped > 0 {
        logs.push(json!(format!("[alga-runner] {} more log lines dropped (limit reached)", r.logs_dropped)));
    }
    json!({
        "status": status,
        "headers": headers,
        "body_b64": body,
        "error": error,
        "outcome": r.outcome.label(),
        "outcome_detail": r.outcome,
        "detail": r.detail,
        "duration_ms": r.duration.as_secs_f64() * 1e3,
        "memory_peak_bytes": r.memory_peak_bytes,
        "fuel_consumed": r.fuel_consumed,
        "host_calls": r.host_calls,
        "logs": logs,
        "stdout": String::from_utf8_lossy(&r.stdout),
        "stderr": String::from_utf8_lossy(&r.stderr),
        "output_truncated": r.output_truncated,
        "pid": r.pid,
    })
}

//! `alga-runner serve`: the HTTP service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use alga_shared::signing::TrustBundle;
use anyhow::Context;
use serde_json::json;

use super::EXIT_CONFIG;
use crate::config::Config;
use crate::exec::Core;
use crate::exec::forkserver;
use crate::exec::sandbox::Sandbox;
use crate::exec::settings::Settings;
use crate::registry::{RegistryStore, StoreError, UiTrees, VersionState};
use crate::service::Service;
use crate::service::bundles::Bundles;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file [default: $ALGA_RUNNER_CONFIG; none: defaults and environment].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Development mode: a temporary state directory, loopback only, generated tokens and a
    /// generated signing key (printed once).
    #[arg(long)]
    pub dev: bool,
    /// Allow listening on a non-loopback address without tokens (development only).
    #[arg(long)]
    pub insecure_dev: bool,
}

fn random_hex() -> String {
    hex::encode(alga_sandbox::sys::random_seed())
}

/// What `--dev` generated, printed once.
struct DevSetup {
    state_dir: PathBuf,
    service_token: String,
    admin_token: String,
    key_file: PathBuf,
    pub_file: PathBuf,
    public_key: String,
}

fn dev_setup(env: &mut Vec<(String, String)>) -> anyhow::Result<DevSetup> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    // A new directory only this user can enter (never one somebody else prepared).
    let state_dir = std::env::temp_dir().join(format!("alga-runner-dev-{}-{}", std::process::id(), &random_hex()[..8]));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    std::fs::DirBuilder::new().mode(0o700).create(state_dir.join("keys"))?;
    let kp = super::bundle::unencrypted_keypair()?;
    let key_file = state_dir.join("keys/dev-signing.key");
    let pub_file = state_dir.join("keys/dev-signing.pub");
    let mut key = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_file)?;
    std::io::Write::write_all(&mut key, kp.sk.to_box(Some("alga-runner --dev signing key"))?.into_string().as_bytes())?;
    std::fs::write(&pub_file, kp.pk.to_box()?.into_string())?;
    let public_key = kp.pk.to_base64();
    let setup = DevSetup {
        state_dir: state_dir.clone(),
        service_token: random_hex(),
        admin_token: random_hex(),
        key_file,
        pub_file,
        public_key: public_key.clone(),
    };
    // The dev key is trusted in addition to any configured keys.
    let mut trust = String::from("# alga-runner --dev\n");
    if let Some((_, existing)) = env.iter().find(|(k, _)| k == "SIGNING_TRUST_BUNDLE").filter(|(_, v)| !v.is_empty()) {
        if existing.contains('\n') || existing.trim_start().starts_with("RW") {
            trust.push_str(existing);
        } else {
            trust.push_str(&std::fs::read_to_string(existing).with_context(|| format!("reading {existing}"))?);
        }
        trust.push('\n');
    }
    trust.push_str(&public_key);
    trust.push('\n');
    env.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "SIGNING_TRUST_BUNDLE" | "ALGA_RUNNER_STATE_DIR" | "ALGA_RUNNER_SERVICE_TOKEN" | "ALGA_RUNNER_ADMIN_TOKEN"
        )
    });
    env.push(("SIGNING_TRUST_BUNDLE".into(), trust));
    env.push(("ALGA_RUNNER_STATE_DIR".into(), state_dir.display().to_string()));
    env.push(("ALGA_RUNNER_SERVICE_TOKEN".into(), setup.service_token.clone()));
    env.push(("ALGA_RUNNER_ADMIN_TOKEN".into(), setup.admin_token.clone()));
    Ok(setup)
}

/// The sandbox settings a configuration asks for.
pub fn settings_of(config: &Config) -> Settings {
    let mut s = Settings::new(config.state.dir.join("cache"));
    let sb = &config.sandbox;
    if let Some(n) = sb.pool_size {
        s.pool_size = n;
    }
    s.preloaded_per_artifact = sb.preloaded_per_artifact;
    s.preloaded_max = sb.preloaded_max;
    s.plan.uid = sb.uid;
    s.plan.gid = sb.gid;
    s.plan.landlock = if sb.landlock == "required" {
        alga_shared::protocol::Requirement::Required
    } else {
        alga_shared::protocol::Requirement::BestEffort
    };
    s.plan.seccomp_log_only = sb.seccomp == "log";
    s.plan.max_frame = sb.max_frame_mb << 20;
    s.runtime_overhead_bytes = sb.memory_overhead_mb << 20;
    s.pids_max = sb.pids_max;
    s.cpu_percent = (sb.cpu_percent > 0).then_some(sb.cpu_percent);
    s.compile_memory_bytes = sb.compile_memory_mb << 20;
    s.compile_timeout = std::time::Duration::from_millis(sb.compile_timeout_ms);
    s.cgroups = sb.cgroups;
    s.ceilings = alga_shared::limits::LimitCeilings {
        max_timeout_ms: config.limits.max_timeout_ms,
        max_memory_bytes: config.limits.max_memory_mb << 20,
        max_fuel: config.limits.max_fuel,
    };
    s
}

/// Makes the database and the blob store agree: a blob without a record is removed; a record
/// without its blob marks the version unavailable. Not with a registry other hosts share: a
/// bundle another host is publishing has its blob before its record, and this host's blob store
/// does not hold every host's bundles. With an object store, the local store is a cache and
/// nothing is marked.
async fn reconcile(
    registry: &dyn RegistryStore,
    blobs: &Bundles,
    ui: &UiTrees,
    shared: bool,
) -> Result<(), StoreError> {
    if shared {
        return Ok(());
    }
    let records = registry.bundles().await?;
    let known: std::collections::HashSet<&str> = records.iter().map(|r| r.content_hash.as_str()).collect();
    for tree in ui.list().unwrap_or_default() {
        if !known.contains(tree.as_str()) {
            tracing::warn!(content_hash = %tree, "removing an extracted UI no record refers to");
            let _ = ui.remove(&tree);
        }
    }
    for blob in blobs.local.list().unwrap_or_default() {
        if !known.contains(blob.as_str()) {
            tracing::warn!(content_hash = %blob, "removing a stored bundle no record refers to");
            let _ = blobs.local.remove(&blob);
        }
    }
    if blobs.shared.is_some() {
        // The local store is a cache: a bundle missing from it is fetched when needed.
        return Ok(());
    }
    for r in &records {
        if !blobs.local.exists(&r.content_hash)
            && let Some(mut v) = registry.version_by_id(&r.extension_id, &r.version_id).await?
            && v.state != VersionState::Unavailable
        {
            tracing::error!(content_hash = %r.content_hash, version = %v.version, "bundle missing from the blob store; version marked unavailable");
            v.state = VersionState::Unavailable;
            registry.put_version(&v).await?;
        }
    }
    Ok(())
}

pub fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    let dev = if args.dev { Some(dev_setup(&mut env)?) } else { None };
    let config = match super::load_config(args.config, &env) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let listen: SocketAddr = config.server.listen.parse().context("server.listen")?;
    if dev.is_some() && !listen.ip().is_loopback() {
        eprintln!("invalid configuration: --dev listens on loopback only, not {listen}");
        return Ok(EXIT_CONFIG);
    }
    let tokens_missing = config.service_tokens()?.is_empty() || config.admin_tokens()?.is_empty();
    if tokens_missing && !listen.ip().is_loopback() {
        if !args.insecure_dev {
            eprintln!(
                "invalid configuration: refusing to listen on {listen} without both a service and an admin token \
                 (set ALGA_RUNNER_SERVICE_TOKEN and ALGA_RUNNER_ADMIN_TOKEN, or auth.* in the config file); \
                 --insecure-dev overrides this for development"
            );
            return Ok(EXIT_CONFIG);
        }
        eprintln!(
            "WARNING: --insecure-dev: listening on {listen} WITHOUT authentication. Never do this in production."
        );
    } else if tokens_missing {
        // Loopback is not a user boundary: every local process, of any user, can reach it.
        tracing::warn!(
            %listen,
            service_token = !config.service_tokens()?.is_empty(),
            admin_token = !config.admin_tokens()?.is_empty(),
            "listening without a service or an admin token: on loopback too, every local process of every user \
             can publish, install and execute; set ALGA_RUNNER_SERVICE_TOKEN and ALGA_RUNNER_ADMIN_TOKEN \
             (or auth.* in the config file)"
        );
    }

    // Which keys the environment set (flag > environment > file > default), never their values.
    for (variable, key) in &config.from_environment {
        tracing::info!(%variable, %key, "configuration key set from the environment");
    }

    if !config.auth.trusted_sources.is_empty() {
        tracing::warn!(
            trusted_sources = %config.auth.trusted_sources.join(", "),
            "requests from these addresses run executions without the service token (execute, gateway, events; \
             never admin routes): only list the host application's own addresses"
        );
    }

    if config.registry.mode == crate::config::RegistryMode::Host {
        tracing::info!(
            registry = config.registry.base_url.as_deref().unwrap_or("-"),
            bundle_keys = %config.registry.bundle_keys.join(", "),
            "host-registry mode: bundles are fetched by content hash, installs are the host's"
        );
        if config.registry_storage_token()?.is_none() {
            tracing::warn!(
                "host-registry mode without registry.storage_token (RUNNER_STORAGE_API_TOKEN): every storage call \
                 answers internal"
            );
        }
    }

    if config.host_api.base_url.is_some() && config.host_api.ui_proxy_base_url.is_none() {
        tracing::warn!(
            "host_api.ui_proxy_base_url is not set: ui-proxy answers route-not-found (it no longer falls back to \
             host_api.base_url); set it (env UI_PROXY_BASE_URL) to the host application's ui-proxy base"
        );
    }

    // Checked before anything is created: the trust bundle is part of the configuration.
    let trust = if config.trust.bundle.is_empty() {
        TrustBundle::default()
    } else {
        match TrustBundle::load(&config.trust.bundle) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("invalid configuration: trust.bundle: {e}");
                return Ok(EXIT_CONFIG);
            }
        }
    };
    if trust.keys().is_empty() {
        tracing::warn!(
            trust_bundle = %config.trust.bundle,
            "the trust bundle holds no key: no bundle can be published or run until trust.bundle (env \
             SIGNING_TRUST_BUNDLE) lists a publisher's minisign public key"
        );
    }
    // Bound before anything is created (state, cgroups, the fork server): a port in use ends the
    // start here, leaving nothing behind. Connections wait in the backlog until the service runs.
    let listener = std::net::TcpListener::bind(listen).with_context(|| {
        format!("listening on {listen} (is another alga-runner, or another service, using that port?)")
    })?;

    let state = &config.state.dir;
    // The state holds the tenants' stored values, sealed secrets and bundles: private to this
    // user whatever umask the service was started with (systemd's is 0077; a shell's often 0022).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(state).with_context(|| format!("creating the state directory {}", state.display()))?;
    std::fs::set_permissions(state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("making the state directory {} private (0700)", state.display()))?;
    let ui_trees = UiTrees::open(state.join("ui"))?;

    let settings = settings_of(&config);
    let cgroups = Core::detect_cgroups(&settings);
    // The fork server starts now, from the main thread, before any runtime thread exists.
    let process = forkserver::Process::start().context("starting the fork server")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("alga-core")
        .enable_all()
        .build()
        .context("starting the execution runtime")?;
    let stores = match super::stores::open_or_exit(&config, &rt)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let blobs = match super::stores::or_exit(super::stores::open_blobs(&config, &rt))? {
        Ok(b) => b,
        Err(code) => return Ok(code),
    };
    let registry = stores.registry.clone();
    rt.block_on(reconcile(&*registry, &blobs, &ui_trees, stores.shared.is_some()))
        .context("checking the database against the blob store")?;
    let core = rt.block_on(Core::start(process, cgroups, settings)).context("starting the sandbox core")?;
    let service = Arc::new(Service::new(config.clone(), core.clone(), stores, blobs, trust)?);
    service.start_flusher();
    service.follow_other_hosts();
    // Bundles this host holds that the object store lacks go there (then the cache may evict them).
    if service.blobs.shared.is_some() {
        let svc = service.clone();
        rt.spawn(async move {
            svc.blobs.adopt(&*svc.registry).await;
        });
    }

    // The sandbox self-test: a real sandbox, every layer, before the service says it is ready.
    let layers = rt
        .block_on(async {
            let sandbox = Sandbox::create(&core.spawner, alga_shared::protocol::SandboxMode::Execute).await?;
            let layers = sandbox.layers.clone();
            sandbox.kill(&core.spawner);
            sandbox.reap(&core.spawner);
            Ok::<_, crate::exec::sandbox::SpawnError>(layers)
        })
        .map_err(|e| anyhow::anyhow!("the sandbox self-test failed: {}", crate::error_chain(&e)))?;
    let mut report = serde_json::Map::new();
    for (name, l) in layers.layers() {
        report.insert(name.into(), json!({ "level": l.level, "detail": l.detail }));
        if l.level != alga_shared::protocol::Level::Full {
            let required = config.sandbox.require.iter().any(|r| r == name);
            tracing::warn!(
                layer = name,
                level = ?l.level,
                detail = %l.detail,
                required,
                "a hardening layer is not full{}",
                if required { ": /readyz answers 503 (sandbox.require)" } else { "" }
            );
        }
    }
    report.insert("landlock_abi".into(), json!(layers.landlock_abi));
    *service.self_test.lock().unwrap_or_else(|p| p.into_inner()) = Some(serde_json::Value::Object(report));
    service.self_test_ok.store(true, Ordering::Relaxed);

    // SIGHUP reloads the trust bundle.
    {
        let svc = service.clone();
        rt.spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                if let Err(e) = svc.reload_trust() {
                    tracing::error!(error = %e, "reloading the trust bundle on SIGHUP failed; keeping the previous one");
                }
            }
        });
    }

    let bound = listener.local_addr()?;
    if let Some(d) = &dev {
        println!("alga-runner --dev: DEVELOPMENT MODE (not for production)");
        println!("  listening on     http://{bound}");
        println!("  state directory  {} (temporary)", d.state_dir.display());
        println!("  service token    {}", d.service_token);
        println!("  admin token      {}", d.admin_token);
        println!("  signing key      {} (unencrypted), public {}", d.key_file.display(), d.pub_file.display());
        println!("  trusted key      {}", d.public_key);
        println!("  sign a bundle:   alga-runner sign bundle.tar.zst --key {}", d.key_file.display());
    }
    tracing::info!(listen = %bound, "serving");
    // systemd (Type=notify): ready once the self-test passed (above) and the warm pool has filled
    // (or after a minute without it: a slow host still serves, with fresh sandboxes); watchdog
    // keep-alives only while the fork server lives, so a broken sandbox machinery gets restarted.
    // (A database that fails to flush, on a full disk, recovers in place: /readyz says not ready
    // meanwhile, and a restart would not bring the space back.)
    {
        let core = core.clone();
        rt.spawn(async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let pool = core.pool.stats();
                if pool.target == 0 || pool.ready > 0 || tokio::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            crate::ops::systemd::notify(&format!("READY=1\nSTATUS=serving on {bound}"));
            if let Some(interval) = crate::ops::systemd::watchdog_interval() {
                let mut tick = tokio::time::interval(interval / 2);
                loop {
                    tick.tick().await;
                    if !core.spawner.fork.is_alive() {
                        tracing::error!(
                            "the fork server is gone: no more watchdog keep-alives, systemd will restart the service"
                        );
                        return;
                    }
                    crate::ops::systemd::notify("WATCHDOG=1");
                }
            }
        });
    }
    let grace = std::time::Duration::from_millis(config.server.shutdown_grace_ms);
    let served = actix_web::rt::System::new().block_on(crate::http::serve(service.clone(), listener, grace));

    // Stopped (SIGTERM/SIGINT): running requests had their grace period; now stop every sandbox,
    // remove every cgroup, and make the last records durable.
    service.shutting_down.store(true, Ordering::Relaxed);
    crate::ops::systemd::notify("STOPPING=1\nSTATUS=stopping sandboxes");
    rt.block_on(async {
        // Executions still running past the grace end with the `shutdown` outcome, and each is
        // recorded before the sandboxes and the fork server go.
        core.spawner.stop_executions();
        // Held until the end: no execution starts once this is taken (they are refused).
        let _drained = tokio::time::timeout(std::time::Duration::from_secs(10), service.in_flight.write())
            .await
            .inspect_err(|_| tracing::warn!("executions still unrecorded 10 s after shutdown began"));
        core.shutdown().await;
    });
    if let Err(e) = rt.block_on(registry.flush()) {
        tracing::error!(error = %crate::error_chain(&e), "final flush failed");
    }
    if let Some(d) = &dev {
        let _ = std::fs::remove_dir_all(&d.state_dir);
    }
    served.context("the HTTP server failed")?;
    Ok(0)
}

//! `alga-runner doctor`: which hardening layers this host supports, what a missing one means,
//! and a real sandbox's own report (the self-test).

use std::sync::Arc;

use alga_sandbox::cgroup;
use alga_sandbox::forkserver::probe_namespaces;
use alga_shared::protocol::{HardeningReport, Level, NamespaceSet, SandboxMode};
use anyhow::Context;
use serde_json::{Value, json};

use crate::exec::Core;
use crate::exec::forkserver;
use crate::exec::sandbox::Sandbox;
use crate::exec::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// A layer that must be fully available (repeatable): seccomp, landlock, cgroup, namespaces,
    /// no_new_privs. seccomp and no_new_privs are always required.
    #[arg(long = "require", value_name = "LAYER")]
    pub require: Vec<String>,
    /// Skip starting a real sandbox (report kernel probes only).
    #[arg(long)]
    pub no_self_test: bool,
}

const LAYERS: [&str; 5] = ["seccomp", "landlock", "cgroup", "namespaces", "no_new_privs"];

fn layer(status: &str, detail: impl Into<String>, meaning: &str) -> Value {
    json!({ "status": status, "detail": detail.into(), "if_missing": meaning })
}

fn seccomp_probe() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let has = status.lines().any(|l| l.starts_with("Seccomp:"));
    if has {
        layer("ok", "seccomp-bpf filters available", "")
    } else {
        layer(
            "missing",
            "the kernel has no seccomp filter support",
            "sandboxes cannot start: seccomp is always required",
        )
    }
}

fn landlock_probe() -> Value {
    let abi = alga_sandbox::harden::landlock_abi();
    let (status, detail) = match abi {
        0 => ("missing", "no Landlock in this kernel (or not enabled at boot: lsm=landlock)".to_string()),
        1..=5 => (
            "partial",
            format!(
                "ABI {abi}: filesystem{} denied; signals and abstract sockets are not scoped (needs ABI 6)",
                if abi >= 4 { " and TCP" } else { "" }
            ),
        ),
        _ => ("ok", format!("ABI {abi}: filesystem, TCP, abstract unix sockets and signals denied")),
    };
    let mut v = layer(
        status,
        detail,
        "without it a process that escapes Wasmtime could read files its uid can read; seccomp and the mount namespace still stop open()",
    );
    v["abi"] = json!(abi);
    v
}

fn cgroup_probe() -> Value {
    let d = cgroup::probe();
    let (status, controllers) = match (&d.driver, d.version) {
        (Some(driver), _) => ("ok", driver.controllers().iter().map(|c| c.to_string()).collect::<Vec<_>>()),
        (None, Some(_)) if d.delegated => ("ok", vec!["memory".into(), "pids".into()]),
        (None, Some(_)) => ("partial", vec![]),
        (None, None) => ("missing", vec![]),
    };
    let mut v = layer(
        status,
        &d.detail,
        "without cgroups a sandbox's memory, task count and CPU are bounded only by Wasmtime's limits and rlimits, and an execution cannot be killed as a group",
    );
    v["version"] = json!(d.version.map(|v| v.to_string()));
    v["controllers"] = json!(controllers);
    v["delegated"] = json!(d.delegated);
    v
}

fn namespaces_probe(available: NamespaceSet) -> Value {
    let have = available.names();
    let all = NamespaceSet::ALL.names();
    let missing: Vec<&str> = all.iter().copied().filter(|n| !have.contains(n)).collect();
    let status = if missing.is_empty() {
        "ok"
    } else if have.is_empty() {
        "missing"
    } else {
        "partial"
    };
    let detail = if missing.is_empty() {
        "user, pid, net, ipc, uts and mount namespaces available".to_string()
    } else {
        format!(
            "available: [{}]; refused: [{}] (unprivileged user namespaces may be disabled by sysctl or AppArmor, see docs)",
            have.join(", "),
            missing.join(", ")
        )
    };
    let mut v = layer(
        status,
        detail,
        "without namespaces a sandbox shares the host's network stack and process ids; seccomp still refuses socket() and kill()",
    );
    v["available"] = json!(have);
    v
}

fn nnp_probe() -> Value {
    layer("ok", "PR_SET_NO_NEW_PRIVS available", "sandboxes cannot start: no_new_privs is always required")
}

fn report_value(r: &HardeningReport) -> Value {
    let mut v = serde_json::Map::new();
    for (name, l) in r.layers() {
        v.insert(name.into(), json!({ "level": l.level, "detail": l.detail }));
    }
    v.insert("landlock_abi".into(), json!(r.landlock_abi));
    Value::Object(v)
}

pub fn run(args: DoctorArgs) -> anyhow::Result<u8> {
    for r in &args.require {
        if !LAYERS.contains(&r.as_str()) {
            eprintln!("error: --require {r:?}: unknown layer (one of {})", LAYERS.join(", "));
            return Ok(super::EXIT_USAGE);
        }
    }
    // Probed before any thread exists: the namespace probe clones processes.
    let available = probe_namespaces(NamespaceSet::ALL);
    let mut out = json!({
        "seccomp": seccomp_probe(),
        "landlock": landlock_probe(),
        "cgroup": cgroup_probe(),
        "namespaces": namespaces_probe(available),
        "no_new_privs": nnp_probe(),
    });

    if !args.no_self_test {
        out["self_test"] = self_test()?;
        // The real sandbox is the authority on seccomp: a kernel may list it yet refuse filters.
        if out["self_test"]["layers"]["seccomp"]["level"] != json!(Level::Full) {
            out["seccomp"]["status"] = json!("missing");
        }
    }

    let mut required: Vec<&str> = vec!["seccomp", "no_new_privs"];
    required.extend(args.require.iter().map(String::as_str));
    let failing: Vec<&str> = required.iter().copied().filter(|l| out[*l]["status"] != "ok").collect();
    out["required"] = json!(required);
    out["ok"] = json!(failing.is_empty());

    if args.json {
        println!("{out}");
    } else {
        print_text(&out);
    }
    Ok(if failing.is_empty() { 0 } else { super::EXIT_FAILURE })
}

fn self_test() -> anyhow::Result<Value> {
    let mut settings = Settings::new(std::env::temp_dir().join("alga-runner-doctor"));
    settings.pool_size = 0;
    settings.preloaded_per_artifact = 0;
    let cgroups = Core::detect_cgroups(&settings);
    let process = forkserver::Process::start().context("starting the fork server")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let core: Arc<Core> = Core::start(process, cgroups, settings).await.context("starting the sandbox core")?;
        let result = match Sandbox::create(&core.spawner, SandboxMode::Execute).await {
            Ok(sandbox) => {
                let v = json!({ "status": "ok", "layers": report_value(&sandbox.layers) });
                sandbox.kill(&core.spawner);
                sandbox.reap(&core.spawner);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                v
            }
            Err(e) => json!({ "status": "failed", "error": e.to_string() }),
        };
        core.shutdown().await;
        Ok(result)
    })
}

fn print_text(out: &Value) {
    for name in LAYERS {
        let l = &out[name];
        println!("{name:<13} {:<8} {}", l["status"].as_str().unwrap_or("?"), l["detail"].as_str().unwrap_or(""));
        if l["status"] != "ok" && !l["if_missing"].as_str().unwrap_or("").is_empty() {
            println!("{:<22} meaning: {}", "", l["if_missing"].as_str().unwrap_or(""));
        }
    }
    if let Some(st) = out.get("self_test") {
        println!();
        match st["status"].as_str() {
            Some("ok") => {
                println!("self-test: a real sandbox reported:");
                if let Some(layers) = st["layers"].as_object() {
                    for (k, v) in layers {
                        if let Some(level) = v.get("level") {
                            println!(
                                "  {k:<12} {:<8} {}",
                                level.as_str().unwrap_or("?"),
                                v["detail"].as_str().unwrap_or("")
                            );
                        }
                    }
                }
            }
            _ => println!("self-test FAILED: {}", st["error"].as_str().unwrap_or("?")),
        }
    }
    println!();
    println!("{}", if out["ok"] == true { "all required layers are available" } else { "a required layer is missing" });
}

//! Native escape probes: code that acts like a guest that escaped Wasmtime, run in a real sandbox
//! after every hardening layer. Each forbidden action must fail or kill the process as the policy
//! says (seccomp kills; with seccomp only logging, the other layers must still stop it).

use std::net::TcpListener;

use alga_runner::exec::executor::Report;
use alga_shared::outcome::Outcome;
use alga_shared::protocol::{Level, ProbeAction};
use alga_tests::{Harness, skip_unless};

fn killed_for(report: &Report, syscall: &str) {
    match &report.outcome {
        Outcome::SeccompViolation { syscall: got } => {
            // The name comes from the kernel audit log when /dev/kmsg is readable.
            if got != "unknown" {
                assert!(got.starts_with(&format!("{syscall} (")), "expected {syscall}, got {got}");
            }
        }
        other => panic!("expected a seccomp kill for {syscall}, got {other:?} ({:?})", report.detail),
    }
}

fn body(report: &Report) -> String {
    let r = report.response.as_ref().unwrap_or_else(|| panic!("no response: {:?} {:?}", report.outcome, report.detail));
    String::from_utf8_lossy(r.body.as_deref().unwrap_or_default()).into_owned()
}

#[test]
fn forbidden_syscalls_kill_the_sandbox() {
    let h = Harness::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fork_server = h.core.spawner.fork.pid() as i32;
    let cases: Vec<(ProbeAction, &str)> = vec![
        (ProbeAction::Open { path: "/etc/passwd".into() }, "openat"),
        (ProbeAction::SocketInet, "socket"),
        (ProbeAction::ConnectLoopback { port }, "connect"),
        (ProbeAction::Execve, "execve"),
        (ProbeAction::Fork, "fork"),
        (ProbeAction::Ptrace, "ptrace"),
        (ProbeAction::Mount, "mount"),
        (ProbeAction::Kill { pid: fork_server }, "kill"),
        (ProbeAction::RaiseRlimit, "setrlimit"),
        (ProbeAction::Unshare, "unshare"),
        (
            ProbeAction::WriteFile { path: "/sys/fs/cgroup/memory/memory.limit_in_bytes".into(), value: "-1".into() },
            "openat",
        ),
    ];
    for (action, syscall) in cases {
        let report = h.probe(action.clone());
        killed_for(&report, syscall);
    }
    // The fork server (and with it the supervisor) is untouched.
    assert!(h.core.spawner.fork.is_alive());
    assert!(std::path::Path::new(&format!("/proc/{fork_server}")).exists());
}

#[test]
fn with_seccomp_only_logging_the_other_layers_still_stop_escapes() {
    skip_unless!(alga_sandbox::harden::landlock_abi() >= 6, "Landlock ABI 6 (signal and socket scoping) is missing");
    let h = Harness::with(|s| s.plan.seccomp_log_only = true);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fork_server = h.core.spawner.fork.pid() as i32;

    // No filesystem: the root is an empty tmpfs, and Landlock denies everything anyway.
    let open = body(&h.probe(ProbeAction::Open { path: "/etc/passwd".into() }));
    assert!(open.starts_with("returned -1"), "{open}");
    // No network: connecting from the empty network namespace fails.
    let connect = body(&h.probe(ProbeAction::ConnectLoopback { port }));
    assert!(connect.starts_with("returned -1"), "{connect}");
    // No signal to anything outside: the fork server is invisible (pid namespace) and scoped out.
    let kill = body(&h.probe(ProbeAction::Kill { pid: fork_server }));
    assert!(kill.starts_with("returned -1"), "{kill}");
    assert!(h.core.spawner.fork.is_alive());
    // No capability: mount and raising a hard limit are refused.
    let mount = body(&h.probe(ProbeAction::Mount));
    assert!(mount.starts_with("returned -1"), "{mount}");
    let rlimit = body(&h.probe(ProbeAction::RaiseRlimit));
    assert!(rlimit.starts_with("returned -1"), "{rlimit}");
}

#[test]
fn every_layer_reports_full_on_this_host() {
    skip_unless!(alga_sandbox::harden::landlock_abi() >= 6, "Landlock ABI 6 is missing");
    let h = Harness::new();
    let sandbox =
        h.rt.block_on(alga_runner::exec::sandbox::Sandbox::create(
            &h.core.spawner,
            alga_shared::protocol::SandboxMode::Execute,
        ))
        .unwrap();
    for (name, layer) in sandbox.layers.layers() {
        if name == "cgroup" && h.core.spawner.cgroups.version().is_none() {
            continue;
        }
        if name == "namespaces" && sandbox.layers.namespace_set != alga_shared::protocol::NamespaceSet::ALL {
            eprintln!("SKIPPED namespaces level check: this host refuses some namespaces ({})", layer.detail);
            continue;
        }
        assert_eq!(layer.level, Level::Full, "{name}: {}", layer.detail);
    }
    assert!(sandbox.layers.landlock_abi >= 6);
    sandbox.kill(&h.core.spawner);
    h.rt.block_on(async { sandbox.reap(&h.core.spawner) });
}

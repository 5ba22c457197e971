//! The guest runtime on its own, in this process: compile and execute fixtures through an
//! in-memory host bridge. The sandboxed path runs the same code; these tests pin the runtime's
//! own behaviour (world checks, traps, limits) without processes in between.

use std::sync::{Arc, Mutex};

use alga_sandbox::runtime::{compile, engine, execute, guest::Prepared, host::BridgeError, host::HostBridge};
use alga_shared::bindings::*;
use alga_shared::capability::CapabilitySet;
use alga_shared::limits::Limits;
use alga_shared::protocol::{ExecuteJob, Failure, HostCall, HostReply, LogLevel};
use alga_tests::{CORE_MODULE, fixture_bytes};

#[derive(Clone, Default)]
struct Recorder {
    logs: Arc<Mutex<Vec<(LogLevel, String)>>>,
    calls: Arc<Mutex<u64>>,
}

impl HostBridge for Recorder {
    fn call(&mut self, call: HostCall) -> Result<HostReply, BridgeError> {
        *self.calls.lock().unwrap() += 1;
        Ok(match call {
            HostCall::ContextGet => HostReply::Context(ContextData {
                request_id: Some("req-1".into()),
                tenant_id: "tenant-a".into(),
                extension_id: "ext".into(),
                install_id: None,
                version_id: None,
            }),
            other => other.deny_reply(),
        })
    }
    fn log(&mut self, level: LogLevel, message: String) -> Result<(), BridgeError> {
        self.logs.lock().unwrap().push((level, message));
        Ok(())
    }
}

fn prepared() -> Prepared {
    Prepared::new(engine::engine().unwrap()).unwrap()
}

fn request(url: &str) -> ExecuteRequest {
    ExecuteRequest {
        context: ContextData {
            request_id: Some("req-1".into()),
            tenant_id: "tenant-a".into(),
            extension_id: "ext".into(),
            install_id: None,
            version_id: None,
        },
        http: HttpRequest { method: "POST".into(), url: url.into(), headers: vec![], body: Some(b"hi".to_vec()) },
    }
}

fn run(prep: &Prepared, name: &str, url: &str, limits: Limits) -> (Result<ExecuteResponse, Failure>, Recorder) {
    let (artifact, _) = compile::compile(prep, &fixture_bytes(name)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let job = ExecuteJob { request: request(url), limits, capabilities: CapabilitySet::defaults(), artifact_len: 0 };
    let recorder = Recorder::default();
    // An epoch ticker standing in for the sandbox's deadline timer: one tick per 10 ms.
    let engine = prep.engine.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(10));
                engine.increment_epoch();
            }
        })
    };
    let deadline_ticks = limits.timeout_ms / 10;
    // SAFETY: `artifact` was just produced by `compile` with an engine of the same configuration.
    let (result, _stats, _remains) = unsafe {
        execute::execute(
            prep,
            &rt,
            execute::ArtifactBytes::Copy(&artifact),
            &job,
            Box::new(recorder.clone()),
            deadline_ticks,
        )
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.join().unwrap();
    (result, recorder)
}

#[test]
fn echo_answers_with_the_request() {
    let prep = prepared();
    let (result, _) = run(&prep, "echo", "/hello?x=1", Limits::default());
    let response = result.unwrap();
    assert_eq!(response.status, 200);
    let body = String::from_utf8(response.body.unwrap()).unwrap();
    assert!(body.contains("\"url\":\"/hello?x=1\""), "{body}");
    assert!(body.contains("\"body_hex\":\"6869\""), "{body}");
}

#[test]
fn logs_reach_the_bridge() {
    let prep = prepared();
    let (result, recorder) = run(&prep, "logger", "/?lines=4", Limits::default());
    assert_eq!(result.unwrap().status, 200);
    let logs = recorder.logs.lock().unwrap();
    assert_eq!(logs.len(), 4);
    assert_eq!(logs[1], (LogLevel::Warn, "line 1".to_string()));
}

#[test]
fn spin_stops_at_the_epoch_deadline() {
    let prep = prepared();
    let limits = Limits { timeout_ms: 100, ..Limits::default() };
    assert_eq!(run(&prep, "spin", "/", limits).0.unwrap_err(), Failure::Timeout);
}

#[test]
fn spin_with_little_fuel_runs_out_of_fuel() {
    let prep = prepared();
    let limits = Limits { fuel: 1_000_000, ..Limits::default() };
    assert_eq!(run(&prep, "spin", "/", limits).0.unwrap_err(), Failure::FuelExhausted);
}

#[test]
fn membomb_hits_the_memory_limit() {
    let prep = prepared();
    let limits = Limits { memory_bytes: 64 << 20, ..Limits::default() };
    assert_eq!(run(&prep, "membomb", "/", limits).0.unwrap_err(), Failure::MemoryLimit);
}

#[test]
fn trap_and_stack_overflow_are_guest_traps() {
    let prep = prepared();
    match run(&prep, "trap", "/", Limits::default()).0.unwrap_err() {
        Failure::GuestTrap { kind, .. } => assert_eq!(kind, "unreachable_code_reached"),
        other => panic!("{other:?}"),
    }
    match run(&prep, "trap", "/?kind=recursion", Limits::default()).0.unwrap_err() {
        Failure::GuestTrap { kind, .. } => assert_eq!(kind, "stack_overflow"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn huge_response_is_refused() {
    let prep = prepared();
    match run(&prep, "huge", "/", Limits::default()).0.unwrap_err() {
        Failure::GuestTrap { kind, message } => {
            assert_eq!(kind, "response_too_large");
            assert!(message.contains("10485760"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_components_and_other_worlds_are_refused_with_a_reason() {
    let prep = prepared();
    match compile::compile(&prep, CORE_MODULE).unwrap_err() {
        Failure::InvalidComponent { message } => {
            assert!(message.contains("core WebAssembly module"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match compile::compile(&prep, &fixture_bytes("wrong-world")).unwrap_err() {
        Failure::InvalidComponent { message } => {
            assert!(message.contains("does not export `handler"), "{message}");
            assert!(message.contains("wasi:cli/run"), "names what it exports instead: {message}");
        }
        other => panic!("{other:?}"),
    }
    match compile::compile(&prep, b"definitely not wasm").unwrap_err() {
        Failure::InvalidComponent { message } => assert!(message.contains("magic"), "{message}"),
        other => panic!("{other:?}"),
    }
}

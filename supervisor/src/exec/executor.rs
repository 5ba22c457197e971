//! One execution (or compilation) on one sandbox, driven from the supervisor's side: hand over
//! the job, answer host calls through the broker, enforce the deadline and the host-call budget,
//! treat every byte from the sandbox as hostile, and classify how it ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alga_shared::bindings::ExecuteResponse;
use alga_shared::frame::FrameError;
use alga_shared::limits::Limits;
use alga_shared::outcome::Outcome;
use alga_shared::protocol::{
    CallKind, CompileJob, ComponentInfo, ExecStats, ExecuteJob, ExitStatus, Failure, HostReply, LogLevel, ProbeAction,
    SandboxMode, SandboxMsg,
};
use tokio::time::sleep_until;

use crate::exec::Core;
use crate::exec::artifacts::{Artifact, ArtifactError, sealed_memfd, sha256_hex};
use crate::exec::sandbox::{Sandbox, msg_name};

/// Who answers an execution's host calls: the supervisor's host-API broker
/// ([`crate::hostapi::HostContext`]); the execution core knows nothing more of it.
pub trait HostCalls: Sync {
    /// Answers one call as it arrived: its kind and its encoded arguments, which are decoded only
    /// once the kind's capability is granted. Calls that wait on the network end by `deadline`.
    /// `Err`: the arguments are not a call of that kind (a protocol violation).
    fn call(
        &self,
        kind: CallKind,
        args: &[u8],
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<HostReply, String>> + Send;
    /// Notes a call refused unperformed because the execution's host-call budget is spent.
    fn over_budget(&self, kind: CallKind);
}

/// One guest log line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// Everything known about one finished execution.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    /// The guest's response when the outcome is `Completed`.
    pub response: Option<ExecuteResponse>,
    /// Operator-facing detail (trap message, violated rule); never shown to the tenant's caller.
    pub detail: Option<String>,
    pub logs: Vec<LogLine>,
    /// Log lines past the per-execution cap, dropped.
    pub logs_dropped: u64,
    pub host_calls: u32,
    pub host_call_bytes: u64,
    pub fuel_consumed: u64,
    pub memory_peak_bytes: u64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub output_truncated: bool,
    /// Wall-clock time from handing over the job to the result, measured here.
    pub duration: Duration,
    /// Microseconds the sandbox reports it spent from receiving the job to sending the result
    /// (loading the artifact, instantiating, running); informational only.
    pub sandbox_us: u64,
    /// The sandbox's own breakdown of `sandbox_us`.
    pub phases_us: alga_shared::protocol::Phases,
    pub pid: u32,
}

impl Report {
    fn new(pid: u32) -> Self {
        Report {
            outcome: Outcome::Completed,
            response: None,
            detail: None,
            logs: Vec::new(),
            logs_dropped: 0,
            host_calls: 0,
            host_call_bytes: 0,
            fuel_consumed: 0,
            memory_peak_bytes: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            output_truncated: false,
            duration: Duration::ZERO,
            sandbox_us: 0,
            phases_us: Default::default(),
            pid,
        }
    }

    /// A report for an execution that never reached a sandbox.
    pub fn spawn_failed(detail: String) -> Self {
        let mut r = Report::new(0);
        r.outcome = Outcome::SpawnFailed;
        r.detail = Some(detail);
        r
    }
}

/// Takes a sandbox (one that preloaded `artifact`, else one from the warm pool) and runs `job`
/// on it.
pub async fn execute(core: &Arc<Core>, artifact: &Arc<Artifact>, job: ExecuteJob, host: &impl HostCalls) -> Report {
    match core.preloaded.take(artifact).await {
        Ok(sandbox) => run(core, sandbox, artifact, job, host).await,
        Err(e) => Report::spawn_failed(crate::error_chain(&e)),
    }
}

/// How the message loop ended.
enum End {
    Done(ExecuteResponse, ExecStats),
    Failed(Failure, ExecStats),
    /// The supervisor's own deadline passed.
    Deadline,
    /// The sandbox broke the protocol.
    Violation(String),
    /// The channel closed: the process died.
    Died,
    /// The runner is shutting down: the execution is cut off.
    Shutdown,
}

/// The one job a sandbox gets.
pub enum Work<'a> {
    Execute(Box<ExecuteJob>, &'a Artifact),
    /// Test only (see [`alga_shared::protocol::ProbeAction`]).
    Probe(ProbeAction, Limits),
}

/// Log lines past this multiple of the per-execution cap are a flood: the sandbox is killed.
const LOG_FLOOD_FACTOR: u64 = 100;

/// Runs `job` on `sandbox` and reports. The sandbox is always killed or left to exit, and reaped.
pub async fn run(
    core: &Arc<Core>,
    sandbox: Sandbox,
    artifact: &Artifact,
    job: ExecuteJob,
    host: &impl HostCalls,
) -> Report {
    drive(core, sandbox, Work::Execute(Box::new(job), artifact), host).await
}

/// Runs a test probe in a fresh sandbox (the fork server must allow probes).
pub async fn probe(core: &Arc<Core>, action: ProbeAction, limits: Limits, host: &impl HostCalls) -> Report {
    match Sandbox::create(&core.spawner, SandboxMode::Execute).await {
        Ok(sandbox) => drive(core, sandbox, Work::Probe(action, limits), host).await,
        Err(e) => Report::spawn_failed(crate::error_chain(&e)),
    }
}

/// Hands `work` to `sandbox` and drives it to its end.
pub async fn drive(core: &Arc<Core>, sandbox: Sandbox, work: Work<'_>, host: &impl HostCalls) -> Report {
    let limits = match &work {
        Work::Execute(job, _) => job.limits,
        Work::Probe(_, limits) => *limits,
    };
    let mut report = Report::new(sandbox.pid);
    let mut sandbox = sandbox;
    sandbox.limit_memory(&core.spawner, limits.memory_bytes + core.spawner.settings.runtime_overhead_bytes);

    let start = Instant::now();
    let time_up = start + Duration::from_millis(limits.timeout_ms);
    let deadline = time_up + core.spawner.settings.kill_grace;
    let send = async {
        match work {
            Work::Execute(job, artifact) => match &sandbox.preloaded {
                Some(sha256) if *sha256 == artifact.sha256 => sandbox.end.execute(*job, None).await,
                Some(_) => Err(FrameError::Malformed("a sandbox preloaded with another artifact".into())),
                None => sandbox.end.execute(*job, Some(artifact.fd())).await,
            },
            Work::Probe(action, _) => sandbox.end.probe(action).await,
        }
    };
    // Bounded like every other wait on the sandbox: one that does not read its job is killed.
    let sent = tokio::select! {
        r = send => r,
        _ = sleep_until(tokio::time::Instant::from_std(deadline)) => Err(FrameError::Malformed("the sandbox did not take its job before the deadline".into())),
    };
    let stop = core.spawner.stop.subscribe();
    let end = match sent {
        Ok(()) => message_loop(&sandbox, host, &limits, (time_up, deadline), stop, &mut report).await,
        Err(FrameError::Closed | FrameError::Io(_)) => End::Died,
        Err(e) => End::Violation(format!("sending the job: {e}")),
    };
    report.duration = start.elapsed();

    sandbox.finished = matches!(end, End::Done(..) | End::Failed(..));
    match end {
        End::Done(response, stats) => {
            take_stats(&mut report, stats, &limits);
            match check_response(&response, limits.max_response_bytes) {
                Ok(()) => report.response = Some(response),
                Err(detail) => {
                    sandbox.kill(&core.spawner);
                    report.outcome = Outcome::ProtocolViolation { detail: detail.clone() };
                    report.detail = Some(detail);
                }
            }
        }
        End::Failed(failure, stats) => {
            take_stats(&mut report, stats, &limits);
            let (outcome, detail) = outcome_of_failure(failure);
            report.outcome = outcome;
            report.detail = detail;
        }
        End::Deadline => {
            sandbox.kill(&core.spawner);
            report.outcome = Outcome::Timeout;
            report.detail = Some(format!("no result within {} ms; killed", limits.timeout_ms));
        }
        End::Violation(detail) => {
            sandbox.kill(&core.spawner);
            report.outcome = Outcome::ProtocolViolation { detail: detail.clone() };
            report.detail = Some(detail);
        }
        End::Shutdown => {
            sandbox.kill(&core.spawner);
            report.outcome = Outcome::Shutdown;
            report.detail = Some("the runner shut down during the execution; its sandbox was stopped".into());
        }
        End::Died => {
            // Learn how it died: seccomp (SIGSYS), the OOM killer, or something else. A plain
            // kill while the runner stops is the shutdown's (between its signal and this loop
            // noticing it); any other death stays what it was.
            let status = sandbox.wait_exit(&core.spawner, Duration::from_secs(2)).await;
            let oom = sandbox.oom_killed(&core.spawner);
            let killed = matches!(status, Some(ExitStatus::Signal { signal, .. }) if signal == libc::SIGKILL);
            if *core.spawner.stop.borrow() && killed && !oom {
                report.outcome = Outcome::Shutdown;
                report.detail = Some("the runner shut down during the execution; its sandbox was stopped".into());
            } else {
                report.outcome = outcome_of_death(status, oom);
                report.detail = Some(format!("sandbox died: {status:?}"));
            }
        }
    }
    if report.outcome.is_violation() {
        tracing::warn!(pid = report.pid, outcome = report.outcome.label(), detail = ?report.detail, "sandbox violation");
    }
    sandbox.reap(&core.spawner);
    report
}

async fn message_loop(
    sandbox: &Sandbox,
    host: &impl HostCalls,
    limits: &Limits,
    (time_up, deadline): (Instant, Instant),
    mut stop: tokio::sync::watch::Receiver<bool>,
    report: &mut Report,
) -> End {
    // Host calls that wait (the network) end when the guest's time is up; the supervisor's own
    // deadline adds the kill grace.
    let time_up = tokio::time::Instant::from_std(time_up);
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut next_call: u32 = 0;
    let mut over_budget = false;
    loop {
        let msg = tokio::select! {
            m = sandbox.end.recv() => m,
            _ = sleep_until(deadline) => return End::Deadline,
            Ok(_) = stop.wait_for(|stopping| *stopping) => return End::Shutdown,
        };
        let (msg, size) = match msg {
            Ok(m) => m,
            Err(FrameError::Closed | FrameError::Io(_)) => return End::Died,
            Err(e) => return End::Violation(e.to_string()),
        };
        match msg {
            SandboxMsg::HostCall { call_id, kind, args } => {
                if call_id != next_call {
                    return End::Violation(format!("host call id {call_id}, expected {next_call}"));
                }
                next_call = next_call.wrapping_add(1);
                if over_budget {
                    // It was told the budget is exhausted and called again anyway.
                    return End::Violation("host call after the budget was exhausted".into());
                }
                report.host_calls += 1;
                report.host_call_bytes += size as u64;
                let over =
                    report.host_calls > limits.max_host_calls || report.host_call_bytes > limits.max_host_call_bytes;
                if over {
                    host.over_budget(kind);
                }
                let reply = if report.host_calls > limits.max_host_calls {
                    over_budget = true;
                    HostReply::LimitExceeded { detail: format!("more than {} host calls", limits.max_host_calls) }
                } else if report.host_call_bytes > limits.max_host_call_bytes {
                    over_budget = true;
                    HostReply::LimitExceeded {
                        detail: format!("more than {} bytes of host-call payload", limits.max_host_call_bytes),
                    }
                } else {
                    tokio::select! {
                        r = host.call(kind, &args, time_up) => match r {
                            Ok(reply) => reply,
                            Err(detail) => return End::Violation(detail),
                        },
                        _ = sleep_until(deadline) => return End::Deadline,
                        Ok(_) = stop.wait_for(|stopping| *stopping) => return End::Shutdown,
                    }
                };
                // A sandbox that stops reading cannot hold the reply (and the execution) past
                // the deadline or the shutdown.
                let sent = tokio::select! {
                    r = sandbox.end.reply(call_id, reply) => r,
                    _ = sleep_until(deadline) => return End::Deadline,
                    Ok(_) = stop.wait_for(|stopping| *stopping) => return End::Shutdown,
                };
                match sent {
                    Ok(sent) => report.host_call_bytes += sent as u64,
                    Err(FrameError::Closed | FrameError::Io(_)) => return End::Died,
                    Err(e) => return End::Violation(format!("replying: {e}")),
                }
            }
            SandboxMsg::Log { level, message } => {
                if report.logs.len() < limits.max_log_lines as usize {
                    let message = alga_sandbox::runtime::host::truncate_on_char_boundary(
                        message,
                        limits.max_log_line_bytes as usize,
                    );
                    report.logs.push(LogLine { level, message });
                } else {
                    report.logs_dropped += 1;
                    if report.logs_dropped > LOG_FLOOD_FACTOR * u64::from(limits.max_log_lines) {
                        return End::Violation(format!("log flood: more than {} lines", report.logs_dropped));
                    }
                }
            }
            SandboxMsg::Done { response, stats } => return End::Done(response, stats),
            SandboxMsg::Failed { failure, stats } => return End::Failed(failure, stats),
            other => {
                return End::Violation(format!("unexpected {} during an execution", msg_name(&other)));
            }
        }
    }
}

/// Copies the sandbox's figures, clamped to what the limits allow (they come from a hostile
/// process).
fn take_stats(report: &mut Report, stats: ExecStats, limits: &Limits) {
    report.fuel_consumed = stats.fuel_consumed.min(limits.fuel);
    report.sandbox_us = stats.run_us.min(report.duration.as_micros() as u64);
    report.phases_us = stats.phases_us;
    report.memory_peak_bytes = stats.memory_peak_bytes.min(limits.memory_bytes);
    let budget = limits.max_output_bytes as usize;
    let over = stats.stdout.len() + stats.stderr.len() > budget;
    let mut stdout = stats.stdout;
    stdout.truncate(budget);
    let mut stderr = stats.stderr;
    stderr.truncate(budget - stdout.len());
    report.output_truncated = stats.output_truncated || over;
    report.stdout = stdout;
    report.stderr = stderr;
}

fn check_response(response: &ExecuteResponse, max_body: u64) -> Result<(), String> {
    let len = response.body.as_ref().map_or(0, |b| b.len() as u64);
    if len > max_body {
        return Err(format!("response body of {len} bytes is over the {max_body}-byte limit the sandbox must enforce"));
    }
    Ok(())
}

fn outcome_of_failure(failure: Failure) -> (Outcome, Option<String>) {
    match failure {
        Failure::GuestTrap { kind, message } => (Outcome::GuestTrap { kind: sanitize_kind(&kind) }, Some(message)),
        Failure::Timeout => (Outcome::Timeout, None),
        Failure::MemoryLimit => (Outcome::MemoryLimit, None),
        Failure::FuelExhausted => (Outcome::FuelExhausted, None),
        Failure::InvalidComponent { message } => (Outcome::InvalidComponent, Some(message)),
        Failure::Internal { message } => (Outcome::GuestTrap { kind: "runner_error".into() }, Some(message)),
    }
}

/// A trap kind goes into metric labels and error strings: keep it short and plain.
fn sanitize_kind(kind: &str) -> String {
    let k: String = kind.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(48).collect();
    if k.is_empty() { "unknown".into() } else { k }
}

fn outcome_of_death(status: Option<ExitStatus>, oom: bool) -> Outcome {
    match status {
        Some(ExitStatus::Signal { signal, syscall }) if signal == libc::SIGSYS => Outcome::SeccompViolation {
            syscall: syscall.map_or_else(|| "unknown".to_string(), alga_shared::syscalls::describe),
        },
        Some(ExitStatus::Signal { signal, .. }) if signal == libc::SIGKILL && oom => Outcome::MemoryLimit,
        Some(ExitStatus::Signal { signal, .. }) => Outcome::Crashed { signal },
        Some(ExitStatus::Code(code)) => {
            Outcome::ProtocolViolation { detail: format!("sandbox exited with code {code} before sending a result") }
        }
        None => Outcome::Crashed { signal: 0 },
    }
}

/// Compiles `wasm` in a fresh compile sandbox; returns the artifact bytes.
pub async fn compile(core: &Arc<Core>, wasm: &[u8]) -> Result<(Vec<u8>, ComponentInfo), ArtifactError> {
    let failed = |e: String| ArtifactError::Failed(e);
    let memfd = sealed_memfd("alga-component", wasm).map_err(|e| failed(format!("memfd for the component: {e}")))?;
    // Created with the compile memory limit.
    let mut sandbox =
        Sandbox::create(&core.spawner, SandboxMode::Compile).await.map_err(|e| failed(crate::error_chain(&e)))?;
    let max = core.spawner.settings.max_artifact_bytes;
    let job = CompileJob { wasm_len: wasm.len() as u64, max_artifact_bytes: max };
    let deadline = tokio::time::Instant::now() + core.spawner.settings.compile_timeout;
    let result = async {
        sandbox.end.compile(job, std::os::fd::AsFd::as_fd(&memfd)).await.map_err(|e| failed(e.to_string()))?;
        let mut expected: Option<(u64, ComponentInfo)> = None;
        let mut artifact = Vec::new();
        loop {
            let msg = tokio::select! {
                m = sandbox.end.recv() => m,
                _ = sleep_until(deadline) => {
                    return Err(ArtifactError::Invalid(format!(
                        "compilation did not finish within {} ms (the operator's limit, \
                         `sandbox.compile_timeout_ms`)",
                        core.spawner.settings.compile_timeout.as_millis()
                    )));
                }
            };
            match msg.map(|(m, _)| m) {
                Ok(SandboxMsg::Compiled { artifact_len, info }) if expected.is_none() && artifact_len <= max => {
                    artifact.reserve(artifact_len as usize);
                    expected = Some((artifact_len, info));
                }
                Ok(SandboxMsg::ArtifactChunk { bytes }) if expected.is_some() => {
                    let (len, _) = expected.as_ref().map(|(l, i)| (*l, i)).unwrap_or((0, &ComponentInfo::default()));
                    if (artifact.len() + bytes.len()) as u64 > len {
                        return Err(failed("compile sandbox sent more artifact bytes than announced".into()));
                    }
                    artifact.extend_from_slice(&bytes);
                    if artifact.len() as u64 == len {
                        let info = expected.map(|(_, i)| i).unwrap_or_default();
                        return Ok((artifact, info));
                    }
                }
                Ok(SandboxMsg::Failed { failure: Failure::InvalidComponent { message }, .. }) => {
                    return Err(ArtifactError::Invalid(message));
                }
                Ok(SandboxMsg::Failed { failure, .. }) => return Err(failed(format!("compile sandbox: {failure:?}"))),
                Ok(other) => return Err(failed(format!("compile sandbox sent an unexpected {}", msg_name(&other)))),
                Err(FrameError::Closed | FrameError::Io(_)) => {
                    let status = sandbox.wait_exit(&core.spawner, Duration::from_secs(2)).await;
                    return Err(match outcome_of_death(status, sandbox.oom_killed(&core.spawner)) {
                        Outcome::MemoryLimit | Outcome::Crashed { signal: libc::SIGKILL } => {
                            ArtifactError::Invalid(format!(
                                "compilation was killed, most likely for needing more than the compile sandbox's \
                             {} MiB of memory (the operator's limit, `sandbox.compile_memory_mb`)",
                                core.spawner.settings.compile_memory_bytes >> 20
                            ))
                        }
                        other => failed(format!("compile sandbox died: {other:?}")),
                    });
                }
                Err(e) => return Err(failed(format!("compile sandbox broke the protocol: {e}"))),
            }
        }
    }
    .await;
    if result.is_ok() {
        // It sent everything and exits by itself.
        sandbox.finished = true;
    } else {
        sandbox.kill(&core.spawner);
    }
    sandbox.reap(&core.spawner);
    result
}

/// The artifact for `wasm`: from the cache, or compiled in a sandbox and cached.
pub async fn artifact_for(core: &Arc<Core>, wasm: &[u8]) -> Result<Arc<Artifact>, ArtifactError> {
    let key = sha256_hex(wasm);
    if let Some(a) = core.artifacts.lookup(&key).map_err(|e| ArtifactError::Failed(format!("artifact cache: {e}")))? {
        return Ok(a);
    }
    let (bytes, _info) = compile(core, wasm).await?;
    core.artifacts.store(&key, &bytes).map_err(|e| ArtifactError::Failed(format!("storing the artifact: {e}")))
}

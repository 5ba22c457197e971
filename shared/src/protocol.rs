//! The IPC protocol between the supervisor, the fork server and each sandbox (05-sandbox.md).
//!
//! Every frame carries [`PROTOCOL_VERSION`]; see [`crate::frame`] for the wire format. The
//! messages here are the only way a sandbox talks to the world, so the supervisor treats every
//! field of every [`SandboxMsg`] as hostile input.

use serde::{Deserialize, Serialize};

use crate::bindings::*;
use crate::capability::{Capability, CapabilitySet};
use crate::limits::Limits;

/// Bumped whenever a message changes shape. A frame with another version is a protocol violation.
pub const PROTOCOL_VERSION: u16 = 3;

// ---------------------------------------------------------------------------------------------
// Supervisor -> sandbox
// ---------------------------------------------------------------------------------------------

/// What the supervisor sends to a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SupervisorMsg {
    /// Run `handler` once. Sent together with the sealed memfd of the compiled artifact, except to
    /// a sandbox that preloaded it (see [`ForkRequest::Spawn`]).
    Execute(ExecuteJob),
    /// Compile a component. Sent together with a sealed memfd holding the component's bytes.
    Compile(CompileJob),
    /// The answer to the sandbox's host call `call_id`.
    HostReply { call_id: u32, reply: HostReply },
    /// Test only: run native code that acts like a guest that escaped Wasmtime. Refused unless
    /// the fork server was started with [`SandboxPlan::test_probes`].
    Probe(ProbeAction),
}

/// What a test probe does inside a hardened sandbox, in place of a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeAction {
    /// `openat` of a path.
    Open { path: String },
    /// `openat(O_WRONLY)` and `write` of a value, e.g. the sandbox's own cgroup files.
    WriteFile { path: String, value: String },
    /// `socket(AF_INET, SOCK_STREAM)`.
    SocketInet,
    /// `connect` of the IPC socket's descriptor to 127.0.0.1:`port`.
    ConnectLoopback { port: u16 },
    /// `execve("/bin/true")`.
    Execve,
    /// `fork()`.
    Fork,
    /// `ptrace(PTRACE_TRACEME)`.
    Ptrace,
    /// `mount` of a tmpfs.
    Mount,
    /// `kill(pid, SIGKILL)`.
    Kill { pid: i32 },
    /// `setrlimit(RLIMIT_NOFILE)` above the hard limit hygiene set.
    RaiseRlimit,
    /// `unshare(CLONE_NEWUSER)`.
    Unshare,
    /// Writes these raw bytes on the IPC socket, then waits.
    RawBytes { bytes: Vec<u8> },
    /// Writes these raw bytes on the IPC socket, then exits.
    RawBytesThenExit { bytes: Vec<u8> },
    /// Sends a host call with the wrong call id.
    WrongCallId,
    /// Sends this many log messages as fast as it can.
    FloodLogs { count: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteJob {
    pub request: ExecuteRequest,
    pub limits: Limits,
    /// The effective capabilities. Informational for the guest runtime only: every host call is
    /// checked again by the supervisor, which never trusts the sandbox to check anything.
    pub capabilities: CapabilitySet,
    /// Length of the artifact in the memfd, in bytes.
    pub artifact_len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompileJob {
    /// Length of the component in the memfd, in bytes.
    pub wasm_len: u64,
    /// Largest artifact the supervisor accepts back, in bytes.
    pub max_artifact_bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Sandbox -> supervisor
// ---------------------------------------------------------------------------------------------

/// What a sandbox sends to the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SandboxMsg {
    /// Hardening finished; the sandbox waits for one job.
    Ready { layers: HardeningReport },
    /// A host import the guest called: which one, and its arguments encoded apart (a
    /// [`HostCall`], see [`crate::frame::encode_value`]), so that the supervisor checks the call's
    /// capability before it decodes them. The guest is blocked until the matching `HostReply`.
    HostCall { call_id: u32, kind: CallKind, args: Vec<u8> },
    /// A guest log line (not a host call: no reply, not counted toward the host-call cap).
    Log { level: LogLevel, message: String },
    /// `handler` returned.
    Done { response: ExecuteResponse, stats: ExecStats },
    /// The execution or compilation failed inside the sandbox.
    Failed { failure: Failure, stats: ExecStats },
    /// Compilation succeeded; `artifact_len` bytes follow in [`SandboxMsg::ArtifactChunk`]s.
    Compiled { artifact_len: u64, info: ComponentInfo },
    /// A piece of the compiled artifact, in order.
    ArtifactChunk { bytes: Vec<u8> },
}

/// Largest [`SandboxMsg::ArtifactChunk`] a compile sandbox sends.
pub const ARTIFACT_CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Figures the sandbox measured. Reported by a hostile process: the supervisor clamps and
/// re-checks them, and measures wall-clock time itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStats {
    pub fuel_consumed: u64,
    /// Largest size of all linear memories and tables together, in bytes.
    pub memory_peak_bytes: u64,
    /// Microseconds from receiving the job to the result.
    pub run_us: u64,
    /// Where those microseconds went: loading the artifact, linking, instantiating, the call.
    pub phases_us: Phases,
    /// Captured `wasi:cli/stdout` (bounded).
    pub stdout: Vec<u8>,
    /// Captured `wasi:cli/stderr` (bounded).
    pub stderr: Vec<u8>,
    /// True when stdout or stderr hit the bound and was cut.
    pub output_truncated: bool,
}

/// Microseconds per phase of one execution inside the sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phases {
    pub load_us: u64,
    pub link_us: u64,
    pub instantiate_us: u64,
    pub call_us: u64,
}

/// Why a job ended without a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// The guest trapped; `kind` is a short stable name (e.g. `unreachable`, `stack_overflow`).
    GuestTrap { kind: String, message: String },
    /// The epoch deadline interrupted the guest.
    Timeout,
    /// A memory or table growth went past the limit.
    MemoryLimit,
    /// The fuel budget ran out.
    FuelExhausted,
    /// The component is not a component of the `alga:extension/runner` world.
    InvalidComponent { message: String },
    /// The runner itself failed inside the sandbox (not the guest's fault).
    Internal { message: String },
}

/// What compilation learned about a component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    /// Interface names the component imports (e.g. `alga:extension/storage`).
    pub imports: Vec<String>,
    /// Names the component exports.
    pub exports: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Host calls
// ---------------------------------------------------------------------------------------------

/// One call of a host import, with its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostCall {
    ContextGet,
    SecretsGet { key: String },
    SecretsListKeys,
    HttpFetch { request: HttpRequest },
    StorageGet { namespace: String, key: String },
    StoragePut { entry: StorageEntry },
    StorageDelete { namespace: String, key: String },
    StorageListEntries { namespace: String, cursor: Option<String> },
    UiProxyCallRoute { route: String, payload: Option<Vec<u8>> },
    UserGet,
    UserV2Get,
    SchedulerList,
    SchedulerGet { schedule_id: String },
    SchedulerCreate { input: CreateScheduleInput },
    SchedulerUpdate { schedule_id: String, input: UpdateScheduleInput },
    SchedulerDelete { schedule_id: String },
    SchedulerGetEndpoints,
    InvoicingCreateManualInvoice { input: CreateManualInvoiceInput },
    ClientsList { input: ClientsListInput },
    ClientsGet { client_id: String },
    ServicesList { input: ServicesListInput },
    ServicesGet { service_id: String },
    ConfigGet { key: String },
    ConfigList,
    MetricsCounterAdd { name: String, value: u64 },
    MetricsHistogramObserve { name: String, value: f64 },
}

/// Which host import a [`HostCall`] is, without its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallKind {
    ContextGet,
    SecretsGet,
    SecretsListKeys,
    HttpFetch,
    StorageGet,
    StoragePut,
    StorageDelete,
    StorageListEntries,
    UiProxyCallRoute,
    UserGet,
    UserV2Get,
    SchedulerList,
    SchedulerGet,
    SchedulerCreate,
    SchedulerUpdate,
    SchedulerDelete,
    SchedulerGetEndpoints,
    InvoicingCreateManualInvoice,
    ClientsList,
    ClientsGet,
    ServicesList,
    ServicesGet,
    ConfigGet,
    ConfigList,
    MetricsCounterAdd,
    MetricsHistogramObserve,
}

impl HostCall {
    /// Which import this is.
    pub fn kind(&self) -> CallKind {
        match self {
            HostCall::ContextGet => CallKind::ContextGet,
            HostCall::SecretsGet { .. } => CallKind::SecretsGet,
            HostCall::SecretsListKeys => CallKind::SecretsListKeys,
            HostCall::HttpFetch { .. } => CallKind::HttpFetch,
            HostCall::StorageGet { .. } => CallKind::StorageGet,
            HostCall::StoragePut { .. } => CallKind::StoragePut,
            HostCall::StorageDelete { .. } => CallKind::StorageDelete,
            HostCall::StorageListEntries { .. } => CallKind::StorageListEntries,
            HostCall::UiProxyCallRoute { .. } => CallKind::UiProxyCallRoute,
            HostCall::UserGet => CallKind::UserGet,
            HostCall::UserV2Get => CallKind::UserV2Get,
            HostCall::SchedulerList => CallKind::SchedulerList,
            HostCall::SchedulerGet { .. } => CallKind::SchedulerGet,
            HostCall::SchedulerCreate { .. } => CallKind::SchedulerCreate,
            HostCall::SchedulerUpdate { .. } => CallKind::SchedulerUpdate,
            HostCall::SchedulerDelete { .. } => CallKind::SchedulerDelete,
            HostCall::SchedulerGetEndpoints => CallKind::SchedulerGetEndpoints,
            HostCall::InvoicingCreateManualInvoice { .. } => CallKind::InvoicingCreateManualInvoice,
            HostCall::ClientsList { .. } => CallKind::ClientsList,
            HostCall::ClientsGet { .. } => CallKind::ClientsGet,
            HostCall::ServicesList { .. } => CallKind::ServicesList,
            HostCall::ServicesGet { .. } => CallKind::ServicesGet,
            HostCall::ConfigGet { .. } => CallKind::ConfigGet,
            HostCall::ConfigList => CallKind::ConfigList,
            HostCall::MetricsCounterAdd { .. } => CallKind::MetricsCounterAdd,
            HostCall::MetricsHistogramObserve { .. } => CallKind::MetricsHistogramObserve,
        }
    }

    /// The capability the supervisor checks before performing this call.
    pub fn capability(&self) -> Capability {
        self.kind().capability()
    }

    /// The interface this call belongs to, as a fixed metric label.
    pub fn api(&self) -> &'static str {
        self.kind().api()
    }

    /// The answer this call gets when its capability is not granted (see [`CallKind::deny_reply`]).
    pub fn deny_reply(&self) -> HostReply {
        self.kind().deny_reply()
    }
}

impl CallKind {
    /// The capability the supervisor checks before performing this call.
    pub fn capability(self) -> Capability {
        use CallKind::*;
        match self {
            ContextGet => Capability::ContextRead,
            SecretsGet | SecretsListKeys => Capability::SecretsGet,
            HttpFetch => Capability::HttpFetch,
            StorageGet | StoragePut | StorageDelete | StorageListEntries => Capability::StorageKv,
            UiProxyCallRoute => Capability::UiProxy,
            UserGet | UserV2Get => Capability::UserRead,
            SchedulerList
            | SchedulerGet
            | SchedulerCreate
            | SchedulerUpdate
            | SchedulerDelete
            | SchedulerGetEndpoints => Capability::SchedulerManage,
            InvoicingCreateManualInvoice => Capability::InvoiceManualCreate,
            ClientsList | ClientsGet => Capability::ClientRead,
            ServicesList | ServicesGet => Capability::ServiceRead,
            ConfigGet | ConfigList => Capability::ConfigRead,
            MetricsCounterAdd | MetricsHistogramObserve => Capability::MetricsEmit,
        }
    }

    /// The interface this call belongs to, as a fixed metric label.
    pub fn api(self) -> &'static str {
        match self.capability() {
            Capability::ContextRead => "context",
            Capability::SecretsGet => "secrets",
            Capability::HttpFetch => "http",
            Capability::StorageKv => "storage",
            Capability::LogEmit => "logging",
            Capability::UiProxy => "ui-proxy",
            Capability::UserRead => "user",
            Capability::SchedulerManage => "scheduler",
            Capability::InvoiceManualCreate => "invoicing",
            Capability::ClientRead => "clients",
            Capability::ServiceRead => "services",
            Capability::ConfigRead => "config",
            Capability::MetricsEmit => "metrics",
        }
    }

    /// The answer a call gets when its capability is not granted: the interface's deny value.
    /// Never a trap (Alga gap: `get-context` panicked).
    pub fn deny_reply(self) -> HostReply {
        use CallKind::*;
        match self {
            ContextGet => HostReply::Context(ContextData {
                request_id: None,
                tenant_id: String::new(),
                extension_id: String::new(),
                install_id: None,
                version_id: None,
            }),
            SecretsGet => HostReply::Secret(Err(SecretError::Denied)),
            SecretsListKeys => HostReply::SecretKeys(Vec::new()),
            HttpFetch => HostReply::Http(Err(HttpError::NotAllowed)),
            StorageGet | StoragePut => HostReply::StorageEntry(Err(StorageError::Denied)),
            StorageDelete => HostReply::StorageUnit(Err(StorageError::Denied)),
            StorageListEntries => HostReply::StorageEntries(Err(StorageError::Denied)),
            UiProxyCallRoute => HostReply::Proxy(Err(ProxyError::Denied)),
            UserGet => HostReply::User(Err(UserError::NotAllowed)),
            UserV2Get => HostReply::UserV2(Err(UserError::NotAllowed)),
            SchedulerList => HostReply::Schedules(Err(SchedulerError::Denied)),
            SchedulerGet => HostReply::Schedule(Err(SchedulerError::Denied)),
            SchedulerCreate => HostReply::ScheduleCreated(CreateScheduleResult {
                success: false,
                schedule_id: None,
                error: Some(denied_text(Capability::SchedulerManage)),
                field_errors: None,
            }),
            SchedulerUpdate => HostReply::ScheduleUpdated(UpdateScheduleResult {
                success: false,
                error: Some(denied_text(Capability::SchedulerManage)),
                field_errors: None,
            }),
            SchedulerDelete => HostReply::ScheduleDeleted(DeleteScheduleResult {
                success: false,
                error: Some(denied_text(Capability::SchedulerManage)),
            }),
            SchedulerGetEndpoints => HostReply::Endpoints(Err(SchedulerError::Denied)),
            InvoicingCreateManualInvoice => {
                HostReply::Invoice(invoice_failure(denied_text(Capability::InvoiceManualCreate)))
            }
            ClientsList => HostReply::Clients(Err(ClientReadError::NotAllowed)),
            ClientsGet => HostReply::Client(Err(ClientReadError::NotAllowed)),
            ServicesList => HostReply::Services(Err(ServiceReadError::NotAllowed)),
            ServicesGet => HostReply::Service(Err(ServiceReadError::NotAllowed)),
            ConfigGet => HostReply::ConfigValue(None),
            ConfigList => HostReply::ConfigEntries(Vec::new()),
            MetricsCounterAdd | MetricsHistogramObserve => HostReply::Unit,
        }
    }
}

/// A `create-manual-invoice` result that failed with `error` (and no invoice).
pub fn invoice_failure(error: String) -> CreateManualInvoiceResult {
    CreateManualInvoiceResult {
        success: false,
        invoice_id: None,
        invoice_number: None,
        status: None,
        subtotal: None,
        tax: None,
        total: None,
        error: Some(error),
        field_errors: None,
    }
}

fn denied_text(cap: Capability) -> String {
    format!("Permission denied: {cap} not granted")
}

/// The result of one host call, shaped as the guest's import returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostReply {
    Context(ContextData),
    Secret(Result<String, SecretError>),
    SecretKeys(Vec<String>),
    Http(Result<HttpResponse, HttpError>),
    StorageEntry(Result<StorageEntry, StorageError>),
    StorageUnit(Result<(), StorageError>),
    StorageEntries(Result<Vec<StorageEntry>, StorageError>),
    Proxy(Result<Vec<u8>, ProxyError>),
    User(Result<UserData, UserError>),
    UserV2(Result<UserDataV2, UserError>),
    Schedules(Result<Vec<ScheduleInfo>, SchedulerError>),
    Schedule(Result<Option<ScheduleInfo>, SchedulerError>),
    ScheduleCreated(CreateScheduleResult),
    ScheduleUpdated(UpdateScheduleResult),
    ScheduleDeleted(DeleteScheduleResult),
    Endpoints(Result<Vec<EndpointInfo>, SchedulerError>),
    Invoice(CreateManualInvoiceResult),
    Clients(Result<ClientsListResult, ClientReadError>),
    Client(Result<Option<ClientSummary>, ClientReadError>),
    Services(Result<ServicesListResult, ServiceReadError>),
    Service(Result<Option<ServiceSummary>, ServiceReadError>),
    ConfigValue(Option<String>),
    ConfigEntries(Vec<(String, String)>),
    Unit,
    /// The execution went past its host-call count or payload budget: the guest traps.
    LimitExceeded {
        detail: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Hardening report
// ---------------------------------------------------------------------------------------------

/// How much of one hardening layer is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Everything the layer asks for is enforced.
    Full,
    /// Some of it is enforced (the detail says what is missing).
    Partial,
    /// Nothing of it is enforced.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStatus {
    pub level: Level,
    pub detail: String,
}

impl LayerStatus {
    pub fn full(detail: impl Into<String>) -> Self {
        LayerStatus { level: Level::Full, detail: detail.into() }
    }
    pub fn partial(detail: impl Into<String>) -> Self {
        LayerStatus { level: Level::Partial, detail: detail.into() }
    }
    pub fn missing(detail: impl Into<String>) -> Self {
        LayerStatus { level: Level::Missing, detail: detail.into() }
    }
}

/// Namespaces a sandbox was created in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSet {
    pub user: bool,
    pub pid: bool,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    pub mount: bool,
}

impl NamespaceSet {
    pub const ALL: NamespaceSet = NamespaceSet { user: true, pid: true, net: true, ipc: true, uts: true, mount: true };

    /// Namespaces in either set.
    pub fn union(self, other: NamespaceSet) -> NamespaceSet {
        NamespaceSet {
            user: self.user || other.user,
            pid: self.pid || other.pid,
            net: self.net || other.net,
            ipc: self.ipc || other.ipc,
            uts: self.uts || other.uts,
            mount: self.mount || other.mount,
        }
    }

    /// Namespaces in `self` but not in `other`.
    pub fn without(self, other: NamespaceSet) -> NamespaceSet {
        NamespaceSet {
            user: self.user && !other.user,
            pid: self.pid && !other.pid,
            net: self.net && !other.net,
            ipc: self.ipc && !other.ipc,
            uts: self.uts && !other.uts,
            mount: self.mount && !other.mount,
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (on, name) in [
            (self.user, "user"),
            (self.pid, "pid"),
            (self.net, "net"),
            (self.ipc, "ipc"),
            (self.uts, "uts"),
            (self.mount, "mount"),
        ] {
            if on {
                v.push(name);
            }
        }
        v
    }
}

/// The achieved level of each of the six hardening layers, in the order they are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardeningReport {
    pub hygiene: LayerStatus,
    pub cgroup: LayerStatus,
    pub namespaces: LayerStatus,
    pub namespace_set: NamespaceSet,
    pub credentials: LayerStatus,
    pub landlock: LayerStatus,
    /// The Landlock ABI the kernel offers (0 = none).
    pub landlock_abi: u8,
    pub seccomp: LayerStatus,
    /// Microseconds each step took: hygiene, namespaces, credentials, landlock, seccomp, warm-up
    /// (for the performance notes; informational).
    pub step_us: [u32; 6],
}

impl HardeningReport {
    /// The layers by name, in order.
    pub fn layers(&self) -> [(&'static str, &LayerStatus); 6] {
        [
            ("hygiene", &self.hygiene),
            ("cgroup", &self.cgroup),
            ("namespaces", &self.namespaces),
            ("credentials", &self.credentials),
            ("landlock", &self.landlock),
            ("seccomp", &self.seccomp),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Fork server control channel (supervisor <-> fork server)
// ---------------------------------------------------------------------------------------------

/// Which kind of job a sandbox is created for; it decides the seccomp filter and rlimits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxMode {
    Execute,
    Compile,
}

/// Whether a hardening layer the kernel cannot fully provide stops the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// Apply what the kernel offers and report the level reached.
    BestEffort,
    /// Refuse to run sandboxes unless the layer is fully enforced.
    Required,
}

/// How the fork server hardens every sandbox it creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPlan {
    /// User and group a sandbox runs as when the service runs as root (default 65534, nobody).
    pub uid: u32,
    pub gid: u32,
    /// Namespaces to create; each one the kernel refuses is reported and skipped.
    pub namespaces: NamespaceSet,
    pub landlock: Requirement,
    /// Log seccomp violations instead of killing (policy development only).
    pub seccomp_log_only: bool,
    /// Largest IPC frame, in bytes.
    pub max_frame: u32,
    /// `RLIMIT_NOFILE` of a sandbox.
    pub max_open_files: u64,
    /// A seccomp policy (the JSON of `policies/seccomp/<arch>.json`) replacing the embedded one;
    /// for policy development and the test that proves every allowed syscall is needed.
    pub seccomp_policy: Option<String>,
    /// Test only: accept [`SupervisorMsg::Probe`] jobs. Never set by the service's configuration.
    pub test_probes: bool,
}

impl Default for SandboxPlan {
    fn default() -> Self {
        SandboxPlan {
            uid: 65534,
            gid: 65534,
            namespaces: NamespaceSet::ALL,
            landlock: Requirement::BestEffort,
            seccomp_log_only: false,
            max_frame: crate::frame::DEFAULT_MAX_FRAME,
            max_open_files: 16,
            seccomp_policy: None,
            test_probes: false,
        }
    }
}

/// What the supervisor asks of the fork server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForkRequest {
    /// The first message: how to harden sandboxes.
    Start { plan: SandboxPlan },
    /// Create one sandbox. Sent with the sandbox's end of its IPC socket pair, then the
    /// `cgroup.procs` file of each hierarchy of its cgroup, open for writing: the child is written
    /// to them before it runs anything.
    Spawn {
        token: u64,
        mode: SandboxMode,
        /// The cgroup directories, for the hardening report.
        cgroups: Vec<String>,
        /// Preload this compiled artifact: its sealed memfd comes right after the IPC socket. The
        /// sandbox loads it from that file before Landlock and seccomp, so the job that follows needs
        /// no artifact and Wasmtime maps memory images copy-on-write from the file.
        preload: bool,
    },
}

/// What the fork server reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForkEvent {
    /// The fork server is up. `engine_fingerprint` names the code-generation settings.
    Started {
        engine_fingerprint: String,
        namespaces: NamespaceSet,
        pid: u32,
    },
    /// A sandbox exists (sent with its pidfd).
    Spawned {
        token: u64,
        pid: u32,
    },
    SpawnFailed {
        token: u64,
        error: String,
    },
    /// A sandbox was reaped.
    Exited {
        pid: u32,
        status: ExitStatus,
    },
}

/// How a sandbox process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    /// Killed by `signal`; for SIGSYS, `syscall` is the number of the call seccomp refused when
    /// the kernel let us read it.
    Signal {
        signal: i32,
        syscall: Option<i64>,
    },
}

//! The service's configuration (07-operations.md): a TOML file, then environment overrides
//! (`ALGA_RUNNER_<SECTION>__<KEY>`, the direct names below, and the Alga seed's names), then
//! validation that names every bad field at once. Every field carries its default and unit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, `host:port` (default `127.0.0.1:8080`; env `ALGA_RUNNER_LISTEN`,
    /// `PORT` sets the port only).
    pub listen: String,
    /// Public base URL of this runner, used in UI links (default empty; env `RUNNER_PUBLIC_BASE`).
    pub public_base: String,
    /// Running executions may finish for this long at shutdown, in milliseconds (default 10 000).
    pub shutdown_grace_ms: u64,
    /// A request body must have arrived whole this long after its headers, in milliseconds
    /// (default 30 000); a slower one is answered 408.
    pub body_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            public_base: String::new(),
            shutdown_grace_ms: 10_000,
            body_timeout_ms: 30_000,
        }
    }
}

/// `[auth]` — each token optional to configure, required once configured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Token of the host application (`/v1/execute`, `/api/ext/...`, `/v1/events`) (default
    /// none; env `ALGA_RUNNER_SERVICE_TOKEN`).
    pub service_token: Option<String>,
    /// File holding the service token, e.g. a systemd credential (default none). During a
    /// rotation it may hold two, one per line: the new one and the old one.
    pub service_token_file: Option<PathBuf>,
    /// During a rotation, both service tokens, `[new, old]` (default none; env
    /// `ALGA_RUNNER_AUTH__SERVICE_TOKENS`, comma-separated); with `service_token`, at most two
    /// in all.
    pub service_tokens: Vec<String>,
    /// Token of operators (registry, installs, executions) (default none; env
    /// `ALGA_RUNNER_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// File holding the admin token (default none); two lines during a rotation.
    pub admin_token_file: Option<PathBuf>,
    /// During a rotation, both admin tokens, `[new, old]` (default none; env
    /// `ALGA_RUNNER_AUTH__ADMIN_TOKENS`).
    pub admin_tokens: Vec<String>,
    /// Source addresses (CIDRs or single addresses) whose requests to the execute, gateway and
    /// events routes need no service token — for Alga's `/api/ext` gateway, which sends none and
    /// relies on network placement (default empty; never for admin routes; logged as a warning at
    /// start).
    pub trusted_sources: Vec<String>,
}

/// `[state]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Where everything the service writes lives: database, bundles, compiled artifacts (default
    /// `/var/lib/alga-runner`; env `ALGA_RUNNER_STATE_DIR`).
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { dir: PathBuf::from("/var/lib/alga-runner") }
    }
}

/// `[trust]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// The trust bundle: a file path, or inline keys (a value with a newline or starting with
    /// `RW`) (default empty: no key, nothing verifies; env `SIGNING_TRUST_BUNDLE`).
    pub bundle: String,
}

/// `[sandbox]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Ready sandboxes kept warm (default: 2 × CPUs).
    pub pool_size: Option<usize>,
    /// Sandboxes kept ready per recently executed artifact, each with that artifact already
    /// loaded; 0 disables preloading (default 4).
    pub preloaded_per_artifact: usize,
    /// Preloaded sandboxes in all (default 16).
    pub preloaded_max: usize,
    /// User id sandboxes run as when the service runs as root (default 65534).
    pub uid: u32,
    /// Group id sandboxes run as when the service runs as root (default 65534).
    pub gid: u32,
    /// `best_effort` or `required` (refuse sandboxes without full Landlock) (default `best_effort`).
    pub landlock: String,
    /// `enforce` or `log` (policy development only) (default `enforce`).
    pub seccomp: String,
    /// Memory added to an execution's limit for its cgroup, in MiB (default 128).
    pub memory_overhead_mb: u64,
    /// Tasks per sandbox cgroup (default 8).
    pub pids_max: u64,
    /// CPU quota per sandbox, percent of one CPU; 0 = unlimited (default 100).
    pub cpu_percent: u32,
    /// Memory of a compile sandbox, in MiB (default 2 048).
    pub compile_memory_mb: u64,
    /// Deadline of one compilation, in milliseconds (default 120 000).
    pub compile_timeout_ms: u64,
    /// Largest IPC frame, in MiB (default 16, at most 64).
    pub max_frame_mb: u32,
    /// Use cgroups when the host offers them (default true).
    pub cgroups: bool,
    /// Hardening layers that must be full for `/readyz` to say ready: any of `hygiene`,
    /// `cgroup`, `namespaces`, `credentials`, `landlock`, `seccomp` (default none; every layer
    /// that is not full is logged as a warning at start either way).
    pub require: Vec<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            pool_size: None,
            preloaded_per_artifact: 4,
            preloaded_max: 16,
            uid: 65534,
            gid: 65534,
            landlock: "best_effort".into(),
            seccomp: "enforce".into(),
            memory_overhead_mb: 128,
            pids_max: 8,
            cpu_percent: 100,
            compile_memory_mb: 2048,
            compile_timeout_ms: 120_000,
            max_frame_mb: 16,
            cgroups: true,
            require: Vec::new(),
        }
    }
}

/// `[limits]` — per execution; an install or a caller may lower them, never raise them above
/// the maxima.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Default wall-clock deadline, in milliseconds (default 5 000).
    pub default_timeout_ms: u64,
    /// Largest deadline, in milliseconds (default 60 000).
    pub max_timeout_ms: u64,
    /// Default memory, in MiB (default 256).
    pub default_memory_mb: u64,
    /// Largest memory, in MiB (default 4 096).
    pub max_memory_mb: u64,
    /// Default fuel, in Wasmtime fuel units (default 100 000 000 000).
    pub default_fuel: u64,
    /// Largest fuel (default 18 446 744 073 709 551 615).
    pub max_fuel: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            default_timeout_ms: 5_000,
            max_timeout_ms: 60_000,
            default_memory_mb: 256,
            max_memory_mb: 4_096,
            default_fuel: 100_000_000_000,
            max_fuel: u64::MAX,
        }
    }
}

/// `[bundles]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BundlesConfig {
    /// Largest `bundle.tar.zst`, in MiB (default 64).
    pub max_compressed_mb: u64,
    /// Largest decompressed contents, in MiB (default 256).
    pub max_uncompressed_mb: u64,
}

impl Default for BundlesConfig {
    fn default() -> Self {
        BundlesConfig { max_compressed_mb: 64, max_uncompressed_mb: 256 }
    }
}

/// `[egress]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Hosts extensions may reach at all (default empty: none; env `EXT_EGRESS_ALLOWLIST`,
    /// comma-separated).
    pub allowlist: Vec<String>,
    /// Largest `http.fetch` request body, in KiB (default 1024).
    pub max_request_kb: u64,
    /// Largest `http.fetch` response body, in KiB (default 10240); larger is a `transport` error.
    pub max_response_kb: u64,
    /// One more list per extension, by registry id or manifest name, intersected with the
    /// others (default none). In host-registry mode the install record is the host's, so this is
    /// how an operator narrows one extension below the operator's list.
    pub extensions: BTreeMap<String, Vec<String>>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            allowlist: Vec::new(),
            max_request_kb: 1024,
            max_response_kb: 10 * 1024,
            extensions: BTreeMap::new(),
        }
    }
}

/// `[gateway]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Deadline of a gateway request, in milliseconds (default 30 000; env
    /// `EXT_GATEWAY_TIMEOUT_MS`).
    pub timeout_ms: u64,
    /// Largest request body of `/api/ext/...`, in MiB (default 10).
    pub max_body_mb: u64,
    /// Origins that get CORS headers (default none: no CORS headers at all).
    pub cors_allowed_origins: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig { timeout_ms: 30_000, max_body_mb: 10, cors_allowed_origins: Vec::new() }
    }
}

/// `[ui]` — extension UIs for iframes (`/ext-ui/...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// Serve a bundle's UI only when it is installed (for `?tenant=`, or for some tenant)
    /// (default true).
    pub strict: bool,
    /// The `frame-ancestors` of the default Content-Security-Policy: the host pages allowed to
    /// embed extension UIs (default `'self'`; env `EXT_UI_FRAME_ANCESTORS`).
    pub frame_ancestors: String,
    /// A whole Content-Security-Policy for HTML, replacing the default (env
    /// `EXT_UI_CONTENT_SECURITY_POLICY`).
    pub content_security_policy: Option<String>,
    /// Largest UI file served, in MiB (default 25); larger is 413.
    pub max_file_mb: u64,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig { strict: true, frame_ancestors: "'self'".into(), content_security_policy: None, max_file_mb: 25 }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Add the extension id as a label of the execution series (default false: labels come from
    /// fixed sets only; per-extension labels grow with the number of extensions).
    pub per_extension: bool,
}

/// `[executions]` — the execution log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionsConfig {
    /// Records older than this many days are removed (default 30).
    pub retention_days: u64,
    /// At most this many records per tenant; the oldest go first (default 10 000).
    pub max_per_tenant: u64,
}

impl Default for ExecutionsConfig {
    fn default() -> Self {
        ExecutionsConfig { retention_days: 30, max_per_tenant: 10_000 }
    }
}

/// `[quotas]` — admission of executions. A rate of 0 or a cap of 0 means unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotasConfig {
    /// Executions per second per tenant (token bucket; default 100).
    pub tenant_rate_per_s: f64,
    /// Burst size of the tenant's bucket (default 200).
    pub tenant_burst: f64,
    /// Executions per second per tenant and extension (default 50).
    pub extension_rate_per_s: f64,
    /// Burst size of the extension's bucket (default 100).
    pub extension_burst: f64,
    /// Executions running at once per tenant (default 16).
    pub tenant_concurrency: u32,
    /// Executions running at once per tenant and extension (default 8).
    pub extension_concurrency: u32,
    /// Executions running at once in this supervisor; more wait in the queue (default 64).
    pub max_concurrent: u32,
    /// How long an execution may wait for a slot before 503 `overloaded` (default 5000).
    pub queue_timeout_ms: u64,
    /// Length of a usage window, in seconds (default 3600).
    pub usage_window_s: u64,
    /// Invocations per tenant per usage window (default 0: unlimited).
    pub tenant_invocations_per_window: u64,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        QuotasConfig {
            tenant_rate_per_s: 100.0,
            tenant_burst: 200.0,
            extension_rate_per_s: 50.0,
            extension_burst: 100.0,
            tenant_concurrency: 16,
            extension_concurrency: 8,
            max_concurrent: 64,
            queue_timeout_ms: 5_000,
            usage_window_s: 3_600,
            tenant_invocations_per_window: 0,
        }
    }
}

/// `[host_api]` — the host application's internal API, where the host-forwarded interfaces
/// (ui-proxy, scheduler, invoicing, clients, services) go. Unset: they answer their deny values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostApiConfig {
    /// e.g. `https://psa.example.com` (default none).
    pub base_url: Option<String>,
    /// Sent as `x-runner-auth` (default none; required with `base_url`).
    pub token: Option<String>,
    /// File holding the token, e.g. a systemd credential (default none).
    pub token_file: Option<PathBuf>,
    /// Base of `ui-proxy` routes (default none: ui-proxy answers `route-not-found`; env
    /// `UI_PROXY_BASE_URL`). Never falls back to `base_url`.
    pub ui_proxy_base_url: Option<String>,
    /// Send `token` as `x-runner-auth` on ui-proxy requests too (default false: the guest
    /// chooses ui-proxy routes, so the credential stays with the internal API).
    pub ui_proxy_sends_token: bool,
}

/// The hardening layers a sandbox reports (`[sandbox] require` names them).
pub const HARDENING_LAYERS: [&str; 6] = ["hygiene", "cgroup", "namespaces", "credentials", "landlock", "seccomp"];

/// Where the registry lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryMode {
    /// This runner's own registry: bundles are published into it, installs made through it.
    #[default]
    Local,
    /// The host application's (an Alga deployment): bundles are fetched by content hash from
    /// the object store, installs are the host's (docs/alga.md).
    Host,
}

/// `[registry]` — whose registry this runner serves (docs/alga.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// `local` or `host` (default `local`).
    pub mode: RegistryMode,
    /// Host mode: the object keys tried in order for a bundle, with `{tenant}`, `{extension}`
    /// (the host's registry id) and `{hex}` (the content hash's lower-case hex) (default: the
    /// key Alga's server writes and its runner reads, then `sha256/{hex}/bundle.tar.zst`). The
    /// detached signature is at the same key plus `.minisig`.
    pub bundle_keys: Vec<String>,
    /// Host mode: a prefix of the host's keys in the bucket (default none; set from the path of
    /// `BUNDLE_STORE_BASE` after the bucket).
    pub bundle_prefix: String,
    /// Host mode: the host's registry endpoints (`/api/installs/validate`,
    /// `/api/installs/lookup-by-host`), e.g. `https://psa.example.com` (env `REGISTRY_BASE_URL`).
    pub base_url: Option<String>,
    /// Host mode: sent as `x-api-key` to the registry endpoints (env `ALGA_AUTH_KEY`).
    pub auth_key: Option<String>,
    /// File holding the key (env `ALGA_AUTH_KEY_FILE`).
    pub auth_key_file: Option<PathBuf>,
    /// How long a registry answer (valid or not) is kept, in seconds (default 45, as Alga's).
    pub validate_cache_s: u64,
    /// Host mode: where storage calls go, `POST {storage_base_url}/api/internal/ext-storage/install/{install_id}`
    /// (default `base_url`; env `STORAGE_API_BASE_URL`).
    pub storage_base_url: Option<String>,
    /// Host mode: sent as `x-runner-auth` on storage calls (env `RUNNER_STORAGE_API_TOKEN`).
    pub storage_token: Option<String>,
    /// File holding the storage token.
    pub storage_token_file: Option<PathBuf>,
}

/// The keys Alga's server writes a bundle under (and its runner reads), then a plain one.
pub const DEFAULT_BUNDLE_KEYS: [&str; 2] =
    ["tenants/{tenant}/extensions/{extension}/sha256/{hex}/bundle.tar.zst", "sha256/{hex}/bundle.tar.zst"];

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            mode: RegistryMode::Local,
            bundle_keys: DEFAULT_BUNDLE_KEYS.iter().map(|k| k.to_string()).collect(),
            bundle_prefix: String::new(),
            base_url: None,
            auth_key: None,
            auth_key_file: None,
            validate_cache_s: 45,
            storage_base_url: None,
            storage_token: None,
            storage_token_file: None,
        }
    }
}

/// `[vault]` — Vault Transit, to open Alga's `vault-transit:v1` secret envelopes. Unset: such
/// envelopes are refused with `secret_decrypt_failed` naming this section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// e.g. `https://vault.internal:8200` (default none; env `VAULT_ADDR` or `ALGA_VAULT_ADDR`).
    pub address: Option<String>,
    /// The token (default none; prefer `token_file`).
    pub token: Option<String>,
    /// File holding the token, read on every decrypt so a rotation needs no restart (default
    /// `/run/secrets/alga_vault_token` when `token` is unset; env `ALGA_VAULT_TOKEN_FILE`).
    pub token_file: Option<PathBuf>,
    /// The Transit engine's mount when the envelope names none (default `transit`; env
    /// `ALGA_VAULT_TRANSIT_MOUNT`).
    pub mount: String,
    /// Sent as `X-Vault-Namespace` (default none; env `VAULT_NAMESPACE`).
    pub namespace: Option<String>,
    /// How long a decrypt may take, in milliseconds (default 5 000).
    pub timeout_ms: u64,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            address: None,
            token: None,
            token_file: None,
            mount: "transit".into(),
            namespace: None,
            timeout_ms: 5_000,
        }
    }
}

/// `[execute]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecuteConfig {
    /// Largest `/v1/execute` request body, in MiB (default 16).
    pub max_request_mb: u64,
    /// Completed executions kept for `x-idempotency-key` replays (default 10 000).
    pub idempotency_entries: usize,
    /// How long an idempotent result is kept, in seconds (default 600).
    pub idempotency_ttl_s: u64,
    /// Memory the kept results may take, in MiB (default 64).
    pub idempotency_max_mb: u64,
}

impl Default for ExecuteConfig {
    fn default() -> Self {
        ExecuteConfig {
            max_request_mb: 16,
            idempotency_entries: 10_000,
            idempotency_ttl_s: 600,
            idempotency_max_mb: 64,
        }
    }
}

/// `[storage]` — where the registry, the execution log, usage, guest storage and secrets live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `sled`: the embedded database in the state directory, for one host; `postgres`: one
    /// PostgreSQL database that several runner hosts share (default `sled`).
    pub backend: String,
    /// The PostgreSQL connection URL, `postgres://user:password@host:port/database` (default none;
    /// required with `backend = "postgres"` unless `url_file` is set).
    pub url: Option<String>,
    /// A file holding the URL, e.g. a systemd credential (default none).
    pub url_file: Option<PathBuf>,
    /// Connections to PostgreSQL this host opens at most (default 16).
    pub pool_size: usize,
    /// A statement running longer is cancelled, in milliseconds (default 5 000).
    pub statement_timeout_ms: u64,
    /// CA certificates (PEM) the database server's certificate must chain to (default none: the
    /// public web roots). TLS follows the URL's `sslmode`; a TLS connection is always verified.
    pub ca_file: Option<PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: "sled".into(),
            url: None,
            url_file: None,
            pool_size: 16,
            statement_timeout_ms: 5_000,
            ca_file: None,
        }
    }
}

/// `[blobs]` — where bundles, their signatures and compiled artifacts live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobsConfig {
    /// `fs`: the state directory holds every bundle, for one host; `s3`: an S3-compatible bucket
    /// several hosts share, with the state directory as a bounded cache (default `fs`).
    pub backend: String,
    /// The S3 endpoint, `https://s3.example.com` (default none: AWS's own for `region`).
    pub endpoint: Option<String>,
    /// The bucket (required with `backend = "s3"`).
    pub bucket: Option<String>,
    /// The bucket's region (default `us-east-1`; Garage's default is `garage`).
    pub region: String,
    /// A key prefix every object is stored under, e.g. `alga-runner/` (default none).
    pub prefix: String,
    /// The access key id (default: the environment's `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// A file holding the access key id, e.g. a systemd credential (default none).
    pub access_key_id_file: Option<PathBuf>,
    /// A file holding the secret access key (default: the environment's `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key_file: Option<PathBuf>,
    /// Allows a plain `http://` endpoint, for a loopback test server (default false).
    pub allow_http: bool,
    /// CA certificates (PEM) the endpoint's certificate must chain to, besides the system's
    /// roots (default none).
    pub ca_file: Option<PathBuf>,
    /// Room the local cache of bundles takes at most, in MiB; the least recently used bundles
    /// are evicted beyond it (default 2 048; `s3` only: with `fs` the directory is the store).
    pub cache_max_mb: u64,
    /// A request to the object store taking longer fails, in milliseconds (default 30 000).
    pub timeout_ms: u64,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        BlobsConfig {
            backend: "fs".into(),
            endpoint: None,
            bucket: None,
            region: "us-east-1".into(),
            prefix: String::new(),
            access_key_id: None,
            access_key_id_file: None,
            secret_access_key_file: None,
            allow_http: false,
            ca_file: None,
            cache_max_mb: 2048,
            timeout_ms: 30_000,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub state: StateConfig,
    pub storage: StorageConfig,
    pub blobs: BlobsConfig,
    pub trust: TrustConfig,
    pub sandbox: SandboxConfig,
    pub limits: LimitsConfig,
    pub bundles: BundlesConfig,
    pub egress: EgressConfig,
    pub gateway: GatewayConfig,
    pub execute: ExecuteConfig,
    pub host_api: HostApiConfig,
    pub registry: RegistryConfig,
    pub vault: VaultConfig,
    pub executions: ExecutionsConfig,
    pub quotas: QuotasConfig,
    pub ui: UiConfig,
    pub metrics: MetricsConfig,
    /// The keys an environment variable set, as (variable, `section.key`), for the start log
    /// (names only, never values). Not a setting.
    #[serde(skip)]
    pub from_environment: Vec<(String, String)>,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

const SECTIONS: &[&str] = &[
    "server",
    "auth",
    "state",
    "storage",
    "blobs",
    "trust",
    "sandbox",
    "limits",
    "bundles",
    "egress",
    "gateway",
    "execute",
    "host_api",
    "registry",
    "vault",
    "executions",
    "quotas",
    "ui",
    "metrics",
];

/// Environment variables that name a field directly (with or without a config file).
const DIRECT: &[(&str, &str, &str)] = &[
    ("ALGA_RUNNER_LISTEN", "server", "listen"),
    ("ALGA_RUNNER_STATE_DIR", "state", "dir"),
    ("ALGA_RUNNER_SERVICE_TOKEN", "auth", "service_token"),
    ("ALGA_RUNNER_ADMIN_TOKEN", "auth", "admin_token"),
    ("RUNNER_PUBLIC_BASE", "server", "public_base"),
    ("SIGNING_TRUST_BUNDLE", "trust", "bundle"),
    ("EXT_EGRESS_ALLOWLIST", "egress", "allowlist"),
    ("EXT_GATEWAY_TIMEOUT_MS", "gateway", "timeout_ms"),
    ("UI_PROXY_BASE_URL", "host_api", "ui_proxy_base_url"),
    ("EXT_UI_FRAME_ANCESTORS", "ui", "frame_ancestors"),
    ("EXT_UI_CONTENT_SECURITY_POLICY", "ui", "content_security_policy"),
    // Alga's Vault names (VAULT_ADDR wins over ALGA_VAULT_ADDR, as on Alga's runner).
    ("ALGA_VAULT_ADDR", "vault", "address"),
    ("VAULT_ADDR", "vault", "address"),
    ("ALGA_VAULT_TOKEN_FILE", "vault", "token_file"),
    ("ALGA_VAULT_TRANSIT_MOUNT", "vault", "mount"),
    ("VAULT_NAMESPACE", "vault", "namespace"),
    // Alga's runner's names for the host registry and the object store (docs/alga.md).
    ("REGISTRY_BASE_URL", "registry", "base_url"),
    ("ALGA_AUTH_KEY", "registry", "auth_key"),
    ("ALGA_AUTH_KEY_FILE", "registry", "auth_key_file"),
    ("STORAGE_API_BASE_URL", "registry", "storage_base_url"),
    ("RUNNER_STORAGE_API_TOKEN", "registry", "storage_token"),
    ("MINIO_ACCESS_KEY", "blobs", "access_key_id"),
    ("S3_ACCESS_KEY", "blobs", "access_key_id"),
    ("S3_REGION", "blobs", "region"),
];

/// The 1-based line of `key` under `[section]` in a TOML text (`None` when not written there).
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = name.trim().to_string();
        } else if current == section && l.split_once('=').is_some_and(|(k, _)| k.trim().trim_matches('"') == key) {
            return Some(i + 1);
        }
    }
    None
}

/// A deserializer's message in words: `invalid type: string "x", expected u64` → `is the text
/// "x", expected a whole number`.
fn in_words(message: &str) -> String {
    let mut m = message.replace("invalid type: ", "is ").replace("invalid value: ", "is ");
    for (rust, words) in [
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected u8", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list, e.g. [\"a\", \"b\"]"),
        ("expected a map", "expected a table"),
        ("expected struct ", "expected a table: "),
        ("expected a borrowed string", "expected text in quotes"),
        ("expected a string", "expected text in quotes"),
        ("string ", "the text "),
        ("integer ", "the number "),
        ("floating point ", "the number "),
        ("sequence", "a list"),
    ] {
        m = m.replace(rust, words);
    }
    m
}

/// `http://minio:9000/bucket[/prefix]` → (`http://minio:9000`, bucket, prefix).
fn bundle_store_base(base: &str) -> Option<(String, String, String)> {
    let url = url::Url::parse(base.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let host = url.host_str()?;
    let endpoint = match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    };
    let path = url.path().trim_matches('/');
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    (!bucket.is_empty()).then(|| (endpoint, bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// A value from the environment, typed like the field's default: numbers and booleans parse as
/// such, lists (`allowlist`, `cors_allowed_origins`) split on commas.
fn env_value(section: &str, key: &str, raw: &str) -> Value {
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let as_int = || raw.trim().parse::<i64>().map(Value::Integer).unwrap_or_else(|_| Value::String(raw.into()));
    match defaults.get(section).and_then(|s| s.get(key)) {
        Some(serde_json::Value::Number(n)) if n.is_f64() => {
            raw.trim().parse::<f64>().map(Value::Float).unwrap_or_else(|_| Value::String(raw.into()))
        }
        Some(serde_json::Value::Number(_)) => as_int(),
        Some(serde_json::Value::Bool(_)) => {
            raw.trim().parse::<bool>().map(Value::Boolean).unwrap_or_else(|_| Value::String(raw.into()))
        }
        Some(serde_json::Value::Array(_)) => Value::Array(
            raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.into())).collect(),
        ),
        _ if key == "pool_size" => as_int(),
        _ => Value::String(raw.into()),
    }
}

fn set(table: &mut Table, section: &str, key: &str, value: Value) {
    let entry = table.entry(section.to_string()).or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(t) = entry {
        t.insert(key.to_string(), value);
    }
}

impl Config {
    /// Reads the file (when given), applies the environment, validates. `env` is the process
    /// environment (a parameter so tests need not touch the real one).
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
        let mut file_text = String::new();
        let mut table = match file {
            Some(path) => {
                file_text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
                file_text.parse::<Table>().map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?
            }
            None => Table::new(),
        };
        let mut from_environment = Vec::new();
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix("ALGA_RUNNER_")
                && let Some((section, key)) = rest.split_once("__")
            {
                let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
                let v = env_value(&section, &key, value);
                set(&mut table, &section, &key, v);
                from_environment.push((name.clone(), format!("{section}.{key}")));
            }
        }
        for (name, section, key) in DIRECT {
            if let Some((_, value)) = env.iter().find(|(n, _)| n == name) {
                set(&mut table, section, key, env_value(section, key, value));
                from_environment.push((name.to_string(), format!("{section}.{key}")));
            }
        }
        if let Some((_, port)) = env.iter().find(|(n, _)| n == "PORT") {
            let listen = table
                .get("server")
                .and_then(|s| s.get("listen"))
                .and_then(Value::as_str)
                .unwrap_or("127.0.0.1:8080")
                .to_string();
            let host = listen.rsplit_once(':').map_or(listen.as_str(), |(h, _)| h).to_string();
            set(&mut table, "server", "listen", Value::String(format!("{host}:{port}")));
            from_environment.push(("PORT".into(), "server.listen".into()));
        }
        // Alga's runner names its object store by one URL, path-style: the bucket is the first
        // segment of the path, what follows prefixes the host's keys.
        let mut errors = Vec::new();
        if let Some((_, base)) = env.iter().find(|(n, _)| n == "BUNDLE_STORE_BASE") {
            match bundle_store_base(base) {
                Some((endpoint, bucket, prefix)) => {
                    set(&mut table, "blobs", "backend", Value::String("s3".into()));
                    set(&mut table, "blobs", "allow_http", Value::Boolean(endpoint.starts_with("http:")));
                    set(&mut table, "blobs", "endpoint", Value::String(endpoint));
                    set(&mut table, "blobs", "bucket", Value::String(bucket));
                    set(&mut table, "registry", "bundle_prefix", Value::String(prefix));
                    from_environment.push(("BUNDLE_STORE_BASE".into(), "blobs.endpoint, blobs.bucket".into()));
                }
                None => errors.push(format!(
                    "BUNDLE_STORE_BASE: `{base}` is not an http(s) URL with the bucket as its path \
                     (e.g. http://minio:9000/extensions)"
                )),
            }
        }
        // Mistyped fields are reported and left out, so the values of every other field are
        // still checked: one run names every problem.
        let (mut config, mistyped) = Self::from_table(table)?;
        // Each mistyped key is named with where its value came from, in words.
        for (section, key, message) in mistyped {
            let name = if key.is_empty() { section.clone() } else { format!("{section}.{key}") };
            let source = match from_environment.iter().find(|(_, k)| *k == name) {
                Some((variable, _)) => format!(" (from the environment variable {variable})"),
                None => match (file, line_of(&file_text, &section, &key)) {
                    (Some(path), Some(line)) => format!(" ({} line {line})", path.display()),
                    (Some(path), None) => format!(" ({})", path.display()),
                    (None, _) => String::new(),
                },
            };
            errors.push(format!("{name}{source}: {}", in_words(&message)));
        }
        config.from_environment = from_environment;
        if let Err(ConfigErrors(more)) = config.validate() {
            errors.extend(more);
        }
        if errors.is_empty() { Ok(config) } else { Err(ConfigErrors(errors)) }
    }

    /// Deserialises what is well typed, and lists every unknown or mistyped field.
    #[allow(clippy::type_complexity)]
    fn from_table(mut table: Table) -> Result<(Config, Vec<(String, String, String)>), ConfigErrors> {
        let mut errors = Vec::new();
        let mut bad: Vec<(String, Option<String>)> = Vec::new();
        for (section, value) in &table {
            if !SECTIONS.contains(&section.as_str()) {
                errors.push((
                    format!("[{section}]"),
                    String::new(),
                    format!("unknown section (known: {})", SECTIONS.join(", ")),
                ));
                bad.push((section.clone(), None));
                continue;
            }
            let Value::Table(fields) = value else {
                errors.push((section.clone(), String::new(), format!("must be a table ([{section}])")));
                bad.push((section.clone(), None));
                continue;
            };
            for (key, v) in fields {
                let mut one = Table::new();
                let mut inner = Table::new();
                inner.insert(key.clone(), v.clone());
                one.insert(section.clone(), Value::Table(inner));
                if let Err(e) = Value::Table(one).try_into::<Config>() {
                    errors.push((section.clone(), key.clone(), e.message().to_string()));
                    bad.push((section.clone(), Some(key.clone())));
                }
            }
        }
        for (section, key) in bad {
            match key {
                None => {
                    table.remove(&section);
                }
                Some(key) => {
                    if let Some(Value::Table(fields)) = table.get_mut(&section) {
                        fields.remove(&key);
                    }
                }
            }
        }
        let config =
            Value::Table(table).try_into::<Config>().map_err(|e| ConfigErrors(vec![e.message().to_string()]))?;
        Ok((config, errors))
    }

    /// Checks values against each other and their ranges.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut e = Vec::new();
        if self.server.listen.parse::<SocketAddr>().is_err() {
            e.push(format!("server.listen: `{}` is not an address like 127.0.0.1:8080", self.server.listen));
        }
        if !matches!(self.sandbox.landlock.as_str(), "best_effort" | "required") {
            e.push(format!("sandbox.landlock: `{}` must be best_effort or required", self.sandbox.landlock));
        }
        if !matches!(self.sandbox.seccomp.as_str(), "enforce" | "log") {
            e.push(format!("sandbox.seccomp: `{}` must be enforce or log", self.sandbox.seccomp));
        }
        if self.server.body_timeout_ms == 0 {
            e.push("server.body_timeout_ms: must be above 0 (milliseconds a request body may take to arrive)".into());
        }
        if self.sandbox.max_frame_mb == 0 || self.sandbox.max_frame_mb > 64 {
            e.push("sandbox.max_frame_mb: must be 1 to 64".into());
        }
        let l = &self.limits;
        for (name, default, max) in [
            ("timeout_ms", l.default_timeout_ms, l.max_timeout_ms),
            ("memory_mb", l.default_memory_mb, l.max_memory_mb),
            ("fuel", l.default_fuel, l.max_fuel),
        ] {
            if default == 0 {
                e.push(format!("limits.default_{name}: must be above 0"));
            }
            if default > max {
                e.push(format!("limits.default_{name}: {default} is above limits.max_{name} ({max})"));
            }
        }
        for (i, layer) in self.sandbox.require.iter().enumerate() {
            if !HARDENING_LAYERS.contains(&layer.as_str()) {
                e.push(format!(
                    "sandbox.require[{i}]: `{layer}` is not a layer (one of {})",
                    HARDENING_LAYERS.join(", ")
                ));
            }
        }
        if self.bundles.max_compressed_mb == 0 || self.bundles.max_uncompressed_mb == 0 {
            e.push("bundles: the size limits must be above 0".into());
        }
        for (i, entry) in self.egress.allowlist.iter().enumerate() {
            if let Some(problem) = alga_shared::manifest::egress_problem(entry) {
                e.push(format!("egress.allowlist[{i}]: `{entry}` {problem}"));
            }
        }
        for (ext, list) in &self.egress.extensions {
            for (i, entry) in list.iter().enumerate() {
                if let Some(problem) = alga_shared::manifest::egress_problem(entry) {
                    e.push(format!("egress.extensions.\"{ext}\"[{i}]: `{entry}` {problem}"));
                }
            }
        }
        for (name, found) in [("service", self.service_tokens()), ("admin", self.admin_tokens())] {
            match found {
                Ok(t) if t.len() > 2 => e.push(format!(
                    "auth: {} {name} tokens are configured; at most two (the new and the old one during a rotation)",
                    t.len()
                )),
                Ok(_) => {}
                // A missing file is named below.
                Err(_) => {}
            }
        }
        for (i, source) in self.auth.trusted_sources.iter().enumerate() {
            if alga_shared::egress::Network::parse(source).is_none() {
                e.push(format!(
                    "auth.trusted_sources[{i}]: `{source}` is not an address or a CIDR (e.g. `10.0.0.0/8`, `::1`)"
                ));
            }
        }
        for (name, file) in
            [("service_token_file", &self.auth.service_token_file), ("admin_token_file", &self.auth.admin_token_file)]
        {
            if let Some(f) = file
                && !f.is_file()
            {
                e.push(format!("auth.{name}: {} does not exist", f.display()));
            }
        }
        for (name, value) in
            [("base_url", &self.host_api.base_url), ("ui_proxy_base_url", &self.host_api.ui_proxy_base_url)]
        {
            if let Some(v) = value
                && !url::Url::parse(v).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            {
                e.push(format!("host_api.{name}: `{v}` is not an http(s) URL"));
            }
        }
        if self.host_api.base_url.is_some() && self.host_api.token.is_none() && self.host_api.token_file.is_none() {
            e.push("host_api.token: required with host_api.base_url (or host_api.token_file)".into());
        }
        e.extend(self.registry_problems());
        if let Some(v) = &self.vault.address
            && !url::Url::parse(v).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        {
            e.push(format!("vault.address: `{v}` is not an http(s) URL"));
        }
        if self.vault.mount.trim().is_empty() || self.vault.timeout_ms == 0 {
            e.push("vault: mount must not be empty and timeout_ms must be above 0".into());
        }
        if self.executions.retention_days == 0 || self.executions.max_per_tenant == 0 {
            e.push("executions: retention_days and max_per_tenant must be above 0".into());
        }
        let q = &self.quotas;
        if q.tenant_rate_per_s < 0.0 || q.extension_rate_per_s < 0.0 || q.tenant_burst < 0.0 || q.extension_burst < 0.0
        {
            e.push("quotas: rates and bursts must not be negative".into());
        }
        if q.max_concurrent == 0 || q.usage_window_s == 0 {
            e.push("quotas: max_concurrent and usage_window_s must be above 0".into());
        }
        if self.ui.max_file_mb == 0 {
            e.push("ui.max_file_mb: must be above 0".into());
        }
        if self.ui.frame_ancestors.trim().is_empty() || self.ui.frame_ancestors.contains([';', ',', '\n']) {
            e.push(format!(
                "ui.frame_ancestors: `{}` must be CSP sources separated by spaces, e.g. `'self' https://psa.example.com`",
                self.ui.frame_ancestors
            ));
        }
        if self.gateway.timeout_ms == 0 {
            e.push("gateway.timeout_ms: must be above 0".into());
        }
        let st = &self.storage;
        match st.backend.as_str() {
            "sled" => {}
            "postgres" => match (&st.url, &st.url_file) {
                (None, None) => e.push(
                    "storage.url: required with storage.backend = \"postgres\" (or storage.url_file), e.g. \
                     postgres://runner:password@db.example.com:5432/alga_runner"
                        .into(),
                ),
                (Some(url), _) if url.parse::<tokio_postgres::Config>().is_err() => e.push(format!(
                    "storage.url: not a PostgreSQL URL (postgres://user:password@host:port/database): {}",
                    redacted_url(url)
                )),
                (_, Some(f)) if !f.is_file() => e.push(format!("storage.url_file: {} does not exist", f.display())),
                _ => {}
            },
            other => e.push(format!("storage.backend: `{other}` must be sled or postgres")),
        }
        if st.pool_size == 0 || st.pool_size > 1024 {
            e.push("storage.pool_size: must be 1 to 1024".into());
        }
        if st.statement_timeout_ms == 0 {
            e.push("storage.statement_timeout_ms: must be above 0".into());
        }
        if let Some(f) = &st.ca_file
            && !f.is_file()
        {
            e.push(format!("storage.ca_file: {} does not exist", f.display()));
        }
        e.extend(self.blobs.problems());
        if e.is_empty() { Ok(()) } else { Err(ConfigErrors(e)) }
    }

    /// The object store's credentials: inline or from files, else the environment's
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (`env` is the process environment).
    pub fn blobs_credentials(&self, env: &[(String, String)]) -> std::io::Result<(Option<String>, Option<String>)> {
        let from_env =
            |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
        let id =
            token(&self.blobs.access_key_id, &self.blobs.access_key_id_file)?.or_else(|| from_env("AWS_ACCESS_KEY_ID"));
        let secret = token(&None, &self.blobs.secret_access_key_file)?
            .or_else(|| from_env("AWS_SECRET_ACCESS_KEY"))
            .or_else(|| from_env("S3_SECRET_KEY"))
            .or_else(|| from_env("MINIO_SECRET_KEY"));
        Ok((id, secret))
    }

    fn registry_problems(&self) -> Vec<String> {
        let r = &self.registry;
        let mut e = Vec::new();
        let is_url =
            |v: &str| url::Url::parse(v).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        for (name, value) in [("base_url", &r.base_url), ("storage_base_url", &r.storage_base_url)] {
            if let Some(v) = value
                && !is_url(v)
            {
                e.push(format!("registry.{name}: `{v}` is not an http(s) URL"));
            }
        }
        if r.bundle_keys.is_empty() {
            e.push("registry.bundle_keys: must name at least one key".into());
        }
        for (i, key) in r.bundle_keys.iter().enumerate() {
            let unknown = key
                .split('{')
                .skip(1)
                .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
                .find(|name| !["tenant", "extension", "hex"].contains(name));
            if let Some(name) = unknown {
                e.push(format!(
                    "registry.bundle_keys[{i}]: `{{{name}}}` is not one of {{tenant}}, {{extension}}, {{hex}}"
                ));
            } else if !key.contains("{hex}") || key.starts_with('/') {
                e.push(format!(
                    "registry.bundle_keys[{i}]: `{key}` must contain {{hex}} and be relative (no leading /)"
                ));
            }
        }
        if r.mode == RegistryMode::Host {
            if self.blobs.backend != "s3" {
                e.push(
                    "registry.mode = \"host\" fetches bundles from the host's object store: set [blobs] backend = \
                     \"s3\" with its endpoint and bucket (or BUNDLE_STORE_BASE)"
                        .into(),
                );
            }
            if r.base_url.is_none() {
                e.push("registry.base_url: required in host mode (or REGISTRY_BASE_URL)".into());
            }
            if r.auth_key.is_none() && r.auth_key_file.is_none() {
                e.push("registry.auth_key: required in host mode (or auth_key_file, ALGA_AUTH_KEY)".into());
            }
        }
        if let Some(f) = &r.auth_key_file
            && !f.is_file()
        {
            e.push(format!("registry.auth_key_file: {} does not exist", f.display()));
        }
        if let Some(f) = &r.storage_token_file
            && !f.is_file()
        {
            e.push(format!("registry.storage_token_file: {} does not exist", f.display()));
        }
        e
    }

    /// The host registry's `x-api-key`: inline, or read from its file.
    pub fn registry_auth_key(&self) -> std::io::Result<Option<String>> {
        token(&self.registry.auth_key, &self.registry.auth_key_file)
    }

    /// The host storage API's `x-runner-auth`: inline, or read from its file.
    pub fn registry_storage_token(&self) -> std::io::Result<Option<String>> {
        token(&self.registry.storage_token, &self.registry.storage_token_file)
    }

    /// The PostgreSQL URL: inline, or read from its file (trailing whitespace trimmed).
    pub fn storage_url(&self) -> std::io::Result<Option<String>> {
        token(&self.storage.url, &self.storage.url_file)
    }

    /// The service token: inline, or read from its file (trailing whitespace trimmed).
    /// Every valid service token (none: the routes are open; two during a rotation).
    pub fn service_tokens(&self) -> std::io::Result<Vec<String>> {
        tokens(&self.auth.service_token, &self.auth.service_tokens, &self.auth.service_token_file)
    }

    /// Every valid admin token.
    pub fn admin_tokens(&self) -> std::io::Result<Vec<String>> {
        tokens(&self.auth.admin_token, &self.auth.admin_tokens, &self.auth.admin_token_file)
    }

    /// The host API token: inline, or read from its file.
    pub fn host_api_token(&self) -> std::io::Result<Option<String>> {
        token(&self.host_api.token, &self.host_api.token_file)
    }
}

impl BlobsConfig {
    fn problems(&self) -> Vec<String> {
        let mut e = Vec::new();
        match self.backend.as_str() {
            "fs" => {}
            "s3" => {
                if self.bucket.as_deref().is_none_or(|b| b.trim().is_empty()) {
                    e.push("blobs.bucket: required with blobs.backend = \"s3\"".into());
                }
                if let Some(endpoint) = &self.endpoint {
                    match url::Url::parse(endpoint) {
                        Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
                        Ok(u) if u.scheme() == "http" && u.host().is_some() => {
                            if !self.allow_http {
                                e.push(format!(
                                    "blobs.endpoint: `{endpoint}` is plain http; use https, or set blobs.allow_http = \
                                     true for a loopback test server"
                                ));
                            }
                        }
                        _ => e.push(format!("blobs.endpoint: `{endpoint}` is not an http(s) URL")),
                    }
                }
            }
            other => e.push(format!("blobs.backend: `{other}` must be fs or s3")),
        }
        if self.region.trim().is_empty() {
            e.push("blobs.region: must not be empty".into());
        }
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|p| p == "." || p == "..") {
            e.push(format!("blobs.prefix: `{}` must be a relative key prefix such as `alga-runner/`", self.prefix));
        }
        for (name, file) in [
            ("access_key_id_file", &self.access_key_id_file),
            ("secret_access_key_file", &self.secret_access_key_file),
            ("ca_file", &self.ca_file),
        ] {
            if let Some(f) = file
                && !f.is_file()
            {
                e.push(format!("blobs.{name}: {} does not exist", f.display()));
            }
        }
        if self.cache_max_mb == 0 {
            e.push("blobs.cache_max_mb: must be above 0".into());
        }
        if self.timeout_ms == 0 {
            e.push("blobs.timeout_ms: must be above 0".into());
        }
        e
    }
}

/// A database URL with its password replaced, for messages.
pub fn redacted_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else { return "(unparsable)".into() };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    // A password may also come as a query parameter.
    let query: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| (k.to_string(), if k.eq_ignore_ascii_case("password") { "***".into() } else { v.to_string() }))
        .collect();
    if !query.is_empty() {
        u.query_pairs_mut().clear().extend_pairs(query);
    }
    u.to_string()
}

fn token(inline: &Option<String>, file: &Option<PathBuf>) -> std::io::Result<Option<String>> {
    if let Some(t) = inline.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(t.clone()));
    }
    match file {
        Some(f) => Ok(Some(std::fs::read_to_string(f)?.trim_end().to_string()).filter(|t| !t.is_empty())),
        None => Ok(None),
    }
}

/// The tokens of one kind: inline, listed, and one per line of the file; duplicates once.
fn tokens(inline: &Option<String>, list: &[String], file: &Option<PathBuf>) -> std::io::Result<Vec<String>> {
    let mut all: Vec<String> = inline.iter().chain(list).map(|t| t.trim().to_string()).collect();
    if let Some(f) = file {
        all.extend(std::fs::read_to_string(f)?.lines().map(|l| l.trim().to_string()));
    }
    let mut seen = Vec::new();
    for t in all.into_iter().filter(|t| !t.is_empty()) {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_shown_without_their_password() {
        assert_eq!(redacted_url("postgres://u:pw@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(
            redacted_url("postgres://u@db/x?sslmode=require&password=pw"),
            "postgres://u@db/x?sslmode=require&password=***"
        );
        assert_eq!(redacted_url("not a url"), "(unparsable)");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "[server]\nlisten = \"0.0.0.0:9000\"\n[limits]\ndefault_timeout_ms = 1000\n").unwrap();
        let c = Config::load(
            Some(&file),
            &env(&[
                ("ALGA_RUNNER_LIMITS__DEFAULT_TIMEOUT_MS", "2000"),
                ("ALGA_RUNNER_STATE_DIR", "/srv/runner"),
                ("EXT_EGRESS_ALLOWLIST", "api.example.com, *.example.org"),
                ("SIGNING_TRUST_BUNDLE", "/etc/trust.pub"),
                ("PORT", "9100"),
                ("ALGA_RUNNER_SANDBOX__CGROUPS", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9100");
        assert_eq!(c.limits.default_timeout_ms, 2000);
        assert_eq!(c.state.dir, PathBuf::from("/srv/runner"));
        assert_eq!(c.egress.allowlist, vec!["api.example.com", "*.example.org"]);
        assert_eq!(c.trust.bundle, "/etc/trust.pub");
        assert!(!c.sandbox.cgroups);
        // What the start log says: which variable set which key.
        for (variable, key) in [
            ("ALGA_RUNNER_LIMITS__DEFAULT_TIMEOUT_MS", "limits.default_timeout_ms"),
            ("ALGA_RUNNER_STATE_DIR", "state.dir"),
            ("SIGNING_TRUST_BUNDLE", "trust.bundle"),
            ("PORT", "server.listen"),
        ] {
            assert!(c.from_environment.contains(&(variable.to_string(), key.to_string())), "{variable}");
        }
    }

    #[test]
    fn algas_runner_environment_configures_host_mode() {
        let env =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let c = Config::load(
            None,
            &env(&[
                ("ALGA_RUNNER_REGISTRY__MODE", "host"),
                ("BUNDLE_STORE_BASE", "http://minio:9000/extensions/alga/"),
                ("MINIO_ACCESS_KEY", "minio-id"),
                ("S3_REGION", "eu-1"),
                ("REGISTRY_BASE_URL", "https://psa.example.com"),
                ("ALGA_AUTH_KEY", "k"),
                ("RUNNER_STORAGE_API_TOKEN", "t"),
                ("VAULT_ADDR", "https://vault:8200"),
                ("ALGA_VAULT_ADDR", "https://ignored:8200"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.registry.mode, RegistryMode::Host);
        assert_eq!((c.blobs.backend.as_str(), c.blobs.endpoint.as_deref()), ("s3", Some("http://minio:9000")));
        assert_eq!((c.blobs.bucket.as_deref(), c.registry.bundle_prefix.as_str()), (Some("extensions"), "alga"));
        assert!(c.blobs.allow_http);
        assert_eq!((c.blobs.access_key_id.as_deref(), c.blobs.region.as_str()), (Some("minio-id"), "eu-1"));
        assert_eq!(c.vault.address.as_deref(), Some("https://vault:8200"), "VAULT_ADDR wins, as on Alga's runner");
        let secret = c.blobs_credentials(&env(&[("MINIO_SECRET_KEY", "m"), ("S3_SECRET_KEY", "s")])).unwrap().1;
        assert_eq!(secret.as_deref(), Some("s"));

        let errors = Config::load(
            None,
            &env(&[
                ("ALGA_RUNNER_REGISTRY__MODE", "host"),
                ("ALGA_RUNNER_REGISTRY__BUNDLE_KEYS", "sha256/{hash}/b.tar.zst,/abs/{hex}"),
            ]),
        )
        .unwrap_err()
        .to_string();
        for named in ["{hash}", "/abs/{hex}", "registry.base_url", "registry.auth_key", "[blobs] backend"] {
            assert!(errors.contains(named), "{named} not in {errors}");
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"nowhere\"\nport = 3\n[limits]\ndefault_timeout_ms = \"soon\"\n[nonsense]\nx = 1\n",
        )
        .unwrap();
        let errors = Config::load(Some(&file), &[]).unwrap_err().0;
        let text = errors.join("\n");
        assert!(text.contains("server.port"), "{text}");
        let mistyped = format!("limits.default_timeout_ms ({} line 5): is the text \"soon\"", file.display());
        assert!(text.contains(&mistyped) && text.contains("expected a whole number"), "{text}");
        assert!(!text.contains("u64"), "no Rust type names: {text}");
        assert!(text.contains("[nonsense] (") && text.contains("unknown section"), "{text}");
        let errors = Config::load(None, &env(&[("ALGA_RUNNER_LIMITS__MAX_FUEL", "lots")])).unwrap_err().0.join("\n");
        assert!(
            errors.contains("limits.max_fuel (from the environment variable ALGA_RUNNER_LIMITS__MAX_FUEL)"),
            "{errors}"
        );

        let errors =
            Config::load(None, &env(&[("ALGA_RUNNER_LISTEN", "nowhere"), ("ALGA_RUNNER_SANDBOX__LANDLOCK", "maybe")]))
                .unwrap_err()
                .0
                .join("\n");
        assert!(errors.contains("server.listen") && errors.contains("sandbox.landlock"), "{errors}");
    }

    /// The commented example shipped in the package (packaging/config.toml) parses, sets every
    /// key it sets to the default in code, and names every key there is.
    #[test]
    fn the_shipped_example_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let loaded = Config::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded, Config::default(), "a value in packaging/config.toml differs from the default in code");
        // Every key of every section, set or commented out, under its own section header.
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut section = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            let l = line.trim();
            if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                section = name.to_string();
            } else if let Some((key, _)) = l.trim_start_matches("# ").split_once(" = ") {
                seen.insert(format!("{section}.{}", key.trim()));
            }
        }
        for (name, fields) in defaults.as_object().unwrap() {
            for key in fields.as_object().unwrap().keys() {
                assert!(
                    seen.contains(&format!("{name}.{key}")),
                    "packaging/config.toml does not document {name}.{key}"
                );
            }
        }
    }
}

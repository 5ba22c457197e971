//! `POST /v1/execute` (envelope mode, wire-compatible with the Alga gateway): resolve the tenant's
//! install, check capabilities and limits, run in a sandbox, answer with the envelope, record the
//! execution.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alga_shared::bindings::{ContextData, ExecuteRequest, HttpHeader, HttpRequest};
use alga_shared::bundle::normalize_hash;
use alga_shared::capability::{Capability, CapabilitySet};
use alga_shared::limits::LimitRequest;
use alga_shared::outcome::Outcome;
use alga_shared::protocol::ExecuteJob;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::Service;
use super::host_registry::HostRefusal;
use super::idempotency::{Claim, Ticket};
use super::installs::valid_tenant;
use super::loader::LoadError;
use super::quotas::Refused;
use super::secret_envelope::{Opened, SecretEnvelope, decrypt_failed};
use super::usage;
use crate::exec::executor::{self, Report};
use crate::hostapi::{Egress, HostContext, UserInfo};
use crate::ops::metrics::Finished;
use crate::registry::{ExecutionRecord, ExtensionRecord, InstallRecord, VersionRecord, new_id, now_ms};
use crate::secrets::SecretMap;
use crate::service::problem::Problem;
use alga_shared::egress::Rule;

/// Request headers that reach the guest; `authorization` and `cookie` never do.
pub const INBOUND_HEADERS: &[&str] =
    &["accept", "accept-encoding", "content-type", "user-agent", "x-request-id", "x-idempotency-key"];

/// Hop-by-hop headers, never passed on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Log lines kept in an execution record.
const RECORD_LOG_LINES: usize = 100;

#[derive(Debug, Deserialize)]
pub struct Envelope {
    pub context: EnvelopeContext,
    pub http: EnvelopeHttp,
    #[serde(default)]
    pub limits: Option<LimitRequest>,
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    #[serde(default)]
    pub user: Option<EnvelopeUser>,
    #[serde(default)]
    pub secret_envelope: Option<SecretEnvelope>,
    /// An extension of Alga's wire format: the host's egress list for this execution (absent:
    /// no restriction of its own).
    #[serde(default)]
    pub egress_allowlist: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct EnvelopeContext {
    #[serde(default)]
    pub request_id: Option<String>,
    pub tenant_id: String,
    pub extension_id: String,
    #[serde(default)]
    pub install_id: Option<String>,
    #[serde(default)]
    pub version_id: Option<String>,
    pub content_hash: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct EnvelopeHttp {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body_b64: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct EnvelopeUser {
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub user_email: String,
    #[serde(default)]
    pub user_name: String,
    #[serde(default)]
    pub user_type: String,
    #[serde(default, alias = "company_name")]
    pub client_name: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub additional_fields: Option<BTreeMap<String, String>>,
}

/// A validated execution request.
#[derive(Debug)]
pub struct ExecuteCommand {
    pub request_id: String,
    pub tenant: String,
    pub extension: String,
    pub install_id: Option<String>,
    pub version_id: Option<String>,
    pub content_hash: String,
    pub method: String,
    /// `path` plus the query string.
    pub url: String,
    pub path: String,
    pub headers: Vec<HttpHeader>,
    pub body: Option<Vec<u8>>,
    pub config: BTreeMap<String, String>,
    pub limits: LimitRequest,
    pub providers: Option<Vec<String>>,
    pub user: Option<UserInfo>,
    /// The envelope's secrets, opened (values never print).
    pub secrets: SecretMap,
    /// A Vault Transit envelope, opened by [`execute`] before anything else.
    pub vault_envelope: Option<SecretEnvelope>,
    /// The envelope's `egress_allowlist` (validated), intersected with the other lists.
    pub egress_allowlist: Option<Vec<String>>,
    pub idempotency_key: Option<String>,
}

/// The answer of `/v1/execute` for every request that reached policy or execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body_b64: Option<String>,
    pub error: Option<String>,
    /// What a refusal looked for (e.g. the tenant, extension and hash of `not_installed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl EnvelopeResponse {
    fn error(status: u16, error: impl Into<String>) -> Self {
        Answer::error(status, error).into()
    }
}

/// What an execution answered, the body as bytes: the gateway sends it as it is, the envelope
/// mode encodes it once ([`EnvelopeResponse`]).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Option<Vec<u8>>,
    pub error: Option<String>,
}

impl Answer {
    fn error(status: u16, error: impl Into<String>) -> Self {
        Answer { status, headers: BTreeMap::new(), body: None, error: Some(error.into()) }
    }
}

impl From<Answer> for EnvelopeResponse {
    fn from(a: Answer) -> Self {
        EnvelopeResponse {
            status: a.status,
            headers: a.headers,
            body_b64: a.body.map(|b| STANDARD.encode(b)),
            error: a.error,
            detail: None,
        }
    }
}

impl TryFrom<EnvelopeResponse> for Answer {
    type Error = base64::DecodeError;

    fn try_from(e: EnvelopeResponse) -> Result<Self, Self::Error> {
        let body = e.body_b64.map(|b| STANDARD.decode(b)).transpose()?;
        Ok(Answer { status: e.status, headers: e.headers, body, error: e.error })
    }
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Envelope {
    /// Validates the envelope against the request's headers. `routing` are the `x-alga-tenant`
    /// and `x-alga-extension` headers, which must agree with the body when present.
    /// `request_id` is the caller's valid `x-request-id`, if any; without one, a valid
    /// `context.request_id` is used, else a new one.
    pub fn into_command(
        self,
        request_id: Option<String>,
        routing: (Option<String>, Option<String>),
        idempotency_key: Option<String>,
    ) -> Result<ExecuteCommand, Problem> {
        let c = self.context;
        if let Some(t) = routing.0.filter(|t| t != &c.tenant_id) {
            return Err(Problem::bad_request(
                "routing_mismatch",
                format!("x-alga-tenant `{t}` does not match context.tenant_id `{}`", c.tenant_id),
            ));
        }
        if let Some(e) = routing.1.filter(|e| e != &c.extension_id) {
            return Err(Problem::bad_request(
                "routing_mismatch",
                format!("x-alga-extension `{e}` does not match context.extension_id `{}`", c.extension_id),
            ));
        }
        let invalid = |m: String| Problem::new(422, "invalid_request", "the envelope is not valid").detail(m);
        if !valid_tenant(&c.tenant_id) {
            return Err(invalid("$.context.tenant_id: must be 1 to 128 of A-Z a-z 0-9 . _ : -".into()));
        }
        if c.extension_id.is_empty() || c.extension_id.len() > 256 {
            return Err(invalid("$.context.extension_id: must be 1 to 256 characters".into()));
        }
        let content_hash = normalize_hash(&c.content_hash).ok_or_else(|| {
            invalid("$.context.content_hash: must be 64 hex digits, with or without `sha256:`".into())
        })?;
        let method = self.http.method.trim().to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(format!("$.http.method: `{}` is not an HTTP method", self.http.method)));
        }
        if !self.http.path.starts_with('/') {
            return Err(invalid("$.http.path: must start with `/`".into()));
        }
        let body = match self.http.body_b64 {
            Some(b) => {
                Some(STANDARD.decode(b.as_bytes()).map_err(|e| invalid(format!("$.http.body_b64: not base64: {e}")))?)
            }
            None => None,
        };
        let mut url = self.http.path.clone();
        if !self.http.query.is_empty() {
            let q: Vec<String> = self
                .http
                .query
                .iter()
                .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
                .collect();
            url.push('?');
            url.push_str(&q.join("&"));
        }
        let mut headers: Vec<HttpHeader> = self
            .http
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .filter(|(k, _)| INBOUND_HEADERS.contains(&k.as_str()))
            .map(|(name, v)| HttpHeader { name, value: v.clone() })
            .collect();
        headers.push(HttpHeader { name: "x-alga-tenant".into(), value: c.tenant_id.clone() });
        headers.push(HttpHeader { name: "x-alga-extension".into(), value: c.extension_id.clone() });
        let user = self.user.map(|u| UserInfo {
            user_id: u.user_id,
            user_email: u.user_email,
            user_name: u.user_name,
            user_type: u.user_type,
            client_name: u.client_name,
            client_id: u.client_id,
            additional_fields: u.additional_fields.unwrap_or_default().into_iter().collect(),
        });
        for (i, entry) in self.egress_allowlist.iter().flatten().enumerate() {
            if let Some(problem) = alga_shared::manifest::egress_problem(entry) {
                return Err(invalid(format!("$.egress_allowlist[{i}]: `{entry}` {problem}")));
            }
        }
        let (secrets, vault_envelope) = match self.secret_envelope {
            Some(e) => match e.open(now_ms())? {
                Opened::Secrets(s) => (s, None),
                Opened::Vault => (SecretMap::default(), Some(e)),
            },
            None => (SecretMap::default(), None),
        };
        Ok(ExecuteCommand {
            secrets,
            vault_envelope,
            egress_allowlist: self.egress_allowlist,
            request_id: request_id
                .or(c.request_id.filter(|r| super::valid_request_id(r)))
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            tenant: c.tenant_id,
            extension: c.extension_id,
            install_id: c.install_id,
            version_id: c.version_id,
            content_hash,
            method,
            url,
            path: self.http.path,
            headers,
            body,
            config: c.config,
            limits: self.limits.unwrap_or_default(),
            providers: self.providers,
            user,
            idempotency_key,
        })
    }
}

/// What an execution runs for: the tenant's install, its version and its extension.
#[derive(Debug, Clone)]
pub struct Target {
    pub ext: ExtensionRecord,
    pub install: InstallRecord,
    pub version: VersionRecord,
    /// Already loaded (host-registry mode loads while it resolves); `None`: load from the
    /// local registry.
    pub loaded: Option<Arc<super::loader::Loaded>>,
}

/// How an execution started (kept in its record).
#[derive(Debug, Clone)]
pub enum Trigger {
    Envelope,
    Gateway { endpoint: String },
    Event { topic: String, handler: String },
}

impl Trigger {
    fn label(&self) -> String {
        match self {
            Trigger::Envelope => "envelope".into(),
            Trigger::Gateway { .. } => "gateway".into(),
            Trigger::Event { topic, .. } => format!("event:{topic}"),
        }
    }

    fn endpoint(&self) -> Option<String> {
        match self {
            Trigger::Envelope => None,
            Trigger::Gateway { endpoint } => Some(endpoint.clone()),
            Trigger::Event { handler, .. } => Some(handler.clone()),
        }
    }
}

/// Runs the command. `Err` only for failures of the runner itself; everything else (not
/// installed, denied, guest errors) is an envelope.
pub async fn execute(svc: &Arc<Service>, mut cmd: ExecuteCommand) -> Result<EnvelopeResponse, Problem> {
    if let Some(envelope) = cmd.vault_envelope.take() {
        let Some(vault) = &svc.vault else {
            return Err(decrypt_failed(
                "$.secret_envelope.algorithm: a Vault Transit envelope, and this runner has no Vault: set \
                 [vault] address (or VAULT_ADDR) and its token file",
            ));
        };
        cmd.secrets = vault.open(&envelope).await?;
    }
    let resolved = match &svc.host_registry {
        Some(host) => match host.target(svc, &cmd).await {
            Ok(target) => {
                // The grants came from `providers` (bounded by the manifest): nothing more to check.
                cmd.providers = None;
                Ok(target)
            }
            Err(HostRefusal::NotFound(detail)) => Err(detail),
            Err(refused) => return Ok(host_refusal(&cmd, refused)),
        },
        None => resolve_envelope(svc, &cmd).await?,
    };
    match resolved {
        Ok(target) => Ok(run(svc, &target, cmd, Trigger::Envelope, None).await?.into()),
        Err(detail) => {
            tracing::warn!(
                tenant = %cmd.tenant,
                extension = %cmd.extension,
                content_hash = %cmd.content_hash,
                install_id = cmd.install_id.as_deref().unwrap_or("-"),
                version_id = cmd.version_id.as_deref().unwrap_or("-"),
                %detail,
                "execution refused: not_installed"
            );
            Ok(EnvelopeResponse { detail: Some(detail), ..EnvelopeResponse::error(404, "not_installed") })
        }
    }
}

/// The envelope of a host-mode bundle that could not be used, with what was wrong (the host's
/// operators read it; Alga's gateway never shows runner errors to its clients).
fn host_refusal(cmd: &ExecuteCommand, refused: HostRefusal) -> EnvelopeResponse {
    let (status, error) = match &refused {
        HostRefusal::NotFound(_) => (404, "not_installed"),
        HostRefusal::Verification(_) => (502, "bundle_verification_failed"),
        HostRefusal::Unavailable(_) => (503, "storage_unavailable"),
        HostRefusal::Internal(_) => (500, "internal"),
    };
    tracing::warn!(
        tenant = %cmd.tenant,
        extension = %cmd.extension,
        content_hash = %cmd.content_hash,
        detail = %refused,
        "execution refused: {error}"
    );
    EnvelopeResponse { detail: Some(refused.to_string()), ..EnvelopeResponse::error(status, error) }
}

/// Envelope mode: the install must be enabled, on this content hash, and match the ids given;
/// `Err` says which of these did not hold, naming what was looked for.
async fn resolve_envelope(svc: &Service, cmd: &ExecuteCommand) -> Result<Result<Target, String>, Problem> {
    let (tenant, extension) = (&cmd.tenant, &cmd.extension);
    let Some((ext, install, version)) = svc.registry.resolve(tenant, extension).await? else {
        return Ok(Err(format!(
            "no install of extension `{extension}` (looked up by registry id and by name) for tenant `{tenant}`"
        )));
    };
    let name = &ext.name;
    if !install.enabled {
        return Ok(Err(format!("the install of {name} for tenant `{tenant}` is disabled")));
    }
    if install.content_hash != cmd.content_hash {
        return Ok(Err(format!(
            "tenant `{tenant}`'s install of {name} runs {}, not the content hash asked for, {}",
            install.content_hash, cmd.content_hash
        )));
    }
    if let Some(i) = cmd.install_id.as_ref().filter(|i| **i != install.install_id) {
        return Ok(Err(format!(
            "tenant `{tenant}`'s install of {name} is {}, not the install id asked for, {i}",
            install.install_id
        )));
    }
    if let Some(v) = cmd.version_id.as_ref().filter(|v| **v != install.version_id) {
        return Ok(Err(format!(
            "tenant `{tenant}`'s install of {name} is on version id {}, not the one asked for, {v}",
            install.version_id
        )));
    }
    Ok(Ok(Target { ext, install, version, loaded: None }))
}

/// The tenant's enabled install of `extension` (registry id or manifest name) and its version.
pub async fn resolve_enabled(svc: &Service, tenant: &str, extension: &str) -> Result<Option<Target>, Problem> {
    let Some((ext, install, version)) = svc.registry.resolve(tenant, extension).await? else { return Ok(None) };
    if !install.enabled {
        return Ok(None);
    }
    Ok(Some(Target { ext, install, version, loaded: None }))
}

/// What an attempt may take beyond its queue wait and its execution: loading and compiling its
/// bundle (a large JS component compiles in about 17 s on a small host), and its record.
const CLAIM_MARGIN: Duration = Duration::from_secs(60);

/// What an idempotency key gave this attempt.
enum Claimed {
    Ticket(Ticket),
    /// A completed execution's answer.
    Replay(Answer),
    /// Another attempt still runs past the time it may take.
    Busy,
}

/// Claims the idempotency key, or waits while another attempt (on any host) holds it, up to the
/// longest an attempt may take: its wait in the queue, loading (compiling) its bundle, the
/// longest execution, and its record.
async fn claim(svc: &Arc<Service>, tenant: &str, extension: &str, key: &str) -> Result<Claimed, Problem> {
    let longest =
        Duration::from_millis(svc.config.quotas.queue_timeout_ms + svc.config.limits.max_timeout_ms) + CLAIM_MARGIN;
    let until = tokio::time::Instant::now() + longest;
    loop {
        match svc.idempotency.clone().claim(tenant, extension, key, longest).await? {
            Claim::Mine(t) => return Ok(Claimed::Ticket(t)),
            Claim::Done(cached) => {
                if let Ok(envelope) = serde_json::from_value::<EnvelopeResponse>(cached)
                    && let Ok(answer) = Answer::try_from(envelope)
                {
                    return Ok(Claimed::Replay(answer));
                }
                return Err(Problem::internal("a stored idempotent answer does not read back"));
            }
            Claim::Running if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Claim::Running => return Ok(Claimed::Busy),
        }
    }
}

/// The envelope of a refused admission, with its `retry-after`.
fn refused(r: Refused) -> Answer {
    let (status, error) = r.status_and_error();
    let mut e = Answer::error(status, error);
    if let Some(s) = r.retry_after_s() {
        e.headers.insert("retry-after".into(), s.to_string());
    }
    e
}

/// Runs `cmd` on `target`: capabilities, idempotency, quotas, the sandbox, the record — in one
/// span carrying the execution's identity (every log line of it says whose it is).
pub async fn run(
    svc: &Arc<Service>,
    target: &Target,
    cmd: ExecuteCommand,
    trigger: Trigger,
    execution_id: Option<String>,
) -> Result<Answer, Problem> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "execution",
        request_id = %cmd.request_id,
        tenant = %cmd.tenant,
        extension = %target.ext.id,
        install = %target.install.install_id,
        version = %target.install.version_id,
        content_hash = %target.install.content_hash,
        trigger = %trigger.label(),
    );
    run_in_span(svc, target, cmd, trigger, execution_id).instrument(span).await
}

async fn run_in_span(
    svc: &Arc<Service>,
    target: &Target,
    cmd: ExecuteCommand,
    trigger: Trigger,
    execution_id: Option<String>,
) -> Result<Answer, Problem> {
    use tracing::Instrument;
    let Target { ext, install, version, loaded } = target;
    // Effective capabilities: manifest ∩ grants (∩ providers) ∪ defaults. Asking for a capability
    // that is unknown or not granted is refused.
    let manifest_caps = CapabilitySet::parse(version.capabilities.iter().map(String::as_str)).unwrap_or_default();
    let grants = CapabilitySet::parse(install.granted_capabilities.iter().map(String::as_str)).unwrap_or_default();
    let providers = match &cmd.providers {
        Some(list) => {
            let mut set = CapabilitySet::new();
            for name in list {
                match name.parse::<Capability>() {
                    Ok(cap)
                        if (manifest_caps.contains(cap) && grants.contains(cap))
                            || Capability::DEFAULTS.contains(&cap) =>
                    {
                        set.insert(cap)
                    }
                    _ => return Ok(Answer::error(403, "capability_denied")),
                }
            }
            Some(set)
        }
        None => None,
    };
    let capabilities = CapabilitySet::effective(&manifest_caps, &grants, providers.as_ref());

    let ticket = match &cmd.idempotency_key {
        Some(key) => match claim(svc, &cmd.tenant, &ext.id, key).await? {
            Claimed::Replay(answer) => return Ok(answer),
            Claimed::Busy => return Ok(Answer::error(409, "in_progress")),
            Claimed::Ticket(t) => Some(t),
        },
        None => None,
    };

    let admitted = match usage::over_window_cap(svc, &cmd.tenant).await? {
        Some(r) => Err(r),
        None => svc.quotas.admit(&cmd.tenant, &ext.id).await,
    };
    let permit = match admitted {
        Ok(p) => p,
        Err(r) => {
            tracing::info!(tenant = %cmd.tenant, extension = %ext.name, refused = ?r, "execution not admitted");
            svc.core.spawner.metrics.quota_rejection(r.status_and_error().1);
            return Ok(refused(r));
        }
    };

    let loaded = match loaded.clone() {
        Some(l) => Ok(l),
        None => svc.loader.load(svc, ext, version).await,
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(LoadError::Verification(detail)) => {
            tracing::warn!(extension = %ext.name, version = %version.version, %detail, "bundle failed verification at load");
            return Ok(Answer::error(502, "bundle_verification_failed"));
        }
        Err(LoadError::Unavailable(detail)) => {
            tracing::warn!(extension = %ext.name, version = %version.version, %detail, "the bundle cannot be fetched");
            return Ok(Answer::error(503, "storage_unavailable"));
        }
        Err(LoadError::Internal(detail)) => return Err(Problem::internal(detail)),
    };

    let limits = svc.default_limits().resolve(&install.limits, &cmd.limits, &svc.core.spawner.settings.ceilings);
    let mut config = cmd.config.clone();
    config.extend(install.config.clone());
    // Both lists were validated when stored; an entry that no longer parses allows nothing.
    let lists = [
        ("manifest", version.egress.as_ref()),
        ("install", install.egress_allowlist.as_ref()),
        (
            "extension",
            svc.config.egress.extensions.get(&ext.id).or_else(|| svc.config.egress.extensions.get(&ext.name)),
        ),
        ("envelope", cmd.egress_allowlist.as_ref()),
    ];
    let egress = Egress {
        lists: lists.into_iter().filter_map(|(n, l)| Some((n, Rule::parse_list(l?).unwrap_or_default()))).collect(),
    };
    let egress_bytes = Arc::new(AtomicU64::new(0));
    let mut secrets = SecretMap::default();
    if capabilities.contains(Capability::SecretsGet) {
        secrets = svc.secrets.get(&cmd.tenant, &install.install_id).await.map_err(|e| {
            Problem::internal(format!("reading the install's secrets failed: {}", crate::error_chain(&e)))
        })?;
        secrets.0.extend(cmd.secrets.0.clone());
    }
    let host = HostContext {
        request_id: Some(cmd.request_id.clone()),
        tenant_id: cmd.tenant.clone(),
        extension_id: ext.id.clone(),
        install_id: Some(install.install_id.clone()),
        version_id: Some(install.version_id.clone()),
        user: cmd.user.clone(),
        secrets,
        config,
        capabilities: capabilities.clone(),
        egress,
        egress_bytes: egress_bytes.clone(),
        env: svc.host_env.clone(),
    };
    let request = ExecuteRequest {
        context: ContextData {
            request_id: Some(cmd.request_id.clone()),
            tenant_id: cmd.tenant.clone(),
            extension_id: ext.id.clone(),
            install_id: Some(install.install_id.clone()),
            version_id: Some(install.version_id.clone()),
        },
        http: HttpRequest {
            method: cmd.method.clone(),
            url: cmd.url.clone(),
            headers: cmd.headers.clone(),
            body: cmd.body.clone(),
        },
    };
    let job = ExecuteJob { request, limits, capabilities, artifact_len: loaded.artifact.len };
    let artifact = loaded.artifact.clone();
    // From here on the execution and its record are one task on the core's runtime: it runs to
    // its end (and is recorded) even when the HTTP side stops waiting, e.g. at shutdown.
    let task = svc.clone();
    let install = install.clone();
    let extension_id = ext.id.clone();
    if svc.shutting_down.load(Ordering::Relaxed) {
        return Ok(Answer::error(503, "shutting_down"));
    }
    let running = svc.in_flight.clone().read_owned().await;
    svc.on_core(
        async move {
            let _running = running;
            let svc = &task;
            let mut report = executor::execute(&svc.core, &artifact, job, &host).await;
            drop(permit);
            let response = answer_of(&mut report);
            let egress_bytes = egress_bytes.load(Ordering::Relaxed);
            svc.core.spawner.metrics.finished(Finished {
                outcome: report.outcome.label(),
                extension_id: &extension_id,
                duration: report.duration,
                memory_peak_bytes: report.memory_peak_bytes,
                fuel: report.fuel_consumed,
                egress_bytes,
                violation: report.outcome.is_violation().then(|| report.outcome.label()),
            });
            let record = Recorded { install: &install, trigger: &trigger, execution_id, egress_bytes };
            // An execution is answered only once its record is durable: one that could not be
            // recorded (a full disk, a failed flush) is not reported as a success.
            let generation = svc.commit.generation();
            // The usage counters do not wait for the record, nor it for them.
            let (_, recorded) = tokio::join!(
                usage::add(svc, &cmd.tenant, &extension_id, &report, egress_bytes),
                self::record(svc, &cmd, &record, &report, &response)
            );
            let durable = recorded && svc.commit.durable(generation).await.is_ok();
            if !durable {
                return Answer::error(503, "storage_unavailable");
            }
            if let Some(ticket) = ticket {
                let keep = (report.outcome == Outcome::Completed)
                    .then(|| serde_json::to_value(EnvelopeResponse::from(response.clone())).ok())
                    .flatten();
                ticket.finish(keep).await;
            }
            response
        }
        .in_current_span(),
    )
    .await
}

/// The answer of a finished execution (02-http-api.md, outcome table); the guest's body is
/// moved out of the report, not copied.
pub fn answer_of(report: &mut Report) -> Answer {
    match (report.response.take(), report.outcome.envelope_error()) {
        (Some(r), None) if (100..=599).contains(&r.status) => {
            let mut headers = BTreeMap::new();
            for h in &r.headers {
                let name = h.name.to_ascii_lowercase();
                if HOP_BY_HOP.contains(&name.as_str()) {
                    continue;
                }
                headers
                    .entry(name)
                    .and_modify(|v: &mut String| {
                        v.push_str(", ");
                        v.push_str(&h.value);
                    })
                    .or_insert_with(|| h.value.clone());
            }
            Answer { status: r.status, headers, body: r.body, error: None }
        }
        (Some(_), None) => Answer::error(502, "invalid_guest_response"),
        (_, Some((status, error))) => Answer::error(status, error),
        (None, None) => Answer::error(500, "execute_failed: no response"),
    }
}

/// Writes the execution record (and logs it); true when it is in the database.
/// What the record says beyond the command and the report.
struct Recorded<'a> {
    install: &'a InstallRecord,
    trigger: &'a Trigger,
    execution_id: Option<String>,
    egress_bytes: u64,
}

async fn record(
    svc: &Arc<Service>,
    cmd: &ExecuteCommand,
    recorded: &Recorded<'_>,
    report: &Report,
    response: &Answer,
) -> bool {
    let Recorded { install, trigger, egress_bytes, .. } = *recorded;
    let mut logs: Vec<String> = report.logs.iter().map(|l| format!("[{}] {}", l.level.as_str(), l.message)).collect();
    if report.logs_dropped > 0 {
        logs.push(format!("[alga-runner] {} more log lines dropped (limit reached)", report.logs_dropped));
    }
    // What the guest wrote to stdout and stderr (an uncaught JS exception prints its message and
    // stack there), after its log lines: the end is what is kept.
    for (stream, bytes) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
        for line in String::from_utf8_lossy(bytes).lines().filter(|l| !l.trim().is_empty()) {
            logs.push(format!("[{stream}] {line}"));
        }
    }
    if report.output_truncated {
        logs.push("[alga-runner] guest output truncated (limit reached)".into());
    }
    if logs.len() > RECORD_LOG_LINES {
        logs.drain(..logs.len() - RECORD_LOG_LINES);
    }
    let r = ExecutionRecord {
        execution_id: recorded.execution_id.clone().unwrap_or_else(new_id),
        request_id: cmd.request_id.clone(),
        tenant: cmd.tenant.clone(),
        extension_id: install.extension_id.clone(),
        install_id: install.install_id.clone(),
        version_id: install.version_id.clone(),
        content_hash: cmd.content_hash.clone(),
        method: cmd.method.clone(),
        path: cmd.path.clone(),
        endpoint: trigger.endpoint(),
        trigger: trigger.label(),
        status: response.status,
        outcome: report.outcome.label().to_string(),
        error: response.error.clone(),
        detail: report.detail.clone(),
        duration_ms: report.duration.as_secs_f64() * 1e3,
        memory_peak_bytes: report.memory_peak_bytes,
        fuel: report.fuel_consumed,
        egress_bytes,
        host_calls: report.host_calls,
        logs,
        created_at: now_ms(),
        seq: 0,
        prev_hash: String::new(),
    };
    tracing::info!(
        request_id = %r.request_id,
        tenant = %r.tenant,
        extension = %r.extension_id,
        install = %r.install_id,
        version = %r.version_id,
        content_hash = %r.content_hash,
        status = r.status,
        outcome = %r.outcome,
        duration_ms = r.duration_ms,
        fuel = r.fuel,
        memory_peak_bytes = r.memory_peak_bytes,
        host_calls = r.host_calls,
        "execution finished"
    );
    // Each guest line at the level the guest gave it (`log-error` is an ERROR line).
    for line in &report.logs {
        macro_rules! guest_line {
            ($level:ident) => {
                tracing::$level!(
                    target: "alga_runner::guest",
                    request_id = %r.request_id,
                    tenant = %r.tenant,
                    extension = %r.extension_id,
                    install = %r.install_id,
                    version = %r.version_id,
                    content_hash = %r.content_hash,
                    "{}",
                    line.message
                )
            };
        }
        match line.level {
            alga_shared::protocol::LogLevel::Info => guest_line!(info),
            alga_shared::protocol::LogLevel::Warn => guest_line!(warn),
            alga_shared::protocol::LogLevel::Error => guest_line!(error),
        }
    }
    match svc.registry.record_execution(r, &svc.retention()).await {
        Ok(_) => true,
        Err(e) => {
            let e = crate::error_chain(&e);
            tracing::error!(error = %e, "recording an execution failed");
            svc.commit.write_failed(&e);
            false
        }
    }
}

/// Parses the request body of `/v1/execute`.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, Problem> {
    crate::service::json::json_body(body, "invalid_request", "the envelope is not valid")
}

//! The host-API broker: every host call a sandbox makes is checked here — capability first, in
//! this one place — and then performed by the module of its interface. The sandbox is trusted
//! with nothing: a call without its capability gets the interface's deny value, never a trap.

pub mod config;
pub mod context;
pub mod fetch;
pub mod forwarded;
pub mod secrets;
pub mod storage;
pub mod user;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use alga_shared::capability::CapabilitySet;
use alga_shared::protocol::{CallKind, HostCall, HostReply};

pub use storage::KvStore;
pub use storage::sled::SledKv;
pub use user::UserInfo;

use crate::registry::commit::GroupCommit;

/// What the broker needs beyond one execution: the backends, shared by every execution.
#[derive(Clone)]
pub struct HostEnv {
    pub storage: Arc<dyn KvStore>,
    /// Makes storage writes durable before the guest hears of them, one flush for many
    /// concurrent writers; `None` flushes the store directly.
    pub commit: Option<Arc<GroupCommit>>,
    /// The operator's side of `http.fetch`.
    pub fetch: fetch::FetchSettings,
    /// The host application's internal API (`None`: the host-forwarded interfaces deny).
    pub host_api: Option<forwarded::transport::HostApi>,
    /// Where the `metrics` host API's series go.
    pub metrics: Arc<crate::ops::metrics::Metrics>,
    /// Host-registry mode: storage is the host's (`storage` is not used).
    pub host_storage: Option<storage::host::HostStorage>,
}

impl std::fmt::Debug for HostEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostEnv").field("storage", &self.storage).finish_non_exhaustive()
    }
}

impl HostEnv {
    /// An environment for one-off local runs (`exec`, tests of the core): storage on a private
    /// temporary database.
    pub fn local() -> Result<Self, storage::KvError> {
        Ok(HostEnv {
            storage: Arc::new(SledKv::temporary()?),
            commit: None,
            fetch: fetch::FetchSettings::deny_all(),
            host_api: None,
            metrics: Arc::default(),
            host_storage: None,
        })
    }

    /// Take it before a write, then wait with [`HostEnv::durable`].
    pub fn generation(&self) -> u64 {
        self.commit.as_ref().map_or(0, |c| c.generation())
    }

    /// Waits until every write made so far (since `generation`) is on disk.
    pub async fn durable(&self, generation: u64) -> Result<(), String> {
        match &self.commit {
            Some(c) => c.durable(generation).await.map_err(|e| e.to_string()),
            None => self.storage.flush().await.map_err(|e| e.to_string()),
        }
    }
}

/// Everything the broker knows about one execution.
#[derive(Debug, Clone)]
pub struct HostContext {
    pub request_id: Option<String>,
    pub tenant_id: String,
    pub extension_id: String,
    pub install_id: Option<String>,
    pub version_id: Option<String>,
    pub user: Option<UserInfo>,
    /// The install's secrets overlaid by the envelope's (values never print).
    pub secrets: crate::secrets::SecretMap,
    /// The install's configuration (what `config` and nothing else may read).
    pub config: BTreeMap<String, String>,
    /// The effective capabilities of this execution.
    pub capabilities: CapabilitySet,
    /// The manifest's and the install's egress lists (the operator's is in `env`).
    pub egress: Egress,
    /// Bytes sent and received by `http.fetch` in this execution.
    pub egress_bytes: Arc<AtomicU64>,
    pub env: Arc<HostEnv>,
}

/// The egress lists an execution brings beyond the operator's, each named for the refusal that
/// cites it: the manifest's `egress` and the install's `egress_allowlist` when present (in
/// host-registry mode also the operator's per-extension list and the envelope's). A list that is
/// absent restricts nothing; an empty one allows nothing.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    pub lists: Vec<(&'static str, Vec<alga_shared::egress::Rule>)>,
}

impl HostContext {
    /// The storage scope: tenant and install (or the extension when there is no install id).
    pub fn storage_scope(&self) -> storage::Scope {
        storage::Scope {
            tenant: self.tenant_id.clone(),
            install: self.install_id.clone().unwrap_or_else(|| self.extension_id.clone()),
        }
    }
}

/// The capability check, in this one place: `Some(deny value)` when the execution lacks the
/// capability of calls of `kind`.
fn refused(ctx: &HostContext, kind: CallKind) -> Option<HostReply> {
    if ctx.capabilities.contains(kind.capability()) {
        return None;
    }
    ctx.env.metrics.host_call(kind.api(), "denied");
    Some(kind.deny_reply())
}

/// Performs one host call as it arrived from the sandbox: the capability of its kind first, and
/// only then are its arguments decoded (within a memory budget), so a call the execution may not
/// make costs no decoding. `Err`: the arguments are not a call of that kind.
pub async fn handle_encoded(
    ctx: &HostContext,
    kind: CallKind,
    args: &[u8],
    deadline: tokio::time::Instant,
) -> Result<HostReply, String> {
    if let Some(deny) = refused(ctx, kind) {
        return Ok(deny);
    }
    let call: HostCall = alga_shared::frame::decode_value(args).map_err(|e| format!("{kind:?} arguments: {e}"))?;
    if call.kind() != kind {
        return Err(format!("a {kind:?} call carried the arguments of {:?}", call.kind()));
    }
    Ok(perform(ctx, call, deadline).await)
}

/// Performs one host call. `deadline` is when the execution's time is up: calls that wait on
/// the network end by then.
pub async fn handle(ctx: &HostContext, call: HostCall, deadline: tokio::time::Instant) -> HostReply {
    match refused(ctx, call.kind()) {
        Some(deny) => deny,
        None => perform(ctx, call, deadline).await,
    }
}

/// Performs a call whose capability was checked.
async fn perform(ctx: &HostContext, call: HostCall, deadline: tokio::time::Instant) -> HostReply {
    ctx.env.metrics.host_call(call.api(), "ok");
    match call {
        HostCall::ContextGet => context::get(ctx),
        HostCall::UserGet => user::get(ctx),
        HostCall::UserV2Get => user::get_v2(ctx),
        HostCall::ConfigGet { key } => config::get(ctx, &key),
        HostCall::ConfigList => config::list(ctx),
        HostCall::StorageGet { namespace, key } => match &ctx.env.host_storage {
            Some(h) => storage::host::get(h, ctx, &namespace, &key, deadline).await,
            None => storage::get(ctx, &namespace, &key).await,
        },
        HostCall::StoragePut { entry } => match &ctx.env.host_storage {
            Some(h) => storage::host::put(h, ctx, entry, deadline).await,
            None => storage::put(ctx, entry).await,
        },
        HostCall::StorageDelete { namespace, key } => match &ctx.env.host_storage {
            Some(h) => storage::host::delete(h, ctx, &namespace, &key, deadline).await,
            None => storage::delete(ctx, &namespace, &key).await,
        },
        HostCall::StorageListEntries { namespace, cursor } => match &ctx.env.host_storage {
            Some(h) => storage::host::list(h, ctx, &namespace, cursor.as_deref(), deadline).await,
            None => storage::list(ctx, &namespace, cursor.as_deref()).await,
        },
        HostCall::HttpFetch { request } => fetch::fetch(ctx, request, deadline).await,
        HostCall::SecretsGet { key } => secrets::get(ctx, &key),
        HostCall::SecretsListKeys => secrets::list_keys(ctx),
        // Refused updates (bad names, over the limits) are counted, never a trap.
        HostCall::MetricsCounterAdd { name, value } => {
            ctx.env.metrics.guest_counter(&ctx.extension_id, &name, value);
            HostReply::Unit
        }
        HostCall::MetricsHistogramObserve { name, value } => {
            ctx.env.metrics.guest_histogram(&ctx.extension_id, &name, value);
            HostReply::Unit
        }
        forwarded @ (HostCall::UiProxyCallRoute { .. }
        | HostCall::SchedulerList
        | HostCall::SchedulerGet { .. }
        | HostCall::SchedulerCreate { .. }
        | HostCall::SchedulerUpdate { .. }
        | HostCall::SchedulerDelete { .. }
        | HostCall::SchedulerGetEndpoints
        | HostCall::InvoicingCreateManualInvoice { .. }
        | HostCall::ClientsList { .. }
        | HostCall::ClientsGet { .. }
        | HostCall::ServicesList { .. }
        | HostCall::ServicesGet { .. }) => forwarded::transport::call(ctx, forwarded, deadline).await,
    }
}

impl crate::exec::HostCalls for HostContext {
    fn call(
        &self,
        kind: CallKind,
        args: &[u8],
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<HostReply, String>> + Send {
        handle_encoded(self, kind, args, deadline)
    }

    fn over_budget(&self, kind: CallKind) {
        self.env.metrics.host_call(kind.api(), "limit");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alga_shared::bindings::*;
    use alga_shared::capability::Capability;

    pub fn ctx(caps: &[Capability]) -> HostContext {
        HostContext {
            request_id: Some("r1".into()),
            tenant_id: "t1".into(),
            extension_id: "com.example.ext".into(),
            install_id: Some("i1".into()),
            version_id: Some("v1".into()),
            user: None,
            config: BTreeMap::from([("greeting".to_string(), "hello".to_string())]),
            capabilities: caps.iter().copied().collect(),
            secrets: Default::default(),
            egress: Egress::default(),
            egress_bytes: Default::default(),
            env: Arc::new(HostEnv::local().unwrap()),
        }
    }

    fn later() -> tokio::time::Instant {
        tokio::time::Instant::now() + std::time::Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_call_without_its_capability_gets_the_deny_value() {
        let c = ctx(&[]);
        let reply = handle(&c, HostCall::StorageGet { namespace: "n".into(), key: "k".into() }, later()).await;
        assert_eq!(reply, HostReply::StorageEntry(Err(StorageError::Denied)));
        let reply = handle(&c, HostCall::ContextGet, later()).await;
        match reply {
            HostReply::Context(d) => {
                assert_eq!(d.tenant_id, "", "denied context is empty, not a trap")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_denied_call_is_answered_without_decoding_its_arguments() {
        let c = ctx(&[]);
        // Not even a call: it is never decoded, the deny value comes from the kind alone.
        let garbage = [0xff_u8; 64];
        let reply = handle_encoded(&c, CallKind::StoragePut, &garbage, later()).await;
        assert_eq!(reply, Ok(HostReply::StorageEntry(Err(StorageError::Denied))));
        // Granted: decoded, and the same garbage is a protocol violation.
        let c = ctx(&[Capability::StorageKv]);
        let err = handle_encoded(&c, CallKind::StoragePut, &garbage, later()).await.unwrap_err();
        assert!(err.contains("StoragePut arguments"), "{err}");
        // Arguments of another kind than announced: a violation too.
        let args = alga_shared::frame::encode_value(&HostCall::ConfigList).unwrap();
        let err = handle_encoded(&c, CallKind::StorageGet, &args, later()).await.unwrap_err();
        assert!(err.contains("ConfigList"), "{err}");
        // A well-formed granted call is performed (its deny value would be an empty list).
        let c = ctx(&[Capability::ConfigRead]);
        let args = alga_shared::frame::encode_value(&HostCall::ConfigList).unwrap();
        let performed = HostReply::ConfigEntries(vec![("greeting".into(), "hello".into())]);
        assert_eq!(handle_encoded(&c, CallKind::ConfigList, &args, later()).await, Ok(performed));
    }

    #[tokio::test]
    async fn without_an_egress_list_fetch_is_not_allowed() {
        let c = ctx(&Capability::ALL);
        let reply = handle(
            &c,
            HostCall::HttpFetch {
                request: HttpRequest { method: "GET".into(), url: "http://x".into(), headers: vec![], body: None },
            },
            later(),
        )
        .await;
        assert_eq!(reply, HostReply::Http(Err(HttpError::NotAllowed)));
        assert_eq!(handle(&c, HostCall::SecretsListKeys, later()).await, HostReply::SecretKeys(vec![]));
    }
}

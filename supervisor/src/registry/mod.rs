//! The registry: extensions, versions, bundles, installs and the execution log, behind one trait
//! ([`RegistryStore`]) so a shared backend could replace the embedded one ([`SledRegistry`])
//! without touching callers; and the blob store for the bundles themselves.

pub mod blobs;
pub mod chain;
pub mod commit;
pub mod model;
mod pg_store;
pub mod shared_blobs;
mod sled_store;
pub mod ui_tree;

pub use blobs::BlobStore;
pub use model::*;
pub use pg_store::PgRegistry;
pub use shared_blobs::{S3Settings, SharedBlobError, SharedBlobs};
pub use sled_store::SledRegistry;
pub use ui_tree::UiTrees;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database")]
    Db(#[from] sled::Error),
    #[error("database")]
    Postgres(#[from] crate::db::postgres::PgError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("database transaction: {0}")]
    Transaction(String),
    #[error(
        "the database was written by a newer alga-runner (schema {found}); this build reads schema {SCHEMA_VERSION}"
    )]
    NewerSchema { found: u8 },
}

/// What `publish` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored; the extension record was created if it did not exist.
    Created { extension: ExtensionRecord, version: VersionRecord },
    /// The same name, version and content hash were already published.
    AlreadyPublished { extension: ExtensionRecord, version: VersionRecord },
    /// The name and version exist with another content hash.
    VersionConflict { existing_hash: String },
    /// The name belongs to another publisher.
    NameTaken { publisher: String },
}

/// Filters of the execution log.
#[derive(Debug, Clone, Default)]
pub struct ExecutionQuery {
    pub extension_id: Option<String>,
    pub outcome: Option<String>,
    /// Opaque cursor from a previous page.
    pub after: Option<String>,
    pub limit: usize,
}

/// Storage of the registry. Every write returns only once it is durable (survives `kill -9`),
/// except `record_execution`, which is made durable by the next `flush` (group commit).
#[async_trait::async_trait]
pub trait RegistryStore: Send + Sync + std::fmt::Debug {
    /// By registry id or manifest name.
    async fn extension(&self, id_or_name: &str) -> Result<Option<ExtensionRecord>, StoreError>;
    /// In name order, after the name `after`.
    async fn extensions(&self, after: Option<&str>, limit: usize) -> Result<Vec<ExtensionRecord>, StoreError>;
    /// Every version, newest (highest semver) first.
    async fn versions(&self, extension_id: &str) -> Result<Vec<VersionRecord>, StoreError>;
    async fn version(&self, extension_id: &str, version: &str) -> Result<Option<VersionRecord>, StoreError>;
    async fn version_by_id(&self, extension_id: &str, version_id: &str) -> Result<Option<VersionRecord>, StoreError>;
    async fn bundle(&self, content_hash: &str) -> Result<Option<BundleRecord>, StoreError>;
    async fn bundles(&self) -> Result<Vec<BundleRecord>, StoreError>;
    /// Stores a new version (and its extension on first publish) atomically.
    async fn publish(
        &self,
        extension: ExtensionRecord,
        version: VersionRecord,
        bundle: BundleRecord,
    ) -> Result<PublishOutcome, StoreError>;
    async fn put_version(&self, version: &VersionRecord) -> Result<(), StoreError>;
    async fn put_bundle(&self, bundle: &BundleRecord) -> Result<(), StoreError>;

    async fn install(&self, tenant: &str, extension_id: &str) -> Result<Option<InstallRecord>, StoreError>;
    /// `tenant`'s install of `extension` (registry id or manifest name) with its extension and
    /// the version it names (by version id), when all three exist: what an execution resolves,
    /// in one lookup where the backend can.
    async fn resolve(
        &self,
        tenant: &str,
        extension: &str,
    ) -> Result<Option<(ExtensionRecord, InstallRecord, VersionRecord)>, StoreError> {
        let Some(ext) = self.extension(extension).await? else { return Ok(None) };
        let Some(install) = self.install(tenant, &ext.id).await? else { return Ok(None) };
        // By version string (one key), then checked against the install's version id.
        let version = self.version(&ext.id, &install.version).await?.filter(|v| v.version_id == install.version_id);
        Ok(version.map(|v| (ext, install, v)))
    }
    async fn installs(&self, tenant: &str) -> Result<Vec<InstallRecord>, StoreError>;
    /// Saves the install and replaces its event subscriptions, in one transaction.
    async fn put_install(
        &self,
        install: &InstallRecord,
        subscriptions: &[SubscriptionRecord],
    ) -> Result<(), StoreError>;
    /// Removes the install and its subscriptions, in one transaction.
    async fn delete_install(&self, tenant: &str, extension_id: &str) -> Result<Option<InstallRecord>, StoreError>;
    /// Whether some tenant's install is on this content hash (a bundle belongs to one extension).
    async fn installed_anywhere(&self, content_hash: &str) -> Result<bool, StoreError>;
    /// The tenant's subscriptions to `topic`.
    async fn subscriptions(&self, tenant: &str, topic: &str) -> Result<Vec<SubscriptionRecord>, StoreError>;

    /// Adds to the usage of (tenant, extension) in the window starting at `window_start` (Unix s).
    async fn add_usage(
        &self,
        tenant: &str,
        extension_id: &str,
        window_start: u64,
        delta: &UsageRecord,
    ) -> Result<(), StoreError>;
    /// The tenant's usage windows since `since` (Unix s): (extension id, window start, usage).
    async fn usage(&self, tenant: &str, since: u64) -> Result<Vec<(String, u64, UsageRecord)>, StoreError>;

    /// Appends to the tenant's chain (filling `seq` and `prev_hash`) and applies retention;
    /// returns the record as stored.
    async fn record_execution(
        &self,
        record: ExecutionRecord,
        retention: &chain::Retention,
    ) -> Result<ExecutionRecord, StoreError>;
    /// Removes what retention no longer keeps, for every tenant (records age out without new
    /// executions too). Returns how many went.
    async fn prune_executions(&self, retention: &chain::Retention) -> Result<u64, StoreError>;
    /// The tenant's chain head (default when it has no records).
    async fn chain_head(&self, tenant: &str) -> Result<chain::ChainHead, StoreError>;
    /// Every tenant with an execution log.
    async fn chain_tenants(&self) -> Result<Vec<String>, StoreError>;
    /// Every record of the tenant, oldest first (verification).
    async fn executions_oldest_first(&self, tenant: &str) -> Result<Vec<ExecutionRecord>, StoreError>;
    /// Newest first; returns the page and the cursor of the next one.
    async fn executions(
        &self,
        tenant: &str,
        query: &ExecutionQuery,
    ) -> Result<(Vec<ExecutionRecord>, Option<String>), StoreError>;

    /// Makes every write so far durable.
    async fn flush(&self) -> Result<(), StoreError>;

    /// After a failed flush: makes the store usable again if it can (sled reopens its
    /// directory) and proves it with a durable write. `Err` while it still cannot write.
    async fn recover(&self) -> Result<(), StoreError>;
}

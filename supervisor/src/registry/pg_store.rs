//! The registry on PostgreSQL (11-scale-out.md): the tables of migration 1, shared by every
//! runner host. Every write is committed before it returns (so `flush` has nothing to do), and
//! what must change together changes in one transaction: a version and its extension, an install
//! and its subscriptions, an execution record and its tenant's chain head (whose row is locked
//! by the appender, so hosts appending at once still build one chain).

use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::chain::{ChainHead, PRUNE_PER_APPEND, Retention, hash_of_bytes};
use super::model::*;
use super::{ExecutionQuery, PublishOutcome, RegistryStore, StoreError};
use crate::db::postgres::{Pg, PgError, big, prepared, unbig};
use tokio_postgres::types::ToSql;

#[derive(Debug, Clone)]
pub struct PgRegistry {
    pg: Pg,
}

impl PgRegistry {
    /// The registry in a migrated database.
    pub fn new(pg: Pg) -> Self {
        PgRegistry { pg }
    }

    /// Writes a tenant's whole chain as it was elsewhere: its records as stored (oldest first)
    /// and its head (for `migrate`).
    pub async fn import_chain(&self, tenant: &str, head: &ChainHead, records: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut c = self.pg.client().await?;
        let tx = c.transaction().await.map_err(PgError::from)?;
        lock_head(&tx, tenant).await?;
        for bytes in records {
            let r = stored_execution(bytes)?;
            tx.execute(
                &prepared(
                    &tx,
                    "INSERT INTO extension_execution_log
                     (tenant, seq, execution_id, request_id, extension_id, outcome, created_at, record)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .await?,
                &[
                    &tenant,
                    &big(r.seq),
                    &r.execution_id,
                    &r.request_id,
                    &r.extension_id,
                    &r.outcome,
                    &big(r.created_at),
                    bytes,
                ],
            )
            .await
            .map_err(PgError::from)?;
        }
        save_head(&tx, tenant, head).await?;
        tx.commit().await.map_err(PgError::from)?;
        Ok(())
    }

    /// How many rows each table of the registry holds (for `migrate`'s check).
    pub async fn counts(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let c = self.pg.client().await?;
        let mut out = Vec::new();
        for table in TABLES {
            let n: i64 = c
                .query_one(&prepared(&c, &format!("SELECT count(*) FROM {table}")).await?, &[])
                .await
                .map_err(PgError::from)?
                .get(0);
            out.push((*table, n));
        }
        Ok(out)
    }
}

/// The tables `migrate` fills and checks.
pub const TABLES: &[&str] = &[
    "extension_registry",
    "extension_version",
    "extension_bundle",
    "tenant_extension_install",
    "extension_event_subscription",
    "extension_execution_log",
    "extension_execution_chain",
    "extension_quota_usage",
    "ext_storage_entry",
    "install_secrets",
];

fn extension_of(row: &Row) -> ExtensionRecord {
    ExtensionRecord {
        id: row.get("id"),
        name: row.get("name"),
        publisher: row.get("publisher"),
        created_at: unbig(row.get("created_at")),
    }
}

fn record_of<T: for<'de> serde::Deserialize<'de>>(row: &Row) -> T {
    let Json(record) = row.get::<_, Json<T>>("record");
    record
}

fn head_of(row: &Row) -> ChainHead {
    ChainHead {
        next_seq: unbig(row.get("next_seq")),
        head_hash: row.get("head_hash"),
        first_seq: unbig(row.get("first_seq")),
        anchor_hash: row.get("anchor_hash"),
    }
}

fn state_name(state: VersionState) -> &'static str {
    match state {
        VersionState::Active => "active",
        VersionState::Yanked => "yanked",
        VersionState::Unavailable => "unavailable",
    }
}

fn stored_execution(bytes: &[u8]) -> Result<ExecutionRecord, StoreError> {
    Ok(decode(bytes)?)
}

const EXTENSION_COLUMNS: &str = "id, name, publisher, created_at";
/// An extension by registry id, else by name ($1).
const EXTENSION_BY_ID_OR_NAME: &str = "SELECT id, name, publisher, created_at FROM extension_registry
     WHERE id = $1 OR name = $1 ORDER BY (id = $1) DESC LIMIT 1";
const HEAD_COLUMNS: &str = "next_seq, head_hash, first_seq, anchor_hash";

/// Moves the oldest records that retention no longer keeps out of the chain (at most `max`),
/// inside the transaction that holds the head's lock.
async fn prune(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    head: &mut ChainHead,
    retention: &Retention,
    max: usize,
) -> Result<u64, StoreError> {
    let now = now_ms();
    let before = head.first_seq;
    // Most appends prune nothing: when the count is within bounds, the oldest record's time
    // alone says so, without reading any record.
    if head.len() <= retention.max_records {
        let oldest = tx
            .query_opt(
                &prepared(tx, "SELECT created_at FROM extension_execution_log WHERE tenant = $1 AND seq = $2").await?,
                &[&tenant, &big(head.first_seq)],
            )
            .await
            .map_err(PgError::from)?;
        if let Some(row) = oldest
            && retention.keeps_oldest(head.len(), unbig(row.get("created_at")), now)
        {
            return Ok(0);
        }
    }
    let mut left = max;
    'batches: while left > 0 && head.len() > 1 {
        let batch = left.min(1000) as i64;
        let rows = tx
            .query(
                &prepared(
                    tx,
                    "SELECT seq, created_at, record FROM extension_execution_log
                 WHERE tenant = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                )
                .await?,
                &[&tenant, &big(head.first_seq), &batch],
            )
            .await
            .map_err(PgError::from)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let created_at = unbig(row.get("created_at"));
            if head.len() <= 1 || retention.keeps_oldest(head.len(), created_at, now) {
                break 'batches;
            }
            let bytes: Vec<u8> = row.get("record");
            head.anchor_hash = hash_of_bytes(&bytes);
            head.first_seq = unbig(row.get("seq")) + 1;
            left -= 1;
            if left == 0 {
                break 'batches;
            }
        }
    }
    if head.first_seq != before {
        tx.execute(
            &prepared(tx, "DELETE FROM extension_execution_log WHERE tenant = $1 AND seq < $2").await?,
            &[&tenant, &big(head.first_seq)],
        )
        .await
        .map_err(PgError::from)?;
    }
    Ok(head.first_seq - before)
}

/// Locks the tenant's chain head (creating it first), for an append or a prune: one statement,
/// since the conflicting insert's no-op update takes the row's lock and returns it.
async fn lock_head(tx: &deadpool_postgres::Transaction<'_>, tenant: &str) -> Result<ChainHead, StoreError> {
    let fresh = ChainHead::default();
    let row = tx
        .query_one(
            &prepared(
                tx,
                &format!(
                    "INSERT INTO extension_execution_chain AS h (tenant, next_seq, head_hash, first_seq, anchor_hash)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (tenant) DO UPDATE SET next_seq = h.next_seq
                     RETURNING {HEAD_COLUMNS}"
                ),
            )
            .await?,
            &[&tenant, &big(fresh.next_seq), &fresh.head_hash, &big(fresh.first_seq), &fresh.anchor_hash],
        )
        .await
        .map_err(PgError::from)?;
    Ok(head_of(&row))
}

async fn save_head(tx: &deadpool_postgres::Transaction<'_>, tenant: &str, head: &ChainHead) -> Result<(), StoreError> {
    tx.execute(
        &prepared(
            tx,
            "UPDATE extension_execution_chain SET next_seq = $2, head_hash = $3, first_seq = $4, anchor_hash = $5
         WHERE tenant = $1",
        )
        .await?,
        &[&tenant, &big(head.next_seq), &head.head_hash, &big(head.first_seq), &head.anchor_hash],
    )
    .await
    .map_err(PgError::from)?;
    Ok(())
}

#[async_trait::async_trait]
impl RegistryStore for PgRegistry {
    async fn extension(&self, id_or_name: &str) -> Result<Option<ExtensionRecord>, StoreError> {
        let c = self.pg.client().await?;
        let row =
            c.query_opt(&prepared(&c, EXTENSION_BY_ID_OR_NAME).await?, &[&id_or_name]).await.map_err(PgError::from)?;
        Ok(row.as_ref().map(extension_of))
    }

    async fn extensions(&self, after: Option<&str>, limit: usize) -> Result<Vec<ExtensionRecord>, StoreError> {
        let c = self.pg.client().await?;
        let rows = c
            .query(
                &prepared(
                    &c,
                    &format!(
                        "SELECT {EXTENSION_COLUMNS} FROM extension_registry WHERE $1::text IS NULL OR name > $1
                     ORDER BY name LIMIT $2"
                    ),
                )
                .await?,
                &[&after, &(limit as i64)],
            )
            .await
            .map_err(PgError::from)?;
        Ok(rows.iter().map(extension_of).collect())
    }

    async fn versions(&self, extension_id: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let c = self.pg.client().await?;
        let rows = c
            .query(
                &prepared(&c, "SELECT record FROM extension_version WHERE extension_id = $1").await?,
                &[&extension_id],
            )
            .await
            .map_err(PgError::from)?;
        let mut v: Vec<VersionRecord> = rows.iter().map(record_of).collect();
        v.sort_by(newest_first);
        Ok(v)
    }

    async fn version(&self, extension_id: &str, version: &str) -> Result<Option<VersionRecord>, StoreError> {
        let c = self.pg.client().await?;
        let row = c
            .query_opt(
                &prepared(&c, "SELECT record FROM extension_version WHERE extension_id = $1 AND version = $2").await?,
                &[&extension_id, &version],
            )
            .await
            .map_err(PgError::from)?;
        Ok(row.as_ref().map(record_of))
    }

    async fn version_by_id(&self, extension_id: &str, version_id: &str) -> Result<Option<VersionRecord>, StoreError> {
        let c = self.pg.client().await?;
        let row = c
            .query_opt(
                &prepared(&c, "SELECT record FROM extension_version WHERE extension_id = $1 AND version_id = $2")
                    .await?,
                &[&extension_id, &version_id],
            )
            .await
            .map_err(PgError::from)?;
        Ok(row.as_ref().map(record_of))
    }

    async fn bundle(&self, content_hash: &str) -> Result<Option<BundleRecord>, StoreError> {
        let c = self.pg.client().await?;
        let row = c
            .query_opt(
                &prepared(&c, "SELECT record FROM extension_bundle WHERE content_hash = $1").await?,
                &[&content_hash],
            )
            .await
            .map_err(PgError::from)?;
        Ok(row.as_ref().map(record_of))
    }

    async fn bundles(&self) -> Result<Vec<BundleRecord>, StoreError> {
        let c = self.pg.client().await?;
        let rows = c
            .query(&prepared(&c, "SELECT record FROM extension_bundle ORDER BY content_hash").await?, &[])
            .await
            .map_err(PgError::from)?;
        Ok(rows.iter().map(record_of).collect())
    }

    async fn publish(
        &self,
        extension: ExtensionRecord,
        version: VersionRecord,
        bundle: BundleRecord,
    ) -> Result<PublishOutcome, StoreError> {
        let mut c = self.pg.client().await?;
        let tx = c.transaction().await.map_err(PgError::from)?;
        tx.execute(
            &prepared(
                &tx,
                "INSERT INTO extension_registry (id, name, publisher, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
            )
            .await?,
            &[&extension.id, &extension.name, &extension.publisher, &big(extension.created_at)],
        )
        .await
        .map_err(PgError::from)?;
        // The extension's row is locked: publishes of one extension (from any host) take turns.
        let row = tx
            .query_one(
                &prepared(
                    &tx,
                    &format!("SELECT {EXTENSION_COLUMNS} FROM extension_registry WHERE name = $1 FOR UPDATE"),
                )
                .await?,
                &[&extension.name],
            )
            .await
            .map_err(PgError::from)?;
        let ext = extension_of(&row);
        if ext.publisher != extension.publisher {
            return Ok(PublishOutcome::NameTaken { publisher: ext.publisher });
        }
        let existing = tx
            .query_opt(
                &prepared(&tx, "SELECT record FROM extension_version WHERE extension_id = $1 AND version = $2").await?,
                &[&ext.id, &version.version],
            )
            .await
            .map_err(PgError::from)?;
        if let Some(row) = existing {
            let existing: VersionRecord = record_of(&row);
            return Ok(if existing.content_hash == version.content_hash {
                PublishOutcome::AlreadyPublished { extension: ext, version: existing }
            } else {
                PublishOutcome::VersionConflict { existing_hash: existing.content_hash }
            });
        }
        let version = VersionRecord { extension_id: ext.id.clone(), ..version };
        let bundle = BundleRecord { extension_id: ext.id.clone(), ..bundle };
        insert_version(&tx, &version).await?;
        upsert_bundle(&tx, &bundle).await?;
        tx.commit().await.map_err(PgError::from)?;
        Ok(PublishOutcome::Created { extension: ext, version })
    }

    async fn put_version(&self, version: &VersionRecord) -> Result<(), StoreError> {
        let c = self.pg.client().await?;
        insert_version(&c, version).await
    }

    async fn put_bundle(&self, bundle: &BundleRecord) -> Result<(), StoreError> {
        let c = self.pg.client().await?;
        upsert_bundle(&c, bundle).await
    }

    async fn install(&self, tenant: &str, extension_id: &str) -> Result<Option<InstallRecord>, StoreError> {
        let c = self.pg.client().await?;
        let row = c
            .query_opt(
                &prepared(&c, "SELECT record FROM tenant_extension_install WHERE tenant = $1 AND extension_id = $2")
                    .await?,
                &[&tenant, &extension_id],
            )
            .await
            .map_err(PgError::from)?;
        Ok(row.as_ref().map(record_of))
    }

    async fn resolve(
        &self,
        tenant: &str,
        extension: &str,
    ) -> Result<Option<(ExtensionRecord, InstallRecord, VersionRecord)>, StoreError> {
        let c = self.pg.client().await?;
        let row = c
            .query_opt(
                &prepared(
                    &c,
                    &format!(
                        "WITH e AS ({EXTENSION_BY_ID_OR_NAME})
                         SELECT e.*, i.record AS install, v.record AS version FROM e
                         JOIN tenant_extension_install i ON i.tenant = $2 AND i.extension_id = e.id
                         JOIN extension_version v ON v.extension_id = e.id AND v.version_id = i.version_id"
                    ),
                )
                .await?,
                &[&extension, &tenant],
            )
            .await
            .map_err(PgError::from)?;
        Ok(row.map(|r| {
            let Json(install) = r.get::<_, Json<InstallRecord>>("install");
            let Json(version) = r.get::<_, Json<VersionRecord>>("version");
            (extension_of(&r), install, version)
        }))
    }

    async fn installs(&self, tenant: &str) -> Result<Vec<InstallRecord>, StoreError> {
        let c = self.pg.client().await?;
        let rows = c
            .query(
                &prepared(
                    &c,
                    "SELECT record FROM tenant_extension_install WHERE tenant = $1 ORDER BY extension_id COLLATE \"C\"",
                )
                .await?,
                &[&tenant],
            )
            .await
            .map_err(PgError::from)?;
        Ok(rows.iter().map(record_of).collect())
    }

    async fn put_install(
        &self,
        install: &InstallRecord,
        subscriptions: &[SubscriptionRecord],
    ) -> Result<(), StoreError> {
        let mut c = self.pg.client().await?;
        let tx = c.transaction().await.map_err(PgError::from)?;
        tx.execute(
            &prepared(
                &tx,
                "INSERT INTO tenant_extension_install
                 (tenant, extension_id, install_id, version_id, content_hash, enabled, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (tenant, extension_id) DO UPDATE SET install_id = excluded.install_id,
                 version_id = excluded.version_id, content_hash = excluded.content_hash,
                 enabled = excluded.enabled, record = excluded.record",
            )
            .await?,
            &[
                &install.tenant,
                &install.extension_id,
                &install.install_id,
                &install.version_id,
                &install.content_hash,
                &install.enabled,
                &Json(install),
            ],
        )
        .await
        .map_err(PgError::from)?;
        tx.execute(
            &prepared(&tx, "DELETE FROM extension_event_subscription WHERE tenant = $1 AND install_id = $2").await?,
            &[&install.tenant, &install.install_id],
        )
        .await
        .map_err(PgError::from)?;
        for s in subscriptions {
            tx.execute(
                &prepared(
                    &tx,
                    "INSERT INTO extension_event_subscription (tenant, topic, install_id, handler, extension_id)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .await?,
                &[&s.tenant, &s.topic, &s.install_id, &s.handler, &s.extension_id],
            )
            .await
            .map_err(PgError::from)?;
        }
        tx.commit().await.map_err(PgError::from)?;
        Ok(())
    }

    async fn delete_install(&self, tenant: &str, extension_id: &str) -> Result<Option<InstallRecord>, StoreError> {
        let mut c = self.pg.client().await?;
        let tx = c.transaction().await.map_err(PgError::from)?;
        let Some(row) = tx
            .query_opt(
                &prepared(
                    &tx,
                    "DELETE FROM tenant_extension_install WHERE tenant = $1 AND extension_id = $2 RETURNING record",
                )
                .await?,
                &[&tenant, &extension_id],
            )
            .await
            .map_err(PgError::from)?
        else {
            return Ok(None);
        };
        let old: InstallRecord = record_of(&row);
        tx.execute(
            &prepared(&tx, "DELETE FROM extension_event_subscription WHERE tenant = $1 AND install_id = $2").await?,
            &[&tenant, &old.install_id],
        )
        .await
        .map_err(PgError::from)?;
        tx.commit().await.map_err(PgError::from)?;
        Ok(Some(old))
    }

    async fn installed_anywhere(&self, content_hash: &str) -> Result<bool, StoreError> {
        let c = self.pg.client().await?;
        let row = c
            .query_one(
                &prepared(&c, "SELECT EXISTS (SELECT 1 FROM tenant_extension_install WHERE content_hash = $1)").await?,
                &[&content_hash],
            )
            .await
            .map_err(PgError::from)?;
        Ok(row.get(0))
    }

    async fn subscriptions(&self, tenant: &str, topic: &str) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let c = self.pg.client().await?;
        let rows = c
            .query(
                &prepared(
                    &c,
                    "SELECT tenant, topic, install_id, extension_id, handler FROM extension_event_subscription
                 WHERE tenant = $1 AND topic = $2 ORDER BY install_id COLLATE \"C\", handler COLLATE \"C\"",
                )
                .await?,
                &[&tenant, &topic],
            )
            .await
            .map_err(PgError::from)?;
        Ok(rows
            .iter()
            .map(|r| SubscriptionRecord {
                tenant: r.get("tenant"),
                topic: r.get("topic"),
                install_id: r.get("install_id"),
                extension_id: r.get("extension_id"),
                handler: r.get("handler"),
            })
            .collect())
    }

    async fn add_usage(
        &self,
        tenant: &str,
        extension_id: &str,
        window_start: u64,
        d: &UsageRecord,
    ) -> Result<(), StoreError> {
        // Counters only: a database crash may lose the last few, and nothing was promised.
        let c = self.pg.relaxed_client().await?;
        c.execute(
            &prepared(
                &c,
                "INSERT INTO extension_quota_usage AS u
                 (tenant, extension_id, window_start, invocations, cpu_ms, memory_mib_ms, fuel, egress_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant, extension_id, window_start) DO UPDATE SET
                 invocations = u.invocations + excluded.invocations, cpu_ms = u.cpu_ms + excluded.cpu_ms,
                 memory_mib_ms = u.memory_mib_ms + excluded.memory_mib_ms, fuel = u.fuel + excluded.fuel,
                 egress_bytes = u.egress_bytes + excluded.egress_bytes",
            )
            .await?,
            &[
                &tenant,
                &extension_id,
                &big(window_start),
                &big(d.invocations),
                &big(d.cpu_ms),
                &big(d.memory_mib_ms),
                &big(d.fuel),
                &big(d.egress_bytes),
            ],
        )
        .await
        .map_err(PgError::from)?;
        Ok(())
    }

    async fn usage(&self, tenant: &str, since: u64) -> Result<Vec<(String, u64, UsageRecord)>, StoreError> {
        let c = self.pg.client().await?;
        let rows = c
            .query(
                &prepared(
                    &c,
                    "SELECT extension_id, window_start, invocations, cpu_ms, memory_mib_ms, fuel, egress_bytes
                 FROM extension_quota_usage WHERE tenant = $1 AND window_start >= $2
                 ORDER BY extension_id COLLATE \"C\", window_start",
                )
                .await?,
                &[&tenant, &big(since)],
            )
            .await
            .map_err(PgError::from)?;
        Ok(rows
            .iter()
            .map(|r| {
                let usage = UsageRecord {
                    invocations: unbig(r.get("invocations")),
                    cpu_ms: unbig(r.get("cpu_ms")),
                    memory_mib_ms: unbig(r.get("memory_mib_ms")),
                    fuel: unbig(r.get("fuel")),
                    egress_bytes: unbig(r.get("egress_bytes")),
                };
                (r.get("extension_id"), unbig(r.get("window_start")), usage)
            })
            .collect())
    }

    async fn record_execution(
        &self,
        mut r: ExecutionRecord,
        retention: &Retention,
    ) -> Result<ExecutionRecord, StoreError> {
        let mut c = self.pg.client().await?;
        let tx = c.transaction().await.map_err(PgError::from)?;
        let mut head = lock_head(&tx, &r.tenant).await?;
        r.seq = head.next_seq;
        r.prev_hash = head.head_hash.clone();
        let bytes = encode(&r);
        head.head_hash = hash_of_bytes(&bytes);
        head.next_seq += 1;
        // Most appends prune nothing: the record, the new head and the oldest record's time go
        // in one round trip (the client pipelines what is sent together), and the pruning only
        // follows when retention says so.
        let insert = prepared(
            &tx,
            "INSERT INTO extension_execution_log
                 (tenant, seq, execution_id, request_id, extension_id, outcome, created_at, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
        let oldest =
            prepared(&tx, "SELECT created_at FROM extension_execution_log WHERE tenant = $1 AND seq = $2").await?;
        let save = prepared(
            &tx,
            "UPDATE extension_execution_chain SET next_seq = $2, head_hash = $3, first_seq = $4, anchor_hash = $5
             WHERE tenant = $1",
        )
        .await?;
        let (seq, created_at, first_seq, next_seq) =
            (big(r.seq), big(r.created_at), big(head.first_seq), big(head.next_seq));
        let record: [&(dyn ToSql + Sync); 8] =
            [&r.tenant, &seq, &r.execution_id, &r.request_id, &r.extension_id, &r.outcome, &created_at, &bytes];
        let oldest_of: [&(dyn ToSql + Sync); 2] = [&r.tenant, &first_seq];
        let new_head: [&(dyn ToSql + Sync); 5] = [&r.tenant, &next_seq, &head.head_hash, &first_seq, &head.anchor_hash];
        let (_, oldest, _) = tokio::try_join!(
            tx.execute(&insert, &record),
            tx.query_opt(&oldest, &oldest_of),
            tx.execute(&save, &new_head),
        )
        .map_err(PgError::from)?;
        let kept = head.len() <= retention.max_records
            && oldest.is_some_and(|row| retention.keeps_oldest(head.len(), unbig(row.get("created_at")), now_ms()));
        if !kept && prune(&tx, &r.tenant, &mut head, retention, PRUNE_PER_APPEND).await? > 0 {
            save_head(&tx, &r.tenant, &head).await?;
        }
        tx.commit().await.map_err(PgError::from)?;
        Ok(r)
    }

    async fn prune_executions(&self, retention: &Retention) -> Result<u64, StoreError> {
        let mut pruned = 0;
        for tenant in self.chain_tenants().await? {
            let mut c = self.pg.client().await?;
            let tx = c.transaction().await.map_err(PgError::from)?;
            let mut head = lock_head(&tx, &tenant).await?;
            let n = prune(&tx, &tenant, &mut head, retention, usize::MAX).await?;
            if n > 0 {
                save_head(&tx, &tenant, &head).await?;
            }
            tx.commit().await.map_err(PgError::from)?;
            pruned += n;
        }
        Ok(pruned)
    }

    async fn chain_head(&self, tenant: &str) -> Result<ChainHead, StoreError> {
        let c = self.pg.client().await?;
        let row = c
            .query_opt(
                &prepared(&c, &format!("SELECT {HEAD_COLUMNS} FROM extension_execution_chain WHERE tenant = $1"))
                    .await?,
                &[&tenant],
            )
            .await
            .map_err(PgError::from)?;
        Ok(row.as_ref().map(head_of).unwrap_or_default())
    }

    async fn chain_tenants(&self) -> Result<Vec<String>, StoreError> {
        let c = self.pg.client().await?;
        let rows = c
            .query(
                &prepared(&c, "SELECT tenant FROM extension_execution_chain ORDER BY tenant COLLATE \"C\"").await?,
                &[],
            )
            .await
            .map_err(PgError::from)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn executions_oldest_first(&self, tenant: &str) -> Result<Vec<ExecutionRecord>, StoreError> {
        let c = self.pg.client().await?;
        let rows = c
            .query(
                &prepared(&c, "SELECT record FROM extension_execution_log WHERE tenant = $1 ORDER BY seq").await?,
                &[&tenant],
            )
            .await
            .map_err(PgError::from)?;
        rows.iter().map(|r| stored_execution(r.get("record"))).collect()
    }

    async fn executions(
        &self,
        tenant: &str,
        q: &ExecutionQuery,
    ) -> Result<(Vec<ExecutionRecord>, Option<String>), StoreError> {
        let before = q.after.as_deref().and_then(cursor_seq).map_or(i64::MAX, big);
        let c = self.pg.client().await?;
        let rows = c
            .query(
                &prepared(
                    &c,
                    "SELECT record FROM extension_execution_log
                 WHERE tenant = $1 AND seq < $2
                   AND ($3::text IS NULL OR extension_id = $3) AND ($4::text IS NULL OR outcome = $4)
                 ORDER BY seq DESC LIMIT $5",
                )
                .await?,
                &[&tenant, &before, &q.extension_id, &q.outcome, &(q.limit as i64)],
            )
            .await
            .map_err(PgError::from)?;
        let out: Vec<ExecutionRecord> =
            rows.iter().map(|r| stored_execution(r.get("record"))).collect::<Result<_, _>>()?;
        let cursor = if out.len() >= q.limit { out.last().map(|r| execution_cursor(r.seq)) } else { None };
        Ok((out, cursor))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write was committed before it returned.
        Ok(())
    }

    async fn recover(&self) -> Result<(), StoreError> {
        self.pg.client().await?.execute("SELECT 1", &[]).await.map_err(PgError::from)?;
        Ok(())
    }
}

async fn insert_version<C: deadpool_postgres::GenericClient>(c: &C, v: &VersionRecord) -> Result<(), StoreError> {
    c.execute(
        &prepared(
            c,
            "INSERT INTO extension_version (extension_id, version, version_id, content_hash, state, record)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (extension_id, version) DO UPDATE SET state = excluded.state, record = excluded.record",
        )
        .await?,
        &[&v.extension_id, &v.version, &v.version_id, &v.content_hash, &state_name(v.state), &Json(v)],
    )
    .await
    .map_err(PgError::from)?;
    Ok(())
}

async fn upsert_bundle<C: deadpool_postgres::GenericClient>(c: &C, b: &BundleRecord) -> Result<(), StoreError> {
    c.execute(
        &prepared(
            c,
            "INSERT INTO extension_bundle (content_hash, extension_id, version_id, record) VALUES ($1, $2, $3, $4)
         ON CONFLICT (content_hash) DO UPDATE SET extension_id = excluded.extension_id,
             version_id = excluded.version_id, record = excluded.record",
        )
        .await?,
        &[&b.content_hash, &b.extension_id, &b.version_id, &Json(b)],
    )
    .await
    .map_err(PgError::from)?;
    Ok(())
}

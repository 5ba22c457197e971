//! The `storage` backend on PostgreSQL (the `ext_storage_*` tables of migration 1), shared by
//! every runner host. A write locks its install's usage row first, then changes the value and
//! the usage in one transaction, so the quotas hold for concurrent writers on any host, and a
//! compare-and-swap is a conditional update under that lock. Committed before it returns.

use std::collections::BTreeMap;

use tokio_postgres::types::Json;

use super::{KvError, KvStore, PutResult, Scope, Stored, limits};
use crate::db::postgres::{Pg, PgError, big, prepared, unbig};
use tokio_postgres::types::ToSql;

#[derive(Debug, Clone)]
pub struct PgKv {
    pg: Pg,
}

impl PgKv {
    pub fn new(pg: Pg) -> Self {
        PgKv { pg }
    }

    /// Writes values as they were elsewhere, revisions kept, then recomputes every install's
    /// usage from what is stored (for `migrate`).
    pub async fn import(&self, entries: &[(Scope, String, String, Stored)]) -> Result<(), KvError> {
        let mut c = self.pg.client().await.map_err(db_error)?;
        let tx = c.transaction().await.map_err(db_error)?;
        let now = big(crate::registry::now_ms());
        for (scope, namespace, key, stored) in entries {
            tx.execute(
                &prepared(
                    &tx,
                    "INSERT INTO ext_storage_entry (tenant, install_id, namespace, key, value, revision, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .await
                .map_err(db_error)?,
                &[&scope.tenant, &scope.install, namespace, key, &stored.value, &big(stored.revision), &now],
            )
            .await
            .map_err(db_error)?;
        }
        tx.batch_execute(
            "INSERT INTO ext_storage_usage (tenant, install_id, bytes, namespaces)
             SELECT tenant, install_id, sum(bytes), jsonb_object_agg(namespace, keys)
             FROM (SELECT tenant, install_id, namespace, count(*) AS keys,
                          sum(octet_length(key) + octet_length(value)) AS bytes
                   FROM ext_storage_entry GROUP BY tenant, install_id, namespace) AS per_namespace
             GROUP BY tenant, install_id
             ON CONFLICT (tenant, install_id) DO UPDATE SET bytes = excluded.bytes, namespaces = excluded.namespaces",
        )
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }
}

fn db_error(e: impl Into<PgError>) -> KvError {
    KvError(format!("database: {}", crate::error_chain(&e.into())))
}

/// An install's usage: key plus value bytes, and keys per namespace.
struct Usage {
    bytes: u64,
    namespaces: BTreeMap<String, u32>,
}

/// Locks (creating it first) the install's usage row for the transaction, and reads it: one
/// statement, since the conflicting insert's no-op update takes the row's lock and returns it.
async fn lock_usage(tx: &deadpool_postgres::Transaction<'_>, scope: &Scope) -> Result<Usage, KvError> {
    let row =
        tx.query_one(&lock_usage_statement(tx).await?, &[&scope.tenant, &scope.install]).await.map_err(db_error)?;
    Ok(usage_of(&row))
}

async fn lock_usage_statement(tx: &deadpool_postgres::Transaction<'_>) -> Result<tokio_postgres::Statement, KvError> {
    prepared(
        tx,
        "INSERT INTO ext_storage_usage AS u (tenant, install_id, bytes, namespaces) VALUES ($1, $2, 0, '{}')
         ON CONFLICT (tenant, install_id) DO UPDATE SET bytes = u.bytes
         RETURNING bytes, namespaces",
    )
    .await
    .map_err(db_error)
}

fn usage_of(row: &tokio_postgres::Row) -> Usage {
    let Json(namespaces) = row.get::<_, Json<BTreeMap<String, u32>>>("namespaces");
    Usage { bytes: unbig(row.get("bytes")), namespaces }
}

async fn save_usage(tx: &deadpool_postgres::Transaction<'_>, scope: &Scope, u: &Usage) -> Result<(), KvError> {
    tx.execute(
        &prepared(tx, "UPDATE ext_storage_usage SET bytes = $3, namespaces = $4 WHERE tenant = $1 AND install_id = $2")
            .await
            .map_err(db_error)?,
        &[&scope.tenant, &scope.install, &big(u.bytes), &Json(&u.namespaces)],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

#[async_trait::async_trait]
impl KvStore for PgKv {
    async fn get(&self, scope: &Scope, namespace: &str, key: &str) -> Result<Option<Stored>, KvError> {
        let c = self.pg.client().await.map_err(db_error)?;
        let row = c
            .query_opt(
                &prepared(
                    &c,
                    "SELECT value, revision FROM ext_storage_entry
                 WHERE tenant = $1 AND install_id = $2 AND namespace = $3 AND key = $4",
                )
                .await
                .map_err(db_error)?,
                &[&scope.tenant, &scope.install, &namespace, &key],
            )
            .await
            .map_err(db_error)?;
        Ok(row.map(|r| Stored { value: r.get("value"), revision: unbig(r.get("revision")) }))
    }

    async fn put(
        &self,
        scope: &Scope,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<PutResult, KvError> {
        let mut c = self.pg.client().await.map_err(db_error)?;
        let tx = c.transaction().await.map_err(db_error)?;
        // The usage row's lock, then the entry under it: sent together (one round trip), run in
        // that order.
        let lock = lock_usage_statement(&tx).await?;
        let entry = prepared(
            &tx,
            "SELECT length(value) AS len, revision FROM ext_storage_entry
             WHERE tenant = $1 AND install_id = $2 AND namespace = $3 AND key = $4",
        )
        .await
        .map_err(db_error)?;
        let install: [&(dyn ToSql + Sync); 2] = [&scope.tenant, &scope.install];
        let where_key: [&(dyn ToSql + Sync); 4] = [&scope.tenant, &scope.install, &namespace, &key];
        let (usage_row, current) =
            tokio::try_join!(tx.query_one(&lock, &install), tx.query_opt(&entry, &where_key)).map_err(db_error)?;
        let mut usage = usage_of(&usage_row);
        let current = current.map(|r| (r.get::<_, i32>("len") as u64, unbig(r.get("revision"))));
        if let Some(want) = expected
            && current.map(|c| c.1) != Some(want)
        {
            return Ok(PutResult::Conflict);
        }
        if current.is_none() {
            let keys = usage.namespaces.get(namespace).copied().unwrap_or(0);
            if keys as usize >= limits::KEYS_PER_NAMESPACE
                || (keys == 0 && usage.namespaces.len() >= limits::NAMESPACES)
            {
                return Ok(PutResult::QuotaExceeded);
            }
        }
        let old_bytes = current.map_or(0, |c| key.len() as u64 + c.0);
        let bytes = usage.bytes.saturating_sub(old_bytes) + (key.len() + value.len()) as u64;
        if bytes > limits::BYTES_PER_INSTALL {
            return Ok(PutResult::QuotaExceeded);
        }
        let revision = current.map_or(1, |c| c.1 + 1);
        usage.bytes = bytes;
        if current.is_none() {
            *usage.namespaces.entry(namespace.to_string()).or_default() += 1;
        }
        let write = prepared(
            &tx,
            "INSERT INTO ext_storage_entry (tenant, install_id, namespace, key, value, revision, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (tenant, install_id, namespace, key) DO UPDATE SET value = excluded.value,
                 revision = excluded.revision, updated_at = excluded.updated_at",
        )
        .await
        .map_err(db_error)?;
        let (revision_of, now) = (big(revision), big(crate::registry::now_ms()));
        let entry: [&(dyn ToSql + Sync); 7] =
            [&scope.tenant, &scope.install, &namespace, &key, &value, &revision_of, &now];
        // The entry and the usage row: one round trip.
        tokio::try_join!(async { tx.execute(&write, &entry).await.map_err(db_error) }, save_usage(&tx, scope, &usage))?;
        tx.commit().await.map_err(db_error)?;
        Ok(PutResult::Written { revision })
    }

    async fn delete(&self, scope: &Scope, namespace: &str, key: &str) -> Result<bool, KvError> {
        let mut c = self.pg.client().await.map_err(db_error)?;
        let tx = c.transaction().await.map_err(db_error)?;
        let mut usage = lock_usage(&tx, scope).await?;
        let Some(row) = tx
            .query_opt(
                &prepared(&tx, "DELETE FROM ext_storage_entry WHERE tenant = $1 AND install_id = $2 AND namespace = $3 AND key = $4
                 RETURNING length(value) AS len").await.map_err(db_error)?,
                &[&scope.tenant, &scope.install, &namespace, &key],
            )
            .await
            .map_err(db_error)?
        else {
            return Ok(false);
        };
        let old_len = row.get::<_, i32>("len") as u64;
        usage.bytes = usage.bytes.saturating_sub(key.len() as u64 + old_len);
        if let Some(n) = usage.namespaces.get_mut(namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                usage.namespaces.remove(namespace);
            }
        }
        save_usage(&tx, scope, &usage).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(true)
    }

    async fn list(
        &self,
        scope: &Scope,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, KvError> {
        let c = self.pg.client().await.map_err(db_error)?;
        let rows = c
            .query(
                &prepared(
                    &c,
                    "SELECT key, value, revision FROM ext_storage_entry
                 WHERE tenant = $1 AND install_id = $2 AND namespace = $3 AND ($4::text IS NULL OR key > $4)
                 ORDER BY key LIMIT $5",
                )
                .await
                .map_err(db_error)?,
                &[&scope.tenant, &scope.install, &namespace, &after, &(limit as i64)],
            )
            .await
            .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|r| (r.get("key"), Stored { value: r.get("value"), revision: unbig(r.get("revision")) }))
            .collect())
    }

    async fn purge(&self, scope: &Scope) -> Result<u64, KvError> {
        let mut c = self.pg.client().await.map_err(db_error)?;
        let tx = c.transaction().await.map_err(db_error)?;
        let values = tx
            .execute(
                &prepared(&tx, "DELETE FROM ext_storage_entry WHERE tenant = $1 AND install_id = $2")
                    .await
                    .map_err(db_error)?,
                &[&scope.tenant, &scope.install],
            )
            .await
            .map_err(db_error)?;
        let usage = tx
            .execute(
                &prepared(&tx, "DELETE FROM ext_storage_usage WHERE tenant = $1 AND install_id = $2")
                    .await
                    .map_err(db_error)?,
                &[&scope.tenant, &scope.install],
            )
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(values + usage)
    }

    async fn flush(&self) -> Result<(), KvError> {
        // Every write was committed before it returned.
        Ok(())
    }
}

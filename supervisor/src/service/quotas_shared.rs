//! Admission for the whole cluster (11-scale-out.md): the per-tenant and per-extension rate limits
//! and concurrency caps counted in the shared database, so they hold however the load balancer
//! spreads a tenant's requests. One transaction per admission, under a tenant-wide advisory lock:
//! the token buckets refill by the database's clock read after the lock (hosts' clocks never
//! meet, and a bucket's clock never goes back), and a running
//! execution holds a lease that its host renews every [`RENEW_EVERY`]; a host that died stops
//! renewing, and its leases stop counting within [`LEASE`]. None of it must survive a database
//! crash (leases expire, buckets refill), so its commits do not wait for the disk.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::quotas::{Live, Refused};
use crate::config::QuotasConfig;
use crate::db::postgres::{Pg, PgError, prepared};

/// How long a lease counts without being renewed.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often a host renews its leases.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SharedAdmission {
    pg: Pg,
    /// This host's id (a fresh UUID per start): its leases carry it.
    host_id: String,
    /// The leases of executions running here: only these are renewed (a lease whose release was
    /// lost is not kept alive by its host).
    held: Arc<Mutex<HashSet<String>>>,
}

/// A running execution's place in the concurrency caps; dropping it gives the place back.
#[derive(Debug)]
pub struct Lease {
    pg: Pg,
    id: String,
    held: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        // Failing the delete below (or without a runtime), the next renewal removes it.
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (pg, id) = (self.pg.clone(), std::mem::take(&mut self.id));
        rt.spawn(async move {
            let released = async {
                pg.relaxed_client().await?.execute("DELETE FROM quota_lease WHERE lease_id = $1", &[&id]).await?;
                Ok::<_, PgError>(())
            };
            if let Err(e) = released.await {
                tracing::warn!(error = %e, "releasing a quota lease failed; the next renewal removes it");
            }
        });
    }
}

fn unavailable(e: impl Into<PgError>) -> Refused {
    tracing::error!(error = %crate::error_chain(&e.into()), "admission: the database failed");
    Refused::Unavailable
}

/// Seconds until a bucket at `tokens` has one token.
fn wait_s(tokens: f64, rate: f64) -> u64 {
    ((1.0 - tokens) / rate).ceil().max(1.0) as u64
}

impl SharedAdmission {
    pub fn new(pg: Pg) -> Self {
        SharedAdmission { pg, host_id: crate::registry::new_id(), held: Arc::default() }
    }

    /// Renews the leases of the executions running here, and removes this host's others (their
    /// release was lost), for as long as the service runs.
    pub async fn renew(self) {
        let mut every = tokio::time::interval(RENEW_EVERY);
        loop {
            every.tick().await;
            let held: Vec<String> = self.held.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
            let renewed = async {
                let c = self.pg.relaxed_client().await?;
                c.execute(
                    &prepared(
                        &c,
                        "UPDATE quota_lease SET expires_at = now() + $3 * interval '1 millisecond'
                     WHERE host_id = $1 AND lease_id = ANY($2)",
                    )
                    .await?,
                    &[&self.host_id, &held, &(LEASE.as_millis() as f64)],
                )
                .await?;
                // Not the ones made since the list was taken (they are a moment old).
                c.execute(
                    &prepared(
                        &c,
                        "DELETE FROM quota_lease WHERE host_id = $1 AND NOT (lease_id = ANY($2))
                     AND created_at < now() - interval '2 seconds'",
                    )
                    .await?,
                    &[&self.host_id, &held],
                )
                .await?;
                Ok::<_, PgError>(())
            };
            if let Err(e) = renewed.await {
                tracing::warn!(error = %crate::error_chain(&e), "renewing quota leases failed");
            }
        }
    }

    /// Admits one execution (rate limits first, then the caps), or says why not.
    pub async fn admit(&self, c: &QuotasConfig, tenant: &str, extension: &str) -> Result<Lease, Refused> {
        // `/` is in no tenant id, so no two (tenant, extension) pairs share a key.
        let keys = [format!("t/{tenant}"), format!("e/{tenant}/{extension}")];
        let limits =
            [(c.tenant_rate_per_s, c.tenant_burst.max(1.0)), (c.extension_rate_per_s, c.extension_burst.max(1.0))];
        let mut client = self.pg.relaxed_client().await.map_err(unavailable)?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // A tenant's admissions take turns, on every host.
        tx.execute(
            &prepared(&tx, "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))").await.map_err(unavailable)?,
            &[&tenant],
        )
        .await
        .map_err(unavailable)?;
        let mut refill = Vec::new();
        for (key, (rate, burst)) in keys.iter().zip(limits) {
            if rate <= 0.0 {
                continue;
            }
            let row = tx
                .query_opt(
                    &prepared(&tx, "SELECT tokens, extract(epoch FROM clock_timestamp() - at)::float8 AS age FROM quota_bucket WHERE key = $1").await.map_err(unavailable)?,
                    &[key],
                )
                .await
                .map_err(unavailable)?;
            let tokens = match row {
                Some(r) => (r.get::<_, f64>("tokens") + r.get::<_, f64>("age").max(0.0) * rate).min(burst),
                None => burst,
            };
            if tokens < 1.0 {
                return Err(Refused::RateLimited { retry_after_s: wait_s(tokens, rate) });
            }
            refill.push((key, tokens - 1.0));
        }
        let caps = [c.tenant_concurrency, c.extension_concurrency];
        if caps.iter().any(|cap| *cap > 0) {
            let row = tx
                .query_one(
                    &prepared(
                        &tx,
                        "SELECT count(*) AS tenant, count(*) FILTER (WHERE extension_id = $2) AS extension
                     FROM quota_lease WHERE tenant = $1 AND expires_at > now()",
                    )
                    .await
                    .map_err(unavailable)?,
                    &[&tenant, &extension],
                )
                .await
                .map_err(unavailable)?;
            let running = [row.get::<_, i64>("tenant"), row.get::<_, i64>("extension")];
            if caps.iter().zip(running).any(|(cap, n)| *cap > 0 && n >= i64::from(*cap)) {
                return Err(Refused::QuotaExceeded { retry_after_s: 1 });
            }
        }
        for (key, tokens) in refill {
            tx.execute(
                &prepared(
                    &tx,
                    "INSERT INTO quota_bucket (key, tokens, at) VALUES ($1, $2, clock_timestamp())
                 ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, at = greatest(quota_bucket.at, excluded.at)",
                )
                .await
                .map_err(unavailable)?,
                &[key, &tokens],
            )
            .await
            .map_err(unavailable)?;
        }
        let id = crate::registry::new_id();
        // Held (renewed) from before the commit: a lease committed but never handed out is
        // removed by the next renewal once this is dropped.
        let lease = Lease { pg: self.pg.clone(), id: id.clone(), held: self.held.clone() };
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        tx.execute(
            &prepared(
                &tx,
                "INSERT INTO quota_lease (lease_id, host_id, tenant, extension_id, expires_at)
             VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond')",
            )
            .await
            .map_err(unavailable)?,
            &[&id, &self.host_id, &tenant, &extension, &(LEASE.as_millis() as f64)],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(lease)
    }

    /// The tenant's running executions across the cluster.
    pub async fn live(&self, tenant: &str) -> Result<Live, PgError> {
        let rows = self
            .pg
            .relaxed_client()
            .await?
            .query(
                "SELECT extension_id, count(*) AS n FROM quota_lease WHERE tenant = $1 AND expires_at > now()
                 GROUP BY extension_id",
                &[&tenant],
            )
            .await?;
        let extensions_in_flight: HashMap<String, u32> =
            rows.iter().map(|r| (r.get("extension_id"), r.get::<_, i64>("n") as u32)).collect();
        Ok(Live { tenant_in_flight: extensions_in_flight.values().sum(), extensions_in_flight })
    }

    /// Removes leases that expired (their hosts died), and buckets that have refilled (a full
    /// bucket and no bucket are the same).
    pub async fn sweep(&self, c: &QuotasConfig) -> Result<u64, PgError> {
        let client = self.pg.relaxed_client().await?;
        let mut removed =
            client.execute(&prepared(&client, "DELETE FROM quota_lease WHERE expires_at < now()").await?, &[]).await?;
        for (prefix, rate, burst) in [
            ("t/%", c.tenant_rate_per_s, c.tenant_burst.max(1.0)),
            ("e/%", c.extension_rate_per_s, c.extension_burst.max(1.0)),
        ] {
            removed += client
                .execute(
                    &prepared(
                        &client,
                        "DELETE FROM quota_bucket
                     WHERE key LIKE $1 AND tokens + extract(epoch FROM now() - at)::float8 * $2 >= $3",
                    )
                    .await?,
                    &[&prefix, &rate, &burst],
                )
                .await?;
        }
        Ok(removed)
    }
}

//! Admission for the whole cluster (11-scale-out.md): the per-tenant and per-extension rate limits
//! and concurrency caps counted in the shared database, so they hold however the load balancer
//! spreads a tenant's requests. One statement per admission (`alga_admit`, migration 4: a
//! transaction of its own), under a tenant-wide advisory lock:
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
    /// Whether the database may hold it (false once the admission was refused).
    stored: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        if !self.stored {
            return;
        }
        // Failing the delete below (or without a runtime), the next renewal removes it.
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (pg, id) = (self.pg.clone(), std::mem::take(&mut self.id));
        rt.spawn(async move {
            let released = async {
                let c = pg.relaxed_client().await?;
                c.execute(&prepared(&c, "DELETE FROM quota_lease WHERE lease_id = $1").await?, &[&id]).await?;
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

    /// Admits one execution (rate limits first, then the caps), or says why not: one statement,
    /// `alga_admit` (migration 4), in a transaction of its own.
    pub async fn admit(&self, c: &QuotasConfig, tenant: &str, extension: &str) -> Result<Lease, Refused> {
        // `/` is in no tenant id, so no two (tenant, extension) pairs share a key.
        let keys = vec![format!("t/{tenant}"), format!("e/{tenant}/{extension}")];
        let rates = vec![c.tenant_rate_per_s, c.extension_rate_per_s];
        let bursts = vec![c.tenant_burst.max(1.0), c.extension_burst.max(1.0)];
        let caps = [c.tenant_concurrency as i32, c.extension_concurrency as i32];
        let id = crate::registry::new_id();
        // Held (renewed) from before the commit: a lease committed but never handed out is
        // removed by the next renewal once this is dropped.
        let mut lease = Lease { pg: self.pg.clone(), id: id.clone(), held: self.held.clone(), stored: true };
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        let client = self.pg.relaxed_client().await.map_err(unavailable)?;
        let row = client
            .query_one(
                &prepared(
                    &client,
                    "SELECT outcome, tokens, rate FROM alga_admit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .await
                .map_err(unavailable)?,
                &[
                    &tenant,
                    &extension,
                    &self.host_id,
                    &id,
                    &keys,
                    &rates,
                    &bursts,
                    &caps[0],
                    &caps[1],
                    &(LEASE.as_millis() as f64),
                ],
            )
            .await
            .map_err(unavailable)?;
        let outcome = row.get::<_, &str>("outcome");
        lease.stored = outcome == "admitted";
        match outcome {
            "admitted" => Ok(lease),
            "rate_limited" => Err(Refused::RateLimited { retry_after_s: wait_s(row.get("tokens"), row.get("rate")) }),
            _ => Err(Refused::QuotaExceeded { retry_after_s: 1 }),
        }
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

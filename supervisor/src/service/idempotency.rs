//! Idempotency of `/v1/execute` (`x-idempotency-key`), keyed by (tenant, extension, key): the
//! first attempt *claims* the key; a retry gets the stored answer of a completed execution, or,
//! while the first still runs, waits for it (up to the longest an execution may take) and else
//! answers 409 `in_progress` — it never executes twice. Only completed executions are kept; a
//! claim whose execution did not complete is released, so a retry runs it again.
//!
//! [`Local`] keeps this in memory for one host: a cache bounded by count and by bytes (least
//! recently used goes first) and by age (Alga gap: it was global and unbounded). [`Shared`] keeps
//! it in PostgreSQL (`idempotency_entry`), so a retry that lands on another host is answered the
//! same; a claim expires with the execution's deadline, so a host that died holding one does not
//! block the key.
//!
//! Kept by hand rather than taken from a crate, on purpose: it must bound count, bytes and age at
//! once and evict exactly the least recently used entry. `quick_cache` weighs by one measure and
//! has no expiry; `moka` has both, but evicts by an approximate admission policy, expires entries
//! during its own housekeeping, and brings a dozen crates (crossbeam, parking_lot, …) for what is
//! a hundred lines here under the service's one lock, tested to the entry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::postgres::{Pg, PgError, prepared};
use crate::registry::StoreError;

/// What a claim found.
pub enum Claim {
    /// The key is this attempt's: run it, then [`Ticket::finish`].
    Mine(Ticket),
    /// A completed execution's answer, to replay.
    Done(serde_json::Value),
    /// Another attempt holds the key and is still running.
    Running,
}

/// A claimed key. Dropped without [`Ticket::finish`] (the attempt was abandoned), it is released.
pub struct Ticket {
    store: Arc<dyn Idempotency>,
    key: Key,
    token: String,
    finished: bool,
}

impl Ticket {
    /// Keeps `response` for replays (a completed execution), or releases the key (`None`).
    pub async fn finish(mut self, response: Option<serde_json::Value>) {
        self.finished = true;
        if let Err(e) = self.store.finish(&self.key, &self.token, response).await {
            tracing::error!(error = %crate::error_chain(&e), "storing the idempotent answer failed");
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            self.store.abandon(&self.key, &self.token);
        }
    }
}

/// Where claims and answers are kept.
#[async_trait::async_trait]
pub trait Idempotency: Send + Sync + std::fmt::Debug {
    /// Claims `key` for at most `hold` (the attempt's deadline), or says what holds it.
    async fn claim(
        self: Arc<Self>,
        tenant: &str,
        extension: &str,
        key: &str,
        hold: Duration,
    ) -> Result<Claim, StoreError>;
    async fn finish(&self, key: &Key, token: &str, response: Option<serde_json::Value>) -> Result<(), StoreError>;
    /// Releases a claim without waiting (from `Drop`).
    fn abandon(&self, key: &Key, token: &str);
}

/// One host's claims and answers, in memory: the answers and the running claims under one
/// lock, so a claim never falls between an answer being kept and its claim going.
#[derive(Debug)]
pub struct Local {
    state: Mutex<(Cache, HashSet<Key>)>,
}

impl Local {
    pub fn new(cache: Cache) -> Self {
        Local { state: Mutex::new((cache, HashSet::new())) }
    }
}

#[async_trait::async_trait]
impl Idempotency for Local {
    async fn claim(
        self: Arc<Self>,
        tenant: &str,
        extension: &str,
        key: &str,
        _hold: Duration,
    ) -> Result<Claim, StoreError> {
        let k = (tenant.to_string(), extension.to_string(), key.to_string());
        {
            let (cache, running) = &mut *self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(done) = cache.get(tenant, extension, key) {
                return Ok(Claim::Done(done));
            }
            if !running.insert(k.clone()) {
                return Ok(Claim::Running);
            }
        }
        Ok(Claim::Mine(Ticket { store: self, key: k, token: String::new(), finished: false }))
    }

    async fn finish(&self, key: &Key, _token: &str, response: Option<serde_json::Value>) -> Result<(), StoreError> {
        let (cache, running) = &mut *self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = response {
            cache.put(&key.0, &key.1, &key.2, r);
        }
        running.remove(key);
        Ok(())
    }

    fn abandon(&self, key: &Key, _token: &str) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1.remove(key);
    }
}

/// Claims and answers in the shared database (`idempotency_entry`), for every host.
#[derive(Debug)]
pub struct Shared {
    pg: Pg,
    /// How long a completed answer is kept.
    ttl: Duration,
}

impl Shared {
    pub fn new(pg: Pg, ttl: Duration) -> Self {
        Shared { pg, ttl }
    }
}

#[async_trait::async_trait]
impl Idempotency for Shared {
    async fn claim(
        self: Arc<Self>,
        tenant: &str,
        extension: &str,
        key: &str,
        hold: Duration,
    ) -> Result<Claim, StoreError> {
        let token = crate::registry::new_id();
        // A claim lost in a database crash only lets a retry run again (nothing was answered).
        let c = self.pg.relaxed_client().await?;
        // A new key, or one whose claim or answer expired, becomes ours.
        let claimed = c
            .query_opt(
                &prepared(
                    &c,
                    "INSERT INTO idempotency_entry (tenant, extension_id, key, token, state, response, expires_at)
                 VALUES ($1, $2, $3, $4, 'running', NULL, now() + $5 * interval '1 millisecond')
                 ON CONFLICT (tenant, extension_id, key) DO UPDATE SET token = excluded.token, state = 'running',
                     response = NULL, expires_at = excluded.expires_at
                 WHERE idempotency_entry.expires_at < now()
                 RETURNING token",
                )
                .await?,
                &[&tenant, &extension, &key, &token, &(hold.as_millis() as f64)],
            )
            .await
            .map_err(PgError::from)?;
        if claimed.is_some() {
            let k = (tenant.to_string(), extension.to_string(), key.to_string());
            return Ok(Claim::Mine(Ticket { store: self.clone(), key: k, token, finished: false }));
        }
        let row = c
            .query_opt(
                &prepared(
                    &c,
                    "SELECT state, response FROM idempotency_entry
                 WHERE tenant = $1 AND extension_id = $2 AND key = $3 AND expires_at >= now()",
                )
                .await?,
                &[&tenant, &extension, &key],
            )
            .await
            .map_err(PgError::from)?;
        Ok(match row {
            Some(r) if r.get::<_, &str>("state") == "done" => {
                Claim::Done(r.get::<_, Option<serde_json::Value>>("response").unwrap_or_default())
            }
            // Running, or it expired between the two statements: a retry asks again.
            _ => Claim::Running,
        })
    }

    async fn finish(&self, key: &Key, token: &str, response: Option<serde_json::Value>) -> Result<(), StoreError> {
        let c = self.pg.client().await?;
        match response {
            Some(r) => c
                .execute(
                    &prepared(&c, "UPDATE idempotency_entry SET state = 'done', response = $5,
                         expires_at = now() + $6 * interval '1 millisecond'
                     WHERE tenant = $1 AND extension_id = $2 AND key = $3 AND token = $4").await?,
                    &[&key.0, &key.1, &key.2, &token, &r, &(self.ttl.as_millis() as f64)],
                )
                .await
                .map_err(PgError::from)?,
            None => c
                .execute(
                    &prepared(&c, "DELETE FROM idempotency_entry WHERE tenant = $1 AND extension_id = $2 AND key = $3 AND token = $4").await?,
                    &[&key.0, &key.1, &key.2, &token],
                )
                .await
                .map_err(PgError::from)?,
        };
        Ok(())
    }

    fn abandon(&self, key: &Key, token: &str) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (pg, key, token) = (self.pg.clone(), key.clone(), token.to_string());
        rt.spawn(async move {
            let released = async {
                pg.relaxed_client()
                    .await?
                    .execute(
                        "DELETE FROM idempotency_entry
                         WHERE tenant = $1 AND extension_id = $2 AND key = $3 AND token = $4",
                        &[&key.0, &key.1, &key.2, &token],
                    )
                    .await?;
                Ok::<_, PgError>(())
            };
            // Failing that, the claim expires with its deadline.
            if let Err(e) = released.await {
                tracing::debug!(error = %e, "releasing an idempotency claim failed");
            }
        });
    }
}

/// Removes expired entries of the shared table (the periodic sweep).
pub async fn sweep_shared(pg: &Pg) -> Result<u64, PgError> {
    Ok(pg.client().await?.execute("DELETE FROM idempotency_entry WHERE expires_at < now()", &[]).await?)
}

pub type Key = (String, String, String);

#[derive(Debug)]
struct Entry {
    /// Position in the use order.
    tick: u64,
    stored: Instant,
    response: serde_json::Value,
    bytes: usize,
}

#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    max_bytes: usize,
    ttl: Duration,
    entries: HashMap<Key, Entry>,
    /// Use order: the least recently used first.
    order: BTreeMap<u64, Key>,
    next_tick: u64,
    bytes: usize,
}

impl Cache {
    pub fn new(capacity: usize, max_bytes: usize, ttl_s: u64) -> Self {
        Cache {
            capacity,
            max_bytes,
            ttl: Duration::from_secs(ttl_s),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_tick: 0,
            bytes: 0,
        }
    }

    pub fn get(&mut self, tenant: &str, extension: &str, key: &str) -> Option<serde_json::Value> {
        let k = (tenant.to_string(), extension.to_string(), key.to_string());
        let fresh = self.entries.get(&k)?.stored.elapsed() <= self.ttl;
        if !fresh {
            self.remove(&k);
            return None;
        }
        let tick = self.tick();
        let e = self.entries.get_mut(&k)?;
        self.order.remove(&e.tick);
        e.tick = tick;
        self.order.insert(tick, k);
        Some(e.response.clone())
    }

    pub fn put(&mut self, tenant: &str, extension: &str, key: &str, response: serde_json::Value) {
        // What an entry costs: its response as stored, plus its key.
        let bytes = response.to_string().len() + tenant.len() + extension.len() + key.len();
        if self.capacity == 0 || bytes > self.max_bytes {
            return;
        }
        let k = (tenant.to_string(), extension.to_string(), key.to_string());
        self.remove(&k);
        let tick = self.tick();
        self.entries.insert(k.clone(), Entry { tick, stored: Instant::now(), response, bytes });
        self.order.insert(tick, k);
        self.bytes += bytes;
        // Least recently used out first; expired ones at the front go too.
        while self.entries.len() > self.capacity
            || self.bytes > self.max_bytes
            || self.order.first_key_value().is_some_and(|(_, k)| self.entries[k].stored.elapsed() > self.ttl)
        {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
            }
        }
    }

    fn remove(&mut self, k: &Key) {
        if let Some(e) = self.entries.remove(k) {
            self.order.remove(&e.tick);
            self.bytes -= e.bytes;
        }
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_claim_holds_the_key_until_it_finishes_or_is_dropped() {
        let local: Arc<dyn Idempotency> = Arc::new(Local::new(Cache::new(10, 1 << 20, 600)));
        let claim = |key: &'static str| {
            let local = local.clone();
            async move { local.claim("t", "e", key, Duration::from_secs(1)).await.unwrap() }
        };
        let Claim::Mine(first) = claim("k").await else { panic!("a new key is claimed") };
        assert!(matches!(claim("k").await, Claim::Running), "a retry while it runs");
        first.finish(Some(json!({"status": 200}))).await;
        assert!(matches!(claim("k").await, Claim::Done(v) if v == json!({"status": 200})), "then replayed");
        let Claim::Mine(abandoned) = claim("other").await else { panic!() };
        drop(abandoned);
        assert!(matches!(claim("other").await, Claim::Mine(_)), "an abandoned claim is released");
        let Claim::Mine(failed) = claim("failed").await else { panic!() };
        failed.finish(None).await;
        assert!(matches!(claim("failed").await, Claim::Mine(_)), "a failed attempt keeps nothing");
    }

    #[test]
    fn scoped_bounded_and_expiring() {
        let mut c = Cache::new(2, 1 << 20, 600);
        c.put("t1", "e", "k", json!(1));
        assert_eq!(c.get("t1", "e", "k"), Some(json!(1)));
        assert_eq!(c.get("t2", "e", "k"), None, "another tenant never sees it");
        c.put("t1", "e", "k2", json!(2));
        c.get("t1", "e", "k");
        c.put("t1", "e", "k3", json!(3));
        assert_eq!(c.get("t1", "e", "k2"), None, "least recently used evicted");
        assert_eq!(c.get("t1", "e", "k"), Some(json!(1)));
        let mut short = Cache::new(2, 1 << 20, 0);
        short.put("t", "e", "k", json!(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.get("t", "e", "k"), None, "expired");
    }

    #[test]
    fn bounded_by_bytes() {
        let big = json!("x".repeat(400));
        let mut c = Cache::new(100, 1000, 600);
        c.put("t", "e", "a", big.clone());
        c.put("t", "e", "b", big.clone());
        c.put("t", "e", "c", big.clone());
        assert_eq!(c.get("t", "e", "a"), None, "the oldest made room");
        assert!(c.get("t", "e", "b").is_some() && c.get("t", "e", "c").is_some());
        assert!(c.bytes <= 1000);
        c.put("t", "e", "huge", json!("y".repeat(2000)));
        assert_eq!(c.get("t", "e", "huge"), None, "larger than the whole budget: not kept");
        assert!(c.get("t", "e", "c").is_some(), "and it evicted nothing");
        c.put("t", "e", "b", json!(1));
        assert_eq!(c.get("t", "e", "b"), Some(json!(1)), "replaced");
        assert_eq!(c.bytes, c.entries.values().map(|e| e.bytes).sum::<usize>());
    }
}

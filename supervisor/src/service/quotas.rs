//! Admission of executions (02-http-api.md, quotas): per-tenant and per-(tenant, extension)
//! token-bucket rate limits and concurrency caps, then one global queue of bounded length in
//! time (`queue_timeout_ms`) in front of the sandboxes. Refusals carry how long to wait
//! (`retry-after`). Usage per window is recorded in the database by [`super::usage`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::quotas_shared::{Lease, SharedAdmission};
use crate::config::QuotasConfig;

/// Why an execution was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A rate limit: retry after this many seconds.
    RateLimited { retry_after_s: u64 },
    /// A concurrency cap.
    QuotaExceeded { retry_after_s: u64 },
    /// No execution slot became free within the queue timeout.
    Overloaded,
    /// The shared database, which counts the cluster's quotas, cannot be reached.
    Unavailable,
}

impl Refused {
    /// The envelope status and error (02-http-api.md outcome table).
    pub fn status_and_error(&self) -> (u16, &'static str) {
        match self {
            Refused::RateLimited { .. } => (429, "rate_limited"),
            Refused::QuotaExceeded { .. } => (429, "quota_exceeded"),
            Refused::Overloaded => (503, "overloaded"),
            Refused::Unavailable => (503, "storage_unavailable"),
        }
    }

    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            Refused::RateLimited { retry_after_s } | Refused::QuotaExceeded { retry_after_s } => Some(*retry_after_s),
            Refused::Overloaded | Refused::Unavailable => Some(1),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64) -> Self {
        Bucket { tokens: burst, at: Instant::now() }
    }

    /// Takes one token, or says how long until there is one.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    buckets: HashMap<String, Bucket>,
    in_flight: HashMap<String, u32>,
}

/// The admission state of this supervisor.
#[derive(Debug)]
pub struct Quotas {
    config: QuotasConfig,
    counters: Arc<Mutex<Counters>>,
    slots: Arc<Semaphore>,
    /// Executions waiting for a slot now.
    queued: Arc<std::sync::atomic::AtomicI64>,
    /// With a shared database, the rate limits and caps are the cluster's, counted there; the
    /// queue in front of this host's sandboxes stays this host's.
    shared: Option<SharedAdmission>,
}

/// An admitted execution; dropping it gives its slot and concurrency back.
#[derive(Debug)]
pub struct Permit {
    _held: Held,
    _slot: OwnedSemaphorePermit,
}

/// What an admitted execution holds of the concurrency caps.
#[derive(Debug)]
enum Held {
    Counters {
        keys: [String; 2],
        counters: Arc<Mutex<Counters>>,
    },
    /// Held for its `Drop`, which releases the lease.
    Lease(#[allow(dead_code)] Lease),
}

/// Gives back one execution's in-flight counts (an entry at zero goes, so the map holds only
/// tenants with work running).
fn release(counters: &Mutex<Counters>, keys: &[String; 2]) {
    let mut c = counters.lock().unwrap_or_else(|p| p.into_inner());
    for k in keys {
        if let Some(n) = c.in_flight.get_mut(k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.in_flight.remove(k);
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Counters { keys, counters } = self {
            release(counters, keys);
        }
    }
}

/// What `GET /v1/tenants/{tenant}/quotas` shows of the live state.
#[derive(Debug, Serialize)]
pub struct Live {
    pub tenant_in_flight: u32,
    pub extensions_in_flight: HashMap<String, u32>,
}

fn tenant_key(tenant: &str) -> String {
    format!("t\0{tenant}")
}

fn extension_key(tenant: &str, extension: &str) -> String {
    format!("e\0{tenant}\0{extension}")
}

impl Quotas {
    pub fn new(config: QuotasConfig, shared: Option<SharedAdmission>) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_concurrent.max(1) as usize));
        Quotas { config, counters: Arc::default(), slots, queued: Arc::default(), shared }
    }

    /// The cluster's admission, when there is one (its lease renewal runs beside the service).
    pub fn shared(&self) -> Option<&SharedAdmission> {
        self.shared.as_ref()
    }

    pub fn config(&self) -> &QuotasConfig {
        &self.config
    }

    /// Admits one execution of `extension` for `tenant`, or says why not. Rate limits are checked
    /// first (a refused call consumes nothing), then the concurrency caps, then the global queue.
    pub async fn admit(&self, tenant: &str, extension: &str) -> Result<Permit, Refused> {
        if let Some(shared) = &self.shared {
            // The lease is given back if no slot frees up in time (it is dropped).
            let lease = shared.admit(&self.config, tenant, extension).await?;
            let slot = self.slot().await?;
            return Ok(Permit { _held: Held::Lease(lease), _slot: slot });
        }
        let keys = [tenant_key(tenant), extension_key(tenant, extension)];
        {
            let c = &self.config;
            let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let limits = [
                (c.tenant_rate_per_s, c.tenant_burst, c.tenant_concurrency),
                (c.extension_rate_per_s, c.extension_burst, c.extension_concurrency),
            ];
            for (key, (rate, burst, _)) in keys.iter().zip(limits) {
                if rate <= 0.0 {
                    continue;
                }
                let burst = burst.max(1.0);
                let bucket = counters.buckets.entry(key.clone()).or_insert_with(|| Bucket::full(burst));
                // Peek without taking: both buckets must have a token before either is charged.
                let mut probe = Bucket { tokens: bucket.tokens, at: bucket.at };
                if let Err(wait) = probe.take(rate, burst, now) {
                    return Err(Refused::RateLimited { retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64 });
                }
            }
            for (key, (_, _, cap)) in keys.iter().zip(limits) {
                if cap > 0 && counters.in_flight.get(key).copied().unwrap_or(0) >= cap {
                    return Err(Refused::QuotaExceeded { retry_after_s: 1 });
                }
            }
            for (key, (rate, burst, _)) in keys.iter().zip(limits) {
                if rate > 0.0 {
                    let burst = burst.max(1.0);
                    let bucket = counters.buckets.entry(key.clone()).or_insert_with(|| Bucket::full(burst));
                    let _ = bucket.take(rate, burst, now);
                }
            }
            for key in &keys {
                *counters.in_flight.entry(key.clone()).or_default() += 1;
            }
            // Bound the bucket map: buckets that refilled completely carry no state.
            if counters.buckets.len() > 100_000 {
                counters.buckets.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(60));
            }
        }
        // From here on the counters are held by a guard, so every exit gives them back.
        let undo = Undo { keys: &keys, counters: &self.counters, armed: true };
        let slot = self.slot().await?;
        undo.disarm();
        Ok(Permit { _held: Held::Counters { keys, counters: self.counters.clone() }, _slot: slot })
    }

    /// A place in this host's queue, within `queue_timeout_ms`.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, Refused> {
        use std::sync::atomic::Ordering;
        let wait = Duration::from_millis(self.config.queue_timeout_ms);
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        let got = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        match got {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(Refused::Overloaded),
        }
    }

    /// Executions holding a slot of this host, and executions waiting for one, now.
    pub fn load(&self) -> (i64, i64) {
        let max = self.config.max_concurrent.max(1) as i64;
        (max - self.slots.available_permits() as i64, self.queued.load(std::sync::atomic::Ordering::Relaxed).max(0))
    }

    /// The live concurrency of one tenant (the cluster's, with a shared database).
    pub async fn live(&self, tenant: &str) -> Live {
        if let Some(shared) = &self.shared {
            return shared.live(tenant).await.unwrap_or_else(|e| {
                tracing::warn!(error = %crate::error_chain(&e), "reading the cluster's running executions failed");
                Live { tenant_in_flight: 0, extensions_in_flight: HashMap::new() }
            });
        }
        self.live_here(tenant)
    }

    fn live_here(&self, tenant: &str) -> Live {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = format!("e\0{tenant}\0");
        Live {
            tenant_in_flight: c.in_flight.get(&tenant_key(tenant)).copied().unwrap_or(0),
            extensions_in_flight: c
                .in_flight
                .iter()
                .filter_map(|(k, n)| k.strip_prefix(&prefix).map(|e| (e.to_string(), *n)))
                .collect(),
        }
    }
}

/// Gives the in-flight counts back unless disarmed.
struct Undo<'a> {
    keys: &'a [String; 2],
    counters: &'a Mutex<Counters>,
    armed: bool,
}

impl Undo<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.armed {
            release(self.counters, self.keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QuotasConfig {
        QuotasConfig {
            tenant_rate_per_s: 0.0,
            extension_rate_per_s: 0.0,
            tenant_concurrency: 0,
            extension_concurrency: 0,
            max_concurrent: 8,
            queue_timeout_ms: 50,
            ..QuotasConfig::default()
        }
    }

    #[tokio::test]
    async fn rate_limits_refuse_with_a_retry_after_and_refill() {
        let q = Quotas::new(QuotasConfig { tenant_rate_per_s: 2.0, tenant_burst: 2.0, ..config() }, None);
        drop(q.admit("t", "e").await.unwrap());
        drop(q.admit("t", "e").await.unwrap());
        let refused = q.admit("t", "e").await.unwrap_err();
        assert_eq!(refused, Refused::RateLimited { retry_after_s: 1 });
        assert!(q.admit("other", "e").await.is_ok(), "another tenant has its own bucket");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(q.admit("t", "e").await.is_ok(), "refilled");
    }

    #[tokio::test]
    async fn concurrency_caps_count_in_flight_executions() {
        let q = Quotas::new(QuotasConfig { extension_concurrency: 1, tenant_concurrency: 2, ..config() }, None);
        let a = q.admit("t", "e1").await.unwrap();
        assert_eq!(q.admit("t", "e1").await.unwrap_err(), Refused::QuotaExceeded { retry_after_s: 1 });
        let b = q.admit("t", "e2").await.unwrap();
        assert!(matches!(q.admit("t", "e3").await, Err(Refused::QuotaExceeded { .. })), "tenant cap");
        assert_eq!(q.live("t").await.tenant_in_flight, 2);
        drop(a);
        drop(b);
        assert!(q.admit("t", "e1").await.is_ok());
        assert_eq!(q.live("t").await.tenant_in_flight, 0);
    }

    #[tokio::test]
    async fn the_global_queue_times_out_as_overloaded() {
        let q = Quotas::new(QuotasConfig { max_concurrent: 1, ..config() }, None);
        let held = q.admit("t", "e").await.unwrap();
        assert_eq!(q.admit("u", "e").await.unwrap_err(), Refused::Overloaded);
        assert_eq!(q.live("u").await.tenant_in_flight, 0, "a refused admission gives its counts back");
        drop(held);
        assert!(q.admit("u", "e").await.is_ok());
    }
}

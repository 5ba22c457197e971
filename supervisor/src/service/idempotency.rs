//! The idempotency cache of `/v1/execute`: keyed by (tenant, extension, key), bounded by count
//! and by bytes (least recently used goes first) and by age, holding completed executions only
//! (Alga gap: it was global and unbounded).
//!
//! Kept by hand rather than taken from a crate, on purpose: it must bound count, bytes and age at
//! once and evict exactly the least recently used entry. `quick_cache` weighs by one measure and
//! has no expiry; `moka` has both, but evicts by an approximate admission policy, expires entries
//! during its own housekeeping, and brings a dozen crates (crossbeam, parking_lot, …) for what is
//! a hundred lines here under the service's one lock, tested to the entry.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

type Key = (String, String, String);

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

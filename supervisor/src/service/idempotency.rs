//! The idempotency cache of `/v1/execute`: keyed by (tenant, extension, key), bounded by count
//! (least recently used goes first) and by age, holding completed executions only (Alga gap: it
//! was global and unbounded).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

type Key = (String, String, String);

#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<Key, (Instant, serde_json::Value)>,
    order: VecDeque<Key>,
}

impl Cache {
    pub fn new(capacity: usize, ttl_s: u64) -> Self {
        Cache { capacity, ttl: Duration::from_secs(ttl_s), entries: HashMap::new(), order: VecDeque::new() }
    }

    pub fn get(&mut self, tenant: &str, extension: &str, key: &str) -> Option<serde_json::Value> {
        let k = (tenant.to_string(), extension.to_string(), key.to_string());
        match self.entries.get(&k) {
            Some((at, v)) if at.elapsed() <= self.ttl => {
                let v = v.clone();
                self.touch(&k);
                Some(v)
            }
            Some(_) => {
                self.entries.remove(&k);
                self.order.retain(|o| o != &k);
                None
            }
            None => None,
        }
    }

    pub fn put(&mut self, tenant: &str, extension: &str, key: &str, response: serde_json::Value) {
        if self.capacity == 0 {
            return;
        }
        let k = (tenant.to_string(), extension.to_string(), key.to_string());
        if self.entries.insert(k.clone(), (Instant::now(), response)).is_some() {
            self.touch(&k);
            return;
        }
        self.order.push_back(k);
        while self.entries.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    fn touch(&mut self, k: &Key) {
        self.order.retain(|o| o != k);
        self.order.push_back(k.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scoped_bounded_and_expiring() {
        let mut c = Cache::new(2, 600);
        c.put("t1", "e", "k", json!(1));
        assert_eq!(c.get("t1", "e", "k"), Some(json!(1)));
        assert_eq!(c.get("t2", "e", "k"), None, "another tenant never sees it");
        c.put("t1", "e", "k2", json!(2));
        c.get("t1", "e", "k");
        c.put("t1", "e", "k3", json!(3));
        assert_eq!(c.get("t1", "e", "k2"), None, "least recently used evicted");
        assert_eq!(c.get("t1", "e", "k"), Some(json!(1)));
        let mut short = Cache::new(2, 0);
        short.put("t", "e", "k", json!(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.get("t", "e", "k"), None, "expired");
    }
}

//! Prometheus metrics (07-operations.md), served at `/metrics` in the OpenMetrics text format.
//! This stage holds the extensions' own series (the `metrics` host API): `counter-add` and
//! `histogram-observe` become `alga_runner_extension_<name>{extension="<id>"}`. Names are
//! validated and bounded — at most [`NAMES_PER_EXTENSION`] per extension and [`NAMES_TOTAL`]
//! over all — so a guest cannot grow the exposition without bound; what is refused is counted in
//! `alga_runner_extension_metrics_dropped_total`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub const NAMES_PER_EXTENSION: usize = 50;
pub const NAMES_TOTAL: usize = 1_000;

type Labels = Vec<(String, String)>;

#[derive(Clone)]
enum GuestFamily {
    Counter(Family<Labels, Counter>),
    Histogram(Family<Labels, Histogram>),
}

#[derive(Default)]
struct Guest {
    families: HashMap<String, GuestFamily>,
    names_of: HashMap<String, HashSet<String>>,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    guest: Mutex<Guest>,
    dropped: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Buckets from 1 ms to about 4 000 s (×4 each), for whatever a guest observes.
fn new_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

/// A guest metric name: a lower-case letter, then up to 63 lower-case letters, digits or `_`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("alga_runner");
        let dropped = Counter::default();
        registry.register(
            "extension_metrics_dropped",
            "Extension metric updates refused (invalid name, kind clash, or over the name limits)",
            dropped.clone(),
        );
        Metrics { registry: Mutex::new(registry), guest: Mutex::default(), dropped }
    }

    /// The family for `name` of `extension`, registering it on first use within the limits.
    fn family(&self, extension: &str, name: &str, histogram: bool) -> Option<GuestFamily> {
        if !valid_name(name) {
            return None;
        }
        let mut g = self.guest.lock().unwrap_or_else(|p| p.into_inner());
        let known = g.names_of.get(extension).is_some_and(|n| n.contains(name));
        if !known && g.names_of.get(extension).map_or(0, HashSet::len) >= NAMES_PER_EXTENSION {
            return None;
        }
        let family = match g.families.get(name) {
            Some(f) => f.clone(),
            None => {
                if g.families.len() >= NAMES_TOTAL {
                    return None;
                }
                let full = format!("extension_{name}");
                let help = "Reported by extensions through the metrics host API";
                let f = if histogram {
                    let fam = Family::<Labels, Histogram>::new_with_constructor(new_histogram as fn() -> Histogram);
                    // The registry is only locked after the guest map, everywhere.
                    self.registry.lock().unwrap_or_else(|p| p.into_inner()).register(&full, help, fam.clone());
                    GuestFamily::Histogram(fam)
                } else {
                    let fam = Family::<Labels, Counter>::default();
                    self.registry.lock().unwrap_or_else(|p| p.into_inner()).register(&full, help, fam.clone());
                    GuestFamily::Counter(fam)
                };
                g.families.insert(name.to_string(), f.clone());
                f
            }
        };
        if matches!(family, GuestFamily::Histogram(_)) != histogram {
            return None;
        }
        g.names_of.entry(extension.to_string()).or_default().insert(name.to_string());
        Some(family)
    }

    /// `counter-add`; false when refused (and counted as dropped).
    pub fn guest_counter(&self, extension: &str, name: &str, value: u64) -> bool {
        match self.family(extension, name, false) {
            Some(GuestFamily::Counter(f)) => {
                f.get_or_create(&vec![("extension".to_string(), extension.to_string())]).inc_by(value);
                true
            }
            _ => {
                self.dropped.inc();
                false
            }
        }
    }

    /// `histogram-observe`; false when refused (and counted as dropped).
    pub fn guest_histogram(&self, extension: &str, name: &str, value: f64) -> bool {
        match self.family(extension, name, true) {
            Some(GuestFamily::Histogram(f)) if value.is_finite() => {
                f.get_or_create(&vec![("extension".to_string(), extension.to_string())]).observe(value);
                true
            }
            _ => {
                self.dropped.inc();
                false
            }
        }
    }

    /// The exposition, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_series_are_validated_bounded_and_rendered() {
        let m = Metrics::new();
        assert!(m.guest_counter("ext-a", "orders", 2));
        assert!(m.guest_counter("ext-a", "orders", 3));
        assert!(m.guest_histogram("ext-a", "latency_seconds", 0.02));
        assert!(!m.guest_counter("ext-a", "Bad-Name", 1), "invalid name");
        assert!(!m.guest_histogram("ext-a", "orders", 1.0), "a counter's name as a histogram");
        assert!(!m.guest_histogram("ext-a", "nan_values", f64::NAN));
        for i in 0..60 {
            m.guest_counter("ext-b", &format!("n{i}"), 1);
        }
        let text = m.render();
        assert!(text.contains("alga_runner_extension_orders_total{extension=\"ext-a\"} 5"), "{text}");
        assert!(text.contains("alga_runner_extension_latency_seconds_count{extension=\"ext-a\"} 1"), "{text}");
        assert!(text.contains("alga_runner_extension_n49_total{extension=\"ext-b\"} 1"));
        assert!(!text.contains("alga_runner_extension_n50_total"), "over 50 names per extension");
        assert!(text.contains("alga_runner_extension_metrics_dropped_total 13"), "{text}");
    }
}

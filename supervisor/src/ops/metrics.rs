//! Prometheus metrics (07-operations.md), served at `/metrics` in the OpenMetrics text format,
//! prefix `alga_runner_`: the runner's own series (executions, host calls, the pool, sandbox
//! spawns and violations, bundle verifications, quota rejections, HTTP requests), with label
//! values from fixed sets — tenant and extension ids are labels only when the operator opts in
//! (`metrics.per_extension`) — and the extensions' own series (the `metrics` host API):
//! `counter-add` and `histogram-observe` become `alga_runner_extension_<name>{extension="<id>"}`.
//! Guest names are validated and bounded — at most [`NAMES_PER_EXTENSION`] per extension and
//! [`NAMES_TOTAL`] over all — so a guest cannot grow the exposition without bound; what is
//! refused is counted in `alga_runner_extension_metrics_dropped_total`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The runner's own series.
pub struct Runner {
    pub executions: Family<Labels, Counter>,
    pub duration_seconds: HistogramFamily,
    pub memory_peak_bytes: HistogramFamily,
    pub fuel_consumed: HistogramFamily,
    pub egress_bytes: Family<Labels, Counter>,
    pub host_calls: Family<Labels, Counter>,
    pub pool_ready: Gauge,
    pub preloaded_ready: Gauge,
    /// Executions that found a preloaded sandbox (`result="hit"`), did not (`"miss"`), and
    /// preloads that failed (`"failed"`).
    pub preloads: Family<Labels, Counter>,
    pub spawn_duration_seconds: Histogram,
    pub preload_duration_seconds: Histogram,
    pub violations: Family<Labels, Counter>,
    pub bundle_verifications: Family<Labels, Counter>,
    pub quota_rejections: Family<Labels, Counter>,
    pub http_requests: Family<Labels, Counter>,
    /// Time to answer, by route pattern and status class (`2xx`, `4xx`, ...).
    pub http_duration_seconds: HistogramFamily,
    /// Executions holding a slot of this host now, and executions waiting for one.
    pub executions_in_flight: Gauge,
    pub executions_queued: Gauge,
    /// Compiled artifacts a load used, by `source`: `compiled` here, or `shared` (another host's,
    /// from the object store).
    pub artifact_loads: Family<Labels, Counter>,
    /// Bundles fetched from the object store, by `result` `ok`, `missing`, `corrupt` or `failed`.
    pub bundle_fetches: Family<Labels, Counter>,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    guest: Mutex<Guest>,
    dropped: Counter,
    pub runner: Runner,
    /// Adds the extension id to the execution series (`metrics.per_extension`).
    per_extension: std::sync::atomic::AtomicBool,
}

fn seconds_buckets() -> Histogram {
    // 0.5 ms to ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn bytes_buckets() -> Histogram {
    // 64 KiB to 4 GiB.
    Histogram::new(exponential_buckets(65_536.0, 2.0, 17))
}

fn fuel_buckets() -> Histogram {
    // 10^4 to 10^12.
    Histogram::new(exponential_buckets(10_000.0, 10.0, 9))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// What one finished execution adds to the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub outcome: &'a str,
    pub extension_id: &'a str,
    pub duration: std::time::Duration,
    pub memory_peak_bytes: u64,
    pub fuel: u64,
    pub egress_bytes: u64,
    /// The violation kind, when the sandbox was stopped for one.
    pub violation: Option<&'a str>,
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
    /// Counts one preload event: `hit`, `miss` or `failed`.
    pub fn preload(&self, result: &'static str) {
        self.runner.preloads.get_or_create(&labels(&[("result", result)])).inc();
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("alga_runner");
        let dropped = Counter::default();
        registry.register(
            "extension_metrics_dropped",
            "Extension metric updates refused (invalid name, kind clash, or over the name limits)",
            dropped.clone(),
        );
        let runner = Runner {
            executions: Family::default(),
            duration_seconds: Family::new_with_constructor(seconds_buckets as fn() -> Histogram),
            memory_peak_bytes: Family::new_with_constructor(bytes_buckets as fn() -> Histogram),
            fuel_consumed: Family::new_with_constructor(fuel_buckets as fn() -> Histogram),
            egress_bytes: Family::default(),
            host_calls: Family::default(),
            pool_ready: Gauge::default(),
            preloaded_ready: Gauge::default(),
            preloads: Family::default(),
            spawn_duration_seconds: seconds_buckets(),
            preload_duration_seconds: seconds_buckets(),
            violations: Family::default(),
            bundle_verifications: Family::default(),
            quota_rejections: Family::default(),
            artifact_loads: Family::default(),
            bundle_fetches: Family::default(),
            http_requests: Family::default(),
            http_duration_seconds: Family::new_with_constructor(seconds_buckets as fn() -> Histogram),
            executions_in_flight: Gauge::default(),
            executions_queued: Gauge::default(),
        };
        let r = &runner;
        registry.register("executions", "Finished executions by outcome", r.executions.clone());
        registry.register("execution_duration_seconds", "Wall-clock time of executions", r.duration_seconds.clone());
        registry.register(
            "execution_memory_peak_bytes",
            "Peak guest memory of executions",
            r.memory_peak_bytes.clone(),
        );
        registry.register("execution_fuel_consumed", "Fuel executions consumed", r.fuel_consumed.clone());
        registry.register("egress_bytes", "Bytes sent and received by http.fetch", r.egress_bytes.clone());
        registry.register("host_calls", "Host calls by interface and result", r.host_calls.clone());
        registry.register("sandbox_pool_ready", "Warm sandboxes ready now", r.pool_ready.clone());
        registry.register(
            "sandbox_preloaded_ready",
            "Sandboxes ready now with an artifact preloaded",
            r.preloaded_ready.clone(),
        );
        registry.register(
            "sandbox_preloads",
            "Executions that found a preloaded sandbox (hit) or not (miss), and failed preloads",
            r.preloads.clone(),
        );
        registry.register(
            "sandbox_spawn_duration_seconds",
            "Time to create, harden and warm up a generic sandbox",
            r.spawn_duration_seconds.clone(),
        );
        registry.register(
            "sandbox_preload_duration_seconds",
            "Time to create a preloaded sandbox: hardening, loading its artifact, instantiating it",
            r.preload_duration_seconds.clone(),
        );
        registry.register("sandbox_violations", "Sandboxes stopped for a violation, by kind", r.violations.clone());
        registry.register(
            "bundle_verifications",
            "Bundle signature and hash verifications by stage and result",
            r.bundle_verifications.clone(),
        );
        registry.register("quota_rejections", "Executions refused by a quota, by kind", r.quota_rejections.clone());
        registry.register("http_requests", "HTTP requests by route and status", r.http_requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route pattern and status class",
            r.http_duration_seconds.clone(),
        );
        registry.register(
            "executions_in_flight",
            "Executions holding a slot of this host now",
            r.executions_in_flight.clone(),
        );
        registry.register(
            "executions_queued",
            "Executions waiting for a slot of this host now (quotas.queue_timeout_ms)",
            r.executions_queued.clone(),
        );
        registry.register(
            "artifact_loads",
            "Compiled artifacts a load had to get: compiled here, or shared by another host",
            r.artifact_loads.clone(),
        );
        registry.register(
            "bundle_fetches",
            "Bundles fetched from the object store, by result",
            r.bundle_fetches.clone(),
        );
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&labels(&[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", crate::COMMIT),
                ("wasmtime", crate::WASMTIME_VERSION),
            ]))
            .set(1);
        registry.register("build_info", "The running build: version, commit, Wasmtime version (always 1)", build_info);
        // Every series of a fixed label set exists from the start, at 0, so an alert on a rate
        // sees the first event and a dashboard shows a zero rather than nothing.
        for outcome in alga_shared::outcome::Outcome::LABELS {
            let _ = r.executions.get_or_create(&labels(&[("outcome", outcome)]));
        }
        for kind in ["seccomp_violation", "protocol_violation", "crashed"] {
            let _ = r.violations.get_or_create(&labels(&[("kind", kind)]));
        }
        for kind in ["rate_limited", "quota_exceeded", "overloaded", "storage_unavailable"] {
            let _ = r.quota_rejections.get_or_create(&labels(&[("kind", kind)]));
        }
        for stage in ["publish", "install", "load"] {
            for result in ["ok", "failed"] {
                let _ = r.bundle_verifications.get_or_create(&labels(&[("stage", stage), ("result", result)]));
            }
        }
        for source in ["compiled", "shared"] {
            let _ = r.artifact_loads.get_or_create(&labels(&[("source", source)]));
        }
        for result in ["ok", "missing", "corrupt", "failed"] {
            let _ = r.bundle_fetches.get_or_create(&labels(&[("result", result)]));
        }
        for result in ["hit", "miss", "failed"] {
            let _ = r.preloads.get_or_create(&labels(&[("result", result)]));
        }
        Metrics {
            registry: Mutex::new(registry),
            guest: Mutex::default(),
            dropped,
            runner,
            per_extension: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Adds the extension id to the execution series from now on.
    pub fn set_per_extension(&self, on: bool) {
        self.per_extension.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records one finished execution.
    pub fn finished(&self, f: Finished<'_>) {
        let per_extension = self.per_extension.load(std::sync::atomic::Ordering::Relaxed);
        let mut outcome = labels(&[("outcome", f.outcome)]);
        let mut plain = Labels::new();
        if per_extension {
            outcome.push(("extension".into(), f.extension_id.into()));
            plain.push(("extension".into(), f.extension_id.into()));
        }
        let r = &self.runner;
        r.executions.get_or_create(&outcome).inc();
        r.duration_seconds.get_or_create(&plain).observe(f.duration.as_secs_f64());
        r.memory_peak_bytes.get_or_create(&plain).observe(f.memory_peak_bytes as f64);
        r.fuel_consumed.get_or_create(&plain).observe(f.fuel as f64);
        r.egress_bytes.get_or_create(&plain).inc_by(f.egress_bytes);
        if let Some(kind) = f.violation {
            r.violations.get_or_create(&labels(&[("kind", kind)])).inc();
        }
    }

    /// One host call: `api` is the interface, `result` `ok`, `denied` or `limit`.
    pub fn host_call(&self, api: &'static str, result: &'static str) {
        self.runner.host_calls.get_or_create(&labels(&[("api", api), ("result", result)])).inc();
    }

    /// One verification: `stage` `publish`, `install` or `load`; `result` `ok` or `failed`.
    pub fn verification(&self, stage: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.runner.bundle_verifications.get_or_create(&labels(&[("stage", stage), ("result", result)])).inc();
    }

    /// A compiled artifact a load had to get: `compiled` or `shared`.
    pub fn artifact_load(&self, source: &'static str) {
        self.runner.artifact_loads.get_or_create(&labels(&[("source", source)])).inc();
    }

    /// One bundle fetch from the object store: `ok`, `missing`, `corrupt` or `failed`.
    pub fn bundle_fetch(&self, result: &'static str) {
        self.runner.bundle_fetches.get_or_create(&labels(&[("result", result)])).inc();
    }

    /// One refused admission: `rate_limited`, `quota_exceeded` or `overloaded`.
    pub fn quota_rejection(&self, kind: &'static str) {
        self.runner.quota_rejections.get_or_create(&labels(&[("kind", kind)])).inc();
    }

    /// One HTTP request: `route` is the matched route pattern (a fixed set) or `unmatched`.
    pub fn http_request(&self, route: &str, status: u16, took: std::time::Duration) {
        let class = format!("{}xx", status / 100);
        let status = status.to_string();
        self.runner.http_requests.get_or_create(&labels(&[("route", route), ("status", &status)])).inc();
        self.runner
            .http_duration_seconds
            .get_or_create(&labels(&[("route", route), ("status_class", &class)]))
            .observe(took.as_secs_f64());
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
        // The process's own series, read now, before the end marker.
        let end = out.rfind("# EOF").unwrap_or(out.len());
        out.insert_str(end, &super::process::exposition());
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

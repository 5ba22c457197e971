//! `extension_quota_usage`: what every execution used, summed per (tenant, extension, window),
//! read back by the per-window quota check and by `GET /v1/tenants/{tenant}/quotas`.

use serde::Serialize;

use super::Service;
use super::quotas::Refused;
use crate::exec::executor::Report;
use crate::registry::{UsageRecord, now_ms};
use crate::service::problem::Problem;

/// The start (Unix seconds) of the window holding `now_s`.
pub fn window_start(now_s: u64, window_s: u64) -> u64 {
    now_s - now_s % window_s.max(1)
}

fn current_window(svc: &Service) -> (u64, u64) {
    let w = svc.config.quotas.usage_window_s.max(1);
    (window_start(now_ms() / 1000, w), w)
}

/// Adds one execution's usage (failures are logged: the answer does not wait on accounting).
pub async fn add(svc: &Service, tenant: &str, extension_id: &str, report: &Report, egress_bytes: u64) {
    let ms = report.duration.as_millis() as u64;
    let delta = UsageRecord {
        invocations: 1,
        cpu_ms: (report.sandbox_us / 1000).min(ms),
        memory_mib_ms: (report.memory_peak_bytes >> 20) * ms,
        fuel: report.fuel_consumed,
        egress_bytes,
    };
    let (start, _) = current_window(svc);
    if let Err(e) = svc.registry.add_usage(tenant, extension_id, start, &delta).await {
        tracing::error!(tenant, error = %crate::error_chain(&e), "recording quota usage failed");
    }
}

/// The tenant's per-window invocation cap, when it is reached.
pub async fn over_window_cap(svc: &Service, tenant: &str) -> Result<Option<Refused>, Problem> {
    let cap = svc.config.quotas.tenant_invocations_per_window;
    if cap == 0 {
        return Ok(None);
    }
    let (start, window) = current_window(svc);
    let used: u64 =
        svc.registry.usage(tenant, start).await?.iter().filter(|u| u.1 == start).map(|u| u.2.invocations).sum();
    if used < cap {
        return Ok(None);
    }
    let retry_after_s = (start + window).saturating_sub(now_ms() / 1000).max(1);
    Ok(Some(Refused::QuotaExceeded { retry_after_s }))
}

#[derive(Debug, Serialize)]
pub struct WindowView {
    pub extension_id: String,
    pub extension_name: String,
    pub window_start: u64,
    pub window_s: u64,
    #[serde(flatten)]
    pub usage: UsageRecord,
}

/// `GET /v1/tenants/{tenant}/quotas`: the limits, the live concurrency, and the usage windows
/// of the last day, newest first.
pub async fn view(svc: &Service, tenant: &str) -> Result<serde_json::Value, Problem> {
    super::installs::check_tenant(tenant)?;
    let (start, window) = current_window(svc);
    let since = start.saturating_sub(86_400);
    let mut windows: Vec<WindowView> = Vec::new();
    for (extension_id, window_start, usage) in svc.registry.usage(tenant, since).await? {
        let extension_name = svc.registry.extension(&extension_id).await?.map(|e| e.name).unwrap_or_default();
        windows.push(WindowView { extension_id, extension_name, window_start, window_s: window, usage });
    }
    windows.sort_by(|a, b| b.window_start.cmp(&a.window_start).then(a.extension_name.cmp(&b.extension_name)));
    Ok(serde_json::json!({
        "tenant": tenant,
        "limits": svc.quotas.config(),
        "in_flight": svc.quotas.live(tenant).await,
        "windows": windows,
    }))
}

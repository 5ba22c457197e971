//! Registry reads, yanking, and the execution log.

use serde::Serialize;

use super::Service;
use super::installs::{check_tenant, find_extension};
use crate::registry::{ExecutionQuery, ExecutionRecord, ExtensionRecord, VersionRecord, VersionState};
use crate::service::problem::Problem;

/// A page of results with the cursor of the next one.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

const MAX_PAGE: usize = 500;

fn page_size(limit: Option<usize>) -> usize {
    limit.unwrap_or(100).clamp(1, MAX_PAGE)
}

/// An extension with its versions.
#[derive(Debug, Serialize)]
pub struct ExtensionView {
    #[serde(flatten)]
    pub extension: ExtensionRecord,
    pub versions: Vec<VersionRecord>,
}

pub async fn extensions(
    svc: &Service,
    cursor: Option<&str>,
    limit: Option<usize>,
) -> Result<Page<ExtensionRecord>, Problem> {
    let limit = page_size(limit);
    let items = svc.registry.extensions(cursor, limit).await?;
    let next_cursor = (items.len() == limit).then(|| items.last().map(|e| e.name.clone())).flatten();
    Ok(Page { items, next_cursor })
}

pub async fn extension(svc: &Service, id_or_name: &str) -> Result<ExtensionView, Problem> {
    let extension = find_extension(svc, id_or_name).await?;
    let versions = svc.registry.versions(&extension.id).await?;
    Ok(ExtensionView { extension, versions })
}

pub async fn versions(
    svc: &Service,
    id_or_name: &str,
    cursor: Option<&str>,
    limit: Option<usize>,
) -> Result<Page<VersionRecord>, Problem> {
    let extension = find_extension(svc, id_or_name).await?;
    let all = svc.registry.versions(&extension.id).await?;
    let start = match cursor {
        Some(c) => all.iter().position(|v| v.version == c).map(|p| p + 1).ok_or_else(|| invalid_cursor(c))?,
        None => 0,
    };
    let limit = page_size(limit);
    let items: Vec<VersionRecord> = all.into_iter().skip(start).take(limit).collect();
    let next_cursor = (items.len() == limit).then(|| items.last().map(|v| v.version.clone())).flatten();
    Ok(Page { items, next_cursor })
}

/// Yanks a version: no new installs; existing installs keep running until upgraded.
pub async fn yank(svc: &Service, id_or_name: &str, version: &str) -> Result<VersionRecord, Problem> {
    let extension = find_extension(svc, id_or_name).await?;
    let mut v = svc.registry.version(&extension.id, version).await?.ok_or_else(|| {
        Problem::not_found("version_not_found", format!("{} has no version `{version}`", extension.name))
    })?;
    if v.state != VersionState::Yanked {
        v.state = VersionState::Yanked;
        svc.registry.put_version(&v).await?;
        tracing::info!(extension = %extension.name, version, "version yanked");
    }
    Ok(v)
}

pub async fn executions(
    svc: &Service,
    tenant: &str,
    extension: Option<&str>,
    status: Option<&str>,
    cursor: Option<String>,
    limit: Option<usize>,
) -> Result<Page<ExecutionRecord>, Problem> {
    check_tenant(tenant)?;
    if let Some(c) = &cursor
        && (c.is_empty() || hex::decode(c).is_err())
    {
        return Err(invalid_cursor(c));
    }
    let extension_id = match extension {
        Some(e) => Some(find_extension(svc, e).await?.id),
        None => None,
    };
    let query =
        ExecutionQuery { extension_id, outcome: status.map(str::to_string), after: cursor, limit: page_size(limit) };
    let (items, next_cursor) = svc.registry.executions(tenant, &query).await?;
    Ok(Page { items, next_cursor })
}

fn invalid_cursor(cursor: &str) -> Problem {
    Problem::bad_request(
        "invalid_cursor",
        format!("cursor `{cursor}` is not one this API gave out; pass the `next_cursor` of the previous page"),
    )
}

//! `GET|HEAD /ext-ui/{extension}/{content_hash}/{path...}` (02-http-api.md): an extension's UI
//! for an iframe, from its verified bundle's extracted `ui/` tree. This module decides what to
//! serve (or which error); the HTTP layer streams it.

use std::path::PathBuf;
use std::sync::Arc;

use alga_shared::bundle;

use super::Service;
use crate::registry::{BundleRecord, UiTrees};
use crate::service::problem::Problem;

/// One request, as the HTTP layer read it.
#[derive(Debug)]
pub struct UiRequest {
    pub extension: String,
    /// As it came in the path (a URL-encoded colon is accepted).
    pub content_hash: String,
    /// The raw (still URL-encoded) path after the hash, without its leading `/`.
    pub path: String,
    pub tenant: Option<String>,
    pub if_none_match: Option<String>,
    pub range: Option<String>,
}

/// What to send.
#[derive(Debug)]
pub enum UiAnswer {
    NotModified {
        etag: String,
    },
    File {
        file: PathBuf,
        len: u64,
        etag: String,
        mime: &'static str,
        html: bool,
        range: Option<(u64, u64)>,
    },
    /// `Range` that no byte of the file satisfies.
    RangeNotSatisfiable {
        len: u64,
    },
}

/// Content types by extension (02-http-api.md); anything else is `application/octet-stream`.
pub fn mime_of(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn invalid_path(detail: impl Into<String>) -> Problem {
    Problem::bad_request("invalid_path", detail)
}

/// Decodes `%XX` escapes once; a `%` not followed by two hex digits is refused rather than kept.
fn percent_decode(raw: &str) -> Result<Vec<u8>, Problem> {
    let well_formed =
        raw.split('%').skip(1).all(|rest| rest.len() >= 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    if !well_formed {
        return Err(invalid_path("a `%` not followed by two hex digits"));
    }
    Ok(percent_encoding::percent_decode_str(raw).collect())
}

/// The path rules: decoded once; no NUL or control characters, no backslash; repeated and
/// trailing slashes collapse; no `.`, `..` or hidden (`.`-prefixed) segment. Returns the
/// segments (empty: the UI's entry).
pub fn clean_path(raw: &str) -> Result<Vec<String>, Problem> {
    let decoded = String::from_utf8(percent_decode(raw)?).map_err(|_| invalid_path("the path is not UTF-8"))?;
    if decoded.chars().any(|c| c.is_control()) {
        return Err(invalid_path("control characters in the path"));
    }
    if decoded.contains('\\') {
        return Err(invalid_path("a backslash in the path"));
    }
    let segments: Vec<String> = decoded.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
    for s in &segments {
        if s == "." || s == ".." {
            return Err(invalid_path("`.` and `..` segments are not allowed"));
        }
        if s.starts_with('.') {
            return Err(invalid_path(format!("hidden segment `{s}`")));
        }
    }
    Ok(segments)
}

/// What a `Range` header asks of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// Not a single byte range (or absent): the whole file.
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    /// No byte of the file satisfies it (416).
    Unsatisfiable,
}

/// Parses a `Range` header against a file of `len` bytes, with RFC 9110's grammar
/// (`http-range-header`). A header that does not parse (another unit, a reversed range) or asks
/// for several ranges is ignored: the whole file is sent. A valid one no byte satisfies is 416.
pub fn parse_range(header: &str, len: u64) -> Range {
    let Ok(parsed) = http_range_header::parse_range_header(header.trim()) else { return Range::Whole };
    match parsed.validate(len).as_deref() {
        Ok([one]) => Range::Part(*one.start(), *one.end()),
        Ok(_) => Range::Whole,
        Err(_) => Range::Unsatisfiable,
    }
}

/// Every *not found* of `/ext-ui` answers this one body, whatever was missing (the extension,
/// the hash, the install for the tenant, the file): without credentials, a difference would tell
/// which tenants have which extension. The reason goes to the debug log only.
fn not_found(reason: impl std::fmt::Display) -> Problem {
    tracing::debug!(%reason, "ext-ui not found");
    Problem::not_found("not_found", "no such UI file: check the extension, the content hash, the tenant and the path")
}

/// Makes sure the bundle's UI tree is on disk and its ETags recorded (bundles published before
/// UIs were extracted, or a tree removed by hand): from the stored blob, checked against its hash.
async fn ensure_tree(svc: &Arc<Service>, record: &mut BundleRecord) -> Result<(), Problem> {
    if svc.ui_trees.exists(&record.content_hash) && !record.ui_etags.is_empty() {
        return Ok(());
    }
    // Reading, hashing and unpacking the bundle is blocking work: off the async workers.
    let (svc2, hash) = (svc.clone(), record.content_hash.clone());
    let bytes = svc.blobs.read(&hash, &svc.core.spawner.metrics).await.map_err(|e| e.problem())?;
    let etags = svc
        .blocking(move || -> Result<_, Problem> {
            if bundle::content_hash(&bytes) != hash {
                return Err(Problem::new(
                    502,
                    "bundle_verification_failed",
                    "the stored bundle no longer matches its hash",
                ));
            }
            let opened = bundle::open(&bytes, &svc2.archive_limits()).map_err(|e| Problem::internal(e.to_string()))?;
            svc2.ui_trees.extract(&hash, &opened.files).map_err(|e| Problem::internal(e.to_string()))?;
            Ok(UiTrees::etags(&opened.files))
        })
        .await??;
    if record.ui_etags.is_empty() {
        record.ui_etags = etags;
        svc.registry.put_bundle(record).await?;
    }
    Ok(())
}

/// Decides what `/ext-ui/...` answers.
pub async fn resolve(svc: &Arc<Service>, req: &UiRequest) -> Result<UiAnswer, Problem> {
    let raw = req.content_hash.replace("%3A", ":").replace("%3a", ":");
    let hash = raw
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|h| format!("sha256:{}", h.to_ascii_lowercase()))
        .ok_or_else(|| {
            Problem::bad_request(
                "invalid_content_hash",
                format!("`{}` is not a content hash; write sha256: and 64 hex digits", req.content_hash),
            )
        })?;
    let segments = clean_path(&req.path)?;
    let unknown = || not_found(format!("no UI {hash} of `{}` here", req.extension));
    if let Some(host) = &svc.host_registry {
        return resolve_host(svc, host, req, &hash, &segments).await;
    }

    let Some(ext) = svc.registry.extension(&req.extension).await? else { return Err(unknown()) };
    let Some(mut record) = svc.registry.bundle(&hash).await?.filter(|b| b.extension_id == ext.id) else {
        return Err(unknown());
    };
    if svc.config.ui.strict {
        let installed = match &req.tenant {
            Some(t) => svc.registry.install(t, &ext.id).await?.is_some_and(|i| i.content_hash == hash),
            None => svc.registry.installed_anywhere(&hash).await?,
        };
        if !installed {
            return Err(not_found(match &req.tenant {
                Some(t) => format!("{} {hash} is not installed for tenant {t}", ext.name),
                None => format!("{} {hash} is not installed for any tenant", ext.name),
            }));
        }
    }
    let version = svc
        .registry
        .version_by_id(&ext.id, &record.version_id)
        .await?
        .ok_or_else(|| Problem::internal(format!("no version record for {hash}")))?;
    let Some(ui) = version.ui else { return Err(not_found(format!("{} {} has no UI", ext.name, version.version))) };
    ensure_tree(svc, &mut record).await?;
    let what = format!("{} {}", ext.name, version.version);
    answer(svc, req, &hash, &ui.entry, &record.ui_etags, &segments, &what)
}

/// Host-registry mode: the tenant must be named (`?tenant=` or `x-tenant-id`) and the host's
/// registry must say the install is valid (cached briefly; no answer is "no"); the bundle is
/// fetched and verified like an execution's.
async fn resolve_host(
    svc: &Arc<Service>,
    host: &crate::service::host_registry::HostRegistry,
    req: &UiRequest,
    hash: &str,
    segments: &[String],
) -> Result<UiAnswer, Problem> {
    let Some(tenant) = req.tenant.as_deref() else {
        return Err(not_found(format!("no tenant named for {hash} (host mode needs ?tenant= or x-tenant-id)")));
    };
    if !host.install_valid(tenant, &req.extension, hash).await {
        return Err(not_found(format!(
            "the host's registry does not validate `{}` on {hash} for tenant {tenant}",
            req.extension
        )));
    }
    use crate::service::host_registry::HostRefusal;
    let (bundle, _) = host.bundle(svc, tenant, &req.extension, hash, false).await.map_err(|e| match e {
        HostRefusal::NotFound(m) => not_found(m),
        // Said in the log; the page gets the status and code only.
        e => Problem { detail: None, ..e.problem() },
    })?;
    let m = &bundle.manifest;
    let what = format!("{} {}", m.name, m.version);
    let Some(ui) = &m.ui else { return Err(not_found(format!("{what} has no UI"))) };
    answer(svc, req, hash, &ui.entry, &bundle.ui_etags, segments, &what)
}

/// The file of an extracted UI tree a request names (`entry` for the SPA fallback).
fn answer(
    svc: &Service,
    req: &UiRequest,
    hash: &str,
    entry: &str,
    etags: &std::collections::BTreeMap<String, String>,
    segments: &[String],
    what: &str,
) -> Result<UiAnswer, Problem> {
    // SPA fallback: the empty path, or a last segment without an extension, is the entry.
    let rel = match segments.last() {
        None => entry.to_string(),
        Some(last) if !last.contains('.') => entry.to_string(),
        Some(_) => segments.join("/"),
    };
    let Some(etag) = etags.get(&rel).cloned() else {
        return Err(not_found(format!("no file `{rel}` in the UI of {what}")));
    };
    if let Some(inm) = &req.if_none_match
        && inm.split(',').map(str::trim).any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(&etag))
    {
        return Ok(UiAnswer::NotModified { etag });
    }
    let file = svc.ui_trees.root(hash).join(&rel);
    let meta = std::fs::symlink_metadata(&file).map_err(|e| Problem::internal(format!("{}: {e}", file.display())))?;
    if !meta.is_file() {
        return Err(not_found(format!("`{rel}` is not a file")));
    }
    let len = meta.len();
    let max = svc.config.ui.max_file_mb << 20;
    if len > max {
        return Err(Problem::too_large(max).detail(format!("`{rel}` is {len} bytes, over ui.max_file_mb")));
    }
    let range = match req.range.as_deref().map_or(Range::Whole, |r| parse_range(r, len)) {
        Range::Whole => None,
        Range::Part(start, end) => Some((start, end)),
        Range::Unsatisfiable => return Ok(UiAnswer::RangeNotSatisfiable { len }),
    };
    let mime = mime_of(&rel);
    Ok(UiAnswer::File { file, len, etag, mime, html: mime.starts_with("text/html"), range })
}

/// The Content-Security-Policy of UI HTML.
pub fn content_security_policy(svc: &Service) -> String {
    match &svc.config.ui.content_security_policy {
        Some(p) => p.clone(),
        None => format!(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; \
             frame-ancestors {}",
            svc.config.ui.frame_ancestors.trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        assert_eq!(clean_path("").unwrap(), Vec::<String>::new());
        assert_eq!(clean_path("js//app.js/").unwrap(), ["js", "app.js"]);
        assert_eq!(clean_path("a%20b.txt").unwrap(), ["a b.txt"]);
        assert_eq!(clean_path("%252e%252e").unwrap(), ["%2e%2e"], "decoded once only");
        for bad in ["../x", "a/../b", "%2e%2e/x", ".env", "a/.git/config", "a%00b", "a%5cb", "a\\b", "%zz", "a%0ab"] {
            assert_eq!(clean_path(bad).unwrap_err().code, "invalid_path", "{bad}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Range::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Range::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Range::Part(90, 99));
        assert_eq!(parse_range("bytes=50-500", 100), Range::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Range::Whole, "a reversed range is invalid: ignored");
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Range::Whole, "several ranges: the whole file");
        assert_eq!(parse_range("items=0-1", 100), Range::Whole);
    }

    #[test]
    fn mime_table() {
        assert_eq!(mime_of("index.html"), "text/html; charset=utf-8");
        assert_eq!(mime_of("a/b.MJS"), "text/javascript; charset=utf-8");
        assert_eq!(mime_of("x.woff2"), "font/woff2");
        assert_eq!(mime_of("noext"), "application/octet-stream");
        assert_eq!(mime_of("x.exe"), "application/octet-stream");
    }
}

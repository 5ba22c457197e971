//! Bundles (`bundle.tar.zst`, 03-bundles.md): the content hash, a reader that enforces every
//! archive-safety rule before it keeps a byte, and the reproducible packer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::manifest::{self, Manifest, ManifestErrors, bundle_path_problem};

/// The manifest's path in a bundle.
pub const MANIFEST: &str = "manifest.json";

/// zstd level of `pack`: fixed, so the same tree always gives the same bytes.
const PACK_LEVEL: i32 = 12;

/// `sha256:` + lowercase hex of the SHA-256 of the bundle's bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Normalises a content hash given by a caller: `sha256:` prefix optional (in any case), 64 hex
/// digits in any case; the result is `sha256:` + lowercase hex.
pub fn normalize_hash(raw: &str) -> Option<String> {
    let hex = match raw.split_at_checked(7) {
        Some((prefix, rest)) if prefix.eq_ignore_ascii_case("sha256:") => rest,
        _ => raw,
    };
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Archive limits (each configurable by the operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Bytes of `bundle.tar.zst` (default 64 MiB).
    pub max_compressed: u64,
    /// Bytes of all files together once decompressed (default 256 MiB).
    pub max_uncompressed: u64,
    /// Entries (default 10 000).
    pub max_entries: usize,
    /// Bytes of one path (default 255).
    pub max_path: usize,
    /// Largest decompressed-to-compressed ratio (default 100).
    pub max_ratio: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_compressed: 64 << 20,
            max_uncompressed: 256 << 20,
            max_entries: 10_000,
            max_path: 255,
            max_ratio: 100,
        }
    }
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle of {size} bytes is over the limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Manifest(#[from] ManifestErrors),
}

/// A bundle that passed every archive rule and whose manifest is valid.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub content_hash: String,
    pub size: u64,
    pub manifest: Manifest,
    /// Every regular file, by path.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Bundle {
    /// The component (`dist/main.wasm` unless the manifest says otherwise).
    pub fn component(&self) -> Option<&[u8]> {
        self.files.get(&self.manifest.entry).map(Vec::as_slice)
    }

    /// Publisher-supplied precompiled code is stored but never loaded: it would be native code.
    pub fn ignored_precompiled(&self) -> Vec<&str> {
        self.files.keys().filter(|p| p.starts_with("precompiled/")).map(String::as_str).collect()
    }
}

/// Counts decompressed bytes and stops at a limit (the decompression-bomb guard).
struct Bounded<R> {
    inner: R,
    read: u64,
    limit: u64,
    why: &'static str,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(self.why));
        }
        Ok(n)
    }
}

fn invalid(msg: impl Into<String>) -> BundleError {
    BundleError::Invalid(msg.into())
}

/// Reads and checks a bundle. Nothing is written anywhere: the caller stores it only if this
/// returns `Ok`.
pub fn open(bytes: &[u8], limits: &ArchiveLimits) -> Result<Bundle, BundleError> {
    let size = bytes.len() as u64;
    if size > limits.max_compressed {
        return Err(BundleError::TooLarge { size, max: limits.max_compressed });
    }
    let (limit, why) = if size.saturating_mul(limits.max_ratio) < limits.max_uncompressed {
        (size.saturating_mul(limits.max_ratio), "decompression ratio above the limit (a decompression bomb?)")
    } else {
        (limits.max_uncompressed, "decompressed contents over the size limit")
    };
    let mut decoder =
        zstd::stream::read::Decoder::new(bytes).map_err(|e| invalid(format!("not a zstd stream: {e}")))?;
    // A frame may ask for a window of up to 2 GiB; 32 MiB covers every standard level (level 19
    // uses 8 MiB) and bounds what a tiny hostile frame can make us allocate.
    decoder.window_log_max(25).map_err(|e| invalid(format!("zstd decoder: {e}")))?;
    let mut archive = tar::Archive::new(Bounded { inner: decoder, read: 0, limit, why });
    let entries = archive.entries().map_err(|e| invalid(format!("not a tar archive: {e}")))?;

    let mut files = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (i, entry) in entries.enumerate() {
        if i >= limits.max_entries {
            return Err(invalid(format!("more than {} entries", limits.max_entries)));
        }
        let mut entry = entry.map_err(|e| invalid(format!("unreadable archive entry: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8(raw).map_err(|_| invalid("an entry's path is not UTF-8"))?;
        let kind = entry.header().entry_type();
        let name = path.strip_prefix("./").unwrap_or(&path).trim_end_matches('/').to_string();
        if kind.is_pax_global_extensions() {
            continue;
        }
        if path.len() > limits.max_path {
            return Err(invalid(format!("path `{path}` is longer than {} bytes", limits.max_path)));
        }
        if kind.is_dir() {
            if name.is_empty() || name == "." {
                continue;
            }
        } else if kind.is_symlink() {
            return Err(invalid(format!("`{path}` is a symbolic link: bundles contain regular files only")));
        } else if kind.is_hard_link() {
            return Err(invalid(format!("`{path}` is a hard link: bundles contain regular files only")));
        } else if !kind.is_file() {
            return Err(invalid(format!(
                "`{path}` is a device, FIFO or other special file: bundles contain regular files only"
            )));
        }
        if path.starts_with('/') {
            return Err(invalid(format!("`{path}` is an absolute path")));
        }
        if let Some(problem) = bundle_path_problem(&name) {
            return Err(invalid(format!("path `{path}` {problem}")));
        }
        if !seen.insert(name.clone()) {
            return Err(invalid(format!("`{name}` appears twice")));
        }
        if kind.is_dir() {
            continue;
        }
        let mut content = Vec::with_capacity(entry.size().min(1 << 20) as usize);
        entry.read_to_end(&mut content).map_err(|e| invalid(format!("reading `{name}`: {e}")))?;
        files.insert(name, content);
    }
    // A file that is also another entry's directory (`x` and `x/y`) has no place on a disk.
    for name in files.keys() {
        let below = format!("{name}/");
        if let Some(inner) = seen.range(below.clone()..).next().filter(|n| n.starts_with(&below)) {
            return Err(invalid(format!("`{name}` is a file and also the directory of `{inner}`")));
        }
    }
    let names: BTreeSet<String> = files.keys().cloned().collect();
    let manifest_bytes =
        files.get(MANIFEST).ok_or_else(|| invalid(format!("`{MANIFEST}` is missing from the bundle")))?;
    let manifest = manifest::parse(manifest_bytes, Some(&names))?;
    Ok(Bundle { content_hash: content_hash(bytes), size, manifest, files })
}

/// Why `pack` failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Manifest(#[from] ManifestErrors),
}

/// What `pack` produced.
#[derive(Debug)]
pub struct Packed {
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
    /// Hidden paths (`.`-prefixed) that were left out.
    pub skipped: Vec<String>,
    pub files: usize,
}

/// Packs a directory reproducibly: entries sorted by path, mtime 0, uid/gid 0, mode 0644 or
/// 0755, no owner names, a fixed zstd level. The same tree always gives the same bytes.
pub fn pack(dir: &Path) -> Result<Packed, PackError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| PackError::Io { path, source }
    };
    let mut files: Vec<(String, std::path::PathBuf, bool)> = Vec::new();
    let mut skipped = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            if entry.file_name().to_string_lossy().starts_with('.') {
                skipped.push(rel);
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                use std::os::unix::fs::PermissionsExt;
                files.push((rel, path, meta.permissions().mode() & 0o111 != 0));
            } else {
                return Err(PackError::Refused(format!(
                    "{rel}: not a regular file (symbolic links and special files cannot go into a bundle)"
                )));
            }
        }
    }
    files.sort();
    let names: BTreeSet<String> = files.iter().map(|(n, _, _)| n.clone()).collect();
    let manifest_path = dir.join(MANIFEST);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
    let manifest = manifest::parse(&manifest_bytes, Some(&names))?;

    let mut tar = tar::Builder::new(Vec::new());
    for (name, path, executable) in &files {
        if name.len() > ArchiveLimits::default().max_path {
            return Err(PackError::Refused(format!("{name}: path longer than 255 bytes")));
        }
        let data = std::fs::read(path).map_err(io_err(path))?;
        let mut header = tar::Header::new_ustar();
        header.set_path(name).map_err(io_err(path))?;
        header.set_size(data.len() as u64);
        header.set_mode(if *executable { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append(&header, data.as_slice()).map_err(io_err(path))?;
    }
    let tar_bytes = tar.into_inner().map_err(io_err(dir))?;
    let bytes = zstd::stream::encode_all(tar_bytes.as_slice(), PACK_LEVEL).map_err(io_err(dir))?;
    Ok(Packed { bytes, manifest, skipped, files: files.len() })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const MANIFEST_JSON: &str = r#"{"name":"com.example.t","publisher":"Example","version":"1.0.0",
        "runtime":"wasm32-wasi@1","api":{"endpoints":[{"method":"GET","path":"/","handler":"h"}]}}"#;

    /// Builds a tar.zst from raw entries: (path, type, data).
    pub fn raw_bundle(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            // Write the name bytes directly: the safe setters refuse `..` and absolute paths.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_size(data.len() as u64);
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            if kind.is_symlink() || kind.is_hard_link() {
                h.set_link_name("manifest.json").unwrap();
            }
            h.set_cksum();
            tar.append(&h, *data).unwrap();
        }
        zstd::stream::encode_all(tar.into_inner().unwrap().as_slice(), 3).unwrap()
    }

    fn good() -> Vec<(&'static str, tar::EntryType, &'static [u8])> {
        vec![
            ("manifest.json", tar::EntryType::Regular, MANIFEST_JSON.as_bytes()),
            ("dist/main.wasm", tar::EntryType::Regular, b"\0asm"),
        ]
    }

    fn refused(entries: &[(&str, tar::EntryType, &[u8])]) -> String {
        match open(&raw_bundle(entries), &ArchiveLimits::default()) {
            Err(BundleError::Invalid(m)) => m,
            other => panic!("expected an invalid bundle, got {other:?}"),
        }
    }

    #[test]
    fn a_good_bundle_opens() {
        let b = open(&raw_bundle(&good()), &ArchiveLimits::default()).unwrap();
        assert_eq!(b.manifest.name, "com.example.t");
        assert_eq!(b.component(), Some(&b"\0asm"[..]));
        assert!(b.content_hash.starts_with("sha256:") && b.content_hash.len() == 71);
    }

    #[test]
    fn unsafe_entries_are_refused_by_name() {
        let mut e = good();
        e.push(("../evil", tar::EntryType::Regular, b"x"));
        assert!(refused(&e).contains("`..`"));
        let mut e = good();
        e.push(("/etc/passwd", tar::EntryType::Regular, b"x"));
        assert!(refused(&e).contains("absolute"));
        let mut e = good();
        e.push(("ui/link", tar::EntryType::Symlink, b""));
        assert!(refused(&e).contains("symbolic link"));
        let mut e = good();
        e.push(("ui/hard", tar::EntryType::Link, b""));
        assert!(refused(&e).contains("hard link"));
        let mut e = good();
        e.push(("dev", tar::EntryType::Char, b""));
        assert!(refused(&e).contains("special file"));
        let mut e = good();
        e.push(("fifo", tar::EntryType::Fifo, b""));
        assert!(refused(&e).contains("special file"));
        let mut e = good();
        e.push(("ui/.secret", tar::EntryType::Regular, b"x"));
        assert!(refused(&e).contains("hidden"));
        let mut e = good();
        e.push(("dist/main.wasm", tar::EntryType::Regular, b"again"));
        assert!(refused(&e).contains("appears twice"));
        // A file that is also a directory, whichever comes first.
        for (first, second) in [("ui/x", "ui/x/y"), ("ui/x/y", "ui/x")] {
            let mut e = good();
            e.push((first, tar::EntryType::Regular, b"1"));
            e.push((second, tar::EntryType::Regular, b"2"));
            let msg = refused(&e);
            assert!(msg.contains("`ui/x` is a file and also the directory of `ui/x/y`"), "{msg}");
        }
        let mut e = good();
        e.push(("ui/x", tar::EntryType::Regular, b"1"));
        e.push(("ui/x-y", tar::EntryType::Regular, b"2"));
        e.push(("ui/x.d/z", tar::EntryType::Regular, b"3"));
        assert!(open(&raw_bundle(&e), &ArchiveLimits::default()).is_ok(), "siblings that share a prefix are fine");
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let zeros = vec![0u8; 8 << 20];
        let mut e = good();
        e.push(("ui/zeros.bin", tar::EntryType::Regular, &zeros));
        let msg = refused(&e);
        assert!(msg.contains("ratio"), "{msg}");
    }

    #[test]
    fn size_limits_apply() {
        let bytes = raw_bundle(&good());
        let limits = ArchiveLimits { max_compressed: 10, ..ArchiveLimits::default() };
        assert!(matches!(open(&bytes, &limits), Err(BundleError::TooLarge { .. })));
        let limits = ArchiveLimits { max_entries: 1, ..ArchiveLimits::default() };
        assert!(matches!(open(&bytes, &limits), Err(BundleError::Invalid(_))));
    }

    #[test]
    fn a_missing_manifest_or_component_is_named() {
        assert!(refused(&[("dist/main.wasm", tar::EntryType::Regular, b"\0asm")]).contains("manifest.json"));
        match open(&raw_bundle(&good()[..1]), &ArchiveLimits::default()) {
            Err(BundleError::Manifest(e)) => assert_eq!(e.0[0].path, "$.entry"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pack_is_reproducible_and_opens() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), MANIFEST_JSON).unwrap();
        std::fs::create_dir_all(dir.path().join("dist")).unwrap();
        std::fs::write(dir.path().join("dist/main.wasm"), b"\0asm").unwrap();
        std::fs::write(dir.path().join(".DS_Store"), b"junk").unwrap();
        let a = pack(dir.path()).unwrap();
        // Touch every file: new mtimes must not change the bytes.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(dir.path().join("dist/main.wasm"), b"\0asm").unwrap();
        let b = pack(dir.path()).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.skipped, vec![".DS_Store".to_string()]);
        let opened = open(&a.bytes, &ArchiveLimits::default()).unwrap();
        assert_eq!(opened.files.len(), 2);
    }

    #[test]
    fn hashes_normalise() {
        let hex = "a".repeat(64);
        assert_eq!(normalize_hash(&hex), Some(format!("sha256:{hex}")));
        assert_eq!(normalize_hash(&format!("sha256:{hex}")), Some(format!("sha256:{hex}")));
        assert_eq!(normalize_hash("sha256:ABC"), None);
        assert_eq!(normalize_hash(&"A".repeat(64)), Some(format!("sha256:{}", "a".repeat(64))));
        assert_eq!(normalize_hash(&format!("SHA256:{}", "B".repeat(64))), Some(format!("sha256:{}", "b".repeat(64))));
        assert_eq!(normalize_hash(&"g".repeat(64)), None);
    }
}

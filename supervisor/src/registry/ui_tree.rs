//! Extension UIs on disk: the `ui/` tree of each verified bundle, extracted once at publish into a
//! content-addressed, read-only directory (`<state>/ui/<hex of the bundle hash>/`), with a strong
//! ETag per file computed then (kept in the bundle record, never per request).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The part of a bundle served to iframes.
pub const UI_PREFIX: &str = "ui/";

#[derive(Debug, Clone)]
pub struct UiTrees {
    dir: PathBuf,
}

fn hex_of(content_hash: &str) -> &str {
    content_hash.strip_prefix("sha256:").unwrap_or(content_hash)
}

/// A strong ETag for a file's bytes.
pub fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", &hex::encode(Sha256::digest(bytes))[..32])
}

impl UiTrees {
    /// Opens `<dir>`, removing unfinished extractions a crash left.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
        for entry in fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = remove_tree(&entry.path());
            }
        }
        Ok(UiTrees { dir })
    }

    /// The directory of one bundle's UI.
    pub fn root(&self, content_hash: &str) -> PathBuf {
        self.dir.join(hex_of(content_hash))
    }

    pub fn exists(&self, content_hash: &str) -> bool {
        self.root(content_hash).is_dir()
    }

    /// Every extracted tree (hex names), for reconciliation with the registry.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.push(format!("sha256:{name}"));
            }
        }
        Ok(out)
    }

    /// The ETags of the `ui/` files of a bundle (paths relative to `ui/`).
    pub fn etags(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
        files
            .iter()
            .filter_map(|(p, bytes)| p.strip_prefix(UI_PREFIX).map(|rel| (rel.to_string(), etag_of(bytes))))
            .filter(|(rel, _)| !rel.is_empty())
            .collect()
    }

    /// Writes the `ui/` files of a verified bundle under its hash: into a temporary directory,
    /// files fsynced and read-only, then renamed into place. Already there: nothing to do.
    pub fn extract(&self, content_hash: &str, files: &BTreeMap<String, Vec<u8>>) -> io::Result<()> {
        let target = self.root(content_hash);
        if target.is_dir() {
            return Ok(());
        }
        let tmp = self.dir.join(format!(".tmp-{}-{}", hex_of(content_hash), uuid::Uuid::new_v4()));
        let written = (|| -> io::Result<()> {
            fs::create_dir(&tmp)?;
            for (path, bytes) in files {
                let Some(rel) = path.strip_prefix(UI_PREFIX).filter(|r| !r.is_empty()) else { continue };
                // Paths were checked when the bundle was opened: relative, no `..`, no links.
                let dest = tmp.join(rel);
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent)?;
                }
                let mut f = fs::File::create(&dest)?;
                f.write_all(bytes)?;
                f.sync_all()?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(0o400))?;
            }
            fs::rename(&tmp, &target)?;
            fs::File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = remove_tree(&tmp);
            if target.is_dir() {
                // A concurrent publish of the same bundle extracted it first: the same files.
                return Ok(());
            }
        }
        written.map_err(|e| io::Error::new(e.kind(), format!("extracting the UI of {content_hash}: {e}")))
    }

    /// Removes one bundle's tree (it has no record any more).
    pub fn remove(&self, content_hash: &str) -> io::Result<()> {
        remove_tree(&self.root(content_hash))
    }
}

/// Removes a tree whose files are read-only.
fn remove_tree(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    for entry in walk(path)? {
        let _ = fs::set_permissions(&entry, fs::Permissions::from_mode(0o700));
    }
    fs::remove_dir_all(path)
}

fn walk(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = vec![path.to_path_buf()];
    if path.is_dir() {
        for e in fs::read_dir(path)?.flatten() {
            out.extend(walk(&e.path())?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_only_the_ui_tree_read_only_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let trees = UiTrees::open(dir.path().join("ui")).unwrap();
        let files: BTreeMap<String, Vec<u8>> = [
            ("manifest.json", &b"{}"[..]),
            ("ui/index.html", b"<p>hi</p>"),
            ("ui/js/app.js", b"console.log(1)"),
            ("dist/main.wasm", b"\0asm"),
        ]
        .iter()
        .map(|(p, b)| (p.to_string(), b.to_vec()))
        .collect();
        let hash = "sha256:00ff";
        trees.extract(hash, &files).unwrap();
        let root = trees.root(hash);
        assert_eq!(fs::read(root.join("js/app.js")).unwrap(), b"console.log(1)");
        assert!(!root.join("manifest.json").exists() && !root.join("main.wasm").exists());
        let mode = fs::metadata(root.join("index.html")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o400, "read-only, and for the service user alone");
        let etags = UiTrees::etags(&files);
        assert_eq!(etags.keys().collect::<Vec<_>>(), ["index.html", "js/app.js"]);
        assert_eq!(etags["index.html"], etag_of(b"<p>hi</p>"));
        assert!(etags["index.html"].starts_with('"') && etags["index.html"].len() == 34);
        trees.extract(hash, &files).unwrap();
        assert_eq!(trees.list().unwrap(), ["sha256:00ff"]);
        trees.remove(hash).unwrap();
        assert!(trees.list().unwrap().is_empty());
    }

    #[test]
    fn concurrent_extractions_of_one_tree_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let trees = UiTrees::open(dir.path().join("ui")).unwrap();
        let files: BTreeMap<String, Vec<u8>> = (0..50).map(|i| (format!("ui/f{i}.js"), vec![b'x'; 4096])).collect();
        for round in 0..20 {
            let hash = format!("sha256:{round:04x}");
            let start = std::sync::Barrier::new(4);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            trees.extract(&hash, &files)
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().unwrap().unwrap();
                }
            });
            assert_eq!(fs::read_dir(trees.root(&hash)).unwrap().count(), 50);
        }
        // No temporary directory is left behind.
        assert_eq!(trees.list().unwrap().len(), 20);
        assert!(
            fs::read_dir(dir.path().join("ui"))
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
        );
    }
}

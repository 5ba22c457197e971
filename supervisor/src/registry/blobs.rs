//! The content-addressed blob store: one read-only file per bundle, named by its SHA-256.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Bundles under `<dir>/<hex>` (the service uses `<state>/bundles/sha256`).
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

fn hex_of(content_hash: &str) -> &str {
    content_hash.strip_prefix("sha256:").unwrap_or(content_hash)
}

impl BlobStore {
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
        let store = BlobStore { dir };
        store.remove_temporaries();
        Ok(store)
    }

    pub fn path(&self, content_hash: &str) -> PathBuf {
        self.dir.join(hex_of(content_hash))
    }

    pub fn exists(&self, content_hash: &str) -> bool {
        self.path(content_hash).is_file()
    }

    /// Stores `bytes` under `content_hash`: written to a temporary file, fsynced, made
    /// read-only, renamed into place, and the directory fsynced. A failure (a full disk) leaves
    /// nothing behind.
    pub fn put(&self, content_hash: &str, bytes: &[u8]) -> io::Result<()> {
        let target = self.path(content_hash);
        if target.is_file() {
            return Ok(());
        }
        // A name no concurrent writer (of the same bundle, too) shares, created exclusively.
        let (tmp, mut f) = crate::fsutil::create_unique(&self.dir, &format!(".tmp-{}", hex_of(content_hash)))?;
        let written = (|| {
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o400))?;
            fs::rename(&tmp, &target)?;
            fs::File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(|e| io::Error::new(e.kind(), format!("storing bundle {content_hash}: {e}")))
    }

    pub fn get(&self, content_hash: &str) -> io::Result<Vec<u8>> {
        let p = self.path(content_hash);
        fs::read(&p).map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
    }

    pub fn remove(&self, content_hash: &str) -> io::Result<()> {
        match fs::remove_file(self.path(content_hash)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Content hashes of every stored blob.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(format!("sha256:{name}"));
            }
        }
        Ok(out)
    }

    /// Removes temporary files a crash left behind.
    fn remove_temporaries(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_stored_read_only_and_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path().join("b")).unwrap();
        let hash = alga_shared::bundle::content_hash(b"x");
        store.put(&hash, b"x").unwrap();
        assert_eq!(store.get(&hash).unwrap(), b"x");
        let mode = fs::metadata(store.path(&hash)).unwrap().permissions().mode();
        assert_eq!(mode & 0o222, 0, "read-only");
        assert_eq!(store.list().unwrap(), vec![hash.clone()]);
        fs::write(store.dir().join(".tmp-dead-1"), b"half").unwrap();
        let reopened = BlobStore::open(tmp.path().join("b")).unwrap();
        assert_eq!(fs::read_dir(reopened.dir()).unwrap().count(), 1, "temporaries removed");
        store.remove(&hash).unwrap();
        assert!(!store.exists(&hash));
    }
}

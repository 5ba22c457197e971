//! The content-addressed blob store: one read-only file per bundle, named by its SHA-256.
//! With an object store behind it (`[blobs] backend = "s3"`) it is a cache bounded in bytes:
//! the least recently used bundles are removed beyond its budget — only those known to be in
//! the object store ([`BlobStore::release`]); the others are the only copy and stay.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bundles under `<dir>/<hex>` (the service uses `<state>/bundles/sha256`).
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    budget: Option<Arc<Budget>>,
}

/// What a bounded store holds: each blob's size and when it was last used.
#[derive(Debug)]
struct Budget {
    max_bytes: u64,
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    total: u64,
    clock: u64,
    entries: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    len: u64,
    used: u64,
    /// Known to be in the object store, so it may be evicted.
    evictable: bool,
}

fn hex_of(content_hash: &str) -> &str {
    content_hash.strip_prefix("sha256:").unwrap_or(content_hash)
}

impl BlobStore {
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
        let store = BlobStore { dir, budget: None };
        store.remove_temporaries();
        Ok(store)
    }

    /// A store that is a cache of at most `max_bytes`: the least recently used blobs (by
    /// modification time at start, by use afterwards) that are known to be in the object store
    /// are removed beyond it. What it finds at start is kept until [`BlobStore::release`]d.
    pub fn open_cache(dir: PathBuf, max_bytes: u64) -> io::Result<Self> {
        let mut store = Self::open(dir)?;
        let mut found = Vec::new();
        for hash in store.list()? {
            if let Ok(m) = fs::metadata(store.path(&hash)) {
                found.push((m.modified().ok(), m.len(), hash));
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, len, hash) in found {
            index.clock += 1;
            index.total += len;
            let used = index.clock;
            index.entries.insert(hash, Entry { len, used, evictable: false });
        }
        store.budget = Some(Arc::new(Budget { max_bytes, index: Mutex::new(index) }));
        Ok(store)
    }

    /// Bytes the blobs take (a bounded store's count; None for an unbounded one).
    pub fn cached_bytes(&self) -> Option<u64> {
        self.budget.as_ref().map(|b| b.lock().total)
    }

    /// Notes a use of `content_hash` (added with `len` bytes when new, not evictable yet).
    fn used(&self, content_hash: &str, len: u64) {
        if let Some(b) = &self.budget {
            let mut index = b.lock();
            index.clock += 1;
            let clock = index.clock;
            match index.entries.get_mut(content_hash) {
                Some(e) => e.used = clock,
                None => {
                    index.total += len;
                    index.entries.insert(content_hash.to_string(), Entry { len, used: clock, evictable: false });
                }
            }
        }
    }

    /// Marks `content_hash` as held by the object store too: from now on the cache may evict
    /// it. Then keeps the cache within its budget.
    pub fn release(&self, content_hash: &str) {
        if let Some(b) = &self.budget {
            if let Some(e) = b.lock().entries.get_mut(content_hash) {
                e.evictable = true;
            }
            self.evict(None);
        }
    }

    /// Removes the least recently used blobs until the store is within its budget; `keep` is
    /// never removed (the blob just stored: a single blob larger than the budget stays).
    fn evict(&self, keep: Option<&str>) {
        let Some(b) = &self.budget else { return };
        let mut index = b.lock();
        while index.total > b.max_bytes {
            let Some(oldest) = index
                .entries
                .iter()
                .filter(|(h, e)| e.evictable && Some(h.as_str()) != keep)
                .min_by_key(|(_, e)| e.used)
                .map(|(h, _)| h.clone())
            else {
                break;
            };
            if let Some(e) = index.entries.remove(&oldest) {
                index.total -= e.len;
            }
            match fs::remove_file(self.path(&oldest)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(content_hash = %oldest, error = %e, "evicting a cached bundle failed");
                }
                _ => tracing::debug!(content_hash = %oldest, "evicted a cached bundle"),
            }
        }
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
            self.used(content_hash, bytes.len() as u64);
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
        written.map_err(|e| io::Error::new(e.kind(), format!("storing bundle {content_hash}: {e}")))?;
        self.used(content_hash, bytes.len() as u64);
        self.evict(Some(content_hash));
        Ok(())
    }

    pub fn get(&self, content_hash: &str) -> io::Result<Vec<u8>> {
        let p = self.path(content_hash);
        let bytes = fs::read(&p).map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))?;
        self.used(content_hash, bytes.len() as u64);
        Ok(bytes)
    }

    pub fn remove(&self, content_hash: &str) -> io::Result<()> {
        if let Some(b) = &self.budget {
            let mut index = b.lock();
            if let Some(e) = index.entries.remove(content_hash) {
                index.total -= e.len;
            }
        }
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

impl Budget {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
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

    #[test]
    fn a_bounded_store_evicts_the_least_recently_used() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open_cache(tmp.path().join("b"), 25).unwrap();
        let blob = |c: u8| (alga_shared::bundle::content_hash(&[c; 10]), vec![c; 10]);
        let [a, b, c, d, e] = [1, 2, 3, 4, 5].map(blob);
        for (hash, bytes) in [&a, &b] {
            store.put(hash, bytes).unwrap();
            store.release(hash);
        }
        store.get(&a.0).unwrap(); // a is now more recent than b
        store.put(&c.0, &c.1).unwrap();
        assert!(store.exists(&a.0) && store.exists(&c.0), "the recently used stay");
        assert!(!store.exists(&b.0), "the least recently used is evicted");
        assert_eq!(store.cached_bytes(), Some(20));

        // Blobs not known to be shared are the only copy: never evicted, even past the budget.
        store.put(&d.0, &d.1).unwrap();
        assert!(!store.exists(&a.0) && store.exists(&c.0) && store.exists(&d.0));
        store.put(&e.0, &e.1).unwrap();
        assert_eq!(store.cached_bytes(), Some(30), "c, d and e are not shared yet");
        store.release(&c.0);
        assert!(!store.exists(&c.0));
        assert_eq!(store.cached_bytes(), Some(20));

        // A restart counts what is on disk; what it found stays until known to be shared.
        let smaller = BlobStore::open_cache(tmp.path().join("b"), 15).unwrap();
        assert_eq!(smaller.cached_bytes(), Some(20));
        smaller.release(&d.0);
        assert_eq!(smaller.cached_bytes(), Some(10));
        assert_eq!(smaller.list().unwrap(), vec![e.0.clone()]);
    }
}

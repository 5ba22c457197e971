//! Compiled artifacts: produced by a compile sandbox, cached on disk by (SHA-256 of the wasm,
//! engine fingerprint) with their own SHA-256 recorded, checked before use, and handed to
//! sandboxes as sealed memfds.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use sha2::{Digest, Sha256};

/// A verified compiled artifact in a sealed memfd.
#[derive(Debug)]
pub struct Artifact {
    /// SHA-256 (hex) of the component it was compiled from.
    pub wasm_sha256: String,
    /// SHA-256 (hex) of the artifact bytes.
    pub sha256: String,
    pub len: u64,
    memfd: OwnedFd,
}

impl Artifact {
    /// The sealed memfd: nothing can write, grow or shrink it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// A copy of the artifact's bytes (to share it with other hosts).
    pub fn read(&self) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = fs::File::from(self.memfd.try_clone()?);
        let mut bytes = vec![0; self.len as usize];
        file.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Copies `bytes` into a new memfd and seals it against writes, growth, shrinking and further
/// seals.
pub fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = fs::File::from(fd);
    file.write_all(bytes)?;
    let fd = OwnedFd::from(file);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// Why an artifact could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The component is not a component of the world; the message says what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The runner failed (compile sandbox, disk, ...).
    #[error("{0}")]
    Failed(String),
}

/// The on-disk and in-memory cache of artifacts for one engine fingerprint.
#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    fingerprint: String,
    loaded: Mutex<HashMap<String, Arc<Artifact>>>,
}

impl ArtifactCache {
    pub fn new(dir: PathBuf, fingerprint: String) -> Self {
        ArtifactCache { dir, fingerprint, loaded: Mutex::new(HashMap::new()) }
    }

    fn paths(&self, wasm_sha256: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.join(wasm_sha256);
        (dir.join(format!("{}.cwasm", self.fingerprint)), dir.join(format!("{}.sha256", self.fingerprint)))
    }

    /// The artifact for `wasm_sha256` if it is in memory or on disk with a matching recorded hash.
    /// A file whose bytes do not match its recorded hash is removed (and compiled again later).
    pub fn lookup(&self, wasm_sha256: &str) -> io::Result<Option<Arc<Artifact>>> {
        if let Some(a) = self.lock().get(wasm_sha256) {
            return Ok(Some(a.clone()));
        }
        let (artifact_path, hash_path) = self.paths(wasm_sha256);
        let (Ok(bytes), Ok(recorded)) = (fs::read(&artifact_path), fs::read_to_string(&hash_path)) else {
            return Ok(None);
        };
        let actual = sha256_hex(&bytes);
        if actual != recorded.trim() {
            tracing::warn!(
                path = %artifact_path.display(),
                "cached artifact does not match its recorded SHA-256; discarding it"
            );
            let _ = fs::remove_file(&artifact_path);
            let _ = fs::remove_file(&hash_path);
            return Ok(None);
        }
        Ok(Some(self.keep(wasm_sha256, actual, &bytes)?))
    }

    /// Stores freshly compiled bytes (file written to a temporary name, fsynced, renamed; the
    /// hash recorded the same way) and returns the sealed artifact.
    pub fn store(&self, wasm_sha256: &str, bytes: &[u8]) -> io::Result<Arc<Artifact>> {
        let sha = sha256_hex(bytes);
        let (artifact_path, hash_path) = self.paths(wasm_sha256);
        if let Some(dir) = artifact_path.parent() {
            fs::create_dir_all(dir)?;
        }
        write_atomic(&artifact_path, bytes)?;
        write_atomic(&hash_path, format!("{sha}\n").as_bytes())?;
        self.keep(wasm_sha256, sha, bytes)
    }

    fn keep(&self, wasm_sha256: &str, sha: String, bytes: &[u8]) -> io::Result<Arc<Artifact>> {
        let memfd = sealed_memfd("alga-artifact", bytes)?;
        let artifact =
            Arc::new(Artifact { wasm_sha256: wasm_sha256.to_string(), sha256: sha, len: bytes.len() as u64, memfd });
        self.lock().insert(wasm_sha256.to_string(), artifact.clone());
        Ok(artifact)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Artifact>>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes `bytes` to `path` through a temporary file that is fsynced and renamed, so a reader
/// never sees a partial file; the directory is fsynced too.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = format!(".{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    let (tmp, mut f) = crate::fsutil::create_unique(dir, &stem)?;
    let written = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_cache_file_is_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(tmp.path().to_path_buf(), "fp".into());
        let a = cache.store("w1", b"artifact bytes").unwrap();
        assert_eq!(a.sha256, sha256_hex(b"artifact bytes"));

        let fresh = ArtifactCache::new(tmp.path().to_path_buf(), "fp".into());
        assert!(fresh.lookup("w1").unwrap().is_some(), "intact file is used");

        fs::write(tmp.path().join("w1/fp.cwasm"), b"artifact bytez").unwrap();
        let fresh = ArtifactCache::new(tmp.path().to_path_buf(), "fp".into());
        assert!(fresh.lookup("w1").unwrap().is_none(), "tampered file is refused");
        assert!(!tmp.path().join("w1/fp.cwasm").exists(), "and removed");
    }

    #[test]
    fn memfds_are_sealed() {
        let fd = sealed_memfd("t", b"abc").unwrap();
        let mut f = fs::File::from(fd);
        assert!(f.write_all(b"x").is_err(), "writes are refused");
        assert!(f.set_len(1).is_err(), "shrinking is refused");
    }
}

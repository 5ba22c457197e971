//! Small file helpers shared by the artifact cache and the blob store.

use std::path::{Path, PathBuf};
use std::{fs, io};

/// Creates `<dir>/<stem>-<pid>-<n>` exclusively (`O_EXCL`): a temporary file no other writer,
/// in this process or another, shares.
pub fn create_unique(dir: &Path, stem: &str) -> io::Result<(PathBuf, fs::File)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{stem}-{}-{n}", std::process::id()));
        match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

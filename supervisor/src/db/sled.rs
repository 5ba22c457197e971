//! The embedded database: one sled directory shared by the registry, the guests' storage and the
//! install secrets (one flush makes all three durable).
//!
//! It can be opened again in place. sled stays failed after one I/O error (a write or a flush on
//! a full disk sets its global error, and every later operation returns it), so recovering
//! without a restart means dropping every handle of the failed instance and opening the
//! directory again: what was flushed is there, what was not was never acknowledged. Callers
//! therefore never keep a `sled::Tree`; they ask for one per operation ([`SledDb::tree`]).

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a reopen waits for the failed instance's last users to let go of its lock file.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct SledDb {
    /// `None`: a temporary database (gone with the process; never reopened).
    path: Option<PathBuf>,
    current: RwLock<Option<sled::Db>>,
    /// How many times it was opened again: a write made before a reopen and flushed after it
    /// was lost with the failed instance ([`SledDb::flush_since`]).
    generation: AtomicU64,
}

fn config(path: &Path) -> sled::Config {
    sled::Config::new().path(path).mode(sled::Mode::HighThroughput)
}

fn closed() -> sled::Error {
    sled::Error::Io(std::io::Error::other("the database is being opened again after a failure"))
}

impl SledDb {
    /// Opens (or creates) the database directory `path`.
    pub fn open(path: &Path) -> Result<SledDb, sled::Error> {
        let db = config(path).open()?;
        Ok(SledDb { path: Some(path.to_path_buf()), current: RwLock::new(Some(db)), generation: AtomicU64::new(0) })
    }

    /// A private database removed when it is dropped (one-off runs, tests).
    pub fn temporary() -> Result<SledDb, sled::Error> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(SledDb { path: None, current: RwLock::new(Some(db)), generation: AtomicU64::new(0) })
    }

    /// The open instance.
    pub fn db(&self) -> Result<sled::Db, sled::Error> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(closed)
    }

    /// A tree of the open instance (for one operation: drop it when done).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, sled::Error> {
        self.db()?.open_tree(name)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.db()?.flush().map(drop)
    }

    /// Which instance writes go to now: take it before a write, and flush with
    /// [`SledDb::flush_since`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Makes every write so far durable, and fails when the database was opened again since
    /// `generation` (a write made before that went with the failed instance).
    pub fn flush_since(&self, generation: u64) -> Result<(), sled::Error> {
        self.flush()?;
        if self.generation() != generation {
            return Err(sled::Error::Io(std::io::Error::other(
                "the database was opened again after a failure since this write, which was lost with it",
            )));
        }
        Ok(())
    }

    /// Bytes free for this database on its filesystem (`None` for a temporary database).
    pub fn free_bytes(&self) -> Option<u64> {
        let path = self.path.as_ref()?;
        let st = nix::sys::statvfs::statvfs(path.as_path()).ok()?;
        Some(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    /// Drops the open instance and opens the directory again. Operations meanwhile fail (they
    /// would fail on the broken instance too); a failed attempt leaves the database closed until
    /// the next one.
    pub fn reopen(&self) -> Result<(), sled::Error> {
        let Some(path) = &self.path else {
            return Err(sled::Error::Unsupported("a temporary database cannot be opened again".into()));
        };
        // Taken out under the lock (callers now fail at once instead of waiting), then dropped and
        // opened again outside it: sled's recovery takes a while, and no caller waits on it.
        self.generation.fetch_add(1, Ordering::SeqCst);
        let old = self.current.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(old);
        // Dropping the last handle closes the files (and the lock on them); handles that
        // operations under way still hold go when those finish, so the open is retried until then.
        let started = Instant::now();
        let db = loop {
            match config(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if started.elapsed() > RELEASE_WAIT {
                        return Err(sled::Error::Io(e));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_keeps_what_was_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledDb::open(dir.path()).unwrap();
        db.tree("t").unwrap().insert("k", "v").unwrap();
        db.flush().unwrap();
        // A tree a caller still holds while the reopen starts (it lets go a moment later).
        let held = db.tree("t").unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        db.reopen().unwrap();
        holder.join().unwrap();
        assert_eq!(db.tree("t").unwrap().get("k").unwrap().as_deref(), Some(&b"v"[..]));
        db.tree("t").unwrap().insert("k2", "v2").unwrap();
        db.flush().unwrap();
    }

    #[test]
    fn a_write_made_before_a_reopen_is_not_reported_durable_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledDb::open(dir.path()).unwrap();
        let before = db.generation();
        db.tree("t").unwrap().insert("k", "v").unwrap();
        db.reopen().unwrap();
        assert!(db.flush_since(before).is_err(), "the write went with the instance it was made on");
        assert!(db.flush_since(db.generation()).is_ok());
    }

    #[test]
    fn a_temporary_database_is_not_reopened() {
        let db = SledDb::temporary().unwrap();
        assert!(db.reopen().is_err());
        assert!(db.tree("t").is_ok(), "still open");
    }
}

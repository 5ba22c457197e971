//! Group commit: writers that must be durable before they answer wait for a flush that started
//! after their write. Concurrent writers share one flush (one fsync).
//!
//! A failed flush (a full disk) makes the store unhealthy: the writers it covered hear of it,
//! and a recovery task asks the store to recover ([`RegistryStore::recover`]) every second until
//! it can write durably again, which makes it healthy again without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::registry::RegistryStore;

pub struct GroupCommit {
    /// Writes announced so far (a write is counted after it is in the database).
    written: AtomicU64,
    /// The highest write number a finished flush covers, and that flush's error, if it failed.
    flushed: watch::Sender<(u64, Option<Arc<str>>)>,
    kick: Notify,
    /// Whether a recovery task runs.
    recovering: AtomicBool,
    /// Recoveries begun: a write made before one and flushed after it may have gone with the
    /// failed instance, so its writer is told it failed.
    generation: AtomicU64,
    /// The store, once the flusher runs (for a recovery a failed write starts).
    store: std::sync::OnceLock<std::sync::Weak<dyn RegistryStore>>,
}

/// How often a failed store is asked to recover.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            written: AtomicU64::new(0),
            flushed: watch::Sender::new((0, None)),
            kick: Notify::new(),
            recovering: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            store: std::sync::OnceLock::new(),
        }
    }
}

impl GroupCommit {
    /// Take it before a write, then wait with [`GroupCommit::durable`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Waits until a write already made to the database (after [`GroupCommit::generation`] said
    /// `since`) is on disk; `Err` when the flush that covered it failed, or when the database was
    /// opened again since.
    pub async fn durable(&self, since: u64) -> Result<(), Arc<str>> {
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.flushed.subscribe();
        self.kick.notify_one();
        // The sender lives as long as `self`; an error cannot happen while we borrow it.
        let flushed = match rx.wait_for(|(done, _)| *done >= mine).await {
            Ok(state) => state.1.clone().map_or(Ok(()), Err),
            Err(_) => Err("the flusher stopped".into()),
        };
        if flushed.is_ok() && self.generation() != since {
            return Err("the database was opened again after a failure since this write".into());
        }
        flushed
    }

    /// Whether the last flush succeeded (true before the first): a failed one means writes are
    /// not reaching the disk, and the service is not ready until a later flush succeeds.
    pub fn healthy(&self) -> bool {
        self.flushed.borrow().1.is_none()
    }

    /// The flusher: one flush per wake-up, covering every write announced before it started.
    /// Runs until the store is dropped.
    pub async fn run(self: Arc<Self>, registry: std::sync::Weak<dyn RegistryStore>) {
        let _ = self.store.set(registry.clone());
        loop {
            self.kick.notified().await;
            let covered = self.written.load(Ordering::SeqCst);
            let Some(store) = registry.upgrade() else { return };
            let error: Option<Arc<str>> = match store.flush().await {
                Ok(()) => None,
                Err(e) => {
                    let e = crate::error_chain(&e);
                    tracing::error!(error = %e, "flushing the database failed");
                    Some(e.into())
                }
            };
            // Writers are released even when the flush failed, with the error: each decides
            // (an execution's answer does not hang on its log record; a storage write fails).
            let failed = error.is_some();
            self.flushed.send_modify(|(done, last)| {
                *done = (*done).max(covered);
                *last = error;
            });
            if failed {
                self.start_recovery();
            }
        }
    }

    /// A write failed before its flush (the database refused it: sled after an I/O error, a
    /// full disk): not healthy until the store recovers, as after a failed flush.
    pub fn write_failed(self: &Arc<Self>, error: &str) {
        self.flushed.send_modify(|(_, last)| *last = Some(error.into()));
        self.start_recovery();
    }

    fn start_recovery(self: &Arc<Self>) {
        if let Some(store) = self.store.get()
            && !self.recovering.swap(true, Ordering::SeqCst)
        {
            tokio::spawn(self.clone().recover(store.clone()));
        }
    }

    /// Asks the store to recover until it can write durably again. Writers meanwhile flush as
    /// usual (and hear of the failure at once).
    async fn recover(self: Arc<Self>, registry: std::sync::Weak<dyn RegistryStore>) {
        let started = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RECOVERY_INTERVAL).await;
            let Some(store) = registry.upgrade() else { return };
            self.generation.fetch_add(1, Ordering::SeqCst);
            match store.recover().await {
                Ok(()) => {
                    tracing::info!(
                        after_s = started.elapsed().as_secs(),
                        "the database recovered: writes are durable again"
                    );
                    self.recovering.store(false, Ordering::SeqCst);
                    self.flushed.send_modify(|(_, last)| *last = None);
                    return;
                }
                Err(e) => tracing::debug!(error = %crate::error_chain(&e), "the database cannot write yet"),
            }
        }
    }
}

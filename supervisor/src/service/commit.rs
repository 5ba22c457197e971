//! Group commit: writers that must be durable before they answer wait for a flush that started
//! after their write. Concurrent writers share one flush (one fsync).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};

use crate::registry::RegistryStore;

pub struct GroupCommit {
    /// Writes announced so far (a write is counted after it is in the database).
    written: AtomicU64,
    /// The highest write number a finished flush covers.
    flushed: watch::Sender<u64>,
    kick: Notify,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit { written: AtomicU64::new(0), flushed: watch::Sender::new(0), kick: Notify::new() }
    }
}

impl GroupCommit {
    /// Waits until a write already made to the database is on disk.
    pub async fn durable(&self) {
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.flushed.subscribe();
        self.kick.notify_one();
        // The sender lives as long as `self`; an error cannot happen while we borrow it.
        let _ = rx.wait_for(|&done| done >= mine).await;
    }

    /// The flusher: one flush per wake-up, covering every write announced before it started.
    /// Runs until the store is dropped.
    pub async fn run(self: Arc<Self>, registry: std::sync::Weak<dyn RegistryStore>, rt: tokio::runtime::Handle) {
        loop {
            self.kick.notified().await;
            let covered = self.written.load(Ordering::SeqCst);
            let Some(store) = registry.upgrade() else { return };
            match rt.spawn_blocking(move || store.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %crate::error_chain(&e), "flushing the database failed"),
                Err(e) => tracing::error!(error = %e, "the flush task failed"),
            }
            // Writers are released even when the flush failed (the error is logged): an
            // execution's answer must not hang on its log record.
            self.flushed.send_modify(|done| *done = (*done).max(covered));
        }
    }
}

//! The warm pool: hardened sandboxes waiting for a job, refilled in the background, so the
//! request path only hands work over (05-sandbox.md, "Warm pool").

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use alga_shared::protocol::SandboxMode;
use tokio::sync::Notify;

use crate::exec::sandbox::{Sandbox, SpawnError, Spawner};

pub struct Pool {
    spawner: Arc<Spawner>,
    ready: Mutex<VecDeque<Sandbox>>,
    target: usize,
    wake: Notify,
    stopped: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    spawn_failures: AtomicU64,
}

/// Counters of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub ready: usize,
    pub target: usize,
    pub hits: u64,
    pub misses: u64,
    pub spawn_failures: u64,
}

impl Pool {
    /// A pool of `target` sandboxes made by `spawner` (filled once [`Pool::start_refill`] runs).
    pub fn new(spawner: Arc<Spawner>, target: usize) -> Self {
        Pool {
            spawner,
            ready: Mutex::new(VecDeque::new()),
            target,
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            spawn_failures: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sandbox>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            ready: self.lock().len(),
            target: self.target,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            spawn_failures: self.spawn_failures.load(Ordering::Relaxed),
        }
    }

    /// A ready execution sandbox: from the pool when one is there, else created now.
    pub async fn take(&self) -> Result<Sandbox, SpawnError> {
        let pool = self;
        let spawner = &self.spawner;
        loop {
            let next = pool.lock().pop_front();
            let Some(mut sandbox) = next else { break };
            if sandbox.has_exited() || sandbox.ready_at.elapsed() > spawner.settings.pool_max_idle {
                sandbox.kill(spawner);
                sandbox.reap(spawner);
                continue;
            }
            pool.hits.fetch_add(1, Ordering::Relaxed);
            pool.wake.notify_one();
            return Ok(sandbox);
        }
        if pool.target > 0 {
            pool.misses.fetch_add(1, Ordering::Relaxed);
            pool.wake.notify_one();
        }
        Sandbox::create(spawner, SandboxMode::Execute).await
    }

    /// Starts the background task that keeps `target` sandboxes ready.
    pub fn start_refill(self: &Arc<Self>) {
        if self.target == 0 {
            return;
        }
        self.spawner.handle.spawn(refill(Arc::downgrade(self)));
        self.wake.notify_one();
    }

    /// Stops refilling and kills the idle sandboxes.
    pub fn stop(&self) {
        let pool = self;
        pool.stopped.store(true, Ordering::Relaxed);
        pool.wake.notify_one();
        let idle: Vec<Sandbox> = pool.lock().drain(..).collect();
        for sandbox in idle {
            sandbox.kill(&self.spawner);
            sandbox.reap(&self.spawner);
        }
    }
}

async fn refill(pool: Weak<Pool>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(c) = pool.upgrade() else { return };
        if c.stopped.load(Ordering::Relaxed) {
            return;
        }
        let missing = c.target.saturating_sub(c.lock().len());
        if missing == 0 {
            // Wake on demand (a take, or stop), or now and then to retire sandboxes idle for too long.
            let idle_check = c.spawner.settings.pool_max_idle / 2;
            let _ = tokio::time::timeout(idle_check, c.wake.notified()).await;
            retire_idle(&c);
            continue;
        }
        match Sandbox::create(&c.spawner, SandboxMode::Execute).await {
            Ok(sandbox) => {
                backoff = Duration::from_millis(50);
                if c.stopped.load(Ordering::Relaxed) {
                    sandbox.kill(&c.spawner);
                    sandbox.reap(&c.spawner);
                    return;
                }
                c.lock().push_back(sandbox);
            }
            Err(e) => {
                c.spawn_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "warm pool could not create a sandbox");
                drop(c);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn retire_idle(pool: &Pool) {
    let stale: Vec<Sandbox> = {
        let mut ready = pool.lock();
        let (keep, stale): (VecDeque<Sandbox>, VecDeque<Sandbox>) =
            ready.drain(..).partition(|s| s.ready_at.elapsed() <= pool.spawner.settings.pool_max_idle);
        *ready = keep;
        stale.into()
    };
    for mut s in stale {
        let _ = s.has_exited();
        s.kill(&pool.spawner);
        s.reap(&pool.spawner);
    }
}

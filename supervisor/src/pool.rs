//! The warm pool: hardened sandboxes waiting for a job, refilled in the background, so the
//! request path only hands work over (05-sandbox.md, "Warm pool").

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use alga_shared::protocol::SandboxMode;
use tokio::sync::Notify;

use crate::core::Core;
use crate::sandbox::{Sandbox, SpawnError};

pub struct Pool {
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
    pub fn new(target: usize) -> Self {
        Pool {
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
    pub async fn take(core: &Arc<Core>) -> Result<Sandbox, SpawnError> {
        let pool = &core.pool;
        loop {
            let next = pool.lock().pop_front();
            let Some(mut sandbox) = next else { break };
            if sandbox.has_exited() || sandbox.ready_at.elapsed() > core.settings.pool_max_idle {
                sandbox.kill(core);
                sandbox.reap(core);
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
        Sandbox::create(core, SandboxMode::Execute).await
    }

    /// Starts the background task that keeps `target` sandboxes ready.
    pub fn start_refill(core: &Arc<Core>) {
        if core.pool.target == 0 {
            return;
        }
        let weak = Arc::downgrade(core);
        core.handle.spawn(refill(weak));
        core.pool.wake.notify_one();
    }

    /// Stops refilling and kills the idle sandboxes.
    pub fn stop(core: &Arc<Core>) {
        let pool = &core.pool;
        pool.stopped.store(true, Ordering::Relaxed);
        pool.wake.notify_one();
        let idle: Vec<Sandbox> = pool.lock().drain(..).collect();
        for sandbox in idle {
            sandbox.kill(core);
            sandbox.reap(core);
        }
    }
}

async fn refill(core: Weak<Core>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(c) = core.upgrade() else { return };
        if c.pool.stopped.load(Ordering::Relaxed) {
            return;
        }
        let missing = c.pool.target.saturating_sub(c.pool.lock().len());
        if missing == 0 {
            // Wake on demand (a take, or stop), or now and then to retire sandboxes idle for too long.
            let idle_check = c.settings.pool_max_idle / 2;
            let _ = tokio::time::timeout(idle_check, c.pool.wake.notified()).await;
            retire_idle(&c);
            continue;
        }
        match Sandbox::create(&c, SandboxMode::Execute).await {
            Ok(sandbox) => {
                backoff = Duration::from_millis(50);
                if c.pool.stopped.load(Ordering::Relaxed) {
                    sandbox.kill(&c);
                    sandbox.reap(&c);
                    return;
                }
                c.pool.lock().push_back(sandbox);
            }
            Err(e) => {
                c.pool.spawn_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "warm pool could not create a sandbox");
                drop(c);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn retire_idle(core: &Arc<Core>) {
    let stale: Vec<Sandbox> = {
        let mut ready = core.pool.lock();
        let (keep, stale): (VecDeque<Sandbox>, VecDeque<Sandbox>) =
            ready.drain(..).partition(|s| s.ready_at.elapsed() <= core.settings.pool_max_idle);
        *ready = keep;
        stale.into()
    };
    for mut s in stale {
        let _ = s.has_exited();
        s.kill(core);
        s.reap(core);
    }
}

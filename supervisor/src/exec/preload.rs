//! Preloaded sandboxes: hardened sandboxes that loaded one compiled artifact while they were
//! created, kept per artifact for the next executions of it.
//!
//! Loading a large artifact (a JS component's ≈ 33 MB) costs a millisecond of metadata decoding
//! in every fresh process, and an artifact loaded from a mapping has its memory image copied into
//! each instance. A sandbox created for one artifact loads it from its sealed memfd, opened as a
//! file before the sandbox's namespaces (no tenant byte has arrived yet), so Wasmtime maps the
//! memory image copy-on-write from that file; its job then only instantiates and calls.
//!
//! Each execution takes a preloaded sandbox for its artifact when one is ready (or about to be)
//! and asks for a replacement; otherwise it takes a generic one from the warm pool. Each sandbox
//! still runs exactly one job.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::exec::artifacts::Artifact;
use crate::exec::pool::Pool;
use crate::exec::sandbox::{Sandbox, SpawnError, Spawner};

/// How long an execution waits for a preload already under way before taking a generic sandbox.
const WAIT_FOR_PRELOAD: Duration = Duration::from_millis(10);
/// After a failed preload, the artifact is not preloaded again for this long.
const FAILED_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Shelf {
    ready: VecDeque<Sandbox>,
    /// Preloads under way.
    loading: usize,
    last_used: Option<Instant>,
    failed_until: Option<Instant>,
}

/// The preloaded sandboxes, by the SHA-256 of their artifact.
pub struct Preloaded {
    spawner: Arc<Spawner>,
    /// Where an execution goes when no preloaded sandbox is ready.
    pool: Arc<Pool>,
    shelves: Mutex<HashMap<String, Shelf>>,
    /// Woken when a preload ends (ready or failed).
    changed: Notify,
    stopped: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    failures: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

/// Counters of the preloaded sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreloadStats {
    pub ready: usize,
    pub loading: usize,
    pub hits: u64,
    pub misses: u64,
    pub failures: u64,
}

impl Preloaded {
    /// Preloaded sandboxes made by `spawner`, falling back on `pool`.
    pub fn new(spawner: Arc<Spawner>, pool: Arc<Pool>) -> Self {
        Preloaded {
            spawner,
            pool,
            shelves: Mutex::default(),
            changed: Notify::new(),
            stopped: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_failure: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shelf>> {
        self.shelves.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> PreloadStats {
        let shelves = self.lock();
        PreloadStats {
            ready: shelves.values().map(|s| s.ready.len()).sum(),
            loading: shelves.values().map(|s| s.loading).sum(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Why the last failed preload failed.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A sandbox for one execution of `artifact`: a preloaded one when one is ready or becomes
    /// ready within [`WAIT_FOR_PRELOAD`], else a generic one from the warm pool. Either way a
    /// replacement preload for `artifact` is started.
    pub async fn take(self: &Arc<Self>, artifact: &Arc<Artifact>) -> Result<Sandbox, SpawnError> {
        let this = self;
        if this.spawner.settings.preloaded_per_artifact == 0 {
            return this.pool.take().await;
        }
        let give_up = tokio::time::Instant::now() + WAIT_FOR_PRELOAD;
        let mut stale = Vec::new();
        let mut tried_cold_start = false;
        let found = loop {
            let changed = this.changed.notified();
            let loading = {
                let mut shelves = this.lock();
                let shelf = shelves.entry(artifact.sha256.clone()).or_default();
                shelf.last_used = Some(Instant::now());
                let mut found = None;
                while let Some(mut sandbox) = shelf.ready.pop_front() {
                    if sandbox.has_exited() || sandbox.ready_at.elapsed() > this.spawner.settings.pool_max_idle {
                        stale.push(sandbox);
                    } else {
                        found = Some(sandbox);
                        break;
                    }
                }
                if found.is_some() {
                    break found;
                }
                shelf.loading
            };
            if loading == 0 && !tried_cold_start && artifact.len >= this.spawner.settings.preload_wait_min_bytes {
                // Nothing on the way for a large artifact: loading it into a new sandbox beats
                // copying its memory image in a generic one (`preload_wait_min_bytes`). Tried
                // once: none may start (after a failure, or at the cap), and then a generic
                // sandbox it is.
                tried_cold_start = true;
                if start_preloads(this, artifact, 0) > 0 {
                    continue;
                }
            }
            if loading == 0 || tokio::time::timeout_at(give_up, changed).await.is_err() {
                break None;
            }
        };
        for sandbox in stale {
            sandbox.kill(&this.spawner);
            sandbox.reap(&this.spawner);
        }
        start_preloads(this, artifact, usize::from(found.is_none()));
        match found {
            Some(sandbox) => {
                this.hits.fetch_add(1, Ordering::Relaxed);
                this.spawner.metrics.preload("hit");
                Ok(sandbox)
            }
            None => {
                this.misses.fetch_add(1, Ordering::Relaxed);
                this.spawner.metrics.preload("miss");
                this.pool.take().await
            }
        }
    }

    /// Kills every preloaded sandbox (shutdown); preloads still under way are discarded.
    pub fn stop(&self) {
        let this = self;
        this.stopped.store(true, Ordering::Relaxed);
        let all: Vec<Sandbox> = this.lock().drain().flat_map(|(_, shelf)| shelf.ready).collect();
        for sandbox in all {
            sandbox.kill(&this.spawner);
            sandbox.reap(&this.spawner);
        }
    }

    /// Starts the background task that retires idle preloaded sandboxes.
    pub fn start_retiring(self: &Arc<Self>) {
        let settings = &self.spawner.settings;
        if settings.preloaded_per_artifact == 0 {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = settings.pool_max_idle / 2;
        self.spawner.handle.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(this) = weak.upgrade() else { return };
                if this.stopped.load(Ordering::Relaxed) {
                    return;
                }
                this.retire_idle();
            }
        });
    }

    /// Retires preloaded sandboxes idle for longer than the pool's idle limit, and forgets
    /// artifacts with nothing on their shelf.
    pub fn retire_idle(&self) {
        let this = self;
        let max_idle = this.spawner.settings.pool_max_idle;
        let mut stale = Vec::new();
        {
            let mut shelves = this.lock();
            for shelf in shelves.values_mut() {
                let (keep, old): (VecDeque<Sandbox>, VecDeque<Sandbox>) =
                    shelf.ready.drain(..).partition(|s| s.ready_at.elapsed() <= max_idle);
                shelf.ready = keep;
                stale.extend(old);
            }
            shelves.retain(|_, s| {
                !s.ready.is_empty() || s.loading > 0 || s.failed_until.is_some_and(|t| t > Instant::now())
            });
        }
        for mut sandbox in stale {
            let _ = sandbox.has_exited();
            sandbox.kill(&this.spawner);
            sandbox.reap(&this.spawner);
        }
    }
}

/// Starts preloads for `artifact` and returns how many: `extra` beyond one per execution (an
/// execution that found no preloaded sandbox asks for one more, so the shelf grows to the
/// demand), up to the per-artifact target and the global cap; at the cap, the least recently used
/// other artifact's oldest idle sandbox makes room.
fn start_preloads(this: &Arc<Preloaded>, artifact: &Arc<Artifact>, extra: usize) -> usize {
    if this.stopped.load(Ordering::Relaxed) {
        return 0;
    }
    let per_artifact = this.spawner.settings.preloaded_per_artifact;
    let max = this.spawner.settings.preloaded_max;
    let mut evicted = Vec::new();
    let wanted = {
        let mut shelves = this.lock();
        let total: usize = shelves.values().map(|s| s.ready.len() + s.loading).sum();
        let Some(shelf) = shelves.get(&artifact.sha256) else { return 0 };
        if shelf.failed_until.is_some_and(|t| t > Instant::now()) {
            return 0;
        }
        let have = shelf.ready.len() + shelf.loading;
        let mut wanted = (1 + extra).min(per_artifact.saturating_sub(have));
        let mut room = max.saturating_sub(total);
        while room < wanted {
            let victim = shelves
                .iter_mut()
                .filter(|(key, s)| **key != artifact.sha256 && !s.ready.is_empty())
                .min_by_key(|(_, s)| s.last_used)
                .and_then(|(_, s)| s.ready.pop_front());
            match victim {
                Some(sandbox) => {
                    evicted.push(sandbox);
                    room += 1;
                }
                None => break,
            }
        }
        wanted = wanted.min(room);
        if let Some(shelf) = shelves.get_mut(&artifact.sha256) {
            shelf.loading += wanted;
        }
        wanted
    };
    for sandbox in evicted {
        sandbox.kill(&this.spawner);
        sandbox.reap(&this.spawner);
    }
    for _ in 0..wanted {
        this.spawner.handle.spawn(preload_one(this.clone(), artifact.clone()));
    }
    wanted
}

async fn preload_one(this: Arc<Preloaded>, artifact: Arc<Artifact>) {
    let created = Sandbox::create_preloaded(&this.spawner, &artifact).await;
    let mut discard = None;
    {
        let mut shelves = this.lock();
        let shelf = shelves.entry(artifact.sha256.clone()).or_default();
        shelf.loading = shelf.loading.saturating_sub(1);
        match created {
            Ok(sandbox)
                if shelf.ready.len() < this.spawner.settings.preloaded_per_artifact
                    && !this.stopped.load(Ordering::Relaxed) =>
            {
                shelf.ready.push_back(sandbox)
            }
            Ok(sandbox) => discard = Some(sandbox),
            Err(e) => {
                shelf.failed_until = Some(Instant::now() + FAILED_BACKOFF);
                this.failures.fetch_add(1, Ordering::Relaxed);
                this.spawner.metrics.preload("failed");
                let error = crate::error_chain(&e);
                tracing::warn!(artifact = %artifact.sha256, %error,
                    "preloading a sandbox failed; this artifact runs on generic sandboxes for a while");
                *this.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
            }
        }
    }
    if let Some(sandbox) = discard {
        sandbox.kill(&this.spawner);
        sandbox.reap(&this.spawner);
    }
    this.changed.notify_waiters();
}

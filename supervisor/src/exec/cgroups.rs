//! The pool of reusable sandbox cgroup slots.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alga_sandbox::cgroup::{self, Cgroups, Slot, SlotLimits, Version};

/// Prefix of a supervisor's slot directory, named `alga-runner.<pid>-<n>-ns<pid namespace>`:
/// several supervisors (or several cores in one process, as in tests) never share slots, and a
/// crashed supervisor's leftovers are recognisable, in its own pid namespace only, by a pid that
/// no longer runs.
pub const DIR_PREFIX: &str = "alga-runner.";

static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// Slots kept for reuse (beyond these, released slots are removed).
const MAX_FREE: usize = 64;

/// A slot this supervisor holds, with its `cgroup.procs` files open for writing: the fork
/// server (which has no filesystem) joins sandboxes to the cgroup through them.
#[derive(Debug)]
pub struct HeldSlot {
    slot: Slot,
    procs: Vec<std::fs::File>,
}

impl HeldSlot {
    fn open(slot: Slot) -> io::Result<Self> {
        let procs = slot
            .procs_files()
            .iter()
            .map(|p| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", p.display())))
            })
            .collect::<io::Result<_>>()?;
        Ok(HeldSlot { slot, procs })
    }

    /// The open `cgroup.procs` files, one per hierarchy.
    pub fn procs(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.procs.iter().map(std::os::fd::AsFd::as_fd).collect()
    }
}

impl std::ops::Deref for HeldSlot {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.slot
    }
}

/// Reusable cgroup slots under this supervisor's own cgroup.
#[derive(Debug)]
pub struct CgroupSlots {
    driver: Option<Box<dyn Cgroups>>,
    detail: String,
    delegated: bool,
    free: Mutex<Vec<HeldSlot>>,
    next: AtomicU64,
    limits: SlotLimits,
}

impl CgroupSlots {
    /// Detects the host's cgroups (or, with `enabled` false, uses none) and sweeps leftovers of
    /// crashed supervisors.
    pub fn new(enabled: bool, limits: SlotLimits) -> Self {
        if !enabled {
            return CgroupSlots {
                driver: None,
                detail: "disabled by configuration".into(),
                delegated: false,
                free: Mutex::new(Vec::new()),
                next: AtomicU64::new(0),
                limits,
            };
        }
        let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
        // The name carries the pid namespace, so a sweep by a supervisor in another container
        // sharing this hierarchy can tell the directory is not its own.
        let namespace = cgroup::pid_namespace().unwrap_or(0);
        let detected = cgroup::detect(&cgroup::dir_name(DIR_PREFIX, std::process::id(), instance, namespace));
        if let Some(driver) = &detected.driver {
            let swept = cgroup::sweep_stale(driver.as_ref(), DIR_PREFIX);
            if swept > 0 {
                tracing::info!(swept, "removed cgroups left by supervisors that no longer run");
            }
        }
        CgroupSlots {
            driver: detected.driver,
            detail: detected.detail,
            delegated: detected.delegated,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            limits,
        }
    }

    pub fn version(&self) -> Option<Version> {
        self.driver.as_ref().map(|d| d.version())
    }

    pub fn controllers(&self) -> Vec<&'static str> {
        self.driver.as_ref().map(|d| d.controllers()).unwrap_or_default()
    }

    /// What was detected, or why there are no cgroups.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn delegated(&self) -> bool {
        self.delegated
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HeldSlot>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free slot (reused or new), or `None` when cgroups are not in use.
    pub fn acquire(&self) -> io::Result<Option<HeldSlot>> {
        let Some(driver) = &self.driver else {
            return Ok(None);
        };
        if let Some(slot) = self.lock().pop() {
            return Ok(Some(slot));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = driver.create(&format!("sb-{n}"), &self.limits)?;
        HeldSlot::open(slot).map(Some)
    }

    pub fn set_memory(&self, slot: &Slot, bytes: u64) -> io::Result<()> {
        self.driver.as_ref().map_or(Ok(()), |d| d.set_memory(slot, bytes))
    }

    pub fn oom_kills(&self, slot: &Slot) -> u64 {
        self.driver.as_ref().and_then(|d| d.oom_kills(slot).ok()).unwrap_or(0)
    }

    pub fn memory_peak(&self, slot: &Slot) -> Option<u64> {
        self.driver.as_ref().and_then(|d| d.memory_peak(slot).ok().flatten())
    }

    pub fn pids(&self, slot: &Slot) -> Vec<u32> {
        self.driver.as_ref().and_then(|d| d.pids(slot).ok()).unwrap_or_default()
    }

    /// Kills every process in the slot.
    pub fn kill(&self, slot: &Slot) {
        if let Some(d) = &self.driver
            && let Err(e) = d.kill(slot)
        {
            tracing::warn!(slot = %slot.name, error = %e, "killing a sandbox cgroup failed");
        }
    }

    /// Returns a slot whose sandbox has exited. A slot that is not empty is killed and waited for;
    /// one that stays occupied is never reused.
    pub fn release(&self, slot: HeldSlot) {
        let Some(driver) = &self.driver else { return };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match driver.pids(&slot) {
                Ok(p) if p.is_empty() => break,
                Ok(_) if Instant::now() < deadline => {
                    let _ = driver.kill(&slot);
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(p) => {
                    tracing::error!(slot = %slot.name, pids = ?p, "sandbox cgroup still occupied after kill; not reused");
                    return;
                }
                Err(e) => {
                    tracing::error!(slot = %slot.name, error = %e, "cannot read sandbox cgroup members; not reused");
                    return;
                }
            }
        }
        let _ = driver.reset_memory_peak(&slot);
        let mut free = self.lock();
        if free.len() < MAX_FREE {
            free.push(slot);
        } else {
            drop(free);
            let _ = driver.remove(&slot.slot);
        }
    }

    /// Kills whatever is left in every slot of this supervisor and removes them all, with the
    /// slot directory itself. Called at shutdown, after the sandboxes were stopped.
    pub fn shutdown(&self) {
        let Some(driver) = &self.driver else { return };
        self.lock().clear();
        let bases = driver.base();
        let mut names: Vec<String> = bases
            .iter()
            .filter_map(|b| std::fs::read_dir(b).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let slot = Slot { dirs: bases.iter().map(|b| b.join(&name)).collect(), name };
            let _ = driver.kill(&slot);
            if let Err(e) = driver.remove(&slot) {
                tracing::warn!(slot = %slot.name, error = %e, "removing a sandbox cgroup failed");
            }
        }
        for base in bases {
            let _ = std::fs::remove_dir(&base);
        }
    }
}

//! cgroup v1 and v2 behind one trait (05-sandbox.md, layer 2).
//!
//! Each sandbox runs in its own cgroup *slot*: a directory (v2) or one directory per controller
//! hierarchy (v1: memory, pids, cpu) under this service's own cgroup. Slots are created once and
//! reused (09-measured.md: mkdir/rmdir per execution halves throughput); the supervisor checks a
//! slot is empty and resets its counters before reuse. Every function takes its paths from the
//! driver, so the drivers are unit-tested on plain directories.

mod detect;
mod v1;
mod v2;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use detect::{Detected, detect, dir_name, pid_namespace, probe, sweep_stale};
pub use v1::V1;
pub use v2::V2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// Limits of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLimits {
    /// Memory including page cache, in bytes; swap is always 0.
    pub memory_bytes: u64,
    /// Most tasks (processes and threads).
    pub pids: u64,
    /// CPU time per period, in microseconds (`None`: unlimited).
    pub cpu_quota_us: Option<u64>,
    /// CPU period, in microseconds.
    pub cpu_period_us: u64,
}

/// One sandbox cgroup: a directory per hierarchy it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub dirs: Vec<PathBuf>,
}

impl Slot {
    /// The files a process is written to in order to join this cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }
}

/// What a cgroup driver does. `v1` and `v2` implement it.
pub trait Cgroups: Send + Sync + fmt::Debug {
    fn version(&self) -> Version;
    /// Controllers in use, e.g. `memory, pids, cpu`.
    fn controllers(&self) -> Vec<&'static str>;
    /// The directory (or directories) under which slots are created.
    fn base(&self) -> Vec<PathBuf>;
    /// Creates slot `name` (or adopts it if it exists) and applies `limits`.
    fn create(&self, name: &str, limits: &SlotLimits) -> io::Result<Slot>;
    /// Sets the memory limit (the one limit that changes per execution).
    fn set_memory(&self, slot: &Slot, bytes: u64) -> io::Result<()>;
    /// Member process ids, as seen from this process's pid namespace.
    fn pids(&self, slot: &Slot) -> io::Result<Vec<u32>>;
    /// Kills every member.
    fn kill(&self, slot: &Slot) -> io::Result<()>;
    /// How many times the OOM killer killed inside the slot (a counter that only grows).
    fn oom_kills(&self, slot: &Slot) -> io::Result<u64>;
    /// Peak memory since the last reset, when the kernel tracks it.
    fn memory_peak(&self, slot: &Slot) -> io::Result<Option<u64>>;
    fn reset_memory_peak(&self, slot: &Slot) -> io::Result<()>;
    /// Removes the slot's directories (they must be empty of processes).
    fn remove(&self, slot: &Slot) -> io::Result<()>;
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))
}

fn read(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path).map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
}

fn read_pids(path: &Path) -> io::Result<Vec<u32>> {
    Ok(read(path)?.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The value of `key` in a flat-keyed file such as `memory.events` or `memory.oom_control`.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn kill_pids(pids: &[u32]) -> io::Result<()> {
    for &pid in pids {
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes a cgroup directory, retrying briefly: the kernel refuses rmdir (EBUSY) for a short
/// while after the last member exits.
fn remove_dir(dir: &Path) -> io::Result<()> {
    for attempt in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 99 => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("removing {}: {e}", dir.display())));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::keyed_value;

    #[test]
    fn keyed_files() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(text, "oom_kill"), Some(3));
        assert_eq!(keyed_value(text, "missing"), None);
    }
}

//! cgroup v2: one unified directory per slot.

use std::io;
use std::path::PathBuf;

use super::{Cgroups, Slot, SlotLimits, Version, keyed_value, kill_pids, read, read_pids, remove_dir, write};

/// The v2 driver. `base` is a delegated directory whose `cgroup.subtree_control` enables
/// memory, pids and (when available) cpu for the slots created in it.
#[derive(Debug, Clone)]
pub struct V2 {
    pub base: PathBuf,
    pub cpu: bool,
}

impl Cgroups for V2 {
    fn version(&self) -> Version {
        Version::V2
    }

    fn controllers(&self) -> Vec<&'static str> {
        let mut c = vec!["memory", "pids"];
        if self.cpu {
            c.push("cpu");
        }
        c
    }

    fn base(&self) -> Vec<PathBuf> {
        vec![self.base.clone()]
    }

    fn create(&self, name: &str, limits: &SlotLimits) -> io::Result<Slot> {
        let dir = self.base.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
        let slot = Slot { name: name.to_string(), dirs: vec![dir.clone()] };
        self.set_memory(&slot, limits.memory_bytes)?;
        write(&dir.join("memory.swap.max"), "0")?;
        write(&dir.join("pids.max"), &limits.pids.to_string())?;
        if self.cpu {
            let quota = limits.cpu_quota_us.map_or("max".to_string(), |q| q.to_string());
            write(&dir.join("cpu.max"), &format!("{quota} {}", limits.cpu_period_us))?;
        }
        Ok(slot)
    }

    fn set_memory(&self, slot: &Slot, bytes: u64) -> io::Result<()> {
        write(&slot.dirs[0].join("memory.max"), &bytes.to_string())
    }

    fn pids(&self, slot: &Slot) -> io::Result<Vec<u32>> {
        read_pids(&slot.dirs[0].join("cgroup.procs"))
    }

    fn kill(&self, slot: &Slot) -> io::Result<()> {
        let kill = slot.dirs[0].join("cgroup.kill");
        if kill.exists() { write(&kill, "1") } else { kill_pids(&self.pids(slot)?) }
    }

    fn oom_kills(&self, slot: &Slot) -> io::Result<u64> {
        Ok(keyed_value(&read(&slot.dirs[0].join("memory.events"))?, "oom_kill").unwrap_or(0))
    }

    fn memory_peak(&self, slot: &Slot) -> io::Result<Option<u64>> {
        match read(&slot.dirs[0].join("memory.peak")) {
            Ok(v) => Ok(v.trim().parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn reset_memory_peak(&self, slot: &Slot) -> io::Result<()> {
        // Writing to memory.peak resets it (Linux 6.12+); older kernels keep a lifetime peak.
        let peak = slot.dirs[0].join("memory.peak");
        if peak.exists() {
            let _ = write(&peak, "reset");
        }
        Ok(())
    }

    fn remove(&self, slot: &Slot) -> io::Result<()> {
        remove_dir(&slot.dirs[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_slot_with_every_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let v2 = V2 { base: tmp.path().to_path_buf(), cpu: true };
        let limits = SlotLimits { memory_bytes: 2 << 20, pids: 4, cpu_quota_us: None, cpu_period_us: 100_000 };
        let slot = v2.create("sb-1", &limits).unwrap();
        let read = |p: &str| std::fs::read_to_string(tmp.path().join("sb-1").join(p)).unwrap();
        assert_eq!(read("memory.max"), "2097152");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "4");
        assert_eq!(read("cpu.max"), "max 100000");
        std::fs::write(tmp.path().join("sb-1/memory.events"), "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(v2.oom_kills(&slot).unwrap(), 1);
        assert_eq!(v2.memory_peak(&slot).unwrap(), None, "no memory.peak on this fake");
        v2.set_memory(&slot, 4096).unwrap();
        assert_eq!(read("memory.max"), "4096");
        std::fs::write(tmp.path().join("sb-1/cgroup.kill"), "").unwrap();
        v2.kill(&slot).unwrap();
        assert_eq!(read("cgroup.kill"), "1");
    }
}

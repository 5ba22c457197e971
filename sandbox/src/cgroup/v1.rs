//! cgroup v1: one directory per controller hierarchy (memory, pids, cpu).

use std::io;
use std::path::PathBuf;

use super::{Cgroups, Slot, SlotLimits, Version, keyed_value, kill_pids, read, read_pids, remove_dir, write};

/// The v1 driver. Each field is the base directory for slots in that hierarchy.
#[derive(Debug, Clone)]
pub struct V1 {
    pub memory: PathBuf,
    pub pids: PathBuf,
    /// The cpu hierarchy, when mounted.
    pub cpu: Option<PathBuf>,
}

impl V1 {
    fn memory_dir(slot: &Slot) -> &PathBuf {
        &slot.dirs[0]
    }
}

impl Cgroups for V1 {
    fn version(&self) -> Version {
        Version::V1
    }

    fn controllers(&self) -> Vec<&'static str> {
        let mut c = vec!["memory", "pids"];
        if self.cpu.is_some() {
            c.push("cpu");
        }
        c
    }

    fn base(&self) -> Vec<PathBuf> {
        let mut b = vec![self.memory.clone(), self.pids.clone()];
        b.extend(self.cpu.clone());
        b
    }

    fn create(&self, name: &str, limits: &SlotLimits) -> io::Result<Slot> {
        let dirs: Vec<PathBuf> = self.base().into_iter().map(|b| b.join(name)).collect();
        for d in &dirs {
            std::fs::create_dir_all(d)
                .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", d.display())))?;
        }
        let slot = Slot { name: name.to_string(), dirs };
        self.set_memory(&slot, limits.memory_bytes)?;
        if !slot.dirs[0].join("memory.memsw.limit_in_bytes").exists() {
            // Without swap accounting, keep the kernel from swapping the sandbox out instead.
            write(&slot.dirs[0].join("memory.swappiness"), "0")?;
        }
        write(&slot.dirs[1].join("pids.max"), &limits.pids.to_string())?;
        if self.cpu.is_some() {
            let cpu = &slot.dirs[2];
            write(&cpu.join("cpu.cfs_period_us"), &limits.cpu_period_us.to_string())?;
            let quota = limits.cpu_quota_us.map_or("-1".to_string(), |q| q.to_string());
            write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
        }
        Ok(slot)
    }

    fn set_memory(&self, slot: &Slot, bytes: u64) -> io::Result<()> {
        let dir = Self::memory_dir(slot);
        let memory = dir.join("memory.limit_in_bytes");
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        let value = bytes.to_string();
        if !memsw.exists() {
            return write(&memory, &value);
        }
        // The kernel keeps memsw >= memory at every step: when growing, memsw must move first
        // (writing memory fails); when shrinking, memory must move first.
        if write(&memory, &value).is_err() {
            write(&memsw, &value)?;
            write(&memory, &value)
        } else {
            write(&memsw, &value)
        }
    }

    fn pids(&self, slot: &Slot) -> io::Result<Vec<u32>> {
        read_pids(&Self::memory_dir(slot).join("cgroup.procs"))
    }

    fn kill(&self, slot: &Slot) -> io::Result<()> {
        // v1 has no cgroup.kill: kill each member (no member can fork: seccomp and pids.max).
        for dir in &slot.dirs {
            kill_pids(&read_pids(&dir.join("cgroup.procs"))?)?;
        }
        Ok(())
    }

    fn oom_kills(&self, slot: &Slot) -> io::Result<u64> {
        Ok(keyed_value(&read(&Self::memory_dir(slot).join("memory.oom_control"))?, "oom_kill").unwrap_or(0))
    }

    fn memory_peak(&self, slot: &Slot) -> io::Result<Option<u64>> {
        Ok(read(&Self::memory_dir(slot).join("memory.max_usage_in_bytes"))?.trim().parse().ok())
    }

    fn reset_memory_peak(&self, slot: &Slot) -> io::Result<()> {
        write(&Self::memory_dir(slot).join("memory.max_usage_in_bytes"), "0")
    }

    fn remove(&self, slot: &Slot) -> io::Result<()> {
        for d in &slot.dirs {
            remove_dir(d)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_slots_with_limits_in_each_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let v1 =
            V1 { memory: tmp.path().join("memory"), pids: tmp.path().join("pids"), cpu: Some(tmp.path().join("cpu")) };
        let limits = SlotLimits { memory_bytes: 1 << 20, pids: 4, cpu_quota_us: Some(50_000), cpu_period_us: 100_000 };
        let slot = v1.create("sb-0", &limits).unwrap();
        assert_eq!(slot.dirs.len(), 3);
        let read = |p: &str| std::fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(read("memory/sb-0/memory.limit_in_bytes"), "1048576");
        assert_eq!(read("memory/sb-0/memory.swappiness"), "0");
        assert_eq!(read("pids/sb-0/pids.max"), "4");
        assert_eq!(read("cpu/sb-0/cpu.cfs_quota_us"), "50000");
        assert_eq!(slot.procs_files()[1], tmp.path().join("pids/sb-0/cgroup.procs"));

        std::fs::write(tmp.path().join("memory/sb-0/memory.oom_control"), "oom_kill_disable 0\noom_kill 2\n").unwrap();
        assert_eq!(v1.oom_kills(&slot).unwrap(), 2);
        std::fs::write(tmp.path().join("memory/sb-0/cgroup.procs"), "").unwrap();
        assert!(v1.pids(&slot).unwrap().is_empty());
    }
}

//! One memory budget over all linear memories and tables of an instance together.

use wasmtime::ResourceLimiter;

/// Bytes charged per table element (a pointer-sized reference).
const TABLE_ELEMENT_BYTES: u64 = 8;

/// The error a refused growth traps with; recognised to report `memory_limit`.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (all memories and tables together)")]
pub struct MemoryLimitExceeded {
    pub limit: u64,
}

/// Tracks the summed size of every memory and table and refuses growth past `limit`.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    in_use: u64,
    peak: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Budget { limit, in_use: 0, peak: 0 }
    }

    /// Sets the limit for further growth; false when what is in use already exceeds it.
    pub fn set_limit(&mut self, limit: u64) -> bool {
        self.limit = limit;
        self.in_use <= limit
    }

    /// The largest total seen, in bytes.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    fn grow(&mut self, current: u64, desired: u64) -> wasmtime::Result<bool> {
        let next = self.in_use - current.min(self.in_use) + desired;
        if next > self.limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded { limit: self.limit }));
        }
        self.in_use = next;
        self.peak = self.peak.max(next);
        Ok(true)
    }
}

impl ResourceLimiter for Budget {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current as u64, desired as u64)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current as u64 * TABLE_ELEMENT_BYTES, desired as u64 * TABLE_ELEMENT_BYTES)
    }

    fn instances(&self) -> usize {
        // A component of this world instantiates a handful of core modules; more is hostile.
        1_000
    }

    fn memories(&self) -> usize {
        100
    }

    fn tables(&self) -> usize {
        1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_and_tables_share_the_budget() {
        let mut b = Budget::new(100);
        assert!(b.memory_growing(0, 60, None).unwrap());
        assert!(b.table_growing(0, 4, None).unwrap(), "32 bytes of table");
        let err = b.memory_growing(60, 70, None).unwrap_err();
        assert!(err.downcast_ref::<MemoryLimitExceeded>().is_some());
        assert_eq!(b.peak(), 92);
        assert!(b.memory_growing(60, 68, None).unwrap());
        assert_eq!(b.peak(), 100);
    }
}

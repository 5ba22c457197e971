//! The one Wasmtime configuration used to compile and to run components.
//!
//! The compile sandbox and the execution sandboxes build their engines from [`config`], so an
//! artifact compiled in one is accepted by the other; [`fingerprint`] names that configuration in
//! artifact cache keys, and any setting that changes generated code changes it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::{Config, CustomCodeMemory, Engine, InstanceAllocationStrategy, OptLevel};

use crate::sys;

/// Makes compiled code executable with `mprotect`, wherever it lives. With it, Wasmtime accepts
/// code memory it does not own, so a sandbox runs an artifact straight from its read-only mapping
/// of the sealed memfd ([`Component::deserialize_raw`]) instead of copying it first.
///
/// [`Component::deserialize_raw`]: wasmtime::component::Component::deserialize_raw
#[derive(Debug)]
struct ProtectCodeMemory {
    page: usize,
}

impl CustomCodeMemory for ProtectCodeMemory {
    fn required_alignment(&self) -> usize {
        self.page
    }

    fn publish_executable(&self, ptr: *const u8, len: usize) -> wasmtime::Result<()> {
        sys::protect(ptr, len, libc::PROT_READ | libc::PROT_EXEC).map_err(wasmtime::Error::new)
    }

    fn unpublish_executable(&self, ptr: *const u8, len: usize) -> wasmtime::Result<()> {
        sys::protect(ptr, len, libc::PROT_READ | libc::PROT_WRITE).map_err(wasmtime::Error::new)
    }
}

/// The engine configuration. Choices:
/// - calls are async: WASI's blocking operations (timers, `poll`) are futures; the sandbox drives
///   them on a current-thread Tokio runtime, so nothing ever starts a thread.
/// - fuel and epoch interruption always on (05-sandbox.md: fuel is always metered).
/// - on-demand allocation: the fork server stays small, so `fork()` stays cheap (09-measured.md:
///   the default pooling allocator makes fork 11x slower).
/// - copy-on-write memory images on: artifacts lay their data segments out page-aligned, and a
///   sandbox that loaded its artifact from a file (a preloaded sandbox) maps the memory
///   image straight from it, so instantiation copies nothing and the call faults in only the pages
///   it touches. An artifact loaded from a mapping has no file to map from: Wasmtime would make a
///   memfd, which the execution sandbox's seccomp filter answers with ENOSYS, and Wasmtime then
///   initialises memory by copying, as it would without images.
/// - code memory published with our own `mprotect` ([`ProtectCodeMemory`]), so artifacts run
///   from their memfd mapping without a copy;
/// - single-threaded compilation: Wasmtime is built without `parallel-compilation`, so the
///   compile sandbox never needs a thread.
pub fn config() -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.consume_fuel(true);
    c.epoch_interruption(true);
    c.memory_init_cow(true);
    c.cranelift_opt_level(OptLevel::Speed);
    c.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    c.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
    c.with_custom_code_memory(Some(Arc::new(ProtectCodeMemory { page: sys::page_size() })));
    c
}

/// A new engine with [`config`].
pub fn engine() -> wasmtime::Result<Engine> {
    Engine::new(&config())
}

/// Hex SHA-256 naming Wasmtime's version and every setting that affects generated code.
pub fn fingerprint(engine: &Engine) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    // Our own version too: a runner release may change how artifacts are produced.
    concat!("alga-sandbox ", env!("CARGO_PKG_VERSION")).hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(hasher.0.finalize())
}

struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only the SHA-256 digest is read")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_tracks_settings() {
        let a = fingerprint(&engine().unwrap());
        let b = fingerprint(&engine().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let mut other = config();
        other.cranelift_opt_level(OptLevel::None);
        let c = fingerprint(&Engine::new(&other).unwrap());
        assert_ne!(a, c, "a code-generation setting must change the fingerprint");
    }
}

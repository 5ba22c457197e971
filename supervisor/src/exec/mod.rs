//! The execution core: hardened single-use sandboxes created through the fork server, their
//! cgroup slots, the warm pool and the preloaded sandboxes, the artifact cache, and the driver
//! of one execution or compilation.
//!
//! The entry point is [`Core`] (built once by `serve` or `exec`) with [`executor`]'s `execute`,
//! `compile` and `probe`. Inside, each module uses only those listed before it:
//! `settings`, `cgroups`, `forkserver`, `artifacts` → `sandbox` (one sandbox and the
//! [`Spawner`] that makes them) → `pool` → `preload` → `core` → `executor`.

pub mod artifacts;
pub mod cgroups;
pub mod core;
pub mod executor;
pub mod forkserver;
pub mod pool;
pub mod preload;
pub mod sandbox;
pub mod settings;

pub use self::core::Core;
pub use executor::HostCalls;
pub use sandbox::Spawner;

//! The guest runtime: Wasmtime configured once, components compiled and executed under limits,
//! host imports forwarded through a [`host::HostBridge`].

pub mod compile;
pub mod engine;
pub mod execute;
pub mod guest;
pub mod host;
pub mod limiter;
pub mod output;
pub mod warm;

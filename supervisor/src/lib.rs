//! alga-runner's supervisor: creates hardened single-use sandboxes through a fork server, runs
//! executions on them, answers their host calls, and exposes it all through the CLI and HTTP.

pub mod cli;
pub mod config;
pub mod db;
pub mod exec;
pub mod fsutil;
pub mod hostapi;
pub mod http;
pub mod ops;
pub mod registry;
pub mod secrets;
pub mod service;

/// The commit this binary was built from (`unknown` outside a git checkout).
pub const COMMIT: &str = env!("ALGA_RUNNER_COMMIT");
/// The Wasmtime version it links.
pub const WASMTIME_VERSION: &str = env!("ALGA_RUNNER_WASMTIME");
/// What `--version` says after the name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ALGA_RUNNER_COMMIT"),
    ", wasmtime ",
    env!("ALGA_RUNNER_WASMTIME"),
    ")"
);

/// An error and its sources on one line: `outer: inner: root`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

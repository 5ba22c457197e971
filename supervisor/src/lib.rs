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

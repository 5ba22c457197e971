//! What the runner tells its operator and its service manager: Prometheus metrics and the
//! systemd notify protocol.

pub mod metrics;
pub mod process;
pub mod systemd;

//! The sandbox: what runs inside a single-use process (hardening, then one guest execution or one
//! compilation), and the fork server that creates such processes.

pub mod audit;
pub mod cgroup;
pub mod child;
pub mod forkserver;
pub mod harden;
pub mod probe;
pub mod runtime;
pub mod sys;

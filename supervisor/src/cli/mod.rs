//! The command-line interface (clap): one binary, one subcommand per task.

pub mod doctor;
pub mod exec;

use clap::{Parser, Subcommand};

/// alga-runner: runs untrusted WebAssembly extensions in hardened single-use processes.
#[derive(Debug, Parser)]
#[command(name = "alga-runner", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one execution of a component in a real hardened sandbox and print the result as JSON.
    Exec(Box<exec::ExecArgs>),
    /// Report which hardening layers this host supports and what a missing one means.
    Doctor(doctor::DoctorArgs),
}

/// Exit code for usage errors (also what clap uses).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for infrastructure errors.
pub const EXIT_FAILURE: u8 = 1;

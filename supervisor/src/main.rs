//! The `alga-runner` binary.

use std::process::ExitCode;

use alga_runner::cli::{self, Cli, Command, LogFormat};
use clap::Parser;

fn main() -> ExitCode {
    // The fork server is this same binary, exec'd; it must start before anything else runs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    alga_runner::forkserver::run_if_requested(&args);

    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Exec(args) => cli::exec::run(*args),
        Command::Doctor(args) => cli::doctor::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALGA_RUNNER_LOG").unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

//! The `alga-runner` binary.

use std::process::ExitCode;

use alga_runner::cli::{self, Cli, Command, LogFormat};
use clap::Parser;

fn main() -> ExitCode {
    // The fork server is this same binary, exec'd; it must start before anything else runs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    alga_runner::exec::forkserver::run_if_requested(&args);

    let cli = Cli::parse();
    let default_format = if matches!(cli.command, Command::Serve(_)) { LogFormat::Json } else { LogFormat::Text };
    init_logging(cli.log_format.unwrap_or(default_format), matches!(cli.command, Command::Serve(_)));
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Exec(args) => cli::exec::run(*args),
        Command::Doctor(args) => cli::doctor::run(args),
        Command::Keygen(args) => cli::bundle::keygen(args),
        Command::Pack(args) => cli::bundle::pack(args),
        Command::Sign(args) => cli::bundle::sign(args),
        Command::Verify(args) => cli::bundle::verify(args),
        Command::Inspect(args) => cli::bundle::inspect(args),
        Command::Publish(args) => cli::client::publish(args),
        Command::Prefetch(args) => cli::client::prefetch(args),
        Command::Install(args) => cli::client::install(*args),
        Command::Uninstall(args) => cli::client::uninstall(args),
        Command::List(args) => cli::client::list(args),
        Command::Executions(args) => cli::client::executions(args),
        Command::Migrate(args) => cli::migrate::run(args),
        Command::KeygenNode(args) => cli::node_key::keygen(args),
        Command::RotateNodeKey(args) => cli::node_key::rotate(args),
        Command::Completions { shell } => {
            cli::completions(shell, &mut std::io::stdout());
            Ok(0)
        }
        Command::Manpage => cli::manpage(&mut std::io::stdout()).map(|()| 0).map_err(Into::into),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}

fn init_logging(format: LogFormat, service: bool) {
    let default = if service { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALGA_RUNNER_LOG").unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

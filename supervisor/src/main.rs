//! The `alga-runner` binary.

use std::process::ExitCode;

use alga_runner::cli::{self, Cli, Command, LogFormat};
use clap::Parser;

fn main() -> ExitCode {
    // The fork server is this same binary, exec'd; it must start before anything else runs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    alga_runner::exec::forkserver::run_if_requested(&args);

    let cli = Cli::parse();
    let service = matches!(cli.command, Command::Serve(_));
    // The service under systemd writes to the journal with each line's real priority; otherwise
    // JSON on stderr (the service) or text (the other commands).
    let default_format = match service {
        true if stderr_is_the_journal() => LogFormat::Journald,
        true => LogFormat::Json,
        false => LogFormat::Text,
    };
    init_logging(cli.log_format.unwrap_or(default_format), service);
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

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM` to its
/// `device:inode` (the documented way to tell; a redirected stderr no longer matches).
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

fn init_logging(format: LogFormat, service: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if service { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALGA_RUNNER_LOG").unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journal) => {
                let filter =
                    tracing_subscriber::EnvFilter::try_from_env("ALGA_RUNNER_LOG").unwrap_or_else(|_| default.into());
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journal.with_syslog_identifier("alga-runner".into()))
                    .init();
            }
            Err(e) => {
                builder.json().init();
                tracing::warn!(error = %e, "the journal cannot be reached; logging JSON to stderr");
            }
        },
    }
}

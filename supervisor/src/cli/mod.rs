//! The command-line interface (clap): one binary, one subcommand per task.

pub mod bundle;
pub mod client;
pub mod doctor;
pub mod exec;
pub mod migrate;
pub mod node_key;
pub mod serve;
pub mod stores;

use clap::{Parser, Subcommand};

/// alga-runner: runs untrusted WebAssembly extensions in hardened single-use processes.
#[derive(Debug, Parser)]
#[command(name = "alga-runner", version = crate::LONG_VERSION, about)]
pub struct Cli {
    /// Log format [default: journald for serve under systemd, json for serve otherwise, text for
    /// the other commands].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
    /// The journal's native protocol, each line at its priority (the default of `serve` under
    /// systemd).
    Journald,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (HTTP API, registry, sandboxes).
    Serve(serve::ServeArgs),
    /// Run one execution of a component in a real hardened sandbox and print the result as JSON.
    Exec(Box<exec::ExecArgs>),
    /// Report which hardening layers this host supports and what a missing one means.
    Doctor(doctor::DoctorArgs),
    /// Create a minisign key pair for signing bundles.
    Keygen(bundle::KeygenArgs),
    /// Pack a directory into a reproducible bundle.tar.zst.
    Pack(bundle::PackArgs),
    /// Sign a bundle (writes BUNDLE.minisig, binding name, version and content hash).
    Sign(bundle::SignArgs),
    /// Verify a bundle's signature against a trust bundle.
    Verify(bundle::VerifyArgs),
    /// Show a bundle's manifest, hash, files and signature.
    Inspect(bundle::InspectArgs),
    /// Publish a signed bundle to a running supervisor.
    Publish(client::PublishArgs),
    /// Ready a bundle (fetch, verify, compile) before its first execution, e.g. at install time.
    Prefetch(client::PrefetchArgs),
    /// Install (or upgrade) an extension for a tenant.
    Install(Box<client::InstallArgs>),
    /// Uninstall an extension for a tenant.
    Uninstall(client::UninstallArgs),
    /// List the registry's extensions, or a tenant's installs.
    List(client::ListArgs),
    /// Show (or follow) a tenant's execution log.
    Executions(client::ExecutionsArgs),
    /// Bring a PostgreSQL database to this version's schema; copy a stopped host's state into it.
    Migrate(migrate::MigrateArgs),
    /// Create a node key (the key that seals install secrets; hosts sharing a database share it).
    KeygenNode(node_key::KeygenNodeArgs),
    /// Seal every install secret again with a new node key (the old one as `<file>.previous`).
    RotateNodeKey(node_key::RotateNodeKeyArgs),
    /// Write the shell completion script for SHELL to standard output, e.g.
    /// `alga-runner completions bash > /etc/bash_completion.d/alga-runner`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man page (roff) to standard output (used to build the package).
    #[command(hide = true)]
    Manpage,
}

/// The completion script of the whole command line for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "alga-runner", out);
}

/// The man page of the whole command line, every subcommand included, from the clap definitions.
pub fn manpage(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    clap_mangen::Man::new(cmd.clone()).render(out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{}-{}", cmd.get_name(), sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let mut section = Vec::new();
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut section)?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{about}")?;
        }
        out.write_all(&section)?;
    }
    out.write_all(MAN_TAIL.as_bytes())
}

/// The man page's closing sections: files, environment, exit status, where the docs are.
const MAN_TAIL: &str = r#".SH FILES
.TP
\fI/etc/alga-runner/config.toml\fR
The configuration (every key optional; the shipped copy shows each default).
.TP
\fI/etc/alga-runner/sandbox.env\fR
The uid and gid sandboxes run as, written by the package.
.TP
\fI/etc/alga-runner/credentials/\fR
The service token, the admin token and the node key, loaded by the unit as systemd credentials.
.TP
\fI/var/lib/alga-runner/\fR
The state: database, bundles, extracted UIs, the node key when not a credential.
.TP
\fI/var/cache/alga-runner/\fR
Compiled artifacts.
.SH ENVIRONMENT
.TP
\fBALGA_RUNNER_CONFIG\fR
The configuration file when \fB--config\fR is not given.
.TP
\fBALGA_RUNNER_<SECTION>__<KEY>\fR
Any configuration key, e.g. \fBALGA_RUNNER_LIMITS__MAX_MEMORY_MB=1024\fR; it wins over the file.
.TP
\fBALGA_RUNNER_LISTEN\fR, \fBALGA_RUNNER_STATE_DIR\fR, \fBALGA_RUNNER_SERVICE_TOKEN\fR, \fBALGA_RUNNER_ADMIN_TOKEN\fR, \fBSIGNING_TRUST_BUNDLE\fR, \fBEXT_EGRESS_ALLOWLIST\fR
Shorter names of common keys (the full table is in /usr/share/doc/alga-runner/docs/service.md).
.TP
\fBALGA_RUNNER_URL\fR
The service the client commands talk to (default http://127.0.0.1:8080).
.TP
\fBALGA_RUNNER_LOG\fR
The log filter (default info for serve, warn otherwise), e.g. alga_runner=debug.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Where systemd put the credentials (tokens, node-key).
.SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
A failure (an unreachable service, a refused request, a broken chain with \fBexecutions --verify\fR, a bundle that does not verify).
.TP
\fB2\fR
A usage error (a missing argument, a file that would be overwritten).
.TP
\fB78\fR
An invalid configuration (EX_CONFIG), every bad key named; systemd does not restart on it.
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBjournalctl\fR(1) (systemd, a dependency of the package), and /usr/share/doc/alga-runner/ (README.md, docs/).
"#;

/// Exit code for usage errors (also what clap uses).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for infrastructure errors.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for an invalid configuration (EX_CONFIG); systemd does not restart on it.
pub const EXIT_CONFIG: u8 = 78;

/// The service's configuration: the file `file` (else `$ALGA_RUNNER_CONFIG`, else none) under
/// `env`. An invalid one is printed (every problem) and answered with [`EXIT_CONFIG`].
pub fn load_config(file: Option<std::path::PathBuf>, env: &[(String, String)]) -> Result<crate::config::Config, u8> {
    let file = file.or_else(|| std::env::var_os("ALGA_RUNNER_CONFIG").map(std::path::PathBuf::from));
    crate::config::Config::load(file.as_deref(), env).map_err(|e| {
        eprintln!("{e}");
        EXIT_CONFIG
    })
}

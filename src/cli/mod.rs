//! Command-line front end: clap commands, human output, exit codes.
//!
//! This is the only place in synback that prints. Each command loads the
//! config, builds an [`Agent`], calls one library function and prints its
//! report; errors are printed with their whole cause chain and mapped to the
//! exit codes documented in the README.

mod commands;
#[cfg(feature = "daemon")]
mod daemon;
#[cfg(feature = "emulator")]
mod demo;
#[cfg(feature = "emulator")]
mod nas_emulator;
mod output;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// synback: verified, compressed snapshot backups to a Synology NAS.
#[derive(Debug, Parser)]
#[command(name = "synback", version, about, max_term_width = 100)]
struct Cli {
    /// Config file [default: $SYNBACK_CONFIG, else /etc/synback/config.toml].
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format: human, or json (one object per line, for journald/Docker)
    /// [default: `[daemon] log_format` for `synback daemon`, else human].
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// More log output (-v: debug, -vv: trace).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up one or more jobs now (all jobs when none is named).
    Backup(commands::BackupArgs),
    /// List the snapshots of a job, with partial uploads and orphans.
    List(commands::ListArgs),
    /// Check snapshots: NAS MD5 against the manifest, or --deep: download and read everything.
    Verify(commands::VerifyArgs),
    /// Apply the retention policy now (--dry-run shows the plan).
    Forget(commands::ForgetArgs),
    /// Restore a snapshot (or part of it) into a folder.
    Restore(commands::RestoreArgs),
    /// List the files inside a snapshot without restoring.
    Ls(commands::LsArgs),
    /// Show what changed between two snapshots.
    Diff(commands::DiffArgs),
    /// Validate the config file (--online also logs in and checks the share).
    CheckConfig(commands::CheckConfigArgs),
    /// Log in once with a 2FA code and remember this device, so unattended runs need no code.
    Login(commands::LoginArgs),
    /// Run every scheduled job until stopped (SIGHUP reloads the config).
    ///
    /// SIGTERM or SIGINT stops it: a running backup finishes the volume it
    /// is uploading (within `[daemon] shutdown_grace`; past it the upload
    /// is abandoned), removes its partial files, releases the lock and logs
    /// out. Exit status: 0 after such a
    /// stop, 1 when the daemon cannot start (e.g. the status listener's
    /// address is taken), 2 for an unusable config or no job with a
    /// `schedule`.
    #[cfg(feature = "daemon")]
    Daemon(daemon::DaemonArgs),
    /// Show each job's last and next run, as the daemon recorded them.
    #[cfg(feature = "daemon")]
    Status(daemon::StatusArgs),
    /// Run the whole cycle against the built-in NAS emulator, in a temp folder.
    #[cfg(feature = "emulator")]
    Demo(demo::DemoArgs),
    /// Run a fake Synology NAS (DSM API emulator) for tests and demos.
    #[cfg(feature = "emulator")]
    NasEmulator(nas_emulator::NasEmulatorArgs),
}

pub use synback::agent::exit;

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli
        .log_format
        .unwrap_or_else(|| configured_log_format(&cli));
    init_logging(&cli, format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILED);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let config = commands::ConfigArg(cli.config.clone());
    match cli.command {
        Command::Backup(args) => ExitCode::from(commands::backup(&config, args).await),
        Command::List(args) => ExitCode::from(commands::list(&config, args).await),
        Command::Verify(args) => ExitCode::from(commands::verify(&config, args).await),
        Command::Forget(args) => ExitCode::from(commands::forget(&config, args).await),
        Command::Restore(args) => ExitCode::from(commands::restore(&config, args).await),
        Command::Ls(args) => ExitCode::from(commands::ls(&config, args).await),
        Command::Diff(args) => ExitCode::from(commands::diff(&config, args).await),
        Command::CheckConfig(args) => ExitCode::from(commands::check_config(&config, args).await),
        Command::Login(args) => ExitCode::from(commands::login(&config, args).await),
        #[cfg(feature = "daemon")]
        Command::Daemon(args) => ExitCode::from(daemon::run(&config, args).await),
        #[cfg(feature = "daemon")]
        Command::Status(args) => ExitCode::from(daemon::status(&config, args).await),
        #[cfg(feature = "emulator")]
        Command::Demo(args) => demo::run(args).await,
        #[cfg(feature = "emulator")]
        Command::NasEmulator(args) => nas_emulator::run(args).await,
    }
}

/// The daemon's `[daemon] log_format`, human for other commands or when
/// the config cannot be read (the command then reports why).
fn configured_log_format(cli: &Cli) -> LogFormat {
    #[cfg(feature = "daemon")]
    if matches!(cli.command, Command::Daemon(_))
        && let Ok(config) = commands::ConfigArg(cli.config.clone()).load_quiet()
        && config.daemon.log_format == synback::config::LogFormat::Json
    {
        return LogFormat::Json;
    }
    let _ = cli;
    LogFormat::Human
}

/// Human logs on stderr by default (warnings and up unless -v), JSON when asked.
fn init_logging(cli: &Cli, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,synback=debug",
        (false, _) => "trace",
    };
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_env("SYNBACK_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Human => fmt
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    // The daemon's runs keep their INFO lines for the healthchecks /fail
    // ping. Only the daemon, and only events and the run spans: enabling
    // every INFO span (each `#[instrument]`ed call) costs a one-shot backup
    // or restore seconds of CPU for nothing.
    #[cfg(feature = "daemon")]
    let registry = {
        use tracing_subscriber::filter::{FilterExt as _, LevelFilter, filter_fn};
        let daemon = matches!(cli.command, Command::Daemon(_));
        let wanted = filter_fn(|m| m.is_event() || m.name() == "run").and(LevelFilter::INFO);
        registry.with(daemon.then(|| synback::schedule::run_log::layer().with_filter(wanted)))
    };
    let _ = registry.try_init();
}

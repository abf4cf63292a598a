//! `synback daemon` and `synback status`.

use std::sync::Arc;

use synback::daemon::{AgentRunner, plan};
use synback::schedule::{self, DaemonControl, Reload, SystemClock};

use super::commands::ConfigArg;
use super::exit;

/// Options of `synback daemon`.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {}

/// Runs every scheduled job until SIGTERM/SIGINT; SIGHUP reloads the config
/// (a bad new config is reported and the old one keeps running).
pub async fn run(config: &ConfigArg, _args: DaemonArgs) -> u8 {
    let loaded = match config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (settings, jobs) = plan(&loaded);
    if jobs.is_empty() {
        eprintln!(
            "error: no job has a `schedule`; add one (e.g. schedule = \"30 2 * * *\") or run `synback backup`"
        );
        return exit::USAGE;
    }
    let runner = AgentRunner::from_config(loaded);
    let (control, handle) = DaemonControl::new();
    let reload_runner = runner.clone();
    let reload_config = config.clone();
    let signals = tokio::spawn(schedule::signals::forward_signals(handle, move || {
        let config = reload_config.load_quiet()?;
        let (settings, jobs) = plan(&config);
        // The agent is swapped only for a configuration the daemon accepts.
        schedule::check_jobs(&jobs, chrono::Utc::now()).map_err(|e| e.to_string())?;
        reload_runner.replace_config(config);
        Ok::<_, String>(Reload::new(settings, jobs))
    }));
    let result = schedule::run(
        settings,
        jobs,
        Arc::new(runner),
        Arc::new(SystemClock),
        control,
    )
    .await;
    signals.abort();
    match result {
        Ok(()) => exit::OK,
        Err(err) => {
            eprintln!("error: {err}");
            exit::FAILED
        }
    }
}

/// Options of `synback status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the status file as JSON.
    #[arg(long)]
    json: bool,
}

/// Prints each job's last run, next run, last snapshot and last error, as
/// the daemon recorded them in the state directory.
pub async fn status(config: &ConfigArg, args: StatusArgs) -> u8 {
    let config = match config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match schedule::read_status(&config.state_dir) {
        Ok(status) if args.json => match serde_json::to_string_pretty(&status) {
            Ok(text) => {
                println!("{text}");
                exit::OK
            }
            Err(err) => {
                eprintln!("error: {err}");
                exit::FAILED
            }
        },
        Ok(status) => {
            print!("{}", schedule::format_status(&status, chrono::Utc::now()));
            exit::OK
        }
        Err(err) => {
            eprintln!("error: {err}");
            exit::FAILED
        }
    }
}

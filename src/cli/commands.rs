//! The one-shot commands: each loads the config, calls the library once and
//! prints the outcome.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use synback::agent::{Agent, Error as AgentError, VerifyMode};
use synback::config::{Config, ConfigEnv};
use synback::restore::{RestoreOptions, Selector};
use tokio_util::sync::CancellationToken;

use super::exit;
use super::output::{self, Printer};

/// The `--config` option, resolved lazily.
#[derive(Debug, Clone)]
pub struct ConfigArg(pub Option<PathBuf>);

impl ConfigArg {
    fn path(&self, env: &ConfigEnv) -> PathBuf {
        self.0
            .clone()
            .or_else(|| env.var("SYNBACK_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/etc/synback/config.toml"))
    }

    /// Loads the config for a reload; the error is the message to log.
    pub fn load_quiet(&self) -> Result<Config, String> {
        let env = ConfigEnv::from_vars(std::env::vars());
        Config::load(self.path(&env), &env).map_err(|e| e.to_string())
    }

    /// Loads and validates the config, printing notes; `Err` is the exit code.
    pub fn load(&self) -> Result<Config, u8> {
        let env = ConfigEnv::from_vars(std::env::vars());
        let path = self.path(&env);
        match Config::load(&path, &env) {
            Ok(config) => {
                for note in &config.notes {
                    eprintln!("note: {note}");
                }
                Ok(config)
            }
            Err(err) => {
                eprintln!("error: {err}");
                Err(exit::USAGE)
            }
        }
    }
}

/// Builds an agent that reports progress on the terminal.
fn agent(config: Config, printer: &Printer) -> Agent {
    Agent::new(config).with_events(printer.events())
}

/// The start of the commands that work on one job or on all of them: the
/// config, the job given (else every job), the printer and the agent. `Err`
/// is the exit code after the config error was printed.
fn jobs_and_agent(
    config: &ConfigArg,
    job: Option<&str>,
    json: bool,
) -> Result<(Vec<String>, Printer, Agent), u8> {
    let config = config.load()?;
    let jobs = match job {
        Some(job) => vec![job.to_owned()],
        None => config.jobs.iter().map(|j| j.name.clone()).collect(),
    };
    let printer = Printer::new(json);
    let agent = agent(config, &printer);
    Ok((jobs, printer, agent))
}

/// Cancels `token` on Ctrl-C or SIGTERM, so that runs clean up their partials.
pub fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("stopping: removing partial uploads and releasing the lock…");
        child.cancel();
    });
    token
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Maps a library error to an exit code after printing it with its causes.
pub fn fail(err: &AgentError) -> u8 {
    output::print_error(err);
    err.exit_code()
}

/// Options of `synback backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Jobs to back up, in order [default: every job in the config].
    jobs: Vec<String>,
    /// Print the reports as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn backup(config: &ConfigArg, args: BackupArgs) -> u8 {
    let config = match config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let jobs = match args.jobs.is_empty() {
        true => config.jobs.iter().map(|j| j.name.clone()).collect(),
        false => args.jobs.clone(),
    };
    let printer = Printer::new(args.json);
    let agent = agent(config, &printer);
    let cancel = cancel_on_signal();
    let mut worst = exit::OK;
    for job in jobs {
        let code = match agent.backup(&job, cancel.clone()).await {
            Ok(report) => {
                printer.finish_progress();
                output::print_backup(&printer, &job, &report);
                match report.status {
                    synback::backup::RunStatus::Ok => exit::OK,
                    _ => exit::PARTIAL,
                }
            }
            Err(err) => {
                printer.finish_progress();
                fail(&err)
            }
        };
        worst = worst_of(worst, code);
        if cancel.is_cancelled() {
            break;
        }
    }
    worst
}

/// The exit code that matters more: any failure beats partial beats ok.
fn worst_of(a: u8, b: u8) -> u8 {
    let rank = |c: u8| match c {
        exit::OK => 0,
        exit::PARTIAL => 1,
        _ => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Options of `synback list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The job [default: the only job, else every job].
    job: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn list(config: &ConfigArg, args: ListArgs) -> u8 {
    let (jobs, printer, agent) = match jobs_and_agent(config, args.job.as_deref(), args.json) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let mut all = Vec::new();
    for job in jobs {
        match agent.snapshots(&job).await {
            Ok(listing) => all.push((job, listing)),
            Err(err) => return fail(&err),
        }
    }
    output::print_listings(&printer, &all);
    exit::OK
}

/// Options of `synback verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Snapshot id or `latest` [default: latest].
    snapshot: Option<String>,
    /// The job (needed for `latest` when the config has several jobs).
    #[arg(long)]
    job: Option<String>,
    /// Verify every snapshot of the job.
    #[arg(long, conflicts_with = "snapshot")]
    all: bool,
    /// Download everything, check SHA-256, decompress and read every entry.
    #[arg(long)]
    deep: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn verify(config: &ConfigArg, args: VerifyArgs) -> u8 {
    let config = match config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let job = match pick_job(&config, args.job.as_deref(), args.snapshot.as_deref()) {
        Ok(job) => job,
        Err(code) => return code,
    };
    let printer = Printer::new(args.json);
    let agent = agent(config, &printer);
    let mode = match args.deep {
        true => VerifyMode::Deep,
        false => VerifyMode::Quick,
    };
    let selectors = match args.all {
        true => match agent.snapshots(&job).await {
            Ok(listing) => listing
                .snapshots
                .iter()
                .map(|s| Selector::Id(s.id.to_string()))
                .collect(),
            Err(err) => return fail(&err),
        },
        false => match selector(args.snapshot.as_deref(), None) {
            Ok(sel) => vec![sel],
            Err(code) => return code,
        },
    };
    let cancel = cancel_on_signal();
    let mut code = exit::OK;
    for sel in selectors {
        match agent.verify(&job, &sel, mode, cancel.clone()).await {
            Ok(report) => output::print_verify(&printer, &report),
            Err(err) => code = worst_of(code, fail(&err)),
        }
    }
    code
}

/// Options of `synback forget`.
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// The job [default: every job].
    job: Option<String>,
    /// Show each snapshot's fate and the reason, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn forget(config: &ConfigArg, args: ForgetArgs) -> u8 {
    let (jobs, printer, agent) = match jobs_and_agent(config, args.job.as_deref(), args.json) {
        Ok(started) => started,
        Err(code) => return code,
    };
    for job in jobs {
        match agent.forget(&job, args.dry_run).await {
            Ok(report) => output::print_forget(&printer, &job, &report, args.dry_run),
            Err(err) => return fail(&err),
        }
    }
    exit::OK
}

/// Options of `synback restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Snapshot id, or `latest` [default: latest].
    snapshot: Option<String>,
    /// Folder to restore into (created if missing).
    #[arg(long, short = 't', value_name = "DIR")]
    target: PathBuf,
    /// The job (needed for `latest` when the config has several jobs).
    #[arg(long)]
    job: Option<String>,
    /// Only paths matching this glob (as `synback ls` shows them); repeatable.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// The newest snapshot taken before this time (`2026-11-01` or `2026-11-01T12:00:00Z`).
    #[arg(long, value_name = "DATETIME", conflicts_with = "snapshot")]
    before: Option<String>,
    /// Replace files that already exist in the target.
    #[arg(long)]
    overwrite: bool,
    /// Show what would be restored, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Recreate symlinks that point outside the target (absolute links); they
    /// are created as links only, nothing is written through them.
    #[arg(long)]
    allow_external_symlinks: bool,
    /// age identity file for an encrypted snapshot [default: the job's identity_file].
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Restore from volume files copied off the NAS (in order), not from the NAS.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    from_file: Vec<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn restore(config: &ConfigArg, args: RestoreArgs) -> u8 {
    let printer = Printer::new(args.json);
    let mut opts = RestoreOptions::default();
    opts.target_dir = args.target.clone();
    opts.include = args.include.clone();
    opts.overwrite = args.overwrite;
    opts.dry_run = args.dry_run;
    opts.allow_external_symlinks = args.allow_external_symlinks;
    if !args.from_file.is_empty() {
        return restore_from_files(&printer, &args, opts).await;
    }
    let config = match config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let job = match pick_job(&config, args.job.as_deref(), args.snapshot.as_deref()) {
        Ok(job) => job,
        Err(code) => return code,
    };
    let sel = match selector(args.snapshot.as_deref(), args.before.as_deref()) {
        Ok(sel) => sel,
        Err(code) => return code,
    };
    let agent = agent(config, &printer);
    let identity = args.identity.clone();
    match agent
        .restore(&job, &sel, opts, identity, cancel_on_signal())
        .await
    {
        Ok(report) => {
            printer.finish_progress();
            output::print_restore(&printer, &report, args.dry_run);
            exit::OK
        }
        Err(err) => {
            printer.finish_progress();
            fail(&err)
        }
    }
}

async fn restore_from_files(printer: &Printer, args: &RestoreArgs, opts: RestoreOptions) -> u8 {
    let result = synback::agent::restore_from_files(
        &args.from_file,
        opts,
        args.identity.clone(),
        cancel_on_signal(),
    )
    .await;
    match result {
        Ok(report) => {
            output::print_restore(printer, &report, args.dry_run);
            exit::OK
        }
        Err(err) => fail(&err),
    }
}

/// Options of `synback ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Snapshot id, or `latest`.
    snapshot: String,
    /// Only entries under this path or matching this glob.
    path: Option<String>,
    /// The job (needed for `latest` when the config has several jobs).
    #[arg(long)]
    job: Option<String>,
    /// age identity file for an encrypted snapshot.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// One JSON object per entry on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn ls(config: &ConfigArg, args: LsArgs) -> u8 {
    let (config, job, sel) = match load_for(config, args.job.as_deref(), &args.snapshot) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let printer = Printer::new(args.json);
    let agent = agent(config, &printer);
    let include: Vec<String> = args.path.iter().cloned().collect();
    let json = args.json;
    let each = move |entry: &synback::archive::EntryInfo| output::print_entry(entry, json);
    match agent
        .ls(
            &job,
            &sel,
            include,
            args.identity.clone(),
            cancel_on_signal(),
            each,
        )
        .await
    {
        Ok(_) => exit::OK,
        Err(err) => fail(&err),
    }
}

/// Options of `synback diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The older snapshot (id or `latest`).
    a: String,
    /// The newer snapshot (id or `latest`).
    b: String,
    /// The job (needed for `latest` when the config has several jobs).
    #[arg(long)]
    job: Option<String>,
    /// age identity file for encrypted snapshots.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn diff(config: &ConfigArg, args: DiffArgs) -> u8 {
    let (config, job, a) = match load_for(config, args.job.as_deref(), &args.a) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let b = match selector(Some(&args.b), None) {
        Ok(sel) => sel,
        Err(code) => return code,
    };
    let printer = Printer::new(args.json);
    let agent = agent(config, &printer);
    match agent
        .diff(&job, &a, &b, args.identity.clone(), cancel_on_signal())
        .await
    {
        Ok(diff) => {
            output::print_diff(&printer, &diff);
            exit::OK
        }
        Err(err) => fail(&err),
    }
}

/// Options of `synback check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// Also log in to the NAS and check every job's share and folder.
    #[arg(long)]
    online: bool,
}

pub async fn check_config(config: &ConfigArg, args: CheckConfigArgs) -> u8 {
    let config = match config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!(
        "{}: ok ({} job{})",
        config.path.display(),
        config.jobs.len(),
        if config.jobs.len() == 1 { "" } else { "s" }
    );
    for job in &config.jobs {
        println!("  {:<16} → {}", job.name, job.remote_dir());
    }
    if !args.online {
        return exit::OK;
    }
    let printer = Printer::new(false);
    let agent = agent(config, &printer);
    match agent.check_online().await {
        Ok(report) => output::print_online_check(&report),
        Err(err) => fail(&err),
    }
}

/// Options of `synback login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The 6-digit code from the authenticator app [default: asked on the terminal].
    #[arg(long)]
    otp: Option<String>,
}

pub async fn login(config: &ConfigArg, args: LoginArgs) -> u8 {
    let config = match config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let code = match args.otp {
        Some(code) => code,
        None => match output::prompt("2FA code from your authenticator app: ") {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: cannot read the code from the terminal: {err}");
                return exit::USAGE;
            }
        },
    };
    let printer = Printer::new(false);
    let agent = agent(config, &printer);
    match agent.login_with_otp(code.trim()).await {
        Ok(path) => {
            println!(
                "logged in; this device is remembered ({}), unattended runs will not ask for a code",
                path.display()
            );
            exit::OK
        }
        Err(err) => fail(&err),
    }
}

/// The config, the job and the snapshot selector of a command that names
/// one snapshot (`latest` or an id); `Err` is the exit code, already reported.
fn load_for(
    config: &ConfigArg,
    job: Option<&str>,
    snapshot: &str,
) -> Result<(Config, String, Selector), u8> {
    let config = config.load()?;
    let job = pick_job(&config, job, Some(snapshot))?;
    let sel = selector(Some(snapshot), None)?;
    Ok((config, job, sel))
}

/// The job a command works on: given, implied by a snapshot id, or the only one.
fn pick_job(config: &Config, job: Option<&str>, snapshot: Option<&str>) -> Result<String, u8> {
    if let Some(job) = job {
        return Ok(job.to_owned());
    }
    if let Some(id) = snapshot.filter(|s| *s != "latest")
        && let Ok(id) = synback::repo::layout::SnapshotId::parse(id)
    {
        return Ok(id.job().as_str().to_owned());
    }
    match config.jobs.as_slice() {
        [only] => Ok(only.name.clone()),
        _ => {
            let names: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
            eprintln!(
                "error: the config has several jobs ({}); name one with --job",
                names.join(", ")
            );
            Err(exit::USAGE)
        }
    }
}

/// Turns `latest`, a snapshot id or `--before` into a [`Selector`].
fn selector(snapshot: Option<&str>, before: Option<&str>) -> Result<Selector, u8> {
    if let Some(text) = before {
        return parse_time(text).map(Selector::Before).ok_or_else(|| {
            eprintln!(
                "error: --before {text:?} is not a date: write 2026-11-01, 2026-11-01T12:00:00 or 2026-11-01T12:00:00Z (UTC)"
            );
            exit::USAGE
        });
    }
    match snapshot {
        None | Some("latest") => Ok(Selector::Latest),
        Some(id) => match synback::repo::layout::SnapshotId::parse(id) {
            Ok(_) => Ok(Selector::Id(id.to_owned())),
            Err(_) => {
                eprintln!(
                    "error: {id:?} is not a snapshot id (they look like home-20261123T023000Z; `synback list` shows them) or `latest`"
                );
                Err(exit::USAGE)
            }
        },
    }
}

/// Parses a date or date-time, taken as UTC; a bare date means its midnight.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, fmt) {
            return Some(t.and_utc());
        }
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc())
}

#[allow(dead_code)]
fn _assert_send(_: Arc<Agent>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_accepts_dates_and_times() {
        assert_eq!(
            parse_time("2026-11-01").unwrap().to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-11-01T12:30:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-01T11:30:00+00:00"
        );
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn failures_beat_partial_beats_ok() {
        assert_eq!(worst_of(exit::OK, exit::PARTIAL), exit::PARTIAL);
        assert_eq!(worst_of(exit::PARTIAL, exit::AUTH), exit::AUTH);
        assert_eq!(worst_of(exit::LOCKED, exit::OK), exit::LOCKED);
    }
}

//! How a home-automation appliance embeds synback: build an [`Agent`] from
//! TOML text, show its progress events, let the user cancel, and turn
//! errors into messages for the appliance's own screen.
//!
//! ```text
//! SYNBACK_URL=https://nas.local:5001 SYNBACK_USER=backup SYNBACK_PASSWORD=... \
//! appliance --source DIR [--source DIR...] --state DIR
//!           [--share NAME] [--path FOLDER] [--job NAME] [--volume-size SIZE]
//!           [--cancel-after DURATION]
//! ```
//!
//! `--url` and `--user` may replace the environment variables; the
//! password is only read from `SYNBACK_PASSWORD`, so it never shows in a
//! process listing. `--cancel-after 2s` cancels the run as a user pressing
//! "stop" would: synback removes what it uploaded and releases the NAS
//! lock before `backup` returns.
//!
//! This example prints: it is the appliance's user interface. The library
//! itself never does.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use synback::agent::{VerifyMode, exit};
use synback::event::ChannelEvents;
use synback::restore::Selector;
use synback::{Agent, CancellationToken, Config, ConfigEnv, Error, Event, Phase};

/// Exit code when the user cancelled (as a shell reports Ctrl-C).
const CANCELLED: u8 = 130;

/// What the appliance's settings screen would hold.
#[derive(Debug)]
struct Settings {
    url: String,
    user: String,
    sources: Vec<String>,
    state: String,
    share: String,
    path: String,
    job: String,
    volume_size: String,
    cancel_after: Option<Duration>,
}

fn main() -> ExitCode {
    let settings = match parse_args(std::env::args().skip(1).collect()) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("appliance: {msg}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("appliance: cannot start the runtime: {err}");
            return ExitCode::from(exit::FAILED);
        }
    };
    ExitCode::from(runtime.block_on(run(settings)))
}

fn parse_args(args: Vec<String>) -> Result<Settings, String> {
    let mut s = Settings {
        url: std::env::var("SYNBACK_URL").unwrap_or_default(),
        user: std::env::var("SYNBACK_USER").unwrap_or_default(),
        sources: Vec::new(),
        state: String::new(),
        share: "backup".to_owned(),
        path: "appliance".to_owned(),
        job: "appliance".to_owned(),
        volume_size: "1GiB".to_owned(),
        cancel_after: None,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => s.url = value()?,
            "--user" => s.user = value()?,
            "--source" => s.sources.push(value()?),
            "--state" => s.state = value()?,
            "--share" => s.share = value()?,
            "--path" => s.path = value()?,
            "--job" => s.job = value()?,
            "--volume-size" => s.volume_size = value()?,
            "--cancel-after" => {
                let text = value()?;
                let after = humantime::parse_duration(&text)
                    .map_err(|e| format!("--cancel-after {text:?}: {e}"))?;
                s.cancel_after = Some(after);
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if s.url.is_empty() || s.user.is_empty() {
        return Err("set SYNBACK_URL and SYNBACK_USER (or --url and --user)".to_owned());
    }
    if s.sources.is_empty() || s.state.is_empty() {
        return Err("give at least one --source and a --state folder".to_owned());
    }
    Ok(s)
}

/// The config as the appliance would write it from its settings. A TOML
/// string is the simplest way in; a [`Config`] value built by other means
/// works the same with [`Agent::new`].
fn config_text(s: &Settings) -> String {
    let sources: Vec<String> = s.sources.iter().map(|p| toml_string(p)).collect();
    format!(
        "[nas]\nurl = {url}\nuser = {user}\npassword_env = \"SYNBACK_PASSWORD\"\n\n\
         [state]\ndir = {state}\n\n\
         [[job]]\nname = {job}\nsources = [{sources}]\nshare = {share}\npath = {path}\n\
         volume_size = {volume}\n\n[job.retention]\nkeep_last = 5\n",
        url = toml_string(&s.url),
        user = toml_string(&s.user),
        state = toml_string(&s.state),
        job = toml_string(&s.job),
        sources = sources.join(", "),
        share = toml_string(&s.share),
        path = toml_string(&s.path),
        volume = toml_string(&s.volume_size),
    )
}

/// A TOML basic string (quotes and escapes included).
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

async fn run(settings: Settings) -> u8 {
    // The library reads no environment variables: hand it the one it needs.
    let env = ConfigEnv::from_vars(std::env::vars().filter(|(name, _)| name == "SYNBACK_PASSWORD"));
    let config = match Config::from_toml_str(&config_text(&settings), "appliance.toml", &env) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("settings are not usable: {}", synback::error_chain(&err));
            return exit::USAGE;
        }
    };

    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let agent = Agent::new(config).with_events(Arc::new(ChannelEvents(sender)));
    let screen = tokio::spawn(async move {
        while let Some(event) = receiver.recv().await {
            show(&event);
        }
    });

    // The "stop" button: here a timer.
    let cancel = CancellationToken::new();
    let stop_button = settings.cancel_after.map(|after| {
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            println!("[user] stop pressed");
            stop.cancel();
        })
    });

    let outcome = backup_and_check(&agent, &settings.job, cancel.clone()).await;
    if let Some(button) = stop_button {
        button.abort();
    }
    // The agent holds the event sender: drop it so the screen task ends
    // after the last event.
    drop(agent);
    let _ = screen.await;
    match outcome {
        Ok(()) => exit::OK,
        Err(err) if err.is_cancelled() => {
            println!("backup cancelled: nothing was kept on the NAS");
            CANCELLED
        }
        Err(err) => {
            println!("{}", user_message(&err));
            if let Some(hint) = err.hint() {
                println!("hint: {hint}");
            }
            err.exit_code()
        }
    }
}

async fn backup_and_check(
    agent: &Agent,
    job: &str,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let report = agent.backup(job, cancel.clone()).await?;
    println!(
        "backup done: {} ({} files, {} bytes read, {} bytes stored in {} volume(s))",
        report.snapshot,
        report.counts.files,
        report.bytes_read,
        report.bytes_stored,
        report.volumes.len()
    );
    let listing = agent.snapshots(job).await?;
    for snapshot in &listing.snapshots {
        println!("on the NAS: {}", snapshot.id);
    }
    let check = agent
        .verify(
            job,
            &Selector::Id(report.snapshot.clone()),
            VerifyMode::Quick,
            cancel,
        )
        .await?;
    println!("verified: {} ({})", check.snapshot, check.summary());
    Ok(())
}

/// One line on the appliance's screen per event.
fn show(event: &Event) {
    match event {
        Event::Phase(Phase::Done) => println!("[phase] done"),
        Event::Phase(phase) => println!("[phase] {phase:?}"),
        Event::Progress(p) => {
            let total = p
                .total_bytes
                .map(|t| format!(" of {t}"))
                .unwrap_or_default();
            let eta = p
                .eta
                .map(|eta| format!(", about {} s left", eta.as_secs()))
                .unwrap_or_default();
            println!(
                "[progress] {} files, {}{total} bytes read, {} bytes sent{eta}{}",
                p.files,
                p.bytes,
                p.transferred,
                p.current
                    .as_deref()
                    .map(|c| format!(", at {c}"))
                    .unwrap_or_default()
            );
        }
        Event::VolumeUploaded { name, size } => {
            println!("[volume] {name} sent ({size} bytes), the NAS checks its MD5")
        }
        Event::VolumeStored { name, size } => println!("[volume] {name} stored ({size} bytes)"),
        Event::VolumeRetry {
            name,
            attempt,
            reason,
        } => println!("[volume] {name} failed (attempt {attempt}), sending again: {reason}"),
        Event::Warning { path, reason } => println!("[warning] {path}: {reason}"),
        other => println!("[event] {other:?}"),
    }
}

/// What an appliance would show for each kind of failure.
fn user_message(err: &Error) -> String {
    let what = match err.exit_code() {
        exit::AUTH => "The NAS refused the user name or password.",
        exit::UNREACHABLE => "The NAS cannot be reached; is it on and on the network?",
        exit::LOCKED => "Another device is backing up to this folder right now.",
        exit::VERIFY => "The NAS holds different bytes than were sent; check its disks.",
        exit::USAGE => "The settings need attention.",
        _ => "The backup failed.",
    };
    format!("{what} ({})", synback::error_chain(err))
}

//! `synback demo`: the whole cycle against the built-in NAS emulator.
//!
//! Starts the emulator on loopback, writes a real config file, and then
//! runs exactly what a user would: backup, list, verify, a change, a second
//! backup, a restore of the first snapshot and a comparison with the
//! original. Everything lives in one temporary folder that is removed at
//! the end (unless `--keep`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use synback::agent::{Agent, VerifyMode};
use synback::config::{Config, ConfigEnv};
use synback::emulator::{Emulator, EmulatorConfig};
use synback::restore::{RestoreOptions, Selector};
use synback::secret::Secret;
use tokio_util::sync::CancellationToken;

use super::exit;
use super::output::{self, Printer};

/// Options of `synback demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Back up this folder instead of a generated sample (it is only read).
    #[arg(long, value_name = "DIR")]
    source: Option<PathBuf>,
    /// Keep the temporary folder (NAS files, config, restore) and print its path.
    #[arg(long)]
    keep: bool,
}

const JOB: &str = "demo";
const USER: &str = "demo";

/// Runs the demo; returns the exit code.
pub async fn run(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo failed: {message}");
            ExitCode::from(exit::FAILED)
        }
    }
}

async fn demo(args: DemoArgs) -> Result<(), String> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("synback-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary folder: {e}"))?;
    let base = tmp.path().to_path_buf();
    let source = match &args.source {
        Some(dir) => dir.clone(),
        None => {
            let dir = base.join("sample");
            make_sample(&dir).map_err(|e| format!("cannot write the sample folder: {e}"))?;
            dir
        }
    };

    step("starting the NAS emulator on loopback");
    let password = random_password();
    let nas = start_emulator(&base, &password).await?;
    println!("  {} (share \"backup\", user \"{USER}\")", nas.url());

    let config_path = write_config(&base, &nas.url(), &password, &source)?;
    let config = Config::load(&config_path, &ConfigEnv::new()).map_err(|e| e.to_string())?;
    println!("  config: {}", config_path.display());
    let printer = Printer::new(false);
    let agent = Agent::new(config).with_events(printer.events());
    let cancel = CancellationToken::new();

    step(&format!("synback backup {JOB}"));
    let first = agent
        .backup(JOB, cancel.clone())
        .await
        .map_err(|e| describe(&e))?;
    printer.finish_progress();
    output::print_backup(&printer, JOB, &first);

    step(&format!("synback list {JOB}"));
    let listing = agent.snapshots(JOB).await.map_err(|e| describe(&e))?;
    output::print_listings(&printer, &[(JOB.to_owned(), listing)]);

    step("synback verify --deep latest");
    let verified = agent
        .verify(JOB, &Selector::Latest, VerifyMode::Deep, cancel.clone())
        .await
        .map_err(|e| describe(&e))?;
    output::print_verify(&printer, &verified);

    step("changing a file, then a second backup");
    let changed = change_a_file(&source, args.source.is_some())?;
    wait_for_next_second().await;
    let second = agent
        .backup(JOB, cancel.clone())
        .await
        .map_err(|e| describe(&e))?;
    printer.finish_progress();
    output::print_backup(&printer, JOB, &second);

    step(&format!(
        "synback diff {} {}",
        first.snapshot, second.snapshot
    ));
    let diff = agent
        .diff(
            JOB,
            &Selector::Id(first.snapshot.clone()),
            &Selector::Id(second.snapshot.clone()),
            None,
            cancel.clone(),
        )
        .await
        .map_err(|e| describe(&e))?;
    output::print_diff(&printer, &diff);

    let restore_dir = base.join("restore");
    step(&format!(
        "synback restore {} --target {}",
        first.snapshot,
        restore_dir.display()
    ));
    let mut opts = RestoreOptions::default();
    opts.target_dir = restore_dir.clone();
    let report = agent
        .restore(
            JOB,
            &Selector::Id(first.snapshot.clone()),
            opts,
            None,
            cancel,
        )
        .await
        .map_err(|e| describe(&e))?;
    printer.finish_progress();
    output::print_restore(&printer, &report, false);
    if let Some((path, original, mtime)) = &changed {
        undo_change(path, original, *mtime)
            .map_err(|e| format!("cannot undo the demo change: {e}"))?;
    }
    compare(&source, &restore_dir)?;
    println!("  the restored tree is identical to the original (contents, modes, mtimes, links)");

    drop(nas);
    finish(tmp, args.keep, started);
    Ok(())
}

fn describe(err: &synback::agent::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    text
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn random_password() -> Secret {
    let n: u128 = rand::random();
    Secret::new(format!("demo-{n:032x}"))
}

async fn start_emulator(base: &Path, password: &Secret) -> Result<Emulator, String> {
    let root = base.join("nas");
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let cfg = EmulatorConfig::new(root, USER, password.clone());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    Emulator::start(cfg, addr)
        .await
        .map_err(|e| format!("cannot start the emulator: {e}"))
}

/// Writes the config a user would write, with the password in a 0600 file.
fn write_config(
    base: &Path,
    url: &str,
    password: &Secret,
    source: &Path,
) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let password_file = base.join("password");
    std::fs::write(&password_file, password.expose()).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    let state = base.join("state");
    let text = format!(
        r#"# Written by `synback demo`: a config like the one you would write for a real NAS.
[nas]
url = "{url}"
user = "{USER}"
password_file = "{password}"

[state]
dir = "{state}"

[[job]]
name = "{JOB}"
sources = ["{source}"]
excludes = ["*.tmp"]
share = "backup"
path = "synback"
volume_size = "4MiB"

[job.retention]
keep_last = 5
"#,
        password = password_file.display(),
        state = state.display(),
        source = source.display(),
    );
    let path = base.join("synback.toml");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    Ok(path)
}

/// A small tree with text, a compressible log, random bytes, a symlink and
/// an excluded file.
fn make_sample(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("docs/notes"))?;
    std::fs::create_dir_all(dir.join("photos"))?;
    std::fs::create_dir_all(dir.join("empty"))?;
    std::fs::write(
        dir.join("docs/readme.txt"),
        "Back up early, back up often.\n",
    )?;
    for i in 0..40 {
        std::fs::write(
            dir.join(format!("docs/notes/note-{i:02}.md")),
            format!(
                "# Note {i}\n\n{}\n",
                "Some words that compress well. ".repeat(20 + i)
            ),
        )?;
    }
    let log: String = (0..60_000)
        .map(|i| format!("2026-11-23 02:30:{:02} backup step {i} ok\n", i % 60))
        .collect();
    std::fs::write(dir.join("docs/app.log"), log)?;
    let noise: Vec<u8> = (0..6 * 1024 * 1024).map(|_| rand::random::<u8>()).collect();
    std::fs::write(dir.join("photos/holiday.raw"), noise)?;
    std::fs::write(dir.join("scratch.tmp"), "excluded by the config\n")?;
    let script = dir.join("docs/run.sh");
    std::fs::write(&script, "#!/bin/sh\necho hello\n")?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750))?;
    std::os::unix::fs::symlink("docs/readme.txt", dir.join("readme-link"))?;
    Ok(())
}

/// Appends a line to a file of the sample; returns the file and its old
/// content so that it can be put back before comparing with the restore.
fn change_a_file(
    source: &Path,
    user_source: bool,
) -> Result<Option<(PathBuf, Vec<u8>, std::time::SystemTime)>, String> {
    if user_source {
        println!("  (your --source is never modified; the second snapshot has the same content)");
        return Ok(None);
    }
    let path = source.join("docs/readme.txt");
    let original = std::fs::read(&path).map_err(|e| e.to_string())?;
    let mtime = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|e| e.to_string())?;
    let mut changed = original.clone();
    changed.extend_from_slice(b"Restores are what count.\n");
    std::fs::write(&path, &changed).map_err(|e| e.to_string())?;
    println!("  changed {}", path.display());
    Ok(Some((path, original, mtime)))
}

/// Puts the file's old content and mtime back.
fn undo_change(path: &Path, original: &[u8], mtime: std::time::SystemTime) -> std::io::Result<()> {
    std::fs::write(path, original)?;
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(mtime)
}

/// Snapshot ids have one-second resolution.
async fn wait_for_next_second() {
    let now = chrono::Utc::now();
    let ms = 1000 - u64::from(now.timestamp_subsec_millis()) + 10;
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// Compares the source with the restored copy (it sits under the source's
/// prefix, the source folder's name).
fn compare(source: &Path, restore: &Path) -> Result<(), String> {
    let name = source
        .file_name()
        .ok_or_else(|| format!("{} has no folder name", source.display()))?;
    let restored = restore.join(name);
    let mut diffs = Vec::new();
    compare_dir(source, &restored, &mut diffs)
        .map_err(|e| format!("comparing the restore failed: {e}"))?;
    match diffs.as_slice() {
        [] => Ok(()),
        some => Err(format!(
            "the restore differs from the original: {}",
            some.join("; ")
        )),
    }
}

fn finish(tmp: tempfile::TempDir, keep: bool, started: Instant) {
    println!("\n==> done in {:.1}s", started.elapsed().as_secs_f64());
    if keep {
        let path = tmp.keep();
        println!(
            "  kept {} (config, NAS files under nas/, restore/)",
            path.display()
        );
    }
    println!(
        "\nNext, with a real NAS: write a config like the demo's (see config.example.toml and the README),\n\
         then `synback check-config --online`, `synback login` if the account uses 2FA,\n\
         `synback backup` and `synback list`. Restores: `synback restore latest --target DIR`."
    );
}

/// Walks `a` and records every way `b` differs: missing entries, content,
/// permission bits, mtime (seconds) and link targets. `*.tmp` files are
/// excluded by the demo config and must be absent.
fn compare_dir(a: &Path, b: &Path, diffs: &mut Vec<String>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut names: Vec<_> = std::fs::read_dir(a)?.collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let (pa, pb) = (entry.path(), b.join(entry.file_name()));
        let excluded = pa.extension().is_some_and(|e| e == "tmp");
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa)?,
            std::fs::symlink_metadata(&pb),
        );
        let mb = match (mb, excluded) {
            (Err(_), true) => continue,
            (Ok(_), true) => {
                diffs.push(format!("{} was excluded but restored", pb.display()));
                continue;
            }
            (Err(_), false) => {
                diffs.push(format!("{} is missing", pb.display()));
                continue;
            }
            (Ok(mb), false) => mb,
        };
        if ma.file_type().is_symlink() {
            if std::fs::read_link(&pa)? != std::fs::read_link(&pb).unwrap_or_default() {
                diffs.push(format!("{} points elsewhere", pb.display()));
            }
            continue;
        }
        if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            diffs.push(format!(
                "{} has mode {:o}, not {:o}",
                pb.display(),
                mb.mode() & 0o7777,
                ma.mode() & 0o7777
            ));
        }
        if ma.is_dir() {
            compare_dir(&pa, &pb, diffs)?;
            continue;
        }
        if ma.mtime() != mb.mtime() {
            diffs.push(format!("{} has another mtime", pb.display()));
        }
        if std::fs::read(&pa)? != std::fs::read(&pb)? {
            diffs.push(format!("{} has other content", pb.display()));
        }
    }
    Ok(())
}

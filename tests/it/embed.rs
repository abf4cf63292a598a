//! The embedding examples, run as real child processes against the
//! emulator: `examples/appliance.rs` (progress, completion, cancellation)
//! and `examples/library_only.rs` (the library prints nothing).
//!
//! The example binaries are built by `cargo test --all-targets` (or
//! `cargo build --examples`) next to this test binary.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use synback::agent::{Agent, VerifyMode};
use synback::config::{Config, ConfigEnv};
use synback::event::{ChannelEvents, Event, Phase, Progress};
use synback::restore::{RestoreOptions, Selector};
use tokio_util::sync::CancellationToken;

use crate::support::{PASSWORD, USER, World, tree_diff};

/// `target/<profile>/<name>`, from `target/<profile>/deps/it-*`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_owned()
}

/// `target/<profile>/examples/<name>`, from `target/<profile>/deps/it-*`.
fn example(name: &str) -> PathBuf {
    let path = profile_dir().join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo test --all-targets` or `cargo build --examples` first",
        path.display()
    );
    path
}

async fn run(program: PathBuf, world: &World, args: &[&str]) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("SYNBACK_URL", world.nas.url())
        .env("SYNBACK_USER", USER)
        .env("SYNBACK_PASSWORD", PASSWORD)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the example did not finish within 60 s")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Names in the appliance's job folder on the emulator's disk.
fn remote_names(world: &World, path: &str, job: &str) -> Vec<String> {
    let dir = world.nas.share_path("backup").join(path).join(job);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('@'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// An agent of our own on the same NAS folder, to check what the example did.
fn checker(world: &World, path: &str, job: &str) -> Agent {
    let text = format!(
        "[nas]\nurl = \"{}\"\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
         [state]\ndir = \"{}\"\n\
         [[job]]\nname = \"{job}\"\nsources = [\"{}\"]\nshare = \"backup\"\npath = \"{path}\"\n",
        world.nas.url(),
        world.dir.path().join("checker-state").display(),
        world.source.display(),
    );
    Agent::new(Config::from_toml_str(&text, "checker.toml", &ConfigEnv::new()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appliance_example_backs_up_shows_progress_and_verifies() {
    let world = World::new("").await;
    let state = world.dir.path().join("appliance-state");
    let out = run(
        example("appliance"),
        &world,
        &[
            "--source",
            world.source.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--volume-size",
            "1MiB",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    for line in [
        "[phase] Connecting",
        "[phase] Transferring",
        "[progress] ",
        "[volume] ",
        "[phase] done",
        "backup done: appliance-",
        "verified: appliance-",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }

    let listing = checker(&world, "appliance", "appliance")
        .snapshots("appliance")
        .await
        .unwrap();
    assert_eq!(listing.snapshots.len(), 1, "{stdout}");
    let id = listing.snapshots[0].id.to_string();
    assert!(stdout.contains(&format!("on the NAS: {id}")), "{stdout}");
    assert!(
        listing.snapshots[0].archives.len() > 1,
        "3 MiB of noise in 1 MiB volumes"
    );
    assert!(listing.partials.is_empty() && listing.lock.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_appliance_leaves_no_partial_and_no_lock() {
    let world = World::new("").await;
    world
        .nas
        .faults()
        .update(|f| f.slow_kib_per_sec = Some(512));
    let state = world.dir.path().join("appliance-state");
    let out = run(
        example("appliance"),
        &world,
        &[
            "--source",
            world.source.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--volume-size",
            "1MiB",
            "--cancel-after",
            "1500ms",
        ],
    )
    .await;
    world.nas.faults().clear();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("[user] stop pressed"), "{stdout}");
    assert!(stdout.contains("[phase] Transferring"), "{stdout}");
    assert!(stdout.contains("backup cancelled"), "{stdout}");

    let names = remote_names(&world, "appliance", "appliance");
    assert!(
        names
            .iter()
            .all(|n| !n.ends_with(".partial") && n != ".lock" && !n.contains(".tar.zst")),
        "left on the NAS: {names:?}"
    );
    let listing = checker(&world, "appliance", "appliance")
        .snapshots("appliance")
        .await
        .unwrap();
    assert!(listing.snapshots.is_empty() && listing.orphans.is_empty());
    assert!(listing.partials.is_empty() && listing.lock.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_prints_nothing_during_backup_verify_and_restore() {
    let world = World::new("").await;
    let source = world.source.to_str().unwrap().to_owned();
    let program = example("library_only");

    let state = world.dir.path().join("quiet-state");
    let restored = world.dir.path().join("quiet-restore");
    let quiet = run(
        program.clone(),
        &world,
        &[&source, state.to_str().unwrap(), restored.to_str().unwrap()],
    )
    .await;
    assert!(quiet.status.success(), "{:?}", quiet);
    assert_eq!(text(&quiet.stdout), "", "stdout");
    assert_eq!(text(&quiet.stderr), "", "stderr");
    // It did the work: the restore equals the source.
    // Archive paths start with the source folder's name.
    let diffs = tree_diff(&world.source, &restored.join("data"), &|_| false);
    assert!(diffs.is_empty(), "{diffs:?}");

    // The same run with a subscriber installed by the program does log,
    // so the capture above would have seen output had there been any.
    let restored = world.dir.path().join("logged-restore");
    let logged = run(
        program,
        &world,
        &[
            &source,
            state.to_str().unwrap(),
            restored.to_str().unwrap(),
            "--log",
            // Another folder: both runs may fall in the same second, and
            // snapshot ids have a one-second resolution.
            "--path",
            "logged",
        ],
    )
    .await;
    assert!(logged.status.success(), "{:?}", logged);
    assert_eq!(text(&logged.stdout), "", "the subscriber writes to stderr");
    let log = text(&logged.stderr);
    assert!(
        log.contains("manifest written: snapshot committed"),
        "{log}"
    );
    assert!(!log.contains(PASSWORD), "{log}");
}

/// The events an agent sent through a channel, in order.
fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    events
}

fn progress_of(events: &[Event]) -> Vec<Progress> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Progress(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// A backup learns its input total from the scan ahead of the pack (on
/// the first run too) and what it will store from the previous snapshot,
/// and reports an ETA; a restore reports progress against the snapshot's
/// size down to an ETA of zero; a verify says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_carries_totals_and_an_eta() {
    let world = World::new("volume_size = \"1MiB\"").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let agent = world.agent().with_events(Arc::new(ChannelEvents(tx)));
    let cancel = CancellationToken::new;

    let first = agent.backup("home", cancel()).await.unwrap();
    let progress = progress_of(&drain(&mut rx));
    assert!(!progress.is_empty());
    assert!(
        progress.iter().all(|p| p.total_transferred.is_none()),
        "a first run has no previous snapshot to estimate its upload from: {progress:?}"
    );
    // The scan ahead of the pack learns the input's size (on this small
    // tree the pack may finish first); the final report has it exactly.
    assert!(
        progress
            .iter()
            .all(|p| p.total_bytes.is_none_or(|t| t == first.bytes_read))
            && progress.last().unwrap().total_bytes == Some(first.bytes_read),
        "the input total: {progress:?}"
    );
    let first_stored = agent.snapshots("home").await.unwrap().snapshots[0].archive_size();

    // (Reports come at most every 200 ms, and zstd takes megabytes of
    // input per job before the first byte comes out: on a small tree only
    // the first and the final report. The ETA arithmetic is unit-tested
    // in src/event.rs.)
    let second = agent.backup("home", cancel()).await.unwrap();
    let progress = progress_of(&drain(&mut rx));
    assert!(
        progress
            .iter()
            .all(|p| p.total_bytes == Some(first.bytes_read)
                && p.total_transferred == Some(first_stored)),
        "the estimates are what the previous run read and stored: {progress:?}"
    );
    // The archiver's final counts, then the uploads up to the last volume.
    let last = progress.last().unwrap();
    assert_eq!(last.bytes, first.bytes_read, "{last:?}");
    assert!(last.transferred >= second.bytes_stored, "{last:?}");
    assert!(progress.iter().any(|p| p.eta.is_some()), "{progress:?}");
    let elapsed: Vec<Duration> = progress.iter().map(|p| p.elapsed).collect();
    assert!(elapsed.is_sorted(), "{elapsed:?}");

    let into = world.dir.path().join("restored");
    let mut opts = RestoreOptions::default();
    opts.target_dir = into.clone();
    agent
        .restore("home", &Selector::Latest, opts, None, cancel())
        .await
        .unwrap();
    let events = drain(&mut rx);
    assert_eq!(events.first(), Some(&Event::Phase(Phase::Restoring)));
    let progress = progress_of(&events);
    let listing = agent.snapshots("home").await.unwrap();
    let size: u64 = listing.latest().unwrap().archive_size();
    assert!(
        progress
            .iter()
            .all(|p| p.total_transferred == Some(size) && p.transferred <= size),
        "{size}: {progress:?}"
    );
    let last = progress.last().unwrap();
    assert_eq!(
        (last.transferred, last.eta),
        (size, Some(Duration::ZERO)),
        "{progress:?}"
    );

    agent
        .verify("home", &Selector::Latest, VerifyMode::Quick, cancel())
        .await
        .unwrap();
    assert!(drain(&mut rx).contains(&Event::Phase(Phase::Verifying)));
}

/// Each volume is announced twice, in both upload modes: when its bytes
/// reached the NAS (the NAS's MD5 task, which moves no counter, follows)
/// and once that MD5 matched; the sizes are the report's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_volume_is_announced_uploaded_then_stored() {
    for mode in ["spool", "stream"] {
        let world = World::new(&format!("volume_size = \"1MiB\"\nupload_mode = \"{mode}\"")).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let agent = world.agent().with_events(Arc::new(ChannelEvents(tx)));
        let report = agent
            .backup("home", CancellationToken::new())
            .await
            .unwrap();
        let events = drain(&mut rx);
        assert!(report.volumes.len() >= 2, "{mode}: {report:?}");
        let announced = events
            .iter()
            .filter(|e| matches!(e, Event::VolumeUploaded { .. }))
            .count();
        assert_eq!(
            announced,
            report.volumes.len(),
            "{mode}: one per volume, none for the manifest: {events:?}"
        );
        for volume in &report.volumes {
            let at = |wanted: &Event| events.iter().position(|e| e == wanted);
            let uploaded = at(&Event::VolumeUploaded {
                name: volume.name.clone(),
                size: volume.info.size,
            });
            let stored = at(&Event::VolumeStored {
                name: volume.name.clone(),
                size: volume.info.size,
            });
            assert!(
                matches!((uploaded, stored), (Some(u), Some(s)) if u < s),
                "{mode}, {}: {events:?}",
                volume.name
            );
        }
    }
}

/// A NAS that accepts connections and never answers: discovery and login
/// would retry for minutes. Cancelling must end the backup at once, as
/// cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_while_the_nas_does_not_answer_returns_at_once() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[nas]\nurl = \"{url}\"\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
         [state]\ndir = \"{}\"\n\
         [[job]]\nname = \"home\"\nsources = [\"{}\"]\nshare = \"backup\"\npath = \"pc\"\n",
        dir.path().join("state").display(),
        dir.path().display(),
    );
    let agent = Agent::new(Config::from_toml_str(&text, "silent.toml", &ConfigEnv::new()).unwrap());
    let token = CancellationToken::new();
    let stopper = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stopper.cancel();
    });
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), agent.backup("home", token))
        .await
        .expect("the cancelled backup kept waiting for the NAS");
    let err = result.unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    held.abort();
}

/// Stream mode (no spool files): a cancel during the upload removes the
/// partial upload and the lock, and the error says it was a cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_streamed_backup_leaves_no_partial_and_no_lock() {
    let world = World::new("volume_size = \"1MiB\"\nupload_mode = \"stream\"").await;
    world
        .nas
        .faults()
        .update(|f| f.slow_kib_per_sec = Some(512));
    let token = CancellationToken::new();
    let stopper = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stopper.cancel();
    });
    let err = world.agent().backup("home", token).await.unwrap_err();
    world.nas.faults().clear();
    assert!(err.is_cancelled(), "{err:?}");
    let listing = world.agent().snapshots("home").await.unwrap();
    assert!(
        listing.snapshots.is_empty() && listing.orphans.is_empty(),
        "{listing:?}"
    );
    assert!(
        listing.partials.is_empty() && listing.lock.is_none(),
        "{listing:?}"
    );
}

/// The library-only build (examples/library-only: the same program as
/// `examples/library_only.rs`, against synback with `default-features =
/// false`) backs up, verifies and restores without a word on stdout or
/// stderr. scripts/test builds it (`cargo build -p synback-library-only`)
/// before the tests; without it the test is skipped, except under CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_only_build_runs_silently() {
    let program = profile_dir().join("library-only");
    if !program.is_file() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{} is not built: cargo build -p synback-library-only",
            program.display()
        );
        eprintln!("skipped: {} is not built", program.display());
        return;
    }
    let world = World::new("").await;
    let state = world.dir.path().join("lib-only-state");
    let restored = world.dir.path().join("lib-only-restore");
    let out = run(
        program,
        &world,
        &[
            world.source.to_str().unwrap(),
            state.to_str().unwrap(),
            restored.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "", "stdout");
    assert_eq!(text(&out.stderr), "", "stderr");
    let diffs = tree_diff(&world.source, &restored.join("data"), &|_| false);
    assert!(diffs.is_empty(), "{diffs:?}");
}

/// An appliance maps a refused absolute symlink to advice by the error's
/// type, not by its text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_external_symlink_is_recognised_by_type() {
    let world = World::new("").await;
    std::os::unix::fs::symlink("/etc/hostname", world.source.join("absolute-link")).unwrap();
    let agent = world.agent();
    agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap();
    let mut opts = RestoreOptions::default();
    opts.target_dir = world.dir.path().join("restored");
    let err = agent
        .restore(
            "home",
            &Selector::Latest,
            opts,
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    let synback::Error::Restore(restore) = &err else {
        panic!("{err:?}")
    };
    let synback::restore::Error::Archive(archive) = restore.as_ref() else {
        panic!("{err:?}")
    };
    assert!(archive.is_external_symlink(), "{err:?}");
    assert!(err.hint().unwrap().contains("--allow-external-symlinks"));
    assert!(!err.is_cancelled());
}

//! The embedding examples, run as real child processes against the
//! emulator: `examples/appliance.rs` (progress, completion, cancellation)
//! and `examples/library_only.rs` (the library prints nothing).
//!
//! The example binaries are built by `cargo test --all-targets` (or
//! `cargo build --examples`) next to this test binary.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use synback::agent::Agent;
use synback::config::{Config, ConfigEnv};

use crate::support::{PASSWORD, USER, World, tree_diff};

/// `target/<profile>/examples/<name>`, from `target/<profile>/deps/it-*`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join(name);
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

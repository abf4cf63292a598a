//! Crash consistency: `synback backup` and `synback restore` (the real
//! binary) killed with SIGKILL at byte offsets spread over their transfers.
//!
//! The emulator holds the upload (or download) at an exact byte offset,
//! the test kills the process while it waits there, then checks: the NAS
//! lists only complete snapshots and each verifies; the next backup takes
//! over the dead run's lock and removes its leftovers; a killed restore
//! never leaves a file under its final name with other bytes than the
//! snapshot's, and the volumes it spooled are removed by the next restore.
//!
//! The backup kill offsets are random (a seed printed by the test;
//! `SYNBACK_CRASH_SEED` repeats a run); the steps no offset reaches (MD5
//! task, renames, manifest upload, lock delete) are held and killed by an
//! aimed `Hold` fault.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use synback::agent::{Agent, VerifyMode};
use synback::config::{Config, ConfigEnv};
use synback::emulator::{Emulator, EmulatorConfig, FaultHandle};
use synback::restore::Selector;
use synback::secret::Secret;
use tokio_util::sync::CancellationToken;

use crate::faults::{noise, source_tree, write_config, wrong_final_files};
use crate::support::{PASSWORD, USER, chain, tree_diff};

/// Kill positions in the backup's upload stream.
const BACKUP_KILLS: u64 = 50;
/// Kill positions in the restore's download stream.
const RESTORE_KILLS: u64 = 8;

struct Bench {
    dir: tempfile::TempDir,
    nas: Emulator,
    source: PathBuf,
    config: PathBuf,
}

impl Bench {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("data");
        // Two 1 MiB volumes: noise plus many small files, so that a killed
        // restore has finished some files and is inside others.
        source_tree(&source, 1200 * 1024);
        std::fs::create_dir_all(source.join("many")).unwrap();
        for i in 0..40u64 {
            let name = source.join("many").join(format!("f{i:02}.bin"));
            std::fs::write(name, noise(4096 + 997 * i as usize, i + 100)).unwrap();
        }
        let cfg = EmulatorConfig::new(dir.path().join("nas"), USER, Secret::new(PASSWORD));
        let nas = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let config = write_config(dir.path(), &nas.url(), &source, "");
        Self {
            dir,
            nas,
            source,
            config,
        }
    }

    fn agent(&self) -> Agent {
        Agent::new(Config::load(&self.config, &ConfigEnv::new()).unwrap())
    }

    /// The temp folder the binary is given (`TMPDIR`): where a restore
    /// spools its volumes.
    fn tmp(&self) -> PathBuf {
        let tmp = self.dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        tmp
    }

    /// Volumes spooled by restores and not removed.
    fn spooled(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("synback-restore-"))
            .collect()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_synback"))
            .env("TMPDIR", self.tmp())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs the binary to the end; its exit code.
    async fn run(&self, args: &[&str]) -> i32 {
        let mut child = self.spawn(args);
        tokio::task::spawn_blocking(move || child.wait().unwrap().code().unwrap_or(-1))
            .await
            .unwrap()
    }

    fn job_files(&self) -> Vec<String> {
        let dir = self.nas.share_path("backup").join("pc").join("home");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".synback-upload"))
            .collect();
        names.sort();
        names
    }

    /// Every listed snapshot verifies; returns their ids.
    async fn verified_snapshots(&self) -> Vec<String> {
        let agent = self.agent();
        let listing = agent.snapshots("home").await.unwrap();
        let ids: Vec<String> = listing.snapshots.iter().map(|s| s.id.to_string()).collect();
        for id in &ids {
            if let Err(err) = agent
                .verify(
                    "home",
                    &Selector::Id(id.clone()),
                    VerifyMode::Quick,
                    CancellationToken::new(),
                )
                .await
            {
                panic!("listed snapshot {id} does not verify: {}", chain(&err));
            }
        }
        ids
    }
}

/// Starts `child`, waits until the emulator holds its transfer, kills it
/// with SIGKILL. False when the process ended before reaching the hold.
async fn kill_when_held(child: Child, faults: &FaultHandle) -> bool {
    kill_when_held_and(child, faults, || true).await
}

/// Like [`kill_when_held`], but once the stream is held, waits (up to 5 s)
/// for `ready` before the kill: the process may still be working on the
/// bytes it received, and on a loaded machine it may not have started.
async fn kill_when_held_and(
    mut child: Child,
    faults: &FaultHandle,
    ready: impl Fn() -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if faults.is_holding() {
            let settle = Instant::now() + Duration::from_secs(5);
            while !ready() && Instant::now() < settle {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            child.kill().unwrap();
            tokio::task::spawn_blocking(move || child.wait().unwrap())
                .await
                .unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "never reached the hold point");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_backup_and_restore_leaves_consistent_state() {
    let started = Instant::now();
    let bench = Bench::new().await;
    let faults = bench.nas.faults();

    // A complete run measures the upload stream (lock, volumes, manifest).
    faults.clear();
    assert_eq!(bench.run(&["backup"]).await, 0);
    let upload_total = faults.uploaded_bytes();
    let baseline = bench.verified_snapshots().await;
    assert_eq!(baseline.len(), 1);
    let baseline_files = bench.job_files();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The lock is the first upload: a kill past its bytes must leave it.
    let lock_bytes = bench
        .nas
        .request_log()
        .iter()
        .find(|r| r.api.as_deref() == Some("SYNO.FileStation.Upload"))
        .map(|r| r.bytes_in)
        .unwrap();

    let seed = crash_seed();
    println!("crash seed {seed} (SYNBACK_CRASH_SEED={seed} repeats these offsets)");
    let offsets = random_offsets(seed, upload_total, BACKUP_KILLS);
    let mut kills = 0;
    let mut left_partials = 0;
    let mut left_locks = 0;
    for &offset in &offsets {
        faults.set(Default::default());
        faults.update(|f| f.hold_uploads_at = Some(offset));
        let child = bench.spawn(&["backup"]);
        let killed = kill_when_held(child, &faults).await;
        assert!(
            killed,
            "the run ended before byte {offset} of {upload_total} (seed {seed})"
        );
        kills += 1;
        faults.clear();
        let ids = bench.verified_snapshots().await;
        assert_eq!(ids, baseline, "after a kill at byte {offset} (seed {seed})");
        let files = bench.job_files();
        left_partials += usize::from(
            files
                .iter()
                .any(|n| n != ".lock" && !baseline_files.contains(n)),
        );
        let locked = files.iter().any(|n| n == ".lock");
        assert!(
            locked || offset < lock_bytes,
            "a kill at byte {offset}, after the {lock_bytes}-byte lock upload, left no lock (seed {seed})"
        );
        left_locks += usize::from(locked);
    }
    assert!(
        left_locks > 0 && left_partials > 0,
        "the kills hit running transfers (seed {seed})"
    );
    assert_eq!(offsets.len() as u64, BACKUP_KILLS, "distinct positions");

    // The next run takes over the dead lock and removes every leftover.
    assert_eq!(bench.run(&["backup"]).await, 0);
    let ids = bench.verified_snapshots().await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    let left: Vec<String> = bench
        .job_files()
        .into_iter()
        .filter(|n| n.ends_with(".partial") || n == ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let listing = bench.agent().snapshots("home").await.unwrap();
    assert!(listing.orphans.is_empty() && listing.partials.is_empty());

    // Restore: one complete run measures the download stream.
    faults.clear();
    let full = bench.dir.path().join("restore-full");
    let full_arg = full.display().to_string();
    assert_eq!(
        bench
            .run(&["restore", "latest", "--target", &full_arg])
            .await,
        0
    );
    let total = faults.downloaded_bytes();
    let diffs = tree_diff(&bench.source, &full.join("data"), &|_| false);
    assert!(diffs.is_empty(), "{diffs:?}");
    let mut restore_kills = 0;
    let mut finished_files = 0;
    for i in 1..=RESTORE_KILLS {
        let offset = total * i / (RESTORE_KILLS + 1);
        let target = bench.dir.path().join(format!("restore-{i}"));
        let target_arg = target.display().to_string();
        faults.set(Default::default());
        faults.update(|f| f.hold_downloads_at = Some(offset));
        let child = bench.spawn(&["restore", "latest", "--target", &target_arg]);
        // The later half of the kills waits for a first file to be finished
        // (the files before the hold point), so that some kills land among
        // finished files however slow the machine is.
        let data = target.join("data");
        let ready = || i <= RESTORE_KILLS / 2 || count_files(&data) > 0;
        assert!(
            kill_when_held_and(child, &faults, ready).await,
            "restore at {offset}"
        );
        restore_kills += 1;
        faults.clear();
        let bad = wrong_final_files(&bench.source, &target.join("data"));
        assert!(bad.is_empty(), "killed at byte {offset}: {bad:?}");
        finished_files += count_files(&target.join("data"));
    }
    assert!(
        finished_files > 0,
        "some kills must land after files were finished"
    );
    // Killed restores leave spooled volumes in the temp folder; the next
    // restore removes those of dead processes.
    let spooled_after_kills = bench.spooled().len();
    // Each kill held a volume download, so its spool file is there (the
    // earlier kills' were removed by the restore after them).
    assert!(
        spooled_after_kills > 0,
        "a killed restore left no spool file"
    );
    let again = bench.dir.path().join("restore-again");
    let again_arg = again.display().to_string();
    assert_eq!(
        bench
            .run(&["restore", "latest", "--target", &again_arg])
            .await,
        0
    );
    assert!(bench.spooled().is_empty(), "{:?}", bench.spooled());
    println!(
        "crash consistency: {kills} backup kills at distinct offsets of a {upload_total}-byte upload stream \
         (a dead lock left {left_locks} times, uploads without a manifest {left_partials} times, all taken over and removed), \
         {restore_kills} restore kills over a {total}-byte download stream \
         ({finished_files} files finished before the kills, all intact; {spooled_after_kills} spooled volumes left, \
         removed by the next restore), seed {seed}, {:.1} s",
        started.elapsed().as_secs_f64(),
    );
}

/// `SYNBACK_CRASH_SEED`, or one from the clock (printed by the test).
fn crash_seed() -> u64 {
    std::env::var("SYNBACK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// `n` distinct offsets in `1..total`, sorted, drawn from `seed`.
fn random_offsets(seed: u64, total: u64, n: u64) -> Vec<u64> {
    let mut x = seed | 1;
    let mut offsets = std::collections::BTreeSet::new();
    while (offsets.len() as u64) < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        offsets.insert(1 + x % (total - 1));
    }
    offsets.into_iter().collect()
}

/// The steps around the commit, where no byte offset reaches: the run is
/// held at the call and killed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_each_commit_step_leaves_consistent_state() {
    use synback::emulator::{AimedFault, FaultAction};
    let bench = Bench::new().await;
    let faults = bench.nas.faults();
    assert_eq!(bench.run(&["backup"]).await, 0);
    let mut known = bench.verified_snapshots().await;
    let steps = [
        (
            "first MD5 task",
            AimedFault::new("SYNO.FileStation.MD5", FaultAction::Hold).method("start"),
        ),
        (
            "first rename",
            AimedFault::new("SYNO.FileStation.Rename", FaultAction::Hold),
        ),
        (
            "manifest upload",
            AimedFault::new("SYNO.FileStation.Upload", FaultAction::Hold)
                .name_contains(".manifest.json"),
        ),
        (
            "manifest rename (the commit)",
            AimedFault::new("SYNO.FileStation.Rename", FaultAction::Hold)
                .name_contains(".manifest.json"),
        ),
        (
            "lock delete",
            AimedFault::new("SYNO.FileStation.Delete", FaultAction::Hold).name_contains(".lock"),
        ),
    ];
    for (step, aimed) in steps {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        faults.set(Default::default());
        faults.update(|f| f.aimed = vec![aimed]);
        let child = bench.spawn(&["backup"]);
        assert!(kill_when_held(child, &faults).await, "{step}: never held");
        faults.clear();
        let ids = bench.verified_snapshots().await;
        assert!(
            known.iter().all(|id| ids.contains(id)),
            "{step}: {ids:?} lost one of {known:?}"
        );
        let new = ids.len() - known.len();
        let committed = step == "lock delete";
        assert_eq!(new, usize::from(committed), "{step}: {ids:?}");
        assert!(
            bench.job_files().iter().any(|n| n == ".lock"),
            "{step}: no dead lock"
        );
        // The next run takes over and leaves nothing behind.
        assert_eq!(bench.run(&["backup"]).await, 0, "{step}: the next run");
        known = bench.verified_snapshots().await;
        let listing = bench.agent().snapshots("home").await.unwrap();
        assert!(
            listing.orphans.is_empty() && listing.partials.is_empty(),
            "{step}: {:?}",
            bench.job_files()
        );
        let left: Vec<String> = bench
            .job_files()
            .into_iter()
            .filter(|n| n.ends_with(".partial") || n == ".lock")
            .collect();
        assert!(left.is_empty(), "{step}: {left:?}");
    }
}

/// Regular files under `dir` with final names. Also called while a restore
/// writes there: an entry renamed or removed meanwhile counts as nothing.
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let Ok(meta) = e.metadata() else {
                return 0;
            };
            let name = e.file_name().to_string_lossy().into_owned();
            if meta.is_dir() {
                count_files(&e.path())
            } else {
                usize::from(meta.is_file() && !name.contains(".synback-"))
            }
        })
        .sum()
}

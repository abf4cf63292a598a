//! Backup runs end to end against the emulator: the happy path, the remote
//! layout, retention, locking, and the faults a real NAS produces.

use std::time::Duration;

use synback::agent::VerifyMode;
use synback::restore::{RestoreOptions, Selector};
use tokio_util::sync::CancellationToken;

use crate::support::{World, chain, disk_usage, skip_tmp, tree_diff};

fn cancel() -> CancellationToken {
    CancellationToken::new()
}

const SMALL_VOLUMES: &str = r#"excludes = ["*.tmp"]
volume_size = "1MiB""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_restore_is_byte_identical() {
    let world = World::new(SMALL_VOLUMES).await;
    let agent = world.agent();
    let report = agent.backup("home", cancel()).await.unwrap();
    assert!(report.volumes.len() >= 2, "expected several 1 MiB volumes");
    assert!(report.volumes.iter().all(|v| v.info.size <= 1024 * 1024));
    assert_eq!(report.status, synback::backup::RunStatus::Ok);

    let names = world.remote_names();
    assert!(
        names.contains(&format!("{}.manifest.json", report.snapshot)),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.ends_with(".partial")), "{names:?}");
    assert!(
        !names.iter().any(|n| n == ".lock"),
        "lock left behind: {names:?}"
    );

    let target = world.restore_dir("restore");
    let mut opts = RestoreOptions::default();
    opts.target_dir = target.clone();
    let restored = agent
        .restore("home", &Selector::Latest, opts, None, cancel())
        .await
        .unwrap();
    assert!(restored.entries > 5);
    let diffs = tree_diff(&world.source, &target.join("data"), &skip_tmp);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_mode_stores_a_verified_snapshot() {
    let world = World::new("upload_mode = \"stream\"\nvolume_size = \"2MiB\"").await;
    let agent = world.agent();
    let report = agent.backup("home", cancel()).await.unwrap();
    let check = agent
        .verify(
            "home",
            &Selector::Id(report.snapshot.clone()),
            VerifyMode::Deep,
            cancel(),
        )
        .await
        .unwrap();
    assert_eq!(check.volumes, report.volumes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_verify_and_forget_follow_the_policy() {
    let world = World::new("[job.retention]\nkeep_last = 2").await;
    let agent = world.agent();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(agent.backup("home", cancel()).await.unwrap().snapshot);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let listing = agent.snapshots("home").await.unwrap();
    let listed: Vec<String> = listing.snapshots.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(listed, ids[1..].to_vec(), "keep_last = 2 after three runs");
    for id in &listed {
        agent
            .verify(
                "home",
                &Selector::Id(id.clone()),
                VerifyMode::Quick,
                cancel(),
            )
            .await
            .unwrap();
    }
    let plan = agent.forget("home", true).await.unwrap();
    assert!(plan.decisions.iter().all(|d| d.keep));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_keep_requests_under_a_front_end_limit() {
    let world = World::new("volume_size = \"1MiB\"").await;
    world.nas.faults().update(|f| {
        f.max_request_bytes = Some(1536 * 1024);
        f.oversize_status = 504;
    });
    let report = world.agent().backup("home", cancel()).await.unwrap();
    assert!(report.volumes.len() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_front_end_limit_fails_clearly_and_leaves_nothing() {
    let world = World::new("volume_size = \"64MiB\"").await;
    world
        .nas
        .faults()
        .update(|f| f.max_request_bytes = Some(256 * 1024));
    let err = world.agent().backup("home", cancel()).await.unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("413") || text.to_lowercase().contains("too large"),
        "{text}"
    );
    assert!(
        world.remote_names().iter().all(|n| !n.contains(".tar.zst")),
        "{:?}",
        world.remote_names()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_survived() {
    let world = World::new(SMALL_VOLUMES).await;
    world.nas.faults().update(|f| {
        f.http_502_every = Some(7);
        f.busy_every = Some(5);
        f.drop_upload_after = Some(200 * 1024);
        f.drop_upload_times = Some(2);
        f.expire_session_after = Some(9);
        f.wake_delay = Some(Duration::from_secs(2));
    });
    let report = world.agent().backup("home", cancel()).await.unwrap();
    world.nas.faults().clear();
    world
        .agent()
        .verify(
            "home",
            &Selector::Id(report.snapshot),
            VerifyMode::Deep,
            cancel(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_upload_is_sent_again() {
    let world = World::new(SMALL_VOLUMES).await;
    world.nas.faults().update(|f| f.corrupt_uploads = 1);
    let report = world.agent().backup("home", cancel()).await.unwrap();
    assert!(
        report.volumes.iter().any(|v| v.attempts == 2) || report.bytes_sent > report.bytes_stored
    );
    world.nas.faults().clear();
    world
        .agent()
        .verify("home", &Selector::Latest, VerifyMode::Quick, cancel())
        .await
        .unwrap();
}

/// A NAS that keeps storing other bytes than it was sent: the run fails
/// with exit code 4 after the bounded retries, and no manifest claims the
/// bad archive. (Driven through `FlakyTarget`, which can corrupt only the
/// archive volumes; the emulator's fault would hit the lock file first.)
/// A library-level backup of a sample tree into a [`FlakyTarget`] in memory.
struct FlakyRun {
    dir: tempfile::TempDir,
    opts: synback::backup::BackupOptions,
    flaky: std::sync::Arc<synback::repo::flaky::FlakyTarget<synback::repo::memory::MemoryTarget>>,
    target: std::sync::Arc<dyn synback::repo::target::Target>,
    events: synback::event::Events,
}

impl FlakyRun {
    fn new(configure: impl FnOnce(&mut synback::backup::BackupOptions, &std::path::Path)) -> Self {
        use std::sync::Arc;
        use synback::repo::flaky::FlakyTarget;
        use synback::repo::memory::MemoryTarget;

        let dir = tempfile::tempdir().unwrap();
        crate::support::sample_tree(&dir.path().join("data"));
        let job = synback::repo::layout::JobName::new("home").unwrap();
        let pack = synback::archive::PackOptions::new([dir.path().join("data")]);
        let mut opts = synback::backup::BackupOptions::new(job, pack);
        opts.retry_delay = Duration::from_millis(10);
        configure(&mut opts, dir.path());
        let flaky = Arc::new(FlakyTarget::new(MemoryTarget::with_folder()));
        Self {
            dir,
            opts,
            target: flaky.clone(),
            flaky,
            events: Arc::new(synback::event::NoEvents),
        }
    }

    /// One run, as if at `now`.
    async fn run(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<synback::backup::BackupReport, synback::backup::Error> {
        let target = self.target.clone();
        synback::backup::run(target, &self.opts, self.events.clone(), cancel(), now).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_corruption_fails_and_records_no_snapshot() {
    use synback::backup;
    use synback::repo::flaky::Fault;
    use synback::repo::target::{Operation, Target};

    let fixture = FlakyRun::new(|_, _| {});
    let (flaky, target) = (&fixture.flaky, &fixture.target);
    let good = fixture.run(chrono::Utc::now()).await.unwrap();
    for _ in 0..10 {
        flaky.fail_next_on(Operation::Put, ".tar.zst", Fault::CorruptStored);
    }
    let later = chrono::Utc::now() + chrono::TimeDelta::seconds(5);
    let err = fixture.run(later).await.unwrap_err();
    assert!(
        matches!(err, backup::Error::Md5Mismatch { attempts: 3, .. }),
        "{err}"
    );
    let agent_err = synback::agent::Error::from(err);
    assert_eq!(agent_err.exit_code(), 4);
    let names = flaky.inner().names();
    let manifests: Vec<_> = names
        .iter()
        .filter(|n| n.ends_with(".manifest.json"))
        .collect();
    assert_eq!(
        manifests,
        vec![&format!("{}.manifest.json", good.snapshot)],
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|n| !n.ends_with(".partial") && n != ".lock"),
        "{names:?}"
    );
    let listing =
        synback::repo::listing::Listing::classify(&fixture.opts.job, target.list().await.unwrap());
    assert!(listing.orphans.is_empty(), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_nas_fails_clearly_and_keeps_earlier_snapshots() {
    for code in [416, 415] {
        let world = World::new(SMALL_VOLUMES).await;
        let agent = world.agent();
        let good = agent.backup("home", cancel()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let used = disk_usage(world.dir.path().join("nas").as_path());
        let one_volume = good.volumes[0].info.size;
        world.nas.faults().update(|f| {
            f.quota_bytes = Some(used + one_volume / 2);
            f.quota_code = code;
        });
        let err = agent.backup("home", cancel()).await.unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains("space") || text.contains("quota"),
            "code {code}: {text}"
        );
        world.nas.faults().clear();
        let listing = agent.snapshots("home").await.unwrap();
        assert_eq!(listing.snapshots.len(), 1);
        assert!(listing.partials.is_empty() && listing.orphans.is_empty());
        agent
            .verify(
                "home",
                &Selector::Id(good.snapshot),
                VerifyMode::Quick,
                cancel(),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_is_refused_with_who_holds_the_lock() {
    let world = World::new("").await;
    std::fs::create_dir_all(world.job_dir()).unwrap();
    let lock = synback::repo::lock::LockInfo::new("other-host", 4242, chrono::Utc::now());
    std::fs::write(
        world.job_dir().join(".lock"),
        serde_json::to_vec(&lock).unwrap(),
    )
    .unwrap();
    let err = world.agent().backup("home", cancel()).await.unwrap_err();
    assert_eq!(err.exit_code(), 7, "{err}");
    assert!(err.to_string().contains("other-host"), "{err}");
}

/// A job whose lock goes stale after 2 s, uploading at 512 KiB/s in 1 MiB
/// volumes: a backup of the sample tree (3 MiB of noise) takes about 6 s.
/// Returns the world and that backup, started and left running for `after`.
async fn slow_backup_with_a_short_stale_age(
    after: Duration,
) -> (
    World,
    tokio::task::JoinHandle<Result<synback::backup::BackupReport, synback::agent::Error>>,
) {
    let world = World::new("volume_size = \"1MiB\"\n[job.lock]\nstale_after = \"2s\"").await;
    world
        .nas
        .faults()
        .update(|f| f.slow_kib_per_sec = Some(512));
    let agent = world.agent();
    let run = tokio::spawn(async move { agent.backup("home", cancel()).await });
    tokio::time::sleep(after).await;
    assert!(!run.is_finished(), "the backup ended within {after:?}");
    (world, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_the_stale_age_keeps_its_lock_fresh() {
    let (world, first) = slow_backup_with_a_short_stale_age(Duration::from_secs(4)).await;
    // Started twice the stale age after the first: the lock is still fresh.
    let err = world.agent().backup("home", cancel()).await.unwrap_err();
    assert_eq!(err.exit_code(), 7, "{err}");
    world.nas.faults().clear();
    let report = first.await.unwrap().unwrap();
    let listing = world.agent().snapshots("home").await.unwrap();
    let ids: Vec<String> = listing.snapshots.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(ids, [report.snapshot], "{listing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lock_was_taken_over_stops_without_a_manifest() {
    let (world, first) = slow_backup_with_a_short_stale_age(Duration::from_millis(1500)).await;
    // Another writer found our lock stale and put its own in its place.
    let other = synback::repo::lock::LockInfo::new("other-host", 4242, chrono::Utc::now());
    let lock_file = world.job_dir().join(".lock");
    std::fs::write(&lock_file, serde_json::to_vec(&other).unwrap()).unwrap();
    let err = first.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("taken over"), "{err}");
    world.nas.faults().clear();
    let names = world.remote_names();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".manifest.json") || n.ends_with(".partial")),
        "{names:?}"
    );
    // The other writer's lock is left as it was.
    let left: synback::repo::lock::LockInfo =
        serde_json::from_slice(&std::fs::read(&lock_file).unwrap()).unwrap();
    assert_eq!(left, other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_gone_before_the_commit_stops_the_run_without_a_manifest() {
    let (world, run) = slow_backup_with_a_short_stale_age(Duration::from_millis(200)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        let names = world.remote_names();
        if let Some(name) = names.iter().find(|n| n.ends_with(".tar.zst.001")) {
            break name.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no volume stored: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Verified and renamed, then removed (by a writer that took over).
    std::fs::remove_file(world.job_dir().join(&first)).unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("no longer on the NAS"), "{err}");
    let names = world.remote_names();
    assert!(
        !names.iter().any(|n| n.ends_with(".manifest.json")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_lists_its_cleanup_when_dry_and_keeps_out_of_a_running_backup() {
    let world = World::new("[job.retention]\nkeep_last = 1").await;
    let agent = world.agent();
    agent.backup("home", cancel()).await.unwrap();
    // An upload a run killed two days ago left behind.
    let name = "home-20250101T000000Z.tar.zst.partial";
    let partial = world.job_dir().join(name);
    std::fs::write(&partial, b"half").unwrap();
    let two_days_ago = chrono::Utc::now().timestamp() - 2 * 86_400;
    filetime::set_file_mtime(
        &partial,
        filetime::FileTime::from_unix_time(two_days_ago, 0),
    )
    .unwrap();
    let plan = agent.forget("home", true).await.unwrap();
    assert_eq!(plan.cleaned, [name]);
    assert!(partial.exists(), "a dry run deleted");
    // Another machine's backup is running: forget deletes nothing.
    let lock_file = world.job_dir().join(".lock");
    let other = synback::repo::lock::LockInfo::new("other-host", 4242, chrono::Utc::now());
    std::fs::write(&lock_file, serde_json::to_vec(&other).unwrap()).unwrap();
    let err = agent.forget("home", false).await.unwrap_err();
    assert_eq!(err.exit_code(), 7, "{err}");
    assert!(err.to_string().contains("other-host"), "{err}");
    assert!(partial.exists());
    std::fs::remove_file(&lock_file).unwrap();
    let done = agent.forget("home", false).await.unwrap();
    assert_eq!(done.cleaned, [name]);
    assert!(!partial.exists());
    assert!(!world.remote_names().iter().any(|n| n == ".lock"));
}

/// A partial run (here: a source even root cannot read) forgets nothing,
/// so that nights failing the same way do not push out the snapshots that
/// hold everything; the next complete run applies the policy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_run_forgets_no_snapshot_until_a_run_saves_everything() {
    use synback::backup::RunStatus;
    use synback::repo::target::Target;

    // A write-only sysfs attribute: open() fails with EACCES, even for root.
    let unreadable = std::path::Path::new("/sys/bus/pci/rescan");
    if std::fs::File::open(unreadable).is_ok() || !unreadable.exists() {
        eprintln!("SKIPPED: no unreadable sysfs attribute here");
        return;
    }
    let mut fixture = FlakyRun::new(|opts, _| opts.retention.keep_last = Some(1));
    let start = chrono::Utc::now();
    let at = |secs| start + chrono::TimeDelta::seconds(secs);
    let good = fixture.run(at(0)).await.unwrap();
    assert_eq!(good.status, RunStatus::Ok);
    let complete_sources = fixture.opts.pack.sources.clone();
    fixture.opts.pack.sources.push(unreadable.to_path_buf());
    let mut partial = Vec::new();
    for secs in [5, 10] {
        let report = fixture.run(at(secs)).await.unwrap();
        assert_eq!(report.status, RunStatus::Partial);
        assert!(report.forgotten.is_empty(), "{:?}", report.forgotten);
        let why = report.retention_held.as_deref().unwrap_or_default();
        assert!(
            why.contains("partial") && why.contains("synback forget"),
            "{why}"
        );
        partial.push(report.snapshot);
    }
    let job = synback::repo::layout::JobName::new("home").unwrap();
    let listed = |names| -> Vec<String> {
        let listing = synback::repo::listing::Listing::classify(&job, names);
        listing.snapshots.iter().map(|s| s.id.to_string()).collect()
    };
    let names = fixture.target.list().await.unwrap();
    assert_eq!(
        listed(names),
        [
            good.snapshot.clone(),
            partial[0].clone(),
            partial[1].clone()
        ]
    );
    // Everything is read again: the policy applies.
    fixture.opts.pack.sources = complete_sources;
    let complete = fixture.run(at(15)).await.unwrap();
    assert_eq!(complete.status, RunStatus::Ok);
    assert_eq!(complete.retention_held, None);
    assert_eq!(complete.forgotten.len(), 3, "{:?}", complete.forgotten);
    let names = fixture.target.list().await.unwrap();
    assert_eq!(listed(names), [complete.snapshot]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_needed_only_to_read_and_a_wrong_one_is_told_at_once() {
    use age::secrecy::ExposeSecret;
    let tmp = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let key = tmp.path().join("key.txt");
    std::fs::write(&key, format!("{}\n", id.to_string().expose_secret())).unwrap();
    let world = World::new(&format!(
        "[job.encryption]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"",
        id.to_public(),
        key.display()
    ))
    .await;
    let agent = world.agent();
    let report = agent.backup("home", cancel()).await.unwrap();
    // The key is kept off this machine now.
    std::fs::remove_file(&key).unwrap();
    let latest = Selector::Id(report.snapshot.clone());
    let quick = agent
        .verify("home", &latest, VerifyMode::Quick, cancel())
        .await
        .unwrap();
    assert_eq!(quick.snapshot, report.snapshot);
    let err = agent
        .verify("home", &latest, VerifyMode::Deep, cancel())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("key.txt"), "{err}");

    // Someone else's key: refused before a byte of the archive is fetched.
    let wrong = tmp.path().join("wrong.txt");
    let other = age::x25519::Identity::generate();
    std::fs::write(&wrong, format!("{}\n", other.to_string().expose_secret())).unwrap();
    world.nas.faults().clear();
    let mut opts = synback::restore::RestoreOptions::default();
    opts.target_dir = world.restore_dir("out");
    let err = agent
        .restore("home", &latest, opts, Some(wrong), cancel())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot open this snapshot"), "{text}");
    assert!(text.contains(&id.to_public().to_string()), "{text}");
    assert!(!text.contains("AGE-SECRET-KEY"), "{text}");
    // The manifest (a few KiB) was read; none of the 3 MiB archive was.
    let fetched = world.nas.faults().downloaded_bytes();
    assert!(fetched < 64 * 1024, "{fetched} bytes downloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_snapshots_are_all_listed_and_rotated() {
    let world = World::new("[job.retention]\nkeep_last = 3").await;
    let agent = world.agent();
    let first = agent.backup("home", cancel()).await.unwrap();
    let dir = world.job_dir();
    let manifest = std::fs::read(dir.join(format!("{}.manifest.json", first.snapshot))).unwrap();
    let volume = &first.volumes[0].name;
    let data = std::fs::read(dir.join(volume)).unwrap();
    let base = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z").unwrap();
    for i in 0..200 {
        let t = base + chrono::TimeDelta::hours(i);
        let id = format!("home-{}", t.format("%Y%m%dT%H%M%SZ"));
        std::fs::write(dir.join(format!("{id}.manifest.json")), &manifest).unwrap();
        let vol = volume.replacen(&first.snapshot, &id, 1);
        std::fs::write(dir.join(vol), &data).unwrap();
    }
    let listing = agent.snapshots("home").await.unwrap();
    assert_eq!(listing.snapshots.len(), 201);
    let plan = agent.forget("home", true).await.unwrap();
    assert_eq!(plan.decisions.iter().filter(|d| d.keep).count(), 3);
    let done = agent.forget("home", false).await.unwrap();
    assert_eq!(done.forgotten.len(), 198);
    let listing = agent.snapshots("home").await.unwrap();
    assert_eq!(listing.snapshots.len(), 3);
    assert!(
        listing
            .snapshots
            .iter()
            .any(|s| s.id.to_string() == first.snapshot)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_removes_partials_and_the_lock() {
    let world = World::new("volume_size = \"1MiB\"").await;
    world
        .nas
        .faults()
        .update(|f| f.slow_kib_per_sec = Some(512));
    let agent = world.agent();
    let token = CancellationToken::new();
    let stopper = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stopper.cancel();
    });
    let err = agent.backup("home", token).await.unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    world.nas.faults().clear();
    let names = world.remote_names();
    assert!(
        names
            .iter()
            .all(|n| !n.ends_with(".partial") && n != ".lock"),
        "{names:?}"
    );
    let listing = agent.snapshots("home").await.unwrap();
    assert!(
        listing.snapshots.is_empty() && listing.orphans.is_empty(),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_files_in_the_job_folder_are_never_touched() {
    let world = World::new("[job.retention]\nkeep_last = 1").await;
    std::fs::create_dir_all(world.job_dir()).unwrap();
    for name in [
        "notes.txt",
        "home-20200101T000000Z.tar.zst.bak",
        "other-20200101T000000Z.manifest.json",
    ] {
        std::fs::write(world.job_dir().join(name), "not ours").unwrap();
    }
    let agent = world.agent();
    for _ in 0..2 {
        agent.backup("home", cancel()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let names = world.remote_names();
    for name in [
        "notes.txt",
        "home-20200101T000000Z.tar.zst.bak",
        "other-20200101T000000Z.manifest.json",
    ] {
        assert!(
            names.contains(&name.to_owned()),
            "{name} was removed: {names:?}"
        );
    }
}

/// Snapshot ids have one-second resolution. A second run within the same
/// second must not collide with the first snapshot, and above all must not
/// remove it while cleaning up after itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_in_one_second_keep_both_snapshots() {
    use std::sync::Arc;
    use synback::backup::{self, BackupOptions};
    use synback::repo::memory::MemoryTarget;
    use synback::repo::target::Target;

    let dir = tempfile::tempdir().unwrap();
    crate::support::sample_tree(&dir.path().join("data"));
    let job = synback::repo::layout::JobName::new("home").unwrap();
    let opts = BackupOptions::new(
        job.clone(),
        synback::archive::PackOptions::new([dir.path().join("data")]),
    );
    let target: Arc<dyn Target> = Arc::new(MemoryTarget::with_folder());
    let events: synback::event::Events = Arc::new(synback::event::NoEvents);
    let now = chrono::Utc::now();
    let first = backup::run(target.clone(), &opts, events.clone(), cancel(), now)
        .await
        .unwrap();
    let second = backup::run(target.clone(), &opts, events, cancel(), now)
        .await
        .unwrap();
    assert_ne!(first.snapshot, second.snapshot);
    let listing = synback::repo::listing::Listing::classify(&job, target.list().await.unwrap());
    let ids: Vec<String> = listing.snapshots.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(ids, vec![first.snapshot, second.snapshot]);
    assert!(listing.orphans.is_empty() && listing.partials.is_empty());
}

/// Spool files are the run's own scratch: none is left in the spool folder
/// once a run returns, whether it stored its volumes or failed on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_files_are_gone_when_a_run_returns() {
    use synback::backup;
    use synback::repo::flaky::Fault;
    use synback::repo::target::Operation;

    let fixture = FlakyRun::new(|opts, dir| {
        let spool = dir.join("spool");
        std::fs::create_dir(&spool).unwrap();
        opts.spool_dir = Some(spool);
        opts.pack.volume_size = Some(64 * 1024);
    });
    let spooled = || {
        std::fs::read_dir(fixture.dir.path().join("spool"))
            .unwrap()
            .count()
    };

    let good = fixture.run(chrono::Utc::now()).await.unwrap();
    assert!(good.volumes.len() >= 2, "{:?}", good.volumes.len());
    assert_eq!(spooled(), 0, "spool files left after a good run");

    for _ in 0..10 {
        let corrupt = Fault::CorruptStored;
        fixture
            .flaky
            .fail_next_on(Operation::Put, ".tar.zst", corrupt);
    }
    let later = chrono::Utc::now() + chrono::TimeDelta::seconds(5);
    let err = fixture.run(later).await.unwrap_err();
    assert!(matches!(err, backup::Error::Md5Mismatch { .. }), "{err}");
    assert_eq!(spooled(), 0, "spool files left after a failed run");
}

//! The repo layer end to end over `MemoryTarget` (and, with the emulator,
//! `DsmTarget`): conformance, a backup-shaped sequence of operations, lock
//! contention, listing and cleanup of a large folder, and a dry-run forget.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use synback::repo::conformance;
use synback::repo::layout::{Encryption, LOCK_NAME, partial_name};
use synback::repo::lock::{self, Lock, LockInfo, LockOptions};
use synback::repo::target::{ErrorKind, Operation};
use synback::repo::{
    DryRunAction, DryRunTarget, Fault, FlakyTarget, JobName, Listing, MemoryTarget, SnapshotId,
    Target, TargetExt, plan_cleanup,
};
use synback::retention::{self, Policy};

fn job() -> JobName {
    JobName::new("home").unwrap()
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 3, 0, 0).unwrap()
}

/// Writes a snapshot the way the backup run does: partial, verify, rename,
/// manifest last.
async fn write_snapshot(target: &dyn Target, id: &SnapshotId, volumes: u32) {
    for v in 1..=volumes {
        let name = id.volume_name(Encryption::Plain, v).unwrap();
        let partial = partial_name(&name);
        let data = Bytes::from(format!("{name} data"));
        target.put_bytes(&partial, data.clone()).await.unwrap();
        let md5 = target.md5(&partial).await.unwrap();
        assert_eq!(md5.len(), 32);
        target.rename(&partial, &name).await.unwrap();
    }
    let manifest = id.manifest_name();
    target
        .put_bytes(&manifest, Bytes::from_static(b"{}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_target_passes_conformance() {
    conformance::run_all(&MemoryTarget::new()).await.unwrap();
}

#[tokio::test]
async fn wrapped_targets_pass_conformance() {
    let inner: Arc<dyn Target> = Arc::new(MemoryTarget::new());
    conformance::run_all(&FlakyTarget::new(inner))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_backup_sequence_lists_as_one_complete_snapshot() {
    let target = MemoryTarget::new();
    target.ensure_folder().await.unwrap();
    let id = SnapshotId::new(job(), t0());
    let lock = Lock::acquire(
        &target,
        LockInfo::for_this_process(t0()).with_snapshot(&id),
        &LockOptions::default(),
        t0(),
    )
    .await
    .unwrap();
    write_snapshot(&target, &id, 3).await;
    lock.release(&target).await.unwrap();

    let listing = Listing::classify(&job(), target.list().await.unwrap());
    assert_eq!(listing.snapshots.len(), 1);
    assert_eq!(listing.snapshots[0].archives.len(), 3);
    assert!(listing.snapshots[0].name_problems().is_empty());
    assert!(listing.partials.is_empty() && listing.orphans.is_empty());
    assert!(listing.lock.is_none());
}

#[tokio::test]
async fn a_crash_before_the_manifest_leaves_no_snapshot() {
    let target = FlakyTarget::new(MemoryTarget::with_folder());
    let id = SnapshotId::new(job(), t0());
    target.fail_next_on(
        Operation::Put,
        ".manifest.json",
        Fault::Error(ErrorKind::NoSpace),
    );
    let name = id.archive_name(Encryption::Plain);
    target
        .put_bytes(&name, Bytes::from_static(b"x"))
        .await
        .unwrap();
    let err = target
        .put_bytes(&id.manifest_name(), Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace);
    assert!(!err.is_retryable());

    let listing = Listing::classify(&job(), target.list().await.unwrap());
    assert!(listing.snapshots.is_empty());
    assert_eq!(listing.orphans.len(), 1);
    // A day later the orphan is cleaned up; the next snapshot is untouched.
    let later = Utc::now() + TimeDelta::days(2);
    let plan = plan_cleanup(&listing, later);
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].name, name);
}

#[tokio::test]
async fn two_writers_contend_for_the_lock() {
    let target = Arc::new(MemoryTarget::with_folder());
    let opts = LockOptions::default().local_host(None);
    let first = Lock::acquire(&*target, LockInfo::new("nuc", 100, t0()), &opts, t0())
        .await
        .unwrap();
    let err = Lock::acquire(&*target, LockInfo::new("pi", 200, t0()), &opts, t0())
        .await
        .unwrap_err();
    assert!(matches!(err, lock::Error::Locked { .. }));
    assert!(err.to_string().contains("pid 100 on host nuc"), "{err}");
    first.release(&*target).await.unwrap();
    let second = Lock::acquire(&*target, LockInfo::new("pi", 200, t0()), &opts, t0())
        .await
        .unwrap();
    assert_eq!(Lock::holder(&*target).await.unwrap().unwrap().pid, 200);
    second.release(&*target).await.unwrap();
    assert!(target.contents(LOCK_NAME).is_none());
}

#[tokio::test]
async fn lock_errors_from_the_target_are_reported() {
    let target = FlakyTarget::new(MemoryTarget::with_folder());
    target.fail_next(Operation::Put, Fault::Error(ErrorKind::PermissionDenied));
    let err = Lock::acquire(
        &target,
        LockInfo::new("nuc", 1, t0()),
        &LockOptions::default(),
        t0(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, lock::Error::Target { .. }), "{err}");
}

#[tokio::test]
async fn two_hundred_snapshots_forget_with_dry_run() {
    let target = MemoryTarget::with_folder();
    for i in 0..200 {
        let id = SnapshotId::new(job(), t0() + TimeDelta::hours(6 * i));
        write_snapshot(&target, &id, 1).await;
    }
    target.insert("notes.txt", &b"mine"[..], t0());
    let listing = Listing::classify(&job(), target.list().await.unwrap());
    assert_eq!(listing.snapshots.len(), 200);
    assert_eq!(listing.foreign.len(), 1);

    let now = t0() + TimeDelta::days(60);
    let policy = Policy::default().last(2).daily(7).weekly(4);
    let decisions = retention::apply(&listing.candidates(), &policy, now, chrono_tz::UTC);
    let forget: Vec<&str> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.as_str())
        .collect();
    assert!(decisions[0].keep && decisions[0].reasons[0] == "newest");

    let dry = DryRunTarget::new(target.clone());
    for id in &forget {
        let snap = listing
            .snapshots
            .iter()
            .find(|s| s.id.to_string() == *id)
            .unwrap();
        for name in snap.deletion_order() {
            dry.delete(&name).await.unwrap();
        }
    }
    assert_eq!(dry.actions().len(), forget.len() * 2);
    assert!(
        matches!(&dry.actions()[0], DryRunAction::Delete { name } if name.ends_with(".manifest.json"))
    );
    assert_eq!(target.names().len(), 401, "dry run deleted something");
}

/// `DsmTarget` against the emulator on 127.0.0.1:0.
#[cfg(feature = "emulator")]
mod on_the_emulator {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use synback::dsm::{Client, ClientOptions};
    use synback::emulator::{Emulator, EmulatorConfig};
    use synback::repo::DsmTarget;
    use synback::secret::Secret;
    use tempfile::TempDir;

    struct Nas {
        emu: Emulator,
        _dir: TempDir,
    }

    async fn nas() -> Nas {
        nas_with(|_| {}).await
    }

    async fn nas_with(change: impl FnOnce(&mut EmulatorConfig)) -> Nas {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EmulatorConfig::new(dir.path().join("root"), "alice", "pw");
        change(&mut cfg);
        let emu = Emulator::start(cfg, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        Nas { emu, _dir: dir }
    }

    async fn target(nas: &Nas, path: &str) -> DsmTarget {
        let mut opts = ClientOptions::new(nas.emu.url(), "alice", Secret::new("pw"));
        opts.retry.max_retries = 3;
        opts.retry.initial_delay = Duration::from_millis(5);
        opts.retry.max_delay = Duration::from_millis(20);
        let client = Client::connect(opts).await.unwrap();
        DsmTarget::new(client, "backup", path, &job()).unwrap()
    }

    #[tokio::test]
    async fn dsm_target_passes_conformance() {
        let nas = nas().await;
        let target = target(&nas, "hosts/pi/").await;
        assert_eq!(target.to_string(), "dsm:/backup/hosts/pi/home");
        conformance::run_all(&target).await.unwrap();
    }

    #[tokio::test]
    async fn quota_and_full_disk_are_told_apart() {
        let nas = nas().await;
        let target = target(&nas, "q").await;
        target.ensure_folder().await.unwrap();
        for (code, kind) in [(415, ErrorKind::QuotaExceeded), (416, ErrorKind::NoSpace)] {
            nas.emu.faults().update(|f| {
                f.quota_bytes = Some(10);
                f.quota_code = code;
            });
            let err = target
                .put_bytes("big", Bytes::from(vec![0u8; 100]))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[tokio::test]
    async fn corruption_on_the_nas_shows_in_its_md5() {
        let nas = nas().await;
        let target = target(&nas, "").await;
        target.ensure_folder().await.unwrap();
        nas.emu.faults().update(|f| f.corrupt_uploads = 1);
        let data = Bytes::from_static(b"precious bytes");
        target.put_bytes("a.partial", data.clone()).await.unwrap();
        let local = format!("{:x}", md5_of(&data));
        assert_ne!(target.md5("a.partial").await.unwrap(), local);
        target.put_bytes("a.partial", data).await.unwrap();
        assert_eq!(target.md5("a.partial").await.unwrap(), local);
    }

    fn md5_of(data: &[u8]) -> impl std::fmt::LowerHex {
        use md5::Digest;
        u128::from_be_bytes(md5::Md5::digest(data).into())
    }

    #[tokio::test]
    async fn busy_nas_and_expired_sessions_are_ridden_out() {
        let nas = nas().await;
        let target = target(&nas, "busy").await;
        target.ensure_folder().await.unwrap();
        nas.emu.faults().update(|f| {
            f.busy_every = Some(3);
            f.expire_session_after = Some(5);
        });
        for i in 0..5 {
            let id = SnapshotId::new(job(), t0() + TimeDelta::days(i));
            write_snapshot(&target, &id, 2).await;
        }
        nas.emu.faults().clear();
        let listing = Listing::classify(&job(), target.list().await.unwrap());
        assert_eq!(listing.snapshots.len(), 5);
    }

    #[tokio::test]
    async fn lock_on_the_nas() {
        let nas = nas().await;
        let target = target(&nas, "locks").await;
        target.ensure_folder().await.unwrap();
        let opts = LockOptions::default().local_host(None);
        let lock = Lock::acquire(&target, LockInfo::new("nuc", 1, t0()), &opts, t0())
            .await
            .unwrap();
        let err = Lock::acquire(&target, LockInfo::new("pi", 2, t0()), &opts, t0())
            .await
            .unwrap_err();
        assert!(matches!(err, lock::Error::Locked { .. }), "{err}");
        lock.release(&target).await.unwrap();
        assert!(target.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_upload_is_transient() {
        let nas = nas().await;
        let target = target(&nas, "drop").await;
        target.ensure_folder().await.unwrap();
        nas.emu.faults().update(|f| {
            f.drop_upload_after = Some(64 * 1024);
            f.drop_upload_times = Some(1);
        });
        let data = Bytes::from(vec![1u8; 2 * 1024 * 1024]);
        let len = data.len() as u64;
        let body = futures_util::stream::iter(
            data.chunks(32 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<std::io::Result<Bytes>>>(),
        );
        let err = target
            .put("v.partial", Box::pin(body), Some(len))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }

    #[tokio::test]
    async fn two_hundred_snapshots_beyond_one_listing_page() {
        let nas = nas().await;
        let target = target(&nas, "many").await;
        target.ensure_folder().await.unwrap();
        // Written straight into the share: 400 uploads would only slow the test.
        let folder = nas.emu.share_path("backup").join("many").join("home");
        let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86_400);
        for i in 0..200 {
            let id = SnapshotId::new(job(), t0() + TimeDelta::hours(12 * i));
            std::fs::write(folder.join(id.archive_name(Encryption::Plain)), b"a").unwrap();
            std::fs::write(folder.join(id.manifest_name()), b"{}").unwrap();
        }
        let stale = SnapshotId::new(job(), t0())
            .volume_name(Encryption::Plain, 1)
            .unwrap();
        let stale = folder.join(partial_name(&stale));
        std::fs::write(&stale, b"half").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::write(folder.join("keep-me.txt"), b"mine").unwrap();

        let listing = Listing::load(&target, &job()).await.unwrap();
        assert_eq!(listing.snapshots.len(), 200);
        assert_eq!(listing.partials.len(), 1);
        assert_eq!(listing.foreign.len(), 1);
        let cleanup = plan_cleanup(&listing, Utc::now());
        assert_eq!(cleanup.len(), 1, "{cleanup:?}");

        let now = t0() + TimeDelta::days(100);
        let policy = Policy::default().daily(10).monthly(3);
        let plan = synback::repo::plan_forget(&listing, &policy, now, chrono_tz::Europe::Berlin);
        let kept = plan.decisions.iter().filter(|d| d.keep).count();
        // Ten days reach back to June 30, so the monthly rule adds only May.
        assert_eq!(kept, 11);
        let deleted = synback::repo::delete_ours(&target, &job(), &plan.delete)
            .await
            .unwrap();
        assert_eq!(deleted, 2 * (200 - 11));
        let leftovers: Vec<String> = cleanup.iter().map(|c| c.name.clone()).collect();
        synback::repo::delete_ours(&target, &job(), &leftovers)
            .await
            .unwrap();
        let after = Listing::load(&target, &job()).await.unwrap();
        assert_eq!(after.snapshots.len(), 11);
        assert!(after.partials.is_empty() && after.orphans.is_empty());
        assert_eq!(after.foreign.len(), 1, "foreign files are never touched");
    }

    #[tokio::test]
    async fn a_strict_nas_needs_known_lengths() {
        let nas = nas_with(|cfg| cfg.strict_content_length = true).await;
        let target = target(&nas, "strict").await;
        target.ensure_folder().await.unwrap();
        let body = || {
            let chunks = vec![Ok(Bytes::from(vec![3u8; 2 * 1024 * 1024]))];
            Box::pin(futures_util::stream::iter(chunks))
        };
        let err = target.put("v.partial", body(), None).await.unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        assert!(
            format!("{:?}", err).contains("LengthRequired"),
            "the cause says what to do: {err:?}"
        );
        target
            .put("v.partial", body(), Some(2 * 1024 * 1024))
            .await
            .unwrap();
        assert_eq!(target.list().await.unwrap()[0].size, 2 * 1024 * 1024);
    }
}

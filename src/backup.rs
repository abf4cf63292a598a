//! One backup run: lock → pack and upload volumes (each to `*.partial`,
//! proven by the target's MD5, then renamed) → manifest last → retention →
//! stale-partial cleanup → unlock.
//!
//! Works against any [`Target`]; knows nothing of DSM. The archive is
//! produced by [`archive::pack`] on a blocking thread while volumes are
//! uploaded on the async side, so reading, compressing and uploading
//! overlap, and the target's MD5 check of one volume runs while the next
//! uploads. Memory stays bounded: in spool mode at most two volumes' worth
//! of local disk is used (volumes being uploaded or checked, and the one
//! being written); in stream
//! mode the bytes go straight from the compressor into the upload through a
//! small bounded channel.
//!
//! A crash at any point leaves either the old state or removable
//! `*.partial` files: a snapshot exists only once its manifest does, and the
//! manifest is written only after every volume's MD5 matched.

use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, instrument, warn};

use crate::archive::{
    self, Issue, Manifest, PackCounts, PackOptions, SnapshotMeta, VolumeInfo, VolumeSink,
};
use crate::event::{Event, Events, Phase, Progress};
use crate::repo::layout::{self, Encryption, JobName, SnapshotId};
use crate::repo::listing::{Listing, plan_cleanup};
use crate::repo::lock::{self, Lock, LockInfo, LockOptions};
use crate::repo::target::{self, PutBody, PutMode, Target, TargetExt};
use crate::retention::{self, Decision, Policy};

/// How volumes travel to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UploadMode {
    /// Each volume is written to a local temp file first and sent with an
    /// exact length; a failed volume is re-sent from that file.
    #[default]
    Spool,
    /// Bytes are sent as they are produced (no local disk); a failure fails
    /// the run, which the caller may retry as a whole.
    Stream,
}

/// Everything one backup run needs to know.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackupOptions {
    /// The job whose folder the target is.
    pub job: JobName,
    /// What to archive and how.
    pub pack: PackOptions,
    /// Spool or stream.
    pub upload_mode: UploadMode,
    /// Where spool files go (default: the system temp dir).
    pub spool_dir: Option<PathBuf>,
    /// What to keep after a successful run.
    pub retention: Policy,
    /// Time zone for retention periods (days, weeks).
    pub timezone: chrono_tz::Tz,
    /// Lock behaviour (stale age, host name).
    pub lock: LockOptions,
    /// How many times one volume is sent before the run fails.
    pub volume_attempts: u32,
    /// Pause before re-sending a failed volume (doubles each time).
    pub retry_delay: Duration,
}

impl BackupOptions {
    /// Defaults for `job` archiving `pack`.
    pub fn new(job: JobName, pack: PackOptions) -> Self {
        Self {
            job,
            pack,
            upload_mode: UploadMode::Spool,
            spool_dir: None,
            retention: Policy::default(),
            timezone: chrono_tz::UTC,
            lock: LockOptions::default(),
            volume_attempts: 3,
            retry_delay: Duration::from_secs(2),
        }
    }
}

/// Whether the snapshot holds everything that was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RunStatus {
    /// Every file was read.
    Ok,
    /// The snapshot is stored and verified, but some files could not be
    /// read or changed while read (see the report's issues).
    Partial,
}

/// One volume as stored on the target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredVolume {
    /// Its name in the job folder.
    pub name: String,
    /// Size, MD5 and SHA-256 as computed locally and confirmed by the MD5 task.
    pub info: VolumeInfo,
    /// How many uploads it took.
    pub attempts: u32,
}

/// What a successful backup run did.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct BackupReport {
    /// The new snapshot.
    pub snapshot: String,
    /// Ok or partial.
    pub status: RunStatus,
    /// File, directory and link counts.
    pub counts: PackCounts,
    /// File content bytes read.
    pub bytes_read: u64,
    /// Archive bytes stored (all volumes).
    pub bytes_stored: u64,
    /// Bytes sent over the wire, re-sends included.
    pub bytes_sent: u64,
    /// The volumes, in order.
    pub volumes: Vec<StoredVolume>,
    /// Files that were skipped or changed while read.
    pub issues: Vec<Issue>,
    /// Retention decisions over the complete snapshots (new one included).
    pub retention: Vec<Decision>,
    /// Snapshots deleted by retention.
    pub forgotten: Vec<String>,
    /// Stale partial files removed.
    pub cleaned: Vec<String>,
    /// Why retention and cleanup were not applied this time, if they were
    /// not: the snapshot itself is stored; the next run tries again.
    pub retention_error: Option<String>,
    /// Why no snapshot was forgotten although retention was due: the run
    /// was partial, and a partial snapshot must not push out the ones that
    /// hold what it misses. Stale partials were still cleaned up.
    pub retention_held: Option<String>,
    /// Wall-clock duration of the run.
    #[serde(with = "duration_secs")]
    pub duration: Duration,
}

/// Why a backup run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target refused or failed an operation.
    #[error("storage: {source}")]
    Target {
        /// The cause.
        #[from]
        source: target::Error,
    },
    /// Another writer holds the job's lock, or ours was lost.
    #[error(transparent)]
    Lock {
        /// The cause.
        #[from]
        source: lock::Error,
    },
    /// Reading or compressing the sources failed.
    #[error("archiving the sources failed: {source}")]
    Archive {
        /// The cause.
        #[from]
        source: archive::Error,
    },
    /// The NAS's MD5 of an uploaded volume kept differing from ours.
    #[error(
        "volume {name}: the NAS computed MD5 {actual} but {expected} was sent ({attempts} attempts); the upload was deleted and no snapshot was recorded"
    )]
    Md5Mismatch {
        /// The volume's final name.
        name: String,
        /// The MD5 computed while producing the volume.
        expected: String,
        /// The MD5 the target reported.
        actual: String,
        /// How many uploads were tried.
        attempts: u32,
    },
    /// A verified volume was no longer stored whole when the manifest was
    /// to be written (another writer removed it).
    #[error(
        "volume {name} is no longer on the NAS with its {size} bytes after it was verified; no snapshot was recorded (did another synback take the job's lock over?)"
    )]
    VolumeGone {
        /// The volume's final name.
        name: String,
        /// The size it had when verified.
        size: u64,
    },
    /// Too many volumes for the naming scheme.
    #[error("the archive needs more volumes than the layout allows: {source}")]
    Layout {
        /// The cause.
        #[from]
        source: layout::Error,
    },
    /// Local spool files could not be written or read.
    #[error("spool file in {dir}: {source}")]
    Spool {
        /// The spool directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The run was cancelled; partial uploads were removed.
    #[error("the backup was cancelled; partial uploads were removed")]
    Cancelled,
    /// A worker task ended abnormally.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True when trying the whole run again later may succeed (network,
    /// busy NAS, a lost session).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Target { source } => source.is_retryable(),
            Error::Lock { source } => matches!(
                source,
                lock::Error::Target { source } if source.is_retryable()
            ),
            Error::Md5Mismatch { .. } => true,
            _ => false,
        }
    }
}

/// Runs one backup of `opts.job` into `target`.
///
/// `now` names the snapshot and is the reference for retention (pass
/// `Utc::now()`; tests pass a fixed time).
///
/// # Errors
/// See [`Error`]. On any error after the lock was taken, this run's
/// partial uploads are deleted (best effort) and the lock released; no
/// manifest is written, so no half snapshot is ever listed. The lock is
/// refreshed while the run goes on; if another writer takes it over all
/// the same, the run stops with [`Error::Lock`] ([`lock::Error::Lost`]).
///
/// # Cancel safety
/// Cancel through `cancel`, not by dropping the future: cancellation stops
/// reading and uploading at the next chunk, removes partials and releases
/// the lock before returning [`Error::Cancelled`].
#[instrument(skip_all, fields(job = %opts.job, snapshot = tracing::field::Empty))]
pub async fn run(
    target: Arc<dyn Target>,
    opts: &BackupOptions,
    events: Events,
    cancel: CancellationToken,
    now: DateTime<Utc>,
) -> Result<BackupReport, Error> {
    let started = Instant::now();
    events.event(Event::Phase(Phase::Connecting));
    target.ensure_folder().await?;
    let (id, now) = fresh_id(target.as_ref(), &opts.job, now).await?;
    tracing::Span::current().record("snapshot", tracing::field::display(&id));
    if cancel.is_cancelled() {
        events.event(Event::Phase(Phase::Done));
        return Err(Error::Cancelled);
    }
    let info = LockInfo::for_this_process(now).with_snapshot(&id);
    let lock = Lock::acquire(target.as_ref(), info, &opts.lock, now).await?;
    info!(snapshot = %id, "lock taken");
    let lock = tokio::sync::Mutex::new(lock);
    let listing = remove_leftovers(target.as_ref(), &opts.job).await;
    let (read, stored) = previous_totals(target.as_ref(), listing.as_ref()).await;
    let events = crate::event::with_eta(events, read, stored);

    let spool_removal = TaskTracker::new();
    let work_cancel = cancel.child_token();
    let work = async {
        let committed = transfer_and_commit(
            &target,
            opts,
            &id,
            &events,
            &work_cancel,
            now,
            &spool_removal,
            &lock,
        );
        match committed.await {
            Ok(report) => finish(&target, opts, report, &events, now).await,
            Err(err) => {
                remove_partials_of(target.as_ref(), &opts.job, &id).await;
                Err(err)
            }
        }
    };
    let keeper = LockKeeper {
        target: target.as_ref(),
        lock: &lock,
        every: lock::refresh_interval(opts.lock.stale_after),
    };
    let result = keeper.hold_while(work, &work_cancel).await;
    if let Err(err) = lock.into_inner().release(target.as_ref()).await {
        warn!(cause = %err, "could not release the lock");
    }
    spool_removal.close();
    spool_removal.wait().await;
    events.event(Event::Phase(Phase::Done));
    result.map(|mut report| {
        report.duration = started.elapsed();
        report
    })
}

/// Keeps a run's lock fresh while the run goes on.
struct LockKeeper<'a> {
    target: &'a dyn Target,
    lock: &'a tokio::sync::Mutex<Lock>,
    /// How often to refresh it.
    every: Duration,
}

impl LockKeeper<'_> {
    /// Runs `work`, refreshing the lock every `self.every` so that a run
    /// longer than the stale age is not taken for a dead one (whose
    /// uploads the next run would delete). If another writer took the lock
    /// over all the same, cancels `work` through `cancel`, lets it clean up,
    /// and fails with why, unless `work` had already committed its snapshot
    /// (a stored snapshot is never turned into a failed run).
    async fn hold_while<T>(
        &self,
        work: impl Future<Output = Result<T, Error>>,
        cancel: &CancellationToken,
    ) -> Result<T, Error> {
        let mut work = std::pin::pin!(work);
        tokio::select! {
            result = &mut work => result,
            lost = self.refresh_until_lost() => {
                warn!(cause = %lost, "stopping: the lock is no longer ours");
                cancel.cancel();
                // Its error (cancelled) gives way to the reason.
                work.await.map_err(|_| Error::Lock { source: lost })
            }
        }
    }

    /// Refreshes the lock forever; returns once it is someone else's. Other
    /// failures (the NAS unreachable for a moment) are logged and tried
    /// again at the next turn: the commit checks the lock once more.
    async fn refresh_until_lost(&self) -> lock::Error {
        loop {
            tokio::time::sleep(self.every).await;
            match self
                .lock
                .lock()
                .await
                .refresh(self.target, Utc::now())
                .await
            {
                Ok(()) => debug!("lock refreshed"),
                Err(lost @ (lock::Error::Lost { .. } | lock::Error::Gone)) => return lost,
                Err(err) => warn!(cause = %err, "could not refresh the lock; trying again later"),
            }
        }
    }
}

/// Proves, before the manifest is written, that the lock is still ours and
/// every volume is still stored, whole, under its name. A writer that took
/// the lock over (it looked abandoned, e.g. through a long NAS outage)
/// deletes what it takes for leftovers: a manifest must never name volumes
/// it may have removed. Retryable failures of the lock's refresh are tried
/// again like an upload: one dropped request must not throw away a
/// finished upload.
async fn check_before_commit(
    target: &dyn Target,
    lock: &tokio::sync::Mutex<Lock>,
    volumes: &[StoredVolume],
    opts: &BackupOptions,
) -> Result<(), Error> {
    let attempts = opts.volume_attempts.max(1);
    let mut delay = opts.retry_delay;
    for attempt in 1.. {
        match lock.lock().await.refresh(target, Utc::now()).await {
            Ok(()) => break,
            Err(lock::Error::Target { source }) if source.is_retryable() && attempt < attempts => {
                warn!(cause = %source, attempt, "could not confirm the lock before the commit; trying again");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            Err(err) => return Err(err.into()),
        }
    }
    let entries = target.list().await?;
    for volume in volumes {
        let stored = entries
            .iter()
            .any(|e| !e.is_dir && e.name == volume.name && e.size == volume.info.size);
        if !stored {
            return Err(Error::VolumeGone {
                name: volume.name.clone(),
                size: volume.info.size,
            });
        }
    }
    Ok(())
}

/// Packs, uploads and verifies every volume, then, once the lock proved
/// still ours, writes the manifest. Spool files are removed on
/// `spool_removal`'s tasks.
#[expect(
    clippy::too_many_arguments,
    reason = "the run's pieces, each borrowed from `run`"
)]
async fn transfer_and_commit(
    target: &Arc<dyn Target>,
    opts: &BackupOptions,
    id: &SnapshotId,
    events: &Events,
    cancel: &CancellationToken,
    now: DateTime<Utc>,
    spool_removal: &TaskTracker,
    lock: &tokio::sync::Mutex<Lock>,
) -> Result<BackupReport, Error> {
    events.event(Event::Phase(Phase::Transferring));
    let encryption = match opts.pack.recipients.is_empty() && opts.pack.passphrase.is_none() {
        true => Encryption::Plain,
        false => Encryption::Age,
    };
    let names = VolumeNames {
        id: id.clone(),
        encryption,
        split: opts.pack.volume_size.is_some(),
    };
    let sent = Arc::new(AtomicU64::new(0));
    let (summary, volumes) = match opts.upload_mode {
        UploadMode::Spool => {
            let spool = spool::Spool::new(opts, spool_removal);
            spool.run(target, &names, events, cancel, &sent).await?
        }
        UploadMode::Stream => stream::run(target, opts, &names, events, cancel, &sent).await?,
    };

    events.event(Event::Phase(Phase::Committing));
    check_before_commit(target.as_ref(), lock, &volumes, opts).await?;
    let meta = SnapshotMeta::new(
        id.to_string(),
        opts.job.as_str(),
        now,
        lock::local_hostname(),
        volumes.iter().map(|v| v.name.clone()).collect(),
    );
    let manifest = Manifest::from_pack(meta, &opts.pack, &summary)?;
    let data = Bytes::from(manifest.to_json()?);
    let local_md5 = md5_hex(&data);
    let manifest_name = id.manifest_name();
    let file = ToStore {
        name: &manifest_name,
        md5: &local_md5,
        volume: false,
    };
    let attempts = store_verified(
        target.as_ref(),
        file,
        || Ok((target::body_from_bytes(data.clone()), data.len() as u64)),
        opts,
        events,
        &sent,
    )
    .await?;
    info!(snapshot = %id, attempts, "manifest written: snapshot committed");

    let status = match summary.is_partial() {
        true => RunStatus::Partial,
        false => RunStatus::Ok,
    };
    Ok(BackupReport {
        snapshot: id.to_string(),
        status,
        counts: summary.counts.clone(),
        bytes_read: summary.bytes_read,
        bytes_stored: summary.bytes_out,
        bytes_sent: sent.load(Ordering::Relaxed),
        volumes,
        issues: summary.issues.clone(),
        retention: Vec::new(),
        forgotten: Vec::new(),
        cleaned: Vec::new(),
        retention_error: None,
        retention_held: None,
        duration: Duration::ZERO,
    })
}

/// Names of the volumes of one snapshot.
#[derive(Debug, Clone)]
struct VolumeNames {
    id: SnapshotId,
    encryption: Encryption,
    split: bool,
}

impl VolumeNames {
    fn name(&self, index: u32) -> Result<String, Error> {
        match self.split {
            false => Ok(self.id.archive_name(self.encryption)),
            true => Ok(self.id.volume_name(self.encryption, index)?),
        }
    }
}

/// One file [`store_verified`] stores.
struct ToStore<'a> {
    /// Its final name.
    name: &'a str,
    /// The MD5 the target must report for it.
    md5: &'a str,
    /// A volume (announced with [`Event::VolumeUploaded`] once sent) or
    /// the manifest (not announced: it is no volume).
    volume: bool,
}

/// Uploads one file to `<name>.partial`, checks the target's MD5 against
/// `md5`, and renames it to `name`. A mismatch or a retryable failure
/// deletes the partial and sends again, up to `opts.volume_attempts` times,
/// with an [`Event::VolumeRetry`] each time. `body` makes a fresh body (and
/// its exact length) for each attempt.
///
/// Returns the number of attempts it took.
async fn store_verified<F>(
    target: &dyn Target,
    file: ToStore<'_>,
    body: F,
    opts: &BackupOptions,
    events: &Events,
    sent: &Arc<AtomicU64>,
) -> Result<u32, Error>
where
    F: Fn() -> Result<(PutBody, u64), Error>,
{
    let ToStore { name, md5, volume } = file;
    let partial = layout::partial_name(name);
    let attempts = opts.volume_attempts.max(1);
    let mut delay = opts.retry_delay;
    for attempt in 1..=attempts {
        let (stream, len) = body()?;
        let outcome = async {
            send_once(target, &partial, stream, len, sent).await?;
            if volume {
                events.event(Event::VolumeUploaded {
                    name: name.to_owned(),
                    size: len,
                });
            }
            check_md5(target, &partial, md5).await
        }
        .await;
        let failed = match outcome {
            Ok(()) => {
                target.rename(&partial, name).await?;
                return Ok(attempt);
            }
            Err(failed) => failed,
        };
        if attempt == attempts || !failed.is_retryable() {
            delete_quietly(target, &partial).await;
            return Err(failed.into_error(name, md5, attempts));
        }
        let reason = match failed {
            Attempt::Mismatch(actual) => format!("MD5 {actual} differs from {md5}"),
            Attempt::Failed(err) => err.to_string(),
        };
        warn!(volume = name, attempt, reason = %reason, "volume upload failed; sending again");
        events.event(Event::VolumeRetry {
            name: name.to_owned(),
            attempt,
            reason,
        });
        delete_quietly(target, &partial).await;
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2);
    }
    Err(Error::Internal(
        "volume retry loop ended without a result".into(),
    ))
}

/// How one upload attempt went wrong.
enum Attempt {
    /// The target's MD5 differs (it holds other bytes than we sent).
    Mismatch(String),
    /// The upload, or the target's MD5 task, failed.
    Failed(target::Error),
}

impl Attempt {
    /// Whether sending again may help: a mismatch may (the bytes were
    /// damaged on the way), a failure if the target says so.
    fn is_retryable(&self) -> bool {
        match self {
            Attempt::Mismatch(_) => true,
            Attempt::Failed(err) => err.is_retryable(),
        }
    }

    /// The run's error for the file `name` (whose MD5 is `expected`) after
    /// `attempts` attempts ended this way.
    fn into_error(self, name: &str, expected: &str, attempts: u32) -> Error {
        match self {
            Attempt::Mismatch(actual) => Error::Md5Mismatch {
                name: name.to_owned(),
                expected: expected.to_owned(),
                actual,
                attempts,
            },
            Attempt::Failed(err) => err.into(),
        }
    }
}

/// Sends one attempt of a volume into `partial`, counting what goes out.
async fn send_once(
    target: &dyn Target,
    partial: &str,
    body: PutBody,
    len: u64,
    sent: &Arc<AtomicU64>,
) -> Result<(), Attempt> {
    let counter = Arc::clone(sent);
    let body = body
        .inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        })
        .boxed();
    target
        .put_opts(partial, body, Some(len), PutMode::Overwrite)
        .await
        .map_err(Attempt::Failed)
}

/// Asks the target for the MD5 of what it stored in `partial` and compares
/// it with ours.
async fn check_md5(target: &dyn Target, partial: &str, md5: &str) -> Result<(), Attempt> {
    let remote = target.md5(partial).await.map_err(Attempt::Failed)?;
    match remote.eq_ignore_ascii_case(md5) {
        true => Ok(()),
        false => Err(Attempt::Mismatch(remote)),
    }
}

async fn delete_quietly(target: &dyn Target, name: &str) {
    if let Err(err) = target.delete_if_exists(name).await {
        warn!(file = name, cause = %err, "could not delete a partial upload");
    }
}

/// Deletes every file of snapshot `id` that is not committed: its partials
/// and, since no manifest was written, its already renamed volumes.
///
/// A committed snapshot (one with a manifest) is never touched, whatever its
/// id.
async fn remove_partials_of(target: &dyn Target, job: &JobName, id: &SnapshotId) {
    let Ok(entries) = target.list().await else {
        warn!(snapshot = %id, "could not list the folder to remove this run's uploads");
        return;
    };
    let listing = Listing::classify(job, entries);
    let partials = listing
        .partials
        .iter()
        .filter(|p| &p.id == id)
        .map(|p| p.entry.name.clone());
    let orphans = listing
        .orphans
        .iter()
        .filter(|o| &o.id == id)
        .flat_map(|o| o.deletion_order());
    let names: Vec<String> = partials.chain(orphans).collect();
    for name in names {
        delete_quietly(target, &name).await;
    }
}

/// The id of this run's snapshot, and its time: `now`, moved on by whole
/// seconds while any file of the job folder already carries that id (ids
/// have one-second resolution, and two runs can end within one second), so
/// a run never collides with, or cleans up, another run's files.
async fn fresh_id(
    target: &dyn Target,
    job: &JobName,
    now: DateTime<Utc>,
) -> Result<(SnapshotId, DateTime<Utc>), Error> {
    let taken: std::collections::HashSet<SnapshotId> = target
        .list()
        .await?
        .iter()
        .filter_map(|e| layout::parse_name(job, &e.name)?.snapshot_id().cloned())
        .collect();
    let mut at = now;
    loop {
        let id = SnapshotId::new(job.clone(), at);
        if !taken.contains(&id) {
            return Ok((id, at));
        }
        at += chrono::TimeDelta::seconds(1);
    }
}

/// Deletes every partial upload and every archive without a manifest.
///
/// Called with the lock held: no other writer is active, so such files were
/// left by a run that died (killed, crashed, powered off). Only names that
/// parse as this job's files are touched; failures are logged, and the
/// daily cleanup after the run tries again.
/// Returns the listing it worked from.
async fn remove_leftovers(target: &dyn Target, job: &JobName) -> Option<Listing> {
    let Ok(entries) = target.list().await else {
        return None;
    };
    let listing = Listing::classify(job, entries);
    let names: Vec<String> = listing
        .partials
        .iter()
        .map(|p| p.entry.name.clone())
        .chain(listing.orphans.iter().flat_map(|o| o.deletion_order()))
        .collect();
    for name in names {
        info!(file = %name, "removing what an interrupted run left");
        delete_quietly(target, &name).await;
    }
    Some(listing)
}

/// After the commit: retention and cleanup. Their failures are logged and
/// reported, never turn a stored snapshot into a failed run.
async fn finish(
    target: &Arc<dyn Target>,
    opts: &BackupOptions,
    mut report: BackupReport,
    events: &Events,
    now: DateTime<Utc>,
) -> Result<BackupReport, Error> {
    events.event(Event::Phase(Phase::Rotating));
    let rotation = match retention_held_back(&report) {
        Some(why) => {
            warn!(reason = %why, "no snapshot forgotten after this run");
            report.retention_held = Some(why);
            Rotation::CleanupOnly
        }
        None => Rotation::Full,
    };
    match rotate(target.as_ref(), opts, now, rotation).await {
        Ok((decisions, forgotten, cleaned)) => {
            report.retention = decisions;
            report.forgotten = forgotten;
            report.cleaned = cleaned;
        }
        Err(err) => {
            warn!(cause = %err, "retention was not applied this time");
            report.retention_error = Some(err.to_string());
        }
    }
    Ok(report)
}

/// Why a run must not forget snapshots, if it must not: a partial run.
///
/// A snapshot that misses files (unreadable, or changed while read) counts
/// as one under `keep_last` and the periods like any other, so each night
/// that fails the same way would push out one more snapshot that holds
/// those files. Until a run reads everything again, none is forgotten; the
/// summary says so each time, and `synback forget` applies the policy by
/// hand when the loss is understood.
fn retention_held_back(report: &BackupReport) -> Option<String> {
    if report.status != RunStatus::Partial {
        return None;
    }
    Some(format!(
        "the snapshot is partial ({} file(s) not saved as they were); earlier \
         snapshots are kept until a run saves everything (or run `synback forget`)",
        report.issues.len()
    ))
}

/// How much of the rotation [`rotate`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Forget snapshots by the policy and remove stale partials.
    Full,
    /// Only remove stale partials (after a partial run).
    CleanupOnly,
}

/// What [`rotate`] decided and did: decisions, snapshots deleted, stale
/// partials removed.
pub type RotateOutcome = (Vec<Decision>, Vec<String>, Vec<String>);

/// Applies the retention policy to the complete snapshots in `target`
/// (unless `rotation` is [`Rotation::CleanupOnly`]) and removes partial
/// uploads older than a day. Only names that parse as this
/// job's files are ever deleted; the newest complete snapshot is always kept.
///
/// # Errors
/// Listing or deleting failed; what was deleted before stays deleted.
pub async fn rotate(
    target: &dyn Target,
    opts: &BackupOptions,
    now: DateTime<Utc>,
    rotation: Rotation,
) -> Result<RotateOutcome, target::Error> {
    let listing = Listing::classify(&opts.job, target.list().await?);
    let decisions = match rotation {
        Rotation::Full => {
            retention::apply(&listing.candidates(), &opts.retention, now, opts.timezone)
        }
        Rotation::CleanupOnly => Vec::new(),
    };
    let mut forgotten = Vec::new();
    for decision in decisions.iter().filter(|d| !d.keep) {
        let Some(snapshot) = listing
            .snapshots
            .iter()
            .find(|s| s.id.to_string() == decision.id)
        else {
            continue;
        };
        for name in snapshot.deletion_order() {
            target.delete_if_exists(&name).await?;
        }
        info!(snapshot = %decision.id, "forgotten by retention");
        forgotten.push(decision.id.clone());
    }
    let mut cleaned = Vec::new();
    for item in plan_cleanup(&listing, now) {
        target.delete_if_exists(&item.name).await?;
        cleaned.push(item.name);
    }
    Ok((decisions, forgotten, cleaned))
}

/// Lowercase hex MD5 of a small buffer (the manifest).
fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

/// The bytes the job's latest snapshot read (from its manifest, one small
/// download) and stored (from the listing): the estimated totals of this
/// run, whose sources are not walked in advance. `None` on the first run
/// or when they cannot be read.
async fn previous_totals(
    target: &dyn Target,
    listing: Option<&Listing>,
) -> (Option<u64>, Option<u64>) {
    let Some(latest) = listing.and_then(Listing::latest) else {
        return (None, None);
    };
    let read = match crate::restore::manifest(target, latest).await {
        Ok(manifest) => Some(manifest.bytes_read),
        Err(err) => {
            debug!(cause = %err, "no estimate of the bytes to read: previous manifest unreadable");
            None
        }
    };
    (read, Some(latest.archive_size()))
}

/// Turns archive progress into throttled [`Event::Progress`] events
/// (totals and ETA are added by [`crate::event::with_eta`]).
fn progress_reporter(
    events: &Events,
    sent: &Arc<AtomicU64>,
) -> impl Fn(&archive::PackProgress<'_>) + use<> {
    let events = Arc::clone(events);
    let sent = Arc::clone(sent);
    // The first report goes out at once, so even a short run shows one.
    let last = std::sync::Mutex::new(None::<Instant>);
    move |p: &archive::PackProgress<'_>| {
        let Ok(mut last) = last.lock() else { return };
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
            return;
        }
        *last = Some(Instant::now());
        let mut progress = Progress::counters(
            p.counts.files,
            p.bytes_read,
            sent.load(Ordering::Relaxed),
            Some(p.current.display().to_string()),
        );
        // The scan ahead of the pack, once done, knows this run's input
        // better than the previous snapshot does.
        progress.total_bytes = p.bytes_total;
        events.event(Event::Progress(progress));
    }
}

/// Runs [`archive::pack`] on a blocking thread, forwarding issues as events.
async fn pack_blocking<S>(
    opts: &BackupOptions,
    mut sink: S,
    events: &Events,
    cancel: &CancellationToken,
    sent: &Arc<AtomicU64>,
) -> Result<archive::PackSummary, Error>
where
    S: VolumeSink + Send + 'static,
{
    let pack_opts = opts.pack.clone();
    let progress = progress_reporter(events, sent);
    let cancel = cancel.clone();
    let summary = tokio::task::spawn_blocking(move || {
        archive::pack(&pack_opts, &mut sink, &progress, &cancel)
    })
    .await
    .map_err(|e| Error::Internal(format!("the archiver thread ended: {e}")))??;
    // The reporter is throttled: the final counts always go out, with the
    // input's total, known exactly now.
    let mut last = Progress::counters(
        summary.counts.files,
        summary.bytes_read,
        sent.load(Ordering::Relaxed),
        None,
    );
    last.total_bytes = Some(summary.bytes_read);
    events.event(Event::Progress(last));
    for issue in &summary.issues {
        events.event(Event::Warning {
            path: issue.path.display().to_string(),
            reason: issue.reason.clone(),
        });
    }
    Ok(summary)
}

/// Spool mode: volumes go through local temp files.
mod spool {
    use super::*;

    /// A finished volume waiting in a temp file.
    pub(super) struct Spooled {
        pub(super) file: tempfile::TempPath,
        pub(super) info: VolumeInfo,
    }

    fn uploader_stopped() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "the uploader stopped")
    }

    /// The local disk the spool may use: two volumes' worth. A volume
    /// reserves the volume size when it begins, gives back what it did not
    /// use when it ends (the last volumes of a run are small), and the rest
    /// once it is committed and its file removed.
    #[derive(Debug)]
    struct DiskBudget {
        /// Bytes free, and whether the uploader has stopped.
        state: std::sync::Mutex<(u64, bool)>,
        changed: std::sync::Condvar,
    }

    impl DiskBudget {
        fn new(bytes: u64) -> Arc<Self> {
            Arc::new(Self {
                state: std::sync::Mutex::new((bytes, false)),
                changed: std::sync::Condvar::new(),
            })
        }

        fn state(&self) -> std::sync::MutexGuard<'_, (u64, bool)> {
            self.state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// Waits (on the packing thread) until `bytes` are free and takes
        /// them; fails once the uploader has stopped.
        fn take(&self, bytes: u64) -> io::Result<()> {
            let mut state = self.state();
            while state.0 < bytes && !state.1 {
                state = self
                    .changed
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if state.1 {
                return Err(uploader_stopped());
            }
            state.0 -= bytes;
            Ok(())
        }

        fn give(&self, bytes: u64) {
            let mut state = self.state();
            state.0 = state.0.saturating_add(bytes);
            self.changed.notify_all();
        }

        /// Wakes a waiting packer for good: nothing will be given back.
        fn close(&self) {
            self.state().1 = true;
            self.changed.notify_all();
        }
    }

    /// Writes each volume to a temp file and hands it to the uploader,
    /// within the disk budget.
    struct SpoolSink {
        dir: PathBuf,
        current: Option<(BufWriter<std::fs::File>, tempfile::TempPath)>,
        budget: Arc<DiskBudget>,
        /// What each volume reserves: the volume size.
        reserve: u64,
        done: mpsc::Sender<Spooled>,
    }

    impl VolumeSink for SpoolSink {
        fn begin_volume(&mut self, _index: u32) -> io::Result<()> {
            self.budget.take(self.reserve)?;
            let (file, path) = tempfile::Builder::new()
                .prefix("synback-volume-")
                .tempfile_in(&self.dir)?
                .into_parts();
            self.current = Some((BufWriter::with_capacity(1 << 20, file), path));
            Ok(())
        }

        fn write(&mut self, buf: &[u8]) -> io::Result<()> {
            match &mut self.current {
                Some((writer, _)) => writer.write_all(buf),
                None => Err(io::Error::other("write outside a volume")),
            }
        }

        fn end_volume(&mut self, info: &VolumeInfo) -> io::Result<()> {
            let Some((writer, file)) = self.current.take() else {
                return Err(io::Error::other("end of a volume that was not begun"));
            };
            // No fsync: the file is read back by this process (the page
            // cache serves it) and is worthless after a crash anyway.
            writer.into_inner().map_err(|e| e.into_error())?;
            self.budget.give(self.reserve.saturating_sub(info.size));
            let spooled = Spooled {
                file,
                info: info.clone(),
            };
            self.done
                .blocking_send(spooled)
                .map_err(|_| uploader_stopped())
        }
    }

    /// What a spool-mode run needs besides the target.
    pub(super) struct Spool<'a> {
        opts: &'a BackupOptions,
        /// Where spool files are removed, off the way of the next upload.
        removal: &'a TaskTracker,
    }

    impl<'a> Spool<'a> {
        pub(super) fn new(opts: &'a BackupOptions, removal: &'a TaskTracker) -> Self {
            Self { opts, removal }
        }

        pub(super) async fn run(
            &self,
            target: &Arc<dyn Target>,
            names: &VolumeNames,
            events: &Events,
            cancel: &CancellationToken,
            sent: &Arc<AtomicU64>,
        ) -> Result<(archive::PackSummary, Vec<StoredVolume>), Error> {
            let opts = self.opts;
            let dir = opts.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
            // Without volumes there is one, of unknown size.
            let reserve = opts.pack.volume_size.unwrap_or(u64::MAX / 2);
            let budget = DiskBudget::new(reserve.saturating_mul(2));
            let (done_tx, done_rx) = mpsc::channel(1);
            let sink = SpoolSink {
                dir: dir.clone(),
                current: None,
                budget: Arc::clone(&budget),
                reserve,
                done: done_tx,
            };
            let pack_cancel = cancel.child_token();
            let store = Store {
                target,
                names,
                events,
                sent,
                budget,
            };
            let (packed, uploaded) = tokio::join!(
                pack_blocking(opts, sink, events, &pack_cancel, sent),
                async {
                    let r = self.upload_all(store, done_rx).await;
                    if r.is_err() {
                        pack_cancel.cancel();
                    }
                    r
                }
            );
            let volumes = uploaded?;
            let summary = match packed {
                Err(Error::Archive { source }) if cancel.is_cancelled() => {
                    drop(source);
                    return Err(Error::Cancelled);
                }
                other => other?,
            };
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            Ok((summary, volumes))
        }

        /// Stores the spooled volumes in order, two at a time, so that the
        /// target's MD5 check of one volume overlaps with the upload of the
        /// next. Returning drops `store` and `done`, which stops a packer
        /// waiting on the disk budget or on the uploader.
        async fn upload_all(
            &self,
            store: Store<'_>,
            mut done: mpsc::Receiver<Spooled>,
        ) -> Result<Vec<StoredVolume>, Error> {
            futures_util::stream::poll_fn(|cx| done.poll_recv(cx))
                .map(|spooled| self.store_one(&store, spooled))
                .buffered(2)
                .try_collect()
                .await
        }

        async fn store_one(
            &self,
            store: &Store<'_>,
            spooled: Spooled,
        ) -> Result<StoredVolume, Error> {
            let name = store.names.name(spooled.info.index)?;
            let path = spooled.file.to_path_buf();
            let size = spooled.info.size;
            let file = ToStore {
                name: &name,
                md5: &spooled.info.md5,
                volume: true,
            };
            let attempts = store_verified(
                store.target.as_ref(),
                file,
                || Ok((file_body(path.clone()), size)),
                self.opts,
                store.events,
                store.sent,
            )
            .await?;
            store.events.event(Event::VolumeStored {
                name: name.clone(),
                size,
            });
            info!(volume = %name, bytes = size, attempts, "volume stored and verified");
            let stored = StoredVolume {
                name,
                info: spooled.info.clone(),
                attempts,
            };
            // Removing a volume-sized file takes the kernel a while (tens of
            // ms for a GiB): not on the way to the next volume or the
            // manifest. Its disk comes back once the file is gone.
            let budget = Arc::clone(&store.budget);
            self.removal.spawn_blocking(move || {
                drop(spooled);
                budget.give(size);
            });
            Ok(stored)
        }
    }

    /// Where and how the spooled volumes are stored.
    struct Store<'a> {
        target: &'a Arc<dyn Target>,
        names: &'a VolumeNames,
        events: &'a Events,
        sent: &'a Arc<AtomicU64>,
        /// Takes back the disk of committed volumes.
        budget: Arc<DiskBudget>,
    }

    impl Drop for Store<'_> {
        fn drop(&mut self) {
            self.budget.close();
        }
    }

    /// Bytes read from a spool file at a time: one trip to the blocking
    /// pool per MiB, and each read lands in the buffer that is sent (no
    /// second copy, as a buffered async file would make).
    const SPOOL_READ: usize = 1 << 20;

    /// A body that streams a spool file, opened lazily for each attempt.
    fn file_body(path: PathBuf) -> PutBody {
        let path = Arc::new(path);
        futures_util::stream::try_unfold(None, move |file| {
            let path = Arc::clone(&path);
            async move {
                tokio::task::spawn_blocking(move || read_chunk(file, &path))
                    .await
                    .map_err(io::Error::other)?
            }
        })
        .boxed()
    }

    /// The next chunk of the spool file at `path` (opened on the first
    /// call), and the file to read the one after from; `None` at the end.
    fn read_chunk(
        file: Option<std::fs::File>,
        path: &std::path::Path,
    ) -> io::Result<Option<(Bytes, Option<std::fs::File>)>> {
        let mut file = match file {
            Some(file) => file,
            None => std::fs::File::open(path)?,
        };
        // Not zeroed first: the read fills it (a 1 MiB memset per chunk).
        let mut buf = Vec::with_capacity(SPOOL_READ);
        (&mut file).take(SPOOL_READ as u64).read_to_end(&mut buf)?;
        match buf.is_empty() {
            true => Ok(None),
            false => Ok(Some((Bytes::from(buf), Some(file)))),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_disk_budget_waits_for_room_and_fails_once_closed() {
            let budget = DiskBudget::new(10);
            budget.take(6).unwrap();
            let waiting = {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || budget.take(8))
            };
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiting.is_finished(), "took 8 with 4 free");
            budget.give(4);
            waiting.join().unwrap().unwrap();
            let stuck = {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || budget.take(1))
            };
            budget.close();
            let err = stuck.join().unwrap().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        }
    }
}

/// Stream mode: bytes go from the compressor straight into the upload.
mod stream {
    use super::*;

    /// Chunks are gathered to this size before they are sent to the uploader.
    const CHUNK: usize = 256 * 1024;
    /// Chunks in flight to the uploader (4 MiB): the compressor only waits
    /// for the network when the network is really behind, not when the
    /// uploading task is briefly descheduled (a stalled compressor also
    /// stalls the zstd workers waiting on it).
    const IN_FLIGHT: usize = 16;

    enum Message {
        Begin(u32, mpsc::Receiver<io::Result<Bytes>>),
        End(VolumeInfo),
    }

    struct StreamSink {
        control: mpsc::Sender<Message>,
        chunks: Option<mpsc::Sender<io::Result<Bytes>>>,
        buf: Vec<u8>,
    }

    fn stopped() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "the uploader stopped")
    }

    impl StreamSink {
        fn flush_buf(&mut self) -> io::Result<()> {
            if self.buf.is_empty() {
                return Ok(());
            }
            let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
            match &self.chunks {
                Some(tx) => tx.blocking_send(Ok(chunk)).map_err(|_| stopped()),
                None => Err(io::Error::other("write outside a volume")),
            }
        }
    }

    impl VolumeSink for StreamSink {
        fn begin_volume(&mut self, index: u32) -> io::Result<()> {
            let (tx, rx) = mpsc::channel(IN_FLIGHT);
            self.chunks = Some(tx);
            self.control
                .blocking_send(Message::Begin(index, rx))
                .map_err(|_| stopped())
        }

        fn write(&mut self, buf: &[u8]) -> io::Result<()> {
            self.buf.extend_from_slice(buf);
            if self.buf.len() >= CHUNK {
                self.flush_buf()?;
            }
            Ok(())
        }

        fn end_volume(&mut self, info: &VolumeInfo) -> io::Result<()> {
            self.flush_buf()?;
            self.chunks = None;
            self.control
                .blocking_send(Message::End(info.clone()))
                .map_err(|_| stopped())
        }
    }

    pub(super) async fn run(
        target: &Arc<dyn Target>,
        opts: &BackupOptions,
        names: &VolumeNames,
        events: &Events,
        cancel: &CancellationToken,
        sent: &Arc<AtomicU64>,
    ) -> Result<(archive::PackSummary, Vec<StoredVolume>), Error> {
        let (control_tx, control_rx) = mpsc::channel(1);
        let sink = StreamSink {
            control: control_tx,
            chunks: None,
            buf: Vec::with_capacity(CHUNK),
        };
        let pack_cancel = cancel.child_token();
        let (packed, uploaded) = tokio::join!(
            pack_blocking(opts, sink, events, &pack_cancel, sent),
            async {
                let r = upload_all(target, names, events, control_rx, sent).await;
                if r.is_err() {
                    pack_cancel.cancel();
                }
                r
            }
        );
        let volumes = uploaded?;
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok((packed?, volumes))
    }

    /// Uploads the volumes as the compressor produces them and, one step
    /// behind, checks and renames each: the target's MD5 task for volume N
    /// runs while volume N+1 is uploading. A failed check fails the run (the
    /// bytes are gone; the caller may retry the whole run).
    async fn upload_all(
        target: &Arc<dyn Target>,
        names: &VolumeNames,
        events: &Events,
        control: mpsc::Receiver<Message>,
        sent: &Arc<AtomicU64>,
    ) -> Result<Vec<StoredVolume>, Error> {
        let (uploaded_tx, uploaded_rx) = mpsc::channel(1);
        let ((), stored) = tokio::try_join!(
            upload_each(target, names, control, uploaded_tx, sent),
            commit_each(target, events, uploaded_rx),
        )?;
        Ok(stored)
    }

    /// A volume whose bytes are all on the target, under its partial name.
    struct Uploaded {
        name: String,
        partial: String,
        info: VolumeInfo,
    }

    async fn upload_each(
        target: &Arc<dyn Target>,
        names: &VolumeNames,
        mut control: mpsc::Receiver<Message>,
        uploaded: mpsc::Sender<Uploaded>,
        sent: &Arc<AtomicU64>,
    ) -> Result<(), Error> {
        while let Some(message) = control.recv().await {
            let Message::Begin(index, chunks) = message else {
                return Err(Error::Internal("volume end without a beginning".into()));
            };
            let name = names.name(index)?;
            let partial = layout::partial_name(&name);
            let counter = Arc::clone(sent);
            let body = crate::repo::target::stream_from_channel(chunks)
                .inspect(move |c| {
                    if let Ok(c) = c {
                        counter.fetch_add(c.len() as u64, Ordering::Relaxed);
                    }
                })
                .boxed();
            target
                .put_opts(&partial, body, None, PutMode::Overwrite)
                .await?;
            let Some(Message::End(info)) = control.recv().await else {
                return Err(Error::Internal("volume ended without its digests".into()));
            };
            let volume = Uploaded {
                name,
                partial,
                info,
            };
            if uploaded.send(volume).await.is_err() {
                // The committer stopped; its error is the run's.
                break;
            }
        }
        Ok(())
    }

    async fn commit_each(
        target: &Arc<dyn Target>,
        events: &Events,
        mut uploaded: mpsc::Receiver<Uploaded>,
    ) -> Result<Vec<StoredVolume>, Error> {
        let mut stored = Vec::new();
        while let Some(Uploaded {
            name,
            partial,
            info,
        }) = uploaded.recv().await
        {
            events.event(Event::VolumeUploaded {
                name: name.clone(),
                size: info.size,
            });
            if let Err(failed) = check_md5(target.as_ref(), &partial, &info.md5).await {
                delete_quietly(target.as_ref(), &partial).await;
                return Err(failed.into_error(&name, &info.md5, 1));
            }
            target.rename(&partial, &name).await?;
            events.event(Event::VolumeStored {
                name: name.clone(),
                size: info.size,
            });
            info!(volume = %name, bytes = info.size, "volume stored and verified");
            stored.push(StoredVolume {
                name,
                info,
                attempts: 1,
            });
        }
        Ok(stored)
    }
}

mod duration_secs {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

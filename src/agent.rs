//! The library's front door: an [`Agent`] built from a [`Config`] runs
//! backups, lists, verifies, restores and forgets snapshots on the NAS.
//!
//! Each operation connects afresh (discovery and login), so a NAS that
//! rebooted, slept or dropped its sessions since the last call is no
//! reason for a long-lived agent to stay broken. The agent prints nothing,
//! reads no environment variables and installs no global state; progress
//! goes to the [`EventSink`](crate::event::EventSink) given with
//! [`Agent::with_events`], and cancellation through a
//! [`CancellationToken`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::archive::{self, DecryptKey, EntryInfo, Manifest};
use crate::backup::{self, BackupOptions, BackupReport, RotateOutcome};
use crate::config::{self, Config, JobConfig};
use crate::dsm::{self, ClientOptions, OtpSource};
use crate::event::{Event, Events, NoEvents, Phase};
use crate::repo::dsm_target::DsmTarget;
use crate::repo::layout::{self, JobName};
use crate::repo::listing::{Listing, SnapshotFiles};
use crate::repo::lock::{Lock, LockInfo, LockOptions};
use crate::repo::target::{self, Target};
use crate::restore::{self, DeepCheck, RestoreOptions, RestoreReport, Selector};
use crate::retention::Decision;
use crate::secret::Secret;

/// Name of the file in the state directory that remembers this device
/// (the DSM device token from `synback login`).
pub const DEVICE_ID_FILE: &str = "device-id";

/// Exit codes, distinct so that scripts and monitors can react (as
/// restic does); [`Error::exit_code`] picks one for each error.
pub mod exit {
    /// Everything worked.
    pub const OK: u8 = 0;
    /// The run failed.
    pub const FAILED: u8 = 1;
    /// Bad usage or configuration.
    pub const USAGE: u8 = 2;
    /// Partial: the snapshot is good but some files could not be read.
    pub const PARTIAL: u8 = 3;
    /// Verification failed: the NAS holds other bytes than recorded.
    pub const VERIFY: u8 = 4;
    /// The NAS could not be reached (a "soft" failure).
    pub const UNREACHABLE: u8 = 5;
    /// The NAS refused the credentials (password or OTP).
    pub const AUTH: u8 = 6;
    /// The job is locked by another writer.
    pub const LOCKED: u8 = 7;
}

/// Runs synback's operations for one config.
#[derive(Clone)]
pub struct Agent {
    config: Arc<Config>,
    events: Events,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config.path)
            .finish_non_exhaustive()
    }
}

/// Why an operation failed. [`Error::exit_code`] and [`Error::hint`] tell
/// a front end how to react.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config names no such job.
    #[error("there is no job {name:?} in the config (jobs: {known})")]
    UnknownJob {
        /// The name asked for.
        name: String,
        /// The jobs that exist, comma separated.
        known: String,
    },
    /// The config could not be used.
    #[error(transparent)]
    Config(Box<config::Error>),
    /// Connecting or logging in to the NAS failed.
    #[error("connecting to the NAS failed: {0}")]
    Connect(#[source] Box<dsm::Error>),
    /// The backup run failed.
    #[error(transparent)]
    Backup(Box<backup::Error>),
    /// Reading a snapshot failed.
    #[error(transparent)]
    Restore(Box<restore::Error>),
    /// A storage operation failed.
    #[error("storage: {0}")]
    Target(#[source] Box<target::Error>),
    /// A job name or snapshot id is not valid.
    #[error(transparent)]
    Layout(#[from] layout::Error),
    /// The restore target is not acceptable.
    #[error("refusing to restore into {path}: {reason}")]
    RestoreTarget {
        /// The target folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The age identity could not be read.
    #[error("cannot read the age identity {path}: {reason}")]
    Identity {
        /// The identity file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file in the state directory could not be written or read.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The run was cancelled through its token before it started
    /// transferring (while connecting). [`Error::is_cancelled`] also
    /// recognises a cancelled backup or restore.
    #[error("cancelled")]
    Cancelled,
    /// A manifest from `--from-file` could not be read.
    #[error("{path}: {source}")]
    LocalManifest {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<archive::Error>,
    },
}

impl From<config::Error> for Error {
    fn from(err: config::Error) -> Self {
        Error::Config(Box::new(err))
    }
}

impl From<backup::Error> for Error {
    fn from(err: backup::Error) -> Self {
        Error::Backup(Box::new(err))
    }
}

impl From<restore::Error> for Error {
    fn from(err: restore::Error) -> Self {
        Error::Restore(Box::new(err))
    }
}

impl From<target::Error> for Error {
    fn from(err: target::Error) -> Self {
        Error::Target(Box::new(err))
    }
}

impl From<dsm::Error> for Error {
    fn from(err: dsm::Error) -> Self {
        Error::Connect(Box::new(err))
    }
}

impl Error {
    /// The process exit code for this error (see the README's table).
    pub fn exit_code(&self) -> u8 {
        if let Some(dsm) = find_dsm(self) {
            if dsm.is_auth() {
                return exit::AUTH;
            }
            if dsm.is_unreachable() {
                return exit::UNREACHABLE;
            }
        }
        match self {
            Error::Backup(e) => backup_exit_code(e.as_ref()),
            Error::Restore(e) => restore_exit_code(e.as_ref()),
            Error::UnknownJob { .. } | Error::Config(_) | Error::RestoreTarget { .. } => {
                exit::USAGE
            }
            Error::Identity { .. } => exit::USAGE,
            _ => exit::FAILED,
        }
    }

    /// True when the run stopped because its cancellation token was
    /// cancelled (partials were removed and the lock released), not
    /// because something failed.
    pub fn is_cancelled(&self) -> bool {
        match self {
            Error::Cancelled => true,
            Error::Backup(e) => matches!(
                **e,
                backup::Error::Cancelled
                    | backup::Error::Archive {
                        source: archive::Error::Cancelled
                    }
            ),
            Error::Restore(e) => match &**e {
                restore::Error::Cancelled => true,
                restore::Error::Archive(a) => matches!(**a, archive::Error::Cancelled),
                _ => false,
            },
            _ => false,
        }
    }

    /// Advice for the person reading the error, when there is any.
    pub fn hint(&self) -> Option<String> {
        if let Error::Restore(e) = self
            && let restore::Error::Archive(a) = e.as_ref()
            && a.is_external_symlink()
        {
            return Some(
                        "the snapshot holds absolute symlinks; restore with --allow-external-symlinks to recreate them as links (add --overwrite to restore again into the folder this run began to fill)".to_owned(),
                    );
        }
        if let Some(advice) = find_target(self).and_then(storage_advice) {
            return Some(advice.to_owned());
        }
        match find_dsm(self)? {
            dsm::Error::Login { refusal, .. } => Some(refusal.advice().to_owned()),
            e if e.is_unreachable() => Some(
                "the NAS or its DSM web service is not answering; check that it is on and reachable, then run again (nothing was recorded)".to_owned(),
            ),
            _ => None,
        }
    }
}

/// What to do about a storage failure, when there is something to do.
fn storage_advice(err: &target::Error) -> Option<&'static str> {
    match err {
        target::Error::NoSpace { .. } => Some(
            "free space on the NAS volume (delete files or keep fewer snapshots with a smaller retention) and run again; earlier snapshots are intact",
        ),
        target::Error::QuotaExceeded { .. } => Some(
            "raise the account's quota on the share in DSM (Control Panel > User > Quota) or keep fewer snapshots, then run again; earlier snapshots are intact",
        ),
        _ => None,
    }
}

/// The storage error somewhere in the cause chain, if any.
fn find_target(err: &Error) -> Option<&target::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(found) = cause.downcast_ref::<target::Error>() {
            return Some(found);
        }
        source = cause.source();
    }
    None
}

fn backup_exit_code(err: &backup::Error) -> u8 {
    match err {
        backup::Error::Lock {
            source: crate::repo::lock::Error::Locked { .. },
        } => exit::LOCKED,
        backup::Error::Md5Mismatch { .. } => exit::VERIFY,
        _ => exit::FAILED,
    }
}

fn restore_exit_code(err: &restore::Error) -> u8 {
    match err {
        restore::Error::Corrupt { .. } | restore::Error::MissingVolume { .. } => exit::VERIFY,
        restore::Error::Download { .. } => exit::UNREACHABLE,
        restore::Error::NoSnapshot { .. } | restore::Error::FilesMismatch { .. } => exit::USAGE,
        _ => exit::FAILED,
    }
}

/// The DSM error somewhere in the cause chain, if any.
fn find_dsm(err: &Error) -> Option<&dsm::Error> {
    if let Error::Connect(e) = err {
        return Some(e.as_ref());
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(dsm) = cause.downcast_ref::<dsm::Error>() {
            return Some(dsm);
        }
        source = cause.source();
    }
    None
}

/// How deeply to verify a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyMode {
    /// Sizes from the listing and the NAS's MD5 of every volume, against
    /// the manifest. Downloads nothing.
    Quick,
    /// Download every volume, check SHA-256, decompress and read every
    /// entry, write nothing.
    Deep,
}

/// The outcome of a successful verification.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The snapshot verified.
    pub snapshot: String,
    /// Volumes checked.
    pub volumes: usize,
    /// For a deep check: what was read.
    pub deep: Option<DeepCheck>,
}

impl VerifyReport {
    /// One line for people.
    pub fn summary(&self) -> String {
        match &self.deep {
            None => format!(
                "{} volume(s): sizes and NAS MD5 match the manifest",
                self.volumes
            ),
            Some(d) => format!(
                "{} volume(s) downloaded ({} bytes), SHA-256 match, {} entries read ({} bytes)",
                self.volumes, d.downloaded, d.entries, d.bytes
            ),
        }
    }
}

/// What `forget` decided and did.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct ForgetReport {
    /// Every complete snapshot with its fate and reasons.
    pub decisions: Vec<Decision>,
    /// Snapshots deleted (empty in a dry run).
    pub forgotten: Vec<String>,
    /// Stale partial uploads and orphans removed (in a dry run: to remove).
    pub cleaned: Vec<String>,
}

/// Paths that differ between two snapshots.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct DiffReport {
    /// Only in the second snapshot.
    pub added: Vec<String>,
    /// Only in the first.
    pub removed: Vec<String>,
    /// In both, with another size, mtime, mode, kind or link target.
    pub changed: Vec<String>,
}

/// The result of `check-config --online`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OnlineCheck {
    /// Per job: its name and what the NAS check found.
    pub jobs: Vec<(String, Vec<dsm::Finding>)>,
}

impl Agent {
    /// An agent for `config` that reports no events.
    pub fn new(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            events: Arc::new(NoEvents),
        }
    }

    /// Sends progress events to `events`.
    #[must_use]
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// The config in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn job(&self, name: &str) -> Result<&JobConfig, Error> {
        self.config.job(name).ok_or_else(|| Error::UnknownJob {
            name: name.to_owned(),
            known: self
                .config
                .jobs
                .iter()
                .map(|j| j.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn device_id_path(&self) -> PathBuf {
        self.config.state_dir.join(DEVICE_ID_FILE)
    }

    /// DSM client options from the config and the remembered device id.
    fn client_options(&self) -> Result<ClientOptions, Error> {
        let nas = &self.config.nas;
        let mut opts =
            ClientOptions::new(nas.url.to_string(), nas.user.clone(), nas.password.clone());
        opts.device_name = nas.device_name.clone();
        opts.tls.ca_file = nas.tls.ca_file.clone();
        opts.tls.pin_sha256 = nas.tls.pin_sha256.clone();
        opts.tls.insecure = nas.tls.insecure;
        opts.timeouts.connect = nas.timeouts.connect;
        opts.timeouts.call = nas.timeouts.request;
        opts.timeouts.idle = nas.timeouts.idle;
        let retry = &self.config.retry;
        opts.retry.max_retries = retry.max_attempts.saturating_sub(1);
        opts.retry.initial_delay = retry.base_delay;
        opts.retry.max_delay = retry.max_delay;
        opts.retry.max_elapsed = retry.max_elapsed;
        if let Some(secret) = &nas.otp_secret {
            opts.otp = Some(OtpSource::totp(secret).map_err(Error::from)?);
        }
        let path = self.device_id_path();
        opts.device_id =
            dsm::load_device_id(&path).map_err(|source| Error::State { path, source })?;
        Ok(opts)
    }

    async fn connect(&self) -> Result<dsm::Client, Error> {
        dsm::Client::connect(self.client_options()?)
            .await
            .map_err(Error::from)
    }

    /// The job folder on the NAS as a [`Target`].
    async fn target(&self, job: &JobConfig) -> Result<(dsm::Client, Arc<dyn Target>), Error> {
        let client = self.connect().await?;
        let target = DsmTarget::new(
            client.clone(),
            &job.share,
            &job.path,
            &JobName::new(&job.name)?,
        )
        .map_err(Error::from)?;
        Ok((client, Arc::new(target)))
    }

    /// Backs up `job` now.
    ///
    /// # Errors
    /// See [`Error`]; nothing is recorded as a snapshot unless every volume
    /// and the manifest were verified by the NAS's MD5.
    ///
    /// # Cancel safety
    /// Cancel through `cancel`: partial uploads are removed and the lock
    /// released before this returns.
    pub async fn backup(
        &self,
        job: &str,
        cancel: CancellationToken,
    ) -> Result<BackupReport, Error> {
        let job = self.job(job)?;
        let opts = backup_options(job)?;
        // Discovery and login retry for minutes against an unreachable NAS:
        // a cancel must not wait for that.
        let (client, target) = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Error::Cancelled),
            connected = self.target(job) => connected?,
        };
        let session = LogoutOnDrop(Some(client));
        let result = backup::run(target, &opts, Arc::clone(&self.events), cancel, Utc::now()).await;
        session.logout().await;
        Ok(result?)
    }

    /// Cleans up after a backup of `job` whose future was dropped (the
    /// daemon abandons a run that outlives its shutdown grace period): when
    /// the job's lock is held by this process, deletes every partial upload
    /// and archive without a manifest, then the lock. A lock of another
    /// process (or none) leaves the folder untouched. Returns how many files
    /// were deleted, the lock not counted.
    ///
    /// # Errors
    /// Connection and storage errors.
    pub async fn clean_up_abandoned(&self, job: &str) -> Result<usize, Error> {
        let job = self.job(job)?;
        let name = JobName::new(&job.name)?;
        let (client, target) = self.target(job).await?;
        let result = clean_up_abandoned(target.as_ref(), &name).await;
        logout(&client).await;
        result
    }

    /// Lists the job folder: complete snapshots, orphans, partials, lock.
    ///
    /// # Errors
    /// Connection and storage errors. A job folder that does not exist yet
    /// is an empty listing.
    pub async fn snapshots(&self, job: &str) -> Result<Listing, Error> {
        let job = self.job(job)?;
        let (client, target) = self.target(job).await?;
        let listing = list_folder(target.as_ref(), &JobName::new(&job.name)?).await;
        logout(&client).await;
        listing
    }

    /// Verifies one snapshot (see [`VerifyMode`]).
    ///
    /// # Errors
    /// [`restore::Error::Corrupt`] (exit code 4) naming the first bad
    /// volume; connection and storage errors.
    pub async fn verify(
        &self,
        job: &str,
        selector: &Selector,
        mode: VerifyMode,
        cancel: CancellationToken,
    ) -> Result<VerifyReport, Error> {
        let job = self.job(job)?;
        // A quick check reads no archive: it needs no key, and a key kept
        // off this machine must not stop it.
        let keys = match mode {
            VerifyMode::Quick => Vec::new(),
            VerifyMode::Deep => identity_keys(job, None)?,
        };
        let (client, target) = self.target(job).await?;
        self.events.event(Event::Phase(Phase::Verifying));
        let result = verify_snapshot(target, job, selector, mode, &keys, cancel).await;
        self.events.event(Event::Phase(Phase::Done));
        logout(&client).await;
        result
    }

    /// Applies the retention policy of `job` now and removes leftovers
    /// older than a day; with `dry_run` only decides and lists them.
    ///
    /// # Errors
    /// The job's lock held by a running backup (exit code 7); connection
    /// and storage errors.
    pub async fn forget(&self, job: &str, dry_run: bool) -> Result<ForgetReport, Error> {
        let job = self.job(job)?;
        let opts = backup_options(job)?;
        let (client, target) = self.target(job).await?;
        let result = forget_in(target.as_ref(), &opts, dry_run).await;
        logout(&client).await;
        result
    }

    /// Restores a snapshot of `job` into `opts.target_dir`.
    ///
    /// Refuses a target inside one of the job's sources, and a non-empty
    /// target without `opts.overwrite`.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn restore(
        &self,
        job: &str,
        selector: &Selector,
        mut opts: RestoreOptions,
        identity: Option<PathBuf>,
        cancel: CancellationToken,
    ) -> Result<RestoreReport, Error> {
        let job = self.job(job)?;
        check_restore_target(&opts, &job.sources)?;
        opts.keys = identity_keys(job, identity.as_deref())?;
        let (client, target) = self.target(job).await?;
        let name = JobName::new(&job.name)?;
        let result = async {
            let snapshot = restore::resolve(target.as_ref(), &name, selector).await?;
            let events = Arc::clone(&self.events);
            Ok::<_, Error>(restore::restore(target, &snapshot, &opts, events, cancel).await?)
        }
        .await;
        logout(&client).await;
        result
    }

    /// Lists the entries of a snapshot without writing files.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn ls(
        &self,
        job: &str,
        selector: &Selector,
        include: Vec<String>,
        identity: Option<PathBuf>,
        cancel: CancellationToken,
        each: impl FnMut(&EntryInfo) + Send + 'static,
    ) -> Result<DeepCheck, Error> {
        let job = self.job(job)?;
        let keys = identity_keys(job, identity.as_deref())?;
        let (client, target) = self.target(job).await?;
        let name = JobName::new(&job.name)?;
        let result = async {
            let snapshot = restore::resolve(target.as_ref(), &name, selector).await?;
            Ok::<_, Error>(
                restore::read_all(target, &snapshot, &keys, include, cancel, each).await?,
            )
        }
        .await;
        logout(&client).await;
        result
    }

    /// Compares the entries of two snapshots.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn diff(
        &self,
        job: &str,
        a: &Selector,
        b: &Selector,
        identity: Option<PathBuf>,
        cancel: CancellationToken,
    ) -> Result<DiffReport, Error> {
        let job = self.job(job)?;
        let keys = identity_keys(job, identity.as_deref())?;
        let (client, target) = self.target(job).await?;
        let name = JobName::new(&job.name)?;
        let result = async {
            let first = entries_of(&target, &name, a, &keys, &cancel).await?;
            let second = entries_of(&target, &name, b, &keys, &cancel).await?;
            Ok::<_, Error>(diff_entries(&first, &second))
        }
        .await;
        logout(&client).await;
        result
    }

    /// Logs in and checks, for every job, that its share exists and its
    /// folder is writable.
    ///
    /// # Errors
    /// Only config problems; NAS problems are findings.
    pub async fn check_online(&self) -> Result<OnlineCheck, Error> {
        let mut jobs = Vec::new();
        for job in &self.config.jobs {
            let findings = dsm::diagnose(
                self.client_options()?,
                &job.share,
                &format!("{}/{}", job.path, job.name),
            )
            .await;
            jobs.push((job.name.clone(), findings));
        }
        Ok(OnlineCheck { jobs })
    }

    /// Logs in once with a typed OTP code, asks DSM to remember this
    /// device, and stores the device id (mode 0600) in the state directory
    /// so that later logins need no code. Returns the file's path.
    ///
    /// # Errors
    /// Login errors; [`Error::State`] when the file cannot be written.
    pub async fn login_with_otp(&self, code: &str) -> Result<PathBuf, Error> {
        let mut opts = self.client_options()?;
        opts.otp = Some(OtpSource::Code(Secret::new(code)));
        opts.device_id = None;
        opts.request_device_token = true;
        let client = dsm::Client::connect(opts).await.map_err(Error::from)?;
        let path = self.device_id_path();
        if let Some(did) = client.device_id() {
            dsm::save_device_id(&path, &did).map_err(|source| Error::State {
                path: path.clone(),
                source,
            })?;
        }
        logout(&client).await;
        Ok(path)
    }
}

/// Restores volume files copied off the NAS by hand. A
/// `<id>.manifest.json` among the files, or else beside the first one, is
/// used to put them in order and verify them (see
/// [`restore::restore_from_files`]).
///
/// # Errors
/// See [`Error`].
pub async fn restore_from_files(
    files: &[PathBuf],
    mut opts: RestoreOptions,
    identity: Option<PathBuf>,
    cancel: CancellationToken,
) -> Result<RestoreReport, Error> {
    if let Some(path) = identity {
        opts.keys = vec![read_identity(&path)?];
    }
    check_restore_target(&opts, &[])?;
    let (manifest_files, volumes): (Vec<PathBuf>, Vec<PathBuf>) = files
        .iter()
        .cloned()
        .partition(|p| p.to_string_lossy().ends_with(layout::MANIFEST_SUFFIX));
    let manifest_file = manifest_files
        .first()
        .cloned()
        .or_else(|| manifest_beside(&volumes));
    let manifest = match manifest_file {
        Some(path) => {
            tracing::info!(manifest = %path.display(), "checking the volumes against their manifest");
            Some(read_local_manifest(&path)?)
        }
        None => {
            tracing::warn!(
                "no manifest among or beside the volumes: they are restored unchecked, in the order given"
            );
            None
        }
    };
    Ok(restore::restore_from_files(&volumes, manifest.as_ref(), &opts, cancel).await?)
}

/// `<id>.manifest.json` in the folder of the first volume, when that
/// volume is named like one of ours (`<id>.tar.zst…`) and the file exists:
/// copying a snapshot's folder by hand copies its manifest too.
fn manifest_beside(volumes: &[PathBuf]) -> Option<PathBuf> {
    let first = volumes.first()?;
    let name = first.file_name()?.to_str()?;
    let id = &name[..name.rfind(layout::ARCHIVE_SUFFIX)?];
    let path = first.with_file_name(format!("{id}{}", layout::MANIFEST_SUFFIX));
    path.is_file().then_some(path)
}

fn read_local_manifest(path: &Path) -> Result<Manifest, Error> {
    let data = std::fs::read(path).map_err(|source| Error::State {
        path: path.to_path_buf(),
        source,
    })?;
    Manifest::from_json(&data).map_err(|source| Error::LocalManifest {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// The run options of a job, from its config.
///
/// # Errors
/// [`Error::Layout`] when the job name is not a valid folder name.
pub fn backup_options(job: &JobConfig) -> Result<BackupOptions, Error> {
    let mut pack = archive::PackOptions::new(job.sources.clone());
    pack.excludes = job.excludes.clone();
    pack.exclude_if_present = job.exclude_if_present.clone();
    pack.one_file_system = job.one_file_system;
    pack.level = job.compression.level;
    pack.workers = job.compression.workers;
    pack.long_distance = job.compression.long_distance;
    pack.recipients = job
        .encryption
        .as_ref()
        .map(|e| e.recipients.clone())
        .unwrap_or_default();
    pack.volume_size = Some(job.volume_size);
    let mut opts = BackupOptions::new(JobName::new(&job.name)?, pack);
    opts.upload_mode = match job.upload_mode {
        config::UploadMode::Stream => backup::UploadMode::Stream,
        _ => backup::UploadMode::Spool,
    };
    opts.spool_dir = job.spool_dir.clone();
    opts.retention = job.retention.clone();
    opts.timezone = job.timezone.unwrap_or(chrono_tz::UTC);
    opts.lock = LockOptions::default().stale_after(
        chrono::TimeDelta::from_std(job.lock_stale_after).unwrap_or(chrono::TimeDelta::hours(6)),
    );
    Ok(opts)
}

/// See [`Agent::clean_up_abandoned`].
async fn clean_up_abandoned(target: &dyn Target, job: &JobName) -> Result<usize, Error> {
    use crate::repo::target::TargetExt as _;
    let holder = crate::repo::lock::Lock::holder(target)
        .await
        .map_err(backup::Error::from)?;
    // Ours only if this process took it and never released it: a pid and a
    // host name can be another machine's too.
    let Some(holder) = holder.filter(crate::repo::lock::held_by_this_process) else {
        return Ok(0);
    };
    let listing = list_folder(target, job).await?;
    let names: Vec<String> = listing
        .partials
        .iter()
        .map(|p| p.entry.name.clone())
        .chain(
            listing
                .orphans
                .iter()
                .flat_map(SnapshotFiles::deletion_order),
        )
        .collect();
    let deleted = crate::repo::listing::delete_ours(target, job, &names).await?;
    target.delete_if_exists(layout::LOCK_NAME).await?;
    crate::repo::lock::forget_held(&holder);
    Ok(deleted)
}

async fn list_folder(target: &dyn Target, job: &JobName) -> Result<Listing, Error> {
    match target.list().await {
        Ok(entries) => Ok(Listing::classify(job, entries)),
        Err(err) if err.is_not_found() => Ok(Listing::default()),
        Err(err) => Err(err.into()),
    }
}

async fn verify_snapshot(
    target: Arc<dyn Target>,
    job: &JobConfig,
    selector: &Selector,
    mode: VerifyMode,
    keys: &[DecryptKey],
    cancel: CancellationToken,
) -> Result<VerifyReport, Error> {
    let name = JobName::new(&job.name)?;
    let snapshot = restore::resolve(target.as_ref(), &name, selector).await?;
    let manifest = restore::manifest(target.as_ref(), &snapshot).await?;
    restore::check_volumes_present(&snapshot, &manifest)?;
    let deep = match mode {
        VerifyMode::Quick => {
            quick_check(target.as_ref(), &manifest).await?;
            None
        }
        VerifyMode::Deep => {
            Some(restore::read_all(target, &snapshot, keys, Vec::new(), cancel, |_| {}).await?)
        }
    };
    Ok(VerifyReport {
        snapshot: snapshot.id.to_string(),
        volumes: manifest.volumes.len(),
        deep,
    })
}

/// Compares the NAS's MD5 of every volume with the manifest.
async fn quick_check(target: &dyn Target, manifest: &Manifest) -> Result<(), Error> {
    for volume in &manifest.volumes {
        let md5 = target.md5(&volume.name).await?;
        if !md5.eq_ignore_ascii_case(&volume.md5) {
            return Err(restore::Error::Corrupt {
                name: volume.name.clone(),
                what: format!(
                    "the NAS's MD5 is {md5}, the manifest recorded {}",
                    volume.md5
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// Applies (or, in a dry run, plans) retention and the cleanup of stale
/// leftovers. Deleting takes the job's lock: a backup deletes what it takes
/// for leftovers and lists the folder while it writes, and must not meet a
/// listing shifted under it, nor lose its uploads as "orphans".
async fn forget_in(
    target: &dyn Target,
    opts: &BackupOptions,
    dry_run: bool,
) -> Result<ForgetReport, Error> {
    let now = Utc::now();
    let (decisions, forgotten, cleaned): RotateOutcome = match dry_run {
        true => {
            let listing = list_folder(target, &opts.job).await?;
            let decisions =
                crate::retention::apply(&listing.candidates(), &opts.retention, now, opts.timezone);
            let cleanup = crate::repo::listing::plan_cleanup(&listing, now);
            (
                decisions,
                Vec::new(),
                cleanup.into_iter().map(|item| item.name).collect(),
            )
        }
        false => {
            let info = LockInfo::for_this_process(now);
            let lock = Lock::acquire(target, info, &opts.lock, now)
                .await
                .map_err(backup::Error::from)?;
            let outcome = backup::rotate(target, opts, now, backup::Rotation::Full).await;
            if let Err(err) = lock.release(target).await {
                tracing::warn!(cause = %err, "could not release the lock");
            }
            outcome?
        }
    };
    Ok(ForgetReport {
        decisions,
        forgotten,
        cleaned,
    })
}

async fn entries_of(
    target: &Arc<dyn Target>,
    job: &JobName,
    selector: &Selector,
    keys: &[DecryptKey],
    cancel: &CancellationToken,
) -> Result<std::collections::BTreeMap<String, EntryInfo>, Error> {
    let snapshot: SnapshotFiles = restore::resolve(target.as_ref(), job, selector).await?;
    let entries = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let sink = Arc::clone(&entries);
    restore::read_all(
        Arc::clone(target),
        &snapshot,
        keys,
        Vec::new(),
        cancel.clone(),
        move |e| {
            if let Ok(mut map) = sink.lock() {
                map.insert(e.path.display().to_string(), e.clone());
            }
        },
    )
    .await?;
    let map = match entries.lock() {
        Ok(mut map) => std::mem::take(&mut *map),
        Err(_) => std::collections::BTreeMap::new(),
    };
    Ok(map)
}

fn diff_entries(
    a: &std::collections::BTreeMap<String, EntryInfo>,
    b: &std::collections::BTreeMap<String, EntryInfo>,
) -> DiffReport {
    let mut report = DiffReport::default();
    for (path, old) in a {
        match b.get(path) {
            None => report.removed.push(path.clone()),
            Some(new) => {
                let same = old.kind == new.kind
                    && old.size == new.size
                    && old.mtime == new.mtime
                    && old.mode == new.mode
                    && old.link_target == new.link_target;
                if !same {
                    report.changed.push(path.clone());
                }
            }
        }
    }
    report.added = b.keys().filter(|p| !a.contains_key(*p)).cloned().collect();
    report
}

/// Decryption keys for a job: the given identity file, else the job's.
fn identity_keys(job: &JobConfig, identity: Option<&Path>) -> Result<Vec<DecryptKey>, Error> {
    let configured = job
        .encryption
        .as_ref()
        .and_then(|e| e.identity_file.as_deref());
    match identity.or(configured) {
        Some(path) => Ok(vec![read_identity(path)?]),
        None => Ok(Vec::new()),
    }
}

fn read_identity(path: &Path) -> Result<DecryptKey, Error> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(DecryptKey::IdentityFile(path.to_path_buf())),
        Ok(_) => Err(Error::Identity {
            path: path.to_path_buf(),
            reason: "not a file".to_owned(),
        }),
        Err(e) => Err(Error::Identity {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Refuses a restore target inside a source, and a non-empty one without
/// `overwrite`.
fn check_restore_target(opts: &RestoreOptions, sources: &[PathBuf]) -> Result<(), Error> {
    let target = absolute(&opts.target_dir);
    let refuse = |reason: String| Error::RestoreTarget {
        path: opts.target_dir.clone(),
        reason,
    };
    for source in sources {
        if target.starts_with(absolute(source)) {
            return Err(refuse(format!(
                "it is inside the backed-up source {}; restore elsewhere and copy what you need",
                source.display()
            )));
        }
    }
    let non_empty = std::fs::read_dir(&target)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !opts.overwrite && !opts.dry_run {
        return Err(refuse(
            "it is not empty; choose an empty folder or pass --overwrite".to_owned(),
        ));
    }
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| match path.is_absolute() {
        true => path.to_path_buf(),
        false => std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf()),
    })
}

/// Logs the session out when the future holding it is dropped (a backup
/// abandoned at shutdown), on a task of the current runtime.
struct LogoutOnDrop(Option<dsm::Client>);

impl LogoutOnDrop {
    async fn logout(mut self) {
        if let Some(client) = self.0.take() {
            logout(&client).await;
        }
    }
}

impl Drop for LogoutOnDrop {
    fn drop(&mut self) {
        if let (Some(client), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move { logout(&client).await });
        }
    }
}

async fn logout(client: &dsm::Client) {
    if let Err(err) = client.logout().await {
        tracing::debug!(cause = %err, "logout failed");
    }
}

/// A listing as JSON for `list --json`.
pub fn listing_json(job: &str, listing: &Listing) -> serde_json::Value {
    let snapshots: Vec<_> = listing
        .snapshots
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id.to_string(),
                "time": s.id.time().to_rfc3339(),
                "size": s.archive_size(),
                "volumes": s.archives.len(),
                "status": "complete",
            })
        })
        .collect();
    let orphans: Vec<_> = listing.orphans.iter().map(|s| s.id.to_string()).collect();
    let partials: Vec<_> = listing
        .partials
        .iter()
        .map(|p| p.entry.name.clone())
        .collect();
    serde_json::json!({
        "job": job,
        "snapshots": snapshots,
        "orphans": orphans,
        "partials": partials,
        "locked": listing.lock.is_some(),
    })
}

//! Reading snapshots back: choose a snapshot, fetch its manifest, download
//! each volume, prove it against the manifest's SHA-256, then decrypt,
//! decompress and extract (or list) on a blocking thread.
//!
//! Works against any [`Target`]; knows nothing of DSM. A volume is
//! downloaded into a local temp file and its digest checked *before* any of
//! its bytes reach the extractor, so a corrupted volume stops the restore
//! with an error naming it, and nothing is written from bad bytes. While
//! volume N is being extracted, volume N+1 is downloaded: at most two
//! volumes sit on local disk.
//!
//! Verification without writing files (`verify --deep`, `ls`) streams the
//! volumes straight into the archive reader instead.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument};

use crate::archive::{self, DecryptKey, EntryInfo, Manifest, VolumeRecord as ManifestVolume};
use crate::event::{Event, Events, Phase, Progress};
use crate::repo::layout::{JobName, SnapshotId};
use crate::repo::listing::{Listing, SnapshotFiles};
use crate::repo::target::{self, Target, TargetExt};

/// Largest manifest accepted (a manifest is a few KiB; this stops a hostile
/// or broken NAS from making us buffer gigabytes).
const MANIFEST_LIMIT: usize = 16 << 20;

/// Which snapshot to read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Selector {
    /// The newest complete snapshot.
    Latest,
    /// The snapshot with this id (`<job>-<YYYYMMDDTHHMMSSZ>`).
    Id(String),
    /// The newest complete snapshot taken before this time.
    Before(DateTime<Utc>),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Latest => f.write_str("latest"),
            Selector::Id(id) => f.write_str(id),
            Selector::Before(t) => {
                write!(f, "the newest before {}", t.format("%Y-%m-%d %H:%M:%S UTC"))
            }
        }
    }
}

/// How to restore.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// The folder to restore into.
    pub target_dir: PathBuf,
    /// Only entries matching these globs (archive paths); empty = all.
    pub include: Vec<String>,
    /// Replace existing files.
    pub overwrite: bool,
    /// List what would be restored, write nothing.
    pub dry_run: bool,
    /// Keys for an encrypted snapshot.
    pub keys: Vec<DecryptKey>,
    /// Where downloaded volumes wait to be extracted (default: system temp).
    pub spool_dir: Option<PathBuf>,
    /// Recreate symlinks that point outside the target (absolute links, as
    /// in backups of `/etc` or a home folder). They are created as links
    /// only; nothing is ever written through them.
    pub allow_external_symlinks: bool,
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The snapshot restored.
    pub snapshot: String,
    /// Files, directories and links written (or, in a dry run, selected).
    pub entries: u64,
    /// Bytes of file content written (or selected).
    pub bytes: u64,
    /// Compressed bytes downloaded.
    pub downloaded: u64,
    /// Entries not restored, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Wall-clock duration.
    pub seconds: f64,
}

/// Why reading a snapshot failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The folder holds no complete snapshot that matches.
    #[error("no snapshot matches {selector} in {target}; `synback list` shows the snapshots there")]
    NoSnapshot {
        /// What was asked for.
        selector: String,
        /// Where we looked.
        target: String,
    },
    /// The target failed.
    #[error("storage: {0}")]
    Target(#[source] Box<target::Error>),
    /// The manifest could not be read.
    #[error("the manifest of {snapshot} is unreadable: {source}")]
    Manifest {
        /// The snapshot.
        snapshot: String,
        /// The cause.
        #[source]
        source: Box<archive::Error>,
    },
    /// A volume's bytes are not what the manifest recorded.
    #[error(
        "volume {name} is corrupt: {what}; nothing was extracted from it. Run `synback verify --deep` and restore an older snapshot if it fails"
    )]
    Corrupt {
        /// The volume.
        name: String,
        /// What differs.
        what: String,
    },
    /// A volume's download kept breaking off (the connection to the NAS
    /// failed), even when started again.
    #[error(
        "downloading volume {name} broke off {attempts} times; the connection to the NAS is failing, run the restore again (files already restored are complete)"
    )]
    Download {
        /// The volume.
        name: String,
        /// How many times it was started.
        attempts: u32,
        /// Why the last attempt broke off.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The manifest lists a volume that is not in the folder.
    #[error("volume {name} of {snapshot} is missing from the NAS")]
    MissingVolume {
        /// The volume.
        name: String,
        /// The snapshot.
        snapshot: String,
    },
    /// The files given with `--from-file` are not the volumes the manifest
    /// lists.
    #[error(
        "the files given are not the volumes of {snapshot}: {what}; give every volume its manifest lists, and nothing else"
    )]
    FilesMismatch {
        /// The snapshot of the manifest.
        snapshot: String,
        /// What is missing or extra.
        what: String,
    },
    /// Decrypting, decompressing or extracting failed.
    #[error(transparent)]
    Archive(Box<archive::Error>),
    /// Local files (spool, `--from-file`) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The local path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A worker task ended abnormally.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<target::Error> for Error {
    fn from(err: target::Error) -> Self {
        Error::Target(Box::new(err))
    }
}

impl From<archive::Error> for Error {
    fn from(err: archive::Error) -> Self {
        Error::Archive(Box::new(err))
    }
}

/// Lists the job folder and picks the snapshot `selector` names.
///
/// # Errors
/// [`Error::NoSnapshot`] when nothing matches; target errors.
pub async fn resolve(
    target: &dyn Target,
    job: &JobName,
    selector: &Selector,
) -> Result<SnapshotFiles, Error> {
    let listing = Listing::classify(job, target.list_or_empty().await?);
    let found = match selector {
        Selector::Latest => listing.latest(),
        Selector::Id(id) => SnapshotId::parse(id).ok().and_then(|id| listing.find(&id)),
        Selector::Before(t) => listing.latest_before(*t),
    };
    found.cloned().ok_or_else(|| Error::NoSnapshot {
        selector: selector.to_string(),
        target: target.to_string(),
    })
}

/// Downloads and parses the manifest of `snapshot`.
///
/// # Errors
/// [`Error::Manifest`] when it is not a manifest we can read.
pub async fn manifest(target: &dyn Target, snapshot: &SnapshotFiles) -> Result<Manifest, Error> {
    let data = target
        .get_bytes(&snapshot.id.manifest_name(), MANIFEST_LIMIT)
        .await?;
    Manifest::from_json(&data).map_err(|source| Error::Manifest {
        snapshot: snapshot.id.to_string(),
        source: Box::new(source),
    })
}

/// Restores `snapshot` into `opts.target_dir`.
///
/// # Errors
/// See [`Error`]. Files are written under temporary names and renamed when
/// complete, so an error never leaves a half-written file under a real name.
///
/// # Cancel safety
/// Cancel through `cancel`; dropping the future leaves the blocking
/// extractor to finish its current file.
#[instrument(skip_all, fields(snapshot = %snapshot.id))]
pub async fn restore(
    target: Arc<dyn Target>,
    snapshot: &SnapshotFiles,
    opts: &RestoreOptions,
    events: Events,
    cancel: CancellationToken,
) -> Result<RestoreReport, Error> {
    let started = Instant::now();
    events.event(Event::Phase(Phase::Restoring));
    let manifest = manifest(target.as_ref(), snapshot).await?;
    check_volumes_present(snapshot, &manifest)?;
    check_keys(&manifest, &opts.keys)?;
    // An async channel: the feeder must never block a runtime thread on a
    // full channel, as that can keep the extractor (polled in the same
    // `join!`) from ever starting.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let feeder = feed_verified(
        Arc::clone(&target),
        manifest.volumes.clone(),
        opts,
        tx,
        &cancel,
    );
    let events = crate::event::with_eta(events, None, None);
    let size: u64 = manifest.volumes.iter().map(|v| v.size).sum();
    let reader = Metered::new(ChainReader::new(rx), Arc::clone(&events), size);
    let extractor = extract_blocking(reader, opts, &cancel);
    let (fed, extracted) = tokio::join!(feeder, extractor);
    let downloaded = fed?;
    let mut report = extracted?;
    events.event(Event::Progress(restore_progress(size, size)));
    report.snapshot = snapshot.id.to_string();
    report.downloaded = downloaded;
    report.seconds = started.elapsed().as_secs_f64();
    events.event(Event::Phase(Phase::Done));
    info!(
        entries = report.entries,
        bytes = report.bytes,
        "restore finished"
    );
    Ok(report)
}

/// Restores volumes copied off the NAS by hand. Without a manifest they are
/// read in the order given. With one, they are put in its order (by file
/// name, or as given when they were renamed) and each is checked against
/// it before anything is extracted.
///
/// # Errors
/// [`Error::FilesMismatch`] when the files are not the manifest's volumes;
/// [`Error::Corrupt`] when one's bytes differ; else see [`Error`].
pub async fn restore_from_files(
    files: &[PathBuf],
    manifest: Option<&Manifest>,
    opts: &RestoreOptions,
    cancel: CancellationToken,
) -> Result<RestoreReport, Error> {
    let started = Instant::now();
    for path in files {
        std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    }
    let ordered;
    let files = match manifest {
        Some(manifest) => {
            check_keys(manifest, &opts.keys)?;
            ordered = in_manifest_order(files, manifest)?;
            for (path, volume) in ordered.iter().zip(&manifest.volumes) {
                let digest = sha256_file(path.clone()).await?;
                check_digest(&volume.name, volume, digest)?;
            }
            &ordered[..]
        }
        None => files,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(files.len().max(1));
    for path in files {
        let _ = tx.try_send(Ok(Volume::Local(path.clone())));
    }
    drop(tx);
    let mut report = extract_blocking(ChainReader::new(rx), opts, &cancel).await?;
    report.snapshot = manifest.map(|m| m.snapshot.clone()).unwrap_or_default();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// `files` in the order of `manifest`'s volumes. Files named as the volumes
/// are matched by name; files renamed by hand are taken in the order given,
/// if there are as many as the volumes. Anything else is
/// [`Error::FilesMismatch`], before a byte is read.
fn in_manifest_order(files: &[PathBuf], manifest: &Manifest) -> Result<Vec<PathBuf>, Error> {
    let named = |name: &str| {
        files
            .iter()
            .find(|f| f.file_name().is_some_and(|n| n == name))
    };
    let mismatch = |what: String| Error::FilesMismatch {
        snapshot: manifest.snapshot.clone(),
        what,
    };
    let by_name: Vec<Option<&PathBuf>> = manifest.volumes.iter().map(|v| named(&v.name)).collect();
    if by_name.iter().all(Option::is_none) {
        if files.len() != manifest.volumes.len() {
            return Err(mismatch(format!(
                "{} file(s) for {} volume(s)",
                files.len(),
                manifest.volumes.len()
            )));
        }
        return Ok(files.to_vec());
    }
    let missing: Vec<&str> = manifest
        .volumes
        .iter()
        .zip(&by_name)
        .filter(|(_, file)| file.is_none())
        .map(|(v, _)| v.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(mismatch(format!("missing {}", missing.join(", "))));
    }
    let extra: Vec<String> = files
        .iter()
        .filter(|f| !by_name.contains(&Some(*f)))
        .map(|f| f.display().to_string())
        .collect();
    if !extra.is_empty() {
        return Err(mismatch(format!(
            "not one of its volumes: {}",
            extra.join(", ")
        )));
    }
    Ok(by_name.into_iter().flatten().cloned().collect())
}

/// What a deep verification found.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct DeepCheck {
    /// Archive entries read.
    pub entries: u64,
    /// Bytes of file content in them.
    pub bytes: u64,
    /// Compressed bytes downloaded.
    pub downloaded: u64,
}

/// Downloads every volume of `snapshot`, checks sizes and SHA-256 against
/// the manifest, and reads the whole archive (decompression and tar walk,
/// `each` called per entry) without writing any file.
///
/// # Errors
/// [`Error::Corrupt`] naming the first volume whose bytes differ;
/// [`Error::Archive`] when the archive does not decode.
pub async fn read_all(
    target: Arc<dyn Target>,
    snapshot: &SnapshotFiles,
    keys: &[DecryptKey],
    include: Vec<String>,
    cancel: CancellationToken,
    mut each: impl FnMut(&EntryInfo) + Send + 'static,
) -> Result<DeepCheck, Error> {
    let manifest = manifest(target.as_ref(), snapshot).await?;
    check_volumes_present(snapshot, &manifest)?;
    check_keys(&manifest, keys)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(4);
    let volumes = manifest.volumes.clone();
    let pump_target = Arc::clone(&target);
    let pump = async move {
        let mut total = 0u64;
        for volume in &volumes {
            match pump_volume(pump_target.as_ref(), volume, &tx).await {
                Ok(Some(size)) => total += size,
                // The lister stopped; its error says why.
                Ok(None) => break,
                Err(err) => {
                    let reason = format!("volume {} is corrupt", volume.name);
                    let _ = tx.send(Err(io::Error::other(reason))).await;
                    return Err(err);
                }
            }
        }
        Ok::<u64, Error>(total)
    };
    let keys = keys.to_vec();
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(
        crate::repo::target::stream_from_channel(rx),
    ));
    let cancel2 = cancel.clone();
    let lister = tokio::task::spawn_blocking(move || {
        let opts = archive::ListOptions { include, keys };
        archive::list(reader, &opts, &cancel2, &mut each)
    });
    let (pumped, listed) = tokio::join!(pump, lister);
    let downloaded = pumped?;
    let summary = listed.map_err(|e| Error::Internal(e.to_string()))??;
    Ok(DeepCheck {
        entries: summary.entries,
        bytes: summary.bytes,
        downloaded,
    })
}

/// Fails at once when `keys` cannot open the snapshot (see
/// [`archive::check_keys_match`]), before any volume is downloaded.
///
/// # Errors
/// [`Error::Archive`] with [`archive::Error::WrongKey`].
pub fn check_keys(manifest: &Manifest, keys: &[DecryptKey]) -> Result<(), Error> {
    let recipients = manifest
        .encryption
        .as_ref()
        .map_or(&[][..], |e| e.recipients.as_slice());
    Ok(archive::check_keys_match(keys, recipients)?)
}

/// Checks that every volume of the manifest is listed with its recorded size.
///
/// # Errors
/// [`Error::MissingVolume`] or [`Error::Corrupt`].
pub fn check_volumes_present(snapshot: &SnapshotFiles, manifest: &Manifest) -> Result<(), Error> {
    for volume in &manifest.volumes {
        let present = snapshot
            .archives
            .iter()
            .find(|a| a.entry.name == volume.name);
        match present {
            None => {
                return Err(Error::MissingVolume {
                    name: volume.name.clone(),
                    snapshot: snapshot.id.to_string(),
                });
            }
            Some(file) if file.entry.size != volume.size => {
                return Err(Error::Corrupt {
                    name: volume.name.clone(),
                    what: format!(
                        "the NAS lists {} bytes, the manifest recorded {}",
                        file.entry.size, volume.size
                    ),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn check_digest(
    name: &str,
    volume: &ManifestVolume,
    (sha256, size): (String, u64),
) -> Result<(), Error> {
    if size != volume.size {
        return Err(Error::Corrupt {
            name: name.to_owned(),
            what: format!("{size} bytes, the manifest recorded {}", volume.size),
        });
    }
    if !sha256.eq_ignore_ascii_case(&volume.sha256) {
        return Err(Error::Corrupt {
            name: name.to_owned(),
            what: format!("SHA-256 {sha256}, the manifest recorded {}", volume.sha256),
        });
    }
    Ok(())
}

/// A volume ready for the extractor.
enum Volume {
    /// Downloaded and verified; deleted when dropped.
    Spooled(tempfile::TempPath),
    /// A local file given by the user.
    Local(PathBuf),
}

impl Volume {
    fn path(&self) -> &Path {
        match self {
            Volume::Spooled(p) => p,
            Volume::Local(p) => p,
        }
    }
}

/// Downloads each volume to a temp file, verifies it, and hands it over.
/// Returns the number of bytes downloaded.
async fn feed_verified(
    target: Arc<dyn Target>,
    volumes: Vec<ManifestVolume>,
    opts: &RestoreOptions,
    tx: tokio::sync::mpsc::Sender<Result<Volume, String>>,
    cancel: &CancellationToken,
) -> Result<u64, Error> {
    let dir = opts.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    remove_dead_spool_files(&dir);
    let mut total = 0;
    for volume in &volumes {
        if cancel.is_cancelled() {
            let _ = tx.send(Err("cancelled".into())).await;
            return Err(Error::Cancelled);
        }
        let fetched = download_verified(target.as_ref(), volume, &dir).await;
        let path = match fetched {
            Ok(path) => path,
            Err(err) => {
                let _ = tx.send(Err(err.to_string())).await;
                return Err(err);
            }
        };
        total += volume.size;
        let handed = tx.send(Ok(Volume::Spooled(path))).await;
        if handed.is_err() {
            break;
        }
    }
    Ok(total)
}

/// Spooled volumes are named `<SPOOL_PREFIX><pid>-<random>`.
const SPOOL_PREFIX: &str = "synback-restore-";

/// Removes spooled volumes left in `dir` by restores that were killed
/// (their process is gone), so a `kill -9` does not leave volumes in the
/// temp folder for ever. Only where `/proc` tells which processes live;
/// failures are ignored (the files are only wasted space).
fn remove_dead_spool_files(dir: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPOOL_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !proc.join(pid.to_string()).exists() && entry.file_type().is_ok_and(|t| t.is_file()) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    info!(file = %entry.path().display(), "removed a volume a killed restore left")
                }
                Err(e) => {
                    tracing::debug!(file = %entry.path().display(), error = %e, "cannot remove a stale spool file")
                }
            }
        }
    }
}

async fn download_verified(
    target: &dyn Target,
    volume: &ManifestVolume,
    dir: &Path,
) -> Result<tempfile::TempPath, Error> {
    let io_err = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let (file, path) = tempfile::Builder::new()
        .prefix(&format!("{SPOOL_PREFIX}{}-", std::process::id()))
        .tempfile_in(dir)
        .map_err(io_err)?
        .into_parts();
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let mut download = CheckedDownload::start(target, volume).await?;
    while let Some(chunk) = download.next().await? {
        out.write_all(&chunk).await.map_err(io_err)?;
    }
    out.flush().await.map_err(io_err)?;
    Ok(path)
}

/// Sends one volume's bytes down `tx` as they arrive, checked like any
/// download. Returns its size, or `None` when the receiver went away.
async fn pump_volume(
    target: &dyn Target,
    volume: &ManifestVolume,
    tx: &tokio::sync::mpsc::Sender<io::Result<bytes::Bytes>>,
) -> Result<Option<u64>, Error> {
    let mut download = CheckedDownload::start(target, volume).await?;
    while let Some(chunk) = download.next().await? {
        if tx.send(Ok(chunk)).await.is_err() {
            return Ok(None);
        }
    }
    Ok(Some(download.size))
}

/// How many times one volume's download is started before a broken
/// connection fails the restore.
const DOWNLOAD_ATTEMPTS: u32 = 4;

/// The wait before the first resumed download; doubles with each attempt.
const RESUME_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// One volume's download, hashed as it streams: the end of the stream is
/// reported only after size and SHA-256 matched the manifest. A NAS that
/// sends more bytes than the manifest recorded is stopped at the first
/// byte too many. When the connection breaks, the download is started
/// again (bounded) and the bytes already delivered are skipped, after
/// checking that they came back the same.
struct CheckedDownload<'v> {
    target: &'v dyn Target,
    volume: &'v ManifestVolume,
    stream: crate::repo::target::GetStream,
    hasher: Sha256,
    size: u64,
    attempts: u32,
}

impl<'v> CheckedDownload<'v> {
    async fn start(target: &'v dyn Target, volume: &'v ManifestVolume) -> Result<Self, Error> {
        Ok(Self {
            target,
            volume,
            stream: target.get(&volume.name).await?,
            hasher: Sha256::new(),
            size: 0,
            attempts: 1,
        })
    }

    /// The next chunk; `Ok(None)` once every byte arrived and matched.
    async fn next(&mut self) -> Result<Option<bytes::Bytes>, Error> {
        loop {
            match self.stream.next().await {
                Some(Ok(chunk)) => {
                    self.size += chunk.len() as u64;
                    if self.size > self.volume.size {
                        return Err(Error::Corrupt {
                            name: self.volume.name.clone(),
                            what: format!(
                                "the NAS sent more than the {} bytes the manifest recorded",
                                self.volume.size
                            ),
                        });
                    }
                    self.hasher.update(&chunk);
                    return Ok(Some(chunk));
                }
                Some(Err(e)) => self.resume(e).await?,
                None => {
                    let digest = hex::encode(std::mem::take(&mut self.hasher).finalize());
                    check_digest(&self.volume.name, self.volume, (digest, self.size))?;
                    return Ok(None);
                }
            }
        }
    }

    /// Starts the download again after `cause` broke it, and skips the
    /// bytes already delivered once they proved the same.
    async fn resume(&mut self, mut cause: io::Error) -> Result<(), Error> {
        loop {
            if self.attempts >= DOWNLOAD_ATTEMPTS {
                return Err(Error::Download {
                    name: self.volume.name.clone(),
                    attempts: self.attempts,
                    source: unwrap_io(cause),
                });
            }
            tracing::warn!(
                volume = %self.volume.name,
                attempt = self.attempts,
                at = self.size,
                error = %cause,
                "the download broke off; starting it again"
            );
            tokio::time::sleep(RESUME_DELAY * 2u32.pow(self.attempts - 1)).await;
            self.attempts += 1;
            let mut stream = match self.target.get(&self.volume.name).await {
                Ok(stream) => stream,
                // The client gave up on this request; it counts as one more
                // broken attempt.
                Err(e) if e.is_retryable() => {
                    cause = io::Error::other(e);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match skip_same(&mut stream, self.size, &self.hasher).await {
                Ok(Skipped::Same(rest)) => {
                    self.stream = match rest {
                        Some(rest) => futures_util::stream::iter([Ok(rest)]).chain(stream).boxed(),
                        None => stream,
                    };
                    return Ok(());
                }
                Ok(Skipped::Differ) => {
                    return Err(Error::Corrupt {
                        name: self.volume.name.clone(),
                        what: format!("its first {} bytes differ when downloaded again", self.size),
                    });
                }
                Err(e) => cause = e,
            }
        }
    }
}

/// What [`skip_same`] found.
enum Skipped {
    /// The prefix matched; the rest of the chunk it ended in, if any.
    Same(Option<bytes::Bytes>),
    /// The prefix has other bytes (or the stream ended before it).
    Differ,
}

/// Reads `len` bytes of `stream` and compares their SHA-256 with `seen`
/// (the hasher over the bytes already delivered).
async fn skip_same(
    stream: &mut crate::repo::target::GetStream,
    len: u64,
    seen: &Sha256,
) -> io::Result<Skipped> {
    let mut again = Sha256::new();
    let mut skipped = 0u64;
    let mut rest = None;
    while skipped < len {
        let Some(chunk) = stream.next().await.transpose()? else {
            return Ok(Skipped::Differ);
        };
        let take = usize::try_from(len - skipped).map_or(chunk.len(), |n| n.min(chunk.len()));
        again.update(&chunk[..take]);
        skipped += take as u64;
        if take < chunk.len() {
            rest = Some(chunk.slice(take..));
        }
    }
    match again.finalize() == seen.clone().finalize() {
        true => Ok(Skipped::Same(rest)),
        false => Ok(Skipped::Differ),
    }
}

/// The error inside an `io::Error` (whose own `source()` skips it), so the
/// cause chain keeps it.
fn unwrap_io(err: io::Error) -> Box<dyn std::error::Error + Send + Sync> {
    if err.get_ref().is_none() {
        return Box::new(err);
    }
    err.into_inner()
        .unwrap_or_else(|| Box::new(io::Error::other("the connection broke")))
}

/// Counts the archive bytes the extractor consumed and reports them as
/// throttled [`Event::Progress`] against the snapshot's `size`.
struct Metered<R> {
    inner: R,
    events: Events,
    done: u64,
    size: u64,
    last: Option<Instant>,
}

impl<R> Metered<R> {
    fn new(inner: R, events: Events, size: u64) -> Self {
        Self {
            inner,
            events,
            done: 0,
            size,
            last: None,
        }
    }
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(200));
        if due && n > 0 {
            self.last = Some(Instant::now());
            self.events
                .event(Event::Progress(restore_progress(self.done, self.size)));
        }
        Ok(n)
    }
}

fn restore_progress(done: u64, size: u64) -> Progress {
    let mut progress = Progress::counters(0, 0, done, None);
    progress.total_transferred = Some(size);
    progress
}

/// Reads volumes one after the other as they arrive from the feeder.
struct ChainReader {
    rx: tokio::sync::mpsc::Receiver<Result<Volume, String>>,
    current: Option<(File, Volume)>,
}

impl ChainReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Result<Volume, String>>) -> Self {
        Self { rx, current: None }
    }
}

impl Read for ChainReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((file, _)) = &mut self.current {
                let n = file.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.current = None;
            }
            // On the extractor's blocking thread, never in async code.
            match self.rx.blocking_recv() {
                Some(Ok(volume)) => {
                    let file = File::open(volume.path())?;
                    self.current = Some((file, volume));
                }
                Some(Err(reason)) => return Err(io::Error::other(reason)),
                None => return Ok(0),
            }
        }
    }
}

async fn extract_blocking(
    reader: impl Read + Send + 'static,
    opts: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<RestoreReport, Error> {
    let opts = opts.clone();
    let cancel = cancel.clone();
    tokio::task::spawn_blocking(move || extract(reader, &opts, &cancel))
        .await
        .map_err(|e| Error::Internal(format!("the extractor thread ended: {e}")))?
}

fn extract(
    reader: impl Read + Send,
    opts: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<RestoreReport, Error> {
    let started = Instant::now();
    let mut report = RestoreReport {
        snapshot: String::new(),
        entries: 0,
        bytes: 0,
        downloaded: 0,
        skipped: Vec::new(),
        seconds: 0.0,
    };
    if opts.dry_run {
        let list = archive::ListOptions {
            include: opts.include.clone(),
            keys: opts.keys.clone(),
        };
        let summary = archive::list(reader, &list, cancel, &mut |_| {})?;
        report.entries = summary.entries;
        report.bytes = summary.bytes;
    } else {
        let unpack = archive::UnpackOptions {
            target: opts.target_dir.clone(),
            include: opts.include.clone(),
            overwrite: opts.overwrite,
            keys: opts.keys.clone(),
            allow_external_symlinks: opts.allow_external_symlinks,
            ..Default::default()
        };
        let summary = archive::unpack(reader, &unpack, cancel)?;
        report.entries = summary.files + summary.dirs + summary.symlinks + summary.hardlinks;
        report.bytes = summary.bytes;
        report.skipped = summary
            .skipped
            .iter()
            .map(|s| (s.path.display().to_string(), s.reason.clone()))
            .collect();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn sha256_file(path: PathBuf) -> Result<(String, u64), Error> {
    let p = path.clone();
    tokio::task::spawn_blocking(move || {
        let mut file = File::open(&p)?;
        let mut reader = archive::HashingReader::new(&mut file);
        io::copy(&mut reader, &mut io::sink())?;
        let size = reader.len();
        let (sha256, _) = reader.finish();
        Ok::<_, io::Error>((sha256, size))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
    .map_err(|source| Error::Io { path, source })
}

//! The write path: walk sources → tar → zstd → (age) → volumes.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use zstd::zstd_safe::CParameter;

use super::crypt::{Encryption, Out};
use super::error::{Error, Result};
use super::filter::Excludes;
use super::names::Names;
use super::readahead::Readahead;
use super::scan::{self, InputTotal, Rules, ScanGuard};
use super::tarw::{Kind, Meta, TarWriter};
use super::volume::{Flow, SinkFailure, Splitter, Taper, VolumeInfo, VolumeSink};
use crate::secret::Secret;

/// Read buffer for file contents.
const READ_BUF: usize = 1 << 20;
/// Buffer between the tar writer and zstd (headers are 512-byte writes).
const TAR_BUF: usize = 256 * 1024;
/// Report progress at least this often while reading a big file.
const PROGRESS_EVERY: u64 = 16 << 20;
/// zstd's buffers in multithreaded mode take about 7 × job size × workers
/// (its own default, 8 MiB jobs at level 3, took the pack past 100 MiB with
/// two workers). synback's default job size is this budget divided among
/// the workers, kept between [`ZSTD_JOB_MIN`] and [`ZSTD_JOB_MAX`]: 2 MiB
/// jobs for up to two workers (about 35 MiB in all), 1 MiB beyond.
const ZSTD_JOB_BUDGET: u32 = 4 << 20;
/// Smallest default job: smaller jobs mean more hand-offs between the
/// thread that feeds zstd and its workers, which then wait.
const ZSTD_JOB_MIN: u32 = 1 << 20;
/// Largest default job.
const ZSTD_JOB_MAX: u32 = 2 << 20;
/// Default zstd `overlapLog` for a [`ZSTD_JOB_MIN`] job; one more per
/// doubling of the job. Each job reloads 1/32 of the window (64 KiB at
/// level 3) per MiB of job from the job before it. zstd's own choice (1/8
/// of the window, 256 KiB) suits its 8 MiB jobs; with 1 MiB jobs that
/// reload is a quarter of every job, about 5 % of all compression work,
/// for no gain in ratio on the benchmark data (docs/BENCHMARKS.md).
const ZSTD_OVERLAP_LOG_MIN_JOB: u32 = 4;
/// zstd's largest `overlapLog` (the whole window).
const ZSTD_OVERLAP_LOG_MAX: u32 = 9;
/// The smallest volume [`PackOptions::taper`] cuts early: each volume costs
/// an upload, an MD5 task and a rename on the NAS.
const TAPER_MIN: u64 = 8 << 20;
/// Issues kept in the summary; more are counted and logged, not stored.
pub const MAX_ISSUES: usize = 10_000;

/// What to archive and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PackOptions {
    /// Source roots, archived in this order, each under its own prefix.
    pub sources: Vec<PathBuf>,
    /// Exclude globs (see the module docs for the matching rules).
    pub excludes: Vec<String>,
    /// A directory holding one of these names is left out entirely.
    pub exclude_if_present: Vec<String>,
    /// Do not descend into directories on another file system.
    pub one_file_system: bool,
    /// zstd level (1..=22, negative for the fast levels). Default 3.
    pub level: i32,
    /// zstd worker threads; 0 = all cores.
    pub workers: u32,
    /// zstd long-distance matching (128 MiB window: more memory, both ways).
    pub long_distance: bool,
    /// age X25519 public keys (`age1...`) to encrypt to; empty = no encryption.
    pub recipients: Vec<String>,
    /// Encrypt with a passphrase instead (age scrypt); exclusive with `recipients`.
    pub passphrase: Option<Secret>,
    /// Cut the output into volumes of this many bytes; `None` = one volume.
    pub volume_size: Option<u64>,
    /// Advanced: input bytes per zstd job when multithreaded. Smaller jobs
    /// use less memory (about 7 × job size × workers), larger ones are a
    /// little faster. `None` (the default): 2 MiB with up to two workers,
    /// 1 MiB with more; `Some(0)`: zstd's own choice (8 MiB at level 3).
    /// Ignored with `long_distance`.
    pub zstd_job_size: Option<u32>,
    /// Advanced: how much of the window each multithreaded zstd job reloads
    /// from the job before it, as zstd's `overlapLog` (1 = none, 9 = the
    /// whole window, each step doubles). `None` (the default): in step with
    /// the job size (4 for 1 MiB jobs, 5 for 2 MiB); `Some(0)`: zstd's own
    /// choice. Ignored where `zstd_job_size` is.
    pub zstd_overlap_log: Option<u32>,
    /// With `volume_size`: make the last volumes smaller (down to 8 MiB),
    /// so the target's check of each volume overlaps with producing the
    /// next and the run ends soon after the last byte is compressed. Needs
    /// the input's size, which a metadata-only scan on a second thread
    /// adds up while the pack starts. Default true.
    pub taper: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            excludes: Vec::new(),
            exclude_if_present: Vec::new(),
            one_file_system: false,
            level: 3,
            workers: 0,
            long_distance: false,
            recipients: Vec::new(),
            passphrase: None,
            volume_size: None,
            zstd_job_size: None,
            zstd_overlap_log: None,
            taper: true,
        }
    }
}

impl PackOptions {
    /// Defaults for the given sources.
    pub fn new(sources: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        Self {
            sources: sources.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let invalid = |field, reason: &str| {
            Err(Error::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.sources.is_empty() {
            return invalid("sources", "at least one source is needed");
        }
        if self.volume_size == Some(0) {
            return invalid("volume_size", "must be more than 0 bytes");
        }
        let range = zstd::compression_level_range();
        if !range.contains(&self.level) {
            return invalid("level", &format!("must be in {range:?}"));
        }
        Ok(())
    }

    fn worker_count(&self) -> u32 {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1)),
            n => n,
        }
    }
}

/// One source root and the prefix its entries have in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePrefix {
    /// Top-level name in the archive (unique per archive).
    pub prefix: String,
    /// The source root as configured.
    pub path: PathBuf,
}

/// Why a source file is not (or not faithfully) in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IssueKind {
    /// Could not be opened, listed or read; the run is partial.
    Unreadable,
    /// Changed (size or mtime) while it was read; the run is partial.
    Changed,
    /// A socket, FIFO or device: skipped by design.
    Special,
}

/// A problem with one source path, reported rather than dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// The path on disk.
    pub path: PathBuf,
    /// What kind of problem.
    pub kind: IssueKind,
    /// Human-readable detail (the OS error, or what changed).
    pub reason: String,
}

/// Counters of a pack run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackCounts {
    /// Regular files stored with their content.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Extra names of hard-linked files (stored as links).
    pub hardlinks: u64,
    /// Paths left out by excludes or `exclude_if_present`.
    pub excluded: u64,
    /// Unreadable paths (see [`IssueKind::Unreadable`]).
    pub unreadable: u64,
    /// Files changed while read.
    pub changed: u64,
    /// Special files skipped.
    pub special: u64,
}

/// Progress of a running pack, passed to the caller's callback.
#[derive(Debug)]
#[non_exhaustive]
pub struct PackProgress<'a> {
    /// Counters so far.
    pub counts: &'a PackCounts,
    /// File content bytes read so far.
    pub bytes_read: u64,
    /// Archive bytes produced so far (after compression and encryption).
    pub bytes_out: u64,
    /// Volumes completed so far.
    pub volumes_done: usize,
    /// The path being archived.
    pub current: &'a Path,
    /// File content bytes the whole pack will read, once a scan ahead of
    /// the pack has added them up (split archives with `taper` only); an
    /// estimate, as files may change meanwhile.
    pub bytes_total: Option<u64>,
}

/// The outcome of [`pack`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PackSummary {
    /// The volumes, in order, with exact sizes and digests.
    pub volumes: Vec<VolumeInfo>,
    /// Lowercase hex SHA-256 of the whole archive (all volumes concatenated).
    pub sha256: String,
    /// Total archive size in bytes.
    pub bytes_out: u64,
    /// File content bytes read.
    pub bytes_read: u64,
    /// Counters.
    pub counts: PackCounts,
    /// Source roots and their prefixes in the archive.
    pub sources: Vec<SourcePrefix>,
    /// Problems with single paths (at most [`MAX_ISSUES`]; `counts` has all).
    pub issues: Vec<Issue>,
    /// How long the pack took.
    pub duration: Duration,
}

impl PackSummary {
    /// True when some files are missing or inexact (the run is "partial").
    pub fn is_partial(&self) -> bool {
        self.counts.unreadable > 0 || self.counts.changed > 0
    }
}

/// Archives `opts.sources` into `sink`, returning sizes and digests.
///
/// Synchronous and CPU-bound: run it inside `spawn_blocking`. `progress` is
/// called after each entry and every few MiB of a big file; keep it cheap.
/// Files that cannot be read or change while read do not fail the run:
/// they are counted and listed in [`PackSummary::issues`].
///
/// # Errors
/// Bad options or globs, a missing source root, a sink failure
/// ([`Error::Sink`]), a compression failure, or [`Error::Cancelled`].
pub fn pack(
    opts: &PackOptions,
    sink: &mut dyn VolumeSink,
    progress: &dyn Fn(&PackProgress<'_>),
    cancel: &CancellationToken,
) -> Result<PackSummary> {
    let started = Instant::now();
    opts.validate()?;
    let roots = resolve_roots(&opts.sources)?;
    let excludes = Excludes::new(&opts.excludes)?;
    let encryption = Encryption::from_options(&opts.recipients, opts.passphrase.as_ref())?;
    let flow = Rc::new(Flow::default());
    let (taper, _scan) = start_scan(opts, &roots)?;
    let readahead = Readahead::start(walked(&roots), rules(opts)?);
    let input_total = taper.as_ref().map(|t| t.input.clone());
    let splitter = Splitter::new(sink, opts.volume_size, taper, Rc::clone(&flow))
        .map_err(|e| Error::io("start the hashing threads", PathBuf::new(), e))?;
    let out = encryption.wrap(splitter)?;
    let encoder = zstd_encoder(out, opts)?;
    let mut packer = Packer {
        tar: TarWriter::new(BufWriter::with_capacity(TAR_BUF, encoder)),
        excludes,
        opts,
        names: Names::load(),
        links: HashMap::new(),
        buf: vec![0; READ_BUF],
        counts: PackCounts::default(),
        issues: Vec::new(),
        bytes_read: 0,
        root_dev: 0,
        flow,
        readahead,
        input_total,
        progress,
        cancel,
    };
    for root in &roots {
        packer.pack_root(root)?;
    }
    // Every file is read: the read-ahead has nothing left to do.
    drop(packer.readahead.take());
    let (counts, issues, bytes_read) = (
        std::mem::take(&mut packer.counts),
        std::mem::take(&mut packer.issues),
        packer.bytes_read,
    );
    let splitter = finish_stream(packer.tar)?;
    let (volumes, sha256, bytes_out) = splitter.finish().map_err(|e| write_error(e, "finish"))?;
    Ok(PackSummary {
        volumes,
        sha256,
        bytes_out,
        bytes_read,
        counts,
        sources: roots.into_iter().map(|r| r.prefix).collect(),
        issues,
        duration: started.elapsed(),
    })
}

/// Starts the scan that lets [`PackOptions::taper`] shrink the last volumes;
/// nothing without volumes or with `taper` off.
fn start_scan(opts: &PackOptions, roots: &[Root]) -> Result<(Option<Taper>, Option<ScanGuard>)> {
    if opts.volume_size.is_none() || !opts.taper {
        return Ok((None, None));
    }
    let (input, guard) = scan::start(walked(roots), rules(opts)?);
    let taper = Taper {
        min: TAPER_MIN,
        input,
    };
    Ok((Some(taper), Some(guard)))
}

/// The rules that decide what the pack reads, for the threads that walk
/// the sources beside it (each gets its own copy).
fn rules(opts: &PackOptions) -> Result<Rules> {
    Ok(Rules {
        excludes: Excludes::new(&opts.excludes)?,
        markers: opts.exclude_if_present.iter().map(OsString::from).collect(),
        one_file_system: opts.one_file_system,
    })
}

/// The roots as those threads walk them: path and metadata.
fn walked(roots: &[Root]) -> Vec<(PathBuf, Metadata)> {
    roots
        .iter()
        .map(|r| (r.walk.clone(), r.meta.clone()))
        .collect()
}

type Encoder<'s> = zstd::stream::write::Encoder<'static, Out<'s>>;

fn zstd_encoder<'s>(out: Out<'s>, opts: &PackOptions) -> Result<Encoder<'s>> {
    let configure = |source| Error::Zstd {
        action: "configure",
        source,
    };
    let mut enc = zstd::stream::write::Encoder::new(out, opts.level).map_err(configure)?;
    enc.include_checksum(true).map_err(configure)?;
    let workers = opts.worker_count();
    if workers > 1 {
        enc.multithread(workers).map_err(configure)?;
        if !opts.long_distance {
            let (job, overlap) = job_layout(opts, workers);
            enc.set_parameter(CParameter::JobSize(job))
                .map_err(configure)?;
            enc.set_parameter(CParameter::OverlapSizeLog(overlap))
                .map_err(configure)?;
        }
    }
    if opts.long_distance {
        enc.long_distance_matching(true).map_err(configure)?;
    }
    Ok(enc)
}

/// zstd's job size and overlap log for `workers` (0 leaves it to zstd).
fn job_layout(opts: &PackOptions, workers: u32) -> (u32, u32) {
    let job = opts.zstd_job_size.unwrap_or_else(|| {
        // Whole MiB, so that the overlap below stays a power of two of it.
        let share = ZSTD_JOB_BUDGET / workers.max(1) / ZSTD_JOB_MIN * ZSTD_JOB_MIN;
        share.clamp(ZSTD_JOB_MIN, ZSTD_JOB_MAX)
    });
    let overlap = opts.zstd_overlap_log.unwrap_or(match job {
        0 => 0,
        _ => (ZSTD_OVERLAP_LOG_MIN_JOB + (job / ZSTD_JOB_MIN).max(1).ilog2())
            .min(ZSTD_OVERLAP_LOG_MAX),
    });
    (job, overlap)
}

fn finish_stream(tar: TarWriter<BufWriter<Encoder<'_>>>) -> Result<Splitter<'_>> {
    let buffered = tar.finish().map_err(|e| write_error(e, "compress"))?;
    let encoder = buffered
        .into_inner()
        .map_err(|e| write_error(e.into_error(), "compress"))?;
    let out = encoder.finish().map_err(|e| write_error(e, "compress"))?;
    out.finish().map_err(|e| write_error(e, "encrypt"))
}

/// Tells a sink failure (tagged by the splitter) from a zstd/age failure.
pub(crate) fn write_error(err: io::Error, action: &'static str) -> Error {
    if err.get_ref().is_some_and(|e| e.is::<SinkFailure>()) {
        if let Some(inner) = err.into_inner()
            && let Ok(failure) = inner.downcast::<SinkFailure>()
        {
            return Error::Sink {
                index: failure.index,
                source: failure.source,
            };
        }
        return Error::Zstd {
            action,
            source: io::Error::other("sink failure"),
        };
    }
    Error::Zstd {
        action,
        source: err,
    }
}

struct Root {
    prefix: SourcePrefix,
    /// Where the walk starts: the configured path, resolved when it is a link.
    walk: PathBuf,
    meta: Metadata,
}

/// Checks each source and gives it a unique prefix (its last component).
fn resolve_roots(sources: &[PathBuf]) -> Result<Vec<Root>> {
    let mut roots: Vec<Root> = Vec::with_capacity(sources.len());
    for path in sources {
        let meta = fs::metadata(path).map_err(|e| Error::io("read source", path, e))?;
        let walk = if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::canonicalize(path).map_err(|e| Error::io("resolve source", path, e))?
        } else {
            path.clone()
        };
        let base = base_name(path);
        let mut prefix = base.clone();
        let mut n = 1;
        while roots.iter().any(|r| r.prefix.prefix == prefix) {
            n += 1;
            prefix = format!("{base}-{n}");
        }
        roots.push(Root {
            prefix: SourcePrefix {
                prefix,
                path: path.clone(),
            },
            walk,
            meta,
        });
    }
    Ok(roots)
}

fn base_name(path: &Path) -> String {
    let canonical = fs::canonicalize(path).ok();
    let name = path
        .file_name()
        .or_else(|| canonical.as_deref().and_then(Path::file_name))
        .map(|n| n.to_string_lossy().replace('/', "_"));
    match name {
        Some(n) if !n.is_empty() => n,
        _ => "root".to_owned(),
    }
}

struct Packer<'a, W: Write> {
    tar: TarWriter<W>,
    excludes: Excludes,
    opts: &'a PackOptions,
    names: Names,
    /// (dev, inode) of multiply-linked files → their archive path.
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
    counts: PackCounts,
    issues: Vec<Issue>,
    bytes_read: u64,
    root_dev: u64,
    flow: Rc<Flow>,
    /// Told how far the pack has read, when the thread could start.
    readahead: Option<Readahead>,
    /// The scan's total, when one runs.
    input_total: Option<InputTotal>,
    progress: &'a dyn Fn(&PackProgress<'_>),
    cancel: &'a CancellationToken,
}

/// The current position of the walk.
struct Cursor {
    /// Absolute (as configured) path on disk.
    abs: PathBuf,
    /// Path relative to the source root.
    rel: PathBuf,
    /// Path in the archive: prefix + relative path.
    arc: Vec<u8>,
}

impl<W: Write> Packer<'_, W> {
    fn pack_root(&mut self, root: &Root) -> Result<()> {
        self.root_dev = root.meta.dev();
        let mut cur = Cursor {
            abs: root.walk.clone(),
            rel: PathBuf::new(),
            arc: root.prefix.prefix.as_bytes().to_vec(),
        };
        let name = OsString::from(&root.prefix.prefix);
        self.visit(&mut cur, &name, &root.meta)
    }

    fn visit(&mut self, cur: &mut Cursor, name: &OsStr, meta: &Metadata) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let is_dir = meta.is_dir();
        if !cur.rel.as_os_str().is_empty()
            && self.excludes.is_excluded(&cur.abs, &cur.rel, name, is_dir)
        {
            self.counts.excluded += 1;
            tracing::trace!(path = %cur.abs.display(), "excluded");
            return Ok(());
        }
        let ft = meta.file_type();
        if is_dir {
            self.pack_dir(cur, meta)?;
        } else if ft.is_file() {
            self.pack_file(cur, meta)?;
        } else if ft.is_symlink() {
            self.pack_symlink(cur, meta)?;
        } else {
            let what = special_kind(meta);
            self.issue(&cur.abs, IssueKind::Special, format!("{what} skipped"));
        }
        Ok(())
    }

    fn pack_dir(&mut self, cur: &mut Cursor, meta: &Metadata) -> Result<()> {
        let foreign = self.opts.one_file_system && meta.dev() != self.root_dev;
        let listing = if foreign {
            tracing::debug!(path = %cur.abs.display(), "other file system, not descending");
            Vec::new()
        } else {
            self.listing(&cur.abs)
        };
        if listing.iter().any(|n| self.is_marker(n)) {
            self.counts.excluded += 1;
            return Ok(());
        }
        cur.arc.push(b'/');
        self.header(meta, Kind::Dir, &cur.arc, None, 0)?;
        self.counts.dirs += 1;
        self.report(&cur.abs);
        let children = listing
            .iter()
            .try_for_each(|child| self.visit_child(cur, child));
        cur.arc.pop();
        children
    }

    /// The sorted names in a directory; an unreadable one is reported and
    /// archived empty.
    fn listing(&mut self, path: &Path) -> Vec<OsString> {
        list_dir(path).unwrap_or_else(|e| {
            self.issue(path, IssueKind::Unreadable, format!("cannot list: {e}"));
            Vec::new()
        })
    }

    fn visit_child(&mut self, cur: &mut Cursor, child: &OsStr) -> Result<()> {
        let arc_len = cur.arc.len();
        cur.abs.push(child);
        cur.rel.push(child);
        cur.arc.extend_from_slice(child.as_bytes());
        let result = match fs::symlink_metadata(&cur.abs) {
            Ok(meta) => self.visit(cur, child, &meta),
            Err(e) => {
                self.issue(&cur.abs, IssueKind::Unreadable, format!("cannot stat: {e}"));
                Ok(())
            }
        };
        cur.abs.pop();
        cur.rel.pop();
        cur.arc.truncate(arc_len);
        result
    }

    fn is_marker(&self, name: &OsStr) -> bool {
        self.opts
            .exclude_if_present
            .iter()
            .any(|m| OsStr::new(m) == name)
    }

    fn pack_symlink(&mut self, cur: &Cursor, meta: &Metadata) -> Result<()> {
        match fs::read_link(&cur.abs) {
            Ok(target) => {
                let target = target.into_os_string();
                self.header(meta, Kind::Symlink, &cur.arc, Some(target.as_bytes()), 0)?;
                self.counts.symlinks += 1;
            }
            Err(e) => self.issue(
                &cur.abs,
                IssueKind::Unreadable,
                format!("cannot read link: {e}"),
            ),
        }
        Ok(())
    }

    fn pack_file(&mut self, cur: &Cursor, meta: &Metadata) -> Result<()> {
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1
            && let Some(first) = self.links.get(&key)
        {
            let first = first.clone();
            self.header(meta, Kind::HardLink, &cur.arc, Some(&first), 0)?;
            self.counts.hardlinks += 1;
            return Ok(());
        }
        let file = match open_source(&cur.abs) {
            Ok(f) => f,
            Err(e) => {
                self.issue(&cur.abs, IssueKind::Unreadable, format!("cannot open: {e}"));
                return Ok(());
            }
        };
        let before = match file.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                self.issue(
                    &cur.abs,
                    IssueKind::Changed,
                    "replaced by a non-file".into(),
                );
                return Ok(());
            }
            Err(e) => {
                self.issue(&cur.abs, IssueKind::Unreadable, format!("cannot stat: {e}"));
                return Ok(());
            }
        };
        self.header(&before, Kind::File, &cur.arc, None, before.len())?;
        self.copy_exact(file, &cur.abs, &before)?;
        self.counts.files += 1;
        if meta.nlink() > 1 {
            self.links.insert(key, cur.arc.clone());
        }
        self.report(&cur.abs);
        Ok(())
    }

    /// Writes exactly `before.len()` bytes of the file: a file that shrinks
    /// is padded with zeros, one that grows is cut, and both are reported,
    /// as are read errors (the rest is zeros).
    fn copy_exact(&mut self, file: File, path: &Path, before: &Metadata) -> Result<()> {
        let size = before.len();
        let mut done = 0u64;
        let mut since_report = 0u64;
        let mut positional = true;
        let mut problem: Option<(IssueKind, String)> = None;
        while done < size {
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let want =
                usize::try_from(size - done).map_or(self.buf.len(), |r| r.min(self.buf.len()));
            let buf = &mut self.buf[..want];
            let read = read_source(
                self.readahead.as_mut(),
                &file,
                before.dev(),
                buf,
                done,
                &mut positional,
            );
            let n = match read {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    problem = Some((
                        IssueKind::Unreadable,
                        format!("read error at byte {done}: {e}"),
                    ));
                    break;
                }
            };
            self.tar
                .out()
                .write_all(&self.buf[..n])
                .map_err(|e| write_error(e, "compress"))?;
            done += n as u64;
            self.bytes_read += n as u64;
            self.flow.set_read(self.bytes_read);
            if let Some(readahead) = &self.readahead {
                readahead.set_read(self.bytes_read);
            }
            since_report += n as u64;
            if since_report >= PROGRESS_EVERY {
                since_report = 0;
                self.report(path);
            }
        }
        if done < size {
            self.write_zeros(size - done)?;
            problem.get_or_insert((
                IssueKind::Changed,
                format!(
                    "shrank by {} bytes while read; padded with zeros",
                    size - done
                ),
            ));
        }
        self.tar.pad(size).map_err(|e| write_error(e, "compress"))?;
        if problem.is_none() {
            problem = changed_since(&file, before);
        }
        if let Some((kind, reason)) = problem {
            self.issue(path, kind, reason);
        }
        Ok(())
    }

    fn write_zeros(&mut self, mut n: u64) -> Result<()> {
        self.buf.fill(0);
        while n > 0 {
            let k = usize::try_from(n).map_or(self.buf.len(), |n| n.min(self.buf.len()));
            self.tar
                .out()
                .write_all(&self.buf[..k])
                .map_err(|e| write_error(e, "compress"))?;
            n -= k as u64;
        }
        Ok(())
    }

    fn header(
        &mut self,
        meta: &Metadata,
        kind: Kind,
        arc: &[u8],
        link: Option<&[u8]>,
        size: u64,
    ) -> Result<()> {
        let m = Meta {
            kind,
            path: arc,
            link,
            size,
            mode: meta.mode(),
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: meta.mtime(),
            user: self.names.user(meta.uid()),
            group: self.names.group(meta.gid()),
        };
        self.tar.header(&m).map_err(|e| write_error(e, "compress"))
    }

    fn issue(&mut self, path: &Path, kind: IssueKind, reason: String) {
        tracing::warn!(path = %path.display(), ?kind, %reason, "source problem");
        match kind {
            IssueKind::Unreadable => self.counts.unreadable += 1,
            IssueKind::Changed => self.counts.changed += 1,
            IssueKind::Special => self.counts.special += 1,
        }
        if self.issues.len() < MAX_ISSUES {
            self.issues.push(Issue {
                path: path.to_path_buf(),
                kind,
                reason,
            });
        }
    }

    fn report(&self, current: &Path) {
        (self.progress)(&PackProgress {
            counts: &self.counts,
            bytes_read: self.bytes_read,
            bytes_out: self.flow.bytes(),
            volumes_done: self.flow.volumes(),
            current,
            bytes_total: self.input_total.as_ref().and_then(InputTotal::get),
        });
    }
}

/// Reads the piece of a source file at `offset`: by position, through the
/// read-ahead when there is one. A file that cannot be read by position
/// (some FUSE and pseudo file systems answer `ESPIPE`) is read with `read`
/// from its start on, which the positional reads did not move. `dev` is the
/// file's device, for the read-ahead's memory of file systems that cannot
/// read without waiting.
fn read_source(
    readahead: Option<&mut Readahead>,
    file: &File,
    dev: u64,
    buf: &mut [u8],
    offset: u64,
    positional: &mut bool,
) -> io::Result<usize> {
    if !*positional {
        return (&*file).read(buf);
    }
    let read = match readahead {
        Some(readahead) => readahead.read_at(file, dev, buf, offset),
        None => file.read_at(buf, offset),
    };
    match read {
        Err(e) if offset == 0 && e.raw_os_error() == Some(libc::ESPIPE) => {
            *positional = false;
            (&*file).read(buf)
        }
        other => other,
    }
}

/// The sorted names in a directory.
fn list_dir(path: &Path) -> io::Result<Vec<OsString>> {
    let mut names = fs::read_dir(path)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort_unstable();
    Ok(names)
}

/// Opens a source file read-only, without following a symlink swapped in,
/// without blocking on a FIFO, and without updating its atime where allowed.
fn open_source(path: &Path) -> io::Result<File> {
    open_source_at(rustix::fs::CWD, path.as_os_str()).map_err(io::Error::from)
}

/// [`open_source`] of `name` in the directory `dir`: the read-ahead opens
/// the files it advises as the pack opens them.
pub(crate) fn open_source_at<D: AsFd>(dir: D, name: &OsStr) -> rustix::io::Result<File> {
    let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let open = |flags| rustix::fs::openat(&dir, name, flags, Mode::empty());
    let fd = match open(base | OFlags::NOATIME) {
        Err(rustix::io::Errno::PERM) => open(base),
        other => other,
    }?;
    Ok(File::from(fd))
}

/// A file whose size or mtime differs after reading was changed meanwhile.
fn changed_since(file: &File, before: &Metadata) -> Option<(IssueKind, String)> {
    match file.metadata() {
        Ok(after) if after.len() != before.len() => Some((
            IssueKind::Changed,
            format!(
                "size changed while read ({} → {} bytes)",
                before.len(),
                after.len()
            ),
        )),
        Ok(after)
            if (after.mtime(), after.mtime_nsec()) != (before.mtime(), before.mtime_nsec()) =>
        {
            Some((IssueKind::Changed, "modified while read".to_owned()))
        }
        Ok(_) => None,
        Err(e) => Some((
            IssueKind::Unreadable,
            format!("cannot stat after reading: {e}"),
        )),
    }
}

fn special_kind(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's view of an open file: its access mode and flags, from
    /// `/proc/self/fdinfo` (tests of how sources are opened).
    #[cfg(target_os = "linux")]
    fn open_flags(file: &File) -> i32 {
        use std::os::fd::AsRawFd;
        let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).unwrap();
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap();
        i32::from_str_radix(flags.trim(), 8).unwrap()
    }

    #[test]
    fn zstd_jobs_shrink_with_more_workers_and_overlap_follows() {
        let auto = PackOptions::default();
        assert_eq!(job_layout(&auto, 2), (2 << 20, 5));
        assert_eq!(job_layout(&auto, 3), (1 << 20, 4));
        assert_eq!(job_layout(&auto, 16), (1 << 20, 4));
        let zstd_default = PackOptions {
            zstd_job_size: Some(0),
            ..PackOptions::default()
        };
        assert_eq!(job_layout(&zstd_default, 2), (0, 0));
        let fixed = PackOptions {
            zstd_job_size: Some(4 << 20),
            zstd_overlap_log: Some(7),
            ..PackOptions::default()
        };
        assert_eq!(job_layout(&fixed, 2), (4 << 20, 7));
        let huge = PackOptions {
            zstd_job_size: Some(1 << 30),
            ..PackOptions::default()
        };
        assert_eq!(job_layout(&huge, 2), (1 << 30, 9));
    }

    #[test]
    fn a_file_modified_while_read_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "before").unwrap();
        let file = open_source(&path).unwrap();
        let before = file.metadata().unwrap();
        fs::write(&path, "after, and longer").unwrap();
        let (kind, reason) = changed_since(&file, &before).unwrap();
        assert_eq!(kind, IssueKind::Changed);
        assert!(reason.contains("size changed"), "{reason}");
        assert!(changed_since(&file, &file.metadata().unwrap()).is_none());
    }

    #[test]
    fn sources_are_opened_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("real"), "x").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        assert!(open_source(&dir.path().join("real")).is_ok());
        let err = open_source(&dir.path().join("link")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    /// The kernel's view of the open file: read-only, no atime update
    /// (the test owns the file, so `O_NOATIME` is allowed), non-blocking.
    #[test]
    #[cfg(target_os = "linux")]
    fn sources_are_opened_read_only_without_atime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "x").unwrap();
        let flags = open_flags(&open_source(&path).unwrap());
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY, "{flags:o}");
        assert_ne!(flags & libc::O_NOATIME, 0, "{flags:o}");
        assert_ne!(flags & libc::O_NONBLOCK, 0, "{flags:o}");
    }

    /// The read-ahead's way in: relative to a directory, with the same
    /// flags, and still refusing a symlink.
    #[test]
    #[cfg(target_os = "linux")]
    fn sources_opened_in_a_directory_get_the_same_flags() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), "x").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("link")).unwrap();
        let fd = File::open(dir.path()).unwrap();
        let at = open_source_at(&fd, OsStr::new("f")).unwrap();
        let by_path = open_source(&dir.path().join("f")).unwrap();
        assert_eq!(open_flags(&at), open_flags(&by_path));
        let err = open_source_at(&fd, OsStr::new("link")).unwrap_err();
        assert_eq!(err, rustix::io::Errno::LOOP);
    }

    #[test]
    fn prefixes_come_from_the_last_component_and_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("x/home");
        let b = dir.path().join("y/home");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let roots = resolve_roots(&[a, b.clone(), b, PathBuf::from("/")]).unwrap();
        let names: Vec<_> = roots.iter().map(|r| r.prefix.prefix.as_str()).collect();
        assert_eq!(names, ["home", "home-2", "home-3", "root"]);
    }

    #[test]
    fn options_are_validated() {
        let mut o = PackOptions::new(["/tmp"]);
        o.volume_size = Some(0);
        assert!(matches!(
            o.validate(),
            Err(Error::Invalid {
                field: "volume_size",
                ..
            })
        ));
        o.volume_size = None;
        o.level = 99;
        assert!(matches!(
            o.validate(),
            Err(Error::Invalid { field: "level", .. })
        ));
        assert!(PackOptions::default().validate().is_err());
    }
}

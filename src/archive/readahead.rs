//! Reading ahead of the pack, for sources that are not in the page cache.
//!
//! The pack reads one file after the other, and a file the kernel has not
//! cached costs a wait for the disk during which nothing is compressed.
//! With many small files, a backup of a cold tree waited about as long as
//! it compressed (docs/BENCHMARKS.md). This thread walks the sources in the
//! pack's order, with the pack's rules, and asks the kernel
//! (`POSIX_FADV_WILLNEED`) to start reading the next files, at most
//! [`WINDOW`] bytes ahead of what the pack has read: the disk works on them
//! while the pack compresses the ones before.
//!
//! On a warm cache that walk would only cost (an open and an advice per
//! file, a few percent of a backup's CPU), so the thread sleeps until the
//! pack meets the disk: the pack reads with `RWF_NOWAIT` while the thread
//! sleeps, and the first read the page cache cannot serve wakes it. It then
//! skips what the pack has read (by size, without opening) and runs ahead.
//! File systems that cannot answer `RWF_NOWAIT` (tmpfs, which has nothing
//! to read ahead, and some network and FUSE file systems) never wake it;
//! once one refuses, its files are read without asking again.
//!
//! It reads no file itself and only changes what is cached, so a wrong
//! guess (a file changed or removed meanwhile) costs a wasted disk read,
//! nothing else. It stops with the pack, and gives up rather than take
//! file descriptors the pack needs.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, IoSliceMut};
use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::Duration;

use rustix::fs::{Access, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::{Errno, ReadWriteFlags};

use super::pack::open_source_at;
use super::scan::Rules;

/// How far ahead of the pack the kernel is asked to read. Page cache, not
/// synback's memory; enough to keep a disk busy for the time the pack takes
/// to compress it, small enough not to push out what it will read next.
pub(crate) const WINDOW: u64 = 64 << 20;
/// The largest piece of a file advised at once: a big file is advised
/// piece by piece as the pack reads it, never all at once.
const PIECE: u64 = 4 << 20;
/// The deepest directory the walk descends into (each level holds one
/// descriptor). The walk ends there: the rest of the backup is read
/// without read-ahead, as before it.
const MAX_DEPTH: usize = 64;
/// How long to wait for the pack when the window is full (the pack then
/// reads a few MiB; a shorter wait would only wake the thread more often).
const WAIT: Duration = Duration::from_millis(10);

/// What the pack and the read-ahead thread share.
#[derive(Debug, Default)]
struct Shared {
    /// File bytes the pack has read.
    read: AtomicU64,
    /// Set once the pack has had to wait for the disk.
    cold: AtomicBool,
    /// Set when the pack ends: the thread returns at its next step.
    stop: AtomicBool,
}

/// The pack's side: reads through it, tells the read-ahead thread how far
/// the pack has read, and stops it when dropped.
#[derive(Debug)]
pub(crate) struct Readahead {
    shared: Arc<Shared>,
    thread: Thread,
    /// The devices whose file system refused `RWF_NOWAIT`: asking again
    /// would cost a failing call per read (32 000 on a tree of small files
    /// on tmpfs).
    refused: Vec<u64>,
    /// Set when `preadv2` itself is refused (`ENOSYS` from an old kernel,
    /// `EPERM` from a seccomp filter such as systemd's
    /// `SystemCallFilter=`): then for every file.
    unavailable: bool,
}

impl Readahead {
    /// Starts the (sleeping) read-ahead for a pack of `roots` (each with its
    /// metadata) on a new thread; `None` when no thread could be started
    /// (the pack then simply reads without help).
    pub(crate) fn start(roots: Vec<(PathBuf, Metadata)>, rules: Rules) -> Option<Self> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("synback-readahead".into())
            .spawn(move || run(theirs, &roots, rules));
        match spawned {
            Ok(handle) => Some(Self {
                shared,
                thread: handle.thread().clone(),
                refused: Vec::new(),
                unavailable: false,
            }),
            Err(err) => {
                tracing::debug!(error = %err, "no read-ahead thread");
                None
            }
        }
    }

    /// The file bytes the pack has read so far.
    pub(crate) fn set_read(&self, bytes: u64) {
        self.shared.read.store(bytes, Ordering::Relaxed);
    }

    /// Reads `file` (on device `dev`) at `offset` into `buf`. Until the
    /// cache has missed, the read does not wait for the disk: a miss wakes
    /// the read-ahead, and the read is done again, waiting. A file system
    /// that cannot tell (`EOPNOTSUPP`, or `EINVAL` from some emulated
    /// kernels) is remembered and read as before from then on, as is
    /// everything once the call itself is refused; any other failure is
    /// left to the plain read to report.
    pub(crate) fn read_at(
        &mut self,
        file: &File,
        dev: u64,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<usize> {
        let asleep = !self.shared.cold.load(Ordering::Relaxed);
        if asleep && !self.unavailable && !self.refused.contains(&dev) {
            let nowait = ReadWriteFlags::NOWAIT;
            match rustix::io::preadv2(file, &mut [IoSliceMut::new(buf)], offset, nowait) {
                Ok(n) => return Ok(n),
                Err(Errno::AGAIN) => self.wake(),
                Err(Errno::OPNOTSUPP | Errno::INVAL) => self.refused.push(dev),
                Err(Errno::NOSYS | Errno::PERM) => self.unavailable = true,
                Err(_) => {}
            }
        }
        file.read_at(buf, offset)
    }

    /// The cache has missed: from now on the thread walks ahead (the
    /// unpark reaches it even before it first sleeps).
    fn wake(&self) {
        self.shared.cold.store(true, Ordering::Relaxed);
        self.thread.unpark();
    }
}

impl Drop for Readahead {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.thread.unpark();
    }
}

/// The thread: sleeps until the first miss (or the end of the pack), then
/// walks ahead of the pack.
fn run(shared: Arc<Shared>, roots: &[(PathBuf, Metadata)], rules: Rules) {
    while !shared.cold.load(Ordering::Relaxed) {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::park();
    }
    let pace = Pace {
        shared,
        window: WINDOW,
        advised: 0,
    };
    Walk::new(rules, pace, will_need).roots(roots);
}

/// Asks the kernel to read `len` bytes of `file` from `offset` into the
/// page cache, without waiting. Advice only: a failure changes nothing.
fn will_need(file: &File, offset: u64, len: u64) {
    let advice = rustix::fs::Advice::WillNeed;
    if let Err(err) = rustix::fs::fadvise(file, offset, NonZeroU64::new(len), advice) {
        tracing::trace!(error = %err, "read-ahead advice refused");
    }
}

/// Keeps the advice within the window ahead of the pack.
struct Pace {
    shared: Arc<Shared>,
    window: u64,
    /// File bytes advised (or skipped as read) so far, in the pack's order.
    advised: u64,
}

impl Pace {
    /// Waits until `len` more bytes fit in the window (a piece larger than
    /// the window fits once the pack has caught up); false once stopped.
    fn room_for(&self, len: u64) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            let behind = self.advised.saturating_sub(self.read());
            if behind == 0 || behind + len <= self.window {
                return true;
            }
            std::thread::sleep(WAIT);
        }
    }

    /// Whether the next `len` bytes are ones the pack has read already.
    fn passed(&self, len: u64) -> bool {
        self.advised + len <= self.read()
    }

    /// File bytes the pack has read.
    fn read(&self) -> u64 {
        self.shared.read.load(Ordering::Relaxed)
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }
}

/// The walk, in the pack's order: roots as given, each directory's entries
/// sorted by name, with the same excludes, marker files, file-system bound
/// and hard links (a second name of a file has no content in the archive).
///
/// Directories and files are opened relative to their directory's
/// descriptor and typed from the listing: a walk by full paths spent more
/// on resolving them than on the advice. Each directory on the way down
/// holds a descriptor, so the walk ends below [`MAX_DEPTH`], and when the
/// process runs out of descriptors, rather than take ones the pack needs.
struct Walk<A: FnMut(&File, u64, u64)> {
    rules: Rules,
    pace: Pace,
    advise: A,
    root_dev: u64,
    /// (dev, inode) of the multiply-linked files already walked.
    links: HashSet<(u64, u64)>,
}

/// Whether the walk goes on (false: it was stopped, or gave up).
type Going = bool;

/// Where the walk is: the absolute and the root-relative path, which the
/// excludes match.
struct At {
    abs: PathBuf,
    rel: PathBuf,
    /// Directories open above this one.
    depth: usize,
}

impl<A: FnMut(&File, u64, u64)> Walk<A> {
    fn new(rules: Rules, pace: Pace, advise: A) -> Self {
        Self {
            rules,
            pace,
            advise,
            root_dev: 0,
            links: HashSet::new(),
        }
    }

    /// Walks the roots in order, as the pack packs them.
    fn roots(&mut self, roots: &[(PathBuf, Metadata)]) {
        for (root, meta) in roots {
            self.root_dev = meta.dev();
            let going = if meta.is_dir() {
                match rustix::fs::open(root, dir_flags(), Mode::empty()) {
                    Ok(fd) => {
                        let mut at = At {
                            abs: root.clone(),
                            rel: PathBuf::new(),
                            depth: 0,
                        };
                        self.dir(&fd, &mut at)
                    }
                    Err(err) => goes_on_after(err),
                }
            } else if meta.file_type().is_file() {
                self.file(rustix::fs::CWD, root.as_os_str())
            } else {
                true
            };
            if !going {
                return;
            }
        }
    }

    /// The entries of the open directory `fd`, unless a marker file says
    /// the pack skips it.
    fn dir(&mut self, fd: &OwnedFd, at: &mut At) -> Going {
        let entries = match sorted_entries(fd) {
            Ok(entries) => entries,
            Err(err) => return goes_on_after(err),
        };
        if entries.iter().any(|(n, _)| self.rules.markers.contains(n)) {
            return true;
        }
        for (name, kind) in entries {
            if self.pace.stopped() {
                return false;
            }
            at.abs.push(&name);
            at.rel.push(&name);
            let going = self.child(fd, &name, kind, at);
            at.abs.pop();
            at.rel.pop();
            if !going {
                return false;
            }
        }
        true
    }

    /// One entry of a directory, typed by the listing (or by `lstat` where
    /// the file system leaves the type out), unless excluded.
    fn child(&mut self, parent: &OwnedFd, name: &OsStr, kind: FileType, at: &mut At) -> Going {
        let kind = match kind {
            FileType::Unknown => {
                match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                    Err(err) => return goes_on_after(err),
                }
            }
            known => known,
        };
        let is_dir = kind == FileType::Directory;
        if self
            .rules
            .excludes
            .is_excluded(&at.abs, &at.rel, name, is_dir)
        {
            return true;
        }
        match kind {
            FileType::Directory => self.descend(parent, name, at),
            FileType::RegularFile => self.file(parent, name),
            _ => true,
        }
    }

    /// Into the subdirectory `name` of `parent`, unless it is too deep or,
    /// with one file system, on another one. That check comes before the
    /// open and does not trigger an automount, as the pack's `lstat` does
    /// not: opening would mount what the pack then skips.
    fn descend(&mut self, parent: &OwnedFd, name: &OsStr, at: &mut At) -> Going {
        if at.depth >= MAX_DEPTH {
            return false;
        }
        if self.rules.one_file_system {
            let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
            match rustix::fs::statat(parent, name, flags) {
                Ok(stat) if stat.st_dev == self.root_dev => {}
                Ok(_) => return true,
                Err(err) => return goes_on_after(err),
            }
        }
        let fd = match rustix::fs::openat(parent, name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(err) => return goes_on_after(err),
        };
        at.depth += 1;
        let going = self.dir(&fd, at);
        at.depth -= 1;
        going
    }

    /// Advises the contents of `name` in `dir` piece by piece within the
    /// window. What the pack has read already is only counted: a whole
    /// file without opening it, if the pack could read it.
    fn file<D: AsFd>(&mut self, dir: D, name: &OsStr) -> Going {
        let stat = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(err) => return goes_on_after(err),
        };
        let Some(len) = self.content_len(&stat) else {
            return true;
        };
        if self.pace.passed(len) {
            // A file the pack could not open has added nothing to its count.
            if rustix::fs::accessat(&dir, name, Access::READ_OK, AtFlags::EACCESS).is_ok() {
                self.pace.advised += len;
            }
            return true;
        }
        let file = match open_source_at(&dir, name) {
            Ok(file) => file,
            // The pack cannot open it either: nothing is read of it.
            Err(err) => return goes_on_after(err),
        };
        self.pieces(&file, len)
    }

    /// Advises `len` bytes of `file` in pieces, each once it fits in the
    /// window; those the pack has passed are only counted.
    fn pieces(&mut self, file: &File, len: u64) -> Going {
        let mut offset = 0;
        while offset < len {
            let piece = (len - offset).min(PIECE);
            if !self.pace.passed(piece) {
                if !self.pace.room_for(piece) {
                    return false;
                }
                (self.advise)(file, offset, piece);
            }
            offset += piece;
            self.pace.advised += piece;
        }
        true
    }

    /// The bytes the pack reads of a file: none of an empty one, of a
    /// second name of a hard-linked one, or of one that is no longer a file.
    fn content_len(&mut self, stat: &Stat) -> Option<u64> {
        let regular = FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile;
        let len = u64::try_from(stat.st_size)
            .ok()
            .filter(|&l| l > 0 && regular)?;
        let again = stat.st_nlink > 1 && !self.links.insert((stat.st_dev, stat.st_ino));
        (!again).then_some(len)
    }
}

/// Whether the walk goes on after a failed call: past an entry that
/// vanished or cannot be read, but not when the process is out of file
/// descriptors, which the pack needs more.
fn goes_on_after(err: Errno) -> Going {
    !matches!(err, Errno::MFILE | Errno::NFILE)
}

/// A directory, opened to list it and to open its entries relative to it.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// A directory's entries with the types the listing gives, sorted by name
/// as the pack sorts them (`pack::list_dir`).
fn sorted_entries(fd: &OwnedFd) -> Result<Vec<(OsString, FileType)>, Errno> {
    let mut entries = Vec::new();
    for entry in rustix::fs::Dir::read_from(fd)? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            entries.push((name.to_owned(), entry.file_type()));
        }
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::fs;
    use std::sync::mpsc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::archive::{self, EntryKind, ListOptions, PackOptions, WriterSink};

    fn rules(excludes: &[&str], markers: &[&str]) -> Rules {
        let excludes: Vec<String> = excludes.iter().map(|s| (*s).to_owned()).collect();
        Rules {
            excludes: super::super::filter::Excludes::new(&excludes).unwrap(),
            markers: markers.iter().map(OsString::from).collect(),
            one_file_system: false,
        }
    }

    fn pace(window: u64) -> (Pace, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let pace = Pace {
            shared: Arc::clone(&shared),
            window,
            advised: 0,
        };
        (pace, shared)
    }

    /// A tree with what the pack treats specially: excludes, a marker
    /// file, a hard link, a symlink, an empty file, nested directories.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        for d in ["b/inner", "a", "skip", "marked", "c"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("z"), vec![1; 300]).unwrap();
        fs::write(root.join("b/inner/two"), vec![2; 20]).unwrap();
        fs::write(root.join("b/one"), vec![3; 10]).unwrap();
        fs::write(root.join("a/x.tmp"), vec![4; 50]).unwrap();
        fs::write(root.join("a/keep"), vec![5; 40]).unwrap();
        fs::write(root.join("skip/three"), vec![6; 70]).unwrap();
        fs::write(root.join("marked/four"), vec![7; 90]).unwrap();
        fs::write(root.join("marked/.nobackup"), b"").unwrap();
        fs::write(root.join("c/empty"), b"").unwrap();
        fs::hard_link(root.join("b/one"), root.join("c/same")).unwrap();
        std::os::unix::fs::symlink("z", root.join("link")).unwrap();
        (dir, root)
    }

    #[test]
    fn advises_the_files_the_pack_reads_in_the_order_it_reads_them() {
        let (dir, root) = tree();
        let (excl, markers) = (["*.tmp", "skip/"], [".nobackup"]);
        let (pace, _shared) = pace(u64::MAX);
        let mut advised = Vec::new();
        let mut walk = Walk::new(rules(&excl, &markers), pace, |f: &File, off, len| {
            advised.push((f.metadata().unwrap().len(), off, len));
        });
        walk.roots(&[(root.clone(), fs::metadata(&root).unwrap())]);

        let mut opts = PackOptions::new([&root]);
        opts.excludes = excl.map(String::from).to_vec();
        opts.exclude_if_present = markers.map(String::from).to_vec();
        let mut sink = WriterSink::new(Vec::new());
        let never = CancellationToken::new();
        archive::pack(&opts, &mut sink, &|_| {}, &never).unwrap();
        let mut packed = Vec::new();
        let bytes = sink.into_inner();
        archive::list(&bytes[..], &ListOptions::default(), &never, &mut |e| {
            if e.kind == EntryKind::File && e.size > 0 {
                packed.push((e.size, 0, e.size));
            }
        })
        .unwrap();
        assert_eq!(advised, packed);
        assert_eq!(
            advised,
            [(40, 0, 40), (20, 0, 20), (10, 0, 10), (300, 0, 300)]
        );
        drop(dir);
    }

    #[test]
    fn a_big_file_is_advised_piece_by_piece_as_the_pack_reads() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        let len = 2 * PIECE + 5;
        File::create(&big).unwrap().set_len(len).unwrap();
        let (pace, shared) = pace(PIECE + 1);
        let (tx, rx) = mpsc::channel();
        let meta = fs::metadata(&big).unwrap();
        let walker = std::thread::spawn(move || {
            let advise = |_: &File, off, len| tx.send((off, len)).unwrap();
            Walk::new(rules(&[], &[]), pace, advise).roots(&[(big, meta)]);
        });
        let next = || rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(next(), (0, PIECE));
        // The window holds one piece: the next waits for the pack.
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "advised past the window");
        shared.read.store(PIECE, Ordering::Relaxed);
        assert_eq!(next(), (PIECE, PIECE));
        shared.read.store(2 * PIECE, Ordering::Relaxed);
        assert_eq!(next(), (2 * PIECE, 5));
        walker.join().unwrap();
    }

    #[test]
    fn a_stop_ends_a_walk_waiting_for_the_pack() {
        let (dir, root) = tree();
        let (pace, shared) = pace(1);
        let meta = fs::metadata(&root).unwrap();
        let (tx, rx) = mpsc::channel();
        let walker = std::thread::spawn(move || {
            let advise = |_: &File, _, len| tx.send(len).unwrap();
            Walk::new(rules(&[], &[]), pace, advise).roots(&[(root, meta)]);
        });
        // The first file always fits; the second waits for the pack.
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        shared.stop.store(true, Ordering::Relaxed);
        walker.join().unwrap();
        assert!(rx.try_recv().is_err());
        drop(dir);
    }

    #[test]
    fn files_the_pack_has_read_are_counted_not_advised() {
        let (dir, root) = tree();
        let (pace, shared) = pace(u64::MAX);
        // The pack is past a/keep (40) and b/inner/two (20).
        shared.read.store(60, Ordering::Relaxed);
        let mut advised = Vec::new();
        let mut walk = Walk::new(
            rules(&["*.tmp", "skip/"], &[".nobackup"]),
            pace,
            |f: &File, _, _| {
                advised.push(f.metadata().unwrap().len());
            },
        );
        walk.roots(&[(root.clone(), fs::metadata(&root).unwrap())]);
        let counted = walk.pace.advised;
        drop(walk);
        assert_eq!(advised, [10, 300]);
        assert_eq!(counted, 40 + 20 + 10 + 300);
        drop(dir);
    }

    #[test]
    fn reads_served_by_the_cache_leave_the_read_ahead_asleep() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"cached bytes").unwrap();
        let roots = vec![(dir.path().to_path_buf(), fs::metadata(dir.path()).unwrap())];
        let mut readahead = Readahead::start(roots, rules(&[], &[])).unwrap();
        let file = File::open(&path).unwrap();
        let dev = file.metadata().unwrap().dev();
        let mut buf = [0; 64];
        let n = readahead.read_at(&file, dev, &mut buf, 7).unwrap();
        assert_eq!(&buf[..n], b"bytes");
        assert_eq!(readahead.read_at(&file, dev, &mut buf, 12).unwrap(), 0);
        assert!(!readahead.shared.cold.load(Ordering::Relaxed));
        readahead.wake();
        assert!(readahead.shared.cold.load(Ordering::Relaxed));
        assert_eq!(readahead.read_at(&file, dev, &mut buf, 0).unwrap(), 12);
    }

    /// A file system that refuses `RWF_NOWAIT` (tmpfs, in `/dev/shm`) is
    /// asked once: its files are read without the flag from then on, and
    /// the read-ahead stays asleep. Without a refusing file system at hand
    /// there is nothing to test.
    #[test]
    fn a_file_system_that_refuses_nowait_is_asked_once() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("skipped: no /dev/shm");
            return;
        };
        let path = dir.path().join("f");
        fs::write(&path, b"on tmpfs").unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = [0; 64];
        let nowait = ReadWriteFlags::NOWAIT;
        let probe = rustix::io::preadv2(&file, &mut [IoSliceMut::new(&mut buf)], 0, nowait);
        if !matches!(probe, Err(Errno::OPNOTSUPP | Errno::INVAL)) {
            eprintln!("skipped: /dev/shm answers RWF_NOWAIT");
            return;
        }
        let dev = file.metadata().unwrap().dev();
        let roots = vec![(dir.path().to_path_buf(), fs::metadata(dir.path()).unwrap())];
        let mut readahead = Readahead::start(roots, rules(&[], &[])).unwrap();
        for _ in 0..3 {
            let n = readahead.read_at(&file, dev, &mut buf, 3).unwrap();
            assert_eq!(&buf[..n], b"tmpfs");
        }
        assert_eq!(readahead.refused, [dev]);
        assert!(!readahead.shared.cold.load(Ordering::Relaxed));
    }

    #[test]
    fn the_walk_gives_up_below_its_depth_limit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let mut deep = root.clone();
        for _ in 0..=MAX_DEPTH {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(root.join("d/a-shallow"), b"s").unwrap();
        fs::write(deep.join("too-deep"), b"deep").unwrap();
        fs::write(root.join("z"), b"after").unwrap();
        let (pace, _shared) = pace(u64::MAX);
        let mut advised = Vec::new();
        let mut walk = Walk::new(rules(&[], &[]), pace, |f: &File, _, _| {
            advised.push(f.metadata().unwrap().len());
        });
        walk.roots(&[(root.clone(), fs::metadata(&root).unwrap())]);
        drop(walk);
        // Stopped at the limit: nothing below it, nothing after it.
        assert_eq!(advised, [1]);
    }

    #[test]
    fn a_stop_ends_a_walk_that_is_catching_up() {
        let (dir, root) = tree();
        let (pace, shared) = pace(u64::MAX);
        shared.read.store(u64::MAX, Ordering::Relaxed);
        shared.stop.store(true, Ordering::Relaxed);
        let mut walk = Walk::new(rules(&[], &[]), pace, |_: &File, _, _| {
            panic!("advised after the stop")
        });
        walk.roots(&[(root.clone(), fs::metadata(&root).unwrap())]);
        assert_eq!(walk.pace.advised, 0, "went on counting after the stop");
        drop(dir);
    }

    #[test]
    fn the_pieces_of_a_file_the_pack_is_reading_are_advised_from_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        File::create(&big).unwrap().set_len(3 * PIECE).unwrap();
        let (pace, shared) = pace(u64::MAX);
        shared.read.store(PIECE + 1, Ordering::Relaxed);
        let mut advised = Vec::new();
        let mut walk = Walk::new(rules(&[], &[]), pace, |_: &File, off, len| {
            advised.push((off, len));
        });
        walk.roots(&[(big.clone(), fs::metadata(&big).unwrap())]);
        drop(walk);
        assert_eq!(advised, [(PIECE, PIECE), (2 * PIECE, PIECE)]);
    }

    /// A read the page cache cannot serve wakes the read-ahead. The test
    /// drops the file's pages first; where the temp directory's file
    /// system cannot answer `RWF_NOWAIT` (tmpfs) there is nothing to test.
    #[test]
    fn a_read_the_cache_cannot_serve_wakes_the_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, vec![7; 1 << 20]).unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = vec![0; 4096];
        let probe = rustix::io::preadv2(
            &file,
            &mut [IoSliceMut::new(&mut buf)],
            0,
            ReadWriteFlags::NOWAIT,
        );
        if matches!(probe, Err(Errno::OPNOTSUPP | Errno::INVAL)) {
            eprintln!("skipped: the temp directory's file system has no RWF_NOWAIT");
            return;
        }
        file.sync_all().unwrap();
        let roots = vec![(dir.path().to_path_buf(), fs::metadata(dir.path()).unwrap())];
        let dev = file.metadata().unwrap().dev();
        // Dropping the pages is only a request: a page that another CPU
        // holds a moment longer (reclaim or compaction, under the load of
        // a parallel test run) stays cached, and the read rightly hits.
        // Each try drops them again; a miss must wake the read-ahead.
        let woke = (0..20).any(|_| {
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            let mut readahead = Readahead::start(roots.clone(), rules(&[], &[])).unwrap();
            let n = readahead.read_at(&file, dev, &mut buf, 0).unwrap();
            assert_eq!(&buf[..n], &[7; 4096][..]);
            let cold = readahead.shared.cold.load(Ordering::Relaxed);
            if !cold {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            cold
        });
        assert!(woke, "no miss woke it in 20 tries");
    }
}

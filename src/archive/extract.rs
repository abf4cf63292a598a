//! Safe extraction of archive entries into a target directory.
//!
//! Rules: entry paths must be relative and free of `..`; every parent
//! directory on the way is checked to be a real directory (never a symlink,
//! so nothing planted in the target — or by an earlier entry — is
//! followed); symlinks and hard links must point inside the target; files
//! are written to a temporary name and renamed, so a real name never holds
//! a half-written file; existing files are kept unless `overwrite`.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use filetime::FileTime;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::crypt::DecryptKey;
use super::error::{Error, Result};
use super::filter::Includes;
use super::unpack::{self, EntryInfo, EntryKind};

const WRITE_BUF: usize = 1 << 20;
/// Skipped entries kept in the summary; more are only counted.
const MAX_SKIPPED: usize = 10_000;

/// Where and how to restore.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct UnpackOptions {
    /// The directory to restore into (created when missing).
    pub target: PathBuf,
    /// Only entries matching one of these globs (or under a matching
    /// directory); empty = all.
    pub include: Vec<String>,
    /// Replace existing files (never through a symlink: the name is replaced).
    pub overwrite: bool,
    /// Keys for an encrypted archive.
    pub keys: Vec<DecryptKey>,
    /// Restore owners; `None` = only when running as root.
    pub restore_owner: Option<bool>,
    /// Allow symlinks whose target is absolute or leaves the target
    /// directory (as in backups of `/etc`). They are created as links only:
    /// nothing is ever written through a link. Off by default.
    pub allow_external_symlinks: bool,
}

impl UnpackOptions {
    /// Defaults for restoring into `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            ..Self::default()
        }
    }
}

/// An entry that was not restored, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The entry's path in the archive.
    pub path: PathBuf,
    /// Why it was not restored.
    pub reason: String,
}

/// The outcome of [`unpack`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// File content bytes written.
    pub bytes: u64,
    /// Entries not restored (at most 10 000 kept; `skipped_count` has all).
    pub skipped: Vec<Skipped>,
    /// Number of entries not restored.
    pub skipped_count: u64,
}

/// Restores an archive (all volumes concatenated, in order) into
/// `opts.target`.
///
/// The whole stream is read to its end, so zstd checksums and age tags are
/// verified even when includes select little.
///
/// # Errors
/// [`Error::UnsafePath`] for an entry that would escape the target (nothing
/// is written for it or after it), decryption and decompression errors as
/// for [`list`](super::list), [`Error::Io`] for local write failures,
/// [`Error::Cancelled`]. Files completed before an error stay in place,
/// and the directories made get their archived modes and times.
pub fn unpack(
    input: impl Read + Send,
    opts: &UnpackOptions,
    cancel: &CancellationToken,
) -> Result<UnpackSummary> {
    let includes = Includes::new(&opts.include)?;
    fs::create_dir_all(&opts.target).map_err(|e| Error::io("create target", &opts.target, e))?;
    let mut x = Extractor {
        root: opts.target.clone(),
        opts,
        cancel,
        owner: opts.restore_owner.unwrap_or_else(running_as_root),
        includes,
        summary: UnpackSummary::default(),
        dirs: Vec::new(),
        checked_parent: None,
        buf: vec![0; WRITE_BUF],
    };
    let walked = unpack::walk(input, &opts.keys, cancel, |entry| x.entry(entry));
    // Also after an error: the directories made so far get their archived
    // modes and times instead of staying private (see `dir`).
    let finished = x.finish_dirs();
    walked?;
    finished?;
    x.includes.check_matched()?;
    Ok(x.summary)
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// What is applied to a directory once all its children exist.
struct DirAttrs {
    path: PathBuf,
    mode: u32,
    mtime: i64,
    owner: (Option<u32>, Option<u32>),
}

struct Extractor<'o> {
    root: PathBuf,
    opts: &'o UnpackOptions,
    cancel: &'o CancellationToken,
    owner: bool,
    includes: Includes,
    summary: UnpackSummary,
    /// Directories whose mode and mtime are set at the end (children first).
    dirs: Vec<DirAttrs>,
    /// The last parent directory verified to be a real directory.
    checked_parent: Option<PathBuf>,
    buf: Vec<u8>,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let info = unpack::entry_info(entry)?;
        let Some(rel) = safe_relative(&info.path)? else {
            return Ok(());
        };
        if !self.includes.is_selected(&rel) {
            return Ok(());
        }
        tracing::trace!(path = %rel.display(), kind = ?info.kind, "extract");
        match info.kind {
            EntryKind::Dir => self.dir(&rel, info),
            EntryKind::File => self.file(&rel, &info, entry),
            EntryKind::Symlink => self.symlink(&rel, &info),
            EntryKind::HardLink => self.hardlink(&rel, &info),
            EntryKind::Other => {
                self.skip(&rel, "special file (device or FIFO) not restored");
                Ok(())
            }
        }
    }

    fn skip(&mut self, rel: &Path, reason: &str) {
        tracing::debug!(path = %rel.display(), reason, "entry skipped");
        self.summary.skipped_count += 1;
        if self.summary.skipped.len() < MAX_SKIPPED {
            self.summary.skipped.push(Skipped {
                path: rel.to_path_buf(),
                reason: reason.to_owned(),
            });
        }
    }

    /// Makes sure every parent of `rel` is a real directory inside the
    /// target, creating missing ones. `Ok(false)` when a non-directory is in
    /// the way (the entry is skipped); a symlink in the way is an error.
    fn prepare_parent(&mut self, rel: &Path, create: bool) -> Result<bool> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if self.checked_parent.as_deref() == Some(parent) {
            return Ok(true);
        }
        let mut cur = self.root.clone();
        for comp in parent.components() {
            cur.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::unsafe_path(
                        rel.to_string_lossy(),
                        "a parent directory is a symlink (refusing to write through it)",
                    ));
                }
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(false);
                    }
                    fs::create_dir(&cur).map_err(|e| Error::io("create directory", &cur, e))?;
                }
                Err(e) => return Err(Error::io("inspect", &cur, e)),
            }
        }
        if create {
            self.checked_parent = Some(parent.to_path_buf());
        }
        Ok(true)
    }

    /// Prepares the destination of a non-directory entry. `None` = skip.
    fn destination(&mut self, rel: &Path) -> Result<Option<PathBuf>> {
        if !self.prepare_parent(rel, true)? {
            self.skip(rel, "a parent path exists and is not a directory");
            return Ok(None);
        }
        let dest = self.root.join(rel);
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => {
                self.skip(rel, "a directory exists at this path");
                Ok(None)
            }
            Ok(_) if !self.opts.overwrite => {
                self.skip(rel, "exists (use overwrite to replace it)");
                Ok(None)
            }
            Ok(_) => Ok(Some(dest)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(dest)),
            Err(e) => Err(Error::io("inspect", &dest, e)),
        }
    }

    fn dir(&mut self, rel: &Path, info: EntryInfo) -> Result<()> {
        if !self.prepare_parent(rel, true)? {
            self.skip(rel, "a parent path exists and is not a directory");
            return Ok(());
        }
        let dest = self.root.join(rel);
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::unsafe_path(
                    rel.to_string_lossy(),
                    "a symlink exists where the archive has a directory",
                ));
            }
            Ok(_) => {
                self.skip(rel, "a file exists where the archive has a directory");
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Private until its own mode is set at the end: an archived
                // `.ssh` must not be listable by others while it fills.
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dest)
                    .map_err(|e| Error::io("create directory", &dest, e))?;
            }
            Err(e) => return Err(Error::io("inspect", &dest, e)),
        }
        self.summary.dirs += 1;
        self.dirs.push(DirAttrs {
            path: dest,
            mode: self.mode(&info),
            mtime: info.mtime,
            owner: (u32::try_from(info.uid).ok(), u32::try_from(info.gid).ok()),
        });
        Ok(())
    }

    fn file<R: Read>(&mut self, rel: &Path, info: &EntryInfo, data: &mut R) -> Result<()> {
        let Some(dest) = self.destination(rel)? else {
            return Ok(());
        };
        let (tmp, mut file) = temp_file(&dest)?;
        let filled = self.fill(&mut file, data, info, rel, &dest);
        drop(file);
        let result = filled.and_then(|n| {
            fs::rename(&tmp, &dest)
                .map(|()| n)
                .map_err(|e| Error::io("rename into place", &dest, e))
        });
        match result {
            Ok(n) => {
                self.summary.files += 1;
                self.summary.bytes += n;
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn fill<R: Read>(
        &mut self,
        file: &mut File,
        data: &mut R,
        info: &EntryInfo,
        rel: &Path,
        dest: &Path,
    ) -> Result<u64> {
        let n = self.write_data(file, data, rel, dest)?;
        self.file_attrs(file, info)
            .map_err(|e| Error::io("set attributes of", dest, e))?;
        Ok(n)
    }

    /// Copies the entry's data; all-zero blocks become holes.
    fn write_data<R: Read>(
        &mut self,
        file: &mut File,
        data: &mut R,
        rel: &Path,
        dest: &Path,
    ) -> Result<u64> {
        let write_err = |e| Error::io("write", dest, e);
        let mut done = 0u64;
        let mut hole = false;
        loop {
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(unpack::read_error(e, &rel.to_string_lossy())),
            };
            let chunk = &self.buf[..n];
            hole = n >= 4096 && chunk.iter().all(|&b| b == 0);
            if hole {
                file.seek(SeekFrom::Current(n as i64)).map_err(write_err)?;
            } else {
                file.write_all(chunk).map_err(write_err)?;
            }
            done += n as u64;
        }
        if hole {
            file.set_len(done).map_err(write_err)?;
        }
        Ok(done)
    }

    fn file_attrs(&self, file: &File, info: &EntryInfo) -> io::Result<()> {
        if self.owner {
            std::os::unix::fs::fchown(
                file,
                u32::try_from(info.uid).ok(),
                u32::try_from(info.gid).ok(),
            )?;
        }
        file.set_permissions(Permissions::from_mode(self.mode(info)))?;
        file.set_modified(system_time(info.mtime))
    }

    fn mode(&self, info: &EntryInfo) -> u32 {
        if self.owner {
            info.mode & 0o7777
        } else {
            info.mode & 0o777
        }
    }

    fn symlink(&mut self, rel: &Path, info: &EntryInfo) -> Result<()> {
        let target = info.link_target.clone().unwrap_or_default();
        if !self.opts.allow_external_symlinks && !link_stays_inside(rel, &target) {
            return Err(Error::unsafe_path(
                rel.to_string_lossy(),
                super::error::EXTERNAL_SYMLINK,
            ));
        }
        let Some(dest) = self.destination(rel)? else {
            return Ok(());
        };
        let tmp = temp_name(&dest);
        std::os::unix::fs::symlink(&target, &tmp)
            .map_err(|e| Error::io("create symlink", &dest, e))?;
        let mtime = FileTime::from_unix_time(info.mtime, 0);
        let attrs = filetime::set_symlink_file_times(&tmp, mtime, mtime)
            .and_then(|()| self.link_owner(&tmp, info))
            .and_then(|()| fs::rename(&tmp, &dest));
        if let Err(e) = attrs {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("create symlink", &dest, e));
        }
        self.summary.symlinks += 1;
        Ok(())
    }

    fn link_owner(&self, path: &Path, info: &EntryInfo) -> io::Result<()> {
        if !self.owner {
            return Ok(());
        }
        std::os::unix::fs::lchown(
            path,
            u32::try_from(info.uid).ok(),
            u32::try_from(info.gid).ok(),
        )
    }

    fn hardlink(&mut self, rel: &Path, info: &EntryInfo) -> Result<()> {
        let target = info.link_target.clone().unwrap_or_default();
        let Some(target_rel) = safe_relative(&target)? else {
            return Err(Error::unsafe_path(
                rel.to_string_lossy(),
                "hard link with an empty target",
            ));
        };
        if !self.prepare_parent(&target_rel, false)? {
            self.skip(rel, "hard link target is not restored");
            return Ok(());
        }
        let source = self.root.join(&target_rel);
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_file() => {}
            _ => {
                self.skip(rel, "hard link target is not restored");
                return Ok(());
            }
        }
        let Some(dest) = self.destination(rel)? else {
            return Ok(());
        };
        let tmp = temp_name(&dest);
        fs::hard_link(&source, &tmp).map_err(|e| Error::io("create hard link", &dest, e))?;
        let renamed = fs::rename(&tmp, &dest);
        // When `dest` already is a name of the same file, rename succeeds
        // without doing anything: the temporary name must go either way.
        let _ = fs::remove_file(&tmp);
        renamed.map_err(|e| Error::io("create hard link", &dest, e))?;
        self.summary.hardlinks += 1;
        Ok(())
    }

    /// Sets directory modes and mtimes, deepest first, once all children
    /// exist. One that fails does not stop the others (each is logged);
    /// the first failure is returned.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut first = None;
        for dir in self.dirs.iter().rev() {
            if let Err(err) = self.finish_dir(dir) {
                tracing::warn!(cause = %err, "directory attributes not restored");
                first.get_or_insert(err);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn finish_dir(&self, dir: &DirAttrs) -> Result<()> {
        let path = &dir.path;
        if self.owner {
            std::os::unix::fs::lchown(path, dir.owner.0, dir.owner.1)
                .map_err(|e| Error::io("set owner of", path, e))?;
        }
        fs::set_permissions(path, Permissions::from_mode(dir.mode))
            .map_err(|e| Error::io("set mode of", path, e))?;
        let mtime = FileTime::from_unix_time(dir.mtime, 0);
        filetime::set_symlink_file_times(path, mtime, mtime)
            .map_err(|e| Error::io("set mtime of", path, e))
    }
}

/// Normalises an entry path: `None` for the archive root (`./`), an error
/// for absolute paths and `..`.
fn safe_relative(path: &Path) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::unsafe_path(path.to_string_lossy(), "absolute path"));
            }
            Component::ParentDir => {
                return Err(Error::unsafe_path(
                    path.to_string_lossy(),
                    "path contains `..`",
                ));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// True when a symlink at `rel` with `target` stays inside the extraction
/// root. Only leading `..` are accepted (`../../x`, not `a/../..`): a `..`
/// after a name could climb out of another symlink's target, which a
/// lexical check cannot see. Together with parents always being real
/// directories, this keeps every chain of links inside the root.
fn link_stays_inside(rel: &Path, target: &Path) -> bool {
    if target.as_os_str().is_empty() || target.is_absolute() {
        return false;
    }
    let mut depth = rel.parent().map_or(0, |p| p.components().count());
    let mut descended = false;
    for comp in target.components() {
        match comp {
            Component::Normal(_) => descended = true,
            Component::CurDir => {}
            Component::ParentDir if descended || depth == 0 => return false,
            Component::ParentDir => depth -= 1,
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn temp_name(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(OsStrExt::as_bytes).unwrap_or(b"x");
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(&name[..name.len().min(200)]);
    tmp.extend_from_slice(format!(".synback-{:08x}", rand::random::<u32>()).as_bytes());
    dest.with_file_name(std::ffi::OsStr::from_bytes(&tmp))
}

/// Creates a fresh temporary file next to `dest` (never through a link).
fn temp_file(dest: &Path) -> Result<(PathBuf, File)> {
    let tmp = temp_name(dest);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io("create", dest, e))?;
    Ok((tmp, file))
}

fn system_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_normalised_and_escapes_refused() {
        assert_eq!(
            safe_relative(Path::new("./a/./b")).unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(safe_relative(Path::new("./")).unwrap(), None);
        assert!(matches!(
            safe_relative(Path::new("/etc/passwd")),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            safe_relative(Path::new("a/../../b")),
            Err(Error::UnsafePath { .. })
        ));
    }

    #[test]
    fn symlink_targets_are_checked_lexically() {
        assert!(link_stays_inside(Path::new("a/b/l"), Path::new("../c")));
        assert!(link_stays_inside(Path::new("a/b/l"), Path::new("../../c")));
        assert!(!link_stays_inside(
            Path::new("a/b/l"),
            Path::new("../../../c")
        ));
        assert!(!link_stays_inside(Path::new("l"), Path::new("/etc")));
        assert!(!link_stays_inside(Path::new("l"), Path::new("x/../../y")));
        assert!(!link_stays_inside(Path::new("l"), Path::new("x/../y")));
        assert!(link_stays_inside(Path::new("a/l"), Path::new("./../b/c")));
    }
}

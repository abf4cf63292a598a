//! The read path: concatenated volumes → (age) → zstd → tar entries,
//! for listing and (with [`super::extract`]) for restoring.

use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tar::EntryType;
use tokio_util::sync::CancellationToken;

use super::crypt::{self, DecryptKey};
use super::error::{Error, Result};
use super::filter::Includes;
use super::pipe::{self, PipeReader};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const AGE_MAGIC: &[u8] = b"age-encryption.org/";
const AGE_ARMOR: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
/// Buffer in front of the tar parser (it reads 512-byte headers).
const TAR_BUF: usize = 256 * 1024;
/// Largest zstd window accepted (long-distance archives use 2^27).
const WINDOW_LOG_MAX: u32 = 31;

/// What to list.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ListOptions {
    /// Only entries matching one of these globs (or under a matching
    /// directory); empty = all.
    pub include: Vec<String>,
    /// Keys for an encrypted archive.
    pub keys: Vec<DecryptKey>,
}

/// The kind of an archive entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier entry.
    HardLink,
    /// Anything else (devices, FIFOs: never extracted).
    Other,
}

/// One archive entry, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Path in the archive, as stored (directories without the trailing `/`).
    pub path: PathBuf,
    /// Kind of entry.
    pub kind: EntryKind,
    /// Content size in bytes (0 for everything but files).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Owner id.
    pub uid: u64,
    /// Group id.
    pub gid: u64,
    /// Owner name, when stored.
    pub user: Option<String>,
    /// Group name, when stored.
    pub group: Option<String>,
    /// Target of a symlink or hard link.
    pub link_target: Option<PathBuf>,
}

/// Totals of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListSummary {
    /// Entries passed to the callback.
    pub entries: u64,
    /// Sum of their sizes.
    pub bytes: u64,
}

/// Lists the entries of an archive (all volumes concatenated, in order)
/// without writing anything, calling `each` for every selected entry.
///
/// The whole stream is read to its end, so a listing also proves that the
/// zstd checksums and the age authentication tags are intact.
///
/// # Errors
/// [`Error::NeedIdentity`]/[`Error::Decrypt`] for encryption problems,
/// [`Error::Zstd`] for a corrupt or truncated stream, [`Error::Tar`] for a
/// malformed tar, [`Error::Cancelled`].
pub fn list(
    input: impl Read + Send,
    opts: &ListOptions,
    cancel: &CancellationToken,
    each: &mut dyn FnMut(&EntryInfo),
) -> Result<ListSummary> {
    let includes = Includes::new(&opts.include)?;
    let mut summary = ListSummary::default();
    walk(input, &opts.keys, cancel, |entry| {
        let info = entry_info(entry)?;
        if includes.is_selected(&info.path) {
            summary.entries += 1;
            summary.bytes += info.size;
            each(&info);
        }
        Ok(())
    })?;
    includes.check_matched()?;
    Ok(summary)
}

/// The tar stream as the entry callbacks see it.
pub(crate) type TarSource = BufReader<PipeReader>;

/// Decodes `input` on a helper thread and runs `f` on each tar entry on
/// this one; then reads what follows the tar end marker, so that the zstd
/// checksum of the last frame and the final age chunk are verified and
/// truncation is seen.
pub(crate) fn walk(
    input: impl Read + Send,
    keys: &[DecryptKey],
    cancel: &CancellationToken,
    mut f: impl FnMut(&mut tar::Entry<'_, TarSource>) -> Result<()>,
) -> Result<()> {
    let decoded = open(input, keys)?;
    std::thread::scope(|scope| {
        let reader = pipe::spawn(scope, decoded)
            .map_err(|e| Error::io("start the decompression thread", PathBuf::new(), e))?;
        let mut archive = tar::Archive::new(BufReader::with_capacity(TAR_BUF, reader));
        let entries = archive.entries().map_err(|e| read_error(e, ""))?;
        for entry in entries {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let mut entry = entry.map_err(|e| read_error(e, ""))?;
            f(&mut entry)?;
        }
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| read_error(e, ""))?;
        Ok(())
    })
}

/// The decompressed tar stream, errors tagged with their layer.
type Decoded<'a> = Box<dyn Read + Send + 'a>;

/// Opens the decoding pipeline, detecting age and zstd by their magic.
fn open<'a>(input: impl Read + Send + 'a, keys: &[DecryptKey]) -> Result<Decoded<'a>> {
    let (head, input) = peek(Tagged::new(input, Layer::Input))?;
    let compressed: Decoded<'a> = if head.starts_with(&ZSTD_MAGIC) {
        input
    } else if head.starts_with(AGE_MAGIC) || head.starts_with(AGE_ARMOR) {
        let plain = crypt::decrypt(input, head.starts_with(AGE_ARMOR), keys)?;
        Box::new(Tagged::new(plain, Layer::Age))
    } else {
        return Err(Error::UnknownFormat);
    };
    let configure = |source| Error::Zstd {
        action: "configure",
        source,
    };
    let mut decoder = zstd::stream::read::Decoder::new(compressed).map_err(configure)?;
    decoder.window_log_max(WINDOW_LOG_MAX).map_err(configure)?;
    Ok(Box::new(Tagged::new(decoder, Layer::Zstd)))
}

/// Reads the first bytes to detect the format, then puts them back.
fn peek<'a, R: Read + Send + 'a>(mut input: R) -> Result<(Vec<u8>, Decoded<'a>)> {
    let mut head = vec![0u8; AGE_ARMOR.len()];
    let mut n = 0;
    while n < head.len() {
        match input.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(e, "")),
        }
    }
    head.truncate(n);
    let chained = io::Cursor::new(head.clone()).chain(input);
    Ok((head, Box::new(chained)))
}

/// Which stage of the read pipeline an I/O error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Input,
    Age,
    Zstd,
}

#[derive(Debug, thiserror::Error)]
#[error("{layer:?} stage")]
struct LayerFailure {
    layer: Layer,
    #[source]
    source: io::Error,
}

/// Tags the errors of one reader with its layer (unless already tagged).
struct Tagged<R> {
    inner: R,
    layer: Layer,
}

impl<R> Tagged<R> {
    fn new(inner: R, layer: Layer) -> Self {
        Self { inner, layer }
    }
}

impl<R: Read> Read for Tagged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if find_layer(&e).is_some() {
                e
            } else {
                io::Error::other(LayerFailure {
                    layer: self.layer,
                    source: e,
                })
            }
        })
    }
}

fn find_layer(err: &io::Error) -> Option<Layer> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = cur {
        if let Some(f) = e.downcast_ref::<LayerFailure>() {
            return Some(f.layer);
        }
        cur = e.source();
    }
    None
}

/// Maps a read error to the layer that failed (tar itself when untagged).
pub(crate) fn read_error(err: io::Error, entry: &str) -> Error {
    match find_layer(&err) {
        Some(Layer::Input) => Error::Io {
            action: "read archive input",
            path: PathBuf::from("<input>"),
            source: err,
        },
        Some(Layer::Age) => Error::DecryptStream { source: err },
        Some(Layer::Zstd) => Error::Zstd {
            action: "decompress",
            source: err,
        },
        None => Error::Tar {
            entry: entry.to_owned(),
            source: err,
        },
    }
}

/// Metadata of an entry, PAX records taking precedence over the header.
pub(crate) fn entry_info<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<EntryInfo> {
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(&entry.path_bytes()).to_owned());
    let bad = |e: io::Error| read_error(e, &path.to_string_lossy());
    let header = entry.header();
    let kind = kind_of(header.entry_type());
    let mut info = EntryInfo {
        kind,
        size: if kind == EntryKind::File {
            entry.size()
        } else {
            0
        },
        mtime: header
            .mtime()
            .map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
        mode: header.mode().map_err(bad)? & 0o7777,
        uid: header.uid().unwrap_or(0),
        gid: header.gid().unwrap_or(0),
        user: header.username().ok().flatten().map(str::to_owned),
        group: header.groupname().ok().flatten().map(str::to_owned),
        link_target: entry
            .link_name_bytes()
            .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b).to_owned())),
        path: trim_slash(path.clone()),
    };
    apply_pax(entry, &mut info).map_err(bad)?;
    Ok(info)
}

fn apply_pax<R: Read>(entry: &mut tar::Entry<'_, R>, info: &mut EntryInfo) -> io::Result<()> {
    let Some(pax) = entry.pax_extensions()? else {
        return Ok(());
    };
    for ext in pax {
        let ext = ext?;
        let (Ok(key), Ok(value)) = (ext.key(), ext.value()) else {
            continue;
        };
        match key {
            "mtime" => {
                let secs = value.split('.').next().unwrap_or(value);
                info.mtime = secs.parse().unwrap_or(info.mtime);
            }
            "uid" => info.uid = value.parse().unwrap_or(info.uid),
            "gid" => info.gid = value.parse().unwrap_or(info.gid),
            "uname" => info.user = Some(value.to_owned()),
            "gname" => info.group = Some(value.to_owned()),
            _ => {}
        }
    }
    Ok(())
}

fn trim_slash(path: PathBuf) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    match bytes.strip_suffix(b"/") {
        Some(trimmed) if !trimmed.is_empty() => PathBuf::from(std::ffi::OsStr::from_bytes(trimmed)),
        _ => path,
    }
}

fn kind_of(t: EntryType) -> EntryKind {
    match t {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => EntryKind::File,
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => EntryKind::Symlink,
        EntryType::Link => EntryKind::HardLink,
        _ => EntryKind::Other,
    }
}

//! The archive layer: source walk → tar → zstd → optional age → volumes,
//! with MD5 and SHA-256 computed while bytes flow; and the way back
//! (decrypt → decompress → safe extraction, or listing).
//!
//! This module owns the archive *format* and the local file system side of
//! backups. It must not depend on the network, the DSM client, the remote
//! layout (volume and snapshot naming belong to `repo`) or the CLI. All of
//! it is synchronous and CPU- or disk-bound: async callers run it inside
//! `tokio::task::spawn_blocking` and stop it with a `CancellationToken`.
//!
//! # Example
//! ```
//! use synback::archive::{self, ListOptions, PackOptions, UnpackOptions, WriterSink};
//! use tokio_util::sync::CancellationToken;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let src = tempfile::tempdir()?;
//! std::fs::write(src.path().join("hello.txt"), "hi")?;
//! let cancel = CancellationToken::new();
//!
//! let mut sink = WriterSink::new(Vec::new()); // or a spool file per volume
//! let summary = archive::pack(&PackOptions::new([src.path()]), &mut sink, &|_| {}, &cancel)?;
//! let bytes = sink.into_inner();
//! assert_eq!(summary.volumes[0].size, bytes.len() as u64);
//!
//! let mut names = Vec::new();
//! archive::list(&bytes[..], &ListOptions::default(), &cancel, &mut |e| names.push(e.path.clone()))?;
//! assert_eq!(names.len(), 2); // the source's directory and hello.txt
//!
//! let out = tempfile::tempdir()?;
//! let restored = archive::unpack(&bytes[..], &UnpackOptions::new(out.path()), &cancel)?;
//! assert_eq!(restored.files, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Format
//! A standard stream that needs no synback to restore:
//! `cat VOLUMES… | [age -d -i KEY |] zstd -d | tar -x`.
//! - tar: ustar headers, plus PAX records when a value does not fit (long
//!   names and link targets, sizes ≥ 8 GiB, large ids, times before 1970);
//!   mtimes in whole seconds; directories end in `/`; hard links are stored
//!   once and then as link entries.
//! - Every source root is stored under its own top-level prefix (its last
//!   path component, made unique with `-2`, `-3`…), recorded in the
//!   [`Manifest`].
//! - zstd with frame checksums; age (X25519 recipients or a passphrase)
//!   around the zstd stream when encryption is on.
//!
//! # Restore safety
//! [`unpack`] refuses (with [`Error::UnsafePath`]) absolute paths, `..`,
//! symlinks whose target is absolute or climbs out of the target (unless
//! [`UnpackOptions::allow_external_symlinks`]), hard links to anything but
//! a regular file inside the target, and any write through a symlink, be
//! it planted by the archive or already in the target. Files are written
//! under a temporary name and renamed into place; existing files are kept
//! unless [`UnpackOptions::overwrite`]. Modes and mtimes are restored,
//! owners when running as root. The whole input is always read to its
//! end, so zstd checksums and age tags are verified.
//!
//! # Exclude patterns
//! A pattern without `/` matches a name at any depth (`*.tmp`); with a `/`
//! inside, the path relative to the source root (`**/node_modules`,
//! `docs/*.pdf`); starting with `/`, the absolute path. A trailing `/`
//! matches directories only (`cache/`). `*` does not cross `/`, `**` does.

mod channel;
mod crypt;
mod digest;
mod error;
mod extract;
mod filter;
mod manifest;
mod names;
mod pack;
mod pipe;
mod readahead;
mod scan;
mod tarw;
mod unpack;
mod volume;

pub use channel::{ChannelReader, ChannelSink, VolumeEvent};
pub use crypt::{DecryptKey, check_keys_match, parse_recipient};
pub use error::{Error, Result};
pub use extract::{Skipped, UnpackOptions, UnpackSummary, unpack};
pub use manifest::{
    ArchiveDigest, Compression, Encryption, MANIFEST_FORMAT, Manifest, SnapshotMeta, Timings,
    VolumeRecord,
};
pub use pack::{
    Issue, IssueKind, MAX_ISSUES, PackCounts, PackOptions, PackProgress, PackSummary, SourcePrefix,
    pack,
};
pub use unpack::{EntryInfo, EntryKind, ListOptions, ListSummary, list};
pub use volume::{FileSink, HashingReader, VolumeInfo, VolumeSink, WriterSink};

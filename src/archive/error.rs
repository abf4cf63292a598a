//! The archive layer's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can make a pack, unpack or list fail as a whole.
///
/// Problems with single source files (unreadable, changed while read,
/// special files) are not errors: they are reported in the summary as
/// [`Issue`](super::Issue)s and the run goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation on a local path failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done ("read source", "create directory", ...).
        action: &'static str,
        /// The local path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A configured source root cannot be archived at all.
    #[error("source {path}: {reason}")]
    Source {
        /// The source root as configured.
        path: PathBuf,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// An exclude or include glob does not parse.
    #[error("invalid glob pattern {pattern:?}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What globset said about it.
        #[source]
        source: globset::Error,
    },
    /// Include patterns were given and no entry of the archive matched.
    #[error(
        "no entry of the snapshot matches {patterns}; paths are relative, as `synback ls` shows them (e.g. `home/alice/docs`)"
    )]
    NothingSelected {
        /// The patterns as given.
        patterns: String,
    },
    /// Reading or writing a tar entry failed (malformed or truncated tar).
    #[error("tar entry {entry}")]
    Tar {
        /// The entry's path in the archive (empty when it could not be read).
        entry: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The zstd stream could not be produced or is corrupt or truncated.
    #[error("zstd {action} failed (corrupt or truncated stream?)")]
    Zstd {
        /// "compress", "decompress" or "configure".
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An age recipient in the options does not parse.
    #[error("invalid age recipient {recipient:?}: {reason}")]
    Recipient {
        /// The recipient string as given.
        recipient: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An age identity file cannot be read or parsed.
    #[error("cannot load age identities from {path}")]
    Identity {
        /// The identity file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Setting up age encryption failed.
    #[error("age encryption setup failed")]
    Encrypt {
        /// The underlying error.
        #[source]
        source: age::EncryptError,
    },
    /// The archive could not be decrypted: wrong key, no key, or damaged data.
    #[error("age decryption failed")]
    Decrypt {
        /// The underlying error.
        #[source]
        source: age::DecryptError,
    },
    /// The encrypted stream is damaged or truncated after its header.
    #[error("age decryption failed while reading (damaged or truncated archive)")]
    DecryptStream {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The archive is age-encrypted and no identity or passphrase was given.
    #[error("the archive is encrypted with age: an identity file or passphrase is needed")]
    NeedIdentity,
    /// The identities given open none of the recipients the archive was
    /// encrypted to (found before anything is downloaded).
    #[error(
        "the given identities ({keys}) cannot open this snapshot: it was encrypted to {recipients}; pass the identity file of one of those (--identity FILE)"
    )]
    WrongKey {
        /// The public keys of the identities given.
        keys: String,
        /// The public keys the archive was encrypted to.
        recipients: String,
    },
    /// The input is neither a zstd stream nor an age file.
    #[error("input is not a synback archive (no zstd or age header)")]
    UnknownFormat,
    /// An archive entry would write outside the target or through a link.
    #[error("unsafe entry {entry:?}: {reason}")]
    UnsafePath {
        /// The entry's path in the archive.
        entry: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The caller's [`VolumeSink`](super::VolumeSink) failed.
    #[error("writing volume {index} failed")]
    Sink {
        /// The 1-based volume number.
        index: u32,
        /// The sink's error.
        #[source]
        source: io::Error,
    },
    /// The options are inconsistent.
    #[error("invalid option {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A manifest is not valid JSON for its format.
    #[error("invalid manifest")]
    Manifest {
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest was written by a newer synback.
    #[error(
        "manifest format {found} is newer than this synback understands ({supported}); upgrade synback"
    )]
    ManifestVersion {
        /// The format found in the file.
        found: u64,
        /// The newest format this build reads.
        supported: u32,
    },
    /// The cancellation token fired.
    #[error("cancelled")]
    Cancelled,
}

/// Shorthand for results of this layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn unsafe_path(entry: impl Into<String>, reason: &'static str) -> Self {
        Self::UnsafePath {
            entry: entry.into(),
            reason,
        }
    }

    /// True for a symlink refused because it points outside the restore
    /// target (`allow_external_symlinks` would recreate it).
    pub fn is_external_symlink(&self) -> bool {
        matches!(self, Self::UnsafePath { reason, .. } if *reason == EXTERNAL_SYMLINK)
    }
}

/// The [`Error::UnsafePath`] reason of a symlink that leaves the target.
pub(crate) const EXTERNAL_SYMLINK: &str = "symlink points outside the target directory";

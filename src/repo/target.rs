//! The [`Target`] trait: the small async storage surface the backup, restore
//! and rotation code writes against, and its error type.
//!
//! A target is one flat folder (the job folder `/<share>/<path>/<job>/` on
//! the NAS, or a map in memory). Names are relative to that folder and never
//! contain a path separator; [`validate_name`] refuses anything else, so no
//! implementation can be talked into touching a file outside the folder.
//!
//! The required methods are few and object-safe (`Arc<dyn Target>` works);
//! conveniences such as [`TargetExt::put_bytes`] and [`TargetExt::get_bytes`]
//! come from the blanket [`TargetExt`] extension trait. Behaviour such as
//! fault injection or dry runs is added by wrappers (see
//! [`FlakyTarget`](super::FlakyTarget), [`DryRunTarget`](super::DryRunTarget)),
//! never by flags on the real implementations.
//!
//! This module must not depend on the DSM client or on the archive format.

use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};

/// A boxed error from a backend, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias for target operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The body of an upload: a stream of chunks; an `Err` item aborts the upload.
pub type PutBody = BoxStream<'static, io::Result<Bytes>>;

/// The content of a downloaded file, as a stream of chunks.
pub type GetStream = BoxStream<'static, io::Result<Bytes>>;

/// One target operation, used to say what was being done when an error
/// happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Creating the job folder.
    EnsureFolder,
    /// Uploading a file.
    Put,
    /// Asking for a file's MD5 digest.
    Md5,
    /// Listing the job folder.
    List,
    /// Downloading a file.
    Get,
    /// Renaming a file.
    Rename,
    /// Deleting a file.
    Delete,
}

impl Operation {
    /// Every operation, for tables and fault plans.
    pub const ALL: [Operation; 7] = [
        Operation::EnsureFolder,
        Operation::Put,
        Operation::Md5,
        Operation::List,
        Operation::Get,
        Operation::Rename,
        Operation::Delete,
    ];

    /// A short lowercase name (`put`, `md5`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::EnsureFolder => "create folder",
            Operation::Put => "put",
            Operation::Md5 => "md5",
            Operation::List => "list",
            Operation::Get => "get",
            Operation::Rename => "rename",
            Operation::Delete => "delete",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an error was about: which target, which operation, which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The target, as its `Display` shows it (e.g. `dsm:/backup/pc/home`).
    pub target: String,
    /// The operation that failed.
    pub op: Operation,
    /// The file name inside the job folder; empty for folder operations.
    pub name: String,
}

impl Context {
    /// Builds a context for `op` on `name` in `target`.
    pub fn new(target: impl fmt::Display, op: Operation, name: impl Into<String>) -> Self {
        Self {
            target: target.to_string(),
            op,
            name: name.into(),
        }
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "{} in {}", self.op, self.target)
        } else {
            write!(f, "{} {:?} in {}", self.op, self.name, self.target)
        }
    }
}

/// The kind of an [`Error`], without context; what callers branch on and
/// what fault injection produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::AlreadyExists`].
    AlreadyExists,
    /// See [`Error::PermissionDenied`].
    PermissionDenied,
    /// See [`Error::Unauthenticated`].
    Unauthenticated,
    /// See [`Error::QuotaExceeded`].
    QuotaExceeded,
    /// See [`Error::NoSpace`].
    NoSpace,
    /// See [`Error::Transient`].
    Transient,
    /// See [`Error::InvalidName`].
    InvalidName,
    /// See [`Error::Body`].
    Body,
    /// See [`Error::LengthMismatch`].
    LengthMismatch,
    /// See [`Error::Other`].
    Other,
}

/// Why a target operation failed.
///
/// Variants carry the [`Context`] (target, operation, file) and keep the
/// backend's error as `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file (or the job folder) does not exist.
    #[error("{ctx}: not found")]
    NotFound {
        /// What was being done.
        ctx: Context,
        /// The backend's error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The file exists and the operation must not replace it.
    #[error("{ctx}: already exists")]
    AlreadyExists {
        /// What was being done.
        ctx: Context,
        /// The backend's error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The account may not do this here.
    #[error("{ctx}: permission denied")]
    PermissionDenied {
        /// What was being done.
        ctx: Context,
        /// The backend's error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend refused our credentials or lost the session for good.
    #[error("{ctx}: not authenticated")]
    Unauthenticated {
        /// What was being done.
        ctx: Context,
        /// The backend's error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The user's quota on the share is used up.
    #[error("{ctx}: quota exceeded")]
    QuotaExceeded {
        /// What was being done.
        ctx: Context,
        /// The backend's error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The volume holding the share is full.
    #[error("{ctx}: no space left on the target")]
    NoSpace {
        /// What was being done.
        ctx: Context,
        /// The backend's error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// A failure that may go away if the operation is repeated (network,
    /// 5xx, busy backend).
    #[error("{ctx}: temporary failure")]
    Transient {
        /// What was being done.
        ctx: Context,
        /// The backend's error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The name is not a plain file name inside the job folder.
    #[error("invalid remote file name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Reading the upload body failed (a local problem, not the target's).
    #[error("{ctx}: reading the upload body failed")]
    Body {
        /// What was being done.
        ctx: Context,
        /// The error the body stream returned.
        #[source]
        source: io::Error,
    },
    /// The body did not have the length announced for it.
    #[error("{ctx}: the body had {actual} bytes but {expected} were announced")]
    LengthMismatch {
        /// What was being done.
        ctx: Context,
        /// The announced length.
        expected: u64,
        /// The length actually read.
        actual: u64,
    },
    /// Anything else, with the backend's own error.
    #[error("{ctx}: {backend} backend error")]
    Other {
        /// Which backend produced it (`dsm`, `memory`, …).
        backend: &'static str,
        /// What was being done.
        ctx: Context,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Builds an error of `kind` for `ctx`.
    ///
    /// [`ErrorKind::InvalidName`], [`ErrorKind::Body`],
    /// [`ErrorKind::LengthMismatch`] and [`ErrorKind::Other`] have their own
    /// constructors; passing them here yields an [`Error::Other`] that keeps
    /// `source` (or a note that none was given).
    pub fn new(kind: ErrorKind, ctx: Context, source: Option<BoxError>) -> Self {
        match kind {
            ErrorKind::NotFound => Error::NotFound { ctx, source },
            ErrorKind::AlreadyExists => Error::AlreadyExists { ctx, source },
            ErrorKind::PermissionDenied => Error::PermissionDenied { ctx, source },
            ErrorKind::Unauthenticated => Error::Unauthenticated { ctx, source },
            ErrorKind::QuotaExceeded => Error::QuotaExceeded { ctx, source },
            ErrorKind::NoSpace => Error::NoSpace { ctx, source },
            ErrorKind::Transient => Error::Transient { ctx, source },
            ErrorKind::InvalidName
            | ErrorKind::Body
            | ErrorKind::LengthMismatch
            | ErrorKind::Other => Error::Other {
                backend: "unknown",
                ctx,
                source: source.unwrap_or_else(|| format!("{kind:?}").into()),
            },
        }
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Error::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Error::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
            Error::NoSpace { .. } => ErrorKind::NoSpace,
            Error::Transient { .. } => ErrorKind::Transient,
            Error::InvalidName { .. } => ErrorKind::InvalidName,
            Error::Body { .. } => ErrorKind::Body,
            Error::LengthMismatch { .. } => ErrorKind::LengthMismatch,
            Error::Other { .. } => ErrorKind::Other,
        }
    }

    /// The context, when the error has one ([`Error::InvalidName`] has not).
    pub fn context(&self) -> Option<&Context> {
        match self {
            Error::NotFound { ctx, .. }
            | Error::AlreadyExists { ctx, .. }
            | Error::PermissionDenied { ctx, .. }
            | Error::Unauthenticated { ctx, .. }
            | Error::QuotaExceeded { ctx, .. }
            | Error::NoSpace { ctx, .. }
            | Error::Transient { ctx, .. }
            | Error::Body { ctx, .. }
            | Error::LengthMismatch { ctx, .. }
            | Error::Other { ctx, .. } => Some(ctx),
            Error::InvalidName { .. } => None,
        }
    }

    /// True when repeating the same operation may succeed
    /// ([`Error::Transient`] only).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// One file (or sub-folder) in the job folder, as [`Target::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteEntry {
    /// The name inside the job folder.
    pub name: String,
    /// Size in bytes (0 for folders).
    pub size: u64,
    /// Last modification time, when the backend reports one.
    pub mtime: Option<DateTime<Utc>>,
    /// True for a sub-folder (never one of ours).
    pub is_dir: bool,
}

impl RemoteEntry {
    /// A file entry with no modification time.
    pub fn file(name: impl Into<String>, size: u64) -> Self {
        Self {
            name: name.into(),
            size,
            mtime: None,
            is_dir: false,
        }
    }

    /// A sub-folder entry.
    pub fn dir(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            size: 0,
            mtime: None,
            is_dir: true,
        }
    }

    /// The same entry with a modification time.
    #[must_use]
    pub fn with_mtime(mut self, mtime: DateTime<Utc>) -> Self {
        self.mtime = Some(mtime);
        self
    }
}

/// How [`Target::put_opts`] treats an existing file of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PutMode {
    /// Replace it.
    #[default]
    Overwrite,
    /// Fail with [`Error::AlreadyExists`]. Used for the lock file. Backends
    /// without an atomic create-if-absent (DSM) check before uploading, so a
    /// tight race can still let two writers through; the lock reads its file
    /// back to catch that.
    Create,
}

/// Asynchronous storage for one job folder.
///
/// Every method validates its names with [`validate_name`] first. Futures
/// are `Send`; dropping one cancels the operation, after which the named
/// file may or may not have been changed (an interrupted upload may leave a
/// truncated file, which is why uploads go to `*.partial` names first).
pub trait Target: fmt::Display + fmt::Debug + Send + Sync {
    /// Creates the job folder (and its parents) if it does not exist yet.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`], [`Error::NotFound`] (the share is
    /// missing), [`Error::Transient`] and backend errors.
    fn ensure_folder(&self) -> BoxFuture<'_, Result<()>>;

    /// Uploads `body` as `name`. `len`, when given, must be the exact number
    /// of bytes the body yields.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] in [`PutMode::Create`] when `name` exists,
    /// [`Error::Body`] when the body stream fails,
    /// [`Error::LengthMismatch`] when `len` was wrong,
    /// [`Error::NotFound`] when the job folder does not exist,
    /// [`Error::QuotaExceeded`], [`Error::NoSpace`], [`Error::Transient`].
    fn put_opts<'a>(
        &'a self,
        name: &'a str,
        body: PutBody,
        len: Option<u64>,
        mode: PutMode,
    ) -> BoxFuture<'a, Result<()>>;

    /// The MD5 digest of the stored file, as computed by the target itself,
    /// in lowercase hex.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `name` does not exist; backend errors.
    fn md5<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String>>;

    /// Every entry of the job folder, in no particular order.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the job folder does not exist yet; backend
    /// errors.
    fn list(&self) -> BoxFuture<'_, Result<Vec<RemoteEntry>>>;

    /// Opens `name` for reading.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `name` does not exist; backend errors. Errors
    /// while streaming arrive as `io::Error` items of the stream.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<GetStream>>;

    /// Renames `from` to `to` inside the job folder.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `from` does not exist,
    /// [`Error::AlreadyExists`] when `to` exists; backend errors.
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Deletes `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `name` does not exist; backend errors.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// A body or download stream fed by a bounded channel: a producer on a
/// blocking thread sends chunks, the upload (or reader) pulls them.
pub fn stream_from_channel(
    mut rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Checks that `name` is a plain file name inside the job folder.
///
/// # Errors
/// [`Error::InvalidName`] for an empty name, `.`, `..`, or a name holding
/// `/`, `\`, a NUL or another control character.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty name")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not file names")
    } else if name.contains('/') || name.contains('\\') {
        Some("names may not contain path separators")
    } else if name.chars().any(char::is_control) {
        Some("names may not contain control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Turns a byte buffer into a [`PutBody`].
pub fn body_from_bytes(data: Bytes) -> PutBody {
    stream::once(async move { Ok(data) }).boxed()
}

/// Reads a whole upload body, checking the announced length.
///
/// For implementations that need the body in memory (small files, tests).
///
/// # Errors
/// [`Error::Body`] when the stream fails, [`Error::LengthMismatch`] when
/// `len` is given and differs from what was read.
pub async fn collect_body(ctx: &Context, body: PutBody, len: Option<u64>) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    let mut body = body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| Error::Body {
            ctx: ctx.clone(),
            source,
        })?;
        buf.extend_from_slice(&chunk);
    }
    let actual = buf.len() as u64;
    match len {
        Some(expected) if expected != actual => Err(Error::LengthMismatch {
            ctx: ctx.clone(),
            expected,
            actual,
        }),
        _ => Ok(buf.freeze()),
    }
}

/// Conveniences on every [`Target`].
pub trait TargetExt: Target {
    /// Uploads `body` as `name`, replacing an existing file.
    ///
    /// # Errors
    /// As [`Target::put_opts`].
    fn put<'a>(
        &'a self,
        name: &'a str,
        body: PutBody,
        len: Option<u64>,
    ) -> BoxFuture<'a, Result<()>> {
        self.put_opts(name, body, len, PutMode::Overwrite)
    }

    /// Uploads a small in-memory file (manifest, lock), replacing an
    /// existing one.
    ///
    /// # Errors
    /// As [`Target::put_opts`].
    fn put_bytes<'a>(&'a self, name: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>> {
        let len = Some(data.len() as u64);
        self.put_opts(name, body_from_bytes(data), len, PutMode::Overwrite)
    }

    /// Uploads a small in-memory file only if `name` does not exist yet.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when it does; otherwise as
    /// [`Target::put_opts`].
    fn create_bytes<'a>(&'a self, name: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>> {
        let len = Some(data.len() as u64);
        self.put_opts(name, body_from_bytes(data), len, PutMode::Create)
    }

    /// Downloads a small file whole (manifest, lock). Refuses files larger
    /// than `limit` bytes so a wrong name cannot exhaust memory.
    ///
    /// # Errors
    /// As [`Target::get`]; [`Error::Other`] when a read fails or the file is
    /// larger than `limit`.
    fn get_bytes<'a>(&'a self, name: &'a str, limit: usize) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let stream = self.get(name).await?;
            let ctx = Context::new(&*self, Operation::Get, name);
            read_limited(stream, limit)
                .await
                .map_err(|source| Error::Other {
                    backend: "stream",
                    ctx,
                    source: Box::new(source),
                })
        })
    }

    /// Deletes `name`; a missing file is not an error. Returns whether a
    /// file was deleted.
    ///
    /// # Errors
    /// As [`Target::delete`], except [`Error::NotFound`].
    fn delete_if_exists<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match self.delete(name).await {
                Ok(()) => Ok(true),
                Err(Error::NotFound { .. }) => Ok(false),
                Err(err) => Err(err),
            }
        })
    }

    /// Lists the job folder; a folder that does not exist yet lists as
    /// empty.
    ///
    /// # Errors
    /// As [`Target::list`], except [`Error::NotFound`].
    fn list_or_empty(&self) -> BoxFuture<'_, Result<Vec<RemoteEntry>>> {
        Box::pin(async move {
            match self.list().await {
                Ok(entries) => Ok(entries),
                Err(Error::NotFound { .. }) => Ok(Vec::new()),
                Err(err) => Err(err),
            }
        })
    }
}

impl<T: Target + ?Sized> TargetExt for T {}

async fn read_limited(mut stream: GetStream, limit: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.try_next().await? {
        if buf.len() + chunk.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file is larger than the {limit} bytes expected"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

macro_rules! forward_target {
    ($ty:ty) => {
        impl<T: Target + ?Sized> Target for $ty {
            fn ensure_folder(&self) -> BoxFuture<'_, Result<()>> {
                (**self).ensure_folder()
            }
            fn put_opts<'a>(
                &'a self,
                name: &'a str,
                body: PutBody,
                len: Option<u64>,
                mode: PutMode,
            ) -> BoxFuture<'a, Result<()>> {
                (**self).put_opts(name, body, len, mode)
            }
            fn md5<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String>> {
                (**self).md5(name)
            }
            fn list(&self) -> BoxFuture<'_, Result<Vec<RemoteEntry>>> {
                (**self).list()
            }
            fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<GetStream>> {
                (**self).get(name)
            }
            fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<()>> {
                (**self).rename(from, to)
            }
            fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
                (**self).delete(name)
            }
        }
    };
}

forward_target!(Arc<T>);
forward_target!(Box<T>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_accepted() {
        for name in ["a", ".lock", "job-20260101T000000Z.tar.zst.001", "a..b"] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn paths_and_dots_are_refused() {
        for name in ["", ".", "..", "a/b", "/a", "a\\b", "a\0b", "a\nb"] {
            let err = validate_name(name).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidName, "{name:?}");
        }
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        let ctx = Context::new("memory", Operation::Put, "x");
        assert!(Error::new(ErrorKind::Transient, ctx.clone(), None).is_retryable());
        assert!(!Error::new(ErrorKind::NoSpace, ctx, None).is_retryable());
    }

    #[test]
    fn errors_say_what_and_where() {
        let ctx = Context::new("dsm:/backup/pc", Operation::Rename, "a.partial");
        let err = Error::new(ErrorKind::AlreadyExists, ctx, None);
        assert_eq!(
            err.to_string(),
            "rename \"a.partial\" in dsm:/backup/pc: already exists"
        );
    }

    #[tokio::test]
    async fn collect_body_checks_the_length() {
        let ctx = Context::new("memory", Operation::Put, "x");
        let body = body_from_bytes(Bytes::from_static(b"abc"));
        let err = collect_body(&ctx, body, Some(4)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LengthMismatch);
    }
}

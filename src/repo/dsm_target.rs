//! [`DsmTarget`]: the [`Target`] of a job folder `/<share>/<path>/<job>` on a
//! Synology NAS, through the DSM client.
//!
//! This adapter only translates: names to DSM paths, bodies to streamed
//! uploads, and [`dsm::Error`] values to
//! [`target::Error`](super::target::Error) kinds, in one place
//! ([`map_error`]). It knows no DSM JSON and no HTTP; the client does.
//!
//! DSM quirks that matter here:
//! - Upload without `overwrite` refuses an existing file (1805 or 414), which
//!   gives [`PutMode::Create`]; it is not atomic, see [`PutMode::Create`].
//! - Delete and rename report per-path codes inside 900/1200 errors
//!   (408 missing, 414 exists); the client exposes them and they are
//!   mapped like top-level codes.
//! - The MD5 is a background task on the NAS; [`DsmTarget::with_cancel`]
//!   lets a caller stop it.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::DateTime;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::layout::JobName;
use super::target::{
    BoxError, Context, Error, ErrorKind, GetStream, Operation, PutBody, PutMode, RemoteEntry,
    Result, Target, collect_body, validate_name,
};

/// Bodies up to this size are buffered and sent as bytes, which the client
/// may resend; larger ones stream once.
const SMALL_BODY: u64 = 1024 * 1024;
use crate::dsm::{self, Client, RemotePath, UploadBody, UploadOptions};

/// The job folder of one job on a NAS.
#[derive(Clone)]
pub struct DsmTarget {
    client: Client,
    folder: RemotePath,
    cancel: CancellationToken,
}

impl fmt::Debug for DsmTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DsmTarget")
            .field("folder", &self.folder.as_str())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for DsmTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dsm:{}", self.folder)
    }
}

impl DsmTarget {
    /// The folder `/<share>/<path>/<job>` through `client`. `path` is
    /// relative to the share and may be empty; the client normalises
    /// doubled and trailing slashes.
    ///
    /// # Errors
    /// [`dsm::Error::InvalidPath`] when the share or path cannot be used
    /// (`..`, empty share).
    pub fn new(client: Client, share: &str, path: &str, job: &JobName) -> dsm::Result<Self> {
        let base = RemotePath::new(share, path)?;
        let folder = base.join(job.as_str())?;
        Ok(Self {
            client,
            folder,
            cancel: CancellationToken::new(),
        })
    }

    /// The same target; NAS-side tasks (MD5) stop when `cancel` fires.
    #[must_use]
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// The job folder's DSM path.
    pub fn folder(&self) -> &str {
        self.folder.as_str()
    }

    /// The DSM client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn path(&self, name: &str) -> Result<String> {
        validate_name(name)?;
        Ok(format!("{}/{name}", self.folder))
    }

    fn fail(&self, op: Operation, name: &str, err: dsm::Error) -> Error {
        map_error(Context::new(self, op, name), err)
    }

    async fn upload(
        &self,
        name: &str,
        body: PutBody,
        len: Option<u64>,
        mode: PutMode,
    ) -> Result<()> {
        validate_name(name)?;
        let ctx = Context::new(self, Operation::Put, name);
        let watch = BodyWatch::default();
        let body = match len {
            // Small bodies (manifest, lock) are read first so that the
            // client can resend them after a busy answer or a re-login.
            Some(n) if n <= SMALL_BODY => UploadBody::Bytes(collect_body(&ctx, body, len).await?),
            _ => UploadBody::Stream {
                stream: watch.wrap(body, len),
                len,
            },
        };
        let mut opts = UploadOptions::overwrite();
        opts.overwrite = mode == PutMode::Overwrite;
        opts.create_parents = false;
        let result = self
            .client
            .upload(self.folder.as_str(), name, body, opts)
            .await;
        match (watch.take(), result) {
            (Some(BodyFault::Failed(source)), _) => Err(Error::Body { ctx, source }),
            (Some(BodyFault::Length { expected, actual }), _) => Err(Error::LengthMismatch {
                ctx,
                expected,
                actual,
            }),
            (None, Ok(())) => Ok(()),
            (None, Err(err)) => Err(map_error(ctx, err)),
        }
    }

    async fn list_entries(&self) -> Result<Vec<RemoteEntry>> {
        let entries = self
            .client
            .list(self.folder.as_str())
            .await
            .map_err(|e| self.fail(Operation::List, "", e))?;
        let folder = self.folder.as_str().trim_end_matches('/');
        Ok(entries
            .into_iter()
            .filter(|e| {
                // A broken or hostile NAS may list `..`, names with
                // separators, or entries of another folder: they are not
                // ours, so they are never followed, renamed or deleted.
                let ours = validate_name(&e.name).is_ok()
                    && (e.path.is_empty() || e.path == format!("{folder}/{}", e.name));
                if !ours {
                    tracing::warn!(name = %e.name, path = %e.path, folder, "ignoring a listed entry that is not a plain name in the job folder");
                }
                ours
            })
            .map(remote_entry)
            .collect())
    }
}

fn remote_entry(e: dsm::FileEntry) -> RemoteEntry {
    let entry = if e.is_dir {
        RemoteEntry::dir(e.name)
    } else {
        RemoteEntry::file(e.name, e.size.unwrap_or(0))
    };
    match e.mtime.and_then(|s| DateTime::from_timestamp(s, 0)) {
        Some(mtime) => entry.with_mtime(mtime),
        None => entry,
    }
}

/// Turns a DSM error into a target error of the right kind, keeping it as
/// the source.
///
/// 408 → not found; 414/1805 → already exists; 105/407 → permission
/// denied; 415 → quota; 416 → no space; refused logins → unauthenticated;
/// network trouble, 5xx, time-outs, busy codes and lost sessions (106, 107,
/// 119: the client logs in again on the next call, but cannot resend a
/// stream itself) → transient; the rest → other.
pub fn map_error(ctx: Context, err: dsm::Error) -> Error {
    let kind = if err.is_not_found() {
        ErrorKind::NotFound
    } else if err.is_already_exists() {
        ErrorKind::AlreadyExists
    } else if err.is_permission_denied() {
        ErrorKind::PermissionDenied
    } else if has_code(&err, 415) {
        ErrorKind::QuotaExceeded
    } else if has_code(&err, 416) {
        ErrorKind::NoSpace
    } else if err.is_auth() {
        ErrorKind::Unauthenticated
    } else if err.is_transient() || err.is_unreachable() || err.is_session_lost() {
        ErrorKind::Transient
    } else {
        ErrorKind::Other
    };
    let source: BoxError = Box::new(err);
    match kind {
        ErrorKind::Other => Error::Other {
            backend: "dsm",
            ctx,
            source,
        },
        kind => Error::new(kind, ctx, Some(source)),
    }
}

/// True when `code` is the error's DSM code or one of its per-path codes.
fn has_code(err: &dsm::Error, code: i64) -> bool {
    match err {
        dsm::Error::Api {
            code: top, errors, ..
        } => *top == code || errors.0.iter().any(|e| e.code == code),
        _ => false,
    }
}

/// What went wrong on our side of an upload body.
#[derive(Debug)]
enum BodyFault {
    Failed(io::Error),
    Length { expected: u64, actual: u64 },
}

/// Watches an upload body: counts bytes against the announced length and
/// keeps the body's own error, so a failed upload can be blamed on the body
/// rather than on the NAS.
#[derive(Clone, Default)]
struct BodyWatch {
    fault: Arc<Mutex<Option<BodyFault>>>,
}

impl BodyWatch {
    fn record(&self, fault: BodyFault) {
        let mut slot = self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert(fault);
    }

    fn take(&self) -> Option<BodyFault> {
        self.fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The body, failing (and recording why) when it errors, yields more
    /// than `len` bytes, or ends short of `len`.
    fn wrap(&self, body: PutBody, len: Option<u64>) -> PutBody {
        let seen = Arc::new(AtomicU64::new(0));
        let (watch, end_watch, end_seen) = (self.clone(), self.clone(), seen.clone());
        let counted = body.map(move |chunk| match chunk {
            Ok(bytes) => {
                let n = bytes.len() as u64;
                let total = seen.fetch_add(n, Ordering::Relaxed) + n;
                match len.filter(|expected| total > *expected) {
                    Some(expected) => {
                        watch.record(BodyFault::Length {
                            expected,
                            actual: total,
                        });
                        Err(io::Error::other("upload body longer than announced"))
                    }
                    None => Ok(bytes),
                }
            }
            Err(err) => {
                watch.record(BodyFault::Failed(err));
                Err(io::Error::other("upload body failed"))
            }
        });
        let end = stream::once(async move {
            let actual = end_seen.load(Ordering::Relaxed);
            let expected = len.filter(|expected| actual < *expected)?;
            end_watch.record(BodyFault::Length { expected, actual });
            Some(Err(io::Error::other("upload body shorter than announced")))
        })
        .filter_map(std::future::ready);
        counted.chain(end).boxed()
    }
}

impl Target for DsmTarget {
    fn ensure_folder(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (parent, name) = match self.folder.parent() {
                Some(parent) => (parent, self.folder.name().to_owned()),
                None => return Ok(()),
            };
            self.client
                .create_folder(parent.as_str(), &name, true)
                .await
                .map_err(|e| self.fail(Operation::EnsureFolder, "", e))
        })
    }

    fn put_opts<'a>(
        &'a self,
        name: &'a str,
        body: PutBody,
        len: Option<u64>,
        mode: PutMode,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.upload(name, body, len, mode))
    }

    fn md5<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let path = self.path(name)?;
            self.client
                .md5(&path, &self.cancel)
                .await
                .map_err(|e| self.fail(Operation::Md5, name, e))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RemoteEntry>>> {
        Box::pin(self.list_entries())
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<GetStream>> {
        Box::pin(async move {
            let path = self.path(name)?;
            self.client
                .download_stream(&path)
                .await
                .map_err(|e| self.fail(Operation::Get, name, e))
        })
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.path(from)?;
            validate_name(to)?;
            if from == to {
                return Ok(());
            }
            self.client
                .rename(&path, to)
                .await
                .map_err(|e| self.fail(Operation::Rename, from, e))
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.path(name)?;
            self.client
                .delete(&[path.as_str()], false)
                .await
                .map_err(|e| self.fail(Operation::Delete, name, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::TryStreamExt;

    async fn drain(watch: &BodyWatch, body: PutBody, len: Option<u64>) -> io::Result<Vec<Bytes>> {
        watch.wrap(body, len).try_collect().await
    }

    fn body(parts: &[&'static [u8]]) -> PutBody {
        let items: Vec<io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        stream::iter(items).boxed()
    }

    #[tokio::test]
    async fn body_watch_passes_exact_bodies() {
        let watch = BodyWatch::default();
        let got = drain(&watch, body(&[b"ab", b"c"]), Some(3)).await.unwrap();
        assert_eq!(got.concat(), b"abc");
        assert!(watch.take().is_none());
        assert!(drain(&watch, body(&[b"ab"]), None).await.is_ok());
    }

    #[tokio::test]
    async fn body_watch_catches_wrong_lengths() {
        let watch = BodyWatch::default();
        assert!(drain(&watch, body(&[b"ab"]), Some(3)).await.is_err());
        assert!(matches!(
            watch.take(),
            Some(BodyFault::Length {
                expected: 3,
                actual: 2
            })
        ));
        assert!(drain(&watch, body(&[b"ab", b"cd"]), Some(3)).await.is_err());
        assert!(matches!(
            watch.take(),
            Some(BodyFault::Length { actual: 4, .. })
        ));
    }

    #[tokio::test]
    async fn body_watch_keeps_the_body_error() {
        let watch = BodyWatch::default();
        let failing = stream::iter(vec![
            Ok(Bytes::from_static(b"a")),
            Err(io::Error::other("gone")),
        ]);
        assert!(drain(&watch, failing.boxed(), None).await.is_err());
        match watch.take() {
            Some(BodyFault::Failed(e)) => assert_eq!(e.to_string(), "gone"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dsm_codes_map_to_kinds() {
        let ctx = || Context::new("dsm:/backup/x", Operation::Put, "a");
        let api = |code| dsm::Error::Api {
            api: "SYNO.FileStation.Upload".into(),
            method: "upload".into(),
            code,
            meaning: "m",
            errors: dsm::FileErrors::default(),
        };
        for (code, kind) in [
            (408, ErrorKind::NotFound),
            (414, ErrorKind::AlreadyExists),
            (1805, ErrorKind::AlreadyExists),
            (105, ErrorKind::PermissionDenied),
            (407, ErrorKind::PermissionDenied),
            (415, ErrorKind::QuotaExceeded),
            (416, ErrorKind::NoSpace),
            (119, ErrorKind::Transient),
            (117, ErrorKind::Transient),
            (1800, ErrorKind::Other),
        ] {
            assert_eq!(map_error(ctx(), api(code)).kind(), kind, "code {code}");
        }
        let status = dsm::Error::Status {
            api: "a".into(),
            method: "m".into(),
            status: 502,
        };
        assert!(map_error(ctx(), status).is_retryable());
    }
}

//! Uploads and downloads: streamed, with an idle timeout instead of a total
//! one, so memory stays bounded and a multi-hour transfer is fine as long
//! as bytes keep moving.
//!
//! Upload (`SYNO.FileStation.Upload`): multipart form, fields first, the
//! `file` part last with a filename. Bodies of known length carry a
//! `Content-Length`; a body of unknown length goes chunked, unless this NAS
//! already refused chunked bodies with code 1800 (remembered per client).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use reqwest::multipart::{Form, Part};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::api;
use super::client::{Attempts, Client, Session, check_status, read_reply, with_token};
use super::error::{Error, Result};
use super::params::{Format, Params};
use super::path::{RemotePath, check_name};
use super::wire::decode;

/// A stream of bytes, as uploads take and downloads give.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Read buffer for file uploads.
const FILE_CHUNK: usize = 256 * 1024;

/// What to upload.
#[non_exhaustive]
pub enum UploadBody {
    /// A local file of known length (re-read from the start on a retry).
    File {
        /// The local file.
        path: PathBuf,
        /// Its length in bytes; checked before sending.
        len: u64,
    },
    /// Bytes in memory.
    Bytes(Bytes),
    /// A stream, sent once (no retry): chunked when `len` is `None`.
    Stream {
        /// The data.
        stream: ByteStream,
        /// The exact length, when known.
        len: Option<u64>,
    },
}

impl std::fmt::Debug for UploadBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { path, len } => f
                .debug_struct("File")
                .field("path", path)
                .field("len", len)
                .finish(),
            Self::Bytes(b) => f.debug_tuple("Bytes").field(&b.len()).finish(),
            Self::Stream { len, .. } => f
                .debug_struct("Stream")
                .field("len", len)
                .finish_non_exhaustive(),
        }
    }
}

/// Options of an upload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadOptions {
    /// Replace an existing file. Without it, an existing target is an error (1805/414).
    pub overwrite: bool,
    /// Modification time to set, Unix milliseconds.
    pub mtime_ms: Option<i64>,
    /// Create missing parent folders.
    pub create_parents: bool,
}

impl UploadOptions {
    /// Options that overwrite and create parents.
    pub fn overwrite() -> Self {
        Self {
            overwrite: true,
            mtime_ms: None,
            create_parents: true,
        }
    }
}

impl Client {
    /// Uploads a body as `folder/name`.
    ///
    /// `File` and `Bytes` bodies are retried on transient failures and after
    /// a re-login; a `Stream` is sent once.
    ///
    /// # Errors
    /// [`Error::LengthRequired`] when the NAS refuses chunked bodies and the
    /// stream has no length; [`Error::Api`] (e.g. 1805 exists, 416 no space);
    /// [`Error::Timeout`] when nothing moved for the idle timeout;
    /// [`Error::Io`] when the local file cannot be read or has another length.
    ///
    /// # Cancel safety
    /// Dropping the future aborts the transfer; DSM discards a partial upload
    /// or leaves a partial file that a later overwrite replaces.
    #[tracing::instrument(level = "debug", skip_all, fields(folder = %folder, name = %name))]
    pub async fn upload(
        &self,
        folder: &str,
        name: &str,
        body: UploadBody,
        opts: UploadOptions,
    ) -> Result<()> {
        let folder = RemotePath::parse(folder)?;
        check_name(name, name)?;
        let target = folder.join(name)?;
        let started = Instant::now();
        let bytes = match body {
            UploadBody::Stream { stream, len } => {
                self.upload_stream(&folder, &target, stream, len, opts)
                    .await?
            }
            UploadBody::Bytes(bytes) => {
                let len = bytes.len() as u64;
                let make = || Ok((Body::Once(Some(bytes.clone())), Some(len)));
                self.upload_repeatable(&folder, &target, opts, make).await?
            }
            UploadBody::File { path, len } => {
                let make = || Ok((Body::File(path.clone(), len), Some(len)));
                self.upload_repeatable(&folder, &target, opts, make).await?
            }
        };
        tracing::debug!(path = %target, bytes, elapsed_ms = started.elapsed().as_millis() as u64, "uploaded");
        Ok(())
    }

    async fn upload_repeatable<F>(
        &self,
        folder: &RemotePath,
        target: &RemotePath,
        opts: UploadOptions,
        make: F,
    ) -> Result<u64>
    where
        F: Fn() -> Result<(Body, Option<u64>)>,
    {
        self.run(api::UPLOAD, "upload", Attempts::Retry, |session| {
            let made = make();
            async move {
                let (body, len) = made?;
                self.upload_once(
                    folder,
                    target,
                    opts,
                    body.into_stream().await?,
                    len,
                    &session,
                )
                .await
            }
        })
        .await
    }

    async fn upload_stream(
        &self,
        folder: &RemotePath,
        target: &RemotePath,
        stream: ByteStream,
        len: Option<u64>,
        opts: UploadOptions,
    ) -> Result<u64> {
        if len.is_none() && self.refuses_chunked_uploads() {
            return Err(Error::LengthRequired {
                path: target.to_string(),
            });
        }
        let mut stream = Some(stream);
        self.run(api::UPLOAD, "upload", Attempts::Once, |session| {
            let stream = stream.take();
            async move {
                let stream = stream.ok_or_else(|| Error::LengthRequired {
                    path: target.to_string(),
                })?;
                self.upload_once(folder, target, opts, stream, len, &session)
                    .await
            }
        })
        .await
    }

    /// One multipart upload request.
    async fn upload_once(
        &self,
        folder: &RemotePath,
        target: &RemotePath,
        opts: UploadOptions,
        stream: ByteStream,
        len: Option<u64>,
        session: &Session,
    ) -> Result<u64> {
        let endpoint = self.inner.apis.get(api::UPLOAD)?;
        let progress = Progress::new();
        let counted = CountingStream {
            inner: stream,
            progress: progress.clone(),
        };
        let body = reqwest::Body::wrap_stream(counted);
        let part = match len {
            Some(len) => Part::stream_with_length(body, len),
            None => Part::stream(body),
        };
        let part = part
            .file_name(target.name().to_owned())
            .mime_str("application/octet-stream")
            .map_err(|e| Error::http(api::UPLOAD, "upload", e))?;
        let mut form = Form::new().text("_sid", session.sid.expose().to_owned());
        // Multipart text fields go plain whatever `requestFormat` says: that is
        // what DSM's own web client and every published example send.
        for (key, value) in upload_fields(endpoint.version, folder, &opts).encode(Format::Plain) {
            form = form.text(key, value);
        }
        let form = form.part("file", part);
        let version = endpoint.version.to_string();
        let query = [
            ("api", api::UPLOAD),
            ("version", version.as_str()),
            ("method", "upload"),
        ];
        let request = self
            .inner
            .http
            .post(self.url(endpoint))
            .query(&query)
            .multipart(form);
        let request = with_token(request, Some(session));
        let idle = self.inner.timeouts.idle;
        let response = watch_idle(request.send(), &progress, idle, api::UPLOAD, "upload").await?;
        check_upload_status(target, response.status())?;
        let reply = tokio::time::timeout(idle, read_reply(response, api::UPLOAD, "upload"))
            .await
            .map_err(|_| timeout(api::UPLOAD, "upload", idle))??;
        match decode::<serde_json::Value>(api::UPLOAD, "upload", &reply) {
            Ok(_) => Ok(progress.bytes()),
            Err(err) if err.dsm_code() == Some(1800) && len.is_none() => {
                self.inner.chunked_refused.store(true, Ordering::Relaxed);
                tracing::warn!(path = %target, "the NAS refuses uploads of unknown length (1800); sending known lengths from now on");
                Err(Error::LengthRequired {
                    path: target.to_string(),
                })
            }
            Err(err) => Err(err),
        }
    }

    /// Downloads a file into `out`, returning the byte count (checked
    /// against Content-Length when the NAS sends one).
    ///
    /// # Errors
    /// [`Error::NotFound`] when the NAS answers 404; [`Error::LengthMismatch`]
    /// when fewer or more bytes arrive; [`Error::Timeout`] when nothing moves
    /// for the idle timeout; [`Error::Io`] when `out` fails.
    ///
    /// # Cancel safety
    /// Dropping the future stops the download; `out` holds a prefix.
    #[tracing::instrument(level = "debug", skip_all, fields(path = %path))]
    pub async fn download(&self, path: &str, mut out: impl AsyncWrite + Unpin) -> Result<u64> {
        let mut stream = self.download_stream(path).await?;
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| download_error(path, e))?;
            total += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(|source| Error::Io {
                what: format!("writing download of {path}"),
                source,
            })?;
        }
        out.flush().await.map_err(|source| Error::Io {
            what: format!("writing download of {path}"),
            source,
        })?;
        tracing::debug!(bytes = total, "downloaded");
        Ok(total)
    }

    /// Starts a download and returns its body as a stream. The stream yields
    /// an error when nothing arrives for the idle timeout or when the byte
    /// count differs from Content-Length.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the NAS answers 404, or any [`Error`] from
    /// the request (retried and re-logged-in like other calls).
    ///
    /// # Cancel safety
    /// Safe to drop.
    pub async fn download_stream(&self, path: &str) -> Result<ByteStream> {
        let path = RemotePath::parse(path)?;
        let endpoint = self.inner.apis.get(api::DOWNLOAD)?.clone();
        let idle = self.inner.timeouts.idle;
        let response = self
            .run(api::DOWNLOAD, "download", Attempts::Retry, |session| {
                let endpoint = endpoint.clone();
                let path = path.clone();
                async move {
                    let params = Params::new()
                        .list("path", [path.as_str()])
                        .str("mode", "download");
                    let request = self.form_request(&endpoint, "download", &params, Some(&session));
                    let response = tokio::time::timeout(idle, request.send())
                        .await
                        .map_err(|_| timeout(api::DOWNLOAD, "download", idle))?
                        .map_err(|e| Error::http(api::DOWNLOAD, "download", e))?;
                    download_response(&path, response, idle).await
                }
            })
            .await?;
        let expected = response.content_length();
        let body = response
            .bytes_stream()
            .map(|r| r.map_err(|e| std::io::Error::other(e.without_url())));
        Ok(checked_stream(
            body.boxed(),
            idle,
            expected,
            path.to_string(),
        ))
    }
}

/// HTTP 413 (proxy) and 504 (DSM's front-end giving up on a huge body) mean
/// the request is too large: sending it again would fail again.
fn check_upload_status(target: &RemotePath, status: reqwest::StatusCode) -> Result<()> {
    match status.as_u16() {
        413 | 504 => Err(Error::UploadTooLarge {
            path: target.to_string(),
            status: status.as_u16(),
        }),
        _ => check_status(api::UPLOAD, "upload", status),
    }
}

/// The multipart fields before the file part, in DSM's order.
fn upload_fields(version: u32, folder: &RemotePath, opts: &UploadOptions) -> Params {
    let mut params = Params::new()
        .str("path", folder.as_str())
        .bool("create_parents", opts.create_parents);
    if opts.overwrite {
        // v2 takes true/false; v3 (DSM 7) takes overwrite/skip. Without the
        // field an existing target is an error, which is what we want.
        params = if version >= 3 {
            params.str("overwrite", "overwrite")
        } else {
            params.bool("overwrite", true)
        };
    }
    if let Some(mtime) = opts.mtime_ms {
        params = params.int("mtime", mtime);
    }
    params
}

/// Sorts out the download reply: 404, other statuses, or a JSON error
/// envelope (DSM's answer to an expired session) instead of the file.
async fn download_response(
    path: &RemotePath,
    response: reqwest::Response,
    idle: Duration,
) -> Result<reqwest::Response> {
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(Error::NotFound {
            path: path.to_string(),
        });
    }
    check_status(api::DOWNLOAD, "download", response.status())?;
    if !is_json_error_reply(&response) {
        return Ok(response);
    }
    let body = tokio::time::timeout(idle, read_reply(response, api::DOWNLOAD, "download"))
        .await
        .map_err(|_| timeout(api::DOWNLOAD, "download", idle))??;
    match decode::<serde_json::Value>(api::DOWNLOAD, "download", &body) {
        Err(err) if err.is_not_found() => Err(Error::NotFound {
            path: path.to_string(),
        }),
        Err(err) => Err(err),
        Ok(_) => Err(Error::Task {
            api: api::DOWNLOAD.to_owned(),
            path: path.to_string(),
            reason: "the NAS answered with JSON instead of the file".into(),
        }),
    }
}

/// A JSON reply without `Content-Disposition` is DSM reporting an error; a
/// real file (even a `.json` one) comes as an attachment.
fn is_json_error_reply(response: &reqwest::Response) -> bool {
    let headers = response.headers();
    let json = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    json && !headers.contains_key(reqwest::header::CONTENT_DISPOSITION)
}

fn timeout(api: &str, method: &str, after: Duration) -> Error {
    Error::Timeout {
        api: api.to_owned(),
        method: method.to_owned(),
        after,
    }
}

fn download_error(path: &str, e: std::io::Error) -> Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::LengthMismatch {
            expected, actual, ..
        }) => Error::LengthMismatch {
            path: path.to_owned(),
            expected: *expected,
            actual: *actual,
        },
        Some(Error::Timeout { after, .. }) => timeout(api::DOWNLOAD, "download", *after),
        _ => Error::Io {
            what: format!("receiving download of {path}"),
            source: e,
        },
    }
}

/// Wraps a download body: idle timeout per chunk, byte count checked
/// against `expected` as soon as it is passed, and at the end.
fn checked_stream(
    inner: ByteStream,
    idle: Duration,
    expected: Option<u64>,
    path: String,
) -> ByteStream {
    let state = (inner, 0u64, false);
    futures_util::stream::unfold(state, move |(mut inner, count, done)| {
        let path = path.clone();
        async move {
            if done {
                return None;
            }
            match tokio::time::timeout(idle, inner.next()).await {
                Err(_) => Some((
                    Err(std::io::Error::other(timeout(
                        api::DOWNLOAD,
                        "download",
                        idle,
                    ))),
                    (inner, count, true),
                )),
                Ok(Some(Ok(chunk))) => {
                    let count = count + chunk.len() as u64;
                    match expected {
                        // More than announced: stop at once, whatever follows.
                        Some(expected) if count > expected => {
                            let err = Error::LengthMismatch {
                                path,
                                expected,
                                actual: count,
                            };
                            Some((Err(std::io::Error::other(err)), (inner, count, true)))
                        }
                        _ => Some((Ok(chunk), (inner, count, false))),
                    }
                }
                Ok(Some(Err(e))) => Some((Err(e), (inner, count, true))),
                Ok(None) => match expected {
                    Some(expected) if expected != count => {
                        let err = Error::LengthMismatch {
                            path,
                            expected,
                            actual: count,
                        };
                        Some((Err(std::io::Error::other(err)), (inner, count, true)))
                    }
                    _ => None,
                },
            }
        }
    })
    .boxed()
}

/// Where an upload body comes from, re-creatable for retries.
enum Body {
    Once(Option<Bytes>),
    File(PathBuf, u64),
}

impl Body {
    async fn into_stream(self) -> Result<ByteStream> {
        match self {
            Self::Once(bytes) => Ok(futures_util::stream::iter(bytes.map(Ok)).boxed()),
            Self::File(path, len) => {
                let what = || format!("reading {}", path.display());
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|source| Error::Io {
                        what: what(),
                        source,
                    })?;
                let actual = file
                    .metadata()
                    .await
                    .map_err(|source| Error::Io {
                        what: what(),
                        source,
                    })?
                    .len();
                if actual != len {
                    let msg = format!("the file has {actual} bytes, the upload was given {len}");
                    return Err(Error::Io {
                        what: what(),
                        source: std::io::Error::other(msg),
                    });
                }
                Ok(tokio_util::io::ReaderStream::with_capacity(file, FILE_CHUNK).boxed())
            }
        }
    }
}

/// Bytes moved and when the last one moved, shared between the body and the watchdog.
#[derive(Clone)]
struct Progress {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Counts bytes as the HTTP client pulls them.
struct CountingStream {
    inner: ByteStream,
    progress: Progress,
}

impl Stream for CountingStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => self.progress.touch(chunk.len()),
            Poll::Ready(None) => self.progress.touch(0),
            _ => {}
        }
        polled
    }
}

/// Runs `fut` but fails with [`Error::Timeout`] once no byte has moved for `idle`.
async fn watch_idle<T>(
    fut: impl std::future::Future<Output = reqwest::Result<T>>,
    progress: &Progress,
    idle: Duration,
    api: &str,
    method: &str,
) -> Result<T> {
    let check_every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let watchdog = async {
        loop {
            tokio::time::sleep(check_every).await;
            if progress.idle_for() >= idle {
                return;
            }
        }
    };
    tokio::select! {
        result = fut => result.map_err(|e| Error::http(api, method, e)),
        () = watchdog => Err(timeout(api, method, idle)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_fields_follow_the_version() {
        let folder = RemotePath::parse("/backup/x").unwrap();
        let opts = UploadOptions {
            overwrite: true,
            mtime_ms: Some(1_700_000_000_000),
            create_parents: true,
        };
        let v2 = upload_fields(2, &folder, &opts).encode(Format::Plain);
        assert_eq!(
            v2,
            vec![
                ("path", "/backup/x".to_owned()),
                ("create_parents", "true".to_owned()),
                ("overwrite", "true".to_owned()),
                ("mtime", "1700000000000".to_owned()),
            ]
        );
        let v3 = upload_fields(3, &folder, &opts).encode(Format::Plain);
        assert_eq!(v3[2], ("overwrite", "overwrite".to_owned()));
        let no = upload_fields(3, &folder, &UploadOptions::default()).encode(Format::Plain);
        assert!(no.iter().all(|(k, _)| *k != "overwrite" && *k != "mtime"));
    }

    #[tokio::test]
    async fn checked_stream_detects_short_bodies_and_idle() {
        let chunks = futures_util::stream::iter(vec![Ok(Bytes::from_static(b"abc"))]).boxed();
        let mut s = checked_stream(chunks, Duration::from_secs(5), Some(5), "/b/x".into());
        assert!(s.next().await.unwrap().is_ok());
        let err = s.next().await.unwrap().unwrap_err();
        assert!(matches!(
            download_error("/b/x", err),
            Error::LengthMismatch {
                expected: 5,
                actual: 3,
                ..
            }
        ));
        assert!(s.next().await.is_none());

        let stalled = futures_util::stream::pending().boxed();
        let mut s = checked_stream(stalled, Duration::from_millis(20), None, "/b/x".into());
        let err = s.next().await.unwrap().unwrap_err();
        assert!(matches!(download_error("/b/x", err), Error::Timeout { .. }));
    }

    #[tokio::test]
    async fn checked_stream_stops_at_the_first_byte_past_the_length() {
        // Endless: a body that never ends must be refused, not drained.
        let endless = futures_util::stream::repeat_with(|| Ok(Bytes::from_static(b"abcd"))).boxed();
        let mut s = checked_stream(endless, Duration::from_secs(5), Some(6), "/b/x".into());
        assert!(s.next().await.unwrap().is_ok());
        let err = s.next().await.unwrap().unwrap_err();
        assert!(matches!(
            download_error("/b/x", err),
            Error::LengthMismatch {
                expected: 6,
                actual: 8,
                ..
            }
        ));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn watchdog_fires_only_when_idle() {
        let progress = Progress::new();
        let slow_but_moving = async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                progress.touch(1);
            }
            Ok::<_, reqwest::Error>(7)
        };
        let idle = Duration::from_millis(80);
        assert_eq!(
            watch_idle(slow_but_moving, &progress, idle, "a", "m")
                .await
                .unwrap(),
            7
        );
        let stuck = std::future::pending::<reqwest::Result<()>>();
        let err = watch_idle(stuck, &Progress::new(), Duration::from_millis(30), "a", "m")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }));
    }

    #[tokio::test]
    async fn file_body_checks_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let mut s = Body::File(path.clone(), 5).into_stream().await.unwrap();
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            Bytes::from_static(b"hello")
        );
        assert!(Body::File(path, 6).into_stream().await.is_err());
    }
}

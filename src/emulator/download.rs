//! `SYNO.FileStation.Download`: the file's bytes, streamed from disk.
//! Anything wrong with the path is a plain HTTP 404, as on DSM.

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use futures_util::{StreamExt, stream};
use tokio_util::io::ReaderStream;

use super::{FaultHandle, Shared, body::paced, params::Params, reply::http_error};

/// Read size of the download stream.
const CHUNK: usize = 256 * 1024;

/// How aimed faults change one download's body.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tamper {
    /// Flip one byte of the first chunk (the corrupted-bytes fault).
    pub corrupt: bool,
    /// Cut the connection after this many bytes.
    pub cut_after: Option<u64>,
    /// Send this many filler bytes after the file, announced.
    pub extra: u64,
    /// Send filler bytes after the file for ever, no length announced.
    pub endless: bool,
}

/// Answers a download of `path` (one file; folders and several paths, which
/// DSM answers with a zip, are 404 here), changed as `tamper` says.
pub(crate) async fn download(shared: &Shared, params: &Params, tamper: Tamper) -> (Response, u64) {
    let paths = params.list("path").unwrap_or_default();
    let [path] = paths.as_slice() else {
        return (http_error(StatusCode::NOT_FOUND), 0);
    };
    let Ok(resolved) = shared.fs.shares.resolve(path) else {
        return (http_error(StatusCode::NOT_FOUND), 0);
    };
    let Ok(file) = tokio::fs::File::open(&resolved.fs).await else {
        return (http_error(StatusCode::NOT_FOUND), 0);
    };
    let len = match file.metadata().await {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return (http_error(StatusCode::NOT_FOUND), 0),
    };
    let stream = paced(
        ReaderStream::with_capacity(file, CHUNK),
        shared.faults.get().slow_kib_per_sec,
    );
    let stream = faulty(Box::pin(stream), shared.faults.clone(), tamper.corrupt);
    let stream = reshaped(stream, tamper);
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if !tamper.endless {
        let announced = len.saturating_add(tamper.extra);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(announced));
    }
    if let Ok(value) = HeaderValue::from_str(&disposition(resolved.name())) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    (response, len)
}

/// Applies the corrupt fault and the download hold point to a stream.
fn faulty<S>(
    inner: S,
    faults: FaultHandle,
    corrupt: bool,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Send + Unpin
where
    S: futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Send + Unpin + 'static,
{
    let state = (inner, faults, corrupt, false);
    Box::pin(stream::unfold(
        state,
        |(mut inner, faults, corrupt, held)| async move {
            if held {
                faults.hold().await;
                return Some((
                    Err(std::io::Error::other("held download released")),
                    (inner, faults, false, true),
                ));
            }
            let mut bytes = match inner.next().await? {
                Ok(bytes) => bytes,
                Err(err) => return Some((Err(err), (inner, faults, corrupt, held))),
            };
            let mut corrupt = corrupt;
            if corrupt && !bytes.is_empty() {
                let mut flipped = bytes.to_vec();
                let mid = flipped.len() / 2;
                flipped[mid] ^= 0xff;
                bytes = flipped.into();
                corrupt = false;
            }
            let len = bytes.len() as u64;
            let pass = faults.pass(false, len);
            let held = pass < len;
            if held {
                bytes.truncate(usize::try_from(pass).unwrap_or(0));
            }
            Some((Ok(bytes), (inner, faults, corrupt, held)))
        },
    ))
}

/// Where [`reshaped`] is in the body.
enum Part {
    File,
    /// Filler bytes still to send (`u64::MAX`: for ever).
    Filler(u64),
    Done,
}

/// Applies the cut and the extra bytes of `tamper` to a body.
fn reshaped<S>(
    inner: S,
    tamper: Tamper,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Send + Unpin
where
    S: futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Send + Unpin + 'static,
{
    let filler = axum::body::Bytes::from(vec![b'Z'; CHUNK]);
    let cut = move |sent: u64| tamper.cut_after.filter(|at| sent >= *at);
    Box::pin(stream::unfold(
        (inner, 0u64, Part::File),
        move |(mut inner, sent, part)| {
            let filler = filler.clone();
            async move {
                if matches!(part, Part::Done) {
                    return None;
                }
                if cut(sent).is_some() {
                    // Let what was sent reach the client first, as on a
                    // link that dies mid-transfer.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    let err = std::io::Error::other("download cut by an aimed fault");
                    return Some((Err(err), (inner, sent, Part::Done)));
                }
                let (mut bytes, next) = match part {
                    Part::Done => return None,
                    Part::File => match inner.next().await {
                        Some(Ok(bytes)) => (bytes, Part::File),
                        Some(Err(err)) => return Some((Err(err), (inner, sent, Part::Done))),
                        None if tamper.endless => {
                            (axum::body::Bytes::new(), Part::Filler(u64::MAX))
                        }
                        None if tamper.extra > 0 => {
                            (axum::body::Bytes::new(), Part::Filler(tamper.extra))
                        }
                        None => return None,
                    },
                    Part::Filler(0) => return None,
                    Part::Filler(left) => {
                        let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                        let left = if left == u64::MAX {
                            left
                        } else {
                            left - n as u64
                        };
                        (filler.slice(..n), Part::Filler(left))
                    }
                };
                if let Some(at) = tamper.cut_after {
                    let room = usize::try_from(at - sent).unwrap_or(usize::MAX);
                    bytes.truncate(room);
                }
                let sent = sent + bytes.len() as u64;
                Some((Ok(bytes), (inner, sent, next)))
            }
        },
    ))
}

/// `attachment; filename*=UTF-8''<percent-encoded name>`.
fn disposition(name: &str) -> String {
    let mut encoded = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b".-_~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename*=UTF-8''{encoded}")
}

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

/// Answers a download of `path` (one file; folders and several paths, which
/// DSM answers with a zip, are 404 here). With `corrupt`, one byte of the
/// first chunk is flipped (the corrupted-bytes fault).
pub(crate) async fn download(shared: &Shared, params: &Params, corrupt: bool) -> (Response, u64) {
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
    let stream = faulty(Box::pin(stream), shared.faults.clone(), corrupt);
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
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

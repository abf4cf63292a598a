//! `SYNO.FileStation.Download`: the file's bytes, streamed from disk.
//! Anything wrong with the path is a plain HTTP 404, as on DSM.

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use tokio_util::io::ReaderStream;

use super::{Shared, body::paced, params::Params, reply::http_error};

/// Read size of the download stream.
const CHUNK: usize = 256 * 1024;

/// Answers a download of `path` (one file; folders and several paths, which
/// DSM answers with a zip, are 404 here).
pub(crate) async fn download(shared: &Shared, params: &Params) -> (Response, u64) {
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

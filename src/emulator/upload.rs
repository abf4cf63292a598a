//! `SYNO.FileStation.Upload`: the file part is streamed into a temporary
//! file in the target folder and renamed over the target when complete.
//! Memory use does not depend on the file size.

use std::{
    io::{IoSlice, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
    time::{Duration, UNIX_EPOCH},
};

use axum::extract::multipart::Field;
use bytes::Bytes;
use rand::RngExt;
use serde_json::json;

use super::{
    Shared,
    files::{Totals, walk},
    params::Params,
    paths::{UPLOAD_TEMP_PREFIX, check_name},
    reply::{ApiResult, Fail, code},
};

/// What to do when the target exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overwrite {
    Replace,
    Skip,
    /// No `overwrite` field: DSM refuses with 1805.
    Refuse,
}

/// Reads `overwrite` per version: v1/v2 `true`/`false`, v3
/// `overwrite`/`skip`. Any other value is 400.
fn overwrite_mode(params: &Params, version: u32) -> Result<Overwrite, Fail> {
    let Some(value) = params.string("overwrite") else {
        return Ok(Overwrite::Refuse);
    };
    let mode = match (version >= 3, value.to_ascii_lowercase().as_str()) {
        (false, "true") | (true, "overwrite") => Overwrite::Replace,
        (false, "false") | (true, "skip") => Overwrite::Skip,
        _ => return Err(Fail::new(code::INVALID_PARAM)),
    };
    Ok(mode)
}

/// Reads and discards the rest of a part, so that the client gets to read
/// the answer instead of a reset connection.
pub(crate) async fn drain(field: &mut Field<'_>) {
    while let Ok(Some(_)) = field.chunk().await {}
}

/// A temporary upload file, removed unless kept.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where an upload goes.
struct Target {
    folder: PathBuf,
    file: PathBuf,
    name: String,
}

/// Handles one upload whose file part is `field`.
pub(crate) async fn upload(
    shared: &Shared,
    params: &Params,
    version: u32,
    mut field: Field<'_>,
    flip: bool,
) -> ApiResult {
    let target = match prepare(shared, params, version, &field) {
        Ok(Some(target)) => target,
        Ok(None) => {
            drain(&mut field).await;
            let name = field.file_name().unwrap_or_default().to_owned();
            return Ok(Some(
                json!({ "blSkip": true, "file": name, "pid": std::process::id(), "progress": 1 }),
            ));
        }
        Err(fail) => {
            drain(&mut field).await;
            return Err(fail);
        }
    };
    let budget = quota_budget(shared).await;
    let mut temp = TempFile {
        path: target.folder.join(format!(
            "{UPLOAD_TEMP_PREFIX}{:016x}.tmp",
            rand::rng().random::<u64>()
        )),
        keep: false,
    };
    stream_to(
        &temp.path,
        &mut field,
        budget,
        shared.faults.get().quota_code,
    )
    .await?;
    if let Some(Ok(ms)) = params.i64("mtime") {
        set_mtime(&temp.path, ms).await;
    }
    tokio::fs::rename(&temp.path, &target.file)
        .await
        .map_err(|_| Fail::new(code::IO))?;
    temp.keep = true;
    if flip || shared.faults.take_corrupt_upload() {
        corrupt(&target.file).await;
    }
    Ok(Some(
        json!({ "blSkip": false, "file": target.name, "pid": std::process::id(), "progress": 1 }),
    ))
}

/// Checks the fields: `Ok(None)` when the upload is skipped (`overwrite`
/// false/skip and the target exists).
fn prepare(
    shared: &Shared,
    params: &Params,
    version: u32,
    field: &Field<'_>,
) -> Result<Option<Target>, Fail> {
    let name = field
        .file_name()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Fail::new(code::UPLOAD_NO_FILENAME))?
        .to_owned();
    check_name(&name).map_err(Fail::new)?;
    let folder = params
        .single("path")
        .ok_or_else(|| Fail::new(code::MISSING_PARAMS))?;
    let overwrite = overwrite_mode(params, version)?;
    let create_parents = matches!(params.bool("create_parents"), Some(Ok(true)));
    let shares = &shared.fs.shares;
    let dir = shares.resolve(&folder).map_err(Fail::new)?;
    if !dir.fs.is_dir() {
        if !create_parents || dir.fs.exists() {
            return Err(Fail::new(code::NOT_FOUND));
        }
        std::fs::create_dir_all(&dir.fs).map_err(|_| Fail::new(code::IO))?;
    }
    let file = shares.child(&dir, &name).map_err(Fail::new)?;
    if let Ok(meta) = std::fs::symlink_metadata(&file.fs) {
        match overwrite {
            _ if meta.is_dir() => return Err(Fail::new(code::EXISTS)),
            Overwrite::Replace => {}
            Overwrite::Skip => return Ok(None),
            Overwrite::Refuse => return Err(Fail::new(code::UPLOAD_EXISTS)),
        }
    }
    Ok(Some(Target {
        folder: dir.fs,
        file: file.fs,
        name,
    }))
}

/// Bytes an upload may still store under the quota fault.
async fn quota_budget(shared: &Shared) -> Option<u64> {
    let limit = shared.faults.get().quota_bytes?;
    let root = shared.root.clone();
    let used = tokio::task::spawn_blocking(move || {
        let mut totals = Totals::default();
        walk(&root, &mut totals, &AtomicBool::new(false));
        totals.bytes
    })
    .await
    .unwrap_or(0);
    Some(limit.saturating_sub(used))
}

/// Streams the part into `path`. On any failure the file is left for the
/// caller's `TempFile` to remove.
async fn stream_to(
    path: &Path,
    field: &mut Field<'_>,
    budget: Option<u64>,
    quota_code: i32,
) -> Result<(), Fail> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|_| Fail::new(code::IO))?;
    let mut writer = BatchWriter::new(file);
    let mut written = 0u64;
    let mut batch = Batch::default();
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => return Err(Fail::new(code::UPLOAD_CANCELLED)),
        };
        written += chunk.len() as u64;
        if budget.is_some_and(|b| written > b) {
            drop(writer);
            drain(field).await;
            return Err(Fail::new(quota_code));
        }
        batch.push(chunk);
        if batch.len >= WRITE_BATCH {
            writer.start(std::mem::take(&mut batch)).await?;
        }
    }
    writer.start(batch).await?;
    writer.idle_file().await.map(drop)
}

/// Bytes gathered before one write to the upload's file.
const WRITE_BATCH: usize = 1 << 20;

/// Pieces of the body as they arrived (a few KiB each), not copied.
#[derive(Default)]
struct Batch {
    pieces: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, piece: Bytes) {
        // An empty piece would make the vectored write return 0.
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push(piece);
        }
    }
}

/// Writes batches on the blocking pool, one in flight while the next one
/// is received: a write per piece would be a trip to the pool per few KiB.
struct BatchWriter {
    file: Option<std::fs::File>,
    busy: Option<tokio::task::JoinHandle<std::io::Result<std::fs::File>>>,
}

impl BatchWriter {
    fn new(file: std::fs::File) -> Self {
        Self {
            file: Some(file),
            busy: None,
        }
    }

    /// The file, once the write in flight (if any) is done.
    async fn idle_file(&mut self) -> Result<std::fs::File, Fail> {
        let io = || Fail::new(code::IO);
        match self.busy.take() {
            Some(write) => write.await.map_err(|_| io())?.map_err(|_| io()),
            None => self.file.take().ok_or_else(io),
        }
    }

    async fn start(&mut self, batch: Batch) -> Result<(), Fail> {
        let mut file = self.idle_file().await?;
        self.busy = Some(tokio::task::spawn_blocking(move || {
            write_pieces(&mut file, &batch.pieces).map(|()| file)
        }));
        Ok(())
    }
}

fn write_pieces(file: &mut std::fs::File, pieces: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sets the modification time from DSM's `mtime` (milliseconds).
async fn set_mtime(path: &Path, ms: i64) {
    let Ok(ms) = u64::try_from(ms) else {
        return;
    };
    let path = path.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::options().write(true).open(&path)?;
        file.set_modified(UNIX_EPOCH + Duration::from_millis(ms))
    })
    .await;
}

/// The corrupt-upload fault: flips the bits of the middle byte.
async fn corrupt(path: &Path) {
    let path = path.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return file.write_all(b"\0");
        }
        let mut byte = [0u8; 1];
        file.seek(SeekFrom::Start(len / 2))?;
        file.read_exact(&mut byte)?;
        byte[0] ^= 0xff;
        file.seek(SeekFrom::Start(len / 2))?;
        file.write_all(&byte)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> Params {
        let mut p = Params::default();
        p.extend_urlencoded(text);
        p
    }

    #[test]
    fn overwrite_follows_the_version() {
        assert_eq!(overwrite_mode(&params(""), 2).unwrap(), Overwrite::Refuse);
        assert_eq!(
            overwrite_mode(&params("overwrite=true"), 2).unwrap(),
            Overwrite::Replace
        );
        assert_eq!(
            overwrite_mode(&params("overwrite=false"), 2).unwrap(),
            Overwrite::Skip
        );
        assert_eq!(
            overwrite_mode(&params("overwrite=overwrite"), 3).unwrap(),
            Overwrite::Replace
        );
        assert_eq!(
            overwrite_mode(&params("overwrite=skip"), 3).unwrap(),
            Overwrite::Skip
        );
        assert_eq!(
            overwrite_mode(&params("overwrite=true"), 3)
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            overwrite_mode(&params("overwrite=skip"), 2)
                .unwrap_err()
                .code,
            400
        );
    }
}

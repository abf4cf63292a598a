//! A harness that feeds raw multipart bodies to the emulator's upload
//! endpoint in process (no socket), for the fuzz targets and their corpus
//! test. Only built with the `fuzzing` feature.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, header};
use tower::ServiceExt;

use super::conn::{ConnMeta, KillSwitch};
use super::params::Params;
use super::paths::UPLOAD_TEMP_PREFIX;
use super::{EmulatorConfig, Error, Shared, server};
use crate::secret::Secret;

/// The multipart boundary the harness announces.
pub const BOUNDARY: &str = "synbackfuzz";

/// One emulator, logged in, answering upload requests built from bytes.
pub struct UploadHarness {
    runtime: tokio::runtime::Runtime,
    base: tempfile::TempDir,
    /// The emulator's root, two folders below `base` so that `../` escapes
    /// land where they are seen.
    root: PathBuf,
    /// What `root` held before any upload.
    root_names: Vec<std::ffi::OsString>,
    share: PathBuf,
    router: Router,
    sid: String,
}

impl std::fmt::Debug for UploadHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadHarness").finish_non_exhaustive()
    }
}

impl UploadHarness {
    /// An emulator over a fresh temporary root, with a session.
    ///
    /// # Errors
    /// As [`Emulator::start`](super::Emulator::start), or
    /// [`Error::CreateFolder`] when the temporary root cannot be made.
    pub fn new() -> Result<Self, Error> {
        let base = tempfile::tempdir().map_err(|source| Error::CreateFolder {
            path: std::env::temp_dir(),
            source,
        })?;
        let root = base.path().join("a").join("root");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::CreateFolder {
                path: root.clone(),
                source,
            })?;
        let cfg = EmulatorConfig::new(&root, "fuzz", Secret::new("fuzz-password"));
        let shared = Shared::new(cfg)?;
        let share = shared.fs.shares.share_dir("backup");
        let mut params = Params::default();
        params.extend_urlencoded("account=fuzz&passwd=fuzz-password&format=sid");
        let sid = shared
            .auth
            .login(&params, Ipv4Addr::LOCALHOST.into())
            .ok()
            .and_then(|ok| ok.data.get("sid")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        let router = server::router(Arc::clone(&shared));
        let root_names = names(&root);
        Ok(Self {
            runtime,
            base,
            root,
            root_names,
            share,
            router,
            sid,
        })
    }

    /// Sends one upload request. `data[0]` picks the Upload version (1–3)
    /// and whether a `Content-Length` is announced; the rest is the
    /// multipart body (boundary [`BOUNDARY`]).
    ///
    /// Returns whether DSM answered `success: true`.
    ///
    /// # Errors
    /// A description of a broken invariant: the answer is not a DSM JSON
    /// envelope, a temporary upload file was left behind, something was
    /// written outside the share, or a success stored nothing in it.
    pub fn run(&self, data: &[u8]) -> Result<bool, String> {
        let (head, body) = data.split_first().unwrap_or((&0, &[]));
        let version = 1 + u32::from(head % 3);
        let uri = format!(
            "/webapi/entry.cgi?api=SYNO.FileStation.Upload&version={version}&method=upload&_sid={}",
            self.sid
        );
        let mut request = Request::post(uri).header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        );
        if head & 4 == 0 {
            request = request.header(header::CONTENT_LENGTH, body.len());
        }
        let mut request = request
            .body(Body::from(body.to_vec()))
            .map_err(|e| format!("building the request: {e}"))?;
        request.extensions_mut().insert(ConnectInfo(ConnMeta {
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
            kill: KillSwitch::default(),
        }));
        let router = self.router.clone();
        let (status, reply) = self.runtime.block_on(async move {
            let response = router
                .oneshot(request)
                .await
                .map_err(|e| format!("router: {e}"))?;
            let status = response.status();
            let reply = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            Ok::<_, String>((status, reply))
        })?;
        let mut success = false;
        if status.is_success() {
            let value: serde_json::Value = serde_json::from_slice(&reply)
                .map_err(|e| format!("answer with HTTP {status} is not JSON: {e}"))?;
            success = value
                .get("success")
                .and_then(serde_json::Value::as_bool)
                .ok_or_else(|| format!("answer is not a DSM envelope: {value}"))?;
        }
        self.check_places(success)?;
        self.check_and_clean()?;
        Ok(success)
    }

    /// Nothing appeared beside the share (in the root or above it); a
    /// successful upload left a file inside the share.
    fn check_places(&self, success: bool) -> Result<(), String> {
        let found = names(self.base.path());
        if found != [std::ffi::OsString::from("a")] {
            return Err(format!(
                "upload wrote beside the emulator's root: {found:?}"
            ));
        }
        let found = self.root.parent().map(names).unwrap_or_default();
        if found != [std::ffi::OsString::from("root")] {
            return Err(format!(
                "upload wrote beside the emulator's root: {found:?}"
            ));
        }
        let found = names(&self.root);
        if found != self.root_names {
            return Err(format!("upload wrote outside the share: {found:?}"));
        }
        if success && !holds_a_file(&self.share) {
            return Err("upload answered success but stored nothing in the share".into());
        }
        Ok(())
    }

    /// No temporary upload file may survive a request; then the share is
    /// emptied for the next one.
    fn check_and_clean(&self) -> Result<(), String> {
        let mut stack = vec![self.share.clone()];
        let mut leftover = None;
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(UPLOAD_TEMP_PREFIX)
                {
                    leftover = Some(entry.path());
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        for entry in std::fs::read_dir(&self.share)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
        match leftover {
            Some(path) => Err(format!(
                "temporary upload file left behind: {}",
                path.display()
            )),
            None => Ok(()),
        }
    }
}

/// The sorted names in `dir` (none when it cannot be read).
fn names(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    names
}

/// True when a regular file (not a temporary upload) is somewhere in `dir`.
fn holds_a_file(dir: &std::path::Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file()
                && !entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(UPLOAD_TEMP_PREFIX)
            {
                return true;
            }
        }
    }
    false
}

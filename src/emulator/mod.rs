//! A fake Synology NAS that speaks the DSM Web API (feature `emulator`).
//!
//! It behaves like a real DSM 7 NAS where synback and third-party clients
//! can tell the difference: `SYNO.API.Info` discovery, logins with sid,
//! SynoToken, OTP and device tokens, session expiry, the File Station calls
//! with DSM's error codes, MD5/delete/dir-size as real background tasks, and
//! streaming uploads and downloads. It can inject the faults a real network
//! and NAS produce ([`Faults`]) and records every request ([`LoggedRequest`]).
//!
//! Tests start it in-process on port 0 ([`Emulator::start`]); the
//! `synback nas-emulator` command runs it stand-alone. Quirks that were
//! chosen on purpose are listed in `docs/DSM_QUIRKS.md`.
//!
//! # Example
//! ```
//! use std::net::SocketAddr;
//! use synback::emulator::{Emulator, EmulatorConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let dir = tempfile::tempdir()?;
//!     let mut cfg = EmulatorConfig::new(dir.path(), "alice", "secret");
//!     cfg.faults.busy_every = Some(3); // every 3rd File Station call: 117
//!     let nas = Emulator::start(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
//!     assert!(nas.url().starts_with("http://127.0.0.1:"));
//!     nas.faults().update(|f| f.busy_every = None);
//!     assert!(nas.share_path("backup").is_dir());
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })
//! # }
//! ```
//!
//! Owns: everything under `src/emulator/`. Depends on `secret` and `totp`
//! only; it must never depend on the DSM client (`dsm`), so that it cannot
//! drift towards whatever the client happens to send.

mod api_info;
mod auth;
mod body;
mod config;
mod conn;
mod download;
mod error;
mod faults;
mod files;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod log;
mod params;
mod paths;
mod reply;
mod server;
mod tasks;
mod tls;
mod upload;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use config::{DEFAULT_LIST_PAGE, EmulatorConfig};
pub use error::Error;
pub use faults::{AimedFault, DEFAULT_BUSY_CODE, FaultAction, FaultHandle, Faults};
pub use log::LoggedRequest;

use crate::{secret::Secret, totp::Totp};

/// Locks a mutex, carrying on after a panic elsewhere (the data here stays
/// consistent: every critical section is a plain update).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by every request.
pub(crate) struct Shared {
    root: PathBuf,
    fs: files::FsCtx,
    auth: auth::Auth,
    tasks: tasks::Tasks,
    faults: FaultHandle,
    log: log::RequestLog,
    strict_content_length: bool,
    hostname: String,
    started: Instant,
    seq: AtomicU64,
}

impl Shared {
    /// The state of an emulator serving `cfg`: folders created, OTP and
    /// request log ready. No socket is bound.
    pub(crate) fn new(cfg: EmulatorConfig) -> Result<Arc<Self>, Error> {
        prepare_folders(&cfg)?;
        let totp = cfg
            .otp_secret
            .as_ref()
            .map(|s| Totp::from_base32(&Secret::new(s.clone())))
            .transpose()
            .map_err(Error::Otp)?;
        let log = log::RequestLog::open(cfg.request_log.as_deref())?;
        Ok(Arc::new(Shared {
            root: cfg.root.clone(),
            fs: files::FsCtx {
                shares: paths::Shares::new(cfg.root.clone(), cfg.shares.clone()),
                user: cfg.user.clone(),
                list_default_limit: cfg.list_default_limit,
            },
            auth: auth::Auth::new(
                cfg.user,
                cfg.password,
                totp,
                &auth::AuthLimits {
                    max_failures: cfg.max_login_failures,
                    block_for: cfg.login_block,
                    idle_timeout: cfg.session_idle_timeout,
                },
            ),
            tasks: tasks::Tasks::default(),
            faults: FaultHandle::new(cfg.faults),
            log,
            strict_content_length: cfg.strict_content_length,
            hostname: cfg.hostname,
            started: Instant::now(),
            seq: AtomicU64::new(0),
        }))
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// `SYNO.DSM.Info` `getinfo` (what Home Assistant's library reads after login).
    fn dsm_info(&self) -> Value {
        json!({
            "codepage": "enu",
            "model": "DS920+",
            "ram": 4096,
            "serial": "EMU0000000001",
            "temperature": 40,
            "temperature_warn": false,
            "time": "",
            "uptime": self.started.elapsed().as_secs(),
            "version": "72806",
            "version_string": "DSM 7.2.2-72806 Update 3",
        })
    }
}

/// A running emulator. It stops when dropped.
pub struct Emulator {
    url: String,
    addr: SocketAddr,
    cert_sha256: Option<String>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Creates the root and share folders, binds `listen` (port 0 picks a
    /// free port) and starts serving.
    ///
    /// # Errors
    /// [`Error::InvalidShare`], [`Error::CreateFolder`], [`Error::Otp`],
    /// [`Error::RequestLog`], [`Error::Certificate`]/[`Error::Tls`] (TLS
    /// only) and [`Error::Bind`].
    ///
    /// # Cancel safety
    /// Dropping the future before it completes leaves nothing running.
    pub async fn start(cfg: EmulatorConfig, listen: SocketAddr) -> Result<Self, Error> {
        let tls = cfg.tls;
        let shared = Shared::new(cfg)?;
        let tls = if tls { Some(tls::self_signed()?) } else { None };
        let tcp = TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let addr = tcp.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let stop = CancellationToken::new();
        let (scheme, cert_sha256, acceptor) = match tls {
            Some(t) => ("https", Some(t.sha256), Some(t.acceptor)),
            None => ("http", None, None),
        };
        let listener = conn::EmuListener::spawn(tcp, addr, acceptor, stop.clone());
        let app = server::router(Arc::clone(&shared))
            .into_make_service_with_connect_info::<conn::ConnMeta>();
        let signal = stop.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(error = %err, "emulator server stopped with an error");
            }
        });
        tracing::debug!(url = %format!("{scheme}://{addr}"), "emulator started");
        Ok(Self {
            url: format!("{scheme}://{addr}"),
            addr,
            cert_sha256,
            shared,
            stop,
            server: Some(server),
        })
    }

    /// Base URL, `http://127.0.0.1:PORT` (`https` with TLS).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lower-case hex SHA-256 of the certificate (DER) when serving TLS.
    pub fn cert_sha256(&self) -> Option<String> {
        self.cert_sha256.clone()
    }

    /// Changes faults while running.
    pub fn faults(&self) -> FaultHandle {
        self.shared.faults.clone()
    }

    /// The requests served so far (the last 10 000), secrets masked.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.shared.log.snapshot()
    }

    /// Every session id, SynoToken and device id this emulator handed out,
    /// so tests can check that none of them leaks into logs or errors.
    pub fn issued_secrets(&self) -> Vec<Secret> {
        self.shared.auth.issued()
    }

    /// As if the NAS rebooted: every session and task is lost, files and
    /// remembered devices are kept.
    pub fn restart_sessions(&self) {
        self.shared.auth.drop_sessions();
        self.shared.tasks.clear();
    }

    /// Where a share's files live on disk.
    pub fn share_path(&self, share: &str) -> PathBuf {
        self.shared.fs.shares.share_dir(share)
    }

    /// Stops accepting, lets open requests finish (at most a few seconds)
    /// and returns.
    ///
    /// # Cancel safety
    /// Dropping the future still stops the emulator (as dropping it does).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        self.shared.tasks.clear();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(server::SHUTDOWN_GRACE, server).await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.tasks.clear();
    }
}

fn prepare_folders(cfg: &EmulatorConfig) -> Result<(), Error> {
    let create = |path: PathBuf| {
        std::fs::create_dir_all(&path).map_err(|source| Error::CreateFolder { path, source })
    };
    create(cfg.root.clone())?;
    for share in &cfg.shares {
        if share.is_empty() || share == "." || share == ".." || share.contains(['/', '\\', '\0']) {
            return Err(Error::InvalidShare {
                name: share.clone(),
            });
        }
        create(cfg.root.join(share))?;
    }
    Ok(())
}

//! The DSM Web API client: discovery (`SYNO.API.Info`), authentication and
//! sessions (`SYNO.API.Auth`), error codes, and every File Station call
//! synback uses.
//!
//! This module owns everything that knows DSM's JSON, URLs and quirks. It
//! knows nothing about backups, archives or snapshots, and it must not
//! depend on the CLI, the daemon or the emulator (it builds with
//! `--no-default-features`).
//!
//! # Overview
//! - [`Client::connect`] discovers the APIs, picks the highest version both
//!   sides speak, and logs in (password, OTP from a TOTP secret or a typed
//!   code, or a device id from an earlier OTP login).
//! - Every call re-logs in once when the session expired (DSM codes 106,
//!   107, 119) and retries transient failures (network, HTTP 5xx, busy codes)
//!   with exponential backoff and jitter ([`RetryPolicy`]). A refused login
//!   is never retried.
//! - Uploads and downloads stream with bounded memory and an idle timeout
//!   ([`Timeouts::idle`]), never a total one.
//! - Secrets (password, OTP, session id, SynoToken, device id) travel only
//!   in POST bodies and headers, never in URLs, and never appear in `Debug`
//!   output, errors or logs.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), synback::dsm::Error> {
//! use synback::dsm::{Client, ClientOptions, UploadBody, UploadOptions};
//! use synback::secret::Secret;
//! use tokio_util::sync::CancellationToken;
//!
//! let mut opts = ClientOptions::new("https://nas.local:5001", "backup", Secret::new("pw"));
//! opts.tls.pin_sha256 = Some("3a:7f:...".into());
//! let client = Client::connect(opts).await?;
//! client.create_folder("/backup", "hosts/pi", true).await.ok();
//! let body = UploadBody::Bytes(bytes::Bytes::from_static(b"hello"));
//! client.upload("/backup/hosts", "hello.txt", body, UploadOptions::overwrite()).await?;
//! let md5 = client.md5("/backup/hosts/hello.txt", &CancellationToken::new()).await?;
//! assert_eq!(md5, "5d41402abc4b2a76b9719d911017c592");
//! client.logout().await?;
//! # Ok(()) }
//! ```
//!
//! # DSM quirks handled here
//! - `SYNO.API.Info` says per API whether values are JSON-encoded
//!   (`requestFormat`); we follow it ([`Format`]): JSON values for the APIs
//!   that ask for them, plain values otherwise, which suits DSM 6 and 7.
//! - Upload v3 (DSM 7) spells `overwrite` as `overwrite`/`skip`, v2 as
//!   `true`/`false`; the file part must come last and carry a filename. Its
//!   text fields are sent plain (as DSM's web client does), whatever
//!   `requestFormat` says.
//! - A NAS that answers 1800 to a chunked upload is remembered
//!   ([`Client::refuses_chunked_uploads`]).
//! - Download answers a plain HTTP 404 for a missing file, and a JSON error
//!   envelope (no `Content-Disposition`) for an expired session.
//! - Login codes 400–410 mean something else than the same file-operation
//!   codes ([`code_meaning`] takes the API).

mod api;
mod auth;
mod client;
mod device;
mod diagnose;
mod error;
mod files;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod options;
mod params;
mod path;
mod tls;
mod transfer;
mod wire;

pub use api::{ApiTable, Endpoint, dsm_generation};
pub use client::{Client, MAX_REPLY_BYTES};
pub use device::{load_device_id, save_device_id};
pub use diagnose::{Finding, Level, diagnose};
pub use error::{Error, FileError, FileErrors, LoginRefusal, Result, code_meaning};
pub use options::{ClientOptions, OtpSource, RetryPolicy, Timeouts, TlsOptions};
pub use params::Format;
pub use path::{RemotePath, check_name};
pub use tls::cert_sha256_hex;
pub use transfer::{ByteStream, UploadBody, UploadOptions};
pub use wire::{DsmInfo, FileEntry, FileInfo, NasInfo};

//! synback: verified, compressed snapshot backups to a Synology NAS.
//!
//! synback packs local folders into standard `tar` + `zstd` archives
//! (optionally `age`-encrypted), uploads them through the DSM File Station
//! API, proves every upload with the NAS's own MD5 task, and rotates old
//! snapshots by a retention policy. This crate is the library behind the
//! `synback` command; appliances embed it directly.
//!
//! # Layout
//! - [`agent`]: the front door. An [`agent::Agent`] built from a
//!   [`config::Config`] runs backups, lists, verifies, restores and forgets.
//! - [`config`]: the TOML model and its validation, with located messages.
//! - [`dsm`]: the DSM Web API client (discovery, login, File Station calls);
//!   knows nothing of backups.
//! - [`archive`]: walk → tar → zstd (→ age) → volumes with MD5/SHA-256, and
//!   the way back with safe extraction; knows nothing of the network.
//! - [`repo`]: the remote layout over a small [`repo::Target`] trait
//!   (DSM, in memory, fault-injecting and dry-run wrappers), locking and
//!   listing; [`retention`] is a pure function of snapshots and time.
//! - [`backup`] and [`restore`]: one run each way, against any `Target`.
//! - [`event`]: progress events; the library never prints.
//! - `schedule` and `daemon` (feature `daemon`): the cron loop, hooks,
//!   notifications and status endpoint; `emulator` (feature `emulator`): a
//!   faithful fake NAS for tests and `synback demo`.
//!
//! # Example
//! A backup into memory, then a listing, offline:
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use synback::archive::PackOptions;
//! use synback::backup::{self, BackupOptions};
//! use synback::repo::{JobName, Listing, MemoryTarget, Target};
//!
//! let source = tempfile::tempdir()?;
//! std::fs::write(source.path().join("hello.txt"), "hello")?;
//! let job = JobName::new("docs")?;
//! let opts = BackupOptions::new(job.clone(), PackOptions::new([source.path()]));
//! let target: Arc<dyn Target> = Arc::new(MemoryTarget::with_folder());
//! let events = Arc::new(synback::event::NoEvents);
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let report = backup::run(target.clone(), &opts, events, cancel, chrono::Utc::now()).await?;
//! let listing = Listing::classify(&job, target.list().await?);
//! assert_eq!(listing.snapshots[0].id.to_string(), report.snapshot);
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

pub mod agent;
pub mod archive;
pub mod backup;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod dsm;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod event;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod repo;
pub mod restore;
pub mod retention;
#[cfg(feature = "daemon")]
pub mod schedule;
pub mod secret;
pub mod totp;

/// An error and every cause under it, joined by `: `, for one-line reports
/// (status files, notifications, logs).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

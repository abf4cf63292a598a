//! synback: verified, compressed snapshot backups to a Synology NAS.
//!
//! synback packs local folders into standard `tar` + `zstd` archives
//! (optionally `age`-encrypted), uploads them through the DSM File Station
//! API, proves every upload with the NAS's own MD5 task, and rotates old
//! snapshots by a retention policy. This crate is the library behind the
//! `synback` command; appliances embed it directly.
//!
//! # Layout
//! - [`agent`]: the front door. An [`Agent`] built from a [`Config`] runs
//!   backups, lists, verifies, restores and forgets. The types an embedder
//!   needs most are re-exported at the crate root: [`Agent`], [`Error`],
//!   [`Config`], [`ConfigEnv`], [`Event`], [`EventSink`], [`Progress`],
//!   [`Phase`] and [`CancellationToken`].
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
//! # Embedding guide
//! An appliance (a home-automation hub, a NAS companion box) uses synback
//! in four steps. The library prints nothing, reads no environment
//! variables, installs no global logger or signal handler and never exits
//! the process: all of that stays the host program's choice.
//!
//! 1. **Construct** an [`agent::Agent`] from a [`config::Config`], built
//!    from TOML text with [`config::Config::from_toml_str`] (or read with
//!    [`config::Config::load`]). The [`config::ConfigEnv`] passed in is
//!    the whole environment the config sees (for `password_env`,
//!    `$STATE_DIRECTORY`...).
//! 2. **Back up with events**: [`agent::Agent::with_events`] takes any
//!    [`event::EventSink`]; [`event::ChannelEvents`] turns the run into a
//!    stream of [`event::Event`]s (phases, throttled [`event::Progress`]
//!    with files, bytes and the current path, stored volumes, retries,
//!    per-file warnings) for a progress screen; [`event::Progress::eta`]
//!    estimates the time left (a backup estimates its total from the
//!    job's previous snapshot).
//! 3. **Cancel** with a [`tokio_util::sync::CancellationToken`]: the run
//!    stops, removes what it uploaded and releases the NAS lock before
//!    [`agent::Agent::backup`] returns, then [`agent::Error::is_cancelled`]
//!    is true. Never drop the future instead.
//! 4. **Map errors** to the appliance's UI: [`agent::Error`] is a typed
//!    enum; [`agent::Error::exit_code`] classifies it (see [`agent::exit`]:
//!    unreachable, refused credentials, locked, verification failed...),
//!    [`agent::Error::hint`] gives advice when there is some, and
//!    [`error_chain`] a one-line text with every cause.
//!
//! Logs go through [`tracing`]: install a subscriber to see them, or none
//! to stay silent. `default-features = false` builds the library without
//! clap, indicatif, axum, the daemon and the emulator.
//!
//! ```no_run
//! use std::sync::Arc;
//! use synback::agent::exit;
//! use synback::event::ChannelEvents;
//! use synback::{Agent, CancellationToken, Config, ConfigEnv, Event};
//!
//! # async fn appliance(password: String) -> Result<(), synback::config::Error> {
//! let text = r#"
//!     [nas]
//!     url = "https://nas.local:5001"
//!     user = "backup"
//!     password_env = "NAS_PASSWORD"
//!     [state]
//!     dir = "/var/lib/appliance/synback"
//!     [[job]]
//!     name = "settings"
//!     sources = ["/var/lib/appliance/settings"]
//!     share = "backup"
//!     path = "appliance"
//! "#;
//! let env = ConfigEnv::new().with_var("NAS_PASSWORD", password);
//! let config = Config::from_toml_str(text, "appliance.toml", &env)?;
//!
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let agent = Agent::new(config).with_events(Arc::new(ChannelEvents(tx)));
//! tokio::spawn(async move {
//!     while let Some(event) = rx.recv().await {
//!         if let Event::Progress(p) = event {
//!             // Update the progress bar: p.files, p.bytes, p.current, p.eta...
//!             let _ = (p.files, p.bytes, p.eta);
//!         }
//!     }
//! });
//!
//! let cancel = CancellationToken::new(); // call cancel.cancel() from the "stop" button
//! match agent.backup("settings", cancel.clone()).await {
//!     Ok(report) => { let _ = report.snapshot; }
//!     Err(err) if err.is_cancelled() => { /* nothing was kept, the lock is released */ }
//!     Err(err) => {
//!         let _message = match err.exit_code() {
//!             exit::UNREACHABLE => "The NAS is offline.".to_owned(),
//!             exit::AUTH => "The NAS refused the password.".to_owned(),
//!             exit::LOCKED => "Another device is backing up.".to_owned(),
//!             _ => synback::error_chain(&err),
//!         };
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/appliance.rs` is the same as a complete program, and
//! `examples/library_only.rs` a backup, verify and restore with no output.
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

// The types an embedder needs most, at the crate root.
pub use agent::{Agent, Error};
pub use config::{Config, ConfigEnv};
pub use event::{Event, EventSink, Phase, Progress};
pub use tokio_util::sync::CancellationToken;

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

//! The scheduled daemon: cron evaluation, the run loop, retries, hooks,
//! notifications, the status file and the optional HTTP status endpoint.
//!
//! This module owns *when* and *how often* jobs run and how people learn
//! about the result. It does not know how a backup is made: it drives jobs
//! through the small [`JobRunner`] trait, which the caller implements over
//! the backup agent (and tests implement with fakes). It must not depend on
//! `dsm`, `archive`, `repo` or `config`; the caller maps its configuration
//! onto [`JobSpec`] and [`DaemonSettings`].
//!
//! # Layout
//! - [`next_after`] / [`interval`]: cron fire times in a time zone, with the
//!   daylight-saving rules documented there.
//! - [`run`]: the daemon loop. It races the next due job against shutdown,
//!   reload and "run now" requests with `tokio::select!`, never runs a job
//!   twice at once, caps parallel runs with a semaphore and keeps every
//!   spawned task in a `JoinSet`.
//! - [`RetryPolicy`]: exponential backoff with jitter for retryable failures.
//! - [`hooks`]: `before`, `after` and `on_failure` shell commands.
//! - [`notify`]: healthchecks-style pings and a JSON webhook.
//! - [`mqtt`]: state on an MQTT broker with Home Assistant discovery and a
//!   "backup now" button.
//! - [`status`]: the `status.json` file, its reader and a human formatter.
//! - [`http`]: `/healthz`, `/metrics`, a status page and "run now".
//! - [`run_log`]: the tail of each run's log, for the `/fail` ping.
//! - [`signals`]: SIGTERM/SIGINT stop, SIGHUP reloads (Unix).
//!
//! Time is injected through [`Clock`] for wall-clock decisions, while every
//! wait uses tokio's timer, so tests drive the daemon with
//! `tokio::time::pause()` and [`TokioClock`].
//!
//! # Example
//! ```
//! use std::str::FromStr;
//! use std::sync::Arc;
//! use futures_util::future::BoxFuture;
//! use synback::schedule::{
//!     DaemonControl, DaemonSettings, JobRunner, JobSpec, RunOutcome, SystemClock,
//! };
//! use tokio_util::sync::CancellationToken;
//!
//! struct Runner; // in the binary: a wrapper around the backup agent
//! impl JobRunner for Runner {
//!     fn run(&self, job: &str, _cancel: CancellationToken) -> BoxFuture<'static, RunOutcome> {
//!         let job = job.to_owned();
//!         Box::pin(async move { RunOutcome::ok(format!("{job}-20260101T000000Z"), 0, 0) })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let state = tempfile::tempdir()?;
//! let nightly = JobSpec::new("home", cron::Schedule::from_str("0 30 2 * * *")?);
//! let (control, handle) = DaemonControl::new();
//! handle.shutdown(); // normally from a signal: see `signals::forward_signals`
//! synback::schedule::run(
//!     DaemonSettings::new(state.path()),
//!     vec![nightly],
//!     Arc::new(Runner),
//!     Arc::new(SystemClock),
//!     control,
//! )
//! .await?;
//! # Ok(())
//! # }
//! ```

mod cron_time;
mod daemon;
mod error;
pub mod hooks;
pub mod http;
pub mod mqtt;
pub mod notify;
mod retry;
#[cfg(unix)]
pub mod run_log;
pub mod signals;
pub mod status;
mod types;

pub use cron_time::{interval, next_after};

pub use daemon::{DaemonControl, DaemonHandle, Reload, RunNow, check_jobs, run};
pub use error::Error;
pub use retry::RetryPolicy;
pub use status::{JobStatus, StatusFile, format_status, read_status};

pub use types::{
    Clock, DaemonSettings, Hooks, JobRunner, JobSpec, Notify, RunOutcome, RunStatus, SystemClock,
    TokioClock,
};

//! The small interfaces the daemon is written against.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::RetryPolicy;
use crate::secret::Secret;

/// Source of wall-clock time for scheduling decisions.
///
/// Waiting always uses tokio's timer; the clock only says what time it is,
/// so that fire times, catch-up and the status file can be tested.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A wall clock that starts at a chosen time and moves with tokio's timer.
///
/// Under `tokio::time::pause()` it advances exactly as far as
/// `tokio::time::advance` (or auto-advance) moves tokio's clock, which makes
/// daemon tests deterministic.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `wall` now.
    pub fn starting_at(wall: DateTime<Utc>) -> Self {
        Self {
            wall,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().duration_since(self.start);
        let elapsed = chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX);
        self.wall.checked_add_signed(elapsed).unwrap_or(self.wall)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunStatus {
    /// The snapshot was stored and verified.
    Ok,
    /// The snapshot was stored, but some files could not be read.
    Partial,
    /// No snapshot was stored.
    Failed,
}

impl RunStatus {
    /// The lower-case name used in the status file, hooks and webhooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Failed => "failed",
        }
    }

    /// True when a snapshot was stored (`Ok` or `Partial`).
    pub fn is_success(self) -> bool {
        matches!(self, Self::Ok | Self::Partial)
    }
}

/// The result of one run of a job, as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunOutcome {
    /// How the run ended.
    pub status: RunStatus,
    /// The snapshot id, when one was stored.
    pub snapshot: Option<String>,
    /// Bytes read from the sources.
    pub bytes_read: u64,
    /// Bytes stored on the target (after compression).
    pub bytes_stored: u64,
    /// How long the run took.
    pub duration: Duration,
    /// What went wrong, for failed or partial runs (the whole cause chain).
    pub error: Option<String>,
    /// True when retrying may help (network, busy NAS, ...).
    pub retryable: bool,
    /// How many snapshots the job has after the run, when the runner knows.
    pub snapshot_count: Option<u64>,
}

impl RunOutcome {
    /// A successful run.
    pub fn ok(snapshot: impl Into<String>, bytes_read: u64, bytes_stored: u64) -> Self {
        Self {
            status: RunStatus::Ok,
            snapshot: Some(snapshot.into()),
            bytes_read,
            bytes_stored,
            duration: Duration::ZERO,
            error: None,
            retryable: false,
            snapshot_count: None,
        }
    }

    /// A failed run; `retryable` says whether another attempt may help.
    pub fn failed(error: impl Into<String>, retryable: bool) -> Self {
        Self {
            status: RunStatus::Failed,
            snapshot: None,
            bytes_read: 0,
            bytes_stored: 0,
            duration: Duration::ZERO,
            error: Some(error.into()),
            retryable,
            snapshot_count: None,
        }
    }

    /// The same outcome with its duration set.
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// The same outcome with the job's snapshot count set.
    pub fn with_snapshot_count(mut self, count: u64) -> Self {
        self.snapshot_count = Some(count);
        self
    }

    /// The same outcome with its error text set (for example for `Partial`).
    pub fn with_error(mut self, error: Option<String>) -> Self {
        self.error = error;
        self
    }

    /// The same outcome with its status set (for example `Partial`).
    pub fn with_status(mut self, status: RunStatus) -> Self {
        self.status = status;
        self
    }
}

/// Runs one job once. The caller implements it over the backup agent.
///
/// The runner must reconnect to the NAS when needed on every call, honour
/// `cancel` at safe points (finishing or abandoning the current upload and
/// removing its partial), and report every error through [`RunOutcome`].
/// A run that ignores `cancel` past the daemon's grace period is dropped
/// (aborted, which abandons its in-flight request), then
/// [`JobRunner::clean_up_abandoned`] is called for it.
pub trait JobRunner: Send + Sync + 'static {
    /// Runs `job` once.
    fn run(&self, job: &str, cancel: CancellationToken) -> BoxFuture<'static, RunOutcome>;

    /// Removes what a dropped run of `job` left behind (partial uploads,
    /// its lock) and ends its sessions. Called at shutdown, under a short
    /// timeout, for runs that outlived the grace period. The default does
    /// nothing.
    ///
    /// # Errors
    /// A description of what could not be cleaned up, for the log.
    fn clean_up_abandoned(&self, job: &str) -> BoxFuture<'static, Result<(), String>> {
        let _ = job;
        Box::pin(async { Ok(()) })
    }
}

/// Shell commands run around a job. The default has no hooks and a
/// five-minute timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hooks {
    /// Runs before the job; a failure fails the run without calling the runner.
    pub before: Option<String>,
    /// Runs after a successful (or partial) run.
    pub after: Option<String>,
    /// Runs after a failed run.
    pub on_failure: Option<String>,
    /// How long each hook may run before it is killed.
    pub timeout: Duration,
}

impl Hooks {
    /// No hooks, with a five-minute timeout.
    pub fn new() -> Self {
        Self {
            before: None,
            after: None,
            on_failure: None,
            timeout: Duration::from_secs(300),
        }
    }
}

impl Default for Hooks {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a job reports its runs. The URLs are [`Secret`]s: ping URLs are
/// the check's only credential and webhook URLs often carry a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Notify {
    /// A healthchecks-style ping URL (`/start`, success, `/fail`).
    pub healthchecks_url: Option<Secret>,
    /// A URL that receives a JSON summary of every run by POST.
    pub webhook_url: Option<Secret>,
}

/// One scheduled job.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobSpec {
    /// The job name, passed to [`JobRunner::run`].
    pub name: String,
    /// When the job fires (the `cron` crate's form, with seconds).
    pub schedule: cron::Schedule,
    /// The time zone the schedule is read in; `None` means the local zone.
    pub tz: Option<Tz>,
    /// Up to this much random delay is added to every fire time.
    pub jitter: Duration,
    /// Commands run around the job.
    pub hooks: Hooks,
    /// Notification targets.
    pub notify: Notify,
}

impl JobSpec {
    /// A job with no time zone (local), no jitter, no hooks and no notifications.
    pub fn new(name: impl Into<String>, schedule: cron::Schedule) -> Self {
        Self {
            name: name.into(),
            schedule,
            tz: None,
            jitter: Duration::ZERO,
            hooks: Hooks::new(),
            notify: Notify::default(),
        }
    }
}

/// Daemon-wide settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DaemonSettings {
    /// At most this many runs at once (at least 1).
    pub max_parallel: usize,
    /// Run a job at start when its last success is older than its interval.
    pub catch_up: bool,
    /// Retries of retryable failures.
    pub retry: RetryPolicy,
    /// Where `status.json` lives.
    pub state_dir: PathBuf,
    /// Where the HTTP status endpoint listens, if anywhere.
    pub status_listen: Option<SocketAddr>,
    /// Allow `status_listen` on a non-loopback address.
    pub allow_remote: bool,
    /// When not empty, the only non-loopback clients the status endpoint
    /// serves (a reverse proxy); they may send any `Host`.
    pub trusted_peers: Vec<IpAddr>,
    /// `/healthz` fails when a job's last success is older than this.
    pub healthy_within: Option<Duration>,
    /// How long running jobs get to stop after shutdown before they are aborted.
    pub shutdown_grace: Duration,
    /// Publish state to an MQTT broker, with Home Assistant discovery.
    pub mqtt: Option<super::mqtt::MqttSettings>,
}

impl DaemonSettings {
    /// Defaults: one run at a time, no catch-up, default retries, no listener.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            max_parallel: 1,
            catch_up: false,
            retry: RetryPolicy::default(),
            state_dir: state_dir.into(),
            status_listen: None,
            allow_remote: false,
            trusted_peers: Vec::new(),
            healthy_within: None,
            shutdown_grace: Duration::from_secs(60),
            mqtt: None,
        }
    }
}

//! The one error type of the scheduler.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong in the daemon, with what it was doing and to what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A job's cron expression has no fire time after the given instant.
    #[error("job {job}: schedule {schedule:?} never fires again")]
    NoNextRun {
        /// The job name.
        job: String,
        /// The cron source text.
        schedule: String,
    },
    /// Two jobs share a name.
    #[error("job {job} is defined twice")]
    DuplicateJob {
        /// The job name.
        job: String,
    },
    /// Reading or writing a file in the state directory failed.
    #[error("{action} {path}")]
    StateIo {
        /// What was being done ("write status file", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The status file is not valid JSON of the expected shape.
    #[error("parse status file {path}")]
    StatusParse {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Encoding the status file failed.
    #[error("encode status file {path}")]
    StatusEncode {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A hook command could not be started or waited for.
    #[error("job {job}: {hook} hook could not run")]
    HookSpawn {
        /// The job name.
        job: String,
        /// Which hook (`before`, `after`, `on_failure`).
        hook: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A hook command exited unsuccessfully.
    #[error("job {job}: {hook} hook failed ({status}): {stderr_tail}")]
    HookFailed {
        /// The job name.
        job: String,
        /// Which hook.
        hook: &'static str,
        /// The exit status as text.
        status: String,
        /// The last lines of its standard error.
        stderr_tail: String,
    },
    /// A hook command ran longer than its timeout and was killed.
    #[error("job {job}: {hook} hook timed out after {timeout:?} and was killed")]
    HookTimeout {
        /// The job name.
        job: String,
        /// Which hook.
        hook: &'static str,
        /// The timeout that was exceeded.
        timeout: Duration,
    },
    /// A hook command was killed because the daemon is stopping.
    #[error("job {job}: {hook} hook was killed because the daemon is stopping")]
    HookCancelled {
        /// The job name.
        job: String,
        /// Which hook.
        hook: &'static str,
    },
    /// The HTTP client for notifications could not be built.
    #[error("build the notification HTTP client")]
    HttpClient {
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The TLS configuration for notifications could not be built.
    #[error("build the notification TLS configuration")]
    Tls {
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The status listener would listen beyond loopback without `allow_remote`.
    #[error("status listener {addr} is not a loopback address; set allow_remote to expose it")]
    RemoteListenRefused {
        /// The configured address.
        addr: SocketAddr,
    },
    /// A signal handler could not be installed.
    #[error("install the {signal} handler")]
    Signal {
        /// The signal name.
        signal: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The status listener could not bind or serve.
    #[error("status listener on {addr}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

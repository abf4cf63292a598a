//! The status file (`status.json` in the state directory): what each job
//! did last, when it runs next, and counters. The daemon writes it
//! atomically (temporary file + rename, mode 0600) after every change;
//! `synback status` reads it with [`read_status`] and prints
//! [`format_status`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Error, RunOutcome, RunStatus};

/// The name of the status file inside the state directory.
pub const STATUS_FILE: &str = "status.json";

/// The whole status file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusFile {
    /// Format version (currently 1).
    pub version: u32,
    /// When the file was last written.
    #[serde(default, with = "rfc3339")]
    pub updated: Option<DateTime<Utc>>,
    /// Per job, by name.
    pub jobs: BTreeMap<String, JobStatus>,
}

/// What one job did last and when it runs next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JobStatus {
    /// When the last run started.
    #[serde(default, with = "rfc3339")]
    pub last_start: Option<DateTime<Utc>>,
    /// When the last run ended.
    #[serde(default, with = "rfc3339")]
    pub last_end: Option<DateTime<Utc>>,
    /// How the last run ended.
    pub last_status: Option<RunStatus>,
    /// The snapshot stored by the last successful run.
    pub last_snapshot: Option<String>,
    /// The error of the last run, if it failed or was partial.
    pub last_error: Option<String>,
    /// When the last successful (or partial) run ended.
    #[serde(default, with = "rfc3339")]
    pub last_success: Option<DateTime<Utc>>,
    /// How long the last run took, in seconds.
    pub last_duration_s: Option<f64>,
    /// Bytes stored by the last successful run (the size of
    /// `last_snapshot`).
    pub last_bytes_stored: u64,
    /// How many snapshots the job had after its last run, when known.
    pub snapshot_count: Option<u64>,
    /// When the job runs next.
    #[serde(default, with = "rfc3339")]
    pub next_run: Option<DateTime<Utc>>,
    /// True while a run is queued, in progress or sending its
    /// notifications: a "run now" is refused (409, `RunNow::AlreadyRunning`)
    /// exactly while this is true.
    pub running: bool,
    /// Finished runs (after retries, one per scheduled run).
    pub runs: u64,
    /// Finished runs that failed.
    pub failures: u64,
    /// Fire times skipped because the previous run was still going.
    pub skipped: u64,
    /// Total bytes read from sources.
    pub bytes_read: u64,
    /// Total bytes stored on the target.
    pub bytes_stored: u64,
}

impl JobStatus {
    /// Records the end of a run. `running` stays as it is: the daemon
    /// clears it once the run's notifications are sent and its task is
    /// reaped, when a new run can start.
    pub fn record(&mut self, outcome: &RunOutcome, end: DateTime<Utc>) {
        self.last_end = Some(end);
        self.last_status = Some(outcome.status);
        self.last_error.clone_from(&outcome.error);
        self.last_duration_s = Some(outcome.duration.as_secs_f64());
        self.runs += 1;
        self.bytes_read += outcome.bytes_read;
        self.bytes_stored += outcome.bytes_stored;
        if outcome.snapshot_count.is_some() {
            self.snapshot_count = outcome.snapshot_count;
        }
        if outcome.status.is_success() {
            self.last_success = Some(end);
            self.last_snapshot.clone_from(&outcome.snapshot);
            self.last_bytes_stored = outcome.bytes_stored;
        } else {
            self.failures += 1;
        }
    }
}

/// The path of the status file in `state_dir`.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Reads `status.json` from `state_dir`; a missing file reads as empty.
///
/// # Errors
/// [`Error::StateIo`] when the file exists but cannot be read,
/// [`Error::StatusParse`] when it is not a valid status file.
pub fn read_status(state_dir: &Path) -> Result<StatusFile, Error> {
    let path = status_path(state_dir);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StatusFile::default()),
        Err(source) => {
            return Err(Error::StateIo {
                action: "read status file",
                path,
                source,
            });
        }
    };
    serde_json::from_slice(&text).map_err(|source| Error::StatusParse { path, source })
}

/// Writes `status` to `state_dir/status.json` atomically with mode 0600,
/// creating the directory when needed.
///
/// # Errors
/// [`Error::StateIo`] or [`Error::StatusEncode`] with the path.
pub fn write_status(state_dir: &Path, status: &StatusFile) -> Result<(), Error> {
    let path = status_path(state_dir);
    let io = |action, source| Error::StateIo {
        action,
        path: path.clone(),
        source,
    };
    let body = serde_json::to_vec_pretty(status).map_err(|source| Error::StatusEncode {
        path: path.clone(),
        source,
    })?;
    std::fs::create_dir_all(state_dir).map_err(|e| io("create state directory", e))?;
    // NamedTempFile is created with mode 0600 on Unix.
    let mut tmp =
        tempfile::NamedTempFile::new_in(state_dir).map_err(|e| io("create temporary file", e))?;
    tmp.write_all(&body)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io("write status file", e))?;
    tmp.persist(&path)
        .map_err(|e| io("replace status file", e.error))?;
    Ok(())
}

/// A human summary of `status`, one block per job, relative to `now`.
pub fn format_status(status: &StatusFile, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    if status.jobs.is_empty() {
        out.push_str("no jobs have run yet\n");
    }
    for (name, job) in &status.jobs {
        let _ = writeln!(out, "{name}: {}", job_state(job));
        let _ = writeln!(out, "  last run:      {}", when(job.last_start, now));
        let _ = writeln!(out, "  last success:  {}", when(job.last_success, now));
        let _ = writeln!(out, "  next run:      {}", when(job.next_run, now));
        if let Some(snapshot) = &job.last_snapshot {
            let _ = writeln!(out, "  last snapshot: {snapshot}");
        }
        if let Some(error) = &job.last_error {
            let _ = writeln!(out, "  last error:    {error}");
        }
        let _ = writeln!(
            out,
            "  runs: {}, failures: {}, skipped: {}, stored: {} bytes",
            job.runs, job.failures, job.skipped, job.bytes_stored
        );
    }
    out
}

fn job_state(job: &JobStatus) -> &'static str {
    if job.running {
        return "running";
    }
    job.last_status.map_or("never run", RunStatus::as_str)
}

fn when(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(at) = at else {
        return "-".to_owned();
    };
    let stamp = at.format("%Y-%m-%d %H:%M:%S UTC");
    let delta = now.signed_duration_since(at);
    let span = |d: chrono::Duration| {
        humantime::format_duration(std::time::Duration::from_secs(
            d.num_seconds().unsigned_abs(),
        ))
        .to_string()
    };
    if delta >= chrono::Duration::zero() {
        format!("{stamp} ({} ago)", span(delta))
    } else {
        format!("{stamp} (in {})", span(-delta))
    }
}

/// Times as RFC 3339 text (`2026-01-02T03:04:05Z`) or `null`.
mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`
    pub(super) fn serialize<S: Serializer>(
        value: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(t) => {
                serializer.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom)
    }
}

/// The daemon's in-memory status, persisted on every change.
#[derive(Debug)]
pub(crate) struct StatusStore {
    dir: PathBuf,
    current: Mutex<StatusFile>,
    write: tokio::sync::Mutex<()>,
    version: tokio::sync::watch::Sender<u64>,
}

impl StatusStore {
    /// Loads the store from `dir`, starting empty when the file is missing
    /// or unreadable (the problem is logged).
    pub(crate) fn load(dir: PathBuf) -> Self {
        let current = read_status(&dir).unwrap_or_else(|error| {
            tracing::warn!(error = %error, "status file unreadable; starting fresh");
            StatusFile::default()
        });
        Self {
            dir,
            current: Mutex::new(current),
            write: tokio::sync::Mutex::new(()),
            version: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A receiver that sees a new value after every change.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// A copy of the current status.
    pub(crate) fn snapshot(&self) -> StatusFile {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The status of one job (default when unknown).
    pub(crate) fn job(&self, name: &str) -> JobStatus {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Changes the job's entry in memory, then persists the file. A failed
    /// write is logged, never fatal: the daemon keeps running jobs.
    pub(crate) async fn update(
        &self,
        job: &str,
        now: DateTime<Utc>,
        change: impl FnOnce(&mut JobStatus),
    ) {
        {
            let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            change(current.jobs.entry(job.to_owned()).or_default());
        }
        self.persist(now).await;
    }

    /// Drops entries of jobs that are no longer configured.
    pub(crate) async fn retain(&self, names: &[String], now: DateTime<Utc>) {
        {
            let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            current.jobs.retain(|name, _| names.contains(name));
        }
        self.persist(now).await;
    }

    async fn persist(&self, now: DateTime<Utc>) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
        let _serial = self.write.lock().await;
        let status = {
            let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            current.version = 1;
            current.updated = Some(now);
            current.clone()
        };
        let dir = self.dir.clone();
        let result = tokio::task::spawn_blocking(move || write_status(&dir, &status)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error, "could not write the status file"),
            Err(error) => tracing::warn!(error = %error, "status writer task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_counts_success_and_failure() {
        let t = Utc::now();
        let mut job = JobStatus::default();
        job.record(&RunOutcome::ok("s1", 10, 5), t);
        job.record(&RunOutcome::failed("boom", false), t);
        assert_eq!((job.runs, job.failures, job.bytes_read), (2, 1, 10));
        assert_eq!(job.last_snapshot.as_deref(), Some("s1"));
        assert_eq!(job.last_success, Some(t));
        assert_eq!(job.last_status, Some(RunStatus::Failed));
    }

    #[test]
    fn missing_file_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_status(dir.path()).unwrap(), StatusFile::default());
    }

    #[test]
    fn format_mentions_errors_and_never_run() {
        let mut status = StatusFile::default();
        let mut job = JobStatus::default();
        job.record(&RunOutcome::failed("NAS unreachable", true), Utc::now());
        status.jobs.insert("home".into(), job);
        status.jobs.insert("etc".into(), JobStatus::default());
        let text = format_status(&status, Utc::now());
        assert!(text.contains("home: failed"));
        assert!(text.contains("last error:    NAS unreachable"));
        assert!(text.contains("etc: never run"));
    }
}

//! Hook commands (`before`, `after`, `on_failure`) run around a job.
//!
//! Each hook runs as `/bin/sh -c COMMAND` in its own process group, with
//! standard input closed, and these environment variables:
//! `SYNBACK_JOB`, `SYNBACK_STATUS` (`ok`, `partial`, `failed`; empty for
//! `before`), `SYNBACK_SNAPSHOT` (empty when none) and `SYNBACK_BYTES`
//! (bytes stored). A hook that outlives its timeout, or is still running
//! when the daemon stops, is killed together with its process group (also
//! when its future is dropped). The hook counts as running until its standard output
//! and error are closed, so a command that starts a background service
//! should redirect that service's output.

use std::process::Stdio;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Error, RunOutcome};

/// Which hook is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookKind {
    /// Before the job; a failure fails the run.
    Before,
    /// After a successful or partial run.
    After,
    /// After a failed run.
    OnFailure,
}

impl HookKind {
    /// The name used in logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Before => "before",
            Self::After => "after",
            Self::OnFailure => "on_failure",
        }
    }
}

/// How many bytes of a hook's standard error are kept for error messages.
const STDERR_TAIL: usize = 2048;

/// The environment a hook sees.
pub fn hook_env(job: &str, outcome: Option<&RunOutcome>) -> Vec<(&'static str, String)> {
    vec![
        ("SYNBACK_JOB", job.to_owned()),
        (
            "SYNBACK_STATUS",
            outcome.map_or(String::new(), |o| o.status.as_str().to_owned()),
        ),
        (
            "SYNBACK_SNAPSHOT",
            outcome.and_then(|o| o.snapshot.clone()).unwrap_or_default(),
        ),
        (
            "SYNBACK_BYTES",
            outcome.map_or(0, |o| o.bytes_stored).to_string(),
        ),
    ]
}

/// Runs one hook command and waits for it, at most `timeout`.
///
/// # Errors
/// [`Error::HookSpawn`] when the shell cannot be started,
/// [`Error::HookFailed`] when it exits unsuccessfully (with the tail of its
/// standard error), [`Error::HookTimeout`] when it was killed.
///
/// # Cancel safety
/// Dropping the future kills the shell and its process group.
pub async fn run_hook(
    kind: HookKind,
    job: &str,
    command: &str,
    env: &[(&'static str, String)],
    timeout: Duration,
) -> Result<(), Error> {
    run_hook_until(kind, job, command, env, timeout, &CancellationToken::new()).await
}

/// Like [`run_hook`], and kills the hook with its process group as soon as
/// `cancel` is cancelled.
///
/// # Errors
/// As [`run_hook`], and [`Error::HookCancelled`] when `cancel` ended it.
///
/// # Cancel safety
/// Dropping the future kills the shell and its process group.
#[tracing::instrument(skip_all, fields(job = %job, hook = kind.as_str()))]
pub async fn run_hook_until(
    kind: HookKind,
    job: &str,
    command: &str,
    env: &[(&'static str, String)],
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let hook = kind.as_str();
    let spawn_error = |source| Error::HookSpawn {
        job: job.to_owned(),
        hook,
        source,
    };
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    let pid = child.id();
    let mut group = GroupGuard(pid);
    let started = tokio::time::Instant::now();
    let waited = tokio::select! {
        waited = tokio::time::timeout(timeout, child.wait_with_output()) => waited,
        () = cancel.cancelled() => {
            kill_group(group.disarm()).await;
            return Err(Error::HookCancelled { job: job.to_owned(), hook });
        }
    };
    group.disarm();
    match waited {
        Ok(Ok(output)) if output.status.success() => {
            tracing::debug!(elapsed_ms = started.elapsed().as_millis(), "hook done");
            Ok(())
        }
        Ok(Ok(output)) => Err(Error::HookFailed {
            job: job.to_owned(),
            hook,
            status: output.status.to_string(),
            stderr_tail: tail(&output.stderr, STDERR_TAIL),
        }),
        Ok(Err(source)) => Err(spawn_error(source)),
        Err(_elapsed) => {
            kill_group(pid).await;
            Err(Error::HookTimeout {
                job: job.to_owned(),
                hook,
                timeout,
            })
        }
    }
}

/// Kills the hook's process group when dropped armed (the hook's future was
/// dropped while it ran), so commands the shell started do not outlive it.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    /// Takes the pid out: nothing is killed on drop any more.
    fn disarm(&mut self) -> Option<u32> {
        self.0.take()
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(pid) = self.0 else { return };
        let result = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(error) = result {
            tracing::warn!(error = %error, pid, "could not kill the hook's process group");
        }
    }
}

/// Kills the hook's whole process group (the shell itself is already
/// killed on drop; this reaches the commands it started).
async fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let result = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(error) = result {
        tracing::warn!(error = %error, pid, "could not kill the hook's process group");
    }
}

/// The last `max` bytes of `bytes` as text, trimmed.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

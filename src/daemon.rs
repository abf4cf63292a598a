//! Wires the scheduler ([`crate::schedule`]) to the [`Agent`] and the
//! config: what each job's schedule, hooks and retry policy are, and how a
//! scheduled run becomes a backup.
//!
//! `schedule` knows nothing of backups or configs; `agent` knows nothing of
//! schedules. This module is the only place that knows both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::backup::RunStatus;
use crate::config::{Config, MqttConfig};
use crate::schedule::mqtt::MqttSettings;
use crate::schedule::{
    self, DaemonSettings, Hooks, JobRunner, JobSpec, Notify, RetryPolicy, RunOutcome,
};

/// Retries of one DSM request (after its first attempt) inside a daemon
/// run. The daemon retries whole runs per `[retry]`; each request only
/// rides out a short blip, so attempts and time do not multiply.
pub const REQUEST_RETRIES: u32 = 2;

/// Runs scheduled backups through an [`Agent`] that a config reload can
/// replace; runs already going keep the agent they started with.
///
/// Snapshot ids have one-second resolution, so a run of a job never starts
/// in a second in which the previous run of that job was still going (two
/// quick "run now" presses would otherwise name the same snapshot).
#[derive(Debug, Clone)]
pub struct AgentRunner {
    agent: Arc<RwLock<Agent>>,
    /// Per job, the UTC second (Unix time) its last run ended in.
    last_second: Arc<Mutex<HashMap<String, i64>>>,
}

impl AgentRunner {
    /// A runner over `agent`.
    pub fn new(agent: Agent) -> Self {
        Self {
            agent: Arc::new(RwLock::new(agent)),
            last_second: Arc::default(),
        }
    }

    /// A runner over an agent for `config` whose DSM requests are retried
    /// at most [`REQUEST_RETRIES`] times within a quarter of
    /// `retry.max_elapsed`: `[retry]` itself bounds the daemon's retries of
    /// whole runs (see [`plan`]).
    pub fn from_config(config: Config) -> Self {
        Self::new(Agent::new(per_request_retry(config)))
    }

    /// Like [`AgentRunner::replace`], with the agent
    /// [`AgentRunner::from_config`] would build.
    pub fn replace_config(&self, config: Config) {
        self.replace(Agent::new(per_request_retry(config)));
    }

    /// Uses `agent` for every run that starts from now on.
    pub fn replace(&self, agent: Agent) {
        if let Ok(mut current) = self.agent.write() {
            *current = agent;
        }
    }

    fn current(&self) -> Option<Agent> {
        self.agent.read().ok().map(|a| a.clone())
    }
}

impl JobRunner for AgentRunner {
    fn run(&self, job: &str, cancel: CancellationToken) -> BoxFuture<'static, RunOutcome> {
        let agent = self.current();
        let job = job.to_owned();
        let last_second = Arc::clone(&self.last_second);
        Box::pin(async move {
            let Some(agent) = agent else {
                return RunOutcome::failed("internal error: the agent lock is poisoned", false);
            };
            wait_for_a_new_second(&last_second, &job).await;
            let started = Instant::now();
            let result = agent.backup(&job, cancel).await;
            if let Ok(mut seconds) = last_second.lock() {
                seconds.insert(job.clone(), Utc::now().timestamp());
            }
            let outcome = match result {
                Ok(report) => {
                    // Retention listed every snapshot after the commit; when
                    // it could not run the count is unknown.
                    let kept = report.retention.iter().filter(|d| d.keep).count();
                    let mut outcome =
                        RunOutcome::ok(report.snapshot, report.bytes_read, report.bytes_stored);
                    if kept > 0 {
                        outcome =
                            outcome.with_snapshot_count(u64::try_from(kept).unwrap_or(u64::MAX));
                    }
                    match report.status {
                        RunStatus::Ok => outcome,
                        _ => outcome.with_status(schedule::RunStatus::Partial),
                    }
                }
                Err(err) => {
                    let retryable = match &err {
                        crate::agent::Error::Backup(e) => e.is_retryable(),
                        crate::agent::Error::Connect(e) => e.is_transient(),
                        _ => false,
                    };
                    RunOutcome::failed(crate::error_chain(&err), retryable)
                }
            };
            outcome.with_duration(started.elapsed())
        })
    }

    fn clean_up_abandoned(&self, job: &str) -> BoxFuture<'static, Result<(), String>> {
        let agent = self.current();
        let job = job.to_owned();
        Box::pin(async move {
            let Some(agent) = agent else {
                return Err("internal error: the agent lock is poisoned".to_owned());
            };
            match agent.clean_up_abandoned(&job).await {
                Ok(deleted) => {
                    tracing::info!(job, deleted, "abandoned run cleaned up");
                    Ok(())
                }
                Err(err) => Err(crate::error_chain(&err)),
            }
        })
    }
}

/// `config` with `[retry]` narrowed to what one request inside a daemon run
/// may spend.
fn per_request_retry(mut config: Config) -> Config {
    let retry = &mut config.retry;
    retry.max_attempts = retry.max_attempts.min(REQUEST_RETRIES + 1);
    retry.max_elapsed /= 4;
    config
}

/// Waits until the UTC second differs from the one `job`'s last run ended
/// in (at most a second).
async fn wait_for_a_new_second(last_second: &Mutex<HashMap<String, i64>>, job: &str) {
    let Some(last) = last_second.lock().ok().and_then(|s| s.get(job).copied()) else {
        return;
    };
    let now = Utc::now();
    if now.timestamp() > last {
        return;
    }
    let to_next = 1_000_000_000 - u64::from(now.timestamp_subsec_nanos().min(999_999_999));
    // A few milliseconds more, so the new second has surely begun.
    tokio::time::sleep(Duration::from_nanos(to_next) + Duration::from_millis(5)).await;
}

/// The scheduler's settings and jobs for `config`. Jobs without a
/// `schedule` only run on demand and are left out.
pub fn plan(config: &Config) -> (DaemonSettings, Vec<JobSpec>) {
    let mut settings = DaemonSettings::new(config.state_dir.clone());
    settings.max_parallel = config.daemon.max_parallel;
    settings.catch_up = config.daemon.catch_up;
    settings.status_listen = config.daemon.status_listen;
    settings.healthy_within = config.daemon.healthy_within;
    settings.shutdown_grace = config.daemon.shutdown_grace;
    // The config refuses a non-loopback address unless `allow_remote` was written.
    settings.allow_remote = config
        .daemon
        .status_listen
        .is_some_and(|a| !a.ip().is_loopback());
    settings.trusted_peers = config.daemon.trusted_peers.clone();
    settings.mqtt = config.mqtt.as_ref().map(mqtt_settings);
    settings.retry = RetryPolicy::new(
        config.retry.max_attempts,
        config.retry.base_delay,
        config.retry.max_delay,
        config.retry.max_elapsed,
    );
    let jobs = config
        .jobs
        .iter()
        .filter_map(|job| {
            let schedule = job.schedule.as_ref()?;
            let mut spec = JobSpec::new(job.name.clone(), schedule.cron.clone());
            spec.tz = job.timezone;
            spec.jitter = job.jitter;
            let mut hooks = Hooks::new();
            hooks.before = job.hooks.before.clone();
            hooks.after = job.hooks.after.clone();
            hooks.on_failure = job.hooks.on_failure.clone();
            hooks.timeout = job.hooks.timeout;
            spec.hooks = hooks;
            spec.notify = Notify {
                healthchecks_url: job.notify.healthchecks.clone(),
                webhook_url: job.notify.webhook.clone(),
            };
            Some(spec)
        })
        .collect();
    (settings, jobs)
}

/// The publisher's settings for `[mqtt]`; the node id defaults to the host
/// name.
fn mqtt_settings(config: &MqttConfig) -> MqttSettings {
    let node_id = config
        .node_id
        .clone()
        .unwrap_or_else(crate::repo::lock::local_hostname);
    let mut settings = MqttSettings::new(config.host.clone(), config.port, &node_id);
    settings.username = config.user.clone();
    settings.password = config.password.clone();
    settings.discovery_prefix = config.discovery_prefix.clone();
    settings.base_topic = config.topic_prefix.clone();
    settings
}

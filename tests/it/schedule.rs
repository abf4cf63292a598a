//! The daemon: schedule evaluation, no overlap, parallelism, catch-up,
//! backoff, shutdown, reload (paused tokio time, fake runner, fake clock);
//! hooks, notifications, the status file and the HTTP endpoint (real time,
//! loopback only).
#![cfg(feature = "daemon")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use synback::schedule::hooks::{HookKind, hook_env, run_hook};
use synback::schedule::status::write_status;
use synback::schedule::{
    Clock, DaemonControl, DaemonHandle, DaemonSettings, Error, JobRunner, JobSpec, JobStatus,
    Reload, RetryPolicy, RunNow, RunOutcome, RunStatus, StatusFile, SystemClock, TokioClock,
    format_status, read_status,
};
use synback::secret::Secret;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- fakes

/// What the fake runner does on one call.
#[derive(Debug, Clone, Copy)]
enum Step {
    Ok(Duration),
    Fail {
        after: Duration,
        retryable: bool,
    },
    /// Runs until cancelled, then needs `cleanup` to stop.
    UntilCancelled {
        cleanup: Duration,
    },
}

#[derive(Debug, Clone)]
struct Call {
    job: String,
    at: Instant,
    wall: DateTime<Utc>,
}

type Script = dyn Fn(&str, usize) -> Step + Send + Sync;

struct FakeRunner {
    script: Box<Script>,
    clock: Arc<dyn Clock>,
    calls: Mutex<Vec<Call>>,
    active: Mutex<HashMap<String, usize>>,
    max_active_per_job: AtomicUsize,
    active_total: AtomicUsize,
    max_active_total: AtomicUsize,
    cleaned_up: AtomicUsize,
    /// Jobs the daemon asked to clean up after abandoning them.
    abandoned: Mutex<Vec<String>>,
}

impl FakeRunner {
    fn new(
        clock: Arc<dyn Clock>,
        script: impl Fn(&str, usize) -> Step + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            script: Box::new(script),
            clock,
            calls: Mutex::new(Vec::new()),
            active: Mutex::new(HashMap::new()),
            max_active_per_job: AtomicUsize::new(0),
            active_total: AtomicUsize::new(0),
            max_active_total: AtomicUsize::new(0),
            cleaned_up: AtomicUsize::new(0),
            abandoned: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn calls_of(&self, job: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.job == job).collect()
    }

    fn enter(&self, job: &str) -> usize {
        let mut calls = self.calls.lock().unwrap();
        let index = calls.iter().filter(|c| c.job == job).count();
        calls.push(Call {
            job: job.to_owned(),
            at: Instant::now(),
            wall: self.clock.now(),
        });
        let mut active = self.active.lock().unwrap();
        let n = active.entry(job.to_owned()).or_default();
        *n += 1;
        self.max_active_per_job.fetch_max(*n, Ordering::SeqCst);
        let total = self.active_total.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active_total.fetch_max(total, Ordering::SeqCst);
        index
    }

    fn leave(&self, job: &str) {
        *self.active.lock().unwrap().get_mut(job).unwrap() -= 1;
        self.active_total.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The runner handed to the daemon; the test keeps the other `Arc`.
struct Shared(Arc<FakeRunner>);

impl JobRunner for Shared {
    fn run(&self, job: &str, cancel: CancellationToken) -> BoxFuture<'static, RunOutcome> {
        let this = Arc::clone(&self.0);
        let job = job.to_owned();
        Box::pin(async move {
            let index = this.enter(&job);
            let outcome = match (this.script)(&job, index) {
                Step::Ok(d) => {
                    tokio::time::sleep(d).await;
                    RunOutcome::ok(format!("{job}-{index}"), 1000, 400)
                }
                Step::Fail { after, retryable } => {
                    tokio::time::sleep(after).await;
                    RunOutcome::failed(format!("attempt {index} failed"), retryable)
                }
                Step::UntilCancelled { cleanup } => {
                    cancel.cancelled().await;
                    tokio::time::sleep(cleanup).await;
                    this.cleaned_up.fetch_add(1, Ordering::SeqCst);
                    RunOutcome::failed("cancelled", false)
                }
            };
            this.leave(&job);
            outcome
        })
    }

    fn clean_up_abandoned(&self, job: &str) -> BoxFuture<'static, Result<(), String>> {
        self.0.abandoned.lock().unwrap().push(job.to_owned());
        Box::pin(async { Ok(()) })
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn job(name: &str, cron: &str) -> JobSpec {
    let mut spec = JobSpec::new(name, cron::Schedule::from_str(cron).unwrap());
    spec.tz = Some(chrono_tz::UTC);
    spec
}

fn settings(dir: &Path) -> DaemonSettings {
    let mut s = DaemonSettings::new(dir);
    s.retry = RetryPolicy::new(
        1,
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::ZERO,
    );
    s.shutdown_grace = Duration::from_secs(30);
    s
}

struct Running {
    handle: DaemonHandle,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    async fn stop(self) -> Result<(), Error> {
        self.handle.shutdown();
        self.task.await.unwrap()
    }
}

fn start(
    settings: DaemonSettings,
    jobs: Vec<JobSpec>,
    runner: &Arc<FakeRunner>,
    clock: Arc<dyn Clock>,
) -> Running {
    let (control, handle) = DaemonControl::new();
    let runner: Arc<dyn JobRunner> = Arc::new(Shared(Arc::clone(runner)));
    let task = tokio::spawn(synback::schedule::run(
        settings, jobs, runner, clock, control,
    ));
    Running { handle, task }
}

fn paused_clock(at: &str) -> Arc<dyn Clock> {
    Arc::new(TokioClock::starting_at(utc(at)))
}

async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
}

const MIN: Duration = Duration::from_secs(60);

// ------------------------------------------------ paused-time scheduling

#[tokio::test(start_paused = true)]
async fn runs_at_fire_times_in_berlin_across_spring_forward() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-03-28T12:00:00Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::Ok(MIN));
    let mut spec = job("nightly", "0 30 2 * * *");
    spec.tz = Some(chrono_tz::Europe::Berlin);
    let daemon = start(settings(dir.path()), vec![spec], &runner, clock);
    pass(Duration::from_secs(40 * 3600)).await;
    daemon.stop().await.unwrap();
    let walls: Vec<_> = runner.calls().iter().map(|c| c.wall).collect();
    // 02:30 does not exist on 29 March: it runs at 03:00 CEST, then 02:30 CEST.
    assert_eq!(
        walls,
        [utc("2026-03-29T01:00:00Z"), utc("2026-03-30T00:30:00Z")]
    );
}

#[tokio::test(start_paused = true)]
async fn runs_once_across_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-10-24T12:00:00Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::Ok(MIN));
    let mut spec = job("nightly", "0 30 2 * * *");
    spec.tz = Some(chrono_tz::Europe::Berlin);
    let daemon = start(settings(dir.path()), vec![spec], &runner, clock);
    pass(Duration::from_secs(24 * 3600)).await;
    daemon.stop().await.unwrap();
    let walls: Vec<_> = runner.calls().iter().map(|c| c.wall).collect();
    assert_eq!(walls, [utc("2026-10-25T00:30:00Z")]);
}

#[tokio::test(start_paused = true)]
async fn every_half_hour_runs_through_the_repeated_hour_at_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-10-24T23:10:00Z"); // 01:10 CEST
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::Ok(MIN));
    let mut spec = job("halfhourly", "0 */30 * * * *");
    spec.tz = Some(chrono_tz::Europe::Berlin);
    let daemon = start(settings(dir.path()), vec![spec], &runner, clock);
    pass(Duration::from_secs(4 * 3600)).await; // to 02:10 CET
    daemon.stop().await.unwrap();
    let walls: Vec<_> = runner.calls().iter().map(|c| c.wall).collect();
    // Every 30 minutes of real time, the repeated 02:00-03:00 included.
    let expected: Vec<_> = (0..8)
        .map(|i| utc("2026-10-24T23:30:00Z") + chrono::TimeDelta::minutes(30 * i))
        .collect();
    assert_eq!(walls, expected);
}

#[tokio::test(start_paused = true)]
async fn jitter_delays_each_run_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-01-01T00:00:00Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::Ok(Duration::ZERO));
    let mut spec = job("hourly", "0 0 * * * *");
    spec.jitter = Duration::from_secs(600);
    let daemon = start(settings(dir.path()), vec![spec], &runner, clock);
    pass(Duration::from_secs(10 * 3600 + 1200)).await;
    daemon.stop().await.unwrap();
    let walls: Vec<_> = runner.calls().iter().map(|c| c.wall).collect();
    assert_eq!(walls.len(), 10);
    for (hour, wall) in walls.iter().enumerate() {
        let fire = utc("2026-01-01T00:00:00Z") + chrono::Duration::hours(hour as i64 + 1);
        let delay = *wall - fire;
        assert!(
            delay >= chrono::Duration::zero() && delay < chrono::Duration::seconds(600),
            "{wall}"
        );
    }
    // Not all at the same offset.
    assert!(
        walls
            .iter()
            .map(|w| w.timestamp() % 3600)
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_still_going_skips_the_next_fire_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-01-01T00:00:30Z");
    // Fires every minute, runs for 150 s.
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| {
        Step::Ok(Duration::from_secs(150))
    });
    let daemon = start(
        settings(dir.path()),
        vec![job("slow", "0 * * * * *")],
        &runner,
        clock,
    );
    pass(10 * MIN).await;
    daemon.stop().await.unwrap();
    assert_eq!(runner.max_active_per_job.load(Ordering::SeqCst), 1);
    let status = read_status(dir.path()).unwrap();
    let slow = &status.jobs["slow"];
    // Runs start at minutes 1, 4, 7 (and 10, cut by shutdown); 2 of every 3 fire times are skipped.
    assert!(slow.runs >= 3, "{slow:?}");
    assert!(slow.skipped >= 6, "{slow:?}");
    let starts: Vec<_> = runner.calls().iter().map(|c| c.wall).collect();
    assert_eq!(
        starts[..3],
        [
            utc("2026-01-01T00:01:00Z"),
            utc("2026-01-01T00:04:00Z"),
            utc("2026-01-01T00:07:00Z")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn max_parallel_caps_concurrent_runs() {
    for (max_parallel, expected) in [(1, 1), (2, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let clock = paused_clock("2026-01-01T00:00:30Z");
        let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::Ok(Duration::from_secs(20)));
        let mut s = settings(dir.path());
        s.max_parallel = max_parallel;
        let jobs = ["a", "b", "c"]
            .iter()
            .map(|n| job(n, "0 * * * * *"))
            .collect();
        let daemon = start(s, jobs, &runner, clock);
        pass(MIN + Duration::from_secs(25)).await;
        daemon.stop().await.unwrap();
        assert_eq!(
            runner.max_active_total.load(Ordering::SeqCst),
            expected,
            "max_parallel = {max_parallel}"
        );
        assert_eq!(runner.calls().len(), 3, "max_parallel = {max_parallel}");
    }
}

fn status_with_success(job: &str, at: DateTime<Utc>) -> StatusFile {
    let mut job_status = JobStatus::default();
    job_status.record(&RunOutcome::ok("old", 1, 1), at);
    let mut status = StatusFile::default();
    status.jobs.insert(job.to_owned(), job_status);
    status
}

#[tokio::test(start_paused = true)]
async fn catch_up_runs_a_late_job_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let now = "2026-01-10T12:00:00Z";
    let mut status = status_with_success("late", utc("2026-01-08T03:00:00Z"));
    status
        .jobs
        .extend(status_with_success("fresh", utc("2026-01-10T03:00:00Z")).jobs);
    write_status(dir.path(), &status).unwrap();
    let clock = paused_clock(now);
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::Ok(MIN));
    let mut s = settings(dir.path());
    s.catch_up = true;
    s.max_parallel = 4;
    let jobs = vec![
        job("late", "0 0 3 * * *"),
        job("fresh", "0 0 3 * * *"),
        job("never", "0 0 3 * * *"),
    ];
    let daemon = start(s, jobs, &runner, clock);
    pass(Duration::from_secs(5)).await;
    let started: Vec<_> = runner.calls().iter().map(|c| c.job.clone()).collect();
    daemon.stop().await.unwrap();
    let mut started = started;
    started.sort();
    assert_eq!(started, ["late", "never"]);
}

#[tokio::test(start_paused = true)]
async fn without_catch_up_nothing_runs_at_start() {
    let dir = tempfile::tempdir().unwrap();
    write_status(
        dir.path(),
        &status_with_success("late", utc("2026-01-01T03:00:00Z")),
    )
    .unwrap();
    let clock = paused_clock("2026-01-10T12:00:00Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::Ok(MIN));
    let daemon = start(
        settings(dir.path()),
        vec![job("late", "0 0 3 * * *")],
        &runner,
        clock,
    );
    pass(Duration::from_secs(3600)).await;
    daemon.stop().await.unwrap();
    assert!(runner.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_back_off_exponentially() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-01-01T00:59:30Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |_, i| {
        if i < 3 {
            Step::Fail {
                after: Duration::ZERO,
                retryable: true,
            }
        } else {
            Step::Ok(Duration::ZERO)
        }
    });
    let mut s = settings(dir.path());
    s.retry = RetryPolicy::new(
        5,
        Duration::from_secs(10),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    let daemon = start(s, vec![job("flaky", "0 0 * * * *")], &runner, clock);
    pass(MIN * 30).await;
    daemon.stop().await.unwrap();
    let at: Vec<Instant> = runner.calls().iter().map(|c| c.at).collect();
    assert_eq!(at.len(), 4);
    // Retry n waits within [d/2, d) for d = 10 s * 2^(n-1).
    for (n, pair) in at.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let ceiling = Duration::from_secs(10 << n);
        assert!(
            gap >= ceiling / 2 && gap < ceiling,
            "retry {}: {gap:?}",
            n + 1
        );
    }
    let status = read_status(dir.path()).unwrap();
    let flaky = &status.jobs["flaky"];
    assert_eq!((flaky.runs, flaky.failures), (1, 0));
    assert_eq!(flaky.last_status, Some(RunStatus::Ok));
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_max_attempts_and_permanent_failures_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-01-01T00:59:30Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |job, _| Step::Fail {
        after: Duration::ZERO,
        retryable: job == "transient",
    });
    let mut s = settings(dir.path());
    s.max_parallel = 2;
    s.retry = RetryPolicy::new(3, Duration::from_secs(1), MIN, Duration::from_secs(3600));
    let jobs = vec![
        job("transient", "0 0 * * * *"),
        job("permanent", "0 0 * * * *"),
    ];
    let daemon = start(s, jobs, &runner, clock);
    pass(MIN * 10).await;
    daemon.stop().await.unwrap();
    assert_eq!(runner.calls_of("transient").len(), 3);
    assert_eq!(runner.calls_of("permanent").len(), 1);
    let status = read_status(dir.path()).unwrap();
    assert_eq!(status.jobs["transient"].failures, 1);
    assert_eq!(
        status.jobs["transient"].last_error.as_deref(),
        Some("attempt 2 failed")
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_running_jobs_and_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-01-01T00:00:30Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::UntilCancelled {
        cleanup: Duration::from_secs(5),
    });
    let daemon = start(
        settings(dir.path()),
        vec![job("big", "0 * * * * *")],
        &runner,
        clock,
    );
    pass(MIN).await;
    assert_eq!(runner.calls().len(), 1);
    let stopped_at = Instant::now();
    daemon.stop().await.unwrap();
    assert_eq!(runner.cleaned_up.load(Ordering::SeqCst), 1);
    assert!(stopped_at.elapsed() >= Duration::from_secs(5));
    let big = &read_status(dir.path()).unwrap().jobs["big"];
    assert!(!big.running);
    assert_eq!(big.last_status, Some(RunStatus::Failed));
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_jobs_that_outlive_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-01-01T00:00:30Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::UntilCancelled {
        cleanup: Duration::from_secs(3600),
    });
    let mut s = settings(dir.path());
    s.shutdown_grace = Duration::from_secs(10);
    let daemon = start(s, vec![job("stuck", "0 * * * * *")], &runner, clock);
    pass(MIN).await;
    let stopped_at = Instant::now();
    daemon.stop().await.unwrap();
    let waited = stopped_at.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < MIN,
        "{waited:?}"
    );
    assert_eq!(runner.cleaned_up.load(Ordering::SeqCst), 0);
    assert_eq!(*runner.abandoned.lock().unwrap(), ["stuck"]);
    let stuck = &read_status(dir.path()).unwrap().jobs["stuck"];
    assert!(!stuck.running);
    assert_eq!(stuck.last_status, Some(RunStatus::Failed));
    assert_eq!(stuck.failures, 1);
    assert!(
        stuck
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("abandoned at shutdown")),
        "{stuck:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn reload_replaces_jobs_and_a_bad_reload_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-01-01T00:00:30Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |job, _| {
        Step::Ok(if job == "old" {
            Duration::from_secs(40)
        } else {
            Duration::from_secs(1)
        })
    });
    let daemon = start(
        settings(dir.path()),
        vec![job("old", "0 * * * * *")],
        &runner,
        clock,
    );
    pass(MIN * 2).await; // old runs at 00:01, 00:02
    let bad = vec![job("dup", "0 * * * * *"), job("dup", "0 * * * * *")];
    assert!(
        daemon
            .handle
            .reload(Reload::new(settings(dir.path()), bad))
            .await
    );
    pass(MIN).await; // old still runs at 00:03 and is running (until 00:03:40) at the reload
    let good = vec![job("new", "30 * * * * *")];
    assert!(
        daemon
            .handle
            .reload(Reload::new(settings(dir.path()), good))
            .await
    );
    pass(MIN * 2 + Duration::from_secs(10)).await; // new runs at 00:04:30, 00:05:30
    daemon.stop().await.unwrap();
    assert_eq!(runner.calls_of("old").len(), 3);
    assert_eq!(runner.calls_of("new").len(), 2);
    assert!(runner.calls_of("dup").is_empty());
    let status = read_status(dir.path()).unwrap();
    assert_eq!(status.jobs.keys().collect::<Vec<_>>(), ["new"]);
}

#[tokio::test(start_paused = true)]
async fn sighup_with_a_good_then_an_unparsable_config_file_and_sigterm_under_paused_time() {
    use synback::config::{Config, ConfigEnv};
    use synback::schedule::signals::{DaemonSignal, forward};
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    std::fs::create_dir_all(&source).unwrap();
    let write = |extra: &str| {
        crate::support::write_config_file(
            dir.path(),
            "http://127.0.0.1:9",
            &source,
            "max_attempts = 1",
            &format!("{extra}[daemon]\ncatch_up = false\n"),
        )
    };
    let path = write("schedule = \"0 * * * *\"\ntimezone = \"UTC\"\n");
    let load = {
        let path = path.clone();
        move || Config::load(&path, &ConfigEnv::new()).map_err(|e| e.to_string())
    };
    let (settings, jobs) = synback::daemon::plan(&load().unwrap());
    let clock = paused_clock("2026-01-01T00:30:00Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::Ok(Duration::from_secs(1)));
    let daemon = start(settings, jobs, &runner, Arc::clone(&clock));
    let (signal, mut signals) = tokio::sync::mpsc::channel(4);
    let forwarder = tokio::spawn(forward(
        daemon.handle.clone(),
        futures_util::stream::poll_fn(move |cx| signals.poll_recv(cx)),
        move || {
            load().map(|config| {
                let (settings, jobs) = synback::daemon::plan(&config);
                Reload::new(settings, jobs)
            })
        },
    ));
    pass(MIN * 60).await; // 01:00 (top of the hour)
    write("schedule = \"15 * * * *\"\ntimezone = \"UTC\"\n");
    signal.send(DaemonSignal::Hangup).await.unwrap();
    pass(MIN * 60).await; // 02:15 (the new schedule)
    write("schedule = \"15 * * * *\"\ntimezone = \"UTC\"\n[[job\n"); // not TOML
    assert!(Config::load(&path, &ConfigEnv::new()).is_err());
    signal.send(DaemonSignal::Hangup).await.unwrap();
    pass(MIN * 60).await; // 03:15 (the old one keeps running)
    signal.send(DaemonSignal::Terminate).await.unwrap();
    forwarder.await.unwrap();
    daemon.task.await.unwrap().unwrap();
    let walls: Vec<_> = runner.calls().iter().map(|c| c.wall).collect();
    assert_eq!(
        walls,
        [
            utc("2026-01-01T01:00:00Z"),
            utc("2026-01-01T02:15:00Z"),
            utc("2026-01-01T03:15:00Z")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn run_now_starts_a_job_once_even_when_asked_twice_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-01-01T00:00:30Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::Ok(MIN));
    let daemon = start(
        settings(dir.path()),
        vec![job("yearly", "0 0 0 1 1 *")],
        &runner,
        clock,
    );
    let handle = &daemon.handle;
    assert_eq!(handle.run_now("yearly").await, Some(RunNow::Started));
    assert_eq!(handle.run_now("yearly").await, Some(RunNow::AlreadyRunning));
    assert_eq!(handle.run_now("unknown").await, Some(RunNow::UnknownJob));
    pass(MIN * 2).await;
    let stopped = daemon.handle.clone();
    daemon.stop().await.unwrap();
    assert_eq!(runner.calls().len(), 1);
    // Skipped counts fire times; the asker of the second run was told.
    assert_eq!(read_status(dir.path()).unwrap().jobs["yearly"].skipped, 0);
    assert_eq!(stopped.run_now("yearly").await, None);
}

#[tokio::test(start_paused = true)]
async fn bad_job_lists_and_remote_listeners_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-01-01T00:00:30Z");
    let runner = FakeRunner::new(Arc::clone(&clock), |_, _| Step::Ok(MIN));
    let dup = vec![job("a", "0 * * * * *"), job("a", "0 * * * * *")];
    let result = start(settings(dir.path()), dup, &runner, Arc::clone(&clock))
        .task
        .await
        .unwrap();
    assert!(
        matches!(result, Err(Error::DuplicateJob { .. })),
        "{result:?}"
    );
    let past = vec![job("past", "0 0 0 1 1 * 2020")];
    let result = start(settings(dir.path()), past, &runner, Arc::clone(&clock))
        .task
        .await
        .unwrap();
    assert!(matches!(result, Err(Error::NoNextRun { .. })), "{result:?}");
    let mut s = settings(dir.path());
    s.status_listen = Some("0.0.0.0:0".parse().unwrap());
    let result = start(s, vec![], &runner, clock).task.await.unwrap();
    assert!(
        matches!(result, Err(Error::RemoteListenRefused { .. })),
        "{result:?}"
    );
}

// ------------------------------------------------------------ real time

fn real_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Waits (real time) until the job's status shows `runs` finished runs.
pub(crate) async fn wait_runs(dir: &Path, job: &str, runs: u64) -> JobStatus {
    for _ in 0..200 {
        if let Ok(status) = read_status(dir)
            && let Some(j) = status.jobs.get(job)
            && j.runs >= runs
            && !j.running
        {
            return j.clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {job} did not reach {runs} runs");
}

#[tokio::test]
async fn hooks_see_the_job_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    let cmd = format!(
        "echo \"$SYNBACK_JOB|$SYNBACK_STATUS|$SYNBACK_SNAPSHOT|$SYNBACK_BYTES\" > '{}'",
        out.display()
    );
    let outcome = RunOutcome::ok("home-20260101T000000Z", 10, 1234);
    let env = hook_env("home", Some(&outcome));
    run_hook(HookKind::After, "home", &cmd, &env, Duration::from_secs(10))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.trim(), "home|ok|home-20260101T000000Z|1234");
}

#[tokio::test]
async fn a_failing_hook_reports_its_stderr() {
    let env = hook_env("home", None);
    let err = run_hook(
        HookKind::Before,
        "home",
        "echo 'db dump failed' >&2; exit 3",
        &env,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::HookFailed { .. }), "{text}");
    assert!(
        text.contains("db dump failed") && text.contains("before"),
        "{text}"
    );
}

#[tokio::test]
async fn a_hook_that_hangs_is_killed_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("survived");
    // A child of the shell that would write the marker if it were not killed with its group.
    let cmd = format!("(sleep 2; touch '{}') & sleep 30", marker.display());
    let started = std::time::Instant::now();
    let err = run_hook(
        HookKind::Before,
        "home",
        &cmd,
        &hook_env("home", None),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::HookTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!marker.exists(), "the hook's process group was not killed");
}

#[tokio::test]
async fn a_failing_before_hook_fails_the_run_without_calling_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("on_failure.txt");
    let runner = FakeRunner::new(real_clock(), |_, _| Step::Ok(Duration::ZERO));
    let mut spec = job("db", "0 0 0 1 1 *");
    spec.hooks.before = Some("exit 7".into());
    spec.hooks.on_failure = Some(format!("echo \"$SYNBACK_STATUS\" > '{}'", marker.display()));
    let daemon = start(settings(dir.path()), vec![spec], &runner, real_clock());
    assert_eq!(daemon.handle.run_now("db").await, Some(RunNow::Started));
    let db = wait_runs(dir.path(), "db", 1).await;
    daemon.stop().await.unwrap();
    assert!(runner.calls().is_empty());
    assert_eq!(db.last_status, Some(RunStatus::Failed));
    assert!(db.last_error.unwrap().contains("before hook failed"));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "failed");
}

#[test]
fn status_file_round_trips_with_private_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut status = status_with_success("home", utc("2026-01-02T03:04:05Z"));
    status.jobs.get_mut("home").unwrap().next_run = Some(utc("2026-01-03T03:04:05Z"));
    write_status(dir.path(), &status).unwrap();
    assert_eq!(read_status(dir.path()).unwrap(), status);
    let text = format_status(&status, utc("2026-01-02T05:04:05Z"));
    assert!(text.contains("home: ok"), "{text}");
    assert!(text.contains("2026-01-02 03:04:05 UTC (2h ago)"), "{text}");
    assert!(
        text.contains("next run:      2026-01-03 03:04:05 UTC (in 22h)"),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join("status.json")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn a_corrupt_status_file_is_an_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("status.json"), "{not json").unwrap();
    let err = read_status(dir.path()).unwrap_err();
    assert!(matches!(err, Error::StatusParse { .. }));
    assert!(err.to_string().contains("status.json"));
}

/// True while process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn shutdown_kills_a_running_before_hook_with_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let runner = FakeRunner::new(real_clock(), |_, _| Step::Ok(Duration::ZERO));
    let mut spec = job("hooked", "0 0 0 1 1 *");
    // A slow before hook that started a command of its own.
    spec.hooks.before = Some(format!(
        "sleep 120 & echo $! > {}; wait",
        pid_file.display()
    ));
    let mut s = settings(dir.path());
    s.shutdown_grace = Duration::from_secs(30);
    let daemon = start(s, vec![spec], &runner, real_clock());
    daemon.handle.run_now("hooked").await;
    let started = std::time::Instant::now();
    let pid: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "hook never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(alive(pid));
    let stopping = std::time::Instant::now();
    daemon.stop().await.unwrap();
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown waited {took:?} for the hook"
    );
    let gone = std::time::Instant::now();
    while alive(pid) {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "the hook's child {pid} survived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(runner.calls().is_empty());
    let hooked = &read_status(dir.path()).unwrap().jobs["hooked"];
    assert_eq!(hooked.last_status, Some(RunStatus::Failed));
    assert!(
        hooked
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("daemon is stopping")),
        "{hooked:?}"
    );
}

// --------------------------------------------------- notifications (HTTP)

#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) body: String,
}

/// A local server that records every request.
pub(crate) async fn recorder() -> (String, Arc<Mutex<Vec<Received>>>, JoinHandle<()>) {
    use axum::extract::{Request, State};
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    async fn record(State(seen): State<Arc<Mutex<Vec<Received>>>>, req: Request) -> &'static str {
        let path = req.uri().path().to_owned();
        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap();
        seen.lock().unwrap().push(Received {
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        "OK"
    }
    let app = axum::Router::new()
        .fallback(record)
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, seen, server)
}

#[tokio::test]
async fn healthchecks_and_webhook_are_notified() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen, server) = recorder().await;
    let runner = FakeRunner::new(real_clock(), |job, _| match job {
        "good" => Step::Ok(Duration::ZERO),
        _ => Step::Fail {
            after: Duration::ZERO,
            retryable: false,
        },
    });
    let jobs = ["good", "bad"]
        .iter()
        .map(|name| {
            let mut spec = job(name, "0 0 0 1 1 *");
            spec.notify.healthchecks_url = Some(Secret::new(format!("{url}/ping/{name}")));
            spec.notify.webhook_url = Some(Secret::new(format!("{url}/hook")));
            spec
        })
        .collect();
    let daemon = start(settings(dir.path()), jobs, &runner, real_clock());
    daemon.handle.run_now("good").await;
    wait_runs(dir.path(), "good", 1).await;
    daemon.handle.run_now("bad").await;
    wait_runs(dir.path(), "bad", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.stop().await.unwrap();
    server.abort();
    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/ping/good/start",
            "/ping/good",
            "/hook",
            "/ping/bad/start",
            "/ping/bad/fail",
            "/hook"
        ]
    );
    assert_eq!(seen[4].body, "attempt 0 failed");
    let good: serde_json::Value = serde_json::from_str(&seen[2].body).unwrap();
    assert_eq!(good["job"], "good");
    assert_eq!(good["status"], "ok");
    assert_eq!(good["snapshot"], "good-0");
    assert_eq!(good["bytes_read"], 1000);
    assert_eq!(good["bytes_stored"], 400);
    assert!(good["duration_s"].is_number());
    assert!(good["error"].is_null());
    let bad: serde_json::Value = serde_json::from_str(&seen[5].body).unwrap();
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["error"], "attempt 0 failed");
}

/// A local server that answers every request after `delay`, counting them.
async fn slow_server(delay: Duration) -> (String, Arc<AtomicUsize>, JoinHandle<()>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let app = axum::Router::new().fallback(move || {
        let seen = Arc::clone(&seen);
        async move {
            tokio::time::sleep(delay).await;
            seen.fetch_add(1, Ordering::SeqCst);
            "OK"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, count, server)
}

#[tokio::test]
async fn run_now_after_the_status_says_not_running_is_never_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (url, requests, server) = slow_server(Duration::from_millis(700)).await;
    let runner = FakeRunner::new(real_clock(), |_, _| Step::Ok(Duration::ZERO));
    let mut spec = job("slowhook", "0 0 0 1 1 *");
    spec.notify.webhook_url = Some(Secret::new(format!("{url}/hook")));
    spec.notify.healthchecks_url = Some(Secret::new(format!("{url}/ping")));
    let daemon = start(settings(dir.path()), vec![spec], &runner, real_clock());
    for run in 1..=3 {
        let answer = daemon.handle.run_now("slowhook").await;
        assert_eq!(answer, Some(RunNow::Started), "run {run}");
        let status = wait_runs(dir.path(), "slowhook", run).await;
        assert_eq!(status.runs, run);
        // Not running means its notifications went out: /start, ping, hook.
        assert_eq!(
            requests.load(Ordering::SeqCst),
            3 * usize::try_from(run).unwrap()
        );
    }
    daemon.stop().await.unwrap();
    server.abort();
    assert_eq!(runner.calls().len(), 3);
}

#[tokio::test]
async fn an_unreachable_notifier_never_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let runner = FakeRunner::new(real_clock(), |_, _| Step::Ok(Duration::ZERO));
    let mut spec = job("home", "0 0 0 1 1 *");
    spec.notify.healthchecks_url = Some(Secret::new(format!("http://{closed}/ping")));
    spec.notify.webhook_url = Some(Secret::new(format!("http://{closed}/hook")));
    let daemon = start(settings(dir.path()), vec![spec], &runner, real_clock());
    daemon.handle.run_now("home").await;
    let home = wait_runs(dir.path(), "home", 1).await;
    daemon.stop().await.unwrap();
    assert_eq!(home.last_status, Some(RunStatus::Ok));
}

// ------------------------------------------------------ status endpoint

fn http_client() -> reqwest::Client {
    let roots = rustls::RootCertStore::empty();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Parses Prometheus text: every line is a comment or `name{labels} value`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels in {line:?}"
            );
            for pair in labels[1..labels.len() - 1].split(',') {
                let (key, val) = pair.split_once('=').unwrap();
                assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(
                    val.starts_with('"') && val.ends_with('"'),
                    "bad label in {line:?}"
                );
            }
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// The Python of the venv `.ci/run` creates (or `SYNBACK_PYTHON`, as in
/// `scripts/test`) when it can import `module`. `None` (with a message)
/// outside CI; under CI (`CI` set) a missing one fails the test.
fn ci_python(module: &str) -> Option<std::path::PathBuf> {
    let python = std::env::var_os("SYNBACK_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/venv/bin/python"),
        std::path::PathBuf::from,
    );
    let found = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} cannot import {module}; .ci/run installs tests/conformance/requirements.txt",
            python.display()
        );
        eprintln!("no Python with {module} (run .ci/run once); skipping that check");
        return None;
    }
    Some(python)
}

/// One sample as the reference Prometheus parser (the `prometheus_client`
/// Python package) reads it.
#[derive(Debug, serde::Deserialize)]
struct ParsedSample {
    family: String,
    kind: String,
    series: String,
    value: String,
}

/// Parses `text` with `prometheus_client.parser`; `None` when that parser
/// is not installed (outside CI). A text it refuses fails the test.
fn prometheus_parse(text: &str) -> Option<Vec<ParsedSample>> {
    use std::io::Write as _;
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in s.labels.items())
        series = s.name + ("{" + labels + "}" if labels else "")
        out.append({"family": family.name, "kind": family.type, "series": series,
                    "value": str(s.value)})
print(json.dumps(out))
"#;
    let python = ci_python("prometheus_client")?;
    let mut child = std::process::Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

async fn start_with_listener(
    dir: &Path,
    runner: &Arc<FakeRunner>,
    healthy_within: Option<Duration>,
) -> (Running, String) {
    let mut s = settings(dir);
    s.status_listen = Some("127.0.0.1:0".parse().unwrap());
    s.healthy_within = healthy_within;
    let jobs = vec![job("good", "0 0 0 1 1 *"), job("bad", "0 0 0 1 1 *")];
    let daemon = start(s, jobs, runner, real_clock());
    let addr = daemon.handle.status_addr().await.unwrap();
    (daemon, format!("http://{addr}"))
}

fn good_or_bad(job: &str, _: usize) -> Step {
    match job {
        "good" => Step::Ok(Duration::ZERO),
        _ => Step::Fail {
            after: Duration::ZERO,
            retryable: false,
        },
    }
}

#[tokio::test]
async fn metrics_parse_and_count_runs() {
    let dir = tempfile::tempdir().unwrap();
    let runner = FakeRunner::new(real_clock(), good_or_bad);
    let (daemon, base) = start_with_listener(dir.path(), &runner, None).await;
    daemon.handle.run_now("good").await;
    wait_runs(dir.path(), "good", 1).await;
    daemon.handle.run_now("bad").await;
    wait_runs(dir.path(), "bad", 1).await;
    let response = http_client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let metrics = parse_metrics(&text);
    daemon.stop().await.unwrap();
    // The reference parser reads the same samples, with the declared types.
    if let Some(samples) = prometheus_parse(&text) {
        assert_eq!(samples.len(), metrics.len(), "{samples:?}");
        for sample in &samples {
            let value: f64 = sample.value.parse().unwrap();
            assert_eq!(Some(&value), metrics.get(&sample.series), "{sample:?}");
        }
        let kind = |series: &str| {
            let sample = samples.iter().find(|s| s.series == series).unwrap();
            (sample.family.as_str(), sample.kind.as_str())
        };
        assert_eq!(
            kind("synback_runs_total{job=\"good\"}"),
            ("synback_runs", "counter")
        );
        assert_eq!(
            kind("synback_last_success_timestamp_seconds{job=\"good\"}"),
            ("synback_last_success_timestamp_seconds", "gauge")
        );
    }
    assert_eq!(metrics["synback_up"], 1.0);
    assert_eq!(metrics["synback_runs_total{job=\"good\"}"], 1.0);
    assert_eq!(metrics["synback_failures_total{job=\"good\"}"], 0.0);
    assert_eq!(metrics["synback_failures_total{job=\"bad\"}"], 1.0);
    assert_eq!(metrics["synback_bytes_read_total{job=\"good\"}"], 1000.0);
    assert!(metrics["synback_last_success_timestamp_seconds{job=\"good\"}"] > 1.7e9);
    assert!(!metrics.contains_key("synback_last_success_timestamp_seconds{job=\"bad\"}"));
    assert!(metrics.contains_key("synback_last_duration_seconds{job=\"bad\"}"));
}

#[tokio::test]
async fn healthz_turns_503_when_a_job_has_no_recent_success() {
    let dir = tempfile::tempdir().unwrap();
    let runner = FakeRunner::new(real_clock(), good_or_bad);
    let (daemon, base) =
        start_with_listener(dir.path(), &runner, Some(Duration::from_secs(3600))).await;
    let client = http_client();
    let healthz = || async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(healthz().await, 200, "no run yet is not unhealthy");
    daemon.handle.run_now("good").await;
    wait_runs(dir.path(), "good", 1).await;
    assert_eq!(healthz().await, 200);
    daemon.handle.run_now("bad").await;
    wait_runs(dir.path(), "bad", 1).await;
    let response = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.text().await.unwrap().contains("bad"));
    daemon.stop().await.unwrap();
}

/// The run-now token embedded in the status page.
fn page_token(page: &str) -> String {
    page.split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned()
}

/// The body of `GET url`.
async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// `POST /run/<job>` with the token in its header.
async fn post_run(
    client: &reqwest::Client,
    base: &str,
    job: &str,
    token: &str,
) -> reqwest::Response {
    client
        .post(format!("{base}/run/{job}"))
        .header("x-synback-token", token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn status_page_shows_jobs_and_run_now_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let runner = FakeRunner::new(real_clock(), good_or_bad);
    let (daemon, base) = start_with_listener(dir.path(), &runner, None).await;
    daemon.handle.run_now("bad").await;
    wait_runs(dir.path(), "bad", 1).await;
    let client = http_client();
    let page = get_text(&client, &base).await;
    assert!(
        page.contains("<td>good</td>") && page.contains("<td>bad</td>"),
        "{page}"
    );
    assert!(page.contains("<tr class=\"failed\">"), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "external asset in {page}"
    );
    let token = page_token(&page);
    let run = format!("{base}/run/good");
    let no_token = client.post(&run).send().await.unwrap();
    assert_eq!(no_token.status(), 403);
    let wrong = client
        .post(&run)
        .form(&[("token", "0000")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let cross_site = client
        .post(&run)
        .header("origin", "https://evil.example")
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let fetch_site = client
        .post(&run)
        .header("sec-fetch-site", "cross-site")
        .header("x-synback-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(fetch_site.status(), 403);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(runner.calls_of("good").is_empty());
    let accepted = client
        .post(&run)
        .header("origin", &base)
        .header("sec-fetch-site", "same-origin")
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 303);
    wait_runs(dir.path(), "good", 1).await;
    assert_eq!(runner.calls_of("good").len(), 1);
    let unknown = post_run(&client, &base, "nope", &token).await;
    assert_eq!(unknown.status(), 404);
    let rebound = client
        .get(&base)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        rebound.status(),
        421,
        "DNS rebinding must not reach the page"
    );
    daemon.stop().await.unwrap();
}

/// "Run now" while the job's run is still going answers 409 and starts
/// nothing (the scheduler does not count it as skipped either); the page
/// shows the button disabled meanwhile, and enabled again afterwards.
#[tokio::test]
async fn run_now_over_http_while_the_job_runs_is_refused_with_409() {
    let dir = tempfile::tempdir().unwrap();
    let runner = FakeRunner::new(real_clock(), |job, _| match job {
        "good" => Step::Ok(Duration::from_secs(2)),
        _ => Step::Ok(Duration::ZERO),
    });
    let (daemon, base) = start_with_listener(dir.path(), &runner, None).await;
    let client = http_client();
    let page = || get_text(&client, &base);
    let first = page().await;
    assert!(!first.contains("disabled"), "{first}");
    let token = page_token(&first);
    // Back to back: the scheduler's own decision answers each, so there is
    // no window in which a second request also looks accepted.
    let started = post_run(&client, &base, "good", &token).await;
    assert_eq!(started.status(), 303);
    let refused = post_run(&client, &base, "good", &token).await;
    assert_eq!(refused.status(), 409);
    assert!(refused.text().await.unwrap().contains("still going"));
    let during = page().await;
    assert!(
        during.contains("<button disabled>running</button>"),
        "{during}"
    );
    wait_runs(dir.path(), "good", 1).await;
    let status = read_status(dir.path()).unwrap();
    assert_eq!(status.jobs["good"].skipped, 0, "{status:?}");
    assert_eq!(runner.calls_of("good").len(), 1);
    assert!(!page().await.contains("disabled"));
    daemon.stop().await.unwrap();
}

// ------------------------------------------------- status page in Chromium

/// The Chromium binary; `None` (the test is skipped) when it is missing,
/// except under `CI=true`, where a missing browser fails the test.
fn chromium() -> Option<&'static Path> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; .ci/run installs it"
        );
        eprintln!("chromium not installed; skipping the headless status page test");
    }
    found
}

/// Runs headless Chromium on `url` with `extra` arguments; returns stdout.
async fn headless(chromium: &Path, profile: &Path, extra: &[String], url: &str) -> String {
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1200,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("chromium did not finish in 90 s")
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn status_page_in_headless_chromium_names_the_jobs_and_shows_the_failure_in_red() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let runner = FakeRunner::new(real_clock(), good_or_bad);
    let (daemon, base) = start_with_listener(dir.path(), &runner, None).await;
    daemon.handle.run_now("good").await;
    wait_runs(dir.path(), "good", 1).await;
    daemon.handle.run_now("bad").await;
    wait_runs(dir.path(), "bad", 1).await;

    let profile = tempfile::tempdir().unwrap();
    let dom = headless(chromium, profile.path(), &["--dump-dom".to_owned()], &base).await;
    let shot = dir.path().join("status.png");
    headless(
        chromium,
        profile.path(),
        &[format!("--screenshot={}", shot.display())],
        &base,
    )
    .await;
    daemon.stop().await.unwrap();

    // The rendered document names both jobs, the failed one in a failed row.
    assert!(
        dom.contains("<td>good</td>") && dom.contains("<td>bad</td>"),
        "{dom}"
    );
    let failed_row = dom.split("<tr class=\"failed\">").nth(1).unwrap();
    assert!(
        failed_row
            .split("</tr>")
            .next()
            .unwrap()
            .contains("<td>bad</td>"),
        "{dom}"
    );

    // The screenshot shows the failure in red, and only one row of it.
    let (width, height, pixels) = read_png(&shot);
    let (red_rows, red) = red_band(width, &pixels);
    let green = pixels
        .iter()
        .filter(|px| near(px, (0x2e, 0x7d, 0x32))) // the "ok" status text
        .count();
    eprintln!(
        "status page {width}x{height}: {red} red pixels on {} pixel rows, {green} green",
        red_rows.len()
    );
    assert!(red > 5_000, "no red failure row: {red} red pixels");
    // One table row high (a band of consecutive lines), not the whole page.
    let (first, last) = (red_rows.first().unwrap(), red_rows.last().unwrap());
    assert!(last - first < 120, "red spans lines {first}..{last}");
    assert_eq!(last - first + 1, red_rows.len(), "the red band has gaps");
    assert!(green > 20, "no green ok status: {green} pixels");

    // Pixel proof that the names are drawn, "bad" inside the red row: the
    // same document (self-contained, so it renders the same from a file),
    // once as is and once with the text of the two name cells hidden
    // (the layout does not change), differs there and only there.
    let hide = |dom: &str| {
        ["good", "bad"].iter().fold(dom.to_owned(), |dom, name| {
            dom.replace(
                &format!("<td>{name}</td>"),
                &format!("<td><span style=\"visibility:hidden\">{name}</span></td>"),
            )
        })
    };
    let mut shots = Vec::new();
    for (file, html) in [("shown", dom.clone()), ("hidden", hide(&dom))] {
        let page = dir.path().join(format!("{file}.html"));
        std::fs::write(&page, html).unwrap();
        let png = dir.path().join(format!("{file}.png"));
        headless(
            chromium,
            profile.path(),
            &[format!("--screenshot={}", png.display())],
            &format!("file://{}", page.display()),
        )
        .await;
        shots.push(read_png(&png));
    }
    let ((w, _, shown), (w2, _, hidden)) = (&shots[0], &shots[1]);
    assert_eq!(w, w2);
    let (band, _) = red_band(*w, shown);
    let (first, last) = (*band.first().unwrap(), *band.last().unwrap());
    let changed: Vec<(usize, usize)> = shown
        .iter()
        .zip(hidden)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| (i % w, i / w))
        .collect();
    let in_red = changed
        .iter()
        .filter(|(_, y)| (first..=last).contains(y))
        .count();
    let elsewhere = changed.len() - in_red;
    let (left, right) = (
        changed.iter().map(|(x, _)| *x).min().unwrap_or(0),
        changed.iter().map(|(x, _)| *x).max().unwrap_or(0),
    );
    eprintln!(
        "hiding the names changed {in_red} pixels in the red row and {elsewhere} elsewhere, columns {left}..={right}"
    );
    assert!(in_red > 30, "the name \"bad\" is not drawn in the red row");
    assert!(elsewhere > 30, "the name \"good\" is not drawn");
    assert!(right - left < 300, "more than the name column changed");
}

/// `(r, g, b)` within 24 of `color` on each channel.
fn near(px: &[u8; 3], (r, g, b): (u8, u8, u8)) -> bool {
    px[0].abs_diff(r) <= 24 && px[1].abs_diff(g) <= 24 && px[2].abs_diff(b) <= 24
}

/// The pixel rows holding #c62828 (the failed row's background), and how
/// many such pixels there are.
fn red_band(width: usize, pixels: &[[u8; 3]]) -> (std::collections::BTreeSet<usize>, usize) {
    let mut rows = std::collections::BTreeSet::new();
    let mut count = 0;
    for (i, px) in pixels.iter().enumerate() {
        if near(px, (0xc6, 0x28, 0x28)) {
            count += 1;
            rows.insert(i / width);
        }
    }
    (rows, count)
}

/// A PNG's width, height and RGB pixels, row by row.
fn read_png(path: &Path) -> (usize, usize, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    let channels = match frame.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let (width, height) = (frame.width as usize, frame.height as usize);
    let pixels = buf[..width * height * channels]
        .chunks_exact(channels)
        .map(|px| [px[0], px[1], px[2]])
        .collect();
    (width, height, pixels)
}

// ---------------------------------------------------------------- signals

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_a_good_config_keeps_the_old_one_on_a_bad_one_and_sigterm_stops() {
    use tokio::signal::unix::{SignalKind, signal};
    // Installing tokio's handlers first guarantees the signals below never
    // take the default action (terminating the test process).
    let _hup = signal(SignalKind::hangup()).unwrap();
    let _term = signal(SignalKind::terminate()).unwrap();
    let send = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let dir = tempfile::tempdir().unwrap();
    let runner = FakeRunner::new(real_clock(), |_, _| Step::Ok(Duration::ZERO));
    let daemon = start(
        settings(dir.path()),
        vec![job("a", "0 0 0 1 1 *")],
        &runner,
        real_clock(),
    );
    let loads = Arc::new(AtomicUsize::new(0));
    let state_dir = dir.path().to_owned();
    let counter = Arc::clone(&loads);
    let load = move || {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            Err("config.toml: jobs.b.schedule: bad cron expression")
        } else {
            Ok(Reload::new(
                settings(&state_dir),
                vec![job("b", "0 0 0 1 1 *")],
            ))
        }
    };
    let forward = tokio::spawn(synback::schedule::signals::forward_signals(
        daemon.handle.clone(),
        load,
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;

    send("-HUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    daemon.handle.run_now("a").await;
    wait_runs(dir.path(), "a", 1).await;

    send("-HUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    daemon.handle.run_now("b").await;
    wait_runs(dir.path(), "b", 1).await;

    send("-TERM");
    forward.await.unwrap().unwrap();
    daemon.task.await.unwrap().unwrap();
    assert_eq!(runner.calls().len(), 2);
}

// ------------------------------------------------------------------- soak

#[tokio::test(start_paused = true)]
async fn soak_every_fire_time_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let clock = paused_clock("2026-01-01T00:00:30Z");
    // Deterministic pseudo-random behaviour per (job, call).
    let runner = FakeRunner::new(Arc::clone(&clock), |job, i| {
        let seed = (i as u64 + 1)
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(job.len() as u64 * 1_442_695_040_888_963_407);
        let took = Duration::from_secs((seed >> 33) % 100);
        match (seed >> 20) % 5 {
            0 => Step::Fail {
                after: took,
                retryable: true,
            },
            1 => Step::Fail {
                after: took,
                retryable: false,
            },
            _ => Step::Ok(took),
        }
    });
    let mut s = settings(dir.path());
    s.max_parallel = 2;
    s.shutdown_grace = Duration::from_secs(600);
    s.retry = RetryPolicy::new(2, Duration::from_secs(4), MIN, MIN);
    let jobs = vec![
        job("a", "0 * * * * *"),
        job("bb", "0 * * * * *"),
        job("ccc", "0 * * * * *"),
    ];
    let daemon = start(s, jobs, &runner, clock);
    pass(MIN * 200).await;
    daemon.stop().await.unwrap();
    let status = read_status(dir.path()).unwrap();
    let mut total_runs = 0;
    for (name, job) in &status.jobs {
        assert_eq!(job.runs + job.skipped, 200, "{name}: {job:?}");
        assert!(!job.running, "{name}");
        assert!(
            job.failures > 0 && job.failures < job.runs,
            "{name}: {job:?}"
        );
        total_runs += job.runs;
    }
    assert!(runner.calls().len() as u64 >= total_runs);
    assert!(runner.max_active_total.load(Ordering::SeqCst) <= 2);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["status.json"], "no temporary files left behind");
}

// ------------------------------------------------------------------- MQTT

/// A Mosquitto broker on a free loopback port, stopped on drop.
pub(crate) struct Broker {
    pub(crate) port: u16,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

pub(crate) async fn mosquitto() -> Option<Broker> {
    let binary = [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let child = tokio::process::Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(Broker {
                port,
                _child: child,
                _dir: dir,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("mosquitto did not start");
}

pub(crate) type Messages = Arc<Mutex<Vec<(String, String)>>>;

pub(crate) async fn wait_message(seen: &Messages, topic: &str, contains: &str) -> String {
    for _ in 0..200 {
        let found = seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(t, p)| t == topic && p.contains(contains))
            .map(|(_, p)| p.clone());
        if let Some(payload) = found {
            return payload;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "no message on {topic} containing {contains:?}: {:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test]
async fn mqtt_publishes_discovery_and_state_and_the_button_runs_the_job() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use synback::schedule::mqtt::MqttSettings;
    let Some(broker) = mosquitto().await else {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto is not installed, and CI must run the MQTT test"
        );
        eprintln!("mosquitto not installed; skipping the MQTT test");
        return;
    };
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("observer", "127.0.0.1", broker.port), 64);
    client
        .subscribe("homeassistant/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe("synback/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let seen: Messages = Arc::default();
    let sink = Arc::clone(&seen);
    let observer = tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                sink.lock().unwrap().push((p.topic, payload));
            }
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let runner = FakeRunner::new(real_clock(), |_, _| Step::Ok(Duration::ZERO));
    let mut s = settings(dir.path());
    s.mqtt = Some(MqttSettings::new("127.0.0.1", broker.port, "testnode"));
    let daemon = start(s, vec![job("home", "0 0 0 1 1 *")], &runner, real_clock());

    let config = wait_message(
        &seen,
        "homeassistant/sensor/synback_testnode_home_last_success/config",
        "state_topic",
    )
    .await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["state_topic"], "synback/testnode/home/state");
    assert_eq!(config["device_class"], "timestamp");
    let button = wait_message(
        &seen,
        "homeassistant/button/synback_testnode_home_run/config",
        "command_topic",
    )
    .await;
    assert!(button.contains("synback/testnode/home/run"));
    wait_message(&seen, "synback/testnode/status", "online").await;

    daemon.handle.run_now("home").await;
    wait_runs(dir.path(), "home", 1).await;
    let state = wait_message(&seen, "synback/testnode/home/state", "\"status\":\"ok\"").await;
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["last_size"], 400);
    assert_eq!(state["snapshot"], "home-0");
    assert!(state["last_success"].as_str().unwrap().starts_with("20"));

    // The Home Assistant button.
    client
        .publish(
            "synback/testnode/home/run",
            QoS::AtLeastOnce,
            false,
            "PRESS",
        )
        .await
        .unwrap();
    wait_runs(dir.path(), "home", 2).await;
    assert_eq!(runner.calls().len(), 2);

    daemon.stop().await.unwrap();
    wait_message(&seen, "synback/testnode/status", "offline").await;
    observer.abort();
}

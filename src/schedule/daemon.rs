//! The daemon loop: fire times, no overlap, parallelism, retries, reload
//! and shutdown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::hooks::{HookKind, hook_env, run_hook, run_hook_until};
use super::notify::Notifier;
use super::status::StatusStore;
use super::{
    Clock, DaemonSettings, Error, JobRunner, JobSpec, RetryPolicy, RunOutcome, RunStatus, interval,
    next_after,
};

/// The longest single sleep: fire times are re-checked against the wall
/// clock at least this often (so a suspended machine or a clock change is
/// noticed).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How long the cleanup of a run abandoned at shutdown may take.
const ABANDON_CLEANUP: Duration = Duration::from_secs(15);

/// How long reporting a run abandoned at shutdown may take (its
/// `on_failure` hook and notifications).
const ABANDON_REPORT: Duration = Duration::from_secs(15);

/// What started a run: it names the run in the logs, and decides whether a
/// run not started because one is going counts as skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A fire time of the schedule.
    Schedule,
    /// The catch-up at start for a job whose last success is too old.
    CatchUp,
    /// A "run now" request: its asker hears the answer.
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::CatchUp => "catch-up",
            Self::Manual => "manual",
        }
    }
}

/// Why a run abandoned at shutdown failed.
const ABANDONED: &str = "abandoned at shutdown: the run outlived the grace period";

/// A new configuration for a running daemon.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Reload {
    /// The new settings (the status listener is not restarted by a reload).
    pub settings: DaemonSettings,
    /// The new jobs; jobs still running keep running to completion.
    pub jobs: Vec<JobSpec>,
}

impl Reload {
    /// A reload with these settings and jobs.
    pub fn new(settings: DaemonSettings, jobs: Vec<JobSpec>) -> Self {
        Self { settings, jobs }
    }
}

/// The daemon's answer to a "run now" request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunNow {
    /// A run of the job started (it may still wait for a free slot under
    /// `max_parallel`).
    Started,
    /// A run of the job is still going, so no second one was started (and,
    /// unlike a fire time, none is counted as skipped: the asker is told).
    AlreadyRunning,
    /// The daemon has no job of that name.
    UnknownJob,
}

/// A "run now" request on its way to the daemon loop, with where the
/// loop's decision goes: the asker learns what the loop decided, not what
/// the status said a moment earlier.
#[derive(Debug)]
pub(crate) struct RunRequest {
    job: String,
    reply: oneshot::Sender<RunNow>,
}

/// The asking side of "run now", shared by [`DaemonHandle`], the status
/// listener and the MQTT button.
#[derive(Debug, Clone)]
pub(crate) struct RunNowSender(mpsc::Sender<RunRequest>);

impl RunNowSender {
    /// Asks the daemon loop to run `job` and waits for its decision; `None`
    /// when the daemon has stopped (or stops before it decides).
    ///
    /// # Cancel safety
    /// A call cancelled while it waits for room in the queue sends
    /// nothing; once the request is queued it is carried out, and only the
    /// answer is lost.
    pub(crate) async fn request(&self, job: &str) -> Option<RunNow> {
        let (reply, answer) = oneshot::channel();
        let job = job.to_owned();
        self.0.send(RunRequest { job, reply }).await.ok()?;
        answer.await.ok()
    }

    /// A sender whose daemon has gone: every request answers `None` (for
    /// unit tests of the listener).
    #[cfg(test)]
    pub(crate) fn unconnected() -> Self {
        Self(mpsc::channel(1).0)
    }

    /// A sender answered with `answer` by a task standing in for the
    /// daemon loop, and the job names it was asked for (for unit tests of
    /// the listener).
    #[cfg(test)]
    pub(crate) fn answering(answer: RunNow) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (requests, mut received) = mpsc::channel::<RunRequest>(4);
        let (asked_tx, asked) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(request) = received.recv().await {
                let _ = asked_tx.send(request.job);
                let _ = request.reply.send(answer);
            }
        });
        (Self(requests), asked)
    }
}

/// The daemon's side of its control channels; pass it to [`run`].
#[derive(Debug)]
pub struct DaemonControl {
    shutdown: CancellationToken,
    reload: mpsc::Receiver<Reload>,
    run_now: mpsc::Receiver<RunRequest>,
    run_now_tx: RunNowSender,
    status_addr: watch::Sender<Option<SocketAddr>>,
}

/// The caller's side: stop, reload or trigger the daemon. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DaemonHandle {
    shutdown: CancellationToken,
    reload: mpsc::Sender<Reload>,
    run_now: RunNowSender,
    status_addr: watch::Receiver<Option<SocketAddr>>,
}

impl DaemonControl {
    /// A connected pair of control channels.
    pub fn new() -> (DaemonControl, DaemonHandle) {
        let shutdown = CancellationToken::new();
        let (reload_tx, reload) = mpsc::channel(4);
        let (run_now_tx, run_now) = mpsc::channel(16);
        let run_now_tx = RunNowSender(run_now_tx);
        let (status_addr, status_addr_rx) = watch::channel(None);
        let control = DaemonControl {
            shutdown: shutdown.clone(),
            reload,
            run_now,
            run_now_tx: run_now_tx.clone(),
            status_addr,
        };
        let handle = DaemonHandle {
            shutdown,
            reload: reload_tx,
            run_now: run_now_tx,
            status_addr: status_addr_rx,
        };
        (control, handle)
    }
}

impl DaemonHandle {
    /// Asks the daemon to stop: running jobs are cancelled and awaited up to
    /// the grace period; what is left then is abandoned, cleaned up and
    /// reported as failed.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The token cancelled by [`DaemonHandle::shutdown`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Replaces the daemon's jobs and settings. Returns false when the
    /// daemon has stopped.
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled call sends nothing.
    pub async fn reload(&self, reload: Reload) -> bool {
        self.reload.send(reload).await.is_ok()
    }

    /// Asks the daemon to run `job` now, and tells whether it started.
    /// Returns `None` when the daemon has stopped.
    ///
    /// # Cancel safety
    /// A call cancelled while it waits for room in the queue sends
    /// nothing; once the request is queued it is carried out, and only the
    /// answer is lost.
    pub async fn run_now(&self, job: &str) -> Option<RunNow> {
        self.run_now.request(job).await
    }

    /// The address the status listener is bound to, once it listens
    /// (useful with port 0). `None` when no listener is configured or the
    /// daemon stopped before it listened.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn status_addr(&self) -> Option<SocketAddr> {
        let mut rx = self.status_addr.clone();
        let found = rx.wait_for(Option::is_some).await.ok()?;
        *found
    }
}

/// Runs the daemon until `control`'s shutdown token is cancelled.
///
/// Every job fires on its schedule (see [`next_after`]) plus a random jitter;
/// a job never runs twice at once (a fire time that finds it running is
/// skipped and counted); at most `max_parallel` runs go at once; with
/// `catch_up`, a job whose last success is older than its interval runs at
/// start. Retryable failures are retried per [`RetryPolicy`]; the hooks and
/// notifications run once per scheduled run, around all its attempts. A
/// failing `before` hook fails the run without calling the runner. On shutdown the
/// runs' cancel tokens are cancelled (a running `before` hook is killed) and
/// the runs awaited up to `shutdown_grace`; runs still going are then
/// aborted, [`JobRunner::clean_up_abandoned`] is called for each, and each
/// is recorded and reported as failed.
///
/// # Errors
/// At start only: [`Error::DuplicateJob`] or [`Error::NoNextRun`] for a bad
/// job list, [`Error::Tls`]/[`Error::HttpClient`] when the notification
/// client cannot be built, [`Error::RemoteListenRefused`] or
/// [`Error::Listen`] for the status listener. Failures of runs, hooks,
/// notifications and status writes are logged, never returned.
///
/// # Cancel safety
/// Not cancel safe: cancel the shutdown token instead of dropping the future,
/// so that runs are stopped cleanly.
pub async fn run(
    settings: DaemonSettings,
    jobs: Vec<JobSpec>,
    runner: Arc<dyn JobRunner>,
    clock: Arc<dyn Clock>,
    control: DaemonControl,
) -> Result<(), Error> {
    check_jobs(&jobs, clock.now())?;
    let store = Arc::new(StatusStore::load(settings.state_dir.clone()));
    let notifier = Notifier::new()?;
    let server = super::http::start(&settings, &store, &clock, control.run_now_tx.clone()).await?;
    let server = server.map(|(server, addr)| {
        control.status_addr.send_replace(Some(addr));
        server
    });
    let mqtt = settings.mqtt.clone().map(|mqtt| {
        super::mqtt::Publisher::start(mqtt, Arc::clone(&store), control.run_now_tx.clone())
    });
    let mut daemon = Daemon::new(settings, runner, clock, notifier, store, control);
    daemon.set_jobs(jobs).await;
    daemon.catch_up().await;
    daemon.main_loop().await;
    daemon.refuse_run_requests().await;
    daemon.drain().await;
    if let Some(server) = server {
        server.stop().await;
    }
    if let Some(mqtt) = mqtt {
        mqtt.stop().await;
    }
    tracing::info!("daemon stopped");
    Ok(())
}

/// Checks a job list as [`run`] and a reload do: unique names, every
/// schedule fires again after `now`. A reload loader calls it before it
/// commits to the new configuration.
///
/// # Errors
/// [`Error::DuplicateJob`] or [`Error::NoNextRun`].
pub fn check_jobs(jobs: &[JobSpec], now: DateTime<Utc>) -> Result<(), Error> {
    let mut names = HashSet::new();
    for job in jobs {
        if !names.insert(job.name.as_str()) {
            return Err(Error::DuplicateJob {
                job: job.name.clone(),
            });
        }
        if next_after(&job.schedule, job.tz, now).is_none() {
            return Err(Error::NoNextRun {
                job: job.name.clone(),
                schedule: job.schedule.source().to_owned(),
            });
        }
    }
    Ok(())
}

/// A configured job and its next fire time.
#[derive(Debug)]
struct Scheduled {
    spec: Arc<JobSpec>,
    /// The cron fire time (without jitter) the next run belongs to.
    cron_next: Option<DateTime<Utc>>,
    /// When it is actually due (`cron_next` + jitter).
    due: Option<DateTime<Utc>>,
}

/// What every run needs, shared by the spawned tasks.
struct RunContext {
    runner: Arc<dyn JobRunner>,
    clock: Arc<dyn Clock>,
    notifier: Notifier,
    store: Arc<StatusStore>,
    retry: RetryPolicy,
    /// Jobs between the start of their `before` hook and the end of their
    /// last hook: the runs to clean up and report when aborted.
    in_flight: Arc<std::sync::Mutex<HashSet<String>>>,
}

struct Daemon {
    settings: DaemonSettings,
    ctx: Arc<RunContext>,
    semaphore: Arc<Semaphore>,
    jobs: BTreeMap<String, Scheduled>,
    running: HashSet<String>,
    task_jobs: HashMap<tokio::task::Id, String>,
    tasks: JoinSet<String>,
    control: DaemonControl,
}

impl Daemon {
    fn new(
        settings: DaemonSettings,
        runner: Arc<dyn JobRunner>,
        clock: Arc<dyn Clock>,
        notifier: Notifier,
        store: Arc<StatusStore>,
        control: DaemonControl,
    ) -> Self {
        let ctx = Arc::new(RunContext {
            runner,
            clock,
            notifier,
            store,
            retry: settings.retry,
            in_flight: Arc::default(),
        });
        Self {
            semaphore: Arc::new(Semaphore::new(settings.max_parallel.max(1))),
            settings,
            ctx,
            jobs: BTreeMap::new(),
            running: HashSet::new(),
            task_jobs: HashMap::new(),
            tasks: JoinSet::new(),
            control,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.ctx.clock.now()
    }

    /// Replaces the job list and computes every next fire time.
    async fn set_jobs(&mut self, jobs: Vec<JobSpec>) {
        let now = self.now();
        self.jobs.clear();
        for spec in jobs {
            let mut scheduled = Scheduled {
                spec: Arc::new(spec),
                cron_next: None,
                due: None,
            };
            schedule_next(&mut scheduled, now);
            self.publish_next(&scheduled, now).await;
            self.jobs.insert(scheduled.spec.name.clone(), scheduled);
        }
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        self.ctx.store.retain(&names, now).await;
        tracing::info!(jobs = names.len(), "jobs scheduled");
    }

    async fn publish_next(&self, scheduled: &Scheduled, now: DateTime<Utc>) {
        let due = scheduled.due;
        let running = self.running.contains(&scheduled.spec.name);
        self.ctx
            .store
            .update(&scheduled.spec.name, now, |job| {
                job.next_run = due;
                job.running = running;
            })
            .await;
    }

    /// Starts, once, every job whose last success is older than its interval.
    async fn catch_up(&mut self) {
        if !self.settings.catch_up {
            return;
        }
        let now = self.now();
        let late: Vec<String> = self
            .jobs
            .values()
            .filter(|s| is_late(&s.spec, self.ctx.store.job(&s.spec.name).last_success, now))
            .map(|s| s.spec.name.clone())
            .collect();
        for name in late {
            tracing::info!(job = %name, "last success older than the interval; catching up");
            self.start(&name, Trigger::CatchUp).await;
        }
    }

    async fn main_loop(&mut self) {
        loop {
            let sleep = self.time_to_next_due();
            tokio::select! {
                () = self.control.shutdown.cancelled() => break,
                Some(reload) = self.control.reload.recv() => self.reload(reload).await,
                Some(request) = self.control.run_now.recv() => self.run_requested(request).await,
                Some(joined) = self.tasks.join_next_with_id() => self.finished(joined).await,
                () = tokio::time::sleep(sleep) => self.fire_due().await,
            }
        }
    }

    fn time_to_next_due(&self) -> Duration {
        let now = self.now();
        self.jobs
            .values()
            .filter_map(|s| s.due)
            .min()
            .map_or(MAX_SLEEP, |due| {
                (due - now)
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_SLEEP)
            })
    }

    async fn fire_due(&mut self) {
        let now = self.now();
        let due: Vec<String> = self
            .jobs
            .values()
            .filter(|s| s.due.is_some_and(|d| d <= now))
            .map(|s| s.spec.name.clone())
            .collect();
        for name in due {
            if let Some(scheduled) = self.jobs.get_mut(&name) {
                schedule_next(scheduled, now);
            }
            self.start(&name, Trigger::Schedule).await;
        }
    }

    /// Starts a requested run and tells the asker what became of it. The
    /// answer is dropped when the asker stopped waiting. A request that
    /// meets a shutdown (`select!` picks among ready branches at random)
    /// starts nothing: its dropped reply tells the asker the daemon stops.
    async fn run_requested(&mut self, request: RunRequest) {
        if self.control.shutdown.is_cancelled() {
            return;
        }
        let answer = self.start(&request.job, Trigger::Manual).await;
        let _ = request.reply.send(answer);
    }

    /// Stops taking "run now" requests once the loop has ended: those
    /// already queued, or being queued by a sender that holds a slot, are
    /// dropped, so their askers hear that the daemon stops instead of
    /// waiting for a decision that will never come (and the status
    /// listener's and MQTT's stops, which wait for their handlers, end).
    async fn refuse_run_requests(&mut self) {
        self.control.run_now.close();
        while self.control.run_now.recv().await.is_some() {}
    }

    /// Starts a run of `name` unless one is going: then a fire time is
    /// counted as skipped, a manual request only answered.
    async fn start(&mut self, name: &str, trigger: Trigger) -> RunNow {
        // A run that ended but whose task the main loop has not reaped yet
        // (select! picks among ready branches at random) is not running.
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            self.finished(joined).await;
        }
        let now = self.now();
        let Some(scheduled) = self.jobs.get(name) else {
            tracing::warn!(
                job = name,
                trigger = trigger.as_str(),
                "run requested for an unknown job"
            );
            return RunNow::UnknownJob;
        };
        let spec = Arc::clone(&scheduled.spec);
        let next = scheduled.due;
        if self.running.contains(name) {
            self.not_started(name, trigger, now, next).await;
            return RunNow::AlreadyRunning;
        }
        self.running.insert(name.to_owned());
        self.ctx
            .store
            .update(name, now, |job| {
                job.running = true;
                job.next_run = next;
            })
            .await;
        let span = tracing::info_span!(
            "run",
            job = name,
            trigger = trigger.as_str(),
            snapshot = tracing::field::Empty
        );
        let task = run_job(
            Arc::clone(&self.ctx),
            spec,
            Arc::clone(&self.semaphore),
            self.control.shutdown.child_token(),
        )
        .instrument(span);
        let handle = self.tasks.spawn(task);
        self.task_jobs.insert(handle.id(), name.to_owned());
        RunNow::Started
    }

    /// Records a run not started because the previous one is still going.
    /// Only a fire time counts as skipped: whoever asked for a manual run
    /// hears the answer.
    async fn not_started(
        &self,
        name: &str,
        trigger: Trigger,
        now: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) {
        if trigger == Trigger::Manual {
            tracing::info!(
                job = name,
                "run requested while a run is still going; not started"
            );
            return;
        }
        tracing::warn!(
            job = name,
            trigger = trigger.as_str(),
            "previous run still going; this run is skipped"
        );
        self.ctx
            .store
            .update(name, now, |job| {
                job.skipped += 1;
                job.next_run = next;
            })
            .await;
    }

    async fn finished(
        &mut self,
        joined: Result<(tokio::task::Id, String), tokio::task::JoinError>,
    ) {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        let Some(name) = self.task_jobs.remove(&id) else {
            return;
        };
        self.running.remove(&name);
        if let Err(error) = &joined {
            tracing::error!(job = %name, error = %error, "run task ended abnormally");
        }
        // Only now, with its notifications sent and its task reaped, may a
        // new run of the job start: the status says so from here on.
        self.ctx
            .store
            .update(&name, self.now(), |job| job.running = false)
            .await;
        if !self.jobs.contains_key(&name) {
            // Removed by a reload while it ran: drop its status entry again.
            let names: Vec<String> = self.jobs.keys().cloned().collect();
            self.ctx.store.retain(&names, self.now()).await;
        }
    }

    async fn reload(&mut self, reload: Reload) {
        if let Err(error) = check_jobs(&reload.jobs, self.now()) {
            tracing::error!(error = %error, "new configuration rejected; keeping the old one");
            return;
        }
        if reload.settings.status_listen != self.settings.status_listen {
            tracing::warn!("status_listen changes take effect after a restart");
        }
        // Debug output masks the password, so only a password change goes
        // unnoticed here.
        if format!("{:?}", reload.settings.mqtt) != format!("{:?}", self.settings.mqtt) {
            tracing::warn!("[mqtt] changes take effect after a restart");
        }
        if reload.settings.max_parallel != self.settings.max_parallel {
            self.semaphore = Arc::new(Semaphore::new(reload.settings.max_parallel.max(1)));
        }
        self.ctx = Arc::new(RunContext {
            runner: Arc::clone(&self.ctx.runner),
            clock: Arc::clone(&self.ctx.clock),
            notifier: self.ctx.notifier.clone(),
            store: Arc::clone(&self.ctx.store),
            retry: reload.settings.retry,
            in_flight: Arc::clone(&self.ctx.in_flight),
        });
        self.settings = reload.settings;
        self.set_jobs(reload.jobs).await;
        tracing::info!("configuration reloaded");
    }

    /// After shutdown: waits for the cancelled runs up to the grace period,
    /// then aborts what is left.
    async fn drain(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        tracing::info!(running = self.tasks.len(), "stopping running jobs");
        let grace = self.settings.shutdown_grace;
        let waited = tokio::time::timeout(grace, async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                self.finished(joined).await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                running = self.tasks.len(),
                "jobs did not stop within the grace period; aborting them"
            );
            self.tasks.abort_all();
            while let Some(joined) = self.tasks.join_next_with_id().await {
                self.finished(joined).await;
            }
            let left: Vec<String> = std::mem::take(
                &mut *self
                    .ctx
                    .in_flight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
            .into_iter()
            .collect();
            let reports = left.into_iter().map(|name| {
                let spec = self.jobs.get(&name).map(|s| Arc::clone(&s.spec));
                let span = tracing::info_span!("run", job = %name, trigger = "shutdown");
                abandoned(Arc::clone(&self.ctx), spec, name).instrument(span)
            });
            futures_util::future::join_all(reports).await;
        }
    }
}

/// Moves a job's fire time past `now` (from the later of its last cron fire
/// time and `now`, so missed fire times are not replayed one by one).
fn schedule_next(scheduled: &mut Scheduled, now: DateTime<Utc>) {
    let spec = &scheduled.spec;
    let from = scheduled.cron_next.map_or(now, |c| c.max(now));
    let next = next_after(&spec.schedule, spec.tz, from);
    if next.is_none() {
        tracing::warn!(job = %spec.name, "schedule never fires again");
    }
    scheduled.cron_next = next;
    scheduled.due = next.map(|n| n + jitter(spec.jitter));
}

fn jitter(max: Duration) -> chrono::Duration {
    if max.is_zero() {
        return chrono::Duration::zero();
    }
    let delay = max.mul_f64(rand::random::<f64>());
    chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::zero())
}

/// True when the job's last success is older than its interval (or it never
/// succeeded).
fn is_late(spec: &JobSpec, last_success: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    let Some(every) = interval(&spec.schedule, spec.tz, now) else {
        return false;
    };
    last_success.is_none_or(|at| now - at > every)
}

/// One scheduled run: wait for a slot, notify, hooks, attempts with retries,
/// record. Returns the job name.
async fn run_job(
    ctx: Arc<RunContext>,
    spec: Arc<JobSpec>,
    semaphore: Arc<Semaphore>,
    cancel: CancellationToken,
) -> String {
    let name = spec.name.clone();
    let permit = tokio::select! {
        permit = semaphore.acquire_owned() => permit,
        () = cancel.cancelled() => {
            tracing::info!("shutdown before the run could start");
            ctx.store.update(&name, ctx.clock.now(), |job| job.running = false).await;
            return name;
        }
    };
    let Ok(permit) = permit else {
        return name;
    };
    let start = ctx.clock.now();
    super::run_log::clear(&name);
    tracing::info!("run started");
    ctx.store
        .update(&name, start, |job| job.last_start = Some(start))
        .await;
    ctx.notifier.started(&name, &spec.notify).await;
    set_in_flight(&ctx, &name, true);
    let outcome = run_with_hooks(&ctx, &spec, &cancel).await;
    set_in_flight(&ctx, &name, false);
    if let Some(snapshot) = &outcome.snapshot {
        tracing::Span::current().record("snapshot", snapshot.as_str());
    }
    log_outcome(&outcome);
    let end = ctx.clock.now();
    ctx.store
        .update(&name, end, |job| job.record(&outcome, end))
        .await;
    // Notifications do not touch the NAS: the next queued job may start.
    drop(permit);
    ctx.notifier.finished(&name, &spec.notify, &outcome).await;
    name
}

fn set_in_flight(ctx: &RunContext, job: &str, on: bool) {
    let mut set = ctx
        .in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match on {
        true => set.insert(job.to_owned()),
        false => set.remove(job),
    };
}

/// After a run of `name` was aborted at shutdown: lets the runner clean up
/// what it left, then records and reports the run as failed.
async fn abandoned(ctx: Arc<RunContext>, spec: Option<Arc<JobSpec>>, name: String) {
    tracing::warn!("run abandoned at the end of the grace period; cleaning up");
    match tokio::time::timeout(ABANDON_CLEANUP, ctx.runner.clean_up_abandoned(&name)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(error, "could not clean up the abandoned run"),
        Err(_) => tracing::warn!(
            timeout_s = ABANDON_CLEANUP.as_secs(),
            "cleaning up the abandoned run timed out"
        ),
    }
    let end = ctx.clock.now();
    let mut outcome = RunOutcome::failed(ABANDONED, false);
    if let Some(start) = ctx.store.job(&name).last_start {
        outcome = outcome.with_duration((end - start).to_std().unwrap_or_default());
    }
    log_outcome(&outcome);
    ctx.store
        .update(&name, end, |job| job.record(&outcome, end))
        .await;
    let Some(spec) = spec else { return };
    let report = async {
        after_hooks(&spec, &outcome).await;
        ctx.notifier.finished(&name, &spec.notify, &outcome).await;
    };
    if tokio::time::timeout(ABANDON_REPORT, report).await.is_err() {
        tracing::warn!("reporting the abandoned run timed out");
    }
}

fn log_outcome(outcome: &RunOutcome) {
    let duration_ms = u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX);
    match outcome.status {
        RunStatus::Ok => tracing::info!(
            bytes_read = outcome.bytes_read,
            bytes_stored = outcome.bytes_stored,
            duration_ms,
            "run succeeded"
        ),
        _ => tracing::warn!(
            status = outcome.status.as_str(),
            error = outcome.error.as_deref().unwrap_or(""),
            duration_ms,
            "run did not succeed"
        ),
    }
}

/// The `before` hook, the attempts, then `after` or `on_failure`.
async fn run_with_hooks(
    ctx: &RunContext,
    spec: &JobSpec,
    cancel: &CancellationToken,
) -> RunOutcome {
    let hooks = &spec.hooks;
    if let Some(before) = &hooks.before {
        let env = hook_env(&spec.name, None);
        if let Err(error) = run_hook_until(
            HookKind::Before,
            &spec.name,
            before,
            &env,
            hooks.timeout,
            cancel,
        )
        .await
        {
            let outcome = RunOutcome::failed(error.to_string(), false);
            after_hooks(spec, &outcome).await;
            return outcome;
        }
    }
    let outcome = attempts(ctx, &spec.name, cancel).await;
    after_hooks(spec, &outcome).await;
    outcome
}

async fn after_hooks(spec: &JobSpec, outcome: &RunOutcome) {
    let hooks = &spec.hooks;
    let (kind, command) = if outcome.status.is_success() {
        (HookKind::After, &hooks.after)
    } else {
        (HookKind::OnFailure, &hooks.on_failure)
    };
    let Some(command) = command else { return };
    let env = hook_env(&spec.name, Some(outcome));
    if let Err(error) = run_hook(kind, &spec.name, command, &env, hooks.timeout).await {
        tracing::warn!(error = %error, "hook failed");
    }
}

/// Calls the runner, retrying retryable failures per the retry policy.
async fn attempts(ctx: &RunContext, job: &str, cancel: &CancellationToken) -> RunOutcome {
    let first = tokio::time::Instant::now();
    let mut made = 0u32;
    loop {
        made += 1;
        let started = tokio::time::Instant::now();
        let mut outcome = ctx.runner.run(job, cancel.child_token()).await;
        if outcome.duration.is_zero() {
            outcome.duration = started.elapsed();
        }
        if outcome.status != RunStatus::Failed || !outcome.retryable || cancel.is_cancelled() {
            return outcome;
        }
        let Some(delay) = ctx
            .retry
            .next_delay(made, first.elapsed(), rand::random::<f64>())
        else {
            return outcome;
        };
        tracing::warn!(
            attempt = made,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = outcome.error.as_deref().unwrap_or(""),
            "transient failure; retrying"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return outcome,
        }
    }
}

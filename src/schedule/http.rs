//! The optional HTTP status endpoint (off unless `status_listen` is set).
//!
//! - `GET /healthz`: 200, or 503 when a job's last success is older than
//!   `healthy_within`. A job that never finished a run counts from the
//!   daemon's start: healthy at first, so a fresh install is not reported
//!   broken, and stale once `healthy_within` passes without a success (a
//!   schedule that never fires, a first run that hangs).
//! - `GET /metrics`: Prometheus text format.
//! - `GET /`: a small self-contained HTML page (no external assets) with a
//!   "run now" button per job.
//! - `POST /run/<job>`: triggers a job through the scheduler. It requires the
//!   per-process random token embedded in the page (form field `token` or
//!   header `x-synback-token`), and refuses requests whose `Origin` is not
//!   this host or whose `Sec-Fetch-Site` is cross-site, so another web page
//!   cannot trigger runs. The scheduler decides, and the answer says what
//!   it decided: 303 back to the page when the run started (or waits for
//!   a free slot under `max_parallel`), 404 for an
//!   unknown job, 409 when a run of the job is still going (nothing is
//!   started; the page, as loaded, shows such a job's button disabled), 503
//!   when the daemon is stopping.
//!
//! The listener refuses non-loopback addresses unless `allow_remote` is set.
//! Requests whose `Host` is not `localhost` or a loopback address (with
//! `allow_remote`: or any IP address) are refused (421), so a DNS-rebinding
//! page, whose `Host` is the attacker's name, cannot read the token. When
//! `trusted_peers` is set, non-loopback clients other than those are
//! refused (403), and the trusted ones (a reverse proxy such as Home
//! Assistant's ingress, which keeps the browser's `Host`) may send any
//! `Host`.
//!
//! Links and redirects are relative and the page may be framed by its own
//! origin, so it works below a path prefix (`/api/hassio_ingress/<token>/`)
//! inside the Home Assistant sidebar.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::daemon::{RunNow, RunNowSender};
use super::status::{JobStatus, StatusFile, StatusStore};
use super::{Clock, DaemonSettings, Error, RunStatus};

/// The header that may carry the run-now token instead of the form field.
pub const TOKEN_HEADER: &str = "x-synback-token";

#[derive(Clone)]
struct AppState {
    store: Arc<StatusStore>,
    clock: Arc<dyn Clock>,
    token: Arc<str>,
    run_now: RunNowSender,
    healthy_within: Option<Duration>,
    allow_remote: bool,
    trusted_peers: Arc<[IpAddr]>,
    /// When the listener started: the age of a job that never ran.
    started: DateTime<Utc>,
}

/// A running status listener.
pub(crate) struct Server {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops serving and waits for the server task.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::warn!(error = %error, "status listener task failed");
        }
    }
}

/// Binds and serves the status endpoint when `status_listen` is set, and
/// publishes the bound address through the control channel.
pub(crate) async fn start(
    settings: &DaemonSettings,
    store: &Arc<StatusStore>,
    clock: &Arc<dyn Clock>,
    run_now: RunNowSender,
) -> Result<Option<(Server, SocketAddr)>, Error> {
    let Some(addr) = settings.status_listen else {
        return Ok(None);
    };
    if !addr.ip().is_loopback() && !settings.allow_remote {
        return Err(Error::RemoteListenRefused { addr });
    }
    let listen_error = |source| Error::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    let state = AppState {
        store: Arc::clone(store),
        clock: Arc::clone(clock),
        token: random_token().into(),
        run_now,
        healthy_within: settings.healthy_within,
        allow_remote: settings.allow_remote,
        trusted_peers: settings
            .trusted_peers
            .iter()
            .map(IpAddr::to_canonical)
            .collect(),
        started: clock.now(),
    };
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %error, "status listener stopped");
        }
    });
    tracing::info!(addr = %bound, "status listener started");
    Ok(Some((Server { stop, task }, bound)))
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/run/{job}", post(run_now))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .with_state(state)
}

async fn check_host(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    match admit(&state, peer.ip(), host) {
        Ok(()) => next.run(request).await,
        Err((status, reason)) => {
            tracing::warn!(peer = %peer, host = host.unwrap_or(""), reason, "request refused");
            (status, format!("refused: {reason}\n")).into_response()
        }
    }
}

/// Whether a request from `peer` for `host` is served (see the module docs).
fn admit(
    state: &AppState,
    peer: IpAddr,
    host: Option<&str>,
) -> Result<(), (StatusCode, &'static str)> {
    let peer = peer.to_canonical();
    if state.trusted_peers.contains(&peer) {
        return Ok(());
    }
    if !state.trusted_peers.is_empty() && !peer.is_loopback() {
        return Err((StatusCode::FORBIDDEN, "not a trusted peer"));
    }
    let host_ok = host.is_some_and(|host| {
        is_local_host(host) || (state.allow_remote && host_name(host).parse::<IpAddr>().is_ok())
    });
    if host_ok {
        Ok(())
    } else {
        Err((StatusCode::MISDIRECTED_REQUEST, "not a local host name"))
    }
}

/// The name or address of a `Host` header, without port or brackets.
fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
}

/// True for `localhost` or a loopback address, with or without a port.
fn is_local_host(host: &str) -> bool {
    let name = host_name(host);
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn healthz(State(state): State<AppState>) -> Response {
    let status = state.store.snapshot();
    let now = state.clock.now();
    let stale = stale_jobs(&status, state.healthy_within, now, state.started);
    if stale.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let body = format!("stale: {}\n", stale.join(", "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// Jobs whose last success is older than `within` (none without a
/// threshold). A job that never finished a run is as old as the daemon
/// (`started`); one whose runs all failed is stale at once.
fn stale_jobs(
    status: &StatusFile,
    within: Option<Duration>,
    now: DateTime<Utc>,
    started: DateTime<Utc>,
) -> Vec<String> {
    let Some(within) = within.and_then(|w| chrono::Duration::from_std(w).ok()) else {
        return Vec::new();
    };
    status
        .jobs
        .iter()
        .filter(|(_, job)| match (job.last_success, job.last_end) {
            (Some(at), _) => now - at > within,
            (None, Some(_)) => true,
            (None, None) => now - started > within,
        })
        .map(|(name, _)| name.clone())
        .collect()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = render_metrics(&state.store.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// A per-job metric family: name, type, help, value of one job.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&JobStatus) -> Option<f64>,
);

/// The Prometheus text exposition of `status`.
pub fn render_metrics(status: &StatusFile) -> String {
    let mut out = String::new();
    family(&mut out, "synback_up", "gauge", "1 while the daemon runs.");
    out.push_str("synback_up 1\n");
    let per_job: [Family; 8] = [
        ("synback_runs_total", "counter", "Finished runs.", |j| {
            Some(j.runs as f64)
        }),
        ("synback_failures_total", "counter", "Failed runs.", |j| {
            Some(j.failures as f64)
        }),
        (
            "synback_skipped_total",
            "counter",
            "Fire times skipped because the job was still running.",
            |j| Some(j.skipped as f64),
        ),
        (
            "synback_bytes_read_total",
            "counter",
            "Bytes read from sources.",
            |j| Some(j.bytes_read as f64),
        ),
        (
            "synback_bytes_stored_total",
            "counter",
            "Bytes stored on the NAS.",
            |j| Some(j.bytes_stored as f64),
        ),
        (
            "synback_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful run.",
            |j| j.last_success.map(|t| t.timestamp() as f64),
        ),
        (
            "synback_last_duration_seconds",
            "gauge",
            "Duration of the last run.",
            |j| j.last_duration_s,
        ),
        (
            "synback_running",
            "gauge",
            "1 while a run is queued or going.",
            |j| Some(if j.running { 1.0 } else { 0.0 }),
        ),
    ];
    for (name, kind, help, value) in per_job {
        family(&mut out, name, kind, help);
        for (job, status) in &status.jobs {
            if let Some(v) = value(status) {
                let _ = writeln!(out, "{name}{{job=\"{}\"}} {v}", escape_label(job));
            }
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Debug, Deserialize)]
struct RunForm {
    token: Option<String>,
}

async fn run_now(
    State(state): State<AppState>,
    Path(job): Path<String>,
    headers: HeaderMap,
    form: Result<Form<RunForm>, FormRejection>,
) -> Response {
    if let Err(reason) = same_origin(&headers) {
        tracing::warn!(job = %job, reason, "run-now refused");
        return (StatusCode::FORBIDDEN, format!("refused: {reason}\n")).into_response();
    }
    let given = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| form.ok().and_then(|Form(f)| f.token));
    if !given.is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.as_bytes())) {
        tracing::warn!(job = %job, "run-now refused: missing or wrong token");
        return (StatusCode::FORBIDDEN, "refused: missing or wrong token\n").into_response();
    }
    tracing::info!(job = %job, "run-now requested over HTTP");
    run_now_answer(state.run_now.request(&job).await)
}

/// The HTTP answer to the scheduler's decision on a run-now request.
fn run_now_answer(decision: Option<RunNow>) -> Response {
    let text = match decision {
        // Relative: from `<prefix>/run/<job>` back to `<prefix>/`, whatever
        // prefix a reverse proxy (Home Assistant ingress) put in front.
        Some(RunNow::Started) => return Redirect::to("../").into_response(),
        Some(RunNow::AlreadyRunning) => (
            StatusCode::CONFLICT,
            "a run of this job is still going; it was not started again\n",
        ),
        Some(RunNow::UnknownJob) => (StatusCode::NOT_FOUND, "no such job\n"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "daemon is stopping\n"),
    };
    text.into_response()
}

/// Refuses requests a browser marks as coming from another site.
fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
        && site != "none"
    {
        return Err("cross-site request");
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).ok_or("origin without host")?;
        let allowed = [format!("http://{host}"), format!("https://{host}")];
        if !allowed.iter().any(|a| a == origin) {
            return Err("foreign origin");
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page(State(state): State<AppState>) -> Response {
    let html = render_page(&state.store.snapshot(), &state.token, state.clock.now());
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            // Framed only by its own origin: the Home Assistant sidebar
            // shows it in an iframe of the same origin through ingress.
            (
                header::X_FRAME_OPTIONS,
                HeaderValue::from_static("SAMEORIGIN"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'self'",
                ),
            ),
        ],
        html,
    )
        .into_response()
}

fn render_page(status: &StatusFile, token: &str, now: DateTime<Utc>) -> String {
    let mut rows = String::new();
    for (name, job) in &status.jobs {
        let _ = write!(rows, "{}", row(name, job, token));
    }
    if status.jobs.is_empty() {
        rows.push_str("<tr><td colspan=\"7\">no jobs</td></tr>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>synback status</title>\
<style>{STYLE}</style></head><body><h1>synback</h1>\
<p>as of {}</p><table><thead><tr><th>job</th><th>status</th><th>last success</th>\
<th>next run</th><th>last snapshot</th><th>last error</th><th></th></tr></thead>\
<tbody>{rows}</tbody></table></body></html>\n",
        now.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}td,th{padding:.4em .8em;border-bottom:1px solid #ddd;text-align:left}\
tr.failed td{color:#fff;background:#c62828}tr.ok td.status{color:#2e7d32;font-weight:bold}\
tr.partial td.status{color:#ef6c00;font-weight:bold}";

fn row(name: &str, job: &JobStatus, token: &str) -> String {
    let class = job.last_status.map_or("never", RunStatus::as_str);
    let status = if job.running { "running" } else { class };
    let button = match job.running {
        true => "<button disabled>running</button>",
        false => "<button>run now</button>",
    };
    let stamp = |t: Option<DateTime<Utc>>| {
        t.map_or("-".to_owned(), |t| {
            t.format("%Y-%m-%d %H:%M UTC").to_string()
        })
    };
    format!(
        "<tr class=\"{class}\"><td>{}</td><td class=\"status\">{status}</td><td>{}</td><td>{}</td>\
<td>{}</td><td>{}</td><td><form method=\"post\" action=\"run/{}\">\
<input type=\"hidden\" name=\"token\" value=\"{token}\">{button}</form></td></tr>",
        escape_html(name),
        stamp(job.last_success),
        stamp(job.next_run),
        escape_html(job.last_snapshot.as_deref().unwrap_or("-")),
        escape_html(job.last_error.as_deref().unwrap_or("")),
        escape_html(&percent_encode(name)),
    )
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::SystemClock;

    fn state(allow_remote: bool, trusted: &[&str]) -> AppState {
        let dir = std::env::temp_dir().join("synback-http-unit-never-written");
        AppState {
            store: Arc::new(StatusStore::load(dir)),
            clock: Arc::new(SystemClock),
            token: "t".into(),
            run_now: RunNowSender::unconnected(),
            healthy_within: None,
            allow_remote,
            trusted_peers: trusted
                .iter()
                .map(|p| p.parse::<IpAddr>().unwrap().to_canonical())
                .collect(),
            started: Utc::now(),
        }
    }

    fn code(state: &AppState, peer: &str, host: &str) -> u16 {
        match admit(state, peer.parse().unwrap(), Some(host)) {
            Ok(()) => 200,
            Err((status, _)) => status.as_u16(),
        }
    }

    #[test]
    fn peers_and_hosts_are_admitted_as_documented() {
        let local = state(false, &[]);
        assert_eq!(code(&local, "127.0.0.1", "127.0.0.1:9105"), 200);
        assert_eq!(code(&local, "127.0.0.1", "evil.example"), 421);
        assert_eq!(code(&local, "127.0.0.1", "192.168.1.5:9105"), 421);
        // allow_remote: any IP literal, but never a name (DNS rebinding).
        let remote = state(true, &[]);
        assert_eq!(code(&remote, "192.168.1.7", "192.168.1.5:9105"), 200);
        assert_eq!(code(&remote, "192.168.1.7", "[fd00::5]:9105"), 200);
        assert_eq!(code(&remote, "192.168.1.7", "evil.example:9105"), 421);
        // Home Assistant: only the Supervisor (and loopback) get in, and
        // the Supervisor forwards the browser's Host.
        let ha = state(true, &["172.30.32.2"]);
        assert_eq!(code(&ha, "172.30.32.2", "homeassistant.local:8123"), 200);
        assert_eq!(
            code(&ha, "::ffff:172.30.32.2", "homeassistant.local:8123"),
            200
        );
        assert_eq!(code(&ha, "172.30.33.4", "172.30.33.9:9105"), 403);
        assert_eq!(code(&ha, "172.30.33.4", "homeassistant.local:8123"), 403);
        assert_eq!(code(&ha, "127.0.0.1", "localhost:9105"), 200);
        assert_eq!(code(&ha, "127.0.0.1", "evil.example"), 421);
        let mapped = state(true, &["::ffff:172.30.32.2"]);
        assert_eq!(
            code(&mapped, "172.30.32.2", "homeassistant.local:8123"),
            200
        );
        assert_eq!(
            admit(&ha, "127.0.0.1".parse().unwrap(), None).map_err(|e| e.0),
            Err(StatusCode::MISDIRECTED_REQUEST)
        );
    }

    #[test]
    fn a_job_that_never_finishes_a_run_goes_stale_after_the_threshold() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let started = t("2026-01-01T00:00:00Z");
        let mut status = StatusFile::default();
        status.jobs.insert("never".into(), JobStatus::default());
        let ok = JobStatus {
            last_end: Some(t("2026-01-01T05:00:00Z")),
            last_success: Some(t("2026-01-01T05:00:00Z")),
            ..JobStatus::default()
        };
        status.jobs.insert("ok".into(), ok);
        let failed = JobStatus {
            last_end: Some(t("2026-01-01T05:00:00Z")),
            ..JobStatus::default()
        };
        status.jobs.insert("failed".into(), failed);
        let within = Some(Duration::from_secs(3600));
        let stale = |now| stale_jobs(&status, within, t(now), started);
        assert_eq!(stale("2026-01-01T00:30:00Z"), ["failed"]);
        assert_eq!(stale("2026-01-01T05:30:00Z"), ["failed", "never"]);
        assert_eq!(stale("2026-01-01T06:30:00Z"), ["failed", "never", "ok"]);
        assert!(stale_jobs(&status, None, t("2027-01-01T00:00:00Z"), started).is_empty());
    }

    #[test]
    fn each_decision_of_the_scheduler_has_its_own_answer() {
        let status = |decision| run_now_answer(decision).status();
        assert_eq!(status(Some(RunNow::Started)), StatusCode::SEE_OTHER);
        assert_eq!(status(Some(RunNow::AlreadyRunning)), StatusCode::CONFLICT);
        assert_eq!(status(Some(RunNow::UnknownJob)), StatusCode::NOT_FOUND);
        assert_eq!(status(None), StatusCode::SERVICE_UNAVAILABLE);
    }

    /// A status server for job `ha` that trusts the ingress proxy at
    /// 127.0.0.2: its folder (keep it), the server, its address and where
    /// its "run now" requests arrive.
    async fn start_for_ingress() -> (
        tempfile::TempDir,
        Server,
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = DaemonSettings::new(dir.path());
        settings.status_listen = Some("127.0.0.1:0".parse().unwrap());
        settings.trusted_peers = vec!["127.0.0.2".parse().unwrap()];
        let store = Arc::new(StatusStore::load(dir.path().to_owned()));
        store.update("ha", Utc::now(), |_| {}).await;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (run_tx, run_rx) = RunNowSender::answering(RunNow::Started);
        let (server, addr) = start(&settings, &store, &clock, run_tx)
            .await
            .unwrap()
            .unwrap();
        (dir, server, addr, run_rx)
    }

    /// The page as Home Assistant's ingress shows it: the browser is at
    /// `http://homeassistant.local:8123/api/hassio_ingress/TOKEN/`, the
    /// Supervisor (a trusted peer, here 127.0.0.2) strips the prefix and
    /// forwards the browser's Host and Origin. The form, the redirect and
    /// the framing headers must keep the browser inside the prefix.
    #[tokio::test]
    async fn the_page_works_below_the_ingress_prefix_for_a_trusted_proxy_only() {
        let (_dir, server, addr, mut run_rx) = start_for_ingress().await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = |local: &str| {
            reqwest::Client::builder()
                .local_address(local.parse::<IpAddr>().unwrap())
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
        };
        let supervisor = client("127.0.0.2");
        let browser_base =
            reqwest::Url::parse("http://homeassistant.local:8123/api/hassio_ingress/abc123/")
                .unwrap();
        let host = "homeassistant.local:8123";
        let origin = "http://homeassistant.local:8123";
        // Browser URL -> the URL the Supervisor asks the add-on for.
        let upstream = |url: &reqwest::Url| {
            let rest = url
                .as_str()
                .strip_prefix(browser_base.as_str())
                .unwrap_or_else(|| panic!("{url} left the ingress prefix"));
            format!("http://{addr}/{rest}")
        };

        let page = supervisor
            .get(upstream(&browser_base))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let frame = page.headers()["x-frame-options"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(frame, "SAMEORIGIN");
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("frame-ancestors 'self'"), "{csp}");
        let html = page.text().await.unwrap();
        let action = html
            .split("action=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let token = html
            .split("name=\"token\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let post_url = browser_base.join(action).unwrap();
        let posted = supervisor
            .post(upstream(&post_url))
            .header("host", host)
            .header("origin", origin)
            .header("sec-fetch-site", "same-origin")
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert!(posted.status().is_redirection(), "{posted:?}");
        assert_eq!(run_rx.recv().await.as_deref(), Some("ha"));
        let location = posted.headers()["location"].to_str().unwrap();
        assert_eq!(
            post_url.join(location).unwrap(),
            browser_base,
            "redirect leaves the prefix"
        );

        // Loopback clients other than the proxy keep the Host check.
        let local = client("127.0.0.1");
        let foreign = local
            .get(format!("http://{addr}/"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(foreign.status(), 421);
        let direct = local
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(direct.status(), 200);
        server.stop().await;
    }

    #[test]
    fn origin_checks() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h).is_ok());
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(same_origin(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(same_origin(&h).is_err());
    }

    #[test]
    fn only_local_host_names_pass() {
        for ok in [
            "127.0.0.1:8080",
            "localhost:1",
            "LOCALHOST",
            "[::1]:9",
            "127.0.0.2",
        ] {
            assert!(is_local_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:80",
            "10.0.0.1:80",
            "[::2]:1",
            "",
        ] {
            assert!(!is_local_host(bad), "{bad}");
        }
    }

    #[test]
    fn html_and_labels_are_escaped() {
        assert_eq!(
            escape_html("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
        assert_eq!(escape_label("a\"b\\c\n"), "a\\\"b\\\\c\\n");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }

    /// A stand-in for Home Assistant: `/` is a page with the status page in
    /// an iframe at `/api/hassio_ingress/tok/`, which is proxied to
    /// `upstream` from 127.0.0.2 (the trusted peer), the browser's Host and
    /// Origin kept, as the Supervisor does.
    async fn ingress_proxy(upstream: SocketAddr) -> SocketAddr {
        const PARENT: &str = r#"<!doctype html><html><body>
<iframe id="f" src="/api/hassio_ingress/tok/" width="900" height="400"></iframe>
<pre id="out">pending</pre>
<script>
const f = document.getElementById("f"), out = document.getElementById("out");
let loads = 0;
f.onload = () => {
  loads += 1;
  try {
    const doc = f.contentDocument;
    if (loads === 1) {
      out.textContent = "framed: " + doc.querySelector("h1").textContent;
      doc.querySelector("form").submit();
    } else {
      out.textContent += "; after run now: " + f.contentWindow.location.pathname
        + " " + doc.querySelector("h1").textContent;
    }
  } catch (e) {
    out.textContent = "blocked: " + e;
  }
};
</script></body></html>"#;
        let client = reqwest::Client::builder()
            .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let forward = move |request: axum::extract::Request| {
            let client = client.clone();
            async move {
                let path = request.uri().path().to_owned();
                let Some(rest) = path.strip_prefix("/api/hassio_ingress/tok/") else {
                    return StatusCode::NOT_FOUND.into_response();
                };
                let method = request.method().clone();
                let headers = request.headers().clone();
                let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let mut call = client
                    .request(method, format!("http://{upstream}/{rest}"))
                    .body(body);
                for (name, value) in &headers {
                    if name != header::CONTENT_LENGTH {
                        call = call.header(name, value);
                    }
                }
                let answer = call.send().await.unwrap();
                let mut response = Response::builder().status(answer.status());
                for (name, value) in answer.headers() {
                    if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
                        response = response.header(name, value);
                    }
                }
                let body = axum::body::Body::from(answer.bytes().await.unwrap());
                response.body(body).unwrap()
            }
        };
        let app = Router::new()
            .route("/", get(|| async { axum::response::Html(PARENT) }))
            .fallback(forward);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// The status page inside a same-origin iframe below the ingress
    /// prefix, in headless Chromium: it renders (not blocked by its framing
    /// headers), and "run now" triggers the job and comes back to the page
    /// inside the prefix. Skipped without Chromium, except under `CI=true`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_page_runs_in_a_home_assistant_iframe_in_chromium() {
        let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.exists())
        else {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "no chromium");
            return;
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (_dir, server, addr, mut run_rx) = start_for_ingress().await;
        let proxy = ingress_proxy(addr).await;
        let profile = tempfile::tempdir().unwrap();
        let output = tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("http://{proxy}/"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(90), output)
            .await
            .unwrap()
            .unwrap();
        server.stop().await;
        let dom = String::from_utf8_lossy(&output.stdout);
        assert!(
            dom.contains("framed: synback; after run now: /api/hassio_ingress/tok/ synback"),
            "{dom}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(run_rx.try_recv().ok().as_deref(), Some("ha"));
    }
}

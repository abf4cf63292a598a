//! The optional HTTP status endpoint (off unless `status_listen` is set).
//!
//! - `GET /healthz`: 200, or 503 when a job's last success is older than
//!   `healthy_within` (a job that never finished a run yet counts as
//!   healthy, so a fresh install is not reported broken).
//! - `GET /metrics`: Prometheus text format.
//! - `GET /`: a small self-contained HTML page (no external assets) with a
//!   "run now" button per job.
//! - `POST /run/<job>`: triggers a job through the scheduler. It requires the
//!   per-process random token embedded in the page (form field `token` or
//!   header `x-synback-token`), and refuses requests whose `Origin` is not
//!   this host or whose `Sec-Fetch-Site` is cross-site, so another web page
//!   cannot trigger runs.
//!
//! The listener refuses non-loopback addresses unless `allow_remote` is set.
//! Without `allow_remote`, requests whose `Host` is not `localhost` or a
//! loopback address are refused too (421), so a DNS-rebinding page cannot
//! read the token.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::status::{JobStatus, StatusFile, StatusStore};
use super::{Clock, DaemonSettings, Error, RunStatus};

/// The header that may carry the run-now token instead of the form field.
pub const TOKEN_HEADER: &str = "x-synback-token";

#[derive(Clone)]
struct AppState {
    store: Arc<StatusStore>,
    clock: Arc<dyn Clock>,
    token: Arc<str>,
    run_now: mpsc::Sender<String>,
    healthy_within: Option<Duration>,
    allow_remote: bool,
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
    run_now: mpsc::Sender<String>,
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
    };
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let app = router(state);
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
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if state.allow_remote || host.is_some_and(is_local_host) {
        return next.run(request).await;
    }
    tracing::warn!(
        host = host.unwrap_or(""),
        "request for a foreign host refused"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        "refused: not a local host name\n",
    )
        .into_response()
}

/// True for `localhost` or a loopback address, with or without a port.
fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn healthz(State(state): State<AppState>) -> Response {
    let status = state.store.snapshot();
    let now = state.clock.now();
    let stale = stale_jobs(&status, state.healthy_within, now);
    if stale.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let body = format!("stale: {}\n", stale.join(", "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// Jobs whose last success is older than `within` (none without a threshold).
fn stale_jobs(status: &StatusFile, within: Option<Duration>, now: DateTime<Utc>) -> Vec<String> {
    let Some(within) = within.and_then(|w| chrono::Duration::from_std(w).ok()) else {
        return Vec::new();
    };
    status
        .jobs
        .iter()
        .filter(|(_, job)| job.last_end.is_some())
        .filter(|(_, job)| job.last_success.is_none_or(|at| now - at > within))
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
    if !state.store.snapshot().jobs.contains_key(&job) {
        return (StatusCode::NOT_FOUND, "no such job\n").into_response();
    }
    if state.run_now.send(job.clone()).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "daemon is stopping\n").into_response();
    }
    tracing::info!(job = %job, "run-now requested over HTTP");
    Redirect::to("/").into_response()
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
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
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
    let stamp = |t: Option<DateTime<Utc>>| {
        t.map_or("-".to_owned(), |t| {
            t.format("%Y-%m-%d %H:%M UTC").to_string()
        })
    };
    format!(
        "<tr class=\"{class}\"><td>{}</td><td class=\"status\">{status}</td><td>{}</td><td>{}</td>\
<td>{}</td><td>{}</td><td><form method=\"post\" action=\"/run/{}\">\
<input type=\"hidden\" name=\"token\" value=\"{token}\"><button>run now</button></form></td></tr>",
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
}

//! Notifications: healthchecks-style pings and a generic JSON webhook.
//!
//! Pings: `<url>/start` when a run starts, `<url>` on success, `<url>/fail`
//! with the tail of the error as body on failure. Webhook: a POST of
//! [`WebhookBody`] after every run. Every request has a bounded timeout;
//! a failed notification is logged (warn) and never fails the run. URLs are
//! never logged, since ping URLs often embed a secret check id.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Error, Notify, RunOutcome};

/// How long one notification request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many bytes of the error are sent with a `/fail` ping.
const FAIL_BODY_TAIL: usize = 10 * 1024;

/// The JSON body of a webhook call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WebhookBody {
    /// The job name.
    pub job: String,
    /// `ok`, `partial` or `failed`.
    pub status: String,
    /// The snapshot id, when one was stored.
    pub snapshot: Option<String>,
    /// Bytes read from the sources.
    pub bytes_read: u64,
    /// Bytes stored on the target.
    pub bytes_stored: u64,
    /// Run time in seconds.
    pub duration_s: f64,
    /// The error, for failed or partial runs.
    pub error: Option<String>,
}

impl WebhookBody {
    /// The body describing `outcome` of `job`.
    pub fn new(job: &str, outcome: &RunOutcome) -> Self {
        Self {
            job: job.to_owned(),
            status: outcome.status.as_str().to_owned(),
            snapshot: outcome.snapshot.clone(),
            bytes_read: outcome.bytes_read,
            bytes_stored: outcome.bytes_stored,
            duration_s: outcome.duration.as_secs_f64(),
            error: outcome.error.clone(),
        }
    }
}

/// Sends notifications; cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    client: reqwest::Client,
}

impl Notifier {
    /// A notifier with its own HTTP client (ring crypto provider, webpki
    /// roots, bounded timeouts; no process-wide TLS provider is installed).
    ///
    /// # Errors
    /// [`Error::Tls`] or [`Error::HttpClient`] when the client cannot be built.
    pub fn new() -> Result<Self, Error> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Tls { source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("synback/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| Error::HttpClient { source })?;
        Ok(Self { client })
    }

    /// Tells the targets of `notify` that `job` started. Never fails:
    /// problems are logged.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future abandons the request.
    pub async fn started(&self, job: &str, notify: &Notify) {
        if let Some(url) = &notify.healthchecks_url {
            let url = format!("{}/start", url.expose().trim_end_matches('/'));
            self.send(job, "healthchecks start", self.client.post(url))
                .await;
        }
    }

    /// Tells the targets of `notify` how `job` ended. Never fails:
    /// problems are logged.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future abandons the remaining requests.
    pub async fn finished(&self, job: &str, notify: &Notify, outcome: &RunOutcome) {
        if let Some(url) = &notify.healthchecks_url {
            self.ping_result(job, url.expose(), outcome).await;
        }
        if let Some(url) = &notify.webhook_url {
            let body = WebhookBody::new(job, outcome);
            self.send(job, "webhook", self.client.post(url.expose()).json(&body))
                .await;
        }
    }

    async fn ping_result(&self, job: &str, url: &str, outcome: &RunOutcome) {
        let base = url.trim_end_matches('/');
        let request = if outcome.status.is_success() {
            self.client.post(base)
        } else {
            let error = outcome.error.as_deref().unwrap_or("failed");
            let log = super::run_log::tail(job);
            let text = match log.is_empty() {
                true => error.to_owned(),
                false => format!("{error}\n\nlog of the run:\n{log}"),
            };
            // The end of the log, but always the error.
            let body = match text.len() > FAIL_BODY_TAIL {
                true => format!(
                    "{}\n\n...\n{}",
                    super::hooks::tail(error.as_bytes(), FAIL_BODY_TAIL / 4),
                    super::hooks::tail(log.as_bytes(), FAIL_BODY_TAIL / 2)
                ),
                false => text,
            };
            self.client.post(format!("{base}/fail")).body(body)
        };
        self.send(job, "healthchecks result", request).await;
    }

    async fn send(&self, job: &str, what: &'static str, request: reqwest::RequestBuilder) {
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                tracing::debug!(job, what, "notification sent");
            }
            Ok(response) => {
                tracing::warn!(
                    job,
                    what,
                    status = response.status().as_u16(),
                    "notification refused"
                );
            }
            Err(error) => {
                // Without the URL: ping URLs carry secret check ids.
                let error = error.without_url();
                tracing::warn!(job, what, error = %error, "notification failed");
            }
        }
    }
}

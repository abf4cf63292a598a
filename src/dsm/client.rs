//! The [`Client`]: HTTP setup, the session, and the call machinery every
//! File Station call goes through (re-login once on a lost session, retry
//! transient failures with backoff).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::api::{self, ApiTable, Endpoint, InfoEntry};
use super::error::{Error, Result};
use super::options::{ClientOptions, OtpSource, RetryPolicy, Timeouts};
use super::params::{Format, Params};
use super::wire::decode;
use crate::secret::Secret;

/// An async client for one DSM account on one NAS.
///
/// Cheap to clone (an `Arc` inside) and `Send + Sync`: clones share the
/// session, so one login serves concurrent uploads and checks.
///
/// # Example
/// ```no_run
/// # async fn demo() -> Result<(), synback::dsm::Error> {
/// use synback::dsm::{Client, ClientOptions};
/// use synback::secret::Secret;
///
/// let opts = ClientOptions::new("https://nas.local:5001", "backup", Secret::new("pw"));
/// let client = Client::connect(opts).await?;
/// for entry in client.list("/backup/hosts").await? {
///     println!("{} {:?}", entry.name, entry.size);
/// }
/// client.logout().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.base)
            .field("user", &self.inner.user)
            .finish_non_exhaustive()
    }
}

/// Shared state behind a [`Client`].
pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) user: String,
    pub(super) password: Secret,
    pub(super) otp: Mutex<Option<OtpSource>>,
    pub(super) device_name: String,
    pub(super) request_device_token: bool,
    pub(super) device_id: Mutex<Option<Secret>>,
    pub(super) timeouts: Timeouts,
    pub(super) retry: RetryPolicy,
    pub(super) apis: ApiTable,
    pub(super) session: Mutex<Option<Session>>,
    pub(super) login_lock: tokio::sync::Mutex<()>,
    pub(super) generation: AtomicU64,
    /// Set once the NAS answered 1800 to a chunked upload body.
    pub(super) chunked_refused: AtomicBool,
}

/// A logged-in session.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) sid: Secret,
    pub(super) token: Option<Secret>,
    pub(super) generation: u64,
}

/// Whether an operation may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempts {
    /// Re-login once and retry transient failures.
    Retry,
    /// One attempt only (the request body cannot be sent twice).
    Once,
}

impl Client {
    /// Connects to the NAS: discovers its APIs with `SYNO.API.Info` and logs in.
    ///
    /// When `request_device_token` is set, [`Client::device_id`] then holds
    /// the device id DSM issued, for later logins without OTP.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] or [`Error::TlsSetup`] for unusable settings,
    /// [`Error::Login`] when the NAS refuses the credentials (tried once),
    /// [`Error::Http`]/[`Error::Status`] when the NAS cannot be reached after
    /// the retries, [`Error::Unsupported`] when it lacks a required API.
    ///
    /// # Cancel safety
    /// Dropping the future may leave a session open on the NAS until it expires.
    pub async fn connect(opts: ClientOptions) -> Result<Self> {
        let base = normalise_url(&opts.url)?;
        let http = build_http(&opts)?;
        let apis = discover(&http, &base, &opts.timeouts, &opts.retry).await?;
        apis.get(api::AUTH)?;
        apis.get(api::LIST)?;
        let inner = Inner {
            http,
            base,
            user: opts.user,
            password: opts.password,
            otp: Mutex::new(opts.otp),
            device_name: opts.device_name,
            request_device_token: opts.request_device_token,
            device_id: Mutex::new(opts.device_id),
            timeouts: opts.timeouts,
            retry: opts.retry,
            apis,
            session: Mutex::new(None),
            login_lock: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            chunked_refused: AtomicBool::new(false),
        };
        let client = Self {
            inner: Arc::new(inner),
        };
        client.relogin(None).await?;
        Ok(client)
    }

    /// The device id DSM issued (when a device token was requested) or the
    /// one configured. Store it privately (mode 0600): it replaces OTP.
    pub fn device_id(&self) -> Option<Secret> {
        lock(&self.inner.device_id).clone()
    }

    /// The APIs and versions chosen for this NAS.
    pub fn apis(&self) -> &ApiTable {
        &self.inner.apis
    }

    /// The account name.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// True once the NAS refused an upload body of unknown length (code 1800);
    /// from then on only known-length bodies are sent.
    pub fn refuses_chunked_uploads(&self) -> bool {
        self.inner.chunked_refused.load(Ordering::Relaxed)
    }

    /// Calls `api.method` and decodes its `data` as `T`, re-logging in once on
    /// a lost session and retrying transient failures.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        api: &'static str,
        method: &'static str,
        params: Params,
    ) -> Result<T> {
        let endpoint = self.inner.apis.get(api)?.clone();
        self.run(api, method, Attempts::Retry, |session| {
            let endpoint = endpoint.clone();
            let params = params.clone();
            async move {
                let body = self
                    .post_form(&endpoint, method, &params, Some(&session))
                    .await?;
                decode(api, method, &body)
            }
        })
        .await
    }

    /// Runs `op` with a session, re-logging in once when the session is lost
    /// and retrying transient failures per the policy (unless `Attempts::Once`).
    pub(super) async fn run<T, F, Fut>(
        &self,
        api: &str,
        method: &str,
        attempts: Attempts,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut(Session) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let mut retries = 0u32;
        let mut relogged = false;
        loop {
            let session = self.session().await?;
            let generation = session.generation;
            let err = match op(session).await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if attempts == Attempts::Once {
                return Err(err);
            }
            if err.is_session_lost() && !relogged {
                tracing::info!(
                    api,
                    method,
                    dsm_code = err.dsm_code(),
                    "DSM session lost, logging in again"
                );
                relogged = true;
                self.relogin(Some(generation)).await?;
                continue;
            }
            if !self.should_retry(&err, retries, started) {
                return Err(err);
            }
            retries += 1;
            let delay = self.inner.retry.delay(retries);
            tracing::warn!(api, method, retry = retries, delay_ms = delay.as_millis() as u64, error = %err, "transient DSM failure, retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn should_retry(&self, err: &Error, retries: u32, started: Instant) -> bool {
        let policy = &self.inner.retry;
        err.is_transient() && retries < policy.max_retries && started.elapsed() < policy.max_elapsed
    }

    /// The current session, logging in when there is none.
    pub(super) async fn session(&self) -> Result<Session> {
        if let Some(session) = lock(&self.inner.session).clone() {
            return Ok(session);
        }
        self.relogin(None).await
    }

    /// Logs in again unless another task already replaced session `stale`.
    pub(super) async fn relogin(&self, stale: Option<u64>) -> Result<Session> {
        let _guard = self.inner.login_lock.lock().await;
        if let Some(current) = lock(&self.inner.session).clone()
            && stale != Some(current.generation)
        {
            return Ok(current);
        }
        let (sid, token) = self.login().await?;
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Session {
            sid,
            token,
            generation,
        };
        *lock(&self.inner.session) = Some(session.clone());
        Ok(session)
    }

    /// POSTs a form call and returns the raw reply body.
    pub(super) async fn post_form(
        &self,
        endpoint: &Endpoint,
        method: &str,
        params: &Params,
        session: Option<&Session>,
    ) -> Result<Bytes> {
        let request = self
            .form_request(endpoint, method, params, session)
            .timeout(self.inner.timeouts.call);
        let started = Instant::now();
        let response = request
            .send()
            .await
            .map_err(|e| Error::http(endpoint.api, method, e))?;
        let status = response.status();
        tracing::debug!(
            api = endpoint.api,
            method,
            version = endpoint.version,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "DSM call"
        );
        check_status(endpoint.api, method, status)?;
        read_reply(response, endpoint.api, method).await
    }

    /// A form POST to an endpoint, with the session attached.
    pub(super) fn form_request(
        &self,
        endpoint: &Endpoint,
        method: &str,
        params: &Params,
        session: Option<&Session>,
    ) -> reqwest::RequestBuilder {
        let version = endpoint.version.to_string();
        let mut fields: Vec<(&str, String)> = vec![
            ("api", endpoint.api.to_owned()),
            ("version", version),
            ("method", method.to_owned()),
        ];
        fields.extend(params.encode(endpoint.format));
        if let Some(session) = session {
            fields.push(("_sid", session.sid.expose().to_owned()));
        }
        let request = self.inner.http.post(self.url(endpoint)).form(&fields);
        with_token(request, session)
    }

    /// The URL of an endpoint's CGI.
    pub(super) fn url(&self, endpoint: &Endpoint) -> String {
        format!("{}/webapi/{}", self.inner.base, endpoint.path)
    }
}

/// Adds the CSRF token header when the session has one.
pub(super) fn with_token(
    request: reqwest::RequestBuilder,
    session: Option<&Session>,
) -> reqwest::RequestBuilder {
    match session.and_then(|s| s.token.as_ref()) {
        Some(token) => request.header("X-SYNO-TOKEN", token.expose()),
        None => request,
    }
}

/// Maps a non-success HTTP status to [`Error::Status`].
pub(super) fn check_status(api: &str, method: &str, status: reqwest::StatusCode) -> Result<()> {
    if status.is_success() {
        Ok(())
    } else {
        Err(Error::Status {
            api: api.to_owned(),
            method: method.to_owned(),
            status: status.as_u16(),
        })
    }
}

/// Locks a std mutex, ignoring poisoning (the data stays consistent: every
/// critical section is a single assignment or clone).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Checks the base URL and returns it without a trailing `/`.
pub(super) fn normalise_url(url: &str) -> Result<String> {
    let invalid = |reason| Error::InvalidUrl {
        url: strip_userinfo(url),
        reason,
    };
    let parsed = reqwest::Url::parse(url.trim()).map_err(|_| invalid("it is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be https:// (or http://)"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it names no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "put the user and password in the config, not in the URL",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("it may not have a query or fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

fn strip_userinfo(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn build_http(opts: &ClientOptions) -> Result<reqwest::Client> {
    let tls = super::tls::client_config(&opts.tls)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(opts.timeouts.connect)
        .tcp_keepalive(std::time::Duration::from_secs(30))
        .pool_idle_timeout(std::time::Duration::from_secs(50))
        .user_agent(concat!("synback/", env!("CARGO_PKG_VERSION")))
        .http1_only()
        .build()
        .map_err(|e| Error::TlsSetup {
            reason: "cannot build the HTTP client".into(),
            source: Some(Box::new(e.without_url())),
        })
}

/// Asks `SYNO.API.Info` which APIs and versions the NAS offers.
async fn discover(
    http: &reqwest::Client,
    base: &str,
    timeouts: &Timeouts,
    retry: &RetryPolicy,
) -> Result<ApiTable> {
    let names: Vec<&str> = api::WANTED.iter().map(|(name, _)| *name).collect();
    let query = names.join(",");
    let started = Instant::now();
    let mut retries = 0;
    loop {
        let err = match query_info(http, base, timeouts, &query).await {
            Ok(offered) => return Ok(ApiTable::choose(&offered)),
            Err(err) => err,
        };
        if !(err.is_transient()
            && retries < retry.max_retries
            && started.elapsed() < retry.max_elapsed)
        {
            return Err(err);
        }
        retries += 1;
        let delay = retry.delay(retries);
        tracing::warn!(retry = retries, delay_ms = delay.as_millis() as u64, error = %err, "NAS not answering API discovery yet, retrying");
        tokio::time::sleep(delay).await;
    }
}

async fn query_info(
    http: &reqwest::Client,
    base: &str,
    timeouts: &Timeouts,
    query: &str,
) -> Result<std::collections::HashMap<String, InfoEntry>> {
    let endpoint = Endpoint {
        api: api::INFO,
        path: "query.cgi".into(),
        version: 1,
        format: Format::Plain,
    };
    let fields = [
        ("api", api::INFO),
        ("version", "1"),
        ("method", "query"),
        ("query", query),
    ];
    let url = format!("{base}/webapi/{}", endpoint.path);
    let response = http
        .post(url)
        .form(&fields)
        .timeout(timeouts.call)
        .send()
        .await
        .map_err(|e| Error::http(api::INFO, "query", e))?;
    check_status(api::INFO, "query", response.status())?;
    let body = read_reply(response, api::INFO, "query").await?;
    decode(api::INFO, "query", &body)
}

/// The largest JSON reply synback reads from the NAS. A listing page of
/// 1000 entries is a few hundred KiB; anything near this limit is a broken
/// or hostile peer, not a bigger folder.
pub const MAX_REPLY_BYTES: usize = 4 << 20;

/// Reads a JSON reply body, refusing one larger than [`MAX_REPLY_BYTES`]
/// (announced or actual) before it is all in memory.
pub(super) async fn read_reply(
    mut response: reqwest::Response,
    api: &str,
    method: &str,
) -> Result<Bytes> {
    let too_large = || Error::ReplyTooLarge {
        api: api.to_owned(),
        method: method.to_owned(),
        limit: MAX_REPLY_BYTES,
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_REPLY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Error::http(api, method, e))?
    {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_normalised() {
        assert_eq!(
            normalise_url("https://nas.local:5001/").unwrap(),
            "https://nas.local:5001"
        );
        assert_eq!(
            normalise_url(" http://10.0.0.2:5000 ").unwrap(),
            "http://10.0.0.2:5000"
        );
        assert_eq!(
            normalise_url("https://example.com/dsm/").unwrap(),
            "https://example.com/dsm"
        );
        assert!(normalise_url("nas.local:5001").is_err());
        assert!(normalise_url("ftp://nas").is_err());
        assert!(normalise_url("https://nas/?a=1").is_err());
        let err = normalise_url("https://bob:hunter2@nas:5001")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("not in the URL"), "{err}");
    }
}

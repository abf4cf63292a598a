//! `SYNO.API.Auth`: login (password, OTP, device tokens) and logout.
//!
//! A refused login is never retried: DSM blocks the IP after a few wrong
//! passwords (407), so one wrong attempt per run is the most we make.
//! Transient failures (network, NAS waking up) are retried.

use std::time::Instant;

use super::api;
use super::client::{Client, lock};
use super::error::{Error, LoginRefusal, Result, code_meaning};
use super::options::OtpSource;
use super::params::Params;
use super::wire::{LoginReply, decode};
use crate::secret::Secret;

/// What one login attempt sends for 2-step verification.
enum Second {
    /// Nothing: no OTP configured.
    None,
    /// A device id from an earlier OTP login.
    Device(Secret),
    /// An OTP code.
    Code(Secret),
}

impl Client {
    /// Logs in and returns the session id and CSRF token.
    pub(super) async fn login(&self) -> Result<(Secret, Option<Secret>)> {
        let device = lock(&self.inner.device_id).clone();
        let first = match device {
            Some(did) => Second::Device(did),
            None => self.otp_code().map_or(Second::None, Second::Code),
        };
        let used_device = matches!(first, Second::Device(_));
        match self.login_retrying(first).await {
            // The device token is no longer accepted: fall back to OTP once.
            Err(Error::Login {
                refusal: LoginRefusal::OtpRequired,
                ..
            }) if used_device && self.has_otp() => {
                tracing::warn!(user = %self.inner.user, "the NAS no longer accepts the stored device id, using OTP");
                let code = self.otp_code().map_or(Second::None, Second::Code);
                self.login_retrying(code).await
            }
            other => other,
        }
    }

    fn has_otp(&self) -> bool {
        lock(&self.inner.otp).is_some()
    }

    /// The next OTP code: computed from the TOTP secret, or the one-shot code
    /// (handed out once).
    fn otp_code(&self) -> Option<Secret> {
        let mut otp = lock(&self.inner.otp);
        match otp.as_ref()? {
            OtpSource::Totp(totp) => Some(totp.now()),
            OtpSource::Code(_) => match otp.take() {
                Some(OtpSource::Code(code)) => Some(code),
                _ => None,
            },
        }
    }

    /// One login, with retries for transient failures only.
    async fn login_retrying(&self, second: Second) -> Result<(Secret, Option<Secret>)> {
        let endpoint = self.inner.apis.get(api::AUTH)?.clone();
        let params = self.login_params(&second);
        let started = Instant::now();
        let mut retries = 0;
        loop {
            let result = self.post_form(&endpoint, "login", &params, None).await;
            let err = match result.and_then(|body| decode::<LoginReply>(api::AUTH, "login", &body))
            {
                Ok(reply) => return Ok(self.accept_login(reply)),
                Err(err) => self.login_error(err),
            };
            let policy = &self.inner.retry;
            if !(err.is_transient()
                && retries < policy.max_retries
                && started.elapsed() < policy.max_elapsed)
            {
                return Err(err);
            }
            retries += 1;
            let delay = policy.delay(retries);
            tracing::warn!(retry = retries, delay_ms = delay.as_millis() as u64, error = %err, "login failed transiently, retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn login_params(&self, second: &Second) -> Params {
        let mut params = Params::new()
            .str("account", self.inner.user.clone())
            .secret("passwd", &self.inner.password)
            .str("session", "FileStation")
            .str("format", "sid")
            .str("enable_syno_token", "yes");
        match second {
            Second::None => {}
            Second::Device(did) => params = params.secret("device_id", did),
            Second::Code(code) => params = params.secret("otp_code", code),
        }
        if self.inner.request_device_token {
            params = params.str("enable_device_token", "yes");
        }
        if self.inner.request_device_token || matches!(second, Second::Device(_)) {
            params = params.str("device_name", self.inner.device_name.clone());
        }
        params
    }

    /// Keeps the device id DSM issued and returns the session secrets.
    fn accept_login(&self, reply: LoginReply) -> (Secret, Option<Secret>) {
        if let Some(did) = reply.did.filter(|d| !d.is_empty()) {
            *lock(&self.inner.device_id) = Some(Secret::new(did));
        }
        tracing::info!(user = %self.inner.user, "logged in to DSM");
        let token = reply.synotoken.filter(|t| !t.is_empty()).map(Secret::new);
        (Secret::new(reply.sid), token)
    }

    /// Turns DSM's login codes (400–410) into [`Error::Login`].
    fn login_error(&self, err: Error) -> Error {
        login_error(&self.inner.user, err)
    }

    /// Ends the session on the NAS. A session that already expired is fine.
    ///
    /// # Errors
    /// [`Error::Http`]/[`Error::Status`] when the NAS cannot be reached.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the session open until it expires.
    pub async fn logout(&self) -> Result<()> {
        let Some(session) = lock(&self.inner.session).take() else {
            return Ok(());
        };
        let endpoint = self.inner.apis.get(api::AUTH)?.clone();
        let params = Params::new().str("session", "FileStation");
        let result = self
            .post_form(&endpoint, "logout", &params, Some(&session))
            .await;
        match result.and_then(|body| decode::<serde_json::Value>(api::AUTH, "logout", &body)) {
            Ok(_) => Ok(()),
            Err(err) if err.is_session_lost() => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Drops the session locally (the next call logs in again). For tests
    /// and for callers who know the NAS rebooted.
    pub fn forget_session(&self) {
        lock(&self.inner.session).take();
    }
}

/// Turns DSM's login codes (400–410) for `account` into [`Error::Login`];
/// other errors pass through.
pub(crate) fn login_error(account: &str, err: Error) -> Error {
    match err {
        Error::Api {
            code: code @ 400..=410,
            ..
        } => Error::Login {
            account: account.to_owned(),
            code,
            meaning: code_meaning(api::AUTH, code),
            refusal: LoginRefusal::from_code(code),
        },
        other => other,
    }
}

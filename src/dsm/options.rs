//! What a [`Client`](super::Client) needs to know: where the NAS is, who
//! logs in, how TLS is checked, how long to wait and how often to retry.

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;
use crate::totp::Totp;

/// Settings for [`Client::connect`](super::Client::connect).
///
/// Build it with [`ClientOptions::new`] and change the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Base URL of DSM, e.g. `https://nas.local:5001`.
    pub url: String,
    /// The DSM account name.
    pub user: String,
    /// The account's password.
    pub password: Secret,
    /// Where two-factor codes come from, when the account uses 2-step verification.
    pub otp: Option<OtpSource>,
    /// A device id (`did`) from an earlier OTP login; lets the login skip OTP.
    pub device_id: Option<Secret>,
    /// Ask DSM to remember this device (returns a device id, see
    /// [`Client::device_id`](super::Client::device_id)).
    pub request_device_token: bool,
    /// The name this device is registered under in DSM.
    pub device_name: String,
    /// How the NAS's certificate is checked.
    pub tls: TlsOptions,
    /// How long to wait.
    pub timeouts: Timeouts,
    /// How transient failures are retried.
    pub retry: RetryPolicy,
}

impl ClientOptions {
    /// Options with defaults for everything but the URL and credentials.
    pub fn new(url: impl Into<String>, user: impl Into<String>, password: Secret) -> Self {
        Self {
            url: url.into(),
            user: user.into(),
            password,
            otp: None,
            device_id: None,
            request_device_token: false,
            device_name: "synback".to_owned(),
            tls: TlsOptions::default(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// Where two-factor (OTP) codes come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum OtpSource {
    /// Codes computed from the base32 secret shown at enrolment.
    Totp(Totp),
    /// One code typed by a person; used for the first login only.
    Code(Secret),
}

impl OtpSource {
    /// Parses a base32 TOTP secret.
    ///
    /// # Errors
    /// [`Error::Otp`](super::Error::Otp) when the secret is not base32.
    pub fn totp(secret: &Secret) -> super::Result<Self> {
        Totp::from_base32(secret)
            .map(Self::Totp)
            .map_err(super::Error::Otp)
    }
}

/// How the NAS's TLS certificate is checked.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// Trust only the CA certificates in this PEM file (instead of the system's).
    pub ca_file: Option<PathBuf>,
    /// Accept exactly the certificate with this SHA-256 fingerprint (hex, colons
    /// allowed), whoever signed it and whatever name it carries.
    pub pin_sha256: Option<String>,
    /// Accept any certificate. Only when written out in the config; logs a warning.
    pub insecure: bool,
}

/// How long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Setting up a TCP (and TLS) connection.
    pub connect: Duration,
    /// One API call, from request to decoded reply (not uploads or downloads).
    pub call: Duration,
    /// Uploads and downloads: the longest time without any byte moving.
    /// There is no total limit: a large transfer may take hours.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(15),
            call: Duration::from_secs(90),
            idle: Duration::from_secs(120),
        }
    }
}

/// How transient failures (network, HTTP 5xx, busy codes) are retried.
///
/// Delays grow exponentially from `initial_delay` up to `max_delay`, with
/// full jitter; retrying stops after `max_retries` or when the next attempt
/// would start after `max_elapsed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retrying).
    pub max_retries: u32,
    /// The first delay.
    pub initial_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// Give up retrying once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 6,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(180),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The delay before retry number `retry` (1-based), before jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }

    /// The delay before retry number `retry`, with jitter: a random value
    /// between half the base delay and the base delay.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self.base_delay(retry);
        let half = base / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            rand::random_range(0..=spread)
        };
        half + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(60),
        };
        assert_eq!(p.base_delay(1), Duration::from_millis(100));
        assert_eq!(p.base_delay(2), Duration::from_millis(200));
        assert_eq!(p.base_delay(4), Duration::from_millis(800));
        assert_eq!(p.base_delay(5), Duration::from_secs(1));
        assert_eq!(p.base_delay(60), Duration::from_secs(1));
        for retry in 1..20 {
            let d = p.delay(retry);
            assert!(
                d >= p.base_delay(retry) / 2 && d <= p.base_delay(retry),
                "{retry}: {d:?}"
            );
        }
    }

    #[test]
    fn options_debug_hides_secrets() {
        let mut o = ClientOptions::new("https://nas:5001", "backup", Secret::new("pw-123456"));
        o.device_id = Some(Secret::new("did-abcdef"));
        o.otp = Some(OtpSource::Code(Secret::new("654321")));
        let text = format!("{o:?}");
        for secret in ["pw-123456", "did-abcdef", "654321"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}

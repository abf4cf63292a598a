//! The config file exactly as written: [`RawConfig`] and its sections.
//!
//! Nothing here is checked beyond TOML types and key names; values that can
//! fail later validation keep their position in the file
//! ([`toml::Spanned`]) so that messages can name the line.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::error::Origin;

/// A string value with its position in the file.
pub type SpannedString = Spanned<String>;

/// The whole config file, as written.
///
/// Build one with [`RawConfig::from_toml_str`] (which remembers the file
/// name and text for messages), or fill a `RawConfig::default()` by hand;
/// then call [`RawConfig::validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[nas]`: where and how to log in.
    #[serde(default)]
    pub nas: RawNas,
    /// `[state]`: local state (device token, status file).
    #[serde(default)]
    pub state: RawState,
    /// `[retry]`: retries of transient failures.
    #[serde(default)]
    pub retry: RawRetry,
    /// `[daemon]`: the scheduled daemon.
    #[serde(default)]
    pub daemon: RawDaemon,
    /// `[notify]`: notification defaults for every job.
    #[serde(default)]
    pub notify: RawNotify,
    /// `[mqtt]`: state on an MQTT broker, with Home Assistant discovery.
    pub mqtt: Option<Spanned<RawMqtt>>,
    /// `[[job]]`: one entry per backup job.
    #[serde(default, rename = "job")]
    pub jobs: Vec<RawJob>,
    /// File name and text, for messages.
    #[serde(skip)]
    pub(crate) origin: Origin,
}

/// `[nas]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNas {
    /// `url = "https://nas.local:5001"`.
    pub url: Option<SpannedString>,
    /// `user = "backup"`.
    pub user: Option<SpannedString>,
    /// `password = "..."`: inline, allowed but warned about.
    pub password: Option<SpannedString>,
    /// `password_file = "/etc/synback/password"`.
    pub password_file: Option<Spanned<PathBuf>>,
    /// `password_env = "SYNBACK_PASSWORD"`: the name of an environment variable.
    pub password_env: Option<SpannedString>,
    /// `password_credential = "nas-password"`: a systemd credential name.
    pub password_credential: Option<SpannedString>,
    /// `ca_file = "/etc/synback/nas-ca.pem"`.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// `pin_sha256 = "ab12..."`: SHA-256 of the NAS certificate.
    pub pin_sha256: Option<SpannedString>,
    /// `insecure = true`: no certificate verification at all.
    pub insecure: Option<Spanned<bool>>,
    /// `otp_secret_file = "/etc/synback/otp"`: base32 TOTP secret.
    pub otp_secret_file: Option<Spanned<PathBuf>>,
    /// `device_name = "synback on pi"`: shown in DSM's trusted devices.
    pub device_name: Option<SpannedString>,
    /// `connect_timeout = "10s"`.
    pub connect_timeout: Option<SpannedString>,
    /// `request_timeout = "2m"`.
    pub request_timeout: Option<SpannedString>,
    /// `idle_timeout = "1m"`.
    pub idle_timeout: Option<SpannedString>,
}

impl fmt::Debug for RawNas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawNas")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("password_credential", &self.password_credential)
            .field("ca_file", &self.ca_file)
            .field("pin_sha256", &self.pin_sha256)
            .field("insecure", &self.insecure)
            .field("otp_secret_file", &self.otp_secret_file)
            .field("device_name", &self.device_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// `[state]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// `dir = "/var/lib/synback"`.
    pub dir: Option<Spanned<PathBuf>>,
}

/// `[retry]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// `max_attempts = 5`.
    pub max_attempts: Option<Spanned<u32>>,
    /// `max_elapsed = "30m"`.
    pub max_elapsed: Option<SpannedString>,
    /// `base_delay = "2s"`.
    pub base_delay: Option<SpannedString>,
    /// `max_delay = "5m"`.
    pub max_delay: Option<SpannedString>,
}

/// `[daemon]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    /// `max_parallel = 1`.
    pub max_parallel: Option<Spanned<u32>>,
    /// `catch_up = true`.
    pub catch_up: Option<bool>,
    /// `status_listen = "127.0.0.1:9105"`.
    pub status_listen: Option<SpannedString>,
    /// `allow_remote = false`.
    pub allow_remote: Option<bool>,
    /// `trusted_peers = ["172.30.32.2"]`: the only non-loopback clients served.
    #[serde(default)]
    pub trusted_peers: Vec<SpannedString>,
    /// `log_format = "human"` or `"json"`.
    pub log_format: Option<SpannedString>,
    /// `healthy_within = "26h"`: `/healthz` fails past this without a success.
    pub healthy_within: Option<SpannedString>,
    /// `shutdown_grace = "1m"`: how long a run gets to stop on SIGTERM.
    pub shutdown_grace: Option<SpannedString>,
}

/// One `[[job]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    /// `name = "home"`.
    pub name: Option<SpannedString>,
    /// `sources = ["/home", "/etc"]`.
    pub sources: Option<Spanned<Vec<SpannedString>>>,
    /// `excludes = ["**/.cache"]`.
    #[serde(default)]
    pub excludes: Vec<SpannedString>,
    /// `exclude_if_present = [".nobackup"]`.
    #[serde(default)]
    pub exclude_if_present: Vec<SpannedString>,
    /// `one_file_system = false`.
    pub one_file_system: Option<bool>,
    /// `share = "backup"`.
    pub share: Option<SpannedString>,
    /// `path = "hosts/pi"`.
    pub path: Option<SpannedString>,
    /// `schedule = "30 2 * * *"`.
    pub schedule: Option<SpannedString>,
    /// `timezone = "Europe/Paris"`.
    pub timezone: Option<SpannedString>,
    /// `jitter = "10m"`.
    pub jitter: Option<SpannedString>,
    /// `[job.compression]`.
    #[serde(default)]
    pub compression: RawCompression,
    /// `[job.encryption]`.
    pub encryption: Option<Spanned<RawEncryption>>,
    /// `volume_size = "1GiB"`.
    pub volume_size: Option<SpannedString>,
    /// `upload_mode = "spool"` or `"stream"`.
    pub upload_mode: Option<SpannedString>,
    /// `spool_dir = "/var/tmp"`.
    pub spool_dir: Option<Spanned<PathBuf>>,
    /// `[job.retention]`.
    #[serde(default)]
    pub retention: RawRetention,
    /// `[job.hooks]`.
    #[serde(default)]
    pub hooks: RawHooks,
    /// `[job.lock]`.
    #[serde(default)]
    pub lock: RawLock,
    /// `[job.notify]`.
    #[serde(default)]
    pub notify: RawJobNotify,
}

/// `[job.compression]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    /// `level = 3` (1-22).
    pub level: Option<Spanned<i64>>,
    /// `workers = 0` (0 = all cores).
    pub workers: Option<u32>,
    /// `long_distance = false`.
    pub long_distance: Option<bool>,
}

/// `[job.encryption]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEncryption {
    /// `recipients = ["age1..."]`.
    #[serde(default)]
    pub recipients: Vec<SpannedString>,
    /// `identity_file = "/etc/synback/age-key.txt"`: used by restore only.
    pub identity_file: Option<Spanned<PathBuf>>,
}

/// `[job.retention]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// `keep_last = 3`.
    pub keep_last: Option<u32>,
    /// `keep_hourly = 24`.
    pub keep_hourly: Option<u32>,
    /// `keep_daily = 7`.
    pub keep_daily: Option<u32>,
    /// `keep_weekly = 4`.
    pub keep_weekly: Option<u32>,
    /// `keep_monthly = 12`.
    pub keep_monthly: Option<u32>,
    /// `keep_yearly = 3`.
    pub keep_yearly: Option<u32>,
    /// `keep_within = "2d"`.
    pub keep_within: Option<SpannedString>,
}

/// `[job.hooks]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    /// `before = "pg_dump ..."`.
    pub before: Option<SpannedString>,
    /// `after = "..."`.
    pub after: Option<SpannedString>,
    /// `on_failure = "..."`.
    pub on_failure: Option<SpannedString>,
    /// `timeout = "10m"`.
    pub timeout: Option<SpannedString>,
}

/// `[job.lock]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLock {
    /// `stale_after = "6h"`.
    pub stale_after: Option<SpannedString>,
}

/// `[notify]` as written: defaults for every job.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// `webhook = "https://example.com/hook"`: used by jobs without their own.
    pub webhook: Option<SpannedString>,
}

impl fmt::Debug for RawNotify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Notification URLs often embed tokens.
        f.debug_struct("RawNotify")
            .field("webhook", &self.webhook.as_ref().map(|_| "***"))
            .finish()
    }
}

/// `[job.notify]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJobNotify {
    /// `healthchecks = "https://hc-ping.com/UUID"`: pinged at start, end
    /// and failure.
    pub healthchecks: Option<SpannedString>,
    /// `webhook = "https://example.com/hook"`: receives a JSON summary.
    pub webhook: Option<SpannedString>,
}

impl fmt::Debug for RawJobNotify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawJobNotify")
            .field("healthchecks", &self.healthchecks.as_ref().map(|_| "***"))
            .field("webhook", &self.webhook.as_ref().map(|_| "***"))
            .finish()
    }
}

/// `[mqtt]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// `host = "homeassistant.local"`.
    pub host: Option<SpannedString>,
    /// `port = 1883`.
    pub port: Option<Spanned<i64>>,
    /// `user = "synback"`.
    pub user: Option<SpannedString>,
    /// `password_file = "/etc/synback/mqtt-password"`.
    pub password_file: Option<Spanned<PathBuf>>,
    /// `discovery_prefix = "homeassistant"`.
    pub discovery_prefix: Option<SpannedString>,
    /// `topic_prefix = "synback"`.
    pub topic_prefix: Option<SpannedString>,
    /// `node_id = "pi"`: this machine in topics and device names.
    pub node_id: Option<SpannedString>,
}

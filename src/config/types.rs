//! The resolved config: every value parsed, defaulted and checked.
//!
//! These are plain data. Other layers (DSM client, archive, repo, schedule)
//! convert them to their own option types; nothing here depends on them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;

use super::error::{Note, closest};
use crate::secret::Secret;

/// A validated config, ready to use.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The file it was read from (as given, for messages).
    pub path: PathBuf,
    /// How to reach and log in to the NAS.
    pub nas: NasConfig,
    /// Local state directory (device token, status file, spool default).
    pub state_dir: PathBuf,
    /// Retries of transient failures.
    pub retry: RetryConfig,
    /// The scheduled daemon.
    pub daemon: DaemonConfig,
    /// `[mqtt]`: publish state to a broker, if configured.
    pub mqtt: Option<MqttConfig>,
    /// The backup jobs, in file order, names unique.
    pub jobs: Vec<JobConfig>,
    /// Warnings about things that are valid but probably not what was meant.
    pub notes: Vec<Note>,
}

impl Config {
    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// The jobs named on a command line (`synback backup [JOB...]`), in the
    /// order given; every job when `names` is empty.
    ///
    /// # Errors
    /// [`UnknownJob`] for the first name that is not a job, with the closest
    /// job name when one is near.
    pub fn select_jobs<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<&JobConfig>, UnknownJob> {
        if names.is_empty() {
            return Ok(self.jobs.iter().collect());
        }
        names
            .iter()
            .map(|name| {
                let name = name.as_ref();
                self.job(name).ok_or_else(|| {
                    let known: Vec<String> = self.jobs.iter().map(|j| j.name.clone()).collect();
                    UnknownJob {
                        name: name.to_owned(),
                        suggestion: closest(name, &known).map(str::to_owned),
                        known,
                    }
                })
            })
            .collect()
    }
}

/// A job name that is not in the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no job named `{name}`{}; jobs in the config: {}",
    suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
)]
#[non_exhaustive]
pub struct UnknownJob {
    /// The name asked for.
    pub name: String,
    /// The closest job name, when one is near.
    pub suggestion: Option<String>,
    /// Every job name in the config.
    pub known: Vec<String>,
}

/// `[nas]`, resolved.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NasConfig {
    /// Base URL of DSM.
    pub url: NasUrl,
    /// DSM account name.
    pub user: String,
    /// The password, read from wherever the config said.
    pub password: Secret,
    /// Where the password came from (for messages, never the value).
    pub password_source: PasswordSource,
    /// Certificate checking.
    pub tls: TlsConfig,
    /// Base32 TOTP secret for accounts with 2-step verification, if set.
    pub otp_secret: Option<Secret>,
    /// Name shown in DSM's list of trusted devices.
    pub device_name: String,
    /// Network timeouts.
    pub timeouts: Timeouts,
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// Plain HTTP (DSM's port 5000).
    Http,
    /// HTTPS (DSM's port 5001).
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// DSM's default port for this scheme.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 5000,
            Self::Https => 5001,
        }
    }
}

/// The NAS address: scheme, host and port, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NasUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (default 5000 for http, 5001 for https).
    pub port: u16,
}

impl fmt::Display for NasUrl {
    /// `https://host:5001` (IPv6 hosts in brackets), no trailing slash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.scheme.as_str();
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Where the NAS password was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PasswordSource {
    /// `password` in the config file itself.
    Inline,
    /// `password_file`.
    File(PathBuf),
    /// `password_env`: the variable's name.
    Env(String),
    /// `password_credential`: the file under `$CREDENTIALS_DIRECTORY`.
    Credential(PathBuf),
}

/// TLS certificate checking. At most one of the three is set; none means
/// the system's and Mozilla's roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Extra CA certificate(s), PEM.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the NAS certificate (DER), 64 lowercase hex digits.
    pub pin_sha256: Option<String>,
    /// No verification at all.
    pub insecure: bool,
}

/// Network timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// TCP + TLS connection set-up.
    pub connect: Duration,
    /// A whole API request (not uploads or downloads, which use `idle`).
    pub request: Duration,
    /// Longest pause without a byte moving during a transfer.
    pub idle: Duration,
}

/// `[retry]`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// Stop retrying once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
    /// First back-off delay; doubled after each failure, with jitter.
    pub base_delay: Duration,
    /// Cap on a single back-off delay.
    pub max_delay: Duration,
}

/// `[daemon]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DaemonConfig {
    /// How many jobs may run at the same time (at least 1).
    pub max_parallel: usize,
    /// Run a job at start when its last scheduled run was missed.
    pub catch_up: bool,
    /// Address of the status endpoint (`/healthz`, `/metrics`), if any.
    pub status_listen: Option<SocketAddr>,
    /// When not empty, the only non-loopback addresses the status endpoint
    /// answers (a reverse proxy such as Home Assistant's ingress); their
    /// requests may name any `Host`.
    pub trusted_peers: Vec<IpAddr>,
    /// Log line format.
    pub log_format: LogFormat,
    /// `/healthz` answers 503 when a job's last success is older than this.
    pub healthy_within: Option<Duration>,
    /// On SIGTERM/SIGINT, how long running jobs get to finish their current
    /// volume and clean up before they are abandoned.
    pub shutdown_grace: Duration,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// One `[[job]]`, resolved.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobConfig {
    /// Unique name, `[A-Za-z0-9._-]+`; also the folder name on the NAS.
    pub name: String,
    /// Absolute local directories to back up (they existed at load time).
    pub sources: Vec<PathBuf>,
    /// Exclude globs (checked with globset).
    pub excludes: Vec<String>,
    /// Skip a directory that contains a file with one of these names.
    pub exclude_if_present: Vec<String>,
    /// Do not cross file-system boundaries below a source.
    pub one_file_system: bool,
    /// DSM shared folder.
    pub share: String,
    /// Path inside the share, normalised: no leading, trailing or doubled
    /// `/`; empty for the share's top folder.
    pub path: String,
    /// When the daemon runs the job; `None` means only on demand.
    pub schedule: Option<JobSchedule>,
    /// Time zone of the schedule; `None` means the machine's local zone.
    pub timezone: Option<Tz>,
    /// Random delay up to this long before a scheduled run.
    pub jitter: Duration,
    /// zstd settings.
    pub compression: Compression,
    /// age encryption, if enabled.
    pub encryption: Option<Encryption>,
    /// Largest volume in bytes; bigger archives are split.
    pub volume_size: u64,
    /// How volumes reach the NAS.
    pub upload_mode: UploadMode,
    /// Where spool files go; `None` means the system temp directory.
    pub spool_dir: Option<PathBuf>,
    /// Which snapshots to keep.
    pub retention: Retention,
    /// Commands run around the backup.
    pub hooks: Hooks,
    /// A lock on the NAS older than this may be taken over (with a warning).
    pub lock_stale_after: Duration,
    /// Where the job reports its runs (`[notify]` defaults applied).
    pub notify: Notify,
}

impl JobConfig {
    /// The job folder on the NAS: `/<share>/<path>/<name>`.
    pub fn remote_dir(&self) -> String {
        if self.path.is_empty() {
            format!("/{}/{}", self.share, self.name)
        } else {
            format!("/{}/{}/{}", self.share, self.path, self.name)
        }
    }
}

/// A cron schedule and the text it was written as.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobSchedule {
    /// As written in the config (`"30 2 * * *"`, `"@daily"`...).
    pub text: String,
    /// Parsed, in the `cron` crate's 6/7-field form.
    pub cron: cron::Schedule,
}

/// zstd settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compression {
    /// Level 1-22 (default 3).
    pub level: i32,
    /// Worker threads, 0 = all cores.
    pub workers: u32,
    /// Long-distance matching (better ratio on big similar files, more memory).
    pub long_distance: bool,
}

/// age encryption settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Encryption {
    /// age X25519 public keys (`age1...`), each checked.
    pub recipients: Vec<String>,
    /// The secret key file, used by restore only (need not exist here).
    pub identity_file: Option<PathBuf>,
}

/// How volumes reach the NAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UploadMode {
    /// Each volume goes to a local temp file first and is sent with a known
    /// length; a failed volume is re-sent without re-reading the sources.
    #[default]
    Spool,
    /// Sent as produced, no local disk; a failure restarts the snapshot.
    Stream,
}

/// Which snapshots to keep (as restic's `forget`): the retention module's
/// policy itself, so the config and the rotation code cannot drift apart.
pub use crate::retention::Policy as Retention;

/// Shell commands run around a backup (through `/bin/sh -c`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hooks {
    /// Before the backup; a failure aborts the run.
    pub before: Option<String>,
    /// After a successful backup.
    pub after: Option<String>,
    /// After a failed backup.
    pub on_failure: Option<String>,
    /// Longest a hook may run before it is killed.
    pub timeout: Duration,
}

/// Where a job reports its runs. The URLs are [`Secret`]s: ping URLs
/// carry check ids and webhook URLs often a token, so they never show in
/// `Debug` output or logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Notify {
    /// healthchecks-style ping URL: `/start`, success, `/fail`.
    pub healthchecks: Option<Secret>,
    /// Receives a JSON summary of every run by POST.
    pub webhook: Option<Secret>,
}

/// `[mqtt]`, resolved: state on a broker with Home Assistant discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (default 1883).
    pub port: u16,
    /// User name, if the broker wants one.
    pub user: Option<String>,
    /// Password read from `password_file`.
    pub password: Option<Secret>,
    /// Home Assistant's discovery prefix (default `homeassistant`).
    pub discovery_prefix: String,
    /// The root of synback's own topics (default `synback`).
    pub topic_prefix: String,
    /// This machine in topics; `None` means the host name.
    pub node_id: Option<String>,
}

//! The config file: TOML model, defaults, validation with exact messages,
//! and secrets.
//!
//! Two stages, as ripgrep's low/high args: [`RawConfig`] mirrors the TOML
//! exactly (unknown keys refused, values kept with their position in the
//! file), and [`RawConfig::validate`] turns it into a [`Config`] whose values
//! are parsed and checked — a `cron::Schedule`, `Duration`s, byte counts,
//! absolute paths that exist, a password read into a
//! [`Secret`](crate::secret::Secret). Every error names the file, the line,
//! the key and what to write instead; things that are valid but doubtful
//! (a normalised path, an inline password) become [`Note`]s.
//!
//! The library never reads environment variables: the caller passes a
//! [`ConfigEnv`]. Config-file discovery belongs to the binary.
//!
//! This module depends on no other synback layer except `secret` and
//! `totp`; the layers convert its plain types into their own options.
//!
//! ```
//! use synback::config::{Config, ConfigEnv};
//!
//! let text = r#"
//! [nas]
//! url = "https://nas.local"
//! user = "backup"
//! password_env = "NAS_PASSWORD"
//!
//! [state]
//! dir = "/var/lib/synback"
//!
//! [[job]]
//! name = "etc"
//! sources = ["/etc"]
//! share = "backup"
//! path = "hosts/pi/"
//! schedule = "30 2 * * *"
//! "#;
//! let env = ConfigEnv::new().with_var("NAS_PASSWORD", "s3cret");
//! let config = Config::from_toml_str(text, "synback.toml", &env)?;
//! assert_eq!(config.nas.url.to_string(), "https://nas.local:5001");
//! assert_eq!(config.jobs[0].remote_dir(), "/backup/hosts/pi/etc");
//! assert!(config.notes.iter().any(|n| n.field == "job[etc].path"));
//! # Ok::<(), synback::config::Error>(())
//! ```

mod env;
mod error;
mod job;
mod nas;
mod notify;
mod raw;
mod remote;
mod schedule;
pub mod size;
mod types;
mod validate;

use std::path::Path;

pub use env::{ConfigEnv, default_state_dir};
pub use error::{Cause, Error, Invalid, Note};
pub use raw::{
    RawCompression, RawConfig, RawDaemon, RawEncryption, RawHooks, RawJob, RawJobNotify, RawLock,
    RawMqtt, RawNas, RawNotify, RawRetention, RawRetry, RawState, SpannedString,
};
pub use schedule::ScheduleError;
pub use size::{SizeError, parse_size};
pub use types::{
    Compression, Config, DaemonConfig, Encryption, Hooks, JobConfig, JobSchedule, LogFormat,
    MqttConfig, NasConfig, NasUrl, Notify, PasswordSource, Retention, RetryConfig, Scheme,
    Timeouts, TlsConfig, UnknownJob, UploadMode,
};

impl Config {
    /// Parses and validates config text. `path` only names the file in
    /// messages; nothing is read from it.
    ///
    /// # Errors
    /// [`Error::Parse`] for bad TOML, [`Error::Invalid`] for an unknown key or
    /// a value that cannot be used (each with file, line and a hint).
    pub fn from_toml_str(
        text: &str,
        path: impl AsRef<Path>,
        env: &ConfigEnv,
    ) -> Result<Self, Error> {
        RawConfig::from_toml_str(text, path)?.validate(env)
    }

    /// Reads, parses and validates a config file. Adds a [`Note`] when the
    /// file holds a password and other users can read it.
    ///
    /// # Errors
    /// [`Error::Read`] when the file cannot be read, otherwise as
    /// [`Config::from_toml_str`].
    pub fn load(path: impl AsRef<Path>, env: &ConfigEnv) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::from_toml_str(&text, path, env)?;
        if config.nas.password_source == PasswordSource::Inline
            && let Some(mode) = validate::others_can_read(path)
        {
            let origin = error::Origin::new(path, &text);
            let line = origin.find_key_line("password");
            config.notes.push(Note {
                    path: path.to_path_buf(),
                    line,
                    field: "nas.password".to_owned(),
                    message: format!(
                        "this file holds the NAS password and every user can read it (mode {mode:o}); run `chmod 600 {}` or move the password to password_file",
                        path.display()
                    ),
                });
        }
        Ok(config)
    }
}

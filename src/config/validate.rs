//! [`RawConfig`] → [`Config`]: defaults, parsing and checks, with exact
//! messages, plus the sections too small for their own file
//! (`[state]`, `[retry]`, `[daemon]`).

use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::env::{ConfigEnv, default_state_dir};
use super::error::{Cause, Error, Note, Origin};
use super::raw::{RawConfig, RawDaemon, RawRetry, RawState, SpannedString};
use super::types::Notify;
use super::types::{Config, DaemonConfig, JobConfig, LogFormat, RetryConfig};
use super::{job, nas, notify};
use crate::secret::Secret;

/// Hint for every duration.
pub(crate) const DURATION_HINT: &str =
    "write a duration such as \"30s\", \"10m\", \"6h\", \"2d\" or \"1h 30m\"";

/// What validation needs besides the raw values: where they came from, the
/// environment, and the warnings gathered so far.
pub(crate) struct Ctx<'a> {
    pub(crate) origin: &'a Origin,
    pub(crate) env: &'a ConfigEnv,
    pub(crate) notes: Vec<Note>,
}

/// The span of an optional spanned value.
pub(crate) fn span_of<T>(value: Option<&Spanned<T>>) -> Option<Range<usize>> {
    value.map(Spanned::span)
}

impl Ctx<'_> {
    /// An [`Error::Invalid`] at `span`.
    pub(crate) fn invalid(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        reason: impl Into<String>,
        hint: impl Into<String>,
    ) -> Error {
        self.origin.invalid(span, field, reason, hint)
    }

    /// An [`Error::Invalid`] at `span` that keeps its cause.
    pub(crate) fn invalid_because(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        reason: impl Into<String>,
        hint: impl Into<String>,
        cause: impl Into<Cause>,
    ) -> Error {
        let mut err = self.origin.invalid(span, field, reason, hint);
        if let Error::Invalid(invalid) = &mut err {
            invalid.source = Some(cause.into());
        }
        err
    }

    /// Records a warning at `span`.
    pub(crate) fn note(
        &mut self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let note = self.origin.note(span, field, message);
        self.notes.push(note);
    }

    /// A duration such as `"10m"`, or `default` when not set.
    pub(crate) fn duration(
        &self,
        value: Option<&SpannedString>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, Error> {
        let Some(value) = value else {
            return Ok(default);
        };
        humantime::parse_duration(value.get_ref().trim()).map_err(|e| {
            self.invalid_because(
                Some(value.span()),
                field,
                format!("`{}` is not a duration", value.get_ref()),
                DURATION_HINT,
                e,
            )
        })
    }

    /// Like [`Ctx::duration`] but refuses zero.
    pub(crate) fn positive_duration(
        &self,
        value: Option<&SpannedString>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, Error> {
        let d = self.duration(value, field, default)?;
        if d.is_zero() {
            return Err(self.invalid(
                span_of(value),
                field,
                "must be longer than zero",
                DURATION_HINT,
            ));
        }
        Ok(d)
    }

    /// An absolute path, as written.
    pub(crate) fn absolute(&self, value: &Spanned<PathBuf>, field: &str) -> Result<PathBuf, Error> {
        let path = value.get_ref();
        if path.is_absolute() {
            return Ok(path.clone());
        }
        Err(self.invalid(
            Some(value.span()),
            field,
            format!("`{}` is a relative path", path.display()),
            format!(
                "write an absolute path, e.g. \"/etc/synback/{}\"",
                path.display()
            ),
        ))
    }

    /// An absolute path to an existing regular file.
    pub(crate) fn existing_file(
        &self,
        value: &Spanned<PathBuf>,
        field: &str,
    ) -> Result<PathBuf, Error> {
        let path = self.absolute(value, field)?;
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(self.invalid(
                Some(value.span()),
                field,
                format!("`{}` is not a regular file", path.display()),
                "point it at a file",
            )),
            Err(e) => Err(self.invalid_because(
                Some(value.span()),
                field,
                format!("cannot read `{}`", path.display()),
                "create the file or fix the path",
                e,
            )),
        }
    }

    /// Reads a one-line secret (password, OTP secret) from a file: the
    /// trailing newline is dropped, an empty file refused, and a file others
    /// can read gets a note.
    pub(crate) fn secret_file(
        &mut self,
        path: &Path,
        span: Option<Range<usize>>,
        field: &str,
    ) -> Result<Secret, Error> {
        let text = fs::read_to_string(path).map_err(|e| {
            self.invalid_because(
                span.clone(),
                field,
                format!("cannot read `{}`", path.display()),
                "create the file (mode 600) holding just the secret, or fix the path",
                e,
            )
        })?;
        let value = text.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(self.invalid(
                span,
                field,
                format!("`{}` is empty", path.display()),
                "write the secret into the file, on one line",
            ));
        }
        if let Some(mode) = others_can_read(path) {
            self.note(
                span,
                field,
                format!(
                    "`{}` is readable by every user (mode {mode:o}); run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ),
            );
        }
        Ok(Secret::new(value))
    }
}

/// The file's permission bits when other users may read it (Unix), else `None`.
pub(crate) fn others_can_read(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o004 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

impl RawConfig {
    /// Reads TOML text. `path` names the file in messages (it is not read).
    ///
    /// # Errors
    /// [`Error::Parse`] for bad TOML or a value of the wrong type, with
    /// line and column; [`Error::Invalid`] for an unknown key, with the
    /// closest valid key and the list of valid ones.
    pub fn from_toml_str(text: &str, path: impl AsRef<Path>) -> Result<Self, Error> {
        let origin = Origin::new(path.as_ref(), text);
        let mut raw: Self = toml::from_str(text).map_err(|e| origin.toml_error(&e))?;
        raw.origin = origin;
        Ok(raw)
    }

    /// Checks every value, applies defaults, reads secrets (password file,
    /// environment variable, systemd credential) and returns the resolved
    /// config with its warnings in [`Config::notes`].
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the file, line, key, what is wrong and what
    /// to write instead, for the first problem found.
    pub fn validate(self, env: &ConfigEnv) -> Result<Config, Error> {
        let mut ctx = Ctx {
            origin: &self.origin,
            env,
            notes: Vec::new(),
        };
        let nas = nas::validate(&mut ctx, &self.nas)?;
        let state_dir = state_dir(&ctx, &self.state)?;
        let retry = retry(&ctx, &self.retry)?;
        let daemon = daemon(&mut ctx, &self.daemon)?;
        let mqtt = notify::mqtt(&mut ctx, self.mqtt.as_ref())?;
        let defaults = notify::defaults(&mut ctx, &self.notify)?;
        let jobs = jobs(&mut ctx, &self, &defaults)?;
        Ok(Config {
            path: self.origin.path.clone(),
            nas,
            state_dir,
            retry,
            daemon,
            mqtt,
            jobs,
            notes: ctx.notes,
        })
    }
}

fn jobs(ctx: &mut Ctx<'_>, raw: &RawConfig, defaults: &Notify) -> Result<Vec<JobConfig>, Error> {
    if raw.jobs.is_empty() {
        ctx.note(
            None,
            "job",
            "no [[job]] is defined, so there is nothing to back up; add one (see config.example.toml)",
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut jobs = Vec::with_capacity(raw.jobs.len());
    for (index, raw_job) in raw.jobs.iter().enumerate() {
        let job = job::validate(ctx, index, raw_job, defaults)?;
        if let Some(first) = seen.get(&job.name) {
            return Err(ctx.invalid(
                span_of(raw_job.name.as_ref()),
                format!("job[{}].name", job.name),
                format!(
                    "job name `{}` is already used by job number {}",
                    job.name,
                    first + 1
                ),
                "give each [[job]] its own name (it is also the job's folder on the NAS)",
            ));
        }
        seen.insert(job.name.clone(), index);
        jobs.push(job);
    }
    Ok(jobs)
}

fn state_dir(ctx: &Ctx<'_>, raw: &RawState) -> Result<PathBuf, Error> {
    if let Some(dir) = &raw.dir {
        return ctx.absolute(dir, "state.dir");
    }
    default_state_dir(ctx.env).ok_or_else(|| {
        ctx.invalid(
            None,
            "state.dir",
            "no state directory: $STATE_DIRECTORY, $XDG_STATE_HOME and $HOME are all unset",
            "add `[state]` with `dir = \"/var/lib/synback\"`, or run under systemd with StateDirectory=synback",
        )
    })
}

fn retry(ctx: &Ctx<'_>, raw: &RawRetry) -> Result<RetryConfig, Error> {
    let max_attempts = raw.max_attempts.as_ref().map_or(5, |v| *v.get_ref());
    if max_attempts == 0 {
        return Err(ctx.invalid(
            span_of(raw.max_attempts.as_ref()),
            "retry.max_attempts",
            "must be at least 1 (it counts the first attempt)",
            "write `max_attempts = 1` for no retries, or e.g. 5",
        ));
    }
    let max_elapsed = ctx.positive_duration(
        raw.max_elapsed.as_ref(),
        "retry.max_elapsed",
        Duration::from_secs(30 * 60),
    )?;
    let base_delay = ctx.positive_duration(
        raw.base_delay.as_ref(),
        "retry.base_delay",
        Duration::from_secs(2),
    )?;
    let max_delay = ctx.positive_duration(
        raw.max_delay.as_ref(),
        "retry.max_delay",
        Duration::from_secs(5 * 60),
    )?;
    if max_delay < base_delay {
        return Err(ctx.invalid(
            span_of(raw.max_delay.as_ref().or(raw.base_delay.as_ref())),
            "retry.max_delay",
            "is shorter than retry.base_delay",
            "make max_delay at least as long as base_delay",
        ));
    }
    Ok(RetryConfig {
        max_attempts,
        max_elapsed,
        base_delay,
        max_delay,
    })
}

fn daemon(ctx: &mut Ctx<'_>, raw: &RawDaemon) -> Result<DaemonConfig, Error> {
    let max_parallel = raw.max_parallel.as_ref().map_or(1, |v| *v.get_ref());
    if max_parallel == 0 {
        return Err(ctx.invalid(
            span_of(raw.max_parallel.as_ref()),
            "daemon.max_parallel",
            "must be at least 1",
            "write `max_parallel = 1` to run one job at a time",
        ));
    }
    let log_format = match raw.log_format.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(ctx.invalid(
                span_of(raw.log_format.as_ref()),
                "daemon.log_format",
                format!("unknown log format `{other}`"),
                "write \"human\" or \"json\"",
            ));
        }
    };
    Ok(DaemonConfig {
        max_parallel: usize::try_from(max_parallel).unwrap_or(usize::MAX),
        catch_up: raw.catch_up.unwrap_or(true),
        status_listen: status_listen(ctx, raw)?,
        trusted_peers: trusted_peers(ctx, raw)?,
        log_format,
        healthy_within: match &raw.healthy_within {
            Some(value) => {
                Some(ctx.positive_duration(Some(value), "daemon.healthy_within", Duration::ZERO)?)
            }
            None => None,
        },
        shutdown_grace: ctx.positive_duration(
            raw.shutdown_grace.as_ref(),
            "daemon.shutdown_grace",
            Duration::from_secs(60),
        )?,
    })
}

fn trusted_peers(ctx: &mut Ctx<'_>, raw: &RawDaemon) -> Result<Vec<IpAddr>, Error> {
    let field = "daemon.trusted_peers";
    raw.trusted_peers
        .iter()
        .map(|value| {
            value.get_ref().trim().parse().map_err(|e| {
                ctx.invalid_because(
                    Some(value.span()),
                    field,
                    format!("`{}` is not an IP address", value.get_ref()),
                    "write e.g. \"172.30.32.2\" (no port, no host names)",
                    e,
                )
            })
        })
        .collect()
}

fn status_listen(ctx: &mut Ctx<'_>, raw: &RawDaemon) -> Result<Option<SocketAddr>, Error> {
    let Some(value) = &raw.status_listen else {
        return Ok(None);
    };
    let field = "daemon.status_listen";
    let addr: SocketAddr = value.get_ref().trim().parse().map_err(|e| {
        ctx.invalid_because(
            Some(value.span()),
            field,
            format!("`{}` is not an IP address and port", value.get_ref()),
            "write e.g. \"127.0.0.1:9105\" (host names are not accepted)",
            e,
        )
    })?;
    if !addr.ip().is_loopback() {
        if raw.allow_remote != Some(true) {
            return Err(ctx.invalid(
                Some(value.span()),
                field,
                format!("`{addr}` is reachable from other machines"),
                "write \"127.0.0.1:PORT\", or add `allow_remote = true` to [daemon] if you really want the (unauthenticated) status endpoint on the network",
            ));
        }
        let reach = match raw.trusted_peers.is_empty() {
            true => "is reachable from the network",
            false => "answers the trusted_peers (and loopback) only",
        };
        ctx.note(
            Some(value.span()),
            field,
            format!("the status endpoint on `{addr}` has no authentication and {reach}"),
        );
    }
    Ok(Some(addr))
}

//! `[[job]]`: what to back up, where to, when, and how.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;

use super::error::{Error, closest};
use super::notify;
use super::raw::{RawCompression, RawEncryption, RawHooks, RawJob, RawRetention, SpannedString};
use super::remote::{RemoteError, normalise_path, normalise_share};
use super::schedule::{self, ScheduleError};
use super::size::{HumanSize, UNITS, parse_size};
use super::types::{
    Compression, Encryption, Hooks, JobConfig, JobSchedule, Notify, Retention, UploadMode,
};
use super::validate::{Ctx, span_of};

const GLOB_HINT: &str = "globs use `*` within a name, `**` across folders, `?`, `[abc]` and `{a,b}`, e.g. \"**/.cache\" or \"/home/*/Downloads\"";
const CRON_HINT: &str = "write 5 fields `minute hour day-of-month month day-of-week`, e.g. \"30 2 * * *\" (02:30 every day), 6 fields with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly";
const SIZE_HINT: &str = "write e.g. \"1GiB\" or \"500MB\"";
const MIN_VOLUME: u64 = 1 << 20;
const MAX_SAFE_VOLUME: u64 = 1 << 30;

/// Validates one `[[job]]` (the `index`-th, from 0).
pub(crate) fn validate(
    ctx: &mut Ctx<'_>,
    index: usize,
    raw: &RawJob,
    notify_defaults: &Notify,
) -> Result<JobConfig, Error> {
    let name = name(ctx, index, raw)?;
    let label = format!("job[{name}]");
    let field = |key: &str| format!("{label}.{key}");
    let upload_mode = upload_mode(ctx, raw.upload_mode.as_ref(), &field("upload_mode"))?;
    let job = JobConfig {
        sources: sources(ctx, index, raw, &field("sources"))?,
        excludes: excludes(ctx, &raw.excludes, &field("excludes"))?,
        exclude_if_present: exclude_if_present(
            ctx,
            &raw.exclude_if_present,
            &field("exclude_if_present"),
        )?,
        one_file_system: raw.one_file_system.unwrap_or(false),
        share: share(ctx, index, raw.share.as_ref(), &field("share"))?,
        path: remote_path(ctx, raw.path.as_ref(), &field("path"))?,
        schedule: job_schedule(ctx, raw.schedule.as_ref(), &field("schedule"))?,
        timezone: timezone(ctx, raw.timezone.as_ref(), &field("timezone"))?,
        jitter: ctx.duration(raw.jitter.as_ref(), &field("jitter"), Duration::ZERO)?,
        compression: compression(ctx, &raw.compression, &field("compression.level"))?,
        encryption: encryption(ctx, raw.encryption.as_ref(), &label)?,
        volume_size: volume_size(ctx, raw.volume_size.as_ref(), &field("volume_size"))?,
        upload_mode,
        spool_dir: spool_dir(ctx, raw, upload_mode, &field("spool_dir"))?,
        retention: retention(ctx, index, &raw.retention, &label)?,
        hooks: hooks(ctx, &raw.hooks, &label)?,
        lock_stale_after: ctx.positive_duration(
            raw.lock.stale_after.as_ref(),
            &field("lock.stale_after"),
            Duration::from_secs(6 * 3600),
        )?,
        notify: notify::job(ctx, &raw.notify, &label, notify_defaults)?,
        name,
    };
    Ok(job)
}

/// The line of the `index`-th `[[job]]` header, as a span-less fallback.
fn header_line(ctx: &Ctx<'_>, index: usize) -> Option<std::ops::Range<usize>> {
    ctx.origin.nth_header_span("job", index)
}

fn name(ctx: &Ctx<'_>, index: usize, raw: &RawJob) -> Result<String, Error> {
    let field = format!("job[{}].name", index + 1);
    let Some(value) = &raw.name else {
        return Err(ctx.invalid(
            header_line(ctx, index),
            field,
            "the job has no name",
            "add `name = \"home\"` (letters, digits, `.`, `_` and `-`)",
        ));
    };
    let name = value.get_ref();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name == "." || name == ".." || !name.chars().all(allowed) {
        let suggestion: String = name
            .chars()
            .map(|c| if allowed(c) { c } else { '-' })
            .collect();
        return Err(ctx.invalid(
            Some(value.span()),
            field,
            format!("`{name}` is not a valid job name"),
            format!(
                "use only letters, digits, `.`, `_` and `-` (it names a folder on the NAS), e.g. \"{}\"",
                suggestion.trim_matches('.')
            ),
        ));
    }
    Ok(name.clone())
}

fn sources(
    ctx: &mut Ctx<'_>,
    index: usize,
    raw: &RawJob,
    field: &str,
) -> Result<Vec<PathBuf>, Error> {
    let hint = "list absolute directories, e.g. `sources = [\"/home\", \"/etc\"]`";
    let Some(list) = &raw.sources else {
        return Err(ctx.invalid(
            header_line(ctx, index),
            field,
            "the job has no sources",
            hint,
        ));
    };
    if list.get_ref().is_empty() {
        return Err(ctx.invalid(Some(list.span()), field, "is empty", hint));
    }
    let mut seen = HashSet::new();
    let mut sources = Vec::new();
    for value in list.get_ref() {
        let path = source(ctx, value, field)?;
        if seen.insert(path.clone()) {
            sources.push(path);
        } else {
            ctx.note(
                Some(value.span()),
                field,
                format!("`{}` is listed twice; the copy is ignored", path.display()),
            );
        }
    }
    Ok(sources)
}

fn source(ctx: &Ctx<'_>, value: &SpannedString, field: &str) -> Result<PathBuf, Error> {
    let path = PathBuf::from(value.get_ref());
    let span = Some(value.span());
    if !path.is_absolute() {
        return Err(ctx.invalid(
            span,
            field,
            format!("`{}` is a relative path", path.display()),
            "write the absolute path of the directory, e.g. \"/home\"",
        ));
    }
    match fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(ctx.invalid(
            span,
            field,
            format!("`{}` is not a directory", path.display()),
            "sources are directories: list its parent folder and exclude what you do not want",
        )),
        Err(e) => Err(ctx.invalid_because(
            span,
            field,
            format!(
                "source `{}` does not exist or cannot be read",
                path.display()
            ),
            "fix the path, create the directory, or remove it from sources",
            e,
        )),
    }
}

fn excludes(ctx: &Ctx<'_>, values: &[SpannedString], field: &str) -> Result<Vec<String>, Error> {
    values
        .iter()
        .map(|value| {
            let glob = value.get_ref();
            if glob.is_empty() {
                return Err(ctx.invalid(
                    Some(value.span()),
                    field,
                    "an exclude is empty",
                    GLOB_HINT,
                ));
            }
            globset::Glob::new(glob).map_err(|e| {
                ctx.invalid_because(
                    Some(value.span()),
                    field,
                    format!("`{glob}` is not a valid glob"),
                    GLOB_HINT,
                    e,
                )
            })?;
            Ok(glob.clone())
        })
        .collect()
}

fn exclude_if_present(
    ctx: &Ctx<'_>,
    values: &[SpannedString],
    field: &str,
) -> Result<Vec<String>, Error> {
    values
        .iter()
        .map(|value| {
            let name = value.get_ref();
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(ctx.invalid(
                    Some(value.span()),
                    field,
                    format!("`{name}` is not a file name"),
                    "write a plain file name such as \".nobackup\" or \"CACHEDIR.TAG\"",
                ));
            }
            Ok(name.clone())
        })
        .collect()
}

fn share(
    ctx: &mut Ctx<'_>,
    index: usize,
    value: Option<&SpannedString>,
    field: &str,
) -> Result<String, Error> {
    let Some(value) = value else {
        return Err(ctx.invalid(
            header_line(ctx, index),
            field,
            "the job has no share",
            "add `share = \"backup\"`: the name of a DSM shared folder the user may write to",
        ));
    };
    match normalise_share(value.get_ref()) {
        Ok(n) => {
            if n.changed {
                ctx.note(
                    Some(value.span()),
                    field,
                    format!(
                        "share `{}` read as `{}`; write share = \"{}\"",
                        value.get_ref(),
                        n.value,
                        n.value
                    ),
                );
            }
            Ok(n.value)
        }
        Err(RemoteError::ShareHasSlash) => {
            let raw = value.get_ref().trim_matches('/');
            let (share, rest) = raw.split_once('/').unwrap_or((raw, ""));
            Err(ctx.invalid(
                Some(value.span()),
                field,
                format!("`{}` is a path, not a share name", value.get_ref()),
                format!("write share = \"{share}\" and path = \"{rest}\""),
            ))
        }
        Err(_) => Err(ctx.invalid(
            Some(value.span()),
            field,
            format!("`{}` is not a share name", value.get_ref()),
            "write the name of a DSM shared folder, e.g. \"backup\"",
        )),
    }
}

fn remote_path(
    ctx: &mut Ctx<'_>,
    value: Option<&SpannedString>,
    field: &str,
) -> Result<String, Error> {
    let Some(value) = value else {
        return Ok(String::new());
    };
    let raw = value.get_ref();
    let span = Some(value.span());
    match normalise_path(raw) {
        Ok(n) => {
            if n.changed {
                ctx.note(
                    span,
                    field,
                    format!("path `{raw}` was normalised to `{}`; write path = \"{}\"", n.value, n.value),
                );
            }
            Ok(n.value)
        }
        Err(RemoteError::Absolute) => Err(ctx.invalid(
            span,
            field,
            format!("`{raw}` starts with `/`"),
            format!(
                "path is relative to the share: write path = \"{}\" (and the share name in `share`)",
                raw.trim_start_matches('/')
            ),
        )),
        Err(RemoteError::ParentDir) => Err(ctx.invalid(
            span,
            field,
            format!("`{raw}` contains `..`"),
            "write a path inside the share without `..`, e.g. \"hosts/pi\"",
        )),
        Err(_) => Err(ctx.invalid(
            span,
            field,
            format!("`{raw}` contains a backslash"),
            "separate folders with `/`, e.g. \"hosts/pi\"",
        )),
    }
}

fn job_schedule(
    ctx: &mut Ctx<'_>,
    value: Option<&SpannedString>,
    field: &str,
) -> Result<Option<JobSchedule>, Error> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = value.get_ref();
    let span = Some(value.span());
    let parsed = schedule::parse(text).map_err(|e| {
        let (reason, hint) = match &e {
            ScheduleError::UnknownAlias(a) => (
                format!("unknown alias `{a}`"),
                format!("use one of {} (@reboot is not supported), or {CRON_HINT}", schedule::alias_names()),
            ),
            ScheduleError::DayOfWeek(d) => (
                format!("day of week `{d}` is not valid"),
                "days of week are 0-7 (0 and 7 are Sunday, 1 is Monday) or names MON, TUE, ... SUN; ranges like 1-5".to_owned(),
            ),
            _ => (format!("`{text}` is not a valid cron schedule"), CRON_HINT.to_owned()),
        };
        ctx.invalid_because(span.clone(), field, reason, hint, e)
    })?;
    if parsed.both_days_restricted {
        ctx.note(
            span,
            field,
            "both day-of-month and day-of-week are set: synback runs only on days matching both (classic cron runs when either matches)",
        );
    }
    Ok(Some(JobSchedule {
        text: text.clone(),
        cron: parsed.schedule,
    }))
}

fn timezone(
    ctx: &Ctx<'_>,
    value: Option<&SpannedString>,
    field: &str,
) -> Result<Option<Tz>, Error> {
    let Some(value) = value else {
        return Ok(None);
    };
    let name = value.get_ref().trim();
    if let Ok(tz) = Tz::from_str(name) {
        return Ok(Some(tz));
    }
    let names: Vec<String> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| tz.name().to_owned())
        .collect();
    let exact_case = names.iter().find(|n| n.eq_ignore_ascii_case(name));
    let hint = match exact_case.map(String::as_str).or_else(|| closest(name, &names)) {
        Some(best) => format!("did you mean \"{best}\"? write an IANA zone name such as \"Europe/Paris\" or \"UTC\", or remove the key for the machine's local zone"),
        None => "write an IANA zone name such as \"Europe/Paris\", \"America/New_York\" or \"UTC\", or remove the key for the machine's local zone".to_owned(),
    };
    Err(ctx.invalid(
        Some(value.span()),
        field,
        format!("`{name}` is not a known time zone"),
        hint,
    ))
}

fn compression(ctx: &Ctx<'_>, raw: &RawCompression, field: &str) -> Result<Compression, Error> {
    let level = raw.level.as_ref().map_or(3, |v| *v.get_ref());
    let level = i32::try_from(level).ok().filter(|l| (1..=22).contains(l)).ok_or_else(|| {
        ctx.invalid(
            span_of(raw.level.as_ref()),
            field,
            format!("level {level} is out of range"),
            "write a zstd level from 1 (fastest) to 22 (smallest); 3 is the default, 19 and up need much memory",
        )
    })?;
    Ok(Compression {
        level,
        workers: raw.workers.unwrap_or(0),
        long_distance: raw.long_distance.unwrap_or(false),
    })
}

fn encryption(
    ctx: &Ctx<'_>,
    raw: Option<&toml::Spanned<RawEncryption>>,
    label: &str,
) -> Result<Option<Encryption>, Error> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let field = format!("{label}.encryption.recipients");
    let enc = raw.get_ref();
    if enc.recipients.is_empty() {
        return Err(ctx.invalid(
            Some(raw.span()),
            field,
            "encryption is configured without recipients",
            "add `recipients = [\"age1...\"]` (from `age-keygen -y KEYFILE`), or remove [job.encryption]",
        ));
    }
    let recipients = enc
        .recipients
        .iter()
        .map(|r| recipient(ctx, r, &field))
        .collect::<Result<Vec<_>, _>>()?;
    let identity_file = match &enc.identity_file {
        Some(f) => Some(ctx.absolute(f, &format!("{label}.encryption.identity_file"))?),
        None => None,
    };
    Ok(Some(Encryption {
        recipients,
        identity_file,
    }))
}

fn recipient(ctx: &Ctx<'_>, value: &SpannedString, field: &str) -> Result<String, Error> {
    let key = value.get_ref().trim();
    let span = Some(value.span());
    if key.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        // Never echo it: it is a secret.
        return Err(ctx.invalid(
            span,
            field,
            "this is an age SECRET key; it must not be on the machine being backed up",
            "write the public key printed by `age-keygen -y KEYFILE` (it starts with age1), keep the secret key elsewhere and consider it leaked",
        ));
    }
    match age::x25519::Recipient::from_str(key) {
        Ok(_) => Ok(key.to_owned()),
        Err(why) => Err(ctx.invalid(
            span,
            field,
            format!("`{key}` is not an age public key ({why})"),
            "write an age X25519 public key: `age1` followed by 58 characters, as printed by `age-keygen -y KEYFILE` (ssh keys are not supported)",
        )),
    }
}

fn volume_size(
    ctx: &mut Ctx<'_>,
    value: Option<&SpannedString>,
    field: &str,
) -> Result<u64, Error> {
    let Some(value) = value else {
        return Ok(MAX_SAFE_VOLUME);
    };
    let span = Some(value.span());
    let bytes = parse_size(value.get_ref()).map_err(|e| {
        ctx.invalid_because(
            span.clone(),
            field,
            format!("`{}` is not a size", value.get_ref()),
            format!("{SIZE_HINT}; units: {UNITS}"),
            e,
        )
    })?;
    if bytes < MIN_VOLUME {
        return Err(ctx.invalid(
            span,
            field,
            format!("{} is too small", HumanSize(bytes)),
            format!("{SIZE_HINT}; volumes must be at least 1MiB"),
        ));
    }
    if bytes > MAX_SAFE_VOLUME {
        ctx.note(
            span,
            field,
            format!(
                "volumes of {} exceed 1GiB: some DSM front-ends and reverse proxies refuse such requests (HTTP 504/413); \"1GiB\" is the safe maximum",
                HumanSize(bytes)
            ),
        );
    }
    Ok(bytes)
}

fn upload_mode(
    ctx: &Ctx<'_>,
    value: Option<&SpannedString>,
    field: &str,
) -> Result<UploadMode, Error> {
    match value.map(|v| v.get_ref().as_str()) {
        None | Some("spool") => Ok(UploadMode::Spool),
        Some("stream") => Ok(UploadMode::Stream),
        Some(other) => Err(ctx.invalid(
            span_of(value),
            field,
            format!("unknown upload mode `{other}`"),
            "write \"spool\" (default: each volume via a local temp file, resumable) or \"stream\" (no local disk)",
        )),
    }
}

fn spool_dir(
    ctx: &mut Ctx<'_>,
    raw: &RawJob,
    mode: UploadMode,
    field: &str,
) -> Result<Option<PathBuf>, Error> {
    let Some(value) = &raw.spool_dir else {
        return Ok(None);
    };
    let dir = ctx.absolute(value, field)?;
    if !dir.is_dir() {
        return Err(ctx.invalid(
            Some(value.span()),
            field,
            format!("`{}` is not an existing directory", dir.display()),
            "create it, or remove the key to use the system temp directory",
        ));
    }
    if mode == UploadMode::Stream {
        ctx.note(
            Some(value.span()),
            field,
            "spool_dir is not used with upload_mode = \"stream\"",
        );
    }
    Ok(Some(dir))
}

fn retention(
    ctx: &mut Ctx<'_>,
    index: usize,
    raw: &RawRetention,
    label: &str,
) -> Result<Retention, Error> {
    let retention = Retention {
        keep_last: raw.keep_last,
        keep_hourly: raw.keep_hourly,
        keep_daily: raw.keep_daily,
        keep_weekly: raw.keep_weekly,
        keep_monthly: raw.keep_monthly,
        keep_yearly: raw.keep_yearly,
        keep_within: match &raw.keep_within {
            Some(v) => Some(ctx.duration(
                Some(v),
                &format!("{label}.retention.keep_within"),
                Duration::ZERO,
            )?),
            None => None,
        },
    };
    if retention.is_empty() {
        ctx.note(
            header_line(ctx, index),
            format!("{label}.retention"),
            "no retention rule: snapshots are never deleted; add [job.retention] with e.g. keep_daily = 7",
        );
    }
    Ok(retention)
}

fn hooks(ctx: &Ctx<'_>, raw: &RawHooks, label: &str) -> Result<Hooks, Error> {
    let command = |value: Option<&SpannedString>, key: &str| -> Result<Option<String>, Error> {
        match value {
            Some(v) if v.get_ref().trim().is_empty() => Err(ctx.invalid(
                Some(v.span()),
                format!("{label}.hooks.{key}"),
                "the command is empty",
                "write a shell command, e.g. \"pg_dumpall -f /var/backups/db.sql\", or remove the key",
            )),
            Some(v) => Ok(Some(v.get_ref().clone())),
            None => Ok(None),
        }
    };
    Ok(Hooks {
        before: command(raw.before.as_ref(), "before")?,
        after: command(raw.after.as_ref(), "after")?,
        on_failure: command(raw.on_failure.as_ref(), "on_failure")?,
        timeout: ctx.positive_duration(
            raw.timeout.as_ref(),
            &format!("{label}.hooks.timeout"),
            Duration::from_secs(10 * 60),
        )?,
    })
}

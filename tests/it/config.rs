//! The config file: the example, every error message (file, line, hint),
//! notes, cron forms, time zones, sizes, permissions and secrets.

// Test helpers outside `#[test]` functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use synback::config::{
    Config, ConfigEnv, Error, LogFormat, PasswordSource, RawConfig, RawJob, UploadMode,
};

const FILE: &str = "synback.toml";

fn env() -> ConfigEnv {
    ConfigEnv::new()
        .with_var("NAS_PASSWORD", "pw-from-env-7731")
        .with_var("HOME", "/home/tester")
}

/// An existing absolute directory to use as a source.
fn src_dir() -> String {
    format!("{}/src", env!("CARGO_MANIFEST_DIR"))
}

/// A valid config; `nas_extra` goes at the end of `[nas]`, `job_extra` at
/// the end of the one `[[job]]`.
fn config_text(nas_extra: &str, job_extra: &str) -> String {
    format!(
        r#"[nas]
url = "https://nas.local"
user = "backup"
{nas_extra}

[[job]]
name = "home"
sources = ["{src}"]
share = "backup"
{job_extra}
"#,
        src = src_dir()
    )
}

/// A config using password_env plus `job_extra` in the job.
fn with_job(job_extra: &str) -> String {
    config_text("password_env = \"NAS_PASSWORD\"", job_extra)
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` not in the text"))
}

fn load(text: &str) -> Result<Config, Error> {
    Config::from_toml_str(text, FILE, &env())
}

/// Loads `text`, expects an `Invalid` error and checks its field, line and
/// that the message names the file and contains `hint` in the hint.
fn invalid(text: &str, field: &str, needle: &str, hint: &str) -> String {
    let err = load(text).expect_err("config should be refused");
    let message = err.to_string();
    let Error::Invalid(inv) = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(inv.field, field, "{message}");
    assert_eq!(inv.line, Some(line_of(text, needle)), "{message}");
    assert!(
        inv.hint.contains(hint),
        "hint {:?} lacks {hint:?}",
        inv.hint
    );
    assert!(
        message.starts_with(&format!("{FILE}:{}:", line_of(text, needle))),
        "{message}"
    );
    assert!(message.contains(hint), "{message}");
    message
}

#[test]
fn minimal_config_gets_defaults() {
    let c = load(&with_job("")).unwrap();
    assert_eq!(c.nas.url.to_string(), "https://nas.local:5001");
    assert_eq!(c.nas.password.expose(), "pw-from-env-7731");
    assert_eq!(
        c.nas.password_source,
        PasswordSource::Env("NAS_PASSWORD".into())
    );
    assert_eq!(
        c.state_dir,
        PathBuf::from("/home/tester/.local/state/synback")
    );
    assert_eq!(c.retry.max_attempts, 5);
    assert_eq!(c.daemon.max_parallel, 1);
    assert!(c.daemon.status_listen.is_none());
    assert_eq!(c.daemon.log_format, LogFormat::Human);
    let job = c.job("home").unwrap();
    assert_eq!(job.compression.level, 3);
    assert_eq!(job.compression.workers, 0);
    assert_eq!(job.volume_size, 1 << 30);
    assert_eq!(job.upload_mode, UploadMode::Spool);
    assert_eq!(job.lock_stale_after.as_secs(), 6 * 3600);
    assert!(job.schedule.is_none());
    assert!(job.timezone.is_none());
    assert_eq!(job.remote_dir(), "/backup/home");
    assert!(job.retention.is_empty());
    // No retention rule is worth a note.
    assert!(c.notes.iter().any(|n| n.field == "job[home].retention"));
}

// ----- the example file -------------------------------------------------

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml")
}

#[test]
fn example_is_valid_as_is() {
    let env = ConfigEnv::new().with_var("SYNBACK_PASSWORD", "example-pw");
    let c = Config::load(example_path(), &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.jobs.len(), 2);
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/synback"));
    let system = c.job("system").unwrap();
    assert_eq!(system.remote_dir(), "/backup/hosts/pi/system");
    assert_eq!(system.timezone, Some(chrono_tz::Europe::Paris));
    assert_eq!(system.retention.keep_daily, Some(7));
    assert!(system.hooks.before.is_some());
    assert!(c.job("home").unwrap().schedule.is_some());
    assert!(c.notes.is_empty(), "{:?}", c.notes);
}

/// Every table of the RawConfig and a config that puts an unknown key in it.
const TABLES: [(&str, &str); 14] = [
    ("", "zz_unknown = 1\n"),
    ("nas", "[nas]\nzz_unknown = 1\n"),
    ("state", "[state]\nzz_unknown = 1\n"),
    ("retry", "[retry]\nzz_unknown = 1\n"),
    ("daemon", "[daemon]\nzz_unknown = 1\n"),
    ("job", "[[job]]\nzz_unknown = 1\n"),
    (
        "job.compression",
        "[[job]]\n[job.compression]\nzz_unknown = 1\n",
    ),
    (
        "job.encryption",
        "[[job]]\n[job.encryption]\nzz_unknown = 1\n",
    ),
    (
        "job.retention",
        "[[job]]\n[job.retention]\nzz_unknown = 1\n",
    ),
    ("job.hooks", "[[job]]\n[job.hooks]\nzz_unknown = 1\n"),
    ("job.lock", "[[job]]\n[job.lock]\nzz_unknown = 1\n"),
    ("notify", "[notify]\nzz_unknown = 1\n"),
    ("mqtt", "[mqtt]\nzz_unknown = 1\n"),
    ("job.notify", "[[job]]\n[job.notify]\nzz_unknown = 1\n"),
];

/// The valid keys of a table, as the unknown-key message lists them.
fn keys_of(text: &str) -> Vec<String> {
    let Err(Error::Invalid(inv)) = RawConfig::from_toml_str(text, FILE) else {
        panic!("unknown key not refused in {text}");
    };
    let list = inv.hint.split(": ").last().unwrap();
    list.split(", ").map(str::to_owned).collect()
}

#[test]
fn example_documents_every_key() {
    let example = fs::read_to_string(example_path()).unwrap();
    let lines: Vec<&str> = example
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let mut checked = 0;
    for (table, text) in TABLES {
        let keys = keys_of(text);
        assert!(!keys.is_empty(), "{table}: {keys:?}");
        for key in keys {
            let dotted = if table.is_empty() {
                key.clone()
            } else {
                format!("{table}.{key}")
            };
            let present = lines.iter().any(|l| {
                l.starts_with(&format!("{key} ="))
                    || *l == format!("[{dotted}]")
                    || *l == format!("[[{dotted}]]")
            });
            assert!(present, "config.example.toml does not document `{dotted}`");
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} keys checked");
}

// ----- parse errors and unknown keys -------------------------------------

#[test]
fn unknown_key_suggests_the_closest() {
    let text = config_text("pasword_file = \"/x\"", "");
    let message = invalid(
        &text,
        "nas.pasword_file",
        "pasword_file",
        "did you mean `password_file`?",
    );
    assert!(
        message.contains("valid keys in [nas]: url, user"),
        "{message}"
    );
}

#[test]
fn unknown_key_in_a_job_subtable() {
    let text = with_job("[job.retention]\nkeep_dayly = 7");
    invalid(
        &text,
        "job.retention.keep_dayly",
        "keep_dayly",
        "did you mean `keep_daily`?",
    );
}

#[test]
fn unknown_key_without_a_close_match_lists_the_valid_ones() {
    let text = with_job("colour = \"blue\"");
    let msg = invalid(
        &text,
        "job.colour",
        "colour",
        "valid keys in [job]: name, sources",
    );
    assert!(!msg.contains("did you mean"), "{msg}");
}

#[test]
fn bad_toml_gives_line_and_column() {
    let text = with_job("path = \"unterminated");
    let err = load(&text).unwrap_err();
    let Error::Parse {
        path, line, column, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(path, Path::new(FILE));
    assert_eq!(*line, line_of(&text, "unterminated"));
    assert!(*column > 1);
    assert!(err.to_string().starts_with(&format!("{FILE}:{line}:")));
}

#[test]
fn wrong_type_gives_the_line() {
    let text = with_job("[job.compression]\nlevel = \"high\"");
    let err = load(&text).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    assert_eq!(err.line(), Some(line_of(&text, "level")));
}

#[test]
fn unreadable_file() {
    let err = Config::load("/nonexistent/synback.toml", &env()).unwrap_err();
    assert!(matches!(err, Error::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/synback.toml"));
    assert!(std::error::Error::source(&err).is_some());
}

// ----- [nas] -----------------------------------------------------------

#[test]
fn missing_url() {
    let text = "[nas]\nuser = \"u\"\npassword_env = \"NAS_PASSWORD\"\n";
    let err = load(text).unwrap_err();
    let Error::Invalid(inv) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(inv.field, "nas.url");
    assert_eq!(inv.line, None);
    assert!(
        err.to_string()
            .starts_with("synback.toml: nas.url: is missing")
    );
}

#[test]
fn bad_url() {
    let text = with_job("").replace("https://nas.local", "nas.local:5001");
    invalid(&text, "nas.url", "url =", "https://nas.local:5001");
}

#[test]
fn url_with_a_password_is_refused_without_echoing_it() {
    let text = with_job("").replace("https://nas.local", "https://u:topsecret@nas");
    let msg = invalid(&text, "nas.url", "url =", "https://nas.local:5001");
    assert!(!msg.contains("topsecret"));
}

#[test]
fn http_url_gets_a_note() {
    let c = load(&with_job("").replace("https://nas.local", "http://nas.local")).unwrap();
    assert_eq!(c.nas.url.port, 5000);
    assert!(
        c.notes
            .iter()
            .any(|n| n.field == "nas.url" && n.message.contains("unencrypted"))
    );
}

#[test]
fn missing_password_file() {
    let text = config_text("password_file = \"/nonexistent/pw\"", "");
    let msg = invalid(
        &text,
        "nas.password_file",
        "password_file",
        "create the file",
    );
    assert!(msg.contains("/nonexistent/pw"));
}

#[test]
fn password_env_not_set() {
    let text = config_text("password_env = \"UNSET_VAR\"", "");
    let msg = invalid(&text, "nas.password_env", "password_env", "set UNSET_VAR");
    assert!(msg.contains("not set"));
}

#[test]
fn no_password_at_all() {
    let err = load(&config_text("", "")).unwrap_err();
    let Error::Invalid(inv) = &err else {
        panic!("{err:?}")
    };
    assert!(inv.hint.contains("password_file"), "{err}");
}

#[test]
fn two_password_sources() {
    let text = config_text(
        "password_env = \"NAS_PASSWORD\"\npassword_file = \"/x\"",
        "",
    );
    invalid(
        &text,
        "nas.password_file",
        "password_file",
        "keep exactly one of",
    );
}

#[test]
fn password_from_systemd_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let cred = dir.path().join("nas-password");
    fs::write(&cred, "cred-pw\n").unwrap();
    fs::set_permissions(&cred, fs::Permissions::from_mode(0o600)).unwrap();
    let text = config_text("password_credential = \"nas-password\"", "");
    let env = env().with_var("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap());
    let c = Config::from_toml_str(&text, FILE, &env).unwrap();
    assert_eq!(c.nas.password.expose(), "cred-pw");
    assert_eq!(c.nas.password_source, PasswordSource::Credential(cred));
    assert!(
        c.notes.iter().all(|n| !n.field.starts_with("nas.")),
        "{:?}",
        c.notes
    );
}

#[test]
fn credential_without_systemd() {
    let text = config_text("password_credential = \"nas-password\"", "");
    invalid(
        &text,
        "nas.password_credential",
        "password_credential",
        "LoadCredential=nas-password",
    );
}

#[test]
fn tls_options_conflict() {
    let pin = "ab".repeat(32);
    let text = config_text(
        &format!("password_env = \"NAS_PASSWORD\"\npin_sha256 = \"{pin}\"\ninsecure = true"),
        "",
    );
    invalid(&text, "nas.insecure", "pin_sha256", "choose one");
}

#[test]
fn bad_pin() {
    let text = config_text("password_env = \"NAS_PASSWORD\"\npin_sha256 = \"abc\"", "");
    invalid(&text, "nas.pin_sha256", "pin_sha256", "openssl");
}

#[test]
fn pin_is_normalised_and_insecure_is_noted() {
    let pin = vec!["AB"; 32].join(":");
    let c = load(&config_text(
        &format!("password_env = \"NAS_PASSWORD\"\npin_sha256 = \"{pin}\""),
        "",
    ))
    .unwrap();
    assert_eq!(c.nas.tls.pin_sha256, Some("ab".repeat(32)));
    let c = load(&config_text(
        "password_env = \"NAS_PASSWORD\"\ninsecure = true",
        "",
    ))
    .unwrap();
    assert!(c.nas.tls.insecure);
    assert!(c.notes.iter().any(|n| n.field == "nas.insecure"));
}

#[test]
fn bad_duration() {
    let text = config_text(
        "password_env = \"NAS_PASSWORD\"\nconnect_timeout = \"ten seconds\"",
        "",
    );
    invalid(&text, "nas.connect_timeout", "connect_timeout", "\"30s\"");
    let text = config_text("password_env = \"NAS_PASSWORD\"\nidle_timeout = \"0s\"", "");
    invalid(&text, "nas.idle_timeout", "idle_timeout", "\"30s\"");
}

#[test]
fn otp_secret_file_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("otp");
    fs::write(&good, "JBSWY3DPEHPK3PXP\n").unwrap();
    fs::set_permissions(&good, fs::Permissions::from_mode(0o600)).unwrap();
    let text = config_text(
        &format!(
            "password_env = \"NAS_PASSWORD\"\notp_secret_file = \"{}\"",
            good.display()
        ),
        "",
    );
    let c = load(&text).unwrap();
    assert_eq!(
        c.nas.otp_secret.as_ref().unwrap().expose(),
        "JBSWY3DPEHPK3PXP"
    );
    assert!(!format!("{c:?}").contains("JBSWY3DPEHPK3PXP"));

    let bad = dir.path().join("bad");
    fs::write(&bad, "not base32 !!!").unwrap();
    let text = config_text(
        &format!(
            "password_env = \"NAS_PASSWORD\"\notp_secret_file = \"{}\"",
            bad.display()
        ),
        "",
    );
    let msg = invalid(&text, "nas.otp_secret_file", "otp_secret_file", "base32");
    assert!(!msg.contains("not base32 !!!"));
}

// ----- [state], [retry], [daemon] ---------------------------------------

#[test]
fn state_dir_from_systemd_and_missing() {
    let env = ConfigEnv::new()
        .with_var("NAS_PASSWORD", "x")
        .with_var("STATE_DIRECTORY", "/var/lib/synback");
    let c = Config::from_toml_str(&with_job(""), FILE, &env).unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/synback"));
    let env = ConfigEnv::new().with_var("NAS_PASSWORD", "x");
    let err = Config::from_toml_str(&with_job(""), FILE, &env).unwrap_err();
    let Error::Invalid(inv) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(inv.field, "state.dir");
    assert!(inv.hint.contains("dir = \"/var/lib/synback\""));
    let text = format!("{}\n[state]\ndir = \"relative/state\"\n", with_job(""));
    invalid(&text, "state.dir", "relative/state", "absolute path");
}

#[test]
fn retry_limits() {
    let text = format!("{}\n[retry]\nmax_attempts = 0\n", with_job(""));
    invalid(
        &text,
        "retry.max_attempts",
        "max_attempts",
        "max_attempts = 1",
    );
    let text = format!(
        "{}\n[retry]\nbase_delay = \"10m\"\nmax_delay = \"1m\"\n",
        with_job("")
    );
    invalid(&text, "retry.max_delay", "max_delay", "at least as long");
}

#[test]
fn status_listen_is_loopback_unless_allowed() {
    let text = format!(
        "{}\n[daemon]\nstatus_listen = \"0.0.0.0:9105\"\n",
        with_job("")
    );
    invalid(
        &text,
        "daemon.status_listen",
        "status_listen",
        "allow_remote = true",
    );
    let text = format!(
        "{}\n[daemon]\nstatus_listen = \"0.0.0.0:9105\"\nallow_remote = true\nlog_format = \"json\"\n",
        with_job("")
    );
    let c = load(&text).unwrap();
    assert_eq!(
        c.daemon.status_listen,
        Some("0.0.0.0:9105".parse().unwrap())
    );
    assert_eq!(c.daemon.log_format, LogFormat::Json);
    assert!(c.notes.iter().any(|n| n.field == "daemon.status_listen"));
    let text = format!(
        "{}\n[daemon]\nstatus_listen = \"localhost\"\n",
        with_job("")
    );
    invalid(
        &text,
        "daemon.status_listen",
        "status_listen",
        "127.0.0.1:9105",
    );
    let text = format!("{}\n[daemon]\nlog_format = \"xml\"\n", with_job(""));
    invalid(&text, "daemon.log_format", "log_format", "\"json\"");
}

#[test]
fn trusted_peers_are_ip_addresses() {
    let daemon = "[daemon]\nstatus_listen = \"0.0.0.0:9105\"\nallow_remote = true\n";
    let text = format!(
        "{}\n{daemon}trusted_peers = [\"172.30.32.2\", \"fd00::1\"]\n",
        with_job("")
    );
    let c = load(&text).unwrap();
    assert_eq!(
        c.daemon.trusted_peers,
        [
            "172.30.32.2".parse::<std::net::IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    let note = c
        .notes
        .iter()
        .find(|n| n.field == "daemon.status_listen")
        .unwrap();
    assert!(note.message.contains("trusted_peers"), "{note}");
    assert!(load(&with_job("")).unwrap().daemon.trusted_peers.is_empty());
    let text = format!(
        "{}\n{daemon}trusted_peers = [\"supervisor\"]\n",
        with_job("")
    );
    invalid(&text, "daemon.trusted_peers", "supervisor", "172.30.32.2");
}

// ----- [[job]] ----------------------------------------------------------

#[test]
fn bad_glob() {
    let text = with_job("excludes = [\"**/.cache\", \"a[b\"]");
    let err = load(&text).unwrap_err();
    assert!(
        std::error::Error::source(&err).is_some(),
        "globset error kept as source"
    );
    invalid(&text, "job[home].excludes", "a[b", "**/.cache");
}

#[test]
fn bad_cron() {
    let text = with_job("schedule = \"61 2 * * *\"");
    invalid(&text, "job[home].schedule", "schedule", "30 2 * * *");
    let text = with_job("schedule = \"* * *\"");
    invalid(&text, "job[home].schedule", "schedule", "5 fields");
    let text = with_job("schedule = \"@reboot\"");
    invalid(
        &text,
        "job[home].schedule",
        "schedule",
        "@reboot is not supported",
    );
    let text = with_job("schedule = \"0 3 * * 9\"");
    invalid(
        &text,
        "job[home].schedule",
        "schedule",
        "0 and 7 are Sunday",
    );
}

#[test]
fn cron_forms() {
    use chrono::{Datelike, TimeZone, Timelike, Utc, Weekday};
    let after = Utc.with_ymd_and_hms(2026, 3, 4, 12, 0, 0).unwrap(); // a Wednesday
    let next = |schedule: &str| {
        let c = load(&with_job(&format!("schedule = \"{schedule}\""))).unwrap();
        let s = c.jobs[0].schedule.clone().unwrap();
        assert_eq!(s.text, schedule);
        s.cron.after(&after).next().unwrap()
    };
    let t = next("30 2 * * *");
    assert_eq!((t.day(), t.hour(), t.minute(), t.second()), (5, 2, 30, 0));
    let t = next("15 30 2 * * *");
    assert_eq!((t.hour(), t.minute(), t.second()), (2, 30, 15));
    assert_eq!(next("@daily").hour(), 0);
    assert_eq!(next("@hourly").hour(), 13);
    assert_eq!(next("@weekly").weekday(), Weekday::Sun);
    assert_eq!(next("@monthly").day(), 1);
    assert_eq!(next("@yearly").year(), 2027);
    assert_eq!(next("0 4 * * 1").weekday(), Weekday::Mon);
    assert_eq!(next("0 4 * * 0").weekday(), Weekday::Sun);
}

#[test]
fn cron_with_both_day_fields_gets_a_note() {
    let c = load(&with_job("schedule = \"0 3 1 * 1\"")).unwrap();
    assert!(c.notes.iter().any(|n| n.field == "job[home].schedule"));
}

#[test]
fn timezone() {
    let c = load(&with_job("timezone = \"America/New_York\"")).unwrap();
    assert_eq!(c.jobs[0].timezone, Some(chrono_tz::America::New_York));
    let text = with_job("timezone = \"Europe/Pariss\"");
    invalid(
        &text,
        "job[home].timezone",
        "timezone",
        "did you mean \"Europe/Paris\"",
    );
    let text = with_job("timezone = \"europe/paris\"");
    invalid(
        &text,
        "job[home].timezone",
        "timezone",
        "did you mean \"Europe/Paris\"",
    );
}

#[test]
fn bad_recipient() {
    let text = with_job("[job.encryption]\nrecipients = [\"age1notakey\"]");
    invalid(
        &text,
        "job[home].encryption.recipients",
        "age1notakey",
        "age-keygen -y",
    );
}

#[test]
fn secret_key_as_recipient_is_not_echoed() {
    let key = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ";
    let text = with_job(&format!("[job.encryption]\nrecipients = [\"{key}\"]"));
    let msg = invalid(
        &text,
        "job[home].encryption.recipients",
        key,
        "age-keygen -y",
    );
    assert!(!msg.contains(key));
    assert!(msg.contains("SECRET key"));
}

#[test]
fn encryption_without_recipients() {
    let text = with_job("[job.encryption]\nidentity_file = \"/etc/synback/key.txt\"");
    invalid(
        &text,
        "job[home].encryption.recipients",
        "[job.encryption]",
        "recipients = [",
    );
}

#[test]
fn good_recipient() {
    let key = "age137yt6tlp2jztgh4qwezmdc8q9e583ycyz8ua87wh9z7qv0p8jg2qalvssc";
    let c = load(&with_job(&format!(
        "[job.encryption]\nrecipients = [\"{key}\"]"
    )))
    .unwrap();
    let enc = c.jobs[0].encryption.clone().unwrap();
    assert_eq!(enc.recipients, [key]);
    assert_eq!(enc.identity_file, None);
}

#[test]
fn path_with_dotdot_or_leading_slash() {
    let text = with_job("path = \"hosts/../etc\"");
    invalid(&text, "job[home].path", "hosts/../etc", "without `..`");
    let text = with_job("path = \"/backup/hosts/pi\"");
    invalid(
        &text,
        "job[home].path",
        "/backup/hosts/pi",
        "path = \"backup/hosts/pi\"",
    );
}

#[test]
fn path_normalisation_notes() {
    let text = with_job("path = \"hosts//pi/\"");
    let c = load(&text).unwrap();
    assert_eq!(c.jobs[0].path, "hosts/pi");
    assert_eq!(c.jobs[0].remote_dir(), "/backup/hosts/pi/home");
    let note = c
        .notes
        .iter()
        .find(|n| n.field == "job[home].path")
        .unwrap();
    assert_eq!(note.line, Some(line_of(&text, "hosts//pi/")));
    assert!(note.message.contains("path = \"hosts/pi\""));
    assert!(
        note.to_string()
            .starts_with(&format!("{FILE}:{}: warning:", note.line.unwrap()))
    );
    let c = load(&with_job("path = \"hosts/pi\"")).unwrap();
    assert!(c.notes.iter().all(|n| n.field != "job[home].path"));
}

#[test]
fn share_with_a_path() {
    let text = with_job("").replace("share = \"backup\"", "share = \"backup/hosts\"");
    invalid(
        &text,
        "job[home].share",
        "share =",
        "share = \"backup\" and path = \"hosts\"",
    );
    let c = load(&with_job("").replace("share = \"backup\"", "share = \"/backup/\"")).unwrap();
    assert_eq!(c.jobs[0].share, "backup");
    assert!(c.notes.iter().any(|n| n.field == "job[home].share"));
}

#[test]
fn sources_must_exist_be_absolute_and_directories() {
    let text = with_job("").replace(&src_dir(), "/nonexistent/data");
    invalid(
        &text,
        "job[home].sources",
        "/nonexistent/data",
        "fix the path",
    );
    let text = with_job("").replace(&src_dir(), "relative/data");
    invalid(&text, "job[home].sources", "relative/data", "absolute path");
    let file = format!("{}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    let text = with_job("").replace(&src_dir(), &file);
    invalid(
        &text,
        "job[home].sources",
        "Cargo.toml",
        "list its parent folder",
    );
}

#[test]
fn missing_sources_and_share_point_at_the_job() {
    let text = "[nas]\nurl = \"https://n\"\nuser = \"u\"\npassword_env = \"NAS_PASSWORD\"\n\n[[job]]\nname = \"a\"\nshare = \"s\"\n";
    invalid(text, "job[a].sources", "[[job]]", "sources = [");
}

#[test]
fn job_names_are_checked_and_unique() {
    let text = with_job("").replace("name = \"home\"", "name = \"my home\"");
    invalid(&text, "job[1].name", "my home", "\"my-home\"");
    let text = with_job("").replace("name = \"home\"", "name = \"..\"");
    invalid(&text, "job[1].name", "name = \"..\"", "letters, digits");
    let second = format!(
        "\n[[job]]\nname = \"home\"\nsources = [\"{}\"]\nshare = \"b\"\n",
        src_dir()
    );
    let text = format!("{}{second}", with_job(""));
    let err = load(&text).unwrap_err();
    let Error::Invalid(inv) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(inv.field, "job[home].name");
    assert_eq!(
        inv.line,
        Some(
            text.lines()
                .collect::<Vec<_>>()
                .iter()
                .rposition(|l| l.contains("name = \"home\""))
                .unwrap()
                + 1
        )
    );
    assert!(inv.hint.contains("its own name"));
}

#[test]
fn sizes() {
    let c = load(&with_job("volume_size = \"500MB\"")).unwrap();
    assert_eq!(c.jobs[0].volume_size, 500_000_000);
    let c = load(&with_job("volume_size = \"256 MiB\"")).unwrap();
    assert_eq!(c.jobs[0].volume_size, 256 << 20);
    let text = with_job("volume_size = \"big\"");
    invalid(&text, "job[home].volume_size", "volume_size", "\"1GiB\"");
    let text = with_job("volume_size = \"10KiB\"");
    invalid(
        &text,
        "job[home].volume_size",
        "volume_size",
        "at least 1MiB",
    );
    let c = load(&with_job("volume_size = \"4GiB\"")).unwrap();
    assert_eq!(c.jobs[0].volume_size, 4 << 30);
    assert!(c.notes.iter().any(|n| n.field == "job[home].volume_size"));
}

#[test]
fn compression_and_upload_mode() {
    let text = with_job("[job.compression]\nlevel = 23");
    invalid(
        &text,
        "job[home].compression.level",
        "level",
        "from 1 (fastest) to 22",
    );
    let c = load(&with_job("upload_mode = \"stream\"\n[job.compression]\nlevel = 19\nworkers = 2\nlong_distance = true")).unwrap();
    let job = &c.jobs[0];
    assert_eq!(job.upload_mode, UploadMode::Stream);
    assert_eq!(
        (
            job.compression.level,
            job.compression.workers,
            job.compression.long_distance
        ),
        (19, 2, true)
    );
    let text = with_job("upload_mode = \"fast\"");
    invalid(&text, "job[home].upload_mode", "upload_mode", "\"spool\"");
}

#[test]
fn retention_hooks_lock() {
    let text = with_job(
        "[job.retention]\nkeep_last = 2\nkeep_within = \"3d\"\n[job.hooks]\nbefore = \"true\"\ntimeout = \"30s\"\n[job.lock]\nstale_after = \"2h\"",
    );
    let c = load(&text).unwrap();
    let job = &c.jobs[0];
    assert_eq!(job.retention.keep_last, Some(2));
    assert_eq!(job.retention.keep_within.unwrap().as_secs(), 3 * 86400);
    assert_eq!(job.hooks.before.as_deref(), Some("true"));
    assert_eq!(job.hooks.timeout.as_secs(), 30);
    assert_eq!(job.lock_stale_after.as_secs(), 7200);
    assert!(c.notes.is_empty(), "{:?}", c.notes);
    let text = with_job("[job.hooks]\nafter = \"  \"");
    invalid(&text, "job[home].hooks.after", "after", "shell command");
    let text = with_job("[job.lock]\nstale_after = \"soon\"");
    invalid(&text, "job[home].lock.stale_after", "stale_after", "\"6h\"");
}

#[test]
fn spool_dir_must_exist() {
    let text = with_job("spool_dir = \"/nonexistent/spool\"");
    invalid(&text, "job[home].spool_dir", "spool_dir", "create it");
    let dir = tempfile::tempdir().unwrap();
    let c = load(&with_job(&format!(
        "spool_dir = \"{}\"",
        dir.path().display()
    )))
    .unwrap();
    assert_eq!(c.jobs[0].spool_dir.as_deref(), Some(dir.path()));
}

// ----- permissions and secrets ------------------------------------------

fn write_mode(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn world_readable_config_with_inline_password_warns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synback.toml");
    let text = config_text("password = \"inline-pw-5521\"", "");
    write_mode(&path, &text, 0o644);
    let c = Config::load(&path, &env()).unwrap();
    assert_eq!(c.nas.password.expose(), "inline-pw-5521");
    let note = c
        .notes
        .iter()
        .find(|n| n.message.contains("every user can read it"))
        .expect("permission warning");
    assert_eq!(note.line, Some(line_of(&text, "password =")));
    assert!(note.message.contains("chmod 600"));
    // The inline password is warned about anyway, but not the mode at 600.
    write_mode(&path, &text, 0o600);
    let c = Config::load(&path, &env()).unwrap();
    assert!(c.notes.iter().all(|n| !n.message.contains("every user")));
    assert!(c.notes.iter().any(|n| n.field == "nas.password"));
}

#[test]
fn world_readable_password_file_warns() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    write_mode(&pw, "file-pw\n", 0o644);
    let text = config_text(&format!("password_file = \"{}\"", pw.display()), "");
    let c = load(&text).unwrap();
    assert_eq!(c.nas.password.expose(), "file-pw");
    let note = c
        .notes
        .iter()
        .find(|n| n.field == "nas.password_file")
        .unwrap();
    assert!(note.message.contains("chmod 600"));
    write_mode(&pw, "file-pw\n", 0o600);
    assert!(
        load(&text)
            .unwrap()
            .notes
            .iter()
            .all(|n| n.field != "nas.password_file")
    );
    write_mode(&pw, "\n", 0o600);
    invalid(
        &text,
        "nas.password_file",
        "password_file",
        "write the secret",
    );
}

#[test]
fn secrets_are_absent_from_debug() {
    let text = config_text("password = \"inline-pw-5521\"", "");
    let c = load(&text).unwrap();
    assert!(!format!("{c:?}").contains("inline-pw-5521"));
    assert!(!format!("{c:#?}").contains("inline-pw-5521"));
    let raw = RawConfig::from_toml_str(&text, FILE).unwrap();
    assert!(!format!("{raw:?}").contains("inline-pw-5521"));
    let c = load(&with_job("")).unwrap();
    assert!(!format!("{c:?}").contains("pw-from-env-7731"));
    assert!(!format!("{:?}", env()).contains("pw-from-env-7731"));
}

// ----- built by hand -----------------------------------------------------

#[test]
fn raw_config_built_by_hand_has_no_lines() {
    let mut raw = RawConfig::default();
    raw.nas.url = Some(toml::Spanned::new(0..0, "https://nas".to_owned()));
    raw.nas.user = Some(toml::Spanned::new(0..0, "u".to_owned()));
    raw.nas.password_env = Some(toml::Spanned::new(0..0, "NAS_PASSWORD".to_owned()));
    let job = RawJob {
        name: Some(toml::Spanned::new(0..0, "j".to_owned())),
        share: Some(toml::Spanned::new(0..0, "s".to_owned())),
        sources: Some(toml::Spanned::new(
            0..0,
            vec![toml::Spanned::new(0..0, "/nonexistent/x".to_owned())],
        )),
        ..RawJob::default()
    };
    raw.jobs.push(job);
    let err = raw.validate(&env()).unwrap_err();
    assert_eq!(err.line(), None);
    assert!(
        err.to_string().starts_with(": job[j].sources:")
            || err.to_string().contains("job[j].sources")
    );
}

#[test]
fn duplicate_key_is_named() {
    let text = with_job("share = \"other\"");
    let err = load(&text).unwrap_err();
    assert_eq!(err.line(), Some(line_of(&text, "\"other\"")));
    assert!(err.to_string().contains("duplicate key `share`"), "{err}");
}

#[test]
fn unknown_key_in_an_inline_or_dotted_table() {
    let text = with_job("compression = { leve = 3 }");
    invalid(
        &text,
        "job.compression.leve",
        "leve",
        "valid keys in [job.compression]: level",
    );
    let text = with_job("compression.leve = 3");
    invalid(
        &text,
        "job.compression.leve",
        "leve",
        "did you mean `level`?",
    );
}

#[test]
fn select_jobs_by_name() {
    let c = Config::load(
        example_path(),
        &ConfigEnv::new().with_var("SYNBACK_PASSWORD", "x"),
    )
    .unwrap();
    let none: [&str; 0] = [];
    assert_eq!(c.select_jobs(&none).unwrap().len(), 2);
    let picked = c.select_jobs(&["home"]).unwrap();
    assert_eq!(picked[0].name, "home");
    let err = c.select_jobs(&["hom"]).unwrap_err();
    assert_eq!(err.suggestion.as_deref(), Some("home"));
    assert_eq!(
        err.to_string(),
        "no job named `hom` (did you mean `home`?); jobs in the config: system, home"
    );
}

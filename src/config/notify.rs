//! `[notify]`, `[job.notify]` and `[mqtt]`: where runs are reported.
//!
//! Notification URLs are kept as [`Secret`]s from here on and never
//! repeated in messages: a healthchecks ping URL is the check's only
//! credential, and webhook URLs often carry a token.

use std::net::IpAddr;

use toml::Spanned;

use super::error::Error;
use super::raw::{RawJobNotify, RawMqtt, RawNotify, SpannedString};
use super::types::{MqttConfig, Notify};
use super::validate::{Ctx, span_of};
use crate::secret::Secret;

const URL_HINT: &str = "write the whole URL, e.g. \"https://hc-ping.com/your-check-uuid\" or \"https://example.com/hooks/synback\"";
const TOPIC_HINT: &str = "write letters, digits, `_`, `-` and inner `/` only, e.g. \"synback\"";

/// `[notify]`: the defaults every job starts from.
pub(crate) fn defaults(ctx: &mut Ctx<'_>, raw: &RawNotify) -> Result<Notify, Error> {
    Ok(Notify {
        healthchecks: None,
        webhook: url(ctx, raw.webhook.as_ref(), "notify.webhook")?,
    })
}

/// `[job.notify]`, falling back to `defaults` for keys it does not set.
pub(crate) fn job(
    ctx: &mut Ctx<'_>,
    raw: &RawJobNotify,
    label: &str,
    defaults: &Notify,
) -> Result<Notify, Error> {
    let healthchecks = url(
        ctx,
        raw.healthchecks.as_ref(),
        &format!("{label}.notify.healthchecks"),
    )?;
    let webhook = url(
        ctx,
        raw.webhook.as_ref(),
        &format!("{label}.notify.webhook"),
    )?;
    Ok(Notify {
        healthchecks: healthchecks.or_else(|| defaults.healthchecks.clone()),
        webhook: webhook.or_else(|| defaults.webhook.clone()),
    })
}

/// An `http`/`https` URL with a host. Plain `http` to another machine is
/// allowed (a LAN healthchecks instance) with a note.
fn url(
    ctx: &mut Ctx<'_>,
    value: Option<&SpannedString>,
    field: &str,
) -> Result<Option<Secret>, Error> {
    let Some(value) = value else {
        return Ok(None);
    };
    let span = Some(value.span());
    let text = value.get_ref().trim();
    // The parse error never contains the URL itself.
    let parsed = reqwest::Url::parse(text)
        .map_err(|e| ctx.invalid_because(span.clone(), field, "is not a URL", URL_HINT, e))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ctx.invalid(
            span,
            field,
            format!("the URL scheme `{}` is not http or https", parsed.scheme()),
            URL_HINT,
        ));
    }
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Err(ctx.invalid(span, field, "the URL has no host", URL_HINT));
    };
    if parsed.scheme() == "http" && !is_loopback(host) {
        ctx.note(
            span,
            field,
            format!(
                "the URL to `{host}` is plain http, so its token crosses the network in clear text; use https if the server offers it"
            ),
        );
    }
    Ok(Some(Secret::new(text)))
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip: IpAddr| ip.is_loopback())
}

/// `[mqtt]`, when present.
pub(crate) fn mqtt(
    ctx: &mut Ctx<'_>,
    raw: Option<&Spanned<RawMqtt>>,
) -> Result<Option<MqttConfig>, Error> {
    let Some(section) = raw else {
        return Ok(None);
    };
    let raw = section.get_ref();
    let Some(host_value) = &raw.host else {
        return Err(ctx.invalid(
            Some(section.span()),
            "mqtt.host",
            "[mqtt] has no broker host",
            "add `host = \"homeassistant.local\"` (or \"127.0.0.1\"), or remove [mqtt]",
        ));
    };
    let host = host_value.get_ref().trim();
    if host.is_empty() || host.contains("://") || host.contains('/') || host.contains(' ') {
        return Err(ctx.invalid(
            Some(host_value.span()),
            "mqtt.host",
            format!("`{host}` is not a host name or address"),
            "write only the host, e.g. \"homeassistant.local\"; the port goes in `port`",
        ));
    }
    let port = match &raw.port {
        None => 1883,
        Some(value) => u16::try_from(*value.get_ref())
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ctx.invalid(
                    Some(value.span()),
                    "mqtt.port",
                    format!("`{}` is not a TCP port", value.get_ref()),
                    "write a number from 1 to 65535, usually 1883",
                )
            })?,
    };
    let user = raw.user.as_ref().map(|u| u.get_ref().trim().to_owned());
    if let (Some(value), Some(user)) = (&raw.user, &user)
        && user.is_empty()
    {
        return Err(ctx.invalid(
            Some(value.span()),
            "mqtt.user",
            "the user name is empty",
            "write the broker user, or remove the key for an anonymous broker",
        ));
    }
    let password = match &raw.password_file {
        None => None,
        Some(file) if user.is_none() => {
            return Err(ctx.invalid(
                Some(file.span()),
                "mqtt.password_file",
                "a password is given without a user",
                "add `user = \"...\"` to [mqtt]",
            ));
        }
        Some(file) => {
            let path = ctx.absolute(file, "mqtt.password_file")?;
            let secret = ctx.secret_file(&path, Some(file.span()), "mqtt.password_file")?;
            if !is_loopback(host) {
                ctx.note(
                    Some(file.span()),
                    "mqtt.password_file",
                    format!(
                        "the MQTT connection to `{host}` is plain TCP, so the password crosses the network in clear text; keep the broker on a trusted network"
                    ),
                );
            }
            Some(secret)
        }
    };
    Ok(Some(MqttConfig {
        host: host.to_owned(),
        port,
        user,
        password,
        discovery_prefix: topic(
            ctx,
            raw.discovery_prefix.as_ref(),
            "mqtt.discovery_prefix",
            "homeassistant",
        )?,
        topic_prefix: topic(
            ctx,
            raw.topic_prefix.as_ref(),
            "mqtt.topic_prefix",
            "synback",
        )?,
        node_id: match &raw.node_id {
            None => None,
            Some(value) => Some(node_id(ctx, value)?),
        },
    }))
}

/// A topic prefix: no wildcards, no empty levels.
fn topic(
    ctx: &Ctx<'_>,
    value: Option<&SpannedString>,
    field: &str,
    default: &str,
) -> Result<String, Error> {
    let Some(value) = value else {
        return Ok(default.to_owned());
    };
    let text = value.get_ref().trim();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/');
    if text.is_empty()
        || !text.chars().all(allowed)
        || text.starts_with('/')
        || text.ends_with('/')
        || text.contains("//")
    {
        return Err(ctx.invalid(
            span_of(Some(value)),
            field,
            format!("`{text}` is not a usable topic prefix"),
            TOPIC_HINT,
        ));
    }
    Ok(text.to_owned())
}

fn node_id(ctx: &Ctx<'_>, value: &SpannedString) -> Result<String, Error> {
    let text = value.get_ref().trim();
    if text.is_empty()
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ctx.invalid(
            Some(value.span()),
            "mqtt.node_id",
            format!("`{text}` is not a usable node id"),
            "write letters, digits, `_` and `-`, e.g. \"nas_backup_pi\"; leave it out to use the host name",
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::config::{Config, ConfigEnv, Error};

    fn base(dir: &std::path::Path, extra_global: &str, extra_job: &str) -> String {
        format!(
            r#"
[nas]
url = "https://nas.local"
user = "backup"
password_env = "PW"

[state]
dir = "{dir}"
{extra_global}

[[job]]
name = "home"
sources = ["{dir}"]
share = "backup"
{extra_job}

[[job]]
name = "etc"
sources = ["{dir}"]
share = "backup"
"#,
            dir = dir.display()
        )
    }

    fn load(text: &str) -> Result<Config, Error> {
        Config::from_toml_str(text, "synback.toml", &ConfigEnv::new().with_var("PW", "x"))
    }

    fn message(err: Error) -> String {
        match err {
            Error::Invalid(invalid) => format!(
                "{} | {} | {}",
                invalid.field,
                invalid.line.unwrap_or(0),
                invalid
            ),
            other => panic!("not Invalid: {other:?}"),
        }
    }

    #[test]
    fn job_urls_override_the_global_webhook_and_never_show_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let text = base(
            dir.path(),
            "[notify]\nwebhook = \"https://hooks.example/all?token=T0PSECRET\"\n",
            "[job.notify]\nhealthchecks = \"https://hc-ping.com/1111-SECRETUUID\"\n",
        );
        let config = load(&text).unwrap();
        let home = config.job("home").unwrap();
        let etc = config.job("etc").unwrap();
        assert_eq!(
            home.notify.healthchecks.as_ref().unwrap().expose(),
            "https://hc-ping.com/1111-SECRETUUID"
        );
        assert_eq!(
            home.notify.webhook.as_ref().unwrap().expose(),
            "https://hooks.example/all?token=T0PSECRET"
        );
        assert_eq!(etc.notify.healthchecks, None);
        assert_eq!(etc.notify.webhook, home.notify.webhook);
        let debug = format!("{config:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        let raw = crate::config::RawConfig::from_toml_str(&text, "synback.toml").unwrap();
        let debug = format!("{raw:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
    }

    #[test]
    fn bad_urls_are_located_and_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let text = base(
            dir.path(),
            "",
            "[job.notify]\nwebhook = \"ftp://h/SECRET\"\n",
        );
        let msg = message(load(&text).unwrap_err());
        assert!(msg.starts_with("job[home].notify.webhook | 16 |"), "{msg}");
        assert!(msg.contains("`ftp` is not http or https"), "{msg}");
        assert!(!msg.contains("SECRET"), "{msg}");
        let text = base(
            dir.path(),
            "",
            "[job.notify]\nhealthchecks = \"hc-ping.com/SECRET\"\n",
        );
        let msg = message(load(&text).unwrap_err());
        assert!(msg.contains("is not a URL"), "{msg}");
        assert!(!msg.contains("SECRET"), "{msg}");
        let text = base(dir.path(), "", "[job.notify]\nping = \"https://x\"\n");
        assert!(load(&text).is_err());
    }

    #[test]
    fn plain_http_to_another_machine_gets_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let text = base(
            dir.path(),
            "",
            "[job.notify]\nhealthchecks = \"http://hc.lan/ping/abc\"\n",
        );
        let config = load(&text).unwrap();
        assert!(config.notes.iter().any(
            |n| n.field == "job[home].notify.healthchecks" && n.message.contains("clear text")
        ));
        let text = base(
            dir.path(),
            "",
            "[job.notify]\nhealthchecks = \"http://127.0.0.1:8000/ping/abc\"\n",
        );
        let config = load(&text).unwrap();
        assert!(!config.notes.iter().any(|n| n.field.contains("notify")));
    }

    #[test]
    fn mqtt_defaults_and_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(&base(dir.path(), "[mqtt]\nhost = \"127.0.0.1\"\n", "")).unwrap();
        let mqtt = config.mqtt.unwrap();
        assert_eq!((mqtt.host.as_str(), mqtt.port), ("127.0.0.1", 1883));
        assert_eq!(mqtt.discovery_prefix, "homeassistant");
        assert_eq!(mqtt.topic_prefix, "synback");
        assert_eq!((mqtt.user, mqtt.password, mqtt.node_id), (None, None, None));

        let pw = dir.path().join("mqtt-password");
        std::fs::write(&pw, "m0squitto\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let section = format!(
            "[mqtt]\nhost = \"broker.lan\"\nport = 8883\nuser = \"synback\"\npassword_file = \"{}\"\ndiscovery_prefix = \"ha\"\ntopic_prefix = \"home/backup\"\nnode_id = \"pi-4\"\n",
            pw.display()
        );
        let config = load(&base(dir.path(), &section, "")).unwrap();
        let mqtt = config.mqtt.clone().unwrap();
        assert_eq!(mqtt.port, 8883);
        assert_eq!(mqtt.password.as_ref().unwrap().expose(), "m0squitto");
        assert_eq!(mqtt.topic_prefix, "home/backup");
        assert_eq!(mqtt.node_id.as_deref(), Some("pi-4"));
        assert!(!format!("{config:?}").contains("m0squitto"));
        assert!(config.notes.iter().any(|n| n.field == "mqtt.password_file"));
    }

    #[test]
    fn bad_mqtt_sections_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[mqtt]\nport = 1883\n", "mqtt.host", "no broker host"),
            (
                "[mqtt]\nhost = \"mqtt://h:1883\"\n",
                "mqtt.host",
                "not a host",
            ),
            (
                "[mqtt]\nhost = \"h\"\nport = 70000\n",
                "mqtt.port",
                "not a TCP port",
            ),
            (
                "[mqtt]\nhost = \"h\"\npassword_file = \"/nonexistent/pw\"\n",
                "mqtt.password_file",
                "without a user",
            ),
            (
                "[mqtt]\nhost = \"h\"\nuser = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
                "mqtt.password_file",
                "cannot read",
            ),
            (
                "[mqtt]\nhost = \"h\"\ntopic_prefix = \"synback/#\"\n",
                "mqtt.topic_prefix",
                "topic prefix",
            ),
            (
                "[mqtt]\nhost = \"h\"\nnode_id = \"my pi\"\n",
                "mqtt.node_id",
                "node id",
            ),
        ];
        for (section, field, reason) in cases {
            let msg = message(load(&base(dir.path(), section, "")).unwrap_err());
            assert!(msg.starts_with(field), "{section}: {msg}");
            assert!(msg.contains(reason), "{section}: {msg}");
            assert!(!msg.contains(" | 0 |"), "{section}: no line: {msg}");
        }
    }
}

//! `[nas]`: URL, account, password source, TLS, OTP, timeouts.

use std::time::Duration;

use super::error::Error;
use super::raw::{RawNas, SpannedString};
use super::types::{NasConfig, NasUrl, PasswordSource, Scheme, Timeouts, TlsConfig};
use super::validate::{Ctx, span_of};
use crate::secret::Secret;
use crate::totp::Totp;

const URL_HINT: &str =
    "write e.g. \"https://nas.local:5001\" (scheme, host and optional port only)";
const PASSWORD_KEYS: &str = "password_file, password_env, password_credential or password";

/// Validates `[nas]`.
pub(crate) fn validate(ctx: &mut Ctx<'_>, raw: &RawNas) -> Result<NasConfig, Error> {
    let url = url(ctx, raw.url.as_ref())?;
    let user = user(ctx, raw)?;
    let (password, password_source) = password(ctx, raw)?;
    let tls = tls(ctx, raw, &url)?;
    let otp_secret = otp_secret(ctx, raw)?;
    let device_name = raw
        .device_name
        .as_ref()
        .map_or_else(|| "synback".to_owned(), |v| v.get_ref().trim().to_owned());
    if device_name.is_empty() {
        return Err(ctx.invalid(
            span_of(raw.device_name.as_ref()),
            "nas.device_name",
            "is empty",
            "write a name to show in DSM's trusted devices, e.g. \"synback on pi\", or remove the key",
        ));
    }
    Ok(NasConfig {
        url,
        user,
        password,
        password_source,
        tls,
        otp_secret,
        device_name,
        timeouts: timeouts(ctx, raw)?,
    })
}

fn url(ctx: &mut Ctx<'_>, value: Option<&SpannedString>) -> Result<NasUrl, Error> {
    let Some(value) = value else {
        return Err(ctx.invalid(
            None,
            "nas.url",
            "is missing",
            format!("add `url = \"https://nas.local:5001\"` to [nas]; {URL_HINT}"),
        ));
    };
    let url = parse_url(value.get_ref())
        .map_err(|reason| ctx.invalid(Some(value.span()), "nas.url", reason, URL_HINT))?;
    if url.scheme == Scheme::Http && !is_loopback(&url.host) {
        ctx.note(
            Some(value.span()),
            "nas.url",
            format!(
                "the password and session travel unencrypted over http; prefer \"https://{}:5001\"",
                url.host
            ),
        );
    }
    Ok(url)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses `scheme://host[:port][/]`; the error is the reason for messages.
pub(crate) fn parse_url(text: &str) -> Result<NasUrl, String> {
    let text = text.trim();
    if text.contains('@') {
        // Said without echoing the text: it may hold a password.
        return Err(
            "the URL holds a user name or password; use `user` and `password_file`".to_owned(),
        );
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("`{text}` has no scheme (http:// or https://)"));
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        other => return Err(format!("scheme `{other}` is not http or https")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "`{text}` has a path; synback adds /webapi/... itself"
        ));
    }
    let (host, port) = split_host_port(rest)?;
    if host.is_empty() {
        return Err(format!("`{text}` has no host"));
    }
    let port = match port {
        None => scheme.default_port(),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port `{p}` is not a number from 1 to 65535"))?,
    };
    Ok(NasUrl {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn split_host_port(rest: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`[{v6}` is missing its `]`"))?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("unexpected `{after}` after the address")),
        };
    }
    match rest.split_once(':') {
        Some((_, port)) if port.contains(':') => Err(
            "an IPv6 address must be written in brackets, e.g. https://[fd00::5]:5001".to_owned(),
        ),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((rest, None)),
    }
}

fn user(ctx: &Ctx<'_>, raw: &RawNas) -> Result<String, Error> {
    match &raw.user {
        Some(user) if !user.get_ref().trim().is_empty() => Ok(user.get_ref().trim().to_owned()),
        other => Err(ctx.invalid(
            span_of(other.as_ref()),
            "nas.user",
            if other.is_some() {
                "is empty"
            } else {
                "is missing"
            },
            "add `user = \"backup\"` to [nas]: a DSM account allowed to write to the share",
        )),
    }
}

fn password(ctx: &mut Ctx<'_>, raw: &RawNas) -> Result<(Secret, PasswordSource), Error> {
    let given: Vec<(&str, std::ops::Range<usize>)> = [
        ("password", span_of(raw.password.as_ref())),
        ("password_file", span_of(raw.password_file.as_ref())),
        ("password_env", span_of(raw.password_env.as_ref())),
        (
            "password_credential",
            span_of(raw.password_credential.as_ref()),
        ),
    ]
    .into_iter()
    .filter_map(|(key, span)| span.map(|s| (key, s)))
    .collect();
    let mut given = given;
    given.sort_by_key(|(_, span)| span.start);
    match given.as_slice() {
        [] => {
            return Err(ctx.invalid(
                None,
                "nas.password_file",
                "no password is configured",
                format!(
                    "add one of {PASSWORD_KEYS} to [nas], e.g. `password_file = \"/etc/synback/password\"`"
                ),
            ));
        }
        [_] => {}
        [(first, _), (second, span), ..] => {
            return Err(ctx.invalid(
                Some(span.clone()),
                format!("nas.{second}"),
                format!("both `{first}` and `{second}` are set"),
                format!("keep exactly one of {PASSWORD_KEYS}"),
            ));
        }
    }
    if let Some(value) = &raw.password {
        return inline_password(ctx, value);
    }
    if let Some(file) = &raw.password_file {
        let path = ctx.absolute(file, "nas.password_file")?;
        let secret = ctx.secret_file(&path, Some(file.span()), "nas.password_file")?;
        return Ok((secret, PasswordSource::File(path)));
    }
    if let Some(name) = &raw.password_env {
        return env_password(ctx, name);
    }
    match &raw.password_credential {
        Some(name) => credential_password(ctx, name),
        None => Err(ctx.invalid(None, "nas.password", "no password", PASSWORD_KEYS)),
    }
}

fn inline_password(
    ctx: &mut Ctx<'_>,
    value: &SpannedString,
) -> Result<(Secret, PasswordSource), Error> {
    if value.get_ref().is_empty() {
        return Err(ctx.invalid(
            Some(value.span()),
            "nas.password",
            "is empty",
            "set password_file = \"/etc/synback/password\" instead",
        ));
    }
    ctx.note(
        Some(value.span()),
        "nas.password",
        "the password is written in the config file; prefer password_file (mode 600), password_env or password_credential",
    );
    Ok((
        Secret::new(value.get_ref().as_str()),
        PasswordSource::Inline,
    ))
}

fn env_password(ctx: &Ctx<'_>, name: &SpannedString) -> Result<(Secret, PasswordSource), Error> {
    let var = name.get_ref().trim();
    match ctx.env.var(var) {
        Some(value) if !value.is_empty() => Ok((
            Secret::new(value),
            PasswordSource::Env(var.to_owned()),
        )),
        found => Err(ctx.invalid(
            Some(name.span()),
            "nas.password_env",
            if found.is_some() {
                format!("environment variable `{var}` is empty")
            } else {
                format!("environment variable `{var}` is not set")
            },
            format!(
                "set {var} in the environment of synback (e.g. `Environment=` or `EnvironmentFile=` in the systemd unit), or use password_file"
            ),
        )),
    }
}

fn credential_password(
    ctx: &mut Ctx<'_>,
    name: &SpannedString,
) -> Result<(Secret, PasswordSource), Error> {
    let field = "nas.password_credential";
    let cred = name.get_ref().trim();
    if cred.is_empty() || cred.contains('/') || cred == "." || cred == ".." {
        return Err(ctx.invalid(
            Some(name.span()),
            field,
            format!("`{cred}` is not a credential name"),
            "write the name given to LoadCredential= in the systemd unit, e.g. \"nas-password\"",
        ));
    }
    let Some(dir) = ctx.env.credentials_directory() else {
        return Err(ctx.invalid(
            Some(name.span()),
            field,
            "$CREDENTIALS_DIRECTORY is not set (synback is not running under systemd with credentials)",
            format!(
                "add `LoadCredential={cred}:/etc/synback/password` to the unit, or use password_file outside systemd"
            ),
        ));
    };
    let path = dir.join(cred);
    let secret = ctx.secret_file(&path, Some(name.span()), field)?;
    Ok((secret, PasswordSource::Credential(path)))
}

fn tls(ctx: &mut Ctx<'_>, raw: &RawNas, url: &NasUrl) -> Result<TlsConfig, Error> {
    let insecure = raw.insecure.as_ref().is_some_and(|v| *v.get_ref());
    let chosen: Vec<&str> = [
        ("ca_file", raw.ca_file.is_some()),
        ("pin_sha256", raw.pin_sha256.is_some()),
        ("insecure", insecure),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    if let [first, second, ..] = chosen.as_slice() {
        return Err(ctx.invalid(
            span_of(raw.pin_sha256.as_ref()).or(span_of(raw.insecure.as_ref())),
            format!("nas.{second}"),
            format!("`{first}` and `{second}` are both set"),
            "choose one: ca_file (your own CA), pin_sha256 (a self-signed NAS certificate) or insecure = true (no checking)",
        ));
    }
    let ca_file = match &raw.ca_file {
        Some(f) => Some(ctx.existing_file(f, "nas.ca_file")?),
        None => None,
    };
    let pin_sha256 = match &raw.pin_sha256 {
        Some(pin) => Some(parse_pin(pin.get_ref()).ok_or_else(|| {
            ctx.invalid(
                Some(pin.span()),
                "nas.pin_sha256",
                "is not a SHA-256 fingerprint (64 hex digits, colons allowed)",
                "get it with `openssl s_client -connect nas.local:5001 </dev/null | openssl x509 -noout -fingerprint -sha256`",
            )
        })?),
        None => None,
    };
    tls_notes(ctx, raw, url, insecure);
    Ok(TlsConfig {
        ca_file,
        pin_sha256,
        insecure,
    })
}

fn tls_notes(ctx: &mut Ctx<'_>, raw: &RawNas, url: &NasUrl, insecure: bool) {
    let span = span_of(raw.ca_file.as_ref())
        .or(span_of(raw.pin_sha256.as_ref()))
        .or(span_of(raw.insecure.as_ref()));
    if url.scheme == Scheme::Http
        && span.is_some()
        && (insecure || raw.ca_file.is_some() || raw.pin_sha256.is_some())
    {
        ctx.note(
            span,
            "nas.url",
            "TLS options have no effect with an http:// url",
        );
    } else if insecure {
        ctx.note(
            span_of(raw.insecure.as_ref()),
            "nas.insecure",
            "certificate checking is off: anyone on the network path can read the password; prefer pin_sha256",
        );
    }
}

/// 64 hex digits (colons and case ignored) as lowercase hex.
pub(crate) fn parse_pin(text: &str) -> Option<String> {
    let hex: String = text.trim().chars().filter(|c| *c != ':').collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

fn otp_secret(ctx: &mut Ctx<'_>, raw: &RawNas) -> Result<Option<Secret>, Error> {
    let Some(file) = &raw.otp_secret_file else {
        return Ok(None);
    };
    let field = "nas.otp_secret_file";
    let path = ctx.absolute(file, field)?;
    let secret = ctx.secret_file(&path, Some(file.span()), field)?;
    let secret = Secret::new(secret.expose().trim());
    Totp::from_base32(&secret).map_err(|e| {
        ctx.invalid_because(
            Some(file.span()),
            field,
            format!("`{}` does not hold a base32 TOTP secret", path.display()),
            "put the base32 secret shown when 2-step verification was set up (letters A-Z and digits 2-7); or run `synback login` once and remove this key",
            e,
        )
    })?;
    Ok(Some(secret))
}

fn timeouts(ctx: &Ctx<'_>, raw: &RawNas) -> Result<Timeouts, Error> {
    Ok(Timeouts {
        connect: ctx.positive_duration(
            raw.connect_timeout.as_ref(),
            "nas.connect_timeout",
            Duration::from_secs(10),
        )?,
        request: ctx.positive_duration(
            raw.request_timeout.as_ref(),
            "nas.request_timeout",
            Duration::from_secs(120),
        )?,
        idle: ctx.positive_duration(
            raw.idle_timeout.as_ref(),
            "nas.idle_timeout",
            Duration::from_secs(60),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("https://NAS.local").unwrap();
        assert_eq!(u.to_string(), "https://nas.local:5001");
        assert_eq!(parse_url("http://nas").unwrap().port, 5000);
        assert_eq!(parse_url("https://nas:443/").unwrap().port, 443);
        assert_eq!(
            parse_url("https://[fd00::5]:5001").unwrap().to_string(),
            "https://[fd00::5]:5001"
        );
        assert_eq!(parse_url("https://[::1]").unwrap().host, "::1");
    }

    #[test]
    fn bad_urls() {
        for bad in [
            "nas.local:5001",
            "ftp://nas",
            "https://",
            "https://nas:99999",
            "https://nas:0",
            "https://nas/webapi",
            "https://u:p@nas",
            "https://fd00::5",
            "https://[fd00::5",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pins() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_pin(&hex), Some("ab".repeat(32)));
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_pin(&colons), Some("ab".repeat(32)));
        assert_eq!(parse_pin("abc"), None);
        assert_eq!(parse_pin(&"zz".repeat(32)), None);
    }
}

//! `check-config --online` in one call: log in, say what the NAS is, check
//! that the share exists and that the target folder is writable, and give
//! advice for each problem found.

use std::fmt;

use super::api::{self, dsm_generation};
use super::client::Client;
use super::error::Error;
use super::options::ClientOptions;
use super::path::RemotePath;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Information (host name, versions, a check that passed).
    Info,
    /// Works, but something deserves attention.
    Warning,
    /// Backups will fail until this is fixed.
    Problem,
}

/// One line of the diagnosis.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// How serious it is.
    pub level: Level,
    /// What was found.
    pub message: String,
    /// What to do about it, for warnings and problems.
    pub advice: Option<String>,
}

impl Finding {
    fn info(message: impl Into<String>) -> Self {
        Self {
            level: Level::Info,
            message: message.into(),
            advice: None,
        }
    }

    fn warning(message: impl Into<String>, advice: impl Into<String>) -> Self {
        Self {
            level: Level::Warning,
            message: message.into(),
            advice: Some(advice.into()),
        }
    }

    fn problem(message: impl Into<String>, advice: impl Into<String>) -> Self {
        Self {
            level: Level::Problem,
            message: message.into(),
            advice: Some(advice.into()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Info => "ok",
            Level::Warning => "warning",
            Level::Problem => "problem",
        };
        write!(f, "{tag}: {}", self.message)?;
        if let Some(advice) = &self.advice {
            write!(f, " — {advice}")?;
        }
        Ok(())
    }
}

/// Name of the probe file used for the write-permission check (never created).
const PROBE: &str = ".synback-write-check";

/// Connects with `opts` and checks that `/<share>/<path>` can hold backups.
///
/// Never fails: every problem, including a refused login or an unreachable
/// NAS, becomes a [`Finding`] with advice. Logs out at the end.
pub async fn diagnose(opts: ClientOptions, share: &str, path: &str) -> Vec<Finding> {
    let url = opts.url.clone();
    let mut findings = Vec::new();
    let target = match RemotePath::new(share, path) {
        Ok(target) => target,
        Err(err) => {
            findings.push(Finding::problem(
                err.to_string(),
                "fix `share` and `path` in the config",
            ));
            return findings;
        }
    };
    let client = match Client::connect(opts).await {
        Ok(client) => client,
        Err(err) => {
            findings.push(connect_problem(&url, &err));
            return findings;
        }
    };
    findings.push(Finding::info(format!(
        "logged in to {url} as {:?}",
        client.user()
    )));
    describe_nas(&client, &mut findings).await;
    check_target(&client, &target, &mut findings).await;
    if let Err(err) = client.logout().await {
        findings.push(Finding::warning(
            format!("logout failed: {err}"),
            "harmless: the session expires on its own",
        ));
    }
    findings
}

fn connect_problem(url: &str, err: &Error) -> Finding {
    let advice = match err {
        Error::Login { .. } => {
            "see the advice above; run `synback login` for 2-step verification".to_owned()
        }
        Error::TlsRefused { .. } => {
            "for a self-signed certificate, set pin_sha256 to the certificate's SHA-256 \
             (or ca_file to the CA that signed it)"
                .to_owned()
        }
        Error::InvalidUrl { .. } | Error::TlsSetup { .. } | Error::Otp(_) => {
            "fix the config".to_owned()
        }
        e if e.is_unreachable() || e.is_transient() => {
            format!(
                "check that {url} is right, the NAS is on and reachable, and DSM's port is open"
            )
        }
        _ => "check the NAS URL and DSM's log".to_owned(),
    };
    Finding::problem(format!("cannot log in: {}", chain(err)), advice)
}

/// The error and its causes on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn describe_nas(client: &Client, findings: &mut Vec<Finding>) {
    match client.nas_info().await {
        Ok(info) => findings.push(Finding::info(format!("NAS host name: {}", info.hostname))),
        Err(err) => findings.push(Finding::warning(
            format!("cannot read the NAS host name: {err}"),
            "not needed for backups",
        )),
    }
    let versions = client.apis().versions();
    if let Some((_, auth)) = versions.iter().find(|(name, _)| *name == api::AUTH) {
        findings.push(Finding::info(format!(
            "{} (Auth API v{auth})",
            dsm_generation(*auth)
        )));
    }
    let list: Vec<String> = versions
        .iter()
        .map(|(name, v)| format!("{name} v{v}"))
        .collect();
    findings.push(Finding::info(format!("APIs: {}", list.join(", "))));
    for needed in [
        api::UPLOAD,
        api::MD5,
        api::DOWNLOAD,
        api::RENAME,
        api::DELETE,
        api::CREATE_FOLDER,
    ] {
        if let Err(err) = client.apis().get(needed) {
            findings.push(Finding::problem(
                err.to_string(),
                "update DSM; synback needs this File Station API",
            ));
        }
    }
}

async fn check_target(client: &Client, target: &RemotePath, findings: &mut Vec<Finding>) {
    let share = target.share();
    match client.list_shares().await {
        Ok(shares) if shares.iter().any(|s| s.name == share) => {
            findings.push(Finding::info(format!("shared folder {share:?} exists")));
        }
        Ok(shares) => {
            let names: Vec<&str> = shares.iter().map(|s| s.name.as_str()).collect();
            findings.push(Finding::problem(
                format!("shared folder {share:?} does not exist or is not visible to this account (visible: {})", names.join(", ")),
                "create the shared folder in DSM (Control Panel > Shared Folder) and give the account read/write access",
            ));
            return;
        }
        Err(err) => {
            findings.push(Finding::problem(
                format!("cannot list shared folders: {err}"),
                "give the account File Station access",
            ));
            return;
        }
    }
    let folder = nearest_existing(client, target, findings).await;
    match client.check_permission(folder.as_str(), PROBE).await {
        Ok(()) => findings.push(Finding::info(format!("the account can write to {folder}"))),
        Err(err) => findings.push(Finding::problem(
            format!("the account cannot write to {folder}: {err}"),
            format!(
                "give {:?} read/write permission on shared folder {share:?} in DSM",
                client.user()
            ),
        )),
    }
}

/// The target if it exists, else the nearest existing parent (noted as a warning).
async fn nearest_existing(
    client: &Client,
    target: &RemotePath,
    findings: &mut Vec<Finding>,
) -> RemotePath {
    let existing = first_existing(client, target).await;
    if &existing == target {
        findings.push(Finding::info(format!("{target} exists")));
    } else {
        findings.push(Finding::warning(
            format!("{target} does not exist yet"),
            format!("it will be created inside {existing} by the first backup"),
        ));
    }
    existing
}

/// Walks up from `target` to the first path that exists (the share at worst).
async fn first_existing(client: &Client, target: &RemotePath) -> RemotePath {
    let mut current = target.clone();
    while !current.is_share() {
        let exists = match client.get_info(&[current.as_str()]).await {
            Ok(infos) => infos.first().is_some_and(|i| i.exists()),
            Err(_) => false,
        };
        if exists {
            break;
        }
        match current.parent() {
            Some(parent) => current = parent,
            None => break,
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_display_with_advice() {
        let f = Finding::problem("share missing", "create it");
        assert_eq!(f.to_string(), "problem: share missing — create it");
        assert_eq!(Finding::info("x").to_string(), "ok: x");
        assert!(Level::Problem > Level::Warning);
    }

    #[tokio::test]
    async fn bad_path_is_a_problem_without_network() {
        let opts = ClientOptions::new("https://127.0.0.1:9", "u", "p".into());
        let findings = diagnose(opts, "backup", "../etc").await;
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].level, Level::Problem);
    }
}

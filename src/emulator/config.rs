//! How an emulator is set up: root folder, shares, account, TLS, limits.

use std::{fmt, path::PathBuf, time::Duration};

use super::Faults;
use crate::secret::Secret;

/// Page size of `SYNO.FileStation.List` when the client sends no `limit`.
///
/// The File Station guide documents "0 = all" as the default, but clients
/// in the wild (Home Assistant's) ask for 100 and never page, and lose
/// entries. The emulator makes the default page small so that clients that
/// do not page are caught by tests.
pub const DEFAULT_LIST_PAGE: u32 = 100;

/// Everything an emulator needs to start.
#[derive(Clone)]
#[non_exhaustive]
pub struct EmulatorConfig {
    /// Folder holding one sub-folder per share.
    pub root: PathBuf,
    /// Share names (created under `root` when missing).
    pub shares: Vec<String>,
    /// The one account.
    pub user: String,
    /// Its password.
    pub password: Secret,
    /// Base32 TOTP secret; when set, logins need an OTP (or a device token).
    pub otp_secret: Option<String>,
    /// Refuse upload bodies without `Content-Length` (chunked) with 1800,
    /// as DSM 5.2 does.
    pub strict_content_length: bool,
    /// Serve HTTPS with a fresh self-signed certificate.
    pub tls: bool,
    /// Faults in force at start (change them later with the `FaultHandle`).
    pub faults: Faults,
    /// `List` page size when the client gives no `limit`.
    pub list_default_limit: u32,
    /// Consecutive failed logins from one IP before it is blocked (407).
    pub max_login_failures: u32,
    /// How long a blocked IP stays blocked.
    pub login_block: Duration,
    /// Sessions unused this long expire (106); `None`: never (the default,
    /// so that slow tests do not trip over it).
    pub session_idle_timeout: Option<Duration>,
    /// Also append the request log to this file (JSON lines).
    pub request_log: Option<PathBuf>,
    /// Host name reported by `SYNO.FileStation.Info`.
    pub hostname: String,
}

impl EmulatorConfig {
    /// One share named `backup`, no OTP, plain HTTP, no faults.
    pub fn new(
        root: impl Into<PathBuf>,
        user: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        Self {
            root: root.into(),
            shares: vec!["backup".to_owned()],
            user: user.into(),
            password: password.into(),
            otp_secret: None,
            strict_content_length: false,
            tls: false,
            faults: Faults::default(),
            list_default_limit: DEFAULT_LIST_PAGE,
            max_login_failures: 5,
            login_block: Duration::from_secs(300),
            session_idle_timeout: None,
            request_log: None,
            hostname: "synback-emu".to_owned(),
        }
    }
}

impl fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("root", &self.root)
            .field("shares", &self.shares)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("otp_secret", &self.otp_secret.as_ref().map(|_| "***"))
            .field("strict_content_length", &self.strict_content_length)
            .field("tls", &self.tls)
            .field("faults", &self.faults)
            .field("list_default_limit", &self.list_default_limit)
            .field("max_login_failures", &self.max_login_failures)
            .field("login_block", &self.login_block)
            .field("session_idle_timeout", &self.session_idle_timeout)
            .field("request_log", &self.request_log)
            .field("hostname", &self.hostname)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_password_and_otp_secret() {
        let mut cfg = EmulatorConfig::new("/tmp/x", "alice", "hunter2");
        cfg.otp_secret = Some("JBSWY3DPEHPK3PXP".into());
        let text = format!("{cfg:?}");
        assert!(!text.contains("hunter2"));
        assert!(!text.contains("JBSWY3DPEHPK3PXP"));
    }
}

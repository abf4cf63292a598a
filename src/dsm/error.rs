//! The one error type of the DSM layer, and the table that turns DSM error
//! codes into words.
//!
//! Every variant says what was being done (API and method, or path) and keeps
//! the underlying cause as its `source`. No variant ever holds a password,
//! OTP code, session id, SynoToken or device id, and HTTP errors are stored
//! without their URL.

use std::fmt;
use std::time::Duration;

/// A result with a [`dsm::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One entry of the `errors` list DSM attaches to a failed file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The DSM code for this file.
    pub code: i64,
    /// The path DSM named, when it named one.
    pub path: Option<String>,
    /// What the code means.
    pub meaning: &'static str,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{path}: {} ({})", self.meaning, self.code),
            None => write!(f, "{} ({})", self.meaning, self.code),
        }
    }
}

/// The per-file entries, shown after a failed call's own message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileErrors(pub Vec<FileError>);

impl fmt::Display for FileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            f.write_str(if i == 0 { "; " } else { ", " })?;
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Why a login was refused, with the advice shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginRefusal {
    /// 400: wrong account name or password.
    WrongPassword,
    /// 401: the account is disabled.
    AccountDisabled,
    /// 402: the account may not use this service.
    PermissionDenied,
    /// 403: a two-factor code is needed and none was configured.
    OtpRequired,
    /// 404: the two-factor code was wrong.
    OtpWrong,
    /// 406: two-factor authentication is enforced and the account is not enrolled.
    OtpEnforced,
    /// 407: the client's IP address is blocked after too many failures.
    IpBlocked,
    /// 408/409/410: the password expired or must be changed.
    PasswordExpired,
    /// Another code.
    Other,
}

impl LoginRefusal {
    /// Classifies a login error code.
    pub fn from_code(code: i64) -> Self {
        match code {
            400 => Self::WrongPassword,
            401 => Self::AccountDisabled,
            402 => Self::PermissionDenied,
            403 => Self::OtpRequired,
            404 => Self::OtpWrong,
            406 => Self::OtpEnforced,
            407 => Self::IpBlocked,
            408..=410 => Self::PasswordExpired,
            _ => Self::Other,
        }
    }

    /// What the user can do about it.
    pub fn advice(self) -> &'static str {
        match self {
            Self::WrongPassword => {
                "check the password (or password_file); synback tried once and will not retry, \
                 so the account is not locked out by repeated attempts"
            }
            Self::AccountDisabled => "ask the NAS administrator to enable the account",
            Self::PermissionDenied => {
                "allow the account to use File Station in DSM \
                 (Control Panel > Application Privileges)"
            }
            Self::OtpRequired => {
                "the account uses 2-step verification: set otp_secret, or run `synback login` \
                 once to register this device"
            }
            Self::OtpWrong => {
                "check otp_secret and that this machine's clock is right \
                 (codes are time-based); a typed code may have expired, try a fresh one"
            }
            Self::OtpEnforced => {
                "2-step verification is enforced for this account: sign in to DSM in a browser \
                 to enrol, then set otp_secret or run `synback login`"
            }
            Self::IpBlocked => {
                "this IP address was blocked after failed logins: unblock it in DSM \
                 (Control Panel > Security > Protection) or wait for the block to expire"
            }
            Self::PasswordExpired => {
                "the password has expired or must be changed: sign in to DSM in a browser \
                 and change it, then update synback's password"
            }
            Self::Other => "see DSM's log (Log Center) for the reason",
        }
    }
}

/// Everything that can go wrong in the DSM layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configured NAS URL cannot be used.
    #[error("NAS URL {url:?} cannot be used: {reason}")]
    InvalidUrl {
        /// The URL, without any user name or password part.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The TLS settings cannot be used.
    #[error("TLS setup failed: {reason}")]
    TlsSetup {
        /// What is wrong.
        reason: String,
        /// The cause, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The NAS's certificate was refused (unknown CA, wrong pin, wrong name).
    #[error(
        "{api}.{method}: the NAS's TLS certificate was refused; check ca_file or pin_sha256 \
         (see `synback check-config --online`)"
    )]
    TlsRefused {
        /// The API being called.
        api: String,
        /// The method being called.
        method: String,
        /// The HTTP error, without its URL.
        #[source]
        source: reqwest::Error,
    },

    /// The HTTP exchange failed (connection refused, reset, timed out...).
    #[error("{api}.{method}: HTTP request to the NAS failed")]
    Http {
        /// The API being called.
        api: String,
        /// The method being called.
        method: String,
        /// The HTTP error, without its URL.
        #[source]
        source: reqwest::Error,
    },

    /// The NAS answered with an HTTP error status.
    #[error("{api}.{method}: the NAS answered HTTP {status}")]
    Status {
        /// The API being called.
        api: String,
        /// The method being called.
        method: String,
        /// The HTTP status code.
        status: u16,
    },

    /// The NAS answered `success: false`.
    #[error("{api}.{method} failed: DSM error {code} ({meaning}){errors}")]
    Api {
        /// The API being called.
        api: String,
        /// The method being called.
        method: String,
        /// The DSM error code.
        code: i64,
        /// What the code means.
        meaning: &'static str,
        /// The per-file entries DSM attached, if any.
        errors: FileErrors,
    },

    /// The NAS's reply could not be decoded.
    #[error("{api}.{method}: cannot decode the NAS's reply")]
    Decode {
        /// The API being called.
        api: String,
        /// The method being called.
        method: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// The NAS refused the login.
    #[error("the NAS refused the login of account {account:?}: {meaning} (DSM code {code}); {}", .refusal.advice())]
    Login {
        /// The account name.
        account: String,
        /// The DSM code.
        code: i64,
        /// What the code means.
        meaning: &'static str,
        /// The classified reason.
        refusal: LoginRefusal,
    },

    /// The configured OTP secret is not usable.
    #[error("the configured OTP secret cannot be used")]
    Otp(#[source] crate::totp::TotpError),

    /// The NAS does not offer an API synback needs, or no version both support.
    #[error("the NAS does not support {api} {detail}")]
    Unsupported {
        /// The API name.
        api: String,
        /// Which versions were wanted and offered.
        detail: String,
    },

    /// A remote path or name is not acceptable.
    #[error("remote path {path:?} is not valid: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A remote file does not exist.
    #[error("{path}: no such file or folder on the NAS")]
    NotFound {
        /// The remote path.
        path: String,
    },

    /// A download ended with a different byte count than announced.
    #[error("{path}: download ended after {actual} bytes, the NAS announced {expected}")]
    LengthMismatch {
        /// The remote path.
        path: String,
        /// Bytes announced in Content-Length.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },

    /// The NAS refuses bodies of unknown length and none was given.
    #[error(
        "{path}: this NAS refuses uploads of unknown length (DSM code 1800); \
         give the upload a length or use spool mode"
    )]
    LengthRequired {
        /// The remote path of the upload.
        path: String,
    },

    /// The NAS's web front-end or a reverse proxy refused the upload's size.
    #[error(
        "{path}: the upload was refused with HTTP {status} (request too large for the NAS's \
         web front-end or a reverse proxy); use a smaller volume_size"
    )]
    UploadTooLarge {
        /// The remote path of the upload.
        path: String,
        /// The HTTP status (413 or 504).
        status: u16,
    },

    /// Nothing moved for longer than the idle timeout, or a call took too long.
    #[error("{api}.{method}: no progress for {after:?}")]
    Timeout {
        /// The API being called.
        api: String,
        /// The method being called.
        method: String,
        /// How long it waited.
        after: Duration,
    },

    /// The NAS's JSON reply was larger than synback ever expects
    /// ([`MAX_REPLY_BYTES`](crate::dsm::MAX_REPLY_BYTES)); it was not read
    /// to its end.
    #[error("{api}.{method}: the NAS's reply is larger than {limit} bytes; refusing to read it")]
    ReplyTooLarge {
        /// The API called.
        api: String,
        /// The method called.
        method: String,
        /// The limit that was exceeded.
        limit: usize,
    },

    /// A background task on the NAS ended in an unexpected state.
    #[error("{api} task for {path}: {reason}")]
    Task {
        /// The task API.
        api: String,
        /// The path the task worked on.
        path: String,
        /// What went wrong.
        reason: String,
    },

    /// The caller cancelled the operation.
    #[error("{what}: cancelled")]
    Cancelled {
        /// What was cancelled.
        what: String,
    },

    /// A local file could not be read or written.
    #[error("{what}: local I/O failed")]
    Io {
        /// What was being read or written.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when the same request may succeed if tried again later:
    /// network trouble, HTTP 5xx, timeouts and DSM's "busy" codes
    /// (109–111, 117, 118, and 402/421 for file operations).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http { source, .. } => !source.is_builder(),
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::Api { api, code, .. } => is_transient_code(api, *code),
            Self::Timeout { .. } => true,
            _ => false,
        }
    }

    /// True when the session ended on the NAS (106, 107, 119) and a new
    /// login may fix the call.
    pub fn is_session_lost(&self) -> bool {
        matches!(
            self,
            Self::Api {
                code: 106 | 107 | 119,
                ..
            }
        )
    }

    /// True when the NAS refused the credentials (wrong password, OTP...).
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Login { .. } | Self::Otp(_))
    }

    /// True when the NAS could not be reached at all (connection refused,
    /// DNS failure, connect timeout, TLS refused, a connection that broke
    /// while the request was sent, or HTTP 502–504 from the web front-end
    /// when DSM behind it is down).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Http { source, .. } => {
                source.is_connect() || source.is_timeout() || source.is_request()
            }
            Self::TlsRefused { .. } | Self::Timeout { .. } => true,
            // The NAS's web front-end answered, but DSM behind it did not
            // (booting, updating, overloaded): as unreachable as a dead link.
            Self::Status { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// True when the error says the remote file or folder does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::NotFound { .. } => true,
            Self::Api { code, errors, .. } => {
                *code == 408 || errors.0.iter().any(|e| e.code == 408)
            }
            _ => false,
        }
    }

    /// True when the error says the remote target already exists.
    pub fn is_already_exists(&self) -> bool {
        match self {
            Self::Api { code, errors, .. } => {
                matches!(*code, 414 | 1805) || errors.0.iter().any(|e| e.code == 414)
            }
            _ => false,
        }
    }

    /// True when the NAS refused the operation for lack of permission.
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Self::Api { code, errors, .. } => {
                matches!(*code, 105 | 407) || errors.0.iter().any(|e| e.code == 407)
            }
            _ => false,
        }
    }

    /// The DSM error code, when the NAS gave one.
    pub fn dsm_code(&self) -> Option<i64> {
        match self {
            Self::Api { code, .. } | Self::Login { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Builds an [`Error::Api`] from a code and the per-file entries.
    pub(crate) fn api(
        api: &str,
        method: &str,
        code: i64,
        errors: Vec<(i64, Option<String>)>,
    ) -> Self {
        let errors = errors
            .into_iter()
            .map(|(code, path)| FileError {
                code,
                path,
                meaning: code_meaning(api, code),
            })
            .collect();
        Self::Api {
            api: api.to_owned(),
            method: method.to_owned(),
            code,
            meaning: code_meaning(api, code),
            errors: FileErrors(errors),
        }
    }

    /// Wraps a reqwest error, dropping its URL and telling TLS refusals apart.
    pub(crate) fn http(api: &str, method: &str, source: reqwest::Error) -> Self {
        let source = source.without_url();
        if is_tls_refusal(&source) {
            return Self::TlsRefused {
                api: api.to_owned(),
                method: method.to_owned(),
                source,
            };
        }
        Self::Http {
            api: api.to_owned(),
            method: method.to_owned(),
            source,
        }
    }
}

/// True for DSM codes that mean "busy, try again".
fn is_transient_code(api: &str, code: i64) -> bool {
    match code {
        109..=111 | 117 | 118 => true,
        // 402 and 421 are "system busy"/"device busy" for file operations;
        // for SYNO.API.Auth, 402 means "permission denied".
        402 | 421 => api != AUTH_API,
        _ => false,
    }
}

/// Walks the cause chain looking for a certificate problem reported by rustls.
fn is_tls_refusal(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return is_cert_error(tls);
        }
        // io::Error hides its inner error from `source()`; look inside.
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

fn is_cert_error(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::General(_)
    )
}

/// The name of the authentication API, whose codes differ from File Station's.
pub(crate) const AUTH_API: &str = "SYNO.API.Auth";

/// What a DSM error code means for the given API.
///
/// Login codes (400–410 for `SYNO.API.Auth`) differ from file-operation
/// codes with the same numbers; codes 100–150 are shared by every API.
pub fn code_meaning(api: &str, code: i64) -> &'static str {
    if api == AUTH_API
        && let Some(text) = auth_meaning(code)
    {
        return text;
    }
    if let Some(text) = api_specific_meaning(api, code) {
        return text;
    }
    common_meaning(code)
        .or_else(|| file_meaning(code))
        .unwrap_or("unknown error code")
}

fn auth_meaning(code: i64) -> Option<&'static str> {
    Some(match code {
        400 => "no such account or incorrect password",
        401 => "account disabled",
        402 => "permission denied",
        403 => "2-step verification code required",
        404 => "failed to authenticate 2-step verification code",
        406 => "2-step verification is enforced and not set up for this account",
        407 => "blocked IP source (too many failed logins)",
        408 => "expired password, cannot be changed",
        409 => "expired password",
        410 => "password must be changed",
        _ => return None,
    })
}

fn api_specific_meaning(api: &str, code: i64) -> Option<&'static str> {
    Some(match (api, code) {
        (_, 1800) => "no Content-Length or a wrong one in the upload request",
        (_, 1801) => "no data received for too long during the upload",
        (_, 1802) => "no filename in the upload's file part",
        (_, 1803) => "upload cancelled",
        (_, 1804) => "file too large for a FAT file system",
        (_, 1805) => "the file exists and overwrite was not given",
        (_, 1100) => "failed to create a folder (see the per-path errors)",
        (_, 1101) => "too many folders in one request",
        (_, 1200) => "failed to rename (see the per-path errors)",
        (_, 900) => "failed to delete (see the per-path errors)",
        (_, 1000) => "failed to copy or move (see the per-path errors)",
        (_, 599) => "no such task",
        _ => return None,
    })
}

fn common_meaning(code: i64) -> Option<&'static str> {
    Some(match code {
        100 => "unknown error",
        101 => "no API, method or version given",
        102 => "the requested API does not exist",
        103 => "the requested method does not exist",
        104 => "the requested version does not support this function",
        105 => "the logged-in session does not have permission",
        106 => "session timeout",
        107 => "session interrupted by a duplicate login",
        108 => "failed to upload the file",
        109 => "the network connection is unstable or the system is busy",
        110 => "the network connection is unstable or the system is busy",
        111 => "the network connection is unstable or the system is busy",
        114 => "missing required parameters",
        115 => "not allowed to upload a file",
        116 => "not allowed to perform this on a demo site",
        117 => "the network connection is unstable or the system is busy",
        118 => "the network connection is unstable or the system is busy",
        119 => "invalid session",
        150 => "request source IP does not match the login IP",
        _ => return None,
    })
}

fn file_meaning(code: i64) -> Option<&'static str> {
    Some(match code {
        400 => "invalid parameter of file operation",
        401 => "unknown error of file operation",
        402 => "system is too busy",
        403 => "invalid user for this file operation",
        404 => "invalid group for this file operation",
        405 => "invalid user and group for this file operation",
        406 => "cannot get user/group information from the account server",
        407 => "operation not permitted",
        408 => "no such file or directory",
        409 => "file system not supported",
        410 => "failed to connect to the remote file system",
        411 => "read-only file system",
        412 => "file name too long (non-encrypted file system)",
        413 => "file name too long (encrypted file system)",
        414 => "file already exists",
        415 => "disk quota exceeded",
        416 => "no space left on the device",
        417 => "input/output error",
        418 => "illegal name or path",
        419 => "illegal file name",
        420 => "illegal file name on a FAT file system",
        421 => "device or resource busy",
        599 => "no such task of the file operation",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_meanings_in_context() {
        assert_eq!(
            code_meaning(AUTH_API, 400),
            "no such account or incorrect password"
        );
        assert_eq!(
            code_meaning("SYNO.FileStation.List", 400),
            "invalid parameter of file operation"
        );
        assert_eq!(
            code_meaning("SYNO.FileStation.List", 408),
            "no such file or directory"
        );
        assert_eq!(code_meaning(AUTH_API, 119), "invalid session");
        assert_eq!(
            code_meaning("SYNO.FileStation.Upload", 1800),
            "no Content-Length or a wrong one in the upload request"
        );
        assert_eq!(
            code_meaning("SYNO.FileStation.Delete", 900),
            "failed to delete (see the per-path errors)"
        );
        assert_eq!(
            code_meaning("SYNO.FileStation.List", 12345),
            "unknown error code"
        );
    }

    #[test]
    fn transient_codes() {
        for code in [109, 110, 111, 117, 118, 402, 421] {
            assert!(
                Error::api("SYNO.FileStation.List", "list", code, vec![]).is_transient(),
                "{code}"
            );
        }
        for code in [100, 105, 106, 119, 400, 408, 414, 1800] {
            assert!(
                !Error::api("SYNO.FileStation.List", "list", code, vec![]).is_transient(),
                "{code}"
            );
        }
        // 402 on login means "permission denied", never busy.
        assert!(!Error::api(AUTH_API, "login", 402, vec![]).is_transient());
        let status = |status| Error::Status {
            api: "a".into(),
            method: "m".into(),
            status,
        };
        assert!(status(502).is_transient());
        assert!(status(503).is_transient());
        assert!(!status(404).is_transient());
    }

    #[test]
    fn session_codes() {
        for code in [106, 107, 119] {
            assert!(Error::api("SYNO.FileStation.List", "list", code, vec![]).is_session_lost());
        }
        assert!(!Error::api("SYNO.FileStation.List", "list", 105, vec![]).is_session_lost());
    }

    #[test]
    fn api_error_message_lists_files() {
        let e = Error::api(
            "SYNO.FileStation.Delete",
            "delete",
            900,
            vec![(408, Some("/backup/a".into())), (407, None)],
        );
        let text = e.to_string();
        assert!(
            text.contains("SYNO.FileStation.Delete.delete failed: DSM error 900"),
            "{text}"
        );
        assert!(
            text.contains("/backup/a: no such file or directory (408)"),
            "{text}"
        );
        assert!(text.contains("operation not permitted (407)"), "{text}");
        assert!(e.is_not_found());
        assert!(e.is_permission_denied());
    }

    #[test]
    fn login_message_names_account_and_advice() {
        let e = Error::Login {
            account: "backup".into(),
            code: 400,
            meaning: code_meaning(AUTH_API, 400),
            refusal: LoginRefusal::from_code(400),
        };
        let text = e.to_string();
        assert!(text.contains("\"backup\""), "{text}");
        assert!(text.contains("incorrect password"), "{text}");
        assert!(text.contains("will not retry"), "{text}");
        assert!(e.is_auth());
        assert!(!e.is_transient());
    }

    #[test]
    fn every_login_refusal_has_distinct_advice() {
        let codes = [400, 401, 402, 403, 404, 406, 407, 409];
        let advice: std::collections::HashSet<_> = codes
            .iter()
            .map(|c| LoginRefusal::from_code(*c).advice())
            .collect();
        assert_eq!(advice.len(), codes.len());
        assert_eq!(LoginRefusal::from_code(408), LoginRefusal::PasswordExpired);
        assert_eq!(LoginRefusal::from_code(410), LoginRefusal::PasswordExpired);
    }
}

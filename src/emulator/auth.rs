//! `SYNO.API.Auth`: logins, sessions, SynoTokens, OTP, device tokens and the
//! blocking of IPs that keep failing.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rand::RngExt;
use serde_json::json;

use super::{
    lock,
    params::Params,
    reply::{ApiResult, Fail, code},
};
use crate::{secret::Secret, totp::Totp};

/// How a request named its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SidSource {
    /// `_sid` parameter.
    Param,
    /// `id` cookie.
    Cookie,
}

impl SidSource {
    /// Name used in the request log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Param => "param",
            Self::Cookie => "cookie",
        }
    }
}

/// The session credentials a request carried.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    /// The session id and where it came from.
    pub sid: Option<(String, SidSource)>,
    /// SynoToken from the parameter or the `X-SYNO-TOKEN` header.
    pub token: Option<String>,
}

#[derive(Debug)]
struct Session {
    token: Option<String>,
    calls: u32,
    expired: bool,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    blocked_until: Option<Instant>,
}

/// The account and everything the NAS remembers about logins.
#[derive(Debug)]
pub(crate) struct Auth {
    user: String,
    password: Secret,
    totp: Option<Totp>,
    max_failures: u32,
    block_for: Duration,
    idle_timeout: Option<Duration>,
    sessions: Mutex<HashMap<String, Session>>,
    devices: Mutex<HashMap<String, String>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// The last [`ISSUED_KEPT`] sids, SynoTokens and device ids handed out,
    /// for tests that check they never leak (bounded: an emulator may run
    /// for months).
    issued: Mutex<VecDeque<Secret>>,
}

/// Issued secrets remembered for leak checks.
const ISSUED_KEPT: usize = 4096;

/// Login and session limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuthLimits {
    /// Consecutive failures before an IP is blocked (0: never).
    pub max_failures: u32,
    /// How long a blocked IP stays blocked.
    pub block_for: Duration,
    /// A session unused this long has expired (106).
    pub idle_timeout: Option<Duration>,
}

/// What a login request asked for.
struct LoginRequest<'a> {
    account: Option<&'a str>,
    passwd: Option<&'a str>,
    otp_code: Option<String>,
    device_id: Option<String>,
    want_device_token: bool,
    want_syno_token: bool,
}

impl<'a> LoginRequest<'a> {
    fn from_params(params: &'a Params) -> Self {
        let yes = |key: &str| matches!(params.bool(key), Some(Ok(true)));
        Self {
            account: params.raw("account"),
            // Never unescaped or JSON-decoded: DSM takes passwords verbatim.
            passwd: params.raw("passwd"),
            otp_code: params.string("otp_code").filter(|c| !c.is_empty()),
            device_id: params.string("device_id").filter(|d| !d.is_empty()),
            want_device_token: yes("enable_device_token"),
            want_syno_token: yes("enable_syno_token"),
        }
    }
}

/// A successful login: the answer and the cookie to set.
pub(crate) struct LoginOk {
    /// `data` of the answer.
    pub data: serde_json::Value,
    /// Session id for the `id` cookie (unless `format=sid`).
    pub cookie_sid: Option<String>,
}

impl Auth {
    /// The account `user`/`password`, with OTP when `totp` is set.
    pub fn new(user: String, password: Secret, totp: Option<Totp>, limits: &AuthLimits) -> Self {
        Self {
            user,
            password,
            totp,
            max_failures: limits.max_failures,
            block_for: limits.block_for,
            idle_timeout: limits.idle_timeout,
            sessions: Mutex::default(),
            devices: Mutex::default(),
            failures: Mutex::default(),
            issued: Mutex::default(),
        }
    }

    /// The sids, SynoTokens and device ids handed out (the last
    /// [`ISSUED_KEPT`]).
    pub fn issued(&self) -> Vec<Secret> {
        lock(&self.issued).iter().cloned().collect()
    }

    fn remember_issued(&self, secrets: impl IntoIterator<Item = Secret>) {
        let mut issued = lock(&self.issued);
        issued.extend(secrets);
        let excess = issued.len().saturating_sub(ISSUED_KEPT);
        issued.drain(..excess);
    }

    /// `SYNO.API.Auth` `login`.
    pub fn login(&self, params: &Params, peer: IpAddr) -> Result<LoginOk, Fail> {
        if self.is_blocked(peer) {
            return Err(Fail::new(code::IP_BLOCKED));
        }
        let request = LoginRequest::from_params(params);
        let (Some(account), Some(passwd)) = (request.account, request.passwd) else {
            return Err(Fail::new(code::MISSING_PARAMS));
        };
        if account != self.user || passwd != self.password.expose() {
            self.record_failure(peer);
            return Err(Fail::new(code::BAD_ACCOUNT));
        }
        let used_otp = self.check_otp(&request, peer)?;
        lock(&self.failures).remove(&peer);
        Ok(self.open_session(&request, used_otp, params))
    }

    /// Checks the second factor; true when an OTP code was used.
    fn check_otp(&self, request: &LoginRequest<'_>, peer: IpAddr) -> Result<bool, Fail> {
        let Some(totp) = &self.totp else {
            return Ok(false);
        };
        if let Some(device) = &request.device_id
            && lock(&self.devices).contains_key(device)
        {
            return Ok(false);
        }
        let Some(otp) = &request.otp_code else {
            return Err(Fail::new(code::OTP_REQUIRED));
        };
        if !totp.verify(otp, unix_now()) {
            self.record_failure(peer);
            return Err(Fail::new(code::OTP_WRONG));
        }
        Ok(true)
    }

    fn open_session(&self, request: &LoginRequest<'_>, used_otp: bool, params: &Params) -> LoginOk {
        let sid = random_token(48);
        let token = request.want_syno_token.then(|| random_token(11));
        self.remember_issued(
            std::iter::once(&sid)
                .chain(token.as_ref())
                .map(|s| Secret::new(s.clone())),
        );
        lock(&self.sessions).insert(
            sid.clone(),
            Session {
                token: token.clone(),
                calls: 0,
                expired: false,
                last_used: Instant::now(),
            },
        );
        let mut data = json!({
            "account": self.user,
            "ik_message": "",
            "is_portal_port": false,
            "sid": sid,
        });
        if let Some(token) = token {
            data["synotoken"] = json!(token);
        }
        if used_otp && request.want_device_token {
            let did = random_token(40);
            self.remember_issued([Secret::new(did.clone())]);
            let name = params.string("device_name").unwrap_or_default();
            lock(&self.devices).insert(did.clone(), name);
            data["did"] = json!(did);
            data["device_id"] = json!(did);
        }
        let cookie_sid = match params.string("format").as_deref() {
            Some("sid") => None,
            _ => Some(sid),
        };
        LoginOk { data, cookie_sid }
    }

    /// `logout`: ends the session the request names (always succeeds, as on DSM).
    pub fn logout(&self, creds: &Credentials) -> ApiResult {
        if let Some((sid, _)) = &creds.sid {
            lock(&self.sessions).remove(sid);
        }
        Ok(None)
    }

    /// Checks the session of an API call: 119 for no or unknown sid (or a
    /// missing/wrong SynoToken), 106 for an expired one. `expire_after`
    /// expires the session once it has made that many calls.
    pub fn check(&self, creds: &Credentials, expire_after: Option<u32>) -> Result<(), Fail> {
        let Some((sid, source)) = &creds.sid else {
            return Err(Fail::new(code::INVALID_SESSION));
        };
        let mut sessions = lock(&self.sessions);
        let Some(session) = sessions.get_mut(sid) else {
            return Err(Fail::new(code::INVALID_SESSION));
        };
        if self
            .idle_timeout
            .is_some_and(|idle| session.last_used.elapsed() > idle)
        {
            session.expired = true;
        }
        if session.expired {
            return Err(Fail::new(code::SESSION_TIMEOUT));
        }
        session.last_used = Instant::now();
        match (&session.token, &creds.token) {
            (Some(expected), Some(given)) if expected != given => {
                return Err(Fail::new(code::INVALID_SESSION));
            }
            (Some(_), None) if *source == SidSource::Cookie => {
                return Err(Fail::new(code::INVALID_SESSION));
            }
            _ => {}
        }
        session.calls += 1;
        if matches!(expire_after, Some(n) if session.calls > n) {
            session.expired = true;
            return Err(Fail::new(code::SESSION_TIMEOUT));
        }
        Ok(())
    }

    /// Forgets every session (a NAS reboot); device tokens survive.
    pub fn drop_sessions(&self) {
        lock(&self.sessions).clear();
    }

    fn is_blocked(&self, peer: IpAddr) -> bool {
        let mut failures = lock(&self.failures);
        let Some(entry) = failures.get_mut(&peer) else {
            return false;
        };
        match entry.blocked_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                failures.remove(&peer);
                false
            }
            None => false,
        }
    }

    fn record_failure(&self, peer: IpAddr) {
        let mut failures = lock(&self.failures);
        let entry = failures.entry(peer).or_default();
        entry.count += 1;
        if self.max_failures > 0 && entry.count >= self.max_failures {
            entry.blocked_until = Some(Instant::now() + self.block_for);
        }
    }
}

/// A random URL-safe token of `len` characters.
fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(otp: bool) -> Auth {
        let totp = otp.then(|| Totp::from_base32(&Secret::new("JBSWY3DPEHPK3PXP")).unwrap());
        let limits = AuthLimits {
            max_failures: 3,
            block_for: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_millis(200)),
        };
        Auth::new("alice".into(), Secret::new("pw"), totp, &limits)
    }

    fn params(text: &str) -> Params {
        let mut p = Params::default();
        p.extend_urlencoded(text);
        p
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn wrong_passwords_block_the_ip() {
        let a = auth(false);
        for _ in 0..3 {
            assert_eq!(
                a.login(&params("account=alice&passwd=x"), IP)
                    .err()
                    .unwrap()
                    .code,
                400
            );
        }
        let blocked = a.login(&params("account=alice&passwd=pw"), IP);
        assert_eq!(blocked.err().unwrap().code, 407);
    }

    #[test]
    fn cookie_sessions_need_the_token() {
        let a = auth(false);
        let ok = a
            .login(&params("account=alice&passwd=pw&enable_syno_token=yes"), IP)
            .unwrap();
        let sid = ok.data["sid"].as_str().unwrap().to_owned();
        let token = ok.data["synotoken"].as_str().unwrap().to_owned();
        let by_cookie = Credentials {
            sid: Some((sid.clone(), SidSource::Cookie)),
            token: None,
        };
        assert_eq!(a.check(&by_cookie, None).unwrap_err().code, 119);
        let with_token = Credentials {
            sid: Some((sid.clone(), SidSource::Cookie)),
            token: Some(token),
        };
        assert!(a.check(&with_token, None).is_ok());
        let by_param = Credentials {
            sid: Some((sid, SidSource::Param)),
            token: None,
        };
        assert!(a.check(&by_param, Some(2)).is_ok());
        assert_eq!(a.check(&by_param, Some(2)).unwrap_err().code, 106);
        assert_eq!(a.check(&by_param, None).unwrap_err().code, 106);
    }

    #[test]
    fn idle_sessions_expire() {
        let a = auth(false);
        let ok = a.login(&params("account=alice&passwd=pw"), IP).unwrap();
        let sid = ok.data["sid"].as_str().unwrap().to_owned();
        let creds = Credentials {
            sid: Some((sid, SidSource::Param)),
            token: None,
        };
        assert!(a.check(&creds, None).is_ok());
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(a.check(&creds, None).unwrap_err().code, 106);
    }

    #[test]
    fn otp_and_device_tokens() {
        let a = auth(true);
        let base = "account=alice&passwd=pw";
        assert_eq!(a.login(&params(base), IP).err().unwrap().code, 403);
        assert_eq!(
            a.login(&params(&format!("{base}&otp_code=000000x")), IP)
                .err()
                .unwrap()
                .code,
            404
        );
        let code = a.totp.as_ref().unwrap().now();
        let ok = a
            .login(
                &params(&format!(
                    "{base}&otp_code={}&enable_device_token=yes&device_name=pc",
                    code.expose()
                )),
                IP,
            )
            .unwrap();
        let did = ok.data["did"].as_str().unwrap().to_owned();
        assert!(
            a.login(&params(&format!("{base}&device_id={did}")), IP)
                .is_ok()
        );
        assert_eq!(
            a.login(&params(&format!("{base}&device_id=nope")), IP)
                .err()
                .unwrap()
                .code,
            403
        );
    }
}

//! Time-based one-time passwords (RFC 6238, HMAC-SHA1, 6 digits, 30 s steps),
//! as DSM's two-factor authentication uses them.
//!
//! The DSM client computes codes from a configured secret; the emulator
//! checks them. Both share this one implementation.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use crate::secret::Secret;

/// Length of one TOTP time step in seconds (DSM uses the RFC default).
pub const STEP_SECONDS: u64 = 30;

/// Why a TOTP secret could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TotpError {
    /// The secret is not valid base32 (the form authenticator apps show).
    #[error(
        "the OTP secret is not valid base32 (letters A-Z and digits 2-7, as shown when 2FA was enrolled)"
    )]
    NotBase32,
    /// The secret decodes to nothing.
    #[error("the OTP secret is empty")]
    Empty,
}

/// A shared TOTP secret, kept as raw key bytes.
#[derive(Clone)]
pub struct Totp {
    key: Vec<u8>,
}

impl std::fmt::Debug for Totp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Totp(***)")
    }
}

impl Totp {
    /// Parses a base32 secret; spaces, dashes, padding and case are ignored.
    ///
    /// # Errors
    /// [`TotpError::NotBase32`] when the text is not base32, [`TotpError::Empty`]
    /// when it holds no key bytes.
    pub fn from_base32(secret: &Secret) -> Result<Self, TotpError> {
        let cleaned: String = secret
            .expose()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '='))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let key = data_encoding::BASE32_NOPAD
            .decode(cleaned.as_bytes())
            .map_err(|_| TotpError::NotBase32)?;
        if key.is_empty() {
            return Err(TotpError::Empty);
        }
        Ok(Self { key })
    }

    /// The 6-digit code for a Unix time in seconds.
    pub fn code_at(&self, unix_seconds: u64) -> Secret {
        let counter = unix_seconds / STEP_SECONDS;
        Secret::new(format!("{:06}", hotp(&self.key, counter)))
    }

    /// The code for the current time.
    pub fn now(&self) -> Secret {
        self.code_at(unix_now())
    }

    /// True when `code` matches the current step or one step either side
    /// (the clock skew DSM tolerates).
    pub fn verify(&self, code: &str, unix_seconds: u64) -> bool {
        [0i64, -1, 1].iter().any(|delta| {
            let t = unix_seconds.saturating_add_signed(delta * STEP_SECONDS as i64);
            self.code_at(t).expose() == code
        })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 4226 HOTP value (6 digits) for one counter.
fn hotp(key: &[u8], counter: u64) -> u32 {
    // HMAC accepts keys of any length, so construction cannot fail; an empty
    // key is refused earlier by `from_base32`.
    let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(key) else {
        return 0;
    };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[digest.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    bin % 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B vectors (SHA-1 key "12345678901234567890"), last 6 digits.
    #[test]
    fn rfc6238_vectors() {
        let key = data_encoding::BASE32_NOPAD.encode(b"12345678901234567890");
        let totp = Totp::from_base32(&Secret::new(key)).unwrap();
        for (t, code) in [
            (59u64, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
            (20_000_000_000, "353130"),
        ] {
            assert_eq!(totp.code_at(t).expose(), code, "t={t}");
        }
    }

    #[test]
    fn accepts_lowercase_spaces_and_one_step_of_skew() {
        let totp = Totp::from_base32(&Secret::new("gezd gnbv gy3t qojq")).unwrap();
        let code = totp.code_at(1_000_000).expose().to_owned();
        assert!(totp.verify(&code, 1_000_000 + 30));
        assert!(!totp.verify(&code, 1_000_000 + 120));
    }

    #[test]
    fn rejects_non_base32() {
        assert!(matches!(
            Totp::from_base32(&Secret::new("not base32 !")),
            Err(TotpError::NotBase32)
        ));
    }
}

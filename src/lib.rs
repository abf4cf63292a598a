//! synback: verified, compressed snapshot backups to a Synology NAS.
//!
//! See `README.md` for the user's view and `docs/` for the design notes.

#[cfg(feature = "daemon")]
pub mod schedule;
pub mod secret;
pub mod totp;

//! synback: verified, compressed snapshot backups to a Synology NAS.
//!
//! See `README.md` for the user's view and `docs/` for the design notes.

pub mod agent;
pub mod archive;
pub mod backup;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod dsm;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod event;
pub mod repo;
pub mod restore;
pub mod retention;
#[cfg(feature = "daemon")]
pub mod schedule;
pub mod secret;
pub mod totp;

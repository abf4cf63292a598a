//! Errors of the emulator's own life cycle (start-up, TLS, request log).
//!
//! DSM-level failures are not errors here: they are answers the emulator
//! gives to its clients (`reply::Fail`).

use std::{io, net::SocketAddr, path::PathBuf};

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The root folder or a share folder could not be created.
    #[error("cannot create the folder {path}")]
    CreateFolder {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A share name is empty or holds `/`, `\`, `.`/`..` or a NUL.
    #[error("invalid share name {name:?}: a share is one plain folder name")]
    InvalidShare {
        /// The offending name.
        name: String,
    },
    /// The configured OTP secret is unusable.
    #[error("the emulator's OTP secret is unusable")]
    Otp(#[source] crate::totp::TotpError),
    /// The self-signed certificate could not be generated.
    #[error("cannot generate the self-signed TLS certificate")]
    Certificate(#[source] rcgen::Error),
    /// The TLS server configuration was refused.
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
    /// The request log file could not be opened.
    #[error("cannot open the request log {path}")]
    RequestLog {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

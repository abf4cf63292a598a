//! A self-signed certificate for `https://127.0.0.1` / `localhost`, made
//! fresh at every start, as a NAS's factory certificate is self-signed.

use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use super::Error;

/// The TLS side of a running emulator.
pub(crate) struct TlsSetup {
    /// Accepts TLS connections with the certificate.
    pub acceptor: TlsAcceptor,
    /// Lower-case hex SHA-256 of the certificate (DER), for pinning.
    pub sha256: String,
}

/// Generates the certificate and the server configuration.
pub(crate) fn self_signed() -> Result<TlsSetup, Error> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let certified = rcgen::generate_simple_self_signed(names).map_err(Error::Certificate)?;
    let cert_der = certified.cert.der().clone();
    let sha256 = hex::encode(Sha256::digest(cert_der.as_ref()));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key)
        .map_err(Error::Tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSetup {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        sha256,
    })
}

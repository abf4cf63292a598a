//! TLS for the DSM client: a rustls configuration built with the ring
//! provider explicitly (no process-wide default is installed), with roots
//! from the system (falling back to the bundled Mozilla roots), a CA file,
//! a pinned certificate fingerprint, or — only when asked — no check at all.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::error::{Error, Result};
use super::options::TlsOptions;

/// Builds the rustls client configuration for these options.
///
/// # Errors
/// [`Error::TlsSetup`] when the CA file cannot be read, the pin is not a
/// SHA-256 in hex, or no root certificate is available.
pub(crate) fn client_config(opts: &TlsOptions) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup("no usable TLS protocol version", e))?;
    let config = if let Some(pin) = &opts.pin_sha256 {
        let verifier = LeafVerifier {
            pin: Some(parse_pin(pin)?),
            algorithms: provider.signature_verification_algorithms,
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    } else if opts.insecure {
        tracing::warn!(
            "TLS certificate checks are disabled (insecure = true): anyone on the network path \
             can read the password; pin the certificate with pin_sha256 instead"
        );
        let verifier = LeafVerifier {
            pin: None,
            algorithms: provider.signature_verification_algorithms,
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(root_store(opts)?)
            .with_no_client_auth()
    };
    Ok(config)
}

fn setup(reason: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::TlsSetup {
        reason: reason.to_owned(),
        source: Some(Box::new(e)),
    }
}

/// The roots: the CA file alone when given, else the system's, else Mozilla's.
fn root_store(opts: &TlsOptions) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &opts.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| setup(&format!("cannot read ca_file {}", path.display()), e))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| setup(&format!("cannot parse ca_file {}", path.display()), e))?;
            roots.add(cert).map_err(|e| {
                setup(
                    &format!("ca_file {} holds an unusable certificate", path.display()),
                    e,
                )
            })?;
        }
        if roots.is_empty() {
            return Err(Error::TlsSetup {
                reason: format!("ca_file {} holds no PEM certificate", path.display()),
                source: None,
            });
        }
        return Ok(roots);
    }
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::debug!("no system root certificates found, using the bundled Mozilla roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Ok(roots)
}

/// Parses a SHA-256 fingerprint written as hex, with or without `:` separators.
pub(crate) fn parse_pin(pin: &str) -> Result<[u8; 32]> {
    let cleaned: String = pin.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    let bytes = hex::decode(&cleaned).map_err(|e| setup("pin_sha256 is not hexadecimal", e))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| Error::TlsSetup {
        reason: format!(
            "pin_sha256 must be 32 bytes (64 hex digits), got {}",
            bytes.len()
        ),
        source: None,
    })
}

/// The SHA-256 of a DER certificate, as lowercase hex.
pub fn cert_sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Checks the NAS's leaf certificate without a CA: with a pin, only the
/// certificate with that SHA-256 is accepted; without one (`insecure`),
/// any. Either way the handshake signatures are still verified, so the
/// server must hold the certificate's private key.
struct LeafVerifier {
    pin: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for LeafVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafVerifier")
            .field("pin", &self.pin.map(hex::encode))
            .finish()
    }
}

impl ServerCertVerifier for LeafVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let actual: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if actual == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the NAS certificate's SHA-256 {} does not match the pinned SHA-256",
                hex::encode(actual)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(parse_pin("abcd").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn pinned_verifier_accepts_only_the_pinned_cert() {
        let cert = CertificateDer::from(vec![1u8, 2, 3, 4]);
        let pin: [u8; 32] = Sha256::digest([1u8, 2, 3, 4]).into();
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let v = LeafVerifier {
            pin: Some(pin),
            algorithms: algs,
        };
        let name = ServerName::try_from("nas.local").unwrap();
        assert!(
            v.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        let other = CertificateDer::from(vec![9u8]);
        assert!(
            v.verify_server_cert(&other, &[], &name, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn builds_every_kind_of_config() {
        let mut opts = TlsOptions::default();
        assert!(client_config(&opts).is_ok());
        opts.pin_sha256 = Some("00".repeat(32));
        assert!(client_config(&opts).is_ok());
        opts.pin_sha256 = None;
        opts.insecure = true;
        assert!(client_config(&opts).is_ok());
        opts.insecure = false;
        opts.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(client_config(&opts), Err(Error::TlsSetup { .. })));
    }
}

//! Talking to the control plane over TLS: the HTTP client trusts the public root CAs built in,
//! or only the CA bundle given with `--ca FILE`, or only the one certificate whose SHA-256 is
//! pinned with `--pin-sha256 HEX` (a self-signed server needs no CA then); and a plain
//! `http://` address that is not loopback earns a warning (tokens would travel in clear text).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};

/// Largest CA bundle read, in bytes.
pub const CA_FILE_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Why the CA bundle could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--ca {path}: {reason}; expected a PEM file with the CA certificates to trust")]
pub struct CaError {
    pub path: String,
    pub reason: String,
}

/// The certificates of a PEM CA bundle.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, CaError> {
    let error = |reason: String| CaError {
        path: path.display().to_string(),
        reason,
    };
    let size_bytes = std::fs::metadata(path)
        .map_err(|e| error(e.to_string()))?
        .len();
    if size_bytes > CA_FILE_MAX_BYTES {
        return Err(error(format!(
            "{size_bytes} bytes; the limit is {CA_FILE_MAX_BYTES}"
        )));
    }
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

/// An async HTTP client builder that trusts `ca` only, when given, else the public root CAs
/// built in.
pub fn client_builder(ca: Option<&Path>) -> Result<reqwest::ClientBuilder, CaError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca {
        builder = builder.tls_built_in_root_certs(false);
        for cert in read_ca_bundle(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// Why a certificate pin is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--pin-sha256 {given:?}: {reason}; expected the 64 hex characters of the SHA-256 of the \
     server's certificate (DER), as `failsmall server` prints it at start"
)]
pub struct PinError {
    pub given: String,
    pub reason: String,
}

/// The SHA-256 of a certificate (DER), hex: what `--pin-sha256` takes.
pub fn certificate_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A rustls client configuration that accepts exactly the server certificate whose SHA-256
/// is `pin_hex` (no CA, no name check: the pin is stronger than both), and still checks that
/// the server holds its key (the handshake's signatures).
pub fn pinned_config(pin_hex: &str) -> Result<rustls::ClientConfig, PinError> {
    let error = |reason: &str| PinError {
        given: pin_hex.to_owned(),
        reason: reason.to_owned(),
    };
    let mut pin = [0u8; 32];
    hex::decode_to_slice(pin_hex.trim().to_ascii_lowercase(), &mut pin)
        .map_err(|_| error("not 64 hex characters"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertificate {
        sha256: pin,
        provider: Arc::clone(&provider),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| error(&e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// Accepts the one server certificate with the pinned SHA-256.
#[derive(Debug)]
struct PinnedCertificate {
    sha256: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = Sha256::digest(end_entity.as_ref());
        if digest.as_slice() == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate pin mismatch: the server's certificate has SHA-256 {}, not the pinned {}",
                hex::encode(digest),
                hex::encode(self.sha256)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A warning when `url` is plain `http://` to a host that is not loopback.
pub fn plaintext_warning(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!(
            "warning: {url} is plain http:// to a host that is not loopback: the token and \
             everything else travel in clear text; serve TLS (`failsmall server --tls-cert \
             FILE --tls-key FILE`) and use https://"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_off_this_host_is_warned_about() {
        for quiet in [
            "http://127.0.0.1:7070",
            "http://localhost:7070/",
            "http://[::1]:7070",
            "http://127.8.9.10",
            "https://cp.internal:7070",
            "https://10.0.0.1",
        ] {
            assert_eq!(plaintext_warning(quiet), None, "{quiet}");
        }
        for loud in [
            "http://cp.internal:7070",
            "http://10.0.0.1:7070",
            "http://[2001:db8::1]:7070",
            "http://localhost.evil.example",
        ] {
            let warning = plaintext_warning(loud).unwrap();
            assert!(warning.contains("clear text"), "{loud}");
        }
    }

    #[test]
    fn a_pin_must_be_a_sha256() {
        assert!(pinned_config(&"ab".repeat(32)).is_ok());
        let error = pinned_config("abc").unwrap_err().to_string();
        assert!(
            error.contains("--pin-sha256") && error.contains("64 hex"),
            "{error}"
        );
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let error = read_ca_bundle(&path).unwrap_err().to_string();
        assert!(
            error.contains("ca.pem") && error.contains("--ca"),
            "{error}"
        );
        let missing = read_ca_bundle(&dir.path().join("none.pem")).unwrap_err();
        assert!(missing.to_string().contains("none.pem"));
    }
}

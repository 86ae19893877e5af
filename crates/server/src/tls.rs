//! TLS for the API: a certificate chain and its private key, PEM files, loaded into a rustls
//! configuration (the ring provider; TLS 1.2 and 1.3; HTTP/1.1 by ALPN). Loading is checked
//! at start: a file that is missing, holds no certificate, or a key that does not match the
//! certificate stops the server with an error naming the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest certificate or key file read, in bytes.
pub const TLS_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// Where the server's certificate chain and key are (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert_path: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {reason}; expected a PEM file with the server's certificate chain")]
    Cert { path: PathBuf, reason: String },
    #[error("--tls-key {path}: {reason}; expected a PEM file with the certificate's private key")]
    Key { path: PathBuf, reason: String },
    #[error("--tls-cert {cert} with --tls-key {key}: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let size_bytes = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size_bytes > TLS_FILE_MAX_BYTES {
        return Err(format!(
            "{size_bytes} bytes; the limit is {TLS_FILE_MAX_BYTES}"
        ));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

/// A rustls client configuration that trusts the CA certificates (PEM) in `ca_file`, or the
/// public root CAs when there is none: how the server connects to PostgreSQL over TLS.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = read_bounded(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no PEM certificate in it", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Reads and checks the files into a rustls server configuration.
pub fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_error = |reason: String| TlsError::Cert {
        path: files.cert_path.clone(),
        reason,
    };
    let key_error = |reason: String| TlsError::Key {
        path: files.key_path.clone(),
        reason,
    };
    let cert_pem = read_bounded(&files.cert_path).map_err(cert_error)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no CERTIFICATE block".to_owned()));
    }
    let key_pem = read_bounded(&files.key_path).map_err(key_error)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| key_error(e.to_string()))?;
    let config_error = |reason: String| TlsError::Config {
        cert: files.cert_path.clone(),
        key: files.key_path.clone(),
        reason,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| config_error(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| config_error(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The SHA-256 (hex) of the server's certificate (the chain's first), what clients pin with
/// `--pin-sha256`.
pub fn certificate_sha256(files: &TlsFiles) -> Result<String, TlsError> {
    use sha2::Digest as _;
    let cert_error = |reason: String| TlsError::Cert {
        path: files.cert_path.clone(),
        reason,
    };
    let cert_pem = read_bounded(&files.cert_path).map_err(cert_error)?;
    let first = CertificateDer::pem_slice_iter(&cert_pem)
        .next()
        .ok_or_else(|| cert_error("no CERTIFICATE block".to_owned()))?
        .map_err(|e| cert_error(e.to_string()))?;
    Ok(hex::encode(sha2::Sha256::digest(first.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_matching_pair_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = write(dir.path(), "cert.pem", &cert.pem());
        let key_path = write(dir.path(), "key.pem", &key.serialize_pem());
        let files = TlsFiles {
            cert_path: cert_path.clone(),
            key_path: key_path.clone(),
        };
        assert!(load(&files).is_ok());

        let swapped = TlsFiles {
            cert_path: key_path.clone(),
            key_path: cert_path.clone(),
        };
        let error = load(&swapped).unwrap_err().to_string();
        assert!(
            error.contains("--tls-cert") && error.contains("no CERTIFICATE"),
            "{error}"
        );

        let other_key = write(
            dir.path(),
            "other.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let mismatched = TlsFiles {
            cert_path,
            key_path: other_key,
        };
        let error = load(&mismatched).unwrap_err().to_string();
        assert!(error.contains("--tls-key"), "{error}");

        let missing = TlsFiles {
            cert_path: dir.path().join("nope.pem"),
            key_path,
        };
        let error = load(&missing).unwrap_err().to_string();
        assert!(error.contains("nope.pem"), "{error}");
    }
}

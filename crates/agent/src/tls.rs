//! Talking to the control plane over TLS: the HTTP client trusts the public root CAs built in, or
//! only the CA bundle given with `--ca FILE`; and a plain `http://` address that is not
//! loopback earns a warning (tokens would travel in clear text).

use std::net::IpAddr;
use std::path::Path;

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

/// An async HTTP client builder that trusts `ca` only, when given, else the public root CAs built in.
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

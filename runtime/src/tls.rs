//! TLS for the services' listeners. Certificates and keys are PEM files named in the settings
//! (in a cluster: a mounted Secret), read once at start-up, so a missing or malformed file stops
//! the service with the file named instead of failing the first handshake.
//!
//! One TLS stack everywhere: rustls with the `ring` provider, passed explicitly (no process-wide
//! default provider to install or to fight over).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// A certificate chain and its private key, both PEM files. Both unset: TLS is off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}.cert_file and {0}.key_file go together: set both, or neither for plain text")]
    Half(&'static str),
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the {what} {path} holds no PEM {expected}")]
    NotPem {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    #[error("the certificate and key do not make a TLS server: {0}")]
    Rejected(#[from] rustls::Error),
}

/// A PEM file, read and checked to hold at least one `-----BEGIN` block.
pub fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem {
            what,
            path: path.display().to_string(),
            expected: "block",
        });
    }
    Ok(bytes)
}

/// The server's certificate chain and key, PEM-encoded.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_file", &self.cert_path)
            .field("key_file", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// The identity these settings name, or `None` when TLS is off. `section` names the settings
    /// in errors (e.g. `grpc.tls`).
    pub fn load(&self, section: &'static str) -> Result<Option<Identity>, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(Identity {
                cert_pem: read_pem("certificate file", cert)?,
                key_pem: read_pem("key file", key)?,
                cert_path: cert.clone(),
                key_path: key.clone(),
            })),
            _ => Err(TlsError::Half(section)),
        }
    }
}

impl Identity {
    /// A rustls server configuration (HTTP/2 and HTTP/1.1 by ALPN, no client certificates).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| TlsError::NotPem {
                what: "certificate file",
                path: self.cert_path.display().to_string(),
                expected: "certificate",
            })?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|_| TlsError::NotPem {
            what: "key file",
            path: self.key_path.display().to_string(),
            expected: "private key",
        })?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_pair_and_unreadable_or_non_pem_files_are_refused_with_the_file_named() {
        let half = TlsFiles {
            cert_file: Some("/etc/hostname".into()),
            key_file: None,
        };
        assert_eq!(
            half.load("http.tls").unwrap_err().to_string(),
            "http.tls.cert_file and http.tls.key_file go together: set both, or neither for plain text"
        );
        let missing = TlsFiles {
            cert_file: Some("/nonexistent/tls.crt".into()),
            key_file: Some("/nonexistent/tls.key".into()),
        };
        let e = missing.load("http.tls").unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read the certificate file /nonexistent/tls.crt"),
            "{e}"
        );
        let not_pem = TlsFiles {
            cert_file: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")),
            key_file: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")),
        };
        let e = not_pem.load("http.tls").unwrap_err().to_string();
        assert!(e.contains("holds no PEM block"), "{e}");
        assert!(TlsFiles::default().load("http.tls").unwrap().is_none());
    }
}

//! TLS on the wire, optional: rustls with the `ring` provider, TLS 1.3 only. It encrypts what the
//! cluster secret alone does not (file data, names, the requests themselves) and lets a client
//! know it talks to the server it trusts. The secret's proof still runs inside it: TLS says
//! "this is the server", the secret says "this machine is of the cluster" both ways.
//!
//! Certificates are PEM files: the server's chain and key, and on clients the certificates they
//! trust (a cluster's own CA, as `rustre server --tls` makes one on its first start).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Largest PEM file read (a chain of a few certificates is a few KiB).
pub const PEM_FILE_LEN_MAX: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: larger than {PEM_FILE_LEN_MAX} bytes, not a PEM file of certificates or a key")]
    TooLarge { path: String },
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0:?} is not a valid server name for TLS (a DNS name or an IP address)")]
    ServerName(String),
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let name = || path.display().to_string();
    let length = std::fs::metadata(path).map_err(|source| TlsError::Io { path: name(), source })?.len();
    if length > PEM_FILE_LEN_MAX {
        return Err(TlsError::TooLarge { path: name() });
    }
    std::fs::read(path).map_err(|source| TlsError::Io { path: name(), source })
}

/// The certificates in a PEM file (at least one).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem { path: path.display().to_string(), what: error.to_string() })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem { path: path.display().to_string(), what: "no certificate in it".into() });
    }
    Ok(certificates)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|error| TlsError::Pem { path: path.display().to_string(), what: format!("no private key: {error}") })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's TLS configuration: its certificate chain (its own first) and key.
pub fn server_config(chain: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(load_certificates(chain)?, load_key(key)?)?;
    Ok(Arc::new(config))
}

/// What a client needs to speak TLS to a server: whom it trusts, and the name it expects the
/// server's certificate to carry.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Checked against the server certificate's names. `None`: the host part of the address
    /// connected to (`127.0.0.1` of `127.0.0.1:7070`).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the certificates in `trusted` (a PEM file: a CA, or the server's own certificate
    /// if it is a CA), and nothing else: not the system's roots, since a cluster's servers carry
    /// certificates of its own.
    pub fn trusting(trusted: &Path, server_name: Option<String>) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in load_certificates(trusted)? {
            roots.add(certificate)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls { config: Arc::new(config), server_name })
    }

    /// The name to check the server's certificate against, for a connection to `address`
    /// (`host:port`, `[v6]:port`, or a bare host).
    pub fn name_for(&self, address: &str) -> Result<ServerName<'static>, TlsError> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(address).to_string(),
        };
        ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))
    }
}

/// The host of `host:port` (brackets of an IPv6 address removed).
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|byte| byte.is_ascii_digit()) => host,
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("files.example:7070"), "files.example");
        assert_eq!(host_of("files.example"), "files.example");
        assert_eq!(host_of("::1"), "::1");
    }

    #[test]
    fn bad_pem_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        let error = load_certificates(&empty).unwrap_err().to_string();
        assert!(error.contains("empty.pem") && error.contains("no certificate"), "{error}");
        let error = load_key(&empty).unwrap_err().to_string();
        assert!(error.contains("no private key"), "{error}");
        let missing = load_certificates(&dir.path().join("missing.pem")).unwrap_err().to_string();
        assert!(missing.contains("missing.pem"), "{missing}");
    }
}

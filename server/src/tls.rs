//! TLS material: the private CA and server certificate `init` makes (rcgen), and the rustls
//! server configuration `serve` builds from PEM files.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Failure to make or load TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("cannot generate the {what} certificate")]
    Generate {
        /// CA or server.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A PEM file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file held no usable certificate or key.
    #[error("{path} holds no {what}")]
    Empty {
        /// The file.
        path: String,
        /// What was expected.
        what: &'static str,
    },
    /// rustls refused the certificate and key.
    #[error("the TLS certificate and key do not form a valid server configuration")]
    Config {
        /// rustls's error.
        source: rustls::Error,
    },
}

/// PEM text of a freshly made CA and server certificate.
pub struct Generated {
    /// The CA certificate, for clients to pin.
    pub ca_cert_pem: String,
    /// The CA key (kept to reissue the server certificate).
    pub ca_key_pem: String,
    /// The server certificate.
    pub server_cert_pem: String,
    /// The server key.
    pub server_key_pem: String,
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Generated(<TLS material>)")
    }
}

/// Make a private CA (ECDSA P-256, 10 years) and a server certificate for `hosts` (names and IP
/// addresses, 2 years), signed by it.
pub fn generate(hosts: &[String]) -> Result<Generated, TlsError> {
    let now = time::OffsetDateTime::now_utc();
    let ca_err = |source| TlsError::Generate { what: "CA", source };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(ca_err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "Hallmark private CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(3650);
    let ca_key = KeyPair::generate().map_err(ca_err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(ca_err)?;

    let srv_err = |source| TlsError::Generate {
        what: "server",
        source,
    };
    let mut srv = CertificateParams::new(hosts.to_vec()).map_err(srv_err)?;
    srv.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("hallmark"),
    );
    srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    srv.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    srv.not_before = now - time::Duration::hours(1);
    srv.not_after = now + time::Duration::days(730);
    let srv_key = KeyPair::generate().map_err(srv_err)?;
    let srv_cert = srv
        .signed_by(&srv_key, &ca_cert, &ca_key)
        .map_err(srv_err)?;
    Ok(Generated {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        server_cert_pem: srv_cert.pem(),
        server_key_pem: srv_key.serialize_pem(),
    })
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN h2 and http/1.1) from
/// PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: cert.display().to_string(),
            what: "certificate",
        });
    }
    let key_pem = zeroize::Zeroizing::new(read(key)?);
    let key: PrivateKeyDer<'static> =
        PrivateKeyDer::from_pem_slice(&key_pem)
            .ok()
            .ok_or_else(|| TlsError::Empty {
                path: key.display().to_string(),
                what: "private key",
            })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config { source })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Config { source })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

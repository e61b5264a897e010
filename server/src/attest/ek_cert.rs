//! Checks of a TPM's endorsement key certificate at registration: that it certifies the EK the
//! station sent (`ek_public`), and that it chains to the TPM manufacturers' CA certificates the
//! operator configured (`ek_roots`).
//!
//! EK certificates follow the TCG EK Credential Profile (§3.2): an empty subject and a critical
//! subjectAltName holding a directoryName (TPM manufacturer, model, version). Generic WebPKI
//! validators refuse both, so the certificate is parsed with `x509-cert` and the path checked
//! here with the few rules an EK path needs (RFC 5280 §6.1, restricted):
//!
//! - every certificate in the `ek_roots` bundle is trusted, as in a CA file: operators put the
//!   manufacturers' root **and intermediate** CA certificates there, because a registration
//!   carries only the EK certificate;
//! - the EK certificate must be issued by a bundle certificate (same name, signature verifies);
//!   the path then continues up through the bundle as far as it goes (to a self-issued
//!   certificate, or one whose issuer is not in the bundle), and every certificate on it must
//!   verify the same way;
//! - each certificate on the path is within its validity period at `now`; each issuer is a CA
//!   (basicConstraints cA when the extension is present, keyCertSign when keyUsage is);
//! - signatures: RSA PKCS#1 v1.5 with SHA-256/384/512, ECDSA P-256/P-384 with SHA-256/384,
//!   verified with `ring` over the certificate's own TBS bytes.
//!
//! Not checked: name constraints, policies, path length constraints and revocation (EK CAs
//! publish no usable CRLs for devices in the field).

use std::fmt;
use std::time::SystemTime;

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use x509_cert::der::{Decode as _, Encode as _, Reader as _, SliceReader};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;

/// The largest EK certificate looked at (real ones are 1–2 KiB).
pub const MAX_EK_CERTIFICATE: usize = 16 * 1024;
/// How many CA certificates a path may pass through above the EK certificate.
const MAX_PATH_DEPTH: usize = 8;
/// How much of a distinguished name an error message quotes.
const MAX_NAME_IN_MESSAGE: usize = 160;

/// Object identifiers (RFC 3279, RFC 4055, RFC 5480, RFC 5758).
mod oid {
    use x509_cert::spki::ObjectIdentifier as Oid;
    pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    pub const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
    pub const SHA384_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
    pub const SHA512_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
    pub const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    pub const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
    pub const ECDSA_WITH_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
    pub const P256: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
    pub const P384: Oid = Oid::new_unwrap("1.3.132.0.34");
}

/// Runs every registration check of an EK certificate: that it certifies `ek_public_der`
/// (SubjectPublicKeyInfo DER) and, when `roots` is given, that it chains to them at `now`.
/// Returns the certificate's issuer name (RFC 4514) for display.
pub fn check_ek_certificate(
    certificate_der: &[u8],
    ek_public_der: &[u8],
    roots: Option<&EkRoots>,
    now: SystemTime,
) -> Result<String, EkCertError> {
    let certificate = EkCertificate::from_der(certificate_der)?;
    certificate.check_key(ek_public_der)?;
    if let Some(roots) = roots {
        roots.verify(&certificate, now)?;
    }
    Ok(certificate.issuer())
}

/// A parsed EK certificate.
#[derive(Clone)]
pub struct EkCertificate {
    cert: ParsedCert,
}

impl fmt::Debug for EkCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EkCertificate")
            .field("issuer", &self.issuer())
            .finish_non_exhaustive()
    }
}

impl EkCertificate {
    /// Parses a DER X.509 certificate (at most [`MAX_EK_CERTIFICATE`] bytes).
    pub fn from_der(der: &[u8]) -> Result<EkCertificate, EkCertError> {
        if der.len() > MAX_EK_CERTIFICATE {
            return Err(EkCertError::TooLong { len: der.len() });
        }
        let cert = ParsedCert::from_der(der).ok_or(EkCertError::NotDer)?;
        Ok(EkCertificate { cert })
    }

    /// The issuer's distinguished name, RFC 4514 string form.
    pub fn issuer(&self) -> String {
        self.cert.cert.tbs_certificate.issuer.to_string()
    }

    /// The certified key's SubjectPublicKeyInfo, DER (`None` if it does not re-encode).
    pub fn public_key_der(&self) -> Option<Vec<u8>> {
        self.cert
            .cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .ok()
    }

    /// Checks that the certificate certifies the key `ek_public_der` (SubjectPublicKeyInfo
    /// DER). Keys are compared, not encodings: for RSA the modulus and exponent, otherwise
    /// the algorithm, its parameters and the key bits.
    pub fn check_key(&self, ek_public_der: &[u8]) -> Result<(), EkCertError> {
        let ek_public = SubjectPublicKeyInfoOwned::from_der(ek_public_der)
            .map_err(|_| EkCertError::EkPublicNotDer)?;
        let certified = &self.cert.cert.tbs_certificate.subject_public_key_info;
        if same_key(certified, &ek_public) {
            Ok(())
        } else {
            Err(EkCertError::KeyMismatch)
        }
    }
}

/// The trusted EK CA certificates (`ek_roots`), parsed once.
#[derive(Clone)]
pub struct EkRoots {
    certs: Vec<ParsedCert>,
}

impl fmt::Debug for EkRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subjects: Vec<String> = self
            .certs
            .iter()
            .map(|c| c.cert.tbs_certificate.subject.to_string())
            .collect();
        f.debug_struct("EkRoots")
            .field("subjects", &subjects)
            .finish()
    }
}

impl EkRoots {
    /// Parses a PEM bundle of CA certificates. Every `CERTIFICATE` block is trusted; text
    /// around the blocks (comments) and blocks of other kinds are ignored. A bundle with no
    /// certificate, bad PEM, or a block that is not a DER X.509 certificate is refused.
    pub fn from_pem(pem: &str) -> Result<EkRoots, EkCertError> {
        let mut certs = Vec::new();
        for (index, block) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            let der = block.map_err(|err| EkCertError::RootsPem {
                reason: err.to_string(),
            })?;
            let cert = ParsedCert::from_der(&der)
                .ok_or(EkCertError::RootsCertificate { index: index + 1 })?;
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(EkCertError::RootsEmpty);
        }
        Ok(EkRoots { certs })
    }

    /// How many certificates the bundle holds.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Always false: a bundle without certificates is refused by [`EkRoots::from_pem`].
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Checks that `certificate` is valid at `now` and chains to the bundle (see the module
    /// documentation for the rules).
    pub fn verify(&self, certificate: &EkCertificate, now: SystemTime) -> Result<(), EkCertError> {
        match certificate.cert.validity_at(now) {
            Validity::Valid => {}
            Validity::Expired => return Err(EkCertError::Expired),
            Validity::NotYetValid => return Err(EkCertError::NotYetValid),
        }
        self.verify_issued(&certificate.cert, now, 0, &mut Vec::new())
    }

    /// Finds a bundle certificate that issued `child` and checks the path above it.
    /// `visited` holds the bundle indices on the current path (no loops).
    fn verify_issued(
        &self,
        child: &ParsedCert,
        now: SystemTime,
        depth: usize,
        visited: &mut Vec<usize>,
    ) -> Result<(), EkCertError> {
        let issuer_name = &child.cert.tbs_certificate.issuer;
        let mut first_error = None;
        for (index, candidate) in self.certs.iter().enumerate() {
            if &candidate.cert.tbs_certificate.subject != issuer_name || visited.contains(&index) {
                continue;
            }
            let result = self.verify_link(child, candidate, index, now, depth, visited);
            match result {
                Ok(()) => return Ok(()),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        Err(first_error.unwrap_or(EkCertError::NotSignedByRoots))
    }

    /// Checks that bundle certificate `issuer` (at `index`) signed `child`, is a CA, is valid,
    /// and — unless it is the top of what the bundle holds — is itself issued within it.
    fn verify_link(
        &self,
        child: &ParsedCert,
        issuer: &ParsedCert,
        index: usize,
        now: SystemTime,
        depth: usize,
        visited: &mut Vec<usize>,
    ) -> Result<(), EkCertError> {
        let name = || short_name(&issuer.cert.tbs_certificate.subject.to_string());
        verify_signature(child, issuer)?;
        if !issuer.is_ca() {
            return Err(EkCertError::IssuerNotCa { issuer: name() });
        }
        match issuer.validity_at(now) {
            Validity::Valid => {}
            Validity::Expired | Validity::NotYetValid => {
                return Err(EkCertError::IssuerNotValid { issuer: name() })
            }
        }
        let tbs = &issuer.cert.tbs_certificate;
        let self_issued = tbs.subject == tbs.issuer;
        let parent_in_bundle = self
            .certs
            .iter()
            .any(|c| c.cert.tbs_certificate.subject == tbs.issuer);
        if self_issued || !parent_in_bundle {
            return Ok(());
        }
        if depth + 1 >= MAX_PATH_DEPTH {
            return Err(EkCertError::PathTooLong);
        }
        visited.push(index);
        let above = self.verify_issued(issuer, now, depth + 1, visited);
        visited.pop();
        above
    }
}

/// Why an EK certificate or an `ek_roots` bundle is refused. Display is a one-line reason fit
/// for an OAuth `error_description` (`invalid_ek_certificate`); it never quotes input beyond a
/// shortened CA name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EkCertError {
    /// The certificate is larger than any EK certificate.
    #[error("EK certificate is {len} bytes, more than the 16 KiB allowed")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The certificate is not a DER X.509 certificate.
    #[error("EK certificate is not a DER X.509 certificate")]
    NotDer,
    /// `ek_public` is not a DER SubjectPublicKeyInfo.
    #[error("ek_public is not a DER SubjectPublicKeyInfo")]
    EkPublicNotDer,
    /// The certificate certifies another key.
    #[error("EK certificate's key is not ek_public")]
    KeyMismatch,
    /// The certificate's validity ended.
    #[error("EK certificate expired")]
    Expired,
    /// The certificate's validity has not begun.
    #[error("EK certificate is not yet valid")]
    NotYetValid,
    /// No bundle certificate issued it.
    #[error("EK certificate is not signed by any configured ek_roots CA")]
    NotSignedByRoots,
    /// A bundle certificate with the issuer's name did not sign it.
    #[error("EK certificate's signature does not verify with the ek_roots CA \"{issuer}\"")]
    BadSignature {
        /// The CA's subject name (shortened).
        issuer: String,
    },
    /// The certificate is signed with an algorithm this module does not verify.
    #[error("EK certificate path uses an unsupported signature algorithm ({algorithm})")]
    UnsupportedAlgorithm {
        /// The signature algorithm's OID, or a description of the issuer key.
        algorithm: String,
    },
    /// The issuer in the bundle is not a CA.
    #[error("ek_roots certificate \"{issuer}\" is not a CA certificate")]
    IssuerNotCa {
        /// Its subject name (shortened).
        issuer: String,
    },
    /// The issuer in the bundle is outside its validity period.
    #[error("ek_roots CA \"{issuer}\" is expired or not yet valid")]
    IssuerNotValid {
        /// Its subject name (shortened).
        issuer: String,
    },
    /// The path through the bundle is too long (or loops).
    #[error("EK certificate path through ek_roots is longer than 8 CAs")]
    PathTooLong,
    /// The `ek_roots` bundle holds no certificate.
    #[error("ek_roots holds no PEM certificate")]
    RootsEmpty,
    /// The `ek_roots` bundle is not valid PEM.
    #[error("ek_roots is not a valid PEM bundle: {reason}")]
    RootsPem {
        /// What the PEM parser said.
        reason: String,
    },
    /// A certificate in the `ek_roots` bundle is not a DER X.509 certificate.
    #[error("ek_roots certificate #{index} is not a DER X.509 certificate")]
    RootsCertificate {
        /// Its position in the bundle, from 1.
        index: usize,
    },
}

/// A certificate with the exact DER bytes of its TBSCertificate, over which its issuer signed.
#[derive(Clone)]
struct ParsedCert {
    cert: Certificate,
    tbs_der: Vec<u8>,
}

enum Validity {
    Valid,
    Expired,
    NotYetValid,
}

impl ParsedCert {
    fn from_der(der: &[u8]) -> Option<ParsedCert> {
        let cert = Certificate::from_der(der).ok()?;
        let tbs_der = tbs_bytes(der)?.to_vec();
        Some(ParsedCert { cert, tbs_der })
    }

    fn validity_at(&self, now: SystemTime) -> Validity {
        let validity = &self.cert.tbs_certificate.validity;
        if now < validity.not_before.to_system_time() {
            Validity::NotYetValid
        } else if now > validity.not_after.to_system_time() {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    /// RFC 5280 §4.2.1.9 and §4.2.1.3, as far as they are present: basicConstraints cA and
    /// keyUsage keyCertSign. An extension that fails to decode counts as "not a CA".
    fn is_ca(&self) -> bool {
        let tbs = &self.cert.tbs_certificate;
        let basic_ok = match tbs.get::<BasicConstraints>() {
            Ok(Some((_, basic))) => basic.ca,
            Ok(None) => true,
            Err(_) => false,
        };
        let usage_ok = match tbs.get::<KeyUsage>() {
            Ok(Some((_, usage))) => usage.key_cert_sign(),
            Ok(None) => true,
            Err(_) => false,
        };
        basic_ok && usage_ok
    }
}

/// The raw TBSCertificate TLV of a certificate (its first element).
fn tbs_bytes(der: &[u8]) -> Option<&[u8]> {
    let mut reader = SliceReader::new(der).ok()?;
    reader
        .sequence(|seq| {
            let tbs = seq.tlv_bytes()?;
            seq.tlv_bytes()?; // signatureAlgorithm
            seq.tlv_bytes()?; // signatureValue
            Ok(tbs)
        })
        .ok()
}

/// Verifies `child`'s signature with `issuer`'s public key.
fn verify_signature(child: &ParsedCert, issuer: &ParsedCert) -> Result<(), EkCertError> {
    let algorithm = &child.cert.signature_algorithm;
    // RFC 5280 §4.1.1.2: the outer algorithm must equal the one inside the signed part.
    if algorithm != &child.cert.tbs_certificate.signature {
        return Err(EkCertError::UnsupportedAlgorithm {
            algorithm: "signatureAlgorithm differs from tbsCertificate.signature".to_owned(),
        });
    }
    let spki = &issuer.cert.tbs_certificate.subject_public_key_info;
    let verifier = ring_algorithm(algorithm.oid, spki)?;
    let key =
        spki.subject_public_key
            .as_bytes()
            .ok_or_else(|| EkCertError::UnsupportedAlgorithm {
                algorithm: "issuer key with unused bits".to_owned(),
            })?;
    let signature = child
        .cert
        .signature
        .as_bytes()
        .ok_or_else(|| EkCertError::BadSignature {
            issuer: short_name(&issuer.cert.tbs_certificate.subject.to_string()),
        })?;
    UnparsedPublicKey::new(verifier, key)
        .verify(&child.tbs_der, signature)
        .map_err(|_| EkCertError::BadSignature {
            issuer: short_name(&issuer.cert.tbs_certificate.subject.to_string()),
        })
}

/// The ring algorithm for a signature algorithm OID and the issuer's key type.
fn ring_algorithm(
    signature_oid: ObjectIdentifier,
    issuer_key: &SubjectPublicKeyInfoOwned,
) -> Result<&'static dyn VerificationAlgorithm, EkCertError> {
    let unsupported = || EkCertError::UnsupportedAlgorithm {
        algorithm: signature_oid.to_string(),
    };
    let key_oid = issuer_key.algorithm.oid;
    if key_oid == oid::RSA_ENCRYPTION {
        return match signature_oid {
            oid::SHA256_WITH_RSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA256),
            oid::SHA384_WITH_RSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA384),
            oid::SHA512_WITH_RSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA512),
            _ => Err(unsupported()),
        };
    }
    if key_oid == oid::EC_PUBLIC_KEY {
        let curve = issuer_key
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        return match (curve, signature_oid) {
            (Some(oid::P256), oid::ECDSA_WITH_SHA256) => Ok(&signature::ECDSA_P256_SHA256_ASN1),
            (Some(oid::P256), oid::ECDSA_WITH_SHA384) => Ok(&signature::ECDSA_P256_SHA384_ASN1),
            (Some(oid::P384), oid::ECDSA_WITH_SHA256) => Ok(&signature::ECDSA_P384_SHA256_ASN1),
            (Some(oid::P384), oid::ECDSA_WITH_SHA384) => Ok(&signature::ECDSA_P384_SHA384_ASN1),
            _ => Err(unsupported()),
        };
    }
    Err(EkCertError::UnsupportedAlgorithm {
        algorithm: format!("issuer key {key_oid}"),
    })
}

/// Whether two SubjectPublicKeyInfos hold the same key.
fn same_key(a: &SubjectPublicKeyInfoOwned, b: &SubjectPublicKeyInfoOwned) -> bool {
    if a.algorithm.oid != b.algorithm.oid {
        return false;
    }
    if a.algorithm.oid == oid::RSA_ENCRYPTION {
        // RSA parameters are NULL or (wrongly) absent; the key is the RSAPublicKey inside.
        let rsa_key = |spki: &SubjectPublicKeyInfoOwned| {
            let bits = spki.subject_public_key.as_bytes()?;
            let key = rsa::pkcs1::RsaPublicKey::from_der(bits).ok()?;
            Some((
                key.modulus.as_bytes().to_vec(),
                key.public_exponent.as_bytes().to_vec(),
            ))
        };
        return match (rsa_key(a), rsa_key(b)) {
            (Some(ka), Some(kb)) => ka == kb,
            _ => false,
        };
    }
    a.algorithm.parameters == b.algorithm.parameters && a.subject_public_key == b.subject_public_key
}

/// A distinguished name cut to a length fit for an error message.
fn short_name(name: &str) -> String {
    if name.chars().count() <= MAX_NAME_IN_MESSAGE {
        return name.to_owned();
    }
    let mut short: String = name.chars().take(MAX_NAME_IN_MESSAGE).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests;

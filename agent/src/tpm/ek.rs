//! The endorsement key: its public part as SubjectPublicKeyInfo DER, the fingerprint the server
//! registers devices by, and the EK certificate the manufacturer stored in NV.
//!
//! Hallmark identifies a device by its RSA 2048 EK (TCG EK Credential Profile 2.x, template
//! L-1 in §B.3.3): it is the EK nearly every TPM ships a certificate for (NV index 0x01c00002)
//! and the one swtpm_setup certifies. The key is read from its conventional persistent handle
//! 0x81010001 when it sits there with the profile's template, and otherwise recreated from the
//! endorsement seed with that template (TPM2_CreatePrimary is deterministic for a given seed
//! and template, TPM 2.0 Part 1 §27.4).

use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::ek::{create_ek_public_from_default_template, retrieve_ek_pubcert};
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::algorithm::AsymmetricAlgorithm;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::Public;

use super::error::is_missing_handle;
use super::{der, templates, Tpm, TpmError};

/// NV index of the RSA 2048 EK certificate (TCG EK Credential Profile §2.2.1.4).
pub const EK_CERT_NV_INDEX_RSA_2048: u32 = 0x01c0_0002;
/// NV index of the ECC NIST P-256 EK certificate (TCG EK Credential Profile §2.2.1.4).
pub const EK_CERT_NV_INDEX_ECC_P256: u32 = 0x01c0_000a;
/// Conventional persistent handle of the RSA EK (TCG Provisioning Guidance §7.8).
const EK_HANDLE_RSA: u32 = 0x8101_0001;
/// First NV index handle (TPM 2.0 Part 2 §7.4, TPM_HT_NV_INDEX).
const NV_INDEX_FIRST: u32 = 0x0100_0000;
/// RSA public exponent the TPM means by 0 (TPM 2.0 Part 2 §12.2.3.5).
const DEFAULT_RSA_EXPONENT: u32 = 65537;

/// The TPM's endorsement key (public part) and, where the manufacturer stored one, its
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndorsementKey {
    /// SubjectPublicKeyInfo DER of the EK (RFC 5280 §4.1.2.7).
    pub spki_der: Vec<u8>,
    /// The EK certificate (DER), read from NV index 0x01c00002, if present.
    pub certificate: Option<Vec<u8>>,
}

impl EndorsementKey {
    /// Lowercase hex SHA-256 of the SPKI DER: how the server knows this device.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.spki_der))
    }

    /// Whether the certificate certifies this key (compares the subjectPublicKey bits), or
    /// `None` if there is no certificate or it cannot be parsed.
    pub fn certificate_matches(&self) -> Option<bool> {
        let certified = der::certificate_public_key(self.certificate.as_deref()?)?;
        let ours = der::spki_public_key(&self.spki_der)?;
        Some(certified == ours)
    }
}

/// The RSA EK loaded for use: the persistent object at 0x81010001, or a transient copy
/// recreated from the endorsement seed. Give it back with [`Tpm::release_ek`].
pub(crate) enum LoadedEk {
    /// ESAPI's record of the persistent EK; closed, not flushed, after use.
    Persistent(ObjectHandle),
    /// A transient EK made by TPM2_CreatePrimary; flushed after use (swtpm has three object
    /// slots).
    Transient(KeyHandle),
}

impl LoadedEk {
    /// The handle to pass to TPM commands.
    pub(crate) fn key_handle(&self) -> KeyHandle {
        match self {
            LoadedEk::Persistent(object) => KeyHandle::from(*object),
            LoadedEk::Transient(key) => *key,
        }
    }
}

impl Tpm {
    /// Reads the endorsement key's public part and its certificate.
    pub fn endorsement_key(&mut self) -> Result<EndorsementKey, TpmError> {
        let (ek, public) = self.load_ek()?;
        self.release_ek(ek);
        Ok(EndorsementKey {
            spki_der: spki(&public)?,
            certificate: self.ek_certificate()?,
        })
    }

    /// Loads the RSA EK and returns it with its public area: the persistent one at
    /// 0x81010001 when it was made from the default template, else a transient one recreated
    /// from that template (same seed and template, same key: Part 1 §27.4). The caller gives
    /// it back with [`Tpm::release_ek`], on every path.
    pub(crate) fn load_ek(&mut self) -> Result<(LoadedEk, Public), TpmError> {
        let template = create_ek_public_from_default_template(AsymmetricAlgorithm::Rsa, None)
            .map_err(|source| TpmError::Structure {
                what: "EK template",
                source,
            })?;
        match self.open_persistent(EK_HANDLE_RSA)? {
            Some((object, public)) if templates::matches(&public, &template) => {
                Ok((LoadedEk::Persistent(object), public))
            }
            other => {
                if let Some((object, _)) = other {
                    self.close(object);
                }
                let (key, public) = self.create_ek(template)?;
                Ok((LoadedEk::Transient(key), public))
            }
        }
    }

    /// Releases an EK from [`Tpm::load_ek`]: flushes a transient one, closes ESAPI's record of
    /// a persistent one.
    pub(crate) fn release_ek(&mut self, ek: LoadedEk) {
        match ek {
            LoadedEk::Persistent(object) => self.close(object),
            LoadedEk::Transient(key) => {
                // A failed flush leaves an object that `flush_stale` reclaims at the next open.
                let _ = self
                    .ctx
                    .execute_without_session(|ctx| ctx.flush_context(ObjectHandle::from(key)));
            }
        }
    }

    fn create_ek(&mut self, template: Public) -> Result<(KeyHandle, Public), TpmError> {
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(
                self.fail("create the endorsement key", |source| TpmError::CreateEk {
                    source,
                }),
            )?;
        Ok((created.key_handle, created.out_public))
    }

    fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>, TpmError> {
        if !self
            .handles(NV_INDEX_FIRST)?
            .contains(&EK_CERT_NV_INDEX_RSA_2048)
        {
            return Ok(None);
        }
        let read = retrieve_ek_pubcert(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        );
        match read {
            // NV areas are often larger than the certificate and padded: keep the DER only.
            Ok(bytes) => Ok(Some(
                der::first_element(&bytes).map_or(bytes.clone(), <[u8]>::to_vec),
            )),
            Err(err) if is_missing_handle(&err) => Ok(None),
            Err(err) => Err(self.fail("read the EK certificate", |source| {
                TpmError::ReadEkCertificate {
                    index: EK_CERT_NV_INDEX_RSA_2048,
                    source,
                }
            })(err)),
        }
    }
}

/// SubjectPublicKeyInfo DER of an RSA or ECC public area.
fn spki(public: &Public) -> Result<Vec<u8>, TpmError> {
    match public {
        Public::Rsa {
            parameters, unique, ..
        } => {
            let exponent = match parameters.exponent().value() {
                0 => DEFAULT_RSA_EXPONENT,
                e => e,
            };
            Ok(der::rsa_spki(unique.value(), &exponent.to_be_bytes()))
        }
        Public::Ecc {
            parameters, unique, ..
        } => {
            use tss_esapi::interface_types::ecc::EccCurve;
            // Curve OIDs: RFC 5480 §2.1.1.1.
            let oid: &[u8] = match parameters.ecc_curve() {
                EccCurve::NistP256 => &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
                EccCurve::NistP384 => &[0x2b, 0x81, 0x04, 0x00, 0x22],
                other => {
                    return Err(TpmError::UnexpectedResponse {
                        what: format!("an endorsement key on unsupported curve {other:?}"),
                    })
                }
            };
            Ok(der::ec_spki(oid, unique.x().value(), unique.y().value()))
        }
        _ => Err(TpmError::UnexpectedResponse {
            what: "an endorsement key that is neither RSA nor ECC".to_owned(),
        }),
    }
}

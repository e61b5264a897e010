//! Device signing keys: ECC P-256 keys generated inside the TPM in two persistent slots, their
//! public JWK (RFC 7517/7518) with an RFC 7638 thumbprint, and ES256 signing (RFC 7518 §3.4).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, HashScheme, HashcheckTicket, MaxBuffer, Name, Public, PublicBuffer, Signature,
    SignatureScheme,
};
use tss_esapi::traits::Marshall as _;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use super::{templates, KeySlot, Tpm, TpmError};

/// A device signing key held in the TPM: its slot, public JWK and key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    /// The slot it lives in.
    pub slot: KeySlot,
    /// The public key as a JWK (kty EC, crv P-256), `kid` included.
    pub jwk: Jwk,
    /// The RFC 7638 thumbprint of the key, also the JWK's `kid`.
    pub kid: String,
    /// The key's attributes as the TPM reports them.
    pub attributes: KeyAttributes,
}

/// A public EC JWK (RFC 7518 §6.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jwk {
    /// Always `EC`.
    pub kty: String,
    /// Always `P-256`.
    pub crv: String,
    /// The x coordinate, base64url, 32 bytes.
    pub x: String,
    /// The y coordinate, base64url, 32 bytes.
    pub y: String,
    /// The key id: the RFC 7638 thumbprint.
    pub kid: String,
}

/// Object attributes of a key as read back from the TPM (TPM 2.0 Part 2 §8.3, TPMA_OBJECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyAttributes {
    /// The key cannot be duplicated to another TPM.
    pub fixed_tpm: bool,
    /// The key cannot be duplicated to another parent.
    pub fixed_parent: bool,
    /// The TPM generated the private key itself.
    pub sensitive_data_origin: bool,
    /// Usable with its auth value (empty).
    pub user_with_auth: bool,
    /// Exempt from dictionary-attack lockout.
    pub no_da: bool,
    /// A restricted key (signs only TPM-generated digests).
    pub restricted: bool,
    /// A decryption key.
    pub decrypt: bool,
    /// A signing key.
    pub sign: bool,
}

impl KeyAttributes {
    /// Whether the private key was born in the TPM and can never leave it (TPM 2.0 Part 1
    /// §23.2: an object with fixedTPM set cannot be duplicated).
    pub fn is_non_exportable(&self) -> bool {
        self.fixed_tpm && self.fixed_parent && self.sensitive_data_origin
    }
}

impl DeviceKey {
    /// The public JWK as JSON, with `alg: ES256` and `use: sig` for registration.
    pub fn jwk_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": self.jwk.kty,
            "crv": self.jwk.crv,
            "x": self.jwk.x,
            "y": self.jwk.y,
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        })
    }

    /// The public key as an uncompressed SEC 1 point (0x04 || x || y, 65 bytes).
    pub fn public_key_sec1(&self) -> Result<Vec<u8>, TpmError> {
        let mut point = Vec::with_capacity(65);
        point.push(0x04);
        for coordinate in [&self.jwk.x, &self.jwk.y] {
            let bytes =
                URL_SAFE_NO_PAD
                    .decode(coordinate)
                    .map_err(|_| TpmError::UnexpectedResponse {
                        what: "a JWK coordinate is not base64url".to_owned(),
                    })?;
            point.extend_from_slice(&bytes);
        }
        Ok(point)
    }

    fn from_public(slot: KeySlot, public: &Public) -> Result<DeviceKey, TpmError> {
        let Public::Ecc { unique, .. } = public else {
            return Err(TpmError::UnexpectedResponse {
                what: "a device key is not an ECC key".to_owned(),
            });
        };
        let x = left_pad_32(unique.x().value(), "x coordinate")?;
        let y = left_pad_32(unique.y().value(), "y coordinate")?;
        let x = URL_SAFE_NO_PAD.encode(x);
        let y = URL_SAFE_NO_PAD.encode(y);
        let kid = thumbprint(&x, &y);
        let a = public.object_attributes();
        Ok(DeviceKey {
            slot,
            jwk: Jwk {
                kty: "EC".to_owned(),
                crv: "P-256".to_owned(),
                x,
                y,
                kid: kid.clone(),
            },
            kid,
            attributes: KeyAttributes {
                fixed_tpm: a.fixed_tpm(),
                fixed_parent: a.fixed_parent(),
                sensitive_data_origin: a.sensitive_data_origin(),
                user_with_auth: a.user_with_auth(),
                no_da: a.no_da(),
                restricted: a.restricted(),
                decrypt: a.decrypt(),
                sign: a.sign_encrypt(),
            },
        })
    }
}

/// RFC 7638 §3.2: SHA-256 over the required members in lexicographic order, no whitespace.
fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Left-pads a big-endian integer the TPM may have sent without leading zeros to 32 bytes.
fn left_pad_32(value: &[u8], what: &str) -> Result<[u8; 32], TpmError> {
    let mut out = [0u8; 32];
    let Some(offset) = 32usize.checked_sub(value.len()) else {
        return Err(TpmError::UnexpectedResponse {
            what: format!("a P-256 {what} of {} bytes", value.len()),
        });
    };
    out[offset..].copy_from_slice(value);
    Ok(out)
}

impl Tpm {
    /// Creates a new P-256 signing key inside the TPM under the SRK and persists it in `slot`.
    /// Refuses if the slot already holds a key.
    pub fn create_device_key(&mut self, slot: KeySlot) -> Result<DeviceKey, TpmError> {
        if let Some(existing) = self.device_key(slot)? {
            return Err(TpmError::SlotOccupied {
                slot: existing.slot,
            });
        }
        let template = templates::device_key()?;
        let srk = self.srk;
        // No secret crosses the TCTI here (the TPM generates the key), so the SRK's empty
        // auth value goes in a plain password session.
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                let created = ctx.create(srk, template, None, None, None, None)?;
                ctx.load(srk, created.out_private, created.out_public)
            })
            .map_err(
                self.fail("create a device key", |source| TpmError::CreateKey {
                    slot,
                    source,
                }),
            )?;
        self.persist(created, slot.handle())?;
        self.device_key(slot)?
            .ok_or_else(|| TpmError::UnexpectedResponse {
                what: format!("slot {slot} is empty right after its key was persisted"),
            })
    }

    /// The key in `slot`, read back from the TPM, or `None` if the slot is empty.
    pub fn device_key(&mut self, slot: KeySlot) -> Result<Option<DeviceKey>, TpmError> {
        let Some((object, public)) = self.open_persistent(slot.handle())? else {
            return Ok(None);
        };
        self.close(object);
        check_device_key(slot, &public)?;
        DeviceKey::from_public(slot, &public).map(Some)
    }

    /// The marshalled TPM2B_PUBLIC (TPM 2.0 Part 2 §12.2.5: big-endian u16 size, then the
    /// TPMT_PUBLIC) of the key in `slot`, as TPM2_ReadPublic returns it: what the server
    /// vets and names for credential activation.
    pub fn key_public_area(&mut self, slot: KeySlot) -> Result<Vec<u8>, TpmError> {
        let (public, _) = self.read_device_key(slot)?;
        let buffer = PublicBuffer::try_from(public).map_err(|source| TpmError::Structure {
            what: "TPM2B_PUBLIC of a device key",
            source,
        })?;
        buffer.marshall().map_err(|source| TpmError::Structure {
            what: "TPM2B_PUBLIC of a device key",
            source,
        })
    }

    /// The Name of the key in `slot` as the TPM computes it (TPM 2.0 Part 1 §16: nameAlg ||
    /// H(TPMT_PUBLIC)), from TPM2_ReadPublic.
    pub fn key_name(&mut self, slot: KeySlot) -> Result<Vec<u8>, TpmError> {
        let (_, name) = self.read_device_key(slot)?;
        Ok(name.value().to_vec())
    }

    /// Reads the public area and Name of the Hallmark device key in `slot`.
    fn read_device_key(&mut self, slot: KeySlot) -> Result<(Public, Name), TpmError> {
        let Some((object, public)) = self.open_persistent(slot.handle())? else {
            return Err(TpmError::SlotEmpty { slot });
        };
        let read = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(KeyHandle::from(object)));
        self.close(object);
        check_device_key(slot, &public)?;
        let (public, name, _) =
            read.map_err(
                self.fail("read a device key", |source| TpmError::ReadPublic {
                    handle: slot.handle(),
                    source,
                }),
            )?;
        Ok((public, name))
    }

    /// Erases the key in `slot` and the record of when it was made; erasing an empty slot
    /// succeeds.
    pub fn erase_device_key(&mut self, slot: KeySlot) -> Result<(), TpmError> {
        let Some((object, public)) = self.open_persistent(slot.handle())? else {
            // A crash between evicting the key and forgetting its age leaves the record alone.
            return self.forget_key_made(slot);
        };
        if let Err(err) = check_device_key(slot, &public) {
            self.close(object);
            return Err(err);
        }
        self.evict(object, slot.handle())?;
        self.forget_key_made(slot)
    }

    /// Signs `message` with the key in `slot` as JWS ES256 does (RFC 7518 §3.4): ECDSA P-256
    /// over SHA-256(message), returned as r || s, each left-padded to 32 bytes.
    ///
    /// The TPM hashes the message (TPM2_Hash, Part 3 §15.4) and signs the digest with the
    /// hashcheck ticket it issued. Messages longer than the TPM's MAX_DIGEST_BUFFER (1024
    /// bytes) are hashed here and signed with a null ticket, which TPM2_Sign accepts for an
    /// unrestricted key (Part 3 §20.2); tss-esapi 7.7 has no hash-sequence commands.
    pub fn sign_es256(&mut self, slot: KeySlot, message: &[u8]) -> Result<[u8; 64], TpmError> {
        let Some((object, public)) = self.open_persistent(slot.handle())? else {
            return Err(TpmError::SlotEmpty { slot });
        };
        let result = self.sign_with(slot, object, &public, message);
        self.close(object);
        result
    }

    fn sign_with(
        &mut self,
        slot: KeySlot,
        object: ObjectHandle,
        public: &Public,
        message: &[u8],
    ) -> Result<[u8; 64], TpmError> {
        check_device_key(slot, public)?;
        let (digest, ticket) = match MaxBuffer::try_from(message) {
            Ok(buffer) => self
                .ctx
                .execute_without_session(|ctx| {
                    ctx.hash(buffer, HashingAlgorithm::Sha256, Hierarchy::Owner)
                })
                .map_err(self.fail("hash a message", |source| TpmError::Hash { source }))?,
            Err(_) => {
                let structure = |source| TpmError::Structure {
                    what: "digest",
                    source,
                };
                let digest =
                    Digest::try_from(Sha256::digest(message).to_vec()).map_err(structure)?;
                let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
                    tag: TPM2_ST_HASHCHECK,
                    hierarchy: TPM2_RH_NULL,
                    digest: Default::default(),
                })
                .map_err(structure)?;
                (digest, ticket)
            }
        };
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let signature = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.sign(KeyHandle::from(object), digest, scheme, ticket)
            })
            .map_err(self.fail("sign", |source| TpmError::Sign { slot, source }))?;
        let Signature::EcDsa(ecdsa) = signature else {
            return Err(TpmError::UnexpectedResponse {
                what: "the TPM returned a non-ECDSA signature".to_owned(),
            });
        };
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&left_pad_32(ecdsa.signature_r().value(), "signature r")?);
        out[32..].copy_from_slice(&left_pad_32(ecdsa.signature_s().value(), "signature s")?);
        Ok(out)
    }
}

/// Refuses to treat anything but a Hallmark device key as one.
pub(crate) fn check_device_key(slot: KeySlot, public: &Public) -> Result<(), TpmError> {
    let template = templates::device_key()?;
    let is_p256 = matches!(
        public,
        Public::Ecc { parameters, .. } if parameters.ecc_curve() == EccCurve::NistP256
    );
    if is_p256 && templates::matches(public, &template) {
        Ok(())
    } else {
        Err(TpmError::HandleOccupied {
            handle: slot.handle(),
            what: templates::describe(public),
            expected: "ECC P-256 device signing key",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_is_sha256_of_the_ordered_required_members() {
        // RFC 7638 §3.2/§3.3: members crv, kty, x, y in that order, no whitespace.
        let kid = thumbprint("AAAA", "BBBB");
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(
            br#"{"crv":"P-256","kty":"EC","x":"AAAA","y":"BBBB"}"#,
        ));
        assert_eq!(kid, expected);
        assert_eq!(kid.len(), 43);
    }

    #[test]
    fn pads_short_integers() {
        let padded = left_pad_32(&[1, 2], "r").unwrap();
        assert_eq!(&padded[30..], &[1, 2]);
        assert!(padded[..30].iter().all(|b| *b == 0));
        assert!(left_pad_32(&[0u8; 33], "r").is_err());
    }
}

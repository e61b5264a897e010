//! TPM2_MakeCredential in software (TPM 2.0 Part 1 §24, Part 3 §12.6): a credential that only
//! the TPM holding a given EK can recover, and only while an object with a given Name is loaded
//! in it.
//!
//! The EK is an RSA-2048 key made from the TCG default template (EK Credential Profile §B.3.3,
//! template L-1): nameAlg SHA-256 and symmetric AES-128-CFB, which fix every algorithm below.
//!
//! ```text
//! seed           = 32 random bytes                      (Part 1 §B.10.4: nameAlg's digest size)
//! encryptedSecret= RSA-OAEP(SHA-256, label "IDENTITY\0", EK, seed)         (Part 1 §B.10.4)
//! symKey         = KDFa(SHA-256, seed, "STORAGE", name, "", 128)          (Part 1 §24.4)
//! encIdentity    = AES-128-CFB(symKey, IV = 0, TPM2B_DIGEST(credential))  (Part 1 §24.4)
//! hmacKey        = KDFa(SHA-256, seed, "INTEGRITY", "", "", 256)          (Part 1 §24.5)
//! outerHMAC      = HMAC-SHA-256(hmacKey, encIdentity || name)             (Part 1 §24.5)
//! idObject       = TPM2B_DIGEST(outerHMAC) || encIdentity                 (Part 2 §11.4.5)
//! ```

use aes::Aes128;
use cfb_mode::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::{Hmac, Mac as _};
use rand::rngs::OsRng;
use rand::RngCore as _;
use rsa::pkcs8::spki::SubjectPublicKeyInfoRef;
use rsa::traits::PublicKeyParts as _;
use rsa::{Oaep, RsaPublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::tpm_public::NAME_LEN;

/// The longest credential: TPM2_MakeCredential refuses one longer than the digest of the
/// EK's nameAlg, SHA-256 (Part 3 §12.6.1, TPM_RC_SIZE).
pub const MAX_CREDENTIAL: usize = 32;

/// The OAEP label of a credential's seed, NUL included (Part 1 §B.10.4 and Annex B.4: the
/// label is the string "IDENTITY" with its terminating octet).
pub const IDENTITY_LABEL: &str = "IDENTITY\0";

/// Size of the seed: the digest size of the EK's nameAlg (SHA-256).
const SEED_LEN: usize = 32;
/// Size of an RSA-2048 modulus, in bits.
const EK_BITS: usize = 2048;

/// A credential-activation challenge for one object in one TPM.
///
/// Both fields are the *contents* of their TPM2B (no leading u16 size): exactly what
/// tss-esapi's `IdObject::try_from(Vec<u8>)` and `EncryptedSecret::try_from(Vec<u8>)` take,
/// and what `TPM2_ActivateCredential` expects once the TSS adds the size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The contents of the TPM2B_ID_OBJECT: a TPM2B_DIGEST holding the outer HMAC (u16 size
    /// 32, then 32 bytes), then the encrypted TPM2B_DIGEST of the credential (2 + its length).
    pub credential_blob: Vec<u8>,
    /// The contents of the TPM2B_ENCRYPTED_SECRET: the seed RSA-OAEP-encrypted to the EK
    /// (256 bytes for RSA-2048).
    pub encrypted_secret: Vec<u8>,
}

/// Makes a credential-activation challenge: `credential` (1 to 32 bytes, normally fresh
/// random bytes the server remembers) protected for the TPM whose RSA-2048 EK is
/// `ek_spki_der` (SubjectPublicKeyInfo DER) and bound to the object named `object_name`
/// (34 bytes: 0x000B || SHA-256 of its TPMT_PUBLIC, see [`super::tpm_public::TpmPublic::name`]).
pub fn make_credential(
    ek_spki_der: &[u8],
    object_name: &[u8],
    credential: &[u8],
) -> Result<Challenge, CredentialError> {
    let mut seed = Zeroizing::new([0u8; SEED_LEN]);
    OsRng
        .try_fill_bytes(seed.as_mut())
        .map_err(|_| CredentialError::Random)?;
    make_credential_with_seed(ek_spki_der, object_name, credential, &seed)
}

/// [`make_credential`] with a chosen seed, for known-answer and differential tests. Never
/// use it outside tests: the seed is the whole secret of the challenge. (The OAEP encryption
/// of the seed still draws fresh randomness, so `encrypted_secret` differs between calls;
/// `credential_blob` is a function of the inputs.)
#[doc(hidden)]
pub fn make_credential_with_seed(
    ek_spki_der: &[u8],
    object_name: &[u8],
    credential: &[u8],
    seed: &[u8; SEED_LEN],
) -> Result<Challenge, CredentialError> {
    let ek = ek_public_key(ek_spki_der)?;
    if object_name.len() != NAME_LEN || object_name[..2] != [0x00, 0x0B] {
        return Err(CredentialError::ObjectName {
            len: object_name.len(),
        });
    }
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL {
        return Err(CredentialError::CredentialSize {
            len: credential.len(),
        });
    }

    // Secret sharing with an RSA key (Part 1 §B.10.4).
    let encrypted_secret = ek
        .encrypt(
            &mut OsRng,
            Oaep::new_with_label::<Sha256, _>(IDENTITY_LABEL),
            seed,
        )
        .map_err(|source| CredentialError::Encrypt { source })?;

    // Confidentiality: the credential as a TPM2B_DIGEST, encrypted with a key only the seed
    // and the Name give (Part 1 §24.4).
    let sym_key = kdfa_sha256(seed, "STORAGE", object_name, &[], 128)?;
    let mut enc_identity = Zeroizing::new(Vec::with_capacity(2 + credential.len()));
    // `credential.len()` ≤ 32 was checked above.
    enc_identity.extend_from_slice(&(credential.len() as u16).to_be_bytes());
    enc_identity.extend_from_slice(credential);
    let iv = [0u8; 16];
    cfb_mode::Encryptor::<Aes128>::new_from_slices(&sym_key, &iv)
        .map_err(|_| CredentialError::Internal {
            what: "AES-128-CFB rejected a 16-byte key",
        })?
        .encrypt(&mut enc_identity);

    // Integrity: an HMAC over the ciphertext and the Name (Part 1 §24.5), so the TPM detects
    // a blob made for another object or altered on the way.
    let hmac_key = kdfa_sha256(seed, "INTEGRITY", &[], &[], 256)?;
    let mut mac = hmac_sha256(&hmac_key)?;
    mac.update(&enc_identity);
    mac.update(object_name);
    let outer_hmac = mac.finalize().into_bytes();

    let mut credential_blob = Vec::with_capacity(2 + outer_hmac.len() + enc_identity.len());
    credential_blob.extend_from_slice(&(outer_hmac.len() as u16).to_be_bytes());
    credential_blob.extend_from_slice(&outer_hmac);
    credential_blob.extend_from_slice(&enc_identity);
    Ok(Challenge {
        credential_blob,
        encrypted_secret,
    })
}

/// Why a challenge could not be made. Display is one line, fit for a log or an
/// `error_description`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The registered EK is not a DER SubjectPublicKeyInfo.
    #[error("the registered EK public key is not a DER SubjectPublicKeyInfo")]
    EkNotDer,
    /// The registered EK is not an RSA key.
    #[error("the registered EK is not an RSA key (algorithm {algorithm}); only RSA-2048 EKs are supported")]
    EkNotRsa {
        /// The SPKI's algorithm OID.
        algorithm: String,
    },
    /// The registered EK is an RSA key of another size.
    #[error("the registered EK is RSA-{bits}; only RSA-2048 EKs are supported")]
    EkKeySize {
        /// Its modulus size in bits.
        bits: usize,
    },
    /// The object Name is not a SHA-256 Name.
    #[error("an object Name must be 34 bytes starting 0x000B (SHA-256), not {len} bytes")]
    ObjectName {
        /// Its length.
        len: usize,
    },
    /// The credential is empty or longer than a SHA-256 digest.
    #[error("a credential must be 1 to 32 bytes, not {len}")]
    CredentialSize {
        /// Its length.
        len: usize,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// RSA-OAEP encryption of the seed failed.
    #[error("cannot encrypt the credential seed to the EK")]
    Encrypt {
        /// The RSA error.
        source: rsa::Error,
    },
    /// A primitive refused a parameter that is fixed in this module (a bug).
    #[error("internal error: {what}")]
    Internal {
        /// What was refused.
        what: &'static str,
    },
}

/// Whether `spki_der` is an EK challenges can be made against (an RSA-2048
/// SubjectPublicKeyInfo), so that a registration can be refused before any rotation needs it.
pub fn check_ek_public(spki_der: &[u8]) -> Result<(), CredentialError> {
    ek_public_key(spki_der).map(|_| ())
}

/// Parses and checks the EK: an RSA-2048 SubjectPublicKeyInfo.
fn ek_public_key(spki_der: &[u8]) -> Result<RsaPublicKey, CredentialError> {
    let spki =
        SubjectPublicKeyInfoRef::try_from(spki_der).map_err(|_| CredentialError::EkNotDer)?;
    if spki.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
        return Err(CredentialError::EkNotRsa {
            algorithm: spki.algorithm.oid.to_string(),
        });
    }
    let key = RsaPublicKey::try_from(spki).map_err(|_| CredentialError::EkNotDer)?;
    let bits = key.n().bits();
    if bits != EK_BITS {
        return Err(CredentialError::EkKeySize { bits });
    }
    Ok(key)
}

/// KDFa with SHA-256 (TPM 2.0 Part 1 §11.4.10.2): SP 800-108 counter mode over HMAC,
/// `K(i) = HMAC(key, [i]₃₂ || label || 0x00 || contextU || contextV || [bits]₃₂)`, the
/// outputs concatenated and cut to `bits` (leading bits of the first octet cleared when
/// `bits` is not a multiple of 8).
pub(crate) fn kdfa_sha256(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Result<Zeroizing<Vec<u8>>, CredentialError> {
    let len = bits.div_ceil(8) as usize;
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut mac = hmac_sha256(key)?;
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        // The label is a NUL-terminated string: add the NUL unless it already ends in one.
        if !label.ends_with('\0') {
            mac.update(&[0]);
        }
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(len);
    if bits % 8 != 0 {
        if let Some(first) = out.first_mut() {
            *first &= (1u8 << (bits % 8)) - 1;
        }
    }
    Ok(out)
}

fn hmac_sha256(key: &[u8]) -> Result<Hmac<Sha256>, CredentialError> {
    <Hmac<Sha256> as hmac::Mac>::new_from_slice(key).map_err(|_| CredentialError::Internal {
        what: "HMAC-SHA-256 rejected its key",
    })
}

#[cfg(test)]
mod tests;

//! The public-area templates of every object Hallmark creates, and the checks that an object
//! found at one of Hallmark's handles was made from them.

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme,
    KeyedHashScheme, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SymmetricDefinitionObject,
};

use super::TpmError;

/// The storage root key: TCG TPM v2.0 Provisioning Guidance §7.5.1, ECC NIST P-256 template —
/// a restricted decryption (storage) key with fixedTPM, fixedParent, sensitiveDataOrigin,
/// userWithAuth, noDA, AES-128-CFB for its children, an empty policy and a zero-filled unique
/// field, so that any tool following the guidance derives the same key from the owner seed.
pub(crate) fn srk() -> Result<Public, TpmError> {
    let fail = |source| TpmError::Structure {
        what: "SRK template",
        source,
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(fail)?;
    let parameters = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
        .with_ecc_scheme(EccScheme::Null)
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_decryption_key(true)
        .with_restricted(true)
        .build()
        .map_err(fail)?;
    let zeros = EccParameter::try_from(vec![0u8; 32]).map_err(fail)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::default())
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::new(zeros.clone(), zeros))
        .build()
        .map_err(fail)
}

/// A sealed data object (TPM 2.0 Part 1 §27.2.2 "Sealed Data Object"): a KEYEDHASH object
/// with neither sign nor decrypt, whose sensitive data is ours (so no sensitiveDataOrigin),
/// bound to this TPM and parent (fixedTPM, fixedParent), usable with its empty auth value
/// (userWithAuth) and exempt from dictionary-attack counting (noDA) so that a bug cannot
/// lock the TPM out.
pub(crate) fn sealed_data() -> Result<Public, TpmError> {
    let fail = |source| TpmError::Structure {
        what: "sealed data template",
        source,
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .build()
        .map_err(fail)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(fail)
}

/// A device signing key: an unrestricted ECDSA P-256/SHA-256 signing key generated inside the
/// TPM (sensitiveDataOrigin) that can never leave it (fixedTPM, fixedParent: TPM 2.0 Part 1
/// §23.2 — not duplicable), usable with its empty auth value, noDA, and not a decryption key.
pub(crate) fn device_key() -> Result<Public, TpmError> {
    let fail = |source| TpmError::Structure {
        what: "device key template",
        source,
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_sign_encrypt(true)
        .build()
        .map_err(fail)?;
    let parameters = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(true)
        .build()
        .map_err(fail)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::default())
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(fail)
}

/// Whether `found` was made from `template`: same type, name algorithm, attributes, policy and
/// parameters (the unique field is the key itself and differs).
pub(crate) fn matches(found: &Public, template: &Public) -> bool {
    match (found, template) {
        (
            Public::Ecc {
                object_attributes: a1,
                name_hashing_algorithm: n1,
                auth_policy: p1,
                parameters: q1,
                ..
            },
            Public::Ecc {
                object_attributes: a2,
                name_hashing_algorithm: n2,
                auth_policy: p2,
                parameters: q2,
                ..
            },
        ) => a1 == a2 && n1 == n2 && p1 == p2 && q1 == q2,
        (
            Public::KeyedHash {
                object_attributes: a1,
                name_hashing_algorithm: n1,
                auth_policy: p1,
                parameters: q1,
                ..
            },
            Public::KeyedHash {
                object_attributes: a2,
                name_hashing_algorithm: n2,
                auth_policy: p2,
                parameters: q2,
                ..
            },
        ) => a1 == a2 && n1 == n2 && p1 == p2 && q1 == q2,
        (
            Public::Rsa {
                object_attributes: a1,
                name_hashing_algorithm: n1,
                auth_policy: p1,
                parameters: q1,
                ..
            },
            Public::Rsa {
                object_attributes: a2,
                name_hashing_algorithm: n2,
                auth_policy: p2,
                parameters: q2,
                ..
            },
        ) => a1 == a2 && n1 == n2 && p1 == p2 && q1 == q2,
        _ => false,
    }
}

/// A short description of an object for error messages.
pub(crate) fn describe(public: &Public) -> String {
    let attributes = public.object_attributes();
    let kind = match public {
        Public::Rsa { .. } => "an RSA key",
        Public::Ecc { .. } => "an ECC key",
        Public::KeyedHash { .. } if attributes.sign_encrypt() => "an HMAC key",
        Public::KeyedHash { .. } => "a sealed data object",
        Public::SymCipher { .. } => "a symmetric key",
    };
    let mut uses = Vec::new();
    if attributes.restricted() {
        uses.push("restricted");
    }
    if attributes.decrypt() {
        uses.push("decrypt");
    }
    if attributes.sign_encrypt() {
        uses.push("sign");
    }
    if uses.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({})", uses.join(", "))
    }
}

//! Errors of the TPM module, in words an operator can act on.

use tss_esapi::constants::{Tss2ResponseCode, Tss2ResponseCodeKind};

use super::KeySlot;

/// What went wrong talking to the TPM.
///
/// The first variants are diagnoses (the TPM is unreachable, locked out, holds something
/// else); the rest name the TPM operation that failed and carry the TSS error as `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string cannot be used.
    #[error("unsupported TCTI `{tcti}`: {reason}")]
    UnsupportedTcti {
        /// The TCTI string as given.
        tcti: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Nothing answers at the TCTI: no simulator running, no TPM device, or no permission.
    #[error(
        "no TPM answers at `{tcti}`: check that the simulator runs, or that the TPM device \
         exists and this user may open it (on Linux: /dev/tpmrm0 and membership of group `tss`)"
    )]
    Unreachable {
        /// The TCTI string.
        tcti: String,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// The TPM lacks something that provisioning puts there.
    #[error("the TPM is not provisioned: {missing}")]
    NotProvisioned {
        /// What is missing, e.g. "no factory secret and no device key".
        missing: String,
    },
    /// A persistent handle Hallmark uses holds an object Hallmark did not put there.
    #[error(
        "TPM persistent handle {handle:#010x} holds {what}, not Hallmark's {expected}; refusing \
         to use or overwrite it (if nothing else needs it: tpm2_evictcontrol -C o -c {handle:#010x})"
    )]
    HandleOccupied {
        /// The persistent handle.
        handle: u32,
        /// What is there.
        what: String,
        /// What Hallmark expects there.
        expected: &'static str,
    },
    /// The TPM is in dictionary-attack lockout (TPM 2.0 Part 1 §19.8).
    #[error(
        "the TPM is in dictionary-attack lockout and refused to {operation}: wait for the \
         lockout interval to pass or have the TPM owner reset it (tpm2_dictionarylockout -c)"
    )]
    Lockout {
        /// What was refused.
        operation: &'static str,
    },
    /// The owner hierarchy has an authorization value; Hallmark expects the empty one that
    /// the TCG provisioning guidance leaves after TPM2_Clear.
    #[error(
        "the TPM refused owner authorization to {operation}: its owner hierarchy has a \
         password, and Hallmark needs it empty"
    )]
    OwnerAuthorization {
        /// What was refused.
        operation: &'static str,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// The TPM ran out of object or session memory (a crashed client without a resource
    /// manager leaks objects).
    #[error(
        "the TPM has no free object or session slots and refused to {operation}; on hardware \
         use /dev/tpmrm0 (the kernel resource manager), or restart the simulator"
    )]
    OutOfMemory {
        /// What was refused.
        operation: &'static str,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// A factory secret is already sealed in the TPM.
    #[error("a factory secret is already sealed in this TPM; erase it before sealing another")]
    FactorySecretPresent,
    /// The secret to seal is empty or larger than a sealed data object holds.
    #[error("a sealed secret must be 1 to {max} bytes, not {len}")]
    SecretSize {
        /// Its length.
        len: usize,
        /// The maximum (MAX_SYM_DATA, TPM 2.0 Part 2 §11.1.14).
        max: usize,
    },
    /// The key slot holds no device key.
    #[error("device key slot {slot} is empty")]
    SlotEmpty {
        /// The slot.
        slot: KeySlot,
    },
    /// The key slot already holds a device key.
    #[error("device key slot {slot} already holds a key; erase it before creating another")]
    SlotOccupied {
        /// The slot.
        slot: KeySlot,
    },
    /// A sealed blob is malformed.
    #[error("the sealed blob is malformed: {reason}")]
    BlobFormat {
        /// What is wrong.
        reason: &'static str,
    },
    /// A sealed blob's data did not decrypt: it was altered, or sealed by another TPM.
    #[error("the sealed blob does not decrypt: it was altered or sealed by another TPM")]
    BlobDecrypt,
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The TPM answered with something that cannot be right.
    #[error("unexpected answer from the TPM: {what}")]
    UnexpectedResponse {
        /// What was unexpected.
        what: String,
    },
    /// Listing or flushing the TPM's loaded objects failed.
    #[error("cannot flush stale objects from the TPM")]
    FlushStale {
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Listing the TPM's persistent handles failed.
    #[error("cannot list the TPM's persistent handles")]
    ListHandles {
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Reading an object's public area failed.
    #[error("cannot read the public area at handle {handle:#010x}")]
    ReadPublic {
        /// The handle.
        handle: u32,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Creating the storage root key failed.
    #[error("cannot create the storage root key")]
    CreateSrk {
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Making an object persistent (TPM2_EvictControl) failed.
    #[error("cannot persist an object at handle {handle:#010x}")]
    Persist {
        /// The handle.
        handle: u32,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Reading or writing the NV index that records when a device key was made failed.
    #[error("cannot use the key age record at NV index {index:#010x}")]
    KeyAge {
        /// The NV index.
        index: u32,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Removing a persistent object (TPM2_EvictControl) failed.
    #[error("cannot erase the object at handle {handle:#010x}")]
    Erase {
        /// The handle.
        handle: u32,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Starting an SRK-salted session failed.
    #[error("cannot start an encrypted session with the TPM")]
    StartSession {
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Sealing data under the SRK failed.
    #[error("cannot seal data in the TPM")]
    Seal {
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Unsealing data failed.
    #[error("cannot unseal data from the TPM")]
    Unseal {
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Creating a device key failed.
    #[error("cannot create a device key in slot {slot}")]
    CreateKey {
        /// The slot.
        slot: KeySlot,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Hashing the message to sign failed.
    #[error("the TPM cannot hash the message to sign")]
    Hash {
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Signing failed.
    #[error("the TPM cannot sign with the device key in slot {slot}")]
    Sign {
        /// The slot.
        slot: KeySlot,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Creating the endorsement key failed.
    #[error("cannot create the endorsement key")]
    CreateEk {
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// Reading the EK certificate from NV failed.
    #[error("cannot read the EK certificate from NV index {index:#010x}")]
    ReadEkCertificate {
        /// The NV index.
        index: u32,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// The TPM refused to activate a credential: the challenge's integrity check failed or
    /// its seed did not decrypt (Part 3 §12.5: TPM_RC_INTEGRITY, TPM_RC_VALUE, TPM_RC_SIZE on
    /// credentialBlob or secret; libtpms says TPM_RC_FAILURE for a seed that does not decrypt
    /// and stays healthy). It was made for another key or another TPM's EK, or altered.
    #[error(
        "the TPM could not activate the credential for the key in slot {slot}: integrity check \
         failed (the challenge was made for another key or another TPM, or was altered)"
    )]
    CredentialRejected {
        /// The slot of the key the credential was to be activated for.
        slot: KeySlot,
    },
    /// TPM2_ActivateCredential failed for another reason.
    #[error("cannot activate a credential with the device key in slot {slot}")]
    ActivateCredential {
        /// The slot.
        slot: KeySlot,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// TPM2_PolicySecret with the endorsement hierarchy failed, so the EK cannot be used.
    #[error(
        "the TPM refused to authorize use of the endorsement key (TPM2_PolicySecret with the \
         endorsement hierarchy, whose auth value Hallmark needs empty)"
    )]
    EndorsementPolicy {
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// A TSS structure could not be built or converted (a bug, or a TPM answer out of range).
    #[error("cannot build a TPM structure: {what}")]
    Structure {
        /// Which structure.
        what: &'static str,
        /// The TSS error.
        source: tss_esapi::Error,
    },
}

/// The TSS layer of a response code: 0 is the TPM itself; TCTI errors (the connection) are
/// layer 10 (TSS 2.0 Overview and Common Structures §6.1.2).
fn layer(code: Tss2ResponseCode) -> u32 {
    let raw = match code {
        Tss2ResponseCode::Success => 0,
        Tss2ResponseCode::FormatZero(rc) => rc.0,
        Tss2ResponseCode::FormatOne(rc) => rc.0,
    };
    (raw >> 16) & 0xff
}

const TPM_LAYER: u32 = 0;
const TCTI_LAYER: u32 = 10;

/// Turns a failed TSS call into the most useful [`TpmError`]: a lost connection, a lockout, a
/// refused owner authorization or exhausted TPM memory are diagnosed as such; anything else
/// becomes the operation's own variant, built by `op`.
pub(crate) fn diagnose(
    tcti: &str,
    operation: &'static str,
    source: tss_esapi::Error,
    op: impl FnOnce(tss_esapi::Error) -> TpmError,
) -> TpmError {
    let tss_esapi::Error::Tss2Error(code) = source else {
        return op(source);
    };
    match layer(code) {
        TCTI_LAYER => TpmError::Unreachable {
            tcti: tcti.to_owned(),
            source,
        },
        TPM_LAYER => match code.kind() {
            Some(Tss2ResponseCodeKind::Lockout) => TpmError::Lockout { operation },
            Some(Tss2ResponseCodeKind::ObjectMemory)
            | Some(Tss2ResponseCodeKind::SessionMemory)
            | Some(Tss2ResponseCodeKind::ObjectHandles)
            | Some(Tss2ResponseCodeKind::SessionHandles) => {
                TpmError::OutOfMemory { operation, source }
            }
            _ => op(source),
        },
        _ => op(source),
    }
}

/// Whether `err` is the TPM saying the handle does not exist (TPM_RC_HANDLE).
pub(crate) fn is_missing_handle(err: &tss_esapi::Error) -> bool {
    match err {
        tss_esapi::Error::Tss2Error(code) => {
            layer(*code) == TPM_LAYER && code.kind() == Some(Tss2ResponseCodeKind::Handle)
        }
        tss_esapi::Error::WrapperError(_) => false,
    }
}

/// Whether `err` is a failed authorization (TPM_RC_AUTH_FAIL or TPM_RC_BAD_AUTH).
pub(crate) fn is_bad_auth(err: &tss_esapi::Error) -> bool {
    match err {
        tss_esapi::Error::Tss2Error(code) => {
            layer(*code) == TPM_LAYER
                && matches!(
                    code.kind(),
                    Some(Tss2ResponseCodeKind::AuthFail) | Some(Tss2ResponseCodeKind::BadAuth)
                )
        }
        tss_esapi::Error::WrapperError(_) => false,
    }
}

/// Whether `err` is the TPM refusing a credential challenge itself: a format-one error on
/// parameter 1 (credentialBlob) or 2 (secret) of TPM2_ActivateCredential (Part 2 §6.6.3:
/// bit 7 format one, bit 6 parameter, bits 8–11 its number).
pub(crate) fn is_credential_rejected(err: &tss_esapi::Error) -> bool {
    let tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) = err else {
        return false;
    };
    let raw = rc.0;
    let is_parameter = raw & 0x040 != 0;
    let number = (raw >> 8) & 0xf;
    layer(Tss2ResponseCode::FormatOne(*rc)) == TPM_LAYER
        && is_parameter
        && (number == 1 || number == 2)
}

/// Whether `err` is the TPM's own TPM_RC_FAILURE (Part 2 §6.6.2: format zero, 0x101).
pub(crate) fn is_tpm_failure(err: &tss_esapi::Error) -> bool {
    match err {
        tss_esapi::Error::Tss2Error(code) => {
            layer(*code) == TPM_LAYER && code.kind() == Some(Tss2ResponseCodeKind::Failure)
        }
        tss_esapi::Error::WrapperError(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tss(rc: u32) -> tss_esapi::Error {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc))
    }

    fn other(source: tss_esapi::Error) -> TpmError {
        TpmError::Sign {
            slot: KeySlot::A,
            source,
        }
    }

    #[test]
    fn diagnoses_what_an_operator_can_act_on() {
        // TPM_RC_LOCKOUT (Part 2 §6.6.3: RC_WARN + 0x021).
        let lockout = diagnose("t", "sign", tss(0x921), other);
        assert!(matches!(lockout, TpmError::Lockout { operation: "sign" }));
        assert!(lockout.to_string().contains("lockout"));
        // TPM_RC_OBJECT_MEMORY (RC_WARN + 0x002).
        let memory = diagnose("t", "sign", tss(0x902), other);
        assert!(matches!(memory, TpmError::OutOfMemory { .. }));
        // TSS2_TCTI_RC_IO_ERROR: the connection, not the TPM.
        let io = diagnose("swtpm:port=1", "sign", tss(0x000a_000a), other);
        assert!(matches!(io, TpmError::Unreachable { ref tcti, .. } if tcti == "swtpm:port=1"));
        // TPM_RC_HANDLE for handle 1 (RC_FMT1 + 0x00B + TPM_RC_1).
        assert!(is_missing_handle(&tss(0x18b)));
        // An ESAPI-layer error with the same low bits is not the TPM's.
        assert!(!is_missing_handle(&tss(0x0007_018b)));
        let signing = diagnose("t", "sign", tss(0x1df), other);
        assert!(matches!(signing, TpmError::Sign { .. }));
        // TPM_RC_INTEGRITY on parameter 1 and TPM_RC_VALUE on parameter 2 are a refused
        // credential; the same on a handle, or from the ESAPI layer, are not.
        assert!(is_credential_rejected(&tss(0x1df)));
        assert!(is_credential_rejected(&tss(0x2c4)));
        assert!(!is_credential_rejected(&tss(0x19f)));
        assert!(!is_credential_rejected(&tss(0x0007_01df)));
        assert!(!is_credential_rejected(&tss(0x3c4)));
        // TPM_RC_FAILURE (RC_VER1 + 0x001), not the same code from another layer.
        assert!(is_tpm_failure(&tss(0x101)));
        assert!(!is_tpm_failure(&tss(0x0007_0101)));
    }
}

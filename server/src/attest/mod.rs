//! Hardware attestation of device keys: vetting a key's TPM public area, software
//! TPM2_MakeCredential against a device's registered endorsement key, and checks of EK
//! certificates against the operator's TPM manufacturer CAs (TPM 2.0 Part 1 §24; TCG EK
//! Credential Profile).
//!
//! Pure building blocks: no storage, no HTTP, no clock of their own.

pub mod credential;
pub mod ek_cert;
pub mod tpm_public;

pub use credential::{make_credential, Challenge, CredentialError};
pub use ek_cert::{check_ek_certificate, EkCertError, EkCertificate, EkRoots};
pub use tpm_public::{ObjectAttributes, TpmPublic, TpmPublicError};

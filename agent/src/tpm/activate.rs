//! Credential activation (TPM 2.0 Part 1 §24, Part 3 §12.5): the TPM recovers a secret the
//! server encrypted to its EK and bound to the Name of a device key, proving that key is
//! resident in this TPM.

use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{EncryptedSecret, IdObject, SymmetricDefinition};
use zeroize::Zeroizing;

use super::ek::LoadedEk;
use super::error::{is_credential_rejected, is_tpm_failure};
use super::keys::check_device_key;
use super::{KeySlot, Tpm, TpmError};

impl Tpm {
    /// Runs TPM2_ActivateCredential with the device key in `slot` as the activated object and
    /// the EK as the key that decrypts the seed, and returns the recovered credential.
    ///
    /// `credential_blob` and `encrypted_secret` are the *contents* of the TPM2B_ID_OBJECT and
    /// TPM2B_ENCRYPTED_SECRET (without their u16 size), as the server's MakeCredential
    /// produces them. A challenge made for another key, another TPM's EK, or altered on the
    /// way fails with [`TpmError::CredentialRejected`].
    ///
    /// The device key is authorized with its empty auth value (password session); the EK,
    /// made from the TCG default template, only through its policy: TPM2_PolicySecret with the
    /// endorsement hierarchy's (empty) auth value (EK Credential Profile §B.6). Every session
    /// and transient object started here is flushed on every path.
    pub fn activate_credential(
        &mut self,
        slot: KeySlot,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        // The TSS buffers hold at most the largest TPM2B: anything longer cannot be a
        // challenge for this TPM.
        let rejected = |_| TpmError::CredentialRejected { slot };
        let blob = IdObject::try_from(credential_blob).map_err(rejected)?;
        let secret = EncryptedSecret::try_from(encrypted_secret).map_err(rejected)?;

        let Some((object, public)) = self.open_persistent(slot.handle())? else {
            return Err(TpmError::SlotEmpty { slot });
        };
        let result = match check_device_key(slot, &public) {
            Ok(()) => self.activate_with_ek(slot, KeyHandle::from(object), blob, secret),
            Err(err) => Err(err),
        };
        self.close(object);
        result
    }

    /// Loads the EK, activates, and releases the EK whatever happened.
    fn activate_with_ek(
        &mut self,
        slot: KeySlot,
        key: KeyHandle,
        blob: IdObject,
        secret: EncryptedSecret,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let (ek, _) = self.load_ek()?;
        let result = self.activate_with_policy(slot, key, &ek, blob, secret);
        self.release_ek(ek);
        result
    }

    /// Starts the EK's policy session, activates, and flushes the session whatever happened.
    fn activate_with_policy(
        &mut self,
        slot: KeySlot,
        key: KeyHandle,
        ek: &LoadedEk,
        blob: IdObject,
        secret: EncryptedSecret,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let started = self.ctx.execute_without_session(|ctx| {
            ctx.start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        });
        let session = match started {
            Ok(Some(session)) => session,
            Ok(None) => {
                return Err(TpmError::UnexpectedResponse {
                    what: "the TPM started no policy session".to_owned(),
                })
            }
            Err(err) => {
                return Err(self.fail("start a policy session", |source| {
                    TpmError::StartSession { source }
                })(err))
            }
        };
        let result = self.activate_in_session(slot, key, ek, session, blob, secret);
        // A session that fails to flush is reclaimed by `flush_stale` at the next open.
        let _ = self.ctx.execute_without_session(|ctx| {
            ctx.flush_context(ObjectHandle::from(SessionHandle::from(session)))
        });
        result
    }

    fn activate_in_session(
        &mut self,
        slot: KeySlot,
        key: KeyHandle,
        ek: &LoadedEk,
        session: AuthSession,
        blob: IdObject,
        secret: EncryptedSecret,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let policy = PolicySession::try_from(session).map_err(|source| TpmError::Structure {
            what: "policy session",
            source,
        })?;
        // PolicySecret(TPM_RH_ENDORSEMENT): the EK template's authPolicy (EK Credential
        // Profile §B.6); the endorsement hierarchy's empty auth value goes in a password
        // session.
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.policy_secret(
                    policy,
                    AuthHandle::Endorsement,
                    Default::default(),
                    Default::default(),
                    Default::default(),
                    None,
                )
            })
            .map_err(self.fail("authorize the endorsement key", |source| {
                TpmError::EndorsementPolicy { source }
            }))?;
        let ek_handle = ek.key_handle();
        let activated = self
            .ctx
            .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |ctx| {
                ctx.activate_credential(key, ek_handle, blob, secret)
            });
        match activated {
            Ok(credential) => Ok(Zeroizing::new(credential.value().to_vec())),
            Err(err) if is_credential_rejected(&err) => Err(TpmError::CredentialRejected { slot }),
            Err(err) if is_tpm_failure(&err) && self.passes_self_test() => {
                Err(TpmError::CredentialRejected { slot })
            }
            Err(err) => Err(self.fail("activate a credential", |source| {
                TpmError::ActivateCredential { slot, source }
            })(err)),
        }
    }

    /// Whether the TPM reports itself healthy (TPM2_GetTestResult, Part 3 §10.4: the one
    /// command a TPM in failure mode still answers, with testResult TPM_RC_FAILURE).
    ///
    /// libtpms (swtpm) answers TPM2_ActivateCredential with a bare TPM_RC_FAILURE when the
    /// seed does not decrypt with its EK — a challenge made for another TPM or altered — and
    /// stays fully operational; a hardware TPM says TPM_RC_VALUE on the secret. Asking the
    /// TPM tells that answer apart from a TPM that has really failed.
    fn passes_self_test(&mut self) -> bool {
        matches!(
            self.ctx
                .execute_without_session(|ctx| ctx.get_test_result()),
            Ok((_, Ok(())))
        )
    }
}

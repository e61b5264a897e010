//! Key-to-key rotation ("rekey"): the device's TPM key replaced by a new one in the other slot,
//! as a crash-safe state machine on the same rules as first boot (see the parent module), with
//! the old key in the factory secret's place.
//!
//! ```text
//! Done{from} ──persist intent──▶ Rekeying{from,to} ──create key in `to`, register its JWK
//! (private_key_jwt assertion of `from`)──▶ RekeyRegistered{from,to,kid} ──private_key_jwt token
//! request signed by `to` (the server promotes it and forgets `from`)──▶ Proven{to,kid}
//! ──erase `from`──▶ Done{to,kid}
//! ```
//!
//! - The intent is persisted before the new key is created, so a key in `to` next to a rekey
//!   state is this rekey's: it is reused, never replaced; a missing one is created.
//! - Registering the same JWK again is idempotent on the server. Once the server has promoted
//!   the new key it refuses the old one (`invalid_client`): then a token request signed by the
//!   new key decides, exactly as with the factory secret on first boot.
//! - The old key is erased only once the new one has obtained a token, so the device always
//!   holds a working credential; after `Done` exactly one key is live, in the TPM and on the
//!   server (promotion replaces the server's key list with the new key).
//! - Every later start (`run`, `token`, `enroll` and `rekey` all settle the rotation first)
//!   finishes an interrupted rekey rather than abandoning it, with two exceptions where the
//!   server has said no to the new key for good while the old key still works: it refuses the
//!   registration for a reason other than the old key (say `invalid_request`), or it no longer
//!   offers the rotation endpoint and refuses the new key's proof. The new key then never
//!   worked and never will, so it is erased and the old key stays the credential (a rekey that
//!   could never finish would otherwise fail every token request after it).

use crate::oauth::{self, ErrorCode};
use crate::rotation::{refused, tpm_err, RotationState, RotationStep};
use crate::store::ROTATION_FILE;
use crate::tpm::{DeviceKey, KeySlot};
use crate::{Agent, AgentError, Credential};

/// The slots of a key-to-key rotation under way. The kids a rekey state records are for the
/// operator: the keys themselves are read from the TPM, which is the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rekey {
    /// The slot of the key in use.
    pub(super) from: KeySlot,
    /// The slot of the new key.
    pub(super) to: KeySlot,
}

impl Rekey {
    /// The rekey `state` records, if it records one. A state naming one slot twice was not
    /// written by the agent and records nothing.
    pub(super) fn from_state(state: &RotationState) -> Option<Rekey> {
        let (from, to) = match state {
            RotationState::Rekeying { from, to, .. }
            | RotationState::RekeyRegistered { from, to, .. } => (*from, *to),
            _ => return None,
        };
        (from != to).then_some(Rekey { from, to })
    }
}

/// What the server said to the new key's registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// It holds the key as pending.
    Accepted,
    /// It refused the old key (`invalid_client`): it may have promoted the new one already.
    Refused,
    /// The server offers no rotation endpoint (any more).
    Unavailable,
}

impl Agent {
    /// Starts a key-to-key rotation from a finished one, or finishes an interrupted rekey.
    pub(crate) fn start_rekey(&mut self) -> Result<Credential, AgentError> {
        let inventory = self.inventory()?;
        if inventory.factory_secret {
            return Err(AgentError::NotEnrolled);
        }
        if self.metadata()?.device_credentials_endpoint.is_none() {
            return Err(AgentError::NoRotationEndpoint {
                issuer: self.config.issuer.clone(),
            });
        }
        // A rekey cut short is finished: its new key is the one asked for (and if the server
        // refuses it for good, the caller hears why instead of getting the old key back).
        let state = self.rotation_state()?;
        if let Some(rekey) = Rekey::from_state(&state).filter(|r| inventory.has_key(r.from)) {
            let credential = self.finish_rekey(rekey)?;
            self.credential = Some(credential.clone());
            return Ok(credential);
        }
        // Settles the keys (a crash may have left two) and records `Done` for the one in use.
        let Credential::Key {
            slot: from,
            kid: from_kid,
        } = self.rotate()?
        else {
            return Err(AgentError::NotEnrolled);
        };
        let rekey = Rekey {
            from,
            to: from.other(),
        };
        let intent = RotationState::Rekeying {
            from,
            from_kid,
            to: rekey.to,
        };
        self.persist(&intent, RotationStep::RekeyPersistIntent)?;
        let credential = self.finish_rekey(rekey)?;
        self.credential = Some(credential.clone());
        Ok(credential)
    }

    /// Walks a rekey from wherever it stopped to `Done`. The caller has checked that the old
    /// key is in the TPM.
    pub(super) fn finish_rekey(&mut self, rekey: Rekey) -> Result<Credential, AgentError> {
        let Rekey { from, to } = rekey;
        let old = self.device_key(from)?;
        let mut tpm = self.tpm()?;
        let existing = tpm.device_key(to).map_err(tpm_err)?;
        drop(tpm);
        let key = match existing {
            Some(key) => key,
            None => {
                self.record_key_made(to);
                let mut tpm = self.tpm()?;
                let key = tpm.create_device_key(to).map_err(tpm_err)?;
                drop(tpm);
                self.step(RotationStep::RekeyCreateKey);
                key
            }
        };
        let kid = key.kid.clone();
        let old_credential = Credential::Key {
            slot: from,
            kid: old.kid.clone(),
        };
        let registration = match self.metadata()?.device_credentials_endpoint {
            Some(endpoint) => match self.register_with_key(&endpoint, &old_credential, &key) {
                // The old key authenticated (a refused one is `Refused`), so it still works, and
                // the server rejected the new key itself.
                Err(AgentError::RegisterKey { source }) if rejects_the_key(&source) => {
                    return self.abandon_rekey(&old, to, source);
                }
                other => other?,
            },
            None => Registration::Unavailable,
        };
        if registration == Registration::Accepted {
            self.step(RotationStep::RekeyRegister);
            let registered = RotationState::RekeyRegistered {
                from,
                from_kid: old.kid.clone(),
                to,
                kid: kid.clone(),
            };
            self.persist(&registered, RotationStep::RekeyPersistRegistered)?;
        }
        // The proof: the server promotes a pending key on its first use, and answers a promoted
        // one as it would any key. Either way the old key is dead on the server from here on.
        let new_credential = Credential::Key {
            slot: to,
            kid: kid.clone(),
        };
        match self.request_client_credentials(&new_credential, None) {
            Ok(token) => self.cached = Some(token),
            Err(AgentError::Token { source }) if refused(&source) => {
                return match registration {
                    Registration::Accepted => Err(AgentError::ProveKey { source }),
                    Registration::Refused => Err(AgentError::KeysRefused {
                        client_id: self.config.client_id.clone(),
                        issuer: self.config.issuer.clone(),
                        source,
                    }),
                    Registration::Unavailable => self.abandon_rekey(&old, to, source),
                };
            }
            Err(AgentError::Token { source }) => return Err(AgentError::ProveKey { source }),
            Err(other) => return Err(other),
        }
        self.step(RotationStep::RekeyProve);
        let proven = RotationState::Proven {
            slot: to,
            kid: kid.clone(),
        };
        self.persist(&proven, RotationStep::RekeyPersistProven)?;
        let mut tpm = self.tpm()?;
        tpm.erase_device_key(from).map_err(tpm_err)?;
        drop(tpm);
        self.step(RotationStep::RekeyEraseOld);
        let done = RotationState::Done {
            slot: to,
            kid: kid.clone(),
            since: Some(self.key_made_or_now(to)),
        };
        self.persist(&done, RotationStep::RekeyDone)?;
        Ok(new_credential)
    }

    /// Registers the new key's JWK, authenticated by an assertion of the old key (RFC 7523
    /// §2.2, signed in the server's time and signed again once if the refusal shows the clock
    /// was off, as every assertion the agent sends).
    fn register_with_key(
        &mut self,
        endpoint: &str,
        old: &Credential,
        key: &DeviceKey,
    ) -> Result<Registration, AgentError> {
        let steps = [RotationStep::RekeyChallenged, RotationStep::RekeyActivated];
        match self.present_key(endpoint, old, key, steps)? {
            Ok(_) => Ok(Registration::Accepted),
            Err(e) if refused(&e) => Ok(Registration::Refused),
            Err(source) => Err(AgentError::RegisterKey { source }),
        }
    }

    /// The server refused the new key for good while the old key still works (see the module
    /// docs): erase the new key and go back to `Done` with the old one, which the server never
    /// stopped accepting (only the new key's first use would have made it stop). The error
    /// says why; the next start finds a settled device.
    fn abandon_rekey(
        &mut self,
        old: &DeviceKey,
        to: KeySlot,
        source: oauth::OAuthError,
    ) -> Result<Credential, AgentError> {
        let mut tpm = self.tpm()?;
        tpm.erase_device_key(to).map_err(tpm_err)?;
        drop(tpm);
        // The schedule counts from here: a server that refused the new key for good is not
        // asked again before another interval has passed (the old key's own age was not
        // recorded during the rekey).
        let done = RotationState::Done {
            slot: old.slot,
            kid: old.kid.clone(),
            since: Some(self.local_now()),
        };
        // Written without a step: the fault hook's steps are the rotation's way forward.
        self.state
            .write_json(ROTATION_FILE, &done)
            .map_err(|source| AgentError::State { source })?;
        Err(AgentError::RekeyAbandoned { source })
    }
}

/// Whether the server's answer to a registration rejects the key itself, for good: the RFC
/// 6749 §5.2 codes for a request it will never accept (`invalid_request`: not a P-256 key,
/// say; `unauthorized_client`: not allowed to rotate). A server error or an unreadable answer
/// may pass, and leaves the rekey to be finished later.
fn rejects_the_key(e: &oauth::OAuthError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::InvalidRequest | ErrorCode::UnauthorizedClient)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_definite_no_to_the_key_gives_a_rekey_up() {
        let rejected = |code| oauth::OAuthError::Rejected {
            endpoint: "e".into(),
            code,
            description: None,
        };
        assert!(rejects_the_key(&rejected(ErrorCode::InvalidRequest)));
        assert!(rejects_the_key(&rejected(ErrorCode::UnauthorizedClient)));
        // The old key refused: the new one may be promoted already, the proof decides.
        assert!(!rejects_the_key(&rejected(ErrorCode::InvalidClient)));
        // Server trouble passes.
        assert!(!rejects_the_key(&rejected(
            ErrorCode::TemporarilyUnavailable
        )));
        assert!(!rejects_the_key(&rejected(ErrorCode::Other(
            "server_error".into()
        ))));
        assert!(!rejects_the_key(&oauth::OAuthError::BadResponse {
            endpoint: "e".into(),
            status: 502,
            reason: "html".into(),
        }));
    }

    #[test]
    fn rekey_states_are_read_back_and_a_self_rotation_is_not_one() {
        let rekeying = RotationState::Rekeying {
            from: KeySlot::A,
            from_kid: "old".into(),
            to: KeySlot::B,
        };
        assert_eq!(
            Rekey::from_state(&rekeying),
            Some(Rekey {
                from: KeySlot::A,
                to: KeySlot::B,
            })
        );
        let registered = RotationState::RekeyRegistered {
            from: KeySlot::B,
            from_kid: "old".into(),
            to: KeySlot::A,
            kid: "new".into(),
        };
        assert_eq!(
            Rekey::from_state(&registered),
            Some(Rekey {
                from: KeySlot::B,
                to: KeySlot::A,
            })
        );
        let same_slot = RotationState::Rekeying {
            from: KeySlot::A,
            from_kid: "old".into(),
            to: KeySlot::A,
        };
        assert_eq!(Rekey::from_state(&same_slot), None);
        let done = RotationState::Done {
            slot: KeySlot::A,
            kid: "k".into(),
            since: None,
        };
        assert_eq!(Rekey::from_state(&done), None);
    }
}

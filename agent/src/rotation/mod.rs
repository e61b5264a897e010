//! Credential rotation as crash-safe state machines: first boot, from the factory secret to a
//! TPM-resident key (DESIGN "Life of a device", step 2), here; and later key-to-key rotation
//! ("rekey") in [`rekey`].
//!
//! ```text
//! Factory ──create key in free slot──▶ KeyCreated{slot} ──register JWK + TPM public area
//! (factory secret); answer the server's credential-activation challenge with the TPM──▶
//! Registered{slot,kid} ──private_key_jwt token request (server promotes)──▶ Proven{slot,kid}
//! ──erase factory secret, erase other slot──▶ Done{slot,kid}
//! ```
//!
//! The challenge (TPM 2.0 Part 1 §24) is how the server knows the key lives in the TPM it
//! registered at the factory: it encrypts a secret to that TPM's endorsement key, bound to the
//! new key's Name, and only TPM2_ActivateCredential in that TPM with that key loaded recovers
//! it. It is not persisted: a challenge lost to a crash is simply asked for again.
//!
//! The TPM's inventory is the truth and the state file (`rotation.json`, replaced atomically)
//! is the memory of what the server has seen. Every step is idempotent, so after a crash
//! anywhere the next run redoes the step that may not have happened:
//! - a key in a slot next to the factory secret is the rotation's candidate, whatever the
//!   state file says (a crash between creating it and persisting `KeyCreated` leaves it so);
//! - registering the same JWK again is idempotent on the server;
//! - if the server refuses the factory secret (`invalid_client`), it may have promoted the
//!   key already: a token request signed by the key decides;
//! - the factory secret is erased only once the key has obtained a token (is *proven*), and
//!   a key is erased only when another key is proven, so the device always keeps a working
//!   credential.
//!
//! `Done` also records when its key was made (`since`), from which `run` schedules the next
//! rekey (see [`schedule`]).

mod rekey;
pub(crate) mod schedule;

use serde::{Deserialize, Serialize};

use self::rekey::Rekey;
use crate::oauth::{self, ErrorCode, KeyRegistration, OAuthError};
use crate::store::{ATTESTATION_FILE, ROTATION_FILE};
use crate::tpm::{DeviceKey, Inventory, KeySlot};
use crate::{Agent, AgentError, Credential, Event};

/// The persisted rotation state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RotationState {
    /// Only the factory secret.
    #[default]
    Factory,
    /// A new key exists in `slot`; the server may not know it yet.
    KeyCreated {
        /// The slot.
        slot: KeySlot,
    },
    /// The server holds the key as pending.
    Registered {
        /// The slot.
        slot: KeySlot,
        /// The key's kid.
        kid: String,
    },
    /// The key obtained a token: the server promoted it and forgot the factory secret.
    Proven {
        /// The slot.
        slot: KeySlot,
        /// The key's kid.
        kid: String,
    },
    /// Rotation finished: the key in `slot` is the device's only credential.
    Done {
        /// The slot.
        slot: KeySlot,
        /// The key's kid.
        kid: String,
        /// When the rotation that made this key finished (device clock, Unix seconds): the
        /// start of its `rekey_interval_days`. Absent in files written before the schedule
        /// existed; the next start records its own time then (see `settle_keys`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<i64>,
    },
    /// A key-to-key rotation started: the key in `from` is still the credential; the new key
    /// is in `to`, or will be (this is persisted before it is created).
    Rekeying {
        /// The slot of the key in use.
        from: KeySlot,
        /// Its kid.
        from_kid: String,
        /// The slot of the new key.
        to: KeySlot,
    },
    /// The server holds the new key in `to` as pending; the key in `from` is still the
    /// credential until the new one is proven.
    RekeyRegistered {
        /// The slot of the key in use.
        from: KeySlot,
        /// Its kid.
        from_kid: String,
        /// The slot of the new key.
        to: KeySlot,
        /// The new key's kid.
        kid: String,
    },
}

impl RotationState {
    /// The slot this state is about, if any: during a rotation, the new key's.
    pub fn slot(&self) -> Option<KeySlot> {
        match self {
            RotationState::Factory => None,
            RotationState::KeyCreated { slot }
            | RotationState::Registered { slot, .. }
            | RotationState::Proven { slot, .. }
            | RotationState::Done { slot, .. } => Some(*slot),
            RotationState::Rekeying { to, .. } | RotationState::RekeyRegistered { to, .. } => {
                Some(*to)
            }
        }
    }

    /// Whether a key-to-key rotation is under way (before its new key is proven).
    pub fn is_rekeying(&self) -> bool {
        matches!(
            self,
            RotationState::Rekeying { .. } | RotationState::RekeyRegistered { .. }
        )
    }
}

/// What the server said of a key's attestation when it accepted it (`attestation.json`).
#[derive(Debug, Serialize, Deserialize)]
struct KeyAttestation {
    kid: String,
    /// `Some(true)`: proven by credential activation to live in this TPM; `Some(false)`:
    /// accepted without; `None`: the server did not say.
    attested: Option<bool>,
}

/// A completed rotation step, reported as [`Event::Rotation`] right after it happened and
/// before anything else (the test-only fault hook kills the process at these points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotationStep {
    /// The key was created in the TPM; the state file does not know yet.
    CreateKey,
    /// `KeyCreated` was persisted.
    PersistKeyCreated,
    /// The server answered the key with a credential-activation challenge; the TPM has not
    /// answered it yet.
    Challenged,
    /// The TPM recovered the challenge's secret; the server has not seen the answer yet.
    Activated,
    /// The server accepted the JWK as pending; the state file does not know yet.
    Register,
    /// `Registered` was persisted.
    PersistRegistered,
    /// The key obtained a token (the server promoted it); the state file does not know yet.
    Prove,
    /// `Proven` was persisted.
    PersistProven,
    /// The factory secret was erased from the TPM.
    EraseFactorySecret,
    /// The other key slot was erased.
    EraseOtherSlot,
    /// `Done` was persisted.
    Done,
    /// Rekey: `Rekeying` (the intent) was persisted; no new key exists yet.
    RekeyPersistIntent,
    /// Rekey: the new key was created in the free slot.
    RekeyCreateKey,
    /// Rekey: the server answered the new key with a credential-activation challenge.
    RekeyChallenged,
    /// Rekey: the TPM recovered the challenge's secret; the server has not seen it yet.
    RekeyActivated,
    /// Rekey: the server accepted the new JWK as pending (authenticated by the old key); the
    /// state file does not know yet.
    RekeyRegister,
    /// Rekey: `RekeyRegistered` was persisted.
    RekeyPersistRegistered,
    /// Rekey: the new key obtained a token (the server promoted it and forgot the old key);
    /// the state file does not know yet.
    RekeyProve,
    /// Rekey: `Proven` (the new key) was persisted.
    RekeyPersistProven,
    /// Rekey: the old key was erased from the TPM.
    RekeyEraseOld,
    /// Rekey: `Done` (the new key) was persisted.
    RekeyDone,
}

impl RotationStep {
    /// Every first-boot step, in order (a key-to-key rotation's are [`RotationStep::REKEY`]).
    pub const ALL: [RotationStep; 11] = [
        RotationStep::CreateKey,
        RotationStep::PersistKeyCreated,
        RotationStep::Challenged,
        RotationStep::Activated,
        RotationStep::Register,
        RotationStep::PersistRegistered,
        RotationStep::Prove,
        RotationStep::PersistProven,
        RotationStep::EraseFactorySecret,
        RotationStep::EraseOtherSlot,
        RotationStep::Done,
    ];

    /// Every step of a key-to-key rotation ([`crate::Agent::rekey`]), in order.
    pub const REKEY: [RotationStep; 10] = [
        RotationStep::RekeyPersistIntent,
        RotationStep::RekeyCreateKey,
        RotationStep::RekeyChallenged,
        RotationStep::RekeyActivated,
        RotationStep::RekeyRegister,
        RotationStep::RekeyPersistRegistered,
        RotationStep::RekeyProve,
        RotationStep::RekeyPersistProven,
        RotationStep::RekeyEraseOld,
        RotationStep::RekeyDone,
    ];

    /// The step's name (`create_key`, `rekey_register`, …), as the fault hook spells it.
    pub fn name(self) -> &'static str {
        match self {
            RotationStep::CreateKey => "create_key",
            RotationStep::PersistKeyCreated => "persist_key_created",
            RotationStep::Challenged => "challenged",
            RotationStep::Activated => "activated",
            RotationStep::Register => "register",
            RotationStep::PersistRegistered => "persist_registered",
            RotationStep::Prove => "prove",
            RotationStep::PersistProven => "persist_proven",
            RotationStep::EraseFactorySecret => "erase_factory_secret",
            RotationStep::EraseOtherSlot => "erase_other_slot",
            RotationStep::Done => "done",
            RotationStep::RekeyPersistIntent => "rekey_persist_intent",
            RotationStep::RekeyCreateKey => "rekey_create_key",
            RotationStep::RekeyChallenged => "rekey_challenged",
            RotationStep::RekeyActivated => "rekey_activated",
            RotationStep::RekeyRegister => "rekey_register",
            RotationStep::RekeyPersistRegistered => "rekey_persist_registered",
            RotationStep::RekeyProve => "rekey_prove",
            RotationStep::RekeyPersistProven => "rekey_persist_proven",
            RotationStep::RekeyEraseOld => "rekey_erase_old",
            RotationStep::RekeyDone => "rekey_done",
        }
    }

    /// The step named `name` (first-boot or rekey).
    pub fn from_name(name: &str) -> Option<RotationStep> {
        RotationStep::ALL
            .into_iter()
            .chain(RotationStep::REKEY)
            .find(|s| s.name() == name)
    }
}

impl Agent {
    /// One attempt at finishing or starting rotation; returns the credential in use.
    pub(crate) fn rotate(&mut self) -> Result<Credential, AgentError> {
        let inventory = self.inventory()?;
        let state = self.rotation_state()?;
        let credential = if inventory.factory_secret {
            self.rotate_from_factory(inventory, state)?
        } else {
            self.settle_keys(inventory, state)?
        };
        self.credential = Some(credential.clone());
        Ok(credential)
    }

    /// What the TPM holds now.
    fn inventory(&self) -> Result<Inventory, AgentError> {
        let mut tpm = self.tpm()?;
        tpm.inventory().map_err(tpm_err)
    }

    /// The persisted state (`Factory` if none).
    pub(crate) fn rotation_state(&self) -> Result<RotationState, AgentError> {
        Ok(self
            .state
            .read_json(ROTATION_FILE)
            .map_err(|source| AgentError::State { source })?
            .unwrap_or_default())
    }

    fn persist(&mut self, state: &RotationState, step: RotationStep) -> Result<(), AgentError> {
        self.state
            .write_json(ROTATION_FILE, state)
            .map_err(|source| AgentError::State { source })?;
        self.step(step);
        Ok(())
    }

    fn step(&mut self, step: RotationStep) {
        self.emit(Event::Rotation(step));
    }

    /// No factory secret: first-boot rotation is over (or was never needed). An interrupted
    /// key-to-key rotation is finished (see [`rekey`]); otherwise keep the proven key: a second
    /// key can only be left by a crash while erasing the older one.
    fn settle_keys(
        &mut self,
        inventory: Inventory,
        state: RotationState,
    ) -> Result<Credential, AgentError> {
        // The old key is erased only after the new one is proven, so without it there is
        // nothing left to finish: the new key alone is settled below like any single key (its
        // first token request promotes it if the server still holds it as pending).
        if let Some(rekey) = Rekey::from_state(&state).filter(|r| inventory.has_key(r.from)) {
            match self.finish_rekey(rekey) {
                // Given up for good: the old key is the credential again; say why and go on.
                Err(AgentError::RekeyAbandoned { source }) => {
                    self.emit(Event::RekeyAbandoned {
                        reason: source.to_string(),
                    });
                    return self.settle_keys(self.inventory()?, self.rotation_state()?);
                }
                other => return other,
            }
        }
        let slot = match (inventory.slot_a, inventory.slot_b) {
            (false, false) => {
                return Err(AgentError::NotProvisioned {
                    what: "no factory secret and no device key".into(),
                })
            }
            (true, false) => KeySlot::A,
            (false, true) => KeySlot::B,
            (true, true) => {
                let proven = match &state {
                    RotationState::Proven { slot, .. } | RotationState::Done { slot, .. } => *slot,
                    _ => {
                        return Err(AgentError::NotProvisioned {
                            what: "two device keys and no record of which one is proven".into(),
                        })
                    }
                };
                let mut tpm = self.tpm()?;
                tpm.erase_device_key(proven.other()).map_err(tpm_err)?;
                drop(tpm);
                self.step(RotationStep::EraseOtherSlot);
                proven
            }
        };
        let key = self.device_key(slot)?;
        let same_key = matches!(
            &state,
            RotationState::Done { slot: s, kid: k, .. } if *s == slot && *k == key.kid
        );
        let done = RotationState::Done {
            slot,
            kid: key.kid.clone(),
            since: Some(self.key_made_or_now(slot)),
        };
        match &state {
            RotationState::Done { since: Some(_), .. } if same_key => {}
            // A device upgraded in the field: its key's age is unknown, so it counts from its
            // first sight here rather than being rekeyed at once (a fleet would otherwise all
            // rekey on the day of the upgrade). Written without a step: the credential does
            // not change.
            RotationState::Done { since: None, .. } if same_key => self
                .state
                .write_json(ROTATION_FILE, &done)
                .map_err(|source| AgentError::State { source })?,
            _ => self.persist(&done, RotationStep::Done)?,
        }
        Ok(Credential::Key { slot, kid: key.kid })
    }

    /// The factory secret is present: walk the states from wherever the last run stopped.
    fn rotate_from_factory(
        &mut self,
        inventory: Inventory,
        state: RotationState,
    ) -> Result<Credential, AgentError> {
        let metadata = self.metadata()?;
        let Some(endpoint) = metadata.device_credentials_endpoint.clone() else {
            // Another RFC-compliant server: the factory secret stays the credential.
            self.emit(Event::RotationUnsupported);
            return Ok(Credential::Factory);
        };
        let slot = match (inventory.slot_a, inventory.slot_b, state.slot()) {
            (false, false, _) => {
                self.record_key_made(KeySlot::A);
                let mut tpm = self.tpm()?;
                tpm.create_device_key(KeySlot::A).map_err(tpm_err)?;
                drop(tpm);
                self.step(RotationStep::CreateKey);
                KeySlot::A
            }
            (true, false, _) => KeySlot::A,
            (false, true, _) => KeySlot::B,
            // Both slots next to a factory secret: keep the one the state file names.
            (true, true, Some(slot)) => {
                let mut tpm = self.tpm()?;
                tpm.erase_device_key(slot.other()).map_err(tpm_err)?;
                slot
            }
            (true, true, None) => {
                return Err(AgentError::NotProvisioned {
                    what: "a factory secret and two device keys, none of them recorded".into(),
                })
            }
        };
        let key = self.device_key(slot)?;
        let kid = key.kid.clone();
        let proven_already =
            matches!(&state, RotationState::Proven { slot: s, kid: k } if *s == slot && *k == kid);
        if !proven_already {
            if !matches!(&state, RotationState::KeyCreated { slot: s } if *s == slot)
                && !matches!(&state, RotationState::Registered { slot: s, kid: k } if *s == slot && *k == kid)
            {
                self.persist(
                    &RotationState::KeyCreated { slot },
                    RotationStep::PersistKeyCreated,
                )?;
            }
            let registered = self.register(&endpoint, &key)?;
            if registered {
                self.step(RotationStep::Register);
                let next = RotationState::Registered {
                    slot,
                    kid: kid.clone(),
                };
                self.persist(&next, RotationStep::PersistRegistered)?;
            }
            self.prove(slot, &kid, registered)?;
            self.step(RotationStep::Prove);
            let next = RotationState::Proven {
                slot,
                kid: kid.clone(),
            };
            self.persist(&next, RotationStep::PersistProven)?;
        }
        let mut tpm = self.tpm()?;
        tpm.erase_factory_secret().map_err(tpm_err)?;
        drop(tpm);
        self.step(RotationStep::EraseFactorySecret);
        let mut tpm = self.tpm()?;
        if tpm.device_key(slot.other()).map_err(tpm_err)?.is_some() {
            tpm.erase_device_key(slot.other()).map_err(tpm_err)?;
        }
        drop(tpm);
        self.step(RotationStep::EraseOtherSlot);
        self.persist(
            &RotationState::Done {
                slot,
                kid: kid.clone(),
                since: Some(self.key_made_or_now(slot)),
            },
            RotationStep::Done,
        )?;
        Ok(Credential::Key { slot, kid })
    }

    /// Registers the key with the factory secret. `Ok(false)`: the server refused the
    /// factory secret, which it does once it has promoted a key — the proof decides.
    fn register(&mut self, endpoint: &str, key: &DeviceKey) -> Result<bool, AgentError> {
        let steps = [RotationStep::Challenged, RotationStep::Activated];
        match self.present_key(endpoint, &Credential::Factory, key, steps)? {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(&ErrorCode::InvalidClient) => Ok(false),
            Err(source) => Err(AgentError::RegisterKey { source }),
        }
    }

    /// Presents `key` (its JWK and TPM public area) at the device-credentials endpoint,
    /// authenticated by `current`, and answers a credential-activation challenge with the TPM
    /// if the server sends one (reporting `steps` on the way). The inner error is the
    /// server's refusal; what the server said of the key's attestation is recorded for
    /// `status`.
    pub(crate) fn present_key(
        &mut self,
        endpoint: &str,
        current: &Credential,
        key: &DeviceKey,
        steps: [RotationStep; 2],
    ) -> Result<Result<(), OAuthError>, AgentError> {
        let jwk = key.jwk_json();
        let mut tpm = self.tpm()?;
        let tpm_public = tpm.key_public_area(key.slot).map_err(tpm_err)?;
        drop(tpm);
        let sent = self.send_authenticated(
            current,
            |http, auth| oauth::register_key(http, endpoint, auth, &jwk, &tpm_public),
            refused,
        )?;
        let challenge = match sent {
            Ok(KeyRegistration::Challenge(c)) => c,
            Ok(KeyRegistration::Pending { attested, .. }) => {
                self.record_attestation(key, attested)?;
                return Ok(Ok(()));
            }
            Err(e) => return Ok(Err(e)),
        };
        self.step(steps[0]);
        let mut tpm = self.tpm()?;
        let secret = tpm
            .activate_credential(
                key.slot,
                &challenge.credential_blob,
                &challenge.encrypted_secret,
            )
            .map_err(tpm_err)?;
        drop(tpm);
        self.step(steps[1]);
        let sent = self.send_authenticated(
            current,
            |http, auth| oauth::answer_key_challenge(http, endpoint, auth, &jwk, &secret),
            refused,
        )?;
        match sent {
            Ok(KeyRegistration::Pending { attested, .. }) => {
                self.record_attestation(key, attested.or(Some(true)))?;
                Ok(Ok(()))
            }
            Ok(KeyRegistration::Challenge(_)) => Ok(Err(OAuthError::BadResponse {
                endpoint: endpoint.to_owned(),
                status: 200,
                reason: "a second challenge for an answered one".into(),
            })),
            Err(e) => Ok(Err(e)),
        }
    }

    /// Remembers what the server said of `key`'s attestation, for `status`.
    fn record_attestation(
        &mut self,
        key: &DeviceKey,
        attested: Option<bool>,
    ) -> Result<(), AgentError> {
        let record = KeyAttestation {
            kid: key.kid.clone(),
            attested,
        };
        self.state
            .write_json(ATTESTATION_FILE, &record)
            .map_err(|source| AgentError::State { source })
    }

    /// What the server said of the attestation of the key `kid`, if this agent recorded it.
    pub(crate) fn key_attestation(&self, kid: &str) -> Option<bool> {
        let record: KeyAttestation = self.state.read_json(ATTESTATION_FILE).ok()??;
        if record.kid == kid {
            record.attested
        } else {
            None
        }
    }

    /// A client credentials token request signed by the key in `slot`: the server promotes a
    /// pending key on its first use (and the token is cached for the caller).
    fn prove(&mut self, slot: KeySlot, kid: &str, registered: bool) -> Result<(), AgentError> {
        let credential = Credential::Key {
            slot,
            kid: kid.to_owned(),
        };
        match self.request_client_credentials(&credential, None) {
            Ok(token) => {
                self.cached = Some(token);
                Ok(())
            }
            Err(AgentError::Token { source }) if !registered && refused(&source) => {
                Err(AgentError::UnknownClient {
                    client_id: self.config.client_id.clone(),
                    issuer: self.config.issuer.clone(),
                    source,
                })
            }
            Err(AgentError::Token { source }) => Err(AgentError::ProveKey { source }),
            Err(other) => Err(other),
        }
    }

    /// The key in `slot`, which the inventory said is there.
    pub(crate) fn device_key(&self, slot: KeySlot) -> Result<DeviceKey, AgentError> {
        let mut tpm = self.tpm()?;
        tpm.device_key(slot)
            .map_err(tpm_err)?
            .ok_or_else(|| AgentError::NotProvisioned {
                what: format!("device key slot {slot} emptied meanwhile"),
            })
    }
}

fn refused(e: &OAuthError) -> bool {
    e.code() == Some(&ErrorCode::InvalidClient)
}

pub(crate) fn tpm_err(source: crate::tpm::TpmError) -> AgentError {
    AgentError::Tpm { source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_by_name_and_states_serialise_tagged() {
        for step in RotationStep::ALL {
            assert_eq!(RotationStep::from_name(step.name()), Some(step));
        }
        assert_eq!(RotationStep::from_name("nope"), None);
        let s = RotationState::Registered {
            slot: KeySlot::B,
            kid: "k".into(),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"state":"registered","slot":"B","kid":"k"}"#);
        assert_eq!(serde_json::from_str::<RotationState>(&json).unwrap(), s);
        assert_eq!(s.slot(), Some(KeySlot::B));
    }

    #[test]
    fn state_files_written_before_rekey_existed_still_load() {
        let kid = || "k".to_owned();
        let cases = [
            (r#"{"state":"factory"}"#, RotationState::Factory),
            (
                r#"{"state":"key_created","slot":"A"}"#,
                RotationState::KeyCreated { slot: KeySlot::A },
            ),
            (
                r#"{"state":"proven","slot":"A","kid":"k"}"#,
                RotationState::Proven {
                    slot: KeySlot::A,
                    kid: kid(),
                },
            ),
            (
                r#"{"state":"done","slot":"B","kid":"k"}"#,
                RotationState::Done {
                    slot: KeySlot::B,
                    kid: kid(),
                    since: None,
                },
            ),
        ];
        for (json, state) in cases {
            assert_eq!(serde_json::from_str::<RotationState>(json).unwrap(), state);
            assert_eq!(serde_json::to_string(&state).unwrap(), json);
            assert!(!state.is_rekeying());
        }
    }

    #[test]
    fn done_records_when_its_key_was_made_and_old_files_load_without_it() {
        let done = RotationState::Done {
            slot: KeySlot::A,
            kid: "k".into(),
            since: Some(1_700_000_000),
        };
        let json = serde_json::to_string(&done).unwrap();
        assert_eq!(
            json,
            r#"{"state":"done","slot":"A","kid":"k","since":1700000000}"#
        );
        assert_eq!(serde_json::from_str::<RotationState>(&json).unwrap(), done);
        // A device clock before 1970 is a wrong clock, not a corrupt file.
        let early = r#"{"state":"done","slot":"A","kid":"k","since":-5}"#;
        assert!(matches!(
            serde_json::from_str::<RotationState>(early).unwrap(),
            RotationState::Done {
                since: Some(-5),
                ..
            }
        ));
        let old = r#"{"state":"done","slot":"A","kid":"k"}"#;
        assert!(matches!(
            serde_json::from_str::<RotationState>(old).unwrap(),
            RotationState::Done { since: None, .. }
        ));
    }

    #[test]
    fn rekey_states_serialise_tagged_and_name_the_new_slot() {
        let intent = RotationState::Rekeying {
            from: KeySlot::A,
            from_kid: "old".into(),
            to: KeySlot::B,
        };
        let json = serde_json::to_string(&intent).unwrap();
        assert_eq!(
            json,
            r#"{"state":"rekeying","from":"A","from_kid":"old","to":"B"}"#
        );
        assert_eq!(
            serde_json::from_str::<RotationState>(&json).unwrap(),
            intent
        );
        let registered = RotationState::RekeyRegistered {
            from: KeySlot::B,
            from_kid: "old".into(),
            to: KeySlot::A,
            kid: "new".into(),
        };
        let json = serde_json::to_string(&registered).unwrap();
        assert_eq!(
            json,
            r#"{"state":"rekey_registered","from":"B","from_kid":"old","to":"A","kid":"new"}"#
        );
        assert_eq!(
            serde_json::from_str::<RotationState>(&json).unwrap(),
            registered
        );
        assert_eq!(intent.slot(), Some(KeySlot::B));
        assert_eq!(registered.slot(), Some(KeySlot::A));
        assert!(intent.is_rekeying() && registered.is_rekeying());
    }

    #[test]
    fn first_boot_steps_are_unchanged_and_rekey_steps_are_their_own_list() {
        let names = |steps: &[RotationStep]| steps.iter().map(|s| s.name()).collect::<Vec<_>>();
        // The fault hook's names are an interface of the test suite: renaming one breaks it.
        assert_eq!(
            names(&RotationStep::ALL),
            [
                "create_key",
                "persist_key_created",
                "challenged",
                "activated",
                "register",
                "persist_registered",
                "prove",
                "persist_proven",
                "erase_factory_secret",
                "erase_other_slot",
                "done",
            ]
        );
        assert_eq!(
            names(&RotationStep::REKEY),
            [
                "rekey_persist_intent",
                "rekey_create_key",
                "rekey_challenged",
                "rekey_activated",
                "rekey_register",
                "rekey_persist_registered",
                "rekey_prove",
                "rekey_persist_proven",
                "rekey_erase_old",
                "rekey_done",
            ]
        );
        for step in RotationStep::REKEY {
            assert_eq!(RotationStep::from_name(step.name()), Some(step));
            assert!(!RotationStep::ALL.contains(&step));
        }
    }
}

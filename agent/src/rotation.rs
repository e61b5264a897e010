//! First-boot rotation from the factory secret to a TPM-resident key (DESIGN "Life of a
//! device", step 2), as a crash-safe state machine.
//!
//! ```text
//! Factory ──create key in free slot──▶ KeyCreated{slot} ──register JWK (factory secret)──▶
//! Registered{slot,kid} ──private_key_jwt token request (server promotes)──▶ Proven{slot,kid}
//! ──erase factory secret, erase other slot──▶ Done{slot,kid}
//! ```
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

use serde::{Deserialize, Serialize};

use crate::oauth::{self, ErrorCode, OAuthError};
use crate::store::ROTATION_FILE;
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
    },
}

impl RotationState {
    /// The slot this state is about, if any.
    pub fn slot(&self) -> Option<KeySlot> {
        match self {
            RotationState::Factory => None,
            RotationState::KeyCreated { slot }
            | RotationState::Registered { slot, .. }
            | RotationState::Proven { slot, .. }
            | RotationState::Done { slot, .. } => Some(*slot),
        }
    }
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
}

impl RotationStep {
    /// Every step, in order.
    pub const ALL: [RotationStep; 9] = [
        RotationStep::CreateKey,
        RotationStep::PersistKeyCreated,
        RotationStep::Register,
        RotationStep::PersistRegistered,
        RotationStep::Prove,
        RotationStep::PersistProven,
        RotationStep::EraseFactorySecret,
        RotationStep::EraseOtherSlot,
        RotationStep::Done,
    ];

    /// The step's name (`create_key`, …), as the fault hook spells it.
    pub fn name(self) -> &'static str {
        match self {
            RotationStep::CreateKey => "create_key",
            RotationStep::PersistKeyCreated => "persist_key_created",
            RotationStep::Register => "register",
            RotationStep::PersistRegistered => "persist_registered",
            RotationStep::Prove => "prove",
            RotationStep::PersistProven => "persist_proven",
            RotationStep::EraseFactorySecret => "erase_factory_secret",
            RotationStep::EraseOtherSlot => "erase_other_slot",
            RotationStep::Done => "done",
        }
    }

    /// The step named `name`.
    pub fn from_name(name: &str) -> Option<RotationStep> {
        RotationStep::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl Agent {
    /// One attempt at finishing or starting rotation; returns the credential in use.
    pub(crate) fn rotate(&mut self) -> Result<Credential, AgentError> {
        let mut tpm = self.tpm()?;
        let inventory = tpm.inventory().map_err(tpm_err)?;
        drop(tpm);
        let state = self.rotation_state()?;
        let credential = if inventory.factory_secret {
            self.rotate_from_factory(inventory, state)?
        } else {
            self.settle_keys(inventory, state)?
        };
        self.credential = Some(credential.clone());
        Ok(credential)
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

    /// No factory secret: the rotation is over (or was never needed). Keep the proven key; a
    /// second key can only be left by a crash while erasing the older one.
    fn settle_keys(
        &mut self,
        inventory: Inventory,
        state: RotationState,
    ) -> Result<Credential, AgentError> {
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
        let done = RotationState::Done {
            slot,
            kid: key.kid.clone(),
        };
        if state != done {
            self.persist(&done, RotationStep::Done)?;
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
            },
            RotationStep::Done,
        )?;
        Ok(Credential::Key { slot, kid })
    }

    /// Registers the key's JWK with the factory secret. `Ok(false)`: the server refused the
    /// factory secret, which it does once it has promoted a key — the proof decides.
    fn register(&mut self, endpoint: &str, key: &DeviceKey) -> Result<bool, AgentError> {
        let secret = self.factory_secret()?;
        match oauth::register_key(
            &self.http,
            endpoint,
            &self.config.client_id,
            &secret,
            &key.jwk_json(),
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(&ErrorCode::InvalidClient) => Ok(false),
            Err(source) => Err(AgentError::RegisterKey { source }),
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
}

//! The device's TPM: storage root key, sealed factory secret, TPM-resident device keys and the
//! endorsement key, over tss-esapi.
//!
//! Handle map (TCG TPM v2.0 Provisioning Guidance §7.8 reserves 0x81000000–0x8100FFFF for
//! the owner's storage keys and their children):
//!
//! | handle       | object                                                  |
//! |--------------|---------------------------------------------------------|
//! | `0x81000001` | storage root key (SRK), ECC P-256, created if absent    |
//! | `0x81000010` | factory secret, a sealed data object under the SRK      |
//! | `0x81000011` | device signing key, slot A                              |
//! | `0x81000012` | device signing key, slot B                              |
//! | `0x01000011` | NV index: when the key in slot A was made (8 bytes)     |
//! | `0x01000012` | NV index: when the key in slot B was made (8 bytes)     |
//!
//! Every secret crossing the TCTI (sealing, unsealing) travels in an SRK-salted HMAC session
//! with parameter encryption (TPM 2.0 Part 1 §19.6 and §21), so a bus or socket sniffer sees
//! only ciphertext. Every object Hallmark creates is `noDA`: a bug cannot push the TPM into
//! dictionary-attack lockout.

mod activate;
mod age;
mod der;
mod ek;
mod error;
mod keys;
mod seal;
mod tcti;
mod templates;

use std::fmt;

use serde::{Deserialize, Serialize};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::tss::{
    TPM2_LOADED_SESSION_FIRST, TPM2_PERSISTENT_FIRST, TPM2_TRANSIENT_FIRST,
};
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, Public, SymmetricDefinition};
use tss_esapi::Context;

pub use ek::{EndorsementKey, EK_CERT_NV_INDEX_ECC_P256, EK_CERT_NV_INDEX_RSA_2048};
pub use error::TpmError;
pub use keys::{DeviceKey, Jwk, KeyAttributes};
pub use seal::{SealedBlob, MAX_SEALED_SECRET};

use error::{diagnose, is_bad_auth, is_missing_handle};

/// Persistent handle of the storage root key (Provisioning Guidance §7.8).
pub const SRK_HANDLE: u32 = 0x8100_0001;
/// Persistent handle of the sealed factory secret.
pub const FACTORY_SECRET_HANDLE: u32 = 0x8100_0010;

/// One of the two persistent slots for the device signing key; rotation writes the new key to
/// the slot the current key is not in, so a power cut never leaves the device without a key.
///
/// Deliberately exhaustive (unlike the module's other public enums): the rotation state
/// machine matches on both slots, and a third slot would be a design change, not an addition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeySlot {
    /// Persistent handle 0x81000011.
    A,
    /// Persistent handle 0x81000012.
    B,
}

impl KeySlot {
    /// The other slot.
    pub fn other(self) -> KeySlot {
        match self {
            KeySlot::A => KeySlot::B,
            KeySlot::B => KeySlot::A,
        }
    }

    /// The slot's persistent handle.
    pub fn handle(self) -> u32 {
        match self {
            KeySlot::A => 0x8100_0011,
            KeySlot::B => 0x8100_0012,
        }
    }
}

impl fmt::Display for KeySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            KeySlot::A => "A",
            KeySlot::B => "B",
        };
        write!(f, "{name} ({:#010x})", self.handle())
    }
}

/// What Hallmark finds in the TPM's persistent handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inventory {
    /// A factory secret is sealed at 0x81000010.
    pub factory_secret: bool,
    /// Slot A (0x81000011) holds a key.
    pub slot_a: bool,
    /// Slot B (0x81000012) holds a key.
    pub slot_b: bool,
}

impl Inventory {
    /// Whether `slot` holds a key.
    pub fn has_key(&self, slot: KeySlot) -> bool {
        match slot {
            KeySlot::A => self.slot_a,
            KeySlot::B => self.slot_b,
        }
    }
}

/// An open connection to the device's TPM, with the storage root key in place.
///
/// Hold it only as long as needed: swtpm serves one connection at a time (a second client
/// blocks until the first disconnects), and so does /dev/tpm0; only the kernel resource
/// manager (/dev/tpmrm0) multiplexes clients.
pub struct Tpm {
    ctx: Context,
    tcti: String,
    srk: KeyHandle,
}

impl fmt::Debug for Tpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tpm").field("tcti", &self.tcti).finish()
    }
}

impl Tpm {
    /// Opens the TPM at `tcti` — `device:/dev/tpmrm0` on hardware,
    /// `swtpm:host=127.0.0.1,port=N` or `mssim:host=…,port=N` in simulation — flushes
    /// transient objects and sessions a crashed client left behind, and creates the storage
    /// root key at 0x81000001 if it is absent.
    pub fn open(tcti: &str) -> Result<Tpm, TpmError> {
        let conf = tcti::parse(tcti)?;
        let ctx = Context::new(conf).map_err(|source| TpmError::Unreachable {
            tcti: tcti.to_owned(),
            source,
        })?;
        let mut tpm = Tpm {
            ctx,
            tcti: tcti.to_owned(),
            // Placeholder until `ensure_srk` below replaces it; never used before that.
            srk: KeyHandle::Null,
        };
        tpm.flush_stale()?;
        tpm.srk = tpm.ensure_srk()?;
        Ok(tpm)
    }

    /// The TCTI string this TPM was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Which of Hallmark's persistent objects the TPM holds.
    pub fn inventory(&mut self) -> Result<Inventory, TpmError> {
        let handles = self.persistent_handles()?;
        Ok(Inventory {
            factory_secret: handles.contains(&FACTORY_SECRET_HANDLE),
            slot_a: handles.contains(&KeySlot::A.handle()),
            slot_b: handles.contains(&KeySlot::B.handle()),
        })
    }

    /// Builds the error for a failed TSS call, diagnosing lockout, lost connection and the like.
    fn fail<'a>(
        &'a self,
        operation: &'static str,
        op: impl FnOnce(tss_esapi::Error) -> TpmError + 'a,
    ) -> impl FnOnce(tss_esapi::Error) -> TpmError + 'a {
        move |source| {
            if is_bad_auth(&source) && operation_needs_owner(operation) {
                return TpmError::OwnerAuthorization { operation, source };
            }
            diagnose(&self.tcti, operation, source, op)
        }
    }

    /// Flushes transient objects and loaded sessions left by a client that died without
    /// flushing them: swtpm has no resource manager and only three object slots. Behind the
    /// kernel resource manager (/dev/tpmrm0) the lists are this connection's own and empty.
    fn flush_stale(&mut self) -> Result<(), TpmError> {
        for first in [TPM2_TRANSIENT_FIRST, TPM2_LOADED_SESSION_FIRST] {
            let listed = self
                .ctx
                .execute_without_session(|ctx| {
                    ctx.get_capability(CapabilityType::Handles, first, 64)
                })
                .map_err(
                    self.fail("list loaded objects", |source| TpmError::FlushStale {
                        source,
                    }),
                )?;
            let CapabilityData::Handles(handles) = listed.0 else {
                continue;
            };
            for handle in handles.into_inner() {
                // Best effort: a handle that vanished meanwhile is as good as flushed.
                let _ = self.ctx.execute_without_session(|ctx| {
                    let object = ctx.tr_from_tpm_public(handle)?;
                    ctx.flush_context(object)
                });
            }
        }
        Ok(())
    }

    /// Returns the SRK's handle, creating and persisting the SRK if absent.
    fn ensure_srk(&mut self) -> Result<KeyHandle, TpmError> {
        let template = templates::srk()?;
        if let Some((object, public)) = self.open_persistent(SRK_HANDLE)? {
            if templates::matches(&public, &template) {
                return Ok(KeyHandle::from(object));
            }
            self.close(object);
            return Err(TpmError::HandleOccupied {
                handle: SRK_HANDLE,
                what: templates::describe(&public),
                expected: "ECC P-256 storage root key",
            });
        }
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(self.fail("create the storage root key", |source| {
                TpmError::CreateSrk { source }
            }))?;
        self.persist(created.key_handle, SRK_HANDLE)?;
        match self.open_persistent(SRK_HANDLE)? {
            Some((object, _)) => Ok(KeyHandle::from(object)),
            None => Err(TpmError::UnexpectedResponse {
                what: "the storage root key vanished right after it was persisted".to_owned(),
            }),
        }
    }

    /// The TPM's persistent handles (TPM2_GetCapability, TPM_CAP_HANDLES).
    fn persistent_handles(&mut self) -> Result<Vec<u32>, TpmError> {
        self.handles(TPM2_PERSISTENT_FIRST)
    }

    /// The handles of one type, from `first` on (TPM 2.0 Part 3 §30.2, TPM_CAP_HANDLES).
    fn handles(&mut self, first: u32) -> Result<Vec<u32>, TpmError> {
        let listed = self
            .ctx
            .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, first, 255))
            .map_err(
                self.fail("list persistent handles", |source| TpmError::ListHandles {
                    source,
                }),
            )?;
        let CapabilityData::Handles(handles) = listed.0 else {
            return Err(TpmError::UnexpectedResponse {
                what: "TPM_CAP_HANDLES returned another capability".to_owned(),
            });
        };
        let same_type = |h: &u32| h >> 24 == first >> 24;
        Ok(handles
            .into_inner()
            .into_iter()
            .map(u32::from)
            .filter(same_type)
            .collect())
    }

    /// Opens the object at persistent `handle` and reads its public area, or `None` if the
    /// handle is empty. The caller closes the returned object with [`Tpm::close`].
    fn open_persistent(&mut self, handle: u32) -> Result<Option<(ObjectHandle, Public)>, TpmError> {
        // Listing first costs one round trip but keeps the TSS from logging an ERROR line for
        // every absent object (an unprovisioned device is normal, not an error).
        if !self.persistent_handles()?.contains(&handle) {
            return Ok(None);
        }
        let tpm_handle = persistent_tpm_handle(handle)?;
        let opened = self.ctx.execute_without_session(|ctx| {
            ctx.tr_from_tpm_public(TpmHandle::Persistent(tpm_handle))
        });
        let object = match opened {
            Ok(object) => object,
            Err(err) if is_missing_handle(&err) => return Ok(None),
            Err(err) => {
                return Err(self.fail("read a persistent object", |source| {
                    TpmError::ReadPublic { handle, source }
                })(err))
            }
        };
        let read = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(KeyHandle::from(object)));
        match read {
            Ok((public, _, _)) => Ok(Some((object, public))),
            Err(err) => {
                self.close(object);
                Err(self.fail("read a persistent object", |source| {
                    TpmError::ReadPublic { handle, source }
                })(err))
            }
        }
    }

    /// Releases ESAPI's record of an object without touching the TPM (Esys_TR_Close).
    fn close(&mut self, object: ObjectHandle) {
        let mut object = object;
        // Failure only leaves a record that the context frees when dropped.
        let _ = self.ctx.tr_close(&mut object);
    }

    /// Makes loaded `transient` persistent at `handle` with owner authorization
    /// (TPM2_EvictControl, Part 3 §28.5), then flushes the transient copy.
    fn persist(&mut self, transient: KeyHandle, handle: u32) -> Result<(), TpmError> {
        let persistent = Persistent::Persistent(persistent_tpm_handle(handle)?);
        let result = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, ObjectHandle::from(transient), persistent)
            });
        // The transient copy is not needed either way; slots are scarce.
        let _ = self
            .ctx
            .execute_without_session(|ctx| ctx.flush_context(ObjectHandle::from(transient)));
        let persisted = result.map_err(self.fail("persist an object", |source| {
            TpmError::Persist { handle, source }
        }))?;
        self.close(persisted);
        Ok(())
    }

    /// Removes the persistent object `object` at `handle` (TPM2_EvictControl).
    fn evict(&mut self, object: ObjectHandle, handle: u32) -> Result<(), TpmError> {
        let persistent = Persistent::Persistent(persistent_tpm_handle(handle)?);
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, object, persistent)
            })
            .map_err(
                self.fail("erase a persistent object", |source| TpmError::Erase {
                    handle,
                    source,
                }),
            )?;
        // ESAPI keeps its record of an evicted persistent object (Esys_EvictControl frees
        // only the new handle) while tss-esapi 7.7 merely marks it closed. Left alone, the
        // stale record makes the next Esys_TR_FromTPMPublic of the same handle fail with a
        // name mismatch once another object is persisted there, so free it here; the
        // wrapper's bookkeeping error that follows is expected.
        let mut object = object;
        let _ = self.ctx.tr_close(&mut object);
        Ok(())
    }

    /// Runs `f` with an HMAC session salted with the SRK (TPM 2.0 Part 1 §19.6.13) and
    /// parameter encryption both ways (decrypt: the command's first TPM2B parameter, encrypt:
    /// the response's), then flushes the session. The salt is encrypted to the SRK, so the
    /// session key — and every secret under it — is unknown to anyone on the TCTI.
    fn with_salted_session<T>(
        &mut self,
        f: impl FnOnce(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<tss_esapi::Result<T>, TpmError> {
        let srk = self.srk;
        let started = self.ctx.execute_without_session(|ctx| {
            let session = ctx.start_auth_session(
                Some(srk),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )?;
            let Some(session) = session else {
                return Ok(None);
            };
            let (attributes, mask) = SessionAttributesBuilder::new()
                .with_decrypt(true)
                .with_encrypt(true)
                .build();
            ctx.tr_sess_set_attributes(session, attributes, mask)?;
            Ok(Some(session))
        });
        let session = match started {
            Ok(Some(session)) => session,
            Ok(None) => {
                return Err(TpmError::UnexpectedResponse {
                    what: "the TPM started no session".to_owned(),
                })
            }
            Err(err) => {
                return Err(self.fail("start an encrypted session", |source| {
                    TpmError::StartSession { source }
                })(err))
            }
        };
        let result = self.ctx.execute_with_session(Some(session), f);
        // A session that fails to flush is reclaimed by `flush_stale` at the next open.
        let _ = self.ctx.execute_without_session(|ctx| {
            ctx.flush_context(ObjectHandle::from(SessionHandle::from(session)))
        });
        Ok(result)
    }
}

/// Whether an operation's authorization is the owner hierarchy's (so a failed authorization
/// means the owner has a password).
fn operation_needs_owner(operation: &str) -> bool {
    matches!(
        operation,
        "persist an object"
            | "erase a persistent object"
            | "create the storage root key"
            | "record when a device key was made"
            | "read when a device key was made"
            | "forget when a device key was made"
            | "define a key age record"
    )
}

fn persistent_tpm_handle(handle: u32) -> Result<PersistentTpmHandle, TpmError> {
    PersistentTpmHandle::new(handle).map_err(|source| TpmError::Structure {
        what: "persistent handle",
        source,
    })
}

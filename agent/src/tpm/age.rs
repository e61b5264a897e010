//! When each device key was made, kept in the TPM beside it: an 8-byte NV index per slot
//! (owner range, TCG handle registry: 0x01000011 for slot A, 0x01000012 for slot B) holding the
//! device clock's Unix seconds, big-endian. The state directory records the same time
//! (`rotation.json`), but a state directory can be lost (a reflashed root file system) while the
//! TPM keeps the key; then the key's real age comes from here instead of restarting.
//!
//! Written *before* the key is created in its slot, so a crash in between leaves at worst a
//! time for an empty slot, which the next key there overwrites; undefined when the key is
//! erased. Owner-authorised (empty owner password, as for the persistent keys), `noDA`.

use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{MaxNvBuffer, NvPublicBuilder};

use super::{KeySlot, Tpm, TpmError};

/// First NV index handle (TPM 2.0 Part 2 §7.4, TPM_HT_NV_INDEX).
const NV_INDEX_FIRST: u32 = 0x0100_0000;
/// Bytes in a key-age record.
const RECORD_LEN: usize = 8;

impl KeySlot {
    /// The NV index holding when the key in this slot was made.
    pub fn age_index(self) -> u32 {
        match self {
            KeySlot::A => 0x0100_0011,
            KeySlot::B => 0x0100_0012,
        }
    }
}

impl Tpm {
    /// Record that the key about to be made in `slot` is made at `at` (device clock, Unix
    /// seconds). Call before creating the key.
    pub fn record_key_made(&mut self, slot: KeySlot, at: i64) -> Result<(), TpmError> {
        let index = slot.age_index();
        let handle = match self.open_age_index(index)? {
            Some(handle) => handle,
            None => self.define_age_index(index)?,
        };
        let data = MaxNvBuffer::try_from(at.to_be_bytes().to_vec()).map_err(|source| {
            TpmError::Structure {
                what: "key age record",
                source,
            }
        })?;
        let written = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_write(NvAuth::Owner, handle, data, 0)
            });
        self.close(handle.into());
        written.map_err(self.fail("record when a device key was made", |source| {
            TpmError::KeyAge { index, source }
        }))
    }

    /// When the key in `slot` was made, if the TPM recorded it.
    pub fn key_made(&mut self, slot: KeySlot) -> Result<Option<i64>, TpmError> {
        let index = slot.age_index();
        let Some(handle) = self.open_age_index(index)? else {
            return Ok(None);
        };
        let read = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_read(NvAuth::Owner, handle, RECORD_LEN as u16, 0)
            });
        self.close(handle.into());
        let data = match read {
            Ok(data) => data,
            // Defined but never written (a crash between the two): nothing recorded.
            Err(err) if is_unwritten(&err) => return Ok(None),
            Err(err) => {
                return Err(self.fail("read when a device key was made", |source| {
                    TpmError::KeyAge { index, source }
                })(err))
            }
        };
        Ok(<[u8; RECORD_LEN]>::try_from(data.value())
            .ok()
            .map(i64::from_be_bytes))
    }

    /// Forget when the key in `slot` was made (erasing the key does this too).
    pub fn forget_key_made(&mut self, slot: KeySlot) -> Result<(), TpmError> {
        let index = slot.age_index();
        let Some(handle) = self.open_age_index(index)? else {
            return Ok(());
        };
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_undefine_space(Provision::Owner, handle)
            })
            .map_err(self.fail("forget when a device key was made", |source| {
                TpmError::KeyAge { index, source }
            }))
    }

    /// The NV index `index`, if defined.
    fn open_age_index(&mut self, index: u32) -> Result<Option<NvIndexHandle>, TpmError> {
        // Listing first keeps the TSS from logging an error for an index that is simply absent.
        if !self.handles(NV_INDEX_FIRST)?.contains(&index) {
            return Ok(None);
        }
        let tpm_handle = nv_tpm_handle(index)?;
        let object = self
            .ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
            .map_err(
                self.fail("open a key age record", |source| TpmError::KeyAge {
                    index,
                    source,
                }),
            )?;
        Ok(Some(NvIndexHandle::from(object)))
    }

    fn define_age_index(&mut self, index: u32) -> Result<NvIndexHandle, TpmError> {
        let structure = |source| TpmError::Structure {
            what: "key age NV index",
            source,
        };
        let attributes = NvIndexAttributesBuilder::new()
            .with_owner_write(true)
            .with_owner_read(true)
            .with_no_da(true)
            .build()
            .map_err(structure)?;
        let public = NvPublicBuilder::new()
            .with_nv_index(nv_tpm_handle(index)?)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(RECORD_LEN)
            .build()
            .map_err(structure)?;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_define_space(Provision::Owner, None, public)
            })
            .map_err(
                self.fail("define a key age record", |source| TpmError::KeyAge {
                    index,
                    source,
                }),
            )
    }
}

fn nv_tpm_handle(index: u32) -> Result<NvIndexTpmHandle, TpmError> {
    NvIndexTpmHandle::new(index).map_err(|source| TpmError::Structure {
        what: "NV index handle",
        source,
    })
}

/// TPM_RC_NV_UNINITIALIZED: an index defined but never written.
fn is_unwritten(err: &tss_esapi::Error) -> bool {
    use tss_esapi::constants::Tss2ResponseCodeKind;
    matches!(err, tss_esapi::Error::Tss2Error(code) if code.kind() == Some(Tss2ResponseCodeKind::NvUninitialized))
}

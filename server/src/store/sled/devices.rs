//! The device registry in sled: devices by client_id, a serial index, an EK index, and the
//! device's client record, changed together in one transaction so a serial or an EK never maps
//! to half a device, and one TPM never to two.

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{from_json, get_json, SledDb};
use crate::store::{Client, Deletion, DeletionCheck, Device, DeviceStore, StoreError};

fn decode(bytes: &[u8]) -> Result<Device, StoreError> {
    from_json(bytes, "device")
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(inner) => inner,
        TransactionError::Storage(source) => StoreError::Write {
            what: "device",
            source,
        },
    }
}

#[async_trait::async_trait]
impl DeviceStore for SledDb {
    async fn device(&self, client_id: &str) -> Result<Option<Device>, StoreError> {
        get_json(&self.devices, client_id, "device")
    }

    async fn device_by_serial(&self, serial: &str) -> Result<Option<Device>, StoreError> {
        let Some(id) = self
            .device_serials
            .get(serial)
            .map_err(|source| StoreError::Read {
                what: "device serial",
                source,
            })?
        else {
            return Ok(None);
        };
        self.device(&String::from_utf8_lossy(&id)).await
    }

    async fn register_device(
        &self,
        device: &Device,
        client: &Client,
    ) -> Result<Result<(), Device>, StoreError> {
        let device_bytes = serde_json::to_vec(device).unwrap_or_default();
        let client_bytes = serde_json::to_vec(client).unwrap_or_default();
        let outcome = (
            &self.device_serials,
            &self.device_eks,
            &self.devices,
            &self.clients,
        )
            .transaction(|(serials, eks, devices, clients)| {
                let taken = match serials.get(device.serial.as_bytes())? {
                    Some(id) => Some(id),
                    None => eks.get(device.ek_fingerprint.as_bytes())?,
                };
                if let Some(existing_id) = taken {
                    let existing = devices
                        .get(&existing_id)?
                        .map(|b| decode(&b))
                        .transpose()
                        .map_err(ConflictableTransactionError::Abort)?;
                    // An index entry without its device would be corruption; report it as a
                    // conflict with the same serial so that nothing is overwritten.
                    return Ok(Some(existing.unwrap_or_else(|| device.clone())));
                }
                serials.insert(device.serial.as_bytes(), device.client_id.as_bytes())?;
                eks.insert(
                    device.ek_fingerprint.as_bytes(),
                    device.client_id.as_bytes(),
                )?;
                devices.insert(device.client_id.as_bytes(), device_bytes.clone())?;
                clients.insert(client.client_id.as_bytes(), client_bytes.clone())?;
                Ok(None)
            })
            .map_err(tx_error)?;
        self.forget_cached(&client.client_id);
        Ok(match outcome {
            None => Ok(()),
            Some(existing) => Err(existing),
        })
    }

    async fn delete_device_if(
        &self,
        client_id: &str,
        allow: &DeletionCheck<'_>,
    ) -> Result<Deletion, StoreError> {
        let outcome = (
            &self.device_serials,
            &self.device_eks,
            &self.devices,
            &self.clients,
        )
            .transaction(|(serials, eks, devices, clients)| {
                let Some(bytes) = devices.get(client_id.as_bytes())? else {
                    return Ok(Deletion::Missing);
                };
                let device = decode(&bytes).map_err(ConflictableTransactionError::Abort)?;
                let client = match clients.get(client_id.as_bytes())? {
                    Some(bytes) => Some(
                        from_json::<Client>(&bytes, "client")
                            .map_err(ConflictableTransactionError::Abort)?,
                    ),
                    None => None,
                };
                if let Err(why) = allow(&device, client.as_ref()) {
                    return Ok(Deletion::Refused(why));
                }
                devices.remove(client_id.as_bytes())?;
                serials.remove(device.serial.as_bytes())?;
                eks.remove(device.ek_fingerprint.as_bytes())?;
                clients.remove(client_id.as_bytes())?;
                Ok(Deletion::Deleted)
            })
            .map_err(tx_error)?;
        if outcome == Deletion::Deleted {
            self.forget_cached(client_id);
        }
        Ok(outcome)
    }

    async fn update_device(
        &self,
        client_id: &str,
        change: &mut (dyn for<'d> FnMut(&'d mut Device) -> bool + Send),
    ) -> Result<Option<Device>, StoreError> {
        loop {
            let Some(current) = self
                .devices
                .get(client_id)
                .map_err(|source| StoreError::Read {
                    what: "device",
                    source,
                })?
            else {
                return Ok(None);
            };
            let mut device = decode(&current)?;
            if !change(&mut device) {
                return Ok(Some(device));
            }
            let bytes = serde_json::to_vec(&device).unwrap_or_default();
            let swapped = self
                .devices
                .compare_and_swap(client_id.as_bytes(), Some(&current), Some(bytes))
                .map_err(|source| StoreError::Write {
                    what: "device",
                    source,
                })?;
            if swapped.is_ok() {
                return Ok(Some(device));
            }
            // Changed in between: start again from the new version.
        }
    }

    async fn devices(&self, after: &str, limit: usize) -> Result<Vec<Device>, StoreError> {
        let start = std::ops::Bound::Excluded(after.as_bytes().to_vec());
        self.devices
            .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|entry| {
                let (_, bytes) = entry.map_err(|source| StoreError::Read {
                    what: "device",
                    source,
                })?;
                decode(&bytes)
            })
            .collect()
    }
}

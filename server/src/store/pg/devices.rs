//! The device registry in PostgreSQL: a device and its client written in one transaction, with
//! the serial and the EK fingerprint unique, so one TPM is one identity across every replica.

use super::{db, from_json, is_unique_violation, key, to_json, PgStore};
use crate::store::{Client, Deletion, DeletionCheck, Device, DeviceStore, StoreError};

#[async_trait::async_trait]
impl DeviceStore for PgStore {
    async fn device(&self, client_id: &str) -> Result<Option<Device>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT record FROM devices WHERE client_id = $1",
                &[&key(client_id)],
            )
            .await
            .map_err(db("read a device"))?;
        row.map(|r| from_json(r.get(0), "device")).transpose()
    }

    async fn device_by_serial(&self, serial: &str) -> Result<Option<Device>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT record FROM devices WHERE serial = $1",
                &[&key(serial)],
            )
            .await
            .map_err(db("read a device"))?;
        row.map(|r| from_json(r.get(0), "device")).transpose()
    }

    async fn register_device(
        &self,
        device: &Device,
        client: &Client,
    ) -> Result<Result<(), Device>, StoreError> {
        let mut conn = self.conn().await?;
        if let Some(existing) = conflicting(&conn, device).await? {
            return Ok(Err(existing));
        }
        let tx = conn.transaction().await.map_err(db("register a device"))?;
        let inserted = tx
            .execute(
                "INSERT INTO devices (client_id, serial, ek_fingerprint, record)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &key(&device.client_id),
                    &key(&device.serial),
                    &device.ek_fingerprint,
                    &to_json(device),
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            // Another replica registered the serial or the EK in between: report theirs.
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                return match conflicting(&conn, device).await? {
                    Some(existing) => Ok(Err(existing)),
                    None => Err(db("register a device")(e)),
                };
            }
            Err(e) => return Err(db("register a device")(e)),
        }
        tx.execute(
            "INSERT INTO clients (client_id, record) VALUES ($1, $2)",
            &[&key(&client.client_id), &to_json(client)],
        )
        .await
        .map_err(db("register a device"))?;
        tx.commit().await.map_err(db("register a device"))?;
        self.forget_cached(&client.client_id);
        Ok(Ok(()))
    }

    async fn delete_device_if(
        &self,
        client_id: &str,
        allow: &DeletionCheck<'_>,
    ) -> Result<Deletion, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db("delete a device"))?;
        let Some(row) = tx
            .query_opt(
                "SELECT record FROM devices WHERE client_id = $1 FOR UPDATE",
                &[&key(client_id)],
            )
            .await
            .map_err(db("read a device"))?
        else {
            return Ok(Deletion::Missing);
        };
        let device: Device = from_json(row.get(0), "device")?;
        let client = tx
            .query_opt(
                "SELECT record FROM clients WHERE client_id = $1 FOR UPDATE",
                &[&key(client_id)],
            )
            .await
            .map_err(db("read a client"))?
            .map(|r| from_json::<Client>(r.get(0), "client"))
            .transpose()?;
        if let Err(why) = allow(&device, client.as_ref()) {
            return Ok(Deletion::Refused(why));
        }
        for sql in [
            "DELETE FROM devices WHERE client_id = $1",
            "DELETE FROM clients WHERE client_id = $1",
        ] {
            tx.execute(sql, &[&key(client_id)])
                .await
                .map_err(db("delete a device"))?;
        }
        tx.commit().await.map_err(db("delete a device"))?;
        self.forget_cached(client_id);
        Ok(Deletion::Deleted)
    }

    async fn update_device(
        &self,
        client_id: &str,
        change: &mut (dyn for<'d> FnMut(&'d mut Device) -> bool + Send),
    ) -> Result<Option<Device>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db("update a device"))?;
        let Some(row) = tx
            .query_opt(
                "SELECT record FROM devices WHERE client_id = $1 FOR UPDATE",
                &[&key(client_id)],
            )
            .await
            .map_err(db("read a device"))?
        else {
            return Ok(None);
        };
        let mut device: Device = from_json(row.get(0), "device")?;
        if !change(&mut device) {
            return Ok(Some(device));
        }
        tx.execute(
            "UPDATE devices SET record = $2 WHERE client_id = $1",
            &[&key(client_id), &to_json(&device)],
        )
        .await
        .map_err(db("update a device"))?;
        tx.commit().await.map_err(db("update a device"))?;
        Ok(Some(device))
    }

    async fn devices(&self, after: &str, limit: usize) -> Result<Vec<Device>, StoreError> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT record FROM devices WHERE client_id > $1 ORDER BY client_id LIMIT $2",
                &[&key(after), &i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await
            .map_err(db("list devices"))?;
        rows.iter().map(|r| from_json(r.get(0), "device")).collect()
    }
}

/// The device already holding `device`'s serial (first) or EK fingerprint, if any.
async fn conflicting(
    conn: &tokio_postgres::Client,
    device: &Device,
) -> Result<Option<Device>, StoreError> {
    let row = conn
        .query_opt(
            "SELECT record FROM devices WHERE serial = $1 OR ek_fingerprint = $2
             ORDER BY (serial = $1) DESC LIMIT 1",
            &[&key(&device.serial), &key(&device.ek_fingerprint)],
        )
        .await
        .map_err(db("read a device"))?;
    row.map(|r| from_json::<Device>(r.get(0), "device"))
        .transpose()
}

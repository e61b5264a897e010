//! Device authorization requests (RFC 8628) and refresh tokens in PostgreSQL: a device code is
//! redeemed once and a refresh token rotated once whichever replica sees it, because each
//! change is a row-locked transaction; a spent refresh token presented anywhere revokes its
//! family everywhere (RFC 9700 §4.14.2).

use super::{db, from_json, is_unique_violation, to_i64, to_json, PgStore};
use crate::store::grants::{
    DeviceGrant, DeviceGrantStore, RefreshGrace, RefreshToken, RefreshTokenStore, Rotation,
    TokenHash,
};
use crate::store::StoreError;

#[async_trait::async_trait]
impl DeviceGrantStore for PgStore {
    async fn insert_device_grant(
        &self,
        device_code: &TokenHash,
        grant: &DeviceGrant,
    ) -> Result<bool, StoreError> {
        let inserted = self
            .conn()
            .await?
            .execute(
                "INSERT INTO device_grants (device_code_hash, user_code, record, expires_at)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &&device_code.0[..],
                    &grant.user_code,
                    &to_json(grant),
                    &to_i64(grant.expires_at),
                ],
            )
            .await;
        match inserted {
            Ok(_) => Ok(true),
            // The user code is taken: the caller draws another.
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(db("store a device grant")(e)),
        }
    }

    async fn device_grant_by_user_code(
        &self,
        user_code: &str,
    ) -> Result<Option<(TokenHash, DeviceGrant)>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT device_code_hash, record FROM device_grants WHERE user_code = $1",
                &[&user_code],
            )
            .await
            .map_err(db("read a device grant"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let Ok(hash) = <[u8; 32]>::try_from(row.get::<_, &[u8]>(0)) else {
            return Ok(None);
        };
        Ok(Some((
            TokenHash(hash),
            from_json(row.get(1), "device grant")?,
        )))
    }

    async fn update_device_grant(
        &self,
        device_code: &TokenHash,
        change: &mut (dyn for<'g> FnMut(&'g DeviceGrant) -> Option<DeviceGrant> + Send),
    ) -> Result<Option<DeviceGrant>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(db("update a device grant"))?;
        let Some(row) = tx
            .query_opt(
                "SELECT record FROM device_grants WHERE device_code_hash = $1 FOR UPDATE",
                &[&&device_code.0[..]],
            )
            .await
            .map_err(db("read a device grant"))?
        else {
            return Ok(None);
        };
        let grant: DeviceGrant = from_json(row.get(0), "device grant")?;
        let Some(next) = change(&grant) else {
            return Ok(Some(grant));
        };
        tx.execute(
            "UPDATE device_grants SET record = $2 WHERE device_code_hash = $1",
            &[&&device_code.0[..], &to_json(&next)],
        )
        .await
        .map_err(db("update a device grant"))?;
        tx.commit().await.map_err(db("update a device grant"))?;
        Ok(Some(next))
    }

    async fn purge_device_grants(&self, now: u64) -> Result<usize, StoreError> {
        let n = self
            .conn()
            .await?
            .execute(
                "DELETE FROM device_grants WHERE expires_at < $1",
                &[&to_i64(now)],
            )
            .await
            .map_err(db("purge device grants"))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

#[async_trait::async_trait]
impl RefreshTokenStore for PgStore {
    async fn refresh_token(
        &self,
        token: &TokenHash,
    ) -> Result<Option<(RefreshToken, bool)>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT t.record, f.revoked_at IS NOT NULL OR f.family IS NULL
                 FROM refresh_tokens t LEFT JOIN refresh_families f ON f.family = t.family
                 WHERE t.token_hash = $1",
                &[&&token.0[..]],
            )
            .await
            .map_err(db("read a refresh token"))?;
        // A token without its family is an orphan: revoked.
        row.map(|r| Ok((from_json(r.get(0), "refresh token")?, r.get(1))))
            .transpose()
    }

    async fn insert_refresh_token(
        &self,
        token: &TokenHash,
        record: &RefreshToken,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(db("store a refresh token"))?;
        put_token(&tx, token, record).await?;
        tx.commit().await.map_err(db("store a refresh token"))
    }

    async fn rotate_refresh_token(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        next_record: &RefreshToken,
        now: u64,
        grace: Option<&RefreshGrace>,
    ) -> Result<Rotation, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(db("rotate a refresh token"))?;
        let Some(row) = tx
            .query_opt(
                "SELECT record FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
                &[&&presented.0[..]],
            )
            .await
            .map_err(db("read a refresh token"))?
        else {
            return Ok(Rotation::Unknown);
        };
        let mut current: RefreshToken = from_json(row.get(0), "refresh token")?;
        let Some(family) = tx
            .query_opt(
                "SELECT revoked_at FROM refresh_families WHERE family = $1 FOR UPDATE",
                &[&current.family],
            )
            .await
            .map_err(db("read a refresh family"))?
        else {
            return Ok(Rotation::FamilyRevoked);
        };
        if family.get::<_, Option<i64>>(0).is_some() {
            return Ok(Rotation::FamilyRevoked);
        }
        if current.spent_at.is_some() {
            // Presented again within its grace while its successor is unused: the client most
            // likely never got the answer. Once.
            if let Some(g) = current.grace.take().filter(|g| now <= g.until) {
                let successor = hex::decode(&g.successor).unwrap_or_default();
                let unspent = match tx
                    .query_opt(
                        "SELECT record FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
                        &[&successor],
                    )
                    .await
                    .map_err(db("read a refresh token"))?
                {
                    Some(row) => from_json::<RefreshToken>(row.get(0), "refresh token")?
                        .spent_at
                        .is_none(),
                    None => false,
                };
                if unspent {
                    tx.execute(
                        "UPDATE refresh_tokens SET record = $2 WHERE token_hash = $1",
                        &[&&presented.0[..], &to_json(&current)],
                    )
                    .await
                    .map_err(db("use a refresh grace"))?;
                    tx.commit().await.map_err(db("use a refresh grace"))?;
                    return Ok(Rotation::Retried { sealed: g.sealed });
                }
            }
            // RFC 9700 §4.14.2: a spent token presented again leaked; end the whole family.
            tx.execute(
                "UPDATE refresh_families SET revoked_at = $2 WHERE family = $1",
                &[&current.family, &to_i64(now)],
            )
            .await
            .map_err(db("revoke a refresh family"))?;
            tx.commit().await.map_err(db("revoke a refresh family"))?;
            return Ok(Rotation::Replayed);
        }
        current.spent_at = Some(now);
        current.grace = grace.cloned();
        tx.execute(
            "UPDATE refresh_tokens SET record = $2 WHERE token_hash = $1",
            &[&&presented.0[..], &to_json(&current)],
        )
        .await
        .map_err(db("spend a refresh token"))?;
        put_token(&tx, next, next_record).await?;
        tx.commit().await.map_err(db("rotate a refresh token"))?;
        Ok(Rotation::Rotated)
    }

    async fn refresh_family_revoked(&self, family: &str) -> Result<bool, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT revoked_at FROM refresh_families WHERE family = $1",
                &[&family],
            )
            .await
            .map_err(db("read a refresh family"))?;
        Ok(row.is_some_and(|r| r.get::<_, Option<i64>>(0).is_some()))
    }

    async fn revoke_refresh_family(&self, family: &str, now: u64) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .await?
            .execute(
                "UPDATE refresh_families SET revoked_at = COALESCE(revoked_at, $2)
                 WHERE family = $1",
                &[&family, &to_i64(now)],
            )
            .await
            .map_err(db("revoke a refresh family"))?;
        Ok(n == 1)
    }

    async fn purge_refresh_tokens(&self, now: u64) -> Result<usize, StoreError> {
        let now = to_i64(now);
        let conn = self.conn().await?;
        let mut n = 0;
        // A family outlives each of its tokens (its expiry is their maximum).
        for sql in [
            "DELETE FROM refresh_tokens WHERE expires_at < $1",
            "DELETE FROM refresh_families WHERE expires_at < $1",
        ] {
            n += conn
                .execute(sql, &[&now])
                .await
                .map_err(db("purge refresh tokens"))?;
        }
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Store `token` and widen its family's expiry to cover it (creating the family if new).
async fn put_token(
    tx: &deadpool_postgres::Transaction<'_>,
    hash: &TokenHash,
    token: &RefreshToken,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO refresh_families (family, expires_at) VALUES ($1, $2)
         ON CONFLICT (family) DO UPDATE
         SET expires_at = GREATEST(refresh_families.expires_at, EXCLUDED.expires_at)",
        &[&token.family, &to_i64(token.expires_at)],
    )
    .await
    .map_err(db("store a refresh family"))?;
    tx.execute(
        "INSERT INTO refresh_tokens (token_hash, family, record, expires_at)
         VALUES ($1, $2, $3, $4)",
        &[
            &&hash.0[..],
            &token.family,
            &to_json(token),
            &to_i64(token.expires_at),
        ],
    )
    .await
    .map_err(db("store a refresh token"))?;
    Ok(())
}

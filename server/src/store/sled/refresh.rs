//! Refresh tokens in sled: one tree, `t‖hash(token)` → the token and `f‖family` → the family,
//! so that a rotation (spend one, store its successor, or revoke the family on a replay) is one
//! transaction.

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::{to_json, SledDb};
use crate::store::grants::{
    RefreshFamily, RefreshGrace, RefreshToken, RefreshTokenStore, Rotation, TokenHash,
};
use crate::store::StoreError;

const TOKEN: u8 = b't';
const FAMILY: u8 = b'f';

fn token_key(hash: &TokenHash) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(TOKEN);
    key.extend_from_slice(&hash.0);
    key
}

fn family_key(family: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + family.len());
    key.push(FAMILY);
    key.extend_from_slice(family.as_bytes());
    key
}

fn read_err(source: sled::Error) -> StoreError {
    StoreError::Read {
        what: "refresh token",
        source,
    }
}

fn write_err(source: sled::Error) -> StoreError {
    StoreError::Write {
        what: "refresh token",
        source,
    }
}

/// Inside a transaction: decode or abort with the decoder's error.
fn decoded<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, ConflictableTransactionError<serde_json::Error>> {
    serde_json::from_slice(bytes).map_err(ConflictableTransactionError::Abort)
}

fn tx_result<T>(result: Result<T, TransactionError<serde_json::Error>>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Storage(source) => write_err(source),
        TransactionError::Abort(source) => StoreError::Decode {
            what: "refresh token",
            source,
        },
    })
}

/// Put `token` and widen its family's expiry to cover it (creating the family if new).
fn put_token(
    tx: &TransactionalTree,
    hash: &TokenHash,
    token: &RefreshToken,
) -> Result<(), ConflictableTransactionError<serde_json::Error>> {
    let fkey = family_key(&token.family);
    let family = match tx.get(&fkey)? {
        Some(bytes) => {
            let mut f: RefreshFamily = decoded(&bytes)?;
            f.expires_at = f.expires_at.max(token.expires_at);
            f
        }
        None => RefreshFamily {
            expires_at: token.expires_at,
            revoked_at: None,
        },
    };
    tx.insert(fkey, to_json(&family))?;
    tx.insert(token_key(hash), to_json(token))?;
    Ok(())
}

#[async_trait::async_trait]
impl RefreshTokenStore for SledDb {
    async fn refresh_token(
        &self,
        token: &TokenHash,
    ) -> Result<Option<(RefreshToken, bool)>, StoreError> {
        let Some(bytes) = self
            .refresh_tokens
            .get(token_key(token))
            .map_err(read_err)?
        else {
            return Ok(None);
        };
        let decode_err = |source| StoreError::Decode {
            what: "refresh token",
            source,
        };
        let record: RefreshToken = serde_json::from_slice(&bytes).map_err(decode_err)?;
        let revoked = match self
            .refresh_tokens
            .get(family_key(&record.family))
            .map_err(read_err)?
        {
            Some(f) => serde_json::from_slice::<RefreshFamily>(&f)
                .map_err(decode_err)?
                .revoked_at
                .is_some(),
            // A token without its family is an orphan: treat it as revoked.
            None => true,
        };
        Ok(Some((record, revoked)))
    }

    async fn insert_refresh_token(
        &self,
        token: &TokenHash,
        record: &RefreshToken,
    ) -> Result<(), StoreError> {
        tx_result(
            self.refresh_tokens
                .transaction(|tx| put_token(tx, token, record)),
        )
    }

    async fn rotate_refresh_token(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        next_record: &RefreshToken,
        now: u64,
        grace: Option<&RefreshGrace>,
    ) -> Result<Rotation, StoreError> {
        let pkey = token_key(presented);
        tx_result(self.refresh_tokens.transaction(|tx| {
            let Some(bytes) = tx.get(&pkey)? else {
                return Ok(Rotation::Unknown);
            };
            let mut current: RefreshToken = decoded(&bytes)?;
            let fkey = family_key(&current.family);
            let Some(fbytes) = tx.get(&fkey)? else {
                return Ok(Rotation::FamilyRevoked);
            };
            let mut family: RefreshFamily = decoded(&fbytes)?;
            if family.revoked_at.is_some() {
                return Ok(Rotation::FamilyRevoked);
            }
            if current.spent_at.is_some() {
                // Presented again within its grace while its successor is unused: the client
                // most likely never got the answer. Once.
                if let Some(g) = current.grace.take().filter(|g| now <= g.until) {
                    let successor = hex::decode(&g.successor)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .map(|b| token_key(&TokenHash(b)));
                    let unspent = match successor {
                        Some(skey) => match tx.get(skey)? {
                            Some(bytes) => decoded::<RefreshToken>(&bytes)?.spent_at.is_none(),
                            None => false,
                        },
                        None => false,
                    };
                    if unspent {
                        tx.insert(pkey.as_slice(), to_json(&current))?;
                        return Ok(Rotation::Retried { sealed: g.sealed });
                    }
                }
                // RFC 9700 §4.14.2: a spent token presented again means it leaked, and the server
                // cannot tell the attacker from the client: end the whole family.
                family.revoked_at = Some(now);
                tx.insert(fkey, to_json(&family))?;
                return Ok(Rotation::Replayed);
            }
            current.spent_at = Some(now);
            current.grace = grace.cloned();
            tx.insert(pkey.as_slice(), to_json(&current))?;
            put_token(tx, next, next_record)?;
            Ok(Rotation::Rotated)
        }))
    }

    async fn refresh_family_revoked(&self, family: &str) -> Result<bool, StoreError> {
        let Some(bytes) = self
            .refresh_tokens
            .get(family_key(family))
            .map_err(read_err)?
        else {
            return Ok(false);
        };
        let f: RefreshFamily =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Decode {
                what: "refresh token",
                source,
            })?;
        Ok(f.revoked_at.is_some())
    }

    async fn revoke_refresh_family(&self, family: &str, now: u64) -> Result<bool, StoreError> {
        let fkey = family_key(family);
        tx_result(self.refresh_tokens.transaction(|tx| {
            let Some(bytes) = tx.get(&fkey)? else {
                return Ok(false);
            };
            let mut f: RefreshFamily = decoded(&bytes)?;
            if f.revoked_at.is_none() {
                f.revoked_at = Some(now);
                tx.insert(fkey.as_slice(), to_json(&f))?;
            }
            Ok(true)
        }))
    }

    async fn purge_refresh_tokens(&self, now: u64) -> Result<usize, StoreError> {
        let mut purged = 0;
        for prefix in [TOKEN, FAMILY] {
            for entry in self.refresh_tokens.scan_prefix([prefix]) {
                let (key, value) = entry.map_err(read_err)?;
                let expires_at = if prefix == TOKEN {
                    serde_json::from_slice::<RefreshToken>(&value).map(|t| t.expires_at)
                } else {
                    serde_json::from_slice::<RefreshFamily>(&value).map(|f| f.expires_at)
                };
                // A family outlives each of its tokens (its expiry is their maximum), so a
                // replayed token is still recognised as long as it could have been accepted.
                if expires_at.is_ok_and(|e| e < now) {
                    self.refresh_tokens.remove(key).map_err(write_err)?;
                    purged += 1;
                }
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(family: &str, expires_at: u64) -> RefreshToken {
        RefreshToken {
            family: family.into(),
            client_id: "c".into(),
            sub: "ann".into(),
            scope: "a".into(),
            issued_at: 0,
            expires_at,
            spent_at: None,
            grace: None,
            dpop_jkt: None,
        }
    }

    async fn rotate(
        store: &SledDb,
        from: &TokenHash,
        to: &TokenHash,
        family: &str,
        now: u64,
        grace: &RefreshGrace,
    ) -> Rotation {
        store
            .rotate_refresh_token(from, to, &token(family, 200), now, Some(grace))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_spent_token_is_retried_once_within_its_grace_while_its_successor_is_unused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        let (t1, t2, t3) = (TokenHash::of("1"), TokenHash::of("2"), TokenHash::of("3"));
        store
            .insert_refresh_token(&t1, &token("fam", 100))
            .await
            .unwrap();
        let grace = RefreshGrace {
            until: 35,
            successor: hex::encode(t2.0),
            sealed: "sealed-2".into(),
        };
        let fam = "fam";
        assert_eq!(
            rotate(&store, &t1, &t2, fam, 5, &grace).await,
            Rotation::Rotated
        );
        // Lost response: t1 again within the grace gets t2 back, once.
        assert_eq!(
            rotate(&store, &t1, &t3, fam, 20, &grace).await,
            Rotation::Retried {
                sealed: "sealed-2".into()
            }
        );
        assert!(
            !store.refresh_token(&t2).await.unwrap().unwrap().1,
            "not revoked"
        );
        assert_eq!(
            rotate(&store, &t1, &t3, fam, 21, &grace).await,
            Rotation::Replayed,
            "only once"
        );
        assert!(
            store.refresh_token(&t2).await.unwrap().unwrap().1,
            "family revoked"
        );

        // After the grace, or once the successor was used, a reuse is a replay.
        let (u1, u2, u3) = (
            TokenHash::of("u1"),
            TokenHash::of("u2"),
            TokenHash::of("u3"),
        );
        store
            .insert_refresh_token(&u1, &token("late", 100))
            .await
            .unwrap();
        let grace = RefreshGrace {
            until: 35,
            successor: hex::encode(u2.0),
            sealed: "x".into(),
        };
        let fam = "late";
        assert_eq!(
            rotate(&store, &u1, &u2, fam, 5, &grace).await,
            Rotation::Rotated
        );
        assert_eq!(
            rotate(&store, &u1, &u3, fam, 36, &grace).await,
            Rotation::Replayed
        );
        let (v1, v2, v3) = (
            TokenHash::of("v1"),
            TokenHash::of("v2"),
            TokenHash::of("v3"),
        );
        store
            .insert_refresh_token(&v1, &token("used", 100))
            .await
            .unwrap();
        let grace = RefreshGrace {
            until: 35,
            successor: hex::encode(v2.0),
            sealed: "x".into(),
        };
        let fam = "used";
        assert_eq!(
            rotate(&store, &v1, &v2, fam, 5, &grace).await,
            Rotation::Rotated
        );
        assert_eq!(
            rotate(&store, &v2, &v3, fam, 6, &grace).await,
            Rotation::Rotated
        );
        assert_eq!(
            rotate(&store, &v1, &TokenHash::of("v4"), fam, 7, &grace).await,
            Rotation::Replayed
        );
    }

    #[tokio::test]
    async fn rotation_spends_once_and_replay_revokes_the_family() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        let (t1, t2, t3) = (TokenHash::of("1"), TokenHash::of("2"), TokenHash::of("3"));
        store
            .insert_refresh_token(&t1, &token("fam", 100))
            .await
            .unwrap();
        assert_eq!(
            store
                .rotate_refresh_token(&t1, &t2, &token("fam", 200), 5, None)
                .await
                .unwrap(),
            Rotation::Rotated
        );
        let (spent, revoked) = store.refresh_token(&t1).await.unwrap().unwrap();
        assert_eq!((spent.spent_at, revoked), (Some(5), false));
        // t1 again: a replay. The family, t2 included, is revoked.
        assert_eq!(
            store
                .rotate_refresh_token(&t1, &t3, &token("fam", 300), 6, None)
                .await
                .unwrap(),
            Rotation::Replayed
        );
        assert!(store.refresh_token(&t2).await.unwrap().unwrap().1);
        assert_eq!(
            store
                .rotate_refresh_token(&t2, &t3, &token("fam", 300), 7, None)
                .await
                .unwrap(),
            Rotation::FamilyRevoked
        );
        assert!(store.refresh_token(&t3).await.unwrap().is_none());
        assert_eq!(
            store
                .rotate_refresh_token(&t3, &t1, &token("fam", 300), 7, None)
                .await
                .unwrap(),
            Rotation::Unknown
        );
    }

    #[tokio::test]
    async fn families_are_revoked_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        let (a, b) = (TokenHash::of("a"), TokenHash::of("b"));
        store
            .insert_refresh_token(&a, &token("f1", 10))
            .await
            .unwrap();
        store
            .insert_refresh_token(&b, &token("f2", 1000))
            .await
            .unwrap();
        assert!(store.revoke_refresh_family("f2", 1).await.unwrap());
        assert!(!store.revoke_refresh_family("nope", 1).await.unwrap());
        assert!(store.refresh_token(&b).await.unwrap().unwrap().1);
        assert_eq!(store.purge_refresh_tokens(500).await.unwrap(), 2);
        assert!(store.refresh_token(&a).await.unwrap().is_none());
        assert!(store.refresh_token(&b).await.unwrap().is_some());
    }
}

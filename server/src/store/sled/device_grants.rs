//! Device authorization requests in sled: one tree, `d‖hash(device_code)` → the request as JSON
//! and `u‖user_code` → the device code's hash.

use super::{from_json, to_json, SledDb};
use crate::store::grants::{DeviceGrant, DeviceGrantStore, TokenHash};
use crate::store::StoreError;

const GRANT: u8 = b'd';
const USER_CODE: u8 = b'u';

fn grant_key(hash: &TokenHash) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(GRANT);
    key.extend_from_slice(&hash.0);
    key
}

fn user_code_key(code: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + code.len());
    key.push(USER_CODE);
    key.extend_from_slice(code.as_bytes());
    key
}

fn decode(bytes: &[u8]) -> Result<DeviceGrant, StoreError> {
    from_json(bytes, "device grant")
}

fn encode(grant: &DeviceGrant) -> Vec<u8> {
    to_json(grant)
}

fn read_err(source: sled::Error) -> StoreError {
    StoreError::Read {
        what: "device grant",
        source,
    }
}

fn write_err(source: sled::Error) -> StoreError {
    StoreError::Write {
        what: "device grant",
        source,
    }
}

#[async_trait::async_trait]
impl DeviceGrantStore for SledDb {
    async fn insert_device_grant(
        &self,
        device_code: &TokenHash,
        grant: &DeviceGrant,
    ) -> Result<bool, StoreError> {
        // Two plain writes instead of a transaction: this is the device endpoint's hot path, and
        // sled transactions cost several times more. The grant goes first under its own random
        // key; the user code is then claimed with a compare-and-swap. A crash in between leaves
        // an unreachable grant that the expiry purge removes.
        let dkey = grant_key(device_code);
        self.device_grants
            .insert(dkey.as_slice(), encode(grant))
            .map_err(write_err)?;
        let claimed = self
            .device_grants
            .compare_and_swap(
                user_code_key(&grant.user_code),
                None::<&[u8]>,
                Some(&device_code.0[..]),
            )
            .map_err(write_err)?;
        if claimed.is_err() {
            self.device_grants.remove(dkey).map_err(write_err)?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn device_grant_by_user_code(
        &self,
        user_code: &str,
    ) -> Result<Option<(TokenHash, DeviceGrant)>, StoreError> {
        let Some(hash) = self
            .device_grants
            .get(user_code_key(user_code))
            .map_err(read_err)?
        else {
            return Ok(None);
        };
        let Ok(hash) = <[u8; 32]>::try_from(hash.as_ref()) else {
            return Ok(None);
        };
        let hash = TokenHash(hash);
        match self.device_grants.get(grant_key(&hash)).map_err(read_err)? {
            Some(bytes) => Ok(Some((hash, decode(&bytes)?))),
            None => Ok(None),
        }
    }

    async fn update_device_grant(
        &self,
        device_code: &TokenHash,
        change: &mut (dyn for<'g> FnMut(&'g DeviceGrant) -> Option<DeviceGrant> + Send),
    ) -> Result<Option<DeviceGrant>, StoreError> {
        let key = grant_key(device_code);
        loop {
            let Some(current) = self.device_grants.get(&key).map_err(read_err)? else {
                return Ok(None);
            };
            let grant = decode(&current)?;
            let Some(next) = change(&grant) else {
                return Ok(Some(grant));
            };
            let swapped = self
                .device_grants
                .compare_and_swap(&key, Some(&current), Some(encode(&next)))
                .map_err(write_err)?;
            if swapped.is_ok() {
                return Ok(Some(next));
            }
            // A concurrent poll or decision changed it in between: start again from its version.
        }
    }

    async fn purge_device_grants(&self, now: u64) -> Result<usize, StoreError> {
        let mut purged = 0;
        for entry in self.device_grants.scan_prefix([GRANT]) {
            let (key, value) = entry.map_err(read_err)?;
            let Ok(grant) = decode(&value) else { continue };
            if grant.expires_at < now {
                self.device_grants.remove(&key).map_err(write_err)?;
                // Free the user code only if it is still this grant's (a grant orphaned by a
                // crash never claimed it, and another may hold it now).
                let hash = &key[1..];
                let _ = self
                    .device_grants
                    .compare_and_swap(user_code_key(&grant.user_code), Some(hash), None::<&[u8]>)
                    .map_err(write_err)?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::grants::GrantState;

    fn grant(code: &str, expires_at: u64) -> DeviceGrant {
        DeviceGrant {
            user_code: code.into(),
            client_id: "c".into(),
            scope: vec!["a".into()],
            created_at: 0,
            expires_at,
            interval: 5,
            last_poll: None,
            state: GrantState::Pending,
            decided_in: None,
            dpop_jkt: None,
        }
    }

    #[tokio::test]
    async fn user_codes_are_unique_and_index_their_grant() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        let (h1, h2) = (TokenHash::of("one"), TokenHash::of("two"));
        assert!(store
            .insert_device_grant(&h1, &grant("BCDFGHJK", 100))
            .await
            .unwrap());
        assert!(!store
            .insert_device_grant(&h2, &grant("BCDFGHJK", 100))
            .await
            .unwrap());
        let (hash, found) = store
            .device_grant_by_user_code("BCDFGHJK")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((hash, found.expires_at), (h1, 100));
        assert!(store
            .device_grant_by_user_code("ZZZZZZZZ")
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn update_applies_or_declines() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        let h = TokenHash::of("one");
        store
            .insert_device_grant(&h, &grant("BCDFGHJK", 100))
            .await
            .unwrap();
        let after = store
            .update_device_grant(&h, &mut |g| {
                Some(DeviceGrant {
                    interval: g.interval + 5,
                    ..g.clone()
                })
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.interval, 10);
        let same = store
            .update_device_grant(&h, &mut |_| None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(same.interval, 10);
        assert!(store
            .update_device_grant(&TokenHash::of("x"), &mut |_| None)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn purge_drops_expired_grants_and_their_codes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        store
            .insert_device_grant(&TokenHash::of("old"), &grant("BBBBBBBB", 10))
            .await
            .unwrap();
        store
            .insert_device_grant(&TokenHash::of("new"), &grant("CCCCCCCC", 1000))
            .await
            .unwrap();
        assert_eq!(store.purge_device_grants(500).await.unwrap(), 1);
        assert!(store
            .device_grant_by_user_code("BBBBBBBB")
            .await
            .unwrap()
            .is_none());
        assert!(store
            .device_grant_by_user_code("CCCCCCCC")
            .await
            .unwrap()
            .is_some());
        // The code is free again.
        assert!(store
            .insert_device_grant(&TokenHash::of("again"), &grant("BBBBBBBB", 1000))
            .await
            .unwrap());
    }
}

//! Users and verification-page sessions in sled: `users` keyed by lowercase name,
//! `web_sessions` keyed by the SHA-256 of the session cookie.

use super::{get_json, to_json, SledDb};
use crate::store::grants::TokenHash;
use crate::store::users::{SessionStore, User, UserStore, WebSession};
use crate::store::StoreError;

#[async_trait::async_trait]
impl UserStore for SledDb {
    async fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        get_json(&self.users, username.as_bytes(), "user")
    }

    async fn insert_new_user(&self, user: &User) -> Result<bool, StoreError> {
        let swapped = self
            .users
            .compare_and_swap(user.username.as_bytes(), None::<&[u8]>, Some(to_json(user)))
            .map_err(|source| StoreError::Write {
                what: "user",
                source,
            })?;
        Ok(swapped.is_ok())
    }
}

#[async_trait::async_trait]
impl SessionStore for SledDb {
    async fn web_session(&self, id: &TokenHash) -> Result<Option<WebSession>, StoreError> {
        get_json(&self.web_sessions, id.0, "session")
    }

    async fn put_web_session(
        &self,
        id: &TokenHash,
        session: &WebSession,
    ) -> Result<(), StoreError> {
        self.web_sessions
            .insert(id.0, to_json(session))
            .map(|_| ())
            .map_err(|source| StoreError::Write {
                what: "session",
                source,
            })
    }

    async fn delete_web_session(&self, id: &TokenHash) -> Result<(), StoreError> {
        self.web_sessions
            .remove(id.0)
            .map(|_| ())
            .map_err(|source| StoreError::Write {
                what: "session",
                source,
            })
    }

    async fn purge_web_sessions(&self, now: u64) -> Result<usize, StoreError> {
        let mut purged = 0;
        for entry in self.web_sessions.iter() {
            let (key, value) = entry.map_err(|source| StoreError::Read {
                what: "session",
                source,
            })?;
            let expired =
                serde_json::from_slice::<WebSession>(&value).map_or(true, |s| s.expires_at < now);
            if expired {
                self.web_sessions
                    .remove(key)
                    .map_err(|source| StoreError::Write {
                        what: "session",
                        source,
                    })?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn web_session_count(&self) -> Result<usize, StoreError> {
        Ok(self.web_sessions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn users_are_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        let ann = User {
            username: "ann".into(),
            password_hash: "h".into(),
            created_at: 1,
            disabled: false,
        };
        assert!(store.insert_new_user(&ann).await.unwrap());
        assert!(!store.insert_new_user(&ann).await.unwrap());
        assert_eq!(store.user("ann").await.unwrap(), Some(ann));
        assert_eq!(store.user("bob").await.unwrap(), None);
    }

    #[tokio::test]
    async fn sessions_round_trip_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        let s = |expires_at| WebSession {
            csrf: "c".into(),
            user: Some("ann".into()),
            created_at: 0,
            expires_at,
            codes: vec![],
        };
        let (old, new) = (TokenHash::of("old"), TokenHash::of("new"));
        store.put_web_session(&old, &s(10)).await.unwrap();
        store.put_web_session(&new, &s(1000)).await.unwrap();
        assert_eq!(store.web_session(&new).await.unwrap(), Some(s(1000)));
        assert_eq!(store.web_session_count().await.unwrap(), 2);
        assert_eq!(store.purge_web_sessions(500).await.unwrap(), 1);
        assert_eq!(store.web_session_count().await.unwrap(), 1);
        assert!(store.web_session(&old).await.unwrap().is_none());
        store.delete_web_session(&new).await.unwrap();
        assert!(store.web_session(&new).await.unwrap().is_none());
    }
}

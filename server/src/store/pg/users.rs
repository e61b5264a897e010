//! People who approve devices, and their signed-in verification-page sessions, in PostgreSQL.

use super::{db, from_json, key, to_i64, to_json, PgStore};
use crate::store::grants::TokenHash;
use crate::store::users::{SessionStore, User, UserStore, WebSession};
use crate::store::StoreError;

#[async_trait::async_trait]
impl UserStore for PgStore {
    async fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT record FROM users WHERE username = $1",
                &[&key(username)],
            )
            .await
            .map_err(db("read a user"))?;
        row.map(|r| from_json(r.get(0), "user")).transpose()
    }

    async fn insert_new_user(&self, user: &User) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .await?
            .execute(
                "INSERT INTO users (username, record) VALUES ($1, $2)
                 ON CONFLICT (username) DO NOTHING",
                &[&key(&user.username), &to_json(user)],
            )
            .await
            .map_err(db("create a user"))?;
        Ok(n == 1)
    }
}

#[async_trait::async_trait]
impl SessionStore for PgStore {
    async fn web_session(&self, id: &TokenHash) -> Result<Option<WebSession>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT record FROM web_sessions WHERE id_hash = $1",
                &[&&id.0[..]],
            )
            .await
            .map_err(db("read a session"))?;
        row.map(|r| from_json(r.get(0), "session")).transpose()
    }

    async fn put_web_session(
        &self,
        id: &TokenHash,
        session: &WebSession,
    ) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO web_sessions (id_hash, record, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (id_hash) DO UPDATE SET record = EXCLUDED.record,
                                                     expires_at = EXCLUDED.expires_at",
                &[&&id.0[..], &to_json(session), &to_i64(session.expires_at)],
            )
            .await
            .map_err(db("write a session"))?;
        Ok(())
    }

    async fn delete_web_session(&self, id: &TokenHash) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute("DELETE FROM web_sessions WHERE id_hash = $1", &[&&id.0[..]])
            .await
            .map_err(db("end a session"))?;
        Ok(())
    }

    async fn purge_web_sessions(&self, now: u64) -> Result<usize, StoreError> {
        let n = self
            .conn()
            .await?
            .execute(
                "DELETE FROM web_sessions WHERE expires_at < $1",
                &[&to_i64(now)],
            )
            .await
            .map_err(db("purge sessions"))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn web_session_count(&self) -> Result<usize, StoreError> {
        let n: i64 = self
            .conn()
            .await?
            .query_one("SELECT count(*) FROM web_sessions", &[])
            .await
            .map_err(db("count sessions"))?
            .get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

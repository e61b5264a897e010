//! Records and storage traits of the people who approve devices: user accounts (passwords as
//! Argon2id PHC strings) and their signed-in browser sessions on the verification page.

use serde::{Deserialize, Serialize};

use super::grants::TokenHash;
use super::StoreError;

/// A person who may approve devices. Created by the operator.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Login name, lowercase.
    pub username: String,
    /// Argon2id hash in PHC string form (salt and parameters included).
    pub password_hash: String,
    /// When the account was created.
    pub created_at: u64,
    /// A disabled user cannot sign in, and tokens acting for them cannot be refreshed.
    #[serde(default)]
    pub disabled: bool,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// User accounts.
#[async_trait::async_trait]
pub trait UserStore: Send + Sync {
    /// The user with this (lowercase) name.
    async fn user(&self, username: &str) -> Result<Option<User>, StoreError>;
    /// Create a user only if the name is free; false if it was taken.
    async fn insert_new_user(&self, user: &User) -> Result<bool, StoreError>;
}

/// A signed-in browser session on the verification page (anonymous visitors are never stored).
/// The cookie holds 256 random bits; the store only their hash. Failure counters are kept in
/// memory by the page (`web::limits`), not here.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSession {
    /// Anti-CSRF token every form of this session must echo.
    pub csrf: String,
    /// The signed-in user, if any.
    #[serde(default)]
    pub user: Option<String>,
    /// When it was created.
    pub created_at: u64,
    /// When it stops working.
    pub expires_at: u64,
    /// User codes (normalised) this session entered through the code form, newest last: the
    /// consent and outcome pages show only these.
    #[serde(default)]
    pub codes: Vec<String>,
}

impl std::fmt::Debug for WebSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSession")
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Verification-page sessions.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    /// The session with this id hash.
    async fn web_session(&self, id: &TokenHash) -> Result<Option<WebSession>, StoreError>;
    /// Create or replace a session.
    async fn put_web_session(&self, id: &TokenHash, session: &WebSession)
        -> Result<(), StoreError>;
    /// End a session.
    async fn delete_web_session(&self, id: &TokenHash) -> Result<(), StoreError>;
    /// Drop sessions that expired before `now`.
    async fn purge_web_sessions(&self, now: u64) -> Result<usize, StoreError>;
    /// How many sessions are stored (for operators and tests: anonymous visits must add none).
    async fn web_session_count(&self) -> Result<usize, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_hashes_and_csrf() {
        let u = User {
            username: "ann".into(),
            password_hash: "$argon2id$secretish".into(),
            created_at: 0,
            disabled: false,
        };
        assert!(!format!("{u:?}").contains("argon2id"));
        let s = WebSession {
            csrf: "csrf-value".into(),
            user: None,
            created_at: 0,
            expires_at: 1,
            codes: vec![],
        };
        assert!(!format!("{s:?}").contains("csrf-value"));
    }
}

//! Records and storage traits of the people who approve devices: user accounts (passwords as
//! Argon2id PHC strings) and their browser sessions on the verification page, with the failure
//! counters that lock out guessing.

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
pub trait UserStore: Send + Sync {
    /// The user with this (lowercase) name.
    fn user(&self, username: &str) -> Result<Option<User>, StoreError>;
    /// Create a user only if the name is free; false if it was taken.
    fn insert_new_user(&self, user: &User) -> Result<bool, StoreError>;
}

/// Failures counted in a fixed window: `limit` failures lock until the window that began with
/// the first of them ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureWindow {
    /// Failures in the current window.
    pub count: u32,
    /// When the current window began.
    pub since: u64,
}

impl FailureWindow {
    /// Seconds until the lock lifts, if `limit` failures happened in the window still running.
    pub fn locked_for(&self, limit: u32, window: u64, now: u64) -> Option<u64> {
        let ends = self.since.saturating_add(window);
        (self.count >= limit && now < ends).then(|| ends - now)
    }

    /// Count one failure at `now`, starting a new window if the last one ended.
    pub fn record(&mut self, window: u64, now: u64) {
        if now >= self.since.saturating_add(window) {
            *self = FailureWindow {
                count: 0,
                since: now,
            };
        }
        self.count = self.count.saturating_add(1);
    }
}

/// A browser session on the verification page. The cookie holds 256 random bits; the store
/// only their hash.
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
    /// Wrong user codes entered in this session.
    #[serde(default)]
    pub failed_codes: FailureWindow,
    /// Failed sign-ins in this session.
    #[serde(default)]
    pub failed_sign_ins: FailureWindow,
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
pub trait SessionStore: Send + Sync {
    /// The session with this id hash.
    fn web_session(&self, id: &TokenHash) -> Result<Option<WebSession>, StoreError>;
    /// Create or replace a session.
    fn put_web_session(&self, id: &TokenHash, session: &WebSession) -> Result<(), StoreError>;
    /// End a session.
    fn delete_web_session(&self, id: &TokenHash) -> Result<(), StoreError>;
    /// Drop sessions that expired before `now`.
    fn purge_web_sessions(&self, now: u64) -> Result<usize, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_locks_at_the_limit_and_lifts_when_it_ends() {
        let mut w = FailureWindow::default();
        for t in 100..103 {
            assert_eq!(w.locked_for(3, 60, t), None);
            w.record(60, t);
        }
        assert_eq!(w.locked_for(3, 60, 103), Some(57));
        assert_eq!(w.locked_for(3, 60, 160), None);
        w.record(60, 170);
        assert_eq!(
            w,
            FailureWindow {
                count: 1,
                since: 170
            }
        );
    }

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
            failed_codes: FailureWindow::default(),
            failed_sign_ins: FailureWindow::default(),
        };
        assert!(!format!("{s:?}").contains("csrf-value"));
    }
}

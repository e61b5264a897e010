//! The people who approve devices: accounts created by the operator (`user add`, `POST
//! /admin/users`), passwords hashed with Argon2id, and the sign-in check of the verification page.
//!
//! Argon2id is deliberately slow (~20 ms here) and takes 19 MiB per run, so hashing and checking
//! run on the blocking pool, at most [`PasswordChecks`] at once (one per core: more would only
//! queue for the CPU while holding memory); an unknown name costs the same as a wrong password so
//! that timing does not reveal which names exist.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

use crate::oauth::{AuthServer, OAuthError, RequestCtx};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::users::User;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted; more only costs hashing time.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest user name.
pub const MAX_USERNAME_CHARS: usize = 64;

/// Why an account could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The name is not 1–64 of `a-z 0-9 . _ @ -`.
    #[error("user name must be 1 to {MAX_USERNAME_CHARS} characters of a-z 0-9 . _ @ -")]
    InvalidName,
    /// The password is too short or too long.
    #[error("password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} bytes long")]
    InvalidPassword,
    /// The name is taken.
    #[error("user {0} already exists")]
    Exists(String),
    /// Argon2 refused (it only does for parameters we never pass).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task was lost.
    #[error("password hashing task failed")]
    Task,
    /// No password could be read.
    #[error("cannot read the password from standard input")]
    ReadPassword(#[source] std::io::Error),
    /// The database could not be opened or written (is the server still running?).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The data directory's store could not be opened.
    #[error(transparent)]
    Backend(crate::backend::BackendError),
}

/// The slots for Argon2id runs: a request that finds none free is turned away at once (the
/// page answers 503 with `Retry-After`) instead of waiting in a queue without bound, so memory
/// stays at about 19 MiB per slot however many sign-ins arrive together.
#[derive(Debug, Clone)]
pub struct PasswordChecks {
    slots: Arc<Semaphore>,
}

impl PasswordChecks {
    /// `slots` concurrent runs (at least one).
    pub fn new(slots: usize) -> Self {
        PasswordChecks {
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// One slot per core this process may use.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, usize::from))
    }

    /// A free slot, if there is one now.
    fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// A slot, waiting for one (for authenticated callers only: the admin API).
    async fn slot(&self) -> Result<OwnedSemaphorePermit, AccountError> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AccountError::Task)
    }
}

/// What a sign-in attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignIn {
    /// The password matched an enabled account: its canonical name.
    Accepted(String),
    /// Wrong name or password, or a disabled account (audited).
    Refused,
    /// Every password-check slot was busy: nothing was checked, nothing audited.
    Busy,
}

/// A password as a request carried it: zeroed on drop, never printed.
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wrap a presented password.
    pub fn new(text: String) -> Self {
        Password(Zeroizing::new(text))
    }

    /// The text, for hashing or checking.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Password::new)
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// `POST /admin/users` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Login name; stored lowercase.
    pub username: String,
    /// The password.
    pub password: Password,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A created account, as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct UserView {
    /// Login name.
    pub username: String,
    /// When it was created.
    pub created_at: u64,
}

/// The canonical form of a user name: trimmed, ASCII-lowercased, validated.
pub fn normalize_username(name: &str) -> Result<String, AccountError> {
    let name = name.trim().to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_USERNAME_CHARS
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'@' | b'-')
        });
    if ok {
        Ok(name)
    } else {
        Err(AccountError::InvalidName)
    }
}

/// Hash a password with Argon2id (m = 19 MiB, t = 2, p = 1: the `argon2` crate's defaults, which
/// follow the OWASP recommendation) and a fresh 128-bit salt. CPU-heavy: call off the runtime.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::InvalidPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `stored` (parameters are read from it, so hashes
/// made with older parameters keep working). CPU-heavy: call off the runtime.
pub fn password_matches(stored: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(stored).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash no password matches, checked against when the user does not exist so that the answer
/// takes as long as for a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let random = crate::secret::Secret::generate();
        // A 43-character random string is always a valid password, so this never falls back.
        hash_password(random.expose()).unwrap_or_default()
    })
}

/// A user record for `name` with `password`, hashed (CPU-heavy: call off the runtime).
pub fn new_user(name: &str, password: &str, now: u64) -> Result<User, AccountError> {
    let username = normalize_username(name)?;
    Ok(User {
        username,
        password_hash: hash_password(password)?,
        created_at: now,
        disabled: false,
    })
}

/// `hallmark-server user add NAME`: create a user offline, the password being the first line of
/// `input`. Audited (`user.created`, actor `cli`) and flushed before it returns.
pub fn add_user_from(
    data_dir: &std::path::Path,
    name: &str,
    mut input: impl std::io::BufRead,
) -> Result<String, AccountError> {
    let mut line = Zeroizing::new(String::new());
    input
        .read_line(&mut line)
        .map_err(AccountError::ReadPassword)?;
    let password = line.trim_end_matches(['\n', '\r']);
    let now = crate::unix_now();
    let user = new_user(name, password, now)?;
    crate::store::block_on(async {
        use crate::backend::{database_of, open, Role};
        let database = database_of(data_dir).map_err(AccountError::Backend)?;
        let backend = open(data_dir, database.as_ref(), Role::Command)
            .await
            .map_err(AccountError::Backend)?;
        let store = backend.store;
        if !store.insert_new_user(&user).await? {
            return Err(AccountError::Exists(user.username));
        }
        let event = AuditEvent::new("user.created", Outcome::Success)
            .actor("cli")
            .subject(&user.username);
        store.append(event, now * 1000)?;
        // Durability::flush may block (it is meant for a blocking thread).
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| {
                AccountError::Backend(crate::backend::BackendError::Config {
                    path: "flush".into(),
                    reason: e.to_string(),
                })
            })??;
        Ok(user.username)
    })?
}

impl AuthServer {
    /// Create a user; audited (`user.created`) and durable before it returns.
    pub async fn create_user(
        &self,
        new: NewUser,
        actor: &str,
        ctx: &RequestCtx,
    ) -> Result<UserView, OAuthError> {
        let now = ctx.now;
        let slot = self
            .password_checks
            .slot()
            .await
            .map_err(OAuthError::internal)?;
        let user = tokio::task::spawn_blocking(move || {
            // The slot is held until the hash is made, even if the request is dropped.
            let _slot = slot;
            new_user(&new.username, new.password.expose(), now)
        })
        .await
        .map_err(|_| OAuthError::internal(AccountError::Task))?
        .map_err(|e| OAuthError::InvalidRequest(e.to_string().into()))?;
        if !self
            .users
            .insert_new_user(&user)
            .await
            .map_err(OAuthError::from)?
        {
            return Err(OAuthError::InvalidRequest(
                AccountError::Exists(user.username).to_string().into(),
            ));
        }
        let event = AuditEvent::new("user.created", Outcome::Success)
            .actor(actor)
            .subject(&user.username);
        self.record(ctx, event).await?;
        Ok(UserView {
            username: user.username,
            created_at: user.created_at,
        })
    }

    /// Check a sign-in, if a password-check slot is free. Failures are audited
    /// (`user.sign_in_failed`), successes too (`user.signed_in`): one entry per password
    /// checked.
    pub async fn sign_in(
        &self,
        name: &str,
        password: Password,
        ctx: &RequestCtx,
    ) -> Result<SignIn, OAuthError> {
        let Some(slot) = self.password_checks.try_slot() else {
            self.metrics.password_checks_busy.inc();
            return Ok(SignIn::Busy);
        };
        let username = normalize_username(name).ok();
        let user = match &username {
            Some(n) => self.users.user(n).await.map_err(OAuthError::from)?,
            None => None,
        };
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        self.metrics.password_checks.inc();
        let matches = tokio::task::spawn_blocking(move || {
            // Moved in, so the slot is held until Argon2 finishes even if the request (and so
            // this future) is dropped: a client that disconnects cannot free its slot early.
            let _slot = slot;
            match &stored {
                Some(hash) => password_matches(hash, password.expose()),
                None => password_matches(decoy_hash(), password.expose()),
            }
        })
        .await
        .map_err(|_| OAuthError::internal(AccountError::Task))?;
        let ok = matches && user.as_ref().is_some_and(|u| !u.disabled);
        let reason = match (&user, matches) {
            (None, _) => "unknown user",
            (Some(u), true) if u.disabled => "user disabled",
            (Some(_), true) => "password accepted",
            (Some(_), false) => "wrong password",
        };
        let mut event = AuditEvent::new(
            if ok {
                "user.signed_in"
            } else {
                "user.sign_in_failed"
            },
            if ok {
                Outcome::Success
            } else {
                Outcome::Failure
            },
        )
        .reason(reason);
        // The name someone typed is recorded only if it is a real account: a password typed
        // into the name field must not land in the log.
        if let Some(u) = &user {
            event = event.actor(&u.username).subject(&u.username);
        }
        self.record(ctx, event).await?;
        Ok(match user {
            Some(u) if ok => SignIn::Accepted(u.username),
            _ => SignIn::Refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(
            normalize_username("  Ann.Lee@Example ").unwrap(),
            "ann.lee@example"
        );
        for bad in ["", " ", "a b", "ann<script>", "é", &"a".repeat(65)] {
            assert!(normalize_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn argon2id_hashes_verify_only_their_password() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(password_matches(&h, "correct horse"));
        assert!(!password_matches(&h, "correct horsf"));
        assert!(!password_matches("not a phc string", "correct horse"));
        assert!(hash_password("short").is_err());
        assert_ne!(hash_password("correct horse").unwrap(), h, "salted");
    }

    #[test]
    fn decoy_matches_nothing() {
        assert!(!password_matches(decoy_hash(), ""));
        assert!(decoy_hash().starts_with("$argon2id$"));
    }
}

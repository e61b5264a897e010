//! Records and storage traits of the device authorization grant (RFC 8628) and of refresh tokens
//! (RFC 6749 §6, rotated as RFC 9700 §4.14.2 says). Device codes and refresh tokens are stored only
//! as the SHA-256 of their 256 random bits, so a copy of the database redeems nothing.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;

/// SHA-256 of a device code or refresh token: the key it is stored under.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hash a presented token.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Even the hash is an index into live credentials; it has no business in a log.
        f.write_str("TokenHash(<redacted>)")
    }
}

/// Where a device authorization request stands (RFC 8628 §3.3–§3.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum GrantState {
    /// Waiting for a person to approve or deny it.
    Pending,
    /// Approved by `user`; the next poll gets tokens.
    Approved {
        /// The approving user, the tokens' `sub`.
        user: String,
        /// When.
        at: u64,
    },
    /// Denied by `user`; polls get `access_denied`.
    Denied {
        /// The denying user.
        user: String,
        /// When.
        at: u64,
    },
    /// Tokens were issued; the device code is spent.
    Redeemed {
        /// The approving user.
        user: String,
        /// When the tokens were issued.
        at: u64,
    },
}

/// One device authorization request, stored under the hash of its device code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGrant {
    /// The user code, normalised (8 letters, no dash). Short-lived, shown to the person.
    pub user_code: String,
    /// The requesting client (the device).
    pub client_id: String,
    /// Scope to grant on approval.
    pub scope: Vec<String>,
    /// When it was requested.
    pub created_at: u64,
    /// When the device code stops working (RFC 8628 §3.2 `expires_in`).
    pub expires_at: u64,
    /// Current polling interval in seconds; grows by 5 on every `slow_down` (§3.5).
    pub interval: u64,
    /// When the device last polled, for `slow_down`.
    #[serde(default)]
    pub last_poll: Option<u64>,
    /// Where it stands.
    pub state: GrantState,
    /// An opaque tag of the verification-page session that approved or denied it, so that
    /// session is told "approved" again and any other "already decided".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_in: Option<String>,
    /// The thumbprint of the DPoP key whose proof came with the device authorization request
    /// (RFC 9449 §10): every poll must carry a proof by that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

/// Pending device authorization requests.
#[async_trait::async_trait]
pub trait DeviceGrantStore: Send + Sync {
    /// Store a new request under its device code's hash, claiming its user code. False, with
    /// nothing written, when that user code is already in use (the caller draws another).
    async fn insert_device_grant(
        &self,
        device_code: &TokenHash,
        grant: &DeviceGrant,
    ) -> Result<bool, StoreError>;
    /// The request holding this (normalised) user code, with its device code's hash.
    async fn device_grant_by_user_code(
        &self,
        user_code: &str,
    ) -> Result<Option<(TokenHash, DeviceGrant)>, StoreError>;
    /// Change a request atomically: `change` sees the current record and returns its replacement,
    /// or `None` to leave it; it may run more than once under contention. Returns the record as
    /// stored afterwards, or `None` if there is no such request.
    async fn update_device_grant(
        &self,
        device_code: &TokenHash,
        change: &mut (dyn for<'g> FnMut(&'g DeviceGrant) -> Option<DeviceGrant> + Send),
    ) -> Result<Option<DeviceGrant>, StoreError>;
    /// Drop requests that expired before `now`, with their user codes.
    async fn purge_device_grants(&self, now: u64) -> Result<usize, StoreError>;
}

/// One refresh token, stored under its hash. Every token descends from one device grant; the
/// tokens of one grant form a *family* that is revoked together (RFC 9700 §4.14.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    /// The family: one per original grant.
    pub family: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The user it acts for.
    pub sub: String,
    /// Scope it may ask for (space-delimited); a refresh may only narrow it.
    pub scope: String,
    /// When it was issued.
    pub issued_at: u64,
    /// When it stops working.
    pub expires_at: u64,
    /// When it was exchanged for its successor; a spent token presented again is a replay
    /// (unless its `grace` allows it once).
    #[serde(default)]
    pub spent_at: Option<u64>,
    /// Set when it is spent: what lets it be presented once more, shortly after, in case the
    /// response carrying its successor was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<RefreshGrace>,
    /// The RFC 7638 thumbprint of the DPoP key the token is bound to (RFC 9449 §5: a public
    /// client's refresh token is redeemable only with a proof by that key). Copied to every
    /// successor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

/// The grace of a spent refresh token: presented again before `until`, while its successor is
/// unspent, it is answered once more with the same successor instead of revoking the family
/// (a client whose refresh response was lost in transit retries with the token it still has).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshGrace {
    /// The end of the grace, Unix seconds.
    pub until: u64,
    /// Hex SHA-256 of the successor.
    pub successor: String,
    /// The successor itself, sealed (AES-256-GCM) under a key derived from the spent token,
    /// which the server does not keep: only its holder can have it opened. base64url.
    pub sealed: String,
}

/// A family's shared state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshFamily {
    /// Latest expiry of any of its tokens; after it the whole family can be forgotten.
    pub expires_at: u64,
    /// Set when the family was revoked; no token of it works afterwards.
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

/// What presenting a refresh token for rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rotation {
    /// It was live: it is now spent and its successor stored.
    Rotated,
    /// It had been spent already: a replay. Its family is now revoked.
    Replayed,
    /// Its family was revoked earlier.
    FamilyRevoked,
    /// No such token.
    Unknown,
    /// It had been spent moments ago and its grace allowed one more use: here is its
    /// successor, still sealed ([`RefreshGrace::sealed`]). The grace is used up.
    Retried {
        /// The sealed successor.
        sealed: String,
    },
}

/// Refresh tokens and their families.
#[async_trait::async_trait]
pub trait RefreshTokenStore: Send + Sync {
    /// A token and whether its family is revoked.
    async fn refresh_token(
        &self,
        token: &TokenHash,
    ) -> Result<Option<(RefreshToken, bool)>, StoreError>;
    /// Store a token, creating its family if it is the first.
    async fn insert_refresh_token(
        &self,
        token: &TokenHash,
        record: &RefreshToken,
    ) -> Result<(), StoreError>;
    /// Atomically spend `presented` (recording `grace` with it) and store `next` as its
    /// successor. If `presented` was spent already: within its grace, while the successor is
    /// unspent, use the grace up and answer [`Rotation::Retried`]; otherwise revoke its family
    /// (RFC 9700 §4.14.2).
    async fn rotate_refresh_token(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        next_record: &RefreshToken,
        now: u64,
        grace: Option<&RefreshGrace>,
    ) -> Result<Rotation, StoreError>;
    /// Whether the family was revoked (false for a family unknown or forgotten).
    async fn refresh_family_revoked(&self, family: &str) -> Result<bool, StoreError>;
    /// Revoke a whole family. False if there is no such family.
    async fn revoke_refresh_family(&self, family: &str, now: u64) -> Result<bool, StoreError>;
    /// Drop tokens and families that expired before `now`.
    async fn purge_refresh_tokens(&self, now: u64) -> Result<usize, StoreError>;
}

/// How long a device grant is kept after it expires, seconds: while it is kept, the
/// verification page can tell a person that a code expired or was already used instead of
/// calling it "not valid" (which counts as a guess).
pub const DEVICE_GRANT_RETENTION: u64 = 3600;

/// Drop every expired device grant (after [`DEVICE_GRANT_RETENTION`]), refresh token and
/// verification-page session; how many.
pub async fn purge_expired<S>(store: &S, now: u64) -> Result<usize, StoreError>
where
    S: DeviceGrantStore + RefreshTokenStore + super::SessionStore + ?Sized,
{
    Ok(store
        .purge_device_grants(now.saturating_sub(DEVICE_GRANT_RETENTION))
        .await?
        + store.purge_refresh_tokens(now).await?
        + store.purge_web_sessions(now).await?)
}

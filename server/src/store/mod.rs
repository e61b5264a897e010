//! Storage: narrow traits, one per concern, so that another backend can follow sled. Server state
//! holds `Arc<dyn …>` of each; nothing above this module names sled.

pub mod audit;
mod commit;
pub mod grants;
pub mod health;
pub mod pg;
mod sled;
pub mod users;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::secret::SecretHash;

use self::audit::{Anchor, AuditEntry, AuditEvent, ChainBreak, ChainHead};

pub use self::commit::{CommitError, GroupCommit};
pub use self::grants::{DeviceGrantStore, RefreshTokenStore};
pub use self::health::StorageHealth;
pub use self::pg::{DatabaseUrl, PgStore};
pub use self::sled::SledStore;
pub use self::users::{SessionStore, UserStore};

/// A storage operation that failed. The message names the operation, never a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened (missing, locked by another process, corrupt).
    #[error("cannot open the database at {path}")]
    Open {
        /// Where the database was looked for.
        path: String,
        /// What the storage engine said.
        source: ::sled::Error,
    },
    /// Another process holds the database (a server already running on this data directory).
    #[error("the database at {path} is in use by another process (is a server already running on this data directory?)")]
    Locked {
        /// The database directory.
        path: String,
    },
    /// A read failed.
    #[error("storage read failed ({what})")]
    Read {
        /// What was being read.
        what: &'static str,
        /// What the storage engine said.
        source: ::sled::Error,
    },
    /// A write failed.
    #[error("storage write failed ({what})")]
    Write {
        /// What was being written.
        what: &'static str,
        /// What the storage engine said.
        source: ::sled::Error,
    },
    /// Flushing to disk failed.
    #[error("storage flush failed")]
    Flush {
        /// What the storage engine said.
        source: ::sled::Error,
    },
    /// `database_url` is not a PostgreSQL connection string (it is never printed).
    #[error("database_url is not a valid PostgreSQL URL or connection string")]
    DatabaseUrl,
    /// The database connection could not be set up (TLS roots, pool).
    #[error("cannot set up the database connection: {reason}")]
    DatabaseSetup {
        /// What is wrong.
        reason: String,
    },
    /// The database cannot be reached now: retry later.
    #[error("the database is unavailable ({what}): {reason}")]
    DatabaseUnavailable {
        /// What was being done.
        what: &'static str,
        /// What the driver said.
        reason: String,
    },
    /// The database refused an operation.
    #[error("database operation failed ({what})")]
    Database {
        /// What was being done.
        what: &'static str,
        /// What the driver said.
        source: tokio_postgres::Error,
    },
    /// Another live process holds this replica's audit chain.
    #[error("audit chain {chain} is in use by another running replica (was this data directory copied from a running one? give each replica its own: remove its replica-id file)")]
    ChainInUse {
        /// The chain.
        chain: String,
    },
    /// The offline commands' runtime for store calls could not start.
    #[error("cannot start a runtime for the store")]
    Runtime {
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored record could not be decoded.
    #[error("stored {what} record is corrupt")]
    Decode {
        /// Which kind of record.
        what: &'static str,
        /// What the decoder said.
        source: serde_json::Error,
    },
    /// A stored binary record could not be decoded.
    #[error("stored {what} record is corrupt: {reason}")]
    Corrupt {
        /// Which kind of record.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The store is closed for a moment (being reopened after a failure).
    #[error("storage is being reopened")]
    Reopening,
    /// An audit log file could not be written or read.
    #[error("audit file {what} failed ({path})")]
    AuditFile {
        /// What was done: "append to", "create", "read"…
        what: &'static str,
        /// The file or directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The filesystem under the store refused a test write.
    #[error("the filesystem at {path} does not take writes")]
    Probe {
        /// The file written.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether this is an outage — the disk, the file system or the database server failing or
    /// out of reach, which may pass — rather than data the store cannot make sense of. An
    /// outage is answered 503 and retried; anything else is a bug or corruption.
    pub fn is_outage(&self) -> bool {
        let engine = |e: &::sled::Error| matches!(e, ::sled::Error::Io(_));
        match self {
            StoreError::Open { source, .. }
            | StoreError::Read { source, .. }
            | StoreError::Write { source, .. }
            | StoreError::Flush { source } => engine(source),
            StoreError::Locked { .. }
            | StoreError::Reopening
            | StoreError::Probe { .. }
            | StoreError::AuditFile { .. }
            | StoreError::DatabaseUnavailable { .. } => true,
            // A database that answers, but with an error other than "cannot serve now".
            StoreError::Database { source, .. } => database_outage(source),
            StoreError::Decode { .. }
            | StoreError::Corrupt { .. }
            | StoreError::DatabaseUrl
            | StoreError::DatabaseSetup { .. }
            | StoreError::ChainInUse { .. }
            | StoreError::Runtime { .. } => false,
        }
    }
}

impl StoreError {
    /// The error and its cause on one line, for the operator: `storage write failed (audit
    /// segment): No space left on device (os error 28)` — the OS error as the OS says it.
    pub fn describe(&self) -> String {
        let engine = match self {
            StoreError::Open { source, .. }
            | StoreError::Read { source, .. }
            | StoreError::Write { source, .. }
            | StoreError::Flush { source } => Some(source),
            _ => None,
        };
        if let StoreError::AuditFile { source, .. } = self {
            return format!("{self}: {}", os_words(source));
        }
        match engine {
            Some(::sled::Error::Io(io)) => format!("{self}: {}", os_words(io)),
            _ => error_chain(self),
        }
    }
}

/// Whether a PostgreSQL error means the server cannot serve now (shutting down, starting up,
/// out of connections or resources, a lost connection) rather than a refused statement.
fn database_outage(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    e.code().is_some_and(|code| {
        [
            &SqlState::ADMIN_SHUTDOWN,
            &SqlState::CRASH_SHUTDOWN,
            &SqlState::CANNOT_CONNECT_NOW,
            &SqlState::TOO_MANY_CONNECTIONS,
            &SqlState::INSUFFICIENT_RESOURCES,
            &SqlState::DISK_FULL,
            &SqlState::OUT_OF_MEMORY,
            &SqlState::CONNECTION_EXCEPTION,
            &SqlState::CONNECTION_FAILURE,
            &SqlState::T_R_SERIALIZATION_FAILURE,
            &SqlState::T_R_DEADLOCK_DETECTED,
        ]
        .contains(&code)
    })
}

/// An I/O error as the OS words it (`No space left on device (os error 28)`). sled passes some
/// on re-wrapped, their Debug form (`Os { code: 28, kind: StorageFull, … }`) as the message;
/// the code is taken back out of that.
fn os_words(io: &std::io::Error) -> String {
    let text = io.to_string();
    let code = io.raw_os_error().or_else(|| {
        text.split("code: ")
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    });
    match code {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => text,
    }
}

/// An error and its causes on one line: the operator's log line needs the innermost cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

/// Everything a backend provides: what the server holds one of, as `Arc<dyn Store>`, and
/// hands out per concern.
pub trait Store:
    ClientStore
    + TokenStore
    + AuditLog
    + DeviceStore
    + Durability
    + DeviceGrantStore
    + RefreshTokenStore
    + UserStore
    + SessionStore
    + std::fmt::Debug
{
}

impl<T> Store for T where
    T: ClientStore
        + TokenStore
        + AuditLog
        + DeviceStore
        + Durability
        + DeviceGrantStore
        + RefreshTokenStore
        + UserStore
        + SessionStore
        + std::fmt::Debug
{
}

/// A failure counter's key: (kind, subject), e.g. `("code-account", "ann")`.
pub type WindowKey = (String, String);

/// Failures counted in a fixed window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Failures (and attempts still running) in the window.
    pub count: u32,
    /// When the window began (Unix seconds).
    pub since: u64,
}

/// Failure counters that several processes share (the verification page's limits, so that
/// they hold across replicas).
#[async_trait::async_trait]
pub trait WindowStore: Send + Sync + std::fmt::Debug {
    /// Run `change` on the current windows of `keys` (absent ones start empty), atomically
    /// with respect to every other update of any of them, and store what it leaves.
    async fn update_windows(
        &self,
        keys: &[WindowKey],
        change: &mut (dyn for<'m> FnMut(&'m mut std::collections::HashMap<WindowKey, Window>)
                  + Send),
    ) -> Result<(), StoreError>;
}

/// Signs a pruning anchor over `(seq, hash)`: a checkpoint JWS. (An alias, so that the
/// `&str` stays higher-ranked inside `async_trait` methods.)
pub type SignAnchor = dyn Fn(u64, &str) -> String + Send + Sync;

/// Registered OAuth clients.
#[async_trait::async_trait]
pub trait ClientStore: Send + Sync {
    /// The client with this id, if registered.
    async fn client(&self, client_id: &str) -> Result<Option<Arc<Client>>, StoreError>;
    /// Create or replace a client record. Durable only after a [`GroupCommit::commit`].
    async fn put_client(&self, client: &Client) -> Result<(), StoreError>;
    /// Create a client only if its id is unused; false if it was taken.
    async fn insert_new_client(&self, client: &Client) -> Result<bool, StoreError>;
    /// Change a client atomically: `change` edits a copy of the current record and returns
    /// whether to write it; it may run more than once under contention. Returns the record as
    /// written (or as found, if `change` declined), `None` if there is no such client.
    async fn update_client(
        &self,
        client_id: &str,
        change: &mut (dyn for<'c> FnMut(&'c mut Client) -> bool + Send),
    ) -> Result<Option<Client>, StoreError>;
}

/// State about issued tokens and one-time values.
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync {
    /// Mark an access token (by `jti`) revoked until `exp`, after which it is dead anyway.
    async fn revoke_access_token(&self, jti: &str, exp: u64) -> Result<(), StoreError>;
    /// Whether this access token was revoked.
    async fn is_access_token_revoked(&self, jti: &str) -> Result<bool, StoreError>;
    /// Record a client assertion's `jti` (RFC 7523 §3 item 7) until `exp`. False if the same
    /// client already used it: a replay.
    async fn record_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        exp: u64,
    ) -> Result<bool, StoreError>;
    /// Record what an exchanged access token (by `jti`) was derived from, until `until`, after
    /// which the token is dead anyway. Durable only after a [`GroupCommit::commit`].
    async fn record_lineage(
        &self,
        jti: &str,
        lineage: &Lineage,
        until: u64,
    ) -> Result<(), StoreError>;
    /// What an exchanged access token was derived from; `None` if nothing was recorded.
    async fn lineage(&self, jti: &str) -> Result<Option<Lineage>, StoreError>;
    /// Drop revocation, replay and lineage records whose tokens expired before `now`.
    async fn purge_expired(&self, now: u64) -> Result<usize, StoreError>;
}

/// Every token an exchanged access token was derived from (RFC 8693 §2.1: its subject token,
/// its actor token if any, and, when the subject token was itself exchanged, that token's
/// ancestors in turn). The exchanged token is active only while each of them is unrevoked and
/// each of their clients enabled. Flat, so validation is one pass with no recursion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The ancestors, nearest first.
    pub ancestors: Vec<Ancestor>,
}

/// One token in a [`Lineage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    /// Its `jti`, the handle its revocation is recorded under.
    pub jti: String,
    /// The client it was issued to.
    pub client_id: String,
    /// Its `sid`: the refresh-token family it came from, whose revocation ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// The append-only, hash-chained audit log.
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync {
    /// Append an event at `time_ms`; durable after the next [`GroupCommit::commit`]. Returns the
    /// entry's sequence number.
    fn append(&self, event: AuditEvent, time_ms: u64) -> Result<u64, StoreError>;
    /// Up to `limit` entries of `chain` (default: this process's own) with sequence numbers
    /// above `after`, oldest first.
    async fn entries(
        &self,
        chain: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;
    /// The head of every chain the store keeps.
    async fn chains(&self) -> Result<Vec<ChainHead>, StoreError>;
    /// Check every chain: the number of entries, or the first broken entry of each broken
    /// chain.
    async fn verify(&self) -> Result<Result<u64, Vec<ChainBreak>>, StoreError>;
    /// The last entry of this process's chain known to be on stable storage, `(seq, hash)`
    /// (`(0, GENESIS_HASH)` for an empty log): what a signed checkpoint may vouch for.
    fn durable_head(&self) -> Result<audit::Head, StoreError>;
    /// The name of this process's chain, where the store keeps several (one per replica).
    fn own_chain(&self) -> Option<String> {
        None
    }
    /// The anchor of `chain`'s pruned prefix (default: this process's own), if any was pruned.
    async fn anchor(&self, chain: Option<&str>) -> Result<Option<Anchor>, StoreError>;
    /// Remove this process's chain's oldest entries: only entries with seq at most `upto` (the
    /// caller's guarantee that files hold them) and time before `before_ms`, from the oldest
    /// on, in whole stored segments (whole files on the embedded store). The last removed
    /// entry becomes the chain's [`Anchor`], signed by `sign(seq, hash)`: written in the same
    /// transaction as the removal on PostgreSQL; on the embedded store made durable before any
    /// file is deleted (a crash in between leaves entries the anchor already covers, which
    /// readers skip). Durable before this returns. Returns the new anchor, if anything was removed.
    async fn prune(
        &self,
        upto: u64,
        before_ms: u64,
        sign: &crate::store::SignAnchor,
    ) -> Result<Option<Anchor>, StoreError>;
}

/// A device registered by a factory station. Its credential lives on its [`Client`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device's client_id.
    pub client_id: String,
    /// Manufacturer serial number, unique.
    pub serial: String,
    /// Model name.
    pub model: String,
    /// Hex SHA-256 of the TPM endorsement key's SubjectPublicKeyInfo DER.
    pub ek_fingerprint: String,
    /// The station client that registered it.
    pub registered_by: String,
    /// When.
    pub registered_at: u64,
    /// The EK's SubjectPublicKeyInfo DER (its SHA-256 is `ek_fingerprint`): what credential
    /// activation encrypts to. Absent for devices registered before attestation existed,
    /// until a station re-attests them.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    pub ek_public: Option<Vec<u8>>,
    /// What became of the EK certificate at registration.
    #[serde(default)]
    pub ek_certificate: EkCertificateCheck,
    /// The EK certificate's issuer (RFC 4514), when one was presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_issuer: Option<String>,
}

/// What was checked of a device's EK certificate when it was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EkCertificateCheck {
    /// It certifies the EK and chains to a configured `ek_roots` CA.
    Verified,
    /// It certifies the EK; no `ek_roots` were configured to check its issuer against.
    NotChecked,
    /// None was presented.
    #[default]
    Absent,
}

impl EkCertificateCheck {
    /// The name the admin API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            EkCertificateCheck::Verified => "verified",
            EkCertificateCheck::NotChecked => "not-checked",
            EkCertificateCheck::Absent => "absent",
        }
    }
}

/// The device registry.
#[async_trait::async_trait]
pub trait DeviceStore: Send + Sync {
    /// A device by client_id.
    async fn device(&self, client_id: &str) -> Result<Option<Device>, StoreError>;
    /// A device by serial.
    async fn device_by_serial(&self, serial: &str) -> Result<Option<Device>, StoreError>;
    /// Store a device and its client at once, claiming its serial and its EK fingerprint.
    /// `Err(existing)` when either is already registered (to this device or another): one TPM
    /// is one identity. Nothing is written then.
    async fn register_device(
        &self,
        device: &Device,
        client: &Client,
    ) -> Result<Result<(), Device>, StoreError>;
    /// Remove a device, its serial and its client at once. False if there was none.
    async fn delete_device(&self, client_id: &str) -> Result<bool, StoreError> {
        Ok(self.delete_device_if(client_id, &|_, _| Ok(())).await? == Deletion::Deleted)
    }
    /// [`DeviceStore::delete_device`] if `allow` approves the device and its client as they are
    /// inside the same transaction, so nothing can change between the check and the delete.
    async fn delete_device_if(
        &self,
        client_id: &str,
        allow: &DeletionCheck<'_>,
    ) -> Result<Deletion, StoreError>;
    /// Change a device record atomically: `change` sees the current record and returns whether
    /// it changed it; it may run more than once under contention. The record as stored
    /// afterwards, or `None` if there is no such device. The serial and EK fingerprint, which
    /// the indexes hold, must not change.
    async fn update_device(
        &self,
        client_id: &str,
        change: &mut (dyn for<'d> FnMut(&'d mut Device) -> bool + Send),
    ) -> Result<Option<Device>, StoreError>;
    /// Up to `limit` devices whose client_id sorts after `after`, in client_id order.
    async fn devices(&self, after: &str, limit: usize) -> Result<Vec<Device>, StoreError>;
}

/// A condition on a device and its client (absent if already gone) for
/// [`DeviceStore::delete_device_if`]: `Err(why)` refuses.
pub type DeletionCheck<'a> =
    dyn Fn(&Device, Option<&Client>) -> Result<(), &'static str> + Send + Sync + 'a;

/// What a conditional delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deletion {
    /// Gone.
    Deleted,
    /// There was no such device.
    Missing,
    /// The condition refused; why. Nothing was written.
    Refused(&'static str),
}

/// Run a store operation from synchronous code (the offline commands: `init`, `user add`,
/// `audit verify`) on a small runtime of its own.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| StoreError::Runtime { source })?;
    Ok(runtime.block_on(future))
}

/// What the group committer needs from a backend: make every write so far durable, prove that
/// writes work, and get back to a working store after a failure. Called on a blocking thread:
/// a backend may block in it (or run async work with `Handle::block_on`).
pub trait Durability: Send + Sync {
    /// Flush all writes made before this call to stable storage.
    fn flush(&self) -> Result<(), StoreError>;
    /// Write a small record of no meaning (made durable by the next flush), so that readiness
    /// reflects whether writes succeed rather than whether reads do.
    fn write_probe(&self) -> Result<(), StoreError>;
    /// After a failed flush: make the store take writes again, and prove it with a write and a
    /// flush. An [outage](StoreError::is_outage) is retried later; any other error means the
    /// store cannot recover in this process.
    fn recover(&self) -> Result<Recovery, StoreError>;
}

/// How a store came back after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// The store as it was takes writes again (a database that came back, a disk with space
    /// again); nothing was lost beyond the failed flushes.
    Resumed,
    /// The store was closed and opened again, as after a crash: writes never flushed are gone.
    Reopened,
}

impl Recovery {
    /// The name the log uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Recovery::Resumed => "resumed",
            Recovery::Reopened => "reopened",
        }
    }
}

/// How a client proves who it is at the token endpoint (RFC 7591 §2
/// `token_endpoint_auth_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthMethod {
    /// HTTP Basic with client_id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// client_id and client_secret in the form body (RFC 6749 §2.3.1).
    ClientSecretPost,
    /// A JWT assertion signed by the client's key (RFC 7523 §2.2).
    PrivateKeyJwt,
    /// A public client: no authentication (RFC 8628 device clients).
    None,
}

impl AuthMethod {
    /// The RFC 7591 name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::None => "none",
        }
    }
}

/// Signature algorithm of a client key; fixed by the key, never taken from a token header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeyAlg {
    /// ECDSA P-256 with SHA-256 (RFC 7518 §3.4).
    ES256,
    /// Ed25519 (RFC 8037).
    EdDSA,
}

impl KeyAlg {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::ES256 => "ES256",
            KeyAlg::EdDSA => "EdDSA",
        }
    }
}

/// A client's public key, parsed once at registration so that no request parses a JWK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientKey {
    /// `kid` from the registered JWK, if it had one.
    pub kid: Option<String>,
    /// The only algorithm this key verifies.
    pub alg: KeyAlg,
    /// Raw public key: SEC1 uncompressed point (65 bytes) for P-256, 32 bytes for Ed25519.
    #[serde(with = "b64")]
    pub public: Vec<u8>,
    /// The JWK as registered (public members only).
    pub jwk: serde_json::Value,
    /// The server proved by credential activation that the key lives in the device's TPM
    /// (TPM 2.0 Part 1 §24). Only device keys are ever attested.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attested: bool,
}

/// A credential-activation challenge a device must answer before its new key becomes pending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChallenge {
    /// The key it is for, as it will be registered (attested once answered).
    pub key: ClientKey,
    /// SHA-256 of the credential the TPM must recover; the credential itself is not kept.
    #[serde(with = "b64")]
    pub answer_hash: Vec<u8>,
    /// When it stops being accepted.
    pub expires_at: u64,
}

/// A registered client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Client {
    /// The identifier (RFC 6749 §2.2).
    pub client_id: String,
    /// Human-readable name (RFC 7591 `client_name`).
    #[serde(default)]
    pub client_name: Option<String>,
    /// Registered authentication method.
    pub auth_method: AuthMethod,
    /// Hash of the client secret, for the secret methods.
    #[serde(default)]
    pub secret_hash: Option<SecretHash>,
    /// Keys for `private_key_jwt`.
    #[serde(default)]
    pub keys: Vec<ClientKey>,
    /// Grant types the client may use.
    pub grant_types: Vec<String>,
    /// Scopes the client may be granted; also its default when a request names none.
    pub scopes: Vec<String>,
    /// When it was registered.
    pub created_at: u64,
    /// A disabled client authenticates nowhere and its tokens introspect as inactive.
    #[serde(default)]
    pub disabled: bool,
    /// A device key registered for rotation but not yet proven (DESIGN: first boot). The first
    /// `private_key_jwt` authentication with it makes it the only credential.
    #[serde(default)]
    pub pending_key: Option<ClientKey>,
    /// The open credential-activation challenge of a rotation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_challenge: Option<KeyChallenge>,
    /// RFC 9449 §5.2 `dpop_bound_access_tokens`: the client always uses DPoP, so a token
    /// request without a proof is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dpop_bound_access_tokens: bool,
}

impl Client {
    /// Whether the client registered this grant type.
    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant_type)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::b64::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

mod b64 {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        URL_SAFE_NO_PAD.decode(text).map_err(D::Error::custom)
    }
}

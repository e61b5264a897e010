//! Hallmark's on-device agent library: the device's credential lives in its TPM.
//!
//! [`Agent`] is what firmware embeds: it rotates the factory credential to a TPM-resident key on
//! first boot ([`Agent::enroll`]), replaces that key with a new one on request
//! ([`Agent::rekey`]) or on a schedule (`rekey_interval_days`, in [`Agent::run`]), gets access tokens with the client credentials grant and
//! `private_key_jwt` assertions the TPM signs ([`Agent::token`]), runs the device authorization
//! grant with the refresh token sealed by the TPM ([`Agent::login`]), and keeps a token fresh
//! for local software on a Unix socket ([`Agent::run`]).
#![warn(missing_docs)]

pub mod clock;
pub mod config;
mod daemon;
mod error;
pub mod http;
pub mod oauth;
mod rotation;
pub mod socket;
pub mod store;
mod tokens;
pub mod tpm;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

pub use clock::Clock;
pub use config::{AgentConfig, Flow};
pub use error::AgentError;
pub use oauth::device::DeviceAuthorization;
pub use rotation::{RotationState, RotationStep};

use http::Http;
use oauth::Metadata;
use store::StateDir;
use tpm::{KeySlot, Tpm};

/// Something the agent did that its embedder may want to log (never carries a secret).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A rotation step completed (the test-only fault hook stops the process here).
    Rotation(RotationStep),
    /// The server has no `device_credentials_endpoint`: the factory credential stays in use.
    RotationUnsupported,
    /// An interrupted key-to-key rotation was given up because the server refused the new key
    /// for good (it was erased); the old key stays in use.
    RekeyAbandoned {
        /// Why (one line, the server's refusal).
        reason: String,
    },
    /// A new access token was obtained.
    TokenRenewed {
        /// When it expires (Unix seconds).
        expires_at: u64,
    },
    /// A refresh token was rotated and sealed again.
    RefreshTokenRotated,
    /// A refresh answered with the same refresh token, or none (RFC 6749 §6 lets a server
    /// keep it): the sealed one stays.
    RefreshTokenKept,
    /// The server answered a refresh; its new refresh token is not sealed yet (the test-only
    /// fault hook stops the process here, as if the answer had been lost in transit).
    RefreshAnswered,
    /// An operation failed in a way that may pass; the agent tries again after `after`.
    Retrying {
        /// What failed (one line).
        error: String,
        /// The wait before the next attempt.
        after: Duration,
    },
    /// `run` serves tokens on this socket.
    Serving {
        /// The socket path.
        socket: String,
        /// The uids that may use it: the agent's own, root and `socket_allowed_uids`.
        allowed_uids: Vec<u32>,
    },
    /// Processes of a uid not in the socket's allow-list connected and were answered
    /// `forbidden`. Reported at most once a minute.
    SocketRefused {
        /// The uid most recently refused.
        uid: u32,
        /// Refusals since the previous report.
        count: u64,
    },
    /// The device clock is far from the server's (more than a minute); assertions carry the
    /// server's time instead. Reported once per offset, not per request.
    ClockOffset {
        /// Server − device, in seconds: positive when the device clock is behind.
        offset_s: i64,
    },
    /// `run` will replace the device key at `due_at` (`rekey_interval_days`). Reported when
    /// the due time is first known and whenever it changes.
    RekeyScheduled {
        /// When the key in use was made (device clock, Unix seconds).
        key_created_at: i64,
        /// When it is due (device clock, Unix seconds).
        due_at: i64,
    },
    /// `run` starts a scheduled rekey: the key is older than `rekey_interval_days`, or an
    /// interrupted rekey waits to be finished (`key_created_at` is then unknown).
    RekeyDue {
        /// When the key in use was made (device clock, Unix seconds), if recorded.
        key_created_at: Option<i64>,
    },
    /// A scheduled rekey failed; the current key stays in use and `run` tries again after
    /// `after` (never sooner than an hour).
    RekeyFailed {
        /// What failed (one line).
        error: String,
        /// The wait before the next attempt.
        after: Duration,
    },
}

/// The credential the device authenticates with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Credential {
    /// The factory secret sealed in the TPM (`client_secret_basic`).
    Factory,
    /// A TPM-resident P-256 key (`private_key_jwt`).
    Key {
        /// Its slot.
        slot: KeySlot,
        /// Its kid (RFC 7638 thumbprint).
        kid: String,
    },
}

/// An access token and when it expires.
#[derive(Clone)]
pub struct AccessToken {
    /// The token.
    pub token: String,
    /// When it expires (Unix seconds).
    pub expires_at: u64,
    /// When it was obtained (Unix seconds).
    pub issued_at: u64,
    /// The granted scope, if the server said.
    pub scope: Option<String>,
    /// `Bearer`, or `DPoP` for a token bound to the device key (RFC 9449 §5): send it as
    /// `Authorization: DPoP` with a proof from the agent.
    pub token_type: String,
    /// For a DPoP-bound token, the TPM slot of the key it is bound to: the key that signs its
    /// proofs (a rekey binds the next token to the next key).
    pub bound_to: Option<KeySlot>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

/// What a login brought.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Login {
    /// The access token.
    pub access_token: AccessToken,
    /// Whether a refresh token came with it (now sealed by the TPM). Without one, the access
    /// token is sealed instead and served until it expires; the next needs another login.
    pub refresh_token: bool,
}

/// What `status` reports: nothing here needs the network.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The device's client_id.
    pub client_id: String,
    /// The device's serial, if configured.
    pub serial: Option<String>,
    /// The issuer.
    pub server: String,
    /// `factory`, `rotating` (first boot under way), `rekeying` (key-to-key rotation under
    /// way), `key` or `none`.
    pub credential: &'static str,
    /// The slot of the device key in use or being rotated to (during a rotation, the new
    /// key's once it exists).
    pub slot: Option<KeySlot>,
    /// The persisted rotation state.
    pub rotation: RotationState,
    /// The active (or pending) public JWK, for registering the device elsewhere.
    pub jwk: Option<serde_json::Value>,
    /// Whether a sealed refresh token is stored (device flow).
    pub refresh_token_stored: bool,
    /// When the key in use was made (device clock, Unix seconds), if recorded.
    pub key_created_at: Option<i64>,
    /// When `run` replaces it (device clock, Unix seconds; in the past: overdue, at `run`'s
    /// next look). `None` when nothing is scheduled (`rekey_interval_days` 0, no key yet, or a
    /// key whose age the next start records). During an interrupted rekey: now.
    pub next_rekey_at: Option<i64>,
    /// What the server said of the key's attestation when it accepted it: `attested` (proven
    /// by credential activation to live in this TPM), `unattested` (accepted without that
    /// proof), or `unknown` (no key yet, a server that does not say, or not recorded here).
    pub key_attestation: &'static str,
}

/// Hook called with every [`Event`].
type Observer = Box<dyn FnMut(&Event) + Send>;

/// The device agent. Opens the TPM for each operation and closes it right after, so other
/// local processes (the CLI, the provisioner) can use the same TPM between operations.
pub struct Agent {
    config: AgentConfig,
    http: Http,
    state: StateDir,
    metadata: Option<Metadata>,
    credential: Option<Credential>,
    cached: Option<AccessToken>,
    observer: Option<Observer>,
    /// The clock offset last reported as [`Event::ClockOffset`].
    reported_offset: Option<i64>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("client_id", &self.config.client_id)
            .field("issuer", &self.config.issuer)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent for `config` (as [`AgentConfig::load`] returns it). Reads the pinned CA; does
    /// not touch the TPM or the network yet.
    pub fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        Agent::with_clock(config, Clock::system())
    }

    /// An agent that reads the time from `clock` (a [`Clock::skewed`] one simulates a device
    /// with a wrong wall clock). Whatever the device clock says, the agent learns the server's
    /// offset from it and signs its assertions with the server's time.
    pub fn with_clock(config: AgentConfig, clock: Clock) -> Result<Agent, AgentError> {
        let http =
            Http::new(&config.ca_cert, clock).map_err(|source| AgentError::Http { source })?;
        let state = StateDir::new(&config.state_dir);
        Ok(Agent {
            config,
            http,
            state,
            metadata: None,
            credential: None,
            cached: None,
            observer: None,
            reported_offset: None,
        })
    }

    /// Calls `observer` with every [`Event`] (for logging, progress, or a test's fault hook).
    pub fn observe(&mut self, observer: impl FnMut(&Event) + Send + 'static) {
        self.observer = Some(Box::new(observer));
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The server's clock minus the device's, in seconds, as the last response's `Date` said
    /// (0 before any response, or when within 2 s).
    pub fn clock_offset(&self) -> i64 {
        self.http.clock().offset()
    }

    /// Finishes or starts first-boot rotation, retrying transient failures (server or TPM
    /// unreachable) with backoff for up to `patience`. Returns the credential now in use.
    pub fn enroll(&mut self, patience: Duration) -> Result<Credential, AgentError> {
        daemon::retry(self, patience, |agent| agent.rotate())
    }

    /// Replaces the device's TPM key with a new one in the other slot (key-to-key rotation),
    /// as a crash-safe state machine (see `rotation/rekey.rs`): the new key is registered
    /// with the server authenticated by the old key, proven by a token request (which makes the
    /// server drop the old key), and only then is the old key erased. If a previous rekey was
    /// cut short, finishing it is the rotation asked for. Returns the credential now in use.
    ///
    /// Fails without trying if the device still has its factory secret (that is
    /// [`Agent::enroll`]'s job) or the server offers no `device_credentials_endpoint`. No
    /// retries: a failed rekey is finished by the next start, or by calling this again.
    pub fn rekey(&mut self) -> Result<Credential, AgentError> {
        self.start_rekey()
    }

    /// A fresh access token for `scope` (default: the configured scopes): client credentials
    /// with the device's credential, or the sealed refresh token with the device flow.
    /// Enrolls first if needed. No retries: see [`Agent::run`] for a resilient loop.
    pub fn token(&mut self, scope: Option<&str>) -> Result<AccessToken, AgentError> {
        self.fresh_token(scope)
    }

    /// Runs the device authorization grant: `show` displays the user code and URIs, then the
    /// agent polls until approval, stores the refresh token sealed by the TPM, and returns
    /// the first access token. A server that issues no refresh token (many do so only for the
    /// `offline_access` scope) leaves the access token alone: it is sealed and served until it
    /// expires, and [`Login::refresh_token`] says so.
    pub fn login(&mut self, show: impl FnOnce(&DeviceAuthorization)) -> Result<Login, AgentError> {
        self.device_login(show, &mut std::thread::sleep)
    }

    /// The device's state from the TPM and the state directory (no network).
    pub fn status(&mut self) -> Result<Status, AgentError> {
        self.local_status()
    }

    /// Opens the TPM (each operation opens it anew; see the type's docs).
    fn tpm(&self) -> Result<Tpm, AgentError> {
        Tpm::open(&self.config.tcti).map_err(|source| AgentError::Tpm { source })
    }

    /// The server's metadata, fetched once.
    fn metadata(&mut self) -> Result<Metadata, AgentError> {
        if let Some(m) = &self.metadata {
            return Ok(m.clone());
        }
        let m = oauth::discover(&self.http, &self.config.issuer)
            .map_err(|source| AgentError::Discover { source })?;
        self.metadata = Some(m.clone());
        Ok(m)
    }

    fn emit(&mut self, event: Event) {
        if let Some(observer) = self.observer.as_mut() {
            observer(&event);
        }
    }

    fn scope_default(&self) -> Option<String> {
        (!self.config.scopes.is_empty()).then(|| self.config.scopes.join(" "))
    }
}

//! OAuth 2.0 protocol logic: client authentication, grants, token minting and validation, RFC
//! error codes. No HTTP framework types here, so all of it is testable without a socket.

pub mod access_token;
pub mod client_auth;
pub mod device_flow;
pub mod devices;
pub mod dpop;
mod error;
pub mod form;
pub mod jws;
pub mod refresh;
pub mod registration;
pub mod scope;
pub mod token_endpoint;
pub mod token_exchange;
pub mod verified;

use std::sync::Arc;

use crate::keys::Keys;
use crate::store::audit::AuditEvent;
use crate::store::{AuditLog, ClientStore, DeviceStore, GroupCommit, TokenStore};

pub use self::error::OAuthError;

/// Grant type names (RFC 6749 §4.4, RFC 8628 §3.4, RFC 6749 §6, RFC 8693 §2.1).
pub mod grant {
    /// RFC 6749 §4.4.
    pub const CLIENT_CREDENTIALS: &str = "client_credentials";
    /// RFC 8628 §3.4.
    pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
    /// RFC 6749 §6.
    pub const REFRESH_TOKEN: &str = "refresh_token";
    /// RFC 8693 §2.1.
    pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
}

/// Settings the protocol logic needs, validated once at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The issuer identifier (RFC 8414 §2), no trailing slash.
    pub issuer: String,
    /// Absolute URL of the token endpoint, a valid client assertion `aud`.
    pub token_endpoint: String,
    /// `aud` of access tokens this server mints and accepts.
    pub audience: String,
    /// Access token lifetime, seconds.
    pub access_token_ttl: u64,
    /// Clock skew tolerated in every time check, seconds.
    pub clock_skew: u64,
    /// The furthest ahead a client assertion's `exp` may be, seconds.
    pub max_assertion_lifetime: u64,
    /// Most nested `act` levels a token exchange may produce (RFC 8693 §4.1).
    pub max_delegation_depth: usize,
    /// The scopes any device may hold (`device_scopes`); never an admin scope.
    pub device_scopes: Vec<String>,
    /// Whether a device's new key must prove, by credential activation, that it lives in the
    /// TPM registered for the device.
    pub attestation: Attestation,
    /// The TPM manufacturers' CAs an EK certificate must chain to (`ek_roots`); `None`: the
    /// station's word for the EK is trusted.
    pub ek_roots: Option<Arc<crate::attest::EkRoots>>,
    /// The device authorization grant, refresh tokens and the verification page.
    pub device: device_flow::DeviceSettings,
    /// DPoP (RFC 9449): proof age and server nonces.
    pub dpop: dpop::DpopSettings,
}

impl Settings {
    /// Settings for an issuer with the default lifetimes.
    pub fn for_issuer(issuer: &str) -> Self {
        let issuer = issuer.trim_end_matches('/').to_owned();
        Settings {
            token_endpoint: format!("{issuer}/oauth2/token"),
            device: device_flow::DeviceSettings::for_issuer(&issuer),
            audience: issuer.clone(),
            issuer,
            access_token_ttl: 300,
            clock_skew: 30,
            max_assertion_lifetime: crate::config::DEFAULT_MAX_ASSERTION_LIFETIME,
            max_delegation_depth: crate::config::DEFAULT_MAX_DELEGATION_DEPTH,
            device_scopes: devices::DEFAULT_DEVICE_SCOPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            attestation: Attestation::Required,
            ek_roots: None,
            dpop: dpop::DpopSettings::default(),
        }
    }
}

/// `attestation`: whether rotation demands proof that a new key lives in the device's TPM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Attestation {
    /// Every new device key must answer a credential-activation challenge made against the
    /// EK registered for the device (TPM 2.0 Part 1 §24); a device without a registered EK
    /// public key cannot rotate until a station re-attests it.
    #[default]
    Required,
    /// New device keys are accepted on the device's current credential alone (the state
    /// before attestation existed; for servers whose devices have no TPM EK to attest with).
    Off,
}

impl std::str::FromStr for Attestation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "required" => Ok(Attestation::Required),
            "off" => Ok(Attestation::Off),
            other => Err(format!(
                "attestation must be required or off, not {other:?}"
            )),
        }
    }
}

/// The authorization server's protocol core: what every endpoint needs.
#[derive(Clone)]
pub struct AuthServer {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// Registered clients.
    pub clients: Arc<dyn ClientStore>,
    /// Revocations, exchanged tokens' lineage and one-time values.
    pub tokens: Arc<dyn TokenStore>,
    /// Signing keys.
    pub keys: Arc<Keys>,
    /// The audit log.
    pub audit: Arc<dyn AuditLog>,
    /// The device registry.
    pub devices: Arc<dyn DeviceStore>,
    /// Makes writes durable before responses report them.
    pub commit: GroupCommit,
    /// Counters for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Pending device authorization requests (RFC 8628).
    pub device_grants: Arc<dyn crate::store::DeviceGrantStore>,
    /// Refresh tokens and their families.
    pub refresh_tokens: Arc<dyn crate::store::RefreshTokenStore>,
    /// People who approve devices.
    pub users: Arc<dyn crate::store::UserStore>,
    /// Verification-page sessions.
    pub sessions: Arc<dyn crate::store::SessionStore>,
    /// The PostgreSQL database, when the server uses one (for `/readyz`).
    pub database: Option<Arc<crate::store::PgStore>>,
    /// Slots for Argon2id runs (sign-ins, new users).
    pub password_checks: crate::accounts::PasswordChecks,
    /// Access tokens whose signature this replica already verified (see [`verified`]).
    pub verified: Arc<verified::VerifiedTokens>,
}

/// Who is asking, when, from where: what an audit entry and a rate limit need from a request.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// Unix seconds at arrival.
    pub now: u64,
    /// Request id (the caller's `X-Request-Id` if well-formed, else random).
    pub request_id: String,
    /// Peer address, when known.
    pub source: Option<std::net::IpAddr>,
    /// The path of the endpoint called (`/oauth2/introspect`), when served over HTTP: a client
    /// assertion may name that endpoint's URL as its `aud` (RFC 7523 §3).
    pub endpoint: Option<String>,
    /// The storage epoch the request started in (see [`crate::store::health`]): its commit is
    /// refused if storage failed meanwhile. `None` outside HTTP requests.
    pub epoch: Option<crate::store::health::Epoch>,
}

impl RequestCtx {
    /// A context at `now` with a fresh request id and no address (offline tools, tests).
    pub fn at(now: u64) -> Self {
        RequestCtx {
            now,
            request_id: crate::secret::random_id(9),
            source: None,
            endpoint: None,
            epoch: None,
        }
    }
}

impl AuthServer {
    /// Append `event` to the audit log, stamped with the request, and wait until it is durable.
    pub async fn record(&self, ctx: &RequestCtx, event: AuditEvent) -> Result<(), OAuthError> {
        self.append_audit(ctx, event)?;
        self.commit_for(ctx).await
    }

    /// Wait until every write this request made is durable; refused (503) if storage fails
    /// or failed since the request started.
    pub async fn commit_for(&self, ctx: &RequestCtx) -> Result<(), OAuthError> {
        // A request from outside HTTP (a background task) writes and commits back to back.
        let since = ctx.epoch.or_else(|| Some(self.commit.health().epoch()));
        Ok(self.commit.commit_since(since).await?)
    }

    /// Append without waiting; the caller commits before it answers. Every field that may hold
    /// a value from a request is clipped here ([`crate::untrusted`]), whoever built the event.
    pub fn append_audit(&self, ctx: &RequestCtx, mut event: AuditEvent) -> Result<(), OAuthError> {
        use crate::untrusted::{clip, clip_to, MAX_REASON_CHARS};
        for value in [&mut event.actor, &mut event.subject, &mut event.client]
            .into_iter()
            .flatten()
        {
            if let std::borrow::Cow::Owned(clipped) = clip(value) {
                *value = clipped;
            }
        }
        if let Some(reason) = &mut event.reason {
            if let std::borrow::Cow::Owned(clipped) = clip_to(reason, MAX_REASON_CHARS) {
                *reason = clipped;
            }
        }
        self.metrics.observe_event(&event);
        event.request_id = Some(ctx.request_id.clone());
        event.source = ctx.source.map(|ip| ip.to_string());
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(ctx.now * 1000);
        self.audit
            .append(event, time_ms)
            .map_err(OAuthError::from)?;
        Ok(())
    }
}

impl std::fmt::Debug for AuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthServer")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

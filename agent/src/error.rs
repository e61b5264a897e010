//! Errors of the [`Agent`](crate::Agent): each names what the agent was doing, in one line an
//! operator can act on.

use crate::http::HttpError;
use crate::oauth::device::DeviceFlowError;
use crate::oauth::OAuthError;
use crate::store::StoreError;
use crate::tpm::TpmError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Setting up HTTPS (reading the pinned CA) failed.
    #[error("{source}")]
    Http {
        /// The error.
        source: HttpError,
    },
    /// Discovering the server's endpoints failed.
    #[error("{source}")]
    Discover {
        /// The error.
        source: OAuthError,
    },
    /// A TPM operation failed.
    #[error("{source}")]
    Tpm {
        /// The error.
        source: TpmError,
    },
    /// The state directory could not be read or written.
    #[error("{source}")]
    State {
        /// The error.
        source: StoreError,
    },
    /// The TPM lacks the objects provisioning puts there.
    #[error("the TPM holds no Hallmark credential ({what}); provision the device first")]
    NotProvisioned {
        /// What is missing or inconsistent.
        what: String,
    },
    /// Registering the new key with the factory secret failed.
    #[error("cannot register the new device key: {source}")]
    RegisterKey {
        /// The error.
        source: OAuthError,
    },
    /// The server refused both the factory secret and the device key.
    #[error(
        "the server refuses the credentials of client {client_id} (factory secret and device \
         key): is this device registered with {issuer}? ({source})"
    )]
    UnknownClient {
        /// The client_id.
        client_id: String,
        /// The issuer.
        issuer: String,
        /// The last refusal.
        source: OAuthError,
    },
    /// The server refused both device keys during a key-to-key rotation.
    #[error(
        "the server refuses both device keys of client {client_id} (the old one and the new \
         one): is this device still registered and enabled at {issuer}? ({source})"
    )]
    KeysRefused {
        /// The client_id.
        client_id: String,
        /// The issuer.
        issuer: String,
        /// The last refusal.
        source: OAuthError,
    },
    /// A key-to-key rotation was asked of a device that still has its factory secret.
    #[error(
        "this device still authenticates with its factory secret: rotating it to a TPM key is \
         first boot's job (`hallmark-agent enroll`); `rekey` replaces a TPM key"
    )]
    NotEnrolled,
    /// A key-to-key rotation was asked of a server that cannot take a new key.
    #[error(
        "the server {issuer} offers no device_credentials_endpoint in its metadata (RFC 8414): \
         it cannot take a new device key, so the current key stays"
    )]
    NoRotationEndpoint {
        /// The issuer.
        issuer: String,
    },
    /// A key-to-key rotation was given up: the server refused the new key for good (see
    /// `rotation/rekey.rs`). The new key was erased; the old one is still the credential.
    #[error(
        "the server refused the new device key ({source}); key rotation abandoned, the old key \
         is still the device's credential"
    )]
    RekeyAbandoned {
        /// The refusal.
        source: OAuthError,
    },
    /// The token request proving the new key failed.
    #[error("cannot prove the new device key: {source}")]
    ProveKey {
        /// The error.
        source: OAuthError,
    },
    /// A token request failed.
    #[error("cannot get an access token: {source}")]
    Token {
        /// The error.
        source: OAuthError,
    },
    /// The device flow is configured but no refresh token is stored.
    #[error("not logged in: run `hallmark-agent login` first")]
    NotLoggedIn,
    /// The login brought no refresh token, and the access token it brought has expired (or
    /// cannot serve another scope).
    #[error(
        "the server issued no refresh token at login{}: the next token needs another \
         `hallmark-agent login` (many servers issue a refresh token only when the scope includes \
         offline_access)",
        expired_at.map(|t| format!(", and the access token of that login expired at {t} (Unix seconds)")).unwrap_or_default()
    )]
    NoRefreshToken {
        /// When the login's access token expired (device clock), if it did.
        expired_at: Option<i64>,
    },
    /// The stored refresh token was refused (revoked, or spent by a crash mid-refresh).
    #[error("the stored refresh token was refused ({source}); run `hallmark-agent login` again")]
    RefreshRefused {
        /// The error.
        source: OAuthError,
    },
    /// The server has no device authorization endpoint.
    #[error("the server {issuer} offers no device authorization grant (RFC 8628)")]
    NoDeviceFlow {
        /// The issuer.
        issuer: String,
    },
    /// The device flow did not produce a token.
    #[error("{source}")]
    DeviceFlow {
        /// The error.
        source: DeviceFlowError,
    },
    /// Serving the Unix socket failed.
    #[error("cannot serve tokens on {path}: {source}")]
    Socket {
        /// The socket path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another agent already serves on the socket.
    #[error("another agent already serves on {path}")]
    AlreadyRunning {
        /// The socket path.
        path: String,
    },
}

impl AgentError {
    /// Whether trying again later may succeed: the server or the TPM is unreachable for now.
    pub fn is_transient(&self) -> bool {
        match self {
            AgentError::Discover { source }
            | AgentError::RegisterKey { source }
            | AgentError::ProveKey { source }
            | AgentError::Token { source } => source.is_transient(),
            AgentError::DeviceFlow {
                source: DeviceFlowError::Poll { source } | DeviceFlowError::Authorize { source },
            } => source.is_transient(),
            AgentError::Tpm { source } => matches!(source, TpmError::Unreachable { .. }),
            _ => false,
        }
    }
}

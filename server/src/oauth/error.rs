//! The OAuth error enum: its wire form is the RFC 6749 §5.2 code (plus the RFC 8628 §3.5, 7009,
//! 7591 and 8693 codes). HTTP adapters map it to status, body and `WWW-Authenticate`.

use std::borrow::Cow;

/// An OAuth error response. Descriptions are for the client's developer: they never carry a
/// secret, and for authentication failures they do not say which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// RFC 6749 §5.2 `invalid_request`.
    #[error("invalid_request: {0}")]
    InvalidRequest(Cow<'static, str>),
    /// RFC 6749 §5.2 `invalid_client`. `reason` is logged for the operator, not sent.
    #[error("invalid_client: {reason}")]
    InvalidClient {
        /// Which check failed, for the log.
        reason: Cow<'static, str>,
    },
    /// RFC 6749 §5.2 `invalid_grant`.
    #[error("invalid_grant: {0}")]
    InvalidGrant(Cow<'static, str>),
    /// RFC 6749 §5.2 `unauthorized_client`.
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(Cow<'static, str>),
    /// RFC 6749 §5.2 `unsupported_grant_type`.
    #[error("unsupported_grant_type: {0}")]
    UnsupportedGrantType(Cow<'static, str>),
    /// RFC 6749 §5.2 `invalid_scope`.
    #[error("invalid_scope: {0}")]
    InvalidScope(Cow<'static, str>),
    /// RFC 8693 §2.2.2 `invalid_target`: the requested `audience` or `resource` is not one we
    /// issue tokens for.
    #[error("invalid_target: {0}")]
    InvalidTarget(Cow<'static, str>),
    /// RFC 7591 §3.2.2 `invalid_client_metadata`.
    #[error("invalid_client_metadata: {0}")]
    InvalidClientMetadata(Cow<'static, str>),
    /// `invalid_ek_certificate` (Hallmark's device registration): the EK certificate is
    /// missing where `ek_roots` requires one, or does not certify the EK, or does not chain.
    #[error("invalid_ek_certificate: {0}")]
    InvalidEkCertificate(Cow<'static, str>),
    /// RFC 9449 §5 `invalid_dpop_proof`: the `DPoP` proof is missing where required, or fails
    /// a check of §4.3 (which one is said: the words are fixed, never the proof's content).
    #[error("invalid_dpop_proof: {0}")]
    InvalidDpopProof(Cow<'static, str>),
    /// RFC 9449 §8 `use_dpop_nonce`: the proof must carry `nonce`, sent in `DPoP-Nonce`.
    #[error("use_dpop_nonce")]
    UseDpopNonce {
        /// The nonce to use.
        nonce: String,
    },
    /// RFC 7009 §2.2.1 `unsupported_token_type`.
    #[error("unsupported_token_type")]
    UnsupportedTokenType,
    /// RFC 8628 §3.5 `authorization_pending`: the user has not answered yet; poll again.
    #[error("authorization_pending")]
    AuthorizationPending,
    /// RFC 8628 §3.5 `slow_down`: polling faster than the interval; it grew by 5 seconds.
    #[error("slow_down")]
    SlowDown,
    /// RFC 8628 §3.5 `access_denied`: the user denied the request.
    #[error("access_denied")]
    AccessDenied,
    /// RFC 8628 §3.5 `expired_token`: the device code expired; start again.
    #[error("expired_token")]
    ExpiredToken,
    /// The body was larger than the server accepts.
    #[error("request body too large")]
    PayloadTooLarge,
    /// Storage is failing or out of reach, so nothing can be saved now: 503 with
    /// `Retry-After` and the code `temporarily_unavailable` (RFC 6749 §4.1.2.1 names it for
    /// the same condition). The detail is logged, never sent.
    #[error("temporarily_unavailable: {0}")]
    TemporarilyUnavailable(String),
    /// Something on our side failed; the client sees a bare `server_error`.
    #[error("server_error: {0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for OAuthError {
    /// An outage (the disk, the database) is temporary; anything else is our fault.
    fn from(e: crate::store::StoreError) -> Self {
        let detail = e.describe();
        if e.is_outage() {
            OAuthError::TemporarilyUnavailable(detail)
        } else {
            OAuthError::Internal(detail)
        }
    }
}

impl From<crate::store::CommitError> for OAuthError {
    /// Whatever kept a commit from happening, the write was not saved and may be retried.
    fn from(e: crate::store::CommitError) -> Self {
        OAuthError::TemporarilyUnavailable(e.to_string())
    }
}

impl OAuthError {
    /// The error code on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) | OAuthError::PayloadTooLarge => "invalid_request",
            OAuthError::InvalidClient { .. } => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnauthorizedClient(_) => "unauthorized_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::InvalidTarget(_) => "invalid_target",
            OAuthError::InvalidClientMetadata(_) => "invalid_client_metadata",
            OAuthError::InvalidEkCertificate(_) => "invalid_ek_certificate",
            OAuthError::UnsupportedTokenType => "unsupported_token_type",
            OAuthError::InvalidDpopProof(_) => "invalid_dpop_proof",
            OAuthError::UseDpopNonce { .. } => "use_dpop_nonce",
            OAuthError::AuthorizationPending => "authorization_pending",
            OAuthError::SlowDown => "slow_down",
            OAuthError::AccessDenied => "access_denied",
            OAuthError::ExpiredToken => "expired_token",
            OAuthError::TemporarilyUnavailable(_) => "temporarily_unavailable",
            OAuthError::Internal(_) => "server_error",
        }
    }

    /// The HTTP status (RFC 6749 §5.2: 400, or 401 for client authentication).
    pub fn status(&self) -> u16 {
        match self {
            OAuthError::InvalidClient { .. } => 401,
            OAuthError::PayloadTooLarge => 413,
            OAuthError::TemporarilyUnavailable(_) => 503,
            OAuthError::Internal(_) => 500,
            _ => 400,
        }
    }

    /// `error_description`, if any is safe to send.
    pub fn description(&self) -> Option<&str> {
        match self {
            OAuthError::InvalidRequest(d)
            | OAuthError::InvalidGrant(d)
            | OAuthError::UnauthorizedClient(d)
            | OAuthError::UnsupportedGrantType(d)
            | OAuthError::InvalidScope(d)
            | OAuthError::InvalidTarget(d)
            | OAuthError::InvalidClientMetadata(d)
            | OAuthError::InvalidEkCertificate(d)
            | OAuthError::InvalidDpopProof(d) => Some(d),
            OAuthError::UseDpopNonce { .. } => {
                Some("resend the request with a DPoP proof carrying the nonce in DPoP-Nonce")
            }
            OAuthError::InvalidClient { .. } => Some("client authentication failed"),
            OAuthError::PayloadTooLarge => Some("request body too large"),
            OAuthError::AuthorizationPending => {
                Some("the user has not yet approved or denied the request")
            }
            OAuthError::SlowDown => Some("polling too fast; the interval grew by 5 seconds"),
            OAuthError::AccessDenied => Some("the user denied the request"),
            OAuthError::ExpiredToken => {
                Some("the device code expired; start a new device authorization")
            }
            OAuthError::TemporarilyUnavailable(_) => {
                Some("storage is unavailable; nothing was saved, retry after the Retry-After delay")
            }
            OAuthError::UnsupportedTokenType | OAuthError::Internal(_) => None,
        }
    }

    /// The JSON body (RFC 6749 §5.2).
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "error": self.code() });
        if let Some(d) = self.description() {
            body["error_description"] = d.into();
        }
        body
    }

    pub(crate) fn invalid_client(reason: impl Into<Cow<'static, str>>) -> Self {
        OAuthError::InvalidClient {
            reason: reason.into(),
        }
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        OAuthError::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_client_never_says_why() {
        let e = OAuthError::invalid_client("wrong secret for client x");
        assert_eq!(e.status(), 401);
        assert!(!e.body().to_string().contains("wrong secret"));
    }

    #[test]
    fn invalid_target_is_a_400_with_its_code() {
        let e = OAuthError::InvalidTarget("audience is not this server".into());
        assert_eq!(e.status(), 400);
        assert_eq!(e.body()["error"], "invalid_target");
    }

    #[test]
    fn a_storage_outage_is_a_503_and_corruption_a_500() {
        let full = crate::store::StoreError::Flush {
            source: sled::Error::Io(std::io::Error::from_raw_os_error(28)),
        };
        assert_eq!(
            full.describe(),
            "storage flush failed: No space left on device (os error 28)"
        );
        let rewrapped = crate::store::StoreError::Write {
            what: "audit segment",
            source: sled::Error::Io(std::io::Error::other(
                "Os { code: 5, kind: Uncategorized, message: \"Input/output error\" }",
            )),
        };
        assert_eq!(
            rewrapped.describe(),
            "storage write failed (audit segment): Input/output error (os error 5)"
        );
        let e = OAuthError::from(full);
        assert_eq!((e.status(), e.code()), (503, "temporarily_unavailable"));
        assert!(!e.body().to_string().contains("os error"), "{}", e.body());
        let corrupt = crate::store::StoreError::Decode {
            what: "client",
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        assert_eq!(OAuthError::from(corrupt).status(), 500);
        let e = OAuthError::from(crate::store::CommitError::EpochMoved);
        assert_eq!(e.status(), 503);
    }

    #[test]
    fn a_database_out_of_reach_during_a_token_check_is_503_not_inactive_or_500() {
        use crate::oauth::access_token::TokenRejection;
        let down = || crate::store::StoreError::DatabaseUnavailable {
            what: "connect",
            reason: "connection refused".into(),
        };
        assert!(matches!(
            TokenRejection::from(down()),
            TokenRejection::Unavailable(_)
        ));
        let corrupt = crate::store::StoreError::Decode {
            what: "client",
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        assert!(matches!(
            TokenRejection::from(corrupt),
            TokenRejection::Storage(_)
        ));
    }

    #[test]
    fn internal_errors_hide_detail() {
        let e = OAuthError::internal("sled exploded at /var/lib");
        assert_eq!(e.status(), 500);
        assert_eq!(e.body(), serde_json::json!({"error": "server_error"}));
    }
}

//! The device authorization grant (RFC 8628): the authorization request (§3.1–3.2) and
//! polling the token endpoint as §3.4–3.5 say.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{parse_success, post_form, ClientAuth, ErrorCode, OAuthError, TokenResponse};
use crate::http::Http;

/// Default polling interval when the server names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: u64 = 5;
/// What `slow_down` adds to the interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: u64 = 5;

/// The device authorization response (RFC 8628 §3.2).
#[derive(Clone, Deserialize)]
#[non_exhaustive]
pub struct DeviceAuthorization {
    /// The device verification code (secret; never shown).
    pub device_code: String,
    /// The code the person types.
    pub user_code: String,
    /// Where the person goes.
    pub verification_uri: String,
    /// The same with the user code included, for a QR code.
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    /// Lifetime of the codes in seconds.
    pub expires_in: u64,
    /// Minimum seconds between polls.
    #[serde(default)]
    pub interval: Option<u64>,
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Why the device flow ended without a token, beyond transport and protocol errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceFlowError {
    /// The authorization request failed.
    #[error("device authorization request failed: {source}")]
    Authorize {
        /// The error.
        source: OAuthError,
    },
    /// Polling failed.
    #[error("polling for the token failed: {source}")]
    Poll {
        /// The error.
        source: OAuthError,
    },
    /// The person denied the request (RFC 8628 §3.5 `access_denied`).
    #[error("the request was denied on the verification page")]
    Denied,
    /// The codes expired before anyone approved them (RFC 8628 §3.5 `expired_token`).
    #[error("the code expired before it was approved; run login again")]
    Expired,
}

/// Asks `endpoint` for a device code and user code (RFC 8628 §3.1).
pub fn authorize(
    http: &Http,
    endpoint: &str,
    auth: &ClientAuth,
    dpop: Option<&str>,
    scope: Option<&str>,
) -> Result<DeviceAuthorization, DeviceFlowError> {
    let params: Vec<(&str, &str)> = scope.map(|s| ("scope", s)).into_iter().collect();
    let resp = post_form(http, endpoint, auth, dpop, &params)
        .map_err(|source| DeviceFlowError::Authorize { source })?;
    parse_success(endpoint, &resp).map_err(|source| DeviceFlowError::Authorize { source })
}

/// What one poll of the token endpoint found (RFC 8628 §3.5).
#[derive(Debug)]
#[non_exhaustive]
pub enum Poll {
    /// Approved: the token response.
    Token(TokenResponse),
    /// `authorization_pending`: poll again after the interval.
    Pending,
    /// `slow_down`: add 5 seconds to the interval, then poll again.
    SlowDown,
}

/// Polls the token endpoint once (RFC 8628 §3.4). `access_denied` and `expired_token` become
/// [`DeviceFlowError::Denied`] and [`DeviceFlowError::Expired`].
pub fn poll_once(
    http: &Http,
    token_endpoint: &str,
    auth: &ClientAuth,
    dpop: Option<&str>,
    device_code: &str,
) -> Result<Poll, DeviceFlowError> {
    let params = [
        ("grant_type", super::DEVICE_CODE_GRANT),
        ("device_code", device_code),
    ];
    let result = post_form(http, token_endpoint, auth, dpop, &params)
        .and_then(|resp| parse_success::<TokenResponse>(token_endpoint, &resp));
    match result {
        Ok(token) => Ok(Poll::Token(token)),
        Err(e) => match e.code() {
            Some(ErrorCode::AuthorizationPending) => Ok(Poll::Pending),
            Some(ErrorCode::SlowDown) => Ok(Poll::SlowDown),
            Some(ErrorCode::AccessDenied) => Err(DeviceFlowError::Denied),
            Some(ErrorCode::ExpiredToken) => Err(DeviceFlowError::Expired),
            _ => Err(DeviceFlowError::Poll { source: e }),
        },
    }
}

/// The polling schedule of RFC 8628 §3.5: the server's interval (default 5 s), 5 s more after
/// each `slow_down`, doubling (up to a minute) while the server is unreachable, and the
/// codes' expiry as the deadline.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: u64,
    deadline: Instant,
}

impl Schedule {
    /// The schedule for an authorization response.
    pub fn new(authorization: &DeviceAuthorization) -> Schedule {
        Schedule {
            interval: authorization.interval.unwrap_or(DEFAULT_INTERVAL).max(1),
            deadline: Instant::now() + Duration::from_secs(authorization.expires_in),
        }
    }

    /// The wait before the next poll.
    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.interval)
    }

    /// The codes have expired.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// After `slow_down`.
    pub fn slow_down(&mut self) {
        self.interval += SLOW_DOWN_STEP;
    }

    /// After a transport failure.
    pub fn back_off(&mut self) {
        self.interval = (self.interval * 2).min(60);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_rfc8628() {
        let auth: DeviceAuthorization = serde_json::from_str(
            r#"{"device_code":"d","user_code":"BCDF-GHJK","verification_uri":"https://x/device","expires_in":600}"#,
        )
        .unwrap();
        let mut s = Schedule::new(&auth);
        assert_eq!(s.wait(), Duration::from_secs(5));
        s.slow_down();
        assert_eq!(s.wait(), Duration::from_secs(10));
        assert!(!s.expired());
        assert!(!format!("{auth:?}").contains("device_code: \"d\""));
    }
}

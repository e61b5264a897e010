//! Verification-page sessions: the cookie (`__Host-` prefixed, `Secure; HttpOnly; SameSite=Lax`),
//! its record in the store, and the CSRF token every form echoes.

use axum::http::{header, HeaderMap, HeaderValue};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::oauth::{AuthServer, OAuthError};
use crate::secret::{random_id, Secret};
use crate::store::grants::TokenHash;
use crate::store::users::{FailureWindow, WebSession};

/// The cookie's name. `__Host-` makes the browser refuse it unless it is `Secure`, has
/// `Path=/` and no `Domain`, so no sibling host or plain-HTTP page can plant one.
pub const COOKIE: &str = "__Host-hallmark-session";

/// A live session: the cookie value (held only here and in the browser) and its record.
pub struct Session {
    id: Zeroizing<String>,
    /// The record.
    pub record: WebSession,
    /// Whether the browser does not have this cookie yet.
    pub is_new: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A fresh session, not yet stored.
    pub fn fresh(user: Option<String>, ttl: u64, now: u64) -> Self {
        Session {
            id: Zeroizing::new(Secret::generate().expose().to_owned()),
            record: WebSession {
                csrf: random_id(32),
                user,
                created_at: now,
                expires_at: now + ttl,
                failed_codes: FailureWindow::default(),
                failed_sign_ins: FailureWindow::default(),
            },
            is_new: true,
        }
    }

    /// The session the request's cookie names, if it is live.
    pub fn from_request(
        oauth: &AuthServer,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Option<Self>, OAuthError> {
        let Some(value) = cookie_value(headers, COOKIE) else {
            return Ok(None);
        };
        // Our ids are 43 base64url characters; anything else is not worth a lookup.
        if value.len() != 43 {
            return Ok(None);
        }
        let id = Zeroizing::new(value.to_owned());
        let record = oauth
            .sessions
            .web_session(&hash(&id))
            .map_err(OAuthError::internal)?;
        Ok(record.filter(|r| now < r.expires_at).map(|record| Session {
            id,
            record,
            is_new: false,
        }))
    }

    /// The request's session, or a new anonymous one (stored at once).
    pub fn load_or_start(
        oauth: &AuthServer,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Self, OAuthError> {
        if let Some(s) = Self::from_request(oauth, headers, now)? {
            return Ok(s);
        }
        let s = Self::fresh(None, oauth.settings.device.session_ttl, now);
        s.save(oauth)?;
        Ok(s)
    }

    /// Write the record back. Durable at the next group commit; losing a session or a counter
    /// in a crash costs a person a sign-in, nothing more.
    pub fn save(&self, oauth: &AuthServer) -> Result<(), OAuthError> {
        oauth
            .sessions
            .put_web_session(&hash(&self.id), &self.record)
            .map_err(OAuthError::internal)
    }

    /// End this session in the store.
    pub fn end(&self, oauth: &AuthServer) -> Result<(), OAuthError> {
        oauth
            .sessions
            .delete_web_session(&hash(&self.id))
            .map_err(OAuthError::internal)
    }

    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(self.record.csrf.as_bytes())))
    }

    /// The `Set-Cookie` value that hands this session to the browser.
    pub fn set_cookie(&self) -> HeaderValue {
        let max_age = self
            .record
            .expires_at
            .saturating_sub(self.record.created_at);
        let value = format!(
            "{COOKIE}={}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax",
            self.id.as_str()
        );
        // base64url and digits only: always a valid header value.
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn clear_cookie() -> HeaderValue {
        HeaderValue::from_static(
            "__Host-hallmark-session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
        )
    }
}

fn hash(id: &str) -> TokenHash {
    TokenHash::of(id)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-hallmark-session=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, "b"), Some("2"));
        assert_eq!(cookie_value(&h, "c"), None);
    }

    #[test]
    fn cookie_has_the_required_flags() {
        let s = Session::fresh(None, 600, 1000);
        let c = s.set_cookie();
        let c = c.to_str().unwrap();
        assert!(c.starts_with("__Host-hallmark-session="));
        for flag in [
            "; Path=/",
            "; Max-Age=600",
            "; Secure",
            "; HttpOnly",
            "; SameSite=Lax",
        ] {
            assert!(c.contains(flag), "{c}");
        }
        assert!(!c.contains("Domain"));
    }

    #[test]
    fn csrf_must_match_exactly() {
        let s = Session::fresh(None, 600, 0);
        let good = s.record.csrf.clone();
        assert!(s.csrf_matches(Some(&good)));
        assert!(!s.csrf_matches(Some(&good[1..])));
        assert!(!s.csrf_matches(Some("")));
        assert!(!s.csrf_matches(None));
    }
}

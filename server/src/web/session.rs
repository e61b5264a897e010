//! Who is at the verification page: a signed-in session (cookie = 256 random bits, its record in
//! the store under their hash) or an anonymous visitor (nothing stored: the MACed cookie of
//! [`super::visitor`]). One cookie name for both, `__Host-` prefixed, `Secure; HttpOnly;
//! SameSite=Lax`; and the CSRF token every form echoes.

use axum::http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::visitor::{CookieKey, Visitor};
use crate::oauth::device_flow::UserCode;
use crate::oauth::{AuthServer, OAuthError};
use crate::secret::{random_id, Secret};
use crate::store::grants::TokenHash;
use crate::store::users::WebSession;

/// The cookie's name. `__Host-` makes the browser refuse it unless it is `Secure`, has
/// `Path=/` and no `Domain`, so no sibling host or plain-HTTP page can plant one.
pub const COOKIE: &str = "__Host-hallmark-session";
/// User codes a session remembers having entered.
const MAX_CODES: usize = 8;

/// A signed-in session: the cookie value (held only here and in the browser) and its record.
pub struct Session {
    id: Zeroizing<String>,
    /// The record.
    pub record: WebSession,
    /// The signed-in user.
    pub user: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A fresh session for `user`, not yet stored.
    pub fn fresh(user: String, ttl: u64, now: u64) -> Self {
        Session {
            id: Zeroizing::new(Secret::generate().expose().to_owned()),
            record: WebSession {
                csrf: random_id(32),
                user: Some(user.clone()),
                created_at: now,
                expires_at: now.saturating_add(ttl),
                codes: Vec::new(),
            },
            user,
        }
    }

    /// The live signed-in session a cookie value names, if any.
    async fn from_cookie(
        oauth: &AuthServer,
        value: &str,
        now: u64,
    ) -> Result<Option<Self>, OAuthError> {
        // Our ids are 43 base64url characters; anything else is not worth a lookup.
        if value.len() != 43 || value.contains('.') {
            return Ok(None);
        }
        let id = Zeroizing::new(value.to_owned());
        let record = oauth
            .sessions
            .web_session(&TokenHash::of(&id))
            .await
            .map_err(OAuthError::from)?;
        // A record without a user is an anonymous session stored by an older server: ignored.
        Ok(record.filter(|r| now < r.expires_at).and_then(|record| {
            let user = record.user.clone()?;
            Some(Session { id, record, user })
        }))
    }

    /// Write the record. The caller commits before it answers.
    pub async fn save(&self, oauth: &AuthServer) -> Result<(), OAuthError> {
        oauth
            .sessions
            .put_web_session(&self.limit_key(), &self.record)
            .await
            .map_err(OAuthError::from)
    }

    /// End this session in the store. The caller commits before it answers.
    pub async fn end(&self, oauth: &AuthServer) -> Result<(), OAuthError> {
        oauth
            .sessions
            .delete_web_session(&self.limit_key())
            .await
            .map_err(OAuthError::from)
    }

    /// The hash of the id: the store's key, and what the failure limits count under.
    pub fn limit_key(&self) -> TokenHash {
        TokenHash::of(&self.id)
    }

    /// The tag a device grant records for the session that decided on it: derived from the
    /// id's hash, so it names the session without being able to open it.
    pub fn decision_tag(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"hallmark decided-in v1\0")
            .chain_update(self.limit_key().0)
            .finalize();
        hex::encode(&digest[..16])
    }

    /// Whether this session entered `code` through the code form.
    pub fn entered(&self, code: &UserCode) -> bool {
        self.record.codes.iter().any(|c| c == code.as_str())
    }

    /// Note that this session entered `code` (keeping the newest few); false if it had.
    pub fn remember(&mut self, code: &UserCode) -> bool {
        if self.entered(code) {
            return false;
        }
        self.record.codes.push(code.as_str().to_owned());
        let excess = self.record.codes.len().saturating_sub(MAX_CODES);
        self.record.codes.drain(..excess);
        true
    }

    /// The `Set-Cookie` value that hands this session to the browser.
    pub fn set_cookie(&self) -> HeaderValue {
        let max_age = self
            .record
            .expires_at
            .saturating_sub(self.record.created_at);
        cookie(&self.id, max_age)
    }
}

/// Who sent a request: a signed-in session or an anonymous visitor.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Caller {
    /// Signed in.
    SignedIn(Session),
    /// Not signed in.
    Visitor(Visitor),
}

impl Caller {
    /// The caller the request's cookie names, if it is live.
    pub async fn from_request(
        oauth: &AuthServer,
        key: &CookieKey,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Option<Self>, OAuthError> {
        let Some(value) = cookie_value(headers, COOKIE) else {
            return Ok(None);
        };
        if let Some(v) = Visitor::from_cookie(key, value, now) {
            return Ok(Some(Caller::Visitor(v)));
        }
        Ok(Session::from_cookie(oauth, value, now)
            .await?
            .map(Caller::SignedIn))
    }

    /// The CSRF token its forms carry.
    pub fn csrf(&self) -> &str {
        match self {
            Caller::SignedIn(s) => &s.record.csrf,
            Caller::Visitor(v) => &v.csrf,
        }
    }

    /// Whether `presented` is this caller's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(self.csrf().as_bytes())))
    }

    /// What the failure limits count this caller under.
    pub fn limit_key(&self) -> TokenHash {
        match self {
            Caller::SignedIn(s) => s.limit_key(),
            Caller::Visitor(v) => v.limit_key(),
        }
    }
}

/// The `Set-Cookie` value that hands `visitor` to the browser.
pub fn visitor_cookie(visitor: &Visitor, key: &CookieKey, now: u64) -> HeaderValue {
    cookie(
        &visitor.cookie_value(key),
        visitor.expires_at.saturating_sub(now),
    )
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-hallmark-session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
    )
}

fn cookie(value: &str, max_age: u64) -> HeaderValue {
    let value =
        format!("{COOKIE}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax");
    // base64url, digits and dots only: always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| clear_cookie())
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(super) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
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
    fn cookies_have_the_required_flags() {
        let s = Session::fresh("ann".into(), 600, 1000);
        let key = CookieKey::random();
        let v = Visitor::fresh(600, 1000);
        for c in [s.set_cookie(), visitor_cookie(&v, &key, 1000)] {
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
    }

    #[test]
    fn a_session_remembers_its_newest_codes_and_tags_its_decisions() {
        let mut s = Session::fresh("ann".into(), 600, 0);
        let codes: Vec<UserCode> = (0..10u8)
            .map(|i| {
                UserCode::parse(&format!(
                    "BCDFGHJ{}",
                    char::from(b"BCDFGHJKLM"[usize::from(i)])
                ))
                .unwrap()
            })
            .collect();
        assert!(s.remember(&codes[0]));
        assert!(!s.remember(&codes[0]));
        for c in &codes[1..] {
            s.remember(c);
        }
        assert!(!s.entered(&codes[1]) && s.entered(&codes[2]) && s.entered(&codes[9]));
        assert_eq!(s.record.codes.len(), 8);
        let other = Session::fresh("ann".into(), 600, 0);
        assert_eq!(s.decision_tag().len(), 32);
        assert_ne!(s.decision_tag(), other.decision_tag());
    }

    #[test]
    fn csrf_must_match_exactly() {
        let s = Caller::SignedIn(Session::fresh("ann".into(), 600, 0));
        let good = s.csrf().to_owned();
        assert!(s.csrf_matches(Some(&good)));
        assert!(!s.csrf_matches(Some(&good[1..])));
        assert!(!s.csrf_matches(Some("")));
        assert!(!s.csrf_matches(None));
    }
}

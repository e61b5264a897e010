//! What a POST hands the page it redirects to (post/redirect/get): which message to show and
//! what the person had typed, in a short-lived cookie (`__Host-hallmark-flash`, 2 minutes)
//! MACed like the visitor cookie, read once by `GET /device` and cleared there. Nothing is
//! stored, and nothing typed ends up in a URL (a password typed into the name field must not
//! land in the browser's history).
//!
//! Cookie value: `v1.<payload>.<expires_at>.<mac>`, `payload` the base64url JSON of [`Flash`],
//! `mac` = HMAC-SHA256(key, "hallmark flash v1" ‖ 0x00 ‖ `payload` ‖ "." ‖ `expires_at`).

use axum::http::{HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::session::cookie_value;
use super::visitor::CookieKey;

/// The cookie's name.
pub const COOKIE: &str = "__Host-hallmark-flash";
/// How long a flash lives, seconds: one redirect, with room for a slow phone.
const TTL: u64 = 120;
/// Longest typed value carried back.
const MAX_TYPED: usize = 64;
/// Domain separation for the flash cookie's MAC.
const LABEL: &[u8] = b"hallmark flash v1\0";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Notice {
    /// Wrong user name or password.
    WrongPassword,
    /// A signed-out visitor sent a code.
    PleaseSignIn,
    /// A code that matches no request; `left` tries remain.
    CodeUnknown,
    /// A code whose request expired.
    CodeExpired,
    /// A code was sent while code entry was paused: it was not looked at.
    CodeNotChecked,
}

/// One message for the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flash {
    /// What happened.
    #[serde(rename = "k")]
    pub notice: Notice,
    /// The code as typed (shown back escaped).
    #[serde(rename = "c", default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// The user name as typed.
    #[serde(rename = "u", default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Tries left before code entry pauses.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
}

impl Flash {
    /// A flash with nothing typed.
    pub fn new(notice: Notice) -> Self {
        Flash {
            notice,
            code: String::new(),
            username: String::new(),
            tries_left: None,
        }
    }

    /// With the code as typed (capped).
    pub fn code(mut self, typed: &str) -> Self {
        self.code = typed.chars().take(MAX_TYPED).collect();
        self
    }

    /// With the user name as typed (capped).
    pub fn username(mut self, typed: &str) -> Self {
        self.username = typed.chars().take(MAX_TYPED).collect();
        self
    }

    /// With the tries left.
    pub fn tries_left(mut self, n: u32) -> Self {
        self.tries_left = Some(n);
        self
    }

    /// The `Set-Cookie` value carrying this flash.
    pub fn set_cookie(&self, key: &CookieKey, now: u64) -> HeaderValue {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(json);
        let expires = now.saturating_add(TTL).to_string();
        let mac = key.mac(LABEL, &[payload.as_bytes(), expires.as_bytes()]);
        let value = format!(
            "{COOKIE}=v1.{payload}.{expires}.{mac}; Path=/; Max-Age={TTL}; Secure; HttpOnly; SameSite=Lax"
        );
        // base64url, digits and dots: always a valid header value.
        HeaderValue::from_str(&value).unwrap_or_else(|_| clear_cookie())
    }

    /// The request's flash, if it carries a live one we made.
    pub fn from_request(key: &CookieKey, headers: &HeaderMap, now: u64) -> Option<Self> {
        let value = cookie_value(headers, COOKIE)?;
        let mut parts = value.split('.');
        let (Some("v1"), Some(payload), Some(expires), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        if !key.verify(LABEL, &[payload.as_bytes(), expires.as_bytes()], mac) {
            return None;
        }
        let expires_at: u64 = expires.parse().ok()?;
        if now >= expires_at {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

/// Whether the request carries a flash cookie at all (live or not), so the answer clears it.
pub fn present(headers: &HeaderMap) -> bool {
    cookie_value(headers, COOKIE).is_some()
}

/// The `Set-Cookie` value that removes the flash.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-hallmark-flash=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    fn request_with(set_cookie: &HeaderValue) -> HeaderMap {
        let pair = set_cookie.to_str().unwrap().split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(pair).unwrap());
        h
    }

    #[test]
    fn a_flash_round_trips_once_and_only_from_us() {
        let key = CookieKey::random();
        let f = Flash::new(Notice::CodeUnknown)
            .code("bbbb-bbbb")
            .tries_left(2)
            .username(&"x".repeat(500));
        assert_eq!(f.username.len(), MAX_TYPED);
        let h = request_with(&f.set_cookie(&key, 1000));
        assert!(present(&h));
        assert_eq!(Flash::from_request(&key, &h, 1100), Some(f.clone()));
        assert_eq!(Flash::from_request(&key, &h, 1120), None, "expired");
        assert_eq!(Flash::from_request(&CookieKey::random(), &h, 1000), None);
        let c = h[header::COOKIE]
            .to_str()
            .unwrap()
            .replace(".1120.", ".9999.");
        let mut forged = HeaderMap::new();
        forged.insert(header::COOKIE, HeaderValue::from_str(&c).unwrap());
        assert_eq!(Flash::from_request(&key, &forged, 1000), None);
        assert!(!present(&HeaderMap::new()));
    }
}

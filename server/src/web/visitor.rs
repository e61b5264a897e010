//! A visitor who has not signed in: nothing about them is stored. Their CSRF token travels in
//! the session cookie itself, MACed with a key only the server holds (`page-cookie-key` in the
//! data directory, 0600), so a flood of anonymous page views writes nothing to the database.
//!
//! Cookie value: `v1.<csrf>.<expires_at>.<mac>`, where `csrf` is 256 random bits (base64url),
//! `expires_at` Unix seconds, and `mac` = HMAC-SHA256(key, "hallmark visitor v1" ‖ 0x00 ‖
//! `csrf` ‖ "." ‖ `expires_at`), base64url. A signed-in session's cookie is its 43-character
//! random id instead (see [`super::session`]); the dots tell the two apart.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use ring::hmac;
use subtle::ConstantTimeEq;

use crate::secret::random_id;
use crate::store::grants::TokenHash;

/// File of the cookie MAC key in the data directory.
pub const KEY_FILE: &str = "page-cookie-key";

/// Domain separation for the visitor cookie's MAC.
const VISITOR_LABEL: &[u8] = b"hallmark visitor v1\0";

/// Why the cookie key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CookieKeyError {
    /// The key file could not be read or written.
    #[error("cannot use the page cookie key {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file does not hold a key we wrote.
    #[error("page cookie key {path} is corrupt (delete it to make a new one; visitors then sign in again)")]
    Corrupt {
        /// The file.
        path: String,
    },
    /// The key file can be read by others.
    #[error("page cookie key {path} is readable by group or others (mode {mode:o}); make it 0600")]
    Exposed {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
}

/// The MAC key of the page's cookies. Never printed.
pub struct CookieKey(hmac::Key);

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(<redacted>)")
    }
}

impl CookieKey {
    /// A random key, kept nowhere (tests).
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        CookieKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
    }

    /// The data directory's key, made (0600) if the directory has none yet.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, CookieKeyError> {
        let path = data_dir.join(KEY_FILE);
        let shown = path.display().to_string();
        let io = |source| CookieKeyError::Io {
            path: shown.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(CookieKeyError::Exposed { path: shown, mode });
                }
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut bytes)
                    .map_err(|_| CookieKeyError::Corrupt { path: shown })?;
                Ok(CookieKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
                rand::rngs::OsRng.fill_bytes(bytes.as_mut());
                let text = zeroize::Zeroizing::new(hex::encode(bytes.as_ref()));
                crate::datadir::write_private_atomic(&path, text.as_bytes()).map_err(io)?;
                Ok(CookieKey(hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref())))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn tag(&self, label: &[u8], parts: &[&[u8]]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(label);
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                ctx.update(b".");
            }
            ctx.update(p);
        }
        ctx.sign()
    }

    /// base64url of the MAC of `parts` under `label`.
    pub(super) fn mac(&self, label: &[u8], parts: &[&[u8]]) -> String {
        URL_SAFE_NO_PAD.encode(self.tag(label, parts).as_ref())
    }

    /// Whether `mac` (base64url) is the MAC of `parts` under `label`, compared in constant time.
    pub(super) fn verify(&self, label: &[u8], parts: &[&[u8]], mac: &str) -> bool {
        let Ok(presented) = URL_SAFE_NO_PAD.decode(mac) else {
            return false;
        };
        bool::from(self.tag(label, parts).as_ref().ct_eq(&presented))
    }
}

/// An anonymous visitor: a CSRF token and when it stops working, vouched for by the MAC.
#[derive(Clone, PartialEq, Eq)]
pub struct Visitor {
    /// The token every form of this visitor echoes.
    pub csrf: String,
    /// When the cookie stops working.
    pub expires_at: u64,
}

impl std::fmt::Debug for Visitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Visitor")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Visitor {
    /// A new visitor for `ttl` seconds.
    pub fn fresh(ttl: u64, now: u64) -> Self {
        Visitor {
            csrf: random_id(32),
            expires_at: now.saturating_add(ttl),
        }
    }

    /// The visitor a cookie value names, if its MAC holds and it has not expired.
    pub fn from_cookie(key: &CookieKey, value: &str, now: u64) -> Option<Self> {
        let mut parts = value.split('.');
        let (Some("v1"), Some(csrf), Some(expires), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        // 256 bits in base64url, and a plain decimal: anything else was not minted here.
        if csrf.len() != 43 || expires.is_empty() || !expires.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if !key.verify(VISITOR_LABEL, &[csrf.as_bytes(), expires.as_bytes()], mac) {
            return None;
        }
        let expires_at: u64 = expires.parse().ok()?;
        (now < expires_at).then(|| Visitor {
            csrf: csrf.to_owned(),
            expires_at,
        })
    }

    /// The cookie value that carries this visitor.
    pub fn cookie_value(&self, key: &CookieKey) -> String {
        let expires = self.expires_at.to_string();
        let mac = key.mac(VISITOR_LABEL, &[self.csrf.as_bytes(), expires.as_bytes()]);
        format!("v1.{}.{expires}.{mac}", self.csrf)
    }

    /// What the page's failure limits count this visitor's sign-ins under.
    pub fn limit_key(&self) -> TokenHash {
        TokenHash::of(&self.csrf)
    }

    /// Whether `presented` is this visitor's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(self.csrf.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_round_trips_and_any_change_breaks_it() {
        let key = CookieKey::random();
        let v = Visitor::fresh(600, 1000);
        let value = v.cookie_value(&key);
        assert_eq!(Visitor::from_cookie(&key, &value, 1599), Some(v.clone()));
        // Expired.
        assert_eq!(Visitor::from_cookie(&key, &value, 1600), None);
        // Another key.
        assert_eq!(
            Visitor::from_cookie(&CookieKey::random(), &value, 1000),
            None
        );
        // A longer life, a swapped token, a truncated MAC, junk.
        let forged = value.replace(".1600.", ".9999999999.");
        assert_eq!(Visitor::from_cookie(&key, &forged, 1000), None);
        let other = Visitor::fresh(600, 1000);
        let swapped = value.replacen(&v.csrf, &other.csrf, 1);
        assert_eq!(Visitor::from_cookie(&key, &swapped, 1000), None);
        assert_eq!(
            Visitor::from_cookie(&key, &value[..value.len() - 2], 1000),
            None
        );
        for junk in ["", "v1", "v1...", "v2.a.1.b", &format!("{value}.x")] {
            assert_eq!(Visitor::from_cookie(&key, junk, 1000), None, "{junk}");
        }
    }

    #[test]
    fn the_key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = CookieKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = CookieKey::load_or_create(dir.path()).unwrap();
        let v = Visitor::fresh(60, 0);
        assert!(Visitor::from_cookie(&b, &v.cookie_value(&a), 1).is_some());
        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            CookieKey::load_or_create(dir.path()),
            Err(CookieKeyError::Exposed { .. })
        ));
        assert!(!format!("{a:?}")
            .contains(&std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap()));
    }

    #[test]
    fn csrf_must_match_exactly() {
        let v = Visitor::fresh(600, 0);
        let good = v.csrf.clone();
        assert!(v.csrf_matches(Some(&good)));
        assert!(!v.csrf_matches(Some(&good[1..])));
        assert!(!v.csrf_matches(None));
    }
}

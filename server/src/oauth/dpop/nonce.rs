//! DPoP server nonces (RFC 9449 §8), stateless so that every replica accepts what any replica
//! issued: a nonce is a time period's number and its HMAC-SHA256 tag under a key derived from
//! the active signing key (which every replica loads from the shared store). It is accepted in
//! the period it was issued and in the periods either side (replicas' clocks differ a little).
//! A signing-key rotation invalidates outstanding nonces: the client is answered
//! `use_dpop_nonce` with a fresh one and retries once, as §8 expects of it anyway.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use ring::hmac;
use subtle::ConstantTimeEq;

use crate::keys::ActiveKey;

/// Length of a nonce period, seconds: a nonce lives for one to three of them.
pub const NONCE_PERIOD: u64 = 60;
const LABEL: &[u8] = b"hallmark dpop nonce v1";
const TAG_LEN: usize = 16;

fn tag(key: &hmac::Key, period: u64) -> hmac::Tag {
    hmac::sign(key, &period.to_be_bytes())
}

fn key(active: &ActiveKey) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, active.derive_key(LABEL).as_slice())
}

/// The nonce of the period `now` falls in.
pub(super) fn issue(active: &ActiveKey, now: u64) -> String {
    let period = now / NONCE_PERIOD;
    let mut bytes = period.to_be_bytes().to_vec();
    bytes.extend_from_slice(&tag(&key(active), period).as_ref()[..TAG_LEN]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `nonce` was issued under `active` in the period of `now` or one either side.
pub(super) fn accepts(active: &ActiveKey, nonce: &str, now: u64) -> bool {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else {
        return false;
    };
    let Some((period, mac)) = bytes.split_first_chunk::<8>() else {
        return false;
    };
    let period = u64::from_be_bytes(*period);
    let current = now / NONCE_PERIOD;
    if mac.len() != TAG_LEN || period.abs_diff(current) > 1 {
        return false;
    }
    let expected = tag(&key(active), period);
    // Constant time: a nonce is not a secret, but a forged one must not be found byte by byte.
    bool::from(expected.as_ref()[..TAG_LEN].ct_eq(mac))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::keys::{KeyFile, KeyRing};

    fn ring() -> KeyRing {
        let mut file = KeyFile::default();
        file.add_new(1, 1);
        KeyRing::build(&file, 1).unwrap()
    }

    #[test]
    fn a_nonce_lives_about_its_period_under_its_key_only() {
        let (a, b) = (ring(), ring());
        let t = 1_000_000;
        let n = issue(&a.active, t);
        assert!(accepts(&a.active, &n, t));
        assert!(accepts(&a.active, &n, t + NONCE_PERIOD));
        assert!(!accepts(&a.active, &n, t + 3 * NONCE_PERIOD));
        assert!(!accepts(&b.active, &n, t), "another signing key");
        let mut forged = URL_SAFE_NO_PAD.decode(&n).unwrap();
        forged[10] ^= 1;
        assert!(!accepts(&a.active, &URL_SAFE_NO_PAD.encode(forged), t));
        assert!(!accepts(&a.active, "", t));
        assert!(!accepts(&a.active, "!!", t));
    }
}

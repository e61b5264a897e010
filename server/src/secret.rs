//! High-entropy secrets: generation, the hash stored in their place, constant-time comparison.
//!
//! Client secrets are 256 random bits, so a fast hash (SHA-256) is the right storage form: a
//! password KDF adds nothing against guessing 2^256 values and would cap token throughput.

use std::fmt;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Random bytes in a secret: 256 bits.
pub const SECRET_BYTES: usize = 32;

/// A secret to hand out exactly once (client secret, factory secret). Redacted in `Debug`.
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// 256 fresh random bits from the OS, base64url without padding (43 characters).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Secret(Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
    }

    /// The text to show the one party that must hold it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the store keeps instead of the secret.
    pub fn hash(&self) -> SecretHash {
        SecretHash::of(self.expose())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// SHA-256 of a secret, the only form in which secrets are stored.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHash(#[serde(with = "hex_bytes")] [u8; 32]);

impl SecretHash {
    /// Hash a presented secret.
    pub fn of(presented: &str) -> Self {
        SecretHash(Sha256::digest(presented.as_bytes()).into())
    }

    /// Whether `presented` is the secret this hash was made from, in time independent of where
    /// the two differ.
    pub fn matches(&self, presented: &str) -> bool {
        let other = SecretHash::of(presented);
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

/// A random identifier (client_id, jti): `bytes` random bytes, base64url.
pub fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

mod hex_bytes {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_256_bits_and_distinct() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn hash_matches_only_its_secret() {
        let s = Secret::generate();
        let h = s.hash();
        assert!(h.matches(s.expose()));
        assert!(!h.matches(Secret::generate().expose()));
        assert!(!h.matches(""));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::generate();
        assert!(!format!("{s:?}").contains(s.expose()));
        assert!(!format!("{:?}", s.hash()).contains(&hex::encode(&s.hash().0[..4])));
    }

    #[test]
    fn hash_round_trips_through_json() {
        let h = Secret::generate().hash();
        let json = serde_json::to_string(&h).unwrap();
        let back: SecretHash = serde_json::from_str(&json).unwrap();
        assert!(back == h);
    }
}

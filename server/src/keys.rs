//! The server's Ed25519 signing keys: the file that holds them (0600, in the data directory), the
//! ring built from it once, and the JWKS published from that ring.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::oauth::jws::b64;

/// File name of the key file inside the data directory.
pub const KEY_FILE: &str = "signing-keys.json";

/// Failure to load or write signing keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read signing keys from {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file could not be written.
    #[error("cannot write signing keys to {path}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file is not what we wrote.
    #[error("signing key file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong, never key material.
        reason: String,
    },
    /// The database holding the keys failed.
    #[error("signing keys in the database: {reason}")]
    Store {
        /// What failed.
        reason: String,
    },
    /// No key may sign now.
    #[error("no signing key is active; run `hallmark-server keys rotate`")]
    NoActiveKey,
}

/// One signing key as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// RFC 7638 thumbprint of the public JWK.
    pub kid: String,
    /// The 32-byte Ed25519 seed, base64url. Secret.
    pub seed: String,
    /// When it was made.
    pub created_at: u64,
    /// From when it may sign (it is published before that).
    pub active_from: u64,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("active_from", &self.active_from)
            .finish_non_exhaustive()
    }
}

/// The key file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Every key not yet dropped, oldest first.
    pub keys: Vec<StoredKey>,
}

impl KeyFile {
    /// Read the key file from the data directory.
    pub fn load(data_dir: &Path) -> Result<Self, KeyError> {
        let path = data_dir.join(KEY_FILE);
        let text = std::fs::read(&path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| KeyError::Corrupt {
            path: path.display().to_string(),
            reason: format!("not the expected JSON ({})", e.classify_name()),
        })
    }

    /// Write the key file atomically with mode 0600.
    pub fn save(&self, data_dir: &Path) -> Result<(), KeyError> {
        let path = data_dir.join(KEY_FILE);
        let bytes = Zeroizing::new(serde_json::to_vec_pretty(self).unwrap_or_default());
        crate::datadir::write_private_atomic(&path, &bytes).map_err(|source| KeyError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// A new key, active from `active_from`.
    pub fn add_new(&mut self, now: u64, active_from: u64) -> String {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let kid = thumbprint(&key.verifying_key());
        let seed = Zeroizing::new(key.to_bytes());
        self.keys.push(StoredKey {
            kid: kid.clone(),
            seed: b64(seed.as_ref()),
            created_at: now,
            active_from,
        });
        kid
    }
}

impl KeyFile {
    /// Rotate: add a key that is published now and signs from `now + publish_ahead` (one
    /// validator cache period, so no validator meets a `kid` it has not fetched), and drop keys
    /// that no token still alive can carry: a key retires when the next one activates, and is
    /// kept `keep_after_retire` seconds (the longest access token lifetime plus skew) after that.
    pub fn rotate(&mut self, now: u64, publish_ahead: u64, keep_after_retire: u64) -> String {
        let kid = self.add_new(now, now + publish_ahead);
        self.prune(now, keep_after_retire);
        kid
    }

    /// Drop keys retired more than `keep_after_retire` seconds ago.
    pub fn prune(&mut self, now: u64, keep_after_retire: u64) {
        self.keys.sort_by_key(|k| k.active_from);
        // Key i retired when key i+1 activated; if that was long enough ago (and key i+1 is
        // active), nothing key i signed is alive.
        let activations: Vec<u64> = self.keys.iter().map(|k| k.active_from).collect();
        let mut index = 0;
        self.keys.retain(|_| {
            let next = activations.get(index + 1).copied();
            index += 1;
            !next.is_some_and(|retired| retired <= now && retired + keep_after_retire < now)
        });
    }

    /// When the newest key was made.
    pub fn newest_created_at(&self) -> Option<u64> {
        self.keys.iter().map(|k| k.created_at).max()
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// The key that signs new tokens, with its JWS header already encoded.
pub struct ActiveKey {
    /// Its `kid`.
    pub kid: String,
    key: SigningKey,
    header_b64: String,
}

impl std::fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ActiveKey {
    /// Sign `claims` as a compact JWS with header `{"alg":"EdDSA","typ":typ,"kid":…}`.
    pub fn sign_compact(&self, payload_json: &[u8]) -> String {
        let mut out =
            String::with_capacity(self.header_b64.len() + payload_json.len() * 4 / 3 + 92);
        out.push_str(&self.header_b64);
        out.push('.');
        base64::Engine::encode_string(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            payload_json,
            &mut out,
        );
        let signature = self.key.sign(out.as_bytes());
        out.push('.');
        base64::Engine::encode_string(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            signature.to_bytes(),
            &mut out,
        );
        out
    }
}

impl ActiveKey {
    /// A 32-byte key for `label`, derived from this signing key (HMAC-SHA256 under its seed):
    /// every replica holding the ring derives the same, and nothing derived reveals the seed.
    /// The DPoP nonces (`oauth::dpop`) are tagged with one.
    pub fn derive_key(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let seed = Zeroizing::new(self.key.to_bytes());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.as_slice());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(ring::hmac::sign(&key, label).as_ref());
        out
    }
}

impl ActiveKey {
    /// Sign `payload_json` as a compact JWS of media type `typ` (RFC 7515 §4.1.9), for what
    /// the server signs besides access tokens (audit checkpoints): a distinct `typ` keeps one
    /// from ever passing for the other.
    pub fn sign_typed(&self, typ: &str, payload_json: &[u8]) -> String {
        let header = serde_json::json!({"alg": "EdDSA", "typ": typ, "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload_json)
        );
        let signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(&signature.to_bytes()))
    }
}

/// Everything derived from the key file at one moment: built once, shared by every request.
#[derive(Debug)]
pub struct KeyRing {
    /// The signer.
    pub active: ActiveKey,
    verifiers: HashMap<String, VerifyingKey>,
    /// `/jwks.json`, serialised once.
    pub jwks_json: Vec<u8>,
}

impl KeyRing {
    /// Build the ring for time `now`: the newest key whose `active_from` has come signs; every
    /// key in the file is published and verifies (the file holds only keys still needed).
    pub fn build(file: &KeyFile, now: u64) -> Result<Self, KeyError> {
        let mut verifiers = HashMap::new();
        let mut jwks = Vec::new();
        let mut active = None;
        for stored in &file.keys {
            let seed = Zeroizing::new(
                base64::Engine::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    &stored.seed,
                )
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| KeyError::Corrupt {
                    path: KEY_FILE.into(),
                    reason: format!("key {} has no valid seed", stored.kid),
                })?,
            );
            let key = SigningKey::from_bytes(&seed);
            let public = key.verifying_key();
            if thumbprint(&public) != stored.kid {
                return Err(KeyError::Corrupt {
                    path: KEY_FILE.into(),
                    reason: format!("key {} does not match its kid", stored.kid),
                });
            }
            jwks.push(public_jwk(&stored.kid, &public));
            verifiers.insert(stored.kid.clone(), public);
            if stored.active_from <= now {
                active = Some((stored.kid.clone(), key));
            }
        }
        let (kid, key) = active.ok_or(KeyError::NoActiveKey)?;
        let header = serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        Ok(KeyRing {
            active: ActiveKey {
                header_b64: b64(header.to_string().as_bytes()),
                kid,
                key,
            },
            verifiers,
            jwks_json: serde_json::to_vec(&serde_json::json!({ "keys": jwks })).unwrap_or_default(),
        })
    }

    /// The public key published under `kid`.
    pub fn verifier(&self, kid: &str) -> Option<&VerifyingKey> {
        self.verifiers.get(kid)
    }
}

/// The current ring, replaced whole when keys rotate so readers never see half a change.
#[derive(Debug)]
pub struct Keys {
    ring: RwLock<Arc<KeyRing>>,
}

impl Keys {
    /// Start from a built ring.
    pub fn new(ring: KeyRing) -> Self {
        Keys {
            ring: RwLock::new(Arc::new(ring)),
        }
    }

    /// The ring in force now.
    pub fn current(&self) -> Arc<KeyRing> {
        match self.ring.read() {
            Ok(r) => r.clone(),
            // A writer panicked mid-swap; the Arc inside is still a whole ring.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Put a new ring in force.
    pub fn replace(&self, ring: KeyRing) {
        match self.ring.write() {
            Ok(mut r) => *r = Arc::new(ring),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ring),
        }
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key: SHA-256 over the required members in
/// lexicographic order, base64url.
pub fn thumbprint(public: &VerifyingKey) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        b64(public.as_bytes())
    );
    b64(&Sha256::digest(canonical.as_bytes()))
}

fn public_jwk(kid: &str, public: &VerifyingKey) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64(public.as_bytes()),
        "kid": kid,
        "use": "sig",
        "alg": "EdDSA",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_signs_with_the_newest_active_key_and_publishes_all() {
        let mut file = KeyFile::default();
        let old = file.add_new(0, 0);
        let current = file.add_new(10, 10);
        let next = file.add_new(20, 1000);
        let ring = KeyRing::build(&file, 100).unwrap();
        assert_eq!(ring.active.kid, current);
        for kid in [&old, &current, &next] {
            assert!(ring.verifier(kid).is_some());
        }
        let jwks: serde_json::Value = serde_json::from_slice(&ring.jwks_json).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 3);
        assert!(!String::from_utf8_lossy(&ring.jwks_json).contains(&file.keys[0].seed));
    }

    #[test]
    fn rotation_publishes_ahead_and_prunes_only_dead_keys() {
        let mut file = KeyFile::default();
        let first = file.add_new(0, 0);
        let second = file.rotate(1000, 600, 330);
        // Published at once, signing only after the cache period.
        assert_eq!(KeyRing::build(&file, 1000).unwrap().active.kid, first);
        assert!(KeyRing::build(&file, 1000)
            .unwrap()
            .verifier(&second)
            .is_some());
        assert_eq!(KeyRing::build(&file, 1600).unwrap().active.kid, second);
        // The first key stays while tokens it signed may live (until 1600 + 330).
        file.prune(1900, 330);
        assert_eq!(file.keys.len(), 2);
        let third = file.rotate(2000, 0, 330);
        assert_eq!(
            file.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
            vec![second, third]
        );
    }

    #[test]
    fn no_active_key_is_an_error() {
        let mut file = KeyFile::default();
        file.add_new(0, 500);
        assert!(matches!(
            KeyRing::build(&file, 100),
            Err(KeyError::NoActiveKey)
        ));
    }

    #[test]
    fn a_swapped_seed_is_detected() {
        let mut file = KeyFile::default();
        file.add_new(0, 0);
        let mut other = KeyFile::default();
        other.add_new(0, 0);
        file.keys[0].seed = other.keys[0].seed.clone();
        assert!(matches!(
            KeyRing::build(&file, 1),
            Err(KeyError::Corrupt { .. })
        ));
    }

    #[test]
    fn debug_hides_the_seed() {
        let mut file = KeyFile::default();
        file.add_new(0, 0);
        assert!(!format!("{file:?}").contains(&file.keys[0].seed));
    }
}

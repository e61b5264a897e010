//! The verified-token cache: access tokens whose signature and claims this replica has already
//! checked, so that validating the same token again (a resource server introspects it many
//! times in its few minutes of life, RFC 7662) skips the Ed25519 verification and the JSON
//! parse.
//!
//! What the cache answers is only what can never change for a given token string under a given
//! key ring: that its signature verifies and what its claims say. Everything that can change —
//! the time checks against `now`, revocation, the client's standing, the grant's family, an
//! exchanged token's lineage — is checked on every validation, hit or miss, exactly as before
//! (see [`super::access_token`]). So a token revoked (at this replica or another), or whose
//! client was disabled or deleted, is inactive at the very next validation, cached or not.
//!
//! Attacks it was built against:
//! - Memory: at most [`VERIFIED_TOKEN_CAPACITY`] entries, and only tokens this server signed
//!   get in, so each entry's size is bounded by what we mint (scopes a client may hold, the
//!   delegation depth). Many distinct valid tokens only push older entries out (misses cost
//!   what validation cost before the cache), they never grow it.
//! - Collisions: entries are keyed by the SHA-256 of the whole token string, which no one can
//!   make two different strings share.
//! - Keys: an entry holds only while the key ring it was verified under is the ring in force;
//!   the first look after a ring change (rotation, a key retired) empties the shard, so a cached
//!   token never outlives its key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use sha2::{Digest, Sha256};

use super::access_token::AccessClaims;
use crate::keys::KeyRing;

/// Most tokens the cache holds across all its shards. An entry is about 0.5 KiB for a
/// client-credentials token, so the cache stays below ~16 MiB however it is filled.
pub const VERIFIED_TOKEN_CAPACITY: usize = 32_768;

/// Independent locks, so concurrent validations seldom wait on each other.
const SHARDS: usize = 16;

/// The SHA-256 of a token string: the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Digest of the whole token string.
    pub fn of(token: &str) -> Self {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    fn shard(&self) -> usize {
        usize::from(self.0[0]) % SHARDS
    }
}

/// Tokens whose signature verified under a key ring, with their claims.
#[derive(Debug)]
pub struct VerifiedTokens {
    shards: Box<[Mutex<Shard>]>,
    /// Entries per generation per shard (a shard holds two generations).
    generation_len: usize,
}

/// One shard: two generations, so that the entries looked up recently survive and the rest
/// age out with O(1) amortised work per insert (a "two-map" approximation of LRU).
#[derive(Debug, Default)]
struct Shard {
    /// The ring every entry was verified under. A `Weak` keeps the allocation (not the keys)
    /// alive, so its address cannot be reused by a later ring while we compare against it.
    ring: Weak<KeyRing>,
    current: HashMap<TokenDigest, Entry>,
    previous: HashMap<TokenDigest, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    claims: AccessClaims,
    /// When no time check can pass any more (`exp` plus the clock skew): dropped from then on.
    stale_at: u64,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self::new(VERIFIED_TOKEN_CAPACITY)
    }
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (rounded down to a multiple of the shard count,
    /// and at least two per shard).
    pub fn new(capacity: usize) -> Self {
        VerifiedTokens {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            generation_len: (capacity / SHARDS / 2).max(1),
        }
    }

    /// The claims of the token with `digest`, if it was verified under `ring` and is not past
    /// `stale_at` at `now`. The caller still runs every time and state check.
    pub fn get(&self, digest: &TokenDigest, ring: &Arc<KeyRing>, now: u64) -> Option<AccessClaims> {
        let mut shard = self.shard(digest, ring);
        if let Some(entry) = shard.current.get(digest) {
            if now < entry.stale_at {
                return Some(entry.claims.clone());
            }
            shard.current.remove(digest);
            return None;
        }
        let entry = shard.previous.remove(digest)?;
        if now >= entry.stale_at {
            return None;
        }
        // Looked up again: it moves back to the young generation.
        let claims = entry.claims.clone();
        shard.insert(*digest, entry, self.generation_len, now);
        Some(claims)
    }

    /// Remember that the token with `digest` verified under `ring` with `claims`, usable until
    /// `stale_at`.
    pub fn insert(
        &self,
        digest: TokenDigest,
        ring: &Arc<KeyRing>,
        claims: AccessClaims,
        stale_at: u64,
        now: u64,
    ) {
        let entry = Entry { claims, stale_at };
        self.shard(&digest, ring)
            .insert(digest, entry, self.generation_len, now);
    }

    /// Entries held now (expired ones included until they are met or age out).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = lock(s);
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard for `digest`, emptied first if it holds entries of another ring than `ring`.
    fn shard(&self, digest: &TokenDigest, ring: &Arc<KeyRing>) -> MutexGuard<'_, Shard> {
        // The index is below SHARDS, the slice's length.
        let mut shard = lock(&self.shards[digest.shard()]);
        if !std::ptr::eq(shard.ring.as_ptr(), Arc::as_ptr(ring)) {
            shard.current.clear();
            shard.previous.clear();
            shard.ring = Arc::downgrade(ring);
        }
        shard
    }
}

impl Shard {
    fn insert(&mut self, digest: TokenDigest, entry: Entry, generation_len: usize, now: u64) {
        if self.current.len() >= generation_len && !self.current.contains_key(&digest) {
            // The young generation is full: it becomes the old one (less what has expired),
            // and the old one is dropped. Each entry is moved at most once per
            // `generation_len` inserts.
            let mut aged = std::mem::take(&mut self.current);
            aged.retain(|_, e| now < e.stale_at);
            self.previous = aged;
        }
        self.current.insert(digest, entry);
    }
}

/// A poisoned shard is still a whole map (every mutation is a single map call), so use it.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::keys::KeyFile;

    fn ring() -> Arc<KeyRing> {
        let mut file = KeyFile::default();
        file.add_new(1, 1);
        Arc::new(KeyRing::build(&file, 1).unwrap())
    }

    fn claims(jti: &str, exp: u64) -> AccessClaims {
        AccessClaims {
            iss: "https://as".into(),
            sub: "c".into(),
            aud: "https://as".into(),
            exp,
            iat: 1,
            nbf: 1,
            jti: jti.into(),
            client_id: "c".into(),
            scope: "s".into(),
            act: None,
            purpose: None,
            sid: None,
            cnf: None,
        }
    }

    #[test]
    fn a_token_is_found_under_its_ring_until_stale() {
        let cache = VerifiedTokens::new(64);
        let ring = ring();
        let d = TokenDigest::of("token-a");
        assert!(cache.get(&d, &ring, 10).is_none());
        cache.insert(d, &ring, claims("a", 100), 130, 10);
        assert_eq!(cache.get(&d, &ring, 129).unwrap().jti, "a");
        assert!(cache.get(&TokenDigest::of("token-b"), &ring, 10).is_none());
        // Stale: dropped, not served.
        assert!(cache.get(&d, &ring, 130).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn another_ring_empties_the_cache() {
        let cache = VerifiedTokens::new(64);
        let (old, new) = (ring(), ring());
        let d = TokenDigest::of("token-a");
        cache.insert(d, &old, claims("a", 100), 130, 10);
        assert!(cache.get(&d, &new, 10).is_none());
        // Not even the old ring finds it again: the shard was emptied.
        assert!(cache.get(&d, &old, 10).is_none());
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_what_is_used() {
        let capacity = SHARDS * 8;
        let cache = VerifiedTokens::new(capacity);
        let ring = ring();
        let hot = TokenDigest::of("hot");
        cache.insert(hot, &ring, claims("hot", 1000), 1000, 1);
        for n in 0..capacity * 20 {
            let d = TokenDigest::of(&format!("token-{n}"));
            cache.insert(d, &ring, claims(&n.to_string(), 1000), 1000, 1);
            assert!(cache.len() <= capacity, "{} entries", cache.len());
            assert!(cache.get(&hot, &ring, 1).is_some(), "hot entry lost at {n}");
        }
    }

    #[test]
    fn expired_entries_are_dropped_as_their_generation_ages() {
        let cache = VerifiedTokens::new(SHARDS * 2);
        let ring = ring();
        for n in 0..SHARDS * 40 {
            let d = TokenDigest::of(&format!("token-{n}"));
            cache.insert(d, &ring, claims(&n.to_string(), 5), 5, 10);
        }
        // Every shard's aged generation was filtered: nothing expired is kept there.
        for shard in cache.shards.iter() {
            assert!(lock(shard).previous.is_empty());
        }
    }
}

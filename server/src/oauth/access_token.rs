//! JWT access tokens (RFC 9068): minting with the active Ed25519 key, and the validation used by
//! introspection, token exchange and the admin API's bearer check — for an exchanged token
//! (RFC 8693), including every token it was derived from.

use serde::{Deserialize, Serialize};

use super::jws::{JwsError, Unverified};
use super::verified::TokenDigest;
use super::AuthServer;
use crate::keys::KeyRing;
use crate::secret::random_id;
use crate::store::{KeyAlg, Lineage};

/// Claims of an access token (RFC 9068 §2.2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: the client itself for client_credentials, the approving user after a device grant.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Unique id, the handle for revocation.
    pub jti: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Granted scopes, space-delimited.
    pub scope: String,
    /// The current actor and, nested, the prior ones (RFC 8693 §4.1); only after a token
    /// exchange. Absent tokens look exactly as they did before exchange existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// Why the token was requested, when the request said (`purpose` at the token endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The grant the token came from: the refresh-token family of a device authorization. A
    /// token carrying it is active only while that family is unrevoked, so revoking a refresh
    /// token (RFC 7009 §2.1) or replaying a spent one ends the grant's access tokens too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The key the token is bound to (RFC 9449 §6.1): only a request with a DPoP proof by that
    /// key may use it. Absent on bearer tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<super::dpop::Confirmation>,
}

/// An `act` claim (RFC 8693 §4.1): who acts, and in `act` the actor before it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    /// The acting party.
    pub sub: String,
    /// The prior actor, if this one acts for a party that was itself delegated to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// Deepest `act` nesting a token we accept may carry, whatever `max_delegation_depth` says: a
/// bound on work, independent of configuration. serde_json's own recursion limit (128) bounds
/// the stack while the claims are parsed.
pub const MAX_ACT_NESTING: usize = 32;

impl Actor {
    /// `sub` acting now, after the chain `prior` (RFC 8693 §4.1: the outermost `act` is the
    /// current actor, nested ones are prior actors).
    pub fn new(sub: &str, prior: Option<Actor>) -> Self {
        Actor {
            sub: sub.to_owned(),
            act: prior.map(Box::new),
        }
    }

    /// Number of `act` levels, this one included. Counted with a loop, not recursion.
    pub fn depth(&self) -> usize {
        let mut depth = 1;
        let mut next = self.act.as_deref();
        while let Some(actor) = next {
            depth += 1;
            next = actor.act.as_deref();
        }
        depth
    }
}

impl AccessClaims {
    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }

    /// Number of nested `act` levels: 0 for a token that was never exchanged.
    pub fn delegation_depth(&self) -> usize {
        self.act.as_ref().map_or(0, Actor::depth)
    }
}

/// Why a presented access token is not active. Logged; the client of introspection only learns
/// `active: false` (RFC 7662 §2.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRejection {
    /// Signature, structure or algorithm.
    #[error(transparent)]
    Jws(#[from] JwsError),
    /// `typ` is not `at+jwt` (RFC 9068 §4).
    #[error("typ is not at+jwt")]
    Type,
    /// No published key has this `kid`.
    #[error("unknown kid")]
    UnknownKey,
    /// The claims are not an access token's.
    #[error("claims are not an access token's")]
    Claims,
    /// Another issuer.
    #[error("wrong issuer")]
    Issuer,
    /// Another audience.
    #[error("wrong audience")]
    Audience,
    /// Past `exp` (beyond the allowed skew).
    #[error("expired")]
    Expired,
    /// Before `nbf` or issued in the future (beyond the allowed skew).
    #[error("not yet valid")]
    NotYetValid,
    /// Revoked through RFC 7009.
    #[error("revoked")]
    Revoked,
    /// Its client was disabled or deleted.
    #[error("client disabled or deleted")]
    ClientGone,
    /// Exchanged (it has `act`), but no record says what from: it cannot be shown to descend
    /// only from live tokens, so it is not trusted.
    #[error("exchanged token without a recorded lineage")]
    LineageUnknown,
    /// The grant it came from (its refresh-token family) was revoked.
    #[error("its grant was revoked")]
    GrantRevoked,
    /// A token it was exchanged from (subject or actor, at any remove) was revoked.
    #[error("a token it was exchanged from is revoked")]
    SourceRevoked,
    /// The client of a token it was exchanged from was disabled or deleted.
    #[error("the client of a token it was exchanged from is disabled or deleted")]
    SourceClientGone,
    /// Bound to a DPoP key (RFC 9449 §7.2) but presented as a bearer token.
    #[error("the token is DPoP-bound; present it with Authorization: DPoP and a proof")]
    DpopBound,
    /// Storage could not answer: our fault (a 500).
    #[error("storage: {0}")]
    Storage(String),
    /// Storage is out of reach for now (the disk, the database): a 503 with `Retry-After`,
    /// never an answer that the token is inactive.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<crate::store::StoreError> for TokenRejection {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_outage() {
            TokenRejection::Unavailable(e.describe())
        } else {
            TokenRejection::Storage(e.describe())
        }
    }
}

impl AuthServer {
    /// Mint an access token for `client_id` acting for `sub`, with `scope`.
    pub fn mint_access_token(
        &self,
        sub: &str,
        client_id: &str,
        scope: &str,
        now: u64,
    ) -> (String, AccessClaims) {
        let claims = self.access_claims(sub, client_id, scope, now);
        (self.sign_access_token(&claims), claims)
    }

    /// The claims of a new access token (fresh `jti`, the configured lifetime, no `act` or
    /// `purpose`), for a grant to adjust before [`AuthServer::sign_access_token`].
    pub fn access_claims(&self, sub: &str, client_id: &str, scope: &str, now: u64) -> AccessClaims {
        AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.settings.audience.clone(),
            exp: now + self.settings.access_token_ttl,
            iat: now,
            nbf: now,
            jti: random_id(16),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            act: None,
            purpose: None,
            sid: None,
            cnf: None,
        }
    }

    /// Sign `claims` with the active key as an RFC 9068 access token.
    pub fn sign_access_token(&self, claims: &AccessClaims) -> String {
        // A struct of strings, integers and options of them always serialises.
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        self.keys.current().active.sign_compact(&payload)
    }

    /// Validate one of our access tokens: every check of RFC 9068 §4 plus revocation and the
    /// client's standing and, for an exchanged token, those of every token it came from. Time
    /// checks allow `clock_skew` and no more.
    pub async fn validate_access_token(
        &self,
        token: &str,
        now: u64,
    ) -> Result<AccessClaims, TokenRejection> {
        self.validate_with_lineage(token, now)
            .await
            .map(|(claims, _)| claims)
    }

    /// [`AuthServer::validate_access_token`], also returning an exchanged token's lineage (every
    /// ancestor found live); `None` for a first-hand token, which costs nothing more.
    pub(super) async fn validate_with_lineage(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(AccessClaims, Option<Lineage>), TokenRejection> {
        // The signature and the claims it covers are checked once per token string and key
        // ring (see [`super::verified`]); everything below that can change is checked every time.
        let ring = self.keys.current();
        let digest = TokenDigest::of(token);
        let (claims, cached) = match self.verified.get(&digest, &ring, now) {
            Some(claims) => (claims, true),
            None => (verify_signature(token, &ring)?, false),
        };
        self.check_claims(&claims, now)?;
        if self
            .tokens
            .is_access_token_revoked(&claims.jti)
            .await
            .map_err(TokenRejection::from)?
        {
            return Err(TokenRejection::Revoked);
        }
        let client = self
            .clients
            .client(&claims.client_id)
            .await
            .map_err(TokenRejection::from)?;
        if client.is_none_or(|c| c.disabled) {
            return Err(TokenRejection::ClientGone);
        }
        if let Some(family) = &claims.sid {
            if self.grant_revoked(family).await? {
                return Err(TokenRejection::GrantRevoked);
            }
        }
        // Only a token exchange (RFC 8693 §4.1) sets `act`; every other token stops here.
        let lineage = match claims.act {
            None => None,
            Some(_) => Some(self.live_lineage(&claims.jti).await?),
        };
        // Only a token found active is remembered: a dead one gains nothing from the cache.
        if !cached {
            let stale_at = claims.exp.saturating_add(self.settings.clock_skew);
            self.verified
                .insert(digest, &ring, claims.clone(), stale_at, now);
        }
        Ok((claims, lineage))
    }

    /// The checks of RFC 9068 §4 on the claims themselves: issuer, audience, expiry and
    /// not-before (with `clock_skew` and no more), and a bound on `act` nesting.
    fn check_claims(&self, claims: &AccessClaims, now: u64) -> Result<(), TokenRejection> {
        if claims.delegation_depth() > MAX_ACT_NESTING {
            return Err(TokenRejection::Claims);
        }
        let s = &self.settings;
        if claims.iss != s.issuer {
            return Err(TokenRejection::Issuer);
        }
        if claims.aud != s.audience {
            return Err(TokenRejection::Audience);
        }
        if now >= claims.exp.saturating_add(s.clock_skew) {
            return Err(TokenRejection::Expired);
        }
        if claims.nbf > now + s.clock_skew || claims.iat > now + s.clock_skew {
            return Err(TokenRejection::NotYetValid);
        }
        Ok(())
    }

    /// Whether the refresh-token family `family` was revoked. A family forgotten after it
    /// expired is not revoked: it outlives every access token minted from it.
    async fn grant_revoked(&self, family: &str) -> Result<bool, TokenRejection> {
        self.refresh_tokens
            .refresh_family_revoked(family)
            .await
            .map_err(TokenRejection::from)
    }

    /// The recorded lineage of the exchanged token `jti`, provided every ancestor is unrevoked
    /// and its client enabled. RFC 8693 leaves revocation of derived tokens to the server; an
    /// exchanged token stands on the tokens it was made from, so it lives only while they do.
    async fn live_lineage(&self, jti: &str) -> Result<Lineage, TokenRejection> {
        let storage = TokenRejection::from;
        // Fail closed: without the record (never written, or a token we did not issue) nothing
        // shows that the token descends only from live tokens. The record outlives the token
        // (it is purged after its exp and the skew), so a live token always has one.
        let lineage = self
            .tokens
            .lineage(jti)
            .await
            .map_err(storage)?
            .ok_or(TokenRejection::LineageUnknown)?;
        // The record is flat (ancestors of ancestors included) and bounded by the delegation
        // depth: at most a subject and an actor per level.
        for ancestor in &lineage.ancestors {
            if self
                .tokens
                .is_access_token_revoked(&ancestor.jti)
                .await
                .map_err(storage)?
            {
                return Err(TokenRejection::SourceRevoked);
            }
            if let Some(family) = &ancestor.sid {
                if self.grant_revoked(family).await? {
                    return Err(TokenRejection::SourceRevoked);
                }
            }
            let client = self
                .clients
                .client(&ancestor.client_id)
                .await
                .map_err(storage)?;
            if client.is_none_or(|c| c.disabled) {
                return Err(TokenRejection::SourceClientGone);
            }
        }
        Ok(lineage)
    }
}

/// The header checks of RFC 9068 §4 (`typ`, a `kid` of the ring) and the signature, then the
/// claims parsed: the part of validation that depends only on the token string and the ring.
fn verify_signature(token: &str, ring: &KeyRing) -> Result<AccessClaims, TokenRejection> {
    let jws = Unverified::parse(token)?;
    let typ_ok = jws.header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(TokenRejection::Type);
    }
    let key = jws
        .header
        .kid
        .as_deref()
        .and_then(|kid| ring.verifier(kid))
        .ok_or(TokenRejection::UnknownKey)?;
    let payload = jws.verify(KeyAlg::EdDSA, key.as_bytes())?;
    serde_json::from_slice(payload).map_err(|_| TokenRejection::Claims)
}

#[cfg(test)]
mod tests {
    //! The verified-token cache as validation uses it: a hit skips only the signature, never a
    //! check whose answer can change.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::config::{ConfigLayer, ServeSettings};
    use crate::datadir::{self, InitOptions};
    use crate::keys::KeyFile;
    use crate::oauth::registration::{client_from_metadata, ClientMetadata};

    /// A server core over a fresh embedded store, with a client `device-1`.
    async fn server() -> (AuthServer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        datadir::init(&InitOptions {
            data_dir: data_dir.clone(),
            issuer: "https://localhost:8443".into(),
            hosts: vec!["localhost".into()],
            database: None,
        })
        .await
        .unwrap();
        let settings = ServeSettings::resolve(&data_dir, None, ConfigLayer::default()).unwrap();
        let oauth = crate::serve::build(&settings).await.unwrap().oauth;
        let (mut client, _) =
            client_from_metadata(ClientMetadata::default(), crate::unix_now()).unwrap();
        client.client_id = "device-1".into();
        assert!(oauth.clients.insert_new_client(&client).await.unwrap());
        (oauth, dir)
    }

    /// A token for `device-1`, validated (so cached) three times at `now`.
    async fn cached_token(oauth: &AuthServer, now: u64) -> (String, AccessClaims) {
        let (token, claims) = oauth.mint_access_token("device-1", "device-1", "s", now);
        for _ in 0..3 {
            assert_eq!(
                oauth.validate_access_token(&token, now).await,
                Ok(claims.clone())
            );
        }
        let digest = TokenDigest::of(&token);
        assert!(oauth
            .verified
            .get(&digest, &oauth.keys.current(), now)
            .is_some());
        (token, claims)
    }

    #[tokio::test]
    async fn a_cached_token_revoked_is_inactive_at_the_next_validation() {
        let (oauth, _dir) = server().await;
        let now = crate::unix_now();
        let (token, claims) = cached_token(&oauth, now).await;
        oauth
            .tokens
            .revoke_access_token(&claims.jti, claims.exp + 60)
            .await
            .unwrap();
        assert_eq!(
            oauth.validate_access_token(&token, now).await,
            Err(TokenRejection::Revoked)
        );
    }

    #[tokio::test]
    async fn a_cached_token_of_a_disabled_or_deleted_client_is_inactive() {
        let (oauth, _dir) = server().await;
        let now = crate::unix_now();
        let (token, _) = cached_token(&oauth, now).await;
        let mut disable = |c: &mut crate::store::Client| {
            c.disabled = true;
            true
        };
        oauth
            .clients
            .update_client("device-1", &mut disable)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            oauth.validate_access_token(&token, now).await,
            Err(TokenRejection::ClientGone)
        );
        // A token of a client that was never registered (or is gone) fares the same.
        let (ghost, _) = oauth.mint_access_token("ghost", "ghost", "s", now);
        assert_eq!(
            oauth.validate_access_token(&ghost, now).await,
            Err(TokenRejection::ClientGone)
        );
    }

    #[tokio::test]
    async fn a_cached_token_expires_on_time() {
        let (oauth, _dir) = server().await;
        let now = crate::unix_now();
        let (token, claims) = cached_token(&oauth, now).await;
        let skew = oauth.settings.clock_skew;
        let last = claims.exp + skew - 1;
        assert!(oauth.validate_access_token(&token, last).await.is_ok());
        assert_eq!(
            oauth.validate_access_token(&token, last + 1).await,
            Err(TokenRejection::Expired)
        );
        // Met past its time, the entry is dropped.
        let digest = TokenDigest::of(&token);
        assert!(oauth
            .verified
            .get(&digest, &oauth.keys.current(), last + 1)
            .is_none());
    }

    #[tokio::test]
    async fn a_cached_token_does_not_outlive_its_key() {
        let (oauth, _dir) = server().await;
        let now = crate::unix_now();
        let (token, _) = cached_token(&oauth, now).await;
        // The token's key retired: the ring in force holds only a newer key.
        let mut file = KeyFile::default();
        file.add_new(now, now);
        oauth.keys.replace(KeyRing::build(&file, now).unwrap());
        assert_eq!(
            oauth.validate_access_token(&token, now).await,
            Err(TokenRejection::UnknownKey)
        );
    }

    #[tokio::test]
    async fn a_rotation_that_keeps_the_key_verifies_the_token_again() {
        let (oauth, dir) = server().await;
        let now = crate::unix_now();
        let (token, claims) = cached_token(&oauth, now).await;
        // A new key published ahead, the token's key still in the ring: a new ring object,
        // under which the token is verified once more and cached again.
        let mut file = KeyFile::load(&dir.path().join("data")).unwrap();
        file.add_new(now, now + 600);
        oauth.keys.replace(KeyRing::build(&file, now).unwrap());
        let ring = oauth.keys.current();
        let digest = TokenDigest::of(&token);
        assert!(oauth.verified.get(&digest, &ring, now).is_none());
        assert_eq!(oauth.validate_access_token(&token, now).await, Ok(claims));
        assert!(oauth.verified.get(&digest, &ring, now).is_some());
    }
}

//! Client registration through the admin API, with RFC 7591 client metadata (§2) in and the
//! client information response (§3.2.1) out; and the bearer check that guards the admin API
//! (RFC 6750).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::{Deserialize, Serialize};

use super::access_token::{AccessClaims, TokenRejection};
use super::dpop::{DpopError, ProofRequest};
use super::{grant, scope, AuthServer, OAuthError, RequestCtx};
use crate::secret::{random_id, Secret};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::{AuthMethod, Client, ClientKey, KeyAlg};

/// Every scope of the admin API; the client `init` creates holds them all.
pub const ADMIN_SCOPES: [&str; 5] = [
    "clients:admin",
    "devices:provision",
    "devices:admin",
    "audit:read",
    "users:admin",
];

/// Grant types a client may register for.
const REGISTRABLE_GRANTS: [&str; 4] = [
    grant::CLIENT_CREDENTIALS,
    grant::DEVICE_CODE,
    grant::REFRESH_TOKEN,
    grant::TOKEN_EXCHANGE,
];

/// Most keys one client may register.
const MAX_CLIENT_KEYS: usize = 8;

/// RFC 7591 §2 client metadata we understand; the rest is ignored as §2 requires.
#[derive(Debug, Default, Deserialize)]
pub struct ClientMetadata {
    /// Name shown to people.
    pub client_name: Option<String>,
    /// Grant types; default `["client_credentials"]`.
    pub grant_types: Option<Vec<String>>,
    /// Space-delimited scopes the client may be granted.
    pub scope: Option<String>,
    /// Authentication method; default `client_secret_basic` (RFC 7591 §2).
    pub token_endpoint_auth_method: Option<String>,
    /// Public keys for `private_key_jwt`, by value.
    pub jwks: Option<serde_json::Value>,
    /// Keys by reference: not supported (a device key is registered by value).
    pub jwks_uri: Option<String>,
    /// RFC 9449 §5.2: the client always uses DPoP; token requests without a proof are
    /// refused. Default false.
    pub dpop_bound_access_tokens: Option<bool>,
}

/// RFC 7591 §3.2.1 client information response. The secret appears here once.
#[derive(Debug, Serialize)]
pub struct ClientInformation {
    /// The new client's id.
    pub client_id: String,
    /// The secret, for the secret methods; never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// When the id was issued.
    pub client_id_issued_at: u64,
    /// 0: the secret does not expire (sent whenever a secret is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<u64>,
    /// Echo of the registered name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// Registered grant types.
    pub grant_types: Vec<String>,
    /// Registered scope.
    pub scope: String,
    /// Registered method.
    pub token_endpoint_auth_method: &'static str,
    /// Registered keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// RFC 9449 §5.2, echoed.
    pub dpop_bound_access_tokens: bool,
}

/// Why a bearer token was refused at the admin API (RFC 6750 §3.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BearerError {
    /// No bearer token at all.
    #[error("a bearer token is required")]
    Missing,
    /// The `Authorization` header cannot be read as one credential.
    #[error("invalid_request: {0}")]
    Malformed(&'static str),
    /// The token is not active.
    #[error("invalid_token: {0}")]
    InvalidToken(TokenRejection),
    /// A DPoP proof was required and missing, or failed a check (RFC 9449 §7.1).
    #[error("invalid DPoP proof: {0}")]
    Dpop(super::dpop::DpopError),
    /// Active, but without the scope this route needs.
    #[error("insufficient_scope: {0} required")]
    InsufficientScope(&'static str),
    /// Storage failed.
    #[error("server error: {0}")]
    Internal(String),
    /// Storage is out of reach for now: 503 `temporarily_unavailable` with `Retry-After`.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl AuthServer {
    /// Check `Authorization: Bearer` (RFC 6750), or `Authorization: DPoP` with the request's
    /// proof (RFC 9449 §7), for an active token holding `required` scope. A DPoP-bound token
    /// is accepted only the second way, with a proof by its key that covers it (`ath`).
    pub async fn authorize_bearer(
        &self,
        authorization: Option<&str>,
        dpop: &ProofRequest,
        required: &'static str,
        now: u64,
    ) -> Result<AccessClaims, BearerError> {
        let (scheme, token) = authorization
            .and_then(|h| h.trim().split_once(' '))
            .map(|(scheme, t)| (scheme, t.trim()))
            .filter(|(scheme, _)| {
                scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop")
            })
            .ok_or(BearerError::Missing)?;
        let by_dpop = scheme.eq_ignore_ascii_case("dpop");
        let claims = self
            .validate_access_token(token, now)
            .await
            .map_err(|e| match e {
                TokenRejection::Storage(s) => BearerError::Internal(s),
                TokenRejection::Unavailable(s) => BearerError::Unavailable(s),
                other => BearerError::InvalidToken(other),
            })?;
        match (&claims.cnf, by_dpop) {
            (None, false) => {}
            // §7.2: a bound token presented as a bearer token is refused: whoever holds it
            // without the key must not get in by dropping the proof.
            (Some(_), false) => {
                return Err(BearerError::InvalidToken(TokenRejection::DpopBound));
            }
            // §7.1: an unbound token sent under the DPoP scheme proves nothing about the key.
            (None, true) => return Err(BearerError::Dpop(DpopError::KeyMismatch)),
            (Some(cnf), true) => {
                let proof = self
                    .check_dpop_proof(dpop, Some(token), now)
                    .await
                    .map_err(|e| match e {
                        DpopError::Storage(s) => BearerError::Internal(s),
                        DpopError::Unavailable(s) => BearerError::Unavailable(s),
                        other => BearerError::Dpop(other),
                    })?
                    .ok_or(BearerError::Dpop(DpopError::Missing))?;
                if proof.jkt != cnf.jkt {
                    return Err(BearerError::Dpop(DpopError::KeyMismatch));
                }
                // The proof's jti must be on disk before the request acts, or a crash could let
                // a replay in.
                self.commit_for(&RequestCtx::at(now))
                    .await
                    .map_err(|e| BearerError::Unavailable(e.to_string()))?;
            }
        }
        if !claims.has_scope(required) {
            return Err(BearerError::InsufficientScope(required));
        }
        Ok(claims)
    }

    /// Register a client from RFC 7591 metadata; durable before it returns.
    pub async fn register_client(
        &self,
        meta: ClientMetadata,
        actor: &str,
        ctx: &RequestCtx,
    ) -> Result<ClientInformation, OAuthError> {
        let (client, secret) = client_from_metadata(meta, ctx.now)?;
        if !self
            .clients
            .insert_new_client(&client)
            .await
            .map_err(OAuthError::from)?
        {
            // 128 random bits collided: retrying would hide a broken RNG.
            return Err(OAuthError::Internal("client_id collision".into()));
        }
        let event = AuditEvent::new("client.registered", Outcome::Success)
            .actor(actor)
            .subject(&client.client_id)
            .client(&client.client_id)
            .reason(format!(
                "auth={} scope={}",
                client.auth_method.as_str(),
                client.scopes.join(" ")
            ));
        self.record(ctx, event).await?;
        Ok(information(&client, secret))
    }
}

/// Validate metadata into a client record and, for the secret methods, its one-time secret.
pub fn client_from_metadata(
    meta: ClientMetadata,
    now: u64,
) -> Result<(Client, Option<Secret>), OAuthError> {
    let bad = |m: &'static str| OAuthError::InvalidClientMetadata(m.into());
    if meta.jwks_uri.is_some() {
        return Err(bad(
            "jwks_uri is not supported; register keys by value in jwks",
        ));
    }
    let auth_method = match meta.token_endpoint_auth_method.as_deref() {
        None | Some("client_secret_basic") => AuthMethod::ClientSecretBasic,
        Some("client_secret_post") => AuthMethod::ClientSecretPost,
        Some("private_key_jwt") => AuthMethod::PrivateKeyJwt,
        Some("none") => AuthMethod::None,
        Some(_) => return Err(bad("unsupported token_endpoint_auth_method")),
    };
    let grant_types = meta
        .grant_types
        .unwrap_or_else(|| vec![grant::CLIENT_CREDENTIALS.to_owned()]);
    if grant_types.is_empty() {
        return Err(bad("grant_types is empty"));
    }
    if let Some(g) = grant_types
        .iter()
        .find(|g| !REGISTRABLE_GRANTS.contains(&g.as_str()))
    {
        return Err(OAuthError::InvalidClientMetadata(
            format!("unsupported grant type: {g}").into(),
        ));
    }
    if auth_method == AuthMethod::None && grant_types.iter().any(|g| g == grant::CLIENT_CREDENTIALS)
    {
        // RFC 6749 §4.4: the client credentials grant is for confidential clients only.
        return Err(bad("a public client cannot use client_credentials"));
    }
    if auth_method == AuthMethod::None && grant_types.iter().any(|g| g == grant::TOKEN_EXCHANGE) {
        // RFC 8693 §2.1 / §5: the exchanging party acts for others; it must authenticate.
        return Err(bad("a public client cannot use token exchange"));
    }
    let scopes = match meta.scope.as_deref() {
        None => Vec::new(),
        Some(s) => scope::parse(s).map_err(|_| bad("malformed scope"))?,
    };
    let keys = match (&meta.jwks, auth_method) {
        (Some(jwks), AuthMethod::PrivateKeyJwt) => parse_jwks(jwks)?,
        (None, AuthMethod::PrivateKeyJwt) => return Err(bad("private_key_jwt needs jwks")),
        (Some(_), _) => return Err(bad("jwks is only for private_key_jwt")),
        (None, _) => Vec::new(),
    };
    if meta
        .client_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 200)
    {
        return Err(bad("client_name is longer than 200 characters"));
    }
    let secret = matches!(
        auth_method,
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
    )
    .then(Secret::generate);
    let client = Client {
        client_id: random_id(16),
        client_name: meta.client_name,
        auth_method,
        secret_hash: secret.as_ref().map(Secret::hash),
        keys,
        grant_types,
        scopes,
        created_at: now,
        disabled: false,
        pending_key: None,
        key_challenge: None,
        dpop_bound_access_tokens: meta.dpop_bound_access_tokens.unwrap_or(false),
    };
    Ok((client, secret))
}

/// The §3.2.1 response for a just-registered client.
pub fn information(client: &Client, secret: Option<Secret>) -> ClientInformation {
    ClientInformation {
        client_id: client.client_id.clone(),
        client_secret_expires_at: secret.as_ref().map(|_| 0),
        client_secret: secret.map(|s| s.expose().to_owned()),
        client_id_issued_at: client.created_at,
        client_name: client.client_name.clone(),
        grant_types: client.grant_types.clone(),
        scope: client.scopes.join(" "),
        token_endpoint_auth_method: client.auth_method.as_str(),
        dpop_bound_access_tokens: client.dpop_bound_access_tokens,
        jwks: (!client.keys.is_empty())
            .then(|| serde_json::json!({ "keys": client.keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })),
    }
}

/// Parse a JWK Set of public signing keys: EC P-256 (ES256) or OKP Ed25519 (EdDSA).
pub fn parse_jwks(jwks: &serde_json::Value) -> Result<Vec<ClientKey>, OAuthError> {
    let keys = jwks.get("keys").and_then(|k| k.as_array()).ok_or_else(|| {
        OAuthError::InvalidClientMetadata("jwks must be {\"keys\": [...]}".into())
    })?;
    if keys.is_empty() || keys.len() > MAX_CLIENT_KEYS {
        return Err(OAuthError::InvalidClientMetadata(
            "jwks must hold 1 to 8 keys".into(),
        ));
    }
    keys.iter().map(parse_jwk).collect()
}

/// Whether `public` cannot serve as an Ed25519 verification key: not a curve point, or a
/// point of small order, under which signatures can be forged without any private key.
pub fn weak_ed25519(public: &[u8]) -> bool {
    <[u8; 32]>::try_from(public)
        .ok()
        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
        .is_none_or(|k| k.is_weak())
}

/// Parse one public JWK (RFC 7517, RFC 7518 §6.2, RFC 8037 §2).
pub fn parse_jwk(jwk: &serde_json::Value) -> Result<ClientKey, OAuthError> {
    let bad = |m: &'static str| OAuthError::InvalidClientMetadata(m.into());
    let field = |name: &str| jwk.get(name).and_then(|v| v.as_str());
    // A private member means the key left wherever it should have stayed; refuse to store it.
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|m| jwk.get(m).is_some())
    {
        return Err(bad("jwks must hold public keys only"));
    }
    if field("use").is_some_and(|u| u != "sig") {
        return Err(bad("jwk use must be sig"));
    }
    let coord = |name: &str| -> Result<Vec<u8>, OAuthError> {
        field(name)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                OAuthError::InvalidClientMetadata(
                    format!("jwk {name} must be 32 bytes, base64url").into(),
                )
            })
    };
    let (alg, public, clean) = match (field("kty"), field("crv")) {
        (Some("EC"), Some("P-256")) => {
            let (x, y) = (coord("x")?, coord("y")?);
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let clean =
                serde_json::json!({"kty": "EC", "crv": "P-256", "x": field("x"), "y": field("y")});
            (KeyAlg::ES256, point, clean)
        }
        (Some("OKP"), Some("Ed25519")) => {
            let x = coord("x")?;
            // A small-order point (all zeros, the identity, …) verifies forged signatures for
            // many messages (RFC 8032 §5.1.7 leaves the check to the application); found by
            // the jws_parse fuzz target.
            if weak_ed25519(&x) {
                return Err(bad(
                    "jwk x is not a usable Ed25519 key (not a point, or of small order)",
                ));
            }
            let clean = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": field("x")});
            (KeyAlg::EdDSA, x, clean)
        }
        _ => return Err(bad("keys must be EC P-256 or OKP Ed25519")),
    };
    if field("alg").is_some_and(|a| a != alg.as_str()) {
        return Err(bad("jwk alg does not match its key type"));
    }
    let kid = field("kid").map(str::to_owned);
    let mut stored = clean;
    if let Some(k) = &kid {
        stored["kid"] = k.clone().into();
    }
    stored["alg"] = alg.as_str().into();
    Ok(ClientKey {
        kid,
        alg,
        public,
        jwk: stored,
        attested: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_order_and_off_curve_ed25519_keys_are_weak_and_real_ones_are_not() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // All zeros (order 4), the identity (order 1), and y = 2, which is on no curve point.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        for weak in [[0u8; 32], identity, off_curve] {
            assert!(weak_ed25519(&weak), "{weak:?}");
            let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(weak)});
            assert!(parse_jwk(&jwk).is_err());
        }
        assert!(weak_ed25519(&[0u8; 31]));
        let real = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        assert!(!weak_ed25519(real.as_bytes()));
    }

    fn meta(json: serde_json::Value) -> ClientMetadata {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_to_a_basic_client_credentials_client() {
        let (c, s) = client_from_metadata(meta(serde_json::json!({"scope": "a b"})), 5).unwrap();
        assert_eq!(c.auth_method, AuthMethod::ClientSecretBasic);
        assert!(c.allows_grant("client_credentials"));
        assert_eq!(c.scopes, vec!["a", "b"]);
        assert!(c.secret_hash.unwrap().matches(s.unwrap().expose()));
    }

    #[test]
    fn refuses_bad_metadata() {
        for bad in [
            serde_json::json!({"token_endpoint_auth_method": "none"}),
            serde_json::json!({"token_endpoint_auth_method": "client_secret_jwt"}),
            serde_json::json!({"grant_types": ["implicit"]}),
            serde_json::json!({"token_endpoint_auth_method": "private_key_jwt"}),
            serde_json::json!({"jwks_uri": "https://example.com/jwks"}),
            serde_json::json!({"scope": "a  b"}),
            serde_json::json!({"token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "d": "x"}]}}),
            serde_json::json!({"token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}}),
            serde_json::json!({"token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "alg": "ES256"}]}}),
        ] {
            assert!(
                matches!(
                    client_from_metadata(meta(bad.clone()), 0),
                    Err(OAuthError::InvalidClientMetadata(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_ec_and_okp_keys() {
        let ec = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode([2u8; 32]), "y": URL_SAFE_NO_PAD.encode([3u8; 32])});
        let k = parse_jwk(&ec).unwrap();
        assert_eq!(
            (k.alg, k.public.len(), k.kid.as_deref()),
            (KeyAlg::ES256, 65, Some("k1"))
        );
        let real = ed25519_dalek::SigningKey::from_bytes(&[2u8; 32]).verifying_key();
        let okp = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(real.as_bytes())});
        assert_eq!(parse_jwk(&okp).unwrap().alg, KeyAlg::EdDSA);
    }
}

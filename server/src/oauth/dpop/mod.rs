//! DPoP (RFC 9449): checking the proof a client sends in the `DPoP` header, at the token
//! endpoint (§5), at the device authorization endpoint (§10) and wherever this server accepts
//! an access token as a resource (§7); the `cnf.jkt` binding (§6) and server nonces (§8).
//!
//! The proof's key is fixed by its embedded `jwk`, never by its `alg` header: the two must name
//! the same algorithm. Keys are parsed by [`super::registration::parse_jwk`] (the same code that
//! parses registered client keys, small-order Ed25519 points refused) and signatures checked by
//! ring through [`super::jws`].

mod nonce;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::jws::{b64, JwsError, Unverified};
use super::{AuthServer, OAuthError};
use crate::store::KeyAlg;

pub use self::nonce::NONCE_PERIOD;

/// `dpop_signing_alg_values_supported` (RFC 9449 §5.1).
pub const DPOP_SIGNING_ALGS: [&str; 2] = ["ES256", "EdDSA"];
/// The `typ` of a proof (RFC 9449 §4.2).
pub const PROOF_TYP: &str = "dpop+jwt";
/// Default: how old (by `iat`) a proof may be, seconds, on top of the clock skew.
pub const DEFAULT_PROOF_MAX_AGE: u64 = 60;
/// Longest `jti` we store (§4.2: a client draws 96 bits or more; this is ample).
const MAX_JTI_LEN: usize = 256;
/// The namespace of proof `jti`s in the store of one-time values that client assertions use.
/// Client ids are base64url, so `#` never starts one: a proof can never spend an assertion's
/// `jti` or the reverse.
const JTI_NAMESPACE: &str = "#dpop:";

/// DPoP settings, validated at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpopSettings {
    /// Whether every proof must carry a nonce this server issued (§8). Default off.
    pub require_nonce: bool,
    /// How far in the past a proof's `iat` may lie, seconds (plus the clock skew); the
    /// window in which its `jti` is remembered (§11.1).
    pub proof_max_age: u64,
}

impl Default for DpopSettings {
    fn default() -> Self {
        DpopSettings {
            require_nonce: false,
            proof_max_age: DEFAULT_PROOF_MAX_AGE,
        }
    }
}

/// What a request brings for DPoP, read by the HTTP adapter: the `DPoP` header(s) and the
/// method and absolute URL the proof must name.
#[derive(Debug, Clone)]
pub struct ProofRequest {
    /// The header's value; `None` without one.
    pub proof: Option<String>,
    /// More than one `DPoP` header was sent (§4.3 check 1).
    pub repeated: bool,
    /// The request's method.
    pub method: String,
    /// The URL of the resource as this server publishes it: the issuer and the request's path.
    pub url: String,
}

impl ProofRequest {
    /// A request that carried no proof.
    pub fn none(method: &str, url: String) -> Self {
        ProofRequest {
            proof: None,
            repeated: false,
            method: method.to_owned(),
            url,
        }
    }
}

/// The `cnf` claim of a bound access token (RFC 9449 §6.1; RFC 7800).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The RFC 7638 SHA-256 thumbprint of the proof key, base64url.
    pub jkt: String,
}

/// A proof that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Its key's RFC 7638 thumbprint.
    pub jkt: String,
}

/// Why a proof was refused. The words are fixed (never the proof's content) and are what the
/// client reads in `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopError {
    /// No proof where one is required (a bound refresh token or device code, a client
    /// registered with `dpop_bound_access_tokens`, a bound access token at a resource).
    #[error("a DPoP proof is required")]
    Missing,
    /// More than one `DPoP` header.
    #[error("more than one DPoP header")]
    Repeated,
    /// Not a compact JWS, or its claims are not what a proof holds.
    #[error("malformed DPoP proof: {0}")]
    Malformed(&'static str),
    /// `typ` is not `dpop+jwt`.
    #[error("DPoP proof typ is not dpop+jwt")]
    Type,
    /// `alg` is not ES256 or EdDSA, or not the algorithm of the embedded key.
    #[error("DPoP proof alg is not ES256 or EdDSA matching its jwk")]
    Algorithm,
    /// The embedded `jwk` holds private key members (§4.3 check 5).
    #[error("DPoP proof jwk holds a private key")]
    PrivateKey,
    /// The embedded `jwk` is not a usable EC P-256 or Ed25519 public key.
    #[error("DPoP proof jwk is not a usable public key")]
    Jwk,
    /// The signature does not verify under the embedded key.
    #[error("DPoP proof signature does not verify")]
    Signature,
    /// `htm` is not the request's method.
    #[error("DPoP proof htm does not match the request method")]
    Method,
    /// `htu` is not the request's URL.
    #[error("DPoP proof htu does not match the request URL")]
    Url,
    /// `iat` lies too far in the past.
    #[error("DPoP proof is too old")]
    Stale,
    /// `iat` lies in the future beyond the allowed skew.
    #[error("DPoP proof iat is in the future")]
    Future,
    /// This key already used this `jti` within the window (§11.1).
    #[error("DPoP proof jti was already used")]
    Replayed,
    /// The proof comes with an access token but has no `ath` (§4.3 check 11).
    #[error("DPoP proof has no ath")]
    AthMissing,
    /// `ath` is not the hash of the access token presented.
    #[error("DPoP proof ath does not match the access token")]
    AthMismatch,
    /// The proof's key is not the one the token or code is bound to.
    #[error("DPoP proof key is not the key the grant is bound to")]
    KeyMismatch,
    /// No nonce, or one this server no longer accepts (§8): the client retries with the fresh
    /// one it is sent.
    #[error("a fresh DPoP nonce is required")]
    UseNonce {
        /// The nonce to use.
        nonce: String,
    },
    /// Storage failed (our fault).
    #[error("storage: {0}")]
    Storage(String),
    /// Storage is out of reach for now.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<DpopError> for OAuthError {
    /// RFC 9449 §7 at the token endpoint: `invalid_dpop_proof` or `use_dpop_nonce` (400).
    fn from(e: DpopError) -> Self {
        match e {
            DpopError::UseNonce { nonce } => OAuthError::UseDpopNonce { nonce },
            DpopError::Storage(s) => OAuthError::Internal(s),
            DpopError::Unavailable(s) => OAuthError::TemporarilyUnavailable(s),
            other => OAuthError::InvalidDpopProof(other.to_string().into()),
        }
    }
}

impl From<crate::store::StoreError> for DpopError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_outage() {
            DpopError::Unavailable(e.describe())
        } else {
            DpopError::Storage(e.describe())
        }
    }
}

/// The claims of a proof (RFC 9449 §4.2).
#[derive(Deserialize)]
struct ProofClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<f64>,
    ath: Option<String>,
    nonce: Option<String>,
}

/// `ath` for `access_token`: base64url SHA-256 of its ASCII (RFC 9449 §4.2).
pub fn access_token_hash(access_token: &str) -> String {
    b64(&Sha256::digest(access_token.as_bytes()))
}

/// RFC 7638 thumbprint of a public key as [`super::registration::parse_jwk`] holds it: SHA-256
/// of the required members in lexicographic order, base64url. The coordinates are re-encoded
/// from the bytes, so a proof cannot pick a spelling.
pub fn thumbprint(alg: KeyAlg, public: &[u8]) -> Option<String> {
    let canonical = match alg {
        KeyAlg::ES256 => {
            // SEC1 uncompressed: 0x04 || x || y.
            let (x, y) = public.get(1..33).zip(public.get(33..65))?;
            format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                b64(x),
                b64(y)
            )
        }
        KeyAlg::EdDSA => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(public)),
    };
    Some(b64(&Sha256::digest(canonical.as_bytes())))
}

/// §4.3 check 9 with §6.2 of RFC 3986 applied: the URL without query and fragment, scheme and
/// host lowercased, a default port dropped, dot segments resolved — as the `url` crate
/// normalises. `None` if it is not an absolute http(s) URL.
pub fn normalise_htu(htu: &str) -> Option<String> {
    let mut url = url::Url::parse(htu).ok()?;
    if !matches!(url.scheme(), "https" | "http") || url.cannot_be_a_base() {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    Some(url.into())
}

impl AuthServer {
    /// The nonce this server hands out now (§8), whether or not it requires one.
    pub fn dpop_nonce(&self, now: u64) -> String {
        nonce::issue(&self.keys.current().active, now)
    }

    /// Check the proof of `request` (RFC 9449 §4.3), if it carries one: `Ok(None)` without a
    /// proof. `access_token` is the token presented with it at a resource, whose hash the proof
    /// must carry as `ath`. The proof's `jti` is recorded (durable at the caller's next commit).
    pub async fn check_dpop_proof(
        &self,
        request: &ProofRequest,
        access_token: Option<&str>,
        now: u64,
    ) -> Result<Option<Proof>, DpopError> {
        if request.repeated {
            return Err(DpopError::Repeated);
        }
        let Some(proof) = request.proof.as_deref() else {
            return Ok(None);
        };
        let (checked, jti, iat) =
            self.check_proof_statelessly(request, proof, access_token, now)?;
        // §11.1: a jti is accepted once while its proof could be accepted at all; shared by
        // every replica through the store that holds client assertions' jtis.
        let s = &self.settings;
        let keep_until = iat
            .saturating_add(s.dpop.proof_max_age)
            .saturating_add(2 * s.clock_skew)
            .saturating_add(1);
        let first = self
            .tokens
            .record_assertion_jti(&format!("{JTI_NAMESPACE}{}", checked.jkt), &jti, keep_until)
            .await?;
        if !first {
            return Err(DpopError::Replayed);
        }
        Ok(Some(checked))
    }

    /// Every check but the `jti`'s single use: the proof, its `jti`, and its `iat`.
    fn check_proof_statelessly(
        &self,
        request: &ProofRequest,
        proof: &str,
        access_token: Option<&str>,
        now: u64,
    ) -> Result<(Proof, String, u64), DpopError> {
        let jws = Unverified::parse(proof).map_err(|e| match e {
            JwsError::Critical => DpopError::Malformed("unsupported critical header"),
            _ => DpopError::Malformed("not a compact JWS"),
        })?;
        // §4.3 checks 4-7: typ, an asymmetric alg we support, the public key, the signature.
        if jws.header.typ.as_deref() != Some(PROOF_TYP) {
            return Err(DpopError::Type);
        }
        if !DPOP_SIGNING_ALGS.contains(&jws.header.alg.as_str()) {
            return Err(DpopError::Algorithm);
        }
        let jwk = jws
            .header
            .jwk
            .as_ref()
            .filter(|j| j.is_object())
            .ok_or(DpopError::Malformed("no jwk in the header"))?;
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|m| jwk.get(m).is_some())
        {
            return Err(DpopError::PrivateKey);
        }
        let key = super::registration::parse_jwk(jwk).map_err(|_| DpopError::Jwk)?;
        if jws.header.alg != key.alg.as_str() {
            return Err(DpopError::Algorithm);
        }
        let payload = jws.verify(key.alg, &key.public).map_err(|e| match e {
            JwsError::Algorithm { .. } => DpopError::Algorithm,
            _ => DpopError::Signature,
        })?;
        let claims: ProofClaims = serde_json::from_slice(payload)
            .map_err(|_| DpopError::Malformed("claims are not a JSON object"))?;
        // §4.3 checks 8-9: the method and the URL, query and fragment ignored.
        if claims.htm.as_deref() != Some(request.method.as_str()) {
            return Err(DpopError::Method);
        }
        let htu = claims
            .htu
            .as_deref()
            .and_then(normalise_htu)
            .ok_or(DpopError::Url)?;
        if Some(htu) != normalise_htu(&request.url) {
            return Err(DpopError::Url);
        }
        // §4.3 check 11: iat within a window, with the skew every time check allows.
        let s = &self.settings;
        let iat = claims
            .iat
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or(DpopError::Malformed("no numeric iat"))?;
        let (now_f, skew) = (now as f64, s.clock_skew as f64);
        if iat > now_f + skew {
            return Err(DpopError::Future);
        }
        if iat + (s.dpop.proof_max_age as f64) + skew < now_f {
            return Err(DpopError::Stale);
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
            .ok_or(DpopError::Malformed("no usable jti"))?;
        // §4.3 check 10: a nonce of ours, when we require one.
        if s.dpop.require_nonce {
            let ring = self.keys.current();
            let fresh = claims
                .nonce
                .as_deref()
                .is_some_and(|n| nonce::accepts(&ring.active, n, now));
            if !fresh {
                return Err(DpopError::UseNonce {
                    nonce: nonce::issue(&ring.active, now),
                });
            }
        }
        // §4.3 check 12 (§7): with an access token, the proof covers it.
        if let Some(token) = access_token {
            let ath = claims.ath.as_deref().ok_or(DpopError::AthMissing)?;
            let expected = access_token_hash(token);
            if !bool::from(ath.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(DpopError::AthMismatch);
            }
        }
        let jkt = thumbprint(key.alg, &key.public).ok_or(DpopError::Jwk)?;
        Ok((Proof { jkt }, jti, iat as u64))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn thumbprint_matches_rfc_7638_example_shape() {
        // RFC 8037 Appendix A.3: the thumbprint of the Ed25519 example key.
        let x = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        )
        .unwrap();
        assert_eq!(
            thumbprint(KeyAlg::EdDSA, &x).unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert!(thumbprint(KeyAlg::ES256, &[4u8; 10]).is_none());
    }

    #[test]
    fn htu_ignores_query_fragment_case_and_default_port() {
        assert_eq!(
            normalise_htu("HTTPS://AS.Example.com:443/oauth2/token?x=1#f").unwrap(),
            "https://as.example.com/oauth2/token"
        );
        assert_ne!(
            normalise_htu("https://as.example.com/oauth2/token/").unwrap(),
            normalise_htu("https://as.example.com/oauth2/token").unwrap()
        );
        for bad in ["/oauth2/token", "ftp://x/y", "not a url", "mailto:a@b"] {
            assert!(normalise_htu(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ath_is_base64url_sha256() {
        // RFC 9449 §7.1's example access token and its ath.
        assert_eq!(
            access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn errors_map_to_rfc_9449_codes() {
        let e = OAuthError::from(DpopError::Stale);
        assert_eq!((e.status(), e.code()), (400, "invalid_dpop_proof"));
        let e = OAuthError::from(DpopError::UseNonce { nonce: "n".into() });
        assert_eq!((e.status(), e.code()), (400, "use_dpop_nonce"));
    }
}

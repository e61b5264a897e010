//! DPoP proofs (RFC 9449 §4) signed ES256 by the device key inside the TPM. The agent uses the
//! same TPM key that signs its `private_key_jwt` assertions: it is already non-exportable,
//! attested to live in this TPM, and rotated by the agent; a token bound to it is bound to the
//! device, and a rotation or rekey moves new tokens to the new key with nothing else to manage.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::assertion::{compact_jws, random_token};
use crate::tpm::TpmError;

/// The `token_type` of a DPoP-bound token (RFC 9449 §5).
pub const TOKEN_TYPE: &str = "DPoP";
/// The error code asking for a server nonce (RFC 9449 §8).
pub const USE_DPOP_NONCE: &str = "use_dpop_nonce";

/// What a proof covers.
#[derive(Debug, Clone, Copy)]
pub struct ProofFor<'a> {
    /// `htm`: the request's method.
    pub method: &'a str,
    /// `htu`: the request's URL (query and fragment dropped, §4.2).
    pub url: &'a str,
    /// The access token sent with the request, whose hash becomes `ath` (§4.2).
    pub access_token: Option<&'a str>,
    /// The server's nonce, if it gave one (§8).
    pub nonce: Option<&'a str>,
}

/// A signed proof: header `{typ: dpop+jwt, alg: ES256, jwk}` with the public members of `jwk`
/// only, claims `jti htm htu iat` (+ `ath`, `nonce`). `now` is the server's time as the agent
/// knows it. `sign` receives the signing input and returns r || s.
pub fn build(
    jwk: &serde_json::Value,
    what: ProofFor<'_>,
    now: u64,
    sign: impl FnOnce(&[u8]) -> Result<[u8; 64], TpmError>,
) -> Result<String, TpmError> {
    let public = serde_json::json!({
        "kty": jwk.get("kty"),
        "crv": jwk.get("crv"),
        "x": jwk.get("x"),
        "y": jwk.get("y"),
    });
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public});
    let mut claims = serde_json::json!({
        "jti": random_token(16)?,
        "htm": what.method,
        "htu": strip_query(what.url),
        "iat": now,
    });
    if let Some(token) = what.access_token {
        claims["ath"] = access_token_hash(token).into();
    }
    if let Some(nonce) = what.nonce {
        claims["nonce"] = nonce.into();
    }
    compact_jws(&header, &claims, sign)
}

/// `ath`: base64url SHA-256 of the access token (RFC 9449 §4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// The RFC 7638 thumbprint of an EC P-256 JWK: what a bound token's `cnf.jkt` holds.
pub fn thumbprint(jwk: &serde_json::Value) -> Option<String> {
    let member = |m: &str| jwk.get(m).and_then(|v| v.as_str());
    let canonical = format!(
        r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
        member("crv")?,
        member("kty")?,
        member("x")?,
        member("y")?
    );
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// §4.2: `htu` is the URL without query and fragment.
fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

    use super::*;

    #[test]
    fn a_proof_verifies_under_its_own_jwk_and_carries_the_claims() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "k", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])});
        let what = ProofFor {
            method: "GET",
            url: "https://rs.example/a?b=c#d",
            access_token: Some("tok"),
            nonce: Some("n1"),
        };
        let proof = build(&jwk, what, 1000, |input| {
            let sig = pair.sign(&rng, input).unwrap();
            Ok(sig.as_ref().try_into().unwrap())
        })
        .unwrap();
        let parts: Vec<&str> = proof.split('.').collect();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header["typ"], "dpop+jwt");
        assert!(header["jwk"].get("kid").is_none(), "public members only");
        assert_eq!(claims["htu"], "https://rs.example/a");
        assert_eq!(claims["ath"], access_token_hash("tok"));
        assert_eq!(claims["nonce"], "n1");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .unwrap();
        assert_eq!(thumbprint(&header["jwk"]), thumbprint(&jwk));
    }
}

//! Compact JWS (RFC 7515 §7.1): splitting, decoding and verifying signatures with an algorithm
//! fixed by the key. The JSON is parsed by serde_json and the signatures checked by ring; this
//! module only joins the pieces.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::Deserialize;

use crate::store::KeyAlg;

/// Longest token we are willing to look at. Our own tokens are ~500 bytes, client assertions
/// well under 2 KiB; anything far larger is garbage or an attack on the parser.
pub const MAX_JWS_LEN: usize = 8 * 1024;

/// Why a JWS was rejected. Shown to operators in logs and, in brief, to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// Not three base64url parts, too long, or not JSON where JSON belongs.
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm the key does not use (including `none`).
    #[error("algorithm {found} not accepted for this key")]
    Algorithm {
        /// What the header said.
        found: String,
    },
    /// The header has `crit` members we do not understand (RFC 7515 §4.1.11).
    #[error("unsupported critical header")]
    Critical,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
}

/// The header members we act on (RFC 7515 §4.1).
#[derive(Debug, Deserialize)]
pub struct Header {
    /// Algorithm named by the signer; only checked against the key's own.
    pub alg: String,
    /// Media type of the whole token (RFC 7515 §4.1.9; RFC 9068 §2.1 needs `at+jwt`).
    #[serde(default)]
    pub typ: Option<String>,
    /// Which key signed it.
    #[serde(default)]
    pub kid: Option<String>,
    /// An embedded public key (RFC 7515 §4.1.3): only a DPoP proof carries one (RFC 9449
    /// §4.2); every other verifier ignores it and uses a key it already holds.
    #[serde(default)]
    pub jwk: Option<serde_json::Value>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A split, decoded but not yet verified compact JWS.
#[derive(Debug)]
pub struct Unverified<'a> {
    /// The decoded header.
    pub header: Header,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> Unverified<'a> {
    /// Split and decode `token`. Nothing here is trusted until [`Unverified::verify`].
    pub fn parse(token: &'a str) -> Result<Self, JwsError> {
        if token.len() > MAX_JWS_LEN {
            return Err(JwsError::Malformed("too long"));
        }
        let (signing_input, sig_b64) = token
            .rsplit_once('.')
            .ok_or(JwsError::Malformed("not three parts"))?;
        let (header_b64, payload_b64) = signing_input
            .split_once('.')
            .ok_or(JwsError::Malformed("not three parts"))?;
        if payload_b64.contains('.') {
            return Err(JwsError::Malformed("not three parts"));
        }
        let decode = |part: &str, what| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwsError::Malformed(what))
        };
        let header: Header =
            serde_json::from_slice(&decode(header_b64, "header is not base64url")?)
                .map_err(|_| JwsError::Malformed("header is not a JSON object"))?;
        if header.crit.is_some() {
            return Err(JwsError::Critical);
        }
        Ok(Unverified {
            header,
            signing_input,
            payload: decode(payload_b64, "payload is not base64url")?,
            signature: decode(sig_b64, "signature is not base64url")?,
        })
    }

    /// The payload, for reading who claims to have signed before the key is known. Never act on
    /// it before [`Unverified::verify`] succeeds.
    pub fn untrusted_payload(&self) -> &[u8] {
        &self.payload
    }

    /// Check the signature with `public` under `alg`, the algorithm of the key. The header's
    /// `alg` must name the same algorithm; it never chooses one.
    pub fn verify(&self, alg: KeyAlg, public: &[u8]) -> Result<&[u8], JwsError> {
        if self.header.alg != alg.as_str() {
            return Err(JwsError::Algorithm {
                found: self.header.alg.clone(),
            });
        }
        let algorithm: &dyn ring::signature::VerificationAlgorithm = match alg {
            // JWS ES256 signatures are r||s, 64 bytes (RFC 7518 §3.4).
            KeyAlg::ES256 => &ring::signature::ECDSA_P256_SHA256_FIXED,
            KeyAlg::EdDSA => &ring::signature::ED25519,
        };
        ring::signature::UnparsedPublicKey::new(algorithm, public)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| JwsError::Signature)?;
        Ok(&self.payload)
    }
}

/// base64url without padding, the JOSE encoding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    fn ed_token(header: &str, payload: &str) -> (String, Vec<u8>) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let sig = key.sign(input.as_bytes());
        (
            format!("{input}.{}", b64(&sig.to_bytes())),
            key.verifying_key().to_bytes().to_vec(),
        )
    }

    #[test]
    fn verifies_a_good_eddsa_token() {
        let (t, public) = ed_token(r#"{"alg":"EdDSA"}"#, r#"{"a":1}"#);
        let jws = Unverified::parse(&t).unwrap();
        assert_eq!(jws.verify(KeyAlg::EdDSA, &public).unwrap(), br#"{"a":1}"#);
    }

    #[test]
    fn header_alg_never_overrides_the_key() {
        for alg in ["none", "ES256", "HS256", "eddsa"] {
            let (t, public) = ed_token(&format!(r#"{{"alg":"{alg}"}}"#), "{}");
            let jws = Unverified::parse(&t).unwrap();
            assert!(matches!(
                jws.verify(KeyAlg::EdDSA, &public),
                Err(JwsError::Algorithm { .. })
            ));
        }
    }

    #[test]
    fn rejects_tampered_payload_and_garbage() {
        let (t, public) = ed_token(r#"{"alg":"EdDSA"}"#, r#"{"a":1}"#);
        let parts: Vec<&str> = t.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64(br#"{"a":2}"#), parts[2]);
        assert_eq!(
            Unverified::parse(&tampered)
                .unwrap()
                .verify(KeyAlg::EdDSA, &public),
            Err(JwsError::Signature)
        );
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.e30.e30",
            "e30.e30.!!",
            &"a".repeat(MAX_JWS_LEN + 1),
        ] {
            assert!(Unverified::parse(bad).is_err(), "{bad:.20}");
        }
    }

    #[test]
    fn rejects_crit() {
        let (t, _) = ed_token(r#"{"alg":"EdDSA","crit":["exp"]}"#, "{}");
        assert_eq!(Unverified::parse(&t).unwrap_err(), JwsError::Critical);
    }
}

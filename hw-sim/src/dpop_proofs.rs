//! Pre-signed DPoP proofs (RFC 9449 §4.2) for load generators that cannot sign: one software
//! ES256 key, one proof per line, each with its own `jti`. `scripts/bench-dpop` feeds them to
//! wrk, one per request, to measure client_credentials with DPoP against the same load without.

use std::io::Write;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

/// Why proofs could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The key could not be made, or a signature failed.
    #[error("making an ES256 key or signature failed")]
    Key,
    /// Writing the proofs failed.
    #[error("writing proofs: {0}")]
    Write(#[from] std::io::Error),
}

/// Write `count` proofs for `method` and `url` to `out`, one per line, all by one fresh key and
/// all with `iat` = `now`. Every `jti` is 96 random bits shared by the batch and the proof's
/// index, so no two proofs (in this batch or another) share one.
pub fn write(
    out: &mut impl Write,
    method: &str,
    url: &str,
    count: u64,
    now: u64,
) -> Result<(), ProofError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| ProofError::Key)?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| ProofError::Key)?;
    // SEC1 uncompressed point: 0x04 ‖ x ‖ y.
    let point = key.public_key().as_ref();
    let header = serde_json::json!({
        "typ": "dpop+jwt", "alg": "ES256",
        "jwk": {"kty": "EC", "crv": "P-256",
                "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])},
    });
    let header = B64.encode(header.to_string());
    let mut batch = [0u8; 12];
    rng.fill(&mut batch).map_err(|_| ProofError::Key)?;
    let batch = B64.encode(batch);
    for i in 0..count {
        let claims = serde_json::json!({
            "jti": format!("{batch}.{i:x}"), "htm": method, "htu": url, "iat": now,
        });
        let input = format!("{header}.{}", B64.encode(claims.to_string()));
        let signature = key
            .sign(&rng, input.as_bytes())
            .map_err(|_| ProofError::Key)?;
        writeln!(out, "{input}.{}", B64.encode(signature.as_ref()))?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_are_distinct_and_name_the_request() {
        let mut out = Vec::new();
        write(
            &mut out,
            "POST",
            "http://127.0.0.1:1/oauth2/token",
            3,
            1_700_000_000,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let mut jtis = std::collections::HashSet::new();
        for line in lines {
            let parts: Vec<&str> = line.split('.').collect();
            assert_eq!(parts.len(), 3);
            let header: serde_json::Value =
                serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
            assert_eq!(header["typ"], "dpop+jwt");
            assert!(header["jwk"].get("d").is_none(), "no private member");
            let claims: serde_json::Value =
                serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
            assert_eq!(claims["htm"], "POST");
            assert_eq!(claims["htu"], "http://127.0.0.1:1/oauth2/token");
            assert!(jtis.insert(claims["jti"].as_str().unwrap().to_owned()));
        }
    }
}

//! `private_key_jwt` client assertions (RFC 7523 §2.2 and §3, OpenID Connect Core §9) signed
//! ES256 (RFC 7518 §3.4) by a key that never leaves the TPM.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::tpm::TpmError;

/// `client_assertion_type` for a JWT bearer assertion (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Assertion lifetime: short, since each assertion is made for one request (RFC 7523 §3 item 4
/// lets the server bound it; ours accepts at most 60 s beyond its clock skew).
pub const LIFETIME_SECS: u64 = 60;

/// Builds a signed assertion: header `{alg: ES256, typ: JWT, kid}`, claims `iss` = `sub` =
/// client_id, `aud` = the token endpoint, `iat` = `now`, `exp` = iat + 60 s, a random `jti`
/// (RFC 7523 §3 items 1–7). `now` is the *server's* time as the agent knows it
/// ([`crate::clock::Clock::server_now`]): the server judges `iat` and `exp` by its own clock.
/// `sign` receives the JWS signing input and returns r || s.
pub fn build(
    client_id: &str,
    audience: &str,
    kid: &str,
    now: u64,
    sign: impl FnOnce(&[u8]) -> Result<[u8; 64], TpmError>,
) -> Result<String, TpmError> {
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + LIFETIME_SECS,
        "jti": random_token(16)?,
    });
    compact_jws(&header, &claims, sign)
}

/// A compact JWS (RFC 7515 §7.1) of `header` and `claims`: `sign` receives the signing input
/// and returns the ES256 signature r || s. Client assertions and DPoP proofs share it.
pub fn compact_jws(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: impl FnOnce(&[u8]) -> Result<[u8; 64], TpmError>,
) -> Result<String, TpmError> {
    let mut input = URL_SAFE_NO_PAD.encode(header.to_string());
    input.push('.');
    input.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = sign(input.as_bytes())?;
    input.push('.');
    input.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(input)
}

/// `n` random bytes, base64url without padding.
pub fn random_token(n: usize) -> Result<String, TpmError> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TpmError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

    use super::*;
    use crate::clock::Clock;

    fn claims(jwt: &str) -> serde_json::Value {
        let payload = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn assertion_times_follow_the_server_clock() {
        // A device two hours behind that learned the server's offset signs with server time.
        let clock = Clock::skewed(-7200);
        let server_now = crate::clock::unix_now();
        clock.observe_date(Some(&httpdate::fmt_http_date(std::time::SystemTime::now())));
        let jwt = build("d", "a", "k", clock.server_now(), |_| Ok([0; 64])).unwrap();
        let c = claims(&jwt);
        let iat = c["iat"].as_u64().unwrap();
        assert!(
            iat.abs_diff(server_now) <= 2,
            "iat {iat}, server {server_now}"
        );
        assert_eq!(c["exp"].as_u64().unwrap(), iat + LIFETIME_SECS);
        // Without the offset the same device would claim a time two hours ago.
        assert!(clock.local_now().abs_diff(server_now as i64) >= 7198);
    }

    #[test]
    fn assertion_verifies_and_carries_rfc7523_claims() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let jwt = build(
            "dev1",
            "https://as.example/token",
            "kid1",
            1_700_000_000,
            |msg| {
                let sig = key.sign(&rng, msg).unwrap();
                Ok(sig.as_ref().try_into().unwrap())
            },
        )
        .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            key.public_key().as_ref(),
        );
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "dev1");
        assert_eq!(claims["sub"], "dev1");
        assert_eq!(claims["aud"], "https://as.example/token");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!((iat, exp), (1_700_000_000, 1_700_000_060));
        let other = build("dev1", "a", "k", 1_700_000_000, |_| Ok([0; 64])).unwrap();
        let other_claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(other.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_ne!(claims["jti"], other_claims["jti"]);
    }
}

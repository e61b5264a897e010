//! Client JWKs and JWK Sets (`oauth::registration::parse_jwk` / `parse_jwks`, RFC 7517,
//! RFC 7518 §6.2, RFC 8037 §2). Properties: an accepted key is public only, its raw key has the
//! algorithm's shape, and the JWK we store re-parses to the same key.
#![no_main]

use hallmark_server::oauth::registration::{parse_jwk, parse_jwks};
use hallmark_server::store::KeyAlg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = parse_jwks(&value);
    let Ok(key) = parse_jwk(&value) else {
        return;
    };
    match key.alg {
        KeyAlg::ES256 => assert!(key.public.len() == 65 && key.public[0] == 0x04),
        KeyAlg::EdDSA => assert_eq!(key.public.len(), 32),
        other => panic!("accepted a key of algorithm {}", other.as_str()),
    }
    for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        assert!(
            key.jwk.get(private).is_none(),
            "stored private member {private}"
        );
    }
    let again = parse_jwk(&key.jwk).expect("the stored JWK parses");
    assert_eq!((again.alg, &again.public), (key.alg, &key.public));
});

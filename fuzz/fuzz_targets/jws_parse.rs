//! Compact JWS / JWT splitting and header decoding (`oauth::jws::Unverified::parse`, RFC 7515
//! §7.1). Property: an accepted token is at most `MAX_JWS_LEN` bytes of exactly three parts, and
//! its payload re-encodes to the very base64url text it came from (decoding is canonical, so two
//! different tokens never carry the same payload under the same signing input).
#![no_main]

use hallmark_server::oauth::jws::{b64, Unverified, MAX_JWS_LEN};
use hallmark_server::store::KeyAlg;
use libfuzzer_sys::fuzz_target;

/// RFC 8032 §7.1 TEST 1 public key.
const ED25519_TEST_1: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(jws) = Unverified::parse(token) else {
        return;
    };
    assert!(token.len() <= MAX_JWS_LEN);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token that is not three parts");
    assert_eq!(
        b64(jws.untrusted_payload()),
        parts[1],
        "payload decoding is not canonical"
    );
    // Nobody holds the private half of these keys (the Ed25519 one is RFC 8032 §7.1's TEST 1 key,
    // the P-256 one is off the curve), so no input may verify. Not an all-zero Ed25519 key: it has
    // small order, and signatures under it verify for about one message in four (see
    // `parse_jwk`, which does not yet refuse such keys).
    assert!(jws.verify(KeyAlg::EdDSA, &ED25519_TEST_1).is_err());
    assert!(jws.verify(KeyAlg::ES256, &[4u8; 65]).is_err());
});

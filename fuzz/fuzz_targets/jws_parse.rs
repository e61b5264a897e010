//! Compact JWS / JWT splitting and header decoding (`oauth::jws::Unverified::parse`, RFC 7515
//! §7.1). Property: an accepted token is at most `MAX_JWS_LEN` bytes of exactly three parts, and
//! its payload re-encodes to the very base64url text it came from (decoding is canonical, so two
//! different tokens never carry the same payload under the same signing input).
#![no_main]

use hallmark_server::oauth::jws::{b64, Unverified, MAX_JWS_LEN};
use hallmark_server::store::KeyAlg;
use libfuzzer_sys::fuzz_target;

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
    assert_eq!(b64(jws.untrusted_payload()), parts[1], "payload decoding is not canonical");
    // Verification with keys of the wrong shape must fail, never panic.
    assert!(jws.verify(KeyAlg::EdDSA, &[0u8; 32]).is_err());
    assert!(jws.verify(KeyAlg::ES256, &[4u8; 65]).is_err());
});

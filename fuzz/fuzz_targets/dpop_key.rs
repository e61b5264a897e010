//! The two parsers DPoP proofs add (`oauth::dpop`, RFC 9449): the proof key's RFC 7638
//! thumbprint (what `cnf.jkt` binds a token to) over keys `parse_jwk` accepts, and `htu`
//! normalisation (§4.3 check 9). Input: a JSON JWK, or else a URL. Properties: an accepted key
//! has a thumbprint, 43 base64url characters, unchanged when the JWK is re-parsed, re-ordered or
//! given extra members (RFC 7638 §3: only the required members count); a normalised `htu` is an
//! http(s) URL without query or fragment, and normalising it again changes nothing.
#![no_main]

use hallmark_server::oauth::dpop::{normalise_htu, thumbprint};
use hallmark_server::oauth::registration::parse_jwk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(jwk @ serde_json::Value::Object(_)) = serde_json::from_str::<serde_json::Value>(text)
    {
        let Ok(key) = parse_jwk(&jwk) else {
            return;
        };
        let jkt = thumbprint(key.alg, &key.public).expect("an accepted key has a thumbprint");
        assert_eq!(jkt.len(), 43, "SHA-256 in base64url without padding");
        assert!(jkt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let stored = parse_jwk(&key.jwk).expect("the stored JWK parses");
        assert_eq!(thumbprint(stored.alg, &stored.public).as_deref(), Some(&*jkt));
        // Members in reverse order, plus ones RFC 7638 leaves out of the thumbprint.
        let mut members: Vec<(String, serde_json::Value)> = key
            .jwk
            .as_object()
            .expect("a stored JWK is an object")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        members.reverse();
        let mut shuffled: serde_json::Map<String, serde_json::Value> = members.into_iter().collect();
        shuffled.insert("kid".into(), "other".into());
        shuffled.insert("use".into(), "sig".into());
        if let Ok(again) = parse_jwk(&serde_json::Value::Object(shuffled)) {
            assert_eq!(thumbprint(again.alg, &again.public).as_deref(), Some(&*jkt));
        }
        return;
    }
    let Some(htu) = normalise_htu(text) else {
        return;
    };
    assert!(htu.starts_with("https://") || htu.starts_with("http://"), "{htu}");
    let url = url::Url::parse(&htu).expect("a normalised htu parses");
    assert!(url.query().is_none() && url.fragment().is_none(), "{htu}");
    assert_eq!(normalise_htu(&htu).as_deref(), Some(&*htu), "not idempotent");
});

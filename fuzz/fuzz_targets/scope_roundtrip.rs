//! Scope parameters (`oauth::scope::parse`, RFC 6749 §3.3). Property: accepted scopes are
//! valid, distinct scope-tokens within the bounds, and parse → join → parse is the identity.
#![no_main]

use hallmark_server::oauth::scope::{is_scope_token, parse, MAX_SCOPE_TOKENS, MAX_SCOPE_TOKEN_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(scopes) = parse(text) else {
        return;
    };
    assert!(!scopes.is_empty() && scopes.len() <= MAX_SCOPE_TOKENS);
    for (i, s) in scopes.iter().enumerate() {
        assert!(is_scope_token(s) && s.len() <= MAX_SCOPE_TOKEN_LEN);
        assert!(!scopes[..i].contains(s), "repeated scope {s:?}");
    }
    let joined = scopes.join(" ");
    assert_eq!(parse(&joined).ok(), Some(scopes), "round trip of {text:?}");
});

//! User-code normalisation (`oauth::device_flow::UserCode::parse`, RFC 8628 §6.1). Property: an
//! accepted code normalises to `USER_CODE_LEN` letters of the alphabet, and normalisation is
//! idempotent through both the stored and the displayed form.
#![no_main]

use hallmark_server::oauth::device_flow::{UserCode, USER_CODE_ALPHABET, USER_CODE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(code) = UserCode::parse(text) else {
        return;
    };
    let stored = code.as_str();
    assert_eq!(stored.len(), USER_CODE_LEN);
    assert!(stored.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)));
    let again = UserCode::parse(stored).expect("the normal form parses");
    assert_eq!(again.as_str(), stored);
    let shown = UserCode::parse(&code.display()).expect("the displayed form parses");
    assert_eq!(shown.as_str(), stored);
});

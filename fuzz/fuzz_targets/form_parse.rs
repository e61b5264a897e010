//! `application/x-www-form-urlencoded` bodies (`oauth::form::Form::parse`, RFC 6749 §3.2).
//! The first input line is the Content-Type, the rest the body. Property: a body accepted under
//! the form media type holds each non-empty parameter exactly as serde_urlencoded reads it, and
//! any other media type is refused.
#![no_main]

use hallmark_server::oauth::form::Form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    let accepted = Form::parse(content_type, body);
    let is_form = content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| {
            ct.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let Ok(form) = accepted else {
        return;
    };
    assert!(is_form, "accepted content type {content_type:?}");
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).expect("accepted body is a form");
    for (k, v) in &pairs {
        if !v.is_empty() {
            assert_eq!(form.get(k), Some(v.as_str()));
        }
    }
});

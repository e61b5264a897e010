//! Client credentials from a request (`oauth::client_auth::Presented::from_request` with the
//! HTTP Basic decoding of RFC 6749 §2.3.1). The first input line is the `Authorization` header
//! (absent when empty), the rest a form body. Property: an accepted Basic credential has a
//! non-empty client_id, and re-encoding it (every byte percent-encoded) reads back the same.
#![no_main]

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hallmark_server::oauth::client_auth::Presented;
use hallmark_server::oauth::form::Form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, body) = text.split_once('\n').unwrap_or((text, ""));
    let authorization = (!header.is_empty()).then_some(header);
    let Ok(mut form) = Form::parse(Some("application/x-www-form-urlencoded"), body.as_bytes())
    else {
        return;
    };
    let Ok(presented) = Presented::from_request(authorization, &mut form) else {
        return;
    };
    if let Presented::Basic { client_id, secret } = &presented {
        assert!(!client_id.is_empty());
        let encoded = format!("{}:{}", percent_all(client_id), percent_all(secret));
        let header = format!("Basic {}", STANDARD.encode(encoded));
        let again = Presented::from_request(Some(&header), &mut Form::default())
            .expect("a re-encoded Basic credential parses");
        let Presented::Basic {
            client_id: id2,
            secret: secret2,
        } = again
        else {
            panic!("re-encoded Basic credential read as another method");
        };
        assert_eq!((&id2, secret2.as_str()), (client_id, secret.as_str()));
    }
});

fn percent_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

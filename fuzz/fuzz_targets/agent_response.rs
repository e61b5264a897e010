//! The agent's reading of server responses (`oauth::parse_success`, used for the token, device
//! authorization and key endpoints) and of the metadata document (RFC 8414) — bytes from the
//! network, from any server the agent is pointed at. The first input byte picks the HTTP status.
//! Properties: never a panic; a 2xx answer is a success or a `BadResponse`, never `Rejected`; a
//! non-2xx answer is never a success, and `Rejected` only for a JSON body carrying `error`.
#![no_main]

use hallmark_agent::http::Response;
use hallmark_agent::oauth::{parse_success, Metadata, OAuthError, TokenResponse};
use hallmark_agent::DeviceAuthorization;
use libfuzzer_sys::fuzz_target;

const STATUSES: [u16; 8] = [200, 201, 204, 400, 401, 429, 500, 503];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let resp = Response {
        status: STATUSES[usize::from(pick) % STATUSES.len()],
        body: String::from_utf8_lossy(body).into_owned(),
    };
    let success = (200..300).contains(&resp.status);
    let token = parse_success::<TokenResponse>("token", &resp);
    let device = parse_success::<DeviceAuthorization>("device_authorization", &resp);
    let metadata = parse_success::<Metadata>("metadata", &resp);
    for outcome in [
        token.as_ref().map(|_| ()),
        device.as_ref().map(|_| ()),
        metadata.as_ref().map(|_| ()),
    ] {
        match outcome {
            Ok(()) => assert!(success, "a {} answer parsed as a success", resp.status),
            Err(OAuthError::Rejected { .. }) => {
                assert!(!success, "a 2xx answer read as an error");
                let value: serde_json::Value =
                    serde_json::from_str(&resp.body).expect("rejected only for JSON");
                assert!(value.get("error").is_some_and(|e| e.is_string()));
            }
            Err(_) => {}
        }
    }
});

//! A client that announces a body and then stalls is answered and cut off, not served forever.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

#[test]
fn a_stalled_request_body_times_out() {
    let server = common::TestServer::start();
    let started = Instant::now();
    let request = b"POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\n\
        Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\
        Connection: close\r\n\r\ngrant_type=client_credentials";
    let (status, text) = server.raw_https(request);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(18), "held for {waited:?}");
    assert!(
        waited >= Duration::from_secs(9),
        "answered before the body could arrive: {text}"
    );
    assert!((400..500).contains(&status), "{text}");
    // The server still serves everyone else.
    assert_eq!(server.get("/healthz").0, 200);
}

//! The fixture itself works: init, serve over TLS, a token, a graceful stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[test]
fn serves_tokens_over_tls_and_stops_gracefully() {
    let mut server = common::TestServer::start();
    let (status, meta) = server.get("/.well-known/oauth-authorization-server");
    assert_eq!(status, 200);
    assert_eq!(meta["issuer"], server.issuer.as_str());
    let token = server.admin_token("clients:admin");
    assert_eq!(token.split('.').count(), 3);
    assert!(server.terminate().success(), "{}", server.log());
}

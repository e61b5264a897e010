//! The station's token cache against a real server with 2-second access tokens: one token serves
//! many registrations, and it is replaced before it expires rather than after a refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hallmark_agent::tpm::EndorsementKey;
use hallmark_e2e::server::TestServer;
use hallmark_e2e::station::TestStation;
use hallmark_provision::station::Registration;
use hallmark_provision::{StationClient, StationCredentials};

/// An RSA-2048 endorsement key made in software: the station's registrations need a real key.
fn endorsement_key() -> EndorsementKey {
    use rsa::pkcs8::EncodePublicKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    EndorsementKey {
        spki_der: key.to_public_key().to_public_key_der().unwrap().to_vec(),
        certificate: None,
    }
}

#[test]
fn the_station_token_is_reused_then_renewed_before_it_expires() {
    let server = TestServer::start_with_env(&[], &[("HALLMARK_ACCESS_TOKEN_TTL", "2")]);
    let station = TestStation::register(&server, "devices:provision");
    let ca = std::fs::read(&server.ca_cert).unwrap();
    let client = StationClient::new(
        &server.issuer,
        &server.ca_cert,
        &ca,
        StationCredentials::load(&station.credentials).unwrap(),
    )
    .unwrap();
    let eks: Vec<EndorsementKey> = (0..4).map(|_| endorsement_key()).collect();
    let register = |n: u8| {
        let serial = format!("HM-RENEW-{n}");
        match client
            .register_device(&serial, "m", &eks[usize::from(n) - 1], false)
            .unwrap()
        {
            Registration::Created { .. } => {}
            other => panic!("{serial}: {other:?}"),
        }
    };

    register(1);
    register(2);
    assert_eq!(
        client.token_requests(),
        1,
        "one token for both registrations"
    );

    // The token lives 2 s and is replaced in its second half: 1.2 s on it is still valid at the
    // server, so only the renewal logic (not a 401 and retry) can ask for the next one.
    std::thread::sleep(Duration::from_millis(1200));
    register(3);
    assert_eq!(client.token_requests(), 2, "renewed before expiry");
    register(4);
    assert_eq!(client.token_requests(), 2);
}

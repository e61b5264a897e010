//! Issue 18: introspection remembers tokens whose signature it verified, yet a token revoked, or
//! whose device was disabled or deleted, is inactive at the very next introspection after it
//! was cached — on PostgreSQL also when another replica made the change (within the client
//! cache's stated bound for disable and delete).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};

/// Times a token is introspected before the change: the first verifies, the rest are hits.
const WARM: usize = 4;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Introspect `token` `WARM` times as the admin client, each time active.
fn warm(server: &TestServer, token: &str) {
    for n in 0..WARM {
        assert_eq!(
            server.introspect(token)["active"],
            true,
            "introspection {n}"
        );
    }
}

/// A device registered through the admin API and a token it got with its factory secret;
/// (client_id, access token).
fn device_with_token(server: &TestServer, serial: &str) -> (String, String) {
    let provision = server.admin_token("devices:provision");
    let mut fp = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fp).unwrap();
    let body = json!({
        "serial": serial,
        "model": "gw-1",
        "ek_fingerprint": fp.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    let (status, dev) = server.post_raw(
        "/admin/devices",
        "application/json",
        Some(&bearer(&provision)),
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{dev}");
    let id = dev["client_id"].as_str().unwrap().to_owned();
    let secret = dev["factory_secret"].as_str().unwrap();
    let (status, _, tok) = server.token_basic(&id, secret, None);
    assert_eq!(status, 200, "{tok}");
    (id, tok["access_token"].as_str().unwrap().to_owned())
}

/// Disable (`disable`) or delete (`delete`) device `id` through `server`'s admin API.
fn end_device(server: &TestServer, id: &str, action: &str) {
    let admin = server.admin_token("devices:admin");
    let status = if action == "disable" {
        let (status, body): (u16, Value) = server.post_raw(
            &format!("/admin/devices/{id}/disable"),
            "application/json",
            Some(&bearer(&admin)),
            b"",
        );
        assert!(status == 200 || status == 204, "{body}");
        status
    } else {
        server
            .http
            .delete(&server.url(&format!("/admin/devices/{id}")))
            .header("Authorization", &bearer(&admin))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert!(status == 200 || status == 204, "{action}: {status}");
}

#[test]
fn a_cached_token_is_inactive_at_the_next_introspection_after_revocation() {
    let server = TestServer::start();
    let (id, secret) = server.register_secret_client("telemetry", "client_secret_basic");
    let (status, _, tok) = server.token_basic(&id, &secret, None);
    assert_eq!(status, 200, "{tok}");
    let token = tok["access_token"].as_str().unwrap();
    warm(&server, token);
    let (status, body) =
        server.post_form("/oauth2/revoke", Some((&id, &secret)), &[("token", token)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.introspect(token), json!({"active": false}));
    // And it stays so: the cache never brings it back.
    for _ in 0..WARM {
        assert_eq!(server.introspect(token), json!({"active": false}));
    }
}

#[test]
fn a_cached_token_is_inactive_at_the_next_introspection_after_its_device_is_disabled_or_deleted() {
    let server = TestServer::start();
    for action in ["disable", "delete"] {
        let (id, token) = device_with_token(&server, &format!("HM-cache-{action}"));
        warm(&server, &token);
        end_device(&server, &id, action);
        assert_eq!(
            server.introspect(&token),
            json!({"active": false}),
            "{action}"
        );
    }
}

/// PostgreSQL only: the change is made at another replica than the one that cached the token.
/// A revocation is seen at once; a disable or delete within the client cache's bound
/// (`CLIENT_CACHE_TTL`, 1 s), as before the token cache.
#[test]
fn on_postgres_a_change_at_another_replica_reaches_a_cached_token() {
    let Some(url) = common::test_database() else {
        return;
    };
    let r = TestServer::start_replicas(2, &url, &[]);
    let (cacher, changer) = (&r[0], &r[1]);

    let (id, secret) = changer.register_secret_client("telemetry", "client_secret_basic");
    let (status, _, tok) = changer.token_basic(&id, &secret, None);
    assert_eq!(status, 200, "{tok}");
    let token = tok["access_token"].as_str().unwrap();
    warm(cacher, token);
    let (status, body) =
        changer.post_form("/oauth2/revoke", Some((&id, &secret)), &[("token", token)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        cacher.introspect(token),
        json!({"active": false}),
        "revoked"
    );

    for action in ["disable", "delete"] {
        let (id, token) = device_with_token(changer, &format!("HM-replica-{action}"));
        warm(cacher, &token);
        end_device(changer, &id, action);
        std::thread::sleep(
            hallmark_server::store::pg::CLIENT_CACHE_TTL + Duration::from_millis(100),
        );
        assert_eq!(
            cacher.introspect(&token),
            json!({"active": false}),
            "{action}"
        );
    }
}

//! Issue 4 over real TLS: the device registry and its authorization, first-boot credential
//! rotation with its crash points, the audit log (route, tamper detection by `audit verify`),
//! signing-key rotation, and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use common::TestServer;
use hallmark_server::store::audit::Outcome;

/// A device key as the agent would hold it (here in software).
struct DeviceKey {
    pair: EcdsaKeyPair,
    kid: String,
}

impl DeviceKey {
    fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        DeviceKey {
            pair,
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&p[1..33]),
               "y": URL_SAFE_NO_PAD.encode(&p[33..65]), "kid": self.kid})
    }

    /// An RFC 7523 client assertion for `client_id` at `server`'s token endpoint.
    fn assertion(&self, server: &TestServer, client_id: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let claims = json!({"iss": client_id, "sub": client_id, "aud": server.url("/oauth2/token"),
            "exp": now + 60, "iat": now, "jti": URL_SAFE_NO_PAD.encode(rand_bytes())});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// A client_credentials request authenticated by this key; (status, body).
    fn token(&self, server: &TestServer, client_id: &str) -> (u16, Value) {
        let assertion = self.assertion(server, client_id);
        server.post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
            ],
        )
    }
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut b).unwrap();
    b
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn ek(n: u8) -> String {
    hex_of(&[n; 32])
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Register a device with the admin client acting as station; (status, body).
fn register(server: &TestServer, token: &str, serial: &str, ek_fp: &str) -> (u16, Value) {
    let body = json!({"serial": serial, "model": "gw-1", "ek_fingerprint": ek_fp});
    server.post_raw(
        "/admin/devices",
        "application/json",
        Some(&bearer(token)),
        body.to_string().as_bytes(),
    )
}

fn get(server: &TestServer, path: &str, token: &str) -> (u16, Value) {
    let mut r = server
        .http
        .get(&server.url(path))
        .header("Authorization", &bearer(token))
        .call()
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
    )
}

fn secret_token(server: &TestServer, id: &str, secret: &str) -> (u16, Value) {
    server.post_form(
        "/oauth2/token",
        Some((id, secret)),
        &[("grant_type", "client_credentials")],
    )
}

fn rotate(server: &TestServer, id: &str, secret: &str, key: &DeviceKey) -> (u16, Value) {
    server.post_raw(
        "/oauth2/device-credentials",
        "application/json",
        Some(&common::basic_header(id, secret)),
        json!({"jwk": key.jwk()}).to_string().as_bytes(),
    )
}

#[test]
fn admin_device_routes_check_their_scopes() {
    let server = TestServer::start();
    let provision = server.admin_token("devices:provision");
    let admin = server.admin_token("devices:admin");
    let other = server.admin_token("clients:admin");

    // No token, a garbage token, a token without the scope.
    let body = json!({"serial": "S1", "model": "m", "ek_fingerprint": ek(1)}).to_string();
    let (s, _) = server.post_raw("/admin/devices", "application/json", None, body.as_bytes());
    assert_eq!(s, 401);
    let (s, b) = server.post_raw(
        "/admin/devices",
        "application/json",
        Some("Bearer not.a.token"),
        body.as_bytes(),
    );
    assert_eq!((s, b["error"].as_str()), (401, Some("invalid_token")));
    let (s, b) = register(&server, &other, "S1", &ek(1));
    assert_eq!((s, b["error"].as_str()), (403, Some("insufficient_scope")));
    // Provisioning may register but not read, disable or delete.
    let (s, b) = register(&server, &provision, "S1", &ek(1));
    assert_eq!(s, 201, "{b}");
    let id = b["client_id"].as_str().unwrap().to_owned();
    assert_eq!(
        get(&server, &format!("/admin/devices/{id}"), &provision).0,
        403
    );
    let (s, _) = server.post_raw(
        &format!("/admin/devices/{id}/disable"),
        "application/json",
        Some(&bearer(&provision)),
        b"",
    );
    assert_eq!(s, 403);
    let (s, view) = get(&server, &format!("/admin/devices/{id}"), &admin);
    assert_eq!(s, 200);
    assert_eq!(view["serial"], "S1");
    assert_eq!(view["registered_by"], server.admin_id.as_str());
    assert_eq!(view["credential"], "factory");
    // Bad input is a clear 400, not a device.
    for (serial, fp) in [("has space", ek(2)), ("S2", "xyz".to_string()), ("", ek(2))] {
        let (s, b) = register(&server, &provision, serial, &fp);
        assert_eq!(
            (s, b["error"].as_str()),
            (400, Some("invalid_request")),
            "{serial} {b}"
        );
    }
    assert_eq!(get(&server, "/admin/devices/nope", &admin).0, 404);
    // Two credentials at once are one too many, even if one of them is good.
    let request = format!(
        "GET /admin/devices?serial=S1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {admin}\r\n\
         Authorization: Bearer {other}\r\nConnection: close\r\n\r\n"
    );
    let (s, text) = server.raw_https(request.as_bytes());
    assert_eq!(s, 400, "{text}");
    assert!(text.contains("invalid_request"), "{text}");
}

#[test]
fn a_serial_is_registered_once_and_its_secret_shown_once() {
    let server = TestServer::start();
    let provision = server.admin_token("devices:provision");
    let (s, first) = register(&server, &provision, "HM-1", &ek(1));
    assert_eq!(s, 201);
    assert_eq!(first["factory_secret"].as_str().unwrap().len(), 43);
    // One TPM is one identity: its EK under a second serial is refused.
    let (s, twin) = register(&server, &provision, "HM-TWIN", &ek(1));
    assert_eq!(
        (s, twin["error"].as_str(), twin["serial"].as_str()),
        (409, Some("ek_in_use"), Some("HM-1")),
        "{twin}"
    );
    assert!(twin.get("factory_secret").is_none());
    let (s, again) = register(&server, &provision, "HM-1", &ek(9));
    assert_eq!(s, 409, "{again}");
    assert_eq!(again["client_id"], first["client_id"]);
    assert_eq!(again["ek_fingerprint"], ek(1).as_str());
    assert!(again.get("factory_secret").is_none());
    let admin = server.admin_token("devices:admin");
    let (s, view) = get(&server, "/admin/devices?serial=HM-1", &admin);
    assert_eq!((s, &view["client_id"]), (200, &first["client_id"]));
    // The factory secret works as a client secret, and never shows up in the log.
    let (s, _) = secret_token(
        &server,
        first["client_id"].as_str().unwrap(),
        first["factory_secret"].as_str().unwrap(),
    );
    assert_eq!(s, 200);
    assert!(!server
        .log()
        .contains(first["factory_secret"].as_str().unwrap()));
}

#[test]
fn disabled_and_deleted_devices_lose_their_tokens() {
    let server = TestServer::start();
    let provision = server.admin_token("devices:provision");
    let admin = server.admin_token("devices:admin");
    for (n, action) in [(3, "disable"), (6, "delete")] {
        let serial = format!("HM-{action}");
        let (_, dev) = register(&server, &provision, &serial, &ek(n));
        let (id, secret) = (
            dev["client_id"].as_str().unwrap(),
            dev["factory_secret"].as_str().unwrap(),
        );
        let (s, tok) = secret_token(&server, id, secret);
        assert_eq!(s, 200);
        let live = tok["access_token"].as_str().unwrap();
        assert_eq!(server.introspect(live)["active"], true);
        let status = if action == "disable" {
            server
                .post_raw(
                    &format!("/admin/devices/{id}/disable"),
                    "application/json",
                    Some(&bearer(&admin)),
                    b"",
                )
                .0
        } else {
            let r = server
                .http
                .delete(&server.url(&format!("/admin/devices/{id}")))
                .header("Authorization", &bearer(&admin))
                .call()
                .unwrap();
            r.status().as_u16()
        };
        assert!(status == 200 || status == 204, "{action}: {status}");
        assert_eq!(
            server.introspect(live),
            json!({"active": false}),
            "{action}"
        );
        let (s, b) = secret_token(&server, id, secret);
        assert_eq!(
            (s, b["error"].as_str()),
            (401, Some("invalid_client")),
            "{action}"
        );
        let (s, view) = get(&server, &format!("/admin/devices/{id}"), &admin);
        if action == "disable" {
            assert_eq!((s, view["status"].as_str()), (200, Some("disabled")));
        } else {
            assert_eq!(s, 404);
        }
    }
}

#[test]
fn rotation_keeps_the_old_credential_until_the_new_key_proves_itself() {
    // The mechanics of rotation with a software key; attestation has its own tests.
    let server = TestServer::start_with(&["--attestation", "off"]);
    let provision = server.admin_token("devices:provision");
    let admin = server.admin_token("devices:admin");
    let (_, dev) = register(&server, &provision, "HM-ROT", &ek(4));
    let (id, secret) = (
        dev["client_id"].as_str().unwrap().to_owned(),
        dev["factory_secret"].as_str().unwrap().to_owned(),
    );

    // Crash point: a key registered but never used. The factory secret still works, the key is pending.
    let first = DeviceKey::new("k1");
    let (s, b) = rotate(&server, &id, &secret, &first);
    assert_eq!(
        (s, b["status"].as_str(), b["kid"].as_str()),
        (200, Some("pending"), Some("k1")),
        "{b}"
    );
    assert_eq!(
        rotate(&server, &id, &secret, &first).0,
        200,
        "repeating is idempotent"
    );
    assert_eq!(secret_token(&server, &id, &secret).0, 200);
    let (_, view) = get(&server, &format!("/admin/devices/{id}"), &admin);
    assert_eq!(
        (view["credential"].as_str(), view["pending_kid"].as_str()),
        (Some("rotating"), Some("k1"))
    );

    // Crash point: power lost, the device made another key. It replaces the pending one.
    let second = DeviceKey::new("k2");
    assert_eq!(rotate(&server, &id, &secret, &second).0, 200);
    let (s, b) = first.token(&server, &id);
    assert_eq!(
        (s, b["error"].as_str()),
        (401, Some("invalid_client")),
        "a replaced pending key is dead"
    );
    assert_eq!(
        secret_token(&server, &id, &secret).0,
        200,
        "old credential valid before promotion"
    );

    // Proof with the pending key promotes it; the factory secret is erased.
    let (s, b) = second.token(&server, &id);
    assert_eq!(s, 200, "{b}");
    let (s, b) = secret_token(&server, &id, &secret);
    assert_eq!(
        (s, b["error"].as_str()),
        (401, Some("invalid_client")),
        "old credential invalid after promotion"
    );
    assert_eq!(rotate(&server, &id, &secret, &DeviceKey::new("k3")).0, 401);
    let (_, view) = get(&server, &format!("/admin/devices/{id}"), &admin);
    assert_eq!(
        (view["credential"].as_str(), view["key_kid"].as_str()),
        (Some("key"), Some("k2"))
    );
    assert_eq!(
        second.token(&server, &id).0,
        200,
        "the new key keeps working"
    );

    // Only devices rotate; a bad JWK is refused.
    let svc = server.register(json!({"scope": "a"}));
    let (s, b) = rotate(
        &server,
        svc["client_id"].as_str().unwrap(),
        svc["client_secret"].as_str().unwrap(),
        &DeviceKey::new("x"),
    );
    assert_eq!((s, b["error"].as_str()), (400, Some("unauthorized_client")));
    let (s, _) = server.post_raw(
        "/oauth2/device-credentials",
        "application/json",
        Some(&common::basic_header(&id, &secret)),
        br#"{"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}"#,
    );
    assert_eq!(s, 401, "the factory secret no longer authenticates at all");
}

#[test]
fn the_rotation_endpoint_is_in_the_metadata() {
    let server = TestServer::start();
    let (_, meta) = server.get("/.well-known/oauth-authorization-server");
    assert_eq!(
        meta["device_credentials_endpoint"],
        server.url("/oauth2/device-credentials").as_str()
    );
}

#[test]
fn audit_log_is_readable_with_its_scope_and_verify_catches_tampering() {
    let mut server = TestServer::start();
    let provision = server.admin_token("devices:provision");
    let (_, dev) = register(&server, &provision, "HM-AUD", &ek(5));
    let secret = dev["factory_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret_token(&server, "nobody", "wrong").0, 401);

    let (s, _) = get(&server, "/admin/audit", &provision);
    assert_eq!(s, 403);
    let reader = server.admin_token("audit:read");
    let (s, page) = get(&server, "/admin/audit?after=0&limit=1000", &reader);
    assert_eq!(s, 200, "{page}");
    let entries = page["entries"].as_array().unwrap();
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for wanted in ["token.issued", "device.registered", "client.auth_failed"] {
        assert!(events.contains(&wanted), "{wanted} missing from {events:?}");
    }
    assert!(entries
        .iter()
        .all(|e| e["request_id"].is_string() && e["hash"].is_string()));
    assert!(
        !page.to_string().contains(&secret),
        "a secret reached the audit log"
    );
    assert!(
        !page.to_string().contains(&server.admin_secret),
        "a secret reached the audit log"
    );
    let (_, tail) = get(&server, "/admin/audit?after=2&limit=1", &reader);
    assert_eq!(tail["entries"].as_array().unwrap().len(), 1);
    assert_eq!(tail["entries"][0]["seq"], 3);

    assert!(server.terminate().success());
    let verify = |dir: &std::path::Path| {
        Command::new(common::server_bin())
            .args(["audit", "verify", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let out = verify(&server.data_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("audit chain intact:"),
        "{stdout}"
    );

    // Edit entry 2 through the storage layer, as an intruder with disk access would.
    match hallmark_server::backend::database_of(&server.data_dir).unwrap() {
        None => {
            use hallmark_server::store::AuditLog as _;
            let store =
                hallmark_server::store::SledStore::open(&server.data_dir.join("db")).unwrap();
            let mut e = hallmark_server::store::block_on(store.entries(None, 1, 1))
                .unwrap()
                .unwrap()
                .remove(0);
            e.body.event.actor = Some("someone-else".into());
            store
                .overwrite_audit_entry_for_test(2, &serde_json::to_vec(&e).unwrap())
                .unwrap();
            hallmark_server::store::Durability::flush(&store).unwrap();
        }
        Some(db) => {
            // The same kind of edit with SQL: entry 2 of the replica's chain (a compact record:
            // body then hash) gets its outcome bit flipped.
            let url = db.url.expose().to_owned();
            let parts: std::collections::HashMap<&str, &str> = url
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .collect();
            let out = Command::new("psql")
                .args([
                    "-h",
                    parts["host"],
                    "-U",
                    parts["user"],
                    "-d",
                    parts["dbname"],
                ])
                .args(["-qAt", "-c"])
                .arg(
                    "UPDATE audit_entries SET record = \
                     set_byte(record, 0, get_byte(record, 0) # 1) \
                     WHERE seq = 2 AND chain <> 'command'",
                )
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let out = verify(&server.data_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("entry 2"), "{stdout}");
}

#[test]
fn signing_key_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_kid() {
    let mut server = TestServer::start();
    let before = server.admin_token("audit:read");
    let kid_of = |t: &str| -> String {
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };
    let old_kid = kid_of(&before);
    assert!(server.terminate().success());
    let out = Command::new(common::server_bin())
        .args(["keys", "rotate", "--activate-in", "0", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_kid = serde_json::from_slice::<Value>(&out.stdout).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_kid, old_kid);
    server.spawn();

    let after = server.admin_token("audit:read");
    assert_eq!(kid_of(&after), new_kid);
    // The old token still verifies against the published JWKS, by an independent library.
    let (_, jwks) = server.get("/jwks.json");
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );
    for token in [&before, &after] {
        let kid = kid_of(token);
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .unwrap();
        let key =
            jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_audience(&[server.issuer.as_str()]);
        validation.set_issuer(&[server.issuer.as_str()]);
        jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
        assert_eq!(server.introspect(token)["active"], true);
    }
}

#[test]
fn metrics_count_requests_tokens_and_failures() {
    let server = TestServer::start();
    server.admin_token("clients:admin");
    assert_eq!(secret_token(&server, &server.admin_id, "wrong").0, 401);
    let mut r = server.http.get(&server.url("/metrics")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.body_mut().read_to_string().unwrap();
    for wanted in [
        r#"hallmark_tokens_issued_total{grant="client_credentials"} 1"#,
        "hallmark_client_auth_failures_total 1",
        r#"hallmark_http_requests_total{endpoint="/oauth2/token",status="200"} 1"#,
        r#"hallmark_http_requests_total{endpoint="/oauth2/token",status="401"} 1"#,
        "hallmark_audit_queue_depth",
        "hallmark_storage_flush_seconds_bucket",
    ] {
        assert!(text.contains(wanted), "{wanted} missing:\n{text}");
    }
}

#[test]
fn a_station_withdraws_only_its_own_unrotated_registrations() {
    // Rotates with a software key: attestation is off here (see the attestation tests).
    let mut server = TestServer::start_with(&["--attestation", "off"]);
    let provision = server.admin_token("devices:provision");
    let admin_only = server.admin_token("devices:admin");
    let (other_id, other_secret) =
        server.register_secret_client("devices:provision", "client_secret_basic");
    let (_, other) = secret_token(&server, &other_id, &other_secret);
    let other = other["access_token"].as_str().unwrap().to_owned();
    let withdraw = |token: &str, id: &str| {
        server.post_raw(
            &format!("/admin/devices/{id}/withdraw"),
            "application/json",
            Some(&bearer(token)),
            b"",
        )
    };

    let (_, dev) = register(&server, &provision, "HM-W1", &ek(21));
    let (id, secret) = (
        dev["client_id"].as_str().unwrap().to_owned(),
        dev["factory_secret"].as_str().unwrap().to_owned(),
    );
    // Another station cannot see it, and devices:admin alone is not the scope of this route.
    assert_eq!(withdraw(&other, &id).0, 404);
    assert_eq!(withdraw(&admin_only, &id).0, 403);
    assert_eq!(secret_token(&server, &id, &secret).0, 200);
    // Its own station takes it back: the secret stops working and the serial and EK are free.
    assert_eq!(withdraw(&provision, &id).0, 204);
    assert_eq!(withdraw(&provision, &id).0, 404);
    assert_eq!(secret_token(&server, &id, &secret).0, 401);
    let (s, again) = register(&server, &provision, "HM-W1", &ek(21));
    assert_eq!(s, 201, "{again}");
    assert_ne!(again["client_id"], id.as_str());

    // A device that has started rotating is the operator's to delete, not the station's.
    let (_, dev) = register(&server, &provision, "HM-W2", &ek(22));
    let (id2, secret2) = (
        dev["client_id"].as_str().unwrap(),
        dev["factory_secret"].as_str().unwrap(),
    );
    assert_eq!(
        rotate(&server, id2, secret2, &DeviceKey::new("k-w2")).0,
        200
    );
    let (s, body) = withdraw(&provision, id2);
    assert_eq!((s, body["error"].as_str()), (409, Some("not_withdrawable")));
    assert_eq!(
        secret_token(&server, id2, secret2).0,
        200,
        "refusal changed nothing"
    );

    let events: Vec<_> = server
        .audit_entries()
        .into_iter()
        .filter(|e| e.body.event.event == "device.withdrawn")
        .map(|e| (e.body.event.subject.clone(), e.body.event.outcome))
        .collect();
    assert_eq!(
        events,
        vec![
            (Some(id.clone()), Outcome::Success),
            (Some(id2.to_owned()), Outcome::Failure)
        ]
    );
}

//! `POST /admin/clients` over real TLS: RFC 6750 bearer checks (missing, invalid, insufficient
//! scope), RFC 7591 registration responses, refusal of unusable metadata, and clients that work
//! once registered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{now, ClientKey, TestServer};
use serde_json::{json, Value};

fn register_with(
    server: &TestServer,
    authorization: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, ureq::http::HeaderMap, Value) {
    let mut headers: Vec<(&str, &[u8])> = vec![("Content-Type", content_type.as_bytes())];
    if let Some(a) = authorization {
        headers.push(("Authorization", a.as_bytes()));
    }
    let (status, h, text) = server.post_bytes("/admin/clients", &headers, body);
    (
        status,
        h,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn challenge(headers: &ureq::http::HeaderMap) -> String {
    headers
        .get("www-authenticate")
        .expect("a WWW-Authenticate challenge")
        .to_str()
        .unwrap()
        .to_owned()
}

const META: &[u8] = br#"{"client_name": "x", "scope": "a"}"#;

#[test]
fn a_missing_bearer_token_is_401_with_a_bearer_challenge() {
    let server = TestServer::start();
    let basic = common::basic_header(&server.admin_id, &server.admin_secret);
    for auth in [None, Some(basic.as_str()), Some("Bearer"), Some("Bearer ")] {
        let (status, headers, body) = register_with(&server, auth, "application/json", META);
        assert_eq!(status, 401, "{auth:?}: {body}");
        let c = challenge(&headers);
        assert!(c.starts_with("Bearer"), "{auth:?}: {c}");
        // RFC 6750 §3.1: with no credentials the challenge carries no error code.
        assert!(!c.contains("error="), "{auth:?}: {c}");
        assert!(body.get("client_id").is_none());
    }
}

#[test]
fn an_invalid_bearer_token_is_401_invalid_token() {
    let server = TestServer::start();
    let good = server.admin_token("clients:admin");
    let parts: Vec<&str> = good.split('.').collect();
    let mut claims = common::jwt_parts(&good).1;
    claims["scope"] = json!("clients:admin devices:admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        common::b64(claims.to_string().as_bytes()),
        parts[2]
    );
    let forged = ClientKey::ed25519().jwt(&common::jwt_parts(&good).0, &common::jwt_parts(&good).1);
    let elsewhere = TestServer::start().admin_token("clients:admin");
    for (what, token) in [
        ("garbage", "garbage".to_owned()),
        ("three parts", "a.b.c".to_owned()),
        ("tampered", tampered),
        ("another key", forged),
        ("another server", elsewhere),
    ] {
        let (status, headers, body) = register_with(
            &server,
            Some(&format!("Bearer {token}")),
            "application/json",
            META,
        );
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"], "invalid_token", "{what}");
        let c = challenge(&headers);
        assert!(
            c.starts_with("Bearer") && c.contains("error=\"invalid_token\""),
            "{what}: {c}"
        );
    }
    // Control: the genuine token works.
    assert_eq!(
        register_with(
            &server,
            Some(&format!("Bearer {good}")),
            "application/json",
            META
        )
        .0,
        201
    );
}

#[test]
fn a_token_without_clients_admin_is_403_insufficient_scope() {
    let server = TestServer::start();
    let narrow = server.admin_token("devices:provision audit:read");
    let (status, headers, body) = register_with(
        &server,
        Some(&format!("Bearer {narrow}")),
        "application/json",
        META,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "insufficient_scope");
    let c = challenge(&headers);
    assert!(
        c.contains("error=\"insufficient_scope\"") && c.contains("scope=\"clients:admin\""),
        "{c}"
    );

    // An ordinary client's token, whatever else it holds, is no better.
    let (id, secret) = server.register_secret_client("telemetry", "client_secret_basic");
    let (_, _, t) = server.token_basic(&id, &secret, None);
    let token = t["access_token"].as_str().unwrap();
    let (status, _, body) = register_with(
        &server,
        Some(&format!("Bearer {token}")),
        "application/json",
        META,
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
}

#[test]
fn registration_answers_as_rfc7591_says_with_the_secret_once() {
    let server = TestServer::start();
    let token = server.admin_token("clients:admin");
    let before = now();
    let (status, headers, info) = register_with(
        &server,
        Some(&format!("Bearer {token}")),
        "application/json",
        json!({"client_name": "Line 3 station", "scope": "devices:provision telemetry"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 201, "{info}");
    assert_eq!(
        headers["cache-control"], "no-store",
        "the secret must not be cached"
    );
    let id = info["client_id"].as_str().unwrap();
    assert!(id.len() >= 16, "{id}");
    let secret = info["client_secret"].as_str().unwrap();
    // 256 random bits, base64url without padding.
    assert_eq!(common::unb64(secret).len(), 32, "{secret}");
    assert_eq!(info["client_secret_expires_at"], 0);
    let issued = info["client_id_issued_at"].as_u64().unwrap();
    assert!((before..=now()).contains(&issued));
    assert_eq!(info["client_name"], "Line 3 station");
    assert_eq!(info["grant_types"], json!(["client_credentials"]));
    assert_eq!(info["scope"], "devices:provision telemetry");
    assert_eq!(info["token_endpoint_auth_method"], "client_secret_basic");
    assert!(info.get("jwks").is_none());

    // Each registration is a new client with a new secret.
    let again = server.register(json!({"client_name": "Line 3 station", "scope": "telemetry"}));
    assert_ne!(again["client_id"], info["client_id"]);
    assert_ne!(again["client_secret"], info["client_secret"]);

    // The new client gets tokens with exactly its scopes.
    let (status, _, body) = server.token_basic(id, secret, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "devices:provision telemetry");
    let (status, _, body) = server.token_basic(id, secret, Some("clients:admin"));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
}

#[test]
fn a_key_client_registration_echoes_public_keys_and_gets_no_secret() {
    let server = TestServer::start();
    let (ec, ed) = (ClientKey::es256(), ClientKey::ed25519());
    let mut ec_jwk = ec.public_jwk(Some("ec-1"));
    ec_jwk["use"] = json!("sig");
    ec_jwk["alg"] = json!("ES256");
    let info = server.register(json!({
        "client_name": "device 42",
        "scope": "telemetry",
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [ec_jwk, ed.public_jwk(Some("ed-1"))]},
        "software_id": "ignored per RFC 7591 §2",
    }));
    assert_eq!(info["token_endpoint_auth_method"], "private_key_jwt");
    assert!(info.get("client_secret").is_none(), "{info}");
    assert!(info.get("client_secret_expires_at").is_none(), "{info}");
    let keys = info["jwks"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["kid"], "ec-1");
    assert_eq!(keys[0]["x"], ec.public_jwk(None)["x"]);
    assert_eq!(keys[0]["y"], ec.public_jwk(None)["y"]);
    assert_eq!(keys[1]["kid"], "ed-1");
    assert_eq!(keys[1]["alg"], "EdDSA");
    // Both keys authenticate it.
    let id = info["client_id"].as_str().unwrap();
    for (key, kid) in [(&ec, "ec-1"), (&ed, "ed-1")] {
        let (status, _, body) =
            server.token_assertion(&key.assertion(Some(kid), &server.assertion_claims(id)), &[]);
        assert_eq!(status, 200, "{kid}: {body}");
    }
}

#[test]
fn a_public_device_client_registers_without_a_secret_but_gets_no_client_credentials_token() {
    let server = TestServer::start();
    let info = server.register(json!({
        "token_endpoint_auth_method": "none",
        "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"],
        "scope": "telemetry",
    }));
    assert!(info.get("client_secret").is_none(), "{info}");
    assert_eq!(info["token_endpoint_auth_method"], "none");
    let id = info["client_id"].as_str().unwrap();
    let (status, body) = server.post_form(
        "/oauth2/token",
        None,
        &[("grant_type", "client_credentials"), ("client_id", id)],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
}

#[test]
fn a_secret_client_without_client_credentials_is_unauthorized_for_that_grant() {
    let server = TestServer::start();
    let info = server.register(json!({
        "grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "scope": "a",
    }));
    let (id, secret) = (
        info["client_id"].as_str().unwrap(),
        info["client_secret"].as_str().unwrap(),
    );
    let (status, _, body) = server.token_basic(id, secret, None);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
}

#[test]
fn unusable_metadata_is_invalid_client_metadata() {
    let server = TestServer::start();
    let token = server.admin_token("clients:admin");
    let bearer = format!("Bearer {token}");
    let ec = ClientKey::es256().public_jwk(Some("k"));
    let ed = ClientKey::ed25519().public_jwk(Some("k"));
    let with = |jwk: &Value, patch: Value| {
        let mut j = jwk.clone();
        for (k, v) in patch.as_object().unwrap() {
            j[k] = v.clone();
        }
        json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [j]}})
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "unsupported auth method",
            json!({"token_endpoint_auth_method": "client_secret_jwt"}),
        ),
        (
            "unknown auth method",
            json!({"token_endpoint_auth_method": "tls_client_auth"}),
        ),
        (
            "public client with client_credentials",
            json!({"token_endpoint_auth_method": "none"}),
        ),
        (
            "public client with client_credentials, explicit",
            json!({"token_endpoint_auth_method": "none", "grant_types": ["client_credentials"]}),
        ),
        (
            "jwks with a private EC d",
            with(&ec, json!({"d": common::b64(&[1u8; 32])})),
        ),
        (
            "jwks with a private OKP d",
            with(&ed, json!({"d": common::b64(&[1u8; 32])})),
        ),
        (
            "symmetric key",
            json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
        ),
        (
            "RSA key",
            json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}}),
        ),
        (
            "EC key on another curve",
            with(&ec, json!({"crv": "P-384"})),
        ),
        (
            "EC x of the wrong length",
            with(&ec, json!({"x": common::b64(&[1u8; 31])})),
        ),
        ("EC without y", {
            let mut j = ec.clone();
            j.as_object_mut().unwrap().remove("y");
            json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [j]}})
        }),
        ("Ed key declaring ES256", with(&ed, json!({"alg": "ES256"}))),
        ("encryption key", with(&ec, json!({"use": "enc"}))),
        (
            "private_key_jwt without jwks",
            json!({"token_endpoint_auth_method": "private_key_jwt"}),
        ),
        (
            "empty jwks",
            json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": []}}),
        ),
        (
            "jwks not a set",
            json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": [ec]}),
        ),
        (
            "too many keys",
            json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": vec![ec.clone(); 9]}}),
        ),
        ("jwks for a secret client", json!({"jwks": {"keys": [ec]}})),
        (
            "jwks_uri",
            json!({"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "https://example.com/jwks"}),
        ),
        ("implicit grant", json!({"grant_types": ["implicit"]})),
        (
            "authorization_code grant",
            json!({"grant_types": ["authorization_code"]}),
        ),
        ("no grant types", json!({"grant_types": []})),
        ("malformed scope", json!({"scope": "a  b"})),
        ("scope with a quote", json!({"scope": "a\"b"})),
        (
            "client_name too long",
            json!({"client_name": "n".repeat(201)}),
        ),
        ("scope of the wrong type", json!({"scope": ["a"]})),
        ("not an object", json!([1, 2])),
    ];
    for (what, meta) in cases {
        let (status, headers, body) = register_with(
            &server,
            Some(&bearer),
            "application/json",
            meta.to_string().as_bytes(),
        );
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_client_metadata", "{what}: {body}");
        assert_eq!(headers["cache-control"], "no-store");
    }
    // Not JSON, or not declared as JSON.
    for (ct, body) in [
        ("application/json", b"{not json".as_slice()),
        ("application/x-www-form-urlencoded", b"scope=a"),
    ] {
        let (status, _, resp) = register_with(&server, Some(&bearer), ct, body);
        assert_eq!(status, 400, "{ct}: {resp}");
        assert!(resp["error"].is_string(), "{resp}");
    }
    // Too large.
    let big = json!({"client_name": "x", "padding": "p".repeat(70 * 1024)}).to_string();
    let (status, _, resp) =
        register_with(&server, Some(&bearer), "application/json", big.as_bytes());
    assert_eq!(status, 413, "{resp}");
    // Control: the same bearer registers a sound client.
    assert_eq!(
        register_with(&server, Some(&bearer), "application/json", META).0,
        201
    );
}

//! Introspection (RFC 7662) and revocation (RFC 7009) over real TLS: both need client
//! authentication; a revoked, tampered, foreign, expired or otherwise invalid token is inactive
//! and says nothing more; a client may revoke only its own tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{b64, jwt_parts, now, ClientKey, TestServer};
use serde_json::{json, Value};

fn introspect(server: &TestServer, caller: (&str, &str), token: &str) -> Value {
    let (status, headers, body) =
        server.post_form_full("/oauth2/introspect", Some(caller), &[("token", token)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    body
}

fn revoke(server: &TestServer, caller: (&str, &str), token: &str) -> (u16, Value) {
    server.post_form("/oauth2/revoke", Some(caller), &[("token", token)])
}

fn token_for(server: &TestServer, id: &str, secret: &str, scope: Option<&str>) -> String {
    let (status, _, body) = server.token_basic(id, secret, scope);
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The server's own signing key, read from its data directory, to forge tokens that pass the
/// signature check and so reach every other check.
struct ServerKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
}

impl ServerKey {
    fn load(server: &TestServer) -> Self {
        let file = server.signing_keys();
        let stored = &file["keys"][0];
        let seed: [u8; 32] = common::unb64(stored["seed"].as_str().unwrap())
            .try_into()
            .unwrap();
        ServerKey {
            kid: stored["kid"].as_str().unwrap().to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        ClientKey::Ed25519(self.key.clone()).jwt(header, claims)
    }

    fn header(&self) -> Value {
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid})
    }
}

fn inactive(server: &TestServer, token: &str, what: &str) {
    let body = introspect(server, (&server.admin_id, &server.admin_secret), token);
    assert_eq!(body, json!({"active": false}), "{what}");
}

#[test]
fn introspection_requires_client_authentication() {
    let server = TestServer::start();
    let token = server.admin_token("audit:read");
    for (what, caller) in [
        ("no credentials", None),
        ("wrong secret", Some((server.admin_id.as_str(), "wrong"))),
        (
            "unknown client",
            Some(("nobody", server.admin_secret.as_str())),
        ),
    ] {
        let (status, headers, body) =
            server.post_form_full("/oauth2/introspect", caller, &[("token", &token)]);
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{what}: {body}"
        );
        assert!(headers.get("www-authenticate").is_some(), "{what}");
        assert!(
            body.get("active").is_none(),
            "{what}: nothing about the token leaks"
        );
    }
    // A bearer token is not client authentication.
    let (status, _, text) = server.post_bytes(
        "/oauth2/introspect",
        &[
            ("Authorization", format!("Bearer {token}").as_bytes()),
            ("Content-Type", b"application/x-www-form-urlencoded"),
        ],
        format!("token={token}").as_bytes(),
    );
    assert_eq!(status, 401, "{text}");
    // Missing token parameter.
    let (status, body) = server.post_form(
        "/oauth2/introspect",
        Some((&server.admin_id, &server.admin_secret)),
        &[],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
}

#[test]
fn an_active_token_introspects_with_its_claims() {
    let server = TestServer::start();
    let (id, secret) = server.register_secret_client("a b", "client_secret_basic");
    let token = token_for(&server, &id, &secret, Some("b"));
    let (_, claims) = jwt_parts(&token);
    // By its own client, by another confidential client, and by a private_key_jwt client.
    let key = ClientKey::es256();
    let jwt_client = server.register_jwt_client("x", &[(&key, Some("k"))]);
    let by_assertion = {
        let assertion = key.assertion(Some("k"), &server.assertion_claims(&jwt_client));
        let (status, _, body) = server.post_form_full(
            "/oauth2/introspect",
            None,
            &[
                ("token", &token),
                ("client_assertion_type", common::JWT_BEARER),
                ("client_assertion", &assertion),
            ],
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    for body in [
        introspect(&server, (&id, &secret), &token),
        introspect(&server, (&server.admin_id, &server.admin_secret), &token),
        by_assertion,
    ] {
        assert_eq!(body["active"], true, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        for claim in [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "nbf",
            "jti",
            "client_id",
            "scope",
        ] {
            assert_eq!(body[claim], claims[claim], "{claim}");
        }
        assert_eq!(body["scope"], "b");
        assert_eq!(body["client_id"], id.as_str());
    }
    // token_type_hint is only a hint (RFC 7662 §2.1).
    let (status, body) = server.post_form(
        "/oauth2/introspect",
        Some((&id, &secret)),
        &[("token", &token), ("token_type_hint", "refresh_token")],
    );
    assert_eq!(
        (status, body["active"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
}

#[test]
fn a_revoked_token_introspects_as_exactly_active_false_even_after_a_crash() {
    let mut server = TestServer::start();
    let (id, secret) = server.register_secret_client("clients:admin", "client_secret_basic");
    let token = token_for(&server, &id, &secret, None);
    let other = token_for(&server, &id, &secret, None);
    assert_eq!(introspect(&server, (&id, &secret), &token)["active"], true);

    let (status, headers, body) = server.post_form_full(
        "/oauth2/revoke",
        Some((&id, &secret)),
        &[("token", &token), ("token_type_hint", "access_token")],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    inactive(&server, &token, "revoked");
    assert_eq!(
        introspect(&server, (&id, &secret), &token),
        json!({"active": false})
    );
    // Revoking is idempotent, and touches only that token.
    assert_eq!(revoke(&server, (&id, &secret), &token).0, 200);
    assert_eq!(introspect(&server, (&id, &secret), &other)["active"], true);

    // The revoked token no longer opens the admin API; its sibling does.
    let register = |t: &str| {
        server
            .post_raw(
                "/admin/clients",
                "application/json",
                Some(&format!("Bearer {t}")),
                b"{\"scope\":\"z\"}",
            )
            .0
    };
    assert_eq!(register(&token), 401);
    assert_eq!(register(&other), 201);

    // Acknowledged means durable: kill -9, restart, still revoked.
    server.kill();
    server.spawn();
    inactive(&server, &token, "revoked, after a crash");
    assert_eq!(introspect(&server, (&id, &secret), &other)["active"], true);
}

#[test]
fn a_client_cannot_revoke_another_clients_token() {
    let server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("s", "client_secret_basic");
    let (b, b_secret) = server.register_secret_client("s", "client_secret_basic");
    let token = token_for(&server, &a, &a_secret, None);
    let (status, body) = revoke(&server, (&b, &b_secret), &token);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unauthorized_client");
    assert_eq!(
        introspect(&server, (&a, &a_secret), &token)["active"],
        true,
        "the token survives"
    );
    // The admin client has no say over other clients' tokens either.
    let (status, _) = revoke(&server, (&server.admin_id, &server.admin_secret), &token);
    assert_eq!(status, 400);
    assert_eq!(introspect(&server, (&a, &a_secret), &token)["active"], true);
    // Its owner can.
    assert_eq!(revoke(&server, (&a, &a_secret), &token).0, 200);
    assert_eq!(
        introspect(&server, (&a, &a_secret), &token),
        json!({"active": false})
    );
}

#[test]
fn revocation_needs_client_authentication_and_accepts_garbage() {
    let server = TestServer::start();
    let admin = (server.admin_id.as_str(), server.admin_secret.as_str());
    let token = server.admin_token("audit:read");
    // Unauthenticated revocation is refused and does nothing.
    for caller in [None, Some((server.admin_id.as_str(), "wrong"))] {
        let (status, body) = server.post_form("/oauth2/revoke", caller, &[("token", &token)]);
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{body}"
        );
    }
    // A confidential client naming itself without its secret is no public client.
    let (status, body) = server.post_form(
        "/oauth2/revoke",
        None,
        &[("client_id", &server.admin_id), ("token", &token)],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    assert_eq!(introspect(&server, admin, &token)["active"], true);
    // RFC 7009 §2.2: invalid tokens get 200, since there is nothing to revoke.
    for garbage in [
        "garbage",
        "a.b.c",
        "e30.e30.e30",
        &"x".repeat(10_000),
        "ünïcode",
    ] {
        let (status, body) = revoke(&server, admin, garbage);
        assert_eq!(status, 200, "{garbage:.20}: {body}");
    }
    // An unknown hint is ignored and every type searched (RFC 7009 §2.2.1): the token is
    // revoked all the same. A missing token is invalid_request.
    let (status, body) = server.post_form(
        "/oauth2/revoke",
        Some(admin),
        &[("token", &token), ("token_type_hint", "id_token")],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.introspect(&token)["active"], false);
    let (status, body) = server.post_form("/oauth2/revoke", Some(admin), &[]);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
}

#[test]
fn a_private_key_jwt_client_revokes_its_own_token() {
    let server = TestServer::start();
    let key = ClientKey::ed25519();
    let id = server.register_jwt_client("x", &[(&key, None)]);
    let assertion = |s: &TestServer| key.assertion(None, &s.assertion_claims(&id));
    let (status, _, body) = server.token_assertion(&assertion(&server), &[]);
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let a = assertion(&server);
    let (status, _, body) = server.post_form_full(
        "/oauth2/revoke",
        None,
        &[
            ("token", &token),
            ("client_assertion_type", common::JWT_BEARER),
            ("client_assertion", &a),
        ],
    );
    assert_eq!(status, 200, "{body}");
    inactive(&server, &token, "revoked by its key client");
}

#[test]
fn tampered_and_foreign_tokens_are_inactive() {
    let server = TestServer::start();
    let token = server.admin_token("audit:read");
    let parts: Vec<&str> = token.split('.').collect();
    let (header, claims) = jwt_parts(&token);

    let mut escalated = claims.clone();
    escalated["scope"] = json!("audit:read clients:admin");
    inactive(
        &server,
        &format!(
            "{}.{}.{}",
            parts[0],
            b64(escalated.to_string().as_bytes()),
            parts[2]
        ),
        "tampered payload",
    );
    let mut sig = common::unb64(parts[2]);
    sig[0] ^= 0x80;
    inactive(
        &server,
        &format!("{}.{}.{}", parts[0], parts[1], b64(&sig)),
        "tampered signature",
    );
    inactive(
        &server,
        &format!("{}.{}.", parts[0], parts[1]),
        "no signature",
    );

    // Signed by a key the server never published, under its own kid or another.
    let stranger = ClientKey::ed25519();
    inactive(
        &server,
        &stranger.jwt(&header, &claims),
        "unknown key, server's kid",
    );
    let mut other_kid = header.clone();
    other_kid["kid"] = json!("not-a-published-kid");
    inactive(
        &server,
        &stranger.jwt(&other_kid, &claims),
        "unknown key and kid",
    );
    let mut no_kid = header.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    inactive(&server, &stranger.jwt(&no_kid, &claims), "no kid");
    // alg none, and an HMAC keyed with the server's public key.
    let none = json!({"alg": "none", "typ": "at+jwt", "kid": header["kid"]});
    inactive(
        &server,
        &format!("{}.{}.", b64(none.to_string().as_bytes()), parts[1]),
        "alg none",
    );
    let public = server.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
    let hs = json!({"alg": "HS256", "typ": "at+jwt", "kid": header["kid"]});
    let input = format!("{}.{}", b64(hs.to_string().as_bytes()), parts[1]);
    for secret in [public.as_bytes().to_vec(), common::unb64(&public)] {
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        inactive(
            &server,
            &format!("{input}.{}", b64(mac.as_ref())),
            "HS256 with the public key",
        );
    }
    // A token from another Hallmark server is not ours.
    let elsewhere = TestServer::start();
    inactive(
        &server,
        &elsewhere.admin_token("audit:read"),
        "another server's token",
    );
    for garbage in ["garbage", "a.b.c", &"x".repeat(10_000)] {
        inactive(&server, garbage, "garbage");
    }
    // The original is fine.
    assert_eq!(
        introspect(&server, (&server.admin_id, &server.admin_secret), &token)["active"],
        true
    );
}

#[test]
fn tokens_signed_with_the_real_key_still_need_valid_claims() {
    let server = TestServer::start();
    let key = ServerKey::load(&server);
    let now = now();
    let good = json!({
        "iss": server.issuer, "sub": server.admin_id, "aud": server.issuer,
        "exp": now + 60, "iat": now, "nbf": now, "jti": "forged-1",
        "client_id": server.admin_id, "scope": "audit:read",
    });
    // Control: the forgery technique itself produces an active token.
    let body = introspect(
        &server,
        (&server.admin_id, &server.admin_secret),
        &key.sign(&key.header(), &good),
    );
    assert_eq!(body["active"], true, "{body}");

    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "typ JWT",
            json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid}),
            good.clone(),
        ),
        (
            "no typ",
            json!({"alg": "EdDSA", "kid": key.kid}),
            good.clone(),
        ),
        (
            "alg ES256 in header",
            json!({"alg": "ES256", "typ": "at+jwt", "kid": key.kid}),
            good.clone(),
        ),
        (
            "wrong iss",
            key.header(),
            with(json!({"iss": "https://evil.example"})),
        ),
        (
            "wrong aud",
            key.header(),
            with(json!({"aud": "https://evil.example"})),
        ),
        (
            "expired beyond skew",
            key.header(),
            with(json!({"exp": now - 31 - 5, "iat": now - 100, "nbf": now - 100})),
        ),
        (
            "nbf in the future",
            key.header(),
            with(json!({"nbf": now + 120})),
        ),
        (
            "iat in the future",
            key.header(),
            with(json!({"iat": now + 120})),
        ),
        (
            "client deleted or unknown",
            key.header(),
            with(json!({"client_id": "ghost"})),
        ),
        (
            "claims missing",
            key.header(),
            json!({"iss": server.issuer}),
        ),
        (
            "exp as a string",
            key.header(),
            with(json!({"exp": "soon"})),
        ),
    ];
    for (what, header, claims) in cases {
        inactive(&server, &key.sign(&header, &claims), what);
    }
}

#[test]
fn an_expired_token_is_inactive() {
    // 3 s: long enough to be seen active first on a loaded machine, short enough to wait out.
    let server = TestServer::start_with(&["--access-token-ttl", "3", "--clock-skew", "0"]);
    let token = server.admin_token("audit:read");
    let exp = jwt_parts(&token).1["exp"].as_u64().unwrap();
    assert_eq!(
        introspect(&server, (&server.admin_id, &server.admin_secret), &token)["active"],
        true
    );
    while now() <= exp {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    inactive(&server, &token, "expired");
    // And it no longer opens the admin API.
    let (status, _) = server.post_raw(
        "/admin/clients",
        "application/json",
        Some(&format!("Bearer {token}")),
        b"{}",
    );
    assert_eq!(status, 401);
}

//! The token endpoint and discovery over real TLS: RFC 8414 metadata, the JWKS, health probes,
//! client_credentials with client secrets, RFC 9068 access tokens checked by an independent JWT
//! library, scopes, and `invalid_client` for bad secrets (malformed requests: token_errors.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{jwt_parts, now, TestServer};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Discovery and probes
// ---------------------------------------------------------------------------------------------

#[test]
fn metadata_has_the_rfc8414_fields_and_its_urls_work() {
    let server = TestServer::start();
    let (status, headers, text) = server.get_full("/.well-known/oauth-authorization-server");
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let meta: Value = serde_json::from_str(&text).unwrap();
    let issuer = server.issuer.as_str();
    // RFC 8414 §3.3: the issuer in the metadata is exactly the one the client was configured with.
    assert_eq!(meta["issuer"], issuer);
    assert_eq!(meta["token_endpoint"], format!("{issuer}/oauth2/token"));
    assert_eq!(meta["jwks_uri"], format!("{issuer}/jwks.json"));
    assert_eq!(
        meta["introspection_endpoint"],
        format!("{issuer}/oauth2/introspect")
    );
    assert_eq!(
        meta["revocation_endpoint"],
        format!("{issuer}/oauth2/revoke")
    );
    let strings = |field: &str| -> Vec<String> {
        meta[field]
            .as_array()
            .unwrap_or_else(|| panic!("{field} is an array: {meta}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(strings("grant_types_supported").contains(&"client_credentials".to_owned()));
    for field in [
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
    ] {
        let methods = strings(field);
        for m in [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ] {
            assert!(methods.contains(&m.to_owned()), "{field} lacks {m}");
        }
        // Public device clients may use the token endpoint (RFC 8628) and revoke their own
        // tokens (RFC 7009 §2.1), never introspect.
        assert_eq!(
            methods.contains(&"none".to_owned()),
            field != "introspection_endpoint_auth_methods_supported",
            "{field}: `none`"
        );
    }
    // RFC 8414 §2: "none" MUST NOT be used in *_auth_signing_alg_values_supported.
    let mut algs = strings("token_endpoint_auth_signing_alg_values_supported");
    algs.sort();
    assert_eq!(algs, ["ES256", "EdDSA"]);

    // Each advertised endpoint exists: the JWKS answers, the POST endpoints answer with OAuth
    // errors rather than 404.
    let jwks_path = meta["jwks_uri"]
        .as_str()
        .unwrap()
        .strip_prefix(issuer)
        .unwrap();
    assert_eq!(server.get(jwks_path).0, 200);
    for field in [
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
    ] {
        let path = meta[field].as_str().unwrap().strip_prefix(issuer).unwrap();
        let (status, body) = server.post_form(
            path,
            None,
            &[("token", "x"), ("grant_type", "client_credentials")],
        );
        assert_eq!(status, 401, "{field}: {body}");
        assert_eq!(body["error"], "invalid_client", "{field}");
    }
}

#[test]
fn jwks_publishes_public_ed25519_keys_only() {
    let server = TestServer::start();
    let (status, headers, text) = server.get_full("/jwks.json");
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/jwk-set+json");
    let jwks: Value = serde_json::from_str(&text).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        assert_eq!(key["kty"], "OKP", "{key}");
        assert_eq!(key["crv"], "Ed25519", "{key}");
        assert_eq!(key["alg"], "EdDSA", "{key}");
        assert_eq!(common::unb64(key["x"].as_str().unwrap()).len(), 32, "{key}");
        assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()), "{key}");
        for private in ["d", "p", "q", "k", "seed"] {
            assert!(key.get(private).is_none(), "JWKS leaks {private}: {key}");
        }
    }
    // The private seed in the data directory never appears in what is published.
    let key_file = server.signing_keys();
    for stored in key_file["keys"].as_array().unwrap() {
        assert!(!text.contains(stored["seed"].as_str().unwrap()));
    }
}

#[test]
fn health_and_readiness_probes_answer_and_unknown_routes_are_json_404() {
    let server = TestServer::start();
    let (status, _, body) = server.get_full("/healthz");
    assert_eq!(status, 200);
    assert!(body.contains("ok"));
    let (status, _, body) = server.get_full("/readyz");
    assert_eq!(status, 200);
    assert!(body.contains("ready"));
    let (status, body) = server.get("/no/such/route");
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    // A GET on a POST-only endpoint is refused, not served.
    let (status, _, _) = server.get_full("/oauth2/token");
    assert_eq!(status, 405);
}

// ---------------------------------------------------------------------------------------------
// Successful client_credentials
// ---------------------------------------------------------------------------------------------

#[test]
fn client_secret_basic_gets_an_rfc9068_access_token() {
    let server = TestServer::start();
    let (id, secret) =
        server.register_secret_client("sensors:read sensors:write", "client_secret_basic");
    let before = now();
    let (status, headers, body) = server.token_basic(&id, &secret, Some("sensors:read"));
    let after = now();
    assert_eq!(status, 200, "{body}");
    // RFC 6749 §5.1.
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300, "default lifetime is 5 minutes");
    assert_eq!(body["scope"], "sensors:read");
    assert!(
        body.get("refresh_token").is_none(),
        "RFC 6749 §4.4.3: no refresh token"
    );

    let token = body["access_token"].as_str().unwrap();
    let (header, claims) = jwt_parts(token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let kid = header["kid"].as_str().unwrap();
    assert!(
        server.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid),
        "kid {kid} is published"
    );
    assert_eq!(claims["iss"], server.issuer.as_str());
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["aud"], server.issuer.as_str());
    assert_eq!(claims["scope"], "sensors:read");
    let iat = claims["iat"].as_u64().unwrap();
    assert!((before..=after).contains(&iat), "iat {iat} is now");
    assert_eq!(claims["nbf"].as_u64().unwrap(), iat);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 300);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    for secretish in ["client_secret", "secret", "password"] {
        assert!(claims.get(secretish).is_none());
    }
    assert!(!token.contains(&secret));

    // Every token has its own jti.
    let (_, _, again) = server.token_basic(&id, &secret, Some("sensors:read"));
    let (_, claims2) = jwt_parts(again["access_token"].as_str().unwrap());
    assert_ne!(claims["jti"], claims2["jti"]);
}

#[test]
fn client_secret_post_gets_a_token() {
    let server = TestServer::start();
    let (id, secret) = server.register_secret_client("telemetry", "client_secret_post");
    let (status, headers, body) = server.post_form_full(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let (_, claims) = jwt_parts(body["access_token"].as_str().unwrap());
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["scope"], "telemetry");

    // The wrong secret in the body is invalid_client too.
    let (status, _, body) = server.post_form_full(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", "nope"),
        ],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[test]
fn basic_credentials_are_form_urldecoded() {
    // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64. Encoding every byte,
    // even those that need none, must still authenticate; so must the plain form.
    let server = TestServer::start();
    let encode_all = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    let b64 = |s: String| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    for header in [
        format!(
            "Basic {}",
            b64(format!(
                "{}:{}",
                encode_all(&server.admin_id),
                encode_all(&server.admin_secret)
            ))
        ),
        format!(
            "Basic {}",
            b64(format!("{}:{}", server.admin_id, server.admin_secret))
        ),
        format!(
            "basic {}",
            b64(format!("{}:{}", server.admin_id, server.admin_secret))
        ),
    ] {
        let (status, _, text) = server.post_bytes(
            "/oauth2/token",
            &[
                ("Authorization", header.as_bytes()),
                ("Content-Type", b"application/x-www-form-urlencoded"),
            ],
            b"grant_type=client_credentials&scope=audit%3Aread",
        );
        assert_eq!(status, 200, "{header}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["scope"], "audit:read");
    }
}

#[test]
fn access_token_ttl_flag_is_honoured() {
    let server = TestServer::start_with(&["--access-token-ttl", "42"]);
    let (status, _, body) =
        server.token_basic(&server.admin_id, &server.admin_secret, Some("audit:read"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 42);
    let (_, claims) = jwt_parts(body["access_token"].as_str().unwrap());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        42
    );
}

#[test]
fn an_independent_jwt_library_verifies_tokens_against_the_jwks() {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

    let server = TestServer::start();
    let (id, secret) = server.register_secret_client("a b", "client_secret_basic");
    let (_, _, body) = server.token_basic(&id, &secret, None);
    let token = body["access_token"].as_str().unwrap();

    let jwks: JwkSet = serde_json::from_value(server.jwks()).unwrap();
    let header = decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid in JWKS");

    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[&server.issuer]);
    validation.set_audience(&[&server.issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    validation.validate_nbf = true;
    validation.leeway = 0;

    // Two ways to build the key: from the JWK, and from the raw x bytes (what from_ed_der takes
    // with ring underneath).
    let from_jwk = DecodingKey::from_jwk(jwk).unwrap();
    let x = match &jwk.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => common::unb64(&p.x),
        other => panic!("not an OKP key: {other:?}"),
    };
    let from_raw = DecodingKey::from_ed_der(&x);
    for key in [&from_jwk, &from_raw] {
        let data = decode::<Value>(token, key, &validation).expect("independent verification");
        assert_eq!(data.claims["sub"], id.as_str());
        assert_eq!(data.claims["scope"], "a b");
    }

    // The same verifier rejects what it should, so the success above means something.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&common::unb64(parts[1])).unwrap();
    claims["scope"] = json!("a b admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        common::b64(claims.to_string().as_bytes()),
        parts[2]
    );
    assert!(
        decode::<Value>(&tampered, &from_jwk, &validation).is_err(),
        "tampered payload"
    );
    let mut wrong_aud = validation.clone();
    wrong_aud.set_audience(&["https://other.example"]);
    assert!(
        decode::<Value>(token, &from_jwk, &wrong_aud).is_err(),
        "wrong audience"
    );
    let mut wrong_iss = validation.clone();
    wrong_iss.set_issuer(&["https://other.example"]);
    assert!(
        decode::<Value>(token, &from_jwk, &wrong_iss).is_err(),
        "wrong issuer"
    );
    let other_key = DecodingKey::from_ed_der(&common::ClientKey::ed25519().public_bytes());
    assert!(
        decode::<Value>(token, &other_key, &validation).is_err(),
        "another key"
    );
}

#[test]
fn tokens_from_a_short_ttl_expire_for_the_independent_verifier() {
    use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};

    let server = TestServer::start_with(&["--access-token-ttl", "1"]);
    let (_, _, body) =
        server.token_basic(&server.admin_id, &server.admin_secret, Some("audit:read"));
    let token = body["access_token"].as_str().unwrap();
    let jwks: JwkSet = serde_json::from_value(server.jwks()).unwrap();
    let key = DecodingKey::from_jwk(
        jwks.find(&decode_header(token).unwrap().kid.unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[&server.issuer]);
    validation.leeway = 0;
    let (_, claims) = jwt_parts(token);
    assert_eq!(
        claims["exp"].as_u64().unwrap(),
        claims["iat"].as_u64().unwrap() + 1
    );
    // jsonwebtoken treats exp < now as expired; wait until that is certain.
    while now() <= claims["exp"].as_u64().unwrap() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let err = decode::<Value>(token, &key, &validation).unwrap_err();
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
    );
}

// ---------------------------------------------------------------------------------------------
// Scope
// ---------------------------------------------------------------------------------------------

#[test]
fn absent_scope_grants_the_registered_scopes() {
    let server = TestServer::start();
    let (id, secret) = server.register_secret_client("a b c", "client_secret_basic");
    let (status, _, body) = server.token_basic(&id, &secret, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "a b c");
    assert_eq!(
        jwt_parts(body["access_token"].as_str().unwrap()).1["scope"],
        "a b c"
    );
}

#[test]
fn a_subset_of_scopes_is_granted_and_escalation_is_invalid_scope() {
    let server = TestServer::start();
    let (id, secret) = server.register_secret_client("a b", "client_secret_basic");
    let (status, _, body) = server.token_basic(&id, &secret, Some("b"));
    assert_eq!((status, body["scope"].as_str()), (200, Some("b")));

    for escalation in ["a c", "clients:admin", "A", "a b devices:admin"] {
        let (status, headers, body) = server.token_basic(&id, &secret, Some(escalation));
        assert_eq!(status, 400, "{escalation}: {body}");
        assert_eq!(body["error"], "invalid_scope", "{escalation}");
        assert_eq!(headers["cache-control"], "no-store");
    }
    // Malformed scope strings (RFC 6749 §3.3) are refused, not trimmed into something valid.
    for malformed in ["a  b", " a", "a\"b", "a\\b"] {
        let (status, _, body) = server.token_basic(&id, &secret, Some(malformed));
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_scope")),
            "{malformed:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Client authentication failures
// ---------------------------------------------------------------------------------------------

fn assert_invalid_client_basic(
    status: u16,
    headers: &ureq::http::HeaderMap,
    body: &Value,
    what: &str,
) {
    assert_eq!(status, 401, "{what}: {body}");
    assert_eq!(body["error"], "invalid_client", "{what}");
    let challenge = headers
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate"))
        .to_str()
        .unwrap();
    assert!(challenge.starts_with("Basic"), "{what}: {challenge}");
    assert!(body.get("access_token").is_none());
}

#[test]
fn wrong_secret_and_unknown_client_are_invalid_client_with_a_basic_challenge() {
    let server = TestServer::start();
    let cases: Vec<(&str, String, String)> = vec![
        (
            "wrong secret",
            server.admin_id.clone(),
            "not-the-secret".into(),
        ),
        ("empty secret", server.admin_id.clone(), String::new()),
        (
            "secret with one character changed",
            server.admin_id.clone(),
            {
                let mut s = server.admin_secret.clone();
                let last = s.pop().unwrap();
                s.push(if last == 'A' { 'B' } else { 'A' });
                s
            },
        ),
        (
            "secret with a suffix",
            server.admin_id.clone(),
            format!("{}x", server.admin_secret),
        ),
        (
            "unknown client",
            "no-such-client".into(),
            server.admin_secret.clone(),
        ),
    ];
    for (what, id, secret) in &cases {
        let (status, headers, body) = server.token_basic(id, secret, None);
        assert_invalid_client_basic(status, &headers, &body, what);
        // The body does not say which check failed.
        let text = body.to_string();
        assert!(
            !text.contains("wrong") && !text.contains("unknown"),
            "{what}: {text}"
        );
    }
    // No credentials at all.
    let (status, headers, body) = server.post_form_full(
        "/oauth2/token",
        None,
        &[("grant_type", "client_credentials")],
    );
    assert_invalid_client_basic(status, &headers, &body, "no credentials");
    // A client_id alone is a public client, which client_credentials refuses.
    let (status, headers, body) = server.post_form_full(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &server.admin_id),
        ],
    );
    assert_invalid_client_basic(status, &headers, &body, "client_id alone");
    // Malformed Basic headers.
    for header in ["Basic", "Basic !!!", "Basic Og==", "Bearer abc"] {
        let (status, headers, text) = server.post_bytes(
            "/oauth2/token",
            &[
                ("Authorization", header.as_bytes()),
                ("Content-Type", b"application/x-www-form-urlencoded"),
            ],
            b"grant_type=client_credentials",
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_invalid_client_basic(status, &headers, &body, header);
    }
    // The right secret still works afterwards: failures lock nothing out.
    assert_eq!(
        server
            .token_basic(&server.admin_id, &server.admin_secret, None)
            .0,
        200
    );
}

#[test]
fn a_key_client_cannot_use_a_secret_and_a_secret_client_cannot_use_an_assertion() {
    let server = TestServer::start();
    let key = common::ClientKey::es256();
    let jwt_client = server.register_jwt_client("x", &[(&key, Some("k1"))]);
    let (status, headers, body) = server.token_basic(&jwt_client, "anything", None);
    assert_invalid_client_basic(status, &headers, &body, "secret for a key client");

    // The admin client has a secret and no keys: an assertion naming it is refused whatever signs it.
    let claims = server.assertion_claims(&server.admin_id);
    let (status, headers, body) = server.token_assertion(&key.assertion(Some("k1"), &claims), &[]);
    assert_invalid_client_basic(status, &headers, &body, "assertion for a secret client");
}

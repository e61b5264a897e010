//! The token exchange grant (RFC 8693) over real TLS: a confidential client registered for the
//! grant trades a subject token for a narrower one that acts for the same subject, names the
//! actor chain in `act`, never outlives its subject token, stays active only while every token it
//! came from is unrevoked and their clients enabled (across a crash too), honours the delegation
//! depth limit, refuses every bad subject or actor token, and is audited without the tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{jwt_parts, now, ClientKey, TestServer};
use serde_json::{json, Value};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A confidential client registered for the token exchange grant (and client_credentials, so
/// that it can hold a token of its own); (client_id, secret).
fn exchanger(server: &TestServer, scope: &str) -> (String, String) {
    let info = server.register(json!({
        "client_name": "exchanger",
        "grant_types": [TOKEN_EXCHANGE, "client_credentials"],
        "scope": scope,
    }));
    (
        info["client_id"].as_str().unwrap().to_owned(),
        info["client_secret"].as_str().unwrap().to_owned(),
    )
}

/// A client_credentials token for a client, with extra form fields.
fn cc_token(server: &TestServer, (id, secret): (&str, &str), extra: &[(&str, &str)]) -> String {
    let mut form = vec![("grant_type", "client_credentials")];
    form.extend_from_slice(extra);
    let (status, body) = server.post_form("/oauth2/token", Some((id, secret)), &form);
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// A token exchange request by `caller` for `subject_token` (of the access token type) with
/// extra form fields; (status, body).
fn exchange(
    server: &TestServer,
    caller: (&str, &str),
    subject_token: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject_token),
        ("subject_token_type", ACCESS_TOKEN),
    ];
    form.extend_from_slice(extra);
    server.post_form("/oauth2/token", Some(caller), &form)
}

/// A successful exchange; the whole response.
fn exchanged(
    server: &TestServer,
    caller: (&str, &str),
    subject_token: &str,
    extra: &[(&str, &str)],
) -> Value {
    let (status, body) = exchange(server, caller, subject_token, extra);
    assert_eq!(status, 200, "{body}");
    body
}

fn assert_refused(status: u16, body: &Value, code: &str, what: &str) {
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some(code)),
        "{what}: {body}"
    );
    assert!(body.get("access_token").is_none(), "{what}");
}

/// The server's signing key from its data directory, to forge tokens that pass the signature
/// check and so reach the other checks.
fn forge(server: &TestServer, claims: &Value) -> String {
    let file = server.signing_keys();
    let stored = &file["keys"][0];
    let seed: [u8; 32] = common::unb64(stored["seed"].as_str().unwrap())
        .try_into()
        .unwrap();
    let key = ClientKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed));
    key.jwt(
        &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": stored["kid"]}),
        claims,
    )
}

#[test]
fn an_exchange_narrows_scope_names_the_actor_and_verifies_independently() {
    use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};

    let server = TestServer::start();
    let (meta_status, meta) = server.get("/.well-known/oauth-authorization-server");
    assert_eq!(meta_status, 200);
    assert!(meta["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!(TOKEN_EXCHANGE)));

    let (a, a_secret) = server.register_secret_client("read write admin", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read write other");
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    let (_, subject_claims) = jwt_parts(&subject);

    let body = exchanged(
        &server,
        (&b, &b_secret),
        &subject,
        &[("scope", "read"), ("requested_token_type", ACCESS_TOKEN)],
    );
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "read");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let token = body["access_token"].as_str().unwrap();

    // Checked by a JWT library that shares nothing with the server, against the JWKS.
    let jwks: JwkSet = serde_json::from_value(server.jwks()).unwrap();
    let key = DecodingKey::from_jwk(
        jwks.find(&decode_header(token).unwrap().kid.unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[&server.issuer]);
    validation.set_audience(&[&server.issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    let claims = decode::<Value>(token, &key, &validation)
        .expect("independent verification")
        .claims;
    assert_eq!(claims["sub"], a.as_str(), "the subject token's subject");
    assert_eq!(claims["client_id"], b.as_str(), "issued to the exchanger");
    assert_eq!(claims["act"], json!({"sub": b}), "the exchanger acts");
    assert_eq!(claims["scope"], "read");
    assert_ne!(claims["jti"], subject_claims["jti"]);
    assert!(claims.get("purpose").is_none(), "{claims}");
    // The same lifetime for both, so the cap makes them end together, never later.
    let exp = claims["exp"].as_u64().unwrap();
    assert_eq!(exp, subject_claims["exp"].as_u64().unwrap());
    assert_eq!(
        body["expires_in"].as_u64().unwrap(),
        exp - claims["iat"].as_u64().unwrap()
    );

    // A subject token that ends well before a fresh token would (signed with the server's key,
    // as a token minted with a shorter lifetime would be): the exchanged token ends with it.
    let mut short = subject_claims.clone();
    short["exp"] = json!(now() + 100);
    short["jti"] = json!("short-lived-subject");
    let short = forge(&server, &short);
    let body = exchanged(&server, (&b, &b_secret), &short, &[]);
    let (_, capped) = jwt_parts(body["access_token"].as_str().unwrap());
    assert_eq!(capped["exp"], jwt_parts(&short).1["exp"]);
    assert_eq!(
        body["expires_in"].as_u64().unwrap(),
        capped["exp"].as_u64().unwrap() - capped["iat"].as_u64().unwrap()
    );

    // Without `scope`: what the subject token and the exchanger share, no more.
    let body = exchanged(&server, (&b, &b_secret), &subject, &[]);
    assert_eq!(body["scope"], "read write");
    let (_, claims) = jwt_parts(body["access_token"].as_str().unwrap());
    assert_eq!(claims["scope"], "read write");

    // Introspection returns the act claim (flattened claims).
    let seen = server.introspect(body["access_token"].as_str().unwrap());
    assert_eq!(seen["active"], true);
    assert_eq!(seen["act"], json!({"sub": b}));
    assert_eq!(seen["sub"], a.as_str());

    // audience / resource naming this server are fine.
    exchanged(
        &server,
        (&b, &b_secret),
        &subject,
        &[("audience", &server.issuer), ("resource", &server.issuer)],
    );

    // Other grants are unchanged on the wire: no issued_token_type, no act.
    let (_, _, cc) = server.token_basic(&a, &a_secret, None);
    assert!(cc.get("issued_token_type").is_none(), "{cc}");
    assert!(jwt_parts(cc["access_token"].as_str().unwrap())
        .1
        .get("act")
        .is_none());
}

#[test]
fn chained_exchanges_nest_act_and_an_actor_token_names_the_actor() {
    let server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("read write", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read write");
    let (c, c_secret) = exchanger(&server, "read write");
    let subject = cc_token(&server, (&a, &a_secret), &[]);

    // a → b → c: c's token acts for a, c is the current actor, b the prior one.
    let t_b = exchanged(&server, (&b, &b_secret), &subject, &[]);
    let t_b = t_b["access_token"].as_str().unwrap();
    let t_c = exchanged(&server, (&c, &c_secret), t_b, &[("scope", "read")]);
    let (_, claims) = jwt_parts(t_c["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], a.as_str());
    assert_eq!(claims["client_id"], c.as_str());
    assert_eq!(claims["act"], json!({"sub": c, "act": {"sub": b}}));
    assert_eq!(claims["scope"], "read");
    // Scope only narrows along the chain: c cannot get back what b's token no longer has.
    let (status, body) = exchange(
        &server,
        (&c, &c_secret),
        t_c["access_token"].as_str().unwrap(),
        &[("scope", "write")],
    );
    assert_refused(status, &body, "invalid_scope", "widening along the chain");

    // With an actor token, the actor is that token's subject. b's own token: b acts.
    let own = cc_token(&server, (&b, &b_secret), &[]);
    let body = exchanged(
        &server,
        (&b, &b_secret),
        &subject,
        &[("actor_token", &own), ("actor_token_type", ACCESS_TOKEN)],
    );
    let (_, claims) = jwt_parts(body["access_token"].as_str().unwrap());
    assert_eq!(claims["act"], json!({"sub": b}));
    // A token issued to c whose subject is a (c's exchanged token) would name a as the actor
    // and drop c from the chain: an exchanged token is never an actor.
    let (status, body) = exchange(
        &server,
        (&c, &c_secret),
        &subject,
        &[
            ("actor_token", t_c["access_token"].as_str().unwrap()),
            ("actor_token_type", ACCESS_TOKEN),
        ],
    );
    assert_refused(status, &body, "invalid_request", "exchanged token as actor");
}

#[test]
fn an_exchanged_token_lives_no_longer_than_its_actor_token() {
    // 30 s access tokens: an actor token issued first caps an exchange made later.
    let server = TestServer::start_with(&["--access-token-ttl", "30"]);
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read");
    let actor = cc_token(&server, (&b, &b_secret), &[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    let body = exchanged(
        &server,
        (&b, &b_secret),
        &subject,
        &[("actor_token", &actor), ("actor_token_type", ACCESS_TOKEN)],
    );
    let exp = jwt_parts(body["access_token"].as_str().unwrap()).1["exp"].as_u64();
    let actor_exp = jwt_parts(&actor).1["exp"].as_u64();
    assert_eq!(exp, actor_exp);
    assert!(exp < jwt_parts(&subject).1["exp"].as_u64());
}

#[test]
fn the_delegation_depth_limit_is_enforced() {
    // Set through the environment, the layer above the config files.
    let server = TestServer::start_with_env(&[], &[("HALLMARK_MAX_DELEGATION_DEPTH", "2")]);
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read");
    let (c, c_secret) = exchanger(&server, "read");
    let (d, d_secret) = exchanger(&server, "read");
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    let t1 = exchanged(&server, (&b, &b_secret), &subject, &[]);
    let t2 = exchanged(
        &server,
        (&c, &c_secret),
        t1["access_token"].as_str().unwrap(),
        &[],
    );
    let (_, claims) = jwt_parts(t2["access_token"].as_str().unwrap());
    assert_eq!(claims["act"], json!({"sub": c, "act": {"sub": b}}));
    let (status, body) = exchange(
        &server,
        (&d, &d_secret),
        t2["access_token"].as_str().unwrap(),
        &[],
    );
    assert_refused(
        status,
        &body,
        "invalid_request",
        "depth 3 over a limit of 2",
    );
    assert_eq!(body["error_description"], "delegation chain too deep");

    // And through a flag: a limit of 1 allows one exchange, not two.
    let server = TestServer::start_with(&["--max-delegation-depth", "1"]);
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read");
    let (c, c_secret) = exchanger(&server, "read");
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    let t1 = exchanged(&server, (&b, &b_secret), &subject, &[]);
    let (status, body) = exchange(
        &server,
        (&c, &c_secret),
        t1["access_token"].as_str().unwrap(),
        &[],
    );
    assert_refused(
        status,
        &body,
        "invalid_request",
        "depth 2 over a limit of 1",
    );
}

#[test]
fn scope_escalation_is_refused() {
    let server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("read admin", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read other");
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    for (scope, why) in [
        (
            "admin",
            "held by the subject, not registered for the exchanger",
        ),
        (
            "other",
            "registered for the exchanger, not held by the subject",
        ),
        ("read admin", "partly beyond"),
        ("nothing", "held by neither"),
    ] {
        let (status, body) = exchange(&server, (&b, &b_secret), &subject, &[("scope", scope)]);
        assert_refused(status, &body, "invalid_scope", why);
    }
    // Nothing in common and no scope asked: nothing to grant.
    let (c, c_secret) = exchanger(&server, "other");
    let (status, body) = exchange(&server, (&c, &c_secret), &subject, &[]);
    assert_refused(status, &body, "invalid_scope", "empty intersection");
}

#[test]
fn bad_subject_and_actor_tokens_are_invalid_request() {
    let server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read");
    let b_auth = (b.as_str(), b_secret.as_str());
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    let (_, claims) = jwt_parts(&subject);

    // Revoked by its owner.
    let revoked = cc_token(&server, (&a, &a_secret), &[]);
    let (status, _) = server.post_form(
        "/oauth2/revoke",
        Some((&a, &a_secret)),
        &[("token", &revoked)],
    );
    assert_eq!(status, 200);
    // Expired (well beyond the skew) and signed by the server's own key.
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 3600);
    expired["iat"] = json!(now() - 3700);
    expired["nbf"] = json!(now() - 3700);
    let expired = forge(&server, &expired);
    // Tampered: the payload changed under the signature.
    let parts: Vec<&str> = subject.split('.').collect();
    let mut widened = claims.clone();
    widened["scope"] = json!("read admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        common::b64(widened.to_string().as_bytes()),
        parts[2]
    );
    let foreign = ClientKey::ed25519().jwt(
        &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "x"}),
        &claims,
    );
    for (token, why) in [
        (revoked.as_str(), "revoked"),
        (expired.as_str(), "expired"),
        (tampered.as_str(), "tampered"),
        (foreign.as_str(), "signed by another key"),
        ("garbage-not-a-token", "garbage"),
    ] {
        let (status, body) = exchange(&server, b_auth, token, &[]);
        assert_refused(status, &body, "invalid_request", why);
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.contains("subject_token"),
            "{why}: {description}"
        );
        assert!(!description.contains(token), "{why}: the token is echoed");
        // The same token as an actor token.
        let (status, body) = exchange(
            &server,
            b_auth,
            &subject,
            &[("actor_token", token), ("actor_token_type", ACCESS_TOKEN)],
        );
        assert_refused(status, &body, "invalid_request", why);
        assert!(body["error_description"]
            .as_str()
            .unwrap()
            .contains("actor_token"));
    }

    // Wrong or missing parameters.
    let form = |extra: &[(&str, &str)]| -> (u16, Value) {
        let mut f: Vec<(&str, &str)> = vec![("grant_type", TOKEN_EXCHANGE)];
        f.extend_from_slice(extra);
        server.post_form("/oauth2/token", Some(b_auth), &f)
    };
    let jwt_type = "urn:ietf:params:oauth:token-type:jwt";
    for (extra, needle, why) in [
        (
            vec![
                ("subject_token", subject.as_str()),
                ("subject_token_type", jwt_type),
            ],
            "subject_token_type",
            "wrong subject_token_type",
        ),
        (
            vec![("subject_token_type", ACCESS_TOKEN)],
            "subject_token",
            "no subject_token",
        ),
        (
            vec![("subject_token", subject.as_str())],
            "subject_token_type",
            "no subject_token_type",
        ),
        (
            vec![
                ("subject_token", subject.as_str()),
                ("subject_token_type", ACCESS_TOKEN),
                ("actor_token_type", ACCESS_TOKEN),
            ],
            "actor_token",
            "actor_token_type without actor_token",
        ),
        (
            vec![
                ("subject_token", subject.as_str()),
                ("subject_token_type", ACCESS_TOKEN),
                ("actor_token", subject.as_str()),
            ],
            "actor_token_type",
            "actor_token without actor_token_type",
        ),
        (
            vec![
                ("subject_token", subject.as_str()),
                ("subject_token_type", ACCESS_TOKEN),
                ("actor_token", subject.as_str()),
                ("actor_token_type", jwt_type),
            ],
            "actor_token_type",
            "wrong actor_token_type",
        ),
        (
            vec![
                ("subject_token", subject.as_str()),
                ("subject_token_type", ACCESS_TOKEN),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token",
                ),
            ],
            "requested_token_type",
            "a refresh token requested",
        ),
    ] {
        let (status, body) = form(&extra);
        assert_refused(status, &body, "invalid_request", why);
        assert!(
            body["error_description"].as_str().unwrap().contains(needle),
            "{why}: {body}"
        );
    }

    // An actor token issued to another client (a's own token) cannot stand for b.
    let (status, body) = exchange(
        &server,
        b_auth,
        &subject,
        &[
            ("actor_token", &subject),
            ("actor_token_type", ACCESS_TOKEN),
        ],
    );
    assert_refused(
        status,
        &body,
        "invalid_request",
        "someone else's actor token",
    );
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("not issued to this client"));
}

#[test]
fn a_foreign_audience_or_resource_is_invalid_target() {
    let server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read");
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    for extra in [
        [("audience", "https://api.other.example")],
        [("resource", "https://api.other.example/v1")],
        [("audience", "urn:somewhere")],
    ] {
        let (status, body) = exchange(&server, (&b, &b_secret), &subject, &extra);
        assert_refused(status, &body, "invalid_target", extra[0].0);
    }
}

#[test]
fn only_confidential_clients_registered_for_the_grant_may_exchange() {
    let server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let subject = cc_token(&server, (&a, &a_secret), &[]);

    // Registered for client_credentials only.
    let (status, body) = exchange(&server, (&a, &a_secret), &subject, &[]);
    assert_refused(status, &body, "unauthorized_client", "grant not registered");

    // A public client cannot even register for the grant.
    let token = server.admin_token("clients:admin");
    let (status, body) = server.post_raw(
        "/admin/clients",
        "application/json",
        Some(&format!("Bearer {token}")),
        json!({
            "grant_types": [TOKEN_EXCHANGE],
            "scope": "read",
            "token_endpoint_auth_method": "none",
        })
        .to_string()
        .as_bytes(),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client_metadata")),
        "{body}"
    );

    // Nor is a wrong secret.
    let (b, _) = exchanger(&server, "read");
    let (status, body) = exchange(&server, (&b, "wrong"), &subject, &[]);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
}

#[test]
fn purpose_is_validated_carried_over_and_introspected() {
    let server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read");

    // client_credentials.
    for bad in ["two words", "slash/y", &"p".repeat(65)] {
        let (status, body) = server.post_form(
            "/oauth2/token",
            Some((&a, &a_secret)),
            &[("grant_type", "client_credentials"), ("purpose", bad)],
        );
        assert_refused(status, &body, "invalid_request", bad);
    }
    let subject = cc_token(&server, (&a, &a_secret), &[("purpose", "fw:update-1.2")]);
    assert_eq!(jwt_parts(&subject).1["purpose"], "fw:update-1.2");
    let plain = cc_token(&server, (&a, &a_secret), &[]);
    assert!(jwt_parts(&plain).1.get("purpose").is_none());

    // Exchange: refused when bad, carried over when absent, never changed, set when the
    // subject token had none.
    let (status, body) = exchange(&server, (&b, &b_secret), &subject, &[("purpose", "a b")]);
    assert_refused(status, &body, "invalid_request", "bad purpose");
    let carried = exchanged(&server, (&b, &b_secret), &subject, &[]);
    let carried = carried["access_token"].as_str().unwrap();
    assert_eq!(jwt_parts(carried).1["purpose"], "fw:update-1.2");
    let same = exchanged(
        &server,
        (&b, &b_secret),
        &subject,
        &[("purpose", "fw:update-1.2")],
    );
    assert_eq!(
        jwt_parts(same["access_token"].as_str().unwrap()).1["purpose"],
        "fw:update-1.2"
    );
    let (status, body) = exchange(
        &server,
        (&b, &b_secret),
        &subject,
        &[("purpose", "telemetry.upload")],
    );
    assert_refused(status, &body, "invalid_request", "purpose changed");
    let given = exchanged(
        &server,
        (&b, &b_secret),
        &plain,
        &[("purpose", "telemetry.upload")],
    );
    let given = given["access_token"].as_str().unwrap();
    assert_eq!(jwt_parts(given).1["purpose"], "telemetry.upload");

    let seen = server.introspect(given);
    assert_eq!(seen["active"], true);
    assert_eq!(seen["purpose"], "telemetry.upload");
    assert_eq!(seen["act"], json!({"sub": b}));
    assert_eq!(server.introspect(&subject)["purpose"], "fw:update-1.2");
}

/// Revoke `token` as its owner through RFC 7009.
fn revoke(server: &TestServer, owner: (&str, &str), token: &str) {
    let (status, body) = server.post_form("/oauth2/revoke", Some(owner), &[("token", token)]);
    assert_eq!(status, 200, "{body}");
}

/// The access token of an exchange response.
fn access_token(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_owned()
}

/// Register a device (scope `read`) through the admin API; (client_id, factory secret).
fn device(server: &TestServer, serial: &str, ek_byte: u8) -> (String, String) {
    let token = server.admin_token("devices:provision");
    let body = json!({
        "serial": serial,
        "model": "gw-1",
        "ek_fingerprint": format!("{ek_byte:02x}").repeat(32),
        "scopes": ["read"],
    });
    let (status, dev) = server.post_raw(
        "/admin/devices",
        "application/json",
        Some(&format!("Bearer {token}")),
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{dev}");
    (
        dev["client_id"].as_str().unwrap().to_owned(),
        dev["factory_secret"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn revoking_the_subject_token_ends_every_token_exchanged_from_it() {
    let server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read");
    let (c, c_secret) = exchanger(&server, "read");
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    // a → b → c, and a second branch a → b that stays apart from the revocations below.
    let child = access_token(&exchanged(&server, (&b, &b_secret), &subject, &[]));
    let grandchild = access_token(&exchanged(&server, (&c, &c_secret), &child, &[]));
    assert_eq!(server.introspect(&child)["active"], true);
    assert_eq!(server.introspect(&grandchild)["active"], true);

    // Revoking the middle token ends its descendant, not its source.
    let other_subject = cc_token(&server, (&a, &a_secret), &[]);
    let other_child = access_token(&exchanged(&server, (&b, &b_secret), &other_subject, &[]));
    let other_grandchild = access_token(&exchanged(&server, (&c, &c_secret), &other_child, &[]));
    revoke(&server, (&b, &b_secret), &other_child);
    assert_eq!(
        server.introspect(&other_grandchild),
        json!({"active": false})
    );
    assert_eq!(server.introspect(&other_subject)["active"], true);

    // Revoking the root ends the child and, through the child's lineage, the grandchild.
    revoke(&server, (&a, &a_secret), &subject);
    assert_eq!(server.introspect(&subject), json!({"active": false}));
    assert_eq!(server.introspect(&child), json!({"active": false}));
    assert_eq!(server.introspect(&grandchild), json!({"active": false}));
    // Nor can either be exchanged again; the refusal says why, in fixed words.
    let (status, body) = exchange(&server, (&c, &c_secret), &subject, &[]);
    assert_refused(status, &body, "invalid_request", "revoked subject");
    let (status, body) = exchange(&server, (&c, &c_secret), &child, &[]);
    assert_refused(status, &body, "invalid_request", "child of a revoked one");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("a token it was exchanged from is revoked"),
        "{body}"
    );

    // A new subject token for the same client is untouched: revocation is per token.
    let fresh = cc_token(&server, (&a, &a_secret), &[]);
    let fresh_child = access_token(&exchanged(&server, (&b, &b_secret), &fresh, &[]));
    assert_eq!(server.introspect(&fresh_child)["active"], true);
}

#[test]
fn revoking_an_actor_token_ends_the_tokens_that_named_it() {
    let server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read");
    let (c, c_secret) = exchanger(&server, "read");
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    let own = cc_token(&server, (&b, &b_secret), &[]);
    let acted = access_token(&exchanged(
        &server,
        (&b, &b_secret),
        &subject,
        &[("actor_token", &own), ("actor_token_type", ACCESS_TOKEN)],
    ));
    let onward = access_token(&exchanged(&server, (&c, &c_secret), &acted, &[]));
    // Without an actor token, from the same subject.
    let plain = access_token(&exchanged(&server, (&b, &b_secret), &subject, &[]));
    assert_eq!(server.introspect(&acted)["active"], true);
    assert_eq!(server.introspect(&onward)["active"], true);

    revoke(&server, (&b, &b_secret), &own);
    assert_eq!(server.introspect(&acted), json!({"active": false}));
    assert_eq!(server.introspect(&onward), json!({"active": false}));
    assert_eq!(server.introspect(&subject)["active"], true);
    assert_eq!(server.introspect(&plain)["active"], true);
}

#[test]
fn disabling_or_deleting_the_subject_tokens_client_ends_exchanged_tokens() {
    let server = TestServer::start_with(&["--device-scope", "read"]);
    let admin = format!("Bearer {}", server.admin_token("devices:admin"));
    let (b, b_secret) = exchanger(&server, "read");
    let (c, c_secret) = exchanger(&server, "read");
    for (n, action) in [(7u8, "disable"), (8, "delete")] {
        // A compromised device: its own token was exchanged by a gateway (b), then onward (c).
        let (id, secret) = device(&server, &format!("HM-EXCH-{action}"), n);
        let subject = cc_token(&server, (&id, &secret), &[]);
        let child = access_token(&exchanged(&server, (&b, &b_secret), &subject, &[]));
        let grandchild = access_token(&exchanged(&server, (&c, &c_secret), &child, &[]));
        assert_eq!(server.introspect(&grandchild)["active"], true, "{action}");

        let status = if action == "disable" {
            server
                .post_raw(
                    &format!("/admin/devices/{id}/disable"),
                    "application/json",
                    Some(&admin),
                    b"",
                )
                .0
        } else {
            server
                .http
                .delete(&server.url(&format!("/admin/devices/{id}")))
                .header("Authorization", &admin)
                .call()
                .unwrap()
                .status()
                .as_u16()
        };
        assert!(status == 200 || status == 204, "{action}: {status}");
        for token in [&subject, &child, &grandchild] {
            assert_eq!(
                server.introspect(token),
                json!({"active": false}),
                "{action}"
            );
        }
        let (status, body) = exchange(&server, (&c, &c_secret), &child, &[]);
        assert_refused(status, &body, "invalid_request", action);
    }
}

#[test]
fn lineage_survives_a_crash_and_an_exchanged_token_without_one_is_not_trusted() {
    let mut server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read");
    let (c, c_secret) = exchanger(&server, "read");
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    let child = access_token(&exchanged(&server, (&b, &b_secret), &subject, &[]));
    let grandchild = access_token(&exchanged(&server, (&c, &c_secret), &child, &[]));

    // SIGKILL right after the responses: whatever the exchange answered with is on disk.
    server.kill();
    server.spawn();
    for token in [&child, &grandchild] {
        let seen = server.introspect(token);
        assert_eq!(seen["active"], true, "{seen}");
    }
    // The recovered lineage still links them to their source.
    revoke(&server, (&a, &a_secret), &subject);
    assert_eq!(server.introspect(&grandchild), json!({"active": false}));

    // A well-signed token that claims to be exchanged but was never recorded as such.
    let fresh = cc_token(&server, (&a, &a_secret), &[]);
    let mut claims = jwt_parts(&access_token(&exchanged(
        &server,
        (&b, &b_secret),
        &fresh,
        &[],
    )))
    .1;
    claims["jti"] = json!("never-recorded");
    let unrecorded = forge(&server, &claims);
    assert_eq!(server.introspect(&unrecorded), json!({"active": false}));
    let (status, body) = exchange(&server, (&c, &c_secret), &unrecorded, &[]);
    assert_refused(status, &body, "invalid_request", "unrecorded lineage");
}

#[test]
fn exchanges_and_refusals_are_audited_without_the_tokens() {
    let mut server = TestServer::start();
    let (a, a_secret) = server.register_secret_client("read", "client_secret_basic");
    let (b, b_secret) = exchanger(&server, "read");
    let subject = cc_token(&server, (&a, &a_secret), &[]);
    let body = exchanged(&server, (&b, &b_secret), &subject, &[]);
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (status, _) = exchange(&server, (&b, &b_secret), &subject, &[("scope", "admin")]);
    assert_eq!(status, 400);
    let (status, _) = exchange(&server, (&b, &b_secret), "garbage-subject", &[]);
    assert_eq!(status, 400);
    let subject_jti = jwt_parts(&subject).1["jti"].as_str().unwrap().to_owned();
    let new_jti = jwt_parts(&token).1["jti"].as_str().unwrap().to_owned();

    let entries = server.audit_entries();
    let events: Vec<_> = entries.iter().map(|e| &e.body.event).collect();
    let exchanged: Vec<_> = events
        .iter()
        .filter(|e| e.event == "token.exchanged")
        .collect();
    assert_eq!(exchanged.len(), 1, "{events:#?}");
    let e = exchanged[0];
    assert_eq!(e.actor.as_deref(), Some(b.as_str()));
    assert_eq!(e.subject.as_deref(), Some(a.as_str()));
    assert_eq!(e.client.as_deref(), Some(b.as_str()));
    let reason = e.reason.as_deref().unwrap();
    for needle in [
        subject_jti.as_str(),
        new_jti.as_str(),
        "scope=read",
        "depth=1",
    ] {
        assert!(reason.contains(needle), "{needle} not in {reason}");
    }
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e.event == "token.exchange_refused")
        .collect();
    assert_eq!(refused.len(), 2, "{events:#?}");
    assert!(refused.iter().all(
        |e| e.outcome == hallmark_server::store::audit::Outcome::Failure
            && e.actor.as_deref() == Some(b.as_str())
    ));
    assert!(refused[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("invalid_scope"));
    assert!(refused[1]
        .reason
        .as_deref()
        .unwrap()
        .contains("invalid_request"));

    let text = serde_json::to_string(&entries).unwrap();
    for needle in [
        subject.as_str(),
        token.as_str(),
        "garbage-subject",
        b_secret.as_str(),
    ] {
        assert!(!text.contains(needle), "the audit log holds {needle:.20}");
    }
}

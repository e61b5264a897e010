//! `private_key_jwt` client authentication (RFC 7523 §2.2, §3) over real TLS, with ES256 and
//! EdDSA client keys registered through the admin API. Assertions are built by hand here, so
//! every check the server makes is attacked one at a time; each refusal sits next to an
//! acceptance of the same assertion without the flaw, so that it is the flaw that is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{b64, jwt_parts, now, random_jti, ClientKey, TestServer};
use serde_json::{json, Value};

const KID: &str = "k1";

/// One server with one ES256 and one EdDSA `private_key_jwt` client, each key under `KID`.
struct Fixture {
    server: TestServer,
    clients: Vec<(ClientKey, String)>,
}

fn fixture() -> Fixture {
    let server = TestServer::start();
    let clients = [ClientKey::es256(), ClientKey::ed25519()]
        .into_iter()
        .map(|key| {
            let id = server.register_jwt_client("sensors:read sensors:write", &[(&key, Some(KID))]);
            (key, id)
        })
        .collect();
    Fixture { server, clients }
}

impl Fixture {
    /// Good claims for `id`.
    fn claims(&self, id: &str) -> Value {
        self.server.assertion_claims(id)
    }

    fn refused(&self, assertion: &str, what: &str) {
        self.refused_with(assertion, &[], what);
    }

    fn refused_with(&self, assertion: &str, extra: &[(&str, &str)], what: &str) {
        let (status, headers, body) = self.server.token_assertion(assertion, extra);
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"], "invalid_client", "{what}: {body}");
        assert!(
            headers.get("www-authenticate").is_some(),
            "{what}: 401 needs a challenge"
        );
        assert!(body.get("access_token").is_none(), "{what}");
    }

    fn accepted(&self, assertion: &str, what: &str) -> Value {
        let (status, headers, body) = self.server.token_assertion(assertion, &[]);
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(headers["cache-control"], "no-store");
        body
    }

    /// For each client: `mutate` spoils good claims and the result is refused; the same claims
    /// unspoiled (fresh jti) are accepted.
    fn refuses_claims(&self, what: &str, mutate: impl Fn(&mut Value, &str)) {
        for (key, id) in &self.clients {
            let mut bad = self.claims(id);
            mutate(&mut bad, id);
            self.refused(
                &key.assertion(Some(KID), &bad),
                &format!("{} {what}", key.alg()),
            );
            self.accepted(
                &key.assertion(Some(KID), &self.claims(id)),
                &format!("{} control for {what}", key.alg()),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted
// ---------------------------------------------------------------------------------------------

#[test]
fn es256_and_eddsa_assertions_get_tokens_for_their_client() {
    let f = fixture();
    for (key, id) in &f.clients {
        let body = f.accepted(&key.assertion(Some(KID), &f.claims(id)), key.alg());
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["scope"], "sensors:read sensors:write");
        let (header, claims) = jwt_parts(body["access_token"].as_str().unwrap());
        assert_eq!(
            header["alg"], "EdDSA",
            "access tokens are ours, whatever the client signs with"
        );
        assert_eq!(claims["sub"], id.as_str());
        assert_eq!(claims["client_id"], id.as_str());

        // A scope subset, and a body client_id that agrees with the assertion.
        let (status, _, body) = f.server.token_assertion(
            &key.assertion(Some(KID), &f.claims(id)),
            &[("scope", "sensors:read"), ("client_id", id)],
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["scope"], "sensors:read");

        // Escalation is invalid_scope even with a perfect assertion.
        let (status, _, body) = f.server.token_assertion(
            &key.assertion(Some(KID), &f.claims(id)),
            &[("scope", "clients:admin")],
        );
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_scope")),
            "{body}"
        );
    }
}

#[test]
fn aud_may_be_the_token_endpoint_or_the_issuer_alone_or_in_a_list() {
    let f = fixture();
    let endpoint = f.server.url("/oauth2/token");
    let issuer = f.server.issuer.clone();
    for (key, id) in &f.clients {
        for aud in [
            json!(endpoint),
            json!(issuer),
            json!([endpoint]),
            json!(["https://someone-else.example", issuer]),
        ] {
            let mut claims = f.claims(id);
            claims["aud"] = aud.clone();
            f.accepted(
                &key.assertion(Some(KID), &claims),
                &format!("{} aud {aud}", key.alg()),
            );
        }
    }
}

#[test]
fn an_assertion_without_kid_is_tried_against_the_clients_keys() {
    let server = TestServer::start();
    let (old, new) = (ClientKey::es256(), ClientKey::ed25519());
    let id = server.register_jwt_client("x", &[(&old, Some("old")), (&new, Some("new"))]);
    for (key, kid) in [
        (&old, Some("old")),
        (&new, Some("new")),
        (&old, None),
        (&new, None),
    ] {
        let (status, _, body) =
            server.token_assertion(&key.assertion(kid, &server.assertion_claims(&id)), &[]);
        assert_eq!(status, 200, "{} kid {kid:?}: {body}", key.alg());
    }
    // With a kid, only that key is tried: the other key's kid with this key's signature fails.
    let (status, _, body) = server.token_assertion(
        &old.assertion(Some("new"), &server.assertion_claims(&id)),
        &[],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[test]
fn time_claims_within_the_clock_skew_are_accepted() {
    let f = fixture();
    for (key, id) in &f.clients {
        let now = now();
        for (what, patch) in [
            ("exp 10 s ago", json!({"exp": now - 10})),
            ("nbf 10 s ahead", json!({"nbf": now + 10})),
            ("iat 10 s ahead", json!({"iat": now + 10})),
            ("exp 4 minutes ahead", json!({"exp": now + 240})),
            (
                "fractional times",
                json!({"exp": now as f64 + 60.5, "iat": now as f64 - 0.5}),
            ),
        ] {
            let mut claims = f.claims(id);
            for (k, v) in patch.as_object().unwrap() {
                claims[k] = v.clone();
            }
            f.accepted(
                &key.assertion(Some(KID), &claims),
                &format!("{} {what}", key.alg()),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signature and algorithm
// ---------------------------------------------------------------------------------------------

#[test]
fn alg_none_is_refused() {
    let f = fixture();
    for (key, id) in &f.clients {
        let claims = f.claims(id);
        for alg in ["none", "None", "NONE"] {
            let header = json!({"alg": alg, "kid": KID});
            let unsigned = format!(
                "{}.{}.",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            f.refused(&unsigned, &format!("{} alg={alg} unsigned", key.alg()));
            // Even with a valid signature from the right key attached.
            f.refused(
                &key.jwt(&header, &f.claims(id)),
                &format!("{} alg={alg} signed", key.alg()),
            );
        }
        f.accepted(&key.assertion(Some(KID), &f.claims(id)), "control");
    }
}

#[test]
fn a_header_alg_other_than_the_keys_is_refused() {
    let f = fixture();
    for (key, id) in &f.clients {
        let other_asym = if key.alg() == "ES256" {
            "EdDSA"
        } else {
            "ES256"
        };
        for alg in [other_asym, "ES384", "RS256", "PS256", "eddsa", "es256"] {
            // Signed by the right key; only the header's alg is wrong.
            let assertion = key.jwt(&json!({"alg": alg, "kid": KID}), &f.claims(id));
            f.refused(&assertion, &format!("{} key, header alg {alg}", key.alg()));
        }
        // Key confusion: HS256 with the client's public key (raw, and as its JWK text) as the
        // HMAC secret, which a verifier that lets the header choose would accept.
        let public_jwk = key.public_jwk(Some(KID));
        let secrets: [Vec<u8>; 3] = [
            key.public_bytes(),
            public_jwk.to_string().into_bytes(),
            public_jwk["x"].as_str().unwrap().as_bytes().to_vec(),
        ];
        for secret in secrets {
            let header = json!({"alg": "HS256", "kid": KID});
            let input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(f.claims(id).to_string().as_bytes())
            );
            let mac = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
                input.as_bytes(),
            );
            f.refused(
                &format!("{input}.{}", b64(mac.as_ref())),
                &format!("{} key, HS256 confusion", key.alg()),
            );
        }
        f.accepted(&key.assertion(Some(KID), &f.claims(id)), "control");
    }
}

#[test]
fn a_wrong_kid_is_refused() {
    let f = fixture();
    for (key, id) in &f.clients {
        for kid in ["k2", "", "K1", "k1 ", "../k1"] {
            f.refused(
                &key.assertion(Some(kid), &f.claims(id)),
                &format!("{} kid {kid:?}", key.alg()),
            );
        }
        f.accepted(&key.assertion(Some(KID), &f.claims(id)), "control");
    }
}

#[test]
fn a_key_the_client_did_not_register_is_refused() {
    let f = fixture();
    for (key, id) in &f.clients {
        let stranger = if key.alg() == "ES256" {
            ClientKey::es256()
        } else {
            ClientKey::ed25519()
        };
        f.refused(
            &stranger.assertion(Some(KID), &f.claims(id)),
            &format!("{} stranger's key", key.alg()),
        );
        f.refused(
            &stranger.assertion(None, &f.claims(id)),
            &format!("{} stranger's key, no kid", key.alg()),
        );
    }
    // One client's key cannot speak for another client.
    let (key_a, id_a) = &f.clients[0];
    let (_, id_b) = &f.clients[1];
    f.refused(&key_a.assertion(Some(KID), &f.claims(id_b)), "A signs as B");
    f.refused_with(
        &key_a.assertion(Some(KID), &f.claims(id_a)),
        &[("client_id", id_b)],
        "body client_id B, sub A",
    );
    f.accepted(&key_a.assertion(Some(KID), &f.claims(id_a)), "control");
}

#[test]
fn a_tampered_payload_or_signature_is_refused() {
    let f = fixture();
    for (key, id) in &f.clients {
        let good = key.assertion(Some(KID), &f.claims(id));
        let parts: Vec<&str> = good.split('.').collect();
        let mut claims: Value = serde_json::from_slice(&common::unb64(parts[1])).unwrap();
        claims["exp"] = json!(claims["exp"].as_u64().unwrap() + 1);
        let tampered_payload = format!(
            "{}.{}.{}",
            parts[0],
            b64(claims.to_string().as_bytes()),
            parts[2]
        );
        f.refused(&tampered_payload, &format!("{} payload changed", key.alg()));

        let mut sig = common::unb64(parts[2]);
        sig[10] ^= 0x01;
        f.refused(
            &format!("{}.{}.{}", parts[0], parts[1], b64(&sig)),
            &format!("{} signature bit flipped", key.alg()),
        );
        f.refused(
            &format!("{}.{}.{}", parts[0], parts[1], b64(&sig[..32])),
            &format!("{} signature truncated", key.alg()),
        );
        f.refused(
            &format!("{}.{}.", parts[0], parts[1]),
            &format!("{} signature removed", key.alg()),
        );
        let mut header: Value = serde_json::from_slice(&common::unb64(parts[0])).unwrap();
        header["typ"] = json!("other");
        f.refused(
            &format!(
                "{}.{}.{}",
                b64(header.to_string().as_bytes()),
                parts[1],
                parts[2]
            ),
            &format!("{} header changed", key.alg()),
        );
        // The untouched assertion is still good (its jti was never recorded by the refusals).
        f.accepted(&good, &format!("{} control", key.alg()));
    }
}

#[test]
fn an_es256_signature_in_der_form_is_refused() {
    // RFC 7518 §3.4: JWS ECDSA signatures are r||s, not ASN.1 DER.
    let f = fixture();
    let (key, id) = &f.clients[0];
    assert_eq!(key.alg(), "ES256");
    let header = json!({"alg": "ES256", "kid": KID});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(f.claims(id).to_string().as_bytes())
    );
    f.refused(
        &format!("{input}.{}", b64(&key.sign_der(input.as_bytes()))),
        "DER signature",
    );
    f.accepted(&key.assertion(Some(KID), &f.claims(id)), "control");
}

#[test]
fn a_critical_header_is_refused() {
    let f = fixture();
    for (key, id) in &f.clients {
        let header = json!({"alg": key.alg(), "kid": KID, "crit": ["exp"], "exp": 1});
        f.refused(
            &key.jwt(&header, &f.claims(id)),
            &format!("{} crit", key.alg()),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------------------

#[test]
fn an_expired_assertion_is_refused() {
    let f = fixture();
    f.refuses_claims("exp 2 minutes ago", |c, _| c["exp"] = json!(now() - 120));
    f.refuses_claims("exp 31 s ago", |c, _| c["exp"] = json!(now() - 31));
    f.refuses_claims("exp 0", |c, _| c["exp"] = json!(0));
    f.refuses_claims("exp negative", |c, _| c["exp"] = json!(-1));
}

#[test]
fn an_exp_more_than_five_minutes_ahead_is_refused() {
    let f = fixture();
    // 5 minutes plus the 30 s skew is the limit.
    f.refuses_claims("exp 6.5 minutes ahead", |c, _| {
        c["exp"] = json!(now() + 390)
    });
    f.refuses_claims("exp a day ahead", |c, _| c["exp"] = json!(now() + 86_400));
    f.refuses_claims("exp far in the future", |c, _| c["exp"] = json!(1e300));
    f.refuses_claims("exp u64::MAX", |c, _| c["exp"] = json!(u64::MAX));
}

#[test]
fn a_missing_or_malformed_exp_is_refused() {
    let f = fixture();
    f.refuses_claims("no exp", |c, _| {
        c.as_object_mut().unwrap().remove("exp");
    });
    f.refuses_claims("exp null", |c, _| c["exp"] = Value::Null);
    f.refuses_claims("exp as a string", |c, _| {
        c["exp"] = json!((now() + 60).to_string())
    });
}

#[test]
fn a_future_nbf_or_iat_is_refused() {
    let f = fixture();
    f.refuses_claims("nbf 2 minutes ahead", |c, _| c["nbf"] = json!(now() + 120));
    f.refuses_claims("iat 2 minutes ahead", |c, _| c["iat"] = json!(now() + 120));
    f.refuses_claims("nbf 31+ s ahead", |c, _| c["nbf"] = json!(now() + 35));
    f.refuses_claims("iat as a string", |c, _| c["iat"] = json!("now"));
}

#[test]
fn a_wrong_or_missing_aud_is_refused() {
    let f = fixture();
    let issuer = f.server.issuer.clone();
    let port = f.server.port;
    let wrong: Vec<Value> = vec![
        json!("https://evil.example/oauth2/token"),
        json!(format!("{issuer}/oauth2/introspect")),
        json!(format!("{issuer}/oauth2/token/")),
        json!(format!("http://localhost:{port}/oauth2/token")),
        json!(format!("https://127.0.0.1:{port}/oauth2/token")),
        json!(["https://evil.example"]),
        json!([]),
        json!(""),
        json!(42),
    ];
    for aud in wrong {
        f.refuses_claims(&format!("aud {aud}"), |c, _| c["aud"] = aud.clone());
    }
    f.refuses_claims("no aud", |c, _| {
        c.as_object_mut().unwrap().remove("aud");
    });
}

#[test]
fn iss_must_equal_sub() {
    let f = fixture();
    f.refuses_claims("iss another client", |c, _| {
        c["iss"] = json!("someone-else")
    });
    f.refuses_claims("no iss", |c, _| {
        c.as_object_mut().unwrap().remove("iss");
    });
    f.refuses_claims("iss with a suffix", |c, id| {
        c["iss"] = json!(format!("{id}x"))
    });
    // sub is what names the client: without it nobody is claimed at all.
    f.refuses_claims("no sub", |c, _| {
        c.as_object_mut().unwrap().remove("sub");
    });
}

#[test]
fn a_missing_or_unusable_jti_is_refused() {
    let f = fixture();
    f.refuses_claims("no jti", |c, _| {
        c.as_object_mut().unwrap().remove("jti");
    });
    f.refuses_claims("empty jti", |c, _| c["jti"] = json!(""));
    f.refuses_claims("jti a number", |c, _| c["jti"] = json!(7));
    f.refuses_claims("jti of 300 characters", |c, _| {
        c["jti"] = json!("j".repeat(300))
    });
}

#[test]
fn a_replayed_jti_is_refused_even_after_a_crash() {
    let mut f = fixture();
    let mut assertions = Vec::new();
    for (key, id) in &f.clients {
        let assertion = key.assertion(Some(KID), &f.claims(id));
        f.accepted(&assertion, &format!("{} first use", key.alg()));
        f.refused(&assertion, &format!("{} second use", key.alg()));
        // A new assertion with the used jti but otherwise different (later iat) is a replay too.
        let mut claims: Value = jwt_parts(&assertion).1;
        claims["iat"] = json!(now());
        claims["exp"] = json!(now() + 120);
        f.refused(
            &key.assertion(Some(KID), &claims),
            &format!("{} same jti, new assertion", key.alg()),
        );
        assertions.push(assertion);
    }
    // The same jti from another client is that client's own business.
    let shared = random_jti();
    for (key, id) in &f.clients {
        let mut claims = f.claims(id);
        claims["jti"] = json!(shared);
        f.accepted(
            &key.assertion(Some(KID), &claims),
            &format!("{} shared jti", key.alg()),
        );
    }
    // An acknowledged jti is on disk: kill -9 and restart, and the replay still fails.
    f.server.kill();
    f.server.spawn();
    for assertion in &assertions {
        f.refused(assertion, "replay after a crash");
    }
}

#[test]
fn an_unknown_client_is_refused() {
    let f = fixture();
    let (key, _) = &f.clients[1];
    for id in ["no-such-client", "", "\u{0}"] {
        let mut claims = f.server.assertion_claims(id);
        claims["sub"] = json!(id);
        f.refused(
            &key.assertion(Some(KID), &claims),
            &format!("unknown client {id:?}"),
        );
    }
}

#[test]
fn garbage_assertions_are_invalid_client() {
    let f = fixture();
    let json_part = |v: &Value| b64(v.to_string().as_bytes());
    let (key, id) = &f.clients[1];
    let claims = json_part(&f.claims(id));
    let garbage: Vec<String> = vec![
        "garbage".into(),
        "a.b.c".into(),
        "..".into(),
        "a.b.c.d.e".into(),
        "e30.e30.e30".into(),
        format!("{}.{claims}.", json_part(&json!([1, 2]))),
        format!("{}.{claims}.", json_part(&json!({"kid": KID}))),
        format!("{}.{claims}.", json_part(&json!({"alg": 7}))),
        format!("{}.bm90IGpzb24.", json_part(&json!({"alg": "EdDSA"}))),
        format!(
            "{}.{}.",
            json_part(&json!({"alg": "EdDSA"})),
            json_part(&json!([1]))
        ),
        format!(
            "{}.{}.",
            json_part(&json!({"alg": "EdDSA"})),
            json_part(&json!("string"))
        ),
        format!("{}.{claims}.!!!", json_part(&json!({"alg": "EdDSA"}))),
        format!("{}.{claims}.AAAA====", json_part(&json!({"alg": "EdDSA"}))),
        // Padded base64url is not JOSE's encoding.
        format!("{}=.{claims}.", json_part(&json!({"alg": "EdDSA"}))),
        "é.é.é".into(),
        "x".repeat(9 * 1024),
        format!(
            "{}.{}.{}",
            "a".repeat(4000),
            "b".repeat(4000),
            "c".repeat(4000)
        ),
        // An access token of ours is not a client assertion.
        f.server.admin_token("audit:read"),
        // A JWE-shaped string (five parts).
        format!(
            "{}.{}.{}.{}.{}",
            json_part(&json!({"alg": "dir", "enc": "A128GCM"})),
            "",
            "aaaa",
            "bbbb",
            "cccc"
        ),
    ];
    for g in &garbage {
        f.refused(g, &format!("garbage {:.60}", g));
    }
    f.accepted(&key.assertion(Some(KID), &f.claims(id)), "control");
}

#[test]
fn a_wrong_or_missing_client_assertion_type_is_invalid_request() {
    let f = fixture();
    let (key, id) = &f.clients[0];
    let assertion = key.assertion(Some(KID), &f.claims(id));
    for assertion_type in [
        Some("urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer"),
        Some("jwt"),
        None,
    ] {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion", assertion.as_str()),
        ];
        if let Some(t) = assertion_type {
            form.push(("client_assertion_type", t));
        }
        let (status, _, body) = f.server.post_form_full("/oauth2/token", None, &form);
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{assertion_type:?}: {body}"
        );
    }
    // The type without an assertion.
    let (status, _, body) = f.server.post_form_full(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", common::JWT_BEARER),
        ],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    // None of that spent the jti.
    f.accepted(&assertion, "control");
}

#[test]
fn failed_assertions_are_audited_without_the_assertion() {
    let mut f = fixture();
    let (key, id) = &f.clients[0];
    let id = id.clone();
    let mut claims = f.claims(&id);
    claims["aud"] = json!("https://evil.example");
    let refused = key.assertion(Some(KID), &claims);
    f.refused(&refused, "wrong aud");
    let good = key.assertion(Some(KID), &f.claims(&id));
    f.accepted(&good, "good");
    let entries = f.server.audit_entries();
    let failed: Vec<_> = entries
        .iter()
        .filter(|e| {
            e.body.event.event == "client.auth_failed"
                && e.body.event.client.as_deref() == Some(&id)
        })
        .collect();
    assert_eq!(failed.len(), 1, "{entries:#?}");
    assert!(
        failed[0]
            .body
            .event
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("aud"),
        "{:?}",
        failed[0]
    );
    assert!(entries.iter().any(
        |e| e.body.event.event == "token.issued" && e.body.event.client.as_deref() == Some(&id)
    ));
    let text = serde_json::to_string(&entries).unwrap();
    for assertion in [&refused, &good] {
        let signature = assertion.rsplit('.').next().unwrap();
        assert!(
            !text.contains(signature),
            "an assertion is a credential until it expires"
        );
    }
}

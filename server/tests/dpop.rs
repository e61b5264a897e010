//! DPoP (RFC 9449) through the router in process (and once through the real binary): bound
//! tokens at every grant, each check of a proof refused on its own (every refused proof differs
//! from an accepted one in that one respect), bound refresh tokens and device codes, server
//! nonces, `dpop_bound_access_tokens`, and the admin API as a DPoP resource server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod device_support;

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use common::{b64, random_jti, ClientKey};
use device_support::{now, InProcess};
use hallmark_server::config::ConfigLayer;
use hallmark_server::oauth::registration::ClientMetadata;
use hallmark_server::oauth::RequestCtx;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

const ISSUER: &str = "https://localhost:8443";
const TOKEN: &str = "/oauth2/token";
const DEVICE_AUTHZ: &str = "/oauth2/device_authorization";
const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// RFC 7638 thumbprint, computed here independently of the server's code.
fn thumbprint(key: &ClientKey) -> String {
    let jwk = key.public_jwk(None);
    let canonical = match key {
        ClientKey::Es256 { .. } => format!(
            r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
            jwk["x"], jwk["y"]
        ),
        ClientKey::Ed25519(_) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":{}}}"#, jwk["x"]),
    };
    b64(&Sha256::digest(canonical.as_bytes()))
}

/// A proof's header and claims, to be adjusted by a test before signing.
struct ProofParts {
    header: Value,
    claims: Value,
}

impl ProofParts {
    fn new(key: &ClientKey, htm: &str, path: &str) -> Self {
        ProofParts {
            header: json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.public_jwk(None)}),
            claims: json!({"jti": random_jti(), "htm": htm, "htu": format!("{ISSUER}{path}"), "iat": now()}),
        }
    }

    fn sign(&self, key: &ClientKey) -> String {
        key.jwt(&self.header, &self.claims)
    }
}

/// A good proof for `htm` at `path`.
fn proof(key: &ClientKey, htm: &str, path: &str) -> String {
    ProofParts::new(key, htm, path).sign(key)
}

/// A good proof for a resource request carrying `token`.
fn resource_proof(key: &ClientKey, htm: &str, path: &str, token: &str) -> String {
    let mut p = ProofParts::new(key, htm, path);
    p.claims["ath"] = b64(&Sha256::digest(token.as_bytes())).into();
    p.sign(key)
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

async fn send(app: &axum::Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// POST a form to `path` with these extra headers (`DPoP`, `Authorization`).
async fn post(
    app: &axum::Router,
    path: &str,
    headers: &[(&str, &str)],
    form: &[(&str, &str)],
) -> Answer {
    let mut req = Request::post(path).header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = serde_urlencoded::to_string(form).unwrap();
    send(app, req.body(Body::from(body)).unwrap()).await
}

struct Fixture {
    s: InProcess,
    id: String,
    secret: String,
}

impl Fixture {
    async fn start(overrides: ConfigLayer) -> Self {
        let s = InProcess::start(overrides).await;
        let (id, secret) =
            register(&s, json!({"scope": "api:read audit:read clients:admin"})).await;
        Fixture { s, id, secret }
    }

    async fn client_credentials(&self, dpop: Option<&str>) -> Answer {
        let basic = common::basic_header(&self.id, &self.secret);
        let mut headers = vec![("authorization", basic.as_str())];
        if let Some(p) = dpop {
            headers.push(("dpop", p));
        }
        post(
            &self.s.app,
            TOKEN,
            &headers,
            &[
                ("grant_type", "client_credentials"),
                ("scope", "api:read audit:read clients:admin"),
            ],
        )
        .await
    }

    /// A token request with `proof`, which must be refused with `invalid_dpop_proof`.
    async fn refused(&self, proof: &str, why: &str) {
        let a = self.client_credentials(Some(proof)).await;
        assert_eq!(
            (a.status, a.error()),
            (400, "invalid_dpop_proof"),
            "{why}: {}",
            a.body
        );
    }
}

/// Register a client from metadata through the protocol core; (client_id, secret).
async fn register(s: &InProcess, meta: Value) -> (String, String) {
    let meta: ClientMetadata = serde_json::from_value(meta).unwrap();
    let info = s
        .oauth
        .register_client(meta, "test", &RequestCtx::at(now()))
        .await
        .unwrap();
    (info.client_id, info.client_secret.unwrap_or_default())
}

fn claims_of(token: &str) -> Value {
    common::jwt_parts(token).1
}

// ---------------------------------------------------------------------------------------------
// Issuance
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_proof_binds_the_token_to_its_key_for_es256_and_eddsa() {
    let f = Fixture::start(ConfigLayer::default()).await;
    for key in [ClientKey::es256(), ClientKey::ed25519()] {
        let a = f
            .client_credentials(Some(&proof(&key, "POST", TOKEN)))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["token_type"], "DPoP");
        let token = a.body["access_token"].as_str().unwrap();
        assert_eq!(claims_of(token)["cnf"]["jkt"], thumbprint(&key));
        // RFC 9449 §6.2: introspection says so too.
        let i = post(
            &f.s.app,
            "/oauth2/introspect",
            &[("authorization", &common::basic_header(&f.id, &f.secret))],
            &[("token", token)],
        )
        .await;
        assert_eq!(i.body["active"], true, "{}", i.body);
        assert_eq!(i.body["cnf"]["jkt"], thumbprint(&key));
        assert_eq!(i.body["token_type"], "DPoP");
    }
    // Without a proof: a bearer token, as before.
    let a = f.client_credentials(None).await;
    assert_eq!(a.body["token_type"], "Bearer");
    assert!(claims_of(a.body["access_token"].as_str().unwrap())
        .get("cnf")
        .is_none());
}

#[tokio::test]
async fn metadata_names_the_proof_algorithms() {
    let s = InProcess::start(ConfigLayer::default()).await;
    let req = Request::get("/.well-known/oauth-authorization-server")
        .body(Body::empty())
        .unwrap();
    let a = send(&s.app, req).await;
    assert_eq!(
        a.body["dpop_signing_alg_values_supported"],
        json!(["ES256", "EdDSA"])
    );
}

// ---------------------------------------------------------------------------------------------
// Each proof check (§4.3)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn htm_and_htu_must_name_this_request() {
    let f = Fixture::start(ConfigLayer::default()).await;
    let key = ClientKey::es256();
    f.refused(&proof(&key, "GET", TOKEN), "htm GET").await;
    f.refused(&proof(&key, "post", TOKEN), "htm lowercase")
        .await;
    f.refused(
        &proof(&key, "POST", "/oauth2/introspect"),
        "another endpoint",
    )
    .await;
    let mut p = ProofParts::new(&key, "POST", TOKEN);
    p.claims["htu"] = "https://evil.example/oauth2/token".into();
    f.refused(&p.sign(&key), "another host").await;
    // §4.3: query and fragment are ignored, as are case and the default port of the origin.
    let mut p = ProofParts::new(&key, "POST", TOKEN);
    p.claims["htu"] = "HTTPS://LOCALHOST:8443/oauth2/token?x=1#y".into();
    assert_eq!(f.client_credentials(Some(&p.sign(&key))).await.status, 200);
}

#[tokio::test]
async fn iat_must_be_recent_and_not_in_the_future() {
    let f = Fixture::start(ConfigLayer::default()).await;
    let key = ClientKey::ed25519();
    // Default window: 60 s of age plus 30 s of skew.
    for (iat, ok) in [
        (now() - 200, false),
        (now() - 80, true),
        (now() + 120, false),
        (now() + 20, true),
    ] {
        let mut p = ProofParts::new(&key, "POST", TOKEN);
        p.claims["iat"] = iat.into();
        let a = f.client_credentials(Some(&p.sign(&key))).await;
        if ok {
            assert_eq!(a.status, 200, "iat {iat}: {}", a.body);
        } else {
            assert_eq!(
                (a.status, a.error()),
                (400, "invalid_dpop_proof"),
                "iat {iat}"
            );
        }
    }
}

#[tokio::test]
async fn a_jti_is_accepted_once() {
    let f = Fixture::start(ConfigLayer::default()).await;
    let key = ClientKey::es256();
    let p = proof(&key, "POST", TOKEN);
    assert_eq!(f.client_credentials(Some(&p)).await.status, 200);
    f.refused(&p, "the same proof again").await;
    // The same jti under another key is another key's business (jtis are per key).
    let other = ClientKey::es256();
    let mut q = ProofParts::new(&other, "POST", TOKEN);
    q.claims["jti"] = claims_of(&p)["jti"].clone();
    assert_eq!(
        f.client_credentials(Some(&q.sign(&other))).await.status,
        200
    );
}

#[tokio::test]
async fn alg_typ_jwk_and_signature_are_checked() {
    let f = Fixture::start(ConfigLayer::default()).await;
    let es = ClientKey::es256();
    let ed = ClientKey::ed25519();
    // alg must be the jwk's: an ES256 key under an EdDSA header (and the reverse) is refused
    // even though the signature is the key's own.
    let mut p = ProofParts::new(&es, "POST", TOKEN);
    p.header["alg"] = "EdDSA".into();
    f.refused(&p.sign(&es), "ES256 key, EdDSA alg").await;
    let mut p = ProofParts::new(&ed, "POST", TOKEN);
    p.header["alg"] = "ES256".into();
    f.refused(&p.sign(&ed), "EdDSA key, ES256 alg").await;
    for alg in ["none", "HS256", "RS256"] {
        let mut p = ProofParts::new(&es, "POST", TOKEN);
        p.header["alg"] = alg.into();
        f.refused(&p.sign(&es), alg).await;
    }
    // A private member in the jwk.
    let mut p = ProofParts::new(&es, "POST", TOKEN);
    p.header["jwk"]["d"] = b64(&[7u8; 32]).into();
    f.refused(&p.sign(&es), "private jwk").await;
    // typ.
    for typ in [Some("JWT"), Some("at+jwt"), None] {
        let mut p = ProofParts::new(&es, "POST", TOKEN);
        match typ {
            Some(t) => p.header["typ"] = t.into(),
            None => {
                p.header.as_object_mut().unwrap().remove("typ");
            }
        }
        f.refused(&p.sign(&es), &format!("typ {typ:?}")).await;
    }
    // The jwk is not the signer's key.
    let mut p = ProofParts::new(&es, "POST", TOKEN);
    p.header["jwk"] = ClientKey::es256().public_jwk(None);
    f.refused(&p.sign(&es), "jwk of another key").await;
    // No jwk at all.
    let mut p = ProofParts::new(&es, "POST", TOKEN);
    p.header.as_object_mut().unwrap().remove("jwk");
    f.refused(&p.sign(&es), "no jwk").await;
    // Garbage.
    f.refused("not.a.proof", "garbage").await;
    // Two DPoP headers.
    let basic = common::basic_header(&f.id, &f.secret);
    let (p1, p2) = (proof(&es, "POST", TOKEN), proof(&es, "POST", TOKEN));
    let a = post(
        &f.s.app,
        TOKEN,
        &[("authorization", &basic), ("dpop", &p1), ("dpop", &p2)],
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!((a.status, a.error()), (400, "invalid_dpop_proof"));
}

// ---------------------------------------------------------------------------------------------
// Nonces (§8)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn with_nonces_required_a_proof_needs_a_fresh_one() {
    let f = Fixture::start(ConfigLayer {
        dpop_nonce: Some(true),
        ..ConfigLayer::default()
    })
    .await;
    let key = ClientKey::es256();
    let a = f
        .client_credentials(Some(&proof(&key, "POST", TOKEN)))
        .await;
    assert_eq!((a.status, a.error()), (400, "use_dpop_nonce"), "{}", a.body);
    let nonce = a.headers["dpop-nonce"].to_str().unwrap().to_owned();
    let mut p = ProofParts::new(&key, "POST", TOKEN);
    p.claims["nonce"] = nonce.clone().into();
    let ok = f.client_credentials(Some(&p.sign(&key))).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.headers.contains_key("dpop-nonce"));
    // An old nonce (issued ten minutes ago) and a made-up one are refused the same way.
    for stale in [f.s.oauth.dpop_nonce(now() - 600), b64(&[0u8; 24])] {
        let mut p = ProofParts::new(&key, "POST", TOKEN);
        p.claims["nonce"] = stale.into();
        let a = f.client_credentials(Some(&p.sign(&key))).await;
        assert_eq!((a.status, a.error()), (400, "use_dpop_nonce"));
        assert!(a.headers.contains_key("dpop-nonce"));
    }
}

#[tokio::test]
async fn without_nonces_configured_none_is_asked_for() {
    let f = Fixture::start(ConfigLayer::default()).await;
    let a = f
        .client_credentials(Some(&proof(&ClientKey::es256(), "POST", TOKEN)))
        .await;
    assert_eq!(a.status, 200);
    assert!(!a.headers.contains_key("dpop-nonce"));
}

// ---------------------------------------------------------------------------------------------
// dpop_bound_access_tokens (§5.2)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_registered_for_dpop_gets_no_token_without_a_proof() {
    let s = InProcess::start(ConfigLayer::default()).await;
    let (id, secret) = register(
        &s,
        json!({"scope": "api:read", "dpop_bound_access_tokens": true}),
    )
    .await;
    let basic = common::basic_header(&id, &secret);
    let form = [("grant_type", "client_credentials")];
    let a = post(&s.app, TOKEN, &[("authorization", &basic)], &form).await;
    assert_eq!(
        (a.status, a.error()),
        (400, "invalid_dpop_proof"),
        "{}",
        a.body
    );
    let p = proof(&ClientKey::es256(), "POST", TOKEN);
    let a = post(
        &s.app,
        TOKEN,
        &[("authorization", &basic), ("dpop", &p)],
        &form,
    )
    .await;
    assert_eq!(
        (a.status, a.body["token_type"].as_str()),
        (200, Some("DPoP"))
    );
    // The default is false: another client still gets bearer tokens.
    let (id, secret) = register(&s, json!({"scope": "api:read"})).await;
    let basic = common::basic_header(&id, &secret);
    let a = post(&s.app, TOKEN, &[("authorization", &basic)], &form).await;
    assert_eq!(a.status, 200);
}

// ---------------------------------------------------------------------------------------------
// The device flow (§10) and refresh tokens (§5)
// ---------------------------------------------------------------------------------------------

/// A public device client, a person, and a device authorization made with `dpop`'s proof.
async fn device_grant(s: &InProcess, client: &str, dpop: Option<&ClientKey>) -> (String, String) {
    let mut headers = Vec::new();
    let p = dpop.map(|k| proof(k, "POST", DEVICE_AUTHZ));
    if let Some(p) = &p {
        headers.push(("dpop", p.as_str()));
    }
    let a = post(&s.app, DEVICE_AUTHZ, &headers, &[("client_id", client)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    (
        a.body["device_code"].as_str().unwrap().to_owned(),
        a.body["user_code"].as_str().unwrap().to_owned(),
    )
}

async fn poll(s: &InProcess, client: &str, code: &str, key: Option<&ClientKey>) -> Answer {
    let p = key.map(|k| proof(k, "POST", TOKEN));
    let headers: Vec<(&str, &str)> = p.iter().map(|p| ("dpop", p.as_str())).collect();
    post(
        &s.app,
        TOKEN,
        &headers,
        &[
            ("grant_type", DEVICE_CODE),
            ("client_id", client),
            ("device_code", code),
        ],
    )
    .await
}

async fn refresh(s: &InProcess, client: &str, rt: &str, key: Option<&ClientKey>) -> Answer {
    let p = key.map(|k| proof(k, "POST", TOKEN));
    let headers: Vec<(&str, &str)> = p.iter().map(|p| ("dpop", p.as_str())).collect();
    post(
        &s.app,
        TOKEN,
        &headers,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", client),
            ("refresh_token", rt),
        ],
    )
    .await
}

#[tokio::test]
async fn a_bound_device_code_is_polled_only_with_its_key() {
    let s = InProcess::start(ConfigLayer::default()).await;
    let client = s.device_client("Thermostat", "api:read").await;
    s.add_user("ann", "correct horse battery").await;
    let key = ClientKey::es256();
    let (code, user_code) = device_grant(&s, &client, Some(&key)).await;
    s.decide(&user_code, "ann", true, now()).await;
    // Another key, or none: refused, and the approved code is not spent by it.
    let a = poll(&s, &client, &code, Some(&ClientKey::es256())).await;
    assert_eq!(
        (a.status, a.error()),
        (400, "invalid_dpop_proof"),
        "{}",
        a.body
    );
    let a = poll(&s, &client, &code, None).await;
    assert_eq!(
        (a.status, a.error()),
        (400, "invalid_dpop_proof"),
        "{}",
        a.body
    );
    let a = poll(&s, &client, &code, Some(&key)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["token_type"], "DPoP");
    assert_eq!(
        claims_of(a.body["access_token"].as_str().unwrap())["cnf"]["jkt"],
        thumbprint(&key)
    );
}

#[tokio::test]
async fn a_public_clients_refresh_token_is_redeemed_only_with_a_proof_by_its_key() {
    let s = InProcess::start(ConfigLayer::default()).await;
    let client = s.device_client("Thermostat", "api:read").await;
    s.add_user("ann", "correct horse battery").await;
    let key = ClientKey::ed25519();
    let (code, user_code) = device_grant(&s, &client, Some(&key)).await;
    s.decide(&user_code, "ann", true, now()).await;
    let a = poll(&s, &client, &code, Some(&key)).await;
    let rt = a.body["refresh_token"].as_str().unwrap().to_owned();
    // A thief with the refresh token but not the key gets nothing, and spends nothing.
    let a = refresh(&s, &client, &rt, Some(&ClientKey::ed25519())).await;
    assert_eq!(
        (a.status, a.error()),
        (400, "invalid_dpop_proof"),
        "{}",
        a.body
    );
    let a = refresh(&s, &client, &rt, None).await;
    assert_eq!(
        (a.status, a.error()),
        (400, "invalid_dpop_proof"),
        "{}",
        a.body
    );
    let a = refresh(&s, &client, &rt, Some(&key)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["token_type"], "DPoP");
    // The successor is bound too.
    let next = a.body["refresh_token"].as_str().unwrap().to_owned();
    let a = refresh(&s, &client, &next, Some(&ClientKey::es256())).await;
    assert_eq!(a.error(), "invalid_dpop_proof");
    assert_eq!(refresh(&s, &client, &next, Some(&key)).await.status, 200);
}

#[tokio::test]
async fn an_unbound_device_code_still_works_without_dpop() {
    let s = InProcess::start(ConfigLayer::default()).await;
    let client = s.device_client("Thermostat", "api:read").await;
    s.add_user("ann", "correct horse battery").await;
    let (code, user_code) = device_grant(&s, &client, None).await;
    s.decide(&user_code, "ann", true, now()).await;
    let a = poll(&s, &client, &code, None).await;
    assert_eq!(
        (a.status, a.body["token_type"].as_str()),
        (200, Some("Bearer"))
    );
    let rt = a.body["refresh_token"].as_str().unwrap();
    assert_eq!(refresh(&s, &client, rt, None).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Token exchange
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn exchange_keeps_the_subject_binding_unless_the_actor_proves_its_own_key() {
    let f = Fixture::start(ConfigLayer::default()).await;
    let subject_key = ClientKey::es256();
    let a = f
        .client_credentials(Some(&proof(&subject_key, "POST", TOKEN)))
        .await;
    let subject = a.body["access_token"].as_str().unwrap().to_owned();
    let (id, secret) = register(
        &f.s,
        json!({"scope": "api:read", "grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"]}),
    )
    .await;
    let basic = common::basic_header(&id, &secret);
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", subject.as_str()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("scope", "api:read"),
    ];
    let a = post(&f.s.app, TOKEN, &[("authorization", &basic)], &form).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["token_type"], "DPoP");
    assert_eq!(
        claims_of(a.body["access_token"].as_str().unwrap())["cnf"]["jkt"],
        thumbprint(&subject_key)
    );
    let actor_key = ClientKey::ed25519();
    let p = proof(&actor_key, "POST", TOKEN);
    let a = post(
        &f.s.app,
        TOKEN,
        &[("authorization", &basic), ("dpop", &p)],
        &form,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        claims_of(a.body["access_token"].as_str().unwrap())["cnf"]["jkt"],
        thumbprint(&actor_key)
    );
}

// ---------------------------------------------------------------------------------------------
// The admin API as a resource server (§7)
// ---------------------------------------------------------------------------------------------

const CHAINS: &str = "/admin/audit/chains";

async fn get_chains(f: &Fixture, authorization: &str, dpop: Option<&str>) -> Answer {
    let mut req = Request::get(CHAINS).header("authorization", authorization);
    if let Some(p) = dpop {
        req = req.header("dpop", p);
    }
    send(&f.s.app, req.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn a_bound_token_is_accepted_only_with_a_proof_by_its_key_covering_it() {
    let f = Fixture::start(ConfigLayer::default()).await;
    let key = ClientKey::es256();
    let a = f
        .client_credentials(Some(&proof(&key, "POST", TOKEN)))
        .await;
    let token = a.body["access_token"].as_str().unwrap().to_owned();
    let dpop_auth = format!("DPoP {token}");

    // Twice with fresh proofs: the second validation is served by the verified-token cache,
    // and the binding still holds.
    for _ in 0..2 {
        let a = get_chains(
            &f,
            &dpop_auth,
            Some(&resource_proof(&key, "GET", CHAINS, &token)),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // As a bearer token (§7.2): refused, cached or not.
    let a = get_chains(&f, &format!("Bearer {token}"), None).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.error(), "invalid_token");
    // No proof, no ath, a wrong ath, another key, another method, a replayed proof.
    let refused = |a: &Answer, why: &str| {
        assert_eq!(
            (a.status, a.error()),
            (401, "invalid_dpop_proof"),
            "{why}: {}",
            a.body
        );
        assert!(
            a.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("DPoP "),
            "{why}"
        );
    };
    refused(&get_chains(&f, &dpop_auth, None).await, "no proof");
    refused(
        &get_chains(&f, &dpop_auth, Some(&proof(&key, "GET", CHAINS))).await,
        "no ath",
    );
    refused(
        &get_chains(
            &f,
            &dpop_auth,
            Some(&resource_proof(&key, "GET", CHAINS, "another token")),
        )
        .await,
        "wrong ath",
    );
    let other = ClientKey::es256();
    refused(
        &get_chains(
            &f,
            &dpop_auth,
            Some(&resource_proof(&other, "GET", CHAINS, &token)),
        )
        .await,
        "another key",
    );
    refused(
        &get_chains(
            &f,
            &dpop_auth,
            Some(&resource_proof(&key, "POST", CHAINS, &token)),
        )
        .await,
        "htm",
    );
    let once = resource_proof(&key, "GET", CHAINS, &token);
    assert_eq!(get_chains(&f, &dpop_auth, Some(&once)).await.status, 200);
    refused(
        &get_chains(&f, &dpop_auth, Some(&once)).await,
        "replayed proof",
    );

    // An unbound token under the DPoP scheme proves nothing about a key.
    let bearer = f.client_credentials(None).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    refused(
        &get_chains(
            &f,
            &format!("DPoP {bearer}"),
            Some(&resource_proof(&key, "GET", CHAINS, &bearer)),
        )
        .await,
        "unbound token",
    );
    assert_eq!(
        get_chains(&f, &format!("Bearer {bearer}"), None)
            .await
            .status,
        200
    );

    // A route with a body (POST /admin/clients) takes the DPoP scheme too.
    let p = resource_proof(&key, "POST", "/admin/clients", &token);
    let req = Request::post("/admin/clients")
        .header("authorization", &dpop_auth)
        .header("dpop", &p)
        .header("content-type", "application/json")
        .body(Body::from(json!({"scope": "api:read"}).to_string()))
        .unwrap();
    let a = send(&f.s.app, req).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["dpop_bound_access_tokens"], false);
}

// ---------------------------------------------------------------------------------------------
// Through the real server binary, checked by an independent JWT library
// ---------------------------------------------------------------------------------------------

#[test]
fn the_real_server_binds_tokens_that_jsonwebtoken_verifies() {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

    let server = common::TestServer::start();
    let (id, secret) = server.register_secret_client("a", "client_secret_basic");
    let key = ClientKey::es256();
    let claims =
        json!({"jti": random_jti(), "htm": "POST", "htu": server.url(TOKEN), "iat": now()});
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk(None)});
    let p = key.jwt(&header, &claims);
    let http = &server.http;
    let mut r = http
        .post(&server.url(TOKEN))
        .header("Authorization", &common::basic_header(&id, &secret))
        .header("DPoP", &p)
        .send_form([("grant_type", "client_credentials")])
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["token_type"], "DPoP");
    let token = body["access_token"].as_str().unwrap();

    let jwks: JwkSet = serde_json::from_value(server.jwks()).unwrap();
    let kid = decode_header(token).unwrap().kid.unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[&server.issuer]);
    validation.set_audience(&[&server.issuer]);
    let data = decode::<Value>(
        token,
        &DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap(),
        &validation,
    )
    .expect("independent verification");
    assert_eq!(data.claims["cnf"]["jkt"], thumbprint(&key));

    // The same proof again is a replay, over the wire too.
    let r = http
        .post(&server.url(TOKEN))
        .header("Authorization", &common::basic_header(&id, &secret))
        .header("DPoP", &p)
        .send_form([("grant_type", "client_credentials")])
        .unwrap();
    assert_eq!(r.status(), 400);
}

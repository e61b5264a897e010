//! The token endpoint's hot path, piece by piece, in-process: minting an access token (Ed25519
//! signing), validating one (what introspection and the admin API do) seen before or fresh,
//! introspecting one (RFC 7662, caller authentication included), and verifying a client
//! assertion for an ES256 and an EdDSA client key (ring verification, claim checks, the jti
//! recorded once), and verifying a DPoP proof (RFC 9449) of each algorithm. Run with
//! `cargo bench -p hallmark-server --bench tokens`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hallmark_server::config::{ConfigLayer, ServeSettings};
use hallmark_server::datadir::{self, InitOptions};
use hallmark_server::oauth::client_auth::Presented;
use hallmark_server::oauth::form::Form;
use hallmark_server::oauth::registration::{client_from_metadata, ClientMetadata};
use hallmark_server::oauth::{AuthServer, RequestCtx};
use hallmark_server::secret::Secret;
use ring::rand::SecureRandom as _;
use serde_json::json;

/// A server core over a fresh data directory, as `serve` builds it.
struct Bench {
    oauth: AuthServer,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn server() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(datadir::init(&InitOptions {
            data_dir: data_dir.clone(),
            issuer: "https://localhost:8443".into(),
            hosts: vec!["localhost".into()],
            database: None,
        }))
        .unwrap();
    let settings = ServeSettings::resolve(&data_dir, None, ConfigLayer::default()).unwrap();
    // The group committer is a tokio task; the paths measured here never wait on it.
    let built = runtime
        .block_on(hallmark_server::serve::build(&settings))
        .unwrap();
    Bench {
        oauth: built.oauth,
        runtime,
        _dir: dir,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A client key that signs assertions the way a device does.
enum Key {
    Es256(ring::signature::EcdsaKeyPair),
    Ed25519(ed25519_dalek::SigningKey),
}

impl Key {
    fn alg(&self) -> &'static str {
        match self {
            Key::Es256(_) => "ES256",
            Key::Ed25519(_) => "EdDSA",
        }
    }

    fn jwk(&self) -> serde_json::Value {
        match self {
            Key::Es256(pair) => {
                let p = ring::signature::KeyPair::public_key(pair).as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": "k", "x": b64(&p[1..33]), "y": b64(&p[33..])})
            }
            Key::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": b64(k.verifying_key().as_bytes())})
            }
        }
    }

    fn assertion(&self, client_id: &str, audience: &str, now: u64, n: u64) -> String {
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": "k"});
        let claims = json!({
            "iss": client_id, "sub": client_id, "aud": audience,
            "iat": now, "exp": now + 120, "jti": format!("bench-{n}"),
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = match self {
            Key::Es256(pair) => pair
                .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            Key::Ed25519(k) => ed25519_dalek::Signer::sign(k, input.as_bytes())
                .to_bytes()
                .to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }
}

fn es256() -> Key {
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    Key::Es256(ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap())
}

fn ed25519() -> Key {
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut seed).unwrap();
    Key::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Register a `private_key_jwt` client holding `key`; its client_id.
fn register(oauth: &AuthServer, key: &Key) -> String {
    let meta = ClientMetadata {
        scope: Some("telemetry".into()),
        token_endpoint_auth_method: Some("private_key_jwt".into()),
        jwks: Some(json!({"keys": [key.jwk()]})),
        ..ClientMetadata::default()
    };
    let (client, _) = client_from_metadata(meta, hallmark_server::unix_now()).unwrap();
    assert!(
        hallmark_server::store::block_on(oauth.clients.insert_new_client(&client))
            .unwrap()
            .unwrap()
    );
    client.client_id
}

fn mint(c: &mut Criterion) {
    let b = server();
    let now = hallmark_server::unix_now();
    let mut group = c.benchmark_group("access_token");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mint", |bench| {
        bench.iter(|| {
            black_box(b.oauth.mint_access_token(
                "device-1",
                "device-1",
                "telemetry sensors:read",
                black_box(now),
            ))
        })
    });
    let (token, _) = b
        .oauth
        .mint_access_token("device-1", "device-1", "telemetry", now);
    // The token's client must exist for validation to succeed.
    let (mut client, secret) = client_from_metadata(
        ClientMetadata {
            scope: Some("telemetry".into()),
            ..ClientMetadata::default()
        },
        now,
    )
    .unwrap();
    let secret = secret.expect("a client_secret_basic client gets a secret");
    client.client_id = "device-1".into();
    let rt = &b.runtime;
    assert!(rt
        .block_on(b.oauth.clients.insert_new_client(&client))
        .unwrap());
    assert!(rt
        .block_on(b.oauth.validate_access_token(&token, now))
        .is_ok());
    // The store is async; each iteration runs the validation to completion on the runtime (a
    // cache hit never yields, so this measures the validation plus a block_on's overhead).
    // `validate`: the same token every time, as a resource server introspects it (a hit in the
    // verified-token cache); `validate_fresh`: a token never seen before (the full Ed25519
    // verification and claims parse, then the cache insert), minted untimed.
    group.bench_function("validate", |bench| {
        bench.iter(|| {
            black_box(
                rt.block_on(b.oauth.validate_access_token(black_box(&token), now))
                    .unwrap(),
            )
        })
    });
    group.bench_function("validate_fresh", |bench| {
        bench.iter_batched(
            || {
                b.oauth
                    .mint_access_token("device-1", "device-1", "telemetry", now)
                    .0
            },
            |fresh| {
                rt.block_on(b.oauth.validate_access_token(&fresh, now))
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    // RFC 7662 in-process, as `POST /oauth2/introspect` runs it after the HTTP layer: the
    // caller authenticates with client_secret_basic and introspects its own token.
    let introspect = |token: &str| {
        let presented = Presented::Basic {
            client_id: "device-1".into(),
            secret: zeroize::Zeroizing::new(secret.expose().to_owned()),
        };
        let form = Form::from_pairs(vec![("token".into(), token.to_owned())]).unwrap();
        let answer = rt
            .block_on(b.oauth.introspect(presented, form, &RequestCtx::at(now)))
            .unwrap();
        assert!(answer.active);
        answer
    };
    group.bench_function("introspect", |bench| {
        bench.iter(|| black_box(introspect(black_box(&token))))
    });
    group.bench_function("introspect_fresh", |bench| {
        bench.iter_batched(
            || {
                b.oauth
                    .mint_access_token("device-1", "device-1", "telemetry", now)
                    .0
            },
            |fresh| introspect(&fresh),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn assertions(c: &mut Criterion) {
    let b = server();
    let audience = b.oauth.settings.token_endpoint.clone();
    let mut group = c.benchmark_group("client_assertion");
    group.throughput(Throughput::Elements(1));
    for key in [es256(), ed25519()] {
        let id = register(&b.oauth, &key);
        let now = hallmark_server::unix_now();
        let mut n = 0u64;
        let first = key.assertion(&id, &audience, now, u64::MAX);
        let rt = &b.runtime;
        assert!(rt
            .block_on(b.oauth.verify_assertion_uncommitted(None, &first, now))
            .is_ok());
        // Each jti is accepted once, so every iteration gets a fresh assertion, made untimed.
        group.bench_function(format!("verify_{}", key.alg()), |bench| {
            bench.iter_batched(
                || {
                    n += 1;
                    key.assertion(&id, &audience, now, n)
                },
                |assertion| {
                    rt.block_on(b.oauth.verify_assertion_uncommitted(None, &assertion, now))
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// A DPoP proof (RFC 9449 §4.2) by `key` for POST at the token endpoint, jti `bench-{n}`.
fn dpop_proof(key: &Key, htu: &str, now: u64, n: u64) -> String {
    let mut jwk = key.jwk();
    jwk.as_object_mut().unwrap().remove("kid");
    let header = json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": jwk});
    let claims = json!({"jti": format!("bench-{n}"), "htm": "POST", "htu": htu, "iat": now});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = match key {
        Key::Es256(pair) => pair
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec(),
        Key::Ed25519(k) => ed25519_dalek::Signer::sign(k, input.as_bytes())
            .to_bytes()
            .to_vec(),
    };
    format!("{input}.{}", b64(&sig))
}

/// DPoP proof verification as the token endpoint does it: parse, the embedded JWK, the
/// signature, every claim check, the thumbprint and the jti recorded once (not flushed).
fn dpop(c: &mut Criterion) {
    use hallmark_server::oauth::dpop::ProofRequest;
    let b = server();
    let htu = b.oauth.settings.token_endpoint.clone();
    let mut group = c.benchmark_group("dpop_proof");
    group.throughput(Throughput::Elements(1));
    for key in [es256(), ed25519()] {
        let now = hallmark_server::unix_now();
        let mut n = 0u64;
        let rt = &b.runtime;
        group.bench_function(format!("verify_{}", key.alg()), |bench| {
            bench.iter_batched(
                || {
                    n += 1;
                    ProofRequest {
                        proof: Some(dpop_proof(&key, &htu, now, n)),
                        repeated: false,
                        method: "POST".into(),
                        url: htu.clone(),
                    }
                },
                |request| {
                    rt.block_on(b.oauth.check_dpop_proof(&request, None, now))
                        .unwrap()
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn secrets(c: &mut Criterion) {
    // For scale: what client_secret_basic costs once the client is found (SHA-256, constant-time).
    let secret = Secret::generate();
    let hash = secret.hash();
    let presented = secret.expose().to_owned();
    c.bench_function("client_secret/verify", |bench| {
        bench.iter(|| black_box(hash.matches(black_box(&presented))))
    });
}

criterion_group!(benches, mint, assertions, dpop, secrets);
criterion_main!(benches);

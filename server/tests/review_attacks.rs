//! The outside review's attacks (issue 10), each performed against the real `hallmark-server`
//! over TLS: a station making itself admin, log and audit injection, quadratic scopes, slow and
//! silent connections, revocation hints, the registered authentication method, stock-library
//! client assertions, and error bodies that are not JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{basic_header, ClientKey, TestServer};

/// A station client (scope `devices:provision`) and its token.
fn station(server: &TestServer) -> String {
    let (id, secret) = server.register_secret_client("devices:provision", "client_secret_basic");
    let (status, _, body) = server.token_basic(&id, &secret, Some("devices:provision"));
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// `POST /admin/devices` as the station; (status, body).
fn register_device(server: &TestServer, token: &str, body: Value) -> (u16, Value) {
    server.post_raw(
        "/admin/devices",
        "application/json",
        Some(&format!("Bearer {token}")),
        body.to_string().as_bytes(),
    )
}

fn fingerprint(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

#[test]
fn a_station_cannot_mint_a_device_that_holds_admin_scopes() {
    let server = TestServer::start();
    let station = station(&server);
    // The attack: ask for every admin scope, then use the factory secret as an admin.
    let (status, body) = register_device(
        &server,
        &station,
        json!({"serial": "EVIL-1", "model": "m", "ek_fingerprint": fingerprint(1),
               "scopes": ["clients:admin", "devices:admin", "audit:read", "users:admin"]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_scope", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("device_scopes"),
        "{body}"
    );
    let (status, _) = register_device(
        &server,
        &station,
        json!({"serial": "EVIL-2", "model": "m", "ek_fingerprint": fingerprint(2),
               "scopes": ["device", "devices:provision"]}),
    );
    assert_eq!(status, 400);

    // A device registered within the set gets exactly the set, and nothing more.
    let (status, body) = register_device(
        &server,
        &station,
        json!({"serial": "OK-1", "model": "m", "ek_fingerprint": fingerprint(3)}),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["client_id"].as_str().unwrap();
    let secret = body["factory_secret"].as_str().unwrap();
    let (status, _, token) = server.token_basic(id, secret, None);
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["scope"], "device");
    let (status, _, refused) = server.token_basic(id, secret, Some("clients:admin"));
    assert_eq!(
        (status, refused["error"].as_str()),
        (400, Some("invalid_scope"))
    );
}

#[test]
fn devices_lose_scopes_the_server_no_longer_allows_at_their_next_token() {
    let mut server = TestServer::start_with(&[
        "--device-scope",
        "device",
        "--device-scope",
        "telemetry:write",
    ]);
    let station = station(&server);
    let (status, body) = register_device(
        &server,
        &station,
        json!({"serial": "T-1", "model": "m", "ek_fingerprint": fingerprint(4),
               "scopes": ["device", "telemetry:write"]}),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["client_id"].as_str().unwrap().to_owned();
    let secret = body["factory_secret"].as_str().unwrap().to_owned();
    let (_, _, token) = server.token_basic(&id, &secret, None);
    assert_eq!(token["scope"], "device telemetry:write");

    // The operator narrows the set; the registration still lists the old scopes.
    server.kill();
    server.set_extra_args(&["--device-scope", "device"]);
    server.spawn();
    let (status, _, token) = server.token_basic(&id, &secret, None);
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["scope"], "device");
    let (status, _, refused) = server.token_basic(&id, &secret, Some("telemetry:write"));
    assert_eq!(
        (status, refused["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    // Other clients keep what they registered.
    let (other, other_secret) = server.register_secret_client("api:read", "client_secret_basic");
    let (_, _, token) = server.token_basic(&other, &other_secret, None);
    assert_eq!(token["scope"], "api:read");
}

#[test]
fn the_server_refuses_to_start_with_an_admin_scope_in_device_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    common::init(&data_dir, "https://localhost:8443");
    let out = common::run_cli(
        &[
            "serve".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:1".as_ref(),
        ],
        &[("HALLMARK_DEVICE_SCOPES", "device,users:admin")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("users:admin"), "{err}");
}

#[test]
fn request_values_never_forge_log_lines_or_bloat_the_audit_log() {
    let server = TestServer::start();
    let forged = "x\n2026-01-01T00:00:00Z  INFO hallmark: admin login accepted";
    let escape = "x\u{1b}[2J\u{0}";
    let huge = "A".repeat(50_000);
    let typed_secret = "S3cretTypedAsTheUserName";
    for id in [forged, escape, huge.as_str()] {
        let (status, _) = server.post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", "wrong"),
            ],
        );
        assert_eq!(status, 401);
    }
    let (status, _, _) = server.token_basic(typed_secret, "pw", None);
    assert_eq!(status, 401);

    let log = server.log();
    assert!(!log.contains("admin login accepted\n"), "{log}");
    assert!(
        !log.contains('\u{1b}') && !log.contains('\0'),
        "raw control bytes in the log"
    );
    assert!(!log.contains(typed_secret), "{log}");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2_000, "a log line of {longest} bytes");

    let audit = server.audit_log();
    let failures: Vec<&Value> = audit
        .iter()
        .filter(|e| e["event"] == "client.auth_failed")
        .collect();
    assert_eq!(failures.len(), 4, "{failures:?}");
    for entry in &failures {
        let text = entry.to_string();
        assert!(text.len() < 1_500, "an audit entry of {} bytes", text.len());
        assert!(
            !text.contains(typed_secret) && !text.contains("admin login"),
            "{text}"
        );
        // Unknown clients are kept as fingerprints, so repeated attempts stay traceable.
        assert!(
            entry["client"].as_str().unwrap().starts_with("unknown#"),
            "{text}"
        );
    }
}

#[test]
fn a_huge_scope_is_refused_by_its_size() {
    let server = TestServer::start();
    let device = server.register(json!({
        "client_name": "public device",
        "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"],
        "scope": "device",
        "token_endpoint_auth_method": "none",
    }));
    let id = device["client_id"].as_str().unwrap();
    // 10,500 distinct scope tokens, 62 KB: parsed with a quadratic dedup before.
    let scope: Vec<String> = (0..10_500).map(|i| format!("s{i:04}")).collect();
    let scope = scope.join(" ");
    let (status, body) = server.post_form(
        "/oauth2/device_authorization",
        None,
        &[("client_id", id), ("scope", &scope)],
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_scope");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("more than 64 scopes"),
        "{body}"
    );
    let (status, body) = server.post_form(
        "/oauth2/device_authorization",
        None,
        &[("client_id", id), ("scope", &"s".repeat(129))],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
}

/// A TLS connection that sends `partial` (an unfinished request) and then nothing; returns how
/// long the server took to close it, or `None` if it was still open after `limit`.
fn stall(
    server: &TestServer,
    partial: &[u8],
    limit: Duration,
) -> std::thread::JoinHandle<Option<Duration>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&server.ca_cert).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let port = server.port;
    let partial = partial.to_vec();
    std::thread::spawn(move || {
        let conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(limit)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&partial).unwrap();
        tls.flush().unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match tls.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                // Reset or unclean close: closed all the same.
                Err(_) => return Some(started.elapsed()),
            }
        }
    })
}

#[test]
fn slow_header_senders_are_cut_off() {
    let server = TestServer::start_with(&["--header-read-timeout", "2", "--idle-timeout", "30"]);
    let partial = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: localhost:{}\r\nX-Slow: ",
        server.port
    );
    let stalled: Vec<_> = (0..50)
        .map(|_| stall(&server, partial.as_bytes(), Duration::from_secs(20)))
        .collect();
    for handle in stalled {
        assert!(
            handle.join().unwrap().is_some(),
            "a connection with unfinished headers was still open after 20 s"
        );
    }
    // The server still serves.
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn silent_connections_are_closed_and_their_number_is_capped() {
    let server = TestServer::start_with(&[
        "--header-read-timeout",
        "30",
        "--idle-timeout",
        "3",
        "--max-connections",
        "8",
    ]);
    // Idle after a complete request: closed by the idle timeout, not kept for ever.
    let idle = stall(
        &server,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            server.port
        )
        .as_bytes(),
        Duration::from_secs(20),
    );
    assert!(
        idle.join().unwrap().is_some(),
        "an idle connection stayed open"
    );

    // Eight silent TCP connections take every slot; a ninth is closed at once, and logged.
    let silent: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut ninth = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    ninth
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1];
    match ninth.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the connection past the limit was kept: {other:?}"),
    }
    assert!(
        server.log().contains("connection limit reached"),
        "{}",
        server.log()
    );
    // When the silent ones are gone (closed by the idle timeout), requests are served again.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = server.http.get(&server.url("/healthz")).call() {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not served after the slots freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_unknown_token_type_hint_still_revokes() {
    let server = TestServer::start();
    let (id, secret) = server.register_secret_client("api:read", "client_secret_basic");
    let (_, _, token) = server.token_basic(&id, &secret, None);
    let token = token["access_token"].as_str().unwrap();
    let (status, body) = server.post_form(
        "/oauth2/revoke",
        Some((&id, &secret)),
        &[("token", token), ("token_type_hint", "session_cookie")],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.introspect(token)["active"], false);
}

#[test]
fn a_secret_is_accepted_only_by_the_method_it_was_registered_for() {
    let server = TestServer::start();
    let (basic_id, basic_secret) = server.register_secret_client("api:read", "client_secret_basic");
    let (post_id, post_secret) = server.register_secret_client("api:read", "client_secret_post");
    let (status, _) = server.post_form(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &basic_id),
            ("client_secret", &basic_secret),
        ],
    );
    assert_eq!(
        status, 401,
        "a client_secret_basic client used client_secret_post"
    );
    let (status, _, _) = server.token_basic(&post_id, &post_secret, None);
    assert_eq!(
        status, 401,
        "a client_secret_post client used client_secret_basic"
    );
    // Each by its own method works.
    assert_eq!(server.token_basic(&basic_id, &basic_secret, None).0, 200);
    let (status, _) = server.post_form(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &post_id),
            ("client_secret", &post_secret),
        ],
    );
    assert_eq!(status, 200);
    // Introspection follows the same rule.
    let (status, _) = server.post_form(
        "/oauth2/introspect",
        None,
        &[
            ("token", "x"),
            ("client_id", &basic_id),
            ("client_secret", &basic_secret),
        ],
    );
    assert_eq!(status, 401);
}

#[test]
fn a_public_client_cannot_register_for_token_exchange() {
    let server = TestServer::start();
    let token = server.admin_token("clients:admin");
    let (status, body) = server.post_raw(
        "/admin/clients",
        "application/json",
        Some(&format!("Bearer {token}")),
        json!({"client_name": "public exchanger",
               "grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"],
               "token_endpoint_auth_method": "none"})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_client_metadata");
}

/// An assertion as Authlib's `PrivateKeyJWT` signs it: `aud` = the URL being called, one hour.
fn stock_assertion(key: &ClientKey, id: &str, url: &str, lifetime: u64) -> String {
    let now = common::now();
    key.assertion(
        Some("k1"),
        &json!({"iss": id, "sub": id, "aud": url, "iat": now, "exp": now + lifetime,
                "jti": common::random_jti()}),
    )
}

#[test]
fn assertions_may_name_the_endpoint_called_and_live_as_long_as_configured() {
    let server = TestServer::start_with(&["--max-assertion-lifetime", "3600"]);
    let key = ClientKey::es256();
    let id = server.register_jwt_client("api:read", &[(&key, Some("k1"))]);
    let token_url = server.url("/oauth2/token");
    let assertion = stock_assertion(&key, &id, &token_url, 3600);
    let (status, _, body) = server.token_assertion(&assertion, &[]);
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().unwrap().to_owned();
    for (path, form) in [
        ("/oauth2/introspect", vec![("token", access.as_str())]),
        ("/oauth2/revoke", vec![("token", access.as_str())]),
    ] {
        let assertion = stock_assertion(&key, &id, &server.url(path), 3600);
        let mut form = form;
        form.push(("client_assertion_type", common::JWT_BEARER));
        form.push(("client_assertion", &assertion));
        let (status, body) = server.post_form(path, None, &form);
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Another endpoint's URL is not this one's audience.
    let wrong = stock_assertion(&key, &id, &server.url("/oauth2/revoke"), 60);
    let (status, _) = server.post_form(
        "/oauth2/introspect",
        None,
        &[
            ("token", &access),
            ("client_assertion_type", common::JWT_BEARER),
            ("client_assertion", &wrong),
        ],
    );
    assert_eq!(status, 401);
}

#[test]
fn the_default_assertion_lifetime_stays_five_minutes() {
    let server = TestServer::start();
    let key = ClientKey::es256();
    let id = server.register_jwt_client("api:read", &[(&key, Some("k1"))]);
    let url = server.url("/oauth2/token");
    let (status, _, _) = server.token_assertion(&stock_assertion(&key, &id, &url, 3600), &[]);
    assert_eq!(status, 401);
    let (status, _, _) = server.token_assertion(&stock_assertion(&key, &id, &url, 300), &[]);
    assert_eq!(status, 200);
}

#[test]
fn every_api_error_is_json() {
    let server = TestServer::start();
    let admin = server.admin_token("devices:admin");
    let mut r = server
        .http
        .get(&server.url("/admin/devices/%FF"))
        .header("Authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!((status, ct.as_str()), (400, "application/json"), "{body}");
    assert_eq!(body["error"], "invalid_request");

    let mut r = server
        .http
        .delete(&server.url("/oauth2/token"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.headers().get("allow").is_some());
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"], "method_not_allowed");

    let mut r = server
        .http
        .post(&server.url("/admin/devices"))
        .header("Authorization", &basic_header("a", "b"))
        .header("Content-Type", "application/json")
        .send("{")
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap())
        .unwrap_or_else(|e| panic!("not JSON ({e})"));
    assert!(
        status >= 400 && body["error"].is_string(),
        "{status} {body}"
    );
}

#[test]
fn authlib_private_key_jwt_works_at_every_endpoint() {
    // Authlib's assertions live an hour: the operator allows that.
    let server = TestServer::start_with(&["--max-assertion-lifetime", "3600"]);
    let key = ClientKey::es256();
    let id = server.register_jwt_client("api:read", &[(&key, None)]);
    let ClientKey::Es256 { pkcs8, .. } = &key else {
        unreachable!("an ES256 key")
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let key_path = server.dir.path().join("client-key.pem");
    std::fs::write(&key_path, pem).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/authlib_private_key_jwt.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&server.issuer)
        .arg(&server.ca_cert)
        .arg(&id)
        .arg(&key_path)
        .output()
        .expect("python3 (scripts/install-deps installs it with Authlib)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "Authlib is missing: run scripts/install-deps (pip install authlib requests)\n{stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result,
        json!({"token_type": "Bearer", "introspect_status": 200, "active": true,
               "revoke_status": 200, "active_after_revoke": false}),
        "{stderr}\n{}",
        server.log()
    );
}

/// A small-order Ed25519 key (found by the `jws_parse` fuzz target): under the all-zero key an
/// all-zero signature verifies for about one message in four, so a client registered with it
/// would accept assertions forged by anyone. Registration refuses such keys.
#[test]
fn a_small_order_ed25519_key_cannot_be_registered() {
    let server = TestServer::start();
    let token = server.admin_token("clients:admin");
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for weak in [[0u8; 32], identity] {
        let (status, body) = server.post_raw(
            "/admin/clients",
            "application/json",
            Some(&format!("Bearer {token}")),
            json!({"client_name": "weak key",
                   "token_endpoint_auth_method": "private_key_jwt",
                   "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "w",
                                      "x": common::b64(&weak)}]}})
            .to_string()
            .as_bytes(),
        );
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_client_metadata");
    }
    // A real key still registers.
    server.register_jwt_client("api:read", &[(&ClientKey::ed25519(), Some("k1"))]);
}

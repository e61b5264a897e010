//! The token endpoint's answers to malformed requests over real TLS: the RFC 6749 §5.2 error for
//! each (unknown grants, wrong content types, repeated parameters, oversized or non-UTF-8 bodies,
//! two authentication methods), garbage that never causes a 5xx, and secrets that never reach the
//! log or the audit trail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Malformed requests
// ---------------------------------------------------------------------------------------------

/// Request headers as name and raw value.
type Headers = Vec<(&'static str, Vec<u8>)>;

fn form_headers(basic: &str) -> Headers {
    vec![
        ("Authorization", basic.as_bytes().to_vec()),
        (
            "Content-Type",
            b"application/x-www-form-urlencoded".to_vec(),
        ),
    ]
}

fn post(
    server: &TestServer,
    headers: &[(&str, Vec<u8>)],
    body: &[u8],
) -> (u16, ureq::http::HeaderMap, Value) {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    let (status, h, text) = server.post_bytes("/oauth2/token", &headers, body);
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("JSON error body for status {status}: {text:?}"));
    (status, h, body)
}

fn basic_line(basic: &str) -> Vec<u8> {
    format!("Authorization: {basic}").into_bytes()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want: &str, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(body["error"], want, "{what}: {body}");
}

#[test]
fn unknown_and_missing_grant_types_are_refused() {
    let server = TestServer::start();
    let basic = common::basic_header(&server.admin_id, &server.admin_secret);
    for grant in [
        "password",
        "authorization_code",
        "implicit",
        "urn:example:nope",
        "CLIENT_CREDENTIALS",
    ] {
        let (status, _, body) = post(
            &server,
            &form_headers(&basic),
            format!("grant_type={grant}").as_bytes(),
        );
        assert_error(status, &body, 400, "unsupported_grant_type", grant);
    }
    let (status, headers, body) = post(&server, &form_headers(&basic), b"scope=audit%3Aread");
    assert_error(status, &body, 400, "invalid_request", "missing grant_type");
    assert_eq!(headers["cache-control"], "no-store");
    // An empty value counts as absent (RFC 6749 §3.1).
    let (status, _, body) = post(&server, &form_headers(&basic), b"grant_type=");
    assert_error(status, &body, 400, "invalid_request", "empty grant_type");
}

#[test]
fn a_body_that_is_not_a_form_is_invalid_request() {
    let server = TestServer::start();
    let basic = common::basic_header(&server.admin_id, &server.admin_secret);
    let json_body = json!({"grant_type": "client_credentials"}).to_string();
    for (content_type, body) in [
        ("application/json", json_body.as_bytes()),
        ("text/plain", b"grant_type=client_credentials".as_slice()),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\n\r\n--x--".as_slice(),
        ),
    ] {
        let headers = vec![
            ("Authorization", basic.as_bytes().to_vec()),
            ("Content-Type", content_type.as_bytes().to_vec()),
        ];
        let (status, _, resp) = post(&server, &headers, body);
        assert_error(status, &resp, 400, "invalid_request", content_type);
    }
    // No Content-Type at all.
    let (status, _, resp) = post(
        &server,
        &[("Authorization", basic.as_bytes().to_vec())],
        b"grant_type=client_credentials",
    );
    assert_error(status, &resp, 400, "invalid_request", "no content type");
    // A charset parameter on the right type is fine.
    let headers = vec![
        ("Authorization", basic.as_bytes().to_vec()),
        (
            "Content-Type",
            b"application/x-www-form-urlencoded; charset=UTF-8".to_vec(),
        ),
    ];
    assert_eq!(
        post(&server, &headers, b"grant_type=client_credentials").0,
        200
    );
}

#[test]
fn a_repeated_parameter_is_invalid_request() {
    let server = TestServer::start();
    let basic = common::basic_header(&server.admin_id, &server.admin_secret);
    for body in [
        "grant_type=client_credentials&grant_type=client_credentials",
        "grant_type=client_credentials&scope=audit%3Aread&scope=clients%3Aadmin",
        "grant_type=client_credentials&client_id=a&client_id=a",
    ] {
        let (status, _, resp) = post(&server, &form_headers(&basic), body.as_bytes());
        assert_error(status, &resp, 400, "invalid_request", body);
        assert!(resp.get("access_token").is_none());
    }
}

#[test]
fn an_oversized_body_is_413_with_a_json_error() {
    let server = TestServer::start();
    let basic = common::basic_header(&server.admin_id, &server.admin_secret);
    let mut body = b"grant_type=client_credentials&pad=".to_vec();
    body.resize(64 * 1024 + 1, b'a');
    let (status, headers, resp) = post(&server, &form_headers(&basic), &body);
    assert_eq!(status, 413, "{resp}");
    assert_eq!(resp["error"], "invalid_request");
    assert_eq!(headers["cache-control"], "no-store");
    // Just under the limit is read and answered.
    body.truncate(64 * 1024);
    let (status, _, resp) = post(&server, &form_headers(&basic), &body);
    assert_eq!(status, 200, "{resp}");
}

#[test]
fn the_body_limit_is_configurable() {
    let server = TestServer::start_with(&["--max-body-bytes", "2048"]);
    let basic = common::basic_header(&server.admin_id, &server.admin_secret);
    let mut body = b"grant_type=client_credentials&pad=".to_vec();
    body.resize(4096, b'a');
    let (status, _, resp) = post(&server, &form_headers(&basic), &body);
    assert_eq!(status, 413, "{resp}");
}

#[test]
fn two_authentication_methods_at_once_are_invalid_request() {
    let server = TestServer::start();
    let basic = common::basic_header(&server.admin_id, &server.admin_secret);
    let key = common::ClientKey::ed25519();
    let assertion = key.assertion(None, &server.assertion_claims(&server.admin_id));
    let post_secret = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        server.admin_id, server.admin_secret
    );
    let cases: Vec<(&str, Headers, String)> = vec![
        ("basic + client_secret", form_headers(&basic), post_secret.clone()),
        (
            "basic + assertion",
            form_headers(&basic),
            format!(
                "grant_type=client_credentials&client_assertion_type={}&client_assertion={assertion}",
                common::JWT_BEARER
            ),
        ),
        (
            "client_secret + assertion",
            vec![("Content-Type", b"application/x-www-form-urlencoded".to_vec())],
            format!("{post_secret}&client_assertion_type={}&client_assertion={assertion}", common::JWT_BEARER),
        ),
    ];
    for (what, headers, body) in cases {
        let (status, _, resp) = post(&server, &headers, body.as_bytes());
        assert_error(status, &resp, 400, "invalid_request", what);
    }
    // A body client_id that contradicts the Basic header.
    let (status, _, resp) = post(
        &server,
        &form_headers(&basic),
        b"grant_type=client_credentials&client_id=someone-else",
    );
    assert_error(
        status,
        &resp,
        400,
        "invalid_request",
        "client_id differs from Basic",
    );
}

#[test]
fn a_body_that_is_not_utf8_is_invalid_request() {
    let server = TestServer::start();
    let basic = common::basic_header(&server.admin_id, &server.admin_secret);
    for body in [
        b"grant_type=client_credentials&scope=%FF%FE".as_slice(),
        b"grant_type=client_credentials&x=\xff\xfe".as_slice(),
        b"grant_type=client_credentials&%C3%28=1".as_slice(),
        b"grant_type=client_credentials\xc0\xaf".as_slice(),
    ] {
        let (status, _, resp) = post(&server, &form_headers(&basic), body);
        assert_error(
            status,
            &resp,
            400,
            "invalid_request",
            &String::from_utf8_lossy(body),
        );
    }
    // A non-ASCII Authorization header is refused too, not mangled into some other client id
    // (sent raw: HTTP clients refuse to send one).
    let (status, text) = server.raw_form_post(
        "/oauth2/token",
        &[
            b"Authorization: Basic \xff\xfe",
            b"Content-Type: application/x-www-form-urlencoded",
        ],
        b"grant_type=client_credentials",
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("invalid_request"), "{text}");
}

#[test]
fn garbage_never_causes_a_server_error() {
    let server = TestServer::start();
    let basic = common::basic_header(&server.admin_id, &server.admin_secret);
    let form = b"application/x-www-form-urlencoded".to_vec();
    let long = "a".repeat(9000);
    let mut bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"=".to_vec(),
        b"&&&&".to_vec(),
        b"=&=&=".to_vec(),
        b"%".to_vec(),
        b"%zz=%".to_vec(),
        b"grant_type=client_credentials&scope=%00".to_vec(),
        b"grant_type=client_credentials&scope=\x00\x01".to_vec(),
        b"grant_type=client_credentials&scope=".to_vec(),
        format!("grant_type=client_credentials&scope={long}").into_bytes(),
        format!("grant_type=client_credentials&client_id={long}&client_secret={long}").into_bytes(),
        format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={long}",
            common::JWT_BEARER
        )
        .into_bytes(),
        format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion=a.b.c",
            common::JWT_BEARER
        )
        .into_bytes(),
        format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion=e30.e30.",
            common::JWT_BEARER
        )
        .into_bytes(),
        format!(
            "grant_type=client_credentials&client_assertion_type={}",
            common::JWT_BEARER
        )
        .into_bytes(),
        b"grant_type=client_credentials&client_assertion=x.y.z".to_vec(),
        b"token=abc&token_type_hint=nonsense".to_vec(),
        b"token=a.b.c".to_vec(),
        format!("token={long}").into_bytes(),
        b"{\"grant_type\": \"client_credentials\"}".to_vec(),
        (0u8..=255).collect(),
        "grant_type=client_credentials&scope=\u{1F600}"
            .as_bytes()
            .to_vec(),
        vec![b'&'; 60_000],
    ];
    // Pairs, to reach the parser's edges with many parameters.
    bodies.push(
        (0..5000)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes(),
    );
    let authorizations: Vec<Option<Vec<u8>>> = vec![
        None,
        Some(basic.as_bytes().to_vec()),
        Some(b"Basic".to_vec()),
        Some(b"Basic =====".to_vec()),
        Some(format!("Basic {long}").into_bytes()),
        Some(b"Bearer x.y.z".to_vec()),
        Some(b"Digest a=b".to_vec()),
        Some(common::basic_header("\u{0}", "\u{0}").into_bytes()),
        Some(common::basic_header(&long, &long).into_bytes()),
    ];
    let content_types: Vec<Option<Vec<u8>>> = vec![
        Some(form.clone()),
        None,
        Some(b"application/json".to_vec()),
        Some(b"\xff".to_vec()),
    ];
    let mut checked = 0;
    for path in [
        "/oauth2/token",
        "/oauth2/introspect",
        "/oauth2/revoke",
        "/admin/clients",
    ] {
        for body in &bodies {
            for auth in &authorizations {
                for ct in &content_types {
                    // Not every combination: every body with every header once each is enough
                    // to exercise each parser, and keeps the test fast.
                    if !(auth.is_none() || ct.as_ref() == Some(&form)) {
                        continue;
                    }
                    let mut headers: Vec<(&str, &[u8])> = Vec::new();
                    if let Some(a) = auth {
                        headers.push(("Authorization", a));
                    }
                    if let Some(c) = ct {
                        headers.push(("Content-Type", c));
                    }
                    let (status, _, text) = server.post_bytes(path, &headers, body);
                    assert!(
                        status < 500,
                        "{path} answered {status} to body {:?} auth {:?} ct {:?}: {text}",
                        String::from_utf8_lossy(&body[..body.len().min(80)]),
                        auth.as_ref()
                            .map(|a| String::from_utf8_lossy(&a[..a.len().min(40)]).into_owned()),
                        ct.as_ref().map(|c| String::from_utf8_lossy(c).into_owned()),
                    );
                    if status >= 400 {
                        let err: Value = serde_json::from_str(&text)
                            .unwrap_or_else(|_| panic!("{path}: error body is not JSON: {text:?}"));
                        assert!(err["error"].is_string(), "{path}: {text}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 500, "{checked}");
    // What HTTP clients will not send: non-ASCII header values and broken framing.
    let form_ct: &[u8] = b"Content-Type: application/x-www-form-urlencoded";
    for path in [
        "/oauth2/token",
        "/oauth2/introspect",
        "/oauth2/revoke",
        "/admin/clients",
    ] {
        for (what, headers) in [
            (
                "latin-1 Basic",
                vec![b"Authorization: Basic \xe9t\xe9".as_slice(), form_ct],
            ),
            (
                "Bearer with a NUL-ish byte",
                vec![b"Authorization: Bearer \x7f\x80".as_slice(), form_ct],
            ),
            (
                "latin-1 content type",
                vec![b"Content-Type: application/\xe9".as_slice()],
            ),
            (
                "two Authorization headers",
                vec![
                    basic_line(&basic).as_slice(),
                    basic_line(&basic).as_slice(),
                    form_ct,
                ],
            ),
            (
                "two Content-Types",
                vec![form_ct, b"Content-Type: application/json".as_slice()],
            ),
        ] {
            let (status, text) =
                server.raw_form_post(path, &headers, b"grant_type=client_credentials&token=x");
            assert!((400..500).contains(&status), "{path} {what}: {text}");
        }
        for (what, request) in [
            ("content-length too short", format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\ngrant_type=x").into_bytes()),
            ("bad chunked body", format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").into_bytes()),
        ] {
            let (status, text) = server.raw_https(&request);
            assert!(status < 500, "{path} {what}: {text}");
        }
    }
    // Still alive and well.
    assert_eq!(server.get("/readyz").0, 200);
    assert_eq!(
        server
            .token_basic(&server.admin_id, &server.admin_secret, None)
            .0,
        200
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

// ---------------------------------------------------------------------------------------------
// Secrets stay secret
// ---------------------------------------------------------------------------------------------

#[test]
fn secrets_never_reach_the_log_or_the_audit_trail() {
    let mut server = TestServer::start_with_env(&[], &[("RUST_LOG", "debug")]);
    let (id, secret) = server.register_secret_client("a", "client_secret_post");
    // Successful and failed uses of both secrets, by both methods (Basic is refused for a
    // client_secret_post client, and logged).
    assert_eq!(server.token_basic(&id, &secret, None).0, 401);
    assert_eq!(
        server
            .post_form(
                "/oauth2/token",
                None,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &id),
                    ("client_secret", &secret)
                ]
            )
            .0,
        200
    );
    let wrong = "wrong-but-secret-looking-value-0123456789abcdef";
    assert_eq!(server.token_basic(&id, wrong, None).0, 401);
    assert_eq!(
        server
            .post_form(
                "/oauth2/token",
                None,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &id),
                    ("client_secret", wrong)
                ]
            )
            .0,
        401
    );
    assert_eq!(
        server
            .token_basic(&server.admin_id, &server.admin_secret, Some("nope"))
            .0,
        400
    );
    let basic = common::basic_header(&id, &secret);
    let b64_part = basic.trim_start_matches("Basic ").to_owned();

    let log = server.log();
    assert!(
        log.contains("client authentication failed"),
        "failures are logged: {log}"
    );
    for needle in [
        secret.as_str(),
        server.admin_secret.as_str(),
        wrong,
        b64_part.as_str(),
    ] {
        assert!(
            !log.contains(needle),
            "the log holds a secret ({needle}):\n{log}"
        );
    }
    let admin_secret = server.admin_secret.clone();
    let entries = server.audit_entries();
    let text = serde_json::to_string(&entries).unwrap();
    for needle in [secret.as_str(), admin_secret.as_str(), wrong] {
        assert!(
            !text.contains(needle),
            "the audit log holds a secret: {text}"
        );
    }
}

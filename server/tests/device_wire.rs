//! The device flow on the wire, against the real binary over TLS: metadata, the device endpoint
//! as the benchmark drives it, RFC 8628 error bodies, `POST /admin/users`, and the offline
//! `user add` command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::TestServer;
use serde_json::{json, Value};

const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[test]
fn metadata_device_endpoint_and_polling_errors_on_the_wire() {
    let server = TestServer::start();
    let (status, meta) = server.get("/.well-known/oauth-authorization-server");
    assert_eq!(status, 200);
    assert_eq!(
        meta["device_authorization_endpoint"],
        server.url("/oauth2/device_authorization")
    );
    let grants = meta["grant_types_supported"].as_array().unwrap();
    assert!(grants.contains(&json!(DEVICE_CODE)) && grants.contains(&json!("refresh_token")));

    // As the benchmark registers and calls it: a public client, client_id in the body.
    let info = server.register(json!({
        "client_name": "bench device",
        "grant_types": [DEVICE_CODE],
        "scope": "api:read api:write",
        "token_endpoint_auth_method": "none",
    }));
    let client_id = info["client_id"].as_str().unwrap();
    let (status, headers, codes) = server.post_form_full(
        "/oauth2/device_authorization",
        None,
        &[("client_id", client_id), ("scope", "api:read")],
    );
    assert_eq!(status, 200, "{codes}");
    assert_eq!(headers["cache-control"], "no-store");
    for field in [
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
    ] {
        assert!(codes[field].is_string(), "{field} in {codes}");
    }
    assert_eq!(
        (codes["expires_in"].as_u64(), codes["interval"].as_u64()),
        (Some(600), Some(5))
    );
    assert_eq!(codes["verification_uri"], server.url("/device"));

    let poll = |device_code: &str| {
        server.post_form(
            "/oauth2/token",
            None,
            &[
                ("grant_type", DEVICE_CODE),
                ("client_id", client_id),
                ("device_code", device_code),
            ],
        )
    };
    let device_code = codes["device_code"].as_str().unwrap();
    let (status, body) = poll(device_code);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending")),
        "{body}"
    );
    let (status, body) = poll(device_code);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("slow_down")),
        "{body}"
    );
    let (status, body) = poll("unknown");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // Without a client_id the request is not a client's at all.
    let (status, body) = server.post_form(
        "/oauth2/device_authorization",
        None,
        &[("scope", "api:read")],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
}

#[test]
fn admin_users_route_needs_its_scope_and_refuses_bad_input() {
    let server = TestServer::start();
    let create = |token: &str, body: Value| {
        server.post_raw(
            "/admin/users",
            "application/json",
            Some(&format!("Bearer {token}")),
            body.to_string().as_bytes(),
        )
    };
    let wrong = server.admin_token("clients:admin");
    let (status, _) = create(
        &wrong,
        json!({"username": "ann", "password": "correct horse battery"}),
    );
    assert_eq!(status, 403);
    let (status, _) = server.post_raw("/admin/users", "application/json", None, b"{}");
    assert_eq!(status, 401);

    let token = server.admin_token("users:admin");
    let (status, body) = create(
        &token,
        json!({"username": "Ann", "password": "correct horse battery"}),
    );
    assert_eq!(
        (status, body["username"].as_str()),
        (201, Some("ann")),
        "{body}"
    );
    assert!(body.get("password").is_none() && body.get("password_hash").is_none());
    for bad in [
        json!({"username": "ann", "password": "another good one"}),
        json!({"username": "bob", "password": "short"}),
        json!({"username": "b o b", "password": "correct horse battery"}),
        json!({"username": "bob"}),
    ] {
        let (status, body) = create(&token, bad.clone());
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{bad} → {body}"
        );
    }
}

#[test]
fn user_add_reads_the_password_from_stdin_and_refuses_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    common::init(&data_dir, "https://localhost:8443");
    let add = |name: &str, stdin: &[u8]| {
        let mut child = Command::new(common::server_bin())
            .args(["user", "add", name, "--data-dir"])
            .arg(&data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = add("Ann", b"correct horse battery\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["username"], "ann");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("horse"));
    let again = add("ann", b"something else entirely\n");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let short = add("bob", b"short\n");
    assert!(!short.status.success());

    // The account works: sign in through the store's own check, offline.
    let (user, entries) = hallmark_server::store::block_on(async {
        use hallmark_server::backend::{database_of, open, Role};
        let database = database_of(&data_dir).unwrap();
        let store = open(&data_dir, database.as_ref(), Role::Command)
            .await
            .unwrap()
            .store;
        let user = store.user("ann").await.unwrap().unwrap();
        let mut entries = Vec::new();
        for head in store.chains().await.unwrap() {
            entries.extend(
                store
                    .entries(head.chain.as_deref(), 0, usize::MAX)
                    .await
                    .unwrap(),
            );
        }
        (user, entries)
    })
    .unwrap();
    assert!(user.password_hash.starts_with("$argon2id$"));
    assert!(hallmark_server::accounts::password_matches(
        &user.password_hash,
        "correct horse battery"
    ));
    assert!(entries
        .iter()
        .any(|e| e.body.event.event == "user.created"
            && e.body.event.subject.as_deref() == Some("ann")));
}

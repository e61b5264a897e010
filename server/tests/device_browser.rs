//! The verification page in real headless Chromium (driven over WebDriver by fantoccini) against
//! the real server binary: approve and see the polling device receive its token, enter a wrong
//! code and see the error, deny and see the device get `access_denied`. Every page passes the
//! accessibility check, and is shot at phone and desktop size to
//! `target/screenshots/device-*.png` for a reviewer (see `browser_support`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser_support;
mod common;

use std::time::{Duration, Instant};

use browser_support::{click, state, text_of, type_into, Chromium};
use common::TestServer;
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

/// A device polling the token endpoint as RFC 8628 §3.5 says, on its own thread: the final
/// answer (tokens, or the error that ended it).
fn poll_in_background(
    server: &TestServer,
    client_id: &str,
    device_code: &str,
    interval: u64,
) -> std::thread::JoinHandle<(u16, Value)> {
    let (http, url) = (server.http.clone(), server.url("/oauth2/token"));
    let (client_id, device_code) = (client_id.to_owned(), device_code.to_owned());
    std::thread::spawn(move || {
        let mut interval = interval;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            std::thread::sleep(Duration::from_secs(interval));
            let form = [
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", client_id.as_str()),
                ("device_code", device_code.as_str()),
            ];
            let mut r = http.post(&url).send_form(form).unwrap();
            let status = r.status().as_u16();
            let body: Value =
                serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
            match body["error"].as_str() {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += 5,
                _ => return (status, body),
            }
            assert!(Instant::now() < deadline, "the device never got an answer");
        }
    })
}

fn authorize(server: &TestServer, client_id: &str) -> Value {
    let (status, body) = server.post_form(
        "/oauth2/device_authorization",
        None,
        &[("client_id", client_id), ("scope", "api:read")],
    );
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn a_person_approves_mistypes_and_denies_in_chromium() {
    let server = TestServer::start_with(&["--device-poll-interval", "1"]);
    let device = server.register(json!({
        "client_name": "Hallway Thermostat",
        "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
        "scope": "api:read api:write",
        "token_endpoint_auth_method": "none",
    }));
    let client_id = device["client_id"].as_str().unwrap();
    let admin = server.admin_token("users:admin");
    let (status, body) = server.post_raw(
        "/admin/users",
        "application/json",
        Some(&format!("Bearer {admin}")),
        json!({"username": "ann", "password": "correct horse battery"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 201, "{body}");

    let chrome = Chromium::start("en");
    chrome.run(&server, run(&server, &chrome.client, client_id));
}

async fn run(server: &TestServer, c: &Client, client_id: &str) {
    // 1. Approve, from the link a QR code would carry.
    let codes = authorize(server, client_id);
    let user_code = codes["user_code"].as_str().unwrap().to_owned();
    let poller = poll_in_background(server, client_id, codes["device_code"].as_str().unwrap(), 1);
    c.goto(codes["verification_uri_complete"].as_str().unwrap())
        .await
        .unwrap();
    c.wait().for_element(Locator::Id("username")).await.unwrap();
    state(c, "1-sign-in").await;
    type_into(c, "username", "ann").await;
    type_into(c, "password", "correct horse battery").await;
    click(c, "sign-in").await;
    let field = c
        .wait()
        .for_element(Locator::Id("user_code"))
        .await
        .unwrap();
    assert_eq!(
        field.prop("value").await.unwrap().as_deref(),
        Some(user_code.as_str()),
        "pre-filled"
    );
    state(c, "2-code").await;
    click(c, "continue").await;
    assert_eq!(text_of(c, "shown-code").await, user_code);
    assert_eq!(text_of(c, "device-name").await, "Hallway Thermostat");
    assert_eq!(text_of(c, "scopes").await, "api:read");
    state(c, "3-consent").await;
    click(c, "approve").await;
    assert!(text_of(c, "result").await.contains("is now connected"));
    state(c, "4-approved").await;
    let (status, tokens) = tokio::task::spawn_blocking(move || poller.join().unwrap())
        .await
        .unwrap();
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["refresh_token"].is_string());
    let (_, claims) = common::jwt_parts(tokens["access_token"].as_str().unwrap());
    assert_eq!(
        (claims["sub"].as_str(), claims["client_id"].as_str()),
        (Some("ann"), Some(client_id))
    );

    // 2. A wrong code.
    c.goto(&server.url("/device")).await.unwrap();
    type_into(c, "user_code", "BCDF-BCDF").await;
    click(c, "continue").await;
    assert!(text_of(c, "notice")
        .await
        .contains("That code is not valid"));
    state(c, "5-wrong-code").await;

    // 3. Deny: the device hears access_denied.
    let codes = authorize(server, client_id);
    let poller = poll_in_background(server, client_id, codes["device_code"].as_str().unwrap(), 1);
    c.goto(codes["verification_uri_complete"].as_str().unwrap())
        .await
        .unwrap();
    click(c, "continue").await;
    click(c, "deny").await;
    assert!(text_of(c, "result").await.contains("was not given access"));
    state(c, "6-denied").await;
    let (status, answer) = tokio::task::spawn_blocking(move || poller.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("access_denied")),
        "{answer}"
    );
}

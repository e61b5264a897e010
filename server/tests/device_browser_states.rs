//! Every state of the verification page a person meets, in real headless Chromium against the
//! real server binary (issue 14): autofocus and errors tied to their field; a wrong password
//! keeps the name; Approve pressed twice shows success to that person and "already approved"
//! to anyone else (1); a code that was already used is no guess (2); the pause explains itself
//! (4); the phishing warning stands above the buttons (5); Back and reload after approving are
//! harmless (7); the page in German. Every state passes axe-core with no violation and is shot
//! at phone and desktop size (`target/screenshots/device-s*.png`, `device-de-*.png`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser_support;
mod common;

use browser_support::{
    accessibility_violations, click, focused, location, set_viewport, sign_in, state, text_of,
    type_into, Chromium, DESKTOP, PHONE,
};
use common::TestServer;
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

const ANN: (&str, &str) = ("ann", "correct horse battery");
const BOB: (&str, &str) = ("bob", "another long password");

fn server_with(extra: &[&str]) -> (TestServer, String) {
    let mut args = vec!["--device-poll-interval", "1"];
    args.extend_from_slice(extra);
    let server = TestServer::start_with(&args);
    let device = server.register(json!({
        "client_name": "Hallway Thermostat",
        "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
        "scope": "api:read api:write",
        "token_endpoint_auth_method": "none",
    }));
    let admin = server.admin_token("users:admin");
    for (user, password) in [ANN, BOB] {
        let (status, body) = server.post_raw(
            "/admin/users",
            "application/json",
            Some(&format!("Bearer {admin}")),
            json!({"username": user, "password": password})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(status, 201, "{body}");
    }
    (server, device["client_id"].as_str().unwrap().to_owned())
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
fn every_state_a_person_meets_is_accessible_and_explains_itself() {
    let (server, client_id) = server_with(&[
        "--scope-description",
        "api:read=Read the measurements you saved",
    ]);
    let chrome = Chromium::start("en-US");
    chrome.run(&server, states(&server, &chrome.client, &client_id));
}

async fn states(server: &TestServer, c: &Client, client_id: &str) {
    let codes = authorize(server, client_id);
    let user_code = codes["user_code"].as_str().unwrap().to_owned();
    let device_code = codes["device_code"].as_str().unwrap().to_owned();

    // Sign-in: the first field has focus.
    c.goto(codes["verification_uri_complete"].as_str().unwrap())
        .await
        .unwrap();
    c.wait().for_element(Locator::Id("username")).await.unwrap();
    assert_eq!(focused(c).await, "username");
    state(c, "s01-sign-in").await;

    // A wrong password keeps the name, marks the fields and focuses the password.
    sign_in(c, ANN.0, "not her password").await;
    assert!(text_of(c, "notice")
        .await
        .contains("Wrong user name or password"));
    let name = c.find(Locator::Id("username")).await.unwrap();
    assert_eq!(name.prop("value").await.unwrap().as_deref(), Some("ann"));
    assert_eq!(focused(c).await, "password");
    let password = c.find(Locator::Id("password")).await.unwrap();
    assert_eq!(
        password.attr("aria-invalid").await.unwrap().as_deref(),
        Some("true")
    );
    assert_eq!(
        password.attr("aria-describedby").await.unwrap().as_deref(),
        Some("notice")
    );
    assert!(
        location(c).await.starts_with("/device?user_code="),
        "a GET after the POST"
    );
    state(c, "s02-wrong-password").await;

    // The code from the link: the page asks to check it, and Continue has focus.
    type_into(c, "password", ANN.1).await;
    click(c, "sign-in").await;
    let field = c
        .wait()
        .for_element(Locator::Id("user_code"))
        .await
        .unwrap();
    assert_eq!(
        field.prop("value").await.unwrap().as_deref(),
        Some(user_code.as_str())
    );
    assert_eq!(focused(c).await, "continue");
    assert!(c
        .source()
        .await
        .unwrap()
        .contains("Check that this is the code shown on your device"));
    state(c, "s03-code-from-link").await;

    // Consent: who it acts for stands out, scopes in words, the warning above the buttons,
    // Approve first in tab order, on top on a phone and on the left on a desktop.
    click(c, "continue").await;
    assert!(location(c).await.starts_with("/device/consent?user_code="));
    let acts = text_of(c, "acts-for").await;
    assert!(acts.contains("act as ann"), "{acts}");
    let size = c
        .find(Locator::Id("acts-for"))
        .await
        .unwrap()
        .css_value("font-size")
        .await
        .unwrap();
    assert!(
        size.trim_end_matches("px").parse::<f64>().unwrap() >= 18.0,
        "{size}"
    );
    let scopes = text_of(c, "scopes").await;
    assert!(
        scopes.contains("Read the measurements you saved") && scopes.contains("api:read"),
        "{scopes}"
    );
    let warning = text_of(c, "phishing-warning").await;
    assert!(
        warning.contains("Only continue if you started this yourself"),
        "{warning}"
    );
    let y = |id: &'static str| async move {
        c.find(Locator::Id(id))
            .await
            .unwrap()
            .rectangle()
            .await
            .unwrap()
    };
    let (_, warn_y, _, _) = y("phishing-warning").await;
    let (_, approve_y, _, _) = y("approve").await;
    let (_, deny_y, _, _) = y("deny").await;
    assert!(
        warn_y < approve_y && approve_y < deny_y,
        "phone: approve above deny, warning above both"
    );
    let order = c
        .execute(
            "return [...document.querySelectorAll('button[name=decision]')].map(b => b.id);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(order, json!(["approve", "deny"]));
    state(c, "s04-consent").await;
    set_viewport(c, DESKTOP).await;
    let (deny_x, _, _, _) = y("deny").await;
    let (approve_x_desktop, _, _, _) = y("approve").await;
    assert!(approve_x_desktop < deny_x, "desktop: approve left of deny");
    set_viewport(c, PHONE).await;

    // Approve pressed twice on a slow connection: the first press reaches the server (sent here
    // with the browser's own cookie and form), the page shows the answer to the second.
    let cookie = c.get_named_cookie("__Host-hallmark-session").await.unwrap();
    let csrf = c
        .find(Locator::Css(
            "form[action='/device/decision'] input[name=csrf]",
        ))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let first = server
        .http
        .post(&server.url("/device/decision"))
        .header(
            "Cookie",
            &format!("__Host-hallmark-session={}", cookie.value()),
        )
        .send_form([
            ("csrf", csrf.as_str()),
            ("user_code", user_code.as_str()),
            ("decision", "approve"),
        ])
        .unwrap();
    assert!(
        matches!(first.status().as_u16(), 200 | 303),
        "{}",
        first.status()
    );
    click(c, "approve").await;
    let result = text_of(c, "result").await;
    assert!(
        result.contains("is now connected to your account"),
        "{result}"
    );
    assert!(location(c).await.starts_with("/device/done?user_code="));
    state(c, "s05-approved").await;
    let (status, tokens) = server.post_form(
        "/oauth2/token",
        None,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", client_id),
            ("device_code", &device_code),
        ],
    );
    assert_eq!(status, 200, "the device got its tokens: {tokens}");

    // Back and reload after approving: only GETs in the history, so no "Confirm Form
    // Resubmission". Back shows the consent page again (Chromium may restore it from its
    // back/forward cache); reloading it, or pressing Approve on it once more, lands on the same
    // success, never on an error.
    c.back().await.unwrap();
    assert!(location(c).await.starts_with("/device/consent?user_code="));
    click(c, "approve").await;
    assert!(text_of(c, "result").await.contains("is now connected"));
    c.back().await.unwrap();
    c.refresh().await.unwrap();
    assert!(text_of(c, "result").await.contains("is now connected"));
    assert!(location(c).await.starts_with("/device/done?user_code="));
    c.refresh().await.unwrap();
    assert!(text_of(c, "result").await.contains("is now connected"));
    let title = c.title().await.unwrap();
    assert!(
        !title.contains("Resubmission") && c.find(Locator::Id("main-frame-error")).await.is_err(),
        "{title}"
    );

    // A fresh code page: the field has focus.
    c.goto(&server.url("/device")).await.unwrap();
    c.wait()
        .for_element(Locator::Id("user_code"))
        .await
        .unwrap();
    assert_eq!(focused(c).await, "user_code");
    assert!(c
        .source()
        .await
        .unwrap()
        .contains("Enter the code shown on your device"));
    state(c, "s06-code").await;

    // Someone else with the same code learns it was already approved — and entering it again
    // and again is no guess.
    click(c, "sign-out").await;
    c.wait().for_element(Locator::Id("username")).await.unwrap();
    sign_in(c, BOB.0, BOB.1).await;
    for _ in 0..6 {
        c.wait()
            .for_element(Locator::Id("user_code"))
            .await
            .unwrap();
        type_into(c, "user_code", &user_code.to_lowercase().replace('-', "")).await;
        click(c, "continue").await;
        let result = text_of(c, "result").await;
        assert!(
            result.contains("already approved with another account"),
            "{result}"
        );
        c.goto(&server.url("/device")).await.unwrap();
    }
    c.back().await.unwrap();
    state(c, "s07-already-approved").await;

    // Codes that match nothing count: the message says how many tries are left, marks the
    // field and focuses it.
    c.goto(&server.url("/device")).await.unwrap();
    for left in ["4 more tries", "3 more tries", "2 more tries", "1 more try"] {
        type_into(c, "user_code", "ZZZZ-ZZZZ").await;
        click(c, "continue").await;
        let notice = text_of(c, "notice").await;
        assert!(
            notice.contains("That code is not valid") && notice.contains(left),
            "{notice}"
        );
    }
    let field = c.find(Locator::Id("user_code")).await.unwrap();
    assert_eq!(
        field.attr("aria-invalid").await.unwrap().as_deref(),
        Some("true")
    );
    assert_eq!(focused(c).await, "user_code");
    state(c, "s08-wrong-code").await;

    // The fifth pauses code entry: the page says why, for how long, what to do — and offers no
    // form to fill in meanwhile.
    type_into(c, "user_code", "ZZZZ-ZZZZ").await;
    click(c, "continue").await;
    let notice = text_of(c, "notice").await;
    assert!(
        notice.contains("Too many codes that match no request were entered in this browser"),
        "{notice}"
    );
    assert!(notice.contains("paused for 15 minutes"), "{notice}");
    let page = c.source().await.unwrap();
    assert!(
        page.contains("start again on your device to get a new code"),
        "{page}"
    );
    assert!(
        c.find(Locator::Id("user_code")).await.is_err(),
        "no code field while paused"
    );
    assert_eq!(focused(c).await, "notice");
    state(c, "s09-code-paused").await;

    // Signing in paused, for a browser that failed five times.
    click(c, "sign-out").await;
    for n in 0..5 {
        c.wait().for_element(Locator::Id("username")).await.unwrap();
        sign_in(c, BOB.0, &format!("guess {n}")).await;
    }
    assert!(text_of(c, "notice")
        .await
        .contains("Too many sign-ins failed in this browser"));
    assert!(c.find(Locator::Id("password")).await.is_err());
    state(c, "s10-sign-in-paused").await;
}

#[test]
fn the_page_speaks_german_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("page.toml");
    std::fs::write(
        &config,
        "[scope_descriptions]\n\"api:read\" = { en = \"Read your measurements\", de = \"Ihre Messwerte lesen\" }\n",
    )
    .unwrap();
    let (server, client_id) = server_with(&["--config", config.to_str().unwrap()]);
    let chrome = Chromium::start("de-DE");
    chrome.run(&server, german(&server, &chrome.client, &client_id));
}

async fn german(server: &TestServer, c: &Client, client_id: &str) {
    let codes = authorize(server, client_id);
    c.goto(codes["verification_uri_complete"].as_str().unwrap())
        .await
        .unwrap();
    c.wait().for_element(Locator::Id("username")).await.unwrap();
    let lang = c
        .execute("return document.documentElement.lang;", vec![])
        .await
        .unwrap();
    assert_eq!(lang, json!("de"));
    assert!(c
        .source()
        .await
        .unwrap()
        .contains("Anmelden, um ein Gerät zu verbinden"));
    state(c, "de-sign-in").await;
    sign_in(c, ANN.0, ANN.1).await;
    click(c, "continue").await;
    assert!(text_of(c, "scopes").await.contains("Ihre Messwerte lesen"));
    assert!(text_of(c, "acts-for")
        .await
        .contains("handelt dieses Gerät als ann"));
    assert!(text_of(c, "phishing-warning")
        .await
        .contains("Fahren Sie nur fort"));
    state(c, "de-consent").await;
    click(c, "approve").await;
    assert!(text_of(c, "result")
        .await
        .contains("ist jetzt mit Ihrem Konto verbunden"));
    state(c, "de-approved").await;

    // The checker itself sees a violation when there is one: a field without a label.
    c.execute(
        "document.querySelector('main').appendChild(document.createElement('input'));",
        vec![],
    )
    .await
    .unwrap();
    let found = accessibility_violations(c).await;
    assert!(
        found.iter().any(|v| v["id"] == "label"),
        "axe-core found nothing: {found:?}"
    );
}

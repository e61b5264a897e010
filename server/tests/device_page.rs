//! The verification page through the router, in process: cookie flags and security headers, the
//! CSRF token on every form, post/redirect/get, lockouts after the configured number of wrong
//! codes and failed sign-ins (per session and per source address), the messages for wrong,
//! expired and used codes, languages, scope descriptions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod device_support;

use device_support::{now, InProcess};
use hallmark_server::config::ConfigLayer;
use hallmark_server::store::grants::{DeviceGrant, GrantState, TokenHash};

const PASSWORD: &str = "correct horse battery";

async fn server(layer: ConfigLayer) -> (InProcess, String) {
    let s = InProcess::start(layer).await;
    let client = s
        .device_client("Kitchen <Thermostat>", "api:read api:write")
        .await;
    s.add_user("ann", PASSWORD).await;
    (s, client)
}

#[tokio::test]
async fn session_cookie_has_its_flags_and_pages_their_headers() {
    let (s, _) = server(ConfigLayer::default()).await;
    let mut b = s.browser("192.0.2.10");
    let page = b.get("/device").await;
    assert_eq!(page.status, 200);
    let cookie = page.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("__Host-hallmark-session="), "{cookie}");
    for flag in ["; Secure", "; HttpOnly", "; SameSite=Lax", "; Path=/"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.says("Sign in"));
    // Signing in replaces the session id (no fixation) with the same flags.
    let before = b.cookie.clone();
    let entry = b.sign_in("ann", PASSWORD, "").await;
    assert!(
        entry.says("Enter the code shown on your device"),
        "{}",
        entry.body
    );
    assert_ne!(b.cookie, before);
    let css = b.get("/device/style.css").await;
    assert_eq!(css.status, 200);
    assert!(css.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
}

#[tokio::test]
async fn every_form_needs_the_sessions_csrf_token() {
    let (s, client) = server(ConfigLayer::default()).await;
    let a = s.authorize(&client, None, now()).await.unwrap();
    let mut b = s.browser("192.0.2.11");
    let start = b.get("/device").await;
    let good = start.csrf();
    for form in [
        vec![("username", "ann"), ("password", PASSWORD)],
        vec![
            ("csrf", "wrong"),
            ("username", "ann"),
            ("password", PASSWORD),
        ],
        vec![
            ("csrf", &good[..good.len() - 1]),
            ("username", "ann"),
            ("password", PASSWORD),
        ],
    ] {
        let p = b.post("/device/sign-in", &form).await;
        assert_eq!(p.status, 403, "{form:?}");
        assert!(p.says("did not come from this page"));
    }
    // Another session's token is no good either.
    let mut mallory = s.browser("198.51.100.1");
    let theirs = mallory.get("/device").await.csrf();
    let p = b
        .post(
            "/device/sign-in",
            &[
                ("csrf", &theirs),
                ("username", "ann"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(p.status, 403);

    let entry = b.sign_in("ann", PASSWORD, &a.user_code).await;
    assert_eq!(entry.status, 200);
    // Signed in, the code and decision forms refuse a missing or stale token too (the sign-in
    // page's token died with the anonymous session).
    for path in ["/device", "/device/decision"] {
        let p = b
            .post(
                path,
                &[("user_code", &a.user_code), ("decision", "approve")],
            )
            .await;
        assert_eq!(p.status, 403, "{path}");
        let p = b
            .post(
                path,
                &[
                    ("csrf", &good),
                    ("user_code", &a.user_code),
                    ("decision", "approve"),
                ],
            )
            .await;
        assert_eq!(p.status, 403, "{path}");
    }
    let p = b.post("/device/sign-out", &[]).await;
    assert_eq!(p.status, 403);
    // Nothing was approved by any of that.
    assert_eq!(
        s.poll(&client, &a.device_code, now())
            .await
            .unwrap_err()
            .code(),
        "authorization_pending"
    );
    // With the right token it all works.
    let consent = b.enter_code(&entry, &a.user_code).await;
    assert!(consent.says("A device asks for access"), "{}", consent.body);
    assert_eq!(
        consent.via,
        Some((303, format!("/device/consent?user_code={}", a.user_code)))
    );
    let done = b.decide(&consent, &a.user_code, true).await;
    assert!(done.says("Device approved"));
    assert_eq!(
        done.via,
        Some((303, format!("/device/done?user_code={}", a.user_code)))
    );
    let out = b.post("/device/sign-out", &[("csrf", &done.csrf())]).await;
    assert_eq!(out.status, 303);
    assert_eq!(b.cookie, None, "sign-out clears the cookie");
}

#[tokio::test]
async fn consent_page_shows_the_request_escaped() {
    let (s, client) = server(ConfigLayer::default()).await;
    let a = s.authorize(&client, Some("api:read"), now()).await.unwrap();
    let mut b = s.browser("192.0.2.12");
    // The code as typed on a phone: lowercase, no dash.
    let entry = b.sign_in("ann", PASSWORD, "").await;
    let consent = b
        .enter_code(&entry, &a.user_code.replace('-', "").to_lowercase())
        .await;
    assert_eq!(consent.status, 200);
    assert!(
        consent.says(&a.user_code),
        "the code is shown for comparison"
    );
    assert!(
        consent.says("Kitchen &lt;Thermostat&gt;"),
        "{}",
        consent.body
    );
    assert!(!consent.says("<Thermostat>"));
    assert!(consent.says(&client));
    assert!(consent.says("<li>api:read</li>"));
    assert!(!consent.says("api:write"));
}

#[tokio::test]
async fn wrong_codes_lock_out_the_session_then_the_source_address() {
    let layer = ConfigLayer {
        code_failures_per_session: Some(3),
        code_failures_per_source: Some(5),
        ..ConfigLayer::default()
    };
    let (s, client) = server(layer).await;
    let a = s.authorize(&client, None, now()).await.unwrap();
    let mut b = s.browser("192.0.2.20");
    let mut page = b.sign_in("ann", PASSWORD, "").await;
    for (wrong, left) in [("BBBB-BBBB", 2), ("not a code", 1), ("CCCC-CCCC", 0)] {
        page = b.enter_code(&page, wrong).await;
        if left > 0 {
            assert_eq!(page.status, 200);
            assert!(page.says("That code is not valid"), "{}", page.body);
            let tries = if left == 1 {
                "1 more try"
            } else {
                "2 more tries"
            };
            assert!(page.says(tries), "{}", page.body);
        }
    }
    // Locked: the page explains, has no form, and even the right code is not looked at.
    assert_eq!(page.status, 429);
    assert!(page.says("Code entry paused"), "{}", page.body);
    let locked = b.enter_code(&page, &a.user_code).await;
    assert_eq!(locked.status, 429);
    assert!(
        locked.says("Too many codes that match no request were entered in this browser"),
        "{}",
        locked.body
    );
    assert!(locked.says("The code you entered was not checked."));
    assert!(locked.says("start again on your device"));
    assert!(
        !locked.says("name=\"user_code\""),
        "no code form while paused"
    );
    assert!(locked.headers.contains_key("retry-after"));
    // Deciding needs a code this session entered: nothing is decided.
    let p = b
        .submit(
            "/device/decision",
            &[
                ("csrf", &locked.csrf()),
                ("user_code", &a.user_code),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(p.status, 429);
    assert_eq!(
        s.poll(&client, &a.device_code, now())
            .await
            .unwrap_err()
            .code(),
        "authorization_pending"
    );

    // A new session from the same address has two tries left before the address is locked.
    // (ann has entered three codes that match nothing herself, so the address's limit applies
    // to her.)
    let mut again = s.browser("192.0.2.20");
    let mut page = again.sign_in("ann", PASSWORD, "").await;
    for _ in 0..2 {
        page = again.enter_code(&page, "DDDD-DDDD").await;
    }
    assert_eq!(page.status, 429);
    let locked = again.enter_code(&page, &a.user_code).await;
    assert_eq!(locked.status, 429);
    assert!(locked.says("entered from your network"), "{}", locked.body);
    // Another address is not affected.
    let mut elsewhere = s.browser("203.0.113.5");
    let page = elsewhere.sign_in("ann", PASSWORD, "").await;
    assert_eq!(elsewhere.enter_code(&page, &a.user_code).await.status, 200);

    let audit = s.audit().await;
    let rejected = audit
        .iter()
        .filter(|e| e.body.event.event == "device.code_rejected")
        .count();
    assert_eq!(rejected, 5);
    let lockouts: Vec<_> = audit
        .iter()
        .filter(|e| e.body.event.event == "device.code_entry_locked_out")
        .collect();
    assert_eq!(lockouts.len(), 2);
    assert_eq!(lockouts[1].body.event.source.as_deref(), Some("192.0.2.20"));
}

#[tokio::test]
async fn failed_sign_ins_lock_out() {
    let layer = ConfigLayer {
        sign_in_failures_per_session: Some(2),
        sign_in_failures_per_source: Some(3),
        ..ConfigLayer::default()
    };
    let (s, _) = server(layer).await;
    let mut b = s.browser("192.0.2.30");
    let mut page = b.get("/device").await;
    let csrf = page.csrf();
    for (user, password) in [("ann", "not-her-password-1"), ("nobody", PASSWORD)] {
        page = b
            .submit(
                "/device/sign-in",
                &[
                    ("csrf", &page.csrf()),
                    ("username", user),
                    ("password", password),
                ],
            )
            .await;
        if user == "ann" {
            assert!(page.says("Wrong user name or password."), "{}", page.body);
            // The name typed stays; the password field takes focus and points at the message.
            assert!(page.says("value=\"ann\""), "{}", page.body);
        }
    }
    // Two failures in this browser: signing in is paused, and the page says so before any
    // password is typed.
    assert_eq!(page.status, 429);
    assert!(page.says("Signing in paused"), "{}", page.body);
    assert!(!page.says("name=\"password\""));
    let locked = b
        .submit(
            "/device/sign-in",
            &[("csrf", &csrf), ("username", "ann"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(locked.status, 429);
    assert!(
        locked.says("Too many sign-ins failed in this browser"),
        "{}",
        locked.body
    );
    // A fresh session from the address gets one more try, then the address is locked.
    let mut again = s.browser("192.0.2.30");
    let start = again.get("/device").await;
    let p = again
        .submit(
            "/device/sign-in",
            &[
                ("csrf", &start.csrf()),
                ("username", "ann"),
                ("password", "nope nope"),
            ],
        )
        .await;
    assert_eq!(p.status, 429, "the address is paused now: {}", p.body);
    assert!(p.says("Too many sign-ins failed from your network"));
    let p = again
        .submit(
            "/device/sign-in",
            &[
                ("csrf", &start.csrf()),
                ("username", "ann"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(p.status, 429);
    let audit = s.audit().await;
    let failed: Vec<_> = audit
        .iter()
        .filter(|e| e.body.event.event == "user.sign_in_failed")
        .collect();
    assert_eq!(failed.len(), 3);
    // The unknown name is not recorded (it could be a password typed in the wrong field).
    assert!(failed
        .iter()
        .all(|e| e.body.event.actor.as_deref() != Some("nobody")));
    let log = serde_json::to_string(&audit).unwrap();
    assert!(!log.contains("not-her-password-1") && !log.contains(PASSWORD));
}

#[tokio::test]
async fn expired_used_and_wrong_codes_get_clear_messages() {
    let (s, client) = server(ConfigLayer::default()).await;
    let t = now();
    // An expired request, planted directly in the store.
    let expired = DeviceGrant {
        user_code: "BCDFGHJK".into(),
        client_id: client.clone(),
        scope: vec!["api:read".into()],
        created_at: t - 700,
        expires_at: t - 100,
        interval: 5,
        last_poll: None,
        state: GrantState::Pending,
        decided_in: None,
        dpop_jkt: None,
    };
    assert!(s
        .oauth
        .device_grants
        .insert_device_grant(&TokenHash::of("expired"), &expired)
        .await
        .unwrap());
    let used = s.authorize(&client, None, t).await.unwrap();
    s.decide(&used.user_code, "bob", false, t).await;

    let mut b = s.browser("192.0.2.40");
    let page = b.sign_in("ann", PASSWORD, "BCDF-GHJK").await;
    assert!(page.says("value=\"BCDF-GHJK\""), "pre-filled from the URL");
    assert!(page.says("Check that this is the code shown on your device"));
    let p = b.enter_code(&page, "bcdf-ghjk").await;
    assert!(p.says("That code has expired"), "{}", p.body);
    assert!(!p.says("more tries"), "an expired code is no guess");
    let p = b.enter_code(&p, &used.user_code).await;
    assert!(
        p.says("This request was already denied with another account"),
        "{}",
        p.body
    );
    let p = b.get("/device").await;
    let p = b.enter_code(&p, "ZZZZ-ZZZZ").await;
    assert!(p.says("That code is not valid"), "{}", p.body);
    assert!(
        p.says("You have 4 more tries"),
        "only this one counted: {}",
        p.body
    );
    // What was typed comes back escaped.
    let p = b.enter_code(&p, "<b>x</b>").await;
    assert!(p.says("value=\"&lt;b&gt;x&lt;/b&gt;\""), "{}", p.body);
}

#[tokio::test]
async fn signed_out_visitors_are_asked_to_sign_in() {
    let (s, client) = server(ConfigLayer::default()).await;
    let a = s.authorize(&client, None, now()).await.unwrap();
    let mut b = s.browser("192.0.2.50");
    let start = b.get(&format!("/device?user_code={}", a.user_code)).await;
    let p = b
        .submit(
            "/device",
            &[("csrf", &start.csrf()), ("user_code", &a.user_code)],
        )
        .await;
    assert_eq!(p.status, 200);
    assert!(p.says("Please sign in first"));
    assert!(
        p.says(&format!("value=\"{}\"", a.user_code)),
        "the code is carried through"
    );
}

#[tokio::test]
async fn pages_speak_the_browsers_language_and_describe_scopes() {
    use hallmark_server::web::scopes::RawDescription;
    let descriptions = [
        (
            "api:read".to_owned(),
            RawDescription::ByLanguage(
                [("en", "Read your data"), ("de", "Ihre Daten lesen")]
                    .into_iter()
                    .map(|(l, t)| (l.to_owned(), t.to_owned()))
                    .collect(),
            ),
        ),
        (
            "api:write".to_owned(),
            RawDescription::Text("Change <your> data".into()),
        ),
    ];
    let layer = ConfigLayer {
        scope_descriptions: Some(descriptions.into_iter().collect()),
        ..ConfigLayer::default()
    };
    let (s, client) = server(layer).await;
    let a = s.authorize(&client, None, now()).await.unwrap();

    let mut b = s.browser("192.0.2.80");
    b.accept_language = Some("fr-CH, fr;q=0.9, de;q=0.8, en;q=0.5".into());
    let page = b.get("/device").await;
    assert!(page.says("<html lang=\"de\">"), "{}", page.body);
    assert!(page.says("Anmelden, um ein Gerät zu verbinden"));
    assert_eq!(page.headers["content-language"], "de");
    assert_eq!(page.headers["vary"], "Accept-Language");
    let entry = b.sign_in("ann", PASSWORD, "").await;
    let consent = b.enter_code(&entry, &a.user_code).await;
    assert!(
        consent.says("Ihre Daten lesen <code>api:read</code>"),
        "{}",
        consent.body
    );
    assert!(consent.says("Change &lt;your&gt; data <code>api:write</code>"));
    assert!(consent.says("handelt dieses Gerät als <strong>ann</strong>"));

    // Nothing we speak asked for: English.
    let mut b = s.browser("192.0.2.81");
    b.accept_language = Some("fr, es;q=0.5".into());
    let page = b.get("/device").await;
    assert!(page.says("<html lang=\"en\">") && page.says("Sign in to connect a device"));
    assert_eq!(page.headers["content-language"], "en");
}

#[tokio::test]
async fn the_favicon_is_an_image_and_the_page_needs_no_script() {
    let (s, _) = server(ConfigLayer::default()).await;
    let mut b = s.browser("192.0.2.82");
    for path in ["/favicon.ico", "/device/icon.svg"] {
        let icon = b.get(path).await;
        assert_eq!(icon.status, 200, "{path}");
        assert_eq!(icon.headers["content-type"], "image/svg+xml");
        assert!(icon.body.starts_with("<svg"));
    }
    let page = b.get("/device").await;
    assert!(page.says("autofocus"), "the first field has focus");
    assert!(!page.says("<script"));
}

#[tokio::test]
async fn approving_twice_is_success_for_the_same_session_and_already_approved_for_others() {
    let (s, client) = server(ConfigLayer::default()).await;
    s.add_user("bob", PASSWORD).await;
    let a = s.authorize(&client, None, now()).await.unwrap();
    let mut ann = s.browser("192.0.2.90");
    let entry = ann.sign_in("ann", PASSWORD, &a.user_code).await;
    let consent = ann.enter_code(&entry, &a.user_code).await;
    // A double click: two POSTs of the same form; the device redeems in between.
    let first = ann.decide(&consent, &a.user_code, true).await;
    assert!(first.says("Device approved"), "{}", first.body);
    let tokens = s.poll(&client, &a.device_code, now()).await.unwrap();
    assert!(tokens.refresh_token.is_some());
    let second = ann.decide(&consent, &a.user_code, true).await;
    assert!(second.says("Device approved"), "{}", second.body);
    assert!(!second.says("already"));
    // Reload of the outcome: the same.
    let again = ann.get(&second.via.clone().unwrap().1).await;
    assert!(again.says("Device approved"));
    // Ann in another browser: she approved it already.
    let mut ann2 = s.browser("192.0.2.91");
    let entry = ann2.sign_in("ann", PASSWORD, "").await;
    let p = ann2.enter_code(&entry, &a.user_code).await;
    assert!(
        p.says("You already approved this request in another window"),
        "{}",
        p.body
    );
    // Bob: someone else approved it.
    let mut bob = s.browser("192.0.2.92");
    let entry = bob.sign_in("bob", PASSWORD, "").await;
    let p = bob.enter_code(&entry, &a.user_code).await;
    assert!(
        p.says("This request was already approved with another account"),
        "{}",
        p.body
    );
    // Bob cannot reach the outcome or consent page of a code he never entered.
    let b2 = s.authorize(&client, None, now()).await.unwrap();
    for path in ["/device/consent", "/device/done"] {
        let p = bob
            .get_following(&format!("{path}?user_code={}", b2.user_code))
            .await;
        assert!(
            !p.says("A device asks for access") && !p.says("id=\"result\""),
            "{path}: {}",
            p.body
        );
    }
    // Only one approval was audited.
    let approved = s
        .audit()
        .await
        .iter()
        .filter(|e| e.body.event.event == "device.approved")
        .count();
    assert_eq!(approved, 1);
}

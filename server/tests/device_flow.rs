//! The device authorization grant (RFC 8628) and refresh tokens, in process with a chosen clock:
//! every polling answer, interval growth on `slow_down`, single redemption, expiry, refresh
//! rotation and family revocation on reuse (but for one retry within the grace), and what the
//! audit log keeps of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod device_support;

use device_support::{now, InProcess};
use hallmark_server::config::ConfigLayer;
use hallmark_server::oauth::device_flow::{CodeLookup, CodeProblem, USER_CODE_ALPHABET};
use hallmark_server::oauth::OAuthError;

async fn server() -> (InProcess, String) {
    let s = InProcess::start(ConfigLayer::default()).await;
    let client = s.device_client("Thermostat", "api:read api:write").await;
    s.add_user("ann", "correct horse battery").await;
    (s, client)
}

#[tokio::test]
async fn device_authorization_hands_out_well_formed_codes() {
    let (s, client) = server().await;
    let t = now();
    let a = s.authorize(&client, Some("api:read"), t).await.unwrap();
    assert_eq!(a.device_code.len(), 43, "256 bits, base64url");
    let (left, right) = a.user_code.split_once('-').unwrap();
    assert_eq!((left.len(), right.len()), (4, 4));
    assert!(format!("{left}{right}")
        .bytes()
        .all(|b| USER_CODE_ALPHABET.contains(&b)));
    assert_eq!(a.verification_uri, "https://localhost:8443/device");
    assert_eq!(
        a.verification_uri_complete,
        format!("https://localhost:8443/device?user_code={}", a.user_code)
    );
    assert_eq!((a.expires_in, a.interval), (600, 5));
    let b = s.authorize(&client, None, t).await.unwrap();
    assert_ne!(
        (&a.device_code, &a.user_code),
        (&b.device_code, &b.user_code)
    );
    // Scope beyond the client's registration is refused.
    assert!(matches!(
        s.authorize(&client, Some("admin"), t).await,
        Err(OAuthError::InvalidScope(_))
    ));
}

#[tokio::test]
async fn polling_answers_pending_then_slow_down_with_a_growing_interval() {
    let (s, client) = server().await;
    let t = now();
    let a = s.authorize(&client, None, t).await.unwrap();
    assert_eq!(
        s.poll(&client, &a.device_code, t + 5).await.unwrap_err(),
        OAuthError::AuthorizationPending
    );
    // 2 s later: too fast for 5 s, the interval becomes 10 s.
    assert_eq!(
        s.poll(&client, &a.device_code, t + 7).await.unwrap_err(),
        OAuthError::SlowDown
    );
    // 8 s after that: fast for 10 s, so 15 s now.
    assert_eq!(
        s.poll(&client, &a.device_code, t + 15).await.unwrap_err(),
        OAuthError::SlowDown
    );
    // 14 s after that: still too fast for 15 s.
    assert_eq!(
        s.poll(&client, &a.device_code, t + 29).await.unwrap_err(),
        OAuthError::SlowDown
    );
    // Waiting the grown interval (20 s now) is fine again.
    assert_eq!(
        s.poll(&client, &a.device_code, t + 49).await.unwrap_err(),
        OAuthError::AuthorizationPending
    );
    let e = OAuthError::SlowDown;
    assert_eq!((e.code(), e.status()), ("slow_down", 400));
}

#[tokio::test]
async fn approved_request_is_redeemed_once_for_tokens_bound_to_the_user() {
    let (s, client) = server().await;
    let t = now();
    let a = s.authorize(&client, Some("api:read"), t).await.unwrap();
    assert!(matches!(
        s.decide(&a.user_code, "ann", true, t + 1).await,
        CodeLookup::Found(_)
    ));
    let tokens = s.poll(&client, &a.device_code, t + 6).await.unwrap();
    assert_eq!(tokens.scope, "api:read");
    let claims = s
        .oauth
        .validate_access_token(&tokens.access_token, t + 6)
        .await
        .unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.client_id.as_str()),
        ("ann", client.as_str())
    );
    assert_eq!(tokens.refresh_token.as_ref().map(String::len), Some(43));
    // A device code is redeemed once.
    let again = s.poll(&client, &a.device_code, t + 12).await.unwrap_err();
    assert_eq!(again.code(), "invalid_grant");
    // And the code cannot be decided on again: it says who approved it.
    match s.decide(&a.user_code, "bob", false, t + 13).await {
        CodeLookup::Decided(d) => assert!(d.approved && d.user == "ann" && !d.same_session),
        other => panic!("{other:?}"),
    }
    let audit = s.audit().await;
    let approved = audit
        .iter()
        .find(|e| e.body.event.event == "device.approved")
        .unwrap();
    assert_eq!(approved.body.event.actor.as_deref(), Some("ann"));
    assert_eq!(approved.body.event.client.as_deref(), Some(client.as_str()));
    let issued = audit
        .iter()
        .find(|e| e.body.event.event == "token.issued")
        .unwrap();
    assert!(issued
        .body
        .event
        .reason
        .as_deref()
        .unwrap()
        .contains(DEVICE_CODE_NAME));
    // Neither code, nor any token, is in the log.
    let log = serde_json::to_string(&audit).unwrap();
    for secret in [
        &a.device_code,
        &a.user_code,
        &a.user_code.replace('-', ""),
        &tokens.access_token,
        tokens.refresh_token.as_ref().unwrap(),
    ] {
        assert!(!log.contains(secret.as_str()), "audit log leaks a secret");
    }
}

const DEVICE_CODE_NAME: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[tokio::test]
async fn denial_answers_access_denied_and_expiry_expired_token() {
    let (s, client) = server().await;
    let t = now();
    let denied = s.authorize(&client, None, t).await.unwrap();
    assert!(matches!(
        s.decide(&denied.user_code, "ann", false, t + 1).await,
        CodeLookup::Found(_)
    ));
    assert_eq!(
        s.poll(&client, &denied.device_code, t + 6)
            .await
            .unwrap_err(),
        OAuthError::AccessDenied
    );
    assert_eq!(
        s.poll(&client, &denied.device_code, t + 12)
            .await
            .unwrap_err(),
        OAuthError::AccessDenied
    );
    assert!(s
        .audit()
        .await
        .iter()
        .any(|e| e.body.event.event == "device.denied"));

    let late = s.authorize(&client, None, t).await.unwrap();
    assert_eq!(
        s.poll(&client, &late.device_code, t + 600)
            .await
            .unwrap_err(),
        OAuthError::ExpiredToken
    );
    // An expired request can no longer be approved either.
    assert!(matches!(
        s.decide(&late.user_code, "ann", true, t + 601).await,
        CodeLookup::Problem(CodeProblem::Expired)
    ));
    // Approved but collected too late: still expired.
    let slow = s.authorize(&client, None, t).await.unwrap();
    s.decide(&slow.user_code, "ann", true, t + 10).await;
    assert_eq!(
        s.poll(&client, &slow.device_code, t + 601)
            .await
            .unwrap_err(),
        OAuthError::ExpiredToken
    );
}

#[tokio::test]
async fn device_codes_are_bound_to_their_client() {
    let (s, client) = server().await;
    let other = s.device_client("Other", "api:read").await;
    let t = now();
    let a = s.authorize(&client, None, t).await.unwrap();
    s.decide(&a.user_code, "ann", true, t + 1).await;
    assert_eq!(
        s.poll(&other, &a.device_code, t + 6)
            .await
            .unwrap_err()
            .code(),
        "invalid_grant"
    );
    assert_eq!(
        s.poll(&client, "not-a-device-code", t + 6)
            .await
            .unwrap_err()
            .code(),
        "invalid_grant"
    );
    // The rightful client still gets its tokens: the stranger's attempt spent nothing.
    assert!(s.poll(&client, &a.device_code, t + 6).await.is_ok());
}

#[tokio::test]
async fn refresh_rotates_and_a_replayed_token_revokes_its_family() {
    let (s, client) = server().await;
    let t = now();
    let a = s.authorize(&client, None, t).await.unwrap();
    s.decide(&a.user_code, "ann", true, t + 1).await;
    let first = s.poll(&client, &a.device_code, t + 6).await.unwrap();
    let rt1 = first.refresh_token.unwrap();

    let second = s.refresh(&client, &rt1, t + 60).await.unwrap();
    let rt2 = second.refresh_token.unwrap();
    assert_ne!(rt1, rt2, "rotated on use");
    let claims = s
        .oauth
        .validate_access_token(&second.access_token, t + 60)
        .await
        .unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.scope.as_str()),
        ("ann", "api:read api:write")
    );
    // Narrowing is allowed; widening is not.
    let third = s.refresh(&client, &rt2, t + 61).await.unwrap();
    let rt3 = third.refresh_token.unwrap();
    let narrowed = {
        let (presented, form) = {
            let body = serde_urlencoded::to_string([
                ("grant_type", "refresh_token"),
                ("client_id", &client),
                ("refresh_token", &rt3),
                ("scope", "api:read"),
            ])
            .unwrap();
            let mut f = hallmark_server::oauth::form::Form::parse(
                Some("application/x-www-form-urlencoded"),
                body.as_bytes(),
            )
            .unwrap();
            (
                hallmark_server::oauth::client_auth::Presented::from_request(None, &mut f).unwrap(),
                f,
            )
        };
        s.oauth
            .token(
                presented,
                form,
                &hallmark_server::oauth::RequestCtx::at(t + 62),
            )
            .await
            .unwrap()
    };
    assert_eq!(narrowed.scope, "api:read");
    let rt4 = narrowed.refresh_token.unwrap();

    // rt1 was spent: presenting it again is a replay, and the whole family dies.
    assert_eq!(
        s.refresh(&client, &rt1, t + 63).await.unwrap_err().code(),
        "invalid_grant"
    );
    assert_eq!(
        s.refresh(&client, &rt4, t + 64).await.unwrap_err().code(),
        "invalid_grant"
    );
    let audit = s.audit().await;
    let replay = audit
        .iter()
        .find(|e| e.body.event.event == "token.refresh_replayed")
        .unwrap();
    assert_eq!(replay.body.event.subject.as_deref(), Some("ann"));
    assert!(
        audit
            .iter()
            .filter(|e| e.body.event.event == "token.issued")
            .count()
            >= 4
    );
}

#[tokio::test]
async fn a_spent_refresh_token_is_answered_once_with_its_successor_within_the_grace_only() {
    let s = InProcess::start(ConfigLayer {
        refresh_token_grace: Some(20),
        ..ConfigLayer::default()
    })
    .await;
    let client = s.device_client("Thermostat", "api:read").await;
    s.add_user("ann", "correct horse battery").await;
    let t = now();
    let login = |at| {
        let (s, client) = (&s, &client);
        async move {
            let a = s.authorize(client, None, at).await.unwrap();
            s.decide(&a.user_code, "ann", true, at + 1).await;
            let tokens = s.poll(client, &a.device_code, at + 6).await.unwrap();
            tokens.refresh_token.unwrap()
        }
    };

    // The answer carrying rt2 is lost; rt1 again within 20 s gets rt2 again, and a new access
    // token of the same family. Once.
    let rt1 = login(t).await;
    let rt2 = s
        .refresh(&client, &rt1, t + 100)
        .await
        .unwrap()
        .refresh_token
        .unwrap();
    let retried = s.refresh(&client, &rt1, t + 120).await.unwrap();
    assert_eq!(retried.refresh_token.as_deref(), Some(rt2.as_str()));
    let claims = s
        .oauth
        .validate_access_token(&retried.access_token, t + 120)
        .await
        .unwrap();
    assert_eq!(claims.sub, "ann");
    assert_eq!(
        s.refresh(&client, &rt1, t + 121).await.unwrap_err().code(),
        "invalid_grant",
        "a second reuse is a replay"
    );
    assert_eq!(
        s.refresh(&client, &rt2, t + 122).await.unwrap_err().code(),
        "invalid_grant",
        "and it revoked the family"
    );
    let audit = s.audit().await;
    let retry = audit
        .iter()
        .find(|e| e.body.event.event == "token.refresh_retried")
        .unwrap();
    assert!(retry
        .body
        .event
        .reason
        .as_deref()
        .unwrap()
        .contains("same successor"));
    assert!(
        !retry.body.event.reason.as_deref().unwrap().contains(&rt2),
        "no secret in the audit"
    );

    // One second past the grace, a reuse is a replay.
    let rt1 = login(t + 200).await;
    let rt2 = s
        .refresh(&client, &rt1, t + 300)
        .await
        .unwrap()
        .refresh_token
        .unwrap();
    assert_eq!(
        s.refresh(&client, &rt1, t + 321).await.unwrap_err().code(),
        "invalid_grant"
    );
    assert_eq!(
        s.refresh(&client, &rt2, t + 322).await.unwrap_err().code(),
        "invalid_grant"
    );

    // Once the successor was used, the client clearly got it: a reuse is a replay.
    let rt1 = login(t + 400).await;
    let rt2 = s
        .refresh(&client, &rt1, t + 500)
        .await
        .unwrap()
        .refresh_token
        .unwrap();
    let rt3 = s
        .refresh(&client, &rt2, t + 501)
        .await
        .unwrap()
        .refresh_token
        .unwrap();
    assert_eq!(
        s.refresh(&client, &rt1, t + 502).await.unwrap_err().code(),
        "invalid_grant"
    );
    assert_eq!(
        s.refresh(&client, &rt3, t + 503).await.unwrap_err().code(),
        "invalid_grant"
    );
}

#[tokio::test]
async fn refresh_tokens_are_bound_to_their_client_and_expire() {
    let s = InProcess::start(ConfigLayer {
        refresh_token_ttl: Some(120),
        ..ConfigLayer::default()
    })
    .await;
    let client = s.device_client("Thermostat", "api:read").await;
    let other = s.device_client("Other", "api:read").await;
    s.add_user("ann", "correct horse battery").await;
    let t = now();
    let a = s.authorize(&client, None, t).await.unwrap();
    s.decide(&a.user_code, "ann", true, t + 1).await;
    let rt = s
        .poll(&client, &a.device_code, t + 6)
        .await
        .unwrap()
        .refresh_token
        .unwrap();
    // Another client cannot use it, and trying does not spend it.
    assert_eq!(
        s.refresh(&other, &rt, t + 10).await.unwrap_err().code(),
        "invalid_grant"
    );
    let rt2 = s
        .refresh(&client, &rt, t + 11)
        .await
        .unwrap()
        .refresh_token
        .unwrap();
    assert_eq!(
        s.refresh(&client, &rt2, t + 11 + 120)
            .await
            .unwrap_err()
            .code(),
        "invalid_grant"
    );
    assert_eq!(
        s.refresh(&client, "garbage", t + 12)
            .await
            .unwrap_err()
            .code(),
        "invalid_grant"
    );
}

#[tokio::test]
async fn clients_without_the_grant_are_refused() {
    let s = InProcess::start(ConfigLayer::default()).await;
    let meta = serde_json::from_value(serde_json::json!({"scope": "api:read"})).unwrap();
    let confidential = s
        .oauth
        .register_client(meta, "test", &hallmark_server::oauth::RequestCtx::at(now()))
        .await
        .unwrap();
    // A confidential client named by client_id alone has not authenticated.
    let e = s
        .authorize(&confidential.client_id, None, now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_client");
    assert_eq!(
        s.authorize("nobody", None, now()).await.unwrap_err().code(),
        "invalid_client"
    );
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_its_family() {
    use device_support::{request, DEVICE_CODE};
    use hallmark_server::oauth::RequestCtx;
    let s = InProcess::start(ConfigLayer::default()).await;
    s.add_user("ann", "correct horse battery").await;
    let register = |meta: serde_json::Value| {
        let meta = serde_json::from_value(meta).unwrap();
        let oauth = s.oauth.clone();
        async move {
            oauth
                .register_client(meta, "test", &RequestCtx::at(now()))
                .await
                .unwrap()
        }
    };
    // A confidential device client (a gateway with a secret), and an unrelated one.
    let gateway = register(serde_json::json!({
        "grant_types": [DEVICE_CODE, "refresh_token"],
        "scope": "api:read",
        "token_endpoint_auth_method": "client_secret_post",
    }))
    .await;
    let stranger = register(serde_json::json!({"scope": "api:read", "token_endpoint_auth_method": "client_secret_post"})).await;
    let creds = |info: &hallmark_server::oauth::registration::ClientInformation| {
        (info.client_id.clone(), info.client_secret.clone().unwrap())
    };
    let (gid, gsecret) = creds(&gateway);
    let (sid, ssecret) = creds(&stranger);
    let t = now();
    let (p, f) = request(&[("client_id", &gid), ("client_secret", &gsecret)]);
    let a = s
        .oauth
        .device_authorization(p, f, &RequestCtx::at(t))
        .await
        .unwrap();
    s.decide(&a.user_code, "ann", true, t + 1).await;
    let (p, f) = request(&[
        ("grant_type", DEVICE_CODE),
        ("client_id", &gid),
        ("client_secret", &gsecret),
        ("device_code", &a.device_code),
    ]);
    let rt = s
        .oauth
        .token(p, f, &RequestCtx::at(t + 6))
        .await
        .unwrap()
        .refresh_token
        .unwrap();

    // RFC 7009 §2.1: only the client it was issued to may revoke it.
    let (p, f) = request(&[
        ("client_id", &sid),
        ("client_secret", &ssecret),
        ("token", &rt),
    ]);
    assert_eq!(
        s.oauth
            .revoke(p, f, &RequestCtx::at(t + 7))
            .await
            .unwrap_err()
            .code(),
        "unauthorized_client"
    );
    let (p, f) = request(&[
        ("client_id", &gid),
        ("client_secret", &gsecret),
        ("token", &rt),
        ("token_type_hint", "refresh_token"),
    ]);
    s.oauth.revoke(p, f, &RequestCtx::at(t + 8)).await.unwrap();
    let (p, f) = request(&[
        ("grant_type", "refresh_token"),
        ("client_id", &gid),
        ("client_secret", &gsecret),
        ("refresh_token", &rt),
    ]);
    assert_eq!(
        s.oauth
            .token(p, f, &RequestCtx::at(t + 9))
            .await
            .unwrap_err()
            .code(),
        "invalid_grant"
    );
    let audit = s.audit().await;
    let revoked = audit.iter().find(|e| {
        e.body.event.event == "token.revoked" && e.body.event.actor.as_deref() == Some(gid.as_str())
    });
    assert!(revoked
        .unwrap()
        .body
        .event
        .reason
        .as_deref()
        .unwrap()
        .starts_with("refresh token family="));
}

#[tokio::test]
async fn a_public_client_revokes_its_own_refresh_token_and_only_its_own() {
    use device_support::request;
    use hallmark_server::oauth::RequestCtx;
    let (s, client) = server().await;
    let other = s.device_client("Other app", "api:read").await;
    let t = now();
    let a = s.authorize(&client, Some("api:read"), t).await.unwrap();
    s.decide(&a.user_code, "ann", true, t + 1).await;
    let tokens = s.poll(&client, &a.device_code, t + 6).await.unwrap();
    let rt = tokens.refresh_token.unwrap();
    let revoke = |id: &str, at: u64| {
        let (p, f) = request(&[("client_id", id), ("token", &rt)]);
        let oauth = s.oauth.clone();
        async move { oauth.revoke(p, f, &RequestCtx::at(at)).await }
    };
    // Another public client by client_id alone: refused, and the token still works.
    assert_eq!(
        revoke(&other, t + 7).await.unwrap_err().code(),
        "unauthorized_client"
    );
    // The client it was issued to: revoked, so refreshing with it fails.
    revoke(&client, t + 8).await.unwrap();
    let (p, f) = request(&[
        ("grant_type", "refresh_token"),
        ("client_id", &client),
        ("refresh_token", &rt),
    ]);
    assert_eq!(
        s.oauth
            .token(p, f, &RequestCtx::at(t + 9))
            .await
            .unwrap_err()
            .code(),
        "invalid_grant"
    );
}

//! The client address behind reverse proxies: through a trusted proxy, `X-Forwarded-For` gives
//! each visitor of the verification page its own lockout and its own address in the audit log;
//! from anyone else the header changes nothing. In process through the router, then through the
//! real binary for the `trusted_proxies` flag and variable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod device_support;

use std::ffi::OsStr;

use device_support::{now, Browser, InProcess, Page};
use hallmark_server::config::ConfigLayer;
use hallmark_server::store::audit::AuditEntry;

const PASSWORD: &str = "correct horse battery";

/// Three wrong codes lock out an address (for an account that entered three itself, as every
/// visitor here signs in as ann); sessions alone never lock within a test.
fn limits(trusted_proxies: Option<&[&str]>) -> ConfigLayer {
    ConfigLayer {
        code_failures_per_session: Some(50),
        code_failures_per_source: Some(3),
        trusted_proxies: trusted_proxies.map(|l| l.iter().map(|s| s.to_string()).collect()),
        ..ConfigLayer::default()
    }
}

async fn server(layer: ConfigLayer) -> (InProcess, String) {
    let s = InProcess::start(layer).await;
    let client = s.device_client("Hall sensor", "api:read").await;
    s.add_user("ann", PASSWORD).await;
    let a = s.authorize(&client, None, now()).await.unwrap();
    (s, a.user_code)
}

/// A fresh page session from `peer` that sends `forwarded_for`, signed in.
async fn visitor(s: &InProcess, peer: &str, forwarded_for: Option<&str>) -> (Browser, Page) {
    let mut b = s.browser(peer);
    b.forwarded_for = forwarded_for.map(str::to_owned);
    let page = b.sign_in("ann", PASSWORD, "").await;
    // Signed in: the code page, or the pause its address is under.
    assert!(page.says("action=\"/device/sign-out\""), "{}", page.body);
    (b, page)
}

fn sources_of(audit: &[AuditEntry], event: &str) -> Vec<String> {
    audit
        .iter()
        .filter(|e| e.body.event.event == event)
        .map(|e| e.body.event.source.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn through_a_trusted_proxy_each_visitor_has_its_own_lockout_and_address() {
    let (s, code) = server(limits(Some(&["127.0.0.1"]))).await;
    // Both visitors reach us through the proxy on 127.0.0.1.
    let (mut alice, mut page) = visitor(&s, "127.0.0.1", Some("198.51.100.7")).await;
    for _ in 0..2 {
        page = alice.enter_code(&page, "BBBB-BBBB").await;
        assert!(page.says("That code is not valid"), "{}", page.body);
    }
    page = alice.enter_code(&page, "BBBB-BBBB").await;
    assert_eq!(page.status, 429, "{}", page.body);
    assert_eq!(alice.enter_code(&page, &code).await.status, 429);

    // Another visitor behind the same proxy is not locked out by the first one's failures.
    let (mut bob, page) = visitor(&s, "127.0.0.1", Some("203.0.113.8")).await;
    let page = bob.enter_code(&page, "CCCC-CCCC").await;
    assert!(page.says("That code is not valid"), "{}", page.body);
    assert_eq!(bob.enter_code(&page, &code).await.status, 200);

    // The locked-out visitor cannot borrow the other's address by prepending it: the proxy
    // appends what it saw, and the rightmost untrusted entry is the one believed.
    let (mut liar, page) = visitor(&s, "127.0.0.1", Some("203.0.113.8, 198.51.100.7")).await;
    assert_eq!(liar.enter_code(&page, &code).await.status, 429);

    let audit = s.audit().await;
    assert_eq!(
        sources_of(&audit, "device.code_rejected"),
        [
            "198.51.100.7",
            "198.51.100.7",
            "198.51.100.7",
            "203.0.113.8"
        ]
    );
    assert_eq!(
        sources_of(&audit, "device.code_entry_locked_out"),
        ["198.51.100.7"]
    );
}

#[tokio::test]
async fn from_an_untrusted_peer_a_fresh_forwarded_for_escapes_nothing() {
    // No trusted proxies (the default), and a list that does not hold the peer.
    for trusted in [None, Some(&["10.0.0.0/8", "::1"][..])] {
        let (s, code) = server(limits(trusted)).await;
        for fake in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
            let (mut b, page) = visitor(&s, "192.0.2.40", Some(fake)).await;
            let page = b.enter_code(&page, "DDDD-DDDD").await;
            assert!(page.body.contains("That code is not valid") || page.status == 429);
        }
        let (mut b, page) = visitor(&s, "192.0.2.40", Some("198.51.100.4")).await;
        assert_eq!(b.enter_code(&page, &code).await.status, 429, "{trusted:?}");
        let audit = s.audit().await;
        assert_eq!(
            sources_of(&audit, "device.code_rejected"),
            ["192.0.2.40", "192.0.2.40", "192.0.2.40"],
            "{trusted:?}"
        );
    }
}

#[tokio::test]
async fn garbage_in_forwarded_for_is_never_the_address() {
    let (s, _) = server(limits(Some(&["127.0.0.1"]))).await;
    let (mut b, page) = visitor(&s, "127.0.0.1", Some("198.51.100.9, unknown")).await;
    assert!(b
        .enter_code(&page, "FFFF-FFFF")
        .await
        .says("That code is not valid"));
    assert_eq!(
        sources_of(&s.audit().await, "device.code_rejected"),
        ["127.0.0.1"]
    );
}

// The settings through the real binary: HALLMARK_TRUSTED_PROXIES, and --trusted-proxy replacing
// it.

/// A failed client authentication at the token endpoint sent with `X-Forwarded-For`; the source
/// its audit entry records.
fn audited_source(extra: &[&str], envs: &[(&str, &str)]) -> String {
    let mut server = common::TestServer::start_with_env(extra, envs);
    let auth = format!(
        "Authorization: {}",
        common::basic_header("ghost-client", "wrong")
    );
    let (status, body) = server.raw_form_post(
        "/oauth2/token",
        &[
            auth.as_bytes(),
            b"Content-Type: application/x-www-form-urlencoded",
            b"X-Forwarded-For: 198.51.100.7",
        ],
        b"grant_type=client_credentials",
    );
    assert_eq!(status, 401, "{body}");
    let entries = server.audit_entries();
    let failed: Vec<_> = entries
        .iter()
        .filter(|e| e.body.event.event == "client.auth_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{entries:#?}");
    failed[0].body.event.source.clone().unwrap_or_default()
}

#[test]
fn the_variable_trusts_a_proxy_and_the_flag_replaces_its_list() {
    let env = [("HALLMARK_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")];
    assert_eq!(audited_source(&[], &env), "198.51.100.7");
    assert_eq!(
        audited_source(&["--trusted-proxy", "10.0.0.0/8"], &env),
        "127.0.0.1"
    );
    assert_eq!(audited_source(&[], &[]), "127.0.0.1");
}

#[test]
fn a_bad_trusted_proxy_is_a_one_line_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("srv");
    common::init(&dir, "https://localhost:8443");
    let serve = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec![
            OsStr::new("serve"),
            OsStr::new("--data-dir"),
            dir.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        common::run_cli(&args, envs)
    };
    for (out, named) in [
        (
            serve(&["--trusted-proxy", "proxy.internal"], &[]),
            "proxy.internal",
        ),
        (
            serve(
                &[],
                &[("HALLMARK_TRUSTED_PROXIES", "10.0.0.0/8,10.0.0.0/99")],
            ),
            "10.0.0.0/99",
        ),
        (serve(&["--trusted-proxy", "::/0"], &[]), "::/0"),
    ] {
        assert!(!out.status.success(), "{named}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named) && !err.contains("panicked"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

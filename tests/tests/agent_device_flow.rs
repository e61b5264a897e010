//! The device authorization grant end to end: `hallmark-agent login` shows a code, a scripted
//! browser approves it on the server's verification page, the refresh token is stored sealed
//! by the TPM, `token` uses and rotates it, reuse of a spent one revokes the family, `run` serves
//! the user's tokens and renews them by refresh, a denied request ends login with a clear
//! message, and a refresh answer lost in transit (the fault hook cuts the agent off before it
//! seals the new token) is retried within the server's grace instead of logging out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hallmark_agent::Flow;
use hallmark_e2e::device::{Device, DeviceOptions};
use hallmark_e2e::server::TestServer;
use hallmark_e2e::verification::{create_user, Browser};

const REFRESH_FILE: &str = "refresh_token.sealed";

/// Starts `login`; returns the process and the user code it printed.
fn start_login(device: &Device) -> (Child, String) {
    let mut child = device
        .agent(&["login"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut code = None;
    let mut saw_qr = false;
    let mut saw_complete = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(c) = line.strip_prefix("user_code: ") {
            code = Some(c.to_owned());
        }
        saw_complete |= line.starts_with("verification_uri_complete: https://");
        saw_qr |= line.contains('█') || line.contains('▀') || line.contains('▄');
        if line.starts_with("Open the URI") {
            break;
        }
    }
    assert!(
        saw_complete && saw_qr,
        "no QR code of verification_uri_complete"
    );
    // Keep draining stdout so the agent never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, code.expect("login printed no user code"))
}

fn wait(child: Child, limit: Duration) -> std::process::Output {
    let started = Instant::now();
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < limit,
            "login still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn login_approved_on_the_page_then_refresh_rotates_and_reuse_revokes() {
    let server = TestServer::start_with(&["--device-poll-interval", "1"]);
    create_user(&server, "alice", "correct horse battery staple");
    let device = Device::provision_with(
        &server,
        DeviceOptions {
            flow: Flow::DeviceCode,
            ..DeviceOptions::default()
        },
    );
    // Before login, the device flow has no token to give.
    let out = device.run_agent(&["token"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));

    let (child, code) = start_login(&device);
    let page = Browser::new(&server).decide("alice", "correct horse battery staple", &code, true);
    assert!(page.html.contains("Device approved"), "{}", page.html);
    let out = wait(child, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The refresh token is stored only sealed by the TPM.
    let sealed = device.state_dir().join(REFRESH_FILE);
    let first_blob = std::fs::read(&sealed).unwrap();
    assert!(first_blob.starts_with(b"HMSB"), "not a sealed blob");
    let status = device.status_json();
    assert_eq!(status["refresh_token_stored"], true);

    // `token` refreshes: a token for alice, and a rotated (re-sealed) refresh token.
    let token = device.agent_ok(&["token"]);
    let claims = server.introspect(token.trim());
    assert_eq!(claims["active"], true, "{claims}");
    assert_eq!(claims["client_id"], device.client_id.as_str());
    assert_eq!(claims["sub"], "alice", "{claims}");
    let second_blob = std::fs::read(&sealed).unwrap();
    assert_ne!(first_blob, second_blob, "refresh token not rotated");
    device.agent_ok(&["token"]);
    let third_blob = std::fs::read(&sealed).unwrap();

    // Replaying a spent refresh token revokes the whole family (RFC 6819 §5.2.2.3): the
    // agent says to log in again, and even the newest refresh token no longer works.
    std::fs::write(&sealed, &first_blob).unwrap();
    let out = device.run_agent(&["token"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("login"), "{stderr}");
    std::fs::write(&sealed, &third_blob).unwrap();
    let out = device.run_agent(&["token"]);
    assert!(!out.status.success(), "the family survived a reuse");
}

#[test]
fn login_denied_on_the_page_ends_with_a_clear_message() {
    let server = TestServer::start_with(&["--device-poll-interval", "1"]);
    create_user(&server, "bob", "another long password");
    let device = Device::provision_with(
        &server,
        DeviceOptions {
            flow: Flow::DeviceCode,
            ..DeviceOptions::default()
        },
    );
    let (child, code) = start_login(&device);
    let page = Browser::new(&server).decide("bob", "another long password", &code, false);
    assert!(page.html.contains("denied"), "{}", page.html);
    let out = wait(child, Duration::from_secs(60));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("denied"), "{stderr}");
    assert!(!device.state_dir().join(REFRESH_FILE).exists());
}

#[test]
fn run_after_login_serves_the_users_tokens_and_renews_them_by_refresh() {
    // Tokens live 6 s, so `run` renews about every 5 s, each time through the refresh token.
    let server =
        TestServer::start_with(&["--device-poll-interval", "1", "--access-token-ttl", "6"]);
    create_user(&server, "carol", "a passphrase for carol");
    let device = Device::provision_with(
        &server,
        DeviceOptions {
            flow: Flow::DeviceCode,
            ..DeviceOptions::default()
        },
    );
    let (child, code) = start_login(&device);
    Browser::new(&server).decide("carol", "a passphrase for carol", &code, true);
    let out = wait(child, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sealed = device.state_dir().join(REFRESH_FILE);
    let blob_at_login = std::fs::read(&sealed).unwrap();

    let mut run = device.spawn_run();
    let first = device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    let second = device.wait_for_socket_token(Duration::from_secs(30), |t| t != first);
    for token in [&first, &second] {
        let claims = server.introspect(token);
        assert_eq!(claims["active"], true, "{claims}");
        assert_eq!(claims["sub"], "carol", "{claims}");
        assert_eq!(claims["client_id"], device.client_id.as_str());
    }
    // Each renewal spent the refresh token and sealed its successor.
    let blob_now = std::fs::read(&sealed).unwrap();
    assert_ne!(blob_at_login, blob_now, "refresh token not rotated by run");

    run.kill().unwrap();
    run.wait().unwrap();
    // The rotated refresh token survives the daemon: `token` still works for carol.
    let token = device.agent_ok(&["token"]);
    assert_eq!(server.introspect(token.trim())["sub"], "carol");
}

#[test]
fn a_refresh_answer_lost_in_transit_is_retried_within_the_grace_and_logs_out_without_it() {
    let mut server = TestServer::start_with(&["--device-poll-interval", "1"]);
    create_user(&server, "dana", "dana's long passphrase");
    let device = Device::provision_with(
        &server,
        DeviceOptions {
            flow: Flow::DeviceCode,
            ..DeviceOptions::default()
        },
    );
    let (child, code) = start_login(&device);
    Browser::new(&server).decide("dana", "dana's long passphrase", &code, true);
    let out = wait(child, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The server rotates the refresh token; the answer never reaches the TPM (the agent is
    // cut off right after it arrived): the device still holds the spent token.
    let sealed = device.state_dir().join(REFRESH_FILE);
    let before = std::fs::read(&sealed).unwrap();
    device.run_crashing_at(&["token"], "refresh_answered");
    assert_eq!(std::fs::read(&sealed).unwrap(), before, "nothing sealed");
    // Within the grace (30 s by default) the spent token is answered with the same successor:
    // the device stays logged in, and from then on refreshes as usual.
    for _ in 0..2 {
        let token = device.agent_ok(&["token"]);
        let claims = server.introspect(token.trim());
        assert_eq!(
            (claims["active"].as_bool(), claims["sub"].as_str()),
            (Some(true), Some("dana"))
        );
    }
    assert_ne!(std::fs::read(&sealed).unwrap(), before);
    let retried: Vec<_> = server
        .audit_log()
        .into_iter()
        .filter(|e| e["event"] == "token.refresh_retried")
        .collect();
    assert_eq!(retried.len(), 1, "{retried:?}");

    // Without a grace the same loss logs the device out: the retry is a replay and revokes
    // the family.
    server.kill();
    server.set_extra_args(&["--device-poll-interval", "1", "--refresh-token-grace", "0"]);
    server.spawn();
    device.run_crashing_at(&["token"], "refresh_answered");
    let out = device.run_agent(&["token"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("login"), "{stderr}");
}

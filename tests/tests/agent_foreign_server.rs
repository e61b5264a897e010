//! The agent against another RFC 6749/8414 server — a minimal stand-in whose metadata has no
//! `device_credentials_endpoint`: it keeps the factory credential, says so once, and gets
//! tokens with `client_secret_basic` (RFC 6749 §2.3.1); and a device-flow login at a server
//! that issues no refresh token: the agent says so, serves the access token while it lives, and
//! then says that the next one needs another login.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hallmark_agent::tpm::Tpm;
use hallmark_agent::Flow;
use hallmark_e2e::stand_in::{
    stand_in_device_server, stand_in_server, write_stand_in_config, write_stand_in_config_for,
};
use hallmark_hwsim::Swtpm;

#[test]
fn without_a_rotation_endpoint_the_factory_credential_stays_and_works() {
    let tpm = Swtpm::temp_manufactured().unwrap();
    let raw = [7u8; 32];
    Tpm::open(&tpm.tcti())
        .unwrap()
        .seal_factory_secret(&raw)
        .unwrap();
    let client_id = "device-elsewhere".to_owned();
    let issuer = stand_in_server(client_id.clone(), URL_SAFE_NO_PAD.encode(raw));

    let dir = tempfile::tempdir().unwrap();
    let path = write_stand_in_config(dir.path(), issuer, client_id, tpm.tcti());
    let agent = |args: &[&str]| {
        hallmark_e2e::server::clean_command(hallmark_e2e::bin("hallmark-agent"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap()
    };

    let out = agent(&["token"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "token-from-another-server"
    );
    assert_eq!(
        stderr.matches("no device_credentials_endpoint").count(),
        1,
        "{stderr}"
    );

    // Nothing was rotated: the factory secret is still the only credential.
    let inventory = Tpm::open(&tpm.tcti()).unwrap().inventory().unwrap();
    assert!(inventory.factory_secret && !inventory.slot_a && !inventory.slot_b);
    let out = agent(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["credential"], "factory", "{status}");
}

#[test]
fn a_login_without_a_refresh_token_says_so_and_serves_its_access_token_while_it_lives() {
    let tpm = Swtpm::temp_manufactured().unwrap();
    let raw = [9u8; 32];
    Tpm::open(&tpm.tcti())
        .unwrap()
        .seal_factory_secret(&raw)
        .unwrap();
    let client_id = "device-no-refresh".to_owned();
    let issuer = stand_in_device_server(client_id.clone(), URL_SAFE_NO_PAD.encode(raw), None);
    let dir = tempfile::tempdir().unwrap();
    let path =
        write_stand_in_config_for(dir.path(), issuer, client_id, tpm.tcti(), Flow::DeviceCode);
    let agent = |args: &[&str], skew: &str| {
        hallmark_e2e::server::clean_command(hallmark_e2e::bin("hallmark-agent"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .env("HALLMARK_AGENT_CLOCK_SKEW", skew)
            .output()
            .unwrap()
    };

    let out = agent(&["login"], "0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = stdout.lines().last().unwrap();
    assert!(
        said.contains("no refresh token")
            && said.contains("another `hallmark-agent login`")
            && said.contains("offline_access"),
        "{said}"
    );
    assert!(!said.contains("refresh token, sealed"), "{said}");
    // The access token is kept (sealed by the TPM, never in the clear) and served.
    let state = dir.path().join("state");
    assert!(!state.join("refresh_token.sealed").exists());
    let sealed = std::fs::read(state.join("login_token.sealed")).unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains("device-token-1"));
    for _ in 0..2 {
        let out = agent(&["token"], "0");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "device-token-1"
        );
    }
    // Ten minutes on (the device clock moved by the test-only hook), it has expired: the
    // agent says the next token needs another login, not "not logged in".
    let out = agent(&["token"], "600");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no refresh token")
            && stderr.contains("expired")
            && stderr.contains("hallmark-agent login"),
        "{stderr}"
    );
    assert!(!stderr.contains("not logged in"), "{stderr}");
}

#[test]
fn a_refresh_token_the_server_does_not_rotate_is_kept_and_not_called_rotated() {
    let tpm = Swtpm::temp_manufactured().unwrap();
    let raw = [11u8; 32];
    Tpm::open(&tpm.tcti())
        .unwrap()
        .seal_factory_secret(&raw)
        .unwrap();
    let client_id = "device-fixed-refresh".to_owned();
    let issuer = stand_in_device_server(
        client_id.clone(),
        URL_SAFE_NO_PAD.encode(raw),
        Some("the-one-refresh-token"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path =
        write_stand_in_config_for(dir.path(), issuer, client_id, tpm.tcti(), Flow::DeviceCode);
    let agent = |args: &[&str]| {
        hallmark_e2e::server::clean_command(hallmark_e2e::bin("hallmark-agent"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap()
    };
    let out = agent(&["login"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .contains("and a refresh token"),
        "{stdout}"
    );
    let sealed = dir.path().join("state/refresh_token.sealed");
    let before = std::fs::read(&sealed).unwrap();

    let out = agent(&["token"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "device-token-2"
    );
    assert!(stderr.contains("kept the refresh token"), "{stderr}");
    assert!(!stderr.contains("rotated and sealed"), "{stderr}");
    assert_eq!(std::fs::read(&sealed).unwrap(), before, "not sealed again");
}

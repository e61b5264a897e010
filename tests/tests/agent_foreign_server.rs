//! The agent against another RFC 6749/8414 server — a minimal stand-in whose metadata has no
//! `device_credentials_endpoint`: it keeps the factory credential, says so once, and gets
//! tokens with `client_secret_basic` (RFC 6749 §2.3.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hallmark_agent::tpm::Tpm;
use hallmark_e2e::stand_in::{stand_in_server, write_stand_in_config};
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

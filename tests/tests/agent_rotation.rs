//! The agent's first boot against the real server: factory secret → TPM-resident key →
//! private_key_jwt tokens, and the factory secret refused afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hallmark_e2e::checks::device_view;
use hallmark_e2e::device::Device;
use hallmark_e2e::server::TestServer;
use serde_json::Value;

#[test]
fn first_boot_rotates_to_a_tpm_key_and_the_factory_secret_stops_working() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    let status = device.status_json();
    assert_eq!(status["credential"], "factory", "{status}");
    assert_eq!(
        device_view(&server, &device.client_id)["credential"],
        "factory"
    );

    let enrolled: Value = serde_json::from_str(&device.agent_ok(&["enroll"])).unwrap();
    assert_eq!(enrolled["kind"], "key", "{enrolled}");
    assert_eq!(enrolled["slot"], "A");

    // Exactly one live credential: the key in slot A.
    let inventory = device.inventory();
    assert!(!inventory.factory_secret && inventory.slot_a && !inventory.slot_b);
    let status = device.status_json();
    assert_eq!(status["credential"], "key");
    assert_eq!(status["rotation"]["state"], "done");
    let kid = status["jwk"]["kid"].as_str().unwrap();
    assert_eq!(status["jwk"]["kty"], "EC");
    assert_eq!(status["jwk"]["crv"], "P-256");
    assert_eq!(kid, enrolled["kid"]);
    let view = device_view(&server, &device.client_id);
    assert_eq!(view["credential"], "key", "{view}");
    assert_eq!(view["key_kid"], kid);

    // The server refuses the factory secret now.
    let (code, body) = server.post_form(
        "/oauth2/token",
        Some((&device.client_id, &device.factory_secret)),
        &[("grant_type", "client_credentials")],
    );
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");

    // And issues tokens to the TPM key: an RFC 9068 JWT for this device.
    let token = device.agent_ok(&["token"]).trim().to_owned();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["client_id"], device.client_id.as_str());
    let active = server.introspect(&token);
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["client_id"], device.client_id.as_str());

    // A second token is a new one (new assertion, new jti), and `enroll` again is a no-op.
    let again = device.agent_ok(&["token", "--scope", "device"]);
    assert_ne!(again.trim(), token);
    let enrolled_again: Value = serde_json::from_str(&device.agent_ok(&["enroll"])).unwrap();
    assert_eq!(enrolled_again, enrolled);

    // Human status names the slot and the server.
    let human = device.agent_ok(&["status"]);
    assert!(human.contains("key slot A"), "{human}");
    assert!(human.contains(&server.issuer), "{human}");
    assert!(human.contains(&device.client_id), "{human}");
}

#[test]
fn token_on_a_factory_device_rotates_first() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    let out = device.run_agent(&["token"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inventory = device.inventory();
    assert!(!inventory.factory_secret && inventory.slot_a);
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(server.introspect(token.trim())["active"], true);
}

#[test]
fn status_on_a_fresh_state_directory_reads_the_rotation_from_the_tpm() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    device.agent_ok(&["enroll"]);
    let before = device.status_json();
    assert_eq!(before["rotation"]["state"], "done", "{before}");

    // The state directory is lost (a reflashed root file system); the TPM keeps its key.
    std::fs::remove_dir_all(device.state_dir()).unwrap();
    let status = device.status_json();
    assert_eq!(status["credential"], "key", "{status}");
    assert_eq!(status["rotation"]["state"], "done", "not factory: {status}");
    assert_eq!(status["rotation"]["kid"], before["rotation"]["kid"]);
    assert_eq!(status["rotation"]["slot"], before["rotation"]["slot"]);
    // Its age comes from the TPM's record, not from the first use of the new directory.
    let made = before["key_created_at"]
        .as_i64()
        .expect("recorded at enroll");
    assert_eq!(status["key_created_at"].as_i64(), Some(made), "{status}");
    // And the key still works; the state directory gets the real age back, not a new one.
    let token = device.agent_ok(&["token"]);
    assert_eq!(server.introspect(token.trim())["active"], true);
    let after = device.status_json();
    assert_eq!(after["rotation"]["since"].as_i64(), Some(made), "{after}");
    assert_eq!(after["key_created_at"].as_i64(), Some(made));
}

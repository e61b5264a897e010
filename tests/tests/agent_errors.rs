//! The agent's failures an operator meets first — bad config, missing TPM, wrong CA, unknown
//! client — each end in one error line on stderr and a non-zero exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use hallmark_e2e::device::Device;
use hallmark_e2e::server::{init, TestServer};

/// The run failed with exactly one `error:` line, the last line of stderr; that line.
fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    assert!(errors[0].starts_with("hallmark-agent: error: "), "{stderr}");
    errors[0].to_owned()
}

#[test]
fn bad_or_missing_config_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "issuer = \"https://x\"\nsurprise = 1\n").unwrap();
    let agent = hallmark_e2e::bin("hallmark-agent");
    let out = std::process::Command::new(&agent)
        .arg("--config")
        .arg(&path)
        .arg("status")
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(line.contains("invalid"), "{line}");
    let out = std::process::Command::new(&agent)
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .arg("token")
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(line.contains("cannot read agent config"), "{line}");
}

#[test]
fn missing_tpm_wrong_ca_and_unknown_client_are_one_line_each() {
    let server = TestServer::start();
    let mut device = Device::provision(&server);

    // Unknown client: the server refuses both the factory secret and the new key.
    let real_id = device.client_id.clone();
    device.edit_config(|c| c.client_id = "no-such-device".into());
    let line = one_error_line(&device.run_agent(&["token"]));
    assert!(
        line.contains("refuses the credentials of client no-such-device"),
        "{line}"
    );
    device.edit_config(|c| c.client_id = real_id);

    // Wrong CA: the config pins another server's CA.
    let other = tempfile::tempdir().unwrap();
    let other_init = init(&other.path().join("data"), "https://localhost:1");
    let good_ca = device.dir.path().join("ca.pem");
    let saved = std::fs::read(&good_ca).unwrap();
    std::fs::copy(other_init["ca_cert"].as_str().unwrap(), &good_ca).unwrap();
    let line = one_error_line(&device.run_agent(&["token"]));
    assert!(line.contains("pinned CA"), "{line}");
    std::fs::write(&good_ca, saved).unwrap();

    // Missing TPM.
    device.tpm.kill().unwrap();
    let line = one_error_line(&device.run_agent(&["token"]));
    assert!(line.contains("no TPM answers"), "{line}");
    let line = one_error_line(&device.run_agent(&["status"]));
    assert!(line.contains("no TPM answers"), "{line}");

    // Back to health: the same device enrolls.
    device.tpm.restart().unwrap();
    device.agent_ok(&["enroll"]);
}

#[test]
fn a_look_alike_loopback_issuer_is_refused() {
    let server = TestServer::start();
    let mut device = Device::provision(&server);
    // Plain http is allowed only to a loopback host; these only look like one.
    for issuer in [
        "http://localhost.attacker.invalid",
        "http://localhost@attacker.invalid",
        "http://127.0.0.1.attacker.invalid:8443",
    ] {
        device.edit_config(|c| c.issuer = issuer.into());
        let line = one_error_line(&device.run_agent(&["token"]));
        assert!(line.contains("must be an https URL"), "{issuer}: {line}");
    }
}

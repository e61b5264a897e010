//! `hallmark-provision device` against a real server and simulated TPMs: the happy path and its
//! rerun, an EK conflict, a lost secret (healed by its own station, a reset at another), an
//! unreachable server, an exposed credentials file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use hallmark_agent::config::AgentConfig;
use hallmark_e2e::server::TestServer;
use hallmark_e2e::station::{device_by_serial, secret_authenticates, TestDevice, TestStation};
use serde_json::Value;

fn line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn provisions_one_device_and_a_rerun_leaves_it_alone() {
    let server = TestServer::start();
    let station = TestStation::register(&server, "devices:provision");
    let device = TestDevice::new("HM-ONE-1");

    let out = station.provision_device(&device, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = line(&out);
    assert_eq!(report["outcome"], "provisioned", "{report}");
    assert_eq!(report["config"], "written");
    let client_id = report["client_id"].as_str().unwrap().to_owned();
    assert_eq!(report["ek_fingerprint"].as_str().unwrap().len(), 64);

    // The config loads as the agent loads it and pins the server's CA.
    let config = AgentConfig::load(&device.config_out).unwrap();
    assert_eq!(config.client_id, client_id);
    assert_eq!(config.issuer, server.issuer);
    assert_eq!(config.tcti, device.tcti());
    assert_eq!(
        std::fs::read(&config.ca_cert).unwrap(),
        std::fs::read(&server.ca_cert).unwrap()
    );

    // The server knows it, and the sealed bytes are the secret it issued (never in the report).
    let (status, registered) = device_by_serial(&server, "HM-ONE-1");
    assert_eq!(status, 200);
    assert_eq!(registered["client_id"], client_id.as_str());
    assert_eq!(registered["ek_fingerprint"], report["ek_fingerprint"]);
    let secret = device.unsealed_secret().expect("a sealed secret");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&secret));
    assert!(secret_authenticates(&server, &client_id, &secret));

    // A rerun changes nothing.
    let again = line(&station.provision_device(&device, &[]));
    assert_eq!(again["outcome"], "already-provisioned", "{again}");
    assert_eq!(again["config"], "unchanged");
    assert_eq!(again["client_id"], client_id.as_str());
    assert_eq!(device.unsealed_secret().as_deref(), Some(secret.as_str()));

    // A deleted config is written again on the next run.
    std::fs::remove_file(&device.config_out).unwrap();
    let third = line(&station.provision_device(&device, &[]));
    assert_eq!(third["outcome"], "already-provisioned");
    assert_eq!(third["config"], "written");
    assert_eq!(
        AgentConfig::load(&device.config_out).unwrap().client_id,
        client_id
    );
}

#[test]
fn a_serial_registered_with_another_ek_is_a_conflict() {
    let server = TestServer::start();
    let station = TestStation::register(&server, "devices:provision");
    let first = TestDevice::new("HM-DUP-1");
    let out = station.provision_device(&first, &[]);
    assert!(out.status.success());

    // A second board wrongly labelled with the same serial: another TPM, another EK.
    let impostor = TestDevice::new("HM-DUP-1");
    let out = station.provision_device(&impostor, &[]);
    assert_eq!(out.status.code(), Some(1));
    let report = line(&out);
    assert_eq!(report["outcome"], "conflict", "{report}");
    assert!(report["error"].as_str().unwrap().contains("another TPM"));
    assert!(
        impostor.unsealed_secret().is_none(),
        "nothing sealed into the impostor"
    );
    assert!(!impostor.config_out.exists());
    // The first device's registration is untouched.
    let (_, registered) = device_by_serial(&server, "HM-DUP-1");
    assert_ne!(registered["ek_fingerprint"], report["ek_fingerprint"]);
}

#[test]
fn a_lost_secret_is_healed_by_its_own_station_and_needs_a_reset_at_another() {
    let server = TestServer::start();
    let line_a = TestStation::register(&server, "devices:provision");
    let device = TestDevice::new("HM-LOST-1");
    let first = line(&line_a.provision_device(&device, &[]));
    assert_eq!(first["outcome"], "provisioned");
    // The station "crashed" between registering and sealing: the TPM holds nothing.
    device.erase_secret();

    // Another station may not take line A's registration back: an operator must.
    let line_b = TestStation::register(&server, "devices:provision devices:admin");
    let out = line_b.provision_device(&device, &[]);
    assert_eq!(out.status.code(), Some(1));
    let report = line(&out);
    assert_eq!(report["outcome"], "needs-reset", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("another station")
            && error.contains("DELETE /admin/devices/")
            && error.contains("--reset-lost"),
        "{error}"
    );
    assert_eq!(
        device_by_serial(&server, "HM-LOST-1").1["client_id"],
        first["client_id"],
        "line A's registration untouched"
    );
    // With --reset-lost (and devices:admin) it deletes and redoes it.
    let out = line_b.provision_device(&device, &["--reset-lost"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = line(&out);
    assert_eq!(report["outcome"], "reprovisioned", "{report}");
    let by_b = report["client_id"].as_str().unwrap().to_owned();
    assert_ne!(by_b, first["client_id"].as_str().unwrap());

    // Its own lost registration a station withdraws and redoes by itself, no admin needed.
    device.erase_secret();
    let out = line_b.provision_device(&device, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = line(&out);
    assert_eq!(report["outcome"], "reprovisioned", "{report}");
    let client_id = report["client_id"].as_str().unwrap();
    assert_ne!(client_id, by_b);
    let (_, registered) = device_by_serial(&server, "HM-LOST-1");
    assert_eq!(registered["client_id"], client_id);
    let secret = device.unsealed_secret().unwrap();
    assert!(secret_authenticates(&server, client_id, &secret));
    assert_eq!(
        AgentConfig::load(&device.config_out).unwrap().client_id,
        client_id
    );
}

#[test]
fn an_unreachable_server_fails_the_device_with_one_line() {
    let mut server = TestServer::start();
    let station = TestStation::register(&server, "devices:provision");
    let device = TestDevice::new("HM-DOWN-1");
    server.kill();

    let out = station.provision_device(&device, &[]);
    assert_eq!(out.status.code(), Some(1));
    let report = line(&out);
    assert_eq!(report["outcome"], "failed", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("cannot reach the server"), "{error}");
    assert!(!error.contains('\n'));
    assert!(device.unsealed_secret().is_none());
    assert!(!device.config_out.exists());

    // Back up: the same command finishes the job.
    server.spawn();
    let report = line(&station.provision_device(&device, &[]));
    assert_eq!(report["outcome"], "provisioned", "{report}");
}

#[test]
fn refuses_a_station_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = TestServer::start();
    let station = TestStation::register(&server, "devices:provision");
    let device = TestDevice::new("HM-PERM-1");
    let secret = std::fs::read_to_string(&station.credentials).unwrap();
    let secret: Value = serde_json::from_str(&secret).unwrap();
    // World-readable, and group-readable (0640, which the review found accepted).
    for mode in [0o644, 0o640] {
        std::fs::set_permissions(&station.credentials, std::fs::Permissions::from_mode(mode))
            .unwrap();
        let out = station.provision_device(&device, &[]);
        assert_eq!(out.status.code(), Some(2), "{mode:o}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("only the owner may read them") && stderr.contains("chmod 600"),
            "{stderr}"
        );
        assert!(!stderr.contains(secret["client_secret"].as_str().unwrap()));
    }
    assert!(
        device.unsealed_secret().is_none(),
        "nothing was provisioned"
    );
}

#[test]
fn one_tpm_is_never_two_devices() {
    let server = TestServer::start();
    let station = TestStation::register(&server, "devices:provision");
    let device = TestDevice::new("HM-TWIN-1");
    assert_eq!(
        line(&station.provision_device(&device, &[]))["outcome"],
        "provisioned"
    );
    let secret = device.unsealed_secret();

    // The same TPM presented under another serial is refused, and nothing is written or sealed.
    let other_config = device.dir.path().join("twin").join("agent.toml");
    let out = station
        .command()
        .args([
            "device",
            "--serial",
            "HM-TWIN-2",
            "--model",
            "test-1",
            "--tcti",
        ])
        .arg(device.tcti())
        .arg("--config-out")
        .arg(&other_config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report = line(&out);
    assert_eq!(report["outcome"], "conflict", "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("HM-TWIN-1"),
        "{report}"
    );
    assert!(!other_config.exists());
    assert_eq!(device_by_serial(&server, "HM-TWIN-2").0, 404);
    assert_eq!(device.unsealed_secret(), secret);
}

#[test]
fn a_tpm_holding_a_deleted_registrations_secret_is_refused_and_nothing_is_left_registered() {
    let server = TestServer::start();
    let station = TestStation::register(&server, "devices:provision");
    let device = TestDevice::new("HM-OCC-1");
    let first = line(&station.provision_device(&device, &[]));
    assert_eq!(first["outcome"], "provisioned");
    let old_secret = device.unsealed_secret().unwrap();
    // An operator deletes the registration but nobody clears the TPM.
    let admin = server.admin_token("devices:admin");
    let id = first["client_id"].as_str().unwrap();
    let deleted = server
        .http
        .delete(&server.url(&format!("/admin/devices/{id}")))
        .header("Authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap();
    assert_eq!(deleted.status(), 204);

    // Twice: the second run finds exactly what the first did (it must not take a registration
    // left behind by the first for this TPM's own).
    for _ in 0..2 {
        let out = station.provision_device(&device, &[]);
        assert_eq!(out.status.code(), Some(1));
        let report = line(&out);
        assert_eq!(report["outcome"], "tpm-occupied", "{report}");
        let error = report["error"].as_str().unwrap();
        assert!(error.contains("withdrawn"), "{error}");
        assert_eq!(
            device_by_serial(&server, "HM-OCC-1").0,
            404,
            "left registered"
        );
    }
    // The TPM was not touched.
    assert_eq!(
        device.unsealed_secret().as_deref(),
        Some(old_secret.as_str())
    );
}

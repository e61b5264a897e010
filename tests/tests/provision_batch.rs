//! `hallmark-provision batch` against a real server and simulated TPMs: one failing device
//! among good ones, a rerun of a finished batch, and a batch killed after every step of a
//! device's provisioning (the test-only fault hook), each rerun by a station holding only
//! `devices:provision`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

use hallmark_agent::config::AgentConfig;
use hallmark_e2e::server::{free_port, TestServer};
use hallmark_e2e::station::{
    device_by_serial, report_lines, secret_authenticates, write_manifest, TestDevice, TestStation,
};
use serde_json::Value;

fn summary(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("summary line: {e}: {text}"))
}

/// Successful `device.registered` audit entries: how many registrations the server made.
fn registrations(server: &TestServer) -> usize {
    server
        .audit_log()
        .iter()
        .filter(|e| e["event"] == "device.registered" && e["outcome"] == "success")
        .count()
}

/// Every device is registered once, its config names that registration, and its TPM holds the
/// secret that authenticates as it.
fn assert_fleet_provisioned(server: &TestServer, devices: &[TestDevice]) {
    for d in devices {
        let (status, registered) = device_by_serial(server, &d.serial);
        assert_eq!(status, 200, "{}: {registered}", d.serial);
        let client_id = registered["client_id"].as_str().unwrap();
        assert_eq!(
            AgentConfig::load(&d.config_out).unwrap().client_id,
            client_id,
            "{}",
            d.serial
        );
        let secret = d
            .unsealed_secret()
            .unwrap_or_else(|| panic!("{}: no sealed secret", d.serial));
        assert!(
            secret_authenticates(server, client_id, &secret),
            "{}",
            d.serial
        );
    }
}

fn outcomes(lines: &[Value]) -> HashMap<String, String> {
    lines
        .iter()
        .map(|l| {
            (
                l["serial"].as_str().unwrap().to_owned(),
                l["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn one_failing_device_does_not_stop_the_batch_and_a_rerun_doubles_nothing() {
    let server = TestServer::start();
    let station = TestStation::register(&server, "devices:provision");
    let devices = TestDevice::many("HM-B", 3);
    let work = tempfile::tempdir().unwrap();
    // A row whose TCTI points at no TPM, in the middle of the manifest.
    let dead = format!(
        "HM-B-DEAD,test-1,\"swtpm:host=127.0.0.1,port={}\",{}",
        free_port(),
        work.path().join("dead/agent.toml").display()
    );
    let manifest = write_manifest(work.path(), &devices, &[dead]);
    let report = work.path().join("report.jsonl");

    let out = station.batch(&manifest, &report, 2).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = summary(&out.stdout);
    assert_eq!(
        (
            sum["total"].as_u64(),
            sum["provisioned"].as_u64(),
            sum["failed"].as_u64()
        ),
        (Some(4), Some(3), Some(1)),
        "{sum}"
    );
    assert_eq!(
        sum["token_requests"], 1,
        "one station token for the whole batch"
    );
    let lines = report_lines(&report);
    assert_eq!(lines.len(), 4);
    let dead_line = lines.iter().find(|l| l["serial"] == "HM-B-DEAD").unwrap();
    assert_eq!(dead_line["outcome"], "failed");
    assert!(
        dead_line["error"]
            .as_str()
            .unwrap()
            .contains("no TPM answers"),
        "{dead_line}"
    );
    for l in &lines {
        assert!(l["duration_ms"].is_u64());
        assert!(l.get("factory_secret").is_none());
    }
    assert_fleet_provisioned(&server, &devices);
    let report_text = std::fs::read_to_string(&report).unwrap();
    for d in &devices {
        assert!(
            !report_text.contains(&d.unsealed_secret().unwrap()),
            "secret in the report"
        );
    }
    let registered = registrations(&server);
    assert_eq!(registered, 3);

    // Rerun the finished batch: everything already provisioned, nothing new on the server.
    let before: Vec<_> = devices
        .iter()
        .map(|d| device_by_serial(&server, &d.serial).1)
        .collect();
    let out = station.batch(&manifest, &report, 4).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let sum = summary(&out.stdout);
    assert_eq!(
        (sum["already_provisioned"].as_u64(), sum["failed"].as_u64()),
        (Some(3), Some(1)),
        "{sum}"
    );
    let lines = report_lines(&report);
    assert_eq!(lines.len(), 8, "the report is appended to");
    let rerun = outcomes(&lines[4..]);
    for d in &devices {
        assert_eq!(rerun[&d.serial], "already-provisioned");
    }
    let after: Vec<_> = devices
        .iter()
        .map(|d| device_by_serial(&server, &d.serial).1)
        .collect();
    assert_eq!(before, after);
    assert_eq!(registrations(&server), registered);
    assert_fleet_provisioned(&server, &devices);
}

/// Successful `device.withdrawn` audit entries: registrations a station took back.
fn withdrawals(server: &TestServer) -> usize {
    server
        .audit_log()
        .iter()
        .filter(|e| e["event"] == "device.withdrawn" && e["outcome"] == "success")
        .count()
}

/// Run the batch with the fault hook set to stop right after the first device passes `step`.
fn killed_after(station: &TestStation, manifest: &Path, report: &Path, step: &str) {
    let out = station
        .batch(manifest, report, 1)
        .env("HALLMARK_PROVISION_FAULT", format!("after:{step}"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(86),
        "should stop after {step}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rerun without a fault; it must finish every device. The rerun's outcomes.
fn rerun(station: &TestStation, manifest: &Path, report: &Path) -> HashMap<String, String> {
    let before = report_lines(report).len();
    let out = station.batch(manifest, report, 1).output().unwrap();
    assert!(
        out.status.success(),
        "rerun: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    outcomes(&report_lines(report)[before..])
}

#[test]
fn a_batch_killed_at_every_step_finishes_on_rerun_without_an_admin() {
    let server = TestServer::start();
    // Only what a factory line holds: no devices:admin, no --reset-lost.
    let station = TestStation::register(&server, "devices:provision");
    let work = tempfile::tempdir().unwrap();
    let mut fleet = Vec::new();
    let mut heals = 0;
    for (step, first_on_rerun) in [
        ("ek_read", "provisioned"),
        ("registered", "reprovisioned"),
        ("sealed", "already-provisioned"),
        ("config_written", "already-provisioned"),
        ("reported", "already-provisioned"),
    ] {
        let devices = TestDevice::many(&format!("HM-{}", step.replace('_', "")), 2);
        let dir = work.path().join(step);
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = write_manifest(&dir, &devices, &[]);
        let report = dir.join("report.jsonl");
        killed_after(&station, &manifest, &report, step);
        let got = rerun(&station, &manifest, &report);
        assert_eq!(
            got[&devices[0].serial], first_on_rerun,
            "killed after {step}"
        );
        assert_eq!(
            got[&devices[1].serial], "provisioned",
            "killed after {step}"
        );
        assert_fleet_provisioned(&server, &devices);
        heals += usize::from(step == "registered");
        fleet.extend(devices);
    }

    // Killed after registering, then the rerun that heals it killed after withdrawing.
    let devices = TestDevice::many("HM-withdrawn", 2);
    let dir = work.path().join("withdrawn");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = write_manifest(&dir, &devices, &[]);
    let report = dir.join("report.jsonl");
    killed_after(&station, &manifest, &report, "registered");
    killed_after(&station, &manifest, &report, "withdrawn");
    let got = rerun(&station, &manifest, &report);
    assert_eq!(got[&devices[0].serial], "provisioned");
    assert_eq!(got[&devices[1].serial], "provisioned");
    assert_fleet_provisioned(&server, &devices);
    heals += 1;
    fleet.extend(devices);

    // One live registration per device: each lost one was withdrawn before registering again.
    assert_eq!(withdrawals(&server), heals);
    assert_eq!(registrations(&server), fleet.len() + heals);
}

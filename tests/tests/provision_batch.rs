//! `hallmark-provision batch` against a real server and simulated TPMs: one failing device
//! among good ones, a rerun of a finished batch, and a batch killed halfway then rerun.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

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

#[test]
fn a_batch_killed_halfway_finishes_on_rerun() {
    let server = TestServer::start();
    // devices:admin so that the rerun may reset a device killed between register and seal.
    let station = TestStation::register(&server, "devices:provision devices:admin");
    let devices = TestDevice::many("HM-K", 8);
    let work = tempfile::tempdir().unwrap();
    let manifest = write_manifest(work.path(), &devices, &[]);
    let report = work.path().join("report.jsonl");

    let mut child = station.batch(&manifest, &report, 1).spawn().unwrap();
    wait_for_lines(&report, 3, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let first = outcomes(&report_lines(&report));
    assert!(
        first.len() >= 3 && first.len() < devices.len(),
        "killed halfway: {first:?}"
    );
    assert!(first.values().all(|o| o == "provisioned"));

    let out = station
        .command()
        .arg("--reset-lost")
        .args(["batch", "--no-progress", "--manifest"])
        .arg(&manifest)
        .arg("--report")
        .arg(&report)
        .args(["--parallel", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = summary(&out.stdout);
    let lines = report_lines(&report);
    let rerun = outcomes(&lines[first.len()..]);
    assert_eq!(rerun.len(), devices.len());
    for d in &devices {
        let expected = if first.contains_key(&d.serial) {
            "already-provisioned"
        } else {
            "provisioned"
        };
        // The device being worked on at the kill may have lost its secret: it is reset.
        let got = rerun[&d.serial].as_str();
        assert!(
            got == expected || got == "reprovisioned",
            "{}: {got} (expected {expected})",
            d.serial
        );
    }
    assert_eq!(
        sum["already_provisioned"].as_u64().unwrap() as usize,
        first.len(),
        "{sum}"
    );
    assert_fleet_provisioned(&server, &devices);
    // One live registration per device (a reset deletes the lost one before registering).
    let resets = sum["reprovisioned"].as_u64().unwrap() as usize;
    assert!(resets <= 1, "{sum}");
    assert_eq!(registrations(&server), devices.len() + resets);
}

fn wait_for_lines(report: &Path, n: usize, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while report_lines(report).len() < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "batch ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "batch too slow");
        std::thread::sleep(Duration::from_millis(2));
    }
}

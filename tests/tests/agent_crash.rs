//! Crash safety of first-boot rotation: the agent killed after every step (alone, and together
//! with its TPM as in a power cut), the TPM down for a while, the server down for a while —
//! each time the next run finishes the rotation with exactly one live credential.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use hallmark_e2e::checks::assert_one_live_key;
use hallmark_e2e::device::Device;
use hallmark_e2e::server::TestServer;

/// Exactly one live key on both sides, the factory secret refused, tokens working.
fn assert_rotated(server: &TestServer, device: &Device) {
    assert_one_live_key(server, device);
}

/// Runs `enroll` with the fault hook at `step`; it must stop there with status 86.
fn enroll_crashing_at(device: &Device, step: &str) {
    device.run_crashing_at(&["enroll"], step);
}

/// For `step`: the agent alone killed there, then the agent and its TPM (a power cut).
fn crash_then_recover(step: &str) {
    let server = TestServer::start();
    let device = Device::provision(&server);
    enroll_crashing_at(&device, step);
    device.agent_ok(&["enroll"]);
    assert_rotated(&server, &device);

    let mut device = Device::provision(&server);
    enroll_crashing_at(&device, step);
    device.tpm.restart().unwrap();
    device.agent_ok(&["enroll"]);
    assert_rotated(&server, &device);
}

macro_rules! crash_tests {
    ($($name:ident => $step:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                crash_then_recover($step);
            }
        )*
    };
}

crash_tests! {
    crash_after_create_key => "create_key",
    crash_after_persist_key_created => "persist_key_created",
    crash_after_challenged => "challenged",
    crash_after_activated => "activated",
    crash_after_register => "register",
    crash_after_persist_registered => "persist_registered",
    crash_after_prove => "prove",
    crash_after_persist_proven => "persist_proven",
    crash_after_erase_factory_secret => "erase_factory_secret",
    crash_after_erase_other_slot => "erase_other_slot",
    crash_after_done => "done",
}

#[test]
fn every_step_has_a_crash_test() {
    let names: Vec<&str> = hallmark_agent::RotationStep::ALL
        .iter()
        .map(|s| s.name())
        .collect();
    let source = include_str!("agent_crash.rs");
    for name in names {
        assert!(
            source.contains(&format!("=> \"{name}\"")),
            "no crash test for {name}"
        );
    }
}

/// Waits for `child` up to `limit`; its output.
fn wait_output(child: std::process::Child, limit: Duration) -> std::process::Output {
    let started = Instant::now();
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < limit,
            "agent still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn server_down_mid_rotation_the_agent_backs_off_until_it_returns() {
    let mut server = TestServer::start();
    let device = Device::provision(&server);
    // The server holds the key as pending; then it goes away.
    enroll_crashing_at(&device, "persist_registered");
    server.kill();
    let child = device
        .agent(&["enroll", "--retry-for", "90"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    server.spawn();
    let out = wait_output(child, Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("retrying in"),
        "no backoff logged: {stderr}"
    );
    assert_rotated(&server, &device);
}

#[test]
fn tpm_down_at_first_boot_the_agent_waits_for_it() {
    let server = TestServer::start();
    let mut device = Device::provision(&server);
    device.tpm.kill().unwrap();
    let child = device
        .agent(&["enroll", "--retry-for", "90"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    device.tpm.restart().unwrap();
    let out = wait_output(child, Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no TPM answers"), "{stderr}");
    assert_rotated(&server, &device);
}

//! Key-to-key rotation (`hallmark-agent rekey`) against the real server: the key moves to the
//! other slot with a new kid, the server drops the old key, twice in a row (A → B → A); the
//! agent killed after every rekey step (alone, and with its TPM as in a power cut) and the next
//! start finishing the rekey with exactly one live key; a running agent following a rekey; the
//! schedule (`rekey_interval_days`: `run` rekeys a key older than that, with the device clock
//! moved days ahead, and leaves a younger one or one whose age an upgrade left unrecorded);
//! and the refusals: a device still on its factory secret, a server without a rotation
//! endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hallmark_agent::config::RekeyInterval;
use hallmark_agent::socket::{fetch, Answer};
use hallmark_agent::tpm::{KeySlot, Tpm};
use hallmark_e2e::checks::{assert_one_live_key, device_view};
use hallmark_e2e::device::Device;
use hallmark_e2e::server::{now, TestServer};
use hallmark_e2e::stand_in::stand_in_server;
use serde_json::Value;

/// Audit entries recording that `client_id` presented an assertion by a key it no longer has.
fn unknown_key_refusals(server: &TestServer, client_id: &str) -> usize {
    server
        .audit_log()
        .iter()
        .filter(|e| {
            e["event"] == "client.auth_failed"
                && e["client"] == client_id
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("no key matching"))
        })
        .count()
}

/// The server refuses `assertion` (signed ahead by a key the agent has since replaced)
/// because it no longer holds that key — not for its age or anything else.
fn assert_old_key_refused(server: &TestServer, device: &Device, assertion: &str) {
    let before = unknown_key_refusals(server, &device.client_id);
    let (code, _, body) = server.token_assertion(assertion, &[]);
    assert_eq!(code, 401, "the old key still works: {body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert_eq!(
        unknown_key_refusals(server, &device.client_id),
        before + 1,
        "refused, but not for want of the key"
    );
}

/// The rekey is over: one live key, in `slot`, not `old_kid`, the same on the server; the old
/// key's `assertion` refused. Returns the new kid.
fn assert_rekeyed(
    server: &TestServer,
    device: &Device,
    slot: KeySlot,
    old_kid: &str,
    assertion: &str,
) -> String {
    let status = assert_one_live_key(server, device);
    assert_eq!(status["slot"], format!("{slot:?}"), "{status}");
    let kid = status["jwk"]["kid"].as_str().unwrap().to_owned();
    assert_ne!(kid, old_kid, "the key did not change");
    assert_old_key_refused(server, device, assertion);
    kid
}

/// `enroll`, then the enrolled key's kid.
fn enroll(device: &Device) -> String {
    let enrolled: Value = serde_json::from_str(&device.agent_ok(&["enroll"])).unwrap();
    assert_eq!(enrolled["slot"], "A", "{enrolled}");
    enrolled["kid"].as_str().unwrap().to_owned()
}

#[test]
fn rekey_moves_to_a_new_key_in_the_other_slot_and_the_server_drops_the_old_one() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    let first = enroll(&device);
    // Two assertions by the enrolled key: the server takes one now, so the format is right and
    // a later refusal of the other is the rekey's doing.
    let (now, later) = (
        device.assertion_by(&server, KeySlot::A),
        device.assertion_by(&server, KeySlot::A),
    );
    let (code, _, body) = server.token_assertion(&now, &[]);
    assert_eq!(code, 200, "{body}");

    let rekeyed: Value = serde_json::from_str(&device.agent_ok(&["rekey"])).unwrap();
    assert_eq!(rekeyed["kind"], "key", "{rekeyed}");
    assert_eq!(rekeyed["slot"], "B", "{rekeyed}");
    let inventory = device.inventory();
    assert!(!inventory.slot_a && inventory.slot_b, "{inventory:?}");
    let second = assert_rekeyed(&server, &device, KeySlot::B, &first, &later);
    assert_eq!(rekeyed["kid"], second.as_str());
    let human = device.agent_ok(&["status"]);
    assert!(human.contains("key slot B"), "{human}");
    assert!(human.contains(&second), "{human}");

    // And again, back to slot A with a third key.
    let later = device.assertion_by(&server, KeySlot::B);
    let again: Value = serde_json::from_str(&device.agent_ok(&["rekey"])).unwrap();
    assert_eq!(again["slot"], "A", "{again}");
    let inventory = device.inventory();
    assert!(inventory.slot_a && !inventory.slot_b, "{inventory:?}");
    let third = assert_rekeyed(&server, &device, KeySlot::A, &second, &later);
    assert_ne!(third, first);
    assert_eq!(again["kid"], third.as_str());

    // The server saw each new key promoted once, in order.
    let promoted: Vec<String> = server
        .audit_log()
        .iter()
        .filter(|e| e["event"] == "device.credential_promoted" && e["client"] == device.client_id)
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(promoted.len(), 3, "{promoted:?}");
    for (reason, kid) in promoted.iter().zip([&first, &second, &third]) {
        assert!(reason.contains(kid.as_str()), "{reason} should name {kid}");
    }
}

#[test]
fn rekey_refuses_a_device_still_on_its_factory_secret() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    let out = device.run_agent(&["rekey"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("hallmark-agent enroll"), "{stderr}");
    assert!(stderr.contains("factory secret"), "{stderr}");
    // Nothing happened: no key, the factory secret still the credential on both sides.
    let inventory = device.inventory();
    assert!(inventory.factory_secret && !inventory.slot_a && !inventory.slot_b);
    assert_eq!(device.status_json()["credential"], "factory");
    assert_eq!(
        device_view(&server, &device.client_id)["credential"],
        "factory"
    );
}

#[test]
fn without_a_rotation_endpoint_rekey_is_refused_and_an_interrupted_one_given_up() {
    let server = TestServer::start();
    let mut device = Device::provision(&server);
    let kid = enroll(&device);
    let issuer = device.config.issuer.clone();
    let elsewhere = stand_in_server("someone-else".into(), "secret".into());

    // A server without device_credentials_endpoint cannot take a new key: a clear refusal.
    device.edit_config(|c| c.issuer = elsewhere.clone());
    let out = device.run_agent(&["rekey"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("offers no device_credentials_endpoint"),
        "{stderr}"
    );
    let inventory = device.inventory();
    assert!(inventory.slot_a && !inventory.slot_b, "{inventory:?}");
    assert_eq!(device.status_json()["rotation"]["state"], "done");

    // A rekey cut short after creating its key, then the server loses the endpoint: the new
    // key can never work, so the next start erases it and keeps the old one.
    device.edit_config(|c| c.issuer = issuer.clone());
    device.run_crashing_at(&["rekey"], "rekey_create_key");
    let status = device.status_json();
    assert_eq!(status["credential"], "rekeying", "{status}");
    assert_eq!(status["rotation"]["state"], "rekeying", "{status}");
    let human = device.agent_ok(&["status"]);
    assert!(
        human.contains("rekeying (key slot A (0x81000011) in use; new key for slot B"),
        "{human}"
    );
    device.edit_config(|c| c.issuer = elsewhere.clone());
    // The stand-in knows no key of this device, so the token fails; the rekey is settled.
    let out = device.run_agent(&["token"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rotation abandoned"), "{stderr}");
    let inventory = device.inventory();
    assert!(inventory.slot_a && !inventory.slot_b, "{inventory:?}");

    // Back home, the old key is still the device's one credential.
    device.edit_config(|c| c.issuer = issuer.clone());
    let status = assert_one_live_key(&server, &device);
    assert_eq!(status["jwk"]["kid"], kid.as_str(), "{status}");
}

#[test]
fn a_running_agent_follows_a_rekey() {
    // Tokens live 6 s, so the running agent renews every ~5 s.
    let server = TestServer::start_with(&["--access-token-ttl", "6"]);
    let device = Device::provision(&server);
    let mut child = device.spawn_run();
    device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    // The agent enrolled itself at start.
    let first = device.status_json()["jwk"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = device.assertion_by(&server, KeySlot::A);

    let rekeyed: Value = serde_json::from_str(&device.agent_ok(&["rekey"])).unwrap();
    assert_eq!(rekeyed["slot"], "B", "{rekeyed}");
    // The running agent's key is gone; it notices at its next renewal and takes the new one.
    let Ok(Answer::Token {
        access_token: current,
        ..
    }) = fetch(&device.socket_path())
    else {
        panic!("no token on the socket: {}", device.run_log());
    };
    let next = device.wait_for_socket_token(Duration::from_secs(30), |t| t != current);
    let after = device.wait_for_socket_token(Duration::from_secs(30), |t| t != next);
    for token in [&next, &after] {
        assert_eq!(server.introspect(token)["active"], true);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log = device.run_log();
    assert!(log.contains("retrying in"), "{log}");
    let kid = assert_rekeyed(&server, &device, KeySlot::B, &first, &old);
    assert_eq!(rekeyed["kid"], kid.as_str());
}

const DAY: i64 = 86_400;
/// What `run` logs once it has read the schedule and found the key not yet due.
const SCHEDULED: &str = "next key rotation due at";

/// Audit entries recording a refused client authentication of `client_id`.
fn auth_failures(server: &TestServer, client_id: &str) -> usize {
    server
        .audit_log()
        .iter()
        .filter(|e| e["event"] == "client.auth_failed" && e["client"] == client_id)
        .count()
}

/// `status --json`'s `key_created_at` is `skew` seconds from the real time (±5 s).
fn assert_key_made_at(device: &Device, skew: i64) -> Value {
    let status = device.status_json();
    let made = status["key_created_at"].as_i64().expect("key_created_at");
    let expected = now() as i64 + skew;
    assert!(
        (made - expected).abs() <= 5,
        "made {made}, expected {expected}: {status}"
    );
    let due = status["next_rekey_at"].as_i64().expect("next_rekey_at");
    // One day plus up to 10% of it.
    assert!(due >= made + DAY && due < made + DAY + DAY / 10, "{status}");
    status
}

#[test]
fn run_rekeys_a_key_older_than_rekey_interval_days_and_only_then() {
    let server = TestServer::start();
    let mut device = Device::provision(&server);
    device.edit_config(|c| c.rekey_interval_days = RekeyInterval::days(1).unwrap());
    let first = enroll(&device);
    assert_key_made_at(&device, 0);
    let human = device.agent_ok(&["status"]);
    assert!(human.contains("key made:   "), "{human}");
    assert!(human.contains("rekey:      due at "), "{human}");
    let old = device.assertion_by(&server, KeySlot::A);

    // A young key: `run` serves tokens, reads the schedule, and leaves the key alone.
    let mut child = device.spawn_run();
    device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    let log = device.wait_for_run_log(Duration::from_secs(30), SCHEDULED);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!log.contains("rekey_"), "{log}");
    let inventory = device.inventory();
    assert!(inventory.slot_a && !inventory.slot_b, "{inventory:?}");
    assert_eq!(device.status_json()["jwk"]["kid"], first.as_str());

    // Two days later by the device clock: right after its first token, `run` rekeys; the
    // socket serves valid tokens before and after, and the server's `Date` corrects the
    // assertions the skewed clock would have got wrong (not one refused).
    let mut child = device.spawn_run_skewed(2 * DAY);
    let before = device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    // The schedule is reported only once the key is young again: after the rekey.
    let log = device.wait_for_run_log(Duration::from_secs(60), SCHEDULED);
    let after = device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(log.contains("is due for rotation; rotating it"), "{log}");
    assert!(log.contains("rotation: rekey_done"), "{log}");
    // The server's `Date` has one-second resolution, so the measured offset may be a second
    // either side of the two days (seen: 172801).
    let ahead = log
        .split(" s ahead of the server")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse::<i64>().ok());
    assert!(
        ahead.is_some_and(|s| (s - 2 * DAY).abs() <= 2),
        "{ahead:?}: {log}"
    );
    for token in [&before, &after] {
        assert_eq!(server.introspect(token)["active"], true, "{log}");
    }
    assert_eq!(auth_failures(&server, &device.client_id), 0, "{log}");
    let second = assert_rekeyed(&server, &device, KeySlot::B, &first, &old);
    // The new key's age counts from the (skewed) clock that made it.
    assert_key_made_at(&device, 2 * DAY);

    // A device upgraded in the field: its state file records no key age, and its TPM none
    // either (agents before the record made none). Even with the clock four days ahead, `run`
    // starts counting rather than rekeying, and records the start.
    Tpm::open(&device.tpm.tcti())
        .unwrap()
        .forget_key_made(KeySlot::B)
        .unwrap();
    let rotation = device.state_dir().join("rotation.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&rotation).unwrap()).unwrap();
    state
        .as_object_mut()
        .unwrap()
        .remove("since")
        .expect("since recorded");
    std::fs::write(&rotation, state.to_string()).unwrap();
    let status = device.status_json();
    assert!(status["key_created_at"].is_null(), "{status}");
    assert!(status["next_rekey_at"].is_null(), "{status}");
    let mut child = device.spawn_run_skewed(4 * DAY);
    let log = device.wait_for_run_log(Duration::from_secs(30), SCHEDULED);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!log.contains("rekey_"), "{log}");
    let status = assert_key_made_at(&device, 4 * DAY);
    assert_eq!(status["jwk"]["kid"], second.as_str(), "{status}");
    assert_eq!(status["slot"], "B", "{status}");
}

/// For `step`: enroll; a rekey A → B killed there (the agent alone), finished by `token`; then
/// a rekey B → A killed there together with the TPM (a power cut), finished by `enroll`. After
/// the crash, `status` shows `state` (the state persisted last).
fn crash_then_recover(step: &str, state: &str) {
    let server = TestServer::start();
    let mut device = Device::provision(&server);
    let first = enroll(&device);

    let old = device.assertion_by(&server, KeySlot::A);
    device.run_crashing_at(&["rekey"], step);
    assert_interrupted(&device, state);
    let out = device.run_agent(&["token"]);
    assert!(
        out.status.success(),
        "token after a crash at {step}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = assert_rekeyed(&server, &device, KeySlot::B, &first, &old);

    let old = device.assertion_by(&server, KeySlot::B);
    device.run_crashing_at(&["rekey"], step);
    device.tpm.restart().unwrap();
    assert_interrupted(&device, state);
    device.agent_ok(&["enroll"]);
    assert_rekeyed(&server, &device, KeySlot::A, &second, &old);
}

/// `status --json` after a crash: the persisted state, and `rekeying` while the new key is not
/// yet proven.
fn assert_interrupted(device: &Device, state: &str) {
    let status = device.status_json();
    assert_eq!(status["rotation"]["state"], state, "{status}");
    let credential = if state.starts_with("rekey") {
        "rekeying"
    } else {
        "key"
    };
    assert_eq!(status["credential"], credential, "{status}");
}

macro_rules! crash_tests {
    ($($name:ident => ($step:literal, $state:literal)),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                crash_then_recover($step, $state);
            }
        )*
    };
}

crash_tests! {
    crash_after_rekey_persist_intent => ("rekey_persist_intent", "rekeying"),
    crash_after_rekey_create_key => ("rekey_create_key", "rekeying"),
    crash_after_rekey_challenged => ("rekey_challenged", "rekeying"),
    crash_after_rekey_activated => ("rekey_activated", "rekeying"),
    crash_after_rekey_register => ("rekey_register", "rekeying"),
    crash_after_rekey_persist_registered => ("rekey_persist_registered", "rekey_registered"),
    crash_after_rekey_prove => ("rekey_prove", "rekey_registered"),
    crash_after_rekey_persist_proven => ("rekey_persist_proven", "proven"),
    crash_after_rekey_erase_old => ("rekey_erase_old", "proven"),
    crash_after_rekey_done => ("rekey_done", "done"),
}

#[test]
fn every_rekey_step_has_a_crash_test() {
    let source = include_str!("agent_rekey.rs");
    for step in hallmark_agent::RotationStep::REKEY {
        assert!(
            source.contains(&format!("=> (\"{}\"", step.name())),
            "no crash test for {}",
            step.name()
        );
    }
}

//! `hallmark-agent run`: rotation at start, a token on the Unix socket (mode 0600) kept fresh
//! across a server restart, `token`/`status` reading the socket, and a clean SIGTERM exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use hallmark_agent::socket::{fetch, Answer};
use hallmark_e2e::device::Device;
use hallmark_e2e::server::TestServer;

fn active(server: &TestServer, token: &str) -> bool {
    server.introspect(token)["active"] == true
}

#[test]
fn run_serves_fresh_tokens_on_the_socket_across_a_server_restart() {
    // Tokens live 6 s, so the agent renews every ~5 s.
    let mut server = TestServer::start_with(&["--access-token-ttl", "6"]);
    let device = Device::provision(&server);
    let mut child = device.spawn_run();

    let first = device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    assert!(active(&server, &first));
    let mode = std::fs::metadata(device.socket_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The rotation ran at start.
    assert!(!device.inventory().factory_secret);

    // Renewal before expiry.
    let second = device.wait_for_socket_token(Duration::from_secs(15), |t| t != first);
    assert!(active(&server, &second));

    // `token` without a scope reads the socket; `status` shows the expiry.
    let via_cli = device.agent_ok(&["token"]);
    assert!(!via_cli.trim().is_empty());
    let status = device.status_json();
    assert!(status["token_expires_at"].as_u64().is_some(), "{status}");

    // Server down for longer than a token lives: the socket serves the cached token while it
    // is valid, then says it has none, and the agent gets a new one once the server is back.
    server.kill();
    std::thread::sleep(Duration::from_secs(8));
    assert!(matches!(
        fetch(&device.socket_path()).unwrap(),
        Answer::Error { error, .. } if error == "unavailable"
    ));
    server.spawn();
    let third = device.wait_for_socket_token(Duration::from_secs(60), |t| t != second);
    assert!(active(&server, &third));
    let log = device.run_log();
    assert!(log.contains("retrying in"), "{log}");

    // SIGTERM: clean exit, socket removed.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "run exited with {status}: {}",
        device.run_log()
    );
    assert!(!device.socket_path().exists());
}

#[test]
fn a_second_run_refuses_while_one_serves() {
    let server = TestServer::start();
    let device = Device::provision(&server);
    let mut child = device.spawn_run();
    device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    let out = device.run_agent(&["run"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already serves"), "{stderr}");
    child.kill().unwrap();
    child.wait().unwrap();
    // A socket file left by a killed agent is replaced by the next one.
    assert!(device.socket_path().exists());
    let mut again = device.spawn_run();
    device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    again.kill().unwrap();
    again.wait().unwrap();
}

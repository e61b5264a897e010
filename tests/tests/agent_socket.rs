//! The token socket as device firmware meets it: the C example client
//! (`agent/examples/token-client.c`), built with the system C compiler, gets the running
//! agent's token and reports `unavailable` while there is none; and the `SO_PEERCRED` allow-list
//! (`socket_allowed_uids`): a process of another uid is answered `forbidden` (and logged) until
//! its uid is listed. Acting as another uid needs root (`setpriv`, as CI runs); without root
//! that half is not exercised and the test says so on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use hallmark_e2e::device::Device;
use hallmark_e2e::server::TestServer;

/// Builds the example with `cc`, warnings as errors, into `dir`.
fn compile_client(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/examples/token-client.c");
    let binary = dir.join("token-client");
    let out = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .expect("run cc (the system C compiler)");
    assert!(
        out.status.success(),
        "cc {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    binary
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

fn stop(mut child: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_c_example_client_gets_the_token_and_says_when_there_is_none() {
    let mut server = TestServer::start();
    let device = Device::provision(&server);
    let client = compile_client(device.dir.path());

    let run = device.spawn_run();
    let token = device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    let out = Command::new(&client)
        .arg(device.socket_path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "token-client failed: {stderr}");
    assert_eq!(stdout, token);
    assert_eq!(server.introspect(&stdout)["active"], true);
    stop(run);

    // No agent on the socket: exit 2, and why.
    let out = Command::new(&client)
        .arg(device.socket_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("cannot connect"), "{:?}", text(&out));

    // An agent whose server is down holds no token yet: "unavailable", exit 75 (EX_TEMPFAIL).
    server.kill();
    let run = device.spawn_run();
    device.wait_for_run_log(Duration::from_secs(30), "serving tokens on");
    let out = Command::new(&client)
        .arg(device.socket_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{:?}", text(&out));
    assert!(
        text(&out).1.starts_with("unavailable: "),
        "{:?}",
        text(&out)
    );
    stop(run);
}

#[test]
fn only_the_agent_root_and_allowed_uids_get_an_answer() {
    let server = TestServer::start();
    let mut device = Device::provision(&server);
    // Another user must be able to reach the socket and run the client: a directory beside
    // the (0700) state directory, inside a device directory others may enter.
    std::fs::set_permissions(device.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let client = compile_client(device.dir.path());
    device.edit_config(|c| {
        c.socket = Some("run/agent.sock".into());
        c.socket_allowed_uids = vec![65533];
    });

    let run = device.spawn_run();
    let token = device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    let socket = device.socket_path();
    assert_eq!(socket, device.dir.path().join("run/agent.sock"));
    // Other uids may connect (the uid check is the gate): mode 0666.
    assert_eq!(std::fs::metadata(&socket).unwrap().mode() & 0o777, 0o666);
    let log = device.run_log();
    assert!(log.contains("to uids 0, "), "{log}");
    assert!(log.contains(", 65533"), "{log}");
    // This process is root (or the agent's own user): allowed.
    let out = Command::new(&client).arg(&socket).output().unwrap();
    assert_eq!(text(&out).0, token, "{:?}", text(&out));

    if effective_uid() != 0 {
        eprintln!(
            "agent_socket: not root, so the client cannot run as another uid: the refusal of \
             an unlisted uid is not exercised here (the allow-list itself is unit-tested)"
        );
        stop(run);
        return;
    }
    // nobody (65534) is not listed: forbidden, and the agent logs it.
    let out = as_nobody(&client, &socket);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert!(
        text(&out)
            .1
            .starts_with("forbidden: uid 65534 may not use this socket"),
        "{:?}",
        text(&out)
    );
    device.wait_for_run_log(
        Duration::from_secs(10),
        "socket: refused a process of uid 65534",
    );
    stop(run);

    // Listed: the same process gets the token.
    device.edit_config(|c| c.socket_allowed_uids = vec![65534]);
    let run = device.spawn_run();
    let token = device.wait_for_socket_token(Duration::from_secs(30), |_| true);
    let out = as_nobody(&client, &socket);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(text(&out).0, token);
    stop(run);
}

/// Runs `client SOCKET` as uid/gid 65534 (nobody) with no supplementary groups.
fn as_nobody(client: &Path, socket: &Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(client)
        .arg(socket)
        .output()
        .expect("run setpriv (util-linux)")
}

/// This process's effective uid, from the owner of what it creates.
fn effective_uid() -> u32 {
    let dir = tempfile::tempdir().unwrap();
    std::fs::metadata(dir.path()).unwrap().uid()
}

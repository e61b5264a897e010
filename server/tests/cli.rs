//! The `hallmark-server` command line: `init` output, refusals and file modes; `serve` refusals,
//! graceful shutdown, durability across restarts, and the config layers (file, environment,
//! flags).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{free_port, run_cli, TestServer};
use serde_json::Value;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn init_args<'a>(dir: &'a Path, issuer: &'a str) -> Vec<&'a OsStr> {
    vec![
        os("init"),
        os("--data-dir"),
        dir.as_os_str(),
        os("--issuer"),
        os(issuer),
    ]
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn init_prints_one_json_object_and_keeps_secrets_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("srv");
    let out = run_cli(&init_args(&dir, "https://auth.example.test:8443/"), &[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        stdout.trim_end().lines().count(),
        1,
        "one line of JSON: {stdout}"
    );
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    let mut keys: Vec<&str> = printed
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "admin_client_id",
            "admin_client_secret",
            "ca_cert",
            "issuer"
        ]
    );
    assert_eq!(
        printed["issuer"], "https://auth.example.test:8443",
        "normalised, no trailing slash"
    );
    let ca = PathBuf::from(printed["ca_cert"].as_str().unwrap());
    assert!(ca.is_absolute(), "{ca:?}");
    assert!(std::fs::read_to_string(&ca)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let secret = printed["admin_client_secret"].as_str().unwrap();
    assert_eq!(common::unb64(secret).len(), 32);
    assert!(!printed["admin_client_id"].as_str().unwrap().is_empty());
    // Nothing secret on stderr either.
    assert!(!stderr_of(&out).contains(secret));

    // Private material is 0600 in a 0700 directory.
    assert_eq!(mode(&dir), 0o700);
    for private in ["signing-keys.json", "tls/ca-key.pem", "tls/server-key.pem"] {
        assert_eq!(mode(&dir.join(private)), 0o600, "{private}");
    }
    // The admin secret is stored nowhere, only its hash.
    for (path, bytes) in snapshot(&dir) {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{path:?} holds the admin secret"
        );
    }
}

#[test]
fn init_refuses_an_initialised_or_non_empty_directory_and_touches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("srv");
    assert!(run_cli(&init_args(&dir, "https://localhost:8443"), &[])
        .status
        .success());
    let before = snapshot(&dir);
    let out = run_cli(&init_args(&dir, "https://localhost:8443"), &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no new secret printed");
    let err = stderr_of(&out);
    assert!(err.contains("already holds a Hallmark server"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(snapshot(&dir), before, "a refused init changed files");

    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"keep me").unwrap();
    let out = run_cli(&init_args(&other, "https://localhost:8443"), &[]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("not empty"), "{}", stderr_of(&out));
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    assert_eq!(std::fs::read(other.join("notes.txt")).unwrap(), b"keep me");

    // An empty existing directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(run_cli(&init_args(&empty, "https://localhost:8443"), &[])
        .status
        .success());
}

#[test]
fn init_refuses_issuers_that_are_not_https_except_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    for issuer in [
        "http://auth.example.com",
        "http://10.0.0.1:8080",
        "ftp://localhost",
        "https://auth.example.com/?q=1",
        "https://auth.example.com/#frag",
        "not a url",
    ] {
        let dir = tmp.path().join("refused");
        let out = run_cli(&init_args(&dir, issuer), &[]);
        assert!(!out.status.success(), "{issuer} accepted");
        assert!(
            stderr_of(&out).contains("issuer"),
            "{issuer}: {}",
            stderr_of(&out)
        );
        assert!(out.stdout.is_empty());
        assert!(
            !dir.join("hallmark.toml").exists(),
            "{issuer}: left a half-made data dir"
        );
    }
    for (i, issuer) in [
        "http://127.0.0.1:9000",
        "http://localhost:9000",
        "http://[::1]:9000",
    ]
    .iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("ok{i}"));
        let out = run_cli(&init_args(&dir, issuer), &[]);
        assert!(out.status.success(), "{issuer}: {}", stderr_of(&out));
    }
}

#[test]
fn serve_refuses_insecure_http_off_loopback_and_a_dir_without_init() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("srv");
    assert!(run_cli(&init_args(&dir, "https://localhost:8443"), &[])
        .status
        .success());
    for listen in ["0.0.0.0:0", "192.0.2.1:8443", "[::]:8443"] {
        let out = run_cli(
            &[
                os("serve"),
                os("--data-dir"),
                dir.as_os_str(),
                os("--insecure-http"),
                os("--listen"),
                os(listen),
            ],
            &[],
        );
        assert!(!out.status.success(), "{listen}");
        let err = stderr_of(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains("loopback"), "{err}");
    }
    // The same through the environment.
    let out = run_cli(
        &[os("serve"), os("--data-dir"), dir.as_os_str()],
        &[
            ("HALLMARK_INSECURE_HTTP", "true"),
            ("HALLMARK_LISTEN", "0.0.0.0:0"),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("loopback"), "{}", stderr_of(&out));

    for not_a_server in [tmp.path().join("missing"), tmp.path().to_owned()] {
        let out = run_cli(
            &[os("serve"), os("--data-dir"), not_a_server.as_os_str()],
            &[],
        );
        assert!(!out.status.success());
        let err = stderr_of(&out);
        assert!(err.contains("hallmark-server init"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

#[test]
fn serve_reports_bad_settings_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("srv");
    assert!(run_cli(&init_args(&dir, "https://localhost:8443"), &[])
        .status
        .success());
    let serve = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec![os("serve"), os("--data-dir"), dir.as_os_str()];
        args.extend(extra.iter().map(|s| os(s)));
        run_cli(&args, envs)
    };
    let config = tmp.path().join("extra.toml");
    std::fs::write(&config, "surprise = 1\n").unwrap();
    let cases: Vec<(&str, std::process::Output, &str)> = vec![
        (
            "unknown config key",
            serve(&["--config", config.to_str().unwrap()], &[]),
            "surprise",
        ),
        (
            "missing config file",
            serve(&["--config", "/nonexistent/x.toml"], &[]),
            "/nonexistent/x.toml",
        ),
        (
            "ttl 0",
            serve(&["--access-token-ttl", "0"], &[]),
            "lifetime",
        ),
        (
            "ttl from env out of range",
            serve(&[], &[("HALLMARK_ACCESS_TOKEN_TTL", "100000")]),
            "lifetime",
        ),
        (
            "listen not IP:PORT",
            serve(&["--listen", "localhost"], &[]),
            "listen",
        ),
        (
            "cert without key",
            serve(&["--tls-cert", "/tmp/x.pem"], &[]),
            "--tls-key",
        ),
    ];
    for (what, out, needle) in cases {
        assert!(!out.status.success(), "{what}");
        let err = stderr_of(&out);
        assert!(err.contains(needle), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let server = TestServer::start();
    let out = run_cli(
        &[
            os("serve"),
            os("--data-dir"),
            server.data_dir.as_os_str(),
            os("--listen"),
            os(&format!("127.0.0.1:{}", free_port())),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        // sled: the database file is locked; PostgreSQL: the replica's audit chain is.
        stderr_of(&out).contains("in use by another"),
        "{}",
        stderr_of(&out)
    );
    // The first is unharmed.
    assert_eq!(
        server
            .token_basic(&server.admin_id, &server.admin_secret, None)
            .0,
        200
    );
}

#[test]
fn sigterm_and_sigint_stop_the_server_gracefully() {
    for signal in ["-TERM", "-INT"] {
        let mut server = TestServer::start();
        // An open keep-alive connection must not hold the shutdown up.
        assert_eq!(
            server
                .token_basic(&server.admin_id, &server.admin_secret, None)
                .0,
            200
        );
        let started = std::time::Instant::now();
        let status = if signal == "-TERM" {
            server.terminate()
        } else {
            server.signal_and_wait(signal)
        };
        assert!(status.success(), "{signal}: {status}: {}", server.log());
        assert_eq!(status.code(), Some(0));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(12),
            "{signal}: {:?}",
            started.elapsed()
        );
        assert!(server.log().contains("stopped"), "{}", server.log());
    }
}

#[test]
fn clients_and_keys_survive_a_restart_and_a_crash() {
    let mut server = TestServer::start();
    let (id, secret) = server.register_secret_client("telemetry", "client_secret_basic");
    let key = common::ClientKey::es256();
    let jwt_id = server.register_jwt_client("telemetry", &[(&key, Some("k"))]);
    let jwks_before = server.jwks();
    let token_before = server.token_basic(&id, &secret, None).2["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    for restart in ["graceful", "kill -9"] {
        if restart == "graceful" {
            assert!(server.terminate().success());
        } else {
            server.kill();
        }
        server.spawn();
        let (status, _, body) = server.token_basic(&id, &secret, None);
        assert_eq!(status, 200, "{restart}: {body}");
        let (status, _, body) = server.token_assertion(
            &key.assertion(Some("k"), &server.assertion_claims(&jwt_id)),
            &[],
        );
        assert_eq!(status, 200, "{restart}: {body}");
        assert_eq!(
            server.jwks(),
            jwks_before,
            "{restart}: signing keys are stable"
        );
        // Tokens issued before the restart are still valid.
        let (status, body) = server.post_form(
            "/oauth2/introspect",
            Some((&id, &secret)),
            &[("token", &token_before)],
        );
        assert_eq!(
            (status, body["active"].as_bool()),
            (200, Some(true)),
            "{restart}: {body}"
        );
    }
}

#[test]
fn insecure_http_serves_on_loopback() {
    // The fixture probes readiness over plain HTTP when given --insecure-http.
    let server = TestServer::start_with(&["--insecure-http"]);
    let plain = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut r = plain
        .get(&format!("http://127.0.0.1:{}/healthz", server.port))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.body_mut().read_to_string().unwrap().contains("ok"));
}

// ---------------------------------------------------------------------------------------------
// Configuration layers: data dir file < --config FILE < HALLMARK_* environment < flags
// ---------------------------------------------------------------------------------------------

fn expires_in(server: &TestServer) -> u64 {
    let (status, _, body) = server.token_basic(&server.admin_id, &server.admin_secret, None);
    assert_eq!(status, 200, "{body}");
    body["expires_in"].as_u64().unwrap()
}

fn config_file(ttl: u64) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.toml");
    std::fs::write(
        &path,
        format!("# operator overrides\naccess_token_ttl = {ttl}\n"),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

#[test]
fn the_environment_sets_the_token_lifetime() {
    let server = TestServer::start_with_env(&[], &[("HALLMARK_ACCESS_TOKEN_TTL", "60")]);
    assert_eq!(expires_in(&server), 60);
}

#[test]
fn a_config_file_sets_the_token_lifetime() {
    let (_keep, path) = config_file(120);
    let server = TestServer::start_with(&["--config", &path]);
    assert_eq!(expires_in(&server), 120);
    // HALLMARK_CONFIG names the file too.
    let server = TestServer::start_with_env(&[], &[("HALLMARK_CONFIG", &path)]);
    assert_eq!(expires_in(&server), 120);
}

#[test]
fn the_environment_beats_the_config_file_and_flags_beat_both() {
    let (_keep, path) = config_file(120);
    let server =
        TestServer::start_with_env(&["--config", &path], &[("HALLMARK_ACCESS_TOKEN_TTL", "60")]);
    assert_eq!(expires_in(&server), 60);
    let server = TestServer::start_with_env(
        &["--config", &path, "--access-token-ttl", "30"],
        &[("HALLMARK_ACCESS_TOKEN_TTL", "60")],
    );
    assert_eq!(expires_in(&server), 30);
}

#[test]
fn the_config_file_beats_the_data_dirs_file() {
    // The data directory's hallmark.toml is the base layer; an edit there is seen, and --config wins.
    let mut server = TestServer::start();
    server.kill();
    let base = server.data_dir.join("hallmark.toml");
    let mut text = std::fs::read_to_string(&base).unwrap();
    text.push_str("access_token_ttl = 200\n");
    std::fs::write(&base, text).unwrap();
    server.spawn();
    assert_eq!(expires_in(&server), 200);
    server.kill();
    let (_keep, path) = config_file(120);
    server.set_extra_args(&["--config", &path]);
    server.spawn();
    assert_eq!(expires_in(&server), 120);
}

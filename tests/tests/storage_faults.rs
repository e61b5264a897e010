//! A disk that fills up or fails under the real server, and its recovery without an operator:
//! writes are refused with 503 and `Retry-After` (never a 500, never a 2xx for an unsaved
//! write), `/readyz` says 503 while they are, reads go on (the JWKS, a client introspecting its
//! own token), the log names the OS error once; when the disk takes writes again the same
//! process (no restart) accepts writes within a few retry intervals, and everything it
//! acknowledged is there, with the audit chain intact.
//!
//! Full disk: a 64 MiB tmpfs filled by another file (a real `ENOSPC`). Failing disk: an
//! `LD_PRELOAD` shim failing every write and sync under the data directory with `EIO`. And a
//! database that cannot be opened again after the failure (corrupt): the server stops with one
//! line saying so and a failure exit, for its supervisor to take over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hallmark_e2e::disk::{FaultShim, SmallDisk, EIO, ENOSPC};
use hallmark_e2e::server::TestServer;
use serde_json::Value;

/// How the test breaks the disk and mends it.
trait DiskFault {
    fn break_disk(&self);
    fn mend_disk(&self);
    fn os_error(&self) -> &'static str;
}

impl DiskFault for SmallDisk {
    fn break_disk(&self) {
        let bytes = self.fill();
        eprintln!("filled the disk with {} KiB", bytes / 1024);
    }
    fn mend_disk(&self) {
        self.free();
    }
    fn os_error(&self) -> &'static str {
        "No space left on device"
    }
}

struct Shim(FaultShim, &'static str);

impl DiskFault for Shim {
    fn break_disk(&self) {
        self.0.fail();
    }
    fn mend_disk(&self) {
        self.0.heal();
    }
    fn os_error(&self) -> &'static str {
        self.1
    }
}

#[test]
fn a_full_disk_is_refused_with_503_and_recovered_in_process() {
    match SmallDisk::mount(64) {
        Ok(disk) => {
            let data_dir = disk.path().join("data");
            outage_and_recovery(&disk, data_dir, &[]);
        }
        Err(why) => {
            // Without mount (no root), the shim stands in for the full disk.
            eprintln!("cannot mount a tmpfs ({why}); simulating ENOSPC with the LD_PRELOAD shim");
            let dir = tempfile::tempdir().unwrap();
            let data_dir = dir.path().join("data");
            let shim = Shim(
                FaultShim::build(&data_dir, ENOSPC),
                "No space left on device",
            );
            let env = shim.0.env();
            outage_and_recovery(&shim, data_dir, &env);
        }
    }
}

#[test]
fn an_eio_disk_is_refused_with_503_and_recovered_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let shim = Shim(FaultShim::build(&data_dir, EIO), "Input/output error");
    let env = shim.0.env();
    outage_and_recovery(&shim, data_dir, &env);
}

fn outage_and_recovery(fault: &dyn DiskFault, data_dir: PathBuf, env: &[(String, String)]) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut server = TestServer::start_at(
        Some(data_dir.clone()),
        &["--storage-retry-interval", "1"],
        &env,
    );
    let pid = server.pid();
    let (id, secret) = server.register_secret_client("api", "client_secret_basic");
    let mut saved: Vec<String> = (0..5)
        .map(|_| token(&server, &id, &secret).unwrap())
        .collect();

    fault.break_disk();
    // Tokens issued before the flush fails were saved; the first refusal is a 503.
    let mut refused = None;
    for _ in 0..2000 {
        match token(&server, &id, &secret) {
            Ok(t) => saved.push(t),
            Err(r) => {
                refused = Some(r);
                break;
            }
        }
    }
    let (status, retry_after, body) = refused.expect("writes never failed on the broken disk");
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");

    // While it lasts: writes refused, not ready, reads still served.
    for _ in 0..5 {
        let (status, retry_after, _) = token(&server, &id, &secret).unwrap_err();
        assert_eq!((status, retry_after.as_deref()), (503, Some("1")));
    }
    let (status, headers, _) = server.get_full("/readyz");
    assert_eq!(status, 503);
    assert_eq!(header(&headers, "retry-after").as_deref(), Some("1"));
    assert_eq!(server.get("/jwks.json").0, 200);
    let own = introspect_own(&server, &id, &secret, &saved[0]);
    assert_eq!(own["active"], true, "{own}");
    let log = server.log();
    assert!(log.contains("storage failing"), "{log}");
    assert!(
        log.contains(fault.os_error()),
        "the OS error is named: {log}"
    );

    let mended = Instant::now();
    fault.mend_disk();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get_full("/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready 30 s after the disk was mended: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "ready again {:.2} s after the disk was mended",
        mended.elapsed().as_secs_f64()
    );
    assert_eq!(server.pid(), pid, "recovered in the same process");
    let log = server.log();
    assert!(log.contains("storage recovered"), "{log}");
    for line in log.lines().filter(|l| l.contains("storage")) {
        eprintln!("server log: {line}");
    }
    for _ in 0..5 {
        saved.push(token(&server, &id, &secret).expect("writes work again"));
    }

    // Everything acknowledged is there after a clean stop, and the chain holds.
    let saved_jtis: Vec<String> = saved.iter().map(|t| jti(t)).collect();
    let entries = server.audit_entries();
    for jti in &saved_jtis {
        assert!(
            entries.iter().any(|e| e
                .body
                .event
                .reason
                .as_deref()
                .is_some_and(|r| r.contains(jti.as_str()))),
            "acknowledged token {jti} has no audit entry"
        );
    }
    eprintln!(
        "{} tokens acknowledged, all audited; {} audit entries, chain intact",
        saved.len(),
        entries.len()
    );
}

/// A client_credentials token, or the refusal: (status, Retry-After, body).
fn token(
    server: &TestServer,
    id: &str,
    secret: &str,
) -> Result<String, (u16, Option<String>, Value)> {
    let (status, headers, body) = server.token_basic(id, secret, Some("api"));
    match status {
        200 => Ok(body["access_token"].as_str().unwrap().to_owned()),
        503 => Err((status, header(&headers, "retry-after"), body)),
        other => panic!("a write answered {other} (only 200 or 503 are acceptable): {body}"),
    }
}

fn header(headers: &ureq::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn introspect_own(server: &TestServer, id: &str, secret: &str, token: &str) -> Value {
    let (status, body) = server.post_form(
        "/oauth2/introspect",
        Some((id, secret)),
        &[("token", token)],
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn jti(token: &str) -> String {
    let (_, claims) = hallmark_e2e::server::jwt_parts(token);
    claims["jti"].as_str().unwrap().to_owned()
}

#[test]
fn a_database_that_cannot_be_reopened_stops_the_server_for_its_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Only sled's own file fails: the audit files take the entries, sled's flush fails and
    // poisons the open database, so recovering means reopening it. (A failure of the audit
    // files alone leaves sled sound, and the server resumes without reopening anything.)
    let shim = FaultShim::build(&data_dir.join("db").join("db"), EIO);
    let env = shim.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut server = TestServer::start_at(
        Some(data_dir.clone()),
        &["--storage-retry-interval", "1"],
        &env,
    );
    let (id, secret) = server.register_secret_client("api", "client_secret_basic");
    let tokens: Vec<String> = (0..50)
        .map(|_| token(&server, &id, &secret).unwrap())
        .collect();
    shim.fail();
    // An issuance writes only its audit entry; a revocation writes sled, whose flush fails.
    let refused = tokens.iter().find_map(|t| {
        let (status, body) =
            server.post_form("/oauth2/revoke", Some((&id, &secret)), &[("token", t)]);
        (status != 200).then_some((status, body))
    });
    assert!(
        matches!(refused, Some((503, _))),
        "{refused:?} {}",
        server.log()
    );
    // While it fails, the database's own configuration is damaged: reopening it will fail
    // for a reason no retry can fix.
    std::fs::write(data_dir.join("db/conf"), b"not a sled configuration\n").unwrap();
    shim.heal();
    let status = server.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", server.log());
    let log = server.log();
    assert_eq!(
        log.matches("storage cannot recover in this process")
            .count(),
        2,
        "one log line, and the exit message: {log}"
    );
    eprintln!(
        "server log: {}",
        log.lines()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .join("\nserver log: ")
    );
}

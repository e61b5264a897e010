//! Audit export through the real server binary: a kill -9 in the middle of exporting under
//! load loses no acknowledged entry from the files (the restarted server writes what they
//! lack), segments rotate and `audit verify --export-dir` checks them end to end; retention
//! prunes the database only behind the export, `audit verify` passes after pruning, and fails
//! naming the segment when an exported segment is edited or removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::io::Read as _;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{jwt_parts, TestServer};

/// Every entry line of every segment in `dir` (closed segments gunzipped).
fn exported_lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        // A running server renames and removes segments as it closes them: a file gone
        // between listing and reading is read again at the next poll.
        if name.ends_with(".jsonl.gz") {
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            let mut bytes = Vec::new();
            if flate2::read::MultiGzDecoder::new(file)
                .read_to_end(&mut bytes)
                .is_err()
            {
                continue;
            }
            text = String::from_utf8_lossy(&bytes).into_owned();
        } else if name.ends_with(".jsonl") {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        out.extend(text.lines().map(str::to_owned));
    }
    out
}

/// The jtis of the tokens whose issuance the export holds.
fn exported_jtis(dir: &Path) -> HashSet<String> {
    exported_lines(dir)
        .iter()
        // Whole lines only: the open segment may be read in the middle of a write.
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .filter_map(|l| l.split("jti=").nth(1))
        .map(|rest| rest.split(['"', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

fn verify(data_dir: &Path, export_dir: &Path) -> Output {
    common::run_cli(
        &[
            "audit".as_ref(),
            "verify".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--export-dir".as_ref(),
            export_dir.as_os_str(),
        ],
        &[],
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Issue tokens from `threads` threads until `stop`; the jtis of every token acknowledged.
fn load(
    server: &TestServer,
    id: &str,
    secret: &str,
    threads: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..threads)
        .map(|_| {
            let (http, url) = (server.http.clone(), server.url("/oauth2/token"));
            let (id, secret, stop) = (id.to_owned(), secret.to_owned(), stop.clone());
            std::thread::spawn(move || {
                use base64::Engine as _;
                let basic =
                    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
                let mut acked = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let r = http
                        .post(&url)
                        .header("Authorization", &format!("Basic {basic}"))
                        .send_form([("grant_type", "client_credentials")]);
                    // Refused or cut off by the kill: not acknowledged.
                    let Ok(mut r) = r else { continue };
                    if r.status() != 200 {
                        continue;
                    }
                    let Ok(body) = r.body_mut().read_json::<serde_json::Value>() else {
                        continue;
                    };
                    let token = body["access_token"].as_str().unwrap_or_default();
                    let (_, claims) = jwt_parts(token);
                    acked.push(claims["jti"].as_str().unwrap().to_owned());
                }
                acked
            })
        })
        .collect()
}

#[test]
fn kill_9_while_exporting_under_load_loses_no_acknowledged_entry_from_the_files() {
    let work = tempfile::tempdir().unwrap();
    let export = work.path().join("export");
    let export_arg = export.to_str().unwrap().to_owned();
    let flags = [
        "--audit-export-dir",
        &export_arg,
        "--audit-export-max-bytes",
        "8192",
        "--audit-export-max-age",
        "1",
    ];
    let mut server = TestServer::start_with(&flags);
    let (id, secret) = server.register_secret_client("api:read", "client_secret_basic");
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&server, &id, &secret, 4, &stop);
    // Long enough for several rotations, then the kill in the middle of the load.
    std::thread::sleep(Duration::from_millis(2500));
    server.kill();
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acked.len() > 50, "too little load: {}", acked.len());
    let before = exported_jtis(&export);
    eprintln!(
        "{} tokens acknowledged before the kill; the files held {} of them at the kill",
        acked.len(),
        acked.iter().filter(|j| before.contains(*j)).count()
    );

    // The restarted server catches the files up from the database.
    server.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let have = exported_jtis(&export);
        let missing: Vec<&String> = acked.iter().filter(|j| !have.contains(*j)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(missing, 0, "acknowledged issuances missing from the export");
    assert!(server.terminate().success());
    let closed = std::fs::read_dir(&export)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".jsonl.gz")
        })
        .count();
    assert!(closed >= 2, "segments rotated: {closed}");
    let out = verify(&server.data_dir, &export);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("audit export intact"), "{}", text(&out));
}

#[test]
fn pruning_keeps_verify_passing_and_a_tampered_or_removed_segment_is_named() {
    let work = tempfile::tempdir().unwrap();
    let export = work.path().join("export");
    let export_arg = export.to_str().unwrap().to_owned();
    let mut server = TestServer::start_with(&[
        "--audit-export-dir",
        &export_arg,
        "--audit-export-max-bytes",
        "4096",
        "--audit-export-max-age",
        "1",
        "--audit-retention",
        "1s",
    ]);
    let (id, secret) = server.register_secret_client("api:read", "client_secret_basic");
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&server, &id, &secret, 2, &stop);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let acked: usize = workers.into_iter().map(|w| w.join().unwrap().len()).sum();
    assert!(acked > 20, "too little load: {acked}");
    // Retention 1 s, segments closed every second, pruning every second.
    std::thread::sleep(Duration::from_millis(4000));
    assert!(server.terminate().success());
    assert!(
        server.log().contains("exporting the audit log"),
        "{}",
        server.log()
    );
    let out = verify(&server.data_dir, &export);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("after pruned entries 1..="),
        "nothing was pruned: {said}"
    );
    // The database really is smaller than the export.
    let exported = exported_lines(&export)
        .iter()
        .filter(|l| l.contains("\"seq\""))
        .count();
    assert!(exported as u64 > 20);

    // An exported entry edited: the segment is named.
    let mut segments: Vec<_> = std::fs::read_dir(&export)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.gz"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 2);
    let victim = segments[0].clone();
    let saved = std::fs::read(&victim).unwrap();
    let mut plain = String::new();
    flate2::read::MultiGzDecoder::new(&saved[..])
        .read_to_string(&mut plain)
        .unwrap();
    let edited = plain.replacen("client_credentials", "authorization_code", 1);
    assert_ne!(edited, plain);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, edited.as_bytes()).unwrap();
    std::fs::write(&victim, gz.finish().unwrap()).unwrap();
    let out = verify(&server.data_dir, &export);
    let said = text(&out);
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&name) && said.contains("altered"), "{said}");

    // Restored, then removed: named as missing.
    std::fs::write(&victim, &saved).unwrap();
    assert!(verify(&server.data_dir, &export).status.success());
    std::fs::remove_file(&victim).unwrap();
    let out = verify(&server.data_dir, &export);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("missing"), "{said}");
}

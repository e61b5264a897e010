//! The exporter in-process, over the embedded store: rotation, resuming after a torn write,
//! pruning behind the export, and `audit verify --export-dir`'s findings.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::checkpoint::{Checkpoint, CheckpointError, Verifier};
use crate::keys::{KeyFile, KeyRing};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::{Durability as _, SledStore};

const ISSUER: &str = "https://as.example";

struct Fixture {
    _db_dir: tempfile::TempDir,
    export_dir: tempfile::TempDir,
    store: Arc<SledStore>,
    keys: KeyFile,
    /// Entries appended so far.
    n: u64,
}

impl Fixture {
    fn new() -> Self {
        let db_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(db_dir.path()).unwrap());
        let mut keys = KeyFile::default();
        keys.add_new(0, 0);
        Fixture {
            _db_dir: db_dir,
            export_dir: tempfile::tempdir().unwrap(),
            store,
            keys,
            n: 0,
        }
    }

    /// Append `n` token issuances at time `time_ms`, flushed every 5 (as the group committer
    /// would: several stored segments).
    fn issue(&mut self, n: u64, time_ms: u64) {
        for i in 0..n {
            if i % 5 == 0 {
                self.store.flush().unwrap();
            }
            self.n += 1;
            let event = AuditEvent::new("token.issued", Outcome::Success)
                .actor(format!("dev-{:04}", self.n % 7))
                .subject(format!("dev-{:04}", self.n % 7))
                .client(format!("dev-{:04}", self.n % 7))
                .reason(format!(
                    "grant=client_credentials scope=device jti=j{}",
                    self.n
                ));
            self.store.append(event, time_ms).unwrap();
        }
        self.store.flush().unwrap();
    }

    fn settings(&self, max_bytes: u64, retention: Option<Duration>) -> ExportSettings {
        ExportSettings {
            dir: self.export_dir.path().to_owned(),
            max_bytes,
            max_age: Duration::from_secs(3600),
            retention,
        }
    }

    fn signer(&self) -> Signer {
        let ring = KeyRing::build(&self.keys, u64::MAX).unwrap();
        Arc::new(move |seq, hash: &str| {
            Checkpoint {
                issuer: ISSUER.into(),
                seq,
                head_hash: hash.to_owned(),
                time: 1,
                chain: None,
            }
            .sign(&ring)
        })
    }

    async fn exporter(&self, max_bytes: u64, retention: Option<Duration>) -> Exporter {
        Exporter::open(
            self.settings(max_bytes, retention),
            self.store.clone(),
            self.signer(),
        )
        .await
        .unwrap()
    }

    async fn verify(&self) -> Result<Vec<verify::ChainReport>, CheckpointError> {
        let v = Verifier::new(&*self.store, &self.keys, ISSUER.into()).unwrap();
        v.verify(&[]).await?;
        v.verify_export(self.export_dir.path()).await
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.export_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.export_dir.path().join(name)
    }
}

async fn drain(exporter: &mut Exporter, now_ms: u64) -> Progress {
    let mut total = Progress::default();
    loop {
        let p = exporter.step(now_ms).await.unwrap();
        total.exported += p.exported;
        total.closed += p.closed;
        if p.exported == 0 {
            return total;
        }
    }
}

fn rewrite_gz(path: &Path, change: impl FnOnce(String) -> String) {
    let text = String::from_utf8(segment::read_text(path, true).unwrap()).unwrap();
    let text = change(text);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

#[tokio::test]
async fn segments_rotate_by_size_and_age_and_verify_end_to_end() {
    let mut f = Fixture::new();
    let mut ex = f.exporter(4096, None).await;
    f.issue(100, 1_000);
    let p = drain(&mut ex, 1_000).await;
    assert_eq!(p.exported, 100);
    assert!(p.closed >= 2, "{p:?}");
    // Closing by age: the open segment's first entry is an hour old.
    f.issue(3, 2_000);
    drain(&mut ex, 2_000).await;
    let p = ex.step(10_000_000).await.unwrap();
    assert_eq!(p.closed, 1);
    assert_eq!(ex.closed_upto(), 103);
    let files = f.files();
    assert!(files.iter().all(|n| n.ends_with(".jsonl.gz")), "{files:?}");
    assert!(
        files[0].starts_with("audit-00000000000000000001-"),
        "{files:?}"
    );
    let reports = f.verify().await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].last.0, 103);
    assert_eq!(reports[0].segments, files.len());
    // Each closed segment ends with a checkpoint line.
    let text = String::from_utf8(segment::read_text(&f.path(&files[0]), true).unwrap()).unwrap();
    assert!(text
        .lines()
        .last()
        .unwrap()
        .starts_with("{\"checkpoint\":\"ey"));
    // Entries keep going into a new open segment, which verifies too.
    f.issue(2, 3_000);
    drain(&mut ex, 3_000).await;
    let reports = f.verify().await.unwrap();
    assert!(reports[0].open_segment);
    assert_eq!(reports[0].last.0, 105);
}

#[tokio::test]
async fn only_durable_entries_are_exported() {
    let mut f = Fixture::new();
    let mut ex = f.exporter(1 << 20, None).await;
    f.issue(3, 1);
    // Appended, not flushed: a crash could still take it back, so no file may hold it.
    f.store
        .append(AuditEvent::new("token.issued", Outcome::Success), 1)
        .unwrap();
    assert_eq!(drain(&mut ex, 1).await.exported, 3);
    f.store.flush().unwrap();
    assert_eq!(drain(&mut ex, 1).await.exported, 1);
}

#[tokio::test]
async fn a_torn_last_line_is_cut_and_written_again_on_restart() {
    let mut f = Fixture::new();
    let mut ex = f.exporter(1 << 20, None).await;
    f.issue(10, 1);
    drain(&mut ex, 1).await;
    drop(ex);
    let open = f.path(&f.files()[0]);
    let text = std::fs::read_to_string(&open).unwrap();
    // A crash in the middle of writing entry 10.
    let cut = text.len() - 40;
    std::fs::write(&open, &text[..cut]).unwrap();
    assert!(f.verify().await.unwrap()[0].torn_tail);
    let mut ex = f.exporter(1 << 20, None).await;
    assert_eq!(ex.last().0, 9);
    assert_eq!(drain(&mut ex, 1).await.exported, 1);
    assert_eq!(std::fs::read_to_string(&open).unwrap(), text);
    // A crash while closing: the closed copy exists, the open file too.
    let closed_text = text.clone();
    ex.close(1).unwrap();
    std::fs::write(&open, &closed_text).unwrap();
    std::fs::write(
        f.path("audit-00000000000000000011-00000000000000000020.jsonl.gz.tmp"),
        b"x",
    )
    .unwrap();
    let ex = f.exporter(1 << 20, None).await;
    assert_eq!(ex.last().0, 10);
    assert_eq!(f.files().len(), 1, "{:?}", f.files());
    f.verify().await.unwrap();
}

#[tokio::test]
async fn pruning_never_removes_what_no_closed_segment_holds() {
    let mut f = Fixture::new();
    let retention = Some(Duration::from_secs(10));
    let mut ex = f.exporter(4096, retention).await;
    f.issue(63, 1_000);
    // Old enough, but not exported at all.
    assert_eq!(ex.prune(1_000_000).await.unwrap(), None);
    drain(&mut ex, 1_000).await;
    let closed = ex.closed_upto();
    assert!(closed > 0 && closed < 63, "closed {closed}");
    // Exported, but not old enough.
    assert_eq!(ex.prune(5_000).await.unwrap(), None);
    // Old enough, but the database's file also holds entries no closed segment holds yet (and
    // it is the one being written): kept, and closed, so the next write starts a new file.
    assert_eq!(ex.prune(1_000_000).await.unwrap(), None);
    f.issue(2, 1_000_000);
    f.store.flush().unwrap();
    assert_eq!(ex.prune(1_000_000).await.unwrap(), None);
    drain(&mut ex, 1_000_000).await;
    ex.close(1_000_000).unwrap();
    let closed = ex.closed_upto();
    assert_eq!(closed, 65);
    let pruned = ex.prune(1_000_000).await.unwrap().unwrap();
    assert_eq!(
        pruned, 63,
        "the whole first file, not the entries of the newer one"
    );
    // The database verifies from its anchor; the export covers the pruned prefix.
    let reports = f.verify().await.unwrap();
    assert_eq!(reports.last().unwrap().last.0, 65);
    use crate::store::AuditLog as _;
    let anchor = f.store.anchor(None).await.unwrap().unwrap();
    assert_eq!(anchor.seq, pruned);
    assert_eq!(f.store.verify().await.unwrap(), Ok(65 - pruned));
    // The pruned entries' segment removed from the export: named.
    let first = f.files()[0].clone();
    std::fs::remove_file(f.path(&first)).unwrap();
    let err = f.verify().await.unwrap_err();
    assert!(err.to_string().contains("are missing"), "{err}");
}

#[tokio::test]
async fn a_tampered_or_removed_segment_is_named() {
    let mut f = Fixture::new();
    let mut ex = f.exporter(2048, None).await;
    f.issue(60, 1);
    drain(&mut ex, 1).await;
    ex.close(1).unwrap();
    let files = f.files();
    assert!(files.len() >= 3, "{files:?}");
    f.verify().await.unwrap();

    // An entry edited inside the second segment.
    let victim = f.path(&files[1]);
    let saved = std::fs::read(&victim).unwrap();
    rewrite_gz(&victim, |t| t.replacen("scope=device", "scope=admin", 1));
    let err = f.verify().await.unwrap_err();
    let CheckpointError::Export(b) = &err else {
        panic!("{err}")
    };
    assert_eq!(b.segment, files[1], "{err}");
    assert!(b.reason.contains("altered"), "{err}");

    // The closing checkpoint cut off.
    std::fs::write(&victim, &saved).unwrap();
    rewrite_gz(&victim, |t| {
        let mut lines: Vec<&str> = t.lines().collect();
        lines.pop();
        lines.join("\n") + "\n"
    });
    let err = f.verify().await.unwrap_err();
    assert!(err.to_string().contains(&files[1]), "{err}");
    assert!(err.to_string().contains("checkpoint"), "{err}");

    // A whole segment removed.
    std::fs::write(&victim, &saved).unwrap();
    f.verify().await.unwrap();
    std::fs::remove_file(&victim).unwrap();
    let err = f.verify().await.unwrap_err();
    let CheckpointError::Export(b) = &err else {
        panic!("{err}")
    };
    assert_eq!(b.segment, files[2], "{err}");
    assert!(b.reason.contains("missing"), "{err}");

    // The last segment removed: only the database can tell (it holds entries beyond).
    std::fs::write(&victim, &saved).unwrap();
    std::fs::remove_file(f.path(&files[files.len() - 1])).unwrap();
    let reports = f.verify().await.unwrap();
    assert!(reports[0].last.0 < 60);
}

#[tokio::test]
async fn a_forged_closing_checkpoint_is_refused() {
    let mut f = Fixture::new();
    let mut ex = f.exporter(1 << 20, None).await;
    f.issue(5, 1);
    drain(&mut ex, 1).await;
    ex.close(1).unwrap();
    let name = f.files()[0].clone();
    // The real checkpoint's signature over another payload (a different head).
    let text = String::from_utf8(segment::read_text(&f.path(&name), true).unwrap()).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let jws = line["checkpoint"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = jws.split('.').collect();
    let other = Checkpoint {
        issuer: ISSUER.into(),
        seq: 5,
        head_hash: "00".repeat(32),
        time: 1,
        chain: None,
    };
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&other).unwrap());
    let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
    rewrite_gz(&f.path(&name), |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        lines.pop();
        lines.push(serde_json::json!({ "checkpoint": forged }).to_string());
        lines.join("\n") + "\n"
    });
    let err = f.verify().await.unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
}

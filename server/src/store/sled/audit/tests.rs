//! Tests of the embedded audit log: its files, chain, pruning and migration.

use super::*;
use crate::store::audit::Outcome;

#[tokio::test]
async fn appends_chain_across_segments_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledDb::open(dir.path()).unwrap();
        for i in 0..3 {
            assert_eq!(
                store
                    .append(
                        AuditEvent::new("e", Outcome::Success).subject(format!("s{i}")),
                        1
                    )
                    .unwrap(),
                i + 1
            );
        }
        store.flush().unwrap();
        store
            .append(AuditEvent::new("e", Outcome::Success), 1)
            .unwrap();
        store.flush().unwrap();
        // Appended but never flushed: lost with the process, as its request was never answered.
        store
            .append(AuditEvent::new("lost", Outcome::Success), 1)
            .unwrap();
    }
    let store = SledDb::open(dir.path()).unwrap();
    assert_eq!(
        store
            .append(AuditEvent::new("e", Outcome::Failure), 2)
            .unwrap(),
        5
    );
    store.flush().unwrap();
    assert_eq!(store.verify().await.unwrap(), Ok(5));
    let page = store.entries(None, 1, 3).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.body.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(store.entries(None, 4, 10).await.unwrap().len(), 1);
    assert!(store.entries(None, 5, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn tampering_through_storage_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledDb::open(dir.path()).unwrap();
    for _ in 0..4 {
        store
            .append(
                AuditEvent::new("token.issued", Outcome::Success).client("c"),
                1,
            )
            .unwrap();
    }
    store.flush().unwrap();
    let mut e = store.entries(None, 1, 1).await.unwrap().remove(0);
    e.body.event.client = Some("mallory".into());
    let prev = compact::raw(&e.body.prev_hash);
    store
        .overwrite_audit_entry_for_test(
            2,
            &compact::encode_body(&e.body.event, e.body.time_ms, &prev),
        )
        .unwrap();
    assert_eq!(store.verify().await.unwrap().unwrap_err()[0].seq, 2);
}

#[tokio::test]
async fn a_format_1_log_keeps_verifying_and_grows_in_format_2() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A data directory from before format 2: JSON lines and a JSON head.
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let mut prev = GENESIS_HASH.to_owned();
        let mut lines = Vec::new();
        for seq in 1..=3 {
            let e = crate::store::audit::ChainedEvent {
                seq,
                time_ms: seq,
                chain: None,
                event: AuditEvent::new("token.issued", Outcome::Success).client("old"),
                prev_hash: prev.clone(),
            }
            .seal();
            prev = e.hash.clone();
            lines.extend(serde_json::to_vec(&e).unwrap());
            lines.push(b'\n');
        }
        tree.insert(1u64.to_be_bytes(), lines).unwrap();
        tree.insert(AUDIT_HEAD_KEY, serde_json::to_vec(&(3u64, prev)).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let store = SledDb::open(dir.path()).unwrap();
    store
        .append(AuditEvent::new("token.issued", Outcome::Success), 9)
        .unwrap();
    store.flush().unwrap();
    assert_eq!(store.verify().await.unwrap(), Ok(4));
    let all = store.entries(None, 0, 10).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].body.prev_hash, all[2].hash);
    assert!(all.iter().all(AuditEntry::hash_matches));
    assert_eq!((all[2].v, all[3].v), (None, Some(compact::FORMAT_V2)));
}

#[tokio::test]
async fn a_layout_2_log_keeps_verifying_and_grows_in_layout_3() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A data directory from before layout 3: records with their whole hash.
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let mut prev = GENESIS_HASH.to_owned();
        let mut segment = vec![SEGMENT_V2];
        for seq in 1..=3 {
            let event = AuditEvent::new("token.issued", Outcome::Success).client("old");
            let (e, body, hash) = seal_compact(seq, seq, None, event, prev);
            prev = e.hash;
            compact::put_record(&mut segment, &body, &hash);
        }
        tree.insert(1u64.to_be_bytes(), segment).unwrap();
        tree.insert(AUDIT_HEAD_KEY, serde_json::to_vec(&(3u64, prev)).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let store = SledDb::open(dir.path()).unwrap();
    for _ in 0..2 {
        store
            .append(AuditEvent::new("token.issued", Outcome::Success), 9)
            .unwrap();
    }
    store.flush().unwrap();
    assert_eq!(store.verify().await.unwrap(), Ok(5));
    // Moved out of the tree into the files, where the new segment is layout 3.
    assert_eq!(store.db.open_tree("audit").unwrap().len(), 0);
    let files = store.audit.files.list();
    let segments = store.audit.files.segments_of(&files[0]).unwrap();
    assert_eq!(segments[0].bytes[0], SEGMENT_V2);
    assert_eq!((segments[1].first, segments[1].bytes[0]), (4, SEGMENT_V3));
    let all = store.entries(None, 0, 10).await.unwrap();
    assert_eq!(all.len(), 5);
    for pair in all.windows(2) {
        assert_eq!(pair[1].body.prev_hash, pair[0].hash);
    }
    assert!(all.iter().all(AuditEntry::hash_matches));
    // A page that starts inside the layout 3 segment derives the hash before it.
    let page = store.entries(None, 4, 1).await.unwrap();
    assert_eq!(page[0].body.prev_hash, all[3].hash);
    // An edit of the last layout 3 entry's content is caught, and named.
    let mut e = all[4].clone();
    e.body.event.client = Some("mallory".into());
    store
        .overwrite_audit_entry_for_test(5, &serde_json::to_vec(&e).unwrap())
        .unwrap();
    let breaks = store.verify().await.unwrap().unwrap_err();
    assert_eq!(breaks[0].seq, 5, "{breaks:?}");
    assert!(breaks[0].reason.contains("altered"), "{breaks:?}");
}

#[tokio::test]
async fn pruning_removes_whole_files_and_keeps_the_chain_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledDb::open(dir.path()).unwrap();
    let append = |seq: u64| {
        store
            .append(AuditEvent::new("token.issued", Outcome::Success), seq)
            .unwrap()
    };
    let sign = |seq: u64, hash: &str| format!("signed {seq} {hash}");
    append(1);
    append(2);
    store.flush().unwrap();
    // The only file is the one being written, and 2 is not exported: nothing goes, but the
    // file is closed, since it holds entries due for pruning.
    assert_eq!(store.prune(1, 100, &sign).await.unwrap(), None);
    for seq in 3..=6 {
        append(seq);
        store.flush().unwrap();
    }
    let files = store.audit.files.list();
    assert_eq!(
        files.iter().map(|f| f.first).collect::<Vec<_>>(),
        vec![1, 3]
    );
    let first_file = std::fs::read(&files[0].path).unwrap();
    // Not exported (upto), not old enough (time 2 is not before 2): kept.
    assert_eq!(store.prune(1, 100, &sign).await.unwrap(), None);
    assert_eq!(store.prune(10, 2, &sign).await.unwrap(), None);
    // Exported up to 4: the first file goes whole; the second (closed now) holds 5 and 6.
    let anchor = store.prune(4, 100, &sign).await.unwrap().unwrap();
    assert_eq!(anchor.seq, 2);
    assert_eq!(anchor.checkpoint, format!("signed 2 {}", anchor.hash));
    assert!(!files[0].path.exists());
    assert_eq!(store.verify().await.unwrap(), Ok(4));
    let page = store.entries(None, 0, 3).await.unwrap();
    assert_eq!(page[0].body.seq, 3);
    assert_eq!(page[0].body.prev_hash, anchor.hash);
    drop(store);
    // A crash after the anchor was written but before the file was deleted: the entries it
    // stands for are skipped.
    std::fs::write(&files[0].path, first_file).unwrap();
    let store = SledDb::open(dir.path()).unwrap();
    assert_eq!(store.verify().await.unwrap(), Ok(4));
    assert_eq!(store.anchor(None).await.unwrap().unwrap().seq, 2);
    assert_eq!(store.entries(None, 0, 1).await.unwrap()[0].body.seq, 3);
    assert_eq!(
        store
            .append(AuditEvent::new("token.issued", Outcome::Success), 7)
            .unwrap(),
        7
    );
    store.flush().unwrap();
    // A server gone quiet: every entry is exported and due, so every file goes, the one
    // being written too; the anchor carries the chain on.
    let anchor = store.prune(7, 100, &sign).await.unwrap().unwrap();
    assert_eq!(anchor.seq, 7);
    assert!(store.audit.files.list().is_empty());
    assert_eq!(store.verify().await.unwrap(), Ok(0));
    drop(store);
    let store = SledDb::open(dir.path()).unwrap();
    assert_eq!(store.verify().await.unwrap(), Ok(0));
    assert_eq!(
        store
            .append(AuditEvent::new("token.issued", Outcome::Success), 8)
            .unwrap(),
        8
    );
    store.flush().unwrap();
    let page = store.entries(None, 0, 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].body.prev_hash, anchor.hash);
    assert_eq!(store.verify().await.unwrap(), Ok(1));
}

#[tokio::test]
async fn a_removed_file_is_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledDb::open(dir.path()).unwrap();
    for seq in 1..=6u64 {
        store
            .append(AuditEvent::new("token.issued", Outcome::Success), seq)
            .unwrap();
        store.flush().unwrap();
        if seq % 2 == 0 {
            let first = store.audit.files.list().last().unwrap().first;
            store.audit.files.close_active(first);
        }
    }
    let files = store.audit.files.list();
    assert!(files.len() >= 3, "{files:?}");
    drop(store);
    std::fs::remove_file(&files[1].path).unwrap();
    let store = SledDb::open(dir.path()).unwrap();
    let breaks = store.verify().await.unwrap().unwrap_err();
    assert!(breaks[0].reason.contains("missing"), "{breaks:?}");
}

//! The audit log in sled. Appending only chains the entry in memory; the group committer's flush
//! writes every entry appended since the last one as one record (a *segment*, keyed by the
//! big-endian sequence number of its first entry) together with the head record (last
//! sequence number and hash), in one atomic batch, then makes it durable. So a request pays
//! for hashing its entry, not for a storage write of its own.
//!
//! A segment is compact records ([`compact`]) in layout 3 — the byte [`SEGMENT_V3`], the first
//! entry's `prev_hash`, then records with a 4-byte check in place of their hash — or, in data
//! directories from before it, in layout 2 ([`SEGMENT_V2`], each record with its whole hash),
//! or format 1: one JSON entry per line. All are read; only layout 3 is written. Pruning
//! removes whole segments from the oldest and writes the [`Anchor`] (key `anchor`) in the same
//! batch.

use std::sync::Mutex;

use super::SledDb;
use crate::store::audit::compact::{self, SEGMENT_V2, SEGMENT_V3};
use crate::store::audit::{
    seal_compact, verify_chain, Anchor, AuditEntry, AuditEvent, ChainBreak, ChainHead, Head,
    Stored, StoredEntries, GENESIS_HASH,
};
use crate::store::{AuditLog, StoreError};

/// Key of the head record; segment keys are 8 bytes, so it cannot collide with one.
pub const AUDIT_HEAD_KEY: &[u8] = b"head";
/// Key of the pruned prefix's anchor.
pub const AUDIT_ANCHOR_KEY: &[u8] = b"anchor";

/// Chain state: the head and the entries not yet written.
struct Chain {
    /// Sequence number and hash of the last entry appended.
    head: (u64, String),
    /// Entries appended since the last write: (first seq, segment value).
    pending: Option<(u64, Vec<u8>)>,
    /// The head as last written to the tree, durable once the database is flushed.
    written: Option<Head>,
    /// The head as last flushed: what a checkpoint may vouch for.
    durable: Head,
}

/// Appends one entry at a time, so that the chain has one order.
pub(super) struct SledAudit {
    tree: sled::Tree,
    chain: Mutex<Chain>,
}

fn read_err(source: sled::Error) -> StoreError {
    StoreError::Read {
        what: "audit log",
        source,
    }
}

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt {
        what: "audit entry",
        reason,
    }
}

/// The entries of one segment, `first` being its key.
pub fn split_segment(first: u64, value: &[u8]) -> Result<StoredEntries, String> {
    if value.first() == Some(&SEGMENT_V3) {
        let (mut prev, records) =
            compact::checked_records(&value[1..]).map_err(|e| e.to_string())?;
        return Ok(records
            .into_iter()
            .zip(first..)
            .map(|((body, check), seq)| {
                let hash = compact::hash(&prev, seq, None, body);
                prev = hash;
                (
                    seq,
                    Stored::Checked {
                        body: body.to_vec(),
                        check,
                        hash,
                    },
                )
            })
            .collect());
    }
    if value.first() == Some(&SEGMENT_V2) {
        let records = compact::records(&value[1..]).map_err(|e| e.to_string())?;
        return Ok(records
            .into_iter()
            .zip(first..)
            .map(|((body, hash), seq)| {
                (
                    seq,
                    Stored::Compact {
                        body: body.to_vec(),
                        hash,
                    },
                )
            })
            .collect());
    }
    // Format 1: JSON escapes newlines inside strings, so one entry is one line.
    Ok(value
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .zip(first..)
        .map(|(line, seq)| (seq, Stored::Json(line.to_vec())))
        .collect())
}

fn segment_key(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

impl SledAudit {
    pub(super) fn open(tree: sled::Tree) -> Result<Self, StoreError> {
        let head = match tree.get(AUDIT_HEAD_KEY).map_err(read_err)? {
            None => (0, GENESIS_HASH.to_owned()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Decode {
                what: "audit head",
                source,
            })?,
        };
        Ok(SledAudit {
            tree,
            chain: Mutex::new(Chain {
                durable: head.clone(),
                head,
                pending: None,
                written: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chain> {
        // The chain is only changed by whole assignments, so a panicking holder cannot leave it
        // half-updated.
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the pending segment and the head in one atomic batch (not yet flushed).
    pub(super) fn write_pending(&self) -> Result<(), StoreError> {
        let mut chain = self.lock();
        let Some((first, segment)) = chain.pending.take() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        batch.insert(&first.to_be_bytes(), segment.as_slice());
        batch.insert(
            AUDIT_HEAD_KEY,
            serde_json::to_vec(&chain.head).unwrap_or_default(),
        );
        if let Err(source) = self.tree.apply_batch(batch) {
            // Keep them for the next flush: later entries chain onto these.
            chain.pending = Some((first, segment));
            return Err(StoreError::Write {
                what: "audit segment",
                source,
            });
        }
        chain.written = Some(chain.head.clone());
        Ok(())
    }

    /// The database was flushed: what was written is durable.
    pub(super) fn flushed(&self) {
        let mut chain = self.lock();
        if let Some(written) = chain.written.take() {
            chain.durable = written;
        }
    }

    fn anchor(&self) -> Result<Option<Anchor>, StoreError> {
        match self.tree.get(AUDIT_ANCHOR_KEY).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StoreError::Decode {
                        what: "audit anchor",
                        source,
                    })
            }
        }
    }

    /// Every stored entry as (seq, stored), in order, the stored head and the anchor.
    fn stored(&self) -> Result<(StoredEntries, Option<Head>, Option<Anchor>), StoreError> {
        let mut entries = Vec::new();
        let mut head = None;
        for item in self.tree.iter() {
            let (key, value) = item.map_err(read_err)?;
            if key.as_ref() == AUDIT_HEAD_KEY {
                head = serde_json::from_slice::<(u64, String)>(&value).ok();
                continue;
            }
            let Some(first) = segment_key(&key) else {
                continue;
            };
            match split_segment(first, &value) {
                Ok(more) => entries.extend(more),
                // Left for the chain check to name: the entry at the key is unreadable.
                Err(e) => entries.push((
                    first,
                    Stored::Compact {
                        body: e.into_bytes(),
                        hash: [0u8; 32],
                    },
                )),
            }
        }
        Ok((entries, head, self.anchor()?))
    }

    /// Up to `limit` entries after `after`, decoded with their `prev_hash`.
    fn page(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let anchor = self.anchor()?;
        let (floor, floor_hash) = anchor
            .map(|a| (a.seq, a.hash))
            .unwrap_or((0, GENESIS_HASH.to_owned()));
        let want = after.max(floor).saturating_add(1);
        // Start at the segment holding the entry before `want`, for its hash.
        let before = want - 1;
        let start = if before > floor {
            self.tree
                .range(..=before.to_be_bytes())
                .next_back()
                .transpose()
                .map_err(read_err)?
                .and_then(|(k, _)| segment_key(&k))
                .unwrap_or(before)
        } else {
            want
        };
        let mut prev = floor_hash;
        let mut out = Vec::new();
        for item in self.tree.range(start.to_be_bytes()..) {
            let (key, value) = item.map_err(read_err)?;
            let Some(first) = segment_key(&key) else {
                continue;
            };
            for (seq, stored) in split_segment(first, &value).map_err(corrupt)? {
                if seq < want {
                    if let Some((_, hash)) = stored.time_and_hash() {
                        prev = hash;
                    }
                    continue;
                }
                if out.len() >= limit {
                    return Ok(out);
                }
                let entry = stored.decode(seq, None, &prev).map_err(corrupt)?;
                prev.clone_from(&entry.hash);
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// See [`AuditLog::prune`].
    fn prune(
        &self,
        upto: u64,
        before_ms: u64,
        sign: &crate::store::SignAnchor,
    ) -> Result<Option<Anchor>, StoreError> {
        let mut batch = sled::Batch::default();
        let mut last: Option<(u64, String)> = None;
        let mut segments = self.tree.range(..AUDIT_ANCHOR_KEY).peekable();
        while let Some(item) = segments.next() {
            let (key, value) = item.map_err(read_err)?;
            let Some(first) = segment_key(&key) else {
                continue;
            };
            let entries = split_segment(first, &value).map_err(corrupt)?;
            let Some((seq, stored)) = entries.last() else {
                continue;
            };
            let (time_ms, hash) = stored
                .time_and_hash()
                .ok_or_else(|| corrupt(format!("entry {seq} does not decode")))?;
            // The newest segment is never removed whole: the head must stay readable beside
            // its entry (and it is about to grow anyway).
            let newest = segments.peek().is_none_or(|next| {
                next.as_ref()
                    .ok()
                    .and_then(|(k, _)| segment_key(k))
                    .is_none()
            });
            if *seq > upto || time_ms >= before_ms || newest {
                break;
            }
            batch.remove(key);
            last = Some((*seq, hash));
        }
        let Some((seq, hash)) = last else {
            return Ok(None);
        };
        let checkpoint = sign(seq, &hash);
        let anchor = Anchor {
            seq,
            checkpoint,
            hash,
        };
        batch.insert(
            AUDIT_ANCHOR_KEY,
            serde_json::to_vec(&anchor).unwrap_or_default(),
        );
        self.tree
            .apply_batch(batch)
            .map_err(|source| StoreError::Write {
                what: "audit pruning",
                source,
            })?;
        self.tree
            .flush()
            .map_err(|source| StoreError::Flush { source })?;
        Ok(Some(anchor))
    }
}

#[async_trait::async_trait]
impl AuditLog for SledDb {
    fn append(&self, event: AuditEvent, time_ms: u64) -> Result<u64, StoreError> {
        let mut chain = self.audit.lock();
        let seq = chain.head.0 + 1;
        let prev = std::mem::take(&mut chain.head.1);
        // Only the first entry of a segment stores its prev_hash (decoded from hex once).
        let opens = chain.pending.is_none().then(|| compact::raw(&prev));
        let (entry, body, hash) = seal_compact(seq, time_ms, None, event, prev);
        let segment = chain.pending.get_or_insert_with(|| {
            let mut value = Vec::with_capacity(4096);
            value.push(SEGMENT_V3);
            value.extend_from_slice(&opens.unwrap_or_default());
            (seq, value)
        });
        compact::put_checked_record(&mut segment.1, &body, &compact::check_of(&hash));
        chain.head = (seq, entry.hash);
        Ok(seq)
    }

    async fn entries(
        &self,
        _chain: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit.page(after, limit)
    }

    async fn chains(&self) -> Result<Vec<ChainHead>, StoreError> {
        let chain = self.audit.lock();
        Ok(vec![ChainHead {
            chain: None,
            seq: chain.head.0,
            hash: chain.head.1.clone(),
        }])
    }

    async fn verify(&self) -> Result<Result<u64, Vec<ChainBreak>>, StoreError> {
        let (entries, head, anchor) = self.audit.stored()?;
        let anchor = anchor.map(|a| (a.seq, a.hash));
        Ok(verify_chain(entries, head, anchor, None).map_err(|b| vec![b]))
    }

    fn durable_head(&self) -> Result<Head, StoreError> {
        Ok(self.audit.lock().durable.clone())
    }

    async fn anchor(&self, _chain: Option<&str>) -> Result<Option<Anchor>, StoreError> {
        self.audit.anchor()
    }

    async fn prune(
        &self,
        upto: u64,
        before_ms: u64,
        sign: &crate::store::SignAnchor,
    ) -> Result<Option<Anchor>, StoreError> {
        self.audit.prune(upto, before_ms, sign)
    }
}

impl SledDb {
    /// Overwrite one stored audit entry, bypassing the chain, its stored hash kept: the JSON
    /// of an edited [`AuditEntry`] is laid out as the entry's format lays it out; other bytes
    /// become the stored body as they are. Exists so that
    /// tests can prove `audit verify` catches exactly this; nothing in the server calls it.
    #[doc(hidden)]
    pub fn overwrite_audit_entry_for_test(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let tree = &self.audit.tree;
        let found = tree
            .range(..=seq.to_be_bytes())
            .next_back()
            .transpose()
            .map_err(read_err)?;
        let Some((key, value)) = found.filter(|(k, _)| k.len() == 8) else {
            return Ok(());
        };
        let first = segment_key(&key).unwrap_or(0);
        let mut entries = split_segment(first, &value).map_err(corrupt)?;
        let edited: Option<AuditEntry> = serde_json::from_slice(bytes).ok();
        if let Some((_, stored)) = entries.iter_mut().find(|(s, _)| *s == seq) {
            let body = match &edited {
                // An edited entry, laid out as the store lays it out.
                Some(e) => compact::encode_body(
                    &e.body.event,
                    e.body.time_ms,
                    &compact::raw(&e.body.prev_hash),
                ),
                None => bytes.to_vec(),
            };
            *stored = match &stored {
                // Its stored hash or check kept.
                Stored::Compact { hash, .. } => Stored::Compact { body, hash: *hash },
                Stored::Checked { check, hash, .. } => Stored::Checked {
                    body,
                    check: *check,
                    hash: *hash,
                },
                Stored::Json(_) => Stored::Json(bytes.to_vec()),
            };
        }
        // Written back in the layout it was read in (layout 3 with its stored prev_hash).
        let mut out = Vec::new();
        match value.first() {
            Some(&SEGMENT_V3) => out.extend_from_slice(value.get(..33).unwrap_or_default()),
            Some(&SEGMENT_V2) => out.push(SEGMENT_V2),
            _ => {}
        }
        for (_, stored) in &entries {
            match stored {
                Stored::Json(line) => {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
                Stored::Compact { body, hash } => compact::put_record(&mut out, body, hash),
                Stored::Checked { body, check, .. } => {
                    compact::put_checked_record(&mut out, body, check);
                }
            }
        }
        tree.insert(key, out)
            .map(|_| ())
            .map_err(|source| StoreError::Write {
                what: "audit entry",
                source,
            })
    }
}

#[cfg(test)]
mod tests {
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
        let new = store.audit.tree.get(4u64.to_be_bytes()).unwrap().unwrap();
        assert_eq!(new[0], SEGMENT_V3);
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
    async fn pruning_keeps_the_chain_verifiable_and_respects_both_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path()).unwrap();
        // Five segments of two entries, entry n at time n.
        for seq in 1..=10u64 {
            store
                .append(AuditEvent::new("token.issued", Outcome::Success), seq)
                .unwrap();
            if seq % 2 == 0 {
                store.flush().unwrap();
            }
        }
        let sign = |seq: u64, hash: &str| format!("signed {seq} {hash}");
        // Nothing older than time 1; nothing exported.
        assert_eq!(store.prune(10, 1, &sign).await.unwrap(), None);
        assert_eq!(store.prune(0, 100, &sign).await.unwrap(), None);
        // Exported up to 5 (inside the third segment): only the first two segments go.
        let anchor = store.prune(5, 100, &sign).await.unwrap().unwrap();
        assert_eq!(anchor.seq, 4);
        assert_eq!(anchor.checkpoint, format!("signed 4 {}", anchor.hash));
        assert_eq!(store.verify().await.unwrap(), Ok(6));
        let page = store.entries(None, 0, 3).await.unwrap();
        assert_eq!(page[0].body.seq, 5);
        assert_eq!(page[0].body.prev_hash, anchor.hash);
        // Time limit: entries at time < 7 only; the newest segment always stays.
        assert_eq!(store.prune(10, 7, &sign).await.unwrap().unwrap().seq, 6);
        assert_eq!(store.prune(10, 1000, &sign).await.unwrap().unwrap().seq, 8);
        assert_eq!(store.verify().await.unwrap(), Ok(2));
        drop(store);
        let store = SledDb::open(dir.path()).unwrap();
        assert_eq!(store.verify().await.unwrap(), Ok(2));
        assert_eq!(store.anchor(None).await.unwrap().unwrap().seq, 8);
    }
}

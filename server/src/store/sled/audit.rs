//! The audit log in sled. Appending only chains the entry in memory; the group committer's flush
//! writes every entry appended since the last one as one record (a *segment*, keyed by the
//! big-endian sequence number of its first entry, one JSON entry per line) together with the
//! head record (last sequence number and hash), in one atomic batch, then makes it durable. So
//! a request pays for hashing its entry, not for a storage write of its own.

use std::sync::Mutex;

use super::SledDb;
use crate::store::audit::{
    verify_chain, AuditEntry, AuditEvent, ChainBreak, ChainHead, ChainedEvent, Head, StoredEntries,
    GENESIS_HASH,
};
use crate::store::{AuditLog, StoreError};

/// Key of the head record; segment keys are 8 bytes, so it cannot collide with one.
pub const AUDIT_HEAD_KEY: &[u8] = b"head";

/// Chain state: the head and the entries not yet written.
struct Chain {
    /// Sequence number and hash of the last entry appended.
    head: (u64, String),
    /// Entries appended since the last write: (first seq, lines).
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

fn decode_err(source: serde_json::Error) -> StoreError {
    StoreError::Decode {
        what: "audit entry",
        source,
    }
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
        let Some((first, lines)) = chain.pending.take() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        batch.insert(&first.to_be_bytes(), lines.as_slice());
        batch.insert(
            AUDIT_HEAD_KEY,
            serde_json::to_vec(&chain.head).unwrap_or_default(),
        );
        if let Err(source) = self.tree.apply_batch(batch) {
            // Keep them for the next flush: later entries chain onto these.
            chain.pending = Some((first, lines));
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

    /// Every stored entry as (seq, bytes), in order, and the stored head.
    fn stored(&self) -> Result<(StoredEntries, Option<Head>), StoreError> {
        let mut entries = Vec::new();
        let mut head = None;
        for item in self.tree.iter() {
            let (key, value) = item.map_err(read_err)?;
            if key.as_ref() == AUDIT_HEAD_KEY {
                head = serde_json::from_slice::<(u64, String)>(&value).ok();
                continue;
            }
            let first = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            for (i, line) in value
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
            {
                entries.push((first + i as u64, line.to_vec()));
            }
        }
        Ok((entries, head))
    }
}

#[async_trait::async_trait]
impl AuditLog for SledDb {
    fn append(&self, event: AuditEvent, time_ms: u64) -> Result<u64, StoreError> {
        let mut chain = self.audit.lock();
        let seq = chain.head.0 + 1;
        let entry = ChainedEvent {
            seq,
            time_ms,
            chain: None,
            event,
            prev_hash: chain.head.1.clone(),
        }
        .seal();
        // JSON escapes newlines inside strings, so one entry is one line.
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        let segment = chain.pending.get_or_insert_with(|| (seq, Vec::new()));
        segment.1.extend_from_slice(&bytes);
        segment.1.push(b'\n');
        chain.head = (seq, entry.hash);
        Ok(seq)
    }

    async fn entries(
        &self,
        _chain: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let want = after.saturating_add(1);
        let tree = &self.audit.tree;
        // Start at the segment holding `want`: the last one that starts at or before it.
        let start = tree
            .range(..=want.to_be_bytes())
            .next_back()
            .transpose()
            .map_err(read_err)?
            .filter(|(k, _)| k.len() == 8)
            .map(|(k, _)| k.to_vec())
            .unwrap_or_else(|| want.to_be_bytes().to_vec());
        let mut out = Vec::new();
        for item in tree.range(start..) {
            let (key, value) = item.map_err(read_err)?;
            let Ok(first) = <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes) else {
                continue;
            };
            for (i, line) in value
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
            {
                if first + (i as u64) < want {
                    continue;
                }
                if out.len() >= limit {
                    return Ok(out);
                }
                out.push(serde_json::from_slice(line).map_err(decode_err)?);
            }
        }
        Ok(out)
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
        let (entries, head) = self.audit.stored()?;
        Ok(verify_chain(entries, head).map_err(|b| vec![b]))
    }

    fn durable_head(&self) -> Result<Head, StoreError> {
        Ok(self.audit.lock().durable.clone())
    }
}

impl SledDb {
    /// Overwrite one stored audit entry's bytes, bypassing the chain. Exists so that tests can
    /// prove `audit verify` catches exactly this; nothing in the server calls it.
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
        let first = <[u8; 8]>::try_from(key.as_ref())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let mut lines: Vec<Vec<u8>> = value
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        if let Some(line) = lines.get_mut((seq - first) as usize) {
            *line = bytes.to_vec();
        }
        let mut joined = lines.join(&b'\n');
        joined.push(b'\n');
        tree.insert(key, joined)
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
        store
            .overwrite_audit_entry_for_test(2, &serde_json::to_vec(&e).unwrap())
            .unwrap();
        assert_eq!(store.verify().await.unwrap().unwrap_err()[0].seq, 2);
    }
}

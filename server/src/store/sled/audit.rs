//! The audit log in sled: entries under their big-endian sequence number, and a head record
//! (last sequence number and hash) written in the same atomic batch as each entry.

use std::sync::Mutex;

use super::SledStore;
use crate::store::audit::{verify_chain, AuditEntry, AuditEvent, ChainBreak, ChainedEvent, GENESIS_HASH};
use crate::store::{AuditLog, StoreError};

/// Key of the head record; entry keys are 8 bytes, so it cannot collide with one.
pub const AUDIT_HEAD_KEY: &[u8] = b"head";

/// Appends one entry at a time, so that the chain has one order.
pub(super) struct SledAudit {
    tree: sled::Tree,
    /// Sequence number and hash of the last entry.
    head: Mutex<(u64, String)>,
}

impl SledAudit {
    pub(super) fn open(tree: sled::Tree) -> Result<Self, StoreError> {
        let head = match tree.get(AUDIT_HEAD_KEY).map_err(|source| StoreError::Read { what: "audit head", source })? {
            None => (0, GENESIS_HASH.to_owned()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Decode { what: "audit head", source })?,
        };
        Ok(SledAudit {
            tree,
            head: Mutex::new(head),
        })
    }
}

impl AuditLog for SledStore {
    fn append(&self, event: AuditEvent, time_ms: u64) -> Result<u64, StoreError> {
        let log = &self.audit;
        // A panic while holding the lock cannot leave a half-written chain: the batch below is
        // atomic and the head is updated only after it.
        let mut head = log.head.lock().unwrap_or_else(|p| p.into_inner());
        let seq = head.0 + 1;
        let entry = ChainedEvent {
            seq,
            time_ms,
            event,
            prev_hash: head.1.clone(),
        }
        .seal();
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        let new_head = (seq, entry.hash);
        let mut batch = sled::Batch::default();
        batch.insert(&seq.to_be_bytes(), bytes);
        batch.insert(AUDIT_HEAD_KEY, serde_json::to_vec(&new_head).unwrap_or_default());
        log.tree
            .apply_batch(batch)
            .map_err(|source| StoreError::Write { what: "audit entry", source })?;
        *head = new_head;
        Ok(seq)
    }

    fn entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for item in self.audit.tree.range(start..) {
            let (key, value) = item.map_err(|source| StoreError::Read { what: "audit entry", source })?;
            if key.len() != 8 {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push(serde_json::from_slice(&value).map_err(|source| StoreError::Decode { what: "audit entry", source })?);
        }
        Ok(out)
    }

    fn verify(&self) -> Result<Result<u64, ChainBreak>, StoreError> {
        let mut entries = Vec::new();
        let mut head = None;
        for item in self.audit.tree.iter() {
            let (key, value) = item.map_err(|source| StoreError::Read { what: "audit entry", source })?;
            if key.as_ref() == AUDIT_HEAD_KEY {
                head = serde_json::from_slice::<(u64, String)>(&value).ok();
                continue;
            }
            let seq = <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes).unwrap_or(0);
            entries.push((seq, value.to_vec()));
        }
        Ok(verify_chain(entries, head))
    }
}

impl SledStore {
    /// Overwrite an audit entry's stored bytes, bypassing the chain. Exists so that tests can
    /// prove `audit verify` catches exactly this; nothing in the server calls it.
    #[doc(hidden)]
    pub fn overwrite_audit_entry_for_test(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.audit
            .tree
            .insert(seq.to_be_bytes(), bytes)
            .map(|_| ())
            .map_err(|source| StoreError::Write { what: "audit entry", source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::Outcome;
    use crate::store::Durability;

    #[test]
    fn appends_chain_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for i in 0..3 {
                assert_eq!(store.append(AuditEvent::new("e", Outcome::Success).subject(format!("s{i}")), 1).unwrap(), i + 1);
            }
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.append(AuditEvent::new("e", Outcome::Failure), 2).unwrap(), 4);
        assert_eq!(store.verify().unwrap(), Ok(4));
        let page = store.entries(1, 2).unwrap();
        assert_eq!(page.iter().map(|e| e.body.seq).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn tampering_through_storage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for _ in 0..4 {
            store.append(AuditEvent::new("token.issued", Outcome::Success).client("c"), 1).unwrap();
        }
        let mut e = store.entries(1, 1).unwrap().remove(0);
        e.body.event.client = Some("mallory".into());
        store.overwrite_audit_entry_for_test(2, &serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(store.verify().unwrap().unwrap_err().seq, 2);
    }
}

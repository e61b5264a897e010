//! The audit log of the embedded backend. Appending only chains the entry in memory; the group
//! committer's flush appends every entry appended since the last one as one *segment* to the
//! audit files ([`super::audit_files`]) and syncs them before the commit answers. So a request
//! pays for hashing its entry, not for a storage write of its own.
//!
//! A segment is compact records ([`compact`]) in layout 3 — the byte [`SEGMENT_V3`], the first
//! entry's `prev_hash`, then records with a 4-byte check in place of their hash — or, in logs
//! from before it, layout 2 ([`SEGMENT_V2`], each record with its whole hash) or format 1 (one
//! JSON entry per line). All are read; only layout 3 is written.
//!
//! Before the audit files, segments were records of sled's `audit` tree (keyed by the big-endian
//! seq of their first entry, with a `head` and an `anchor` record). Opening such a database moves
//! them into the files, in order and synced, and only then removes them from the tree; a crash in
//! between is finished by the next open. Pruning removes whole files from the oldest, after
//! writing the [`Anchor`] that stands for them (`anchor.json` beside the files) durably.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::audit_files::{self, AuditFiles, Segment};
use super::SledDb;
use crate::store::audit::compact::{self, SEGMENT_V2, SEGMENT_V3};
use crate::store::audit::{
    seal_compact, verify_chain, Anchor, AuditEntry, AuditEvent, ChainBreak, ChainHead, Head,
    Stored, StoredEntries, GENESIS_HASH,
};
use crate::store::{AuditLog, StoreError};

mod tamper;

/// Key of the head record in a legacy audit tree; segment keys are 8 bytes, so it cannot
/// collide with one.
#[cfg(test)]
const AUDIT_HEAD_KEY: &[u8] = b"head";
/// Key of the pruned prefix's anchor in a legacy audit tree.
pub const AUDIT_ANCHOR_KEY: &[u8] = b"anchor";
/// The anchor's file, beside the audit files.
const ANCHOR_FILE: &str = "anchor.json";
/// Legacy segments moved into the files per sync.
const MIGRATE_BYTES: usize = 4 * 1024 * 1024;

/// Chain state: the head and the entries not yet written.
struct Chain {
    /// Sequence number and hash of the last entry appended.
    head: (u64, String),
    /// Entries appended since the last write: (first seq, segment value).
    pending: Option<(u64, Vec<u8>)>,
    /// The head as last taken for writing, durable once the write and the flush succeed.
    written: Option<Head>,
    /// The head as last flushed: what a checkpoint may vouch for.
    durable: Head,
}

/// Appends one entry at a time, so that the chain has one order. Shared by every [`SledDb`] a
/// store opens in turn, so entries appended to one that is being replaced are not lost.
pub(crate) struct SledAudit {
    dir: PathBuf,
    files: AuditFiles,
    chain: Mutex<Chain>,
}

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt {
        what: "audit entry",
        reason,
    }
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::AuditFile { what, path, source }
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

/// The last entry of a segment: its seq and hash.
fn last_of(first: u64, segment: &[u8]) -> Result<Option<Head>, StoreError> {
    let entries = split_segment(first, segment).map_err(corrupt)?;
    let Some((seq, stored)) = entries.last() else {
        return Ok(None);
    };
    let (_, hash) = stored
        .time_and_hash()
        .ok_or_else(|| corrupt(format!("entry {seq} does not decode")))?;
    Ok(Some((*seq, hash)))
}

fn segment_key(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// A stand-in for a segment that cannot be read, for the chain check to name.
fn unreadable(seq: u64, why: &str) -> (u64, Stored) {
    (
        seq,
        Stored::Compact {
            body: why.as_bytes().to_vec(),
            hash: [0u8; 32],
        },
    )
}

impl SledAudit {
    /// Open the audit log of the database at `db` (its files in `db/audit`), moving the
    /// segments of a legacy `tree` into the files first.
    pub(super) fn open(db: &Path, tree: &sled::Tree) -> Result<Self, StoreError> {
        let dir = db.join(audit_files::DIR);
        let (files, last) = AuditFiles::open_with(&dir, audit_files::ROTATE_BYTES)?;
        let mut head = match &last {
            Some(segment) => last_of(segment.first, &segment.bytes)?
                .map(|(seq, _)| (seq, hex::encode(segment.last_hash))),
            None => None,
        };
        let audit = SledAudit {
            dir,
            files,
            chain: Mutex::new(Chain {
                head: (0, GENESIS_HASH.to_owned()),
                pending: None,
                written: None,
                durable: (0, GENESIS_HASH.to_owned()),
            }),
        };
        if let Some(migrated) = audit.migrate(tree, head.as_ref().map_or(0, |h| h.0))? {
            head = Some(migrated);
        }
        let head = match head {
            Some(head) => head,
            None => audit
                .anchor()?
                .map_or_else(|| (0, GENESIS_HASH.to_owned()), |a| (a.seq, a.hash)),
        };
        {
            let mut chain = audit.lock();
            chain.head = head.clone();
            chain.durable = head;
        }
        Ok(audit)
    }

    /// Move a legacy tree's segments (after `have`, the last seq the files hold) and anchor
    /// into the files, then remove them from the tree. Returns the new head, if any moved.
    fn migrate(&self, tree: &sled::Tree, have: u64) -> Result<Option<Head>, StoreError> {
        let read_err = |source| StoreError::Read {
            what: "audit log",
            source,
        };
        let mut head = None;
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut keys = Vec::new();
        for item in tree.iter() {
            let (key, value) = item.map_err(read_err)?;
            keys.push(key.clone());
            let Some(first) = segment_key(&key) else {
                continue;
            };
            let Some(last) = last_of(first, &value)? else {
                continue;
            };
            if last.0 <= have {
                continue;
            }
            bytes += value.len();
            batch.push(Segment {
                first,
                bytes: value.to_vec(),
                last_hash: compact::raw(&last.1),
            });
            head = Some(last);
            if bytes >= MIGRATE_BYTES {
                self.files.append_all(std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        self.files.append_all(batch)?;
        if let Some(bytes) = tree.get(AUDIT_ANCHOR_KEY).map_err(read_err)? {
            if !self.dir.join(ANCHOR_FILE).exists() {
                let anchor: Anchor =
                    serde_json::from_slice(&bytes).map_err(|source| StoreError::Decode {
                        what: "audit anchor",
                        source,
                    })?;
                self.put_anchor(&anchor)?;
            }
        }
        let write_err = |source| StoreError::Write {
            what: "audit migration",
            source,
        };
        let mut removal = sled::Batch::default();
        for key in keys {
            removal.remove(key);
        }
        tree.apply_batch(removal).map_err(write_err)?;
        tree.flush()
            .map_err(|source| StoreError::Flush { source })?;
        tracing::info!(
            dir = %self.dir.display(),
            "the audit log moved from the database's audit tree into its own files"
        );
        Ok(head)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chain> {
        // The chain is only changed by whole assignments, so a panicking holder cannot leave it
        // half-updated.
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append the pending segment to the files and sync them.
    pub(super) fn write_pending(&self) -> Result<(), StoreError> {
        self.files.append(|| {
            let mut chain = self.lock();
            let (first, bytes) = chain.pending.take()?;
            chain.written = Some(chain.head.clone());
            Some(Segment {
                first,
                bytes,
                last_hash: compact::raw(&chain.head.1),
            })
        })?;
        Ok(())
    }

    /// The rest of the store was flushed too: what was written is durable.
    pub(super) fn flushed(&self) {
        let mut chain = self.lock();
        if let Some(written) = chain.written.take() {
            chain.durable = written;
        }
    }

    fn anchor(&self) -> Result<Option<Anchor>, StoreError> {
        let path = self.dir.join(ANCHOR_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StoreError::Decode {
                        what: "audit anchor",
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_err("read", &path)(e)),
        }
    }

    fn put_anchor(&self, anchor: &Anchor) -> Result<(), StoreError> {
        let path = self.dir.join(ANCHOR_FILE);
        crate::datadir::write_atomic(
            &path,
            &serde_json::to_vec(anchor).unwrap_or_default(),
            0o600,
        )
        .map_err(file_err("write", &path))
    }

    /// Every stored entry after the anchor as (seq, stored), in order; the last segment's last
    /// entry as its frame records it (the head); the anchor; and the first segment whose last
    /// entry does not match the hash its frame records.
    #[allow(clippy::type_complexity)]
    fn stored(
        &self,
    ) -> Result<(StoredEntries, Option<Head>, Option<Anchor>, Option<u64>), StoreError> {
        let anchor = self.anchor()?;
        let floor = anchor.as_ref().map_or(0, |a| a.seq);
        let mut entries: StoredEntries = Vec::new();
        let mut head = None;
        let mut mismatch = None;
        self.files.read_from(None, |segment| {
            let next = entries.last().map_or(floor, |(s, _)| *s) + 1;
            let Some(segment) = segment else {
                entries.push(unreadable(next, "a damaged frame in the audit file"));
                return Ok(false);
            };
            match split_segment(segment.first, &segment.bytes) {
                Ok(more) => {
                    if let Some((seq, stored)) = more.last() {
                        let recorded = hex::encode(segment.last_hash);
                        let derived = stored.time_and_hash().map(|(_, h)| h);
                        if mismatch.is_none() && *seq > floor && derived.as_ref() != Some(&recorded)
                        {
                            mismatch = Some(*seq);
                        }
                        head = Some((*seq, recorded));
                    }
                    entries.extend(more.into_iter().filter(|(seq, _)| *seq > floor));
                }
                Err(e) => entries.push(unreadable(segment.first, &e)),
            }
            Ok(true)
        })?;
        Ok((entries, head, anchor, mismatch))
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
        let start = if before > floor { before } else { want };
        let mut prev = floor_hash;
        let mut out = Vec::new();
        self.files.read_from(Some(start), |segment| {
            let Some(segment) = segment else {
                return Err(corrupt(format!(
                    "a damaged frame in the audit files after entry {}",
                    out.last().map_or(before, |e: &AuditEntry| e.body.seq)
                )));
            };
            for (seq, stored) in split_segment(segment.first, &segment.bytes).map_err(corrupt)? {
                if seq <= floor {
                    continue;
                }
                if seq < want {
                    if let Some((_, hash)) = stored.time_and_hash() {
                        prev = hash;
                    }
                    continue;
                }
                if out.len() >= limit {
                    return Ok(false);
                }
                let entry = stored.decode(seq, None, &prev).map_err(corrupt)?;
                prev.clone_from(&entry.hash);
                out.push(entry);
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// See [`AuditLog::prune`]: whole files, never the one being written.
    fn prune(
        &self,
        upto: u64,
        before_ms: u64,
        sign: &crate::store::SignAnchor,
    ) -> Result<Option<Anchor>, StoreError> {
        // The newest file holds entries due for pruning: close it, so that it can go whole once
        // every entry in it is due (on a server that went quiet, no later write would).
        if let Some(newest) = self.files.list().last() {
            if newest.first <= upto {
                let first_time = self
                    .files
                    .segments_of(newest)?
                    .first()
                    .and_then(|segment| split_segment(segment.first, &segment.bytes).ok())
                    .and_then(|entries| entries.first().and_then(|(_, s)| s.time_and_hash()));
                if first_time.is_some_and(|(time_ms, _)| time_ms < before_ms) {
                    self.files.close_active(newest.first);
                }
            }
        }
        let closed = self.files.closed();
        let mut last: Option<(u64, String)> = None;
        let mut keep_from = None;
        for (i, info) in closed.iter().enumerate() {
            let segments = self.files.segments_of(info)?;
            let next = closed.get(i + 1).map(|f| f.first);
            let Some(segment) = segments.last() else {
                // A file with no entries goes with those before it, if a later one follows.
                match next {
                    Some(next) => {
                        keep_from = Some(next);
                        continue;
                    }
                    None => break,
                }
            };
            let entries = split_segment(segment.first, &segment.bytes).map_err(corrupt)?;
            let Some((seq, stored)) = entries.last() else {
                break;
            };
            let (time_ms, hash) = stored
                .time_and_hash()
                .ok_or_else(|| corrupt(format!("entry {seq} does not decode")))?;
            if *seq > upto || time_ms >= before_ms {
                break;
            }
            last = Some((*seq, hash));
            // Entries are numbered in order: a file written later starts after `seq`.
            keep_from = Some(next.unwrap_or(*seq + 1));
        }
        let (Some((seq, hash)), Some(keep_from)) = (last, keep_from) else {
            return Ok(None);
        };
        let checkpoint = sign(seq, &hash);
        let anchor = Anchor {
            seq,
            checkpoint,
            hash,
        };
        self.put_anchor(&anchor)?;
        self.files.remove_before(keep_from)?;
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
        let (entries, head, anchor, mismatch) = self.audit.stored()?;
        let anchor = anchor.map(|a| (a.seq, a.hash));
        let head = head.or_else(|| anchor.clone());
        let result = verify_chain(entries, head, anchor, None);
        // A segment's last entry replaced (its 4-byte check forged) shows only against the hash
        // its frame records.
        let replaced = |seq| ChainBreak {
            chain: None,
            seq,
            reason: "entry was replaced (it does not match the hash its audit file records)".into(),
        };
        Ok(match (result, mismatch) {
            (Err(b), Some(seq)) if seq < b.seq => Err(vec![replaced(seq)]),
            (Err(b), _) => Err(vec![b]),
            (Ok(_), Some(seq)) => Err(vec![replaced(seq)]),
            (Ok(n), None) => Ok(n),
        })
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

#[cfg(test)]
mod tests;

//! Test-only tampering with the embedded audit log, as an intruder who can write the data
//! directory would: for tests that prove `audit verify` and the checkpoints catch it.

use super::{corrupt, split_segment};
use crate::store::audit::compact::{self, SEGMENT_V2, SEGMENT_V3};
use crate::store::audit::{AuditEntry, Stored};
use crate::store::sled::audit_files::Segment;
use crate::store::sled::SledDb;
use crate::store::StoreError;

impl SledDb {
    /// Overwrite one stored audit entry, bypassing the chain, its stored hash kept: the JSON
    /// of an edited [`AuditEntry`] is laid out as the entry's format lays it out; other bytes
    /// become the stored body as they are. The file's frame checks are made to match, as an
    /// intruder would. Exists so that tests can prove `audit verify` catches exactly this;
    /// nothing in the server calls it.
    #[doc(hidden)]
    pub fn overwrite_audit_entry_for_test(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let files = &self.audit.files;
        let Some(info) = files.list().into_iter().rev().find(|f| f.first <= seq) else {
            return Ok(());
        };
        let mut segments = files.segments_of(&info)?;
        let Some(slot) = segments.iter_mut().rev().find(|s| s.first <= seq) else {
            return Ok(());
        };
        let (first, value) = (slot.first, slot.bytes.clone());
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
        slot.bytes = out;
        files.rewrite_for_test(&info, &segments)
    }

    /// Keep audit entries 1..=`keep` and remove the rest from the files, as an intruder who
    /// wants the log to end earlier would (tests only; nothing in the server calls it).
    #[doc(hidden)]
    pub fn truncate_audit_for_test(&self, keep: u64) -> Result<(), StoreError> {
        let files = &self.audit.files;
        for info in files.list() {
            let mut kept = Vec::new();
            for segment in files.segments_of(&info)? {
                if segment.first > keep {
                    continue;
                }
                let entries = split_segment(segment.first, &segment.bytes).map_err(corrupt)?;
                let n = entries.iter().filter(|(s, _)| *s <= keep).count();
                if n == entries.len() {
                    kept.push(segment);
                    continue;
                }
                // Layout 3: the prev_hash, then the first n records; the frame records the hash
                // of the new last entry.
                let (prev, records) =
                    compact::checked_records(segment.bytes.get(1..).unwrap_or_default())
                        .map_err(|e| corrupt(e.to_string()))?;
                let mut out = vec![SEGMENT_V3];
                out.extend_from_slice(&prev);
                for (body, check) in records.into_iter().take(n) {
                    compact::put_checked_record(&mut out, body, &check);
                }
                let last_hash = match entries.get(n.wrapping_sub(1)) {
                    Some((_, Stored::Checked { hash, .. })) => *hash,
                    _ => [0u8; 32],
                };
                kept.push(Segment {
                    first: segment.first,
                    bytes: out,
                    last_hash,
                });
            }
            files.rewrite_for_test(&info, &kept)?;
        }
        Ok(())
    }
}

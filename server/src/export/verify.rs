//! `audit verify --export-dir`: the exported segments checked end to end, without the
//! database — every entry's hash recomputed from its content, every link to the entry before
//! it (across segment boundaries), no gap between segments, and each closed segment's closing
//! checkpoint signed by this server's key over its last entry. The first broken or missing
//! segment or entry is named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::segment::{self, SegmentName, CHECKPOINT_KEY};
use crate::checkpoint::Checkpoint;
use crate::store::audit::{AuditEntry, Head, GENESIS_HASH};

/// One chain's segments, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// The chain's file prefix (`audit`, or `audit-CHAIN`).
    pub prefix: String,
    /// The chain, as its entries name it.
    pub chain: Option<String>,
    /// Segment files read.
    pub segments: usize,
    /// The last entry they hold.
    pub last: Head,
    /// Entries, by seq, whose hash the caller asked for (see [`verify_dir`]).
    pub hashes: BTreeMap<u64, String>,
    /// Closing checkpoints whose signature could not be checked (their key left the key file).
    pub unchecked_signatures: Vec<String>,
    /// Whether an open (not yet closed) segment was read: entries the server has not closed
    /// a segment on yet.
    pub open_segment: bool,
    /// The open segment ends in a torn line (a crash while writing; the server cuts it at its
    /// next start and writes the entry again).
    pub torn_tail: bool,
}

/// What is wrong with the export.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit export broken at {}{}: {reason}", segment, seq.map(|s| format!(", entry {s}")).unwrap_or_default())]
pub struct ExportBreak {
    /// The segment file (or the gap between two) where it is broken.
    pub segment: String,
    /// The first entry broken or missing, when one can be named.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// Opens a segment's closing checkpoint: its payload if the signature verifies (or `Err` with
/// why not), and the kid whose key was not available to check it.
pub type OpenCheckpoint<'a> = dyn Fn(&str) -> Result<(Checkpoint, Option<String>), String> + 'a;

/// Why the export could not be checked (as opposed to what the check found).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The export is broken.
    #[error(transparent)]
    Broken(#[from] ExportBreak),
}

/// Verify every chain's segments in `dir`. `want` lists (prefix, seq) pairs whose hashes the
/// caller compares with the database (its anchors); `open` checks a closing checkpoint.
pub fn verify_dir(
    dir: &Path,
    want: &[(String, u64)],
    open: &OpenCheckpoint<'_>,
) -> Result<Vec<ChainReport>, VerifyError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| VerifyError::Read { path, source }
    };
    let segments = segment::list(dir).map_err(read_err(dir))?;
    if segments.is_empty() {
        return Err(ExportBreak {
            segment: dir.display().to_string(),
            seq: None,
            reason: "the directory holds no audit segment".into(),
        }
        .into());
    }
    let mut reports: Vec<ChainReport> = Vec::new();
    for seg in segments {
        let fresh = reports.last().is_none_or(|r| r.prefix != seg.prefix);
        if fresh {
            reports.push(ChainReport {
                prefix: seg.prefix.clone(),
                chain: None,
                segments: 0,
                last: (0, GENESIS_HASH.to_owned()),
                hashes: BTreeMap::new(),
                unchecked_signatures: Vec::new(),
                open_segment: false,
                torn_tail: false,
            });
        }
        let Some(report) = reports.last_mut() else {
            continue;
        };
        if seg.last.is_none() && report.segments > 0 && seg.first <= report.last.0 {
            // A crash while closing left the open file beside its closed copy; the server
            // removes it at its next start.
            continue;
        }
        let path = dir.join(seg.file_name());
        let text = segment::read_text(&path, seg.last.is_some()).map_err(read_err(&path))?;
        let wanted: Vec<u64> = want
            .iter()
            .filter(|(p, _)| *p == seg.prefix)
            .map(|(_, s)| *s)
            .collect();
        check_segment(report, &seg, &text, &wanted, open)?;
    }
    Ok(reports)
}

fn check_segment(
    report: &mut ChainReport,
    seg: &SegmentName,
    text: &[u8],
    wanted: &[u64],
    open: &OpenCheckpoint<'_>,
) -> Result<(), ExportBreak> {
    let name = seg.file_name();
    let brk = |seq: Option<u64>, reason: String| ExportBreak {
        segment: name.clone(),
        seq,
        reason,
    };
    if report.open_segment {
        return Err(brk(None, "a segment follows the open segment".into()));
    }
    let expected = report.last.0 + 1;
    if seg.first != expected {
        return Err(brk(
            Some(expected.min(seg.first)),
            if seg.first > expected {
                format!(
                    "entries {expected}..={} are missing: no segment holds them (a segment removed?)",
                    seg.first - 1
                )
            } else {
                format!(
                    "it starts at entry {} but the segments before it end at {}",
                    seg.first, report.last.0
                )
            },
        ));
    }
    report.segments += 1;
    report.open_segment = seg.last.is_none();
    let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    // After the last newline: empty for a whole file, a torn line for a cut one.
    let tail = lines.pop().unwrap_or_default();
    if !tail.is_empty() {
        if seg.last.is_some() {
            return Err(brk(
                Some(report.last.0 + 1),
                "it ends in the middle of a line (truncated)".into(),
            ));
        }
        report.torn_tail = true;
    }
    let mut checkpoint = None;
    if seg.last.is_some() {
        let line = lines.pop().unwrap_or_default();
        let jws = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get(CHECKPOINT_KEY)?.as_str().map(str::to_owned));
        checkpoint = Some(jws.ok_or_else(|| {
            brk(
                None,
                "it does not end with a signed checkpoint (truncated or altered)".into(),
            )
        })?);
    }
    for line in lines {
        let seq = report.last.0 + 1;
        let entry: AuditEntry = serde_json::from_slice(line).map_err(|e| {
            brk(
                Some(seq),
                format!("the line does not decode as an entry: {e}"),
            )
        })?;
        if entry.body.seq != seq {
            return Err(brk(
                Some(seq),
                format!(
                    "entry {seq} is missing (the next line holds entry {})",
                    entry.body.seq
                ),
            ));
        }
        if report.segments == 1 && seq == seg.first {
            report.chain.clone_from(&entry.body.chain);
        }
        if entry.body.chain != report.chain {
            return Err(brk(Some(seq), "entry belongs to another chain".into()));
        }
        if !entry.hash_matches() {
            return Err(brk(
                Some(seq),
                "entry was altered (its content does not match its hash)".into(),
            ));
        }
        if entry.body.prev_hash != report.last.1 {
            return Err(brk(
                Some(seq.saturating_sub(1).max(1)),
                format!("entry was replaced (entry {seq} records a different hash for it)"),
            ));
        }
        if wanted.contains(&seq) {
            report.hashes.insert(seq, entry.hash.clone());
        }
        report.last = (seq, entry.hash);
    }
    if let Some(last) = seg.last {
        if report.last.0 != last {
            return Err(brk(
                Some(report.last.0 + 1),
                format!(
                    "its name says it ends at entry {last} but it holds entries up to {}",
                    report.last.0
                ),
            ));
        }
    }
    if let Some(jws) = checkpoint {
        let (cp, unchecked) =
            open(&jws).map_err(|why| brk(None, format!("its checkpoint {why}")))?;
        if cp.seq != report.last.0 || cp.head_hash != report.last.1 || cp.chain != report.chain {
            return Err(brk(
                Some(report.last.0),
                format!(
                    "its checkpoint vouches for entry {} with hash {}, the segment ends at entry {} with hash {}",
                    cp.seq, cp.head_hash, report.last.0, report.last.1
                ),
            ));
        }
        if let Some(kid) = unchecked {
            report
                .unchecked_signatures
                .push(format!("{name}: key {kid} is no longer in the key file"));
        }
    }
    Ok(())
}

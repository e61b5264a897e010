//! The audit record: events, hash-chained entries, and the chain check `audit verify` runs.
//! Each entry holds the SHA-256 of the previous entry's stored bytes, and the log's head holds
//! the hash of the last, so editing, dropping or reordering any entry breaks the chain.
//!
//! Two stored forms exist: format 1, the entry's JSON (hashed as JSON, data directories from
//! before format 2), and format 2, [`compact`]'s binary record (hashed over its stored bytes).
//! A chain may hold format 1 entries followed by format 2 ones; both verify. The embedded store
//! keeps format 2 records either with their whole hash (layout 2) or, since, with a 4-byte check
//! from which the reader derives it ([`Stored::Checked`], layout 3). Once a prefix of
//! the chain is pruned, an [`Anchor`] (the last pruned entry's seq and hash, signed) stands in
//! for it and verification starts there.

pub mod compact;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Whether the audited action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused or failed.
    Failure,
}

/// One audited event, as the code reporting it describes it. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// What happened, dotted: `token.issued`, `client.auth_failed`, `device.registered`…
    pub event: String,
    /// Who did it: the authenticated client or user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// What it was done to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The OAuth client involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Success or failure.
    pub outcome: Outcome,
    /// Why, in words (failure reasons, granted scope…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The source address of that request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl AuditEvent {
    /// A new event.
    pub fn new(event: &str, outcome: Outcome) -> Self {
        AuditEvent {
            event: event.to_owned(),
            actor: None,
            subject: None,
            client: None,
            outcome,
            reason: None,
            request_id: None,
            source: None,
        }
    }

    /// Set the actor.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Set the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Set the client.
    pub fn client(mut self, client: impl Into<String>) -> Self {
        self.client = Some(client.into());
        self
    }

    /// Set the reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// The hashed part of an entry: the event, its place in the chain, the previous entry's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedEvent {
    /// Position, from 1, without gaps.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// The chain it belongs to, where a store keeps several (one per replica on PostgreSQL);
    /// absent on the embedded store's single chain. Hashed, so an entry cannot be moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hash of the previous entry (64 zeros for the first).
    pub prev_hash: String,
}

impl ChainedEvent {
    /// Hex SHA-256 of this entry's canonical JSON.
    pub fn hash(&self) -> String {
        // A struct of strings and integers always serialises.
        hex::encode(Sha256::digest(serde_json::to_vec(self).unwrap_or_default()))
    }

    /// Seal it into a stored entry.
    pub fn seal(self) -> AuditEntry {
        AuditEntry {
            hash: self.hash(),
            body: self,
            v: None,
        }
    }
}

/// An entry as stored and served by `GET /admin/audit` and written to export segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The hashed part.
    #[serde(flatten)]
    pub body: ChainedEvent,
    /// Hex SHA-256: of `body`'s JSON (format 1), or of the compact record (format 2).
    pub hash: String,
    /// The stored format: absent for format 1 (JSON), `2` for [`compact`] records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u8>,
}

impl AuditEntry {
    /// Whether `hash` is the hash of this entry as its format defines it: what an exported
    /// line can be checked against without the database.
    pub fn hash_matches(&self) -> bool {
        self.computed_hash() == self.hash
    }

    /// The hash this entry's content gives (hex).
    pub fn computed_hash(&self) -> String {
        match self.v {
            Some(compact::FORMAT_V2) => {
                let prev = compact::raw(&self.body.prev_hash);
                let body = compact::encode_body(&self.body.event, self.body.time_ms, &prev);
                hex::encode(compact::hash(
                    &prev,
                    self.body.seq,
                    self.body.chain.as_deref(),
                    &body,
                ))
            }
            _ => self.body.hash(),
        }
    }
}

/// Seal an event into a compact (format 2) entry: the entry as served, and the stored record
/// body and hash.
pub fn seal_compact(
    seq: u64,
    time_ms: u64,
    chain: Option<String>,
    event: AuditEvent,
    prev_hash: String,
) -> (AuditEntry, Vec<u8>, [u8; 32]) {
    let prev = compact::raw(&prev_hash);
    let body = compact::encode_body(&event, time_ms, &prev);
    let hash = compact::hash(&prev, seq, chain.as_deref(), &body);
    let entry = AuditEntry {
        body: ChainedEvent {
            seq,
            time_ms,
            chain,
            event,
            prev_hash,
        },
        hash: hex::encode(hash),
        v: Some(compact::FORMAT_V2),
    };
    (entry, body, hash)
}

/// One entry as stored, in either format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Format 1: the entry's JSON.
    Json(Vec<u8>),
    /// Format 2: a compact record's body and hash.
    Compact {
        /// The body bytes.
        body: Vec<u8>,
        /// The hash stored beside them.
        hash: [u8; 32],
    },
    /// Format 2 in a layout 3 segment: a compact record's body and the first bytes of its
    /// hash; the whole hash as the reader derived it from the segment's chain.
    Checked {
        /// The body bytes.
        body: Vec<u8>,
        /// The first [`compact::CHECK_LEN`] bytes of its hash, as stored.
        check: [u8; compact::CHECK_LEN],
        /// Its hash, derived from the segment's `prev_hash` and the bodies before it.
        hash: [u8; 32],
    },
}

impl Stored {
    /// The entry it holds, as served; `prev_hash` is the previous entry's hash (a compact record
    /// keeps only 4 bytes of it).
    pub fn decode(
        &self,
        seq: u64,
        chain: Option<&str>,
        prev_hash: &str,
    ) -> Result<AuditEntry, String> {
        match self {
            Stored::Json(bytes) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Stored::Compact { body, hash } | Stored::Checked { body, hash, .. } => {
                let b = compact::decode_body(body).map_err(|e| e.to_string())?;
                Ok(AuditEntry {
                    body: ChainedEvent {
                        seq,
                        time_ms: b.time_ms,
                        chain: chain.map(str::to_owned),
                        event: b.event,
                        prev_hash: prev_hash.to_owned(),
                    },
                    hash: hex::encode(hash),
                    v: Some(compact::FORMAT_V2),
                })
            }
        }
    }

    /// Its time (Unix ms) and hash (hex), without decoding more than needed.
    pub fn time_and_hash(&self) -> Option<(u64, String)> {
        match self {
            Stored::Json(bytes) => serde_json::from_slice::<AuditEntry>(bytes)
                .ok()
                .map(|e| (e.body.time_ms, e.hash)),
            Stored::Compact { body, hash } | Stored::Checked { body, hash, .. } => {
                compact::decode_body(body)
                    .ok()
                    .map(|b| (b.time_ms, hex::encode(hash)))
            }
        }
    }
}

/// The stand-in for a pruned prefix of a chain: its last entry's seq and hash, and a signed
/// checkpoint JWS over them made when the prefix was pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The last pruned entry.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// A checkpoint JWS (`typ` `audit-checkpoint+jwt`) over `(seq, hash)`.
    pub checkpoint: String,
}

/// The last entry of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    /// The chain (`None`: the embedded store's only chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Its last sequence number.
    pub seq: u64,
    /// That entry's hash.
    pub hash: String,
}

/// Stored entries in order: (sequence number, stored entry).
pub type StoredEntries = Vec<(u64, Stored)>;

/// The head record: (last sequence number, its hash).
pub type Head = (u64, String);

/// `prev_hash` of entry 1.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where and why a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain {}broken at entry {seq}: {reason}", chain.as_deref().map(|c| format!("{c} ")).unwrap_or_default())]
pub struct ChainBreak {
    /// The chain, where a store keeps several.
    pub chain: Option<String>,
    /// The first entry found altered, missing or out of place.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// Check a chain given its entries in key order, the recorded head `(last seq, its hash)` and,
/// if a prefix was pruned, the anchor `(last pruned seq, its hash)` it starts after. Returns
/// the number of entries checked.
pub fn verify_chain<I>(
    entries: I,
    head: Option<Head>,
    anchor: Option<Head>,
    chain: Option<&str>,
) -> Result<u64, ChainBreak>
where
    I: IntoIterator<Item = (u64, Stored)>,
{
    let brk = |seq: u64, reason: String| ChainBreak {
        chain: None,
        seq,
        reason,
    };
    let (first, mut prev_hash) = anchor.unwrap_or((0, GENESIS_HASH.to_owned()));
    let mut last = first;
    for (key_seq, stored) in entries {
        let seq = last + 1;
        if key_seq != seq {
            return Err(brk(
                seq,
                format!("entry {seq} is missing (the next present is {key_seq})"),
            ));
        }
        // Only an entry after the first checked one can be blamed for a broken link.
        let victim = if seq > first + 1 { seq - 1 } else { seq };
        match &stored {
            Stored::Json(bytes) => {
                let entry: AuditEntry = serde_json::from_slice(bytes)
                    .map_err(|e| brk(seq, format!("entry does not decode: {e}")))?;
                if entry.body.seq != seq {
                    return Err(brk(
                        seq,
                        format!("entry claims to be number {}", entry.body.seq),
                    ));
                }
                if entry.body.hash() != entry.hash {
                    return Err(brk(
                        seq,
                        "entry was altered (its content does not match its hash)".into(),
                    ));
                }
                if entry.body.prev_hash != prev_hash {
                    // Entry `seq` is self-consistent, so the one before it was replaced whole.
                    return Err(brk(
                        victim,
                        format!("entry was replaced (entry {seq} records a different hash for it)"),
                    ));
                }
                prev_hash = entry.hash;
            }
            Stored::Compact { body, .. } | Stored::Checked { body, .. } => {
                let decoded = compact::decode_body(body)
                    .map_err(|e| brk(seq, format!("entry does not decode: {e}")))?;
                let prev = compact::raw(&prev_hash);
                let hash = compact::hash(&prev, seq, chain, body);
                // What the content must match: the stored hash, or in layout 3 the stored check
                // (the hash a reader derived proves nothing: it came from these same bytes).
                let matches = match &stored {
                    Stored::Checked { check, .. } => compact::check_of(&hash) == *check,
                    _ => matches!(&stored, Stored::Compact { hash: kept, .. } if *kept == hash),
                };
                if !matches {
                    return Err(if decoded.link != prev[..4] {
                        brk(
                            victim,
                            format!(
                                "entry was replaced (entry {seq} records a different hash for it)"
                            ),
                        )
                    } else {
                        brk(
                            seq,
                            "entry was altered (its content does not match its hash)".into(),
                        )
                    });
                }
                prev_hash = hex::encode(hash);
            }
        }
        last = seq;
    }
    let count = last - first;
    match head {
        None if last == 0 => Ok(0),
        None => Err(brk(last, "the log has no head record".into())),
        Some((head_seq, _)) if head_seq != last => Err(brk(
            last + 1,
            format!("the log records {head_seq} entries but the chain ends at {last} (entries removed at the end)"),
        )),
        Some((_, head_hash)) if head_hash != prev_hash => {
            Err(brk(last, "entry was replaced (it does not match the log head)".into()))
        }
        Some(_) => Ok(count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` entries: the first `json` as format 1, the rest as format 2, as a data directory
    /// from before format 2 that kept running; of those, the later half in layout 3 (a check
    /// instead of the whole hash), as a data directory from before layout 3.
    fn chain(n: u64, json: u64) -> (StoredEntries, Head) {
        let layout3_from = json + (n - json) / 2 + 1;
        let mut prev = GENESIS_HASH.to_owned();
        let mut out = Vec::new();
        for seq in 1..=n {
            let event = AuditEvent::new("token.issued", Outcome::Success).client(format!("c{seq}"));
            if seq <= json {
                let e = ChainedEvent {
                    seq,
                    time_ms: seq,
                    chain: None,
                    event,
                    prev_hash: prev.clone(),
                }
                .seal();
                prev = e.hash.clone();
                out.push((seq, Stored::Json(serde_json::to_vec(&e).unwrap())));
            } else {
                let (e, body, hash) = seal_compact(seq, seq, None, event, prev.clone());
                assert!(e.hash_matches());
                prev = e.hash;
                out.push((
                    seq,
                    if seq >= layout3_from {
                        Stored::Checked {
                            body,
                            check: compact::check_of(&hash),
                            hash,
                        }
                    } else {
                        Stored::Compact { body, hash }
                    },
                ));
            }
        }
        (out, (n, prev))
    }

    /// Change entry `i`'s outcome in place, leaving its stored hash.
    fn edit(stored: &mut Stored) {
        match stored {
            Stored::Json(bytes) => {
                *bytes = String::from_utf8(bytes.clone())
                    .unwrap()
                    .replace("\"success\"", "\"failure\"")
                    .into_bytes();
            }
            Stored::Compact { body, .. } | Stored::Checked { body, .. } => body[0] |= 1,
        }
    }

    #[test]
    fn intact_chain_verifies_in_both_formats() {
        for json in [0, 3, 5] {
            let (entries, head) = chain(5, json);
            assert_eq!(verify_chain(entries, Some(head), None, None), Ok(5));
        }
        assert_eq!(verify_chain(Vec::new(), None, None, None), Ok(0));
    }

    #[test]
    fn a_chain_verifies_from_its_anchor_and_a_gap_after_it_is_named() {
        let (entries, head) = chain(6, 2);
        let anchor = entries[2].1.time_and_hash().map(|(_, h)| (3, h));
        let rest: StoredEntries = entries[3..].to_vec();
        assert_eq!(
            verify_chain(rest.clone(), Some(head.clone()), anchor.clone(), None),
            Ok(3)
        );
        let err = verify_chain(rest[1..].to_vec(), Some(head.clone()), anchor, None).unwrap_err();
        assert_eq!(err.seq, 4, "{err}");
        // An anchor that is not the pruned entry's hash breaks at the first kept entry.
        let err = verify_chain(rest, Some(head), Some((3, GENESIS_HASH.into())), None).unwrap_err();
        assert_eq!(err.seq, 4, "{err}");
    }

    #[test]
    fn edited_entry_is_named() {
        for json in [0, 2, 5] {
            for victim in 0..5usize {
                let (mut entries, head) = chain(5, json);
                edit(&mut entries[victim].1);
                let err = verify_chain(entries, Some(head), None, None).unwrap_err();
                assert_eq!(err.seq, victim as u64 + 1, "json {json}: {err}");
            }
        }
    }

    #[test]
    fn replaced_entry_with_fresh_hash_is_named() {
        for json in [0, 2, 5] {
            for victim in 0..5usize {
                let (mut entries, head) = chain(5, json);
                let seq = victim as u64 + 1;
                let prev = match victim {
                    0 => GENESIS_HASH.to_owned(),
                    _ => entries[victim - 1].1.time_and_hash().unwrap().1,
                };
                let mut e = entries[victim].1.decode(seq, None, &prev).unwrap();
                e.body.event.outcome = Outcome::Failure;
                entries[victim].1 = match e.v {
                    None => Stored::Json(serde_json::to_vec(&e.body.seal()).unwrap()),
                    Some(_) => {
                        let (_, body, hash) =
                            seal_compact(seq, e.body.time_ms, None, e.body.event, prev);
                        match entries[victim].1 {
                            Stored::Checked { .. } => Stored::Checked {
                                body,
                                check: compact::check_of(&hash),
                                hash,
                            },
                            _ => Stored::Compact { body, hash },
                        }
                    }
                };
                let err = verify_chain(entries, Some(head), None, None).unwrap_err();
                assert_eq!(err.seq, seq, "json {json}: {err}");
            }
        }
    }

    #[test]
    fn dropped_entries_are_seen() {
        let (mut entries, head) = chain(5, 2);
        entries.remove(2);
        assert_eq!(
            verify_chain(entries, Some(head), None, None)
                .unwrap_err()
                .seq,
            3
        );
        let (mut entries, head) = chain(5, 2);
        entries.pop();
        assert_eq!(
            verify_chain(entries, Some(head), None, None)
                .unwrap_err()
                .seq,
            5
        );
    }

    #[test]
    fn a_moved_compact_entry_breaks_its_chain() {
        let (entries, head) = chain(3, 0);
        // The same records claimed for another chain (PostgreSQL's per-replica chains).
        assert_eq!(
            verify_chain(entries, Some(head), None, Some("other"))
                .unwrap_err()
                .seq,
            1
        );
    }

    /// One way to touch a stored chain (its head record left as it was).
    #[derive(Debug, Clone)]
    enum Tamper {
        /// XOR one byte of entry `at`'s stored body (or JSON) with a non-zero mask.
        Body { at: usize, byte: usize, mask: u8 },
        /// XOR one byte of entry `at`'s stored hash (or of the hash in its JSON, or of its
        /// stored check).
        Hash { at: usize, byte: usize, mask: u8 },
        /// Remove entry `at`.
        Drop { at: usize },
        /// Swap the stored entries at `at` and `at + 1` under their keys.
        Swap { at: usize },
    }

    fn tamper() -> impl proptest::strategy::Strategy<Value = Tamper> {
        use proptest::prelude::*;
        prop_oneof![
            (any::<usize>(), any::<usize>(), 1u8..).prop_map(|(at, byte, mask)| Tamper::Body {
                at,
                byte,
                mask
            }),
            (any::<usize>(), any::<usize>(), 1u8..).prop_map(|(at, byte, mask)| Tamper::Hash {
                at,
                byte,
                mask
            }),
            any::<usize>().prop_map(|at| Tamper::Drop { at }),
            any::<usize>().prop_map(|at| Tamper::Swap { at }),
        ]
    }

    fn apply(entries: &mut StoredEntries, tamper: Tamper) {
        let n = entries.len();
        match tamper {
            Tamper::Swap { at } if n >= 2 => {
                let at = at % (n - 1);
                let next = entries[at + 1].1.clone();
                entries[at + 1].1 = std::mem::replace(&mut entries[at].1, next);
            }
            Tamper::Drop { at } | Tamper::Swap { at } => {
                entries.remove(at % n);
            }
            Tamper::Body { at, byte, mask } => match &mut entries[at % n].1 {
                Stored::Json(bytes)
                | Stored::Compact { body: bytes, .. }
                | Stored::Checked { body: bytes, .. } => {
                    let i = byte % bytes.len();
                    bytes[i] ^= mask;
                }
            },
            Tamper::Hash { at, byte, mask } => match &mut entries[at % n].1 {
                Stored::Compact { hash, .. } => hash[byte % hash.len()] ^= mask,
                Stored::Checked { check, .. } => check[byte % check.len()] ^= mask,
                Stored::Json(bytes) => {
                    // The 64 hex digits after `"hash":"`, swapped for other hex digits.
                    let text = String::from_utf8(bytes.clone()).unwrap();
                    let start = text.rfind("\"hash\":\"").unwrap() + 8;
                    let i = start + byte % 64;
                    let digit = (text.as_bytes()[i] as char).to_digit(16).unwrap() as u8;
                    let other = (digit ^ (mask % 15 + 1)) & 0xf;
                    bytes[i] = char::from_digit(u32::from(other), 16).unwrap() as u8;
                }
            },
        }
    }

    proptest::proptest! {
        /// Invariant: a chain verifies if and only if nobody touched it. Any one change to the
        /// stored entries (a flipped bit in a record or its hash or check, an entry removed, two
        /// entries swapped), in either format or layout or a mix, is found; the untouched chain
        /// verifies whole.
        #[test]
        fn the_chain_verifies_iff_untouched(
            n in 1u64..10,
            json in 0u64..10,
            tamper in proptest::option::of(tamper()),
        ) {
            let (mut entries, head) = chain(n, json.min(n));
            let touched = tamper.is_some();
            if let Some(tamper) = tamper {
                apply(&mut entries, tamper);
            }
            let result = verify_chain(entries, Some(head), None, None);
            if touched {
                proptest::prop_assert!(result.is_err(), "a touched chain verified");
            } else {
                proptest::prop_assert_eq!(result, Ok(n));
            }
        }
    }
}

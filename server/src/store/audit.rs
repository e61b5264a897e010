//! The audit record: events, hash-chained entries, and the chain check `audit verify` runs.
//! Each entry holds the SHA-256 of the previous entry's stored bytes, and the log's head holds
//! the hash of the last, so editing, dropping or reordering any entry breaks the chain.

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
        }
    }
}

/// An entry as stored and served by `GET /admin/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The hashed part.
    #[serde(flatten)]
    pub body: ChainedEvent,
    /// Hex SHA-256 of `body`.
    pub hash: String,
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

/// Stored entries in order: (sequence number, stored bytes).
pub type StoredEntries = Vec<(u64, Vec<u8>)>;

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

/// Check a chain given its entries' stored bytes in key order and the recorded head
/// `(last seq, its hash)`. Returns the number of entries.
pub fn verify_chain<I>(entries: I, head: Option<(u64, String)>) -> Result<u64, ChainBreak>
where
    I: IntoIterator<Item = (u64, Vec<u8>)>,
{
    let brk = |seq: u64, reason: String| ChainBreak {
        chain: None,
        seq,
        reason,
    };
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut count = 0u64;
    for (key_seq, bytes) in entries {
        let seq = count + 1;
        if key_seq != seq {
            return Err(brk(
                seq,
                format!("entry {seq} is missing (the next present is {key_seq})"),
            ));
        }
        let entry: AuditEntry = serde_json::from_slice(&bytes)
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
            let victim = seq.saturating_sub(1).max(1);
            return Err(brk(
                victim,
                format!("entry was replaced (entry {seq} records a different hash for it)"),
            ));
        }
        prev_hash = entry.hash;
        count = seq;
    }
    match head {
        None if count == 0 => Ok(0),
        None => Err(brk(count, "the log has no head record".into())),
        Some((head_seq, _)) if head_seq != count => Err(brk(
            count + 1,
            format!("the log records {head_seq} entries but {count} are present (entries removed at the end)"),
        )),
        Some((_, head_hash)) if head_hash != prev_hash => {
            Err(brk(count, "entry was replaced (it does not match the log head)".into()))
        }
        Some(_) => Ok(count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> (StoredEntries, Head) {
        let mut prev = GENESIS_HASH.to_owned();
        let mut out = Vec::new();
        for seq in 1..=n {
            let e = ChainedEvent {
                seq,
                time_ms: seq,
                chain: None,
                event: AuditEvent::new("t", Outcome::Success),
                prev_hash: prev.clone(),
            }
            .seal();
            prev = e.hash.clone();
            out.push((seq, serde_json::to_vec(&e).unwrap()));
        }
        (out, (n, prev))
    }

    #[test]
    fn intact_chain_verifies() {
        let (entries, head) = chain(5);
        assert_eq!(verify_chain(entries, Some(head)), Ok(5));
        assert_eq!(verify_chain(Vec::new(), None), Ok(0));
    }

    #[test]
    fn edited_entry_is_named() {
        for victim in 0..5usize {
            let (mut entries, head) = chain(5);
            let text = String::from_utf8(entries[victim].1.clone())
                .unwrap()
                .replace("\"success\"", "\"failure\"");
            entries[victim].1 = text.into_bytes();
            let err = verify_chain(entries, Some(head)).unwrap_err();
            assert_eq!(err.seq, victim as u64 + 1, "{err}");
        }
    }

    #[test]
    fn replaced_entry_with_fresh_hash_is_named() {
        for victim in 0..5usize {
            let (mut entries, head) = chain(5);
            let mut e: AuditEntry = serde_json::from_slice(&entries[victim].1).unwrap();
            e.body.event.outcome = Outcome::Failure;
            entries[victim].1 = serde_json::to_vec(&e.body.seal()).unwrap();
            let err = verify_chain(entries, Some(head)).unwrap_err();
            assert_eq!(err.seq, victim as u64 + 1, "{err}");
        }
    }

    #[test]
    fn dropped_entries_are_seen() {
        let (mut entries, head) = chain(5);
        entries.remove(2);
        assert_eq!(verify_chain(entries, Some(head)).unwrap_err().seq, 3);
        let (mut entries, head) = chain(5);
        entries.pop();
        assert_eq!(verify_chain(entries, Some(head)).unwrap_err().seq, 5);
    }
}

//! The compact stored form of an audit entry (format 2): a hand-laid-out binary record instead
//! of JSON text. No field names, no hex, nothing stored twice: the sequence number is the
//! record's place in its segment, the previous entry's hash is that entry's own, a client equal
//! to the actor is a flag bit, and the well-known event names are one byte.
//!
//! Record, as stored: `varint(len(body)) ‖ body ‖ hash[32]`, where
//! `hash = SHA-256(prev_hash[32] ‖ seq (u64 BE) ‖ len(chain) (u8) ‖ chain ‖ body)`: the chain
//! hash is over the stored body bytes, bound to the entry's place (seq, chain) and to the entry
//! before it. Body:
//!
//! ```text
//! flags   u8      bit 0 failure, 1 actor, 2 subject, 3 subject = actor, 4 client,
//!                 5 client = actor, 6 reason, 7 request_id
//! flags2  u8      bit 0 source, bit 1 event name as text (else one byte from EVENTS)
//! time_ms varint  (LEB128)
//! event   u8 code | varint len ‖ UTF-8
//! actor, subject, client, reason, request_id, source: varint len ‖ UTF-8, each when flagged
//! link    4 bytes: the first 4 bytes of the previous entry's hash
//! ```
//!
//! `link` repeats 4 bytes of the previous hash on purpose: with it, `audit verify` tells an
//! entry that was edited (its own hash fails) from one whose predecessor was replaced whole
//! with a fresh hash (its link fails), and names the right one.
//!
//! How records are laid out in a sled segment (the value of one group commit):
//! - layout 2 ([`SEGMENT_V2`]): the records as above, each with its whole hash;
//! - layout 3 ([`SEGMENT_V3`], written since): `prev_hash[32]` of the segment's first entry,
//!   then per entry `varint(len(body)) ‖ body ‖ check[4]`, `check` being the first 4 bytes of
//!   the entry's hash. The whole hash is not stored: it follows from the segment's `prev_hash`
//!   and the bodies, so a reader derives it, and the check still tells an edited entry (its
//!   derived hash disagrees with its check) from a replaced predecessor (its link disagrees),
//!   as the whole hash did. Against an attacker who can write the database the anchor was
//!   never the per-entry hash (it is recomputable) but the head, the signed checkpoints and
//!   the exported files; 28 bytes per entry are saved.
//!
//! The hash, and so an exported entry (`"v":2`), is the same in both layouts.
//!
//! Encoding is canonical (the same event always gives the same bytes), so an exported JSON line
//! can be re-encoded and its hash checked without the database.

use sha2::{Digest, Sha256};

use super::{AuditEvent, Outcome};

/// Format byte that opens a sled segment of compact records. A legacy segment of JSON lines
/// opens with `{`, so the two never mix up.
pub const SEGMENT_V2: u8 = 0x02;

/// Format byte that opens a sled segment in layout 3: the segment's `prev_hash`, then records
/// with a 4-byte check instead of their whole hash.
pub const SEGMENT_V3: u8 = 0x03;

/// Bytes of an entry's hash a layout 3 record keeps.
pub const CHECK_LEN: usize = 4;

/// The format number exported lines carry (`"v":2`); JSON entries (format 1) carry none.
pub const FORMAT_V2: u8 = 2;

/// Event names that take one byte. Append only: a code, once used, keeps its name forever.
const EVENTS: &[&str] = &[
    "token.issued",
    "client.auth_failed",
    "token.introspected",
    "token.revoked",
    "token.refresh_refused",
    "token.refresh_replayed",
    "token.exchanged",
    "token.exchange_refused",
    "client.registered",
    "device.registered",
    "device.disabled",
    "device.deleted",
    "device.withdrawn",
    "device.rotation_requested",
    "device.credential_promoted",
    "device.attestation_challenged",
    "device.attestation_refused",
    "device.ek_attested",
    "device.code_rejected",
    "device.approved",
    "device.denied",
    "user.created",
    "user.signed_in",
    "user.sign_in_failed",
    "keys.rotated",
];

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end inside a field.
    #[error("record ends inside its {0}")]
    Truncated(&'static str),
    /// A text field is not UTF-8.
    #[error("record's {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// An event code this version does not know.
    #[error("record has unknown event code {0}")]
    UnknownEvent(u8),
    /// Bytes left over after the last field.
    #[error("record has {0} bytes after its last field")]
    Trailing(usize),
}

/// A decoded body: the event, its time and the link to the previous hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    /// The event.
    pub event: AuditEvent,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// First 4 bytes of the previous entry's hash.
    pub link: [u8; 4],
}

/// The body bytes of an event.
pub fn encode_body(event: &AuditEvent, time_ms: u64, prev_hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let actor = event.actor.as_deref();
    let same = |v: &Option<String>| v.is_some() && v.as_deref() == actor;
    let mut flags = 0u8;
    let mut flags2 = 0u8;
    if event.outcome == Outcome::Failure {
        flags |= 1;
    }
    if actor.is_some() {
        flags |= 1 << 1;
    }
    if event.subject.is_some() {
        flags |= 1 << 2;
    }
    if same(&event.subject) {
        flags |= 1 << 3;
    }
    if event.client.is_some() {
        flags |= 1 << 4;
    }
    if same(&event.client) {
        flags |= 1 << 5;
    }
    if event.reason.is_some() {
        flags |= 1 << 6;
    }
    if event.request_id.is_some() {
        flags |= 1 << 7;
    }
    if event.source.is_some() {
        flags2 |= 1;
    }
    let code = EVENTS.iter().position(|e| *e == event.event);
    if code.is_none() {
        flags2 |= 1 << 1;
    }
    out.push(flags);
    out.push(flags2);
    put_varint(&mut out, time_ms);
    match code {
        // EVENTS has far fewer than 255 names.
        Some(i) => out.push(u8::try_from(i + 1).unwrap_or(0)),
        None => put_str(&mut out, &event.event),
    }
    if let Some(a) = actor {
        put_str(&mut out, a);
    }
    if let Some(s) = &event.subject {
        if !same(&event.subject) {
            put_str(&mut out, s);
        }
    }
    if let Some(c) = &event.client {
        if !same(&event.client) {
            put_str(&mut out, c);
        }
    }
    for s in [&event.reason, &event.request_id, &event.source]
        .into_iter()
        .flatten()
    {
        put_str(&mut out, s);
    }
    out.extend_from_slice(&prev_hash[..4]);
    out
}

/// Decode body bytes.
pub fn decode_body(bytes: &[u8]) -> Result<Body, DecodeError> {
    let mut r = Reader(bytes);
    let flags = r.byte("flags")?;
    let flags2 = r.byte("flags")?;
    let time_ms = r.varint("time")?;
    let event = if flags2 & (1 << 1) != 0 {
        r.string("event")?
    } else {
        let code = r.byte("event")?;
        (*EVENTS
            .get(usize::from(code).wrapping_sub(1))
            .ok_or(DecodeError::UnknownEvent(code))?)
        .to_owned()
    };
    let has = |bit: u8| flags & (1 << bit) != 0;
    let actor = has(1).then(|| r.string("actor")).transpose()?;
    let subject = match (has(2), has(3)) {
        (false, _) => None,
        (true, true) => actor.clone(),
        (true, false) => Some(r.string("subject")?),
    };
    let client = match (has(4), has(5)) {
        (false, _) => None,
        (true, true) => actor.clone(),
        (true, false) => Some(r.string("client")?),
    };
    let reason = has(6).then(|| r.string("reason")).transpose()?;
    let request_id = has(7).then(|| r.string("request_id")).transpose()?;
    let source = (flags2 & 1 != 0).then(|| r.string("source")).transpose()?;
    let link = r.take(4, "link")?;
    let link = <[u8; 4]>::try_from(link).map_err(|_| DecodeError::Truncated("link"))?;
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(Body {
        event: AuditEvent {
            event,
            actor,
            subject,
            client,
            outcome: if has(0) {
                Outcome::Failure
            } else {
                Outcome::Success
            },
            reason,
            request_id,
            source,
        },
        time_ms,
        link,
    })
}

/// The chain hash of a compact entry.
pub fn hash(prev_hash: &[u8; 32], seq: u64, chain: Option<&str>, body: &[u8]) -> [u8; 32] {
    let chain = chain.unwrap_or("").as_bytes();
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(seq.to_be_bytes());
    // Chain names are replica ids, far below 256 bytes; longer ones are cut for the length
    // byte only, the name itself is hashed whole.
    h.update([u8::try_from(chain.len()).unwrap_or(u8::MAX)]);
    h.update(chain);
    h.update(body);
    h.finalize().into()
}

/// Append a record (`varint len ‖ body ‖ hash`) to a segment.
pub fn put_record(out: &mut Vec<u8>, body: &[u8], hash: &[u8; 32]) {
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
    out.extend_from_slice(hash);
}

/// One stored record: its body and hash.
pub type Record<'a> = (&'a [u8], [u8; 32]);

/// The records of a compact segment's value (after its format byte).
pub fn records(mut bytes: &[u8]) -> Result<Vec<Record<'_>>, DecodeError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut r = Reader(bytes);
        let len =
            usize::try_from(r.varint("length")?).map_err(|_| DecodeError::Truncated("body"))?;
        let body = r.take(len, "body")?;
        let hash = <[u8; 32]>::try_from(r.take(32, "hash")?)
            .map_err(|_| DecodeError::Truncated("hash"))?;
        out.push((body, hash));
        bytes = r.0;
    }
    Ok(out)
}

/// Append a layout 3 record (`varint len ‖ body ‖ hash[..4]`) to a segment.
pub fn put_checked_record(out: &mut Vec<u8>, body: &[u8], check: &[u8; CHECK_LEN]) {
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
    out.extend_from_slice(check);
}

/// The first bytes of a hash that a layout 3 record keeps.
pub fn check_of(hash: &[u8; 32]) -> [u8; CHECK_LEN] {
    let mut check = [0u8; CHECK_LEN];
    check.copy_from_slice(&hash[..CHECK_LEN]);
    check
}

/// One layout 3 record: its body and check.
pub type CheckedRecord<'a> = (&'a [u8], [u8; CHECK_LEN]);

/// A layout 3 segment's value (after its format byte): the first entry's `prev_hash` and the
/// records.
pub fn checked_records(bytes: &[u8]) -> Result<([u8; 32], Vec<CheckedRecord<'_>>), DecodeError> {
    let mut r = Reader(bytes);
    let prev = <[u8; 32]>::try_from(r.take(32, "segment prev_hash")?)
        .map_err(|_| DecodeError::Truncated("segment prev_hash"))?;
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let len =
            usize::try_from(r.varint("length")?).map_err(|_| DecodeError::Truncated("body"))?;
        let body = r.take(len, "body")?;
        let check = <[u8; CHECK_LEN]>::try_from(r.take(CHECK_LEN, "check")?)
            .map_err(|_| DecodeError::Truncated("check"))?;
        out.push((body, check));
    }
    Ok((prev, out))
}

/// A hex hash as 32 bytes; anything else (a corrupt head) as zeros, which no entry chains to.
pub fn raw(hex_hash: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if hex::decode_to_slice(hex_hash, &mut out).is_err() {
        return [0u8; 32];
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Truncated(what))
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = usize::try_from(self.varint(what)?).map_err(|_| DecodeError::Truncated(what))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued() -> AuditEvent {
        AuditEvent {
            event: "token.issued".into(),
            actor: Some("dev-0001".into()),
            subject: Some("dev-0001".into()),
            client: Some("dev-0001".into()),
            outcome: Outcome::Success,
            reason: Some("grant=client_credentials scope=device jti=abc".into()),
            request_id: Some("r-1".into()),
            source: Some("127.0.0.1".into()),
        }
    }

    #[test]
    fn round_trips_and_is_small() {
        let prev = [7u8; 32];
        for event in [
            issued(),
            AuditEvent::new("something.new", Outcome::Failure).client("c"),
            AuditEvent::new("token.revoked", Outcome::Success)
                .actor("a")
                .subject("s"),
        ] {
            let body = encode_body(&event, 1_700_000_000_123, &prev);
            let back = decode_body(&body).unwrap();
            assert_eq!(back.event, event);
            assert_eq!(back.time_ms, 1_700_000_000_123);
            assert_eq!(back.link, [7u8; 4]);
            // Canonical: encoding what was decoded gives the same bytes.
            assert_eq!(encode_body(&back.event, back.time_ms, &prev), body);
        }
        let body = encode_body(&issued(), 1_700_000_000_123, &prev);
        assert!(body.len() < 90, "{}", body.len());
    }

    #[test]
    fn truncated_or_padded_records_are_refused_not_panicked_on() {
        let body = encode_body(&issued(), 5, &[0u8; 32]);
        for n in 0..body.len() {
            assert!(decode_body(&body[..n]).is_err(), "prefix {n}");
        }
        let mut long = body.clone();
        long.push(0);
        assert_eq!(decode_body(&long), Err(DecodeError::Trailing(1)));
        let mut seg = Vec::new();
        put_record(&mut seg, &body, &[1u8; 32]);
        put_record(&mut seg, &body, &[2u8; 32]);
        assert_eq!(records(&seg).unwrap().len(), 2);
        assert!(records(&seg[..seg.len() - 1]).is_err());
        // Layout 3: the segment's prev_hash, then records with a check.
        let mut seg = vec![9u8; 32];
        put_checked_record(&mut seg, &body, &[1, 2, 3, 4]);
        put_checked_record(&mut seg, &body, &[5, 6, 7, 8]);
        let (prev, records) = checked_records(&seg).unwrap();
        assert_eq!(prev, [9u8; 32]);
        assert_eq!(
            records,
            vec![(&body[..], [1, 2, 3, 4]), (&body[..], [5, 6, 7, 8])]
        );
        for n in 0..seg.len() {
            let short = checked_records(&seg[..n]);
            assert!(short.is_err() || short.unwrap().1.len() < 2, "prefix {n}");
        }
        assert!(checked_records(&seg[..31]).is_err());
    }

    #[test]
    fn layout_3_keeps_28_bytes_less_per_entry() {
        let body = encode_body(&issued(), 1_700_000_000_123, &[0u8; 32]);
        let hash = [7u8; 32];
        let (mut v2, mut v3) = (Vec::new(), Vec::new());
        put_record(&mut v2, &body, &hash);
        put_checked_record(&mut v3, &body, &check_of(&hash));
        assert_eq!(v2.len() - v3.len(), 32 - CHECK_LEN);
        assert_eq!(check_of(&hash), [7u8; 4]);
    }
}

//! Signed audit checkpoints, as Certificate Transparency's signed tree heads (RFC 6962 §3.5): a
//! JWS by the server's signing key over the audit chain's durable head, `{issuer, seq,
//! head_hash, time}`. A hash chain alone cannot stop someone who can write the database from
//! cutting its end or rewriting its tail and the head with it; a checkpoint held elsewhere (a
//! log archive, an auditor's copy) can: `audit verify --checkpoint FILE…` fails, naming the
//! checkpoint, when the chain is shorter than it or its entry at that seq has another hash.
//!
//! Format: compact JWS, header `{"alg":"EdDSA","typ":"audit-checkpoint+jwt","kid"}`, payload
//! the JSON of [`Checkpoint`]. Its optional `chain` member names which hash chain it covers; a
//! server with one chain (sled) leaves it out, and a server with one chain per replica can set
//! it without changing the format. A verifier refuses a `chain` it does not hold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::keys::{KeyFile, KeyRing};
use crate::oauth::jws::Unverified;
use crate::store::audit::{ChainBreak, ChainHead};
use crate::store::{AuditLog, KeyAlg, StoreError};

/// The JWS `typ` of a checkpoint, so that it can never pass for an access token (`at+jwt`)
/// nor anything else this server signs.
pub const CHECKPOINT_TYP: &str = "audit-checkpoint+jwt";

/// What a checkpoint states: the chain had `seq` entries, the last with hash `head_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The server's issuer identifier.
    pub issuer: String,
    /// How many entries the chain held (the last one's sequence number); 0 for none.
    pub seq: u64,
    /// Hex SHA-256 of entry `seq` (64 zeros for an empty chain).
    pub head_hash: String,
    /// When it was made, Unix seconds.
    pub time: u64,
    /// Which chain, where a server keeps more than one (one per replica); absent for the
    /// single chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

impl Checkpoint {
    /// Sign it with the key that signs tokens now.
    pub fn sign(&self, ring: &KeyRing) -> String {
        // A struct of strings and integers always serialises.
        ring.active.sign_typed(
            CHECKPOINT_TYP,
            &serde_json::to_vec(self).unwrap_or_default(),
        )
    }
}

/// The checkpoint of `server`'s audit chain now, and its JWS.
pub fn make(
    server: &crate::oauth::AuthServer,
    now: u64,
) -> Result<(Checkpoint, String), StoreError> {
    let (seq, head_hash) = server.audit.durable_head()?;
    let checkpoint = Checkpoint {
        issuer: server.settings.issuer.clone(),
        seq,
        head_hash,
        time: now,
        chain: server.audit.own_chain(),
    };
    let jws = checkpoint.sign(&server.keys.current());
    Ok((checkpoint, jws))
}

/// Why a checkpoint could not be checked, or what it found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The file cannot be read.
    #[error("cannot read checkpoint {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no checkpoint.
    #[error("checkpoint {}: no audit checkpoint (a JWS of type {CHECKPOINT_TYP}) in the file", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The checkpoint is not this server's.
    #[error("checkpoint {}: {reason}", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The chain is shorter than the checkpoint: entries were removed at its end.
    #[error(
        "checkpoint {} (seq {seq}, made {}): the audit chain holds only {count} entries; \
         entries {first_missing}..={seq} were removed",
        path.display(), utc(*time), first_missing = count + 1
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The checkpoint's seq.
        seq: u64,
        /// Its time.
        time: u64,
        /// Entries in the chain.
        count: u64,
    },
    /// The chain's entry at the checkpoint's seq is not the one checkpointed.
    #[error(
        "checkpoint {} (seq {seq}, made {}): entry {seq} has hash {found}, the checkpoint \
         recorded {recorded}; the chain was rewritten at or before entry {seq}",
        path.display(), utc(*time)
    )]
    Rewritten {
        /// The file.
        path: PathBuf,
        /// The checkpoint's seq.
        seq: u64,
        /// Its time.
        time: u64,
        /// The hash in the chain.
        found: String,
        /// The hash in the checkpoint.
        recorded: String,
    },
    /// A checkpoint's entry was pruned from the database: only the export can still show it.
    #[error(
        "checkpoint {} (seq {seq}): entry {seq} was pruned from the database (it keeps entries after {anchor}); check the checkpoint against the export with --export-dir",
        path.display()
    )]
    Pruned {
        /// The file.
        path: PathBuf,
        /// The checkpoint's seq.
        seq: u64,
        /// The database's anchor.
        anchor: u64,
    },
    /// A chain's pruning anchor is not signed by this server, or says something else.
    #[error("audit chain {}anchor (pruned up to entry {seq}): {reason}", chain.as_deref().map(|c| format!("{c} ")).unwrap_or_default())]
    Anchor {
        /// The chain.
        chain: Option<String>,
        /// The anchor's seq.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The export is broken, missing a segment, or disagrees with the database.
    #[error(transparent)]
    Export(#[from] crate::export::verify::ExportBreak),
    /// The export directory could not be read.
    #[error("{0}")]
    ExportRead(String),
    /// An audit chain itself is broken (each broken chain is named); checkpoints are not
    /// compared.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Chains(Vec<ChainBreak>),
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key file could not be read.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    /// The data directory's store could not be opened.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
}

impl CheckpointError {
    /// Whether this is what the check found (a broken chain, a checkpoint that does not
    /// match or is not this server's), as opposed to being unable to look.
    pub fn is_finding(&self) -> bool {
        !matches!(
            self,
            CheckpointError::Read { .. }
                | CheckpointError::Pruned { .. }
                | CheckpointError::ExportRead(_)
                | CheckpointError::Store(_)
                | CheckpointError::Keys(_)
                | CheckpointError::Backend(_)
        )
    }
}

/// A checkpoint that matched the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The file.
    pub path: PathBuf,
    /// What it said.
    pub checkpoint: Checkpoint,
    /// The key that signed it, if the key file still holds it (keys are dropped some time
    /// after they retire; the signature is then not checked, but the hash still is).
    pub signed_by: Result<String, String>,
}

/// Everything the checks need from the data directory.
pub struct Verifier<'a> {
    /// The audit log.
    pub audit: &'a dyn AuditLog,
    /// Public keys by kid, from the key file.
    pub keys: HashMap<String, VerifyingKey>,
    /// The issuer the checkpoints must name.
    pub issuer: String,
}

impl std::fmt::Debug for Verifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl<'a> Verifier<'a> {
    /// A verifier for the data directory's key file and issuer.
    pub fn new(
        audit: &'a dyn AuditLog,
        key_file: &KeyFile,
        issuer: String,
    ) -> Result<Self, CheckpointError> {
        // Every key in the file verifies; which one signs now does not matter here.
        let ring = KeyRing::build(key_file, u64::MAX)?;
        let keys = key_file
            .keys
            .iter()
            .filter_map(|k| Some((k.kid.clone(), *ring.verifier(&k.kid)?)))
            .collect();
        Ok(Verifier {
            audit,
            keys,
            issuer,
        })
    }

    /// Check the chain, then each checkpoint against it, in order; the first that fails is
    /// the error. Returns the number of entries and every checkpoint that matched.
    pub async fn verify(&self, files: &[PathBuf]) -> Result<(u64, Vec<Matched>), CheckpointError> {
        let count = self
            .audit
            .verify()
            .await?
            .map_err(CheckpointError::Chains)?;
        let heads = self.audit.chains().await?;
        for head in &heads {
            self.check_anchor(head.chain.as_deref()).await?;
        }
        let mut matched = Vec::new();
        for path in files {
            matched.push(self.check(path, &heads).await?);
        }
        Ok((count, matched))
    }

    /// A chain's pruning anchor must be a checkpoint of this server over exactly its seq and
    /// hash.
    async fn check_anchor(&self, chain: Option<&str>) -> Result<(), CheckpointError> {
        let Some(anchor) = self.audit.anchor(chain).await? else {
            return Ok(());
        };
        let bad = |reason: String| CheckpointError::Anchor {
            chain: chain.map(str::to_owned),
            seq: anchor.seq,
            reason,
        };
        let (cp, _) = self
            .open_checkpoint(&anchor.checkpoint)
            .map_err(|why| bad(format!("its checkpoint {why}")))?;
        if cp.seq != anchor.seq || cp.head_hash != anchor.hash || cp.chain.as_deref() != chain {
            return Err(bad(format!(
                "its checkpoint vouches for entry {} with hash {}, the anchor records entry {} with hash {}",
                cp.seq, cp.head_hash, anchor.seq, anchor.hash
            )));
        }
        Ok(())
    }

    /// Verify the export directory's segments end to end, then against the database: each
    /// chain's anchor must be in the export with the same hash (never prune what no file
    /// holds), and where export and database overlap they must hold the same entry.
    pub async fn verify_export(
        &self,
        dir: &Path,
    ) -> Result<Vec<crate::export::verify::ChainReport>, CheckpointError> {
        use crate::export::segment_prefix;
        use crate::export::verify::{verify_dir, ExportBreak, VerifyError};
        let heads = self.audit.chains().await?;
        let mut want = Vec::new();
        let mut anchors = Vec::new();
        for head in &heads {
            if let Some(a) = self.audit.anchor(head.chain.as_deref()).await? {
                want.push((segment_prefix(head.chain.as_deref()), a.seq));
                anchors.push((head.chain.clone(), a));
            }
        }
        let reports =
            verify_dir(dir, &want, &|jws| self.open_checkpoint(jws)).map_err(|e| match e {
                VerifyError::Broken(b) => CheckpointError::Export(b),
                other => CheckpointError::ExportRead(other.to_string()),
            })?;
        let brk = |chain: &Option<String>, seq: u64, reason: String| {
            CheckpointError::Export(ExportBreak {
                segment: format!("{}-*", segment_prefix(chain.as_deref())),
                seq: Some(seq),
                reason,
            })
        };
        for (chain, anchor) in &anchors {
            let prefix = segment_prefix(chain.as_deref());
            // Each replica exports its own chain, maybe to a directory of its own: a chain
            // with no segment here is another directory's to prove.
            let Some(report) = reports.iter().find(|r| r.prefix == prefix) else {
                continue;
            };
            match report.hashes.get(&anchor.seq) {
                Some(hash) if *hash == anchor.hash => {}
                Some(hash) => {
                    return Err(brk(
                        chain,
                        anchor.seq,
                        format!(
                            "the export holds hash {hash} for it, the database's pruning anchor {}",
                            anchor.hash
                        ),
                    ))
                }
                None => {
                    let end = report.last.0;
                    return Err(brk(chain, end + 1, format!(
                        "the database pruned entries up to {} but the export ends at entry {end}: segments after it are missing",
                        anchor.seq
                    )));
                }
            }
        }
        for report in &reports {
            let Some(head) = heads
                .iter()
                .find(|h| segment_prefix(h.chain.as_deref()) == report.prefix)
            else {
                continue;
            };
            let (seq, hash) = &report.last;
            if *seq > head.seq {
                return Err(brk(
                    &head.chain,
                    head.seq + 1,
                    format!(
                        "the export holds entries up to {seq} but the database's chain ends at {}",
                        head.seq
                    ),
                ));
            }
            let pruned = anchors
                .iter()
                .any(|(c, a)| *c == head.chain && a.seq >= *seq);
            if *seq > 0 && !pruned {
                let found = self
                    .audit
                    .entries(head.chain.as_deref(), seq - 1, 1)
                    .await?
                    .into_iter()
                    .next()
                    .map(|e| e.hash)
                    .unwrap_or_default();
                if found != *hash {
                    return Err(brk(&head.chain, *seq, format!(
                        "the export and the database hold different entries (export hash {hash}, database {found})"
                    )));
                }
            }
        }
        Ok(reports)
    }

    /// Check a checkpoint JWS: its signature (when its key is still in the key file) and
    /// issuer. Returns what it says and, if its signature could not be checked, its kid.
    pub fn open_checkpoint(&self, jws: &str) -> Result<(Checkpoint, Option<String>), String> {
        let parsed = Unverified::parse(jws.trim()).map_err(|e| format!("is not a JWS ({e})"))?;
        if parsed.header.typ.as_deref() != Some(CHECKPOINT_TYP) {
            return Err(format!("is not of type {CHECKPOINT_TYP}"));
        }
        let (checkpoint, signed_by) = self.open_parsed(&parsed)?;
        Ok((
            checkpoint,
            signed_by
                .err()
                .map(|_| parsed.header.kid.clone().unwrap_or_default()),
        ))
    }

    fn open_parsed(
        &self,
        jws: &Unverified<'_>,
    ) -> Result<(Checkpoint, Result<String, String>), String> {
        let kid = jws.header.kid.clone().unwrap_or_default();
        let (payload, signed_by) = match self.keys.get(&kid) {
            Some(key) => {
                let payload = jws
                    .verify(KeyAlg::EdDSA, key.as_bytes())
                    .map_err(|e| format!("its signature does not verify ({e})"))?;
                (payload.to_vec(), Ok(kid))
            }
            None => (
                jws.untrusted_payload().to_vec(),
                Err(format!(
                    "signature not checked: key {kid} is no longer in the key file"
                )),
            ),
        };
        let checkpoint: Checkpoint = serde_json::from_slice(&payload)
            .map_err(|e| format!("its payload is not a checkpoint ({e})"))?;
        if checkpoint.issuer != self.issuer {
            return Err(format!(
                "it is of issuer {}, this data directory is {}",
                checkpoint.issuer, self.issuer
            ));
        }
        Ok((checkpoint, signed_by))
    }

    async fn check(&self, path: &Path, heads: &[ChainHead]) -> Result<Matched, CheckpointError> {
        let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Read {
            path: path.to_owned(),
            source,
        })?;
        let foreign = |reason: String| CheckpointError::Foreign {
            path: path.to_owned(),
            reason,
        };
        let jws = find_checkpoint(&text).ok_or_else(|| CheckpointError::NotFound {
            path: path.to_owned(),
        })?;
        let (checkpoint, signed_by) = self.open_parsed(&jws).map_err(foreign)?;
        // A store keeps either one unnamed chain (sled) or one named chain per replica.
        let named = self.audit.own_chain().is_some();
        let count = match (&checkpoint.chain, named) {
            (Some(chain), false) => {
                return Err(foreign(format!(
                    "it covers audit chain {chain:?}; this store keeps a single chain"
                )))
            }
            (None, true) => {
                return Err(foreign(
                    "it names no audit chain; this store keeps one chain per replica".into(),
                ))
            }
            // A named chain missing altogether was removed whole: it holds 0 entries.
            (chain, _) => heads
                .iter()
                .find(|h| h.chain == *chain)
                .map_or(0, |h| h.seq),
        };
        let (seq, time) = (checkpoint.seq, checkpoint.time);
        if seq > count {
            return Err(CheckpointError::Truncated {
                path: path.to_owned(),
                seq,
                time,
                count,
            });
        }
        let anchor = self.audit.anchor(checkpoint.chain.as_deref()).await?;
        let found = match seq {
            0 => crate::store::audit::GENESIS_HASH.to_owned(),
            _ if anchor.as_ref().is_some_and(|a| a.seq == seq) => {
                anchor.map(|a| a.hash).unwrap_or_default()
            }
            _ if anchor.as_ref().is_some_and(|a| a.seq > seq) => {
                return Err(CheckpointError::Pruned {
                    path: path.to_owned(),
                    seq,
                    anchor: anchor.map_or(0, |a| a.seq),
                })
            }
            _ => self
                .audit
                .entries(checkpoint.chain.as_deref(), seq - 1, 1)
                .await?
                .first()
                .map(|e| e.hash.clone())
                .unwrap_or_default(),
        };
        if found != checkpoint.head_hash {
            return Err(CheckpointError::Rewritten {
                path: path.to_owned(),
                seq,
                time,
                found,
                recorded: checkpoint.head_hash,
            });
        }
        Ok(Matched {
            path: path.to_owned(),
            checkpoint,
            signed_by,
        })
    }
}

/// Unix seconds as an RFC 3339 UTC time (`2024-05-01T12:00:00Z`); out of range, the number.
pub fn utc(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|| format!("{unix} (Unix seconds)"))
}

/// The first audit checkpoint JWS in `text`: a bare JWS, the JSON `GET /admin/audit/checkpoint`
/// answers, or the server's log line all hold one.
fn find_checkpoint(text: &str) -> Option<Unverified<'_>> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '"' | '=' | ',' | '{' | '}' | ':'))
        .filter(|piece| piece.matches('.').count() == 2)
        .filter_map(|piece| Unverified::parse(piece).ok())
        .find(|jws| jws.header.typ.as_deref() == Some(CHECKPOINT_TYP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::{AuditEvent, Outcome};
    use crate::store::{Durability as _, SledStore};

    fn keys() -> KeyFile {
        let mut file = KeyFile::default();
        file.add_new(0, 0);
        file
    }

    fn store_with(n: u64) -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for i in 0..n {
            store
                .append(AuditEvent::new("e", Outcome::Success), i)
                .unwrap();
        }
        store.flush().unwrap();
        (dir, store)
    }

    async fn checkpoint_at(store: &SledStore, seq: u64) -> Checkpoint {
        let head_hash = store.entries(None, seq - 1, 1).await.unwrap()[0]
            .hash
            .clone();
        Checkpoint {
            issuer: "https://as.example".into(),
            seq,
            head_hash,
            time: 7,
            chain: None,
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn checkpoints_in_any_wrapping_match_an_intact_chain() {
        let file = keys();
        let ring = KeyRing::build(&file, 1).unwrap();
        let (dir, store) = store_with(5);
        let cp = checkpoint_at(&store, 5).await;
        let jws = cp.sign(&ring);
        let bare = write(dir.path(), "bare", &format!("{jws}\n"));
        let json = write(
            dir.path(),
            "json",
            &serde_json::json!({"checkpoint": jws, "seq": 5}).to_string(),
        );
        let logged = write(
            dir.path(),
            "log",
            &format!("2024-01-01T00:00:00Z  INFO audit checkpoint seq=5 checkpoint={jws}"),
        );
        let v = Verifier::new(&store, &file, "https://as.example".into()).unwrap();
        let (count, matched) = v.verify(&[bare, json, logged]).await.unwrap();
        assert_eq!((count, matched.len()), (5, 3));
        assert!(matched.iter().all(|m| m.signed_by.is_ok()));
    }

    #[tokio::test]
    async fn a_forged_or_foreign_checkpoint_is_refused() {
        let file = keys();
        let ring = KeyRing::build(&file, 1).unwrap();
        let (dir, store) = store_with(3);
        let v = Verifier::new(&store, &file, "https://as.example".into()).unwrap();
        let jws = checkpoint_at(&store, 3).await.sign(&ring);
        // Payload swapped, signature kept.
        let (head, rest) = jws.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        let forged_payload = crate::oauth::jws::b64(
            &serde_json::to_vec(&Checkpoint {
                seq: 2,
                ..checkpoint_at(&store, 3).await
            })
            .unwrap(),
        );
        let forged = write(
            dir.path(),
            "forged",
            &format!("{head}.{forged_payload}.{sig}"),
        );
        let err = v.verify(&[forged]).await.unwrap_err().to_string();
        assert!(err.contains("signature does not verify"), "{err}");
        let other = Checkpoint {
            issuer: "https://elsewhere.example".into(),
            ..checkpoint_at(&store, 3).await
        };
        let other = write(dir.path(), "other", &other.sign(&ring));
        let err = v.verify(&[other]).await.unwrap_err().to_string();
        assert!(err.contains("elsewhere"), "{err}");
        let chained = Checkpoint {
            chain: Some("replica-2".into()),
            ..checkpoint_at(&store, 3).await
        };
        let chained = write(dir.path(), "chained", &chained.sign(&ring));
        let err = v.verify(&[chained]).await.unwrap_err().to_string();
        assert!(err.contains("replica-2"), "{err}");
        let none = write(dir.path(), "none", "hello");
        assert!(matches!(
            v.verify(&[none]).await.unwrap_err(),
            CheckpointError::NotFound { .. }
        ));
    }

    #[tokio::test]
    async fn a_checkpoint_ahead_of_the_chain_or_off_it_names_itself() {
        let file = keys();
        let ring = KeyRing::build(&file, 1).unwrap();
        let (dir, store) = store_with(4);
        let v = Verifier::new(&store, &file, "https://as.example".into()).unwrap();
        let ahead = Checkpoint {
            seq: 9,
            ..checkpoint_at(&store, 4).await
        };
        let ahead = write(dir.path(), "ahead.jws", &ahead.sign(&ring));
        let err = v.verify(&[ahead]).await.unwrap_err().to_string();
        assert!(
            err.contains("ahead.jws") && err.contains("entries 5..=9 were removed"),
            "{err}"
        );
        let off = Checkpoint {
            head_hash: "ab".repeat(32),
            ..checkpoint_at(&store, 4).await
        };
        let off = write(dir.path(), "off.jws", &off.sign(&ring));
        let err = v.verify(&[off]).await.unwrap_err().to_string();
        assert!(
            err.contains("off.jws") && err.contains("rewritten"),
            "{err}"
        );
    }
}

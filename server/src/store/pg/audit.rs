//! The audit log in PostgreSQL: one hash chain per replica (its `chain`, kept in the replica's
//! data directory), so appending never waits on another replica. Appending chains the entry in
//! memory; the group committer's flush writes every pending entry and the chain's head in one
//! transaction. `audit verify` checks every chain and names the first broken entry of each.
//!
//! Rows are written in the compact form (format 2, column `record`: body then 32-byte hash);
//! rows from before it keep their JSON (format 1, column `entry`) and still verify. Pruning
//! deletes a chain's oldest rows and upserts its anchor (`audit_anchors`) in one transaction.

use std::sync::Mutex;

use deadpool_postgres::Pool;

use super::{db, from_i64, pool_err, to_i64, PgStore};
use crate::store::audit::{
    seal_compact, verify_chain, Anchor, AuditEntry, AuditEvent, ChainBreak, ChainHead, Stored,
    GENESIS_HASH,
};
use crate::store::{AuditLog, StoreError};

/// This replica's chain: its head and the entries not yet written.
pub(super) struct PgAudit {
    chain: String,
    state: Mutex<ChainState>,
}

/// An entry waiting to be written: seq, time, and the stored record (body ‖ hash).
struct Pending {
    seq: u64,
    time_ms: u64,
    record: Vec<u8>,
}

struct ChainState {
    head: (u64, String),
    pending: Vec<Pending>,
    /// The head as last committed to the database: what a checkpoint may vouch for.
    durable: (u64, String),
}

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt {
        what: "audit entry",
        reason,
    }
}

/// A row as stored: the JSON of a format 1 entry, or a format 2 record (body ‖ hash).
fn stored(entry: Option<String>, record: Option<Vec<u8>>) -> Stored {
    match (entry, record) {
        (_, Some(mut record)) if record.len() >= 32 => {
            let hash = record.split_off(record.len() - 32);
            let mut raw = [0u8; 32];
            raw.copy_from_slice(&hash);
            Stored::Compact {
                body: record,
                hash: raw,
            }
        }
        (Some(text), _) => Stored::Json(text.into_bytes()),
        // Neither: left for the chain check to name as undecodable.
        (None, record) => Stored::Json(record.unwrap_or_default()),
    }
}

impl PgAudit {
    pub(super) async fn open(pool: &Pool, chain: &str) -> Result<Self, StoreError> {
        let conn = pool.get().await.map_err(pool_err)?;
        let head = conn
            .query_opt(
                "SELECT seq, hash FROM audit_heads WHERE chain = $1",
                &[&chain],
            )
            .await
            .map_err(db("read the audit head"))?
            .map(|r| (from_i64(r.get(0)), r.get::<_, String>(1)))
            .unwrap_or((0, GENESIS_HASH.to_owned()));
        Ok(PgAudit {
            chain: chain.to_owned(),
            state: Mutex::new(ChainState {
                durable: head.clone(),
                head,
                pending: Vec::new(),
            }),
        })
    }

    pub(super) fn chain(&self) -> &str {
        &self.chain
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChainState> {
        // Changed only by whole assignments and pushes: a panicking holder leaves it whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the pending entries and the head in one transaction. On failure they stay
    /// pending (later entries chain onto them) and the next flush tries again. Whether there
    /// was anything to write.
    pub(super) async fn write_pending(&self, pool: &Pool) -> Result<bool, StoreError> {
        let (entries, head) = {
            let mut state = self.lock();
            if state.pending.is_empty() {
                return Ok(false);
            }
            (std::mem::take(&mut state.pending), state.head.clone())
        };
        let result = write(pool, &self.chain, &entries, &head).await;
        if result.is_ok() {
            self.lock().durable = head;
        } else {
            let mut state = self.lock();
            let later = std::mem::take(&mut state.pending);
            state.pending = entries;
            state.pending.extend(later);
        }
        result.map(|()| true)
    }
}

async fn write(
    pool: &Pool,
    chain: &str,
    entries: &[Pending],
    head: &(u64, String),
) -> Result<(), StoreError> {
    let mut conn = pool.get().await.map_err(pool_err)?;
    let tx = conn
        .transaction()
        .await
        .map_err(db("write the audit log"))?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO audit_entries (chain, seq, record, time_ms) VALUES ($1, $2, $3, $4)",
        )
        .await
        .map_err(db("write the audit log"))?;
    for entry in entries {
        // The stored bytes are what the hash covers.
        tx.execute(
            &insert,
            &[
                &chain,
                &to_i64(entry.seq),
                &entry.record,
                &to_i64(entry.time_ms),
            ],
        )
        .await
        .map_err(db("write the audit log"))?;
    }
    tx.execute(
        "INSERT INTO audit_heads (chain, seq, hash) VALUES ($1, $2, $3)
         ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
        &[&chain, &to_i64(head.0), &head.1],
    )
    .await
    .map_err(db("write the audit head"))?;
    tx.commit().await.map_err(db("write the audit log"))
}

#[async_trait::async_trait]
impl AuditLog for PgStore {
    fn append(&self, event: AuditEvent, time_ms: u64) -> Result<u64, StoreError> {
        let mut state = self.audit.lock();
        let seq = state.head.0 + 1;
        let prev = std::mem::take(&mut state.head.1);
        let (entry, mut record, hash) =
            seal_compact(seq, time_ms, Some(self.audit.chain.clone()), event, prev);
        record.extend_from_slice(&hash);
        state.head = (seq, entry.hash);
        state.pending.push(Pending {
            seq,
            time_ms,
            record,
        });
        Ok(seq)
    }

    async fn entries(
        &self,
        chain: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let chain = chain.unwrap_or(&self.audit.chain);
        let mut prev = self
            .anchor(Some(chain))
            .await?
            .map_or_else(|| GENESIS_HASH.to_owned(), |a| a.hash);
        // Entry `after` itself too, when present, for its hash.
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT seq, entry, record FROM audit_entries WHERE chain = $1 AND seq >= $2
                 ORDER BY seq LIMIT $3",
                &[
                    &chain,
                    &to_i64(after),
                    &i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1),
                ],
            )
            .await
            .map_err(db("read the audit log"))?;
        let mut out = Vec::new();
        for r in &rows {
            let seq = from_i64(r.get(0));
            let stored = stored(r.get(1), r.get(2));
            if seq <= after {
                if let Some((_, hash)) = stored.time_and_hash() {
                    prev = hash;
                }
                continue;
            }
            if out.len() >= limit {
                break;
            }
            let entry = stored.decode(seq, Some(chain), &prev).map_err(corrupt)?;
            prev.clone_from(&entry.hash);
            out.push(entry);
        }
        Ok(out)
    }

    async fn chains(&self) -> Result<Vec<ChainHead>, StoreError> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT chain, seq, hash FROM audit_heads ORDER BY chain",
                &[],
            )
            .await
            .map_err(db("read the audit heads"))?;
        Ok(rows
            .iter()
            .map(|r| ChainHead {
                chain: Some(r.get(0)),
                seq: from_i64(r.get(1)),
                hash: r.get(2),
            })
            .collect())
    }

    async fn verify(&self) -> Result<Result<u64, Vec<ChainBreak>>, StoreError> {
        let mut total = 0;
        let mut breaks = Vec::new();
        let names: Vec<String> = self
            .conn()
            .await?
            .query(
                "SELECT chain FROM audit_heads UNION SELECT DISTINCT chain FROM audit_entries",
                &[],
            )
            .await
            .map_err(db("read the audit chains"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let heads = self.chains().await?;
        for chain in names {
            let head = heads
                .iter()
                .find(|h| h.chain.as_deref() == Some(chain.as_str()))
                .map(|h| (h.seq, h.hash.clone()));
            let anchor = self.anchor(Some(&chain)).await?.map(|a| (a.seq, a.hash));
            let rows = self
                .conn()
                .await?
                .query(
                    "SELECT seq, entry, record FROM audit_entries WHERE chain = $1 ORDER BY seq",
                    &[&chain],
                )
                .await
                .map_err(db("read the audit log"))?;
            let entries = rows
                .iter()
                .map(|r| (from_i64(r.get(0)), stored(r.get(1), r.get(2))));
            match verify_chain(entries, head, anchor, Some(&chain)) {
                Ok(n) => total += n,
                Err(e) => breaks.push(ChainBreak {
                    chain: Some(chain),
                    ..e
                }),
            }
        }
        Ok(if breaks.is_empty() {
            Ok(total)
        } else {
            Err(breaks)
        })
    }

    fn durable_head(&self) -> Result<crate::store::audit::Head, StoreError> {
        Ok(self.audit.lock().durable.clone())
    }

    fn own_chain(&self) -> Option<String> {
        Some(self.audit.chain.clone())
    }

    async fn anchor(&self, chain: Option<&str>) -> Result<Option<Anchor>, StoreError> {
        let chain = chain.unwrap_or(&self.audit.chain);
        Ok(self
            .conn()
            .await?
            .query_opt(
                "SELECT seq, hash, checkpoint FROM audit_anchors WHERE chain = $1",
                &[&chain],
            )
            .await
            .map_err(db("read the audit anchor"))?
            .map(|r| Anchor {
                seq: from_i64(r.get(0)),
                hash: r.get(1),
                checkpoint: r.get(2),
            }))
    }

    async fn prune(
        &self,
        upto: u64,
        before_ms: u64,
        sign: &crate::store::SignAnchor,
    ) -> Result<Option<Anchor>, StoreError> {
        let chain = self.audit.chain.as_str();
        let head = self.audit.lock().durable.0;
        let mut conn = self.conn().await?;
        // The oldest entry too young to go bounds the prefix, as do the export and the head
        // (the newest entry stays, beside the head record).
        let young: Option<i64> = conn
            .query_one(
                "SELECT min(seq) FROM audit_entries WHERE chain = $1 AND time_ms >= $2",
                &[&chain, &to_i64(before_ms)],
            )
            .await
            .map_err(db("read the audit log"))?
            .get(0);
        let last = upto
            .min(head.saturating_sub(1))
            .min(young.map_or(u64::MAX, |y| from_i64(y).saturating_sub(1)));
        let row = conn
            .query_opt(
                "SELECT entry, record FROM audit_entries WHERE chain = $1 AND seq = $2",
                &[&chain, &to_i64(last)],
            )
            .await
            .map_err(db("read the audit log"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (_, hash) = stored(row.get(0), row.get(1))
            .time_and_hash()
            .ok_or_else(|| corrupt(format!("entry {last} does not decode")))?;
        let checkpoint = sign(last, &hash);
        let anchor = Anchor {
            seq: last,
            checkpoint,
            hash,
        };
        let tx = conn
            .transaction()
            .await
            .map_err(db("prune the audit log"))?;
        tx.execute(
            "DELETE FROM audit_entries WHERE chain = $1 AND seq <= $2",
            &[&chain, &to_i64(last)],
        )
        .await
        .map_err(db("prune the audit log"))?;
        tx.execute(
            "INSERT INTO audit_anchors (chain, seq, hash, checkpoint) VALUES ($1, $2, $3, $4)
             ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash,
             checkpoint = EXCLUDED.checkpoint",
            &[
                &chain,
                &to_i64(anchor.seq),
                &anchor.hash,
                &anchor.checkpoint,
            ],
        )
        .await
        .map_err(db("write the audit anchor"))?;
        tx.commit().await.map_err(db("prune the audit log"))?;
        Ok(Some(anchor))
    }
}

//! The audit log in PostgreSQL: one hash chain per replica (its `chain`, kept in the replica's
//! data directory), so appending never waits on another replica. Appending chains the entry in
//! memory; the group committer's flush writes every pending entry and the chain's head in one
//! transaction. `audit verify` checks every chain and names the first broken entry of each.

use std::sync::Mutex;

use deadpool_postgres::Pool;

use super::{db, from_i64, pool_err, to_i64, PgStore};
use crate::store::audit::{
    verify_chain, AuditEntry, AuditEvent, ChainBreak, ChainHead, ChainedEvent, GENESIS_HASH,
};
use crate::store::{AuditLog, StoreError};

/// This replica's chain: its head and the entries not yet written.
pub(super) struct PgAudit {
    chain: String,
    state: Mutex<ChainState>,
}

struct ChainState {
    head: (u64, String),
    pending: Vec<AuditEntry>,
    /// The head as last committed to the database: what a checkpoint may vouch for.
    durable: (u64, String),
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
    entries: &[AuditEntry],
    head: &(u64, String),
) -> Result<(), StoreError> {
    let mut conn = pool.get().await.map_err(pool_err)?;
    let tx = conn
        .transaction()
        .await
        .map_err(db("write the audit log"))?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO audit_entries (chain, seq, entry, time_ms) VALUES ($1, $2, $3, $4)",
        )
        .await
        .map_err(db("write the audit log"))?;
    for entry in entries {
        // The stored text is what the hash covers: the entry as serialised, byte for byte.
        let text = serde_json::to_string(entry).unwrap_or_default();
        tx.execute(
            &insert,
            &[
                &chain,
                &to_i64(entry.body.seq),
                &text,
                &to_i64(entry.body.time_ms),
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
        let entry = ChainedEvent {
            seq,
            time_ms,
            chain: Some(self.audit.chain.clone()),
            event,
            prev_hash: state.head.1.clone(),
        }
        .seal();
        state.head = (seq, entry.hash.clone());
        state.pending.push(entry);
        Ok(seq)
    }

    async fn entries(
        &self,
        chain: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let chain = chain.unwrap_or(&self.audit.chain);
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT entry FROM audit_entries WHERE chain = $1 AND seq > $2
                 ORDER BY seq LIMIT $3",
                &[
                    &chain,
                    &to_i64(after),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(db("read the audit log"))?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get(0)).map_err(|source| StoreError::Decode {
                    what: "audit entry",
                    source,
                })
            })
            .collect()
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
            let rows = self
                .conn()
                .await?
                .query(
                    "SELECT seq, entry FROM audit_entries WHERE chain = $1 ORDER BY seq",
                    &[&chain],
                )
                .await
                .map_err(db("read the audit log"))?;
            let entries = rows
                .iter()
                .map(|r| (from_i64(r.get(0)), r.get::<_, String>(1).into_bytes()));
            match verify_chain(entries, head) {
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
}

//! Audit export: every durable audit entry, appended to JSON-lines segment files in
//! `audit_export_dir` that a log shipper (Vector, Fluent Bit, rsync) carries off the machine;
//! and retention, which prunes the database only behind the export.
//!
//! Off the request path: one thread reads entries after the last exported seq, up to the
//! chain's *durable* head (never an entry a crash could still take back), appends them to the
//! open segment and fsyncs it. A segment is closed when it reaches `max_bytes` or `max_age`:
//! a signed checkpoint line (the JWS of [`crate::checkpoint`], over its last entry) is added,
//! it is gzipped into `PREFIX-FIRST-LAST.jsonl.gz` (written to a temporary name, fsynced,
//! renamed, the directory fsynced) and the open file removed.
//!
//! What a crash (kill -9, power loss) can lose from the files: nothing acknowledged. A request
//! is answered only once its entry is durable in the database, and the database keeps every
//! entry until a *closed* segment holds it, so on restart the exporter resumes from the last
//! entry the files hold and writes the rest again. What it does to the files: the open
//! segment may end in a torn line (a write cut short) — it is cut back to its last whole
//! entry at start; a segment being closed may leave a temporary file (removed) or both the
//! closed and the open file (the open one is removed). Until restart the files lag the
//! database by at most one poll interval plus the entries of one batch.

mod segment;
pub mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::audit::{AuditEntry, Head, GENESIS_HASH};
use crate::store::{AuditLog, StoreError};

pub use segment::{prefix as segment_prefix, SegmentName, CHECKPOINT_KEY};

/// Default size at which a segment is closed: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default age at which a segment is closed: one hour.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Most entries read from the store per step.
const BATCH: usize = 4096;
/// How long the exporter sleeps when it has caught up.
const POLL: Duration = Duration::from_millis(250);
/// Longest pause between pruning passes.
const PRUNE_EVERY_MAX: Duration = Duration::from_secs(60);

/// Export settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// The directory segments are written to.
    pub dir: PathBuf,
    /// Size at which a segment is closed (bytes of JSON before compression).
    pub max_bytes: u64,
    /// Age (from its first entry) at which a segment is closed.
    pub max_age: Duration,
    /// Entries older than this are pruned from the database once a closed segment holds
    /// them; `None`: never.
    pub retention: Option<Duration>,
}

/// What went wrong exporting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A file operation in the export directory failed.
    #[error("audit export: cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading the audit log failed.
    #[error("audit export: {0}")]
    Store(#[from] StoreError),
    /// The export directory holds entries the database does not, or another chain.
    #[error("audit export: {0}")]
    Diverged(String),
}

/// Signs a checkpoint over `(seq, hash)` of this server's chain: a compact JWS.
pub type Signer = Arc<dyn Fn(u64, &str) -> String + Send + Sync>;

/// Progress of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Entries written.
    pub exported: u64,
    /// Segments closed.
    pub closed: u64,
}

/// The exporter of one chain (this process's own).
pub struct Exporter {
    settings: ExportSettings,
    audit: Arc<dyn AuditLog>,
    chain: Option<String>,
    sign: Signer,
    writer: segment::Writer,
    /// The last entry the files hold (fsynced).
    last: Head,
    /// The last entry a closed segment holds: what pruning may remove up to.
    closed_upto: u64,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("dir", &self.settings.dir)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Open the export directory (created if missing), repair what a crash left, and find
    /// where to resume.
    pub async fn open(
        settings: ExportSettings,
        audit: Arc<dyn AuditLog>,
        sign: Signer,
    ) -> Result<Self, ExportError> {
        let chain = audit.own_chain();
        let prefix = segment::prefix(chain.as_deref());
        let (writer, resumed) = segment::Writer::open(&settings.dir, &prefix)?;
        let durable = audit.durable_head()?.0;
        let last = match resumed.last {
            Some(last) => last,
            None => match audit.anchor(None).await? {
                Some(anchor) => {
                    tracing::warn!(
                        dir = %settings.dir.display(),
                        pruned_upto = anchor.seq,
                        "the audit export directory is empty but the database pruned entries 1..={} long ago; exporting from {}",
                        anchor.seq,
                        anchor.seq + 1
                    );
                    (anchor.seq, anchor.hash)
                }
                None => (0, GENESIS_HASH.to_owned()),
            },
        };
        if last.0 > durable {
            return Err(ExportError::Diverged(format!(
                "{} holds entries up to {} but the audit log ends at {durable} (another server's export directory, or a database restored from an older backup?)",
                settings.dir.display(),
                last.0
            )));
        }
        Ok(Exporter {
            closed_upto: resumed.closed_upto,
            settings,
            audit,
            chain,
            sign,
            writer,
            last,
        })
    }

    /// The last entry the files hold.
    pub fn last(&self) -> &Head {
        &self.last
    }

    /// The last entry a closed segment holds.
    pub fn closed_upto(&self) -> u64 {
        self.closed_upto
    }

    /// Export what is durable and not yet exported (one batch), closing segments that are
    /// full or old. `now_ms`: Unix milliseconds.
    pub async fn step(&mut self, now_ms: u64) -> Result<Progress, ExportError> {
        let mut progress = Progress::default();
        let durable = self.audit.durable_head()?.0;
        if durable > self.last.0 {
            let entries: Vec<AuditEntry> = self
                .audit
                .entries(self.chain.as_deref(), self.last.0, BATCH)
                .await?
                .into_iter()
                .filter(|e| e.body.seq <= durable)
                .collect();
            for entry in &entries {
                if entry.body.seq != self.last.0 + 1 || entry.body.prev_hash != self.last.1 {
                    return Err(ExportError::Diverged(format!(
                        "entry {} of the audit log does not follow entry {} of {} (another server's export directory?)",
                        entry.body.seq,
                        self.last.0,
                        self.settings.dir.display()
                    )));
                }
                self.writer.append(entry)?;
                self.last = (entry.body.seq, entry.hash.clone());
                progress.exported += 1;
                if self.writer.bytes() >= self.settings.max_bytes {
                    self.close(now_ms)?;
                    progress.closed += 1;
                }
            }
            self.writer.sync()?;
        }
        let old = self
            .writer
            .first_time_ms()
            .is_some_and(|t| now_ms.saturating_sub(t) >= self.settings.max_age.as_millis() as u64);
        if old {
            self.close(now_ms)?;
            progress.closed += 1;
        }
        Ok(progress)
    }

    fn close(&mut self, now_ms: u64) -> Result<(), ExportError> {
        let jws = (self.sign)(self.last.0, &self.last.1);
        if let Some(last) = self.writer.close(&jws, now_ms)? {
            self.closed_upto = last;
        }
        Ok(())
    }

    /// Prune the database behind the export: entries older than the retention that a closed
    /// segment holds. Returns the last pruned seq.
    pub async fn prune(&self, now_ms: u64) -> Result<Option<u64>, ExportError> {
        let Some(retention) = self.settings.retention else {
            return Ok(None);
        };
        let before = now_ms.saturating_sub(retention.as_millis() as u64);
        let sign = self.sign.clone();
        let anchor = self
            .audit
            .prune(self.closed_upto, before, &move |seq, hash| sign(seq, hash))
            .await?;
        Ok(anchor.map(|a| a.seq))
    }
}

/// The running exporter: a thread of its own (file writes and fsyncs never hold a request
/// worker). Dropping the handle does not stop it; [`ExportTask::stop`] does.
#[derive(Debug)]
pub struct ExportTask {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExportTask {
    /// Start exporting (and pruning, with a retention) on a thread, using `rt` for store calls.
    pub fn start(exporter: Exporter, rt: tokio::runtime::Handle) -> Result<Self, ExportError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let dir = exporter.settings.dir.clone();
        let thread = std::thread::Builder::new()
            .name("audit-export".into())
            .spawn(move || run(exporter, &rt, &flag))
            .map_err(|source| ExportError::Io {
                what: "start the exporter thread for",
                path: dir,
                source,
            })?;
        Ok(ExportTask {
            stop,
            thread: Some(thread),
        })
    }

    /// Export what is durable now, then stop.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut exporter: Exporter, rt: &tokio::runtime::Handle, stop: &AtomicBool) {
    let prune_every = exporter
        .settings
        .retention
        .map(|r| (r / 10).clamp(Duration::from_secs(1), PRUNE_EVERY_MAX));
    let mut last_prune = Instant::now();
    let mut failing = false;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let now_ms = crate::unix_now_ms();
        match rt.block_on(exporter.step(now_ms)) {
            Ok(p) => {
                if failing {
                    tracing::info!("audit export works again");
                    failing = false;
                }
                if p.closed > 0 {
                    tracing::debug!(upto = exporter.closed_upto, "audit export segment closed");
                }
                if p.exported as usize >= BATCH && !stopping {
                    continue;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "audit export failing; entries stay in the database until it works");
                    failing = true;
                }
            }
        }
        if stopping {
            return;
        }
        if prune_every.is_some_and(|every| last_prune.elapsed() >= every) {
            last_prune = Instant::now();
            match rt.block_on(exporter.prune(now_ms)) {
                Ok(Some(seq)) => tracing::debug!(upto = seq, "audit entries pruned"),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "audit pruning failed"),
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests;

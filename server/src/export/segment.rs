//! Segment files in the export directory: their names, the open segment (appended, fsynced,
//! cut back to its last whole line after a crash) and closing one (checkpoint line, gzip,
//! atomic rename).
//!
//! Names: the open segment is `PREFIX-FIRST.jsonl`, a closed one `PREFIX-FIRST-LAST.jsonl.gz`,
//! FIRST and LAST being 20-digit sequence numbers (so names sort in chain order). PREFIX is
//! `audit` for the embedded store's single chain, `audit-CHAIN` for a replica's chain.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use super::ExportError;
use crate::store::audit::{AuditEntry, Head};

/// The key of a segment's closing line: `{"checkpoint":"<JWS>"}`.
pub const CHECKPOINT_KEY: &str = "checkpoint";

const OPEN_EXT: &str = ".jsonl";
const CLOSED_EXT: &str = ".jsonl.gz";
const TMP_EXT: &str = ".tmp";
/// Bytes read at a time from a segment being compressed.
const COPY_BUFFER: usize = 256 * 1024;

/// The file-name prefix of a chain's segments.
pub fn prefix(chain: Option<&str>) -> String {
    match chain {
        None => "audit".to_owned(),
        Some(c) => format!("audit-{c}"),
    }
}

/// A segment file's name, parsed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    /// The chain's prefix.
    pub prefix: String,
    /// Its first entry.
    pub first: u64,
    /// Its last entry, for a closed segment; `None` for the open one.
    pub last: Option<u64>,
}

impl SegmentName {
    /// Parse a file name; `None` for anything that is not a segment.
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(stem) = name.strip_suffix(CLOSED_EXT) {
            let mut parts = stem.rsplitn(3, '-');
            let last = parts.next()?;
            let first = parts.next()?;
            let prefix = parts.next()?;
            return Some(SegmentName {
                prefix: prefix.to_owned(),
                first: seq_part(first)?,
                last: Some(seq_part(last)?),
            });
        }
        let stem = name.strip_suffix(OPEN_EXT)?;
        let (prefix, first) = stem.rsplit_once('-')?;
        Some(SegmentName {
            prefix: prefix.to_owned(),
            first: seq_part(first)?,
            last: None,
        })
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match self.last {
            None => format!("{}-{:020}{OPEN_EXT}", self.prefix, self.first),
            Some(last) => format!(
                "{}-{:020}-{:020}{CLOSED_EXT}",
                self.prefix, self.first, last
            ),
        }
    }
}

fn seq_part(text: &str) -> Option<u64> {
    (text.len() == 20 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Every segment of the directory, sorted by prefix then first entry (closed before open).
pub fn list(dir: &Path) -> Result<Vec<SegmentName>, std::io::Error> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let name = item?.file_name();
        if let Some(seg) = name.to_str().and_then(SegmentName::parse) {
            out.push(seg);
        }
    }
    out.sort_by(|a, b| {
        (&a.prefix, a.first, a.last.is_none()).cmp(&(&b.prefix, b.first, b.last.is_none()))
    });
    Ok(out)
}

/// A segment's text: gunzipped when closed.
pub fn read_text(path: &Path, closed: bool) -> Result<Vec<u8>, std::io::Error> {
    let file = File::open(path)?;
    let mut out = Vec::new();
    if closed {
        MultiGzDecoder::new(file).read_to_end(&mut out)?;
    } else {
        BufReader::new(file).read_to_end(&mut out)?;
    }
    Ok(out)
}

/// What the directory said at start.
pub(super) struct Resumed {
    /// The last entry the files hold.
    pub last: Option<Head>,
    /// The last entry a closed segment holds (0: none).
    pub closed_upto: u64,
}

/// The open segment and where segments go.
pub(super) struct Writer {
    dir: PathBuf,
    prefix: String,
    open: Option<Open>,
}

struct Open {
    name: SegmentName,
    file: File,
    bytes: u64,
    first_time_ms: u64,
    /// Its last entry's seq.
    last: u64,
    /// Lines appended since the last sync, not yet written to the file.
    buffer: Vec<u8>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ExportError + 'a {
    move |source| ExportError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl Writer {
    /// Open the directory, repair what a crash left, and say where the files end.
    pub fn open(dir: &Path, prefix: &str) -> Result<(Self, Resumed), ExportError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        for item in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let path = item.map_err(io("list", dir))?.path();
            let ours = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(TMP_EXT));
            if ours {
                // A segment whose closing was cut short: its open file is still there.
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
            }
        }
        let segments: Vec<SegmentName> = list(dir)
            .map_err(io("list", dir))?
            .into_iter()
            .filter(|s| s.prefix == prefix)
            .collect();
        let closed_upto = segments.iter().filter_map(|s| s.last).max().unwrap_or(0);
        let mut last = None;
        let mut open = None;
        for seg in &segments {
            let path = dir.join(seg.file_name());
            if seg.last.is_some() {
                continue;
            }
            if seg.first <= closed_upto {
                // Closed and renamed before the crash, not yet removed.
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                continue;
            }
            if open.is_some() {
                return Err(ExportError::Diverged(format!(
                    "{} holds more than one open segment of {prefix}",
                    dir.display()
                )));
            }
            let (file, kept, tail) = repair(&path)?;
            if let Some((entry, first_time_ms)) = tail {
                last = Some((entry.body.seq, entry.hash.clone()));
                open = Some(Open {
                    name: seg.clone(),
                    file,
                    bytes: kept,
                    first_time_ms,
                    last: entry.body.seq,
                    buffer: Vec::new(),
                });
            } else {
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
            }
        }
        if last.is_none() && closed_upto > 0 {
            let seg = segments
                .iter()
                .rfind(|s| s.last == Some(closed_upto))
                .cloned()
                .ok_or_else(|| ExportError::Diverged("no last closed segment".into()))?;
            let path = dir.join(seg.file_name());
            let text = read_text(&path, true).map_err(io("read", &path))?;
            let entry = text
                .split(|b| *b == b'\n')
                .rev()
                .find_map(|l| serde_json::from_slice::<AuditEntry>(l).ok())
                .ok_or_else(|| {
                    ExportError::Diverged(format!("{} holds no entry", path.display()))
                })?;
            last = Some((entry.body.seq, entry.hash));
        }
        let writer = Writer {
            dir: dir.to_owned(),
            prefix: prefix.to_owned(),
            open,
        };
        Ok((writer, Resumed { last, closed_upto }))
    }

    /// Bytes in the open segment.
    pub fn bytes(&self) -> u64 {
        self.open
            .as_ref()
            .map_or(0, |o| o.bytes + o.buffer.len() as u64)
    }

    /// The time of the open segment's first entry.
    pub fn first_time_ms(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.first_time_ms)
    }

    /// Append an entry (written at the next sync or close).
    pub fn append(&mut self, entry: &AuditEntry) -> Result<(), ExportError> {
        if self.open.is_none() {
            let name = SegmentName {
                prefix: self.prefix.clone(),
                first: entry.body.seq,
                last: None,
            };
            let path = self.dir.join(name.file_name());
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(io("create", &path))?;
            // The new name must survive a crash too.
            sync_dir(&self.dir)?;
            self.open = Some(Open {
                name,
                file,
                bytes: 0,
                first_time_ms: entry.body.time_ms,
                last: entry.body.seq,
                buffer: Vec::new(),
            });
        }
        if let Some(open) = &mut self.open {
            open.last = entry.body.seq;
            // An entry is strings and integers: it always serialises.
            serde_json::to_writer(&mut open.buffer, entry).unwrap_or_default();
            open.buffer.push(b'\n');
        }
        Ok(())
    }

    /// Write and fsync what was appended.
    pub fn sync(&mut self) -> Result<(), ExportError> {
        let Some(open) = &mut self.open else {
            return Ok(());
        };
        if open.buffer.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(open.name.file_name());
        open.file
            .write_all(&open.buffer)
            .and_then(|()| open.file.sync_data())
            .map_err(io("write", &path))?;
        open.bytes += open.buffer.len() as u64;
        open.buffer.clear();
        Ok(())
    }

    /// Close the open segment: its entries, then the checkpoint line, gzipped under its final
    /// name. Returns its last entry's seq (`None`: nothing was open).
    pub fn close(&mut self, checkpoint: &str, _now_ms: u64) -> Result<Option<u64>, ExportError> {
        self.sync()?;
        let Some(open) = self.open.take() else {
            return Ok(None);
        };
        let path = self.dir.join(open.name.file_name());
        drop(open.file);
        let last = open.last;
        let closed = SegmentName {
            last: Some(last),
            ..open.name.clone()
        };
        let final_path = self.dir.join(closed.file_name());
        let tmp = self.dir.join(format!("{}{TMP_EXT}", closed.file_name()));
        let line = serde_json::json!({ CHECKPOINT_KEY: checkpoint }).to_string();
        // Streamed through in pieces: a segment is up to `max_bytes` (64 MiB by default), and
        // reading it whole cost the exporter more (fresh pages, zeroed) than compressing it.
        let source = File::open(&path).map_err(io("read", &path))?;
        let written = File::create(&tmp).and_then(|file| {
            // The fastest level: the export runs beside the token endpoint on the same cores, and
            // a shipper may compress again anyway.
            let mut gz = GzEncoder::new(file, flate2::Compression::fast());
            std::io::copy(&mut BufReader::with_capacity(COPY_BUFFER, source), &mut gz)?;
            gz.write_all(line.as_bytes())?;
            gz.write_all(b"\n")?;
            gz.finish()?.sync_all()
        });
        written.map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &final_path).map_err(io("rename", &tmp))?;
        sync_dir(&self.dir)?;
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
        sync_dir(&self.dir)?;
        Ok(Some(last))
    }
}

/// Cut an open segment back to its last whole entry line. Returns the file (positioned at its
/// end), its kept length, and its last entry with the first entry's time.
#[allow(clippy::type_complexity)]
fn repair(path: &Path) -> Result<(File, u64, Option<(AuditEntry, u64)>), ExportError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    let mut kept = 0u64;
    let mut first_time = None;
    let mut last = None;
    {
        let mut reader = BufReader::new(&mut file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(io("read", path))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(&line) else {
                break;
            };
            first_time.get_or_insert(entry.body.time_ms);
            last = Some(entry);
            kept += n as u64;
        }
    }
    let len = file.metadata().map_err(io("read", path))?.len();
    if len != kept {
        tracing::warn!(
            file = %path.display(),
            cut = len - kept,
            "audit export segment ended in a torn write (a crash); cut back to its last whole entry, the rest is exported again"
        );
        file.set_len(kept).map_err(io("truncate", path))?;
        file.sync_all().map_err(io("truncate", path))?;
    }
    file.seek(SeekFrom::Start(kept)).map_err(io("seek", path))?;
    Ok((file, kept, last.zip(first_time)))
}

fn sync_dir(dir: &Path) -> Result<(), ExportError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_chain_order() {
        for name in [
            SegmentName {
                prefix: "audit".into(),
                first: 1,
                last: Some(99),
            },
            SegmentName {
                prefix: "audit-replica-7f3a".into(),
                first: 100,
                last: None,
            },
        ] {
            assert_eq!(SegmentName::parse(&name.file_name()), Some(name));
        }
        assert_eq!(SegmentName::parse("audit-12.jsonl"), None);
        assert_eq!(SegmentName::parse("notes.txt"), None);
    }
}

//! The audit log's entries on disk: append-only files beside sled, removed whole when pruned.
//!
//! sled rewrites its pages in a log of its own and reclaims the space of removed records only
//! when it cleans that log, so an audit log that grows at one end and is pruned at the other kept
//! growing its files long after the live entries stopped growing. Here each group commit's entries
//! (one *segment*, the same bytes the sled tree held: see [`super::audit`]) are appended to the
//! newest file of `<db>/audit/` and synced before the commit answers; pruning deletes whole files.
//! So the disk holds the live entries and nothing more.
//!
//! A file is named after the sequence number of its first entry (`00000000000000000001.log`),
//! opens with [`MAGIC`], and holds frames:
//! `len: u32 BE ‖ first: u64 BE ‖ segment ‖ last hash: 32 bytes ‖ crc: u32 BE`, the *last hash*
//! being the whole hash of the segment's last entry (layout 3 records keep only 4 bytes of
//! theirs: this is what pins the end of each segment, as the head record did in sled) and the
//! CRC-32 covering everything before it. The CRC finds torn writes, not tampering: the hash chain
//! does that. A write is appended at the file's durable end and synced;
//! a failed write is cut off again, and its frames are written again by the next commit. After a
//! crash, bytes after the last whole frame of the newest file are a write that was never
//! acknowledged: opening moves them to a `.torn` file beside it (kept for the operator, never
//! read) and cuts them off.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use crate::store::StoreError;

/// The directory, inside sled's.
pub const DIR: &str = "audit";
/// The first bytes of every file: the format and its version.
pub const MAGIC: &[u8; 8] = b"HMAUDIT1";
/// A file is closed, and the next one started, once it holds this many bytes.
pub const ROTATE_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes of a frame besides its segment.
const FRAME_OVERHEAD: usize = 4 + 8 + 32 + 4;

/// One group commit's entries as a file holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Sequence number of its first entry.
    pub first: u64,
    /// The segment as [`super::audit`] lays it out.
    pub bytes: Vec<u8>,
    /// The whole hash of its last entry.
    pub last_hash: [u8; 32],
}

/// Append the frame of `segment`.
pub fn put_frame(out: &mut Vec<u8>, segment: &Segment) {
    let start = out.len();
    // A segment is one group commit's entries: far below 4 GiB.
    out.extend_from_slice(
        &u32::try_from(segment.bytes.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&segment.first.to_be_bytes());
    out.extend_from_slice(&segment.bytes);
    out.extend_from_slice(&segment.last_hash);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// The whole frames of a file's bytes (after [`MAGIC`]) and the number of bytes they take:
/// anything after that is a torn or damaged frame.
pub fn frames(bytes: &[u8]) -> (Vec<Segment>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(rest) = bytes.get(at..) {
        let Some((len, first)) = rest.get(..12).map(|h| {
            let (len, first) = h.split_at(4);
            (
                u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize,
                u64::from_be_bytes(first.try_into().unwrap_or_default()),
            )
        }) else {
            break;
        };
        let Some(covered) = rest.get(..FRAME_OVERHEAD - 4 + len) else {
            break;
        };
        let Some(crc) = rest.get(FRAME_OVERHEAD - 4 + len..FRAME_OVERHEAD + len) else {
            break;
        };
        if u32::from_be_bytes(crc.try_into().unwrap_or_default()) != crc32fast::hash(covered) {
            break;
        }
        let (segment, last_hash) = covered[12..].split_at(len);
        out.push(Segment {
            first,
            bytes: segment.to_vec(),
            last_hash: last_hash.try_into().unwrap_or_default(),
        });
        at += FRAME_OVERHEAD + len;
    }
    (out, at)
}

/// The file name of the file whose first entry is `first`.
pub fn file_name(first: u64) -> String {
    format!("{first:020}.log")
}

fn first_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::AuditFile { what, path, source }
}

/// One file, as far as readers may read it.
#[derive(Debug, Clone)]
pub(super) struct FileInfo {
    /// Sequence number of its first entry (its name).
    pub first: u64,
    pub path: PathBuf,
    /// Bytes known durable: readers read no further.
    pub len: u64,
}

/// The file being appended to.
struct Active {
    file: File,
    first: u64,
    /// Its durable length: a failed write is cut back to it.
    len: u64,
}

struct Writer {
    active: Option<Active>,
    /// Segments taken from the chain but not yet durable, oldest first.
    queue: Vec<Segment>,
}

/// The files of one audit log.
pub(super) struct AuditFiles {
    dir: PathBuf,
    rotate_bytes: u64,
    /// Held across the write and its sync; taken before the chain's lock, never after.
    writer: Mutex<Writer>,
    /// Every file, oldest first, with its readable length. Held only to copy or update it.
    index: Mutex<Vec<FileInfo>>,
    /// Readers hold it shared while they read files; pruning holds it to delete them.
    removal: RwLock<()>,
    /// Where each segment of the file being written starts, so that a reader near the end of
    /// the log (the exporter) reads only what it wants.
    tail: Mutex<Tail>,
}

/// The file being written: its first entry, and `(first entry, offset)` of each segment in it.
#[derive(Default)]
struct Tail {
    file: Option<u64>,
    segments: Vec<(u64, u64)>,
}

/// `(first entry, offset)` of each frame in `body`, which starts at `offset` and holds only whole
/// frames.
fn offsets(body: &[u8], mut offset: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(header) = body.get(at..at + 12) {
        let (len, first) = header.split_at(4);
        let len = u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize;
        out.push((
            u64::from_be_bytes(first.try_into().unwrap_or_default()),
            offset,
        ));
        at += FRAME_OVERHEAD + len;
        offset += (FRAME_OVERHEAD + len) as u64;
    }
    out
}

/// What opening found: the last whole entry's segment, if any file holds one.
pub(super) type LastSegment = Option<Segment>;

impl AuditFiles {
    /// Open the files in `dir` (created if missing), closing each at `rotate_bytes`; the newest
    /// file's torn tail, if any, is moved aside. Returns the last segment written, for the
    /// chain's head.
    pub fn open_with(dir: &Path, rotate_bytes: u64) -> Result<(Self, LastSegment), StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err("create the directory", dir))?;
        let mut firsts = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
            let item = item.map_err(io_err("list", dir))?;
            if let Some(first) = item.file_name().to_str().and_then(first_of) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut index = Vec::new();
        for &first in &firsts {
            let path = dir.join(file_name(first));
            let len = std::fs::metadata(&path)
                .map_err(io_err("read", &path))?
                .len();
            index.push(FileInfo { first, path, len });
        }
        let mut active = None;
        let mut last = None;
        let mut tail = Tail::default();
        // The newest file: cut off a torn tail; an empty one (created, then the crash) goes.
        if let Some(info) = index.last_mut() {
            let (file, whole) = recover_tail(&info.path)?;
            if whole.is_none() {
                std::fs::remove_file(&info.path).map_err(io_err("remove", &info.path))?;
                sync_dir(dir)?;
                index.pop();
            } else if let (Some(file), Some((len, segment))) = (file, whole) {
                info.len = len;
                last = segment;
                let bytes = read_file(info)?;
                tail = Tail {
                    file: Some(info.first),
                    segments: offsets(&bytes, MAGIC.len() as u64),
                };
                active = Some(Active {
                    file,
                    first: info.first,
                    len,
                });
            }
        }
        // The newest file held no whole frame: the one before ends the log.
        if last.is_none() {
            for info in index.iter().rev() {
                let bytes = read_file(info)?;
                if let Some(segment) = frames(&bytes).0.pop() {
                    last = Some(segment);
                    break;
                }
            }
        }
        Ok((
            AuditFiles {
                dir: dir.to_owned(),
                rotate_bytes,
                writer: Mutex::new(Writer {
                    active,
                    queue: Vec::new(),
                }),
                index: Mutex::new(index),
                removal: RwLock::new(()),
                tail: Mutex::new(tail),
            },
            last,
        ))
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // Every field is replaced whole, and a failed write is undone before the lock is let go.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index(&self) -> MutexGuard<'_, Vec<FileInfo>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `segments` durable, in one write (for moving a legacy log in).
    pub fn append_all(&self, segments: Vec<Segment>) -> Result<bool, StoreError> {
        let mut segments = Some(segments);
        let mut writer = self.writer();
        writer.queue.extend(segments.take().unwrap_or_default());
        drop(writer);
        self.append(|| None)
    }

    /// Take a segment from `take` (called under the writer's lock, so segments reach the files in
    /// the order they were taken) and make it and every segment a failed write left queued
    /// durable. Returns whether anything was written.
    pub fn append(&self, take: impl FnOnce() -> Option<Segment>) -> Result<bool, StoreError> {
        let mut writer = self.writer();
        if let Some(segment) = take() {
            writer.queue.push(segment);
        }
        let Some(first) = writer.queue.first().map(|s| s.first) else {
            return Ok(false);
        };
        let mut frames = Vec::new();
        for segment in &writer.queue {
            put_frame(&mut frames, segment);
        }
        let rotate = writer
            .active
            .as_ref()
            .is_none_or(|a| a.len >= self.rotate_bytes);
        let current = if rotate { None } else { writer.active.take() };
        let (active, is_new) = match current {
            Some(active) => (active, false),
            None => (self.create(first)?, true),
        };
        let written = active
            .file
            .write_all_at(&frames, active.len)
            .and_then(|()| active.file.sync_data());
        if let Err(source) = written {
            // Undo the partial write; the queue stays for the next commit.
            let path = self.dir.join(file_name(active.first));
            if is_new {
                let _ = std::fs::remove_file(&path);
            } else {
                let _ = active.file.set_len(active.len);
                writer.active = Some(active);
            }
            return Err(StoreError::AuditFile {
                what: "append to",
                path: path.display().to_string(),
                source,
            });
        }
        let len = active.len + frames.len() as u64;
        {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            if tail.file != Some(active.first) {
                *tail = Tail {
                    file: Some(active.first),
                    segments: Vec::new(),
                };
            }
            tail.segments.extend(offsets(&frames, active.len));
        }
        writer.queue.clear();
        {
            let mut index = self.index();
            match index.last_mut() {
                Some(info) if info.first == active.first => info.len = len,
                _ => index.push(FileInfo {
                    first: active.first,
                    path: self.dir.join(file_name(active.first)),
                    len,
                }),
            }
        }
        writer.active = Some(Active { len, ..active });
        Ok(true)
    }

    /// Create the file whose first entry is `first`, with its header, and make its name durable.
    fn create(&self, first: u64) -> Result<Active, StoreError> {
        let path = self.dir.join(file_name(first));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        file.write_all(MAGIC).map_err(io_err("create", &path))?;
        sync_dir(&self.dir)?;
        Ok(Active {
            file,
            first,
            len: MAGIC.len() as u64,
        })
    }

    /// Close the file being written if its first entry is `first`, so that it can be pruned
    /// whole: the next write starts a new file.
    pub fn close_active(&self, first: u64) {
        let mut writer = self.writer();
        if writer.active.as_ref().is_some_and(|a| a.first == first) {
            writer.active = None;
        }
    }

    /// Every file as readers may read it, oldest first.
    pub fn list(&self) -> Vec<FileInfo> {
        self.index().clone()
    }

    /// Every file no write will touch again, oldest first.
    pub fn closed(&self) -> Vec<FileInfo> {
        let writer = self.writer();
        let active = writer.active.as_ref().map(|a| a.first);
        let mut files = self.index().clone();
        files.retain(|f| Some(f.first) != active);
        files
    }

    /// Read the segments from the one holding `from` (every segment if `None`) on, handing
    /// `each` every whole one until it returns `false`, and `None` for damage inside the
    /// durable part of a file, after which nothing more is read. Pruning waits meanwhile.
    pub fn read_from(
        &self,
        from: Option<u64>,
        mut each: impl FnMut(Option<&Segment>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let _reading = self.removal.read().unwrap_or_else(|p| p.into_inner());
        let files = self.list();
        let start = match from {
            Some(seq) => files.iter().rposition(|f| f.first <= seq).unwrap_or(0),
            None => 0,
        };
        for (i, info) in files.get(start..).unwrap_or_default().iter().enumerate() {
            // In the file being written, start reading at the segment holding `from`.
            let at = match from {
                Some(seq) if i == 0 => self.offset_of(info, seq),
                _ => None,
            };
            let bytes = match at {
                Some(at) => read_range(info, at)?,
                None => read_file(info)?,
            };
            let (frames, whole) = frames(&bytes);
            // In the first file, skip the segments before the one holding `from`.
            let skip = match from {
                Some(seq) if i == 0 => frames.iter().rposition(|s| s.first <= seq).unwrap_or(0),
                _ => 0,
            };
            for segment in frames.get(skip..).unwrap_or_default() {
                if !each(Some(segment))? {
                    return Ok(());
                }
            }
            if whole < bytes.len() {
                each(None)?;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Where the segment holding `seq` starts in `info`, if that is the file being written and
    /// the segment is durable.
    fn offset_of(&self, info: &FileInfo, seq: u64) -> Option<u64> {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.file != Some(info.first) {
            return None;
        }
        let i = tail.segments.partition_point(|(first, _)| *first <= seq);
        let (_, offset) = *tail.segments.get(i.checked_sub(1)?)?;
        (offset < info.len).then_some(offset)
    }

    /// The segments of one file.
    pub fn segments_of(&self, info: &FileInfo) -> Result<Vec<Segment>, StoreError> {
        let _reading = self.removal.read().unwrap_or_else(|p| p.into_inner());
        let bytes = read_file(info)?;
        Ok(frames(&bytes).0)
    }

    /// Delete the files before the one whose first entry is `keep_from` (never the one being
    /// written). The caller has made the anchor that stands for them durable.
    pub fn remove_before(&self, keep_from: u64) -> Result<(), StoreError> {
        let gone: Vec<FileInfo> = {
            let writer = self.writer();
            let active = writer.active.as_ref().map(|a| a.first);
            let mut index = self.index();
            let keep = index
                .iter()
                .position(|f| f.first >= keep_from || Some(f.first) == active)
                .unwrap_or(index.len());
            index.drain(..keep).collect()
        };
        let _removing = self.removal.write().unwrap_or_else(|p| p.into_inner());
        for info in &gone {
            match std::fs::remove_file(&info.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &info.path)(e)),
            }
        }
        sync_dir(&self.dir)
    }

    /// Replace the file `info` by `segments`, written whole: for tests that play an intruder.
    pub fn rewrite_for_test(
        &self,
        info: &FileInfo,
        segments: &[Segment],
    ) -> Result<(), StoreError> {
        let mut writer = self.writer();
        let mut bytes = MAGIC.to_vec();
        for segment in segments {
            put_frame(&mut bytes, segment);
        }
        std::fs::write(&info.path, &bytes).map_err(io_err("rewrite", &info.path))?;
        let len = bytes.len() as u64;
        if let Some(active) = writer.active.as_mut().filter(|a| a.first == info.first) {
            active.len = len;
        }
        if let Some(f) = self.index().iter_mut().find(|f| f.first == info.first) {
            f.len = len;
        }
        Ok(())
    }
}

/// Read a file up to its readable length, without its header.
fn read_file(info: &FileInfo) -> Result<Vec<u8>, StoreError> {
    let mut file = File::open(&info.path).map_err(io_err("open", &info.path))?;
    let mut bytes = Vec::new();
    std::io::Read::take(&mut file, info.len)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", &info.path))?;
    if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(StoreError::Corrupt {
            what: "audit file",
            reason: format!("{} does not start with {:?}", info.path.display(), MAGIC),
        });
    }
    bytes.drain(..MAGIC.len());
    Ok(bytes)
}

/// Read `info` from byte `at` (the start of a frame) up to its readable length.
fn read_range(info: &FileInfo, at: u64) -> Result<Vec<u8>, StoreError> {
    let file = File::open(&info.path).map_err(io_err("open", &info.path))?;
    let mut bytes = vec![0u8; usize::try_from(info.len.saturating_sub(at)).unwrap_or(0)];
    file.read_exact_at(&mut bytes, at)
        .map_err(io_err("read", &info.path))?;
    Ok(bytes)
}

/// The newest file after a crash: cut after its last whole frame (the rest saved beside it).
/// Returns the file opened for writing and its length and last segment, or `None` for a file
/// that holds no header (created just before the crash).
#[allow(clippy::type_complexity)]
fn recover_tail(path: &Path) -> Result<(Option<File>, Option<(u64, LastSegment)>), StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err("read", path))?;
    if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        if MAGIC.starts_with(&bytes) {
            return Ok((None, None));
        }
        return Err(StoreError::Corrupt {
            what: "audit file",
            reason: format!("{} does not start with {:?}", path.display(), MAGIC),
        });
    }
    let body = &bytes[MAGIC.len()..];
    let (frames, whole) = frames(body);
    let last = frames.last().cloned();
    let len = (MAGIC.len() + whole) as u64;
    if whole < body.len() {
        let torn = path.with_extension(format!("log.{}.torn", crate::unix_now_ms()));
        std::fs::write(&torn, &body[whole..]).map_err(io_err("save the torn tail of", path))?;
        file.set_len(len)
            .map_err(io_err("cut the torn tail of", path))?;
        file.sync_all()
            .map_err(io_err("cut the torn tail of", path))?;
        tracing::warn!(
            file = %path.display(),
            bytes = body.len() - whole,
            saved = %torn.display(),
            "the audit file ended in a write that never completed (a crash): cut off"
        );
    }
    Ok((Some(file), Some((len, last))))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

#[cfg(test)]
mod tests;

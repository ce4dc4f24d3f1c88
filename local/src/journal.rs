//! A write-ahead journal for an emulated service that must keep what it accepted across a
//! crash of the process, as the real one does: Kinesis keeps a record it acknowledged for
//! its retention period, Firehose keeps a record it accepted until it is delivered.
//!
//! The local stream and the emulated Firehose's DirectPut input of `iotpipe up` hold their
//! records in memory. With a journal, every entry is appended to a file *before* the put
//! answers (so before the IoT rule acknowledges the message to the broker), and the
//! emulated Firehose's durable positions ([`crate::firehose::DurablePositions`]: per shard,
//! the last record whose rows are in completed Parquet objects) are the journal's
//! checkpoint. A run that starts on a journal first re-feeds every entry after the
//! checkpoint, with its shard and sequence number: what a killed run had accepted but not
//! yet delivered is delivered (at least once; the rollup removes duplicates).
//!
//! Layout, under the journal's directory: segment files `NNNNNNNNNNNN.log` of
//! length-prefixed entries, a new one every [`SEGMENT_BYTES`], and `checkpoint.json`
//! (written to a temporary file and renamed). A closed segment whose entries are all at or
//! before the checkpoint is deleted, so the journal holds about one Firehose buffering
//! interval of data: bounded by configuration, not by the run's length.
//!
//! A write reaches the operating system before the put answers (it survives the process
//! being killed, not a power cut: there is no `fsync` per put). A torn last entry — the
//! process died inside the write, so the put never answered — is ignored on recovery.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use telemetry::stream::StreamEntry;

use crate::firehose::DurablePositions;

/// The journals' directory in a local data directory (`iotpipe up`), one subdirectory per
/// journaled service.
pub const JOURNAL_DIR: &str = "_journal";

/// Entries after the checkpoint in the journal at `dir` (0 when there is none), read
/// without changing it.
///
/// # Errors
/// When a segment or the checkpoint cannot be read.
pub fn pending(dir: &Path) -> std::io::Result<u64> {
    if !dir.is_dir() {
        return Ok(0);
    }
    Ok(scan(dir)?.recovered.pending)
}

/// What the segments of a journal hold, against its checkpoint.
struct Scan {
    /// Every segment, in order, with its last sequence number per shard.
    segments: Vec<Segment>,
    /// The index the next new segment takes.
    next_index: u64,
    recovered: Recovered,
}

/// Reads the checkpoint and every segment of the journal at `dir` (one at a time).
fn scan(dir: &Path) -> std::io::Result<Scan> {
    let checkpoint = read_checkpoint(dir)?;
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let index = p
                .file_name()?
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()?;
            Some((index, p))
        })
        .collect();
    files.sort();
    let mut pending = 0;
    let mut pending_segments = Vec::new();
    let mut last = checkpoint.clone();
    let mut segments = Vec::new();
    for (_, path) in &files {
        let mut seg = Segment {
            path: path.clone(),
            last: BTreeMap::new(),
        };
        let before = pending;
        for e in read_segment(path)? {
            seg.last
                .insert(e.shard_id.clone(), e.sequence_number.clone());
            if after(&last, &e) {
                last.insert(e.shard_id.clone(), e.sequence_number.clone());
            }
            if after(&checkpoint, &e) {
                pending += 1;
            }
        }
        if pending > before {
            pending_segments.push(path.clone());
        }
        segments.push(seg);
    }
    Ok(Scan {
        segments,
        next_index: files.last().map_or(0, |(i, _)| i + 1),
        recovered: Recovered {
            pending,
            last,
            segments: pending_segments,
            checkpoint,
        },
    })
}

/// A segment is closed, and a new one started, once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

const CHECKPOINT: &str = "checkpoint.json";

/// Orders two sequence numbers of one shard: decimal strings without leading zeros (a
/// DirectPut counter) or of fixed width (Kinesis style), so the longer is the larger.
pub fn seq_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    (a.len(), a).cmp(&(b.len(), b))
}

/// One segment: its file and, per shard, the last sequence number it holds.
struct Segment {
    path: PathBuf,
    last: BTreeMap<String, String>,
}

struct Inner {
    file: File,
    current: Segment,
    bytes: u64,
    next_index: u64,
    closed: Vec<Segment>,
    /// The checkpoint as stored: every shard's furthest durable position so far.
    positions: DurablePositions,
}

/// An open journal (see the module doc). Appends are serialised by a lock; callers that
/// need per-shard order hold their own lock across sequence assignment and append.
pub struct Journal {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

/// What [`Journal::open`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Entries after the checkpoint: to be delivered again ([`Recovered::segments`]).
    pub pending: u64,
    /// Per shard, the largest sequence number in the journal (recovered or checkpointed):
    /// new entries must continue after it.
    pub last: BTreeMap<String, String>,
    /// The segments holding pending entries, in order.
    segments: Vec<PathBuf>,
    /// The checkpoint they were found against.
    checkpoint: DurablePositions,
}

impl Recovered {
    /// The pending entries, one segment at a time in the order they were appended (memory:
    /// one segment, whatever the journal's size; [`Journal::open`] read them once already
    /// and kept only counts, so this reads them again). A segment deleted meanwhile — every
    /// entry of it delivered — is skipped.
    pub fn segments(&self) -> impl Iterator<Item = std::io::Result<Vec<StreamEntry>>> + '_ {
        self.segments
            .iter()
            .filter_map(|path| match read_segment(path) {
                Ok(entries) => Some(Ok(entries
                    .into_iter()
                    .filter(|e| after(&self.checkpoint, e))
                    .collect())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => Some(Err(e)),
            })
    }
}

/// `e` comes after what `positions` names for its shard.
fn after(positions: &DurablePositions, e: &StreamEntry) -> bool {
    positions
        .get(&e.shard_id)
        .is_none_or(|c| seq_cmp(&e.sequence_number, c) == std::cmp::Ordering::Greater)
}

impl Journal {
    /// Opens (creating) the journal in `dir` and recovers the entries after its checkpoint.
    ///
    /// # Errors
    /// When the directory, a segment or the checkpoint cannot be read or created.
    pub fn open(dir: &Path) -> std::io::Result<(Self, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let Scan {
            segments: closed,
            next_index,
            recovered,
        } = scan(dir)?;
        let (file, current) = new_segment(dir, next_index)?;
        let journal = Self {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                file,
                current,
                bytes: 0,
                next_index: next_index + 1,
                closed,
                positions: DurablePositions::new(),
            }),
        };
        // Segments the checkpoint already covers go at once.
        journal.checkpoint(&recovered.checkpoint)?;
        Ok((journal, recovered))
    }

    /// Appends `entries` with one write; returns once the operating system has them.
    ///
    /// # Errors
    /// When the write fails (the put must then fail: the entries are not durable).
    pub fn append(&self, entries: &[StreamEntry]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.data.len() + 96).sum());
        for e in entries {
            encode(e, &mut buf);
        }
        let mut inner = self.lock()?;
        inner.file.write_all(&buf)?;
        inner.bytes += buf.len() as u64;
        for e in entries {
            inner
                .current
                .last
                .insert(e.shard_id.clone(), e.sequence_number.clone());
        }
        if inner.bytes >= SEGMENT_BYTES {
            self.rotate(&mut inner)?;
        }
        Ok(())
    }

    /// Advances the checkpoint to `positions` (a shard they do not name keeps its position)
    /// and deletes the closed segments it covers; closes the current segment too when it
    /// covers all of it, so an idle journal is empty.
    ///
    /// # Errors
    /// When the checkpoint cannot be written or a segment deleted.
    pub fn checkpoint(&self, positions: &DurablePositions) -> std::io::Result<()> {
        let mut inner = self.lock()?;
        for (shard, seq) in positions {
            let ahead = inner
                .positions
                .get(shard)
                .is_none_or(|p| seq_cmp(seq, p) == std::cmp::Ordering::Greater);
            if ahead {
                inner.positions.insert(shard.clone(), seq.clone());
            }
        }
        let positions = inner.positions.clone();
        let positions = &positions;
        let tmp = self.dir.join(format!("{CHECKPOINT}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(positions)?)?;
        std::fs::rename(&tmp, self.dir.join(CHECKPOINT))?;
        if inner.bytes > 0 && covered(&inner.current, positions) {
            self.rotate(&mut inner)?;
        }
        let mut kept = Vec::new();
        for seg in std::mem::take(&mut inner.closed) {
            if covered(&seg, positions) {
                std::fs::remove_file(&seg.path)?;
            } else {
                kept.push(seg);
            }
        }
        inner.closed = kept;
        Ok(())
    }

    /// Closes the current segment and starts the next.
    fn rotate(&self, inner: &mut Inner) -> std::io::Result<()> {
        let (file, seg) = new_segment(&self.dir, inner.next_index)?;
        inner.next_index += 1;
        inner.file = file;
        inner.bytes = 0;
        let full = std::mem::replace(&mut inner.current, seg);
        inner.closed.push(full);
        Ok(())
    }

    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| std::io::Error::other("the journal's lock is poisoned"))
    }
}

/// Every entry of `seg` is at or before `positions`.
fn covered(seg: &Segment, positions: &DurablePositions) -> bool {
    seg.last.iter().all(|(shard, seq)| {
        positions
            .get(shard)
            .is_some_and(|p| seq_cmp(seq, p) != std::cmp::Ordering::Greater)
    })
}

fn new_segment(dir: &Path, index: u64) -> std::io::Result<(File, Segment)> {
    let path = dir.join(format!("{index:012}.log"));
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    Ok((
        file,
        Segment {
            path,
            last: BTreeMap::new(),
        },
    ))
}

fn read_checkpoint(dir: &Path) -> std::io::Result<DurablePositions> {
    match std::fs::read(dir.join(CHECKPOINT)) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DurablePositions::new()),
        Err(e) => Err(e),
    }
}

/// Frame: u32 length of the rest, then shard, sequence number and partition key (u16
/// length + bytes each), arrival (i64), data (the rest). Little-endian.
fn encode(e: &StreamEntry, buf: &mut Vec<u8>) {
    let strings = [&e.shard_id, &e.sequence_number, &e.partition_key];
    let len = strings.iter().map(|s| 2 + s.len()).sum::<usize>() + 8 + e.data.len();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    for s in strings {
        buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }
    buf.extend_from_slice(&e.approximate_arrival_ms.to_le_bytes());
    buf.extend_from_slice(&e.data);
}

/// The entries of a segment; a torn last frame ends it.
fn read_segment(path: &Path) -> std::io::Result<Vec<StreamEntry>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(e) = decode(&bytes, &mut at) {
        out.push(e);
    }
    if at < bytes.len() {
        tracing::warn!(path = %path.display(), bytes = bytes.len() - at,
            "a torn entry at the end of a journal segment (the put never answered): ignored");
    }
    Ok(out)
}

fn decode(bytes: &[u8], at: &mut usize) -> Option<StreamEntry> {
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = bytes.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    let mut p = *at;
    let len = u32::from_le_bytes(take(&mut p, 4)?.try_into().ok()?) as usize;
    let end = p.checked_add(len)?;
    if end > bytes.len() {
        return None;
    }
    let string = |p: &mut usize| -> Option<String> {
        let n = u16::from_le_bytes(take(p, 2)?.try_into().ok()?) as usize;
        String::from_utf8(take(p, n)?.to_vec()).ok()
    };
    let shard_id = string(&mut p)?;
    let sequence_number = string(&mut p)?;
    let partition_key = string(&mut p)?;
    let approximate_arrival_ms = i64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
    let data = Bytes::copy_from_slice(bytes.get(p..end)?);
    *at = end;
    Some(StreamEntry {
        shard_id,
        sequence_number,
        partition_key,
        data,
        approximate_arrival_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(shard: &str, seq: u64) -> StreamEntry {
        StreamEntry {
            shard_id: shard.into(),
            sequence_number: seq.to_string(),
            partition_key: format!("d{seq}"),
            data: Bytes::from(format!("payload {seq}")),
            approximate_arrival_ms: 1_764_072_000_000 + seq as i64,
        }
    }

    fn entries(r: &Recovered) -> Vec<StreamEntry> {
        r.segments().flat_map(Result::unwrap).collect()
    }

    fn seqs(r: &Recovered) -> Vec<(String, String)> {
        entries(r)
            .iter()
            .map(|e| (e.shard_id.clone(), e.sequence_number.clone()))
            .collect()
    }

    #[test]
    fn entries_after_the_checkpoint_come_back_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, r) = Journal::open(dir.path()).unwrap();
            assert_eq!(r.pending, 0);
            j.append(&(0..12).map(|i| entry("a", i)).collect::<Vec<_>>())
                .unwrap();
            j.append(&[entry("b", 0), entry("b", 1)]).unwrap();
            // Delivered: a up to 9 (string order would put "10" before "9"), b up to 0.
            j.checkpoint(&[("a".into(), "9".into()), ("b".into(), "0".into())].into())
                .unwrap();
        } // dropped without a clean close, as a killed process leaves it
        let (_, r) = Journal::open(dir.path()).unwrap();
        let want: Vec<(String, String)> = [("a", "10"), ("a", "11"), ("b", "1")]
            .map(|(s, q)| (s.to_owned(), q.to_owned()))
            .to_vec();
        assert_eq!(seqs(&r), want);
        assert_eq!(r.pending, 3);
        let first = &entries(&r)[0];
        assert_eq!(first.data, Bytes::from("payload 10"));
        assert_eq!(first.partition_key, "d10");
        assert_eq!(first.approximate_arrival_ms, 1_764_072_000_010);
        assert_eq!(r.last.get("a").map(String::as_str), Some("11"));
    }

    #[test]
    fn pending_counts_what_is_after_the_checkpoint_without_changing_anything() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pending(&dir.path().join("none")).unwrap(), 0);
        {
            let (j, _) = Journal::open(dir.path()).unwrap();
            j.append(&(0..5).map(|i| entry("a", i)).collect::<Vec<_>>())
                .unwrap();
            j.checkpoint(&[("a".into(), "1".into())].into()).unwrap();
        }
        assert_eq!(pending(dir.path()).unwrap(), 3);
        assert_eq!(pending(dir.path()).unwrap(), 3);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending, 3);
    }

    #[test]
    fn a_torn_last_entry_is_ignored_and_the_rest_recovered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, _) = Journal::open(dir.path()).unwrap();
            j.append(&[entry("a", 0), entry("a", 1)]).unwrap();
        }
        let seg = dir.path().join(format!("{:012}.log", 0));
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&r), vec![("a".to_owned(), "0".to_owned())]);
    }

    #[test]
    fn covered_segments_are_deleted_so_the_journal_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let big = StreamEntry {
            data: Bytes::from(vec![b'x'; SEGMENT_BYTES as usize]),
            ..entry("a", 0)
        };
        j.append(&[big]).unwrap(); // fills and closes segment 0
        j.append(&[entry("a", 1)]).unwrap();
        let logs = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .count()
        };
        assert_eq!(logs(), 2);
        j.checkpoint(&[("a".into(), "0".into())].into()).unwrap();
        assert_eq!(logs(), 1, "segment 0 is delivered: gone");
        j.checkpoint(&[("a".into(), "1".into())].into()).unwrap();
        assert_eq!(logs(), 1, "only the new, empty segment is left");
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending, 0);
        assert!(entries(&r).is_empty());
        assert_eq!(r.last.get("a").map(String::as_str), Some("1"));
    }
}

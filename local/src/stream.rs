//! An in-process stream with Kinesis semantics, for the local stack.
//!
//! - A record's shard is chosen as Kinesis does: the MD5 hash of its partition key, as a
//!   128-bit number, falls into one of the shards' equal hash-key ranges.
//! - Order is kept per shard (so per device), not across shards.
//! - Each shard is a bounded channel: when the consumer is slow, producers wait
//!   (backpressure) instead of the stream growing without bound.
//! - With a [`Journal`] ([`LocalStream::journaled`]), a record is written to it before the
//!   put answers, as Kinesis stores a record before it acknowledges it: a run that starts
//!   on the journal delivers again what a killed run had accepted but not delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use md5::{Digest, Md5};
use telemetry::stream::{StreamEntry, shard_id};
use tokio::sync::{Mutex, mpsc};

use crate::journal::{Journal, Recovered};

use ingest::sink::{BatchLimits, EntryOutcome, RecordSink, SinkError, SinkRecord};

/// Default number of shards.
pub const DEFAULT_SHARDS: usize = 4;
/// Default capacity of one shard, in records.
pub const DEFAULT_SHARD_CAPACITY: usize = 10_000;

struct Shard {
    id: String,
    tx: mpsc::Sender<StreamEntry>,
    /// The next sequence number.
    next_seq: AtomicU64,
    /// With a journal, held from numbering to sending, so that the shard's records enter its
    /// channel (and the journal) in sequence order: the journal's checkpoint relies on it.
    order: Mutex<()>,
}

/// The producer side of the local stream (cheap to clone).
#[derive(Clone)]
pub struct LocalStream {
    shards: Arc<Vec<Shard>>,
    journal: Option<Arc<Journal>>,
}

/// A local stream's sequence number: Kinesis-style, a large decimal string that grows per
/// shard (all of one width, so that [`crate::journal::seq_cmp`] orders them).
fn sequence_number(n: u64) -> String {
    padded_decimal("49", n, 38)
}

/// `prefix` then `n` in decimal, zero-padded to `width` digits (`format!("{prefix}{n:0width$}")`
/// without the formatter's padding loop: the emulated services number every record so).
pub(crate) fn padded_decimal(prefix: &str, n: u64, width: usize) -> String {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    let mut out = String::with_capacity(prefix.len() + width.max(digits.len()));
    out.push_str(prefix);
    out.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
    out.extend(digits.iter().map(|&d| char::from(d)));
    out
}

/// The consumer side of one shard.
pub struct ShardReader {
    /// Kinesis-style shard id.
    pub shard_id: String,
    /// Records in shard order; closes when every producer is gone.
    pub rx: mpsc::Receiver<StreamEntry>,
}

impl LocalStream {
    /// A stream of `shards` shards holding at most `capacity` records each.
    pub fn new(shards: usize, capacity: usize) -> (Self, Vec<ShardReader>) {
        Self::build(shards, capacity, None, &Recovered::default())
    }

    /// [`LocalStream::new`] with every record written to `journal` before its put answers,
    /// numbering on after what the journal `recovered` (which the caller delivers again,
    /// [`LocalStream::redeliver`]).
    pub fn journaled(
        shards: usize,
        capacity: usize,
        journal: Arc<Journal>,
        recovered: &Recovered,
    ) -> (Self, Vec<ShardReader>) {
        Self::build(shards, capacity, Some(journal), recovered)
    }

    fn build(
        shards: usize,
        capacity: usize,
        journal: Option<Arc<Journal>>,
        recovered: &Recovered,
    ) -> (Self, Vec<ShardReader>) {
        let shards = shards.max(1);
        let mut producers = Vec::with_capacity(shards);
        let mut readers = Vec::with_capacity(shards);
        for i in 0..shards {
            let (tx, rx) = mpsc::channel(capacity.max(1));
            let id = shard_id(i);
            let next = recovered
                .last
                .get(&id)
                .and_then(|s| s.strip_prefix("49")?.parse::<u64>().ok())
                .map_or(0, |n| n + 1);
            producers.push(Shard {
                id: id.clone(),
                tx,
                next_seq: AtomicU64::new(next),
                order: Mutex::new(()),
            });
            readers.push(ShardReader { shard_id: id, rx });
        }
        (
            Self {
                shards: Arc::new(producers),
                journal,
            },
            readers,
        )
    }

    /// Delivers again the records a journal recovered, into their shards, before any new
    /// put (waits while a shard is full; reads one journal segment at a time). A record of
    /// a shard this stream does not have (the shard count changed) goes to the shard its
    /// partition key maps to now.
    ///
    /// # Errors
    /// When a journal segment cannot be read.
    pub async fn redeliver(&self, recovered: &Recovered) -> std::io::Result<()> {
        for segment in recovered.segments() {
            for e in segment? {
                let shard = self
                    .shards
                    .iter()
                    .find(|s| s.id == e.shard_id)
                    .unwrap_or_else(|| &self.shards[self.shard_for(&e.partition_key)]);
                if shard.tx.send(e).await.is_err() {
                    return Ok(()); // the consumer stopped: the journal keeps them
                }
            }
        }
        Ok(())
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard a partition key maps to.
    pub fn shard_for(&self, partition_key: &str) -> usize {
        shard_index(partition_key, self.shards.len())
    }
}

/// The shard of `partition_key` among `shards` shards splitting the 128-bit hash-key space
/// evenly, as Kinesis does for a stream created with that many shards.
pub fn shard_index(partition_key: &str, shards: usize) -> usize {
    let digest = Md5::digest(partition_key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest);
    let hash = u128::from_be_bytes(bytes);
    let shards = shards.max(1) as u128;
    // Each shard owns an equal slice of the hash-key space (the last absorbs the rounding).
    let width = u128::MAX / shards;
    ((hash / width) as usize).min(shards as usize - 1)
}

impl RecordSink for LocalStream {
    fn limits(&self) -> BatchLimits {
        BatchLimits::KINESIS
    }

    async fn put_batch(&self, batch: &[SinkRecord]) -> Result<Vec<EntryOutcome>, SinkError> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut out = Vec::with_capacity(batch.len());
        for rec in batch {
            let shard = &self.shards[self.shard_for(&rec.partition_key)];
            let _order = match &self.journal {
                Some(_) => Some(shard.order.lock().await),
                None => None,
            };
            let n = shard.next_seq.fetch_add(1, Ordering::Relaxed);
            let entry = StreamEntry {
                shard_id: shard.id.clone(),
                sequence_number: sequence_number(n),
                partition_key: rec.partition_key.clone(),
                data: rec.data.clone(),
                approximate_arrival_ms: now,
            };
            if let Some(journal) = &self.journal
                && let Err(e) = journal.append(std::slice::from_ref(&entry))
            {
                out.push(EntryOutcome::Failed {
                    code: "InternalFailure".into(),
                    message: format!("the local stream's journal could not be written: {e}"),
                    retriable: true,
                });
                continue;
            }
            // `send` waits while the shard is full: backpressure on the producer.
            match shard.tx.send(entry).await {
                Ok(()) => out.push(EntryOutcome::Ok),
                Err(_) => out.push(EntryOutcome::Failed {
                    code: "StreamClosed".into(),
                    message: "the local stream's consumer has stopped".into(),
                    retriable: false,
                }),
            }
        }
        Ok(out)
    }
}

/// Records a reader takes from its shard at once (Kinesis `GetRecords` returns up to
/// 10,000).
pub const GET_RECORDS_LIMIT: usize = 10_000;

/// How long a reader waits before polling a shard again after it found fewer records
/// than a full batch. Firehose polls a Kinesis source about once a second; this is far
/// shorter, so that it adds no visible latency, yet it lets a shard fill up between polls
/// instead of waking the reader (another thread) for every record a producer puts: that
/// wake-up cost about as much as the ingest handler itself.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// Merges every shard into one channel, as a Firehose delivery stream reading a Kinesis
/// source does: each shard is polled in batches ([`GET_RECORDS_LIMIT`], then a pause of
/// [`POLL_INTERVAL`] when the shard had less). Per-shard order is kept; the output is
/// bounded by `capacity`.
pub fn merge_shards(readers: Vec<ShardReader>, capacity: usize) -> mpsc::Receiver<StreamEntry> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    for mut reader in readers {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(GET_RECORDS_LIMIT.min(capacity.max(1)));
            loop {
                let n = reader.rx.recv_many(&mut batch, GET_RECORDS_LIMIT).await;
                if n == 0 {
                    break; // every producer is gone and the shard is empty
                }
                for entry in batch.drain(..) {
                    if tx.send(entry).await.is_err() {
                        return;
                    }
                }
                if n < GET_RECORDS_LIMIT {
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn rec(key: &str, i: usize) -> SinkRecord {
        SinkRecord {
            partition_key: key.into(),
            data: Bytes::from(i.to_string()),
        }
    }

    #[test]
    fn sequence_numbers_are_49_and_38_zero_padded_digits() {
        for n in [0, 1, 9, 10, 99, 12_345, 999_999_999, u64::MAX / 7, u64::MAX] {
            assert_eq!(sequence_number(n), format!("49{n:038}"), "{n}");
        }
        assert_eq!(
            sequence_number(7),
            "4900000000000000000000000000000000000007"
        );
    }

    #[test]
    fn the_shard_follows_the_md5_hash_key_range() {
        // MD5("sensor-000001") starts with 0x2f… → the first quarter of the key space.
        let first = Md5::digest(b"sensor-000001")[0];
        assert_eq!(shard_index("sensor-000001", 4), usize::from(first / 64));
        assert_eq!(shard_index("anything", 1), 0);
        let spread: std::collections::HashSet<_> =
            (0..100).map(|i| shard_index(&format!("d{i}"), 4)).collect();
        assert_eq!(
            spread.len(),
            4,
            "100 keys should reach every one of 4 shards"
        );
    }

    #[tokio::test]
    async fn order_is_kept_per_device() {
        let (stream, readers) = LocalStream::new(2, 100);
        let batch: Vec<_> = (0..50)
            .map(|i| rec(if i % 2 == 0 { "a" } else { "b" }, i))
            .collect();
        stream.put_batch(&batch).await.unwrap();
        drop(stream);
        let mut rx = merge_shards(readers, 10);
        let mut a = Vec::new();
        while let Some(e) = rx.recv().await {
            if e.partition_key == "a" {
                a.push(
                    String::from_utf8(e.data.to_vec())
                        .unwrap()
                        .parse::<usize>()
                        .unwrap(),
                );
            }
        }
        assert_eq!(a, (0..50).step_by(2).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_shard_makes_the_producer_wait() {
        let (stream, mut readers) = LocalStream::new(1, 2);
        let s = stream.clone();
        let put =
            tokio::spawn(
                async move { s.put_batch(&[rec("a", 1), rec("a", 2), rec("a", 3)]).await },
            );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !put.is_finished(),
            "the third record must wait for the consumer"
        );
        readers[0].rx.recv().await.unwrap();
        let outcomes = put.await.unwrap().unwrap();
        assert!(outcomes.iter().all(|o| *o == EntryOutcome::Ok));
    }
}

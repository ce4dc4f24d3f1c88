//! The record sink port and the delivery logic every sink shares: batches cut at the
//! service limits, and per-entry partial-failure handling.
//!
//! A sink makes one put call at a time ([`RecordSink::put_batch`]) and reports each
//! entry's outcome. [`deliver`] does the rest, as Vector's Kinesis sink does: it sizes
//! batches by encoded length, retries **only the failed entries** with capped exponential
//! backoff and full jitter until a deadline, and hands back whatever still failed so that
//! the caller decides: a record over the sink's per-record limit ([`Fault::Record`]) is
//! quarantined, a record the sink refused for its own reasons ([`Fault::Sink`]) fails the
//! invocation. Nothing is dropped.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::time::Instant;

/// Kinesis PutRecords: at most 500 records per call.
pub const KINESIS_MAX_RECORDS: usize = 500;
/// Kinesis PutRecords: at most 5 MiB per call (data + partition keys).
pub const KINESIS_MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// Kinesis: at most 1 MiB per record (data + partition key).
pub const KINESIS_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Firehose PutRecordBatch: at most 500 records per call.
pub const FIREHOSE_MAX_RECORDS: usize = 500;
/// Firehose PutRecordBatch: at most 4 MiB per call.
pub const FIREHOSE_MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Firehose: at most 1,000 KiB per record.
pub const FIREHOSE_MAX_RECORD_BYTES: usize = 1000 * 1024;

/// One record to put: the partition key chooses the shard (per-device order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRecord {
    /// Partition key: the device id.
    pub partition_key: String,
    /// Record data: a [`telemetry::StreamRecord`] as compact JSON.
    pub data: Bytes,
}

impl SinkRecord {
    /// Size as the service meters it against its limits (data + partition key).
    pub fn encoded_len(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// The limits of one put call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Records per call.
    pub max_records: usize,
    /// Bytes per call.
    pub max_batch_bytes: usize,
    /// Bytes per record.
    pub max_record_bytes: usize,
    /// The per-record unit the service bills, in bytes (a record is rounded up to whole
    /// units): what record packing fills. Kinesis (provisioned PUT payload unit) 25 KB,
    /// Firehose 5 KB; see [`telemetry::metering`].
    pub metering_unit_bytes: usize,
}

impl BatchLimits {
    /// Kinesis Data Streams PutRecords.
    pub const KINESIS: BatchLimits = BatchLimits {
        max_records: KINESIS_MAX_RECORDS,
        max_batch_bytes: KINESIS_MAX_BATCH_BYTES,
        max_record_bytes: KINESIS_MAX_RECORD_BYTES,
        metering_unit_bytes: telemetry::metering::KINESIS_PUT_PAYLOAD_UNIT_BYTES,
    };
    /// Firehose PutRecordBatch.
    pub const FIREHOSE: BatchLimits = BatchLimits {
        max_records: FIREHOSE_MAX_RECORDS,
        max_batch_bytes: FIREHOSE_MAX_BATCH_BYTES,
        max_record_bytes: FIREHOSE_MAX_RECORD_BYTES,
        metering_unit_bytes: telemetry::metering::FIREHOSE_INGEST_UNIT_BYTES,
    };
}

/// The outcome of one entry of a put call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Stored.
    Ok,
    /// Not stored (Kinesis `ErrorCode`, Firehose per-record error).
    Failed {
        /// The service's error code, e.g. `ProvisionedThroughputExceededException`.
        code: String,
        /// The service's message.
        message: String,
        /// Whether trying again may succeed (throttling, internal failure).
        retriable: bool,
    },
}

/// A put call that failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Throttling, 5xx, timeouts, dropped connections: the whole call may be tried again.
    #[error("retriable sink error: {0}")]
    Retriable(String),
    /// Validation, permissions, a missing stream: trying again will not help.
    #[error("sink error: {0}")]
    Fatal(String),
}

/// A destination for stream records (Kinesis, Firehose, or the local stream).
pub trait RecordSink: Send + Sync {
    /// The limits of one [`RecordSink::put_batch`] call.
    fn limits(&self) -> BatchLimits;

    /// Puts one batch (within [`RecordSink::limits`]) and reports each entry's outcome,
    /// in order.
    fn put_batch(
        &self,
        batch: &[SinkRecord],
    ) -> impl Future<Output = Result<Vec<EntryOutcome>, SinkError>> + Send;
}

/// How failed entries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff before the first retry; doubles each attempt. Default 50 ms.
    pub base_delay: Duration,
    /// Cap of one backoff. Default 2 s.
    pub max_delay: Duration,
    /// Give up on what still fails after this long since delivery began. Default 20 s
    /// (well inside a Lambda timeout).
    pub deadline: Duration,
    /// At most this many calls per batch. Default 10.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            deadline: Duration::from_secs(20),
            max_attempts: 10,
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a uniform delay in `[0, min(max_delay, base_delay·2^attempt)]`.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.max_delay);
        let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }
}

/// A record the sink did not take, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    /// The record.
    pub record: SinkRecord,
    /// The last error seen for it.
    pub reason: String,
    /// Whose fault it is: the record's own (quarantine it) or the sink's (fail the
    /// invocation, so that Lambda's retries and on-failure destination take over).
    pub fault: Fault,
}

/// Why a record could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The record itself: it is over the sink's per-record limit, and no call can ever
    /// store it.
    Record,
    /// The sink: access denied, a missing stream, a disabled KMS key, throttling or
    /// timeouts that outlasted the retries. Nothing is wrong with the record; trying
    /// again later (Lambda's retry, a replay) stores it.
    Sink,
}

/// What [`deliver`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Records stored.
    pub delivered: usize,
    /// Records that could not be stored: to be quarantined.
    pub undelivered: Vec<Undelivered>,
    /// Put calls made (retries included).
    pub calls: u64,
    /// Entry retries made.
    pub retried_entries: u64,
}

/// Splits records into batches within `limits`, preserving order.
///
/// Records over the per-record limit come back separately: no call can store them.
pub fn batches(
    records: Vec<SinkRecord>,
    limits: BatchLimits,
) -> (Vec<Vec<SinkRecord>>, Vec<SinkRecord>) {
    let mut out = Vec::new();
    let mut oversize = Vec::new();
    let mut cur: Vec<SinkRecord> = Vec::new();
    let mut cur_bytes = 0;
    for r in records {
        let len = r.encoded_len();
        if len > limits.max_record_bytes {
            oversize.push(r);
            continue;
        }
        if !cur.is_empty()
            && (cur.len() == limits.max_records || cur_bytes + len > limits.max_batch_bytes)
        {
            out.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += len;
        cur.push(r);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    (out, oversize)
}

/// Delivers `records` through `sink`, retrying only failed entries, and returns what could
/// not be delivered instead of dropping it.
pub async fn deliver<S: RecordSink>(
    sink: &S,
    records: Vec<SinkRecord>,
    policy: &RetryPolicy,
) -> Delivery {
    let started = Instant::now();
    let limits = sink.limits();
    let (batches, oversize) = batches(records, limits);
    let mut report = Delivery::default();
    for r in oversize {
        let reason = format!(
            "record of {} bytes is over the sink's {}-byte record limit",
            r.encoded_len(),
            limits.max_record_bytes
        );
        report.undelivered.push(Undelivered {
            record: r,
            reason,
            fault: Fault::Record,
        });
    }
    for batch in batches {
        deliver_batch(sink, batch, policy, started, &mut report).await;
    }
    report
}

async fn deliver_batch<S: RecordSink>(
    sink: &S,
    mut pending: Vec<SinkRecord>,
    policy: &RetryPolicy,
    started: Instant,
    report: &mut Delivery,
) {
    let mut attempt = 0u32;
    loop {
        report.calls += 1;
        let mut retry: Vec<(SinkRecord, String)> = Vec::new();
        match sink.put_batch(&pending).await {
            Ok(outcomes) => {
                // A response with the wrong number of entries cannot be mapped back: treat
                // the unmatched tail as failed-retriable rather than assume success.
                let mut outcomes = outcomes.into_iter();
                for rec in pending.drain(..) {
                    match outcomes.next() {
                        Some(EntryOutcome::Ok) => report.delivered += 1,
                        Some(EntryOutcome::Failed {
                            code,
                            message,
                            retriable: true,
                        }) => retry.push((rec, format!("{code}: {message}"))),
                        Some(EntryOutcome::Failed {
                            code,
                            message,
                            retriable: false,
                        }) => report.undelivered.push(Undelivered {
                            record: rec,
                            reason: format!("{code}: {message}"),
                            fault: Fault::Sink,
                        }),
                        None => {
                            retry.push((rec, "no result for this entry in the response".into()))
                        }
                    }
                }
            }
            Err(SinkError::Retriable(e)) => {
                retry = pending.drain(..).map(|r| (r, e.clone())).collect();
            }
            Err(SinkError::Fatal(e)) => {
                report
                    .undelivered
                    .extend(pending.drain(..).map(|record| Undelivered {
                        record,
                        reason: e.clone(),
                        fault: Fault::Sink,
                    }));
                return;
            }
        }
        if retry.is_empty() {
            return;
        }
        attempt += 1;
        let delay = policy.backoff(attempt - 1);
        let out_of_time = started.elapsed() + delay >= policy.deadline;
        if attempt >= policy.max_attempts || out_of_time {
            tracing::warn!(
                entries = retry.len(),
                attempt,
                "giving up on entries after retries"
            );
            report
                .undelivered
                .extend(retry.into_iter().map(|(record, reason)| Undelivered {
                    record,
                    reason: format!("still failing after {attempt} attempt(s): {reason}"),
                    fault: Fault::Sink,
                }));
            return;
        }
        report.retried_entries += retry.len() as u64;
        tracing::debug!(
            entries = retry.len(),
            attempt,
            delay_ms = delay.as_millis() as u64,
            "retrying failed entries"
        );
        tokio::time::sleep(delay).await;
        pending = retry.into_iter().map(|(r, _)| r).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    fn rec(i: usize, size: usize) -> SinkRecord {
        SinkRecord {
            partition_key: format!("d{i}"),
            data: Bytes::from(vec![b'x'; size]),
        }
    }

    #[test]
    fn batches_are_cut_at_the_record_count_and_byte_limits() {
        let limits = BatchLimits {
            max_records: 3,
            max_batch_bytes: 100,
            max_record_bytes: 60,
            metering_unit_bytes: 50,
        };
        let records: Vec<_> = (0..8)
            .map(|i| rec(i, if i == 5 { 70 } else { 30 }))
            .collect();
        let (b, over) = batches(records, limits);
        assert_eq!(
            over.len(),
            1,
            "the 70+2 byte record is over the 60-byte record limit"
        );
        let sizes: Vec<usize> = b.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 1]);
        assert!(
            b.iter()
                .all(|b| b.iter().map(SinkRecord::encoded_len).sum::<usize>() <= 100)
        );
    }

    #[test]
    fn kinesis_batches_never_exceed_500_records_or_5_mib() {
        let records: Vec<_> = (0..1200).map(|i| rec(i, 20_000)).collect();
        let (b, over) = batches(records, BatchLimits::KINESIS);
        assert!(over.is_empty());
        for batch in &b {
            assert!(batch.len() <= 500);
            assert!(batch.iter().map(SinkRecord::encoded_len).sum::<usize>() <= 5 * 1024 * 1024);
        }
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 1200);
    }

    /// A sink whose answers are scripted per call: each call pops a script that says which
    /// entry indexes fail.
    struct Scripted {
        script: Mutex<VecDeque<Result<Vec<bool>, SinkError>>>,
        seen: Mutex<Vec<Vec<String>>>,
    }

    impl RecordSink for Scripted {
        fn limits(&self) -> BatchLimits {
            BatchLimits::KINESIS
        }
        async fn put_batch(&self, batch: &[SinkRecord]) -> Result<Vec<EntryOutcome>, SinkError> {
            self.seen
                .lock()
                .unwrap()
                .push(batch.iter().map(|r| r.partition_key.clone()).collect());
            let next = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(vec![]));
            let fails = next?;
            Ok((0..batch.len())
                .map(|i| {
                    if fails.get(i).copied().unwrap_or(false) {
                        EntryOutcome::Failed {
                            code: "ProvisionedThroughputExceededException".into(),
                            message: "slow down".into(),
                            retriable: true,
                        }
                    } else {
                        EntryOutcome::Ok
                    }
                })
                .collect())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_failed_entries_are_retried() {
        let sink = Scripted {
            script: Mutex::new(VecDeque::from([
                Ok(vec![false, true, false, true]),
                Err(SinkError::Retriable("503".into())),
                Ok(vec![false, false]),
            ])),
            seen: Mutex::new(Vec::new()),
        };
        let d = deliver(
            &sink,
            (0..4).map(|i| rec(i, 10)).collect(),
            &RetryPolicy::default(),
        )
        .await;
        assert_eq!(d.delivered, 4);
        assert!(d.undelivered.is_empty());
        assert_eq!(d.calls, 3);
        let seen = sink.seen.lock().unwrap();
        assert_eq!(seen[1], ["d1", "d3"]);
        assert_eq!(seen[2], ["d1", "d3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn what_still_fails_at_the_deadline_is_handed_back_not_dropped() {
        let always_fail: VecDeque<_> = (0..100).map(|_| Ok(vec![true, false])).collect();
        let sink = Scripted {
            script: Mutex::new(always_fail),
            seen: Mutex::new(Vec::new()),
        };
        let policy = RetryPolicy {
            max_attempts: 4,
            ..Default::default()
        };
        let d = deliver(&sink, vec![rec(0, 10), rec(1, 10)], &policy).await;
        assert_eq!(d.delivered, 1);
        assert_eq!(d.undelivered.len(), 1);
        assert_eq!(d.undelivered[0].record.partition_key, "d0");
        assert!(
            d.undelivered[0]
                .reason
                .contains("ProvisionedThroughputExceeded")
        );
        assert_eq!(d.calls, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_error_fails_the_batch_without_retrying() {
        let sink = Scripted {
            script: Mutex::new(VecDeque::from([Err(SinkError::Fatal(
                "ResourceNotFound".into(),
            ))])),
            seen: Mutex::new(Vec::new()),
        };
        let d = deliver(&sink, vec![rec(0, 10), rec(1, 10)], &RetryPolicy::default()).await;
        assert_eq!((d.delivered, d.undelivered.len(), d.calls), (0, 2, 1));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for attempt in 0..20 {
            assert!(p.backoff(attempt) <= p.max_delay);
        }
    }
}

//! The Lambda event-source mapping of the `kinesis` topology: reads the emulated stream's
//! shards and invokes ingest with batches of their records, as the template's
//! `IngestStreamMapping` does on AWS.
//!
//! - **Batches.** Per shard, one invocation at a time (`ParallelizationFactor` 1), so a
//!   shard's (a device's) records are handled in order. A batch is cut at
//!   [`EventSourceConfig::batch_size`] records (`BatchSize`), when
//!   [`EventSourceConfig::batch_window`] has passed since its first record
//!   (`MaximumBatchingWindowInSeconds`), when the shard is closed (end of the run), or at
//!   Lambda's 6 MiB synchronous payload ([`MAX_INVOKE_PAYLOAD_BYTES`]).
//! - **`ReportBatchItemFailures`.** An answer naming failed items is a checkpoint: the
//!   records before the first failed one (in shard order) are done, and the batch is retried
//!   from that record on — Lambda's Kinesis semantics, which keep a shard in order. So the
//!   records a function reported as done before the first failure are not retried; the ones
//!   after it are (at least once, as everywhere in the pipeline: the readers de-duplicate).
//!   An item identifier that is not in the batch makes the whole batch fail, as on AWS.
//! - **Function errors** (`BisectBatchOnFunctionError`): the batch is split in two and each
//!   half retried on its own, which does not count against the retries; a single record
//!   that still fails is retried up to [`EventSourceConfig::max_retries`] times
//!   (`MaximumRetryAttempts`).
//! - **On-failure destination.** What is still failing then goes to the caller's
//!   [`OnFailure`] (the stack keeps the payloads under `errors/ingest-failed/` and fails the
//!   run at its end, as for a failed per-message invocation).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::encodings::SecondTimestamp;
use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord, KinesisRecord};
use aws_lambda_events::event::streams::KinesisEventResponse;
use futures::future::BoxFuture;
use serde::Serialize;
use telemetry::metering::{
    INGEST_BATCH_SIZE, INGEST_BATCH_WINDOW_SECONDS, INGEST_MAX_RETRY_ATTEMPTS,
};
use telemetry::stream::StreamEntry;
use tokio::time::Instant;

use crate::firehose::DurablePositions;
use crate::stream::ShardReader;
use tokio::sync::mpsc;

/// Lambda's synchronous invocation payload limit: a batch is cut before its event would
/// exceed it.
pub const MAX_INVOKE_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// The event bytes of one record besides its base64 data: the record's envelope
/// (`eventSourceARN`, `eventID`, sequence number, partition key, …), a generous bound.
const RECORD_ENVELOPE_BYTES: usize = 600;

/// The mapping's settings (the template's `IngestStreamMapping`).
#[derive(Debug, Clone)]
pub struct EventSourceConfig {
    /// Records per invocation at most (`BatchSize`). Default
    /// [`telemetry::metering::INGEST_BATCH_SIZE`].
    pub batch_size: usize,
    /// How long a batch that is not full gathers records (`MaximumBatchingWindowInSeconds`).
    /// Default [`telemetry::metering::INGEST_BATCH_WINDOW_SECONDS`].
    pub batch_window: Duration,
    /// Retries of a failing record before the on-failure destination
    /// (`MaximumRetryAttempts`). Default [`telemetry::metering::INGEST_MAX_RETRY_ATTEMPTS`].
    pub max_retries: u32,
}

impl Default for EventSourceConfig {
    fn default() -> Self {
        Self {
            batch_size: INGEST_BATCH_SIZE,
            batch_window: Duration::from_secs(INGEST_BATCH_WINDOW_SECONDS),
            max_retries: INGEST_MAX_RETRY_ATTEMPTS,
        }
    }
}

/// Invokes the function with one batch: its answer, or the error of a failed invocation.
pub type Invoke = Arc<
    dyn Fn(KinesisEvent) -> BoxFuture<'static, Result<KinesisEventResponse, String>> + Send + Sync,
>;

/// The on-failure destination: the records that still failed after the retries, and the
/// last error.
pub type OnFailure = Arc<dyn Fn(Vec<StreamEntry>, String) -> BoxFuture<'static, ()> + Send + Sync>;

/// What the mapping did, summed over the shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventSourceReport {
    /// Records read from the stream.
    pub records: u64,
    /// Batches cut from the shards (retries and bisected halves not counted).
    pub batches: u64,
    /// Function invocations, retries included.
    pub invocations: u64,
    /// Invocations that failed (function errors).
    pub function_errors: u64,
    /// Batches split in two after a function error.
    pub bisections: u64,
    /// Items named in `batchItemFailures` answers.
    pub item_failures: u64,
    /// Records invoked again (after an item failure or a function error).
    pub retried_records: u64,
    /// Records given to the on-failure destination.
    pub on_failure_records: u64,
}

impl EventSourceReport {
    fn add(&mut self, o: &EventSourceReport) {
        self.records += o.records;
        self.batches += o.batches;
        self.invocations += o.invocations;
        self.function_errors += o.function_errors;
        self.bisections += o.bisections;
        self.item_failures += o.item_failures;
        self.retried_records += o.retried_records;
        self.on_failure_records += o.on_failure_records;
    }
}

/// Runs the mapping over every shard until each is closed and drained, then reports.
/// `invoke` and `on_failure` are dropped when this returns (so is whatever they hold).
pub async fn run(
    cfg: EventSourceConfig,
    readers: Vec<ShardReader>,
    invoke: Invoke,
    on_failure: OnFailure,
) -> EventSourceReport {
    run_with_progress(cfg, readers, invoke, on_failure, None).await
}

/// [`run`], also sending on `progress`, after each batch is done (the function succeeded
/// for every record, or what failed went to the on-failure destination), its shard and the
/// sequence number of its last record: the mapping's checkpoint.
pub async fn run_with_progress(
    cfg: EventSourceConfig,
    readers: Vec<ShardReader>,
    invoke: Invoke,
    on_failure: OnFailure,
    progress: Option<mpsc::UnboundedSender<DurablePositions>>,
) -> EventSourceReport {
    let mut tasks = Vec::with_capacity(readers.len());
    for reader in readers {
        tasks.push(tokio::spawn(shard(
            cfg.clone(),
            reader,
            invoke.clone(),
            on_failure.clone(),
            progress.clone(),
        )));
    }
    drop((invoke, on_failure, progress));
    let mut report = EventSourceReport::default();
    for t in tasks {
        match t.await {
            Ok(r) => report.add(&r),
            Err(e) => tracing::error!(error = %e, "an event-source mapping shard poller panicked"),
        }
    }
    report
}

/// One shard's poller: cut batches, deliver each before reading on.
async fn shard(
    cfg: EventSourceConfig,
    mut reader: ShardReader,
    invoke: Invoke,
    on_failure: OnFailure,
    progress: Option<mpsc::UnboundedSender<DurablePositions>>,
) -> EventSourceReport {
    let mut report = EventSourceReport::default();
    let size = cfg.batch_size.max(1);
    let mut batch: Vec<StreamEntry> = Vec::with_capacity(size.min(1024));
    loop {
        if reader.rx.recv_many(&mut batch, size).await == 0 {
            break; // closed and drained
        }
        let deadline = Instant::now() + cfg.batch_window;
        let mut closed = false;
        while batch.len() < size {
            let want = size - batch.len();
            match tokio::time::timeout_at(deadline, reader.rx.recv_many(&mut batch, want)).await {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => break, // the window has passed
            }
        }
        report.records += batch.len() as u64;
        let last = batch.last().map(|e| e.sequence_number.clone());
        for part in cut_at_payload_limit(std::mem::take(&mut batch)) {
            report.batches += 1;
            deliver(&cfg, part, &invoke, &on_failure, &mut report).await;
        }
        if let (Some(tx), Some(seq)) = (&progress, last) {
            // A receiver that has gone only means nobody checkpoints any more.
            let _ = tx.send(DurablePositions::from([(reader.shard_id.clone(), seq)]));
        }
        if closed {
            break;
        }
    }
    report
}

/// Splits `records` into consecutive batches whose events stay within
/// [`MAX_INVOKE_PAYLOAD_BYTES`].
fn cut_at_payload_limit(records: Vec<StreamEntry>) -> Vec<Vec<StreamEntry>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for r in records {
        let size = r.data.len().div_ceil(3) * 4 + RECORD_ENVELOPE_BYTES;
        if !current.is_empty() && bytes + size > MAX_INVOKE_PAYLOAD_BYTES {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(r);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Invokes the function with `records` until every record is done or given to the
/// on-failure destination (module doc).
async fn deliver(
    cfg: &EventSourceConfig,
    records: Vec<StreamEntry>,
    invoke: &Invoke,
    on_failure: &OnFailure,
    report: &mut EventSourceReport,
) {
    // (records, retries so far), in shard order: the front is invoked next.
    let mut work: VecDeque<(Vec<StreamEntry>, u32)> = VecDeque::from([(records, 0)]);
    while let Some((mut records, retries)) = work.pop_front() {
        if records.is_empty() {
            continue;
        }
        report.invocations += 1;
        let (failed_from, error) = match invoke(event_of(&records)).await {
            Ok(answer) if answer.batch_item_failures.is_empty() => continue,
            Ok(answer) => {
                report.item_failures += answer.batch_item_failures.len() as u64;
                let failed: HashSet<&str> = answer
                    .batch_item_failures
                    .iter()
                    .filter_map(|f| f.item_identifier.as_deref())
                    .collect();
                let first = records
                    .iter()
                    .position(|r| failed.contains(r.sequence_number.as_str()));
                let all_known = failed.len() == answer.batch_item_failures.len()
                    && failed
                        .iter()
                        .all(|id| records.iter().any(|r| r.sequence_number == *id));
                // An identifier that is missing or not in the batch fails the whole batch.
                let from = if all_known { first.unwrap_or(0) } else { 0 };
                (
                    from,
                    format!(
                        "the function reported {} failed item(s) in batchItemFailures",
                        answer.batch_item_failures.len()
                    ),
                )
            }
            Err(e) => {
                report.function_errors += 1;
                if records.len() > 1 {
                    // BisectBatchOnFunctionError: halves, first half first; not a retry.
                    report.bisections += 1;
                    report.retried_records += records.len() as u64;
                    let second = records.split_off(records.len() / 2);
                    work.push_front((second, retries));
                    work.push_front((records, retries));
                    continue;
                }
                (0, e)
            }
        };
        let rest = records.split_off(failed_from.min(records.len()));
        if retries < cfg.max_retries {
            report.retried_records += rest.len() as u64;
            work.push_front((rest, retries + 1));
        } else {
            tracing::error!(records = rest.len(), error = %error,
                "records still failing after the retries go to the on-failure destination");
            report.on_failure_records += rest.len() as u64;
            on_failure(rest, error).await;
        }
    }
}

/// The Kinesis event Lambda sends for `records`.
pub fn event_of(records: &[StreamEntry]) -> KinesisEvent {
    let mut event = KinesisEvent::default();
    event.records = records
        .iter()
        .map(|e| {
            let mut k = KinesisRecord::default();
            k.approximate_arrival_timestamp = SecondTimestamp(
                chrono::DateTime::from_timestamp_millis(e.approximate_arrival_ms)
                    .unwrap_or_default(),
            );
            *k.data = e.data.to_vec();
            k.partition_key = e.partition_key.clone();
            k.sequence_number = e.sequence_number.clone();
            k.kinesis_schema_version = Some("1.0".to_owned());
            let mut r = KinesisEventRecord::default();
            r.kinesis = k;
            r.event_source = Some("aws:kinesis".to_owned());
            r.event_name = Some("aws:kinesis:record".to_owned());
            r.event_version = Some("1.0".to_owned());
            r.event_id = Some(format!("{}:{}", e.shard_id, e.sequence_number));
            r.aws_region = Some("local".to_owned());
            r.event_source_arn = Some("arn:aws:kinesis:local:000000000000:stream/local".to_owned());
            r
        })
        .collect();
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::LocalStream;
    use aws_lambda_events::event::streams::KinesisBatchItemFailure;
    use bytes::Bytes;
    use futures::FutureExt;
    use ingest::sink::{RecordSink, SinkRecord};
    use std::sync::Mutex;

    /// Puts `n` records of one partition key (one shard, in order) and closes the stream.
    async fn one_shard(n: usize) -> Vec<ShardReader> {
        let (stream, readers) = LocalStream::new(1, n.max(1));
        let batch: Vec<SinkRecord> = (0..n)
            .map(|i| SinkRecord {
                partition_key: "dev-1".into(),
                data: Bytes::from(i.to_string()),
            })
            .collect();
        stream.put_batch(&batch).await.unwrap();
        readers
    }

    fn data(event: &KinesisEvent) -> Vec<u32> {
        event
            .records
            .iter()
            .map(|r| {
                std::str::from_utf8(&r.kinesis.data.0)
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    /// A function that records every batch it gets and answers with `answer(batch)`.
    fn scripted(
        calls: Arc<Mutex<Vec<Vec<u32>>>>,
        answer: impl Fn(&KinesisEvent) -> Result<KinesisEventResponse, String> + Send + Sync + 'static,
    ) -> Invoke {
        let answer = Arc::new(answer);
        Arc::new(move |event: KinesisEvent| {
            calls.lock().unwrap().push(data(&event));
            let a = answer(&event);
            async move { a }.boxed()
        })
    }

    fn collect_failures(into: Arc<Mutex<Vec<u32>>>) -> OnFailure {
        Arc::new(move |records: Vec<StreamEntry>, _e: String| {
            into.lock().unwrap().extend(records.iter().map(|r| {
                std::str::from_utf8(&r.data)
                    .unwrap()
                    .parse::<u32>()
                    .unwrap()
            }));
            async {}.boxed()
        })
    }

    fn cfg(batch_size: usize) -> EventSourceConfig {
        EventSourceConfig {
            batch_size,
            batch_window: Duration::from_millis(50),
            max_retries: 2,
        }
    }

    #[tokio::test]
    async fn batches_are_cut_at_the_batch_size_in_shard_order() {
        let calls = Arc::default();
        let invoke = scripted(Arc::clone(&calls), |_| Ok(KinesisEventResponse::default()));
        let failed = Arc::default();
        let report = run(
            cfg(4),
            one_shard(10).await,
            invoke,
            collect_failures(Arc::clone(&failed)),
        )
        .await;
        let calls = calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]],
            "{report:?}"
        );
        assert_eq!(report.records, 10);
        assert_eq!(report.batches, 3);
        assert_eq!(report.invocations, 3);
        assert!(failed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_reported_item_failure_retries_the_batch_from_that_item_only() {
        let calls = Arc::default();
        let tries = Arc::new(Mutex::new(0));
        let t = Arc::clone(&tries);
        // The first answer reports the third record (2) failed; then everything succeeds.
        let invoke = scripted(Arc::clone(&calls), move |event| {
            let mut t = t.lock().unwrap();
            *t += 1;
            let mut answer = KinesisEventResponse::default();
            if *t == 1 {
                let mut f = KinesisBatchItemFailure::default();
                f.item_identifier = Some(event.records[2].kinesis.sequence_number.clone());
                answer.batch_item_failures.push(f);
            }
            Ok(answer)
        });
        let failed = Arc::default();
        let report = run(
            cfg(5),
            one_shard(5).await,
            invoke,
            collect_failures(Arc::clone(&failed)),
        )
        .await;
        assert_eq!(
            calls.lock().unwrap().clone(),
            vec![vec![0, 1, 2, 3, 4], vec![2, 3, 4]]
        );
        assert_eq!(report.item_failures, 1);
        assert_eq!(report.retried_records, 3);
        assert!(failed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_function_error_bisects_and_a_record_that_keeps_failing_goes_to_the_destination() {
        let calls = Arc::default();
        // Any batch holding record 3 fails.
        let invoke = scripted(Arc::clone(&calls), |event| {
            if data(event).contains(&3) {
                Err("Unhandled: poison record".to_owned())
            } else {
                Ok(KinesisEventResponse::default())
            }
        });
        let failed = Arc::default();
        let report = run(
            cfg(4),
            one_shard(4).await,
            invoke,
            collect_failures(Arc::clone(&failed)),
        )
        .await;
        assert_eq!(
            calls.lock().unwrap().clone(),
            // [0..4) fails → [0,1] ok, [2,3] fails → [2] ok, [3] fails, retried twice.
            vec![
                vec![0, 1, 2, 3],
                vec![0, 1],
                vec![2, 3],
                vec![2],
                vec![3],
                vec![3],
                vec![3]
            ]
        );
        assert_eq!(failed.lock().unwrap().clone(), vec![3]);
        assert_eq!(report.bisections, 2);
        assert_eq!(report.function_errors, 5);
        assert_eq!(report.on_failure_records, 1);
    }

    #[tokio::test]
    async fn an_unknown_item_identifier_fails_the_whole_batch() {
        let calls = Arc::default();
        let invoke = scripted(Arc::clone(&calls), |_| {
            let mut answer = KinesisEventResponse::default();
            let mut f = KinesisBatchItemFailure::default();
            f.item_identifier = Some("not-a-sequence-number".into());
            answer.batch_item_failures.push(f);
            Ok(answer)
        });
        let failed = Arc::default();
        run(
            cfg(3),
            one_shard(3).await,
            invoke,
            collect_failures(Arc::clone(&failed)),
        )
        .await;
        // Tried once and retried twice, whole; then all of it to the destination.
        assert_eq!(calls.lock().unwrap().len(), 3);
        assert_eq!(failed.lock().unwrap().clone(), vec![0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_is_not_full_waits_for_the_window() {
        let (stream, readers) = LocalStream::new(1, 10);
        let calls: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let invoke = scripted(Arc::clone(&calls), |_| Ok(KinesisEventResponse::default()));
        let cfg = EventSourceConfig {
            batch_size: 10,
            batch_window: Duration::from_secs(5),
            max_retries: 0,
        };
        let task = tokio::spawn(run(cfg, readers, invoke, collect_failures(Arc::default())));
        let put = |i: usize| SinkRecord {
            partition_key: "dev-1".into(),
            data: Bytes::from(i.to_string()),
        };
        stream.put_batch(&[put(0), put(1)]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            calls.lock().unwrap().is_empty(),
            "invoked before the window"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.lock().unwrap().clone(), vec![vec![0, 1]]);
        drop(stream);
        let report = task.await.unwrap();
        assert_eq!(report.batches, 1);
    }

    #[test]
    fn a_batch_is_cut_before_lambdas_payload_limit() {
        let big = |i: u8| StreamEntry {
            shard_id: "s".into(),
            sequence_number: i.to_string(),
            partition_key: "k".into(),
            data: Bytes::from(vec![i; 2 * 1024 * 1024]),
            approximate_arrival_ms: 0,
        };
        let parts = cut_at_payload_limit((0..3).map(big).collect());
        // Each 2 MiB record is ~2.7 MiB of base64: two fit in 6 MiB, three do not.
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    }
}

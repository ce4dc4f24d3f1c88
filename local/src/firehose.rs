//! A local, in-process Firehose delivery stream with a Kinesis data stream as its source:
//! what the `iotpipe` CLI runs instead of Amazon Data Firehose.
//!
//! It does what Firehose does for this pipeline, in one task that buffers, writes and
//! accounts, plus one task per invocation (steps 2–4 up to the Arrow batches), so that
//! invocations run while the buffer fills and the one before is written: at most
//! [`MAX_IN_FLIGHT`], each delivered once it and every one before it are done, in
//! invocation order (Firehose also invokes its processor concurrently; the order keeps the
//! files and the durable positions as a one-at-a-time stream would have them):
//! 1. **Processor buffering**: records read from the stream are buffered until the buffer
//!    holds [`FirehoseConfig::processor_buffer_bytes`] of record data or
//!    [`FirehoseConfig::processor_buffer_interval`] has passed since its first record, and
//!    never beyond Lambda's 6 MiB request limit ([`MAX_INVOKE_PAYLOAD_BYTES`]).
//! 2. **Transformation**: the buffer becomes a [`KinesisFirehoseEvent`] shaped as Firehose
//!    sends it for a Kinesis source, handed to the caller's [`Invoke`] (the transform
//!    handler, metered like Lambda). An invocation that errors is retried
//!    [`MAX_INVOKE_RETRIES`] times, immediately (the handler runs in-process: there is no
//!    throttling or network to wait out).
//! 3. **Contract check**: every `recordId` must be answered exactly once with a known
//!    result; a missing, duplicated or invalid answer fails that record with Firehose's
//!    error code, an unknown `recordId` is ignored (and logged).
//! 4. **Record-format conversion and dynamic partitioning**: the `Ok` records' data
//!    (newline-delimited [`telemetry::Reading`] JSON) becomes Arrow batches in the telemetry schema,
//!    grouped by the `dt`/`hour` partition keys, written as Parquet under
//!    `{prefix}/dt=…/hour=…/` by a [`PartitionedWriter`]. Files are closed at their target
//!    size, every [`FirehoseConfig::destination_interval`], and when the input ends.
//! 5. **Error output**: records that failed (`ProcessingFailed`, contract violations,
//!    invocation errors, unparseable readings, missing partition keys) are written as JSON
//!    lines in Firehose's error-record format ([`ErrorRecord`]), one object per invocation
//!    with failures, under `{error_prefix}/YYYY/MM/DD/HH/`.
//!
//! Nothing is dropped silently: at every point `records_in = ok + dropped +
//! processing_failed`, and every reading of an `Ok` record is either a Parquet row or an
//! error record (`rows_written + conversion_failures`).
//!
//! # Durable positions (for a checkpointing source)
//! [`run_with_progress`] also reports, per source shard, the sequence number up to which
//! every record has been handled *durably*: answered by the function, and its rows in
//! completed Parquet objects (or its failure in an error object). A Kinesis reader
//! checkpoints only those positions, so that a restart re-reads (at least once) instead of
//! losing what was buffered or in an open file. Positions are published after each
//! invocation that leaves no open Parquet file, after every destination flush, and at the
//! end of input.
//!
//! Simplifications: all error classes share one error prefix (the `errorCode` tells them
//! apart; Firehose can split them with `!{firehose:error-output-type}`), and the
//! destination buffer is closed on a fixed period rather than per file age.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use aws_lambda_events::encodings::MillisecondTimestamp;
use aws_lambda_events::event::firehose::{
    KinesisFirehoseEvent, KinesisFirehoseEventRecord, KinesisFirehoseRecordMetadata,
    KinesisFirehoseResponse,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use telemetry::parquet::basic::Compression;
use telemetry::parquet_writer::{ParquetWriterConfig, PartitionedWriter, WriteError, WrittenFile};
use telemetry::schema::{readings_to_batch, telemetry_schema};
use telemetry::stream::StreamEntry;
use telemetry::{Partition, ReadingRef};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use transform::handler::{
    PARTITION_KEY_DT, PARTITION_KEY_HOUR, TransformResult, base64_len, json_len,
};

/// Default processor buffer size: the largest for which any event the contract allows fits
/// the transform's 6 MiB response ([`transform::handler::MAX_PROCESSOR_BUFFER_BYTES`],
/// 0.2 MiB, as infra/template.yaml's `BufferSizeInMBs: "0.2"`). The buffer is cut before a
/// record that would take it past this size, so an event never holds more.
pub const DEFAULT_PROCESSOR_BUFFER_BYTES: usize = transform::handler::MAX_PROCESSOR_BUFFER_BYTES;
/// Default processor buffer interval: 60 s (Firehose's default; AWS accepts 0–900 s).
pub const DEFAULT_PROCESSOR_BUFFER_INTERVAL: Duration = Duration::from_secs(60);
/// Default destination buffer interval: 900 s (Firehose's maximum; AWS requires at least
/// 60 s when record-format conversion is on). Local runs pass a few seconds.
pub const DEFAULT_DESTINATION_INTERVAL: Duration = Duration::from_secs(900);
/// Default key prefix of error records (Firehose's `processing-failed` output type).
pub const DEFAULT_ERROR_PREFIX: &str = telemetry::layout::PROCESSING_FAILED_PREFIX;
/// Default delivery stream name.
pub const DEFAULT_DELIVERY_STREAM_NAME: &str = "iot-pipeline-telemetry";
/// What the record format conversion compresses Parquet with: Snappy, Firehose's default
/// and `infra/template.yaml`'s `ParquetSerDe: Compression: SNAPPY` (a test holds the two
/// together). The emulator wrote zstd before session 16: smaller files than the real
/// delivery stream's, and a rollup that decompresses every object of its hour once per
/// unit paid zstd's decoder 16 times over.
pub const PARQUET_COMPRESSION: Compression = Compression::SNAPPY;

/// Lambda's payload limit for a synchronous invocation's request: 6 MiB. An event is cut
/// before it would exceed it.
pub const MAX_INVOKE_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;
/// How many times an invocation that returned an error is retried (Firehose's default
/// retry for data transformation is 3; then the batch goes to the error prefix).
pub const MAX_INVOKE_RETRIES: u32 = 3;

/// The region in emulated ARNs.
pub const LOCAL_REGION: &str = "local";
/// The account in emulated ARNs (the conventional placeholder of local AWS emulators).
pub const LOCAL_ACCOUNT: &str = "000000000000";
/// The function name in the emulated `lambdaArn` of error records.
pub const TRANSFORM_FUNCTION_NAME: &str = "transform";

/// Error codes written into [`ErrorRecord::error_code`], as Firehose spells them.
pub mod error_code {
    /// The function answered the record `ProcessingFailed`.
    pub const PROCESSING_FAILED_STATUS: &str = "Lambda.ProcessingFailedStatus";
    /// The invocation returned an error on every attempt.
    pub const FUNCTION_ERROR: &str = "Lambda.FunctionError";
    /// The response has no answer for the record.
    pub const MISSING_RECORD_ID: &str = "Lambda.MissingRecordId";
    /// The response answers the record more than once.
    pub const DUPLICATED_RECORD_ID: &str = "Lambda.DuplicatedRecordId";
    /// The answer's `result` is missing or not one of `Ok`, `Dropped`, `ProcessingFailed`.
    pub const INVALID_RESULT: &str = "Lambda.JsonProcessingException";
    /// An `Ok` record lacks valid `dt`/`hour` partition keys.
    pub const MISSING_PARTITION_KEYS: &str = "DynamicPartitioning.MetadataExtractionFailed";
    /// A document of an `Ok` record is not a reading of the telemetry schema.
    pub const MALFORMED_DATA: &str = "DataFormatConversion.MalformedData";
}

/// How the emulated delivery stream buffers, converts and where it writes.
#[derive(Debug, Clone)]
pub struct FirehoseConfig {
    /// Processor buffering: invoke the transform once this many bytes of record data
    /// (decoded, as the stream holds it) are buffered, and never let it hold more (a record
    /// that would overflow it starts the next event). Firehose: 0.2–3 MB, its default
    /// 1 MiB; ours [`DEFAULT_PROCESSOR_BUFFER_BYTES`] like the template; any value is
    /// accepted here so that tests can cut small batches.
    pub processor_buffer_bytes: usize,
    /// Processor buffering interval: invoke the transform at the latest this long after
    /// the first record entered the buffer. Firehose: 0–900 s, default 60 s.
    pub processor_buffer_interval: Duration,
    /// The Parquet writer: key prefix (`telemetry`), target file size, row group size,
    /// compression.
    pub parquet: ParquetWriterConfig,
    /// Destination buffering interval: close open Parquet files at least this often, so
    /// that data lands periodically. Default 900 s; local runs pass a few seconds.
    pub destination_interval: Duration,
    /// Key prefix of error records, without a trailing slash. Default
    /// `errors/processing-failed`.
    pub error_prefix: String,
    /// The delivery stream's name: in its ARN and in error object names.
    pub delivery_stream_name: String,
}

impl Default for FirehoseConfig {
    fn default() -> Self {
        Self {
            processor_buffer_bytes: DEFAULT_PROCESSOR_BUFFER_BYTES,
            processor_buffer_interval: DEFAULT_PROCESSOR_BUFFER_INTERVAL,
            parquet: ParquetWriterConfig {
                compression: PARQUET_COMPRESSION,
                ..ParquetWriterConfig::default()
            },
            destination_interval: DEFAULT_DESTINATION_INTERVAL,
            error_prefix: DEFAULT_ERROR_PREFIX.to_string(),
            delivery_stream_name: DEFAULT_DELIVERY_STREAM_NAME.to_string(),
        }
    }
}

/// How the emulator invokes the transform function: the event in, the response or the
/// invocation's error message out. The caller wraps the handler to meter it like Lambda.
/// The event is shared, not copied: the emulator keeps it for the conversion and the
/// error output (a copy per invocation was ~3 % of a replay's CPU).
pub type Invoke = Arc<
    dyn Fn(Arc<KinesisFirehoseEvent>) -> BoxFuture<'static, Result<KinesisFirehoseResponse, String>>
        + Send
        + Sync,
>;

/// An [`Invoke`] that calls this crate's [`transform::transform`] directly, unmetered.
pub fn local_invoke() -> Invoke {
    Arc::new(|event: Arc<KinesisFirehoseEvent>| {
        Box::pin(async move { Ok(transform::transform(&event)) })
            as BoxFuture<'static, Result<KinesisFirehoseResponse, String>>
    })
}

/// What a run of the emulated delivery stream did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirehoseReport {
    /// Records read from the stream (= `ok + dropped + processing_failed`).
    pub records_in: u64,
    /// Records the function answered `Ok` that were delivered for conversion.
    pub ok: u64,
    /// Records the function answered `Dropped`.
    pub dropped: u64,
    /// Records written to the error prefix: answered `ProcessingFailed`, not answered
    /// correctly, in a failed invocation, or `Ok` without partition keys.
    pub processing_failed: u64,
    /// Parquet rows written: the readings of the `Ok` records less `conversion_failures`.
    pub rows_written: u64,
    /// Calls of [`Invoke`], retries included (each one is a billed Lambda invocation).
    pub invocations: u64,
    /// Parquet objects completed, in order.
    pub files: Vec<WrittenFile>,
    /// Error objects written (one per invocation with failures).
    pub error_objects: u64,
    /// Documents of `Ok` records that were not readings of the telemetry schema; each is
    /// an error record with code [`error_code::MALFORMED_DATA`].
    pub conversion_failures: u64,
}

/// One line of an error object: Firehose's error-record format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRecord {
    /// Invocation attempts made for the record's batch.
    pub attempts_made: u32,
    /// When the record arrived (its Kinesis approximate arrival), epoch milliseconds.
    pub arrival_timestamp: i64,
    /// The failure class (see [`error_code`]).
    pub error_code: String,
    /// What went wrong, in words.
    pub error_message: String,
    /// When the emulator gave up on the record, epoch milliseconds.
    pub attempt_ending_timestamp: i64,
    /// The record data, base64: the stream record as it arrived, or for a conversion
    /// failure the one document that failed.
    pub raw_data: String,
    /// The transform function's ARN; absent for conversion failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_arn: Option<String>,
}

impl ErrorRecord {
    /// The raw data, decoded (empty if it is not valid base64).
    pub fn raw(&self) -> Vec<u8> {
        STANDARD.decode(&self.raw_data).unwrap_or_default()
    }
}

/// Failures that stop the emulator: the destination could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// A Parquet file could not be written.
    #[error(transparent)]
    Parquet(#[from] WriteError),
    /// A transform invocation's task panicked or was cancelled.
    #[error("the transform invocation's task failed: {0}")]
    Invocation(#[source] tokio::task::JoinError),
    /// Readings could not be assembled into an Arrow batch.
    #[error("building an Arrow batch of readings: {0}")]
    Arrow(#[from] ArrowError),
    /// An error object could not be written.
    #[error("writing error records to {path}: {source}")]
    ErrorOutput {
        /// The object key.
        path: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The new-object marker of a completed Parquet object could not be written (the
    /// rollup finds new objects by their markers, as it would by S3 event notifications).
    #[error("writing the new-object marker of {path}: {source}")]
    Marker {
        /// The Parquet object's key.
        path: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
}

/// Per source shard (`shardId-…`), the sequence number of the last record handled
/// durably; see the module doc.
pub type DurablePositions = BTreeMap<String, String>;

/// Runs the delivery stream until `input` closes, then flushes everything and reports.
///
/// Reading stops while an invocation or a write is in progress, so a bounded channel
/// passes the backpressure on to the stream. Returns an error only when the destination
/// cannot be written; record-level failures go to the error prefix.
pub async fn run(
    cfg: FirehoseConfig,
    input: mpsc::Receiver<StreamEntry>,
    store: Arc<dyn ObjectStore>,
    invoke: Invoke,
) -> Result<FirehoseReport, EmulatorError> {
    run_with_progress(cfg, input, store, invoke, None).await
}

/// [`run`], also sending the [`DurablePositions`] on `progress` whenever they advance
/// (each message holds every shard seen so far). The channel closes when the run ends.
pub async fn run_with_progress(
    cfg: FirehoseConfig,
    mut input: mpsc::Receiver<StreamEntry>,
    store: Arc<dyn ObjectStore>,
    invoke: Invoke,
    progress: Option<mpsc::UnboundedSender<DurablePositions>>,
) -> Result<FirehoseReport, EmulatorError> {
    let processor_interval = cfg.processor_buffer_interval;
    let destination_interval = cfg.destination_interval.max(Duration::from_millis(1));
    let mut stream = DeliveryStream::new(cfg, store, invoke);
    stream.progress = progress;
    tracing::info!(
        delivery_stream = %stream.cfg.delivery_stream_name,
        processor_buffer_bytes = stream.cfg.processor_buffer_bytes,
        processor_buffer_interval_ms = processor_interval.as_millis() as u64,
        destination_interval_ms = destination_interval.as_millis() as u64,
        "emulated Firehose delivery stream started"
    );

    let mut destination_tick =
        tokio::time::interval_at(Instant::now() + destination_interval, destination_interval);
    destination_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // One timer, re-armed whenever a new buffer starts, rather than a new one per record.
    let processor_timer = tokio::time::sleep(processor_interval);
    tokio::pin!(processor_timer);
    let mut armed_for: Option<Instant> = None;
    let mut batch = Vec::with_capacity(INPUT_BATCH);

    loop {
        if stream.buffer_started != armed_for {
            armed_for = stream.buffer_started;
            if let Some(start) = armed_for {
                processor_timer.as_mut().reset(start + processor_interval);
            }
        }
        tokio::select! {
            // Timers first, so that a busy stream cannot starve them.
            biased;
            () = &mut processor_timer, if armed_for.is_some() => {
                stream.invoke_buffer(Cut::Interval).await?;
            }
            _ = destination_tick.tick() => {
                stream.close_files("destination interval").await?;
            }
            // The invocation in flight finished: deliver it now, not only when the next one
            // starts (the input may pause for good).
            joined = wait_first(&mut stream.pending), if !stream.pending.is_empty() => {
                if let Some(p) = stream.pending.pop_front() {
                    stream.deliver(p, joined).await?;
                }
            }
            // A batch at a time (cancel-safe), then a short pause when the input had less:
            // waking this task for every record cost more than buffering the record.
            n = input.recv_many(&mut batch, INPUT_BATCH) => {
                if n == 0 {
                    break;
                }
                for entry in batch.drain(..) {
                    stream.accept(entry).await?;
                }
                if n < INPUT_BATCH {
                    tokio::time::sleep(crate::stream::POLL_INTERVAL).await;
                }
            }
        }
    }
    stream.invoke_buffer(Cut::EndOfInput).await?;
    stream.drain_pending().await?;
    stream.close_files("end of input").await?;
    stream.publish_durable();
    let r = &stream.report;
    tracing::info!(
        records_in = r.records_in,
        ok = r.ok,
        dropped = r.dropped,
        processing_failed = r.processing_failed,
        rows_written = r.rows_written,
        conversion_failures = r.conversion_failures,
        invocations = r.invocations,
        files = r.files.len(),
        error_objects = r.error_objects,
        "emulated Firehose delivery stream finished"
    );
    Ok(stream.report)
}

/// Records the emulator takes from its input at once.
const INPUT_BATCH: usize = 1024;

/// An invocation in flight and what its log line needs.
struct Pending {
    /// The invocation, retries included, and the conversion of its answers.
    task: tokio::task::JoinHandle<Invoked>,
    /// The invocation's number in this run (from 1): its error object's name.
    number: u64,
    cut: Cut,
    data_bytes: usize,
    event_bytes: usize,
}

/// Transform invocations in flight at most (each with its conversion). The buffer goes on
/// filling meanwhile; a cut with this many in flight first delivers the oldest.
pub const MAX_IN_FLIGHT: usize = 2;

/// The result of the oldest invocation in flight; never resolves when there is none.
async fn wait_first(
    p: &mut std::collections::VecDeque<Pending>,
) -> Result<Invoked, tokio::task::JoinError> {
    match p.front_mut() {
        Some(p) => (&mut p.task).await,
        None => std::future::pending().await,
    }
}

/// An invocation done: its event, the attempts it took, and its answers converted.
struct Invoked {
    event: KinesisFirehoseEvent,
    attempts: u32,
    converted: Result<Converted, EmulatorError>,
}

/// What an invocation's answers become (Firehose's record-format conversion): the rows of
/// its `Ok` records as Arrow batches per partition, its error records, and its counts.
struct Converted {
    counts: Counts,
    errors: Vec<ErrorRecord>,
    batches: Vec<(Partition, RecordBatch)>,
    /// When the answers were converted (the error records' attempt end), epoch ms.
    now: i64,
}

/// Invokes the function (with retries), checks its answers against the event and converts
/// them: the CPU-heavy part of an invocation, run in its own task.
async fn invoke_and_convert(
    invoke: Invoke,
    event: KinesisFirehoseEvent,
    lambda_arn: String,
) -> Invoked {
    let (event, result, attempts) = invoke_with_retries(invoke, event).await;
    let answers = match result {
        Ok(response) => check_contract(&event, response),
        Err(message) => event
            .records
            .iter()
            .map(|_| Answer::Failed {
                code: error_code::FUNCTION_ERROR,
                message: format!(
                    "The Lambda function was invoked {attempts} times and returned an \
                     error each time: {message}"
                ),
            })
            .collect(),
    };
    let converted = convert(&event, answers, attempts, &lambda_arn);
    Invoked {
        event,
        attempts,
        converted,
    }
}

/// Converts the `Ok` records' rows and collects the failures as error records.
fn convert(
    event: &KinesisFirehoseEvent,
    answers: Vec<Answer>,
    attempts: u32,
    lambda_arn: &str,
) -> Result<Converted, EmulatorError> {
    let now = now_millis();
    let mut counts = Counts::default();
    let mut errors: Vec<ErrorRecord> = Vec::new();
    // The rows of each partition, borrowing from the answers' data (a handful of
    // partitions per event: a list).
    let mut by_partition: Vec<(Partition, Vec<ReadingRef<'_>>)> = Vec::new();
    // The last record's partition keys and their group: records come in runs of one hour,
    // and checking the keys (two strings, a date) per record was ~3 % of a replay's CPU.
    let mut last: Option<(&HashMap<String, String>, usize)> = None;
    // Reads the transform's spelling of a row directly; serde reads any other.
    let mut rows_reader = telemetry::row::RowReader::new();
    for (record, answer) in event.records.iter().zip(&answers) {
        let arrival = record.approximate_arrival_timestamp.timestamp_millis();
        let failure = |code: &str, message: String, raw: &[u8], lambda: bool| ErrorRecord {
            attempts_made: attempts,
            arrival_timestamp: arrival,
            error_code: code.to_string(),
            error_message: message,
            attempt_ending_timestamp: now,
            raw_data: STANDARD.encode(raw),
            lambda_arn: lambda.then(|| lambda_arn.to_owned()),
        };
        match answer {
            Answer::Dropped => counts.dropped += 1,
            Answer::Failed { code, message } => {
                counts.failed += 1;
                errors.push(failure(code, message.clone(), &record.data, true));
            }
            Answer::Ok {
                data,
                partition_keys,
            } => {
                let known = last
                    .filter(|(keys, _)| *keys == partition_keys)
                    .map(|(_, group)| group);
                let group = known.or_else(|| {
                    let partition = partition_of(partition_keys)?;
                    Some(
                        match by_partition.iter().position(|(p, _)| *p == partition) {
                            Some(group) => group,
                            None => {
                                by_partition.push((partition, Vec::new()));
                                by_partition.len() - 1
                            }
                        },
                    )
                });
                let Some(group) = group else {
                    counts.failed += 1;
                    errors.push(failure(
                        error_code::MISSING_PARTITION_KEYS,
                        format!(
                            "partition keys {partition_keys:?} lack a valid \
                             `{PARTITION_KEY_DT}` (YYYY-MM-DD) and `{PARTITION_KEY_HOUR}` (HH)"
                        ),
                        &record.data,
                        true,
                    ));
                    continue;
                };
                counts.ok += 1;
                last = Some((partition_keys, group));
                let rows = &mut by_partition[group].1;
                // What record-format conversion does: each JSON document is one row.
                for line in telemetry::row::lines(data) {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let read = match rows_reader.read(line) {
                        Some(reading) => Ok(reading),
                        None => serde_json::from_slice::<ReadingRef<'_>>(line),
                    };
                    match read {
                        Ok(reading) => rows.push(reading),
                        Err(e) => {
                            counts.conversion_failures += 1;
                            errors.push(failure(
                                error_code::MALFORMED_DATA,
                                format!("not a reading of the telemetry schema: {e}"),
                                line,
                                false,
                            ));
                        }
                    }
                }
            }
        }
    }
    // In partition order, as the files are written.
    by_partition.sort_by(|a, b| a.0.cmp(&b.0));
    let mut batches = Vec::with_capacity(by_partition.len());
    for (partition, readings) in by_partition {
        counts.rows += readings.len() as u64;
        batches.push((partition, readings_to_batch(&readings)?));
    }
    Ok(Converted {
        counts,
        errors,
        batches,
        now,
    })
}

/// The event back from a finished invocation: the emulator holds it alone again, unless
/// an invoke kept a reference (then a copy).
fn into_owned(event: Arc<KinesisFirehoseEvent>) -> KinesisFirehoseEvent {
    Arc::try_unwrap(event).unwrap_or_else(|shared| (*shared).clone())
}

/// What the encoded size of an event record without its data depends on, when none of its
/// strings needs an escape: the strings' lengths and the arrival time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordShape {
    record_id: usize,
    shard_id: usize,
    partition_key: usize,
    sequence_number: usize,
    arrival_ms: i64,
}

impl RecordShape {
    /// The shape of a record as `DeliveryStream::event_record` builds it, before its data
    /// is set (`None` when a string needs an escape, the two arrival times differ, or the
    /// record has a sub-sequence number or data: then its size is measured as it is).
    fn of(record: &KinesisFirehoseEventRecord) -> Option<Self> {
        let plain = |s: &Option<String>| {
            let s = s.as_deref().unwrap_or("");
            (!s.bytes().any(telemetry::row::escaped_in_json)).then_some(s.len())
        };
        let meta = record.kinesis_firehose_record_metadata.as_ref()?;
        let arrival_ms = record.approximate_arrival_timestamp.timestamp_millis();
        if meta.approximate_arrival_timestamp.timestamp_millis() != arrival_ms
            || meta.subsequence_number != 0
            || !record.data.0.is_empty()
        {
            return None;
        }
        Some(Self {
            record_id: plain(&record.record_id)?,
            shard_id: plain(&meta.shard_id)?,
            partition_key: plain(&meta.partition_key)?,
            sequence_number: plain(&meta.sequence_number)?,
            arrival_ms,
        })
    }
}

/// Invokes the function with `event` until it answers, at most
/// [`MAX_INVOKE_RETRIES`] times more; returns the event, the last result and the attempts.
async fn invoke_with_retries(
    invoke: Invoke,
    event: KinesisFirehoseEvent,
) -> (
    KinesisFirehoseEvent,
    Result<KinesisFirehoseResponse, String>,
    u32,
) {
    let event = Arc::new(event);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match invoke(event.clone()).await {
            Ok(response) => return (into_owned(event), Ok(response), attempts),
            Err(message) => {
                tracing::warn!(
                    invocation_id = event.invocation_id.as_deref().unwrap_or(""),
                    attempt = attempts,
                    error = %message,
                    "transform invocation failed"
                );
                if attempts > MAX_INVOKE_RETRIES {
                    return (into_owned(event), Err(message), attempts);
                }
            }
        }
    }
}

/// Why a buffer was handed to the function.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The processor buffer size was reached.
    Size,
    /// The next record would push the event over the Lambda request limit.
    PayloadLimit,
    /// The processor buffer interval elapsed.
    Interval,
    /// The stream closed.
    EndOfInput,
}

impl Cut {
    fn as_str(self) -> &'static str {
        match self {
            Cut::Size => "buffer size",
            Cut::PayloadLimit => "lambda payload limit",
            Cut::Interval => "buffer interval",
            Cut::EndOfInput => "end of input",
        }
    }
}

/// The answer for one input record after the contract check.
enum Answer {
    Ok {
        data: Vec<u8>,
        partition_keys: HashMap<String, String>,
    },
    Dropped,
    Failed {
        code: &'static str,
        message: String,
    },
}

struct DeliveryStream {
    cfg: FirehoseConfig,
    store: Arc<dyn ObjectStore>,
    invoke: Invoke,
    writer: PartitionedWriter,
    report: FirehoseReport,
    /// Records waiting for the next invocation, already in event form.
    buffer: Vec<KinesisFirehoseEventRecord>,
    /// Record data in the buffer (decoded), for the size hint.
    buffer_bytes: usize,
    /// Encoded size of the event the buffer would make, for the Lambda request limit.
    event_bytes: usize,
    /// When the buffer's first record arrived, for the interval hint.
    buffer_started: Option<Instant>,
    /// Encoded size of an event without records.
    envelope_bytes: usize,
    delivery_stream_arn: String,
    source_stream_arn: String,
    lambda_arn: String,
    /// Tells this run's object names and invocation ids apart from other runs'.
    run_tag: String,
    next_record: u64,
    /// The last event record's shape (its strings' lengths, all without escapes, and its
    /// arrival time) and encoded size without data: the next record of the same shape has
    /// the same size, and most do (one arrival millisecond holds many records).
    last_shape: Option<(RecordShape, usize)>,
    next_invocation: u64,
    /// Per shard, the last record whose invocation has been delivered (to the Parquet
    /// writer or the error prefix); durable once no Parquet file is open.
    handled: DurablePositions,
    /// What was last sent on `progress`, to send only advances.
    published: DurablePositions,
    /// Where durable positions go ([`run_with_progress`]).
    progress: Option<mpsc::UnboundedSender<DurablePositions>>,
    /// The invocations in flight, oldest first: each is delivered once it is done and
    /// every one before it is delivered.
    pending: std::collections::VecDeque<Pending>,
}

impl DeliveryStream {
    fn new(cfg: FirehoseConfig, store: Arc<dyn ObjectStore>, invoke: Invoke) -> Self {
        let writer = PartitionedWriter::new(store.clone(), telemetry_schema(), cfg.parquet.clone());
        let delivery_stream_arn = format!(
            "arn:aws:firehose:{LOCAL_REGION}:{LOCAL_ACCOUNT}:deliverystream/{}",
            cfg.delivery_stream_name
        );
        let source_stream_arn = format!(
            "arn:aws:kinesis:{LOCAL_REGION}:{LOCAL_ACCOUNT}:stream/{}-source",
            cfg.delivery_stream_name
        );
        let lambda_arn = format!(
            "arn:aws:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT}:function:{TRANSFORM_FUNCTION_NAME}"
        );
        let mut stream = Self {
            cfg,
            store,
            invoke,
            writer,
            report: FirehoseReport::default(),
            buffer: Vec::new(),
            buffer_bytes: 0,
            event_bytes: 0,
            buffer_started: None,
            envelope_bytes: 0,
            delivery_stream_arn,
            source_stream_arn,
            lambda_arn,
            run_tag: run_tag(),
            next_record: 0,
            last_shape: None,
            next_invocation: 0,
            handled: DurablePositions::new(),
            published: DurablePositions::new(),
            progress: None,
            pending: std::collections::VecDeque::new(),
        };
        stream.envelope_bytes = json_len(&stream.event(Vec::new()));
        stream.event_bytes = stream.envelope_bytes;
        stream
    }

    /// An event as Firehose sends it for a Kinesis source.
    fn event(&self, records: Vec<KinesisFirehoseEventRecord>) -> KinesisFirehoseEvent {
        let mut event = KinesisFirehoseEvent::default();
        // Fixed width, so that the envelope measured at start-up stays exact.
        event.invocation_id = Some(format!("{}-{:012}", self.run_tag, self.next_invocation));
        event.delivery_stream_arn = Some(self.delivery_stream_arn.clone());
        event.source_kinesis_stream_arn = Some(self.source_stream_arn.clone());
        event.region = Some(LOCAL_REGION.to_string());
        event.records = records;
        event
    }

    /// Buffers one stream record, invoking the function when a buffering hint is met.
    async fn accept(&mut self, entry: StreamEntry) -> Result<(), EmulatorError> {
        self.report.records_in += 1;
        let data_len = entry.data.len();
        let (record, encoded_len) = self.event_record(entry);
        // +1: the comma between array elements.
        let record_bytes = encoded_len + 1;
        if !self.buffer.is_empty() && self.event_bytes + record_bytes > MAX_INVOKE_PAYLOAD_BYTES {
            self.invoke_buffer(Cut::PayloadLimit).await?;
        }
        if !self.buffer.is_empty() && self.buffer_bytes + data_len > self.cfg.processor_buffer_bytes
        {
            self.invoke_buffer(Cut::Size).await?;
        }
        if self.buffer.is_empty() {
            self.buffer_started = Some(Instant::now());
        }
        self.buffer.push(record);
        self.buffer_bytes += data_len;
        self.event_bytes += record_bytes;
        if self.buffer_bytes >= self.cfg.processor_buffer_bytes {
            self.invoke_buffer(Cut::Size).await?;
        }
        Ok(())
    }

    /// The event record of a stream record, and its encoded size.
    fn event_record(&mut self, entry: StreamEntry) -> (KinesisFirehoseEventRecord, usize) {
        let arrival = MillisecondTimestamp(
            DateTime::<Utc>::from_timestamp_millis(entry.approximate_arrival_ms)
                .unwrap_or_default(),
        );
        let mut metadata = KinesisFirehoseRecordMetadata::default();
        metadata.shard_id = Some(entry.shard_id);
        metadata.partition_key = Some(entry.partition_key);
        metadata.sequence_number = Some(entry.sequence_number);
        // Records are not KPL-aggregated, so there is no sub-sequence.
        metadata.subsequence_number = 0;
        metadata.approximate_arrival_timestamp = arrival.clone();
        let mut record = KinesisFirehoseEventRecord::default();
        // Opaque and unique within the run, like Firehose's record ids.
        record.record_id = Some(crate::stream::padded_decimal("", self.next_record, 20));
        self.next_record += 1;
        record.approximate_arrival_timestamp = arrival;
        record.kinesis_firehose_record_metadata = Some(metadata);
        // Measured without the data plus its base64 length: the data is encoded only once.
        let shape = RecordShape::of(&record);
        let without_data = match (&self.last_shape, shape) {
            (Some((last, len)), Some(shape)) if *last == shape => *len,
            (_, shape) => {
                let len = json_len(&record);
                self.last_shape = shape.map(|s| (s, len));
                len
            }
        };
        let encoded_len = without_data + base64_len(entry.data.len());
        // The stream's buffer itself when nothing else holds it (no copy per record).
        record.data.0 = Vec::from(entry.data);
        (record, encoded_len)
    }

    /// Hands the buffer to the function in a task of its own (which also converts the
    /// answers), first delivering the oldest invocation when [`MAX_IN_FLIGHT`] are in
    /// flight. Deliveries keep invocation order (Firehose invokes its processor
    /// concurrently too; the order keeps the output and the durable positions as a
    /// one-at-a-time stream would have them).
    async fn invoke_buffer(&mut self, cut: Cut) -> Result<(), EmulatorError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.buffer);
        let data_bytes = std::mem::take(&mut self.buffer_bytes);
        let event_bytes = std::mem::replace(&mut self.event_bytes, self.envelope_bytes);
        self.buffer_started = None;
        let event = self.event(records);
        self.next_invocation += 1;
        let task = tokio::spawn(invoke_and_convert(
            self.invoke.clone(),
            event,
            self.lambda_arn.clone(),
        ));
        while self.pending.len() >= MAX_IN_FLIGHT {
            if let Some(p) = self.pending.pop_front() {
                self.complete(p).await?;
            }
        }
        self.pending.push_back(Pending {
            task,
            number: self.next_invocation,
            cut,
            data_bytes,
            event_bytes,
        });
        Ok(())
    }

    /// Delivers the invocations still in flight, in order.
    async fn drain_pending(&mut self) -> Result<(), EmulatorError> {
        while let Some(p) = self.pending.pop_front() {
            self.complete(p).await?;
        }
        Ok(())
    }

    /// Waits for an invocation and delivers it.
    async fn complete(&mut self, mut p: Pending) -> Result<(), EmulatorError> {
        let joined = (&mut p.task).await;
        self.deliver(p, joined).await
    }

    /// Writes a finished invocation's Parquet rows and error records (its answers were
    /// checked and converted in its task).
    async fn deliver(
        &mut self,
        p: Pending,
        joined: Result<Invoked, tokio::task::JoinError>,
    ) -> Result<(), EmulatorError> {
        let Pending {
            task: _,
            number,
            cut,
            data_bytes,
            event_bytes,
        } = p;
        let done = joined.map_err(EmulatorError::Invocation)?;
        let (event, attempts) = (done.event, done.attempts);
        self.report.invocations += u64::from(attempts);
        let Converted {
            counts,
            errors,
            batches,
            now,
        } = done.converted?;
        for (partition, batch) in &batches {
            let files = self.writer.write(partition, batch).await?;
            self.completed(files).await?;
        }
        if !errors.is_empty() {
            self.write_errors(&errors, now, number).await?;
        }
        self.report.ok += counts.ok;
        self.report.dropped += counts.dropped;
        self.report.processing_failed += counts.failed;
        self.report.rows_written += counts.rows;
        self.report.conversion_failures += counts.conversion_failures;
        for r in &event.records {
            if let Some(m) = &r.kinesis_firehose_record_metadata
                && let (Some(shard), Some(seq)) = (&m.shard_id, &m.sequence_number)
            {
                self.handled.insert(shard.clone(), seq.clone());
            }
        }
        if self.writer.pending_rows() == 0 {
            self.publish_durable();
        }
        // One line per invocation: with `-v`, beside the REPORT lines (1,137 of them for a
        // million-message replay would bury the progress bar by default).
        tracing::debug!(
            invocation_id = event.invocation_id.as_deref().unwrap_or(""),
            cut = cut.as_str(),
            records = event.records.len(),
            data_bytes,
            event_bytes,
            attempts,
            ok = counts.ok,
            dropped = counts.dropped,
            processing_failed = counts.failed,
            rows = counts.rows,
            "transform invoked"
        );
        Ok(())
    }

    /// Writes one error object of JSON lines under `{error_prefix}/YYYY/MM/DD/HH/`.
    async fn write_errors(
        &mut self,
        errors: &[ErrorRecord],
        now: i64,
        invocation: u64,
    ) -> Result<(), EmulatorError> {
        let t = DateTime::<Utc>::from_timestamp_millis(now).unwrap_or_default();
        // Firehose's naming: {stream}-{version}-{yyyy-MM-dd-HH-mm-ss}-{unique}.
        let path = format!(
            "{}/{}/{}-1-{}-{}-{:012}",
            self.cfg.error_prefix.trim_end_matches('/'),
            t.format("%Y/%m/%d/%H"),
            self.cfg.delivery_stream_name,
            t.format("%Y-%m-%d-%H-%M-%S"),
            self.run_tag,
            invocation,
        );
        let mut body = Vec::new();
        for e in errors {
            // An ErrorRecord of strings and integers always serializes.
            if serde_json::to_writer(&mut body, e).is_ok() {
                body.push(b'\n');
            }
        }
        self.store
            .put(&Path::from(path.as_str()), PutPayload::from(body))
            .await
            .map_err(|source| EmulatorError::ErrorOutput {
                path: path.clone(),
                source,
            })?;
        self.report.error_objects += 1;
        tracing::warn!(path = %path, records = errors.len(), "error records written");
        Ok(())
    }

    /// Closes every open Parquet file (destination buffer interval or end of input).
    async fn close_files(&mut self, why: &'static str) -> Result<(), EmulatorError> {
        if self.writer.pending_rows() > 0 {
            let done = self.writer.flush().await?;
            tracing::debug!(why, files = done.len(), "destination buffer flushed");
            self.completed(done).await?;
        }
        self.publish_durable();
        Ok(())
    }

    /// Sends the handled positions on `progress` if they advanced. Call only when no
    /// Parquet file is open: then everything handled is in completed objects.
    fn publish_durable(&mut self) {
        if self.handled == self.published {
            return;
        }
        if let Some(tx) = &self.progress {
            // A receiver that has gone only means nobody checkpoints any more.
            let _ = tx.send(self.handled.clone());
        }
        self.published = self.handled.clone();
    }

    /// Records completed objects and leaves each its new-object marker for the rollup
    /// (what S3 event notifications do on AWS).
    async fn completed(&mut self, files: Vec<WrittenFile>) -> Result<(), EmulatorError> {
        for f in files {
            tracing::debug!(path = %f.path, rows = f.rows, bytes = f.bytes, "parquet file written");
            analytics::pending::mark(
                &self.store,
                analytics::config::DEFAULT_PENDING_PREFIX,
                &f.path,
            )
            .await
            .map_err(|source| EmulatorError::Marker {
                path: f.path.clone(),
                source,
            })?;
            self.report.files.push(f);
        }
        Ok(())
    }
}

/// Per-invocation counters.
#[derive(Debug, Default)]
struct Counts {
    ok: u64,
    dropped: u64,
    failed: u64,
    rows: u64,
    conversion_failures: u64,
}

/// Matches the response to the event: one answer per input record, in input order.
fn check_contract(event: &KinesisFirehoseEvent, response: KinesisFirehoseResponse) -> Vec<Answer> {
    let n = event.records.len();
    // A function answers in the event's order as a rule: each answer is first checked
    // against the record at its own position, and a map of the record ids is built only
    // for the first answer out of place.
    let mut position: Option<HashMap<&str, usize>> = None;
    let mut answers: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
    let mut duplicated = vec![false; n];
    let mut unknown = 0usize;
    for (k, answer) in response.records.into_iter().enumerate() {
        let id = answer.record_id.as_deref();
        let in_place =
            id.is_some() && event.records.get(k).and_then(|r| r.record_id.as_deref()) == id;
        let found = if in_place {
            Some(k)
        } else {
            let position = position.get_or_insert_with(|| {
                event
                    .records
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.record_id.as_deref().map(|id| (id, i)))
                    .collect()
            });
            id.and_then(|id| position.get(id).copied())
        };
        let Some(i) = found else {
            unknown += 1;
            continue;
        };
        if answers[i].is_some() {
            duplicated[i] = true;
            continue;
        }
        let result = answer.result.as_deref().map(str::parse::<TransformResult>);
        answers[i] = Some(match result {
            Some(Ok(TransformResult::Ok)) => Answer::Ok {
                data: answer.data.0,
                partition_keys: answer.metadata.partition_keys,
            },
            Some(Ok(TransformResult::Dropped)) => Answer::Dropped,
            Some(Ok(TransformResult::ProcessingFailed)) => Answer::Failed {
                code: error_code::PROCESSING_FAILED_STATUS,
                message: "ProcessingFailed status set for record".to_string(),
            },
            Some(Err(e)) => Answer::Failed {
                code: error_code::INVALID_RESULT,
                message: e.to_string(),
            },
            None => Answer::Failed {
                code: error_code::INVALID_RESULT,
                message: "the answer has no `result`".to_string(),
            },
        });
    }
    if unknown > 0 {
        tracing::warn!(
            invocation_id = event.invocation_id.as_deref().unwrap_or(""),
            unknown,
            "the response answers record ids that were not in the event"
        );
    }
    answers
        .into_iter()
        .zip(duplicated)
        .map(|(answer, duplicated)| match answer {
            _ if duplicated => Answer::Failed {
                code: error_code::DUPLICATED_RECORD_ID,
                message: "the response answers this record id more than once".to_string(),
            },
            Some(answer) => answer,
            None => Answer::Failed {
                code: error_code::MISSING_RECORD_ID,
                message: "the response has no answer for this record id".to_string(),
            },
        })
        .collect()
}

/// The partition named by `dt`/`hour` keys, if both are present and well-formed.
fn partition_of(keys: &HashMap<String, String>) -> Option<Partition> {
    // Rejects anything that is not a real date and hour (and so anything that could escape
    // the partition folder).
    Partition::new(keys.get(PARTITION_KEY_DT)?, keys.get(PARTITION_KEY_HOUR)?)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A tag that tells runs apart: start time in milliseconds and 32 random bits from the
/// standard library's hasher seed.
fn run_tag() -> String {
    let ms = now_millis();
    let random = RandomState::new().hash_one(ms) as u32;
    format!("{ms}-{random:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_records_size_is_its_encoded_length_whatever_its_shape() {
        const T0: i64 = 1_764_078_300_123;
        let invoke: Invoke = Arc::new(|_| Box::pin(async { Err("not invoked".to_string()) }));
        let store = Arc::new(object_store::memory::InMemory::new());
        let mut stream = DeliveryStream::new(FirehoseConfig::default(), store, invoke);
        let entry = |shard: &str, key: &str, seq: &str, ms: i64, data: &[u8]| StreamEntry {
            shard_id: shard.into(),
            sequence_number: seq.into(),
            partition_key: key.into(),
            data: bytes::Bytes::copy_from_slice(data),
            approximate_arrival_ms: ms,
        };
        // Repeated shapes (the remembered size), then each part changed in turn: a key of
        // another length, one with escapes, another arrival time (also of another width),
        // another shard, another sequence number length.
        let entries = [
            entry("shardId-000000000000", "sensor-000001", "49001", T0, b"{}"),
            entry(
                "shardId-000000000000",
                "sensor-000002",
                "49002",
                T0,
                b"{\"a\":1}",
            ),
            entry("shardId-000000000000", "sensor-3", "49003", T0, b""),
            entry("shardId-000000000000", "se\"n\\s\u{1}", "49004", T0, b"x"),
            entry("shardId-000000000000", "sensor-000002", "49005", T0, b"x"),
            entry(
                "shardId-000000000000",
                "sensor-000002",
                "49006",
                T0 + 1,
                b"x",
            ),
            entry("shardId-000000000000", "sensor-000002", "49007", 5, b"x"),
            entry("shardId-000000000001", "sensor-000002", "49008", 5, b"xyz"),
            entry("shardId-000000000001", "sensor-000002", "490099", 5, b"xyz"),
            entry("shardId-000000000001", "sensor-000002", "490100", 5, b"xyz"),
        ];
        for e in entries {
            let (record, len) = stream.event_record(e);
            assert_eq!(
                len,
                serde_json::to_vec(&record).unwrap().len(),
                "{record:?}"
            );
        }
    }

    #[test]
    fn partition_keys_must_name_a_real_date_and_hour() {
        let keys = |dt: &str, hour: &str| {
            HashMap::from([
                (PARTITION_KEY_DT.to_string(), dt.to_string()),
                (PARTITION_KEY_HOUR.to_string(), hour.to_string()),
            ])
        };
        assert_eq!(
            partition_of(&keys("2025-11-25", "13")).map(|p| p.path()),
            Some("dt=2025-11-25/hour=13".to_string())
        );
        for (dt, hour) in [
            ("2025-11-25", "24"),
            ("2025-13-01", "00"),
            ("../../etc", "00"),
            ("2025-11-25", "1"),
        ] {
            assert_eq!(partition_of(&keys(dt, hour)), None, "{dt} {hour}");
        }
        assert_eq!(partition_of(&HashMap::new()), None);
    }
}

//! The Firehose data-transformation handler: stream records in, long-layout readings out.
//!
//! # Contract (Firehose data transformation, Kinesis-stream source)
//! - Exactly one response record per input `recordId`, in input order, with a
//!   [`TransformResult`]: `Ok`, `Dropped` or `ProcessingFailed`. One bad record never
//!   fails the invocation (a failed invocation makes Firehose retry the whole batch and
//!   then send all of it to the error prefix).
//! - Input data: one [`telemetry::StreamRecord`] as compact JSON, or several of them
//!   separated by newlines ("record packing"; blank lines are ignored). All documents of
//!   one record must fall in the same hour, because a record has one set of partition keys.
//! - `Ok` data: one [`telemetry::Reading`] JSON document per metric, each followed by a
//!   newline (Firehose's record-format conversion reads concatenated JSON documents), with
//!   `metadata.partitionKeys` = `{"dt": "YYYY-MM-DD", "hour": "HH"}` of the event time.
//! - `ProcessingFailed`, with the reason logged and counted in the [`Summary`], for: empty
//!   data, data that is not UTF-8, a document that is not a [`telemetry::StreamRecord`], no
//!   metrics, a metric value that is not finite (`1e999` overflows), a device id that is
//!   not an AWS IoT thing name, a `seq` over 2^63-1, documents spanning hours, and records
//!   past the response size limit (below). The response echoes the original data of a
//!   record that failed on its content, so its raw bytes reach the error prefix whichever
//!   copy Firehose keeps.
//! - `Dropped`: a record whose every `(device_id, seq, ts)` already appeared earlier in the
//!   same invocation (a duplicate document inside a packed record is left out of its
//!   output). `ts` is part of the key because a device that reboots restarts its `seq`: a
//!   re-delivery repeats the whole message, event time included, a restarted device does
//!   not. Dropping early only saves bytes and Parquet rows: duplicates across invocations
//!   still happen (Kinesis and Firehose deliver at least once), and the analytics
//!   de-duplicate on `(device_id, seq, event_time, metric)` regardless.
//! - Response size: Lambda rejects a synchronous response over 6 MiB
//!   ([`MAX_RESPONSE_BYTES`]), which would fail the whole invocation. Each record is
//!   entitled to a share of the response in proportion to its data
//!   ([`RESPONSE_TENTHS_PER_DATA_BYTE`], derived from the contract's worst case); a record
//!   whose answer exceeds its share is answered `ProcessingFailed`
//!   ([`FailureReason::OverResponseShare`], its data echoed), on its own: one record's size
//!   never changes another record's result. Any event of at most
//!   [`MAX_PROCESSOR_BUFFER_BYTES`] of data therefore fits; the processor buffer (template
//!   and local emulator) follows from that bound. Only an event larger than it can still
//!   overflow: then the largest answers are cut to `ProcessingFailed` with empty data
//!   ([`FailureReason::ResponseSizeLimit`]) and an error is logged.
//!
//! The event's `data` fields are base64, decoded by `aws_lambda_events` while the event is
//! deserialized: an event whose base64 is invalid cannot be typed at all and fails the
//! invocation before this code runs. Firehose encodes the data itself, so only a
//! hand-made event can do that.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::str::FromStr;

use aws_lambda_events::event::firehose::{
    KinesisFirehoseEvent, KinesisFirehoseResponse, KinesisFirehoseResponseRecord,
    KinesisFirehoseResponseRecordMetadata,
};
use lambda_runtime::LambdaEvent;
use serde::{Deserialize, Serialize};
use telemetry::validate::valid_device_id;
use telemetry::{Partition, StreamRecordRef};

/// Lambda's payload limit for a synchronous invocation's response: 6 MiB. A larger response
/// fails the invocation, so the handler keeps its encoded response within it.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// The share of the response one byte of record data is entitled to, in tenths of a byte:
/// 29.9 bytes of encoded answer (long rows, base64, the record's envelope and comma) per
/// byte of record data.
///
/// Derived from the contract's bounds (`telemetry::validate`): the largest amplification a
/// valid message reaches is 64 metrics of the shortest distinct names and values with a
/// 128-character device id, a 19-digit `seq` and a 16-character `fw`, all repeated on each
/// of its 64 rows (about 29.5, with a 128-character `recordId`; the test
/// `the_contracts_worst_message_fits_its_share_of_the_response` builds it). An answer over
/// its share is answered `ProcessingFailed` on its own ([`FailureReason::OverResponseShare`]),
/// so one record's size never changes another record's result.
pub const RESPONSE_TENTHS_PER_DATA_BYTE: usize = 299;

/// The encoded size of an empty response, `{"records":[]}`.
pub const RESPONSE_ENVELOPE_BYTES: usize = 14;

/// The largest processor buffer, in bytes of record data per invocation, for which every
/// event the contract allows fits the 6 MiB response: (6 MiB − 14) / 29.9 = 210,416 bytes.
/// Firehose's processor `BufferSizeInMBs` (infra/template.yaml: 0.2, AWS's minimum) and the
/// local emulator's default buffer follow from it.
pub const MAX_PROCESSOR_BUFFER_BYTES: usize =
    (MAX_RESPONSE_BYTES - RESPONSE_ENVELOPE_BYTES) * 10 / RESPONSE_TENTHS_PER_DATA_BYTE;

/// True when an answer of `answer_bytes` (plus its separating comma) stays within the share
/// of the response that `data_bytes` of record data are entitled to.
pub const fn within_share(answer_bytes: usize, data_bytes: usize) -> bool {
    (answer_bytes + 1) * 10 <= data_bytes * RESPONSE_TENTHS_PER_DATA_BYTE
}

/// Name of the partition key holding the event date, `YYYY-MM-DD` (UTC).
pub const PARTITION_KEY_DT: &str = telemetry::partition::DT_KEY;
/// Name of the partition key holding the event hour, `HH` (00–23, UTC).
pub const PARTITION_KEY_HOUR: &str = telemetry::partition::HOUR_KEY;

/// Longest excerpt of an offending value quoted in a failure reason, in characters.
const MAX_QUOTED_CHARS: usize = 200;

/// The outcome of one record, as Firehose's `result` field spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransformResult {
    /// Transformed: Firehose delivers the returned data.
    Ok,
    /// Intentionally left out: Firehose counts it as processed and delivers nothing.
    Dropped,
    /// Could not be transformed: Firehose writes the record to its error prefix.
    ProcessingFailed,
}

impl TransformResult {
    /// The wire spelling: `"Ok"`, `"Dropped"` or `"ProcessingFailed"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransformResult::Ok => "Ok",
            TransformResult::Dropped => "Dropped",
            TransformResult::ProcessingFailed => "ProcessingFailed",
        }
    }
}

impl fmt::Display for TransformResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `result` string that is none of `Ok`, `Dropped`, `ProcessingFailed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Firehose transformation result (Ok, Dropped or ProcessingFailed)")]
pub struct UnknownResult(pub String);

impl FromStr for TransformResult {
    type Err = UnknownResult;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Ok" => Ok(TransformResult::Ok),
            "Dropped" => Ok(TransformResult::Dropped),
            "ProcessingFailed" => Ok(TransformResult::ProcessingFailed),
            other => Err(UnknownResult(other.to_string())),
        }
    }
}

/// Why a record was answered `ProcessingFailed`. `line` is the 1-based line of the
/// offending document within the record's data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FailureReason {
    /// The data holds no document at all (empty or only whitespace).
    #[error("record data is empty")]
    Empty,
    /// The data is not UTF-8, so it cannot be JSON.
    #[error("record data is not valid UTF-8 (first invalid byte at offset {offset})")]
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// A document is not a [`telemetry::StreamRecord`] (bad JSON, missing field, wrong
    /// type).
    #[error("line {line}: not a StreamRecord: {detail}")]
    NotAStreamRecord {
        /// The document's line.
        line: usize,
        /// The parser's message, with line and column.
        detail: String,
    },
    /// A document has no metric.
    #[error("line {line}: `metrics` is empty")]
    NoMetrics {
        /// The document's line.
        line: usize,
    },
    /// A metric value is not a finite number (in JSON, a literal such as `1e999`).
    #[error("line {line}: a metric value is not a finite number: {detail}")]
    NonFiniteValue {
        /// The document's line.
        line: usize,
        /// What was found.
        detail: String,
    },
    /// The device id is not an AWS IoT thing name.
    #[error("line {line}: device_id {device_id:?} is not 1-128 characters of [A-Za-z0-9_:-]")]
    BadDeviceId {
        /// The document's line.
        line: usize,
        /// The offending id (at most 200 characters of it).
        device_id: String,
    },
    /// `seq` does not fit Parquet's int64.
    #[error("line {line}: seq {seq} is larger than 2^63-1")]
    SeqOutOfRange {
        /// The document's line.
        line: usize,
        /// The value given.
        seq: u64,
    },
    /// The documents of a packed record fall in different hours; a record has one set of
    /// partition keys.
    #[error(
        "line {line}: packed record spans partitions ({first} then {other}); \
         all documents of one record must share an event hour"
    )]
    SpansPartitions {
        /// The first document in another partition.
        line: usize,
        /// The partition of the record's first document (`dt=…/hour=…`).
        first: String,
        /// The partition of document `line`.
        other: String,
    },
    /// The record's answer is larger than the share of the response its data is entitled
    /// to ([`RESPONSE_TENTHS_PER_DATA_BYTE`]): no message the contract allows does that, so
    /// the record reached the stream without ingest's validation (or packed records of
    /// such messages). Failed on its own, so that the other records keep their room.
    #[error(
        "the record's answer takes {answer_bytes} bytes for {data_bytes} bytes of data, over \
         the 29.9 bytes per data byte any message of the contract needs; validate it with \
         ingest (fw, metric names and metrics per message are bounded) and replay it"
    )]
    OverResponseShare {
        /// Encoded size of the `Ok` answer it would have had.
        answer_bytes: usize,
        /// Size of the record's data.
        data_bytes: usize,
    },
    /// The event holds more data than [`MAX_PROCESSOR_BUFFER_BYTES`] and its answers would
    /// push the response over Lambda's 6 MiB synchronous payload limit: the largest
    /// answers are cut.
    #[error(
        "response size limit: the encoded response would exceed {limit} bytes \
         (Lambda's synchronous payload limit); lower the processor's BufferSizeInMBs"
    )]
    ResponseSizeLimit {
        /// The limit in bytes ([`MAX_RESPONSE_BYTES`]).
        limit: usize,
    },
}

impl FailureReason {
    /// A stable machine-readable code for the class (log field and counter key).
    pub fn code(&self) -> &'static str {
        match self {
            FailureReason::Empty => "empty",
            FailureReason::InvalidUtf8 { .. } => "invalid_utf8",
            FailureReason::NotAStreamRecord { .. } => "not_a_stream_record",
            FailureReason::NoMetrics { .. } => "no_metrics",
            FailureReason::NonFiniteValue { .. } => "non_finite_value",
            FailureReason::BadDeviceId { .. } => "bad_device_id",
            FailureReason::SeqOutOfRange { .. } => "seq_out_of_range",
            FailureReason::SpansPartitions { .. } => "spans_partitions",
            FailureReason::OverResponseShare { .. } => "over_response_share",
            FailureReason::ResponseSizeLimit { .. } => "response_size_limit",
        }
    }
}

/// One record answered `ProcessingFailed`, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordFailure {
    /// Position of the record in the event.
    pub index: usize,
    /// Its `recordId`.
    pub record_id: Option<String>,
    /// Why it failed.
    pub reason: FailureReason,
}

/// What one invocation did: the counters the handler logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Records in the event (= `ok + dropped + processing_failed`).
    pub records: usize,
    /// Records answered `Ok`.
    pub ok: usize,
    /// Records answered `Dropped`: duplicates within the invocation (and, in the raw
    /// transform's summary, records whose messages were all quarantined).
    pub dropped: usize,
    /// Records answered `ProcessingFailed`.
    pub processing_failed: usize,
    /// Readings (future Parquet rows) in the `Ok` records.
    pub readings: usize,
    /// Size of the response encoded as compact JSON, in bytes.
    pub response_bytes: usize,
    /// Every failed record with its reason, in event order.
    pub failures: Vec<RecordFailure>,
}

impl Summary {
    /// Number of failed records per [`FailureReason::code`].
    pub fn failures_by_code(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut out = std::collections::BTreeMap::new();
        for f in &self.failures {
            *out.entry(f.reason.code()).or_insert(0) += 1;
        }
        out
    }
}

/// The Lambda entry point: [`transform`] inside a span carrying the request id.
///
/// Never returns an error: every record's outcome is in the response.
pub async fn handle(
    event: LambdaEvent<KinesisFirehoseEvent>,
) -> Result<KinesisFirehoseResponse, lambda_runtime::Error> {
    let (payload, context) = event.into_parts();
    let span = tracing::info_span!("transform", request_id = %context.request_id);
    Ok(span.in_scope(|| transform(&payload)))
}

/// Transforms one Firehose event: one response record per input record, in order.
///
/// Pure apart from logging (one line per failed record, one summary line).
pub fn transform(event: &KinesisFirehoseEvent) -> KinesisFirehoseResponse {
    transform_with_summary(event).0
}

/// [`transform`], also returning the counters and the failure reasons.
pub fn transform_with_summary(event: &KinesisFirehoseEvent) -> (KinesisFirehoseResponse, Summary) {
    transform_judged(event, |_, data, seen| judge(data, seen))
}

/// [`transform_with_summary`] of an event whose records' documents the caller has parsed
/// already (`docs[i]` are record `i`'s, in order): the raw transform of the `firehose`
/// topology, which builds these stream records from the payloads it validated. An empty
/// list answers its record `Dropped` (none of its messages was accepted). The same checks,
/// answers and budget, with each record's share of the response sized by its data as
/// received, and a failed record echoing that data; no second parse.
pub fn transform_documents<'a, D: AsRef<[StreamRecordRef<'a>]>>(
    event: &KinesisFirehoseEvent,
    docs: &[D],
) -> (KinesisFirehoseResponse, Summary) {
    transform_judged(event, |i, _, seen| match docs.get(i).map(AsRef::as_ref) {
        Some([]) => Outcome::Dropped,
        Some(d) => match check_documents(d) {
            Ok(hour) => judge_documents(d, hour, seen),
            Err(reason) => Outcome::Failed(reason),
        },
        None => Outcome::Failed(FailureReason::Empty),
    })
}

/// The de-duplication keys of an invocation: `(device_id, seq, ts)` of every message
/// answered `Ok` so far. Hashed with `ahash` (keyed per process, like std's SipHash, but
/// several times faster on these ~60-byte keys: SipHash was ~1 % of a replay's CPU).
type Seen = HashSet<(DeviceKey, u64, i64), ahash::RandomState>;

/// A device id as a set key, held inline when it is short (as thing names typically are),
/// so that recording a message's key allocates nothing.
#[derive(PartialEq, Eq, Hash)]
enum DeviceKey {
    /// An id of at most [`DeviceKey::INLINE`] bytes: its length and bytes.
    Inline(u8, [u8; DeviceKey::INLINE]),
    /// A longer id. The variant depends on the length only, so equal ids are equal keys.
    Heap(Box<str>),
}

impl DeviceKey {
    const INLINE: usize = 38;

    fn new(id: &str) -> Self {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= Self::INLINE => {
                let mut bytes = [0; Self::INLINE];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                DeviceKey::Inline(len, bytes)
            }
            _ => DeviceKey::Heap(id.into()),
        }
    }
}

/// The transform with `judge_one(index, data, seen)` deciding each record.
fn transform_judged(
    event: &KinesisFirehoseEvent,
    mut judge_one: impl FnMut(usize, &[u8], &mut Seen) -> Outcome,
) -> (KinesisFirehoseResponse, Summary) {
    let n = event.records.len();
    // Keys already answered Ok in this invocation: the de-duplication scope.
    let mut seen = Seen::with_capacity_and_hasher(n, ahash::RandomState::new());
    let mut sizes = Sizes::default();
    // The response records are built in place (a second vector of them, moved record by
    // record, cost a large allocation and a copy per invocation); `planned[i]` holds
    // record `i`'s verdict and sizes.
    let mut records: Vec<KinesisFirehoseResponseRecord> = Vec::with_capacity(n);
    let mut planned: Vec<Planned> = Vec::with_capacity(n);
    for (i, record) in event.records.iter().enumerate() {
        let outcome = judge_one(i, &record.data, &mut seen);
        let (answer, plan) =
            Planned::new(record.record_id.clone(), outcome, &record.data, &mut sizes);
        records.push(answer);
        planned.push(plan);
    }

    // The response budget. Each record is entitled to a share of the response in
    // proportion to its data ([`RESPONSE_TENTHS_PER_DATA_BYTE`]); an answer over its share
    // was already failed on its own in `Planned::new`, whatever the other records hold. An
    // event of at most [`MAX_PROCESSOR_BUFFER_BYTES`] of data then always fits. A larger
    // event (a processor buffer configured past that bound) can still overflow: then the
    // largest answers are cut first, and the error log says to lower the buffer.
    let envelope = json_len(&KinesisFirehoseResponse::default());
    let mut used =
        envelope + n.saturating_sub(1) + planned.iter().map(|p| p.full_len).sum::<usize>();
    if used > MAX_RESPONSE_BYTES {
        let data_bytes: usize = event.records.iter().map(|r| r.data.0.len()).sum();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| {
            (
                std::cmp::Reverse(planned[i].full_len.saturating_sub(planned[i].min_len)),
                std::cmp::Reverse(i),
            )
        });
        let mut cut = 0usize;
        for i in order {
            if used <= MAX_RESPONSE_BYTES {
                break;
            }
            let p = &mut planned[i];
            if p.full_len > p.min_len {
                used -= p.full_len - p.min_len;
                p.cut_for_size(&mut records[i]);
                cut += 1;
            }
        }
        tracing::error!(
            records = n,
            records_cut = cut,
            data_bytes,
            max_processor_buffer_bytes = MAX_PROCESSOR_BUFFER_BYTES,
            limit = MAX_RESPONSE_BYTES,
            response_bytes = used,
            "the event holds more data than the processor buffer the contract allows: the \
             largest answers were cut to ProcessingFailed; set the processor's BufferSizeInMBs \
             to at most MAX_PROCESSOR_BUFFER_BYTES"
        );
    }

    let mut summary = Summary {
        records: n,
        response_bytes: envelope + n.saturating_sub(1),
        ..Summary::default()
    };
    for (index, (p, record)) in planned.into_iter().zip(&records).enumerate() {
        summary.response_bytes += p.full_len;
        match p.verdict {
            Verdict::Ok { readings } => {
                summary.ok += 1;
                summary.readings += readings;
            }
            Verdict::Dropped => summary.dropped += 1,
            Verdict::Failed(reason) => {
                summary.processing_failed += 1;
                // Records cut for size were logged above, as one line.
                if !matches!(reason, FailureReason::ResponseSizeLimit { .. }) {
                    tracing::warn!(
                        record_id = record.record_id.as_deref().unwrap_or(""),
                        reason_code = reason.code(),
                        reason = %reason,
                        "record answered ProcessingFailed"
                    );
                }
                summary.failures.push(RecordFailure {
                    index,
                    record_id: record.record_id.clone(),
                    reason,
                });
            }
        }
    }
    tracing::info!(
        invocation_id = event.invocation_id.as_deref().unwrap_or(""),
        records = summary.records,
        ok = summary.ok,
        dropped = summary.dropped,
        processing_failed = summary.processing_failed,
        readings = summary.readings,
        response_bytes = summary.response_bytes,
        failures = ?summary.failures_by_code(),
        "transformed"
    );
    let mut response = KinesisFirehoseResponse::default();
    response.records = records;
    (response, summary)
}

/// What the handler decided for one record, before the response budget.
enum Outcome {
    Ok {
        /// Newline-terminated Reading JSON documents.
        rows: Vec<u8>,
        /// The partition's hour ([`Partition::hour_of_millis`]): its keys are built once
        /// per hour of the invocation, not per record.
        hour: i64,
        readings: usize,
    },
    Dropped,
    Failed(FailureReason),
}

/// The result of a planned record, kept for the summary once its data moved into the
/// response record.
enum Verdict {
    Ok { readings: usize },
    Dropped,
    Failed(FailureReason),
}

/// A response record's verdict and encoded sizes.
struct Planned {
    verdict: Verdict,
    /// Encoded size of the record as planned.
    full_len: usize,
    /// Encoded size of the record answered `ProcessingFailed` with empty data.
    min_len: usize,
}

impl Planned {
    /// The answer to a record and its plan.
    fn new(
        record_id: Option<String>,
        outcome: Outcome,
        input: &[u8],
        sizes: &mut Sizes,
    ) -> (KinesisFirehoseResponseRecord, Self) {
        // Sizes are measured with empty data plus the base64 length, so that the data is
        // encoded once (by the runtime), not twice.
        let id_len = json_len(&record_id);
        let min_len = id_len + sizes.shape(TransformResult::ProcessingFailed, None);
        let (mut result, mut data, mut partition, mut verdict) = match outcome {
            Outcome::Ok {
                rows,
                hour,
                readings,
            } => (
                TransformResult::Ok,
                rows,
                Some(hour),
                Verdict::Ok { readings },
            ),
            Outcome::Dropped => (TransformResult::Dropped, Vec::new(), None, Verdict::Dropped),
            // Echo the input so that its raw bytes survive whichever copy Firehose keeps.
            Outcome::Failed(reason) => (
                TransformResult::ProcessingFailed,
                input.to_vec(),
                None,
                Verdict::Failed(reason),
            ),
        };
        let mut full_len = id_len + sizes.shape(result, partition) + base64_len(data.len());
        if matches!(verdict, Verdict::Ok { .. }) && !within_share(full_len, input.len()) {
            verdict = Verdict::Failed(FailureReason::OverResponseShare {
                answer_bytes: full_len,
                data_bytes: input.len(),
            });
            result = TransformResult::ProcessingFailed;
            partition = None;
            data = input.to_vec();
            full_len = min_len + base64_len(data.len());
        }
        let mut record = KinesisFirehoseResponseRecord::default();
        record.record_id = record_id;
        record.result = Some(result.as_str().to_string());
        if let Some(hour) = partition {
            record.metadata.partition_keys = sizes.keys(hour);
        }
        record.data.0 = data;
        let plan = Self {
            verdict,
            full_len,
            min_len,
        };
        (record, plan)
    }

    /// Turns the record into its minimal failure answer (it lies past the size limit).
    fn cut_for_size(&mut self, record: &mut KinesisFirehoseResponseRecord) {
        record.result = Some(TransformResult::ProcessingFailed.as_str().to_string());
        record.data.0 = Vec::new();
        record.metadata = KinesisFirehoseResponseRecordMetadata::default();
        self.full_len = self.min_len;
        if !matches!(self.verdict, Verdict::Failed(_)) {
            self.verdict = Verdict::Failed(FailureReason::ResponseSizeLimit {
                limit: MAX_RESPONSE_BYTES,
            });
        }
    }
}

/// What an invocation's answers share, worked out once: their partition-key maps (copied
/// from the last partition's) and their encoded sizes, without serializing each answer (the
/// flattened fields make the serializer slow: a tenth of the transform's time went there).
/// A record's JSON is its `recordId`'s JSON plus a shape that depends only on its result
/// and on the lengths of its partition keys' values (`dt` and `hour` are digits and dashes:
/// nothing to escape), its data counted apart as the base64 length. Each shape is measured
/// once, by serializing a record of that shape ([`measure_shape`]). The tests hold the sum
/// equal to the encoded response.
#[derive(Default)]
struct Sizes {
    /// The shapes without partition keys, by result.
    plain: [Option<usize>; 3],
    /// The `Ok` shape by the lengths of the partition keys' values (`dt`, `hour`).
    ok_by_lengths: Option<((usize, usize), usize)>,
    /// The last partition's hour ([`Partition::hour_of_millis`]), keys and `Ok` shape: an
    /// answer's map is a copy of these keys (building each map anew, with its hasher and
    /// the keys' hashes, was 5 % of a replay's samples).
    last: Option<(i64, HashMap<String, String>, usize)>,
}

impl Sizes {
    /// The partition keys of an answer in the partition of `hour`.
    fn keys(&mut self, hour: i64) -> HashMap<String, String> {
        self.of_hour(hour).1.clone()
    }

    /// The length of a record answered `result` with the keys of the partition of `hour`
    /// (or none), empty data, without its `recordId`'s JSON.
    fn shape(&mut self, result: TransformResult, hour: Option<i64>) -> usize {
        match hour {
            None => *self.plain[result as usize].get_or_insert_with(|| measure_shape(result, None)),
            Some(hour) if result == TransformResult::Ok => self.of_hour(hour).2,
            // Only `Ok` answers carry keys; any other is measured as it is.
            Some(hour) => measure_shape(result, Some(&Partition::of_hour(hour))),
        }
    }

    /// The hour, keys and `Ok` shape of the partition of `hour`, worked out when the hour
    /// differs from the last answer's (the shape only when the keys' lengths differ too).
    fn of_hour(&mut self, hour: i64) -> &(i64, HashMap<String, String>, usize) {
        if !matches!(&self.last, Some((last, ..)) if *last == hour) {
            self.last = None;
        }
        let ok_by_lengths = &mut self.ok_by_lengths;
        self.last.get_or_insert_with(|| {
            let p = Partition::of_hour(hour);
            let lengths = (p.dt.len(), p.hour.len());
            let len = match *ok_by_lengths {
                Some((last, len)) if last == lengths => len,
                _ => {
                    let len = measure_shape(TransformResult::Ok, Some(&p));
                    *ok_by_lengths = Some((lengths, len));
                    len
                }
            };
            (hour, partition_keys(&p), len)
        })
    }
}

/// The length of a record answered `result` with `partition`'s keys (or none) and empty
/// data, without its `recordId`'s JSON: measured by serializing one.
fn measure_shape(result: TransformResult, partition: Option<&Partition>) -> usize {
    let mut record = KinesisFirehoseResponseRecord::default();
    record.result = Some(result.as_str().to_string());
    if let Some(p) = partition {
        record.metadata.partition_keys = partition_keys(p);
    }
    json_len(&record) - json_len(&record.record_id)
}

fn partition_keys(p: &Partition) -> HashMap<String, String> {
    HashMap::from([
        (PARTITION_KEY_DT.to_string(), p.dt.clone()),
        (PARTITION_KEY_HOUR.to_string(), p.hour.clone()),
    ])
}

/// Decides one record. `seen` holds the keys of earlier records of the invocation and
/// receives this record's keys when it is answered Ok.
fn judge(data: &[u8], seen: &mut Seen) -> Outcome {
    // A record of one line (a Kinesis record holds one stream record) needs no list of
    // documents: the same reading and checks as [`parse_documents`], without its vector.
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    if !body.contains(&b'\n') {
        return match parse_line(body) {
            Ok((doc, hour)) => judge_documents(std::slice::from_ref(&doc), hour, seen),
            Err(reason) => Outcome::Failed(reason),
        };
    }
    match parse_documents(data) {
        Ok((docs, hour)) => judge_documents(&docs, hour, seen),
        Err(reason) => Outcome::Failed(reason),
    }
}

/// [`judge`] of a record's checked documents, all of the partition of `hour`.
fn judge_documents(docs: &[StreamRecordRef<'_>], hour: i64, seen: &mut Seen) -> Outcome {
    let mut rows = Vec::new();
    let mut readings = 0;
    let mut fresh = false;
    for doc in docs {
        // `insert` is false for a key seen earlier in the invocation or in this record.
        if !seen.insert((DeviceKey::new(&doc.device_id), doc.seq, doc.ts)) {
            continue;
        }
        if !fresh {
            // About 150 bytes per reading for typical ids and names.
            rows.reserve(docs.iter().map(|d| d.readings()).sum::<usize>() * 160);
            fresh = true;
        }
        readings += doc.write_rows(&mut rows);
    }
    if !fresh {
        return Outcome::Dropped;
    }
    Outcome::Ok {
        rows,
        hour,
        readings,
    }
}

/// Parses and checks the newline-separated documents of one record; returns them with the
/// hour of the one partition they share.
fn parse_documents(data: &[u8]) -> Result<(Vec<StreamRecordRef<'_>>, i64), FailureReason> {
    let text = utf8(data)?;
    let mut docs = Vec::new();
    let mut shared = SharedPartition::default();
    for (i, line) in text.split('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        let doc = read_document(line_no, line)?;
        shared.check(line_no, &doc)?;
        docs.push(doc);
    }
    Ok((docs, shared.finish()?))
}

/// [`parse_documents`] of a record without a newline (but perhaps a final one, stripped).
fn parse_line(data: &[u8]) -> Result<(StreamRecordRef<'_>, i64), FailureReason> {
    let line = utf8(data)?;
    if line.trim().is_empty() {
        return Err(FailureReason::Empty);
    }
    let mut shared = SharedPartition::default();
    let doc = read_document(1, line)?;
    shared.check(1, &doc)?;
    Ok((doc, shared.finish()?))
}

/// A record's data as text, or where it stops being UTF-8.
fn utf8(data: &[u8]) -> Result<&str, FailureReason> {
    std::str::from_utf8(data).map_err(|e| FailureReason::InvalidUtf8 {
        offset: e.valid_up_to(),
    })
}

/// Reads the stream record on line `line_no`: its common spelling without serde's
/// machinery ([`StreamRecordRef::read_plain`]), anything else through serde.
fn read_document(line_no: usize, line: &str) -> Result<StreamRecordRef<'_>, FailureReason> {
    match StreamRecordRef::read_plain(line.as_bytes()) {
        Some(doc) => Ok(doc),
        None => serde_json::from_str(line).map_err(|e| classify_parse_error(line_no, &e)),
    }
}

/// Checks a record's documents (each as on its own line: line numbers from 1) and returns
/// the hour ([`Partition::hour_of_millis`]) of the one partition they share.
fn check_documents(docs: &[StreamRecordRef<'_>]) -> Result<i64, FailureReason> {
    let mut shared = SharedPartition::default();
    for (doc, line_no) in docs.iter().zip(1..) {
        shared.check(line_no, doc)?;
    }
    shared.finish()
}

/// The checks of a record's documents, one at a time, and the hour of the one partition
/// they share ([`Partition::hour_of_millis`]: hours compare as partitions do, without
/// building one per record).
#[derive(Default)]
struct SharedPartition(Option<i64>);

impl SharedPartition {
    /// Checks the document on `line_no` ([`check_document`]) and that its partition is the
    /// record's.
    fn check(&mut self, line_no: usize, doc: &StreamRecordRef<'_>) -> Result<(), FailureReason> {
        check_document(line_no, doc)?;
        let hour = Partition::hour_of_millis(doc.ts);
        match self.0 {
            None => self.0 = Some(hour),
            Some(first) if first != hour => {
                return Err(FailureReason::SpansPartitions {
                    line: line_no,
                    first: Partition::of_hour(first).path(),
                    other: Partition::of_millis(doc.ts).path(),
                });
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The partition's hour, or [`FailureReason::Empty`] for a record without documents.
    fn finish(self) -> Result<i64, FailureReason> {
        self.0.ok_or(FailureReason::Empty)
    }
}

fn classify_parse_error(line: usize, e: &serde_json::Error) -> FailureReason {
    let detail = e.to_string();
    // serde_json refuses a float literal that overflows f64 with this message: it is the
    // only way a non-finite value can be written in JSON.
    if detail.starts_with("number out of range") {
        FailureReason::NonFiniteValue { line, detail }
    } else {
        FailureReason::NotAStreamRecord { line, detail }
    }
}

/// The checks the long layout depends on. Ingest validated the full contract already;
/// these guard against records that reached the stream another way.
fn check_document(line: usize, doc: &StreamRecordRef<'_>) -> Result<(), FailureReason> {
    if !valid_device_id(&doc.device_id) {
        return Err(FailureReason::BadDeviceId {
            line,
            device_id: doc.device_id.chars().take(MAX_QUOTED_CHARS).collect(),
        });
    }
    if doc.metrics.is_empty() {
        return Err(FailureReason::NoMetrics { line });
    }
    if let Some((name, value)) = doc.metrics.iter().find(|(_, v)| !v.is_finite()) {
        return Err(FailureReason::NonFiniteValue {
            line,
            detail: format!("metrics.{name} = {value}"),
        });
    }
    if i64::try_from(doc.seq).is_err() {
        return Err(FailureReason::SeqOutOfRange { line, seq: doc.seq });
    }
    Ok(())
}

/// Length of standard, padded base64 of `n` bytes (what `Base64Data` serializes).
pub fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Length of a value encoded as compact JSON, without building the string. These types
/// always serialize; were one to fail, the count would fall short by the rest.
pub fn json_len<T: Serialize>(value: &T) -> usize {
    let mut counter = ByteCounter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_enum_round_trips_through_its_wire_spelling() {
        for r in [
            TransformResult::Ok,
            TransformResult::Dropped,
            TransformResult::ProcessingFailed,
        ] {
            assert_eq!(r.as_str().parse::<TransformResult>(), Ok(r));
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("TransformedStateOk".parse::<TransformResult>().is_err());
    }

    #[test]
    fn a_record_of_one_line_is_read_and_checked_as_a_record_of_several_lines_is() {
        let good = r#"{"device_id":"sensor-1","seq":7,"ts":1700000000000,"metrics":{"t":1.5},"received_at":1700000000100}"#;
        let spaced = r#" { "ts": 1700000000000, "seq": 7, "device_id": "sensor-1", "metrics": {"t": 1}, "received_at": 1 } "#;
        let cases: [&[u8]; 12] = [
            good.as_bytes(),
            format!("{good}\n").leak().as_bytes(),
            spaced.as_bytes(),
            format!("{good}\r").leak().as_bytes(),
            b"",
            b"  \t",
            b"\xff\xfe",
            b"{\"device_id\":",
            br#"{"device_id":"bad id!","seq":1,"ts":1,"metrics":{"t":1.0},"received_at":2}"#,
            br#"{"device_id":"d","seq":1,"ts":1,"metrics":{},"received_at":2}"#,
            br#"{"device_id":"d","seq":1,"ts":1,"metrics":{"t":1e999},"received_at":2}"#,
            br#"{"device_id":"d","seq":18446744073709551615,"ts":1,"metrics":{"t":1.0},"received_at":2}"#,
        ];
        for data in cases {
            let body = data.strip_suffix(b"\n").unwrap_or(data);
            assert!(!body.contains(&b'\n'));
            let one = parse_line(body).map(|(doc, hour)| (vec![doc], hour));
            assert_eq!(
                one,
                parse_documents(data),
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
        assert!(parse_line(good.as_bytes()).is_ok());
        assert!(parse_line(spaced.as_bytes()).is_ok());
    }

    #[test]
    fn device_keys_are_equal_exactly_when_the_ids_are() {
        let long = "d".repeat(128);
        let ids = [
            "",
            "a",
            "a\0",
            "sensor-000042",
            &long[..DeviceKey::INLINE],
            &long[..DeviceKey::INLINE + 1],
            &long,
        ];
        for a in ids {
            for b in ids {
                assert_eq!(
                    DeviceKey::new(a) == DeviceKey::new(b),
                    a == b,
                    "{a:?} {b:?}"
                );
            }
        }
        let mut seen = Seen::default();
        assert!(seen.insert((DeviceKey::new(&long), 1, 2)));
        assert!(!seen.insert((DeviceKey::new(&long.clone()), 1, 2)));
        assert!(seen.insert((DeviceKey::new("a"), 1, 2)));
        assert!(!seen.insert((DeviceKey::new("a"), 1, 2)));
    }

    #[test]
    fn base64_length_matches_the_encoder() {
        use base64::Engine;
        for n in 0..20 {
            let encoded = base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
            assert_eq!(base64_len(n), encoded.len(), "n = {n}");
        }
    }
}

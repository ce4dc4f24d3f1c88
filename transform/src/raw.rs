//! Raw-payload input (the `firehose` topology): the transform validates, quarantines and
//! explodes what devices sent, with no ingest function and no Kinesis stream in between.
//!
//! # Which input a deployment has
//! Explicit, never guessed from the data: [`INPUT_VAR`] (`IOTPIPE_INPUT`) is `stream` (the
//! `kinesis` and `per-message` topologies: each record is a [`telemetry::StreamRecord`],
//! see [`crate::handler`]) or `raw` (the `firehose` topology: this module). The template sets
//! it per topology.
//!
//! # What a raw record is
//! The topic rule of the `firehose` topology is
//! `SELECT encode(*, 'base64') AS payload, topic() AS topic FROM 'dt/+/+/telemetry'`
//! (devices publish to the Basic Ingest topic `$aws/rules/<rule>/dt/...`; `topic()` answers
//! the topic without that prefix) with a Firehose action (DirectPut). So each Firehose
//! record is the compact JSON [`RuleRecord`]: the device's bytes, base64, unparsed, and the
//! topic. Why not `SELECT *, topic(3) AS device`: the rule engine cannot parse a payload that
//! is not JSON (binary, truncated), so such a payload would fail in the rule, reach only its
//! error action, and never be quarantined with its reason; and the topic's device segment is
//! what pins a message to the device an IoT policy authenticated. Cost: base64 makes the
//! record 4/3 of the payload plus about 60 bytes; Firehose meters records in 5 KB units, so
//! a payload up to about 3.7 KB stays one unit.
//!
//! The received time of a payload is the record's `approximateArrivalTimestamp` (when
//! Firehose took it from the rule).
//!
//! # What the answer is
//! - Every payload is validated with [`telemetry::validate_payload`] (the same code, limits
//!   and [`telemetry::QuarantineReason`]s as ingest). Its accepted messages become the same
//!   stream records ingest would have put, and those go through the stream path
//!   ([`crate::handler::transform_documents`]): the same long rows, partition keys,
//!   in-invocation de-duplication on `(device_id, seq, ts)` and response budget, each
//!   record's share of the response sized by the record as received.
//! - A payload with rejected messages is written to `quarantine/` (one
//!   [`telemetry::quarantine::QuarantineRecord`] per payload, raw bytes and reasons, the
//!   format ingest writes). A payload with no accepted message is answered `Dropped`:
//!   Firehose keeps no copy, the quarantine is its copy. A batch with some accepted
//!   elements is answered `Ok` with their rows.
//! - The quarantine object is written before the response: if it cannot be written the
//!   invocation fails ([`RawError::Quarantine`]), so Firehose retries the batch (and then
//!   writes it to its error prefix): a rejected payload is never silently lost.
//! - A device batch whose accepted messages span event hours: Firehose takes exactly one
//!   answer per `recordId`, with one set of partition keys, so one record cannot be split
//!   into two partitions by Firehose. The record is answered with the messages of its first
//!   message's hour, and the transform writes the readings of the other hours itself, as
//!   Parquet objects in their own partitions (`telemetry/dt=…/hour=…/`, the same Arrow
//!   schema and writer as the local Firehose emulation), before it answers
//!   ([`RawSummary::split_files`]). A write that fails fails the invocation
//!   ([`RawError::Split`]): Firehose retries the batch, and the readers de-duplicate what a
//!   retry writes twice. The other hours' readings are written only when the record's
//!   answer is `Ok` or `Dropped` (a duplicate): a `ProcessingFailed` record goes whole to
//!   the error prefix.
//! - `ProcessingFailed` (from the stream path, e.g. an answer over its share of the
//!   response) echoes the *raw record*, so the error prefix holds what the device sent.
//! - The account: `records = ok + quarantined + duplicates + processing_failed`, and
//!   `readings + split_readings` = the readings of the accepted messages of the records
//!   answered `Ok` (less in-invocation duplicates).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lambda_events::event::firehose::{KinesisFirehoseEvent, KinesisFirehoseResponse};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use telemetry::parquet_writer::{ParquetWriterConfig, PartitionedWriter, WrittenFile};
use telemetry::quarantine::{self, QuarantineRecord};
use telemetry::schema::{readings_to_batch, telemetry_schema};
use telemetry::{
    Partition, QuarantineReason, ReadingRef, StreamRecordRef, ValidationConfig,
    validate_payload_borrowed,
};

use crate::handler::{Summary, TransformResult, transform_documents};

/// The environment variable that says what the records hold: `stream` or `raw`.
pub const INPUT_VAR: &str = "IOTPIPE_INPUT";

/// What the transform's input records hold (set per topology by the template).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Input {
    /// Stream records written by ingest (`kinesis` and `per-message` topologies).
    #[default]
    Stream,
    /// The topic rule's [`RuleRecord`]s, put by its Firehose action (`firehose` topology).
    Raw,
}

impl Input {
    /// The spelling of [`INPUT_VAR`]'s value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Input::Stream => "stream",
            Input::Raw => "raw",
        }
    }
}

/// An [`INPUT_VAR`] value that is neither `stream` nor `raw`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{INPUT_VAR}={0:?} is not an input kind: set it to `raw` (topology firehose: the rule's \
     records) or `stream` (topologies kinesis and per-message: ingest's stream records)"
)]
pub struct UnknownInput(pub String);

impl FromStr for Input {
    type Err = UnknownInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stream" => Ok(Input::Stream),
            "raw" => Ok(Input::Raw),
            other => Err(UnknownInput(other.to_owned())),
        }
    }
}

pub use telemetry::RuleRecord;

/// An invocation that must fail so that Firehose retries it.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The quarantine object could not be written: answering `Dropped` would lose payloads.
    #[error(
        "writing quarantine object {key}: {source}. The invocation fails so that Firehose \
         retries the batch; check that the function's role may put objects under the \
         quarantine prefix of the bucket"
    )]
    Quarantine {
        /// The object key.
        key: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The readings of a device batch's other event hours could not be written as Parquet
    /// in their partition: answering without them would lose them.
    #[error(
        "writing the readings of device batches' other event hours to {partition}: {detail}. \
         The invocation fails so that Firehose retries the batch; check that the function's \
         role may put objects under the telemetry prefix of the bucket"
    )]
    Split {
        /// The partition (`dt=…/hour=…`).
        partition: String,
        /// The cause.
        detail: String,
    },
}

/// What one raw invocation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawSummary {
    /// Records in the event (= `ok + quarantined + duplicates + processing_failed`).
    pub records: usize,
    /// Records answered `Ok`.
    pub ok: usize,
    /// Records answered `Dropped` because none of their messages was accepted (they are in
    /// the quarantine).
    pub quarantined: usize,
    /// Records answered `Dropped` as duplicates within the invocation.
    pub duplicates: usize,
    /// Records answered `ProcessingFailed`.
    pub processing_failed: usize,
    /// Messages seen (a device batch counts each element).
    pub messages: usize,
    /// Messages rejected and quarantined (elements of partly accepted batches included).
    pub rejected_messages: usize,
    /// Quarantine records written (one per payload with a rejection).
    pub quarantine_records: usize,
    /// Readings in the `Ok` records.
    pub readings: usize,
    /// Accepted messages of device batches in another event hour than their record's
    /// first message, whose readings the transform wrote itself (module doc).
    pub split_messages: usize,
    /// Their readings (Parquet rows in [`RawSummary::split_files`]).
    pub split_readings: usize,
    /// The Parquet objects the transform wrote for them, complete.
    pub split_files: Vec<WrittenFile>,
    /// The stream path's summary over the event's records: its `dropped` counts the
    /// records whose messages were all quarantined too.
    pub stream: Summary,
}

/// The raw-input transform: its quarantine store and validation settings, built once per
/// cold start.
pub struct RawTransform {
    store: Arc<dyn ObjectStore>,
    validation: ValidationConfig,
    quarantine_prefix: String,
    /// Where the readings of device batches' other event hours are written (the telemetry
    /// prefix Firehose delivers to, so that they land in their own partitions).
    split_parquet: ParquetWriterConfig,
    /// Names quarantine objects apart between processes.
    instance: String,
    /// Names quarantine objects apart within this process.
    next_object: AtomicU64,
}

impl RawTransform {
    /// A raw transform quarantining into `store` under `quarantine_prefix`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        validation: ValidationConfig,
        quarantine_prefix: &str,
    ) -> Self {
        Self {
            store,
            validation,
            quarantine_prefix: quarantine_prefix.to_owned(),
            split_parquet: ParquetWriterConfig::default(),
            instance: format!("t{:08x}", rand::random::<u32>()),
            next_object: AtomicU64::new(0),
        }
    }

    /// The same, writing the readings of device batches' other event hours under `prefix`
    /// (default [`telemetry::layout::TELEMETRY_PREFIX`]: where Firehose delivers).
    pub fn with_telemetry_prefix(mut self, prefix: &str) -> Self {
        self.split_parquet.prefix = prefix.trim_end_matches('/').to_owned();
        self
    }

    /// Transforms one event of raw records (module doc): one answer per `recordId`, in
    /// order, after the quarantine of the rejected payloads is written.
    pub async fn transform(
        &self,
        event: &KinesisFirehoseEvent,
    ) -> Result<(KinesisFirehoseResponse, RawSummary), RawError> {
        let n = event.records.len();
        let mut summary = RawSummary {
            records: n,
            ..RawSummary::default()
        };
        let mut quarantined: Vec<QuarantineRecord> = Vec::new();
        // Each record's payload and topic, decoded first: the accepted messages borrow
        // their strings from them.
        let mut decoded = Vec::with_capacity(n);
        for record in &event.records {
            let arrival = record.approximate_arrival_timestamp.timestamp_millis();
            match RuleRecord::decode(&record.data.0) {
                Ok((payload, topic)) => decoded.push(Some((payload, topic, arrival))),
                Err(detail) => {
                    summary.messages += 1;
                    summary.rejected_messages += 1;
                    quarantined.push(QuarantineRecord::other(
                        QuarantineReason::BadEventEncoding,
                        format!(
                            "the record is not the rule's {{payload (base64), topic}} ({detail}); \
                             check the rule's SQL is SELECT encode(*, 'base64') AS payload, \
                             topic() AS topic"
                        ),
                        "",
                        arrival,
                        &record.data.0,
                    ));
                    decoded.push(None);
                }
            }
        }
        // The stream records of the accepted messages in their record's first message's
        // hour, as ingest would put them, record after record in one vector (a vector per
        // record was an allocation each); record `i`'s end is `ends[i]` (none accepted: the
        // record is answered Dropped).
        let mut accepted: Vec<StreamRecordRef<'_>> = Vec::with_capacity(n);
        let mut ends: Vec<usize> = Vec::with_capacity(n);
        // For each input record with messages outside its first message's hour: those.
        let mut splits: Vec<(usize, Vec<StreamRecordRef<'_>>)> = Vec::new();
        for (index, decoded) in decoded.iter().enumerate() {
            let Some((payload, topic, arrival)) = decoded else {
                ends.push(accepted.len());
                continue;
            };
            let arrival = *arrival;
            let v = validate_payload_borrowed(payload, topic, arrival, &self.validation);
            summary.messages += v.messages();
            summary.rejected_messages += v.rejected.len();
            if let Some(first) = v.rejected.first() {
                tracing::info!(
                    code = first.reason.code(),
                    reason = %first.reason,
                    rejected = v.rejected.len(),
                    topic = %topic,
                    "payload quarantined"
                );
                quarantined.push(QuarantineRecord::from_payload(
                    payload,
                    &v.rejected,
                    topic,
                    arrival,
                ));
            }
            let Some(hour) = v.accepted.first().map(|m| Partition::hour_of_millis(m.ts)) else {
                ends.push(accepted.len());
                continue;
            };
            let mut split = Vec::new();
            for msg in v.accepted {
                let rec = StreamRecordRef::new(msg, arrival);
                if Partition::hour_of_millis(rec.ts) == hour {
                    accepted.push(rec);
                } else {
                    split.push(rec);
                }
            }
            if !split.is_empty() {
                splits.push((index, split));
            }
            ends.push(accepted.len());
        }
        let docs: Vec<&[StreamRecordRef<'_>]> = ends
            .iter()
            .scan(0, |start, &end| {
                let doc = &accepted[*start..end];
                *start = end;
                Some(doc)
            })
            .collect();
        let first_arrival = event
            .records
            .first()
            .map(|r| r.approximate_arrival_timestamp.timestamp_millis());
        summary.quarantine_records = quarantined.len();
        if let Some(arrival) = first_arrival {
            self.write_quarantine(arrival, &quarantined).await?;
        }

        // The event as received: each answer's share of the response is sized by the
        // record's data, and a failed record echoes it (what the device sent).
        let (response, stream_summary) = transform_documents(event, &docs);
        // Per input record: answered Ok or Dropped (its other hours' readings are written).
        let mut delivered = vec![false; n];
        for ((answer, doc), delivered) in
            response.records.iter().zip(&docs).zip(delivered.iter_mut())
        {
            if doc.is_empty() {
                // Nothing accepted: answered Dropped, its payload is in the quarantine.
                summary.quarantined += 1;
                continue;
            }
            match answer.result.as_deref() {
                Some(r) if r == TransformResult::Ok.as_str() => {
                    summary.ok += 1;
                    *delivered = true;
                }
                Some(r) if r == TransformResult::Dropped.as_str() => {
                    summary.duplicates += 1;
                    *delivered = true;
                }
                _ => summary.processing_failed += 1,
            }
        }
        summary.readings = stream_summary.readings;
        summary.stream = stream_summary;
        let split: Vec<StreamRecordRef<'_>> = splits
            .into_iter()
            .filter(|(index, _)| delivered.get(*index).copied().unwrap_or(false))
            .flat_map(|(_, records)| records)
            .collect();
        if !split.is_empty() {
            summary.split_messages = split.len();
            summary.split_readings = split.iter().map(StreamRecordRef::readings).sum();
            summary.split_files = self.write_split(&split).await?;
        }
        tracing::info!(
            records = summary.records,
            ok = summary.ok,
            quarantined = summary.quarantined,
            duplicates = summary.duplicates,
            processing_failed = summary.processing_failed,
            rejected_messages = summary.rejected_messages,
            split_messages = summary.split_messages,
            split_files = summary.split_files.len(),
            "raw records transformed"
        );
        Ok((response, summary))
    }

    /// Writes the readings of `records` as Parquet, one object per event hour, complete
    /// when this returns.
    async fn write_split(
        &self,
        records: &[StreamRecordRef<'_>],
    ) -> Result<Vec<WrittenFile>, RawError> {
        let mut by_hour: BTreeMap<Partition, Vec<ReadingRef<'_>>> = BTreeMap::new();
        for r in records {
            by_hour
                .entry(Partition::of_millis(r.ts))
                .or_default()
                .extend(r.reading_refs());
        }
        let mut writer = PartitionedWriter::new(
            self.store.clone(),
            telemetry_schema(),
            self.split_parquet.clone(),
        );
        let mut files = Vec::new();
        for (partition, readings) in &by_hour {
            let failed = |detail: String| RawError::Split {
                partition: partition.path(),
                detail,
            };
            let batch = readings_to_batch(readings).map_err(|e| failed(e.to_string()))?;
            files.extend(
                writer
                    .write(partition, &batch)
                    .await
                    .map_err(|e| failed(e.to_string()))?,
            );
        }
        let all = by_hour.keys().map(Partition::path).collect::<Vec<_>>();
        files.extend(writer.flush().await.map_err(|e| RawError::Split {
            partition: all.join(", "),
            detail: e.to_string(),
        })?);
        tracing::info!(
            messages = records.len(),
            files = files.len(),
            "readings of device batches' other event hours written to their partitions"
        );
        Ok(files)
    }

    async fn write_quarantine(
        &self,
        received_at: i64,
        records: &[QuarantineRecord],
    ) -> Result<(), RawError> {
        if records.is_empty() {
            return Ok(());
        }
        let n = self.next_object.fetch_add(1, Ordering::Relaxed);
        let key = quarantine::object_key_under(
            &self.quarantine_prefix,
            received_at,
            &format!("{}-{n}", self.instance),
        );
        self.store
            .put(
                &Path::from(key.as_str()),
                PutPayload::from(quarantine::to_json_lines(records)),
            )
            .await
            .map_err(|source| RawError::Quarantine { key, source })?;
        Ok(())
    }
}

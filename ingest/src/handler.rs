//! The ingest core: validate a batch of raw payloads, stream the accepted messages, and
//! quarantine everything else with its reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use lambda_runtime::LambdaEvent;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use telemetry::QuarantineReason;
use telemetry::quarantine::{self, QuarantineRecord};
use telemetry::{Partition, StreamRecordRef, ValidationConfig, validate_payload_borrowed};

use crate::event::{IngestReport, IotRuleEvent, RawPayload};
use crate::pack::{Message, Pack, pack};
use crate::sink::{Fault, RecordSink, RetryPolicy, SinkRecord, deliver};

/// Settings of the ingest function.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Validation tunables (event-time window, payload limit).
    pub validation: ValidationConfig,
    /// Retry policy for records the sink fails.
    pub retry: RetryPolicy,
    /// Key prefix of the quarantine objects in the store (`IOTPIPE_QUARANTINE_PREFIX` on
    /// AWS). Default `quarantine`.
    pub quarantine_prefix: String,
    /// Record packing (`IOTPIPE_PACK`): several messages of one device and hour per stream
    /// record, newline-delimited ([`crate::pack`]). Default off.
    pub pack: Pack,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            validation: ValidationConfig::default(),
            retry: RetryPolicy::default(),
            quarantine_prefix: telemetry::layout::QUARANTINE_PREFIX.to_owned(),
            pack: Pack::Off,
        }
    }
}

/// Errors that fail an invocation (so that Lambda retries it, then hands the event to its
/// on-failure destination or DLQ): a sink that refuses records for reasons that are not the
/// payloads' fault, and a quarantine that cannot be written, since then a payload would
/// be lost.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The stream refused records for a reason of its own (permissions, a missing stream,
    /// a disabled KMS key, retries exhausted). Nothing was quarantined: the whole event is
    /// to be retried.
    #[error(
        "the stream refused {refused} of {records} record(s) for a reason that is not the \
         payloads' fault: {reason}. The invocation fails so that Lambda retries the event \
         (then its on-failure destination keeps it); check that the stream exists, that the \
         function's role may put to it and that its KMS key is enabled, then replay"
    )]
    Sink {
        /// Records refused.
        refused: usize,
        /// Records of the invocation.
        records: usize,
        /// The first refusal's error.
        reason: String,
    },
    /// The quarantine object could not be written.
    #[error("writing quarantine object {key}: {source}")]
    Quarantine {
        /// The object key.
        key: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
}

/// A message on its way to the stream, tagged with its payload's index in the invocation
/// and its number of readings.
type Tagged = Message<(usize, u64)>;

/// A raw payload borrowed from the event or batch that carries it.
struct PayloadRef<'a> {
    payload: &'a [u8],
    topic: &'a str,
    received_at: i64,
}

/// The ingest function's dependencies: a record sink and the object store that holds the
/// quarantine. Built once per cold start.
pub struct Ingest<S> {
    sink: S,
    store: Arc<dyn ObjectStore>,
    config: IngestConfig,
    /// Names quarantine objects apart within one process.
    instance: String,
    next_object: AtomicU64,
}

impl<S: RecordSink> Ingest<S> {
    /// The ingest core over `sink`, quarantining into `store`.
    pub fn new(sink: S, store: Arc<dyn ObjectStore>, config: IngestConfig) -> Self {
        let instance = format!("{:08x}", rand::random::<u32>());
        Self {
            sink,
            store,
            config,
            instance,
            next_object: AtomicU64::new(0),
        }
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Handles one IoT rule event (one MQTT message).
    pub async fn handle_event(&self, event: &IotRuleEvent) -> Result<IngestReport, IngestError> {
        match telemetry::RuleRecord::decode_payload(&event.payload) {
            Ok(payload) => {
                let raw = PayloadRef {
                    payload: &payload,
                    topic: &event.topic,
                    received_at: event.received_at,
                };
                self.ingest_refs(std::slice::from_ref(&raw)).await
            }
            Err(e) => {
                let q = QuarantineRecord::other(
                    QuarantineReason::BadEventEncoding,
                    format!(
                        "the rule's payload field is not base64 ({e}); check the rule's SQL uses encode(*, 'base64')"
                    ),
                    &event.topic,
                    event.received_at,
                    event.payload.as_bytes(),
                );
                self.write_quarantine(event.received_at, &[q]).await?;
                Ok(IngestReport {
                    messages: 1,
                    quarantined: 1,
                    ..Default::default()
                })
            }
        }
    }

    /// Ingests a batch of raw payloads: validates each, delivers the accepted messages as
    /// stream records (partition key = device id; packed when [`IngestConfig::pack`] is on),
    /// and quarantines the rest. A record over the sink's record limit is quarantined message
    /// by message, so the counts stay in messages: `messages = accepted + quarantined`. A
    /// record the sink refuses for its own reasons fails the call ([`IngestError::Sink`]).
    pub async fn ingest(&self, payloads: &[RawPayload]) -> Result<IngestReport, IngestError> {
        let refs: Vec<PayloadRef<'_>> = payloads
            .iter()
            .map(|p| PayloadRef {
                payload: &p.payload,
                topic: &p.topic,
                received_at: p.received_at,
            })
            .collect();
        self.ingest_refs(&refs).await
    }

    /// [`Ingest::ingest`] of payloads the caller holds (one IoT rule event's decoded
    /// payload is not copied into a [`RawPayload`]).
    async fn ingest_refs(&self, payloads: &[PayloadRef<'_>]) -> Result<IngestReport, IngestError> {
        let mut report = IngestReport::default();
        let mut quarantined = Vec::new();
        // Each message remembers its payload (for the quarantine's topic) and readings.
        let mut messages: Vec<Tagged> = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let v = validate_payload_borrowed(
                p.payload,
                p.topic,
                p.received_at,
                &self.config.validation,
            );
            report.messages += v.messages() as u64;
            if let Some(first) = v.rejected.first() {
                // One record (and log line) per payload, whatever its shape: a hostile batch
                // does not fan out into one entry per element.
                tracing::info!(
                    code = first.reason.code(),
                    reason = %first.reason,
                    rejected = v.rejected.len(),
                    topic = %p.topic,
                    "payload quarantined"
                );
                quarantined.push(QuarantineRecord::from_payload(
                    p.payload,
                    &v.rejected,
                    p.topic,
                    p.received_at,
                ));
            }
            for msg in v.accepted {
                let rec = StreamRecordRef::new(msg, p.received_at);
                messages.push(Message {
                    key: rec.device_id.clone().into_owned(),
                    hour: Partition::hour_of_millis(rec.ts),
                    data: Bytes::from(rec.to_json()),
                    tag: (i, rec.readings() as u64),
                });
            }
        }
        let accepted_messages = messages.len() as u64;
        report.readings = messages.iter().map(|m| m.tag.1).sum();
        let limits = self.sink.limits();
        let packed = pack(
            messages,
            self.config
                .pack
                .target(limits.metering_unit_bytes, limits.max_record_bytes),
        );
        // Each record's messages, to quarantine them if the sink cannot take it.
        let mut parts: Vec<(Bytes, Vec<Tagged>)> = Vec::with_capacity(packed.len());
        let mut records = Vec::with_capacity(packed.len());
        for p in packed {
            records.push(SinkRecord {
                partition_key: p.key,
                data: p.data.clone(),
            });
            parts.push((p.data, p.parts));
        }
        let record_count = records.len();
        let delivery = deliver(&self.sink, records, &self.config.retry).await;
        report.put_calls = delivery.calls;
        let refused: Vec<_> = delivery
            .undelivered
            .iter()
            .filter(|u| u.fault == Fault::Sink)
            .collect();
        if let Some(first) = refused.first() {
            // Not the payloads' fault: quarantining them would hide an outage behind a
            // success (no retry, no DLQ, no alarm). The rejections are not written either:
            // the retried event writes them once.
            return Err(IngestError::Sink {
                refused: refused.len(),
                records: record_count,
                reason: first.reason.clone(),
            });
        }
        let mut undelivered_messages = 0u64;
        // A record is found back by its data, which is unique (each message has its device
        // id, seq and times); the map is built only when something was not delivered.
        let by_data: HashMap<&Bytes, &Vec<Tagged>> = if delivery.undelivered.is_empty() {
            HashMap::new()
        } else {
            parts.iter().map(|(data, msgs)| (data, msgs)).collect()
        };
        for u in &delivery.undelivered {
            for m in by_data.get(&u.record.data).into_iter().copied().flatten() {
                undelivered_messages += 1;
                // The message's own readings are no longer on their way.
                report.readings -= m.tag.1;
                let (topic, received_at) = payloads
                    .get(m.tag.0)
                    .map(|p| (p.topic, p.received_at))
                    .unwrap_or(("", 0));
                quarantined.push(QuarantineRecord::other(
                    QuarantineReason::SinkFailed,
                    format!("the stream did not take the record: {}", u.reason),
                    topic,
                    received_at,
                    &m.data,
                ));
            }
        }
        report.sink_failed = undelivered_messages;
        report.accepted = accepted_messages - undelivered_messages;
        report.quarantined = quarantined.iter().map(|q| q.messages() as u64).sum();
        if let Some(first) = payloads.first() {
            self.write_quarantine(first.received_at, &quarantined)
                .await?;
        }
        debug_assert_eq!(report.messages, report.accepted + report.quarantined);
        Ok(report)
    }

    pub(crate) async fn write_quarantine(
        &self,
        received_at: i64,
        records: &[QuarantineRecord],
    ) -> Result<(), IngestError> {
        if records.is_empty() {
            return Ok(());
        }
        let n = self.next_object.fetch_add(1, Ordering::Relaxed);
        let key = quarantine::object_key_under(
            &self.config.quarantine_prefix,
            received_at,
            &format!("{}-{n}", self.instance),
        );
        let body = PutPayload::from(quarantine::to_json_lines(records));
        self.store
            .put(&Path::from(key.as_str()), body)
            .await
            .map_err(|source| IngestError::Quarantine { key, source })?;
        Ok(())
    }
}

/// The Lambda handler: one IoT rule event in, its report out.
pub async fn handle<S: RecordSink>(
    event: LambdaEvent<IotRuleEvent>,
    ingest: &Ingest<S>,
) -> Result<IngestReport, lambda_runtime::Error> {
    Ok(ingest.handle_event(&event.payload).await?)
}

//! The ingest core: validate a batch of raw payloads, stream the accepted messages, and
//! quarantine everything else with its reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use lambda_runtime::LambdaEvent;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use telemetry::quarantine::{self, QuarantineRecord, SINK_FAILED};
use telemetry::{StreamRecord, ValidationConfig, validate_payload};

use crate::event::{IngestReport, IotRuleEvent, RawPayload};
use crate::sink::{RecordSink, RetryPolicy, SinkRecord, deliver};

/// Reason code of an IoT rule event whose payload is not base64.
pub const BAD_EVENT_ENCODING: &str = "bad_event_encoding";

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
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            validation: ValidationConfig::default(),
            retry: RetryPolicy::default(),
            quarantine_prefix: quarantine::QUARANTINE_PREFIX.to_owned(),
        }
    }
}

/// Errors that fail an invocation (so that Lambda retries it or sends it to the DLQ):
/// only a quarantine that cannot be written, since then a payload would be lost.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
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
        match STANDARD.decode(event.payload.as_bytes()) {
            Ok(payload) => {
                let raw = RawPayload {
                    payload,
                    topic: event.topic.clone(),
                    received_at: event.received_at,
                };
                self.ingest(std::slice::from_ref(&raw)).await
            }
            Err(e) => {
                let q = QuarantineRecord::other(
                    BAD_EVENT_ENCODING,
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
    /// stream records (partition key = device id), and quarantines the rest.
    pub async fn ingest(&self, payloads: &[RawPayload]) -> Result<IngestReport, IngestError> {
        let mut report = IngestReport::default();
        let mut quarantined = Vec::new();
        let mut records = Vec::new();
        // Maps a record back to its payload, to quarantine it with its topic if the sink
        // cannot take it. Record data is unique per message (device id + seq + times).
        let mut origin: HashMap<Bytes, usize> = HashMap::new();
        let mut total_readings = 0u64;
        for (i, p) in payloads.iter().enumerate() {
            let v = validate_payload(&p.payload, &p.topic, p.received_at, &self.config.validation);
            report.messages += v.messages() as u64;
            for r in &v.rejected {
                tracing::info!(code = r.reason.code(), reason = %r.reason, topic = %p.topic, "payload quarantined");
                quarantined.push(QuarantineRecord::from_rejected(r, &p.topic, p.received_at));
            }
            for msg in v.accepted {
                let rec = StreamRecord::new(msg, p.received_at);
                total_readings += rec.readings() as u64;
                let data = Bytes::from(rec.to_json());
                origin.insert(data.clone(), i);
                records.push(SinkRecord {
                    partition_key: rec.device_id.clone(),
                    data,
                });
            }
        }
        let total_records = records.len();
        let delivery = deliver(&self.sink, records, &self.config.retry).await;
        report.put_calls = delivery.calls;
        report.sink_failed = delivery.undelivered.len() as u64;
        report.accepted = (total_records - delivery.undelivered.len()) as u64;
        report.readings = total_readings;
        for u in &delivery.undelivered {
            // The record's own readings are no longer on their way.
            if let Ok(rec) = serde_json::from_slice::<StreamRecord>(&u.record.data) {
                report.readings -= rec.readings() as u64;
            }
            let (topic, received_at) = origin
                .get(&u.record.data)
                .and_then(|i| payloads.get(*i))
                .map(|p| (p.topic.as_str(), p.received_at))
                .unwrap_or(("", 0));
            quarantined.push(QuarantineRecord::other(
                SINK_FAILED,
                format!("the stream did not take the record: {}", u.reason),
                topic,
                received_at,
                &u.record.data,
            ));
        }
        report.quarantined = quarantined.len() as u64;
        if let Some(first) = payloads.first() {
            self.write_quarantine(first.received_at, &quarantined)
                .await?;
        }
        debug_assert_eq!(report.messages, report.accepted + report.quarantined);
        Ok(report)
    }

    async fn write_quarantine(
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

//! Ingest behind a Kinesis event-source mapping (the `kinesis` topology): the topic rule's
//! Kinesis action puts [`telemetry::RuleRecord`]s into a stream, and Lambda hands ingest a
//! batch of them (`IOTPIPE_EVENT=kinesis`, set by the template).
//!
//! - Each record's data is decoded ([`telemetry::RuleRecord::decode`]); its receive time is
//!   the record's `approximateArrivalTimestamp`. The decoded payloads go through
//!   [`Ingest::ingest`] as one batch: the same validation, quarantine, packing and delivery as
//!   the per-message path, with one sink call per batch instead of one per message.
//! - A record that is not the rule's record is quarantined whole
//!   ([`telemetry::QuarantineReason::BadEventEncoding`], its bytes kept).
//! - Per-record problems never fail the batch (they are quarantined), so the response's
//!   `batchItemFailures` is empty on success. What fails the invocation is what
//!   [`IngestError`] says: the sink refusing records, or a quarantine write. Lambda then
//!   bisects and retries the batch (`BisectBatchOnFunctionError`), then describes it to the
//!   on-failure destination. A retried batch may quarantine its bad records twice (each
//!   quarantine object is complete; at least once, as the rest of the pipeline).

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::streams::KinesisEventResponse;
use lambda_runtime::LambdaEvent;
use telemetry::quarantine::QuarantineRecord;
use telemetry::{QuarantineReason, RuleRecord};

use crate::event::{IngestReport, RawPayload};
use crate::handler::{Ingest, IngestError};
use crate::sink::RecordSink;

/// The environment variable that says which event ingest receives: `rule` (default: one IoT
/// rule event per invocation, topology per-message) or `kinesis` (a Kinesis batch of rule
/// records, topology kinesis).
pub const EVENT_VAR: &str = "IOTPIPE_EVENT";

impl<S: RecordSink> Ingest<S> {
    /// Ingests one Kinesis batch of rule records (module doc).
    pub async fn handle_kinesis(&self, event: &KinesisEvent) -> Result<IngestReport, IngestError> {
        let mut payloads = Vec::with_capacity(event.records.len());
        let mut bad = Vec::new();
        for r in &event.records {
            let received_at = r.kinesis.approximate_arrival_timestamp.timestamp_millis();
            match RuleRecord::decode(&r.kinesis.data.0) {
                Ok((payload, topic)) => payloads.push(RawPayload {
                    payload,
                    topic: topic.into_owned(),
                    received_at,
                }),
                Err(detail) => bad.push(QuarantineRecord::other(
                    QuarantineReason::BadEventEncoding,
                    format!(
                        "the Kinesis record is not the rule's {{payload (base64), topic}} \
                         ({detail}); check the rule's SQL is SELECT encode(*, 'base64') AS \
                         payload, topic() AS topic"
                    ),
                    "",
                    received_at,
                    &r.kinesis.data.0,
                )),
            }
        }
        let mut report = self.ingest(&payloads).await?;
        if let Some(first) = bad.first() {
            self.write_quarantine(first.received_at, &bad).await?;
            report.messages += bad.len() as u64;
            report.quarantined += bad.len() as u64;
        }
        Ok(report)
    }
}

/// The Lambda handler of the `kinesis` topology: a Kinesis batch in, no item failures out
/// (an error fails the whole batch, see the module doc).
pub async fn handle_kinesis<S: RecordSink>(
    event: LambdaEvent<KinesisEvent>,
    ingest: &Ingest<S>,
) -> Result<KinesisEventResponse, lambda_runtime::Error> {
    let report = ingest.handle_kinesis(&event.payload).await?;
    tracing::info!(
        records = event.payload.records.len(),
        messages = report.messages,
        accepted = report.accepted,
        quarantined = report.quarantined,
        "kinesis batch ingested"
    );
    Ok(KinesisEventResponse::default())
}

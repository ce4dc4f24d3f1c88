//! The Firehose sink: one `PutRecordBatch` call per batch, for fleets small enough to skip
//! the Kinesis stream (`IOTPIPE_SINK=firehose`).
//!
//! Like `PutRecords`, `PutRecordBatch` answers HTTP 200 with per-record failures:
//! `FailedPutCount` says how many, and each failed entry of `RequestResponses` carries an
//! `ErrorCode` in place of a `RecordId`, in request order. Each becomes an
//! [`EntryOutcome`] and only the failed records are retried.
//!
//! Firehose records have no partition key: the record data is the same compact JSON
//! stream record the Kinesis sink sends, so the transform function sees the same input
//! whichever path a record took.

use aws_config::SdkConfig;
use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::Builder;
use aws_sdk_firehose::operation::put_record_batch::PutRecordBatchOutput;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;

use crate::aws::{classify, sink_retry_config, sink_timeout_config};
use crate::sink::{BatchLimits, EntryOutcome, RecordSink, SinkError, SinkRecord};

/// Per-record error codes worth another try: the two Firehose documents
/// (`ServiceUnavailableException`, `InternalFailure`) and throttles. Any other code fails
/// the record for good (it is quarantined).
pub const RETRIABLE_ENTRY_CODES: &[&str] = &[
    "ServiceUnavailableException",
    "InternalFailure",
    "ThrottlingException",
    "KMSThrottlingException",
];

/// The code given to an entry the response reports neither as failed nor with a record
/// id: it cannot be shown to be stored, so it is retried (a duplicate is absorbed
/// downstream; a loss is not).
pub const NO_RECORD_ID: &str = "NoRecordId";

/// Puts records into a Firehose delivery stream with a direct-put source.
#[derive(Debug, Clone)]
pub struct FirehoseSink {
    /// The SDK client; built once per cold start, it holds the connection pool.
    client: Client,
    /// The delivery stream's name (`IOTPIPE_STREAM_NAME` with `IOTPIPE_SINK=firehose`).
    delivery_stream: String,
}

impl FirehoseSink {
    /// A sink over `client`. Build the client with [`configure`] so that retries are left
    /// to [`crate::sink::deliver`].
    pub fn new(client: Client, delivery_stream: impl Into<String>) -> Self {
        Self {
            client,
            delivery_stream: delivery_stream.into(),
        }
    }

    /// A sink whose client is built from `sdk` (region, credentials, endpoint) with the
    /// sink's settings ([`configure`]).
    pub fn from_sdk_config(sdk: &SdkConfig, delivery_stream: impl Into<String>) -> Self {
        Self::new(
            Client::from_conf(configure(sdk.into()).build()),
            delivery_stream,
        )
    }

    /// The delivery stream's name.
    pub fn delivery_stream(&self) -> &str {
        &self.delivery_stream
    }

    /// Checks that the delivery stream exists (`DescribeDeliveryStream`), so that a typo
    /// fails a run at its start instead of quarantining every record. The error says
    /// what to check.
    pub async fn check_delivery_stream(&self) -> Result<(), String> {
        self.client
            .describe_delivery_stream()
            .delivery_stream_name(&self.delivery_stream)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "Firehose DescribeDeliveryStream {}: {}; create the delivery stream \
                     (infra/deploy.sh) or check AWS_REGION / AWS_ENDPOINT_URL and the credentials",
                    self.delivery_stream,
                    crate::aws::brief(&e)
                )
            })
    }
}

/// Applies the sink's client settings: no SDK retries, bounded connect and attempt times
/// (see [`crate::aws`]). Public so that tests build their clients the same way.
pub fn configure(builder: Builder) -> Builder {
    builder
        .retry_config(sink_retry_config())
        .timeout_config(sink_timeout_config())
}

impl RecordSink for FirehoseSink {
    fn limits(&self) -> BatchLimits {
        BatchLimits::FIREHOSE
    }

    async fn put_batch(&self, batch: &[SinkRecord]) -> Result<Vec<EntryOutcome>, SinkError> {
        let records = batch
            .iter()
            .map(|r| Record::builder().data(Blob::new(r.data.to_vec())).build())
            .collect::<Result<Vec<_>, _>>()
            // Only a missing required field fails here, and the data is always set.
            .map_err(|e| SinkError::Fatal(format!("building a PutRecordBatch record: {e}")))?;
        let output = self
            .client
            .put_record_batch()
            .delivery_stream_name(&self.delivery_stream)
            .set_records(Some(records))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(outcomes(&output, batch.len(), &self.delivery_stream))
    }
}

/// Maps a `PutRecordBatch` response to one outcome per record, in request order. Missing
/// trailing results are left to [`crate::sink::deliver`], which retries those records.
fn outcomes(output: &PutRecordBatchOutput, sent: usize, stream: &str) -> Vec<EntryOutcome> {
    let entries = output
        .request_responses()
        .iter()
        .map(|e| crate::aws::EntryResult {
            error_code: e.error_code(),
            error_message: e.error_message(),
            acknowledged: e.record_id().is_some(),
        });
    let results = crate::aws::entry_outcomes(entries, RETRIABLE_ENTRY_CODES, NO_RECORD_ID);
    crate::aws::log_partial_failure(
        "PutRecordBatch",
        stream,
        sent,
        &results,
        Some(output.failed_put_count()),
    );
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_firehose::types::PutRecordBatchResponseEntry;

    #[test]
    fn each_response_entry_maps_to_the_outcome_of_the_record_at_the_same_position() {
        let output = PutRecordBatchOutput::builder()
            .failed_put_count(2)
            .request_responses(
                PutRecordBatchResponseEntry::builder()
                    .record_id("r1")
                    .build(),
            )
            .request_responses(
                PutRecordBatchResponseEntry::builder()
                    .error_code("ServiceUnavailableException")
                    .error_message("slow down")
                    .build(),
            )
            .request_responses(
                PutRecordBatchResponseEntry::builder()
                    .error_code("InvalidArgumentException")
                    .build(),
            )
            .build()
            .unwrap();
        let got = outcomes(&output, 3, "s");
        assert_eq!(got[0], EntryOutcome::Ok);
        assert!(
            matches!(&got[1], EntryOutcome::Failed { retriable: true, message, .. } if message == "slow down")
        );
        assert!(matches!(
            &got[2],
            EntryOutcome::Failed {
                retriable: false,
                ..
            }
        ));
    }
}

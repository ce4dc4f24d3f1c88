//! The Kinesis Data Streams sink: one `PutRecords` call per batch.
//!
//! `PutRecords` answers HTTP 200 even when some entries failed: `FailedRecordCount` says
//! how many, and each failed entry carries an `ErrorCode` in place of a sequence number,
//! in request order. Dropping those entries is the classic data-loss bug of Kinesis
//! producers; here each entry's result becomes an [`EntryOutcome`], in order, and
//! [`crate::sink::deliver`] retries only the failed ones.

use aws_config::SdkConfig;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::Builder;
use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use crate::aws::{classify, sink_retry_config, sink_timeout_config};
use crate::sink::{BatchLimits, EntryOutcome, RecordSink, SinkError, SinkRecord};

/// Per-entry error codes worth another try. Kinesis documents two
/// (`ProvisionedThroughputExceededException`: the shard's write limit, 1 MiB/s or
/// 1,000 records/s; `InternalFailure`); the others are throttles and outages that the
/// same retry cures. Any other code fails the entry for good (it is quarantined).
pub const RETRIABLE_ENTRY_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "InternalFailure",
    "ServiceUnavailableException",
    "KMSThrottlingException",
];

/// The code given to an entry the response reports neither as failed nor with a sequence
/// number: it cannot be shown to be stored, so it is retried (a duplicate is absorbed
/// downstream; a loss is not).
pub const NO_SEQUENCE_NUMBER: &str = "NoSequenceNumber";

/// Per shard, the highest sequence number `PutRecords` acknowledged: lets a reader of the
/// same stream tell when it has read everything a run put (see
/// `local::kinesis_reader::KinesisSource::with_put_positions`). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PutPositions(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
);

impl PutPositions {
    /// Notes that `sequence_number` was stored on `shard_id`.
    pub fn record(&self, shard_id: &str, sequence_number: &str) {
        if let Ok(mut map) = self.0.lock() {
            let newer = map
                .get(shard_id)
                .is_none_or(|old| sequence_cmp(sequence_number, old).is_gt());
            if newer {
                map.insert(shard_id.to_owned(), sequence_number.to_owned());
            }
        }
    }

    /// The highest sequence number stored on `shard_id`, if any.
    pub fn get(&self, shard_id: &str) -> Option<String> {
        self.0.lock().ok().and_then(|m| m.get(shard_id).cloned())
    }
}

/// Orders Kinesis sequence numbers (decimal strings of up to 128 digits) numerically.
pub fn sequence_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Puts records into a Kinesis data stream (partition key = device id, so one device's
/// records stay in order on one shard).
#[derive(Debug, Clone)]
pub struct KinesisSink {
    /// The SDK client; built once per cold start, it holds the connection pool.
    client: Client,
    /// The stream's name (`IOTPIPE_STREAM_NAME`).
    stream_name: String,
    /// Where acknowledged positions are noted, when a reader needs them.
    positions: Option<PutPositions>,
}

impl KinesisSink {
    /// A sink over `client`. Build the client with [`configure`] so that retries are left
    /// to [`crate::sink::deliver`].
    pub fn new(client: Client, stream_name: impl Into<String>) -> Self {
        Self {
            client,
            stream_name: stream_name.into(),
            positions: None,
        }
    }

    /// Notes every acknowledged entry's shard and sequence number in `positions`.
    pub fn with_put_positions(mut self, positions: PutPositions) -> Self {
        self.positions = Some(positions);
        self
    }

    /// A sink whose client is built from `sdk` (region, credentials, endpoint) with the
    /// sink's settings ([`configure`]).
    pub fn from_sdk_config(sdk: &SdkConfig, stream_name: impl Into<String>) -> Self {
        Self::new(
            Client::from_conf(configure(sdk.into()).build()),
            stream_name,
        )
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }
}

/// Applies the sink's client settings: no SDK retries, bounded connect and attempt times
/// (see [`crate::aws`]). Public so that tests build their clients the same way.
pub fn configure(builder: Builder) -> Builder {
    builder
        .retry_config(sink_retry_config())
        .timeout_config(sink_timeout_config())
}

impl RecordSink for KinesisSink {
    fn limits(&self) -> BatchLimits {
        BatchLimits::KINESIS
    }

    async fn put_batch(&self, batch: &[SinkRecord]) -> Result<Vec<EntryOutcome>, SinkError> {
        let entries = batch
            .iter()
            .map(|r| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&r.partition_key)
                    .data(Blob::new(r.data.to_vec()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            // Only a missing required field fails here, and both are always set.
            .map_err(|e| SinkError::Fatal(format!("building a PutRecords entry: {e}")))?;
        let output = self
            .client
            .put_records()
            .stream_name(&self.stream_name)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        if let Some(p) = &self.positions {
            for r in output.records() {
                if let (Some(shard), Some(seq)) = (r.shard_id(), r.sequence_number()) {
                    p.record(shard, seq);
                }
            }
        }
        Ok(outcomes(&output, batch.len(), &self.stream_name))
    }
}

/// Maps a `PutRecords` response to one outcome per entry, in request order. Missing
/// trailing results are left to [`crate::sink::deliver`], which retries those entries.
fn outcomes(output: &PutRecordsOutput, sent: usize, stream: &str) -> Vec<EntryOutcome> {
    let entries = output.records().iter().map(|e| crate::aws::EntryResult {
        error_code: e.error_code(),
        error_message: e.error_message(),
        acknowledged: e.sequence_number().is_some(),
    });
    let results = crate::aws::entry_outcomes(entries, RETRIABLE_ENTRY_CODES, NO_SEQUENCE_NUMBER);
    crate::aws::log_partial_failure(
        "PutRecords",
        stream,
        sent,
        &results,
        output.failed_record_count(),
    );
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::types::PutRecordsResultEntry;

    fn ok(seq: &str) -> PutRecordsResultEntry {
        PutRecordsResultEntry::builder()
            .sequence_number(seq)
            .shard_id("shardId-000000000000")
            .build()
    }

    fn failed(code: &str) -> PutRecordsResultEntry {
        PutRecordsResultEntry::builder()
            .error_code(code)
            .error_message("reason")
            .build()
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        use std::cmp::Ordering::*;
        assert_eq!(sequence_cmp("9", "10"), Less);
        assert_eq!(sequence_cmp("0010", "10"), Equal);
        assert_eq!(
            sequence_cmp(
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692538361571095921575989136588899"
            ),
            Less
        );
        let p = PutPositions::default();
        p.record("s", "10");
        p.record("s", "9");
        assert_eq!(p.get("s").as_deref(), Some("10"));
    }

    #[test]
    fn each_result_entry_maps_to_the_outcome_of_the_entry_at_the_same_position() {
        let output = PutRecordsOutput::builder()
            .failed_record_count(3)
            .records(ok("1"))
            .records(failed("ProvisionedThroughputExceededException"))
            .records(failed("InternalFailure"))
            .records(failed("InvalidArgumentException"))
            .records(PutRecordsResultEntry::builder().build())
            .build()
            .unwrap();
        let got = outcomes(&output, 5, "s");
        let retriable: Vec<Option<bool>> = got
            .iter()
            .map(|o| match o {
                EntryOutcome::Ok => None,
                EntryOutcome::Failed { retriable, .. } => Some(*retriable),
            })
            .collect();
        assert_eq!(
            retriable,
            [None, Some(true), Some(true), Some(false), Some(true)],
            "ok, throttled, internal failure, invalid (not retriable), no sequence number"
        );
    }
}

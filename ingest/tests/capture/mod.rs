//! A record sink that keeps what ingest puts, in order, for the handler tests: a stand-in
//! for the stream (the emulated Kinesis stream lives in the `local` crate, which this
//! crate does not depend on).

use bytes::Bytes;
use ingest::sink::{BatchLimits, EntryOutcome, RecordSink, SinkError, SinkRecord};
use telemetry::stream::StreamEntry;
use tokio::sync::mpsc;

/// Accepts every record (Kinesis's limits) and sends it on as a [`StreamEntry`]; the
/// receiver ends when the sink (the `Ingest` holding it) is dropped.
pub struct CaptureSink {
    /// Where the accepted records go.
    tx: mpsc::UnboundedSender<StreamEntry>,
}

/// A sink and the receiver of what it accepts.
pub fn capture() -> (CaptureSink, mpsc::UnboundedReceiver<StreamEntry>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (CaptureSink { tx }, rx)
}

impl RecordSink for CaptureSink {
    fn limits(&self) -> BatchLimits {
        BatchLimits::KINESIS
    }

    async fn put_batch(&self, batch: &[SinkRecord]) -> Result<Vec<EntryOutcome>, SinkError> {
        let now = chrono::Utc::now().timestamp_millis();
        Ok(batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let entry = StreamEntry {
                    shard_id: telemetry::stream::shard_id(0),
                    sequence_number: format!("{i}"),
                    partition_key: r.partition_key.clone(),
                    data: Bytes::clone(&r.data),
                    approximate_arrival_ms: now,
                };
                match self.tx.send(entry) {
                    Ok(()) => EntryOutcome::Ok,
                    Err(_) => EntryOutcome::Failed {
                        code: "Closed".into(),
                        message: "the test dropped the receiver".into(),
                        retriable: false,
                    },
                }
            })
            .collect())
    }
}

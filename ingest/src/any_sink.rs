//! The sink the deployed function chose at cold start ([`crate::config::Config::sink`]).

use aws_config::SdkConfig;

use crate::config::{Config, SinkKind};
use crate::firehose::FirehoseSink;
use crate::kinesis::KinesisSink;
use crate::sink::{BatchLimits, EntryOutcome, RecordSink, SinkError, SinkRecord};

/// Either AWS sink, picked by configuration; the handler stays generic over
/// [`RecordSink`] and needs no second instantiation per sink.
#[derive(Debug, Clone)]
pub enum AnySink {
    /// Kinesis Data Streams, `PutRecords`.
    Kinesis(KinesisSink),
    /// Firehose direct put, `PutRecordBatch`.
    Firehose(FirehoseSink),
}

impl AnySink {
    /// The configured sink, its SDK client built from `sdk`.
    pub fn from_config(config: &Config, sdk: &SdkConfig) -> Self {
        match config.sink {
            SinkKind::Kinesis => {
                Self::Kinesis(KinesisSink::from_sdk_config(sdk, &config.stream_name))
            }
            SinkKind::Firehose => {
                Self::Firehose(FirehoseSink::from_sdk_config(sdk, &config.stream_name))
            }
        }
    }
}

impl RecordSink for AnySink {
    fn limits(&self) -> BatchLimits {
        match self {
            Self::Kinesis(s) => s.limits(),
            Self::Firehose(s) => s.limits(),
        }
    }

    async fn put_batch(&self, batch: &[SinkRecord]) -> Result<Vec<EntryOutcome>, SinkError> {
        match self {
            Self::Kinesis(s) => s.put_batch(batch).await,
            Self::Firehose(s) => s.put_batch(batch).await,
        }
    }
}

//! What AWS meters, defined once: the units each service bills a record or message in,
//! and the pipeline's Lambda functions with the memory each is configured with.
//!
//! - Units: every byte-to-unit conversion of the pipeline (record packing, the local
//!   stack's counters, the cost estimate) uses these. The services round each record (or
//!   message) up to a whole unit, so a record of a few hundred bytes pays for a full unit;
//!   [`units`] is that rounding.
//! - Functions: the one table the local metering bills GB-seconds on and the AWS
//!   template's `…MemorySize` parameter defaults follow (`tests/tests/template_defaults.rs`
//!   fails when `infra/template.yaml` or `infra/cost.py` drift from it).
//! - [`MinuteFigures`]: a function's invocations and Duration percentiles in one minute, as
//!   the local meter records them and the dashboard charts them from the run records.
//! - [`RollupRun`]: when a rollup invocation ran, which dates a reading's arrival in the
//!   statistics (the dashboard's latency page).

/// Kinesis Data Streams, provisioned mode: PUT payload units of 25 KB per record. Record
/// packing fills this unit for a Kinesis sink.
pub const KINESIS_PUT_PAYLOAD_UNIT_BYTES: usize = 25 * 1024;

/// Kinesis Data Streams, on-demand mode: data ingested is billed per record rounded up to
/// 1 KB. The cost estimate prices the stream in this mode.
pub const KINESIS_ON_DEMAND_UNIT_BYTES: usize = 1024;

/// Kinesis Data Firehose: ingestion is billed per record rounded up to 5 KB.
pub const FIREHOSE_INGEST_UNIT_BYTES: usize = 5 * 1024;

/// AWS IoT Core: messages are metered in 5 KB increments.
pub const IOT_MESSAGE_UNIT_BYTES: usize = 5 * 1024;

/// Topology kinesis: records per ingest invocation at most, the event-source mapping's
/// `BatchSize` (the AWS template's `IngestBatchSize` default; the local emulation's batch).
pub const INGEST_BATCH_SIZE: usize = 500;

/// Topology kinesis: seconds the event-source mapping gathers records before it invokes
/// ingest with a batch that is not full (`MaximumBatchingWindowInSeconds`, the template's
/// `IngestBatchWindowSeconds` default).
pub const INGEST_BATCH_WINDOW_SECONDS: u64 = 5;

/// Topology kinesis: retries of a failed batch (or record) before the event-source mapping
/// gives it to its on-failure destination (`MaximumRetryAttempts` of the template's
/// `IngestStreamMapping`).
pub const INGEST_MAX_RETRY_ATTEMPTS: u32 = 3;

/// The units a record (or message) of `len` bytes is billed as, with `unit_bytes` per
/// unit: rounded up, and at least one (an empty record still counts).
pub fn units(len: usize, unit_bytes: usize) -> u64 {
    len.div_ceil(unit_bytes.max(1)).max(1) as u64
}

/// Milliseconds in a minute: the bin of [`MinuteFigures`].
pub const MINUTE_MS: i64 = 60_000;

/// One function's invocations in one UTC minute, by each invocation's end (the timestamp
/// of its `REPORT` line). Durations are read from a histogram that is at most 1.6 % high.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MinuteFigures {
    /// Start of the minute, epoch ms (UTC).
    pub minute_start_ms: i64,
    /// Invocations that ended in the minute.
    pub invocations: u64,
    /// Of those, invocations whose handler returned an error.
    pub errors: u64,
    /// Median Duration, ms.
    pub p50_duration_ms: f64,
    /// 99th percentile Duration, ms.
    pub p99_duration_ms: f64,
    /// Longest Duration, ms.
    pub max_duration_ms: f64,
}

/// One rollup invocation of a local run: a telemetry object written before `started_at_ms`
/// is in the statistics by `ended_at_ms` when the invocation succeeded (its planner finds
/// the object's pending marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RollupRun {
    /// When the invocation started, epoch ms.
    pub started_at_ms: i64,
    /// When it ended, epoch ms.
    pub ended_at_ms: i64,
    /// It succeeded (a failed run leaves its work to the next).
    pub ok: bool,
}

/// A function of the pipeline, as deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LambdaFn {
    /// Function name (the binary name, and the suffix of its log group).
    pub name: &'static str,
    /// Configured memory, MB: what Lambda bills GB-seconds on, and the default of the
    /// template parameter [`LambdaFn::memory_parameter`].
    pub memory_mb: u32,
    /// The AWS template's parameter that sets this function's memory.
    pub memory_parameter: &'static str,
}

/// The ingest function: validates raw payloads and puts stream records.
pub const INGEST: LambdaFn = LambdaFn {
    name: "ingest",
    memory_mb: 128,
    memory_parameter: "IngestMemorySize",
};
/// The Firehose transform function: turns stream records into long Parquet rows.
pub const TRANSFORM: LambdaFn = LambdaFn {
    name: "transform",
    memory_mb: 512,
    memory_parameter: "TransformMemorySize",
};
/// The scheduled rollup function: aggregates new telemetry into window statistics.
pub const ROLLUP: LambdaFn = LambdaFn {
    name: "rollup",
    memory_mb: 1024,
    memory_parameter: "RollupMemorySize",
};
/// The rollup's queue-driven worker (the `rollup` binary with `IOTPIPE_JOB=rollup-worker`,
/// log group suffix `worker`): one unit per units-queue message.
pub const WORKER: LambdaFn = LambdaFn {
    name: "worker",
    memory_mb: 1024,
    memory_parameter: "RollupWorkerMemorySize",
};
/// The daily compact function: daily rollups and small-file compaction.
pub const COMPACT: LambdaFn = LambdaFn {
    name: "compact",
    memory_mb: 2048,
    memory_parameter: "CompactMemorySize",
};

/// The scheduled report function: re-renders the dashboard into the bucket every 5 minutes.
/// 1,024 MB: the dashboard of 10,000 devices peaked at 887 MB (BENCHMARKS.md).
pub const REPORT: LambdaFn = LambdaFn {
    name: "report",
    memory_mb: 1024,
    memory_parameter: "ReportMemorySize",
};

/// Every function of the pipeline, in data-flow order.
pub const FUNCTIONS: [LambdaFn; 6] = [INGEST, TRANSFORM, ROLLUP, WORKER, COMPACT, REPORT];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_pays_for_whole_units_and_at_least_one() {
        assert_eq!(units(0, FIREHOSE_INGEST_UNIT_BYTES), 1);
        assert_eq!(units(5 * 1024, FIREHOSE_INGEST_UNIT_BYTES), 1);
        assert_eq!(units(5 * 1024 + 1, FIREHOSE_INGEST_UNIT_BYTES), 2);
        assert_eq!(units(300, KINESIS_ON_DEMAND_UNIT_BYTES), 1);
        assert_eq!(units(2049, KINESIS_ON_DEMAND_UNIT_BYTES), 3);
    }
}

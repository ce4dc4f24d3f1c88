//! The pipeline's Lambda functions as deployed, with the memory each is configured with:
//! the one table the local metering bills GB-seconds on and the AWS template's
//! `…MemorySize` parameter defaults follow (`tests/tests/template_defaults.rs` fails when
//! `infra/template.yaml` or `infra/cost.py` drift from it).

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
/// The daily compact function: daily rollups and small-file compaction.
pub const COMPACT: LambdaFn = LambdaFn {
    name: "compact",
    memory_mb: 2048,
    memory_parameter: "CompactMemorySize",
};

/// Every function of the pipeline, in data-flow order.
pub const FUNCTIONS: [LambdaFn; 4] = [INGEST, TRANSFORM, ROLLUP, COMPACT];

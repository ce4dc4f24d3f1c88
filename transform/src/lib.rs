//! The Firehose data-transformation Lambda of iot-pipeline. (The local emulation of the
//! Firehose delivery stream that calls it is `local::firehose`.)
//!
//! Firehose (source: the Kinesis data stream, or DirectPut from ingest; in the `firehose`
//! topology the rule's raw payloads, see [`raw`]) buffers stream records and invokes this
//! function synchronously with a batch. Each record's data is a [`telemetry::StreamRecord`]
//! as compact JSON; the function answers every `recordId` exactly once, in input order,
//! with the record exploded into the long layout (one [`telemetry::Reading`] JSON document
//! per metric, newline-delimited) and the partition keys `dt` / `hour` of its event time.
//! Firehose's record-format conversion then turns the readings into Parquet under
//! `telemetry/dt=YYYY-MM-DD/hour=HH/`.
//!
//! # Layout
//! - [`handler`]: the pure transformation ([`transform`]) and the Lambda entry point
//!   ([`handle`]): parsing, checks, de-duplication within an invocation, the 6 MiB
//!   response budget.
//! - [`raw`]: the `firehose` topology's input (`IOTPIPE_INPUT=raw`): the topic rule's
//!   records of raw device payloads, validated with the `telemetry` code, rejects written to
//!   the quarantine and answered `Dropped`, the rest through [`transform`].
//! - `main.rs`: the Lambda binary: JSON logs, then `lambda_runtime::run(service_fn(handle))`.
//!
//! # Important notes
//! - One bad record never fails an invocation: it is answered `ProcessingFailed`, and
//!   Firehose writes it to the error prefix with its raw data.
//! - A record whose `(device_id, seq)` already appeared earlier in the same invocation is
//!   answered `Dropped`. This only saves bytes: Kinesis and Firehose deliver at least once
//!   across invocations, so the analytics de-duplicate on `(device_id, seq, metric)` anyway.
//! - The long layout is larger than its input: about 3x the record data for four
//!   metrics, up to ~30x (base64 included) for the contract's worst message (64
//!   one-letter metrics, a 128-character device id, repeated on every row). The processor
//!   buffer is therefore at most [`handler::MAX_PROCESSOR_BUFFER_BYTES`] (0.2 MiB), and a
//!   record over its share of the response fails alone (see
//!   [`handler::RESPONSE_TENTHS_PER_DATA_BYTE`]).

pub mod handler;
pub mod raw;

pub use handler::{
    FailureReason, MAX_RESPONSE_BYTES, RecordFailure, Summary, TransformResult, handle, transform,
    transform_documents, transform_with_summary,
};
pub use raw::{INPUT_VAR, Input, RawError, RawSummary, RawTransform, RuleRecord};

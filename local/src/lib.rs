//! The local runtime of iot-pipeline: every AWS service the pipeline uses, emulated in one
//! process around the *same handler code* the Lambdas run (`ingest`, `transform`,
//! `analytics`). The Lambda crates hold what runs on Lambda; everything that stands in for
//! AWS lives here.
//!
//! ```text
//! broker (rumqttd) ─▶ iot_rule ─invoke─▶ ingest handler ─put─▶ stream (Kinesis semantics)
//!     ─▶ firehose ─invoke─▶ transform handler ─▶ Parquet (telemetry/dt=/hour=/)
//! scheduler (EventBridge) ─invoke─▶ rollup planner ─▶ stats/ (a large plan: units queue
//!     ─▶ worker invocations ─▶ stats/)
//! every invocation ─▶ meter (REPORT Duration / Billed Duration / Memory Size / Max Memory Used)
//! ```
//!
//! # Layout
//! One emulated service per module, and [`stack`] only wires them:
//! - [`broker`]: the embedded MQTT broker (rumqttd) and broker URLs.
//! - [`iot_rule`]: the topic rule: subscribes to the telemetry topics and invokes ingest
//!   with the event IoT Core sends.
//! - [`stream`]: an in-process stream with Kinesis semantics (MD5 → shard, per-shard order,
//!   bounded channels as backpressure).
//! - [`event_source`]: the Lambda event-source mapping of the `kinesis` topology: batches
//!   of the stream's records to ingest, `ReportBatchItemFailures`, bisection, retries, the
//!   on-failure destination.
//! - [`kinesis_reader`]: a checkpointing reader of a real Kinesis stream, feeding the
//!   emulated Firehose when the stream is real (`--stream kinesis:NAME`).
//! - [`firehose`]: the delivery stream: processor buffering, the transform invocation and
//!   its contract check, record-format conversion to Parquet with dynamic partitions, the
//!   error prefix.
//! - [`scheduler`]: EventBridge Scheduler firing the rollup planner, which runs a small
//!   plan itself and fans a large one out.
//! - [`units_queue`]: the rollup's units queue (SQS) and the worker function's event-source
//!   mapping: batches of units, partial-batch failures, the dead-letter queue.
//! - [`meter`]: Lambda-style metering of every invocation, and the run's usage in AWS's
//!   metering units.
//! - [`topology`]: which path a run takes (`--topology firehose|kinesis|per-message`).
//! - [`stack`]: the wiring, start-up and orderly shutdown.
//! - [`s3_credentials`]: the SDK's credential chain (profiles too) for `--data s3://…`.
//! - [`faults`]: seeded AWS-side faults (`--inject`): throttling, partial failures, timeouts,
//!   transform errors.
//! - [`journal`]: the write-ahead journal that keeps what the local stream and Firehose's
//!   DirectPut input accepted across a killed `iotpipe up`.
//! - [`crash`]: `IOTPIPE_CRASH_AFTER_WRITES`, the kill-and-rerun tests' crash switch.

pub mod broker;
pub mod crash;
pub mod event_source;
pub mod faults;
pub mod firehose;
pub mod iot_rule;
pub mod journal;
pub mod kinesis_reader;
pub mod meter;
pub mod s3_credentials;
pub mod scheduler;
pub mod stack;
pub mod stream;
pub mod topology;
pub mod units_queue;

//! The data contract of iot-pipeline, shared by every crate.
//!
//! # Layout
//! - [`message`]: what a device publishes ([`Telemetry`]), the stream record
//!   ([`StreamRecord`]) and the long-layout row ([`Reading`]).
//! - [`metering`]: the Lambda functions and their configured memory ([`metering::FUNCTIONS`]).
//! - [`topic`]: the MQTT topic convention `dt/{fleet}/{device_id}/telemetry`.
//! - [`validate`]: validation against the contract, one typed [`Rejection`] per class.
//! - [`quarantine`]: how a rejected payload is kept, with its reason and raw bytes.
//! - [`rule_record`]: the topic rule's `{payload (base64), topic}` record (topologies
//!   firehose and kinesis).
//! - [`row`]: reads the transform's rows back without a general JSON parser (the emulated
//!   Firehose's conversion; anything else is left to `serde_json`).
//! - [`schema`]: the Arrow schema of the Parquet files (the source of the Glue table).
//! - [`stream`]: a record as a Kinesis stream holds it ([`stream::StreamEntry`]).
//! - [`layout`]: the object layout — every key prefix (`telemetry/`, `stats/`,
//!   `quarantine/`, `errors/processing-failed/`, `_checkpoint/`) defined once.
//! - [`metering`]: the units AWS bills per record or message (Kinesis, Firehose, IoT).
//! - [`partition`]: Hive partitions by event time (`dt=YYYY-MM-DD/hour=HH`).
//! - [`parquet_writer`]: a rolling, partitioned Parquet writer over `object_store`.
//! - [`store`]: opens the data location (a directory or `s3://bucket/prefix`) as an
//!   [`object_store::ObjectStore`] rooted there.
//!
//! This crate does no network I/O of its own; it writes to whatever
//! [`object_store::ObjectStore`] it is handed ([`store::open_store`] only builds one).

pub mod after_write;
pub mod layout;
pub mod logging;
pub mod message;
pub mod metering;
pub mod parquet_writer;
pub mod partition;
pub mod quarantine;
pub mod row;
pub mod rule_record;
pub mod schema;
pub mod store;
pub mod stream;
pub mod synced;
pub mod topic;
pub mod validate;

pub use message::{MessageRef, Reading, ReadingRef, StreamRecord, StreamRecordRef, Telemetry};
pub use partition::Partition;
pub use quarantine::QuarantineReason;
pub use rule_record::{RuleError, RuleRecord};
pub use validate::{
    Rejected, Rejection, Validated, ValidatedRef, ValidationConfig, validate_payload,
    validate_payload_borrowed,
};

/// Re-exported so that every crate uses the same `object_store` version.
pub use object_store;
/// Re-exported so that every crate uses the same `parquet` version.
pub use parquet;

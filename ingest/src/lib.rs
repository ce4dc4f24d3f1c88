//! The ingest function: validates raw IoT payloads, streams the accepted messages and
//! quarantines the rest with their reasons.
//!
//! # Layout
//! - [`event`]: the IoT topic-rule event ([`IotRuleEvent`]) and the invocation report.
//! - [`handler`]: the ingest core ([`Ingest`]) and the Lambda [`handle`] function. It works
//!   on a *batch* of raw payloads, so the same code serves the per-message IoT rule action
//!   and a batched Kinesis event-source mapping.
//! - [`sink`]: the [`RecordSink`] port, service limits, batching and per-entry retries.
//! - [`kinesis_event`]: the `kinesis` topology's handler: a Kinesis batch of rule records
//!   (`IOTPIPE_EVENT=kinesis`).
//! - [`kinesis`], [`firehose`]: the AWS sinks (`PutRecords`, `PutRecordBatch`), mapping
//!   each entry's result back to its record; [`aws`]: what they share (client settings,
//!   whole-call error classification).
//! - [`any_sink`]: the sink chosen by configuration; [`config`]: the deployed function's
//!   environment (`IOTPIPE_SINK`, `IOTPIPE_STREAM_NAME`, `IOTPIPE_BUCKET`,
//!   `IOTPIPE_QUARANTINE_PREFIX`, `IOTPIPE_PACK`).
//! - [`pack`]: record packing (several messages of one device per record).
//!
//! The local emulation of the stream and the Kinesis reader that feeds the emulated
//! Firehose live in the `local` crate: this crate holds only what runs on Lambda.
//!
//! # Guarantees
//! For every invocation `messages = accepted + quarantined`: a payload is either delivered
//! to the stream or written under the quarantine prefix (`quarantine/` by default) with its
//! reason and raw bytes. If the quarantine itself cannot be written the invocation fails,
//! so that Lambda retries it.

pub mod any_sink;
pub mod aws;
pub mod config;
pub mod event;
pub mod firehose;
pub mod handler;
pub mod kinesis;
pub mod kinesis_event;
pub mod pack;
pub mod sink;

pub use any_sink::AnySink;
pub use config::Config;
pub use event::{IngestReport, IotRuleEvent, RawPayload};
pub use firehose::FirehoseSink;
pub use handler::{Ingest, IngestConfig, IngestError, handle};
pub use kinesis::KinesisSink;
pub use kinesis_event::{EVENT_VAR, handle_kinesis};
pub use sink::{RecordSink, RetryPolicy, SinkRecord};

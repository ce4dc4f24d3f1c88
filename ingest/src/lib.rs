//! The ingest function: validates raw IoT payloads, streams the accepted messages and
//! quarantines the rest with their reasons.
//!
//! # Layout
//! - [`event`]: the IoT topic-rule event ([`IotRuleEvent`]) and the invocation report.
//! - [`handler`]: the ingest core ([`Ingest`]) and the Lambda [`handle`] function. It works
//!   on a *batch* of raw payloads, so the same code serves the per-message IoT rule action
//!   and a batched Kinesis event-source mapping.
//! - [`sink`]: the [`RecordSink`] port, service limits, batching and per-entry retries.
//! - [`local_stream`]: an in-process stream with Kinesis semantics for the local stack.
//!
//! # Guarantees
//! For every invocation `messages = accepted + quarantined`: a payload is either delivered
//! to the stream or written under `quarantine/` with its reason and raw bytes. If the
//! quarantine itself cannot be written the invocation fails, so that Lambda retries it.

pub mod event;
pub mod handler;
pub mod local_stream;
pub mod sink;

pub use event::{IngestReport, IotRuleEvent, RawPayload};
pub use handler::{Ingest, IngestConfig, IngestError, handle};
pub use sink::{RecordSink, RetryPolicy, SinkRecord};

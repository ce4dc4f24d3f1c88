//! Scheduled aggregation of telemetry into window statistics, and the library that
//! queries them.
//!
//! The `rollup` Lambda (EventBridge schedule, every few minutes) reads the telemetry
//! Parquet files, de-duplicates readings on (`device_id`, `seq`, `metric`) — Kinesis and
//! Firehose deliver at least once — and writes per-(device, metric, minute) statistics:
//! `count, min, max, sum, mean, stddev, p50, p95, p99, first_event, last_event`. It is
//! incremental: a checkpoint in the store records which telemetry objects are aggregated,
//! and a run only recomputes the windows that new objects touch. `iotpipe query` (and
//! anyone else) reads the results through [`query::query`]. Everything goes through an
//! [`object_store::ObjectStore`], so the same code runs against S3, the local data
//! directory and the in-memory store of the tests.
//!
//! # Layout
//! - [`rollup`]: the incremental run ([`run_rollup`], [`run_rollup_until`] with a
//!   deadline), its report and errors.
//! - [`stats`]: the aggregation itself: de-duplication, windows, the statistics
//!   ([`WindowStats`]) and their definitions.
//! - [`window`]: window lengths (`1m`, `1h`, `1d`) and their alignment.
//! - [`schema`]: the stats columns, defined once ([`schema::STATS_COLUMNS`]), and the
//!   Arrow schema of the stats files derived from them ([`schema::stats_schema`]).
//! - [`checkpoint`]: the checkpoint's format, loading and saving.
//! - [`io`]: listing telemetry objects, reading and writing Parquet in the store.
//! - [`ledger`]: the delivery ledger: per device and window, sent, received, duplicated,
//!   missing, late and rejected messages.
//! - [`query`](mod@query): filtering stats by device, metric and time; CSV and table output.
//! - [`render`]: the one table renderer (aligned text, CSV) of query, ledger and the CLI.
//! - [`handler`]: the Lambda handler over the scheduled EventBridge event.
//! - [`config`]: [`RollupConfig`] and the local store from `IOTPIPE_DATA`.
//! - `src/main.rs`: the `rollup` binary (Lambda runtime wiring only).
//!
//! # Storage layout
//! ```text
//! telemetry/dt=YYYY-MM-DD/hour=HH/*              input, one row per reading
//! stats/window=1m/dt=YYYY-MM-DD/hour=HH/stats.parquet   output, one file per hour
//! stats/_checkpoint/rollup.json                  which inputs are aggregated
//! ```
//! Stats files and the checkpoint are each replaced with a single put, so readers never
//! see a partial object, and the checkpoint is written last, so a crash costs
//! recomputation, never data.

mod columns;

pub mod checkpoint;
pub mod config;
pub mod handler;
pub mod io;
pub mod ledger;
pub mod query;
pub mod render;
pub mod rollup;
pub mod schema;
pub mod stats;
pub mod window;

pub use columns::ColumnError;
pub use config::RollupConfig;
pub use query::{Query, QueryError, query, to_csv, to_table};
pub use rollup::{RollupError, RollupReport, SkippedFile, run_rollup, run_rollup_until};
pub use stats::WindowStats;
pub use window::Window;

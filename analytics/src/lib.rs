//! Scheduled aggregation of telemetry into window statistics, and the library that
//! queries them.
//!
//! The `rollup` Lambda (EventBridge schedule, every few minutes) reads the telemetry
//! Parquet files, de-duplicates readings on (`device_id`, `seq`, event time, `metric`) —
//! Kinesis and Firehose deliver at least once, and a device that reboots restarts `seq` —
//! and writes per-(device, metric, minute) statistics:
//! `count, min, max, sum, mean, stddev, p50, p95, p99, first_event, last_event`. Work is
//! split into units (an hour's device-hash bucket) that a planner finds from new-object
//! markers and workers aggregate one at a time under a lease, so memory is bounded by the
//! unit and the cost of a run by the new data's hours. `iotpipe query` (and anyone else)
//! reads the results through [`query::query`]. Everything goes through an
//! [`object_store::ObjectStore`], so the same code runs against S3, the local data
//! directory and the in-memory store of the tests.
//!
//! # Layout
//! - [`rollup`]: a run ([`run_rollup`], [`run_rollup_until`] with a deadline): the
//!   planner, then the workers; its report and errors.
//! - [`planner`]: which units need work, from the [`pending`] markers.
//! - [`worker`]: one unit under its [`lease`], with its [`state`].
//! - [`units`]: the unit of work, the device-hash bucket and the unit's paths.
//! - [`stats`]: the aggregation itself: de-duplication, windows, the statistics
//!   ([`WindowStats`]) and their definitions.
//! - [`window`]: window lengths (`1m`, `1h`, `1d`) and their alignment.
//! - [`coarse`]: the 1h and 1d windows and the fleet view, merged from the 1m rows
//!   ([`derive_coarse`], called by a rollup for each hour whose units are all done).
//! - [`sketch`]: the mergeable quantile sketch (DDSketch, 1 % relative accuracy) behind
//!   the quantiles of merged windows.
//! - [`compact`]: rewriting a closed hour's small telemetry files into large sorted ones.
//! - [`schema`]: the stats columns, defined once ([`schema::STATS_COLUMNS`]), and the
//!   Arrow schema of the stats files derived from them ([`schema::stats_schema`]).
//! - [`io`]: listing telemetry objects, reading (whole or one bucket) and writing Parquet.
//! - [`ledger`]: the delivery ledger: per device and window, sent, received, duplicated,
//!   missing, late and rejected messages.
//! - [`query`](mod@query): filtering stats by device, metric and time; CSV and table output.
//! - [`render`]: the one table renderer (aligned text, CSV) of query, ledger and the CLI.
//! - [`requests`]: an object store that counts its requests by S3 request class (benchmarks).
//! - [`handler`]: the Lambda handler over the scheduled EventBridge event.
//! - [`dispatch`]: the AWS functions' events (planner, worker) to the code above.
//! - [`fanout`]: on AWS, the planner's units queue (SQS) and the worker invocation.
//! - [`notify`]: on AWS, S3 `ObjectCreated` notifications (from a queue) → pending markers.
//! - [`config`]: [`RollupConfig`] and the local store from `IOTPIPE_DATA`.
//! - `src/main.rs`: the `rollup` binary (Lambda runtime wiring only).
//!
//! # Storage layout
//! ```text
//! telemetry/dt=YYYY-MM-DD/hour=HH/*                               input, one row per reading
//! telemetry/dt=…/hour=…/_compaction.json                          what compaction replaced
//! stats/window=1m/dt=YYYY-MM-DD/hour=HH/part-BBBB-of-NNNN.parquet   output, one file per unit
//! stats/window=1h/dt=YYYY-MM-DD/hour=HH/part-BBBB-of-NNNN.parquet   derived ([`coarse`])
//! stats/window=1d/dt=YYYY-MM-DD/part-BBBB-of-NNNN.parquet           derived ([`coarse`])
//! stats/fleet/window=1m|1h|1d/…                                   fleet-wide (device `*`)
//! stats/_state/window=1m/dt=…/hour=…/part-BBBB-of-NNNN.json         what each unit aggregated
//! stats/_state/_lease/…                                            one writer per unit
//! stats/_pending/telemetry/dt=…/hour=…/NAME                         new objects to roll up
//! ```
//! Stats files and states are each replaced with a single put, so readers never see a
//! partial object, and a unit's state is written after its stats file, so a crash costs
//! recomputation, never data.

pub mod coarse;
pub mod columns;
pub mod compact;
pub mod config;
pub mod dispatch;
pub mod fanout;
pub mod handler;
pub mod io;
pub mod lease;
pub mod ledger;
pub mod notify;
pub mod pending;
pub mod planner;
pub mod query;
pub mod render;
pub mod requests;
pub mod rollup;
pub mod schema;
pub mod sketch;
mod spread;
pub mod state;
pub mod stats;
pub mod units;
pub mod window;
pub mod worker;

pub use coarse::{CoarseReport, derive_coarse};
pub use columns::ColumnError;
pub use config::RollupConfig;
pub use query::{Group, Query, QueryError, query, to_csv, to_table};
pub use rollup::{RollupError, RollupReport, SkippedFile, run_rollup, run_rollup_until};
pub use stats::WindowStats;
pub use window::Window;

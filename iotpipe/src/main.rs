//! `iotpipe`: the whole IoT telemetry pipeline on one machine, in one process.
//!
//! # Layout
//! - `main.rs`: the command line (`up`, `replay`, `requeue`, `rollup`, `query`, `compact`,
//!   `ledger`, `cost`, `dashboard`, `schema`).
//! - [`requeue`]: `iotpipe requeue`, quarantined payloads back through ingest.
//! - [`args`]: the argument types several subcommands share (`--data`, `--format`, times).
//! - [`dashboard`]: `iotpipe dashboard` (the static site, or served live) and the run
//!   records it reads.
//! - [`ledger`]: `iotpipe ledger` and the ledger totals of `up`'s summary.
//! - The local stack — broker, IoT rule, stream, Firehose, scheduler, metering — is the
//!   `local` crate, around the same handler code the Lambdas run.
//! - [`cost`]: what a run would have cost on AWS.
//! - [`fleet_cost`]: `iotpipe cost`, the monthly bill of a fleet per topology.
//! - [`prices`]: the one price table (`infra/prices.toml`) both bills read.
//! - [`summary`]: the end-of-run summary, for people and as JSON.

mod args;
mod cost;
mod dashboard;
mod fleet_cost;
mod ledger;
mod prices;
mod requeue;
mod summary;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use device_sim::BrokerUrl;
use device_sim::progress::BarWriter;
use indicatif::{ProgressBar, ProgressStyle};
use ingest::IotRuleEvent;
use tokio::sync::watch;

use local::broker;
use local::stack::{self, RuleMessage, Stack, StackConfig, StreamTarget, local_firehose};
use local::topology::Topology;
use local::{iot_rule, meter, scheduler};

use crate::args::{DataArg, Format, parse_time};

/// The iot-pipeline on your machine: an MQTT broker, simulated devices, the ingest,
/// transform and rollup functions, and emulated IoT rule, Kinesis, Firehose, S3 and
/// scheduler — all in one process, running the same handler code as on AWS.
#[derive(Debug, Parser)]
#[command(
    name = "iotpipe",
    version,
    propagate_version = true,
    after_help = "\
Examples:
  iotpipe up                                   # 10 devices, 1 msg/s each, for 30 s
  iotpipe up --devices 50 --rate 5 --duration 10s --data ./data
  iotpipe up --devices 0                       # your own devices publish; Ctrl-C ends
  iotpipe up --devices 0 --tls-cert server.pem --tls-key server.key --tls-client-ca ca.pem
  iotpipe query --window 1m --format table     # what the rollup computed
  iotpipe query --window 1h --group-by fleet   # hourly, all devices of each metric
  iotpipe compact --data ./data                # merge closed hours' small files
  device-sim --devices 5 --dump raw.jsonl --duration 60s && iotpipe replay raw.jsonl

Data lands under --data (default ./data): telemetry/ (Parquet by dt=/hour=), stats/,
quarantine/ (rejected payloads with their reasons) and errors/."
)]
struct Cli {
    /// Log more (-v: debug, including one Lambda REPORT line per invocation; -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline: broker, simulated fleet, ingest, stream, Firehose + transform,
    /// Parquet, scheduled rollups; then print a summary, what the run would have cost on AWS
    /// and a month of its fleet (`iotpipe cost`'s model).
    Up(UpArgs),
    /// Feed payloads from a file (one JSON payload per line) through the same pipeline,
    /// without MQTT; the summary prices the run, and a month of the file's fleet at the pace
    /// of its event times.
    Replay(ReplayArgs),
    /// Feed failed payloads (quarantine, dead letters, Firehose's error output) back through
    /// the pipeline with their original receive time (after a contract bug, a sink outage or
    /// a transform fault is fixed); a second requeue changes no stats.
    Requeue(requeue::RequeueArgs),
    /// Run the scheduled aggregation now (incremental: only new data is processed).
    Rollup(RollupArgs),
    /// Read the aggregates: per device (or fleet-wide), metric and window (1m, 1h, 1d).
    Query(QueryArgs),
    /// Rewrite each closed hour's small telemetry files into large ones, sorted by
    /// (device_id, metric, event_time) — what the compact function does daily on AWS.
    Compact(CompactArgs),
    /// The delivery ledger: per device and window, messages sent, received, duplicated,
    /// missing, late and rejected (`--help` explains each column).
    Ledger(ledger::LedgerArgs),
    /// The dashboard: a static site (HTML + SVG) of the fleet, the devices, latency, the
    /// pipeline's health and the bill, written to a directory or served on 127.0.0.1.
    Dashboard(dashboard::DashboardArgs),
    /// Print a table's columns, generated from the Arrow schemas: as the AWS template's
    /// Glue table lists them (`--glue`), or as JSON (`--json`).
    Schema(SchemaArgs),
    /// The monthly AWS bill of a fleet, line by line per topology, its idle bill, and the
    /// cheapest topology that meets your needs (`--help` explains the topologies).
    Cost(CostArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Topologies (DESIGN.md; infra/template.yaml's Topology parameter; `up`/`replay --topology`
run each of them locally):
  firehose     the default: devices publish to Basic Ingest ($aws/rules/<rule>/dt/...,
               no messaging charge), the rule's Firehose action carries the raw payload,
               the transform Lambda validates and quarantines; no ingest Lambda, no Kinesis.
  kinesis      rule -> Kinesis (raw) -> ingest in batches (event-source mapping) -> Firehose;
               choose it for replay, per-device order or several consumers (--need-stream).
  per-message  one ingest invocation per MQTT message -> Kinesis -> Firehose: the baseline.

Prices come from infra/prices.toml (each with its source page and the date read); the
usage assumptions (ms per invocation, bytes per row) sit in the same file.
infra/deploy.sh --dry-run prints the same figures for the same fleet.

Examples:
  iotpipe cost --devices 1000 --rate 0.2 --topology all
  iotpipe cost --devices 1000 --rate 0.2 --batch 10 --format json
  iotpipe cost --devices 200 --rate 1 --compare always-on")]
struct CostArgs {
    /// Devices, each connected all month.
    #[arg(long, default_value_t = 1000)]
    devices: u64,
    /// Messages per second per device (a batch of K messages counts K).
    #[arg(long, default_value_t = 0.2)]
    rate: f64,
    /// Bytes of one message (one JSON object; the reference message is 200 B).
    #[arg(long, default_value_t = 200)]
    payload_bytes: u64,
    /// Messages per publish: devices send a JSON array of this many (device-side batching;
    /// a publish must stay within the 128 KiB IoT Core limit).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Readings per message (rows per message in Parquet).
    #[arg(long, default_value_t = 3)]
    metrics: u64,
    /// Which topology to price: one of them, or `all` side by side (default: firehose, the
    /// default topology).
    #[arg(long, default_value = "firehose", value_parser = ["firehose", "kinesis", "per-message", "all"])]
    topology: String,
    /// You need a Kinesis stream (replay, per-device order, several consumers): the
    /// recommendation only considers topologies that keep one.
    #[arg(long)]
    need_stream: bool,
    /// Lambda architecture (the template's Architecture).
    #[arg(long, value_enum, default_value_t = fleet_cost::Arch::Arm64)]
    arch: fleet_cost::Arch,
    /// Also print the message rate at which an always-on instance (prices in
    /// infra/prices.toml) becomes cheaper than each priced topology.
    #[arg(long, value_parser = ["always-on"])]
    compare: Option<String>,
    /// Target seconds (p99) from a reading's arrival to the 1-minute stats; sets Firehose's
    /// buffer interval (the template's FirehoseBufferIntervalSeconds, 60-900 s), hence the
    /// objects written and the rollups they trigger. The default (the template's) is 120;
    /// the shortest the design allows is 120 (Firehose's 60 s minimum buffer with dynamic
    /// partitioning).
    #[arg(long)]
    freshness: Option<f64>,
    /// Output: `table` for people, `json` for scripts (an array, one object per topology:
    /// topology, monthly_usd, idle_usd, lines [{component, usage, usd}], break_even_rate).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

/// `iotpipe rollup`: the planner and its workers, in this process.
#[derive(Debug, clap::Args)]
struct RollupArgs {
    #[command(flatten)]
    data: DataArg,
    /// Units (one device-hash bucket of one hour) aggregated at once, each on a core of
    /// its own [default: the number of cores, at most 8]. Each holds about 300 bytes per
    /// reading of its current pass (at most `--pass-readings`) at its peak, so memory grows
    /// with this; time shrinks with it up to the number of cores. The rollup Lambda runs one (`--workers 1` predicts its
    /// REPORT line's Max Memory Used).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    /// Device-hash buckets per hour: more buckets, less memory per unit. Keep it the same
    /// from run to run: a change rewrites every hour that has new data.
    #[arg(long, default_value_t = analytics::config::DEFAULT_BUCKETS, env = analytics::config::BUCKETS_ENV, value_parser = clap::value_parser!(u32).range(1..=i64::from(analytics::config::MAX_BUCKETS)))]
    buckets: u32,
    /// Most readings one pass of a unit aggregates: a unit whose bucket holds more is
    /// aggregated in several passes over shares of its devices (same result, more reading).
    /// Bounds each unit's memory at about 300 bytes per reading, whatever the fleet size.
    #[arg(long, default_value_t = analytics::config::DEFAULT_PASS_READINGS, env = analytics::config::PASS_READINGS_ENV, value_parser = clap::value_parser!(u64).range(1..))]
    pass_readings: u64,
    /// List every telemetry object instead of only the new-object markers: finds objects
    /// whose marker was lost (a crash between writing an object and its marker).
    #[arg(long)]
    full_scan: bool,
    /// How long a unit's lease lasts: the unit of a killed rollup is taken again after
    /// this. Longer than the slowest unit (e.g. 30s, 15m).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    data: DataArg,
    /// Number of simulated devices, each its own MQTT client. 0: no simulator — the
    /// pipeline waits for your own devices and tools (mosquitto_pub, paho, …) until Ctrl-C.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Messages per second per simulated device.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// How long to run: with simulated devices, how long they publish (default 30s); with
    /// --devices 0, until Ctrl-C unless given. Ctrl-C always stops earlier, flushes
    /// everything and prints the summary.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Use this broker (mqtt://host:port) instead of starting the embedded one. The rule
    /// keeps a persistent session there, named after --data: what devices publish while the
    /// pipeline is down (stopped or killed) is ingested by the next run on the same --data.
    #[arg(long)]
    broker: Option<BrokerUrl>,
    /// Port of the embedded broker's plain MQTT listener on 127.0.0.1 (0 picks a free one);
    /// it takes MQTT 3.1.1 and MQTT 5 clients, as the TLS one does.
    #[arg(long, default_value_t = 0)]
    broker_port: u16,
    /// How much the embedded broker keeps of what the rule has not read yet, in MiB: the
    /// backlog a burst can build before the broker drops the oldest messages (and the run
    /// fails on them). The default holds ~1.4 M messages of the simulated fleet (~28 s of
    /// backlog at 50,000 msg/s); once filled it stays resident (~1.7× its size in memory).
    #[arg(long, value_name = "MIB", default_value_t = broker::DEFAULT_LOG_MIB,
          value_parser = clap::value_parser!(u32).range(1..=65_536), conflicts_with = "broker")]
    broker_log_mib: u32,
    /// Also listen for MQTT over TLS: the broker's certificate chain (PEM). Needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients presenting a certificate signed by this CA (PEM), as
    /// AWS IoT Core does. Without it, TLS clients need no certificate.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Port of the TLS listener on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0, requires = "tls_cert")]
    tls_port: u16,
    /// MQTT QoS of the devices' publishes (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Seed of the simulated readings (same seed, same readings).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fleet name: the second segment of the topic dt/{fleet}/{device}/telemetry.
    #[arg(long, default_value = "fleet")]
    fleet: String,
    #[command(flatten)]
    tuning: Tuning,
    /// Print the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    summary_json: bool,
    /// Serve the dashboard of --data on 127.0.0.1 while the run lasts (its URL is printed
    /// at the start; pages re-render every 5 s). `iotpipe dashboard` renders it afterwards.
    #[arg(long)]
    dashboard: bool,
    /// Port of --dashboard (0 picks a free one).
    #[arg(long, default_value_t = 8080, requires = "dashboard")]
    dashboard_port: u16,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Tuning {
    /// Where ingest puts the records it accepts:
    ///   local          the in-process stream with Kinesis semantics (no AWS account);
    ///   kinesis:NAME   a Kinesis data stream (PutRecords); this run reads it back
    ///                  (checkpointed under _checkpoint/kinesis/ in --data; a second run
    ///                  resumes after the checkpoints) into the emulated Firehose;
    ///   firehose:NAME  a Firehose delivery stream (PutRecordBatch); it does the rest on
    ///                  AWS, so this run writes no Parquet (see the summary's note).
    /// AWS streams use the standard AWS configuration: AWS_REGION, credentials
    /// (AWS_ACCESS_KEY_ID/…, AWS_PROFILE) and AWS_ENDPOINT_URL for a compatible server.
    #[arg(
        long,
        default_value = "local",
        value_name = "STREAM",
        verbatim_doc_comment
    )]
    stream: StreamTarget,
    /// The path from the IoT rule to Firehose, as the template's Topology parameter:
    ///   firehose     devices publish to Basic Ingest (no messaging charge), the rule puts
    ///                each raw payload into Firehose, the transform validates it and
    ///                quarantines the rejects; no ingest, no stream (the template's default);
    ///   kinesis      devices publish to Basic Ingest, the rule puts each raw payload into
    ///                the stream, an event-source mapping invokes ingest with batches of
    ///                500 (or what 5 s gathered), ingest puts into Firehose (DirectPut);
    ///   per-message  devices publish to the plain topic (a message charge), the rule
    ///                invokes ingest per message, ingest puts stream records, Firehose
    ///                reads the stream (the baseline).
    /// The rule takes both dt/FLEET/DEVICE/telemetry and its Basic Ingest topic
    /// $aws/rules/iotpipe_telemetry/dt/FLEET/DEVICE/telemetry in every topology, as on AWS.
    /// Default: firehose with --stream local, per-message with an AWS --stream (ingest puts
    /// into it).
    #[arg(long, value_name = "TOPOLOGY", verbatim_doc_comment)]
    topology: Option<Topology>,
    /// Pack several messages of one device (and event hour) into each stream record, as
    /// newline-delimited JSON: `--pack` fills records up to the stream's metering unit
    /// (25 KB Kinesis, 5 KB Firehose), `--pack=BYTES` up to BYTES (at most the 1 MiB record
    /// limit). Packing works within one ingest invocation, so it pays for device-side
    /// batches (JSON array payloads). The transform splits packed records.
    #[arg(long, value_name = "BYTES", num_args = 0..=1, require_equals = true,
          default_missing_value = "on",
          default_value = "off", env = "IOTPIPE_PACK")]
    pack: ingest::pack::Pack,
    /// Shards of the emulated Kinesis stream (--stream local only).
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// How often the emulated Firehose closes Parquet files (AWS: 60–900 s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    flush_every: Duration,
    /// How often the emulated scheduler runs the rollup (a final one always runs).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    rollup_every: Duration,
    /// Seeded AWS-side faults in the emulated services, to see the retry paths work:
    /// KEY=PROBABILITY pairs, e.g. throttle=0.05,partial=0.01,timeout=0.001,processor-error=0.01
    /// (throttle: a stream put call fails whole; partial: one entry fails; timeout: a call
    /// stores, then times out, so the retry duplicates; processor-error: a transform
    /// invocation fails) and seed=N. Put faults hit ingest's puts (retried: per-message into
    /// the local stream, kinesis into Firehose) and the IoT rule's action (firehose: its put
    /// into Firehose, kinesis: into the stream), which the rules engine does not retry: those
    /// messages go to the rule's error action (errors/iot/), the run fails, and `iotpipe
    /// requeue` brings them home. Transform errors apply wherever Firehose is emulated; the
    /// summary counts every fault.
    #[arg(long, value_name = "SPEC", value_parser = parse_faults)]
    inject: Option<local::faults::FaultPlan>,
}

fn parse_faults(s: &str) -> Result<local::faults::FaultPlan, String> {
    s.parse()
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// File with one JSON payload per line (a payload may be a JSON array: a device-side
    /// batch). Blank lines are skipped. `-` reads standard input, e.g. `zcat
    /// archive.jsonl.gz | iotpipe replay -`, or `device-sim --dump - | iotpipe replay -`.
    file: PathBuf,
    #[command(flatten)]
    data: DataArg,
    /// Fleet name used in the topic each payload is attributed to.
    #[arg(long, default_value = "replay")]
    fleet: String,
    #[command(flatten)]
    tuning: Tuning,
    /// Print the summary as one JSON object on the last line of stdout (input, accepted,
    /// quarantined, rows, …).
    #[arg(long)]
    summary_json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exact and approximate columns:
  count, min, max, first_event, last_event are exact at every window and grouping; sum,
  mean and stddev are exact up to floating-point rounding (stddev merges exactly from each
  row's sum of squared deviations). They add up across resolutions: the 1h counts are the sums of their 1m counts,
  the 1d counts the sums of their 1h counts, and the fleet's the sums over devices.
  p50, p95, p99 of per-device 1m windows are exact (interpolated like DuckDB's
  quantile_cont). For 1h, 1d and every fleet row they come from a mergeable sketch
  (DDSketch) with a relative accuracy of 1%: when the values around the quantile have one
  sign (a temperature in kelvin, a battery voltage), the answer is within 1% of the exact
  quantile, e.g. an exact p99 of 40.0 is reported between 39.6 and 40.4. Across zero the
  error is at most 1% of the larger neighbouring value; |values| below 1e-9 count as 0.

Examples:
  iotpipe query --window 1m --device sensor-000001 --metric temperature
  iotpipe query --window 1h --group-by fleet --format csv
  iotpipe query --window 1d --from 2026-11-25T00:00:00Z --format json")]
struct QueryArgs {
    #[command(flatten)]
    data: DataArg,
    /// Only this device.
    #[arg(long)]
    device: Option<String>,
    /// Only this metric.
    #[arg(long)]
    metric: Option<String>,
    /// Window length: 1m, 1h or 1d. 1h and 1d are merged from the 1m rows by every rollup.
    #[arg(long, default_value = "1m")]
    window: String,
    /// device: one row per device, metric and window. fleet: one row per metric and
    /// window over every device (device_id `*`).
    #[arg(long, default_value = "device", value_parser = ["device", "fleet"])]
    group_by: String,
    /// Windows starting at or after this time (RFC 3339, e.g. 2026-11-25T16:00:00Z, or
    /// epoch milliseconds).
    #[arg(long, value_parser = parse_time)]
    from: Option<i64>,
    /// Windows starting before this time (RFC 3339 or epoch milliseconds).
    #[arg(long, value_parser = parse_time)]
    to: Option<i64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
An hour is compacted when it ended at least --closed-after ago and holds two or more files
below the target size. The new files are written first, then _compaction.json (which files
replaced which), then the old files are deleted: every reading stays readable throughout,
and exact repeats of a reading are dropped. The rollup's record of each hour's files is
moved to the new files (under each unit's lease), so the next rollup finds nothing new; a
unit busy at that moment re-reads the hour once and finds the same statistics.

Example:
  iotpipe compact --data ./data --target-mib 128 --closed-after 2h")]
struct CompactArgs {
    #[command(flatten)]
    data: DataArg,
    /// Size at which a compacted file is closed and the next one started, MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    target_mib: u64,
    /// How long after its end an hour counts as closed (late data may still arrive
    /// before; e.g. 2h, 30m, 0s for everything).
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    closed_after: Duration,
    /// Decoded rows held in memory at once, MiB: a larger hour is compacted in several
    /// passes (by device hash), each writing its own sorted files.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    memory_mib: u64,
    /// How far back from now hours are considered (e.g. 8d; older hours are not listed).
    #[arg(long, default_value = "8d", value_parser = humantime::parse_duration)]
    lookback: Duration,
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct SchemaArgs {
    /// Print Glue columns (name and type, one per line) for this table.
    #[arg(long, value_name = "TABLE", value_parser = SCHEMA_TABLES)]
    glue: Option<String>,
    /// Print this table's columns as a JSON array of {name, type (Glue), nullable, doc,
    /// internal} (what the reference checks under tests/py read; `internal` marks merge
    /// state that query output leaves out).
    #[arg(long, value_name = "TABLE", value_parser = SCHEMA_TABLES)]
    json: Option<String>,
}

/// The tables `iotpipe schema` knows.
const SCHEMA_TABLES: [&str; 7] = [
    "telemetry",
    "stats_1m",
    "stats_1h",
    "stats_1d",
    "stats_fleet_1m",
    "stats_fleet_1h",
    "stats_fleet_1d",
];

fn init_tracing(verbose: u8) {
    let default = match verbose {
        // rumqttd logs every client disconnect as an error: silence it unless tracing.
        0 => "warn,iotpipe=info,local=info,rumqttd=off",
        1 => "info,iotpipe=debug,local=debug,lambda_report=debug,rumqttd=off",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_writer().clone())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Where log lines go: stderr, around the progress bar or status line of the moment
/// ([`show_progress`]), so that a line logged while it is drawn does not tear it.
fn log_writer() -> &'static BarWriter {
    static WRITER: std::sync::OnceLock<BarWriter> = std::sync::OnceLock::new();
    WRITER.get_or_init(BarWriter::default)
}

/// Draws `pb` from now on, with log lines written around it.
fn show_progress(pb: ProgressBar) -> ProgressBar {
    log_writer().show(&pb);
    pb
}

fn main() -> std::process::ExitCode {
    tune_malloc();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Fixes glibc's mmap threshold at 128 KiB (its starting value), unless the user set
/// `MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES`: blocks of that size and more are always
/// mapped on their own and returned when freed.
///
/// By default glibc raises the threshold to the size of each large block freed (up to 32
/// MiB), and later blocks of that size then come from the arenas, where they stay resident
/// once freed. In this process, which runs every stage at once on many threads, that kept
/// the final rollup's column chunks and the stages' buffers in arenas the next stage did
/// not use: a 5 M-message replay peaked 20–30 MB higher than a 1 M one. Fixed, the two
/// peak within a few MB of each other, in the same time (BENCHMARKS.md, session 12).
/// Sessions 8–11 capped the arenas at one per core instead (`M_ARENA_MAX`); with the
/// threshold fixed the cap no longer lowers the peak and costs 15 % of a replay's time
/// (two arenas shared by every thread), so it is gone.
///
/// The trim threshold stays glibc's 128 KiB (fixing the mmap threshold stops glibc from
/// raising it): 8 MiB raised a 5 M-message replay's peak by 3–8 MB, against the goal of a
/// peak flat in the input size, and since the rollup reads its slices as runs it no longer
/// saves a 1 M replay measurable time (it took 15–20 % off before; BENCHMARKS.md, session
/// 14). A user's `MALLOC_TRIM_THRESHOLD_` is left alone.
///
/// The Lambda binaries are separate processes with glibc's defaults, but for the transform
/// function's trim threshold, which the template sets (ARCHITECTURE.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc() {
    if ["MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"]
        .iter()
        .any(|var| std::env::var_os(var).is_some())
    {
        return;
    }
    // SAFETY: `mallopt` only sets an allocator parameter (a failure returns 0 and leaves
    // glibc's default); it runs before the runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// The size from which glibc maps a block on its own ([`tune_malloc`]): its default
/// starting threshold, 128 KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Other allocators keep their defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Up(a) => up(a).await,
        Command::Replay(a) => replay(a).await,
        Command::Requeue(a) => requeue::run(a).await,
        Command::Rollup(a) => rollup(a).await,
        Command::Query(a) => query(a).await,
        Command::Compact(a) => compact(a).await,
        Command::Ledger(a) => ledger::run(a).await,
        Command::Dashboard(a) => dashboard::run(a).await,
        Command::Schema(a) => schema(a),
        Command::Cost(a) => cost_cmd(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", telemetry::logging::error_chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

pub(crate) fn stack_config(data: &DataArg, t: &Tuning) -> StackConfig {
    StackConfig {
        data: data.data.clone(),
        shards: t.shards,
        shard_capacity: 10_000,
        firehose: local_firehose(t.flush_every),
        rollup_every: Some(t.rollup_every),
        ingest: ingest::IngestConfig {
            pack: t.pack,
            ..Default::default()
        },
        stream: t.stream.clone(),
        faults: t.inject,
        journal: None,
        topology: t.topology.unwrap_or(if t.stream == StreamTarget::Local {
            Topology::Firehose
        } else {
            Topology::PerMessage
        }),
    }
}

fn spinner() -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    show_progress(pb)
}

/// Default `--duration` of a run with simulated devices.
const DEFAULT_FLEET_DURATION: Duration = Duration::from_secs(30);

async fn up(a: UpArgs) -> anyhow::Result<()> {
    if a.devices > 0 && a.rate <= 0.0 {
        bail!("--rate must be positive (or pass --devices 0 to run without simulated devices)");
    }
    if a.broker.is_some() && a.tls_cert.is_some() {
        bail!(
            "--tls-cert configures the embedded broker's TLS listener; with --broker, \
             configure TLS on that broker instead"
        );
    }
    let (broker, rule_link, listeners) = match &a.broker {
        Some(url) if url.scheme != device_sim::Scheme::Mqtt => bail!(
            "--broker {url}: the emulated IoT rule connects over plain MQTT only; \
             pass an mqtt://HOST:PORT broker (or none, for the embedded one)"
        ),
        Some(url) => (url.clone(), None, None),
        None => {
            let embedded = broker::start_embedded(a.broker_port, a.broker_log_mib)?;
            (
                embedded.url,
                Some(embedded.rule_link),
                Some(embedded.listeners),
            )
        }
    };
    let tls_broker = match (&a.tls_cert, &a.tls_key, &listeners) {
        (Some(cert), Some(key), Some(listeners)) => Some(broker::start_tls_listener(
            listeners,
            &broker::TlsListenerConfig {
                port: a.tls_port,
                cert: cert.clone(),
                key: key.clone(),
                client_ca: a.tls_client_ca.clone(),
            },
        )?),
        _ => None,
    };
    // The ledger counts what this run received (seqs restart with every run).
    let run_started_ms = chrono::Utc::now().timestamp_millis();
    let mut cfg = stack_config(&a.data, &a.tuning);
    // What the broker acknowledged must survive a killed run: the in-memory services keep a
    // journal in a local data directory (an s3:// location has no local place for one).
    let journal = match (a.data.data.contains("://"), &cfg.stream) {
        (false, StreamTarget::Local) => {
            let dir = std::path::Path::new(&a.data.data).join(local::journal::JOURNAL_DIR);
            let shown = dir.display().to_string();
            cfg.journal = Some(dir);
            shown
        }
        (true, StreamTarget::Local) => "none: what the in-memory stream and Firehose hold is \
             lost if the run is killed (a local --data directory keeps a journal)"
            .to_owned(),
        _ => "none needed: the stream is on AWS".to_owned(),
    };
    let stack = Arc::new(Stack::start(cfg).await?);
    // Basic Ingest topics (`$aws/rules/<rule>/dt/...`) reach the rule as they are through a
    // broker that routes `$` topics (mosquitto); the embedded rumqttd routes none, so its
    // port turns them into the plain topic (local::broker) and the rule counts every message
    // as the Basic Ingest publish it stands for, in the topologies that use it.
    let basic_ingest = match (a.broker.is_some(), stack.topology().basic_ingest()) {
        (true, _) => iot_rule::BasicIngest::Routed,
        (false, true) => iot_rule::BasicIngest::StandIn,
        (false, false) => iot_rule::BasicIngest::Off,
    };
    // An external broker outlives the run: the rule's session there is persistent, so what
    // the devices publish while the pipeline is down (stopped, killed) waits for the next run
    // on the same --data. The embedded broker lives and dies with the run, and the rule takes
    // its messages through the broker's in-process link (local::iot_rule).
    let feed = match rule_link {
        None => iot_rule::RuleFeed::Broker {
            url: broker.clone(),
            session: iot_rule::RuleSession::for_data(&a.data.data),
        },
        Some(link) => iot_rule::RuleFeed::Embedded(link),
    };
    let rule = iot_rule::IotRule::start(feed, stack.clone(), basic_ingest).await?;
    // Announced once the rule's subscription is acknowledged: a device (or a test) that
    // publishes as soon as it reads the broker's address would otherwise race the rule's
    // subscription, and the broker drops a message nobody subscribes to.
    let kind = if a.broker.is_some() {
        ""
    } else {
        " (embedded rumqttd, MQTT 3.1.1 and 5)"
    };
    eprintln!("broker: {broker}{kind}");
    if let Some(tls) = &tls_broker {
        let auth = if a.tls_client_ca.is_some() {
            "mutual TLS: clients present a certificate signed by --tls-client-ca"
        } else {
            "TLS, no client certificate needed"
        };
        eprintln!("broker: {tls} ({auth})");
    }
    eprintln!("data:   {}", a.data.data);
    eprintln!("stream: {}", a.tuning.stream);
    eprintln!("journal: {journal}");
    if a.dashboard {
        dashboard::serve_during_run(&a.data.data, a.dashboard_port).await?;
    }
    if a.devices == 0 {
        eprintln!(
            "no simulated devices: publish JSON payloads to dt/{{fleet}}/{{device_id}}/telemetry \
             (or to it behind AWS's Basic Ingest prefix $aws/rules/{}/), e.g.\n  \
             mosquitto_pub -h {} -p {} -q 1 -t dt/{}/sensor-1/telemetry \\\n    \
             -m '{{\"device_id\":\"sensor-1\",\"seq\":1,\"ts\":'$(date +%s%3N)',\"metrics\":{{\"temperature\":21.5}}}}'\n\
             Ctrl-C stops, flushes everything to Parquet, runs a final rollup and prints the summary.",
            telemetry::topic::DEFAULT_RULE_NAME,
            broker.host,
            broker.port,
            a.fleet
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\nCtrl-C: stopping, then flushing everything… (Ctrl-C again: quit at once, unflushed)"
            );
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("second Ctrl-C: quitting without flushing");
                std::process::exit(130);
            }
        }
    });
    let pb = spinner();
    let progress = {
        let (pb, stack, received) = (pb.clone(), stack.clone(), rule.received.clone());
        let dropped = rule.dropped.clone();
        let backlog = rule.backlog.clone();
        let log_mib = a.broker_log_mib;
        tokio::spawn(async move {
            let mut last = (tokio::time::Instant::now(), 0u64);
            let mut told = false;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let i = stack.ingested();
                let r = received.load(std::sync::atomic::Ordering::Relaxed);
                let now = tokio::time::Instant::now();
                let rate = (r - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, r);
                let rollups = stack
                    .counters
                    .scheduler_invocations
                    .load(std::sync::atomic::Ordering::Relaxed);
                let d = dropped.load(std::sync::atomic::Ordering::Relaxed);
                if d > 0 && !told {
                    told = true;
                    // The log writer hides the status line itself (`show_progress`).
                    tracing::error!(
                        "the embedded broker is dropping messages the rule has not read (the \
                         devices publish faster than the pipeline takes them), and the run \
                         will fail: {}",
                        broker_log_advice(log_mib)
                    );
                }
                let dropped = if d > 0 {
                    format!(" · DROPPED by the broker {d}")
                } else {
                    String::new()
                };
                // What the rule has not read yet, against the log that holds it: the broker
                // drops the oldest once the log is full.
                let waiting = match backlog.as_ref().map(|b| (b.waiting(), b.waiting_bytes())) {
                    Some((n, bytes)) if n > 0 => format!(
                        " · {n} waiting in the broker (~{:.0} of its {log_mib} MiB log)",
                        bytes as f64 / (1024.0 * 1024.0)
                    ),
                    _ => String::new(),
                };
                // Publishes the rule never sees: a device on the wrong topic.
                let other = match backlog.as_ref().map(iot_rule::Backlog::other_topics) {
                    Some(n) if n > 0 => format!(" · {n} on topics the rule does not take"),
                    _ => String::new(),
                };
                pb.set_message(format!(
                    "received {r} ({rate:.0}/s) · accepted {} · quarantined {} · rollups {rollups}{waiting}{other}{dropped}",
                    i.accepted, i.quarantined
                ));
            }
        })
    };
    let sim = if a.devices == 0 {
        wait_for_stop(stop_rx, a.duration).await;
        None
    } else {
        let sim_cfg = device_sim::SimConfig {
            // In this process: rumqttd's own listener, with no forwarding hop in the way.
            broker: listeners
                .as_ref()
                .map_or_else(|| broker.clone(), broker::Listeners::direct),
            fleet: a.fleet.clone(),
            devices: a.devices,
            rate: a.rate,
            duration: a.duration.unwrap_or(DEFAULT_FLEET_DURATION),
            qos: if a.qos == 0 {
                device_sim::QoS::AtMostOnce
            } else {
                device_sim::QoS::AtLeastOnce
            },
            seed: a.seed,
            // The topology's devices publish where the template's do: Basic Ingest (the
            // rule's own topic, no messaging charge) except in the per-message baseline.
            basic_ingest: (basic_ingest == iot_rule::BasicIngest::Routed
                && stack.topology().basic_ingest())
            .then(|| telemetry::topic::DEFAULT_RULE_NAME.to_owned()),
            ..device_sim::SimConfig::default()
        };
        Some(
            device_sim::run(sim_cfg, stop_rx)
                .await
                .context("the device simulator failed")?,
        )
    };

    // Let the rule catch up with what the broker acknowledged, then stop it.
    let mut pace = None;
    // What the embedded broker still held for the rule when it stopped receiving.
    let mut unread = None;
    let mut received_at_stop = 0;
    match &sim {
        Some(sim) => {
            // As long as the rule makes progress: under overload the broker still holds
            // what it acknowledged, and stopping at a fixed deadline would drop it (a clean
            // session forgets it). Only a rule that stalls for RULE_STALL_TIMEOUT stops short.
            let devices_stopped = tokio::time::Instant::now();
            let mut watch = StallWatch::new(&rule.received);
            let behind = sim.sent.saturating_sub(watch.last);
            let rule_rate_while_sending = rule.window.rate(watch.last);
            // What the embedded broker dropped unread will never come: waiting for it would
            // only stall for RULE_STALL_TIMEOUT (the run fails on it below).
            let dropped = || rule.dropped.load(std::sync::atomic::Ordering::Relaxed);
            while watch.last + dropped() < sim.sent && !watch.stalled() {
                watch.tick().await;
            }
            let last = watch.last;
            pace = Some(summary::Pace {
                send_rate: sim.send_rate,
                rule_rate: rule.window.rate(last),
                rule_rate_while_sending,
                behind_at_stop: behind,
                caught_up_s: (last >= sim.sent).then(|| devices_stopped.elapsed().as_secs_f64()),
            });
            if last + dropped() < sim.acknowledged {
                tracing::error!(
                    received = last,
                    acknowledged = sim.acknowledged,
                    "the rule stopped receiving before every message the broker acknowledged \
                     arrived: the ledger counts the rest as missing"
                );
            } else {
                // `received` also counts what a persistent session delivered twice (after a
                // broker restart): reaching the count does not prove every message came, so
                // take what the broker still forwards until it goes quiet.
                wait_quiet(&rule.received).await;
            }
        }
        // Real devices: take everything the embedded broker holds (however much, as long as
        // the rule makes progress); from an external broker, what it still forwards until it
        // goes quiet (what it holds beyond that waits in the rule's session for the next run).
        None => {
            received_at_stop = rule.received.load(std::sync::atomic::Ordering::Relaxed);
            match &rule.backlog {
                Some(backlog) => {
                    let left = drain_backlog(backlog, &rule.received).await;
                    if left > 0 {
                        unread = Some(left);
                    }
                }
                None => wait_quiet(&rule.received).await,
            }
        }
    }
    let received = rule.received.load(std::sync::atomic::Ordering::Relaxed);
    // Only the embedded broker's drops can be seen (local::iot_rule::BrokerDrops).
    let broker_dropped = a
        .broker
        .is_none()
        .then(|| rule.dropped.load(std::sync::atomic::Ordering::Relaxed));
    let backlog = rule.backlog.clone();
    let devices_seen = rule.stop().await?;
    let rule_stopped_ms = chrono::Utc::now().timestamp_millis();
    pb.set_message("flushing the stream, Firehose and a final rollup…");
    progress.abort();
    let _ = progress.await;
    let stack = Arc::try_unwrap(stack).map_err(|_| {
        anyhow::anyhow!("internal: the stack is still in use after the rule stopped")
    })?;
    let meter = stack.meter.clone();
    let devices = match &sim {
        Some(_) => a.devices as u64,
        None => devices_seen,
    };
    let mut report = stack.finish(devices).await?;
    // IoT Core meters what devices outside the process published by its topic, which the
    // rule cannot tell from the simulated devices' (local::iot_rule::BasicIngest).
    let port = listeners.as_ref().map(broker::Listeners::port_counts);
    if let Some(p) = port {
        report.usage.iot_message_units =
            basic_ingest.messaging_units(report.usage.iot_message_units, p);
    }
    // What the embedded broker took, counted up to the rule's stop at least (usually long
    // since reported: the flush takes longer than a meter period).
    let broker_appended = match &backlog {
        Some(b) => Some(appended_before(b, rule_stopped_ms).await),
        None => None,
    };
    // Read after that report: the router counts every topic in the same report.
    let other_topics = backlog.as_ref().map(iot_rule::Backlog::other_topics);
    pb.finish_and_clear();
    let behind_at_stop = pace.as_ref().map_or(0, |p| p.behind_at_stop);
    let source = match &sim {
        Some(sim) => summary::Source::Mqtt {
            broker: broker.to_string(),
            sent: sim.sent,
            acknowledged: sim.acknowledged,
            received,
            broker_dropped,
            pace,
        },
        None => summary::Source::Devices {
            broker: broker.to_string(),
            tls_broker: tls_broker.as_ref().map(ToString::to_string),
            received,
            broker_dropped,
            received_after_stop: received.saturating_sub(received_at_stop),
            broker_appended,
            other_topics,
            port,
        },
    };
    // The month is priced at the devices' pace: the simulated fleet's from its first to its
    // last publish (the run also starts, drains and rolls up), real devices' over the run
    // until its stop.
    let publishing_s = match &sim {
        Some(sim) if sim.send_rate > 0.0 => sim.sent as f64 / sim.send_rate,
        _ => (rule_stopped_ms - run_started_ms) as f64 / 1000.0,
    };
    let mut s = summary::Summary::new(
        source,
        &report,
        meter.report(),
        &a.data.data,
        summary::MonthOver::Publishing(publishing_s),
    )?;
    // With a real Firehose delivery stream nothing is written under --data by this run, so a
    // ledger would call every message missing: leave it out (the summary explains the stream).
    // Without the simulator nobody knows what the devices sent: `iotpipe ledger` still
    // reports duplicates and gaps in the seqs received.
    let mut sent = None;
    if let Some(sim) = &sim
        && !matches!(a.tuning.stream, StreamTarget::Firehose(_))
    {
        s.ledger = ledger::run_totals(&a.data.data, run_started_ms, sim)
            .await
            .inspect_err(
                |e| tracing::warn!(error = %e, "the delivery ledger could not be computed"),
            )
            .ok();
        sent = Some(::dashboard::RunSent {
            since_ms: run_started_ms,
            sent: ledger::sent_of(sim),
        });
    }
    dashboard::record_run(&a.data.data, &s, sent).await;
    s.print(a.summary_json)?;
    s.rule_errors_fail()?;
    // Messages the broker acknowledged to the devices but never delivered to the rule are
    // lost outside the pipeline, and no later step can bring them back: the run fails, so
    // that a script or a CI job sees it (the summary above still has every figure).
    // The ledger decides when there is one: `received` also counts what a persistent
    // session delivered twice (after a broker restart), which would hide a loss.
    if let Some(sim) = &sim {
        let missing = match &s.ledger {
            Some(l) => l.missing,
            None => sim.acknowledged.saturating_sub(received),
        };
        if missing > 0 {
            let why = if a.broker.is_some() {
                "A broker restarted without persistence drops what it held for the rule \
                 (mosquitto: `persistence true`, and `user root` if it runs as root, or it \
                 cannot save), and a broker whose queue for a slow subscriber is full drops \
                 the excess (mosquitto: max_queued_messages, 1000 by default): lower --rate \
                 or --devices, or raise the broker's queue limit"
                    .to_owned()
            } else if broker_dropped == Some(0)
                && sim.sent > sim.acknowledged
                && received >= sim.acknowledged
            {
                // Nothing the broker took was lost: the missing ones are among what the
                // devices sent and the broker never acknowledged.
                format!(
                    "The embedded broker dropped none, and the rule received at least what it \
                     acknowledged; but it had acknowledged only {} of the {} messages the \
                     devices sent when they stopped: the machine was too busy to take them all \
                     in time, and the simulated devices do not resend after they stop. Lower \
                     --rate or --devices, or run on a less busy machine",
                    sim.acknowledged, sim.sent
                )
            } else {
                format!(
                    "The embedded broker dropped {} of them unread, and the rule was \
                     {behind_at_stop} messages behind the devices when they stopped (the pace \
                     line): {}",
                    broker_dropped.unwrap_or(0),
                    broker_log_advice(a.broker_log_mib)
                )
            };
            anyhow::bail!(
                "{missing} of the {} messages the devices sent never reached the rule (the \
                 ledger counts them missing). {why}",
                sim.sent
            );
        }
    }
    if let Some(left) = unread {
        anyhow::bail!(
            "the rule stopped receiving for {} s with {left} of your devices' messages still \
             in the embedded broker: they never reached the pipeline. The summary above has \
             what it did take; the log (-v) says where ingest stalled",
            RULE_STALL_TIMEOUT.as_secs()
        );
    }
    // Real devices: nobody else knows what they sent, but the embedded broker's drops are
    // counted, and they are as lost as a missing seq.
    if sim.is_none()
        && let Some(dropped) = broker_dropped.filter(|&d| d > 0)
    {
        anyhow::bail!(
            "the embedded broker dropped {dropped} of the messages your devices published \
             before the rule read them (it received {received}): {}",
            broker_log_advice(a.broker_log_mib)
        );
    }
    Ok(())
}

/// What every report of the embedded broker's drops says about its log and what to change.
fn broker_log_advice(log_mib: u32) -> String {
    format!(
        "the embedded broker keeps {log_mib} MiB of what the rule has not read and drops the \
         oldest beyond that. Publish more slowly (--rate, --devices), or raise \
         --broker-log-mib (memory: ~1.7× the log)"
    )
}

/// Waits for Ctrl-C, or for `duration` when given.
async fn wait_for_stop(mut stop: watch::Receiver<bool>, duration: Option<Duration>) {
    let until = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        () = until => {}
    }
}

/// How long the rule may receive nothing, after the simulated devices stopped and before
/// it has every message they sent, until `up` stops waiting for the rest.
const RULE_STALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Waits until the rule has taken everything the embedded broker appended for it before now
/// (read it, or counted it dropped), however large that backlog, as long as the rule
/// receives something every [`RULE_STALL_TIMEOUT`]; what devices publish from now on does
/// not keep the run going. Returns what still waited when the rule stalled (0: drained).
async fn drain_backlog(
    backlog: &iot_rule::Backlog,
    received: &std::sync::atomic::AtomicU64,
) -> u64 {
    let now_ms = || chrono::Utc::now().timestamp_millis();
    let since = now_ms();
    let mut watch = StallWatch::new(received);
    // The log's count including everything appended before `since`, once a report says.
    let mut target = None;
    loop {
        target = target.or_else(|| backlog.appended_before(since, now_ms()));
        let read = backlog.read_to();
        if target.is_some_and(|t| read >= t) {
            return 0;
        }
        if watch.stalled() {
            return target
                .unwrap_or_else(|| backlog.appended())
                .saturating_sub(read);
        }
        watch.tick().await;
    }
}

/// Whether the rule still makes progress while `up` waits for it: stalled once it received
/// nothing for [`RULE_STALL_TIMEOUT`].
struct StallWatch<'a> {
    received: &'a std::sync::atomic::AtomicU64,
    /// The rule's count at the latest progress.
    last: u64,
    since: tokio::time::Instant,
}

impl<'a> StallWatch<'a> {
    fn new(received: &'a std::sync::atomic::AtomicU64) -> Self {
        Self {
            received,
            last: received.load(std::sync::atomic::Ordering::Relaxed),
            since: tokio::time::Instant::now(),
        }
    }

    /// Waits a poll interval (50 ms) and notes any progress.
    async fn tick(&mut self) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = self.received.load(std::sync::atomic::Ordering::Relaxed);
        if now > self.last {
            self.last = now;
            self.since = tokio::time::Instant::now();
        }
    }

    fn stalled(&self) -> bool {
        self.since.elapsed() >= RULE_STALL_TIMEOUT
    }
}

/// The embedded broker's count of what it appended to the rule's log, once it includes
/// everything appended before `since_ms` (at most a meter period and some slack later).
async fn appended_before(backlog: &iot_rule::Backlog, since_ms: i64) -> u64 {
    loop {
        if let Some(n) = backlog.appended_before(since_ms, chrono::Utc::now().timestamp_millis()) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no message arrived for 300 ms (at most 5 s): what devices published just
/// before the stop is still taken in.
async fn wait_quiet(received: &std::sync::atomic::AtomicU64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut last = received.load(std::sync::atomic::Ordering::Relaxed);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = received.load(std::sync::atomic::Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

async fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    let stdin = a.file.as_os_str() == "-";
    let source = if stdin {
        "standard input".to_owned()
    } else {
        a.file.display().to_string()
    };
    // The input's size, when it has one (not a pipe): the progress bar's length.
    let (input, total_bytes): (Box<dyn std::io::Read + Send>, Option<u64>) = if stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let file = std::fs::File::open(&a.file).with_context(|| {
            format!("cannot open {source}: give a file with one JSON payload per line (or - for standard input)")
        })?;
        let len = file
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len());
        (Box::new(file), len)
    };
    let stack = Arc::new(Stack::start(stack_config(&a.data, &a.tuning)).await?);
    let pb = show_progress(match total_bytes {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::no_length().with_style(
            ProgressStyle::with_template("{spinner} {bytes} read, {bytes_per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    });
    // Concurrent ingest invocations, as Lambda runs them: one lane per core, each device
    // always in the same lane, so a device's messages reach the stream in file order.
    // Batches of lines cross to a lane, so that a lane is not woken per message.
    let lanes = std::thread::available_parallelism()
        .map_or(2, std::num::NonZero::get)
        .clamp(1, MAX_REPLAY_LANES);
    let mut senders = Vec::with_capacity(lanes);
    let mut workers = Vec::with_capacity(lanes);
    // Replayed payloads come from the topology's devices: Basic Ingest topics except in
    // the per-message baseline (IoT Core meters no message for them).
    let basic_ingest = stack.topology().basic_ingest();
    for _ in 0..lanes {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<RuleMessage>>(8);
        let stack = stack.clone();
        workers.push(tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                stack.on_messages(batch).await;
            }
        }));
        senders.push(tx);
    }
    let mut pending: Vec<Vec<RuleMessage>> = (0..lanes).map(|_| Vec::new()).collect();
    let mut lines = 0u64;
    // The devices seen (their number goes into the bill's connectivity), and the first and
    // last event time (the month of the file's fleet is priced at its own pace).
    let mut devices = local::meter::DeviceCount::default();
    let mut event_times: Option<(i64, i64)> = None;
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        // What was read so far goes to the lanes before a read that may block (a pipe that
        // is written slowly): no line waits for later ones.
        if reader.buffer().is_empty() {
            for (lane, batch) in pending.iter_mut().enumerate() {
                if !batch.is_empty() {
                    senders[lane]
                        .send(std::mem::take(batch))
                        .await
                        .map_err(|_| anyhow::anyhow!("internal: an ingest lane stopped early"))?;
                }
            }
        }
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {source}"))?;
        if n == 0 {
            break;
        }
        pb.inc(n as u64);
        let payload = line.strip_suffix(b"\n").unwrap_or(&line);
        let payload = payload.strip_suffix(b"\r").unwrap_or(payload);
        if payload.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines += 1;
        let head = head_of(payload);
        if let Some((first, last)) = head.ts {
            event_times =
                Some(event_times.map_or((first, last), |(a, b)| (a.min(first), b.max(last))));
        }
        let device = head.device.unwrap_or(std::borrow::Cow::Borrowed("unknown"));
        let topic = telemetry::topic::telemetry_topic(&a.fleet, &device);
        let lane = lane_of(&device, lanes);
        devices.add(&device);
        let event = IotRuleEvent {
            payload: telemetry::RuleRecord::encode_payload(payload),
            topic,
            received_at: chrono::Utc::now().timestamp_millis(),
            device_from_topic: None,
        };
        pending[lane].push(RuleMessage {
            event,
            payload_len: payload.len(),
            basic_ingest,
        });
        if pending[lane].len() >= REPLAY_LANE_BATCH {
            // The next batch is allocated whole, not grown push by push.
            let batch =
                std::mem::replace(&mut pending[lane], Vec::with_capacity(REPLAY_LANE_BATCH));
            senders[lane]
                .send(batch)
                .await
                .map_err(|_| anyhow::anyhow!("internal: an ingest lane stopped early"))?;
        }
        if lines.is_multiple_of(1000) {
            let i = stack.ingested();
            pb.set_message(format!(
                "accepted {} · quarantined {}",
                i.accepted, i.quarantined
            ));
        }
    }
    for (lane, batch) in pending.into_iter().enumerate() {
        if !batch.is_empty() {
            senders[lane]
                .send(batch)
                .await
                .map_err(|_| anyhow::anyhow!("internal: an ingest lane stopped early"))?;
        }
    }
    drop(senders);
    for w in workers {
        w.await.context("an ingest lane panicked")?;
    }
    pb.finish_and_clear();
    let stack = Arc::try_unwrap(stack)
        .map_err(|_| anyhow::anyhow!("internal: the stack is still in use after the lanes"))?;
    let meter = stack.meter.clone();
    let report = stack.finish(devices.len()).await?;
    let s = summary::Summary::new(
        summary::Source::Replay {
            file: source,
            lines,
        },
        &report,
        meter.report(),
        &a.data.data,
        summary::MonthOver::EventTimes(event_times),
    )?;
    dashboard::record_run(&a.data.data, &s, None).await;
    s.print(a.summary_json)?;
    s.rule_errors_fail()
}

/// At most this many concurrent ingest lanes in `replay`.
const MAX_REPLAY_LANES: usize = 8;
/// Messages handed to a replay lane at once.
const REPLAY_LANE_BATCH: usize = 64;

/// The replay lane of a device (FNV-1a of its id): stable within a run.
fn lane_of(device: &str, lanes: usize) -> usize {
    let h = device.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % lanes as u64) as usize
}

/// What the replay reads of a payload before ingest does: the device it claims to come from
/// (its topic is derived from it) and its event times.
#[derive(Debug, Default, PartialEq)]
struct PayloadHead<'a> {
    /// The device id (of a batch's first message); `None` when there is none, or one that
    /// would break the topic shape.
    device: Option<std::borrow::Cow<'a, str>>,
    /// The earliest and latest integer `ts` (epoch ms) of the payload's messages.
    ts: Option<(i64, i64)>,
}

/// Reads a payload's device id and event times, borrowed; every other field is skipped
/// unparsed (a full `serde_json::Value` of each line cost more than the ingest handler). A
/// `ts` that is not an integer is ignored here (validation rejects it).
fn head_of(payload: &[u8]) -> PayloadHead<'_> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Ts {
        Millis(i64),
        Other(serde::de::IgnoredAny),
    }
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow, default)]
        device_id: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        ts: Option<Ts>,
    }
    let Some(first) = payload.iter().find(|b| !b.is_ascii_whitespace()) else {
        return PayloadHead::default();
    };
    fn take<'a>(out: &mut PayloadHead<'a>, first: bool, h: Head<'a>) {
        if let Some(Ts::Millis(ts)) = h.ts {
            out.ts = Some(out.ts.map_or((ts, ts), |(a, b)| (a.min(ts), b.max(ts))));
        }
        if first {
            // A device id that would break the topic shape is attributed to "unknown":
            // validation then rejects the payload with the mismatch as its reason.
            out.device = h
                .device_id
                .filter(|id| !id.is_empty() && !id.contains(['/', '+', '#']));
        }
    }
    let mut out = PayloadHead::default();
    // One message (the common case) without a list.
    if *first == b'[' {
        if let Ok(heads) = serde_json::from_slice::<Vec<Head>>(payload) {
            for (i, h) in heads.into_iter().enumerate() {
                take(&mut out, i == 0, h);
            }
        }
    } else if let Ok(h) = serde_json::from_slice::<Head>(payload) {
        take(&mut out, true, h);
    }
    out
}

async fn rollup(a: RollupArgs) -> anyhow::Result<()> {
    let store = stack::open_existing_store(&a.data.data)?;
    let meter = meter::Meter::new();
    let cfg = analytics::RollupConfig {
        workers: a.workers.map_or_else(
            || {
                std::thread::available_parallelism()
                    .map_or(1, std::num::NonZeroUsize::get)
                    .min(8)
            },
            usize::from,
        ),
        buckets: a.buckets,
        pass_readings: a.pass_readings,
        full_scan: a.full_scan,
        lease_ttl: a.lease_ttl,
        read_concurrency: scheduler::read_concurrency_for(&a.data.data),
        ..analytics::RollupConfig::default()
    };
    let report = scheduler::LocalRollup::in_process(cfg)
        .run(&store, &meter, &stack::Counters::default())
        .await?;
    for f in meter.report() {
        eprintln!(
            "REPORT Function: {} Duration: {:.2} ms Billed Duration: {} ms Memory Size: {} MB Max Memory Used: {} MB",
            f.function,
            f.total_duration_ms,
            f.billed_duration_ms,
            f.memory_size_mb,
            f.max_memory_used_mb
        );
    }
    summary::print_line(&serde_json::to_string(&report)?);
    Ok(())
}

async fn query(a: QueryArgs) -> anyhow::Result<()> {
    let store = stack::open_existing_store(&a.data.data)?;
    let window: analytics::Window = a.window.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let group: analytics::Group = a.group_by.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let q = analytics::query::Query {
        device: a.device,
        metric: a.metric,
        window,
        group,
        from_ms: a.from,
        to_ms: a.to,
    };
    let rows = analytics::query::query(store, &q).await?;
    let out = match a.format {
        Format::Json => serde_json::to_string_pretty(&rows)?,
        Format::Csv => analytics::query::to_csv(&rows),
        Format::Table => {
            if rows.is_empty() {
                eprintln!(
                    "no aggregates match: run `iotpipe up` or `iotpipe replay`, then `iotpipe rollup`"
                );
            }
            analytics::query::to_table(&rows)
        }
    };
    summary::print_line(out.trim_end());
    Ok(())
}

fn cost_cmd(a: CostArgs) -> anyhow::Result<()> {
    use fleet_cost::{Fleet, Topology};
    let prices = prices::embedded().map_err(anyhow::Error::msg)?;
    let fleet = Fleet {
        devices: a.devices,
        rate: a.rate,
        payload_bytes: a.payload_bytes,
        batch: a.batch,
        metrics: a.metrics,
        arch: a.arch,
        freshness_s: a.freshness.unwrap_or(prices.assumptions.freshness_s),
    };
    fleet.check().map_err(anyhow::Error::msg)?;
    fleet_cost::buffer_interval(&prices.assumptions, fleet.freshness_s)
        .map_err(anyhow::Error::msg)?;
    let alarms = fleet_cost::template_alarms();
    let all: Vec<fleet_cost::Bill> = Topology::ALL
        .iter()
        .map(|t| {
            let mut b = fleet_cost::bill(prices, alarms, &fleet, *t);
            if a.compare.is_some() {
                b.break_even_rate = fleet_cost::break_even_rate(prices, alarms, &fleet, *t);
            }
            b
        })
        .collect();
    let shown: Vec<fleet_cost::Bill> = all
        .iter()
        .filter(|b| a.topology == "all" || b.topology.name() == a.topology)
        .cloned()
        .collect();
    if a.format == "json" {
        summary::print_line(&serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    let mut out = fleet_cost::render(&shown, &fleet, prices);
    if let Some(best) = fleet_cost::cheapest(&all, a.need_stream) {
        let naive = all
            .iter()
            .find(|b| b.topology == Topology::PerMessage)
            .map_or(0.0, |b| b.monthly_usd);
        out.push_str(&format!(
            "\nCheapest{}: {} at {}/month ({:.1}x less than per-message at {}).\n",
            if a.need_stream {
                " with a Kinesis stream (--need-stream)"
            } else {
                ""
            },
            best.topology.name(),
            fleet_cost::money(best.monthly_usd),
            if best.monthly_usd > 0.0 {
                naive / best.monthly_usd
            } else {
                0.0
            },
            fleet_cost::money(naive),
        ));
    }
    if a.compare.is_some() {
        let instance = fleet_cost::always_on_usd(prices, alarms, &fleet);
        out.push_str(&format!(
            "Always-on alternative ({} + {} GB disk + the same S3 storage): {}/month at this rate; \
             one instance sustains about {} msg/s. The break-even rates are above, per topology; \
             a topology without one stays cheaper than the instance up to that capacity.\n",
            prices
                .prices
                .always_on_instance
                .per
                .trim_start_matches("hour, "),
            prices.assumptions.always_on_disk_gb,
            fleet_cost::money(instance),
            prices.assumptions.always_on_max_msg_per_s,
        ));
    }
    summary::print_line(out.trim_end());
    Ok(())
}

async fn compact(a: CompactArgs) -> anyhow::Result<()> {
    let store = stack::open_existing_store(&a.data.data)?;
    let mib = |m: u64| usize::try_from(m.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    let cfg = analytics::compact::CompactConfig {
        target_file_bytes: mib(a.target_mib),
        closed_after: a.closed_after,
        memory_budget_bytes: mib(a.memory_mib),
        lookback: a.lookback,
        ..analytics::compact::CompactConfig::default()
    };
    let now = chrono::Utc::now().timestamp_millis();
    let report = analytics::compact::compact(&store, &cfg, now, None).await?;
    eprintln!(
        "compacted {} hour(s): {} files ({} bytes) -> {} files ({} bytes); {} hour(s) open or already compact",
        report.hours_compacted,
        report.files_before,
        report.bytes_before,
        report.files_after,
        report.bytes_after,
        report.hours_skipped
    );
    summary::print_line(&serde_json::to_string(&report)?);
    Ok(())
}

fn schema(a: SchemaArgs) -> anyhow::Result<()> {
    let table = a.glue.as_deref().or(a.json.as_deref()).unwrap_or_default();
    // stats_1m, stats_1h and stats_1d share the stats columns; they differ in location
    // and partitioning (infra/template.yaml).
    let (schema, docs): (_, &[_]) = match table {
        "telemetry" => (telemetry::schema::telemetry_schema(), &[]),
        _ => (
            analytics::schema::stats_schema(),
            &analytics::schema::STATS_COLUMNS,
        ),
    };
    if a.json.is_none() {
        for (name, ty) in telemetry::schema::glue_columns(&schema) {
            summary::print_line(&format!("{name} {ty}"));
        }
        return Ok(());
    }
    let columns: Vec<serde_json::Value> = telemetry::schema::glue_columns(&schema)
        .into_iter()
        .zip(schema.fields().iter())
        .map(|((name, ty), field)| {
            let column = docs.iter().find(|c| c.name == name);
            serde_json::json!({
                "name": name,
                "type": ty,
                "nullable": field.is_nullable(),
                "doc": column.map(|c| c.doc),
                "internal": column.is_some_and(|c| c.internal),
            })
        })
        .collect();
    summary::print_line(&serde_json::to_string(&columns)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::head_of;

    #[test]
    fn head_of_reads_only_the_device_id_and_event_times_of_an_object_or_a_batch() {
        let device = |p: &[u8]| head_of(p).device.map(|d| d.into_owned());
        let one =
            br#"{"seq":1,"metrics":{"t":{"a":[1,2]}},"device_id":"sensor-1","ts":7,"fw":"x"}"#;
        assert_eq!(device(one).as_deref(), Some("sensor-1"));
        assert_eq!(head_of(one).ts, Some((7, 7)));
        let batch =
            br#" [{"device_id":"d-2","seq":1,"ts":9},{"device_id":"d-3","ts":4},{"ts":"x"}]"#;
        assert_eq!(device(batch).as_deref(), Some("d-2"));
        assert_eq!(
            head_of(batch).ts,
            Some((4, 9)),
            "every message's ts, integers only"
        );
        let escaped = br#"{"device_id":"d\u002d4","ts":1.5}"#;
        assert_eq!(device(escaped).as_deref(), Some("d-4"));
        assert_eq!(
            head_of(escaped).ts,
            None,
            "a ts that is no integer is left to validation"
        );
        // A ts of any other shape does not cost the device its id.
        for ts in [r#""2026-01-01""#, "null", "[1]", r#"{"a":1}"#, "-5"] {
            let p = format!(r#"{{"device_id":"d-5","ts":{ts}}}"#);
            assert_eq!(device(p.as_bytes()).as_deref(), Some("d-5"), "{p}");
        }
        for bad in [
            &br#"{"device_id":"a/b"}"#[..],
            br#"{"seq":1}"#,
            br#"[1,1,1]"#,
            br#"[]"#,
            b"not json",
            br#"{"device_id":7}"#,
        ] {
            assert_eq!(device(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}

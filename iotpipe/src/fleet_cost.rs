//! `iotpipe cost`: the monthly AWS bill of a fleet, per topology, from the one price table
//! (`infra/prices.toml`, see [`crate::prices`]).
//!
//! The model is mirrored line for line by `infra/cost.py` (behind `infra/deploy.sh
//! --dry-run`); `iotpipe/tests/cost_cli.rs` checks that both print the same figures.
//!
//! What AWS meters, and how this model counts it:
//! - IoT Core: connectivity per connection-minute; messaging per 5 KB unit of each
//!   *publish* (a device-side batch of K messages is one publish), none for Basic Ingest
//!   topics; rules triggered and actions executed per 5 KB unit as well.
//! - Lambda: requests, and GB-seconds of each invocation's duration rounded *up to 1 ms*
//!   (at the memory sizes of `telemetry::metering`): ingest per publish (per-message) or
//!   per event-source batch (kinesis: `min(BatchSize, what the batching window gathers per
//!   shard)`), the transform per processor batch, the rollup per new object and every
//!   5 minutes, the report (dashboard) every 5 minutes, the compact daily.
//! - Kinesis on-demand: stream-hours, data in per record rounded up to 1 KB, data out per GB.
//! - Firehose: ingestion and Parquet conversion per record rounded up to 5 KB; dynamic
//!   partitioning per GB processed and per 1,000 objects delivered.
//! - S3 requests and the storage added in the month, CloudWatch logs and alarms, Scheduler,
//!   SQS (the new-object queue) and KMS for the stream's encryption.
//!
//! Freshness (`--freshness`, default `freshness_s` of the price table's assumptions): the
//! p99 delay from a reading's arrival to the 1m stats is 1.5 × Firehose's S3 buffer interval
//! (dynamic partitioning delivers up to 1.5× late) + the processor's buffer + a fixed
//! overhead (S3 event → EventBridge → SQS → the rollup planner). Solved for the buffer
//! interval ([`buffer_interval`]), it sets the objects Firehose writes (one per interval
//! per live hour partition), and each object triggers a rollup run whose units re-read their
//! hour so far: a shorter freshness buys more S3 PUTs, more rollup invocations and GETs, and
//! more small files for compaction.

use analytics::render::{Column, Table};
use clap::ValueEnum;
use serde::Serialize;
use telemetry::metering::{
    self, FIREHOSE_INGEST_UNIT_BYTES, IOT_MESSAGE_UNIT_BYTES, KINESIS_ON_DEMAND_UNIT_BYTES,
    LambdaFn,
};

use crate::prices::{Assumptions, Prices};

/// The AWS IoT Core message size limit: a device-side batch must fit in it.
pub const IOT_MAX_PAYLOAD_BYTES: u64 = 128 * 1024;

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The template built into this binary: its alarms are billed every month.
const TEMPLATE_YAML: &str = include_str!("../../infra/template.yaml");

/// The alarms the AWS template creates (each `Type: AWS::CloudWatch::Alarm` resource).
pub fn template_alarms() -> u32 {
    alarms_in(TEMPLATE_YAML)
}

/// The `AWS::CloudWatch::Alarm` resources of a template's text.
pub fn alarms_in(template: &str) -> u32 {
    template
        .lines()
        .filter(|l| l.trim() == "Type: AWS::CloudWatch::Alarm")
        .count() as u32
}

/// How the pipeline is deployed on AWS (DESIGN.md; the template's `Topology` parameter,
/// `infra/template.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// The default: devices publish to Basic Ingest, the rule's Firehose action carries the
    /// raw payload, the transform validates and quarantines. No ingest Lambda, no Kinesis.
    Firehose,
    /// Rule → Kinesis (raw) → ingest in batches through an event-source mapping → Firehose.
    /// For replay, per-device order or several consumers.
    Kinesis,
    /// The naive baseline: one ingest invocation per MQTT message → Kinesis → Firehose.
    PerMessage,
}

impl Topology {
    /// Every topology, the default first.
    pub const ALL: [Topology; 3] = [Topology::Firehose, Topology::Kinesis, Topology::PerMessage];

    /// The name used by the flag, the template and the bills.
    pub fn name(self) -> &'static str {
        match self {
            Topology::Firehose => "firehose",
            Topology::Kinesis => "kinesis",
            Topology::PerMessage => "per-message",
        }
    }

    /// Whether the topology keeps a Kinesis stream (replay, per-device order, several
    /// consumers).
    pub fn has_stream(self) -> bool {
        !matches!(self, Topology::Firehose)
    }
}

/// The Lambda architecture (the template's `Architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Arch {
    /// Graviton, the template's default: 20 % cheaper per GB-second.
    #[value(name = "arm64")]
    Arm64,
    /// x86_64.
    #[value(name = "x86_64")]
    X86_64,
}

impl Arch {
    /// The name used by the flag, the template and the price table.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::X86_64 => "x86_64",
        }
    }
}

/// The fleet to price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fleet {
    /// Devices, each connected all month.
    pub devices: u64,
    /// Messages per second per device.
    pub rate: f64,
    /// Bytes of one message (one JSON object).
    pub payload_bytes: u64,
    /// Messages per publish (a device-side batch is a JSON array of this many).
    pub batch: u64,
    /// Readings per message (rows per message in Parquet).
    pub metrics: u64,
    /// Lambda architecture.
    pub arch: Arch,
    /// Target p99 seconds from a reading's arrival to the 1m stats (`--freshness`).
    pub freshness_s: f64,
}

/// The Firehose S3 buffer interval (seconds, the template's `FirehoseBufferIntervalSeconds`)
/// that delivers readings to the 1m stats within `freshness_s` (see the
/// [module documentation](self)), or what to ask for instead when no interval within
/// Firehose's range can.
pub fn buffer_interval(a: &Assumptions, freshness_s: f64) -> Result<f64, String> {
    let fixed = a.processor_buffer_s + a.freshness_overhead_s;
    let shortest = fixed + a.partitioning_delay_factor * a.firehose_buffer_min_s;
    if !(freshness_s.is_finite() && freshness_s >= shortest) {
        return Err(format!(
            "--freshness {freshness_s} is below the shortest the design allows, {shortest} s \
             (Firehose's minimum {} s buffer with dynamic partitioning, x{} delivery delay, \
             + {} s processor buffer + {} s notification and rollup): ask for at least {shortest}",
            a.firehose_buffer_min_s,
            a.partitioning_delay_factor,
            a.processor_buffer_s,
            a.freshness_overhead_s
        ));
    }
    Ok(((freshness_s - fixed) / a.partitioning_delay_factor).min(a.firehose_buffer_max_s))
}

impl Fleet {
    /// Bytes of one publish: the message, or a JSON array of `batch` of them.
    pub fn publish_bytes(&self) -> u64 {
        if self.batch <= 1 {
            self.payload_bytes
        } else {
            // `[` + messages joined by `,` + `]`
            self.batch * self.payload_bytes + self.batch + 1
        }
    }

    /// Checks the fleet against the service limits; the error says what to change.
    pub fn check(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err(format!("--rate {} must be a number >= 0", self.rate));
        }
        if self.payload_bytes == 0 || self.batch == 0 || self.metrics == 0 {
            return Err("--payload-bytes, --batch and --metrics must be > 0".into());
        }
        if self.publish_bytes() > IOT_MAX_PAYLOAD_BYTES {
            return Err(format!(
                "a publish of {} messages of {} B is {} B, above the 128 KiB AWS IoT Core \
                 message limit: use a --batch of at most {}",
                self.batch,
                self.payload_bytes,
                self.publish_bytes(),
                ((IOT_MAX_PAYLOAD_BYTES - 1) / (self.payload_bytes + 1)).max(1)
            ));
        }
        Ok(())
    }
}

/// One line of a bill.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Line {
    /// Service and item.
    pub component: String,
    /// What is metered, in the service's unit.
    pub usage: String,
    /// USD per month.
    pub usd: f64,
}

/// The monthly bill of one topology.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bill {
    /// The topology.
    pub topology: Topology,
    /// Whether it is the default topology (DESIGN.md: the cheapest correct one; the
    /// template's `Topology` default).
    pub default: bool,
    /// USD per month for the fleet.
    pub monthly_usd: f64,
    /// USD per month with the stack deployed and no device.
    pub idle_usd: f64,
    /// The bill, line by line.
    pub lines: Vec<Line>,
    /// `--compare always-on`: the rate (messages/s per device) above which the always-on
    /// instance is cheaper; `None` when not asked or when there is none within the
    /// instance's capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_even_rate: Option<f64>,
}

fn units(bytes: f64, unit: usize) -> f64 {
    metering::units(bytes.max(0.0).ceil() as usize, unit) as f64
}

struct Lines<'a> {
    p: &'a Prices,
    arch: Arch,
    lines: Vec<Line>,
}

impl Lines<'_> {
    fn add(&mut self, component: &str, usage: String, usd: f64) {
        self.lines.push(Line {
            component: component.to_string(),
            usage,
            usd,
        });
    }

    /// (requests USD, compute USD) of `invocations` invocations of `ms` each, rounded up
    /// to the millisecond.
    fn lambda(&self, invocations: f64, ms: f64, f: &LambdaFn) -> (f64, f64) {
        let gb_s = invocations * ms.ceil() / 1000.0 * f64::from(f.memory_mb) / 1024.0;
        let per_gb_s = match self.arch {
            Arch::Arm64 => self.p.prices.lambda_gb_second_arm64.usd,
            Arch::X86_64 => self.p.prices.lambda_gb_second_x86_64.usd,
        };
        (
            invocations / 1e6 * self.p.prices.lambda_requests.usd,
            gb_s * per_gb_s,
        )
    }
}

/// The bill of `fleet` on `topology`, line by line.
pub fn bill_lines(p: &Prices, alarms: u32, fleet: &Fleet, topology: Topology) -> Vec<Line> {
    let (pr, a) = (&p.prices, &p.assumptions);
    let mut b = Lines {
        p,
        arch: fleet.arch,
        lines: Vec::new(),
    };
    let hours = a.hours_per_month;
    let minutes = hours * 60.0;
    let seconds = hours * 3600.0;
    let devices = fleet.devices as f64;
    let k = fleet.batch as f64;
    let msgs = devices * fleet.rate * seconds;
    let publishes = msgs / k;
    let pub_bytes = fleet.publish_bytes() as f64;
    let rows = msgs * fleet.metrics as f64;
    let rec_bytes = fleet.payload_bytes as f64 + a.stream_overhead_bytes;
    let iot_units = publishes * units(pub_bytes, IOT_MESSAGE_UNIT_BYTES);
    // Topology kinesis: records per ingest invocation. The event-source mapping invokes per
    // shard once `BatchSize` records are there or its window has passed, whichever is first.
    let esm_batch = (publishes / seconds / a.kinesis_shards
        * metering::INGEST_BATCH_WINDOW_SECONDS as f64)
        .clamp(1.0, metering::INGEST_BATCH_SIZE as f64);

    // --- IoT Core
    b.add(
        "IoT Core connectivity",
        format!("{} devices x {minutes:.0} min", fleet.devices),
        devices * minutes / 1e6 * pr.iot_connectivity.usd,
    );
    if topology == Topology::PerMessage {
        b.add(
            "IoT Core messaging",
            format!("{:.1} M x 5 KB units", iot_units / 1e6),
            pr.iot_messaging.usd(iot_units),
        );
    } else {
        b.add(
            "IoT Core messaging",
            format!(
                "{:.1} M publishes to Basic Ingest: not charged",
                publishes / 1e6
            ),
            0.0,
        );
    }
    b.add(
        "IoT Core rules triggered",
        format!("{:.1} M x 5 KB units", iot_units / 1e6),
        iot_units / 1e6 * pr.iot_rule_triggered.usd,
    );
    let action = match topology {
        Topology::Firehose => "Firehose",
        Topology::Kinesis => "Kinesis",
        Topology::PerMessage => "Lambda",
    };
    b.add(
        &format!("IoT Core actions executed ({action})"),
        format!("{:.1} M x 5 KB units", iot_units / 1e6),
        iot_units / 1e6 * pr.iot_action_executed.usd,
    );

    // --- Lambda ingest: per publish, in event-source-mapping batches, or not at all.
    let ingest_ms =
        |messages: f64| a.ingest_ms + (messages - 1.0).max(0.0) * a.ingest_us_per_message / 1000.0;
    let (ingest_invocations, ms) = match topology {
        Topology::Firehose => (0.0, 0.0),
        Topology::Kinesis => (publishes / esm_batch, ingest_ms(esm_batch * k)),
        Topology::PerMessage => (publishes, ingest_ms(k)),
    };
    if topology != Topology::Firehose {
        let (req, compute) = b.lambda(ingest_invocations, ms, &metering::INGEST);
        let how = if topology == Topology::Kinesis {
            format!(" (batches of {esm_batch:.0})")
        } else {
            String::new()
        };
        b.add(
            "Lambda ingest requests",
            format!("{:.2} M invocations{how}", ingest_invocations / 1e6),
            req,
        );
        b.add(
            &format!("Lambda ingest compute ({})", fleet.arch.name()),
            format!(
                "{:.0} ms billed x {} MB",
                ms.ceil(),
                metering::INGEST.memory_mb
            ),
            compute,
        );
    }

    // --- Kinesis: the raw stream (kinesis) or the stream-record stream (per-message).
    let (kin_records, kin_bytes) = match topology {
        Topology::Firehose => (0.0, 0.0),
        Topology::Kinesis => (publishes, pub_bytes),
        Topology::PerMessage => (msgs, rec_bytes),
    };
    if topology.has_stream() {
        b.add(
            "Kinesis on-demand stream-hours",
            format!("{hours:.0} h"),
            hours * pr.kinesis_on_demand_stream_hour.usd,
        );
        let in_gb = kin_records * units(kin_bytes, KINESIS_ON_DEMAND_UNIT_BYTES) * KIB / GIB;
        b.add(
            "Kinesis data in (1 KB records)",
            format!("{in_gb:.1} GB"),
            in_gb * pr.kinesis_on_demand_ingest.usd,
        );
        let out_gb = kin_records * kin_bytes / GIB;
        b.add(
            "Kinesis data out",
            format!("{out_gb:.1} GB"),
            out_gb * pr.kinesis_on_demand_retrieval.usd,
        );
    }

    // --- Firehose: raw publishes (firehose), packed publishes from ingest (kinesis) or one
    // stream record per message (per-message).
    let (fh_records, fh_bytes) = match topology {
        Topology::Firehose => (publishes, pub_bytes),
        Topology::Kinesis => (publishes, k * rec_bytes),
        Topology::PerMessage => (msgs, rec_bytes),
    };
    let fh_gb = fh_records
        * units(fh_bytes, FIREHOSE_INGEST_UNIT_BYTES)
        * FIREHOSE_INGEST_UNIT_BYTES as f64
        / GIB;
    b.add(
        "Firehose ingestion (5 KB records)",
        format!("{:.1} M records, {fh_gb:.1} GB", fh_records / 1e6),
        fh_gb * pr.firehose_ingest.usd,
    );
    b.add(
        "Firehose format conversion (Parquet)",
        format!("{fh_gb:.1} GB"),
        fh_gb * pr.firehose_format_conversion.usd,
    );
    let dp_gb = rows * a.row_json_bytes / GIB;
    b.add(
        "Firehose dynamic partitioning (GB)",
        format!("{dp_gb:.1} GB"),
        dp_gb * pr.firehose_partitioning.usd,
    );
    let parquet_gb = rows * a.parquet_bytes_per_row / GIB;
    // An out-of-range freshness is refused by the CLI; here it is clamped to the range.
    let buffer_s = buffer_interval(a, fleet.freshness_s).unwrap_or(a.firehose_buffer_min_s);
    // An interval writes an object only if a publish arrived in it (Poisson arrivals), so
    // a trickle of data writes fewer than one object per interval.
    let filled = 1.0 - (-(publishes / seconds) * buffer_s).exp();
    let objects = if msgs > 0.0 {
        (hours * 3600.0 / buffer_s * filled).max(parquet_gb * 1024.0 / 128.0)
    } else {
        0.0
    };
    b.add(
        "Firehose dynamic partitioning (objects)",
        format!("{objects:.0} objects"),
        objects / 1000.0 * pr.firehose_partitioning_objects.usd,
    );

    // --- Lambda transform (the Firehose processor), rollup every 5 minutes, compact daily.
    let fh_in_bytes = fh_records * fh_bytes;
    let (batches, batch_mib) = if msgs > 0.0 {
        // At least one batch per processor buffer interval (ProcessorBufferIntervalSeconds).
        let n = (fh_in_bytes / (a.transform_batch_mib * MIB))
            .max(seconds / a.processor_buffer_s.max(1.0));
        (n, fh_in_bytes / MIB / n)
    } else {
        (0.0, 0.0)
    };
    let (req, compute) = b.lambda(
        batches,
        (a.transform_ms_per_mib * batch_mib).max(1.0),
        &metering::TRANSFORM,
    );
    b.add(
        "Lambda transform (Firehose processor)",
        format!("{:.1} k batches", batches / 1e3),
        req + compute,
    );
    // One rollup run per new object (its S3 event); each of its units re-reads its hour so
    // far (half an hour's rows on average). The 5-minute schedule is the backstop.
    let buckets = f64::from(analytics::config::DEFAULT_BUCKETS);
    let event_runs = objects;
    let event_ms = a.rollup_base_ms + rows / hours / 2.0 * a.rollup_us_per_row / 1000.0;
    let (req, compute) = b.lambda(event_runs, event_ms, &metering::ROLLUP);
    b.add(
        "Lambda rollup (on new objects)",
        format!(
            "{event_runs:.0} runs x {:.1} s (buffer {buffer_s:.0} s)",
            event_ms / 1000.0
        ),
        req + compute,
    );
    let runs = hours * 12.0;
    let (req, compute) = b.lambda(runs, a.rollup_base_ms, &metering::ROLLUP);
    b.add(
        "Lambda rollup (every 5 min, backstop)",
        format!("{runs:.0} runs x {:.1} s", a.rollup_base_ms / 1000.0),
        req + compute,
    );
    // The dashboard: re-rendered every 5 minutes, whatever the fleet.
    let (req, compute) = b.lambda(runs, a.report_ms, &metering::REPORT);
    b.add(
        "Lambda report (dashboard, every 5 min)",
        format!("{runs:.0} runs x {:.1} s", a.report_ms / 1000.0),
        req + compute,
    );
    let days = hours / 24.0;
    let compact_ms = a.compact_base_ms + rows / days * a.compact_us_per_row / 1000.0;
    let (req, compute) = b.lambda(days, compact_ms, &metering::COMPACT);
    b.add(
        "Lambda compact (daily)",
        format!("{days:.0} runs x {:.0} s", compact_ms / 1000.0),
        req + compute,
    );

    // --- S3
    // PUTs: Firehose's objects, their pending markers, each run's stats + state per unit,
    // a LIST per scheduled run, compaction. GETs: each run's units read every object of
    // their hour so far; compaction reads every object once.
    let objects_per_hour = objects / hours;
    let puts = objects * 2.0 + event_runs * 2.0 * buckets + runs + days * 10.0;
    let gets = event_runs * buckets * (objects_per_hour / 2.0).max(1.0) + runs + objects;
    b.add(
        "S3 requests (PUT/GET)",
        format!("{:.1} k PUT, {:.1} k GET", puts / 1e3, gets / 1e3),
        puts / 1000.0 * pr.s3_put.usd + gets / 1000.0 * pr.s3_get.usd,
    );
    let stats_rows = if msgs > 0.0 {
        devices * fleet.metrics as f64 * minutes
    } else {
        0.0
    };
    let stored_gb = parquet_gb + stats_rows * a.stats_bytes_per_row / GIB;
    b.add(
        "S3 storage added per month",
        format!("{stored_gb:.1} GB (accumulates)"),
        stored_gb * pr.s3_storage.usd,
    );

    // --- CloudWatch, Scheduler, KMS
    let log_gb = (ingest_invocations * a.ingest_log_bytes
        + (batches + event_runs + 2.0 * runs + days) * a.job_log_bytes)
        / GIB;
    let kept_gb = log_gb * (a.log_days_stored / 30.0).min(1.0);
    b.add(
        "CloudWatch Logs ingestion + storage",
        format!("{log_gb:.2} GB"),
        log_gb * pr.cloudwatch_logs_ingest.usd + kept_gb * pr.cloudwatch_logs_storage.usd,
    );
    b.add(
        "CloudWatch alarms",
        format!("{alarms} alarms"),
        f64::from(alarms) * pr.cloudwatch_alarm.usd,
    );
    // The rollup's backstop and the report (every 5 minutes each), the daily compact.
    let schedules = 2.0 * runs + days;
    b.add(
        "EventBridge Scheduler",
        format!("{schedules:.0} invocations"),
        schedules / 1e6 * pr.scheduler.usd,
    );
    let sqs = objects * a.sqs_requests_per_object;
    b.add(
        "SQS (new-object queue)",
        format!("{:.1} k requests", sqs / 1e3),
        sqs / 1e6 * pr.sqs_requests.usd,
    );
    if topology.has_stream() {
        let kms = a.kms_callers * 12.0 * hours;
        b.add(
            "KMS (stream encryption)",
            format!("{:.1} k requests", kms / 1e3),
            kms / 1e4 * pr.kms_requests.usd,
        );
    }
    b.lines
}

/// The bill of `fleet` on `topology`, with its idle bill (the same stack, no device).
pub fn bill(p: &Prices, alarms: u32, fleet: &Fleet, topology: Topology) -> Bill {
    let lines = bill_lines(p, alarms, fleet, topology);
    let idle = Fleet {
        devices: 0,
        ..*fleet
    };
    Bill {
        topology,
        default: topology == Topology::Firehose,
        monthly_usd: lines.iter().map(|l| l.usd).sum(),
        idle_usd: bill_lines(p, alarms, &idle, topology)
            .iter()
            .map(|l| l.usd)
            .sum(),
        lines,
        break_even_rate: None,
    }
}

/// What the always-on alternative costs a month: the instance, its disk, and the same S3
/// storage for the data as the serverless stack.
pub fn always_on_usd(p: &Prices, alarms: u32, fleet: &Fleet) -> f64 {
    let (pr, a) = (&p.prices, &p.assumptions);
    let storage: f64 = bill_lines(p, alarms, fleet, Topology::Firehose)
        .iter()
        .filter(|l| l.component == "S3 storage added per month")
        .map(|l| l.usd)
        .sum();
    a.hours_per_month * pr.always_on_instance.usd
        + a.always_on_disk_gb * pr.always_on_disk.usd
        + storage
}

/// The rate (messages/s per device) at which `topology`'s bill reaches the always-on
/// alternative's, or `None` when the serverless bill stays below it up to what one instance
/// sustains (`always_on_max_msg_per_s`). `Some(0.0)` when even the idle stack costs more.
pub fn break_even_rate(p: &Prices, alarms: u32, fleet: &Fleet, topology: Topology) -> Option<f64> {
    if fleet.devices == 0 {
        return None;
    }
    let gap = |rate: f64| {
        let f = Fleet { rate, ..*fleet };
        bill(p, alarms, &f, topology).monthly_usd - always_on_usd(p, alarms, &f)
    };
    let max_rate = p.assumptions.always_on_max_msg_per_s / fleet.devices as f64;
    if gap(0.0) >= 0.0 {
        return Some(0.0);
    }
    if gap(max_rate) < 0.0 {
        return None;
    }
    let (mut lo, mut hi) = (0.0, max_rate);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if gap(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some((lo + hi) / 2.0)
}

/// The cheapest topology among `bills` that meets the needs (`need_stream`: replay,
/// per-device order or several consumers need a Kinesis stream).
pub fn cheapest(bills: &[Bill], need_stream: bool) -> Option<&Bill> {
    bills
        .iter()
        .filter(|b| !need_stream || b.topology.has_stream())
        .min_by(|a, b| a.monthly_usd.total_cmp(&b.monthly_usd))
}

/// Dollars with thousands separators and cents: `$1,013.49`.
pub fn money(usd: f64) -> String {
    let cents = (usd * 100.0).round() as i128;
    let (sign, cents) = if cents < 0 {
        ("-", -cents)
    } else {
        ("", cents)
    };
    let whole = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}${grouped}.{:02}", cents % 100)
}

/// The bills as text: per topology a title, the lines, the total and the idle bill.
pub fn render(bills: &[Bill], fleet: &Fleet, prices: &Prices) -> String {
    let msgs = fleet.devices as f64 * fleet.rate * prices.assumptions.hours_per_month * 3600.0;
    let mut out = format!(
        "Estimated monthly bill, {} list prices read on {} (infra/prices.toml), no free tier\n\
         Fleet: {} devices x {} msg/s, {:.1} M messages/month of {} B with {} readings, {} per publish ({} B)\n\
         Freshness: {} s p99 to the 1m stats (FirehoseBufferIntervalSeconds {:.0})\n",
        prices.region,
        prices.read_on(),
        fleet.devices,
        fleet.rate,
        msgs / 1e6,
        fleet.payload_bytes,
        fleet.metrics,
        fleet.batch,
        fleet.publish_bytes(),
        fleet.freshness_s,
        buffer_interval(&prices.assumptions, fleet.freshness_s)
            .unwrap_or(prices.assumptions.firehose_buffer_min_s),
    );
    for b in bills {
        let mut t = Table::new(vec![
            Column::left("component"),
            Column::left("usage"),
            Column::right("USD/month"),
        ])
        .indent("  ");
        for l in &b.lines {
            t.row([l.component.clone(), l.usage.clone(), money(l.usd)]);
        }
        t.rule();
        t.row([
            "TOTAL per month".to_string(),
            String::new(),
            money(b.monthly_usd),
        ]);
        t.row([
            "IDLE per month (stack deployed, no device)".to_string(),
            String::new(),
            money(b.idle_usd),
        ]);
        out.push_str(&format!(
            "\nTopology {}{}:\n{}",
            b.topology.name(),
            if b.default {
                " (the default: template.yaml's Topology parameter)"
            } else {
                ""
            },
            t.to_text()
        ));
        match b.break_even_rate {
            Some(r) if r > 0.0 => out.push_str(&format!(
                "  always-on break-even: {r:.4} msg/s per device ({:.1} msg/s fleet-wide): \
                 above it the always-on instance is cheaper\n",
                r * fleet.devices as f64
            )),
            Some(_) => out.push_str(
                "  always-on break-even: none, the idle stack already costs more than the \
                 always-on instance\n",
            ),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prices::embedded;

    const MONTH_S: f64 = 730.0 * 3600.0;

    fn fleet(devices: u64, rate: f64, batch: u64) -> Fleet {
        Fleet {
            devices,
            rate,
            payload_bytes: 200,
            batch,
            metrics: 3,
            arch: Arch::Arm64,
            freshness_s: 120.0,
        }
    }

    fn line<'a>(lines: &'a [Line], component: &str) -> &'a Line {
        lines
            .iter()
            .find(|l| l.component == component)
            .unwrap_or_else(|| panic!("no line {component:?} in {lines:#?}"))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn per_message_charges_follow_the_aws_rules_worked_by_hand() {
        let p = embedded().unwrap();
        // 1,000 devices × 0.2 msg/s × 730 h = 525.6 M messages of 200 B: one 5 KB IoT unit
        // each, so $1/M messaging (first billion), $0.15/M rules, $0.15/M actions.
        let lines = bill_lines(p, 15, &fleet(1000, 0.2, 1), Topology::PerMessage);
        let msgs = 1000.0 * 0.2 * MONTH_S;
        assert!(close(msgs, 525_600_000.0));
        assert!(close(line(&lines, "IoT Core messaging").usd, 525.6));
        assert!(close(line(&lines, "IoT Core rules triggered").usd, 78.84));
        assert!(close(
            line(&lines, "IoT Core actions executed (Lambda)").usd,
            78.84
        ));
        // Lambda: one request per message at $0.20/M; 20 ms × 128 MB = 0.0025 GB-s each.
        assert!(close(line(&lines, "Lambda ingest requests").usd, 105.12));
        assert!(close(
            line(&lines, "Lambda ingest compute (arm64)").usd,
            msgs * 0.020 * 0.125 * 0.000_013_333_4
        ));
        // Kinesis on-demand: 264 B records round up to 1 KB; read back at their size.
        let gib = 1024.0_f64.powi(3);
        assert!(close(
            line(&lines, "Kinesis data in (1 KB records)").usd,
            msgs * 1024.0 / gib * 0.08
        ));
        assert!(close(
            line(&lines, "Kinesis data out").usd,
            msgs * 264.0 / gib * 0.04
        ));
        assert!(close(
            line(&lines, "Kinesis on-demand stream-hours").usd,
            29.2
        ));
        // Firehose: each 264 B record is billed as 5 KB, for ingestion and conversion.
        assert!(close(
            line(&lines, "Firehose ingestion (5 KB records)").usd,
            msgs * 5120.0 / gib * 0.029
        ));
        assert!(close(
            line(&lines, "Firehose format conversion (Parquet)").usd,
            msgs * 5120.0 / gib * 0.018
        ));
    }

    #[test]
    fn the_firehose_topology_pays_no_messaging_no_ingest_and_no_stream() {
        let p = embedded().unwrap();
        let lines = bill_lines(p, 15, &fleet(1000, 0.2, 1), Topology::Firehose);
        assert_eq!(line(&lines, "IoT Core messaging").usd, 0.0);
        assert!(
            !lines
                .iter()
                .any(|l| l.component.starts_with("Lambda ingest"))
        );
        assert!(!lines.iter().any(|l| l.component.starts_with("Kinesis")));
        assert!(!lines.iter().any(|l| l.component.starts_with("KMS")));
        // The rule still triggers and acts once per 5 KB publish.
        assert!(close(
            line(&lines, "IoT Core actions executed (Firehose)").usd,
            78.84
        ));
    }

    #[test]
    fn a_device_batch_of_ten_is_one_publish_and_one_5kb_firehose_record() {
        let p = embedded().unwrap();
        let f = fleet(1000, 0.2, 10);
        // [ + 10 × 200 B + 9 commas + ] = 2,011 B: still one 5 KB unit.
        assert_eq!(f.publish_bytes(), 2011);
        let lines = bill_lines(p, 15, &f, Topology::Firehose);
        let publishes = 1000.0 * 0.2 * MONTH_S / 10.0;
        assert!(close(
            line(&lines, "IoT Core rules triggered").usd,
            publishes / 1e6 * 0.15
        ));
        let gib = 1024.0_f64.powi(3);
        assert!(close(
            line(&lines, "Firehose ingestion (5 KB records)").usd,
            publishes * 5120.0 / gib * 0.029
        ));
        // 30 messages of 200 B = 6,031 B: two 5 KB units per publish, and per rule.
        let big = Fleet { batch: 30, ..f };
        let lines = bill_lines(p, 15, &big, Topology::Firehose);
        assert!(close(
            line(&lines, "IoT Core rules triggered").usd,
            1000.0 * 0.2 * MONTH_S / 30.0 * 2.0 / 1e6 * 0.15
        ));
    }

    #[test]
    fn kinesis_ingest_runs_in_event_source_batches_billed_to_the_millisecond() {
        let p = embedded().unwrap();
        let lines = bill_lines(p, 15, &fleet(1000, 0.2, 1), Topology::Kinesis);
        // 200 publishes/s over 4 shards, gathered for 5 s: batches of 250 (below 500).
        let invocations = 1000.0 * 0.2 * MONTH_S / 250.0;
        assert!(close(
            line(&lines, "Lambda ingest requests").usd,
            invocations / 1e6 * 0.20
        ));
        // 20 ms + 249 × 15 µs = 23.735 ms, billed as 24 ms.
        assert!(close(
            line(&lines, "Lambda ingest compute (arm64)").usd,
            invocations * 0.024 * 0.125 * 0.000_013_333_4
        ));
        // 4,000 publishes/s would gather 5,000 per shard: BatchSize caps them at 500.
        let busy = bill_lines(p, 15, &fleet(20_000, 0.2, 1), Topology::Kinesis);
        assert!(close(
            line(&busy, "Lambda ingest requests").usd,
            20_000.0 * 0.2 * MONTH_S / 500.0 / 1e6 * 0.20
        ));
    }

    #[test]
    fn on_the_reference_fleet_the_default_is_a_fifth_from_batches_of_two_and_a_twentieth_at_ten() {
        let p = embedded().unwrap();
        let naive = bill(p, 15, &fleet(1000, 0.2, 1), Topology::PerMessage);
        let default = bill(p, 15, &fleet(1000, 0.2, 1), Topology::Firehose);
        // One publish per message: the rule (2 × $0.15/M) and Firehose's 5 KB rounding are
        // per publish, so the default is ~1/3.5, not 1/5 (BENCHMARKS.md).
        assert!(
            default.monthly_usd * 3.0 <= naive.monthly_usd,
            "{default:?}"
        );
        assert!(default.monthly_usd * 5.0 > naive.monthly_usd, "{default:?}");
        let pairs = bill(p, 15, &fleet(1000, 0.2, 2), Topology::Firehose);
        assert!(pairs.monthly_usd * 5.0 <= naive.monthly_usd, "{pairs:?}");
        // Batches of 10: 1/20 of the baseline with a 480 s freshness (5-minute Firehose
        // buffers); the 120 s default adds ~$17 of rollup runs and S3 requests (a run per
        // object, each unit re-reading its hour so far), which leaves it near 1/18
        // (BENCHMARKS.md).
        let batched = bill(
            p,
            15,
            &Fleet {
                freshness_s: 480.0,
                ..fleet(1000, 0.2, 10)
            },
            Topology::Firehose,
        );
        assert!(
            batched.monthly_usd * 20.0 <= naive.monthly_usd,
            "{batched:?}"
        );
        let fresh = bill(p, 15, &fleet(1000, 0.2, 10), Topology::Firehose);
        assert!(fresh.monthly_usd * 18.0 <= naive.monthly_usd, "{fresh:?}");
        assert!(fresh.monthly_usd * 20.0 > naive.monthly_usd, "{fresh:?}");
        // Idle: the firehose topology keeps no stream-hours.
        assert!(default.idle_usd + 29.0 < naive.idle_usd);
        let all: Vec<Bill> = Topology::ALL
            .iter()
            .map(|t| bill(p, 15, &fleet(1000, 0.2, 1), *t))
            .collect();
        assert_eq!(cheapest(&all, false).unwrap().topology, Topology::Firehose);
        assert_eq!(cheapest(&all, true).unwrap().topology, Topology::Kinesis);
    }

    #[test]
    fn the_break_even_rate_is_where_the_two_bills_meet() {
        let p = embedded().unwrap();
        let f = fleet(100, 0.2, 1);
        let r = break_even_rate(p, 15, &f, Topology::Firehose).unwrap();
        assert!(r > 0.0);
        let at = Fleet { rate: r, ..f };
        let serverless = bill(p, 15, &at, Topology::Firehose).monthly_usd;
        assert!((serverless - always_on_usd(p, 15, &at)).abs() < 0.01);
        // Below it serverless is cheaper, above it the instance.
        let below = Fleet { rate: r * 0.9, ..f };
        assert!(bill(p, 15, &below, Topology::Firehose).monthly_usd < always_on_usd(p, 15, &below));
        // A stream's idle bill alone is above a small instance's: always-on wins at any rate.
        assert_eq!(break_even_rate(p, 15, &f, Topology::PerMessage), Some(0.0));
    }

    #[test]
    fn a_batch_above_the_iot_message_limit_is_refused_with_the_largest_that_fits() {
        let f = Fleet {
            batch: 1000,
            ..fleet(1, 1.0, 1)
        };
        let e = f.check().unwrap_err();
        assert!(e.contains("128 KiB") && e.contains("at most 652"), "{e}");
        assert!(Fleet { batch: 652, ..f }.check().is_ok());
    }

    #[test]
    fn a_longer_freshness_writes_fewer_objects_and_runs_fewer_rollups() {
        let p = embedded().unwrap();
        let a = &p.assumptions;
        // The default: 1.5 × 60 s + 10 s + 20 s = 120 s.
        assert_eq!(buffer_interval(a, a.freshness_s), Ok(60.0));
        assert_eq!(buffer_interval(a, 480.0), Ok(300.0));
        assert_eq!(buffer_interval(a, 5000.0), Ok(900.0));
        let e = buffer_interval(a, 100.0).unwrap_err();
        assert!(e.contains("at least 120"), "{e}");

        let fresh = bill(p, 15, &fleet(1000, 0.2, 1), Topology::Firehose);
        let slow = bill(
            p,
            15,
            &Fleet {
                freshness_s: 480.0,
                ..fleet(1000, 0.2, 1)
            },
            Topology::Firehose,
        );
        let objects = |b: &Bill| line(&b.lines, "Firehose dynamic partitioning (objects)").usd;
        // 60 objects an hour against 12: five times the objects (and their rollup runs).
        assert!(close(objects(&fresh), 5.0 * objects(&slow)));
        for component in ["Lambda rollup (on new objects)", "S3 requests (PUT/GET)"] {
            assert!(
                line(&fresh.lines, component).usd > 4.0 * line(&slow.lines, component).usd,
                "{component}"
            );
        }
        assert!(fresh.monthly_usd > slow.monthly_usd);
        // Freshness costs nothing without devices.
        assert!(close(fresh.idle_usd, slow.idle_usd));
    }

    #[test]
    fn the_default_topology_is_the_templates() {
        // The `Topology` parameter's `Default:` line, a few lines below its name.
        let lines: Vec<&str> = TEMPLATE_YAML.lines().collect();
        let at = lines
            .iter()
            .position(|l| *l == "  Topology:")
            .expect("the template's Topology parameter");
        let default = lines[at..at + 4]
            .iter()
            .find_map(|l| l.trim().strip_prefix("Default: "))
            .expect("its Default");
        let p = crate::prices::embedded().unwrap();
        let fleet = Fleet {
            devices: 1,
            rate: 1.0,
            payload_bytes: 200,
            batch: 1,
            metrics: 3,
            arch: Arch::Arm64,
            freshness_s: p.assumptions.freshness_s,
        };
        let defaults: Vec<&str> = Topology::ALL
            .iter()
            .filter(|t| bill(p, 0, &fleet, **t).default)
            .map(|t| t.name())
            .collect();
        assert_eq!(defaults, [default]);
    }

    #[test]
    fn money_groups_thousands() {
        assert_eq!(money(1013.494), "$1,013.49");
        assert_eq!(money(0.0), "$0.00");
        assert_eq!(money(1_234_567.891), "$1,234,567.89");
    }
}

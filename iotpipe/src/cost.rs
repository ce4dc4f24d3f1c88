//! What a local run would have cost on AWS.
//!
//! Prices from the one price table, `infra/prices.toml` ([`crate::prices`]), which
//! `iotpipe cost` and `infra/cost.py` read too. No free tier is applied. The local run
//! counts exactly what AWS meters — messages in 5 KB units, Lambda invocations and billed
//! GB-seconds per function, Kinesis bytes in 1 KB units, Firehose bytes in 5 KB units, S3
//! requests by class (PUT and LIST, GET), counted at the bucket — and this module prices
//! them.
//!
//! A run's month is not its bill scaled up: a local run closes Parquet files every 10 s
//! (`--flush-every`; the template's Firehose buffers 60 s), runs a final rollup when it
//! stops, and a replay goes as fast as the machine does. The month is the bill of the fleet
//! the run showed — its devices, their message rate, size and readings — on
//! [`crate::fleet_cost`]'s model, the one `iotpipe cost` prints line by line
//! ([`RunFleet::command`]).

use analytics::render::{Column, Table};
use serde::Serialize;
use telemetry::metering::{FIREHOSE_INGEST_UNIT_BYTES, KINESIS_ON_DEMAND_UNIT_BYTES};

use local::meter::{FnReport, Usage};

use crate::fleet_cost::{self, Arch, Fleet, Topology};
use crate::prices::Prices;

const GB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One priced line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostLine {
    /// Service and item.
    pub item: String,
    /// Quantity, in the unit named.
    pub quantity: f64,
    /// Unit of the quantity.
    pub unit: &'static str,
    /// USD for the run.
    pub usd: f64,
}

/// The priced run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    /// Priced lines.
    pub lines: Vec<CostLine>,
    /// Total USD for the run.
    pub total_usd: f64,
    /// A 730-hour month of the fleet the run showed ([`Estimate::month_fleet`]) on
    /// `iotpipe cost`'s model; 0 when the run shows no fleet ([`Estimate::no_month`]).
    pub month_at_this_rate_usd: f64,
    /// The fleet that month is priced for.
    pub month_fleet: Option<RunFleet>,
    /// Why the run has no month (a requeue, no message, ...).
    pub no_month: Option<String>,
    /// Date of the price table (the oldest `read_on` of its prices).
    pub prices_as_of: String,
    /// The topology the run took (`firehose`, `per-message`; empty when not told).
    pub topology: String,
}

/// The fleet a run showed, as `iotpipe cost` takes it: what the run's month is priced for.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunFleet {
    /// Devices seen.
    pub devices: u64,
    /// Messages per second per device (three significant digits).
    pub rate: f64,
    /// Mean bytes of one message.
    pub payload_bytes: u64,
    /// Messages per publish (device-side batches).
    pub batch: u64,
    /// Readings per accepted message.
    pub metrics: u64,
    /// Seconds the messages were spread over.
    pub over_s: f64,
    /// What those seconds are: `their publishing` (`iotpipe up`: the devices' time
    /// publishing), or `the events' times` (`iotpipe replay`: first to last `ts` of the
    /// file).
    pub over: String,
    /// The topology priced (the run's).
    pub topology: Topology,
    /// The `iotpipe cost` command that prints this month line by line.
    pub command: String,
}

/// What a run's messages tell of its fleet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    /// Messages in (a device-side batch counts each element).
    pub messages: u64,
    /// Of those, accepted by validation.
    pub accepted: u64,
    /// Readings in the accepted messages.
    pub readings: u64,
}

/// Three significant digits: a rate that prints as it is priced.
fn significant3(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 0.0;
    }
    let scale = 10f64.powi(2 - x.log10().floor() as i32);
    (x * scale).round() / scale
}

/// The fleet of a run from its usage and traffic, its messages spread over `over_s` seconds
/// (`over` says what those are); the error says why there is none.
pub fn run_fleet(u: &Usage, t: Traffic, over_s: f64, over: &str) -> Result<RunFleet, String> {
    let topology = Topology::ALL
        .into_iter()
        .find(|x| x.name() == u.topology)
        .ok_or_else(|| format!("no topology to price (`{}`)", u.topology))?;
    if t.messages == 0 || u.rule_triggers == 0 || u.devices == 0 {
        return Err("no device sent a message".into());
    }
    if over_s.is_nan() || over_s < 1.0 {
        return Err(format!(
            "the messages span {over_s:.3} s: too short to give a rate"
        ));
    }
    let batch = (t.messages as f64 / u.rule_triggers as f64)
        .round()
        .max(1.0) as u64;
    // A publish of K messages is `[` + the messages joined by `,` + `]` (Fleet::publish_bytes).
    let per_publish = u.publish_bytes as f64 / u.rule_triggers as f64;
    let payload_bytes = if batch > 1 {
        (per_publish - batch as f64 - 1.0) / batch as f64
    } else {
        per_publish
    }
    .round()
    .max(1.0) as u64;
    let metrics = if t.accepted > 0 {
        (t.readings as f64 / t.accepted as f64).round().max(1.0) as u64
    } else {
        1
    };
    let rate = significant3(t.messages as f64 / u.devices as f64 / over_s);
    let fleet = RunFleet {
        devices: u.devices,
        rate,
        payload_bytes,
        batch,
        metrics,
        over_s,
        over: over.to_owned(),
        topology,
        command: format!(
            "iotpipe cost --devices {} --rate {rate} --payload-bytes {payload_bytes} \
             --metrics {metrics}{} --topology {}",
            u.devices,
            if batch > 1 {
                format!(" --batch {batch}")
            } else {
                String::new()
            },
            topology.name()
        ),
    };
    // The service limits (a device batch within IoT Core's 128 KiB); no freshness is read.
    fleet.model(0.0).check()?;
    Ok(fleet)
}

impl RunFleet {
    /// The fleet as [`fleet_cost`] prices it (arm64, the template's architecture).
    fn model(&self, freshness_s: f64) -> Fleet {
        Fleet {
            devices: self.devices,
            rate: self.rate,
            payload_bytes: self.payload_bytes,
            batch: self.batch,
            metrics: self.metrics,
            arch: Arch::Arm64,
            freshness_s,
        }
    }
}

/// Prices a run from its usage and the metered functions, and a month of its fleet (or
/// why there is none).
pub fn estimate(
    p: &Prices,
    u: &Usage,
    functions: &[FnReport],
    fleet: Result<RunFleet, String>,
) -> Estimate {
    let pr = &p.prices;
    let mut lines = Vec::new();
    let mut line = |item: String, quantity: f64, unit: &'static str, usd: f64| {
        lines.push(CostLine {
            item,
            quantity,
            unit,
            usd,
        });
    };
    let m = |n: u64| n as f64 / 1e6;
    // Devices publishing to Basic Ingest topics (topologies firehose and kinesis) are not
    // metered as messages: the run counted no message units.
    let basic_ingest = u.iot_message_units == 0 && u.rule_triggers > 0;
    let action = match u.topology.as_str() {
        "firehose" => "Firehose",
        "kinesis" => "Kinesis",
        _ => "Lambda",
    };
    line(
        if basic_ingest {
            "IoT Core messaging (Basic Ingest: not charged)".into()
        } else {
            "IoT Core messaging".into()
        },
        u.iot_message_units as f64,
        "5 KB msgs",
        pr.iot_messaging.usd(u.iot_message_units as f64),
    );
    let conn_min = u.devices as f64 * u.seconds / 60.0;
    line(
        "IoT Core connectivity".into(),
        conn_min,
        "conn-min",
        conn_min / 1e6 * pr.iot_connectivity.usd,
    );
    line(
        format!("IoT rules triggered + {action} actions"),
        u.rule_units as f64,
        "5 KB rules",
        m(u.rule_units) * (pr.iot_rule_triggered.usd + pr.iot_action_executed.usd),
    );
    for f in functions {
        let usd = m(f.invocations) * pr.lambda_requests.usd
            + f.gb_seconds * pr.lambda_gb_second_arm64.usd;
        line(
            format!("Lambda {} ({} MB, arm64)", f.function, f.memory_size_mb),
            f.invocations as f64,
            "invocations",
            usd,
        );
    }
    let stream_hours = if u.no_kinesis_stream {
        0.0
    } else {
        u.seconds / 3600.0
    };
    line(
        "Kinesis on-demand stream".into(),
        stream_hours,
        "stream-hours",
        stream_hours * pr.kinesis_on_demand_stream_hour.usd,
    );
    let kin_in_gb = u.kinesis_kb_units as f64 * KINESIS_ON_DEMAND_UNIT_BYTES as f64 / GB;
    let kin_out_gb = u.kinesis_bytes_out as f64 / GB;
    line(
        "Kinesis data in/out".into(),
        kin_in_gb + kin_out_gb,
        "GB",
        kin_in_gb * pr.kinesis_on_demand_ingest.usd
            + kin_out_gb * pr.kinesis_on_demand_retrieval.usd,
    );
    let fh_gb = u.firehose_5kb_units as f64 * FIREHOSE_INGEST_UNIT_BYTES as f64 / GB;
    let fh_raw_gb = u.firehose_bytes as f64 / GB;
    line(
        "Firehose ingest + Parquet conversion".into(),
        fh_gb,
        "GB",
        fh_gb * (pr.firehose_ingest.usd + pr.firehose_format_conversion.usd),
    );
    line(
        "Firehose dynamic partitioning".into(),
        u.firehose_objects as f64,
        "objects",
        fh_raw_gb * pr.firehose_partitioning.usd
            + u.firehose_objects as f64 / 1000.0 * pr.firehose_partitioning_objects.usd,
    );
    line(
        "S3 PUT and LIST requests".into(),
        (u.s3_puts + u.s3_lists) as f64,
        "requests",
        (u.s3_puts + u.s3_lists) as f64 / 1000.0 * pr.s3_put.usd,
    );
    line(
        "S3 GET requests".into(),
        u.s3_gets as f64,
        "requests",
        u.s3_gets as f64 / 1000.0 * pr.s3_get.usd,
    );
    line(
        "SQS (rollup units queue)".into(),
        u.sqs_requests as f64,
        "requests",
        m(u.sqs_requests) * pr.sqs_requests.usd,
    );
    line(
        "EventBridge Scheduler".into(),
        u.scheduler_invocations as f64,
        "invocations",
        m(u.scheduler_invocations) * pr.scheduler.usd,
    );

    let total_usd: f64 = lines.iter().map(|l| l.usd).sum();
    let month_at_this_rate_usd = fleet.as_ref().map_or(0.0, |f| {
        fleet_cost::bill(
            p,
            fleet_cost::template_alarms(),
            &f.model(p.assumptions.freshness_s),
            f.topology,
        )
        .monthly_usd
    });
    let (month_fleet, no_month) = match fleet {
        Ok(f) => (Some(f), None),
        Err(why) => (None, Some(why)),
    };
    Estimate {
        lines,
        total_usd,
        month_at_this_rate_usd,
        month_fleet,
        no_month,
        prices_as_of: p.read_on(),
        topology: u.topology.clone(),
    }
}

impl Estimate {
    /// A plain-text table for the terminal: a title line, then per priced line the item,
    /// quantity, unit and USD, then the run's total and the month of its fleet, and what
    /// that month prices (or why there is none).
    pub fn to_table(&self) -> String {
        let mut t = Table::new(vec![
            Column::left("item"),
            Column::right("quantity"),
            Column::left("unit"),
            Column::right("USD"),
        ])
        .indent("  ");
        for l in &self.lines {
            t.row([
                l.item.clone(),
                format!("{:.2}", l.quantity),
                l.unit.to_string(),
                format!("${:.6}", l.usd),
            ]);
        }
        t.rule();
        t.row([
            "total for this run".to_string(),
            String::new(),
            String::new(),
            format!("${:.6}", self.total_usd),
        ]);
        if self.month_fleet.is_some() {
            t.row([
                "a 730-hour month of this fleet".to_string(),
                String::new(),
                String::new(),
                format!("${:.2}", self.month_at_this_rate_usd),
            ]);
        }
        let topology = if self.topology.is_empty() {
            String::new()
        } else {
            format!(", topology {}", self.topology)
        };
        let month = match (&self.month_fleet, &self.no_month) {
            (Some(f), _) => format!(
                "The month is the bill of the fleet this run showed, on `iotpipe cost`'s model \
                 (with the template's alarms, logs and schedules); the run's own figures scaled \
                 up would count the local Firehose's short buffer (--flush-every), the final \
                 rollup, or a replay's speed:\n  \
                 {} device(s) x {} msg/s (over {}, {:.1} s), {} B per message, \
                 {} reading(s), {} per publish\n  line by line: {}\n",
                f.devices, f.rate, f.over, f.over_s, f.payload_bytes, f.metrics, f.batch, f.command
            ),
            (None, Some(why)) => format!("No month priced: {why}.\n"),
            (None, None) => String::new(),
        };
        format!(
            "What this run would have cost on AWS{topology} (us-east-1 list prices of {}, no free \
             tier):\n{}{month}",
            self.prices_as_of,
            t.to_text()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> Usage {
        Usage {
            iot_message_units: 1_000_000,
            rule_triggers: 1_000_000,
            rule_units: 1_000_000,
            publish_bytes: 200_000_000,
            devices: 1000,
            seconds: 3600.0,
            topology: "per-message".into(),
            ..Default::default()
        }
    }

    fn traffic() -> Traffic {
        Traffic {
            messages: 1_000_000,
            accepted: 1_000_000,
            readings: 3_000_000,
        }
    }

    /// The USD of the line whose item starts with `prefix`.
    fn usd(e: &Estimate, prefix: &str) -> f64 {
        e.lines
            .iter()
            .find(|l| l.item.starts_with(prefix))
            .map(|l| l.usd)
            .unwrap()
    }

    #[test]
    fn a_million_messages_cost_what_the_price_table_says() {
        let u = usage();
        let p = crate::prices::embedded().unwrap();
        let e = estimate(p, &u, &[], Err("none".into()));
        assert!((usd(&e, "IoT Core messaging") - 1.0).abs() < 1e-9);
        assert!((usd(&e, "IoT rules") - 0.30).abs() < 1e-9);
        assert!((usd(&e, "Kinesis on-demand") - 0.04).abs() < 1e-9);
        assert_eq!(e.month_at_this_rate_usd, 0.0);
        assert_eq!(e.no_month.as_deref(), Some("none"));
        assert!(e.to_table().contains("No month priced: none."));

        // Rules are billed per 5 KB of each message, as IoT Core messaging is.
        let big = estimate(
            p,
            &Usage {
                rule_units: 3_000_000,
                ..u
            },
            &[],
            Err("none".into()),
        );
        assert!((usd(&big, "IoT rules") - 0.90).abs() < 1e-9);
    }

    #[test]
    fn the_month_is_the_models_bill_of_the_fleet_the_run_showed() {
        let p = crate::prices::embedded().unwrap();
        let u = usage();
        let f = run_fleet(&u, traffic(), u.seconds, "their publishing").unwrap();
        // 1,000,000 messages of 1,000 devices in an hour: 0.278 msg/s each.
        assert_eq!(
            (f.devices, f.rate, f.payload_bytes, f.batch, f.metrics),
            (1000, 0.278, 200, 1, 3)
        );
        assert_eq!(
            f.command,
            "iotpipe cost --devices 1000 --rate 0.278 --payload-bytes 200 --metrics 3 \
             --topology per-message"
        );
        let e = estimate(p, &u, &[], Ok(f.clone()));
        let model = fleet_cost::bill(
            p,
            fleet_cost::template_alarms(),
            &Fleet {
                devices: 1000,
                rate: 0.278,
                payload_bytes: 200,
                batch: 1,
                metrics: 3,
                arch: Arch::Arm64,
                freshness_s: p.assumptions.freshness_s,
            },
            Topology::PerMessage,
        );
        assert_eq!(e.month_at_this_rate_usd, model.monthly_usd);
        assert!(e.to_table().contains(&f.command));

        // The same messages in device batches of 10, JSON arrays: 100,000 publishes.
        let batched = Usage {
            rule_triggers: 100_000,
            publish_bytes: 100_000 * (10 * 200 + 11),
            ..usage()
        };
        let f = run_fleet(&batched, traffic(), 3600.0, "their publishing").unwrap();
        assert_eq!((f.payload_bytes, f.batch), (200, 10));
        assert!(f.command.contains(" --batch 10 "), "{}", f.command);

        // No fleet to price: no message, no topology, too short a span.
        let none = Traffic::default();
        assert!(run_fleet(&u, none, 3600.0, "their publishing").is_err());
        let other = Usage {
            topology: String::new(),
            ..usage()
        };
        assert!(run_fleet(&other, traffic(), 3600.0, "their publishing").is_err());
        assert!(run_fleet(&u, traffic(), 0.5, "the events' times").is_err());
    }

    #[test]
    fn rates_keep_three_significant_digits() {
        assert_eq!(significant3(0.277_777), 0.278);
        assert_eq!(significant3(12_345.0), 12_300.0);
        assert_eq!(significant3(1.0), 1.0);
        assert_eq!(significant3(0.0), 0.0);
    }
}

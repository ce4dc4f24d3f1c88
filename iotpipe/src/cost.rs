//! What a local run would have cost on AWS.
//!
//! Prices from the one price table, `infra/prices.toml` ([`crate::prices`]), which
//! `iotpipe cost` and `infra/cost.py` read too. No free tier is applied. The local run
//! counts exactly what AWS meters — messages in 5 KB units, Lambda invocations and billed
//! GB-seconds per function, Kinesis bytes in 1 KB units, Firehose bytes in 5 KB units, S3
//! PUTs — and this module prices them.

use analytics::render::{Column, Table};
use serde::Serialize;
use telemetry::metering::{FIREHOSE_INGEST_UNIT_BYTES, KINESIS_ON_DEMAND_UNIT_BYTES};

use local::meter::{FnReport, Usage};

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
    /// The run's variable cost scaled to a 730-hour month at the same rate, plus a month
    /// of the always-on stream.
    pub month_at_this_rate_usd: f64,
    /// Date of the price table (the oldest `read_on` of its prices).
    pub prices_as_of: String,
    /// The topology the run took (`firehose`, `per-message`; empty when not told).
    pub topology: String,
}

/// Prices a run from its usage and the metered functions.
pub fn estimate(p: &Prices, u: &Usage, functions: &[FnReport]) -> Estimate {
    let pr = &p.prices;
    let month_seconds = p.assumptions.hours_per_month * 3600.0;
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
        u.rule_triggers as f64,
        "rules",
        m(u.rule_triggers) * (pr.iot_rule_triggered.usd + pr.iot_action_executed.usd),
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
        "S3 PUT requests".into(),
        u.s3_puts as f64,
        "requests",
        u.s3_puts as f64 / 1000.0 * pr.s3_put.usd,
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
    let fixed_run = stream_hours * pr.kinesis_on_demand_stream_hour.usd;
    let scale = if u.seconds > 0.0 {
        month_seconds / u.seconds
    } else {
        0.0
    };
    let stream_month = if u.no_kinesis_stream {
        0.0
    } else {
        p.assumptions.hours_per_month * pr.kinesis_on_demand_stream_hour.usd
    };
    let month_at_this_rate_usd = (total_usd - fixed_run) * scale + stream_month;
    Estimate {
        lines,
        total_usd,
        month_at_this_rate_usd,
        prices_as_of: p.read_on(),
        topology: u.topology.clone(),
    }
}

impl Estimate {
    /// A plain-text table for the terminal: a title line, then per priced line the item,
    /// quantity, unit and USD, then the run's total and the month at this rate.
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
        t.row([
            "a 730-hour month at this rate".to_string(),
            String::new(),
            String::new(),
            format!("${:.2}", self.month_at_this_rate_usd),
        ]);
        let topology = if self.topology.is_empty() {
            String::new()
        } else {
            format!(", topology {}", self.topology)
        };
        format!(
            "What this run would have cost on AWS{topology} (us-east-1 list prices of {}, no free \
             tier):\n{}",
            self.prices_as_of,
            t.to_text()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_messages_cost_what_the_price_table_says() {
        let u = Usage {
            iot_message_units: 1_000_000,
            rule_triggers: 1_000_000,
            seconds: 3600.0,
            ..Default::default()
        };
        let p = crate::prices::embedded().unwrap();
        let e = estimate(p, &u, &[]);
        let msg = e
            .lines
            .iter()
            .find(|l| l.item == "IoT Core messaging")
            .unwrap();
        assert!((msg.usd - 1.0).abs() < 1e-9);
        let rules = e
            .lines
            .iter()
            .find(|l| l.item.starts_with("IoT rules"))
            .unwrap();
        assert!((rules.usd - 0.30).abs() < 1e-9);
        let stream = e
            .lines
            .iter()
            .find(|l| l.item.starts_with("Kinesis on-demand"))
            .unwrap();
        assert!((stream.usd - 0.04).abs() < 1e-9);
        // A month at the rate of one hour: 730 × the variable part + 730 stream-hours.
        assert!((e.month_at_this_rate_usd - (730.0 * 1.30 + 730.0 * 0.04)).abs() < 1e-6);

        // Straight into Firehose: no stream to pay for.
        let direct = estimate(
            p,
            &Usage {
                no_kinesis_stream: true,
                ..u
            },
            &[],
        );
        assert!((direct.month_at_this_rate_usd - 730.0 * 1.30).abs() < 1e-6);
    }
}

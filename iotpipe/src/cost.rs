//! What a local run would have cost on AWS.
//!
//! us-east-1 list prices, the same table as `infra/cost.py` (which prices a planned
//! deployment for `infra/deploy.sh --dry-run`); keep the two in step when a price changes.
//! No free tier is applied. The local run counts exactly what AWS meters — messages in
//! 5 KB units, Lambda invocations and billed GB-seconds per function, Kinesis bytes in
//! 1 KB units, Firehose bytes in 5 KB units, S3 PUTs — and this module prices them.

use analytics::render::{Column, Table};
use serde::Serialize;
use telemetry::metering::{FIREHOSE_INGEST_UNIT_BYTES, KINESIS_ON_DEMAND_UNIT_BYTES};

use local::meter::{FnReport, Usage};

/// The date the prices below were taken.
pub const PRICES_AS_OF: &str = "2025-11-25";
/// IoT Core messaging, per million 5 KB message units (first billion).
pub const IOT_MESSAGE_PER_MILLION: f64 = 1.00;
/// IoT Core connectivity, per million connection-minutes.
pub const IOT_CONNECT_PER_MILLION_MIN: f64 = 0.08;
/// IoT rules triggered, per million (5 KB units).
pub const IOT_RULE_PER_MILLION: f64 = 0.15;
/// IoT rule actions executed, per million (5 KB units).
pub const IOT_ACTION_PER_MILLION: f64 = 0.15;
/// Lambda requests, per million.
pub const LAMBDA_REQUEST_PER_MILLION: f64 = 0.20;
/// Lambda compute on arm64, per GB-second.
pub const LAMBDA_GB_SECOND_ARM64: f64 = 0.000_013_333_4;
/// Kinesis on-demand, per stream-hour.
pub const KINESIS_STREAM_HOUR: f64 = 0.04;
/// Kinesis on-demand data in, per GB (each record rounded up to 1 KB).
pub const KINESIS_INGEST_GB: f64 = 0.08;
/// Kinesis on-demand data out, per GB.
pub const KINESIS_RETRIEVAL_GB: f64 = 0.04;
/// Firehose ingestion, per GB (each record rounded up to 5 KB).
pub const FIREHOSE_INGEST_GB: f64 = 0.029;
/// Firehose JSON → Parquet conversion, per GB ingested.
pub const FIREHOSE_CONVERSION_GB: f64 = 0.018;
/// Firehose dynamic partitioning, per GB processed.
pub const FIREHOSE_PARTITIONING_GB: f64 = 0.020;
/// Firehose dynamic partitioning, per 1,000 objects delivered.
pub const FIREHOSE_PARTITIONING_PER_1000_OBJECTS: f64 = 0.005;
/// S3 PUT/COPY/POST/LIST requests, per 1,000.
pub const S3_PUT_PER_1000: f64 = 0.005;
/// EventBridge Scheduler invocations, per million.
pub const SCHEDULER_PER_MILLION: f64 = 1.00;

const GB: f64 = 1024.0 * 1024.0 * 1024.0;
/// Seconds in the AWS pricing month (730 hours).
pub const MONTH_SECONDS: f64 = 730.0 * 3600.0;

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
    /// Date of the price table.
    pub prices_as_of: &'static str,
}

/// Prices a run from its usage and the metered functions.
pub fn estimate(u: &Usage, functions: &[FnReport]) -> Estimate {
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
    line(
        "IoT Core messaging".into(),
        u.iot_message_units as f64,
        "5 KB msgs",
        m(u.iot_message_units) * IOT_MESSAGE_PER_MILLION,
    );
    let conn_min = u.devices as f64 * u.seconds / 60.0;
    line(
        "IoT Core connectivity".into(),
        conn_min,
        "conn-min",
        conn_min / 1e6 * IOT_CONNECT_PER_MILLION_MIN,
    );
    line(
        "IoT rules triggered + actions".into(),
        u.rule_triggers as f64,
        "rules",
        m(u.rule_triggers) * (IOT_RULE_PER_MILLION + IOT_ACTION_PER_MILLION),
    );
    for f in functions {
        let usd =
            m(f.invocations) * LAMBDA_REQUEST_PER_MILLION + f.gb_seconds * LAMBDA_GB_SECOND_ARM64;
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
        stream_hours * KINESIS_STREAM_HOUR,
    );
    let kin_in_gb = u.kinesis_kb_units as f64 * KINESIS_ON_DEMAND_UNIT_BYTES as f64 / GB;
    let kin_out_gb = u.kinesis_bytes_out as f64 / GB;
    line(
        "Kinesis data in/out".into(),
        kin_in_gb + kin_out_gb,
        "GB",
        kin_in_gb * KINESIS_INGEST_GB + kin_out_gb * KINESIS_RETRIEVAL_GB,
    );
    let fh_gb = u.firehose_5kb_units as f64 * FIREHOSE_INGEST_UNIT_BYTES as f64 / GB;
    let fh_raw_gb = u.firehose_bytes as f64 / GB;
    line(
        "Firehose ingest + Parquet conversion".into(),
        fh_gb,
        "GB",
        fh_gb * (FIREHOSE_INGEST_GB + FIREHOSE_CONVERSION_GB),
    );
    line(
        "Firehose dynamic partitioning".into(),
        u.firehose_objects as f64,
        "objects",
        fh_raw_gb * FIREHOSE_PARTITIONING_GB
            + u.firehose_objects as f64 / 1000.0 * FIREHOSE_PARTITIONING_PER_1000_OBJECTS,
    );
    line(
        "S3 PUT requests".into(),
        u.s3_puts as f64,
        "requests",
        u.s3_puts as f64 / 1000.0 * S3_PUT_PER_1000,
    );
    line(
        "EventBridge Scheduler".into(),
        u.scheduler_invocations as f64,
        "invocations",
        m(u.scheduler_invocations) * SCHEDULER_PER_MILLION,
    );

    let total_usd: f64 = lines.iter().map(|l| l.usd).sum();
    let fixed_run = stream_hours * KINESIS_STREAM_HOUR;
    let scale = if u.seconds > 0.0 {
        MONTH_SECONDS / u.seconds
    } else {
        0.0
    };
    let stream_month = if u.no_kinesis_stream {
        0.0
    } else {
        MONTH_SECONDS / 3600.0 * KINESIS_STREAM_HOUR
    };
    let month_at_this_rate_usd = (total_usd - fixed_run) * scale + stream_month;
    Estimate {
        lines,
        total_usd,
        month_at_this_rate_usd,
        prices_as_of: PRICES_AS_OF,
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
        format!(
            "What this run would have cost on AWS (us-east-1 list prices of {}, no free tier):\n{}",
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
        let e = estimate(&u, &[]);
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
            &Usage {
                no_kinesis_stream: true,
                ..u
            },
            &[],
        );
        assert!((direct.month_at_this_rate_usd - 730.0 * 1.30).abs() < 1e-6);
    }
}

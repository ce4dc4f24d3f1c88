//! The price table, `infra/prices.toml`, compiled in: the one copy every bill of the
//! project reads (`iotpipe cost`, the end-of-run bill of `up`/`replay`, and — from the same
//! file — `infra/cost.py` behind `infra/deploy.sh --dry-run`).
//!
//! Each price keeps the page it comes from and the date it was read; the assumptions
//! (milliseconds per invocation, bytes per row, …) sit in the same file because both
//! estimators use them.

use std::sync::LazyLock;

use serde::Deserialize;

/// The text of `infra/prices.toml`, as built into this binary.
pub const PRICES_TOML: &str = include_str!("../../infra/prices.toml");

/// One list price.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Price {
    /// USD per [`Price::per`].
    pub usd: f64,
    /// The unit the price is for (e.g. "million requests").
    pub per: String,
    /// The AWS pricing page it was read on.
    pub source: String,
    /// The date it was read there (YYYY-MM-DD).
    pub read_on: String,
}

/// A price in tiers (IoT Core messaging).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TieredPrice {
    /// (quantity in the tier, USD per million), in order; the last tier is unbounded.
    pub tiers: Vec<(f64, f64)>,
    /// The unit of the quantity.
    pub per: String,
    /// The AWS pricing page it was read on.
    pub source: String,
    /// The date it was read there.
    pub read_on: String,
}

impl TieredPrice {
    /// USD for `quantity` units in one month, filling the tiers in order.
    pub fn usd(&self, quantity: f64) -> f64 {
        let mut left = quantity;
        let mut usd = 0.0;
        for &(size, per_million) in &self.tiers {
            if left <= 0.0 {
                break;
            }
            let take = left.min(size);
            usd += take / 1e6 * per_million;
            left -= take;
        }
        usd
    }
}

/// Every price of the table, by name (a missing one fails the table's parse test).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[allow(missing_docs)] // each price is documented in infra/prices.toml, with its source
pub struct PriceList {
    pub iot_connectivity: Price,
    pub iot_messaging: TieredPrice,
    pub iot_rule_triggered: Price,
    pub iot_action_executed: Price,
    pub lambda_requests: Price,
    pub lambda_gb_second_arm64: Price,
    pub lambda_gb_second_x86_64: Price,
    pub kinesis_on_demand_stream_hour: Price,
    pub kinesis_on_demand_ingest: Price,
    pub kinesis_on_demand_retrieval: Price,
    pub firehose_ingest: Price,
    pub firehose_format_conversion: Price,
    pub firehose_partitioning: Price,
    pub firehose_partitioning_objects: Price,
    pub s3_storage: Price,
    pub s3_put: Price,
    pub s3_get: Price,
    pub cloudwatch_logs_ingest: Price,
    pub cloudwatch_logs_storage: Price,
    pub cloudwatch_alarm: Price,
    pub scheduler: Price,
    pub sqs_requests: Price,
    pub kms_requests: Price,
    pub always_on_instance: Price,
    pub always_on_disk: Price,
}

/// How the pipeline uses the services: not prices, but both estimators need them (each is
/// described in `infra/prices.toml`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[allow(missing_docs)] // each assumption is documented in infra/prices.toml
pub struct Assumptions {
    pub hours_per_month: f64,
    pub stream_overhead_bytes: f64,
    pub row_json_bytes: f64,
    pub parquet_bytes_per_row: f64,
    pub stats_bytes_per_row: f64,
    pub ingest_ms: f64,
    pub ingest_us_per_message: f64,
    pub ingest_log_bytes: f64,
    pub kinesis_shards: f64,
    pub transform_ms_per_mib: f64,
    pub transform_batch_mib: f64,
    pub rollup_base_ms: f64,
    pub rollup_us_per_row: f64,
    pub compact_base_ms: f64,
    pub compact_us_per_row: f64,
    pub report_ms: f64,
    pub job_log_bytes: f64,
    pub log_days_stored: f64,
    pub freshness_s: f64,
    pub firehose_buffer_min_s: f64,
    pub firehose_buffer_max_s: f64,
    pub partitioning_delay_factor: f64,
    pub processor_buffer_s: f64,
    pub freshness_overhead_s: f64,
    pub sqs_requests_per_object: f64,
    pub kms_callers: f64,
    pub always_on_disk_gb: f64,
    pub always_on_max_msg_per_s: f64,
}

/// The whole table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Prices {
    /// The AWS region the prices are for.
    pub region: String,
    /// The prices.
    pub prices: PriceList,
    /// The usage assumptions.
    pub assumptions: Assumptions,
}

impl Prices {
    /// Parses a price table in the format of `infra/prices.toml`.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            format!("the price table infra/prices.toml does not parse (fix it, then rebuild): {e}")
        })
    }

    /// The oldest `read_on` date of the table: the bill is as current as this.
    pub fn read_on(&self) -> String {
        let p = &self.prices;
        [
            &p.iot_connectivity,
            &p.iot_rule_triggered,
            &p.lambda_requests,
            &p.kinesis_on_demand_stream_hour,
            &p.firehose_ingest,
            &p.s3_put,
            &p.always_on_instance,
        ]
        .iter()
        .map(|x| x.read_on.clone())
        .chain(std::iter::once(p.iot_messaging.read_on.clone()))
        .min()
        .unwrap_or_default()
    }
}

static EMBEDDED: LazyLock<Result<Prices, String>> = LazyLock::new(|| Prices::parse(PRICES_TOML));

/// The table built into this binary (`infra/prices.toml` at build time).
pub fn embedded() -> Result<&'static Prices, String> {
    EMBEDDED.as_ref().map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_price_table_parses_and_every_price_names_its_source_and_date() {
        let p = embedded().unwrap();
        assert_eq!(p.region, "us-east-1");
        let v: toml::Value = toml::from_str(PRICES_TOML).unwrap();
        let table = v["prices"].as_table().unwrap();
        assert!(table.len() >= 24);
        for (name, price) in table {
            let src = price["source"].as_str().unwrap_or_default();
            assert!(src.starts_with("https://aws.amazon.com/"), "{name}: {src}");
            let date = price["read_on"].as_str().unwrap_or_default();
            assert!(
                chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
                "{name}: read_on {date:?}"
            );
        }
    }

    #[test]
    fn iot_messaging_fills_its_tiers_in_order() {
        let p = &embedded().unwrap().prices.iot_messaging;
        assert!((p.usd(1e6) - 1.00).abs() < 1e-12);
        // 1 billion at $1.00/M, then 1 billion at $0.80/M.
        assert!((p.usd(2e9) - (1000.0 + 800.0)).abs() < 1e-6);
        // 6 billion: 1 B × 1.00 + 4 B × 0.80 + 1 B × 0.70.
        assert!((p.usd(6e9) - (1000.0 + 3200.0 + 700.0)).abs() < 1e-6);
    }
}

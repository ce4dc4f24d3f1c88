//! The object layout of the data location: every key prefix the pipeline writes or reads,
//! defined once.
//!
//! ```text
//! telemetry/dt=YYYY-MM-DD/hour=HH/…                    Parquet readings (by event time)
//! stats/window=1m|1h/dt=YYYY-MM-DD/hour=HH/*.parquet   per-device aggregates
//! stats/window=1d/dt=YYYY-MM-DD/*.parquet              per-device daily aggregates
//! stats/fleet/window=…/…                              the same, fleet-wide (device `*`)
//! stats/_checkpoint/rollup.json                        which inputs the rollup has aggregated
//! quarantine/dt=YYYY-MM-DD/hour=HH/…jsonl              rejected payloads (by receive time)
//! errors/processing-failed/…                           Firehose's error output prefix
//! errors/iot/YYYY-MM-DD/<receive ms>-<id>.json         the IoT rule's error action
//! _checkpoint/kinesis/<stream>/<shard>                 Kinesis read-back positions
//! ```
//!
//! Folders starting with `_` are skipped by Athena, Hive and Spark, so checkpoints never
//! show up as table data. Deployed functions may configure other prefixes (environment
//! variables); these are the defaults and the local layout.

// The literal segments, as macros so that the composite constants below are built from
// them with `concat!` and each segment is spelled once.
macro_rules! telemetry_segment {
    () => {
        "telemetry"
    };
}
macro_rules! stats_segment {
    () => {
        "stats"
    };
}
macro_rules! checkpoint_segment {
    () => {
        "_checkpoint"
    };
}

/// Key prefix of the telemetry Parquet files (`telemetry/dt=…/hour=…/`).
pub const TELEMETRY_PREFIX: &str = telemetry_segment!();

/// Key prefix of the statistics (`stats/window=…/dt=…/hour=…/stats.parquet`).
pub const STATS_PREFIX: &str = stats_segment!();

/// Key prefix of quarantined payloads (`quarantine/dt=…/hour=…/`, by receive time).
pub const QUARANTINE_PREFIX: &str = "quarantine";

/// Firehose's error output prefix: records the processor answered `ProcessingFailed` (or
/// that could not be converted), as the template configures it.
pub const PROCESSING_FAILED_PREFIX: &str = "errors/processing-failed";

/// The local stand-in for the ingest function's dead-letter queue: the events of failed
/// ingest invocations (a sink outage), one quarantine-format record per payload with reason
/// `sink_failed`, by receive time. `iotpipe requeue` reads them back; the ledger does not
/// (until requeued, their messages are missing).
pub const INGEST_FAILED_PREFIX: &str = "errors/ingest-failed";

/// The IoT topic rule's error action: one object per message whose rule action (the
/// Firehose, Kinesis or Lambda action) failed, in AWS IoT's error-action message format
/// ([`crate::rule_record::RuleError`]), at `errors/iot/YYYY-MM-DD/<receive ms>-<id>.json`
/// (infra/template.yaml's `ErrorAction`). `iotpipe requeue` reads them back.
pub const RULE_ERROR_PREFIX: &str = "errors/iot";

/// The folder name of checkpoints. Starts with `_` so that query engines skip it.
pub const CHECKPOINT_DIR: &str = checkpoint_segment!();

/// Folder of the rollup's per-unit state and leases. Under `stats/` so that one bucket
/// policy covers the rollup's writes; the `_` folder is skipped by Athena and Hive, and the
/// query library only reads `stats/window=…/`.
pub const ROLLUP_STATE_PREFIX: &str = concat!(stats_segment!(), "/_state");

/// Folder of the new-object markers the local Firehose leaves for the rollup's planner.
pub const ROLLUP_PENDING_PREFIX: &str = concat!(stats_segment!(), "/_pending");

/// Folder of the run records `iotpipe up`/`replay` write for the dashboard.
pub const RUNS_PREFIX: &str = "_runs";

/// Folder of the dashboard's pages in the bucket.
pub const DASHBOARD_PREFIX: &str = "dashboard";

/// Key prefix of the Kinesis read-back checkpoints (`_checkpoint/kinesis/<stream>/<shard>`).
pub const KINESIS_CHECKPOINT_PREFIX: &str = concat!(checkpoint_segment!(), "/kinesis");

/// The key segment naming a stats file's window: `window={label}`.
pub const WINDOW_KEY: &str = "window";

/// The file name of a stats file within its partition folder.
pub const STATS_FILE_NAME: &str = "stats.parquet";

/// The folder, under the stats prefix, of the fleet-wide statistics
/// (`stats/fleet/window=…/…`): the same columns and file layout as the per-device ones,
/// with [`FLEET_DEVICE_ID`] as the device.
pub const FLEET_SEGMENT: &str = "fleet";

/// The `device_id` of a fleet-wide row (all devices of a metric): `*`, which no AWS IoT
/// thing name can be.
pub const FLEET_DEVICE_ID: &str = "*";

/// `{stats_prefix}/fleet`: where the fleet-wide statistics live.
pub fn fleet_prefix(stats_prefix: &str) -> String {
    join(stats_prefix, FLEET_SEGMENT)
}

/// The key of a day's stats file (windows of a day or longer, partitioned by date only):
/// `{stats_prefix}/window={window}/dt=YYYY-MM-DD/stats.parquet`.
pub fn stats_day_path(stats_prefix: &str, window: &str, dt: &str) -> String {
    format!(
        "{}/{}={dt}/{STATS_FILE_NAME}",
        window_prefix(stats_prefix, window),
        crate::partition::DT_KEY
    )
}

/// `{prefix}/{rest}`, ignoring slashes around `prefix`; `rest` alone when the prefix is
/// empty (the store's root).
pub fn join(prefix: &str, rest: &str) -> String {
    match prefix.trim_matches('/') {
        "" => rest.to_string(),
        p => format!("{p}/{rest}"),
    }
}

/// The folder holding every stats file of the window labelled `window` (`1m`, `1h`, `1d`):
/// `{stats_prefix}/window={window}`.
pub fn window_prefix(stats_prefix: &str, window: &str) -> String {
    join(stats_prefix, &format!("{WINDOW_KEY}={window}"))
}

/// The key of the stats file of `window` for `partition`:
/// `{stats_prefix}/window={window}/dt=…/hour=…/stats.parquet`.
pub fn stats_path(stats_prefix: &str, window: &str, partition: &crate::Partition) -> String {
    format!(
        "{}/{}/{STATS_FILE_NAME}",
        window_prefix(stats_prefix, window),
        partition.path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Partition;

    #[test]
    fn the_composite_keys_are_built_from_the_single_segments() {
        assert_eq!(ROLLUP_STATE_PREFIX, "stats/_state");
        assert_eq!(ROLLUP_PENDING_PREFIX, "stats/_pending");
        assert_eq!(KINESIS_CHECKPOINT_PREFIX, "_checkpoint/kinesis");
        assert_eq!(TELEMETRY_PREFIX, "telemetry");
    }

    #[test]
    fn stats_keys_follow_the_layout_whatever_the_prefix_slashes() {
        let p = Partition::of_millis(0);
        for prefix in ["stats", "stats/", "/stats/"] {
            assert_eq!(
                stats_path(prefix, "1m", &p),
                "stats/window=1m/dt=1970-01-01/hour=00/stats.parquet"
            );
        }
        assert_eq!(window_prefix("", "1h"), "window=1h");
        assert_eq!(
            stats_day_path(&fleet_prefix("stats/"), "1d", "2026-11-25"),
            "stats/fleet/window=1d/dt=2026-11-25/stats.parquet"
        );
    }
}

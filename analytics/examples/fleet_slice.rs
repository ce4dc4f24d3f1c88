//! Writes a slice of a large fleet's telemetry straight to Parquet, fast, for the scale
//! benchmark (issue 13: 100,000 devices): `MINUTES` minutes of `DEVICES` devices sending one
//! message a minute with four metrics (like the 10,000-device benchmark's mix), starting at
//! 2026-11-25T12:00:00Z, as `FILES` objects of the hour with their pending markers.
//!
//! ```text
//! cargo build --workspace --examples
//! target/debug/examples/fleet_slice DATA DEVICES MINUTES [FILES]
//! target/debug/examples/rollup_dir DATA 16 1          # then measure the rollup
//! ```
//! A unit's memory depends on the readings of its bucket, so a short slice of a large
//! fleet measures the per-unit peak of a full hour at (hour / slice) × fewer devices.

use std::sync::Arc;

use object_store::ObjectStore;
use parquet::basic::Compression;
use telemetry::Reading;

const MINUTE: i64 = 60_000;
/// 2026-11-25T12:00:00Z.
const START_MS: i64 = 1_795_608_000_000;
const METRICS: [&str; 4] = ["temperature", "humidity", "battery", "pressure"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: fleet_slice DATA DEVICES MINUTES [FILES]";
    let mut args = std::env::args().skip(1);
    let data = args.next().ok_or(usage)?;
    let devices: usize = args.next().ok_or(usage)?.parse()?;
    let minutes: i64 = args.next().ok_or(usage)?.parse()?;
    let files: i64 = args.next().map_or(Ok(minutes), |a| a.parse())?;
    if devices == 0 || !(1..=60).contains(&minutes) || files < 1 || files > minutes * 60 {
        return Err(format!("{usage}: 1 ≤ MINUTES ≤ 60, 1 ≤ FILES ≤ 60 × MINUTES").into());
    }
    let store: Arc<dyn ObjectStore> = analytics::config::local_store(Some(data.into()))?;
    let cfg = analytics::RollupConfig::default();
    let span = minutes * MINUTE / files;
    let mut rows = 0;
    // Each object holds the messages whose event time falls in its span of the slice.
    for f in 0..files {
        let (from, to) = (START_MS + f * span, START_MS + (f + 1) * span);
        let mut readings = Vec::new();
        for d in 0..devices {
            let device_id = format!("sensor-{d:06}");
            let offset = (d as i64 * 997) % MINUTE;
            for m in 0..minutes {
                let event_time = START_MS + m * MINUTE + offset;
                if event_time < from || event_time >= to {
                    continue;
                }
                for (i, metric) in METRICS.iter().enumerate() {
                    readings.push(Reading {
                        device_id: device_id.clone(),
                        seq: m,
                        event_time,
                        received_at: event_time + 1_500,
                        metric: (*metric).to_string(),
                        value: ((d as i64 * 31 + m * 7 + i as i64) % 1000) as f64 * 0.1,
                        fw: Some("1.4.2".to_string()),
                    });
                }
            }
        }
        rows += readings.len();
        let path = format!(
            "{}/{}/slice-{f:04}.parquet",
            cfg.telemetry_prefix.trim_matches('/'),
            telemetry::Partition::of_millis(from).path()
        );
        let batch = telemetry::schema::readings_to_batch(&readings)?;
        drop(readings);
        telemetry::parquet_writer::write_single(
            store.clone(),
            &path,
            &[batch],
            telemetry::schema::telemetry_schema(),
            Compression::ZSTD(Default::default()),
        )
        .await?;
        analytics::pending::mark(&store, &cfg.pending_prefix, &path).await?;
    }
    eprintln!("{devices} devices × {minutes} min: {rows} readings in {files} objects");
    Ok(())
}

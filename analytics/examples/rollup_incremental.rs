//! The 30-day incremental benchmark (issue 13, item 3): does an incremental rollup cost
//! the same on a deployment's 30th day as on its first, for the same new data?
//!
//! ```text
//! cargo build --workspace --examples
//! target/debug/examples/rollup_incremental DATA [DEVICES] [DAYS] [BUCKETS]
//! ```
//! (`bench/rollup_incremental.sh` runs it in a temporary directory.) It writes `DAYS`
//! (default 30) simulated days of telemetry for `DEVICES` (default 100) devices, one
//! message a minute with two metrics, as Firehose would with a 5-minute buffer: one
//! Parquet object per 5 minutes, each with its pending marker. After each day it runs
//! the rollup. On the first and the last day it holds back the day's last 5 minutes, runs
//! the rollup, then writes them and measures the incremental rollup of just those 5
//! minutes: wall time, peak RSS (the kernel's high-water mark, reset before the run
//! through `/proc/self/clear_refs`) and the object-store requests by S3 class
//! ([`analytics::requests::CountingStore`]). One JSON line per day, then one per
//! measurement, on stdout.

use std::sync::Arc;
use std::time::Instant;

use analytics::requests::CountingStore;
use object_store::ObjectStore;
use parquet::basic::Compression;
use telemetry::Reading;

const MINUTE: i64 = 60_000;
/// Minutes per Firehose object (the buffer interval the benchmark assumes).
const SLOT_MINUTES: i64 = 5;
const SLOTS_PER_DAY: i64 = 24 * 60 / SLOT_MINUTES;
/// 2026-10-01T00:00:00Z: day 1.
const START_MS: i64 = 1_790_812_800_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: rollup_incremental DATA [DEVICES] [DAYS] [BUCKETS]";
    let mut args = std::env::args().skip(1);
    let data = args.next().ok_or(usage)?;
    let devices: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let days: i64 = args.next().map_or(Ok(30), |a| a.parse())?;
    let mut cfg = analytics::RollupConfig::default();
    if let Some(b) = args.next() {
        cfg.buckets = b.parse()?;
    }
    if days < 1 || devices < 1 {
        return Err(usage.into());
    }
    let plain = analytics::config::local_store(Some(data.into()))?;
    let counting = CountingStore::new(plain.clone());
    let store: Arc<dyn ObjectStore> = Arc::new(counting.clone());

    let mut objects = 0;
    for day in 0..days {
        let measured = day == 0 || day == days - 1;
        let held_back = usize::from(measured);
        let slots: Vec<i64> = (0..SLOTS_PER_DAY).collect();
        let (now, later) = slots.split_at(slots.len() - held_back);
        for &slot in now {
            write_slot(&plain, &cfg, devices, day * SLOTS_PER_DAY + slot).await?;
            objects += 1;
        }
        counting.reset();
        let started = Instant::now();
        let report = analytics::run_rollup(store.clone(), &cfg).await?;
        emit(&serde_json::json!({
                "day": day + 1,
                "telemetry_objects": objects,
                "daily_run_secs": started.elapsed().as_secs_f64(),
                "daily_run_requests": counting.counts(),
                "units_done": report.units_done,
        }))?;
        for &slot in later {
            write_slot(&plain, &cfg, devices, day * SLOTS_PER_DAY + slot).await?;
            objects += 1;
            reset_peak_rss();
            counting.reset();
            let started = Instant::now();
            let report = analytics::run_rollup(store.clone(), &cfg).await?;
            emit(&serde_json::json!({
                    "measure": "incremental run after 5 minutes of new data",
                    "day": day + 1,
                    "devices": devices,
                    "buckets": cfg.buckets,
                    "telemetry_objects": objects,
                    "secs": started.elapsed().as_secs_f64(),
                    "peak_rss_kb": peak_rss_kb(),
                    "requests": counting.counts(),
                    "files_scanned": report.files_scanned,
                    "units_done": report.units_done,
                    "rows_read": report.rows_read,
                    "stats_files_written": report.stats_files_written,
            }))?;
        }
    }
    Ok(())
}

/// Writes slot `slot` (5 minutes from `START_MS`) of every device as one telemetry object
/// with its pending marker, as the Firehose emulation does.
async fn write_slot(
    store: &Arc<dyn ObjectStore>,
    cfg: &analytics::RollupConfig,
    devices: usize,
    slot: i64,
) -> Result<(), Box<dyn std::error::Error>> {
    let from = START_MS + slot * SLOT_MINUTES * MINUTE;
    let mut readings = Vec::with_capacity(devices * SLOT_MINUTES as usize * 2);
    for d in 0..devices {
        let device_id = format!("sensor-{d:06}");
        for m in 0..SLOT_MINUTES {
            let seq = slot * SLOT_MINUTES + m;
            // Each device sends at its own second of the minute.
            let event_time = from + m * MINUTE + (d as i64 * 997) % MINUTE;
            for (metric, value) in [
                ("temperature", 20.0 + ((seq + d as i64) % 50) as f64 * 0.1),
                ("humidity", 40.0 + ((seq * 7 + d as i64) % 30) as f64 * 0.5),
            ] {
                readings.push(Reading {
                    device_id: device_id.clone(),
                    seq,
                    event_time,
                    received_at: event_time + 1_500,
                    metric: metric.to_string(),
                    value,
                    fw: Some("1.4.2".to_string()),
                });
            }
        }
    }
    let partition = telemetry::Partition::of_millis(from);
    let path = format!(
        "{}/{}/slot-{slot:06}.parquet",
        cfg.telemetry_prefix.trim_matches('/'),
        partition.path()
    );
    let batch = telemetry::schema::readings_to_batch(&readings)?;
    telemetry::parquet_writer::write_single(
        store.clone(),
        &path,
        &[batch],
        telemetry::schema::telemetry_schema(),
        Compression::SNAPPY,
    )
    .await?;
    analytics::pending::mark(store, &cfg.pending_prefix, &path).await?;
    Ok(())
}

/// One JSON line on stdout (the benchmark's output, read by `bench/rollup_incremental.sh`).
fn emit(v: &serde_json::Value) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{v}")
}

/// Resets the kernel's peak-RSS mark (`VmHWM`) of this process: `5` in `clear_refs`.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS ({e}): peak_rss_kb is the process's peak");
    }
}

/// The process's peak RSS since the last reset, in KiB (`VmHWM`, what Lambda reports as
/// Max Memory Used).
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

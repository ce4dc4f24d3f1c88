//! Helpers shared by the integration tests: telemetry files in an in-memory store.
#![allow(dead_code)] // Each test crate uses a different subset.

use std::collections::BTreeMap;
use std::sync::Arc;

use analytics::WindowStats;
use analytics::schema::stats_from_batch;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use telemetry::parquet::basic::Compression;
use telemetry::parquet_writer::write_single;
use telemetry::schema::{readings_to_batch, telemetry_schema};
use telemetry::{Partition, Reading};

/// 2026-11-25T16:00:00Z.
pub const H16: i64 = 1_795_622_400_000;
/// One hour earlier.
pub const H15: i64 = H16 - HOUR;
pub const HOUR: i64 = 3_600_000;
pub const MINUTE: i64 = 60_000;
pub const SECOND: i64 = 1_000;

pub fn store() -> Arc<dyn ObjectStore> {
    Arc::new(InMemory::new())
}

pub fn reading(device: &str, seq: i64, event_time: i64, metric: &str, value: f64) -> Reading {
    Reading {
        device_id: device.into(),
        seq,
        event_time,
        received_at: event_time + 250,
        metric: metric.into(),
        value,
        fw: Some("1.4.2".into()),
    }
}

/// Writes `readings` as one telemetry Parquet file named `name` in the hour partition of
/// the first reading, and returns its key.
pub async fn put_file(store: &Arc<dyn ObjectStore>, name: &str, readings: &[Reading]) -> String {
    let partition = Partition::of_millis(readings[0].event_time);
    let path = format!("telemetry/{}/{name}", partition.path());
    let batch = readings_to_batch(readings).unwrap();
    write_single(
        store.clone(),
        &path,
        &[batch],
        telemetry_schema(),
        Compression::SNAPPY,
    )
    .await
    .unwrap();
    path
}

/// Puts raw bytes at `path`.
pub async fn put_raw(store: &Arc<dyn ObjectStore>, path: &str, bytes: &'static [u8]) {
    store
        .put(&Path::from(path), PutPayload::from_static(bytes))
        .await
        .unwrap();
}

/// Every object with its ETag and modification time: equal snapshots mean nothing was
/// written in between.
pub async fn snapshot(store: &Arc<dyn ObjectStore>) -> BTreeMap<String, (Option<String>, i64)> {
    let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
    listed
        .into_iter()
        .map(|m| {
            (
                m.location.to_string(),
                (m.e_tag, m.last_modified.timestamp_nanos_opt().unwrap()),
            )
        })
        .collect()
}

/// The stats file of the hour starting at `hour_ms`.
pub fn stats_path(hour_ms: i64) -> String {
    format!(
        "stats/window=1m/{}/stats.parquet",
        Partition::of_millis(hour_ms).path()
    )
}

/// The rows of the stats file of the hour starting at `hour_ms`.
pub async fn read_stats(store: &Arc<dyn ObjectStore>, hour_ms: i64) -> Vec<WindowStats> {
    let meta = store.head(&Path::from(stats_path(hour_ms))).await.unwrap();
    let batches = analytics::io::read_parquet(store, &meta, None)
        .await
        .unwrap();
    batches
        .iter()
        .flat_map(|b| stats_from_batch(b).unwrap())
        .collect()
}

/// The one row of `rows` for (`device`, `metric`, `window_start`).
pub fn row<'a>(
    rows: &'a [WindowStats],
    device: &str,
    metric: &str,
    window_start: i64,
) -> &'a WindowStats {
    rows.iter()
        .find(|r| r.device_id == device && r.metric == metric && r.window_start == window_start)
        .unwrap_or_else(|| panic!("no row for {device} {metric} {window_start} in {rows:#?}"))
}

/// The checkpoint as JSON.
pub async fn checkpoint_json(store: &Arc<dyn ObjectStore>) -> serde_json::Value {
    let bytes = store
        .get(&Path::from("stats/_checkpoint/rollup.json"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

pub fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{actual} != {expected}"
    );
}

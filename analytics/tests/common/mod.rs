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
    // As the Firehose emulation does: the rollup finds new objects by their markers.
    analytics::pending::mark(store, analytics::config::DEFAULT_PENDING_PREFIX, &path)
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

/// The folder of the 1m stats files of the hour starting at `hour_ms`.
pub fn stats_folder(hour_ms: i64) -> String {
    format!("stats/window=1m/{}/", Partition::of_millis(hour_ms).path())
}

/// The entries of `snapshot` under the stats folder of the hour starting at `hour_ms`.
pub fn hour_files(
    snapshot: &BTreeMap<String, (Option<String>, i64)>,
    hour_ms: i64,
) -> BTreeMap<String, (Option<String>, i64)> {
    let folder = stats_folder(hour_ms);
    snapshot
        .iter()
        .filter(|(k, _)| k.starts_with(&folder))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The rows of every stats file of the hour starting at `hour_ms`, sorted by key.
pub async fn read_stats(store: &Arc<dyn ObjectStore>, hour_ms: i64) -> Vec<WindowStats> {
    let folder = stats_folder(hour_ms);
    let listed: Vec<_> = store
        .list(Some(&Path::from(folder.as_str())))
        .try_collect()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for meta in listed {
        let batches = analytics::io::read_parquet(store, &meta, None)
            .await
            .unwrap();
        rows.extend(batches.iter().flat_map(|b| stats_from_batch(b).unwrap()));
    }
    rows.sort_by_key(|r| r.key());
    rows
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

/// The state of the unit of `device`'s bucket in the hour starting at `hour_ms`, as JSON
/// (`null` when absent).
pub async fn unit_state(
    store: &Arc<dyn ObjectStore>,
    hour_ms: i64,
    device: &str,
) -> serde_json::Value {
    let cfg = analytics::RollupConfig::default();
    let unit = analytics::units::Unit {
        partition: Partition::of_millis(hour_ms),
        bucket: analytics::units::bucket_of(device, cfg.buckets),
        buckets: cfg.buckets,
    };
    match store.get(&Path::from(unit.state_path(&cfg))).await {
        Ok(got) => serde_json::from_slice(&got.bytes().await.unwrap()).unwrap(),
        Err(_) => serde_json::Value::Null,
    }
}

pub fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{actual} != {expected}"
    );
}

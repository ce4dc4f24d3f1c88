//! The incremental rollup against an in-memory object store (and the local file system,
//! for the tests of concurrent and killed runs).

// Helpers outside `#[test]` functions (tests/common) panic on purpose too.
#![allow(clippy::unwrap_used)]

mod common;

use analytics::{RollupConfig, RollupReport, run_rollup};
use common::*;
use object_store::ObjectStoreExt;
use object_store::path::Path;

async fn rollup(store: &std::sync::Arc<dyn object_store::ObjectStore>) -> RollupReport {
    run_rollup(store.clone(), &RollupConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn aggregates_of_a_small_example_match_hand_computed_values() {
    let store = store();
    let w05 = H16 + 5 * MINUTE;
    let w06 = H16 + 6 * MINUTE;
    put_file(
        &store,
        "part-1.parquet",
        &[
            // Out of order on purpose: percentiles need the values sorted.
            reading("sensor-a", 1, w05 + 30 * SECOND, "temperature", 25.0),
            reading("sensor-a", 2, w05 + 1250, "temperature", 20.0),
            reading("sensor-a", 3, w05 + 59_999, "temperature", 30.0),
            reading("sensor-a", 4, w05 + 20 * SECOND, "temperature", 22.0),
            reading("sensor-a", 5, w05 + 10 * SECOND, "temperature", 21.0),
            reading("sensor-a", 6, w06, "temperature", 19.5),
            reading("sensor-a", 1, w05 + 30 * SECOND, "humidity", 40.0),
            reading("sensor-a", 2, w05 + 1250, "humidity", 42.0),
            reading("sensor-b", 1, w05 + 1, "temperature", 10.0),
            reading("sensor-b", 2, w05 + 2, "temperature", 10.0),
        ],
    )
    .await;

    let report = rollup(&store).await;
    assert_eq!(report.files_scanned, 1);
    assert_eq!(report.new_files, 1);
    assert_eq!(report.rows_read, 10);
    assert_eq!(report.partitions_touched, 1);
    assert_eq!(report.windows_updated, 4);
    assert!(
        report.full_scan,
        "the first run of a store lists everything"
    );
    assert!(report.skipped_files.is_empty());

    let rows = read_stats(&store, H16).await;
    assert_eq!(rows.len(), 4);

    // n = 5, sorted 20 21 22 25 30: mean 23.6, squared deviations sum to 65.2.
    let t = row(&rows, "sensor-a", "temperature", w05);
    assert_eq!(t.count, 5);
    assert_eq!((t.min, t.max, t.sum), (20.0, 30.0, 118.0));
    assert_close(t.mean, 23.6);
    assert_close(t.stddev.unwrap(), (65.2f64 / 4.0).sqrt());
    // h = 4q: 2 → 22; 3.8 → 25 + 0.8·5; 3.96 → 25 + 0.96·5.
    assert_close(t.p50, 22.0);
    assert_close(t.p95, 29.0);
    assert_close(t.p99, 29.8);
    assert_eq!(t.first_event, w05 + 1250);
    assert_eq!(t.last_event, w05 + 59_999);

    let single = row(&rows, "sensor-a", "temperature", w06);
    assert_eq!(single.count, 1);
    assert_eq!(single.stddev, None, "stddev_samp is NULL for one reading");
    assert_eq!((single.p50, single.p95, single.p99), (19.5, 19.5, 19.5));
    assert_eq!((single.first_event, single.last_event), (w06, w06));

    // Two readings 40, 42: h = q, so p95 = 40 + 0.95·2.
    let h = row(&rows, "sensor-a", "humidity", w05);
    assert_close(h.stddev.unwrap(), 2f64.sqrt());
    assert_close(h.p50, 41.0);
    assert_close(h.p95, 41.9);
    assert_close(h.p99, 41.98);

    let flat = row(&rows, "sensor-b", "temperature", w05);
    assert_eq!((flat.count, flat.stddev), (2, Some(0.0)));

    // Each unit's file is sorted by (device, metric, window).
    let files = hour_files(&snapshot(&store).await, H16);
    assert_eq!(files.len(), report.stats_files_written);
    for path in files.keys() {
        let meta = store.head(&Path::from(path.as_str())).await.unwrap();
        let batches = analytics::io::read_parquet(&store, &meta, None)
            .await
            .unwrap();
        let keys: Vec<_> = batches
            .iter()
            .flat_map(|b| analytics::schema::stats_from_batch(b).unwrap())
            .map(|r| r.key())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}

#[tokio::test]
async fn duplicates_across_files_are_counted_once() {
    let store = store();
    let w = H16 + 7 * MINUTE;
    let batch = |seqs: std::ops::RangeInclusive<i64>| {
        seqs.map(|s| reading("sensor-a", s, w + s * SECOND, "temperature", s as f64))
            .collect::<Vec<_>>()
    };
    put_file(&store, "part-1.parquet", &batch(1..=3)).await;
    // Redelivery: seq 2 and 3 again, plus seq 4.
    put_file(&store, "part-2.parquet", &batch(2..=4)).await;

    let report = rollup(&store).await;
    assert_eq!(report.rows_read, 6);
    assert_eq!(report.duplicates_dropped, 2);
    let rows = read_stats(&store, H16).await;
    let r = row(&rows, "sensor-a", "temperature", w);
    assert_eq!(r.count, 4);
    assert_eq!(r.sum, 1.0 + 2.0 + 3.0 + 4.0);
}

#[tokio::test]
async fn the_same_seq_of_another_metric_or_device_is_not_a_duplicate() {
    let store = store();
    let w = H16;
    put_file(
        &store,
        "part-1.parquet",
        &[
            reading("sensor-a", 1, w, "temperature", 1.0),
            reading("sensor-a", 1, w, "humidity", 2.0),
            reading("sensor-b", 1, w, "temperature", 3.0),
        ],
    )
    .await;
    let report = rollup(&store).await;
    assert_eq!(report.duplicates_dropped, 0);
    assert_eq!(read_stats(&store, H16).await.len(), 3);
}

#[tokio::test]
async fn a_second_run_over_unchanged_data_writes_nothing() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H15 + 1, "t", 1.0)]).await;
    put_file(&store, "b.parquet", &[reading("d", 2, H16 + 1, "t", 2.0)]).await;
    let first = rollup(&store).await;
    assert_eq!(first.stats_files_written, 2);

    let before = snapshot(&store).await;
    let second = rollup(&store).await;
    assert_eq!(
        snapshot(&store).await,
        before,
        "the second run wrote something"
    );
    assert_eq!(
        second,
        RollupReport::default(),
        "no marker left: nothing is listed"
    );
}

#[tokio::test]
async fn late_data_in_an_old_hour_updates_only_the_windows_it_touches() {
    let store = store();
    let (w05, w10, w20) = (H15 + 5 * MINUTE, H15 + 10 * MINUTE, H15 + 20 * MINUTE);
    put_file(
        &store,
        "early.parquet",
        &[
            reading("sensor-a", 1, w05, "temperature", 1.0),
            reading("sensor-a", 2, w10, "temperature", 2.0),
            reading("sensor-b", 1, w10, "temperature", 5.0),
        ],
    )
    .await;
    put_file(
        &store,
        "now.parquet",
        &[reading("sensor-a", 50, H16 + 1, "temperature", 9.0)],
    )
    .await;
    rollup(&store).await;
    let hour15_before = read_stats(&store, H15).await;
    let before = snapshot(&store).await;

    // Late readings for hour 15: one more in an existing window, one in a new window.
    put_file(
        &store,
        "late.parquet",
        &[
            reading("sensor-a", 3, w10 + SECOND, "temperature", 4.0),
            reading("sensor-a", 4, w20, "temperature", 7.0),
        ],
    )
    .await;
    let report = rollup(&store).await;
    assert_eq!(report.new_files, 1);
    assert_eq!(report.partitions_touched, 1);
    assert!(!report.full_scan);
    assert_eq!(report.files_scanned, 2, "only the late hour is listed");
    assert_eq!(report.windows_updated, 2);
    assert_eq!(
        report.stats_files_written, 1,
        "only sensor-a's unit changed"
    );

    let after = snapshot(&store).await;
    assert_eq!(
        hour_files(&after, H16),
        hour_files(&before, H16),
        "the stats of an hour without new data were rewritten"
    );
    assert_ne!(hour_files(&after, H15), hour_files(&before, H15));

    let rows = read_stats(&store, H15).await;
    assert_eq!(rows.len(), 4);
    // Untouched windows keep identical values.
    for key in [("sensor-a", w05), ("sensor-b", w10)] {
        assert_eq!(
            row(&rows, key.0, "temperature", key.1),
            row(&hour15_before, key.0, "temperature", key.1)
        );
    }
    let updated = row(&rows, "sensor-a", "temperature", w10);
    assert_eq!((updated.count, updated.sum), (2, 6.0));
    assert_eq!(updated.last_event, w10 + SECOND);
    let added = row(&rows, "sensor-a", "temperature", w20);
    assert_eq!((added.count, added.min), (1, 7.0));
}

#[tokio::test]
async fn a_file_that_only_repeats_known_readings_rewrites_no_stats() {
    let store = store();
    let readings = [
        reading("d", 1, H16 + 1, "t", 1.0),
        reading("d", 2, H16 + 2, "t", 2.0),
    ];
    put_file(&store, "a.parquet", &readings).await;
    rollup(&store).await;
    let stats_before = hour_files(&snapshot(&store).await, H16);

    put_file(&store, "a-redelivered.parquet", &readings).await;
    let report = rollup(&store).await;
    assert_eq!(report.new_files, 1);
    assert_eq!(report.duplicates_dropped, 2);
    assert_eq!(report.windows_updated, 0);
    assert_eq!(report.stats_files_written, 0);
    assert!(
        report.state_objects_written > 0,
        "the new file must be remembered"
    );
    assert_eq!(hour_files(&snapshot(&store).await, H16), stats_before);
    assert_eq!(rollup(&store).await.new_files, 0);
}

#[tokio::test]
async fn a_corrupt_file_is_reported_and_retried_by_later_runs() {
    let store = store();
    put_file(
        &store,
        "good.parquet",
        &[reading("d", 1, H16 + 1, "t", 1.0)],
    )
    .await;
    let bad = "telemetry/dt=2026-11-25/hour=16/bad.parquet";
    put_raw(&store, bad, b"this is not a Parquet file").await;

    let first = rollup(&store).await;
    assert_eq!(first.new_files, 2);
    // Reported by every unit of the hour: each reads its bucket of every object.
    assert_eq!(first.skipped_files.len(), first.units_planned);
    assert!(first.skipped_files.iter().all(|s| s.path == bad));
    assert!(
        first.skipped_files[0].reason.starts_with("Parquet:"),
        "{}",
        first.skipped_files[0].reason
    );
    assert_eq!(
        first.stats_files_written, 1,
        "the good file is aggregated anyway"
    );
    assert_eq!(
        unit_state(&store, H16, "d").await["objects"],
        serde_json::json!(["good.parquet"])
    );

    // Still unreadable: reported again (its marker is kept), nothing written.
    let before = snapshot(&store).await;
    let second = rollup(&store).await;
    assert_eq!(second.new_files, 1);
    assert_eq!(second.skipped_files.len(), second.units_planned);
    assert_eq!(second.state_objects_written, 0);
    assert_eq!(second.windows_updated, 0);
    assert_eq!(snapshot(&store).await, before);

    // Readable now (the failure was transient): its readings are aggregated.
    put_file(&store, "bad.parquet", &[reading("d", 2, H16 + 2, "t", 3.0)]).await;
    let third = rollup(&store).await;
    assert!(third.skipped_files.is_empty());
    assert_eq!(third.windows_updated, 1);
    assert_eq!(row(&read_stats(&store, H16).await, "d", "t", H16).count, 2);
    assert_eq!(
        unit_state(&store, H16, "d").await["objects"],
        serde_json::json!(["bad.parquet", "good.parquet"])
    );
}

#[tokio::test]
async fn a_file_with_the_wrong_columns_is_skipped_like_a_corrupt_one() {
    let store = store();
    put_file(
        &store,
        "good.parquet",
        &[reading("d", 1, H16 + 1, "t", 1.0)],
    )
    .await;
    // A valid Parquet file of another schema (a stats file) in a telemetry folder.
    let row = analytics::WindowStats {
        device_id: "d".into(),
        metric: "t".into(),
        window_start: H16,
        count: 1,
        min: 1.0,
        max: 1.0,
        sum: 1.0,
        mean: 1.0,
        stddev: None,
        p50: 1.0,
        p95: 1.0,
        p99: 1.0,
        first_event: H16,
        last_event: H16,
        m2: 0.0,
        sketch: Vec::new(),
    };
    let stats = analytics::schema::stats_to_batch(&[row]).unwrap();
    let wrong = "telemetry/dt=2026-11-25/hour=16/stats.parquet";
    analytics::io::write_parquet(&store, wrong, &stats)
        .await
        .unwrap();
    let report = rollup(&store).await;
    assert_eq!(report.skipped_files.len(), report.units_planned);
    assert_eq!(report.skipped_files[0].path, wrong);
    assert!(
        report.skipped_files[0]
            .reason
            .contains("\"seq\" is missing"),
        "{}",
        report.skipped_files[0].reason
    );
}

#[tokio::test]
async fn an_aggregated_file_that_cannot_be_reread_defers_its_partition() {
    let store = store();
    let readings = [reading("d", 1, H16 + 1, "t", 1.0)];
    let a = put_file(&store, "a.parquet", &readings).await;
    rollup(&store).await;
    let stats_before = hour_files(&snapshot(&store).await, H16);

    // `a` becomes unreadable (an outage, simulated by replacing it) while `b` arrives.
    put_raw(&store, &a, b"garbage").await;
    put_file(&store, "b.parquet", &[reading("d", 2, H16 + 2, "t", 2.0)]).await;
    let report = rollup(&store).await;
    let d_unit = report
        .skipped_files
        .iter()
        .find(|s| s.path == a)
        .expect("a is reported");
    assert!(d_unit.reason.contains("deferred"), "{}", d_unit.reason);
    assert!(report.units_deferred >= 1);
    assert_eq!(report.windows_updated, 0);
    assert_eq!(
        report.stats_files_written, 0,
        "windows must not lose a's readings"
    );
    assert_eq!(hour_files(&snapshot(&store).await, H16), stats_before);

    // `a` is readable again: `b` is aggregated on top of it.
    put_file(&store, "a.parquet", &readings).await;
    let report = rollup(&store).await;
    assert!(report.skipped_files.is_empty());
    let r = row(&read_stats(&store, H16).await, "d", "t", H16).clone();
    assert_eq!((r.count, r.sum), (2, 3.0));
}

#[tokio::test]
async fn a_crash_before_the_state_only_repeats_work() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    rollup(&store).await;
    let stats_before = read_stats(&store, H16).await;

    // As if the run had died after writing the stats but before the unit's state (and so
    // before the marker was deleted).
    let cfg = RollupConfig::default();
    let unit = analytics::units::Unit {
        partition: telemetry::Partition::of_millis(H16),
        bucket: analytics::units::bucket_of("d", cfg.buckets),
        buckets: cfg.buckets,
    };
    store
        .delete(&Path::from(unit.state_path(&cfg)))
        .await
        .unwrap();
    analytics::pending::mark(
        &store,
        &cfg.pending_prefix,
        "telemetry/dt=2026-11-25/hour=16/a.parquet",
    )
    .await
    .unwrap();
    let report = rollup(&store).await;
    assert_eq!(report.new_files, 1);
    assert_eq!(report.units_planned, 1);
    assert_eq!(report.windows_updated, 0);
    assert_eq!(report.stats_files_written, 0);
    assert_eq!(report.state_objects_written, 1);
    assert_eq!(read_stats(&store, H16).await, stats_before);
}

#[tokio::test]
async fn an_unparseable_state_is_treated_as_empty_and_the_unit_recomputed() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    rollup(&store).await;
    let cfg = RollupConfig {
        full_scan: true,
        ..RollupConfig::default()
    };
    let unit = analytics::units::Unit {
        partition: telemetry::Partition::of_millis(H16),
        bucket: analytics::units::bucket_of("d", cfg.buckets),
        buckets: cfg.buckets,
    };
    put_raw(&store, &unit.state_path(&cfg), b"{\"version\":").await;
    let report = run_rollup(store.clone(), &cfg).await.unwrap();
    assert_eq!((report.units_planned, report.state_objects_written), (1, 1));
    assert_eq!(rollup(&store).await.units_planned, 0);
}

#[tokio::test]
async fn a_missing_stats_file_is_rebuilt_from_every_file_of_its_hour() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    rollup(&store).await;
    for path in hour_files(&snapshot(&store).await, H16).keys() {
        store.delete(&Path::from(path.as_str())).await.unwrap();
    }

    put_file(
        &store,
        "b.parquet",
        &[reading("d", 2, H16 + MINUTE, "t", 2.0)],
    )
    .await;
    let report = rollup(&store).await;
    assert_eq!(report.windows_updated, 2);
    let rows = read_stats(&store, H16).await;
    assert_eq!(rows.len(), 2, "the window of the old file is back");
}

#[tokio::test]
async fn a_units_state_lists_the_objects_of_its_hour_only() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H15 + 1, "t", 1.0)]).await;
    put_file(&store, "b.parquet", &[reading("d", 2, H16 + 1, "t", 1.0)]).await;
    put_file(&store, "c.parquet", &[reading("d", 3, H16 + 2, "t", 1.0)]).await;
    rollup(&store).await;
    assert_eq!(
        unit_state(&store, H15, "d").await,
        serde_json::json!({"version": 2, "objects": ["a.parquet"]})
    );
    assert_eq!(
        unit_state(&store, H16, "d").await,
        serde_json::json!({"version": 2, "objects": ["b.parquet", "c.parquet"]})
    );
}

#[tokio::test]
async fn an_object_without_a_marker_is_found_by_a_full_scan() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    rollup(&store).await;
    // Written without its marker (a producer that crashed in between).
    let b = put_file(&store, "b.parquet", &[reading("d", 2, H16 + 2, "t", 2.0)]).await;
    store
        .delete(&Path::from(format!("stats/_pending/{b}")))
        .await
        .unwrap();
    assert_eq!(rollup(&store).await.units_planned, 0);
    let cfg = RollupConfig {
        full_scan: true,
        ..RollupConfig::default()
    };
    let report = run_rollup(store.clone(), &cfg).await.unwrap();
    assert_eq!((report.full_scan, report.new_files), (true, 1));
    assert_eq!(row(&read_stats(&store, H16).await, "d", "t", H16).count, 2);
}

#[tokio::test]
async fn an_empty_store_is_a_run_with_nothing_to_do() {
    let store = store();
    let report = rollup(&store).await;
    assert_eq!(
        report,
        RollupReport {
            full_scan: true,
            ..RollupReport::default()
        }
    );
    let written: Vec<String> = snapshot(&store).await.into_keys().collect();
    assert_eq!(written, ["stats/_state/_initialized"]);
}

#[tokio::test]
async fn the_rollup_runs_the_same_on_a_local_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = analytics::config::local_store(Some(dir.path().into())).unwrap();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    put_file(&store, "b.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    let report = rollup(&store).await;
    assert_eq!(
        (report.duplicates_dropped, report.stats_files_written),
        (1, 1)
    );
    let cfg = RollupConfig::default();
    let part = analytics::units::bucket_of("d", cfg.buckets);
    assert!(
        dir.path()
            .join(format!(
                "stats/window=1m/dt=2026-11-25/hour=16/part-{part:04}-of-{:04}.parquet",
                cfg.buckets
            ))
            .is_file()
    );
    assert_eq!(row(&read_stats(&store, H16).await, "d", "t", H16).count, 1);

    let before = snapshot(&store).await;
    assert_eq!(rollup(&store).await.windows_updated, 0);
    assert_eq!(snapshot(&store).await, before);
}

#[tokio::test]
async fn a_run_out_of_time_stops_between_units_and_the_next_run_continues() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H15 + 1, "t", 1.0)]).await;
    put_file(&store, "b.parquet", &[reading("d", 2, H16 + 1, "t", 2.0)]).await;

    // A deadline already past: one unit (of the oldest partition) is still completed.
    let cfg = RollupConfig {
        buckets: 1,
        ..RollupConfig::default()
    };
    let first =
        analytics::run_rollup_until(store.clone(), &cfg, Some(std::time::SystemTime::now()))
            .await
            .unwrap();
    assert_eq!((first.units_planned, first.units_done), (2, 1));
    assert_eq!(first.units_remaining, 1);
    assert_eq!(read_stats(&store, H15).await.len(), 1);
    assert!(read_stats(&store, H16).await.is_empty());

    let second = rollup_with(&store, &cfg).await;
    assert_eq!((second.units_planned, second.units_done), (1, 1));
    assert_eq!(second.units_remaining, 0);
    assert_eq!(read_stats(&store, H16).await.len(), 1);
}

/// A seeded hour of `devices` devices × 20 messages × 2 metrics in `files` objects, with
/// redeliveries, on a local data directory.
async fn fleet_hour(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    devices: usize,
    files: usize,
) {
    let mut per_file: Vec<Vec<telemetry::Reading>> = vec![Vec::new(); files];
    for d in 0..devices {
        let device = format!("sensor-{d:04}");
        for seq in 0..20i64 {
            let t = H16 + seq * 3 * MINUTE + d as i64;
            for metric in ["temperature", "humidity"] {
                let r = reading(&device, seq, t, metric, (d as f64) + seq as f64 * 0.5);
                per_file[(d + seq as usize) % files].push(r.clone());
                if (d + seq as usize).is_multiple_of(7) {
                    per_file[(d * 3 + seq as usize) % files].push(r);
                }
            }
        }
    }
    for (i, readings) in per_file.iter().enumerate() {
        put_file(store, &format!("part-{i:03}.parquet"), readings).await;
    }
}

fn local(dir: &tempfile::TempDir) -> std::sync::Arc<dyn object_store::ObjectStore> {
    analytics::config::local_store(Some(dir.path().into())).unwrap()
}

/// Every window (1m, 1h, 1d), per device and fleet-wide, with the merge state.
async fn query_all(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
) -> Vec<analytics::WindowStats> {
    let mut out = Vec::new();
    for window in analytics::Window::ALL {
        for group in [analytics::Group::Device, analytics::Group::Fleet] {
            let q = analytics::Query {
                window,
                group,
                ..analytics::Query::default()
            };
            out.extend(analytics::query(store.clone(), &q).await.unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_rollups_at_once_leave_the_stats_of_a_single_run() {
    let single = tempfile::tempdir().unwrap();
    let reference = local(&single);
    fleet_hour(&reference, 200, 12).await;
    rollup(&reference).await;
    let expected = query_all(&reference).await;
    // 1m, 1h and 1d per device; fleet 1m (20 minutes with readings), 1h and 1d.
    assert_eq!(expected.len(), 200 * 2 * (20 + 1 + 1) + 2 * (20 + 1 + 1));

    for workers in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let store = local(&dir);
        fleet_hour(&store, 200, 12).await;
        let cfg = RollupConfig {
            workers,
            ..RollupConfig::default()
        };
        let (a, b) = tokio::join!(
            run_rollup(store.clone(), &cfg),
            run_rollup(store.clone(), &cfg)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        for r in [&a, &b] {
            assert_eq!(r.units_planned, r.units_done + r.units_busy, "{r:?}");
        }
        assert!(a.units_done.max(b.units_done) > 0);
        assert_eq!(query_all(&store).await, expected, "workers = {workers}");
        // Whatever the interleaving, nothing is left to do.
        assert_eq!(rollup(&store).await.units_planned, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollup_killed_mid_run_then_rerun_yields_the_same_stats() {
    let single = tempfile::tempdir().unwrap();
    let reference = local(&single);
    fleet_hour(&reference, 100, 6).await;
    rollup(&reference).await;
    let expected = query_all(&reference).await;

    let ttl = std::time::Duration::from_millis(500);
    let cfg = RollupConfig {
        lease_ttl: ttl,
        workers: 2,
        ..RollupConfig::default()
    };
    // Kill points: the run is dropped (as a killed process stops) after this many polls.
    for polls in [1usize, 5, 20, 60, 200] {
        let dir = tempfile::tempdir().unwrap();
        let store = local(&dir);
        fleet_hour(&store, 100, 6).await;
        let mut run = Box::pin(run_rollup(store.clone(), &cfg));
        let mut finished = false;
        for _ in 0..polls {
            if futures::poll!(run.as_mut()).is_ready() {
                finished = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        drop(run);
        // Leases of the killed run expire; then a rerun completes the work.
        tokio::time::sleep(ttl).await;
        // The rerun's own leases last as in production: with the killed run's short TTL, a
        // unit slower than it on a loaded machine lost its lease mid-write.
        let rerun_cfg = RollupConfig {
            lease_ttl: RollupConfig::default().lease_ttl,
            ..cfg.clone()
        };
        let rerun = rollup_with(&store, &rerun_cfg).await;
        assert_eq!(rerun.units_busy, 0, "polls = {polls}");
        assert_eq!(
            query_all(&store).await,
            expected,
            "polls = {polls}, finished = {finished}"
        );
        assert_eq!(rollup_with(&store, &cfg).await.units_planned, 0);
    }
}

async fn rollup_with(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    cfg: &RollupConfig,
) -> RollupReport {
    run_rollup(store.clone(), cfg).await.unwrap()
}

#[tokio::test]
async fn a_change_of_bucket_count_replaces_the_hours_stats_files() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    put_file(&store, "b.parquet", &[reading("e", 1, H16 + 2, "t", 2.0)]).await;
    // The layout before units: one stats file per hour.
    put_raw(
        &store,
        &format!("{}stats.parquet", stats_folder(H16)),
        b"old",
    )
    .await;
    rollup(&store).await;
    let before = read_stats(&store, H16).await;
    assert_eq!(before.len(), 2);

    let cfg = RollupConfig {
        buckets: 3,
        ..RollupConfig::default()
    };
    put_file(&store, "c.parquet", &[reading("d", 2, H16 + 3, "t", 3.0)]).await;
    rollup_with(&store, &cfg).await;
    let files = hour_files(&snapshot(&store).await, H16);
    assert!(
        files.keys().all(|k| k.ends_with("-of-0003.parquet")),
        "{files:?}"
    );
    let after = read_stats(&store, H16).await;
    assert_eq!(after.len(), 2);
    assert_eq!(row(&after, "d", "t", H16).count, 2);
}

#[tokio::test]
async fn the_coarser_windows_follow_the_units_and_can_be_left_out() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    let off = RollupConfig {
        derive_coarse: false,
        ..RollupConfig::default()
    };
    let first = run_rollup(store.clone(), &off).await.unwrap();
    assert_eq!(first.stats_files_written, 1);
    assert_eq!(first.coarse, analytics::CoarseReport::default());
    let coarse_files = |store: std::sync::Arc<dyn object_store::ObjectStore>| async move {
        let mut n = 0;
        for prefix in ["stats/window=1h", "stats/window=1d", "stats/fleet"] {
            n += analytics::io::list_objects(&store, prefix)
                .await
                .unwrap()
                .len();
        }
        n
    };
    assert_eq!(coarse_files(store.clone()).await, 0);

    // New data in the hour: every unit done, the hour (and its day) derived.
    put_file(&store, "b.parquet", &[reading("e", 1, H16 + 2, "t", 3.0)]).await;
    let second = rollup(&store).await;
    assert_eq!(
        (second.coarse.hours, second.coarse.days),
        (1, 1),
        "{second:?}"
    );
    // 1h and 1d per device (one file per unit's 1m file: per device-hash bucket), fleet
    // 1m, 1h and 1d.
    let units = analytics::io::list_objects(&store, "stats/window=1m")
        .await
        .unwrap()
        .len();
    assert!(units >= 1);
    assert_eq!(coarse_files(store.clone()).await, 2 * units + 3);
    let hourly = analytics::query(
        store.clone(),
        &analytics::Query {
            window: analytics::Window::H1,
            group: analytics::Group::Fleet,
            ..analytics::Query::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(hourly.len(), 1);
    assert_eq!((hourly[0].count, hourly[0].sum), (2, 4.0));
}

/// Every stats file of the hour starting at `hour_ms`, with its rows in file order.
async fn stats_files(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    hour_ms: i64,
) -> std::collections::BTreeMap<String, Vec<analytics::WindowStats>> {
    let mut out = std::collections::BTreeMap::new();
    for path in hour_files(&snapshot(store).await, hour_ms).keys() {
        let meta = store.head(&Path::from(path.as_str())).await.unwrap();
        let batches = analytics::io::read_parquet(store, &meta, None)
            .await
            .unwrap();
        let rows = batches
            .iter()
            .flat_map(|b| analytics::schema::stats_from_batch(b).unwrap())
            .collect();
        out.insert(path.clone(), rows);
    }
    out
}

#[tokio::test]
async fn a_unit_over_its_pass_budget_is_aggregated_in_passes_with_the_same_result() {
    // 200 devices × 20 messages × 2 metrics, with redeliveries, in 12 objects: ~2,300
    // readings per bucket of 4.
    let buckets = 4;
    let one_pass = RollupConfig {
        buckets,
        ..RollupConfig::default()
    };
    let reference = store();
    fleet_hour(&reference, 200, 12).await;
    let report = rollup_with(&reference, &one_pass).await;
    assert_eq!(report.unit_passes, 4, "{report:?}");
    let expected = stats_files(&reference, H16).await;
    assert_eq!(expected.len(), 4);

    let hour_rows = report.rows_read;
    for pass_readings in [1_000, 300] {
        let store = store();
        fleet_hour(&store, 200, 12).await;
        let cfg = RollupConfig {
            pass_readings,
            ..one_pass.clone()
        };
        let report = rollup_with(&store, &cfg).await;
        let passes = analytics::worker::passes_for(hour_rows, buckets, pass_readings);
        assert!(passes >= 2, "{passes}");
        assert_eq!(report.unit_passes, u64::from(passes) * 4, "{report:?}");
        assert_eq!(report.rows_read, hour_rows);
        assert_eq!(stats_files(&store, H16).await, expected, "{pass_readings}");
        assert_eq!(query_all(&store).await, query_all(&reference).await);
    }
}

#[tokio::test]
async fn late_data_in_a_unit_of_several_passes_updates_only_its_windows_and_a_disordered_file_is_rewritten()
 {
    // The late readings: one more in an existing window of the first device in id order,
    // one in a new window of the last (so the first and the last pass each change a row).
    let late = [
        reading("sensor-0000", 100, H16 + 1_000, "temperature", 42.0),
        reading("sensor-0199", 100, H16 + 59 * MINUTE, "humidity", 7.0),
    ];
    let buckets = 4;
    let reference = store();
    fleet_hour(&reference, 200, 12).await;
    put_file(&reference, "late.parquet", &late).await;
    let one_pass = RollupConfig {
        buckets,
        ..RollupConfig::default()
    };
    rollup_with(&reference, &one_pass).await;
    let expected = stats_files(&reference, H16).await;

    let cfg = RollupConfig {
        pass_readings: 300,
        ..one_pass
    };
    let store = store();
    fleet_hour(&store, 200, 12).await;
    let first = rollup_with(&store, &cfg).await;
    assert!(first.unit_passes >= 8, "{first:?}");
    let before = stats_files(&store, H16).await;
    put_file(&store, "late.parquet", &late).await;
    let report = rollup_with(&store, &cfg).await;
    assert!(report.unit_passes >= 4, "{report:?}");
    assert_eq!(report.windows_updated, 2, "{report:?}");
    let after = stats_files(&store, H16).await;
    assert_eq!(after, expected);
    let changed: Vec<_> = after
        .iter()
        .filter(|(path, rows)| before.get(*path) != Some(rows))
        .map(|(path, _)| path.clone())
        .collect();
    assert_eq!(report.stats_files_written, changed.len(), "{changed:?}");

    // A unit's stats file whose rows are not in key order (not one this rollup writes)
    // does not line up with the new windows: the unit rewrites it, in order.
    let (path, rows) = after.iter().next().unwrap();
    let reversed: Vec<_> = rows.iter().rev().cloned().collect();
    let bytes =
        analytics::io::encode_parquet(&analytics::schema::stats_to_batch(&reversed).unwrap())
            .unwrap();
    store
        .put(&Path::from(path.as_str()), bytes.into())
        .await
        .unwrap();
    let state = path
        .replace("stats/window=1m/", "stats/_state/window=1m/")
        .replace(".parquet", ".json");
    store.delete(&Path::from(state)).await.unwrap();
    let full_scan = RollupConfig {
        full_scan: true,
        ..cfg
    };
    let report = rollup_with(&store, &full_scan).await;
    assert_eq!(report.stats_files_written, 1, "{report:?}");
    assert_eq!(stats_files(&store, H16).await, expected);
}

#[tokio::test]
async fn the_units_of_an_hour_that_fit_one_pass_are_read_together_with_the_same_result() {
    use analytics::requests::CountingStore;
    let counted = |inner| {
        let counting = CountingStore::new(inner);
        let store: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(counting.clone());
        (counting, store)
    };
    // 200 devices × 20 messages × 2 metrics, with redeliveries, in 12 objects: ~2,300
    // readings per bucket of 4, so the default budget holds the 4 units in one pass.
    let buckets = 4;
    let together = RollupConfig {
        buckets,
        ..RollupConfig::default()
    };
    let (shared_counts, shared) = counted(store());
    fleet_hour(&shared, 200, 12).await;
    shared_counts.reset();
    let first = rollup_with(&shared, &together).await;
    assert_eq!(first.units_read_together, 4, "{first:?}");
    assert_eq!(first.unit_passes, 4, "{first:?}");
    let hour_rows = first.rows_read;

    // The same hour with a budget that fits one unit a pass but not two: each unit
    // decodes every object for itself.
    let per_unit = hour_rows.div_ceil(u64::from(buckets));
    let alone = RollupConfig {
        pass_readings: 2 * per_unit - 1,
        ..together.clone()
    };
    let (alone_counts, reference) = counted(store());
    fleet_hour(&reference, 200, 12).await;
    alone_counts.reset();
    let report = rollup_with(&reference, &alone).await;
    assert_eq!(report.units_read_together, 0, "{report:?}");
    assert_eq!(report.unit_passes, 4, "{report:?}");
    assert_eq!(report.rows_read, hour_rows);
    assert_eq!(
        (report.duplicates_dropped, report.windows_updated),
        (first.duplicates_dropped, first.windows_updated)
    );
    assert_eq!(
        stats_files(&shared, H16).await,
        stats_files(&reference, H16).await
    );
    assert_eq!(query_all(&shared).await, query_all(&reference).await);
    // Read together, the 12 objects' columns were fetched once instead of once per unit.
    let (shared_gets, alone_gets) = (shared_counts.counts().get, alone_counts.counts().get);
    assert!(
        shared_gets + 3 * 12 <= alone_gets,
        "GETs read together {shared_gets}, alone {alone_gets}"
    );
}

/// Unit `bucket` of `buckets` of the hour starting at `H16`.
fn unit_of_h16(bucket: u32, buckets: u32) -> analytics::units::Unit {
    analytics::units::Unit {
        partition: telemetry::Partition::of_millis(H16),
        bucket,
        buckets,
    }
}

#[tokio::test]
async fn a_worker_invocation_reads_its_units_of_an_hour_together_and_a_repeated_message_after_them()
{
    use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
    let buckets = 4;
    let cfg = RollupConfig {
        buckets,
        ..RollupConfig::default()
    };
    let reference = store();
    fleet_hour(&reference, 200, 12).await;
    rollup_with(&reference, &cfg).await;
    let store = store();
    fleet_hour(&store, 200, 12).await;

    let unit = |bucket| unit_of_h16(bucket, buckets);
    // The hour's four units, and the first one's message delivered twice.
    let mut event = SqsEvent::default();
    for (i, bucket) in [0, 1, 2, 3, 0].into_iter().enumerate() {
        let mut m = SqsMessage::default();
        m.message_id = Some(format!("m{i}"));
        let body = analytics::fanout::UnitMessage { unit: unit(bucket) };
        m.body = Some(serde_json::to_string(&body).unwrap());
        event.records.push(m);
    }
    let handled =
        analytics::fanout::handle_units_reporting(event, &store, &cfg, "worker-test", None).await;
    assert!(
        handled.response.batch_item_failures.is_empty(),
        "{:?}",
        handled.response
    );
    let outcomes: Vec<_> = handled
        .units
        .iter()
        .map(|u| (u.unit.bucket, u.outcome, u.read_with))
        .collect();
    use analytics::worker::UnitOutcome::{Done, UpToDate};
    assert_eq!(
        outcomes,
        [
            (0, Done, 4),
            (1, Done, 4),
            (2, Done, 4),
            (3, Done, 4),
            // After its first delivery was stored: nothing left to do.
            (0, UpToDate, 0),
        ]
    );
    let stats = |s| async move {
        analytics::io::list_objects(&s, "stats/window=1m")
            .await
            .unwrap()
            .len()
    };
    assert_eq!(stats(store.clone()).await, 4);
    assert_eq!(
        stats_files(&store, H16).await,
        stats_files(&reference, H16).await
    );
}

#[tokio::test]
async fn a_unit_of_a_batch_releases_its_lease_as_soon_as_it_is_stored() {
    use analytics::requests::CountingStore;
    let buckets = 2;
    let cfg = RollupConfig {
        buckets,
        ..RollupConfig::default()
    };
    let inner = store();
    fleet_hour(&inner, 40, 3).await;
    let counting = CountingStore::keeping_writes(inner);
    let store: std::sync::Arc<dyn object_store::ObjectStore> =
        std::sync::Arc::new(counting.clone());
    let units: Vec<_> = (0..buckets).map(|b| unit_of_h16(b, buckets)).collect();
    let reports = analytics::worker::run_hour(&store, &cfg, &units, "worker-test").await;
    let read_with: Vec<_> = reports
        .iter()
        .map(|r| r.as_ref().unwrap().read_with)
        .collect();
    // Read together, stored one after the other.
    assert_eq!(read_with, [2, 2]);
    let (released_first, first_state, second_state) = order_of_writes(&counting, &units, &cfg);
    assert!(
        first_state.is_some() && first_state < released_first && released_first < second_state,
        "the first unit's lease is released after its state is stored and before the \
         second unit's is: {:?}",
        counting.writes()
    );
    // Both leases are gone.
    for unit in &units {
        let left = analytics::io::list_objects(&store, &unit.lease_prefix(&cfg))
            .await
            .unwrap();
        assert!(left.is_empty(), "{unit}: {left:?}");
    }

    // The second unit's state lost: the first is up to date and is released before the
    // second is recomputed.
    store
        .delete(&Path::from(units[1].state_path(&cfg)))
        .await
        .unwrap();
    counting.reset();
    let reports = analytics::worker::run_hour(&store, &cfg, &units, "worker-test").await;
    let outcomes: Vec<_> = reports
        .iter()
        .map(|r| r.as_ref().unwrap().outcome)
        .collect();
    use analytics::worker::UnitOutcome::{Done, UpToDate};
    assert_eq!(outcomes, [UpToDate, Done]);
    let (released_first, first_state, second_state) = order_of_writes(&counting, &units, &cfg);
    assert!(
        first_state.is_none() && released_first.is_some() && released_first < second_state,
        "the up-to-date unit stores nothing and is released before the other is stored: {:?}",
        counting.writes()
    );
}

/// Where in `counting`'s writes the first unit's lease was released, and the first and
/// second units' states were stored (`None`: not written).
fn order_of_writes(
    counting: &analytics::requests::CountingStore,
    units: &[analytics::units::Unit],
    cfg: &RollupConfig,
) -> (Option<usize>, Option<usize>, Option<usize>) {
    use analytics::requests::Written;
    let writes = counting.writes();
    let at = |w: &dyn Fn(&Written) -> bool| writes.iter().position(w);
    let lease = units[0].lease_prefix(cfg);
    let state = |i: usize| units[i].state_path(cfg);
    (
        at(&|w| matches!(w, Written::Delete(p) if p.starts_with(&lease))),
        at(&|w| matches!(w, Written::Put(p) if *p == state(0))),
        at(&|w| matches!(w, Written::Put(p) if *p == state(1))),
    )
}

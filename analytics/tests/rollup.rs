//! The incremental rollup against an in-memory object store.

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
    assert_eq!(report.stats_files_written, 1);
    assert!(report.checkpoint_written);
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

    // The file is sorted by (device, metric, window).
    let keys: Vec<_> = rows.iter().map(|r| r.key()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
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
        RollupReport {
            files_scanned: 2,
            ..RollupReport::default()
        }
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
    assert_eq!(report.windows_recomputed, 2);
    assert_eq!(report.windows_updated, 2);
    assert_eq!(report.stats_files_written, 1);
    assert!(report.checkpoint_written);

    let after = snapshot(&store).await;
    assert_eq!(
        after[&stats_path(H16)],
        before[&stats_path(H16)],
        "the stats of an hour without new data were rewritten"
    );
    assert_ne!(after[&stats_path(H15)], before[&stats_path(H15)]);

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
    let stats_before = snapshot(&store).await[&stats_path(H16)].clone();

    put_file(&store, "a-redelivered.parquet", &readings).await;
    let report = rollup(&store).await;
    assert_eq!(report.new_files, 1);
    assert_eq!(report.duplicates_dropped, 2);
    assert_eq!(report.windows_updated, 0);
    assert_eq!(report.stats_files_written, 0);
    assert!(report.checkpoint_written, "the new file must be remembered");
    assert_eq!(snapshot(&store).await[&stats_path(H16)], stats_before);
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
    assert_eq!(first.skipped_files.len(), 1);
    assert_eq!(first.skipped_files[0].path, bad);
    assert!(
        first.skipped_files[0].reason.starts_with("Parquet:"),
        "{}",
        first.skipped_files[0].reason
    );
    assert_eq!(
        first.stats_files_written, 1,
        "the good file is aggregated anyway"
    );
    let cp = checkpoint_json(&store).await;
    let names = &cp["partitions"]["dt=2026-11-25/hour=16"];
    assert_eq!(names, &serde_json::json!(["good.parquet"]));

    // Still unreadable: reported again, nothing written.
    let before = snapshot(&store).await;
    let second = rollup(&store).await;
    assert_eq!(second.new_files, 1);
    assert_eq!(second.skipped_files.len(), 1);
    assert!(!second.checkpoint_written);
    assert_eq!(snapshot(&store).await, before);

    // Readable now (the failure was transient): its readings are aggregated.
    put_file(&store, "bad.parquet", &[reading("d", 2, H16 + 2, "t", 3.0)]).await;
    let third = rollup(&store).await;
    assert!(third.skipped_files.is_empty());
    assert_eq!(third.windows_updated, 1);
    assert_eq!(row(&read_stats(&store, H16).await, "d", "t", H16).count, 2);
    assert_eq!(
        checkpoint_json(&store).await["partitions"]["dt=2026-11-25/hour=16"],
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
    };
    let stats = analytics::schema::stats_to_batch(&[row]).unwrap();
    let wrong = "telemetry/dt=2026-11-25/hour=16/stats.parquet";
    analytics::io::write_parquet(&store, wrong, &stats)
        .await
        .unwrap();
    let report = rollup(&store).await;
    assert_eq!(report.skipped_files.len(), 1);
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
    let stats_before = snapshot(&store).await[&stats_path(H16)].clone();

    // `a` becomes unreadable (an outage, simulated by replacing it) while `b` arrives.
    put_raw(&store, &a, b"garbage").await;
    let b = put_file(&store, "b.parquet", &[reading("d", 2, H16 + 2, "t", 2.0)]).await;
    let report = rollup(&store).await;
    let skipped: Vec<_> = report
        .skipped_files
        .iter()
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(skipped, [a.as_str(), b.as_str()]);
    assert!(report.skipped_files[1].reason.starts_with("deferred"));
    assert_eq!(
        report.stats_files_written, 0,
        "windows must not lose a's readings"
    );
    assert!(!report.checkpoint_written);
    assert_eq!(snapshot(&store).await[&stats_path(H16)], stats_before);

    // `a` is readable again: `b` is aggregated on top of it.
    put_file(&store, "a.parquet", &readings).await;
    let report = rollup(&store).await;
    assert!(report.skipped_files.is_empty());
    let r = row(&read_stats(&store, H16).await, "d", "t", H16).clone();
    assert_eq!((r.count, r.sum), (2, 3.0));
}

#[tokio::test]
async fn a_crash_before_the_checkpoint_only_repeats_work() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    rollup(&store).await;
    let stats_before = read_stats(&store, H16).await;

    // As if the run had died after writing stats but before the checkpoint.
    store
        .delete(&Path::from("stats/_checkpoint/rollup.json"))
        .await
        .unwrap();
    let report = rollup(&store).await;
    assert_eq!(report.new_files, 1);
    assert_eq!(report.windows_recomputed, 1);
    assert_eq!(report.windows_updated, 0);
    assert_eq!(report.stats_files_written, 0);
    assert!(report.checkpoint_written);
    assert_eq!(read_stats(&store, H16).await, stats_before);
}

#[tokio::test]
async fn an_unparseable_checkpoint_is_reported_and_everything_is_recomputed() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    put_raw(&store, "stats/_checkpoint/rollup.json", b"{\"version\":").await;
    let report = rollup(&store).await;
    assert!(
        report
            .checkpoint_reset
            .as_deref()
            .is_some_and(|r| r.contains("not a valid checkpoint")),
        "{report:?}"
    );
    assert_eq!(report.stats_files_written, 1);
    assert!(report.checkpoint_written);
    assert_eq!(rollup(&store).await.new_files, 0);
}

#[tokio::test]
async fn a_missing_stats_file_is_rebuilt_from_every_file_of_its_hour() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    rollup(&store).await;
    store.delete(&Path::from(stats_path(H16))).await.unwrap();

    put_file(
        &store,
        "b.parquet",
        &[reading("d", 2, H16 + MINUTE, "t", 2.0)],
    )
    .await;
    let report = rollup(&store).await;
    assert_eq!(report.windows_recomputed, 2);
    let rows = read_stats(&store, H16).await;
    assert_eq!(rows.len(), 2, "the window of the old file is back");
}

#[tokio::test]
async fn the_checkpoint_lists_processed_files_grouped_by_hour_partition() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H15 + 1, "t", 1.0)]).await;
    put_file(&store, "b.parquet", &[reading("d", 2, H16 + 1, "t", 1.0)]).await;
    put_file(&store, "c.parquet", &[reading("d", 3, H16 + 2, "t", 1.0)]).await;
    rollup(&store).await;
    assert_eq!(
        checkpoint_json(&store).await,
        serde_json::json!({
            "version": 1,
            "telemetry_prefix": "telemetry",
            "partitions": {
                "dt=2026-11-25/hour=15": ["a.parquet"],
                "dt=2026-11-25/hour=16": ["b.parquet", "c.parquet"],
            }
        })
    );
}

#[tokio::test]
async fn an_empty_store_is_a_run_with_nothing_to_do() {
    let store = store();
    assert_eq!(rollup(&store).await, RollupReport::default());
    assert!(snapshot(&store).await.is_empty());
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
    assert!(
        dir.path()
            .join("stats/window=1m/dt=2026-11-25/hour=16/stats.parquet")
            .is_file()
    );
    assert_eq!(row(&read_stats(&store, H16).await, "d", "t", H16).count, 1);

    let before = snapshot(&store).await;
    assert_eq!(rollup(&store).await.windows_updated, 0);
    assert_eq!(snapshot(&store).await, before);
}

#[tokio::test]
async fn a_run_out_of_time_stops_between_partitions_and_the_next_run_continues() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H15 + 1, "t", 1.0)]).await;
    put_file(&store, "b.parquet", &[reading("d", 2, H16 + 1, "t", 2.0)]).await;

    // A deadline already past: one partition (the oldest) is still completed.
    let cfg = RollupConfig::default();
    let first =
        analytics::run_rollup_until(store.clone(), &cfg, Some(std::time::SystemTime::now()))
            .await
            .unwrap();
    assert_eq!((first.new_files, first.partitions_touched), (2, 1));
    assert_eq!(first.partitions_remaining, 1);
    assert!(first.checkpoint_written);
    let cp = checkpoint_json(&store).await;
    assert_eq!(
        cp["partitions"],
        serde_json::json!({"dt=2026-11-25/hour=15": ["a.parquet"]})
    );

    let second = rollup(&store).await;
    assert_eq!((second.new_files, second.partitions_touched), (1, 1));
    assert_eq!(second.partitions_remaining, 0);
    assert_eq!(read_stats(&store, H16).await.len(), 1);
}

//! The query library over stats written by the rollup.

// Helpers outside `#[test]` functions (tests/common) panic on purpose too.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use analytics::{
    Group, Query, QueryError, RollupConfig, Window, query, run_rollup, to_csv, to_table,
};
use common::*;
use object_store::ObjectStore;

/// Telemetry over two hours, rolled up: sensor-a/temperature has windows at 15:59,
/// 16:00, 16:05 and 16:06; sensor-a/humidity and sensor-b/temperature one each at 16:05.
async fn rolled_up() -> Arc<dyn ObjectStore> {
    let store = store();
    put_file(
        &store,
        "a.parquet",
        &[reading("sensor-a", 1, H16 - MINUTE, "temperature", 18.0)],
    )
    .await;
    put_file(
        &store,
        "b.parquet",
        &[
            reading("sensor-a", 2, H16, "temperature", 19.0),
            reading("sensor-a", 3, H16 + 5 * MINUTE + 1250, "temperature", 20.0),
            reading(
                "sensor-a",
                4,
                H16 + 5 * MINUTE + 40 * SECOND,
                "temperature",
                22.0,
            ),
            reading("sensor-a", 5, H16 + 6 * MINUTE, "temperature", 23.0),
            reading("sensor-a", 3, H16 + 5 * MINUTE + 1250, "humidity", 40.0),
            reading("sensor-b", 1, H16 + 5 * MINUTE, "temperature", 10.0),
        ],
    )
    .await;
    let report = run_rollup(store.clone(), &RollupConfig::default())
        .await
        .unwrap();
    assert_eq!(report.windows_updated, 6);
    store
}

fn keys(rows: &[analytics::WindowStats]) -> Vec<(String, String, i64)> {
    rows.iter().map(|r| r.key()).collect()
}

#[tokio::test]
async fn a_query_without_filters_returns_every_window_sorted() {
    let store = rolled_up().await;
    let rows = query(store, &Query::default()).await.unwrap();
    let a_t = |t| ("sensor-a".to_string(), "temperature".to_string(), t);
    assert_eq!(
        keys(&rows),
        vec![
            ("sensor-a".into(), "humidity".into(), H16 + 5 * MINUTE),
            a_t(H16 - MINUTE),
            a_t(H16),
            a_t(H16 + 5 * MINUTE),
            a_t(H16 + 6 * MINUTE),
            ("sensor-b".into(), "temperature".into(), H16 + 5 * MINUTE),
        ]
    );
}

#[tokio::test]
async fn query_filters_by_device_metric_and_a_half_open_time_range() {
    let store = rolled_up().await;
    let q = Query {
        device: Some("sensor-a".into()),
        metric: Some("temperature".into()),
        from_ms: Some(H16),
        to_ms: Some(H16 + 6 * MINUTE),
        ..Query::default()
    };
    let rows = query(store.clone(), &q).await.unwrap();
    let starts: Vec<i64> = rows.iter().map(|r| r.window_start).collect();
    // `from` is inclusive, `to` exclusive.
    assert_eq!(starts, [H16, H16 + 5 * MINUTE]);
    assert!(
        rows.iter()
            .all(|r| r.device_id == "sensor-a" && r.metric == "temperature")
    );

    let b = Query {
        device: Some("sensor-b".into()),
        ..Query::default()
    };
    assert_eq!(query(store.clone(), &b).await.unwrap().len(), 1);
    let nobody = Query {
        device: Some("sensor-z".into()),
        ..Query::default()
    };
    assert!(query(store, &nobody).await.unwrap().is_empty());
}

#[tokio::test]
async fn query_results_serialize_to_the_documented_json_shape() {
    let store = rolled_up().await;
    let q = Query {
        device: Some("sensor-a".into()),
        metric: Some("temperature".into()),
        from_ms: Some(H16 + 5 * MINUTE),
        to_ms: Some(H16 + 7 * MINUTE),
        ..Query::default()
    };
    let rows = query(store, &q).await.unwrap();
    let json = serde_json::to_value(&rows).unwrap();
    assert_eq!(
        json[0],
        serde_json::json!({
            "device_id": "sensor-a",
            "metric": "temperature",
            "window_start": "2026-11-25T16:05:00Z",
            "count": 2,
            "min": 20.0,
            "max": 22.0,
            "sum": 42.0,
            "mean": 21.0,
            "stddev": 2f64.sqrt(),
            "p50": 21.0,
            "p95": 21.9,
            "p99": 21.98,
            "first_event": "2026-11-25T16:05:01.250Z",
            "last_event": "2026-11-25T16:05:40.000Z",
        })
    );
    assert_eq!(json[1]["stddev"], serde_json::Value::Null);
    assert_eq!(json[1]["window_start"], "2026-11-25T16:06:00Z");
    // The JSON reads back into the same statistics; the merge state (m2, sketch) stays in
    // the files.
    let back: Vec<analytics::WindowStats> = serde_json::from_value(json).unwrap();
    let without_state: Vec<_> = rows
        .into_iter()
        .map(|r| analytics::WindowStats {
            m2: 0.0,
            sketch: Vec::new(),
            ..r
        })
        .collect();
    assert_eq!(back, without_state);
}

#[tokio::test]
async fn hourly_and_daily_windows_and_the_fleet_view_add_up_to_the_minutes() {
    let store = rolled_up().await;
    let total = |rows: &[analytics::WindowStats]| rows.iter().map(|r| r.count).sum::<u64>();
    let minutes = query(store.clone(), &Query::default()).await.unwrap();
    for window in ["1m", "1h", "1d"] {
        for group in [Group::Device, Group::Fleet] {
            let q = Query {
                window: window.parse().unwrap(),
                group,
                ..Query::default()
            };
            let rows = query(store.clone(), &q).await.unwrap();
            assert_eq!(total(&rows), total(&minutes), "{window} {group}");
            assert_eq!(
                rows.iter().all(|r| r.device_id == "*"),
                group == Group::Fleet,
                "{window} {group}"
            );
        }
    }
    // sensor-a/temperature: 15:59 in hour 15, four readings in hour 16.
    let q = Query {
        window: Window::H1,
        device: Some("sensor-a".into()),
        metric: Some("temperature".into()),
        ..Query::default()
    };
    let hours = query(store.clone(), &q).await.unwrap();
    assert_eq!(
        hours
            .iter()
            .map(|r| (r.window_start, r.count, r.min, r.max))
            .collect::<Vec<_>>(),
        [(H16 - 3_600_000, 1, 18.0, 18.0), (H16, 4, 19.0, 23.0)]
    );
    // Fleet-wide temperature of hour 16: sensor-a's four readings and sensor-b's one.
    let q = Query {
        window: Window::H1,
        group: Group::Fleet,
        metric: Some("temperature".into()),
        from_ms: Some(H16),
        ..Query::default()
    };
    let fleet = query(store, &q).await.unwrap();
    assert_eq!(fleet.len(), 1);
    assert_eq!(
        (fleet[0].count, fleet[0].sum),
        (5, 19.0 + 20.0 + 22.0 + 23.0 + 10.0)
    );
    assert_eq!((fleet[0].min, fleet[0].max), (10.0, 23.0));
    assert_eq!("1m".parse::<Window>(), Ok(Window::M1));
}

#[tokio::test]
async fn hour_partitions_outside_the_range_are_not_read() {
    let store = rolled_up().await;
    let elsewhere = "stats/window=1m/dt=2026-11-24/hour=10/stats.parquet";
    put_raw(&store, elsewhere, b"not parquet").await;

    let q = Query {
        from_ms: Some(H16),
        ..Query::default()
    };
    assert_eq!(query(store.clone(), &q).await.unwrap().len(), 5);

    // Without a range the file must be read, and a bad file is an error naming it.
    let err = query(store, &Query::default()).await.unwrap_err();
    assert!(
        matches!(&err, QueryError::Read { path, .. } if path == elsewhere),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_empty_time_range_is_refused() {
    let store = rolled_up().await;
    let q = Query {
        from_ms: Some(H16),
        to_ms: Some(H16),
        ..Query::default()
    };
    let err = query(store, &q).await.unwrap_err();
    assert!(matches!(err, QueryError::EmptyRange { .. }), "{err:?}");
}

#[tokio::test]
async fn csv_has_a_header_and_one_line_per_row() {
    let store = rolled_up().await;
    let q = Query {
        device: Some("sensor-a".into()),
        metric: Some("temperature".into()),
        from_ms: Some(H16 + 5 * MINUTE),
        ..Query::default()
    };
    let csv = to_csv(&query(store, &q).await.unwrap());
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines,
        [
            "device_id,metric,window_start,count,min,max,sum,mean,stddev,p50,p95,p99,first_event,last_event",
            "sensor-a,temperature,2026-11-25T16:05:00Z,2,20,22,42,21,1.4142135623730951,21,21.9,21.98,2026-11-25T16:05:01.250Z,2026-11-25T16:05:40.000Z",
            "sensor-a,temperature,2026-11-25T16:06:00Z,1,23,23,23,23,,23,23,23,2026-11-25T16:06:00.000Z,2026-11-25T16:06:00.000Z",
        ]
    );
}

#[tokio::test]
async fn the_table_aligns_every_column() {
    let store = rolled_up().await;
    let rows = query(store, &Query::default()).await.unwrap();
    let table = to_table(&rows);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2 + rows.len());
    assert!(
        lines[0].starts_with("device_id  metric       window_start"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("---------  -----------  --------------------"),
        "{table}"
    );
    // Right-aligned numbers end in the same column as their header.
    let end_of = |line: &str, col: &str| line.find(col).map(|i| i + col.len());
    let count_end = end_of(lines[0], "count").unwrap();
    for line in &lines[2..] {
        let cell = line[..count_end].rsplit(' ').next().unwrap();
        assert!(
            cell.parse::<u64>().is_ok(),
            "count not right-aligned in {line:?}"
        );
    }
    assert!(
        table.contains("sensor-a   temperature  2026-11-25T16:06:00Z      1"),
        "{table}"
    );
    assert!(table.contains("16:05:01.250"), "{table}");
    assert!(
        lines[2..].iter().any(|l| l.contains("      -  ")),
        "a null stddev prints as -:\n{table}"
    );
    assert_eq!(to_table(&[]).lines().count(), 2);
}

//! Rendering tests over a fixture data directory: the numbers on the pages equal what
//! `iotpipe query` and `iotpipe ledger` compute (`analytics::query`, `analytics::ledger`)
//! for the same data, every chart draws what its figure states, and an empty data
//! directory renders the empty state.

// Fixture helpers outside #[test] fns unwrap too: a broken fixture must fail loudly.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use analytics::ledger::{self, LedgerConfig};
use analytics::{Query, WindowStats};
use common::{figures, fixture, site_of, table};
use telemetry::metering::MINUTE_MS;

fn stats_cells(r: &WindowStats) -> Vec<String> {
    vec![
        r.metric.clone(),
        r.window_start.to_string(),
        r.count.to_string(),
        r.min.to_string(),
        r.max.to_string(),
        r.mean.to_string(),
        r.p50.to_string(),
        r.p95.to_string(),
        r.p99.to_string(),
    ]
}

#[tokio::test]
async fn each_device_page_shows_exactly_what_query_and_ledger_return_for_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry::store::open_store(dir.path().to_str().unwrap()).unwrap();
    fixture(&store).await;
    let site = site_of(store.clone()).await;
    for device in ["sensor-a", "sensor-b", "sensor-c"] {
        let page = &site.pages[&dashboard::device_file(device)];
        let q = Query {
            device: Some(device.into()),
            ..Query::default()
        };
        let want: Vec<Vec<String>> = analytics::query(store.clone(), &q)
            .await
            .unwrap()
            .iter()
            .map(stats_cells)
            .collect();
        assert!(!want.is_empty());
        assert_eq!(table(page, "stats"), want, "{device}");

        let cfg = LedgerConfig {
            device: Some(device.into()),
            ..LedgerConfig::default()
        };
        let l = ledger::compute(store.clone(), &cfg, None).await.unwrap();
        let want: Vec<Vec<String>> = l
            .rows
            .iter()
            .map(|r| {
                [
                    r.window_start.unwrap_or(0) as u64,
                    r.sent,
                    r.received,
                    r.duplicated,
                    r.missing,
                    r.late,
                    r.rejected,
                ]
                .iter()
                .map(u64::to_string)
                .collect()
            })
            .collect();
        assert_eq!(table(page, "ledger"), want, "{device}");
    }
    // The fixture's faults are visible: sensor-b lost seq 5 and had one duplicate.
    let b = &site.pages[&dashboard::device_file("sensor-b")];
    let ledger_b = table(b, "ledger");
    assert_eq!(
        ledger_b
            .iter()
            .map(|r| r[4].parse::<u64>().unwrap())
            .sum::<u64>(),
        1
    );
    assert_eq!(
        ledger_b
            .iter()
            .map(|r| r[3].parse::<u64>().unwrap())
            .sum::<u64>(),
        1
    );
}

#[tokio::test]
async fn the_fleet_page_adds_up_the_devices_rows_of_query_per_metric_and_minute() {
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry::store::open_store(dir.path().to_str().unwrap()).unwrap();
    fixture(&store).await;
    let site = site_of(store.clone()).await;
    let index = &site.pages["index.html"];
    let rows = analytics::query(store.clone(), &Query::default())
        .await
        .unwrap();
    for metric in ["battery", "temperature"] {
        let mut want: BTreeMap<i64, (u64, u64, f64, f64, f64)> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.metric == metric) {
            let e = want
                .entry(r.window_start)
                .or_insert((0, 0, 0.0, f64::MAX, f64::MIN));
            e.0 += 1;
            e.1 += r.count;
            e.2 += r.sum;
            e.3 = e.3.min(r.min);
            e.4 = e.4.max(r.max);
        }
        let got = table(index, &format!("fleet-table-{metric}"));
        assert_eq!(got.len(), want.len(), "{metric}: one row per minute");
        for (row, (t, (devices, count, sum, min, max))) in got.iter().zip(&want) {
            assert_eq!(row[0], t.to_string());
            assert_eq!(row[1], devices.to_string());
            assert_eq!(row[2], count.to_string());
            let mean: f64 = row[3].parse().unwrap();
            assert!(
                (mean - sum / *count as f64).abs() < 1e-12,
                "{metric} {t}: {mean}"
            );
            assert_eq!(row[4].parse::<f64>().unwrap(), *min);
            assert_eq!(row[5].parse::<f64>().unwrap(), *max);
        }
        // The quantiles are the analytics fleet view's (merged sketches), not a stand-in.
        let fleet = analytics::query(
            store.clone(),
            &Query {
                group: analytics::Group::Fleet,
                metric: Some(metric.to_string()),
                ..Query::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(fleet.len(), got.len(), "{metric}: a fleet row per minute");
        for (row, f) in got.iter().zip(&fleet) {
            assert_eq!(row[0], f.window_start.to_string());
            for (cell, want) in row[6..9].iter().zip([f.p50, f.p95, f.p99]) {
                assert_eq!(cell.parse::<f64>().unwrap(), want, "{metric}: {row:?}");
            }
        }
        assert!(
            !index.contains("≈p95"),
            "sketched quantiles are not labelled ≈"
        );
    }
    // 4 minutes of data: the band, the mean and p95 lines of 4 points each.
    let fig = figures(index);
    let temp = fig.iter().find(|f| f.0 == "fleet-temperature").unwrap();
    assert_eq!(temp.1, [2, 8, 1, 0]);
    for (id, stated, drawn) in &fig {
        assert_eq!(stated, drawn, "figure {id} draws what it states");
    }
}

#[tokio::test]
async fn devices_health_latency_and_bill_pages_show_the_fixtures_facts() {
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry::store::open_store(dir.path().to_str().unwrap()).unwrap();
    fixture(&store).await;
    let site = site_of(store.clone()).await;

    let devices = &site.pages["devices.html"];
    let silent = table(devices, "silent");
    assert_eq!(
        silent.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["sensor-c", "sensor-d"]
    );
    // Expected vs received: sensor-d sent 6 (the run's sent record), none arrived.
    assert_eq!(silent[1][1..], ["never", "6", "0", "6", "0"]);
    assert_eq!(silent[0][2..], ["2", "2", "0", "0"]);
    let noisy = table(devices, "noisiest");
    assert_eq!(noisy[0][0], "sensor-a");
    assert_eq!(table(devices, "most-rejected"), [["sensor-b", "2"]]);

    let health = &site.pages["health.html"];
    let reasons = table(health, "reasons");
    assert_eq!(
        reasons,
        [
            ["invalid_utf8", "1"],
            ["malformed_json", "1"],
            ["ts_out_of_range", "1"]
        ]
    );
    let functions = table(health, "functions");
    assert_eq!(functions.len(), 3);
    assert_eq!(functions[0][..3], ["ingest", "37", "1"]);

    let latency = &site.pages["latency.html"];
    let l = ledger::compute(store.clone(), &LedgerConfig::default(), None)
        .await
        .unwrap();
    let ratios = table(latency, "ratios");
    assert_eq!(
        ratios[0][1..3],
        [l.totals.missing.to_string(), l.totals.sent.to_string()]
    );
    // sensor-a's seq 4, overtaken by seq 5, among the ledger's received messages.
    assert_eq!(
        ratios[2][..3],
        [
            "out of order / messages".to_string(),
            "1".to_string(),
            l.totals.received.to_string()
        ]
    );
    // Receive delays are 400 ms + 10 ms per seq in the fixture: p50 of the first minute
    // is in that range.
    let lat = table(latency, "latency-table");
    let p50: f64 = lat[0][2].parse().unwrap();
    assert!((0.4..1.0).contains(&p50), "{p50}");
    // Every reading's Parquet object was written before the fixture's one rollup, which
    // the run record lists: each is in the stats at that rollup's end.
    let snap = dashboard::load(store.clone(), &dashboard::Options::default())
        .await
        .unwrap();
    let end = snap.runs[0].rollup_runs[0].ended_at_ms;
    assert!(!snap.transits.is_empty());
    for t in &snap.transits {
        assert_eq!(t.to_stats_ms, Some(end - t.event_time), "{t:?}");
    }
    assert_eq!(lat[0].len(), 9, "the stats columns are shown: {:?}", lat[0]);
    for row in &lat {
        let start: i64 = row[0].parse().unwrap();
        let (p50, p99): (f64, f64) = (row[6].parse().unwrap(), row[7].parse().unwrap());
        let (lo, hi) = (
            (end - start - 60_000) as f64 / 1000.0,
            (end - start) as f64 / 1000.0,
        );
        assert!(lo <= p50 && p50 <= p99 && p99 <= hi, "{row:?}: {lo}..{hi}");
        assert_eq!(row[8], row[1], "every reading is dated");
    }
    let fig = figures(latency);
    assert_eq!(fig[0].1[0], 6, "received, Parquet and stats, p50 and p99");

    let bill = &site.pages["bill.html"];
    let lines = table(bill, "bill-lines");
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], ["IoT Core messaging", "0.000045"]);
    // The month names the fleet it prices and the command that shows it line by line.
    assert!(
        bill.contains("3 device(s) × 0.0625 msg/s (over their publishing)")
            && bill.contains(
                "<code>iotpipe cost --devices 3 --rate 0.0625 --payload-bytes 140 --metrics 3 \
                 --topology firehose</code>"
            ),
        "{bill}"
    );
    for page in site.pages.values() {
        for (id, stated, drawn) in figures(page) {
            assert_eq!(stated, drawn, "figure {id} draws what it states");
        }
        for reference in ["src=\"", "href=\"", "url("] {
            for scheme in ["http:", "https:", "//"] {
                assert!(
                    !page.contains(&format!("{reference}{scheme}")),
                    "no other host"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_empty_data_directory_renders_the_empty_state_on_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry::store::open_store(dir.path().to_str().unwrap()).unwrap();
    let site = site_of(store).await;
    assert_eq!(
        site.pages.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "bill.html",
            "devices.html",
            "health.html",
            "index.html",
            "latency.html"
        ]
    );
    for (name, page) in &site.pages {
        assert!(
            page.contains("class=\"empty\""),
            "{name} shows the empty state"
        );
        assert!(page.contains("iotpipe up"), "{name} says how to get data");
    }
    let out = tempfile::tempdir().unwrap();
    assert_eq!(dashboard::write_dir(&site, out.path()).unwrap(), 5);
    assert!(out.path().join("index.html").is_file());
}

/// The `(x, y)` pixel points of each data line of the figure `id` in `html`.
fn line_points(html: &str, id: &str) -> Vec<Vec<(f64, f64)>> {
    let f = &html[html
        .find(&format!("<figure class=\"chart\" id=\"{id}\""))
        .unwrap()..];
    let f = &f[..f.find("</figure>").unwrap()];
    let width = format!("stroke-width=\"{}\"", dashboard::chart::LINE_WIDTH);
    f.split("<polyline")
        .skip(1)
        .filter(|p| p[..p.find('>').unwrap()].contains(&width))
        .map(|p| {
            let i = p.find("points=\"").unwrap() + 8;
            p[i..i + p[i..].find('"').unwrap()]
                .split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

/// `values` drawn as `points`: x grows with time, and a larger value is higher (smaller y),
/// an equal one level.
fn assert_drawn(what: &str, values: &[f64], points: &[(f64, f64)]) {
    assert_eq!(values.len(), points.len(), "{what}: one point per minute");
    assert!(
        points.windows(2).all(|w| w[0].0 < w[1].0),
        "{what}: {points:?}"
    );
    for (i, (a, pa)) in values.iter().zip(points).enumerate() {
        for (b, pb) in values.iter().zip(points).skip(i + 1) {
            let want = b.partial_cmp(a).unwrap();
            let got = pa.1.partial_cmp(&pb.1).unwrap();
            assert_eq!(got, want, "{what}: {a} at y {} vs {b} at y {}", pa.1, pb.1);
        }
    }
}

#[tokio::test]
async fn the_health_page_charts_each_functions_invocations_and_durations_per_minute_as_metered() {
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry::store::open_store(dir.path().to_str().unwrap()).unwrap();
    let metered = fixture(&store).await;
    let site = site_of(store).await;
    let health = &site.pages["health.html"];

    // The table is the meter's records, function by function, minute by minute.
    let want: Vec<Vec<String>> = metered
        .iter()
        .flat_map(|f| {
            f.per_minute.iter().map(|m| {
                vec![
                    f.function.clone(),
                    m.minute_start_ms.to_string(),
                    m.invocations.to_string(),
                    m.errors.to_string(),
                    m.p50_duration_ms.to_string(),
                    m.p99_duration_ms.to_string(),
                    m.max_duration_ms.to_string(),
                ]
            })
        })
        .collect();
    assert_eq!(table(health, "functions-per-minute"), want);
    // What the fixture ran: ingest in minutes 0, 1 and 3, one failure in minute 3.
    let ingest = &metered[0];
    assert_eq!(ingest.function, "ingest");
    let minutes: Vec<(i64, u64, u64)> = ingest
        .per_minute
        .iter()
        .map(|m| {
            (
                (m.minute_start_ms - common::H16) / MINUTE_MS,
                m.invocations,
                m.errors,
            )
        })
        .collect();
    assert_eq!(minutes, [(0, 20, 0), (1, 12, 0), (3, 5, 1)]);
    // 1..=20 ms: p50 10 ms; 2..=24 ms in steps of 2: p99 24 ms (histogram: ≤ 1.6 % high,
    // plus tokio's 1 ms timer tick).
    for (got, exact) in [
        (ingest.per_minute[0].p50_duration_ms, 10.0),
        (ingest.per_minute[1].p99_duration_ms, 24.0),
        (ingest.per_minute[2].max_duration_ms, 30.0),
    ] {
        assert!(
            got >= exact && got <= exact * 1.016 + 1.0,
            "{got} vs {exact}"
        );
    }

    // Invocations per minute: a line per function, its points the minutes' counts.
    let fig = figures(health);
    let inv = fig
        .iter()
        .find(|f| f.0 == "invocations-per-minute")
        .unwrap();
    let minutes_in_all: usize = metered.iter().map(|f| f.per_minute.len()).sum();
    assert_eq!(inv.1, [metered.len(), minutes_in_all, 0, 0]);
    assert_eq!(inv.1, inv.2, "the SVG draws what the figure states");
    let lines = line_points(health, "invocations-per-minute");
    // One chart, one y scale: every function's counts are ordered against each other too.
    let values: Vec<f64> = metered
        .iter()
        .flat_map(|f| f.per_minute.iter().map(|m| m.invocations as f64))
        .collect();
    let points: Vec<(f64, f64)> = lines.iter().flatten().copied().collect();
    for (f, line) in metered.iter().zip(&lines) {
        let v: Vec<f64> = f.per_minute.iter().map(|m| m.invocations as f64).collect();
        assert_drawn(&f.function, &v, line);
    }
    for (i, (a, pa)) in values.iter().zip(&points).enumerate() {
        for (b, pb) in values.iter().zip(&points).skip(i + 1) {
            assert_eq!(pa.1.partial_cmp(&pb.1), b.partial_cmp(a), "{a} vs {b}");
        }
    }

    // Duration: a chart per function, p50 and p99 lines of a point per minute.
    for f in &metered {
        let id = format!("duration-{}", f.function);
        let d = fig.iter().find(|x| x.0 == id).unwrap();
        assert_eq!(d.1, [2, 2 * f.per_minute.len(), 0, 0], "{id}");
        assert_eq!(d.1, d.2, "{id}: the SVG draws what the figure states");
        let lines = line_points(health, &id);
        let p50: Vec<f64> = f.per_minute.iter().map(|m| m.p50_duration_ms).collect();
        let p99: Vec<f64> = f.per_minute.iter().map(|m| m.p99_duration_ms).collect();
        assert_drawn(&format!("{id} p50"), &p50, &lines[0]);
        assert_drawn(&format!("{id} p99"), &p99, &lines[1]);
    }
}

#[tokio::test]
async fn a_run_record_without_per_minute_figures_says_so_instead_of_drawing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry::store::open_store(dir.path().to_str().unwrap()).unwrap();
    let old = serde_json::json!({
        "finished_at_ms": common::H16, "elapsed_s": 1.0, "input": 1, "accepted": 1,
        "quarantined": 0,
        "functions": [{"function": "ingest", "memory_size_mb": 128, "invocations": 1,
                       "total_duration_ms": 1.0, "p99_duration_ms": 1.0, "max_memory_used_mb": 9}],
        "cost": {"lines": [], "total_usd": 0.0, "month_at_this_rate_usd": 0.0}
    });
    dashboard::save_run(&store, common::H16, &old)
        .await
        .unwrap();
    let site = site_of(store).await;
    let health = &site.pages["health.html"];
    assert!(health.contains("no per-minute figures"), "{health}");
    assert!(!health.contains("invocations-per-minute"));
    assert_eq!(table(health, "functions").len(), 1);
}

#[tokio::test]
async fn telemetry_as_firehose_converts_it_plain_strings_and_nanosecond_times_is_read_too() {
    use std::sync::Arc;

    use arrow_array::{
        ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
    };
    use arrow_schema::{DataType, Field, Schema, TimeUnit};

    let dir = tempfile::tempdir().unwrap();
    let store = telemetry::store::open_store(dir.path().to_str().unwrap()).unwrap();
    let ns = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("event_time", ns.clone(), false),
        Field::new("received_at", ns, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("fw", DataType::Utf8, true),
    ]));
    // Three messages of one device, 10 s apart, each received 500 ms after its event
    // time, except seq 2, received after seq 3 (out of order).
    let event = |s: i64| common::H16 + s * 10_000;
    let received = [event(1) + 500, event(3) + 600, event(3) + 500];
    let ms_to_ns = |ms: i64| ms * 1_000_000;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["thing-1"; 3])),
        Arc::new(Int64Array::from(vec![1, 2, 3])),
        Arc::new(
            TimestampNanosecondArray::from(vec![
                ms_to_ns(event(1)),
                ms_to_ns(event(2)),
                ms_to_ns(event(3)),
            ])
            .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampNanosecondArray::from(
                received.iter().map(|&r| ms_to_ns(r)).collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from(vec!["temperature"; 3])),
        Arc::new(Float64Array::from(vec![20.0, 21.0, 22.0])),
        Arc::new(StringArray::from(vec![None::<&str>; 3])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let path = format!(
        "telemetry/{}/firehose-converted.parquet",
        telemetry::Partition::of_millis(common::H16).path()
    );
    telemetry::parquet_writer::write_single(
        store.clone(),
        &path,
        &[batch],
        schema,
        telemetry::parquet::basic::Compression::SNAPPY,
    )
    .await
    .unwrap();

    let site = site_of(store).await;
    let latency = &site.pages["latency.html"];
    let lat = table(latency, "latency-table");
    assert_eq!(lat.len(), 1, "one minute of event time: {lat:?}");
    assert_eq!(lat[0][1], "3");
    // →received p50 and p99: 0.5 s and the overtaken message's 10.6 s.
    assert_eq!(lat[0][2..4], ["0.5", "10.6"]);
    let ratios = table(latency, "ratios");
    assert_eq!(ratios[2][..3], ["out of order / messages", "1", "3"]);
}

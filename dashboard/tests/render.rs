//! Rendering tests over a fixture data directory: the numbers on the pages equal what
//! `iotpipe query` and `iotpipe ledger` compute (`analytics::query`, `analytics::ledger`)
//! for the same data, every chart draws what its figure states, and an empty data
//! directory renders the empty state.

// Fixture helpers outside #[test] fns unwrap too: a broken fixture must fail loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use analytics::ledger::{self, LedgerConfig};
use analytics::{Query, RollupConfig, WindowStats};
use dashboard::{Options, Site};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use telemetry::parquet::basic::Compression;
use telemetry::parquet_writer::write_single;
use telemetry::quarantine::{QuarantineRecord, object_key, to_json_lines};
use telemetry::schema::{readings_to_batch, telemetry_schema};
use telemetry::{Partition, Reading};

/// 2026-11-25T16:00:00Z.
const H16: i64 = 1_795_622_400_000;

fn reading(device: &str, seq: i64, event_time: i64, metric: &str, value: f64) -> Reading {
    Reading {
        device_id: device.into(),
        seq,
        event_time,
        received_at: event_time + 400 + seq * 10,
        metric: metric.into(),
        value,
        fw: None,
    }
}

/// Three devices over four minutes, two metrics: `sensor-a` sends every 10 s,
/// `sensor-b` every 20 s with a gap (seq 5 lost: its payload was not JSON) and one
/// duplicate delivery, `sensor-c` stops after the first minute (silent); two quarantined
/// payloads of `sensor-b` (seq 5 unreadable, seq 12 with a bad `ts`) and one
/// unattributable; one run record.
async fn fixture(store: &Arc<dyn ObjectStore>) {
    let mut rows = Vec::new();
    for (device, every_s, minutes) in [
        ("sensor-a", 10, 4),
        ("sensor-b", 20, 4),
        ("sensor-c", 30, 1),
    ] {
        let n = minutes * 60 / every_s;
        for seq in 0..n {
            if device == "sensor-b" && seq == 5 {
                continue;
            }
            let t = H16 + seq * every_s * 1000 + 123;
            rows.push(reading(
                device,
                seq,
                t,
                "temperature",
                20.0 + (seq % 7) as f64 * 0.5,
            ));
            rows.push(reading(device, seq, t, "battery", 3.7 - seq as f64 * 0.001));
        }
    }
    // A duplicate delivery of sensor-b's seq 2, in another file.
    let dup: Vec<Reading> = rows
        .iter()
        .filter(|r| r.device_id == "sensor-b" && r.seq == 2)
        .cloned()
        .collect();
    for (name, batch) in [("a.parquet", rows), ("b.parquet", dup)] {
        let path = format!("telemetry/{}/{name}", Partition::of_millis(H16).path());
        let batch = readings_to_batch(&batch).unwrap();
        write_single(
            store.clone(),
            &path,
            &[batch],
            telemetry_schema(),
            Compression::SNAPPY,
        )
        .await
        .unwrap();
    }
    let bad = |code: &str, topic: &str, at: i64, raw: &[u8]| {
        let reason: telemetry::quarantine::QuarantineReason =
            serde_json::from_value(serde_json::Value::from(code)).unwrap();
        QuarantineRecord::other(reason, format!("{code} in the fixture"), topic, at, raw)
    };
    let q = [
        bad(
            "malformed_json",
            "dt/f/sensor-b/telemetry",
            H16 + 30_000,
            br#"{"device_id":"sensor-b","seq":5"#,
        ),
        bad(
            "ts_out_of_range",
            "dt/f/sensor-b/telemetry",
            H16 + 95_000,
            br#"{"device_id":"sensor-b","seq":12,"ts":1,"metrics":{"t":1}}"#,
        ),
        bad(
            "invalid_utf8",
            "dt/f/nobody/telemetry",
            H16 + 95_000,
            &[0xff],
        ),
    ];
    store
        .put(
            &Path::from(object_key(H16 + 30_000, "fixture")),
            PutPayload::from(to_json_lines(&q)),
        )
        .await
        .unwrap();
    let run = serde_json::json!({
        "finished_at_ms": H16 + 300_000, "elapsed_s": 240.0, "input": 45, "accepted": 42,
        "quarantined": 3,
        "functions": [
            {"function": "ingest", "memory_size_mb": 128, "invocations": 45, "errors": 0,
             "total_duration_ms": 9.0, "p99_duration_ms": 0.5, "max_memory_used_mb": 60},
            {"function": "rollup", "memory_size_mb": 1024, "invocations": 2, "errors": 0,
             "total_duration_ms": 30.0, "p99_duration_ms": 20.0, "max_memory_used_mb": 61}],
        "cost": {"lines": [{"item": "IoT Core messaging", "usd": 0.000045},
                           {"item": "Lambda ingest (128 MB, arm64)", "usd": 0.00001},
                           {"item": "S3 PUT requests", "usd": 0.00002}],
                 "total_usd": 0.000075, "month_at_this_rate_usd": 0.82, "prices_as_of": "2025-11-25"},
        "ignored_extra_field": true
    });
    dashboard::save_run(store, H16 + 300_000, &run)
        .await
        .unwrap();
    analytics::run_rollup(store.clone(), &RollupConfig::default())
        .await
        .unwrap();
}

/// The rows of `<table id="{id}">` in `html`: per row, each cell's `data-v` (or its text).
fn table(html: &str, id: &str) -> Vec<Vec<String>> {
    let start = html
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id}"));
    let body = &html[start..];
    let body = &body[body.find("<tbody>").unwrap()..body.find("</tbody>").unwrap()];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    match cell
                        .strip_prefix(" class=\"n\"")
                        .unwrap_or(cell)
                        .strip_prefix(" data-v=\"")
                    {
                        Some(rest) => rest[..rest.find('"').unwrap()].to_string(),
                        None => {
                            let text =
                                &cell[cell.find('>').unwrap() + 1..cell.find("</td>").unwrap()];
                            // A link cell: its text.
                            match text.find('>') {
                                Some(i) => text[i + 1..text.find("</a>").unwrap()].to_string(),
                                None => text.to_string(),
                            }
                        }
                    }
                })
                .collect()
        })
        .collect()
}

/// Every `<figure class="chart">`: (id, what it states — lines, line points, bands, bars —
/// and what its SVG holds: polylines of the data line width and their points, polygons,
/// filled non-white rects).
fn figures(html: &str) -> Vec<(String, [usize; 4], [usize; 4])> {
    let width = format!("stroke-width=\"{}\"", dashboard::chart::LINE_WIDTH);
    html.split("<figure class=\"chart\"")
        .skip(1)
        .map(|f| {
            let f = &f[..f.find("</figure>").unwrap()];
            let attr = |name: &str| {
                let i = f.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                f[i..i + f[i..].find('"').unwrap()].to_string()
            };
            let n = |name: &str| attr(name).parse::<usize>().unwrap();
            let lines: Vec<&str> = f
                .split("<polyline")
                .skip(1)
                .filter(|p| p[..p.find("/>").unwrap()].contains(&width))
                .collect();
            let points: usize = lines
                .iter()
                .map(|p| {
                    let i = p.find("points=\"").unwrap() + 8;
                    p[i..i + p[i..].find('"').unwrap()]
                        .split_whitespace()
                        .count()
                })
                .sum();
            let bars = f
                .split("<rect")
                .skip(1)
                .filter(|r| !r[..r.find("/>").unwrap()].contains("fill=\"#FFFFFF\""))
                .count();
            (
                attr("id"),
                [
                    n("data-lines"),
                    n("data-line-points"),
                    n("data-bands"),
                    n("data-bars"),
                ],
                [lines.len(), points, f.matches("<polygon").count(), bars],
            )
        })
        .collect()
}

async fn site_of(store: Arc<dyn ObjectStore>) -> Site {
    dashboard::build(store, &Options::default(), H16 + 600_000)
        .await
        .unwrap()
}

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
        ["sensor-c"]
    );
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
    assert_eq!(functions.len(), 2);
    assert_eq!(functions[0][..3], ["ingest", "45", "0"]);

    let latency = &site.pages["latency.html"];
    let l = ledger::compute(store.clone(), &LedgerConfig::default(), None)
        .await
        .unwrap();
    let ratios = table(latency, "ratios");
    assert_eq!(
        ratios[0][1..3],
        [l.totals.missing.to_string(), l.totals.sent.to_string()]
    );
    // Receive delays are 400 ms + 10 ms per seq in the fixture: p50 of the first minute
    // is in that range.
    let lat = table(latency, "latency-table");
    let p50: f64 = lat[0][2].parse().unwrap();
    assert!((0.4..1.0).contains(&p50), "{p50}");

    let bill = &site.pages["bill.html"];
    let lines = table(bill, "bill-lines");
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], ["IoT Core messaging", "0.000045"]);
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

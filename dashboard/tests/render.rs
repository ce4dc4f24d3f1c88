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

//! `iotpipe dashboard` end to end, through the binaries a user runs: after `iotpipe
//! replay` of a seeded device-sim dump, every device page shows exactly the rows `iotpipe
//! query --format json` prints, the health page the run's metering per function and minute,
//! and the bill page shows the run's cost from its summary.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;

use iotpipe_tests::{bin, iotpipe, last_json_line, query_json, run};
use serde_json::Value;

/// `(metric, window_start ms, count, min, max, mean, p50, p95, p99)` of each row of the
/// `<table id="stats">` of a device page, from the cells' exact `data-v` values.
fn page_rows(html: &str) -> Vec<Vec<String>> {
    table_rows(html, "stats")
}

/// The cells of each row of `<table id="{id}">` (`data-v` when a cell has one).
fn table_rows(html: &str, id: &str) -> Vec<Vec<String>> {
    let start = html
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("a table {id}"));
    let body = &html[start..];
    let body = &body[body.find("<tbody>").unwrap()..body.find("</tbody>").unwrap()];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| match cell.find("data-v=\"") {
                    Some(i) => cell[i + 8..i + 8 + cell[i + 8..].find('"').unwrap()].to_string(),
                    None => {
                        cell[cell.find('>').unwrap() + 1..cell.find("</td>").unwrap()].to_string()
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_device_page_shows_the_rows_iotpipe_query_prints_and_the_bill_the_runs_cost() {
    let dir = tempfile::tempdir().unwrap();
    let start = chrono::Utc::now().timestamp_millis() - 40 * 60 * 1000;
    let dump = run(std::process::Command::new(bin("device-sim")).args([
        "--devices",
        "4",
        "--rate",
        "1",
        "--duration",
        "3m",
        "--seed",
        "12",
        "--start",
        &start.to_string(),
        "--dump",
        "-",
    ]));
    let file = dir.path().join("raw.jsonl");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(&dump.stdout)
        .unwrap();
    let data = dir.path().join("data");
    let summary = last_json_line(&run(iotpipe(&["replay", "--summary-json", "--data"])
        .arg(&data)
        .arg(&file)));

    let rows = query_json(&data);
    assert!(!rows.is_empty());
    let mut by_device: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for r in &rows {
        let t = chrono::DateTime::parse_from_rfc3339(r["window_start"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let f = |k: &str| r[k].as_f64().unwrap().to_string();
        by_device
            .entry(r["device_id"].as_str().unwrap().to_string())
            .or_default()
            .push(vec![
                r["metric"].as_str().unwrap().to_string(),
                t.to_string(),
                r["count"].as_u64().unwrap().to_string(),
                f("min"),
                f("max"),
                f("mean"),
                f("p50"),
                f("p95"),
                f("p99"),
            ]);
    }
    assert_eq!(by_device.len(), 4);

    let site = dir.path().join("site");
    let out = run(iotpipe(&["dashboard", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&site));
    assert!(String::from_utf8_lossy(&out.stdout).contains("index.html"));
    for (device, want) in &by_device {
        let html = std::fs::read_to_string(site.join(format!("device/{device}.html"))).unwrap();
        let got = page_rows(&html);
        assert_eq!(
            got.len(),
            want.len(),
            "{device}: one row per metric and minute"
        );
        for (g, w) in got.iter().zip(want) {
            // Text and integers exactly; floats within serde_json's parsing error (it does
            // not round-trip the last digit without its float_roundtrip feature).
            assert_eq!(g[..3], w[..3], "{device}");
            for (a, b) in g[3..].iter().zip(&w[3..]) {
                let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
                assert!(
                    (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                    "{device}: {g:?} vs {w:?}"
                );
            }
        }
    }
    // The health page's per-minute table is the run's metering, minute by minute, and the
    // minutes add up to each function's invocations.
    let health = std::fs::read_to_string(site.join("health.html")).unwrap();
    let mut want = Vec::new();
    for f in summary["functions"].as_array().unwrap() {
        let minutes = f["per_minute"].as_array().unwrap();
        assert!(!minutes.is_empty(), "{f}");
        let sum: u64 = minutes
            .iter()
            .map(|m| m["invocations"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, f["invocations"].as_u64().unwrap(), "{f}");
        for m in minutes {
            want.push(vec![
                f["function"].as_str().unwrap().to_string(),
                m["minute_start_ms"].to_string(),
                m["invocations"].to_string(),
                m["errors"].to_string(),
            ]);
        }
    }
    let got: Vec<Vec<String>> = table_rows(&health, "functions-per-minute")
        .into_iter()
        .map(|r| r[..4].to_vec())
        .collect();
    assert_eq!(got, want);
    let bill = std::fs::read_to_string(site.join("bill.html")).unwrap();
    let total: &Value = &summary["cost"]["total_usd"];
    assert!(
        bill.contains(&format!("{:.6}", total.as_f64().unwrap())),
        "the bill page shows the run's total {total}"
    );
}

//! Helpers shared by the dashboard's tests: the fixture data directory, and readers of the
//! pages' tables and figures.
#![allow(dead_code)] // Each test crate uses a different subset.

use std::sync::Arc;

use analytics::RollupConfig;
use dashboard::{Options, Site};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use telemetry::parquet::basic::Compression;
use telemetry::parquet_writer::write_single;
use telemetry::quarantine::{QuarantineRecord, object_key, to_json_lines};
use telemetry::schema::{readings_to_batch, telemetry_schema};
use telemetry::{Partition, Reading};

/// 2026-11-25T16:00:00Z.
pub const H16: i64 = 1_795_622_400_000;

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
pub async fn fixture(store: &Arc<dyn ObjectStore>) {
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
pub fn table(html: &str, id: &str) -> Vec<Vec<String>> {
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
pub fn figures(html: &str) -> Vec<(String, [usize; 4], [usize; 4])> {
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
                .filter(|p| p[..p.find('>').unwrap()].contains(&width))
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
                .filter(|r| !r[..r.find('>').unwrap()].contains("fill=\"#FFFFFF\""))
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

pub async fn site_of(store: Arc<dyn ObjectStore>) -> Site {
    dashboard::build(store, &Options::default(), H16 + 600_000)
        .await
        .unwrap()
}

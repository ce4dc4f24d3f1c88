//! Helpers shared by the dashboard's tests: the fixture data directory, and readers of the
//! pages' tables and figures.
#![allow(dead_code)] // Each test crate uses a different subset.

use std::sync::Arc;
use std::time::Duration;

use analytics::RollupConfig;
use analytics::ledger::{DeviceSent, SentLedger};
use dashboard::{Options, RunSent, Site};
use local::meter::{FnReport, INGEST, LambdaFn, Meter, ROLLUP, TRANSFORM};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use telemetry::metering::RollupRun;
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

/// The Lambda figures of the fixture's run, from a real [`Meter`] on a paused clock that
/// starts at [`H16`]: ingest in minutes 0, 1 and 3 (none in minute 2; one failure in
/// minute 3), transform in minutes 1 and 3, the rollup once in minute 2 and once in
/// minute 4, each invocation lasting a known number of milliseconds.
pub fn metered_run() -> Vec<FnReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    // A test's own runtime cannot block on another: a thread of its own.
    std::thread::spawn(move || {
        rt.block_on(async {
            let meter = Meter::starting_at(H16);
            let run = |f: &'static LambdaFn, ms: u64, fail: bool| {
                let meter = meter.clone();
                async move {
                    let _ = meter
                        .invoke(f, |r: &Result<(), ()>| r.is_err(), async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            if fail { Err(()) } else { Ok(()) }
                        })
                        .await;
                }
            };
            let origin = tokio::time::Instant::now();
            let goto = |m: u64| async move {
                let at = origin + Duration::from_secs(60 * m + 1);
                tokio::time::advance(at.saturating_duration_since(tokio::time::Instant::now()))
                    .await;
            };
            for ms in 1..=20 {
                run(&INGEST, ms, false).await;
            }
            goto(1).await;
            for ms in 1..=12 {
                run(&INGEST, ms * 2, false).await;
            }
            run(&TRANSFORM, 40, false).await;
            run(&TRANSFORM, 90, false).await;
            goto(2).await;
            run(&ROLLUP, 200, false).await;
            goto(3).await;
            for ms in [3, 3, 4, 5, 30] {
                run(&INGEST, ms, ms == 30).await;
            }
            run(&TRANSFORM, 60, false).await;
            goto(4).await;
            run(&ROLLUP, 350, false).await;
            meter.report()
        })
    })
    .join()
    .unwrap()
}

/// Three devices over four minutes, two metrics: `sensor-a` sends every 10 s,
/// `sensor-b` every 20 s with a gap (seq 5 lost: its payload was not JSON) and one
/// duplicate delivery, `sensor-a`'s seq 4 received after its seq 5 (out of order), `sensor-c` stops after the first minute (silent); two quarantined
/// payloads of `sensor-b` (seq 5 unreadable, seq 12 with a bad `ts`) and one
/// unattributable; the rollup; one run record, whose Lambda figures are [`metered_run`]'s
/// (returned) and which lists that rollup, and its sent record, which adds `sensor-d`, whose
/// messages all went missing.
pub async fn fixture(store: &Arc<dyn ObjectStore>) -> Vec<FnReport> {
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
    // sensor-a's seq 4 is overtaken by seq 5 on the way (received 12 s after its event,
    // within its window's grace: out of order, not late).
    for r in rows
        .iter_mut()
        .filter(|r| r.device_id == "sensor-a" && r.seq == 4)
    {
        r.received_at = r.event_time + 12_000;
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
    // The fixture's rollup, timed: the run record lists it, as iotpipe up's lists its own.
    let started_at_ms = chrono::Utc::now().timestamp_millis();
    analytics::run_rollup(store.clone(), &RollupConfig::default())
        .await
        .unwrap();
    let rollup_runs = [RollupRun {
        started_at_ms,
        ended_at_ms: chrono::Utc::now().timestamp_millis(),
        ok: true,
    }];
    let functions = metered_run();
    let run = serde_json::json!({
        "finished_at_ms": H16 + 300_000, "elapsed_s": 240.0, "input": 45, "accepted": 42,
        "quarantined": 3,
        "functions": functions,
        "cost": {"lines": [{"item": "IoT Core messaging", "usd": 0.000045},
                           {"item": "Lambda ingest (128 MB, arm64)", "usd": 0.00001},
                           {"item": "S3 PUT requests", "usd": 0.00002}],
                 "total_usd": 0.000075, "month_at_this_rate_usd": 0.82, "prices_as_of": "2025-11-25",
                 "month_fleet": {"devices": 3, "rate": 0.0625, "over": "their publishing",
                                 "command": "iotpipe cost --devices 3 --rate 0.0625 --payload-bytes 140 --metrics 3 --topology firehose",
                                 "payload_bytes": 140, "batch": 1}},
        "rollup_runs": rollup_runs,
        "ignored_extra_field": true
    });
    dashboard::save_run(store, H16 + 300_000, &run)
        .await
        .unwrap();
    // What the run's simulated devices sent: the three above, and sensor-d, none of whose
    // six messages arrived.
    let range = |last_seq: u64| DeviceSent {
        first_seq: 0,
        last_seq: Some(last_seq),
        dropped: 0,
    };
    let sent = SentLedger {
        per_device: [
            ("sensor-a", range(23)),
            ("sensor-b", range(11)),
            ("sensor-c", range(1)),
            ("sensor-d", range(5)),
        ]
        .into_iter()
        .map(|(d, r)| (d.to_string(), r))
        .collect(),
    };
    dashboard::save_sent(
        store,
        H16 + 300_000,
        &RunSent {
            since_ms: H16 - 60_000,
            sent,
        },
    )
    .await
    .unwrap();
    functions
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

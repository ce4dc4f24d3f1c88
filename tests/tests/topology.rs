//! `iotpipe replay --topology firehose` (the rule puts raw payloads into Firehose, the
//! transform validates and quarantines), `--topology kinesis` (the rule puts them into the
//! stream, an event-source mapping invokes ingest in batches) and `--topology per-message`
//! (the rule invokes ingest per message) on the same seeded file with hostile payloads and a
//! device batch spanning an hour boundary: the same stats, the same quarantine, and the
//! three bills in the order `iotpipe cost` predicts.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use iotpipe_tests::{
    cost_lines, dump, files_under, iotpipe, last_json_line, query_json, run, stdout_json,
    total_count,
};
use serde_json::Value;

fn replay_topology(file: &Path, data: &Path, topology: &str) -> Value {
    let mut cmd = iotpipe(&[
        "replay",
        "--summary-json",
        "--rollup-every",
        "1h",
        "--topology",
        topology,
        "--data",
    ]);
    cmd.arg(data).arg(file);
    last_json_line(&run(&mut cmd))
}

/// Every quarantine record under `data/quarantine/`: (reason code, raw bytes), sorted.
fn quarantine(data: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in files_under(&data.join("quarantine")) {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let q: Value = serde_json::from_str(line).unwrap();
            out.push((
                q["reason_code"].as_str().unwrap().to_owned(),
                q["payload_b64"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out.sort();
    out
}

fn line_usd(summary: &Value, prefix: &str) -> f64 {
    cost_lines(summary, prefix, "usd")
}

fn invocations(summary: &Value, function: &str) -> u64 {
    summary["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["function"].as_str() == Some(function))
        .map(|f| f["invocations"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn every_topology_answers_the_same_stats_and_quarantine_and_bills_in_the_predicted_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seeded.jsonl");
    let start = chrono::Utc::now().timestamp_millis() - 30 * 60 * 1000;
    dump(&file, 5, "2m", 9, start);
    let mut text = std::fs::read_to_string(&file).unwrap();
    let seeded = text.lines().count() as u64;
    let now = chrono::Utc::now().timestamp_millis();
    // The start of the previous hour: both sides of it are within the accepted window.
    let boundary = (now / 3_600_000 - 1) * 3_600_000;
    for hostile in [
        "{\"device_id\":".to_owned(),
        format!(r#"{{"device_id":"bad id","seq":1,"ts":{now},"metrics":{{"t":1}}}}"#),
        format!(
            r#"{{"device_id":"x","seq":1,"ts":{now},"metrics":{{"t":1}},"pad":"{}"}}"#,
            "x".repeat(140_000)
        ),
        format!(r#"[{{"device_id":"x","seq":2,"ts":{now},"metrics":{{"t":1}}}},{{"seq":3}}]"#),
        // A valid device batch whose messages straddle an hour boundary: one Firehose
        // record, two partitions (2 readings in the earlier hour, 1 in the later).
        format!(
            r#"[{{"device_id":"span-1","seq":1,"ts":{},"metrics":{{"t":1,"h":2}}}},{{"device_id":"span-1","seq":2,"ts":{},"metrics":{{"t":3}}}}]"#,
            boundary - 1_000,
            boundary + 1_000
        ),
    ] {
        text.push_str(&hostile);
        text.push('\n');
    }
    std::fs::write(&file, text).unwrap();

    let fh_data = dir.path().join("firehose");
    let ki_data = dir.path().join("kinesis");
    let pm_data = dir.path().join("per-message");
    let fh = replay_topology(&file, &fh_data, "firehose");
    let ki = replay_topology(&file, &ki_data, "kinesis");
    let pm = replay_topology(&file, &pm_data, "per-message");

    // The same stats, to the last column.
    let (fh_rows, ki_rows, pm_rows) = (
        query_json(&fh_data),
        query_json(&ki_data),
        query_json(&pm_data),
    );
    assert!(!fh_rows.is_empty());
    assert_eq!(fh_rows, pm_rows);
    assert_eq!(ki_rows, pm_rows);
    // The seeded messages (3 readings each), the batch's valid element (1 reading) and the
    // batch spanning an hour boundary (3 readings).
    assert_eq!(total_count(&fh_rows), seeded * 3 + 1 + 3, "{fh}");
    // Nothing failed or went to the error prefix, and every reading is a Parquet row.
    for s in [&fh, &ki, &pm] {
        assert_eq!(s["firehose"]["processing_failed"], 0, "{s}");
        assert_eq!(s["rows"], s["readings"], "{s}");
    }
    // The batch spanning the boundary: each reading in its own hour's partition.
    let span_hours = |data: &Path| -> Vec<(String, u64)> {
        let mut hours: Vec<(String, u64)> = query_json(data)
            .iter()
            .filter(|r| r["device_id"] == "span-1")
            .map(|r| {
                (
                    r["window_start"].as_str().unwrap()[..13].to_owned(),
                    r["count"].as_u64().unwrap(),
                )
            })
            .collect();
        hours.sort();
        hours
    };
    let fh_span = span_hours(&fh_data);
    assert_eq!(fh_span.len(), 3, "{fh_span:?}");
    assert_ne!(fh_span[0].0, fh_span[2].0, "{fh_span:?}");
    assert_eq!(fh_span, span_hours(&pm_data));
    assert_eq!(fh["firehose"]["split_rows"], 1, "{fh}");

    // The same accounting and the same quarantine: code and raw bytes of every reject.
    for s in [&fh, &ki] {
        for k in ["input", "accepted", "quarantined", "readings"] {
            assert_eq!(s[k], pm[k], "{k}: {s} per-message {pm}");
        }
    }
    assert_eq!(fh["quarantined"].as_u64(), Some(4), "{fh}");
    let q = quarantine(&fh_data);
    assert_eq!(q, quarantine(&pm_data));
    assert_eq!(q, quarantine(&ki_data));
    let codes: Vec<&str> = q.iter().map(|(c, _)| c.as_str()).collect();
    for code in [
        "malformed_json",
        "bad_device_id",
        "oversize_payload",
        "missing_field",
    ] {
        assert!(codes.contains(&code), "no {code} among {codes:?}");
    }

    // The bills: no ingest, no messaging charge, no stream in the firehose topology; in the
    // kinesis topology Basic Ingest (no messaging charge), a stream, and ingest in batches.
    assert_eq!(fh["cost"]["topology"], "firehose");
    assert_eq!(ki["cost"]["topology"], "kinesis");
    assert_eq!(pm["cost"]["topology"], "per-message");
    assert_eq!(invocations(&fh, "ingest"), 0, "{fh}");
    assert!(invocations(&pm, "ingest") > seeded, "{pm}");
    let ki_ingest = invocations(&ki, "ingest");
    assert!(ki_ingest > 0 && ki_ingest < seeded / 10, "{ki}");
    assert_eq!(ki["event_source"]["records"], ki["lines"], "{ki}");
    assert_eq!(ki["event_source"]["on_failure_records"], 0, "{ki}");
    assert_eq!(line_usd(&fh, "IoT Core messaging"), 0.0);
    assert_eq!(line_usd(&ki, "IoT Core messaging"), 0.0);
    assert!(line_usd(&pm, "IoT Core messaging") > 0.0);
    assert_eq!(line_usd(&fh, "Kinesis"), 0.0);
    assert!(line_usd(&ki, "Kinesis") > 0.0);
    let usd = |s: &Value| s["cost"]["total_usd"].as_f64().unwrap();
    let (fh_usd, ki_usd, pm_usd) = (usd(&fh), usd(&ki), usd(&pm));
    assert!(fh_usd > 0.0, "firehose ${fh_usd}");

    // Ordered as `iotpipe cost` predicts for this fleet (5 devices, 1 message/s each).
    let predicted = stdout_json(&run(&mut iotpipe(&[
        "cost",
        "--devices",
        "5",
        "--rate",
        "1",
        "--topology",
        "all",
        "--format",
        "json",
    ])));
    let mut by_month: Vec<(f64, String)> = predicted
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["monthly_usd"].as_f64().unwrap(),
                t["topology"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_month.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut by_run = vec![
        (fh_usd, "firehose".to_owned()),
        (ki_usd, "kinesis".to_owned()),
        (pm_usd, "per-message".to_owned()),
    ];
    by_run.sort_by(|a, b| a.0.total_cmp(&b.0));
    let names = |v: &[(f64, String)]| v.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&by_run),
        names(&by_month),
        "run {by_run:?}, cost {by_month:?}"
    );
    eprintln!(
        "per-run bill: firehose ${fh_usd:.6}, kinesis ${ki_usd:.6}, per-message ${pm_usd:.6}; \
         per-message / firehose {:.1}x, per-message / kinesis {:.1}x",
        pm_usd / fh_usd,
        pm_usd / ki_usd
    );
}

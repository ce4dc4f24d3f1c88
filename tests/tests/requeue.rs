//! `iotpipe requeue`: quarantined payloads come home with their original receive time, and
//! a second requeue changes no statistic.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use iotpipe_tests::{iotpipe, last_json_line, run, seeded_lines, stats_by_window};
use serde_json::{Value, json};

fn replay(lines: &[String], data: &Path) -> Value {
    let file = data.with_extension("jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    drop(f);
    let mut cmd = iotpipe(&["replay", "--summary-json", "--rollup-every", "1h", "--data"]);
    cmd.arg(data).arg(&file);
    last_json_line(&run(&mut cmd))
}

fn requeue(data: &Path, extra: &[&str]) -> Value {
    let mut cmd = iotpipe(&[
        "requeue",
        "--summary-json",
        "--rollup-every",
        "1h",
        "--data",
    ]);
    cmd.arg(data).args(extra);
    last_json_line(&run(&mut cmd))
}

/// Writes `lines` as quarantine records of a sink outage, received when they were sent.
fn quarantine_as_sink_failed(data: &Path, lines: &[String]) {
    let dir = data.join("quarantine/dt=2026-01-01/hour=00");
    std::fs::create_dir_all(&dir).unwrap();
    let mut f = std::fs::File::create(dir.join("outage.jsonl")).unwrap();
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap();
        let rec = json!({
            "reason_code": "sink_failed",
            "reason": "the stream did not take the record: ResourceNotFoundException",
            "topic": format!("dt/replay/{}/telemetry", v["device_id"].as_str().unwrap()),
            "received_at": v["ts"].as_i64().unwrap() + 250,
            "payload_b64": STANDARD.encode(l),
        });
        writeln!(f, "{rec}").unwrap();
    }
}

#[test]
fn requeue_brings_every_quarantined_payload_home_and_a_second_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lines = seeded_lines(3, 2, 7);
    let (delivered, lost) = lines.split_at(lines.len() / 2);

    // The reference: everything delivered the first time.
    let clean = dir.path().join("clean");
    replay(&lines, &clean);
    let want = stats_by_window(&clean);

    // Half delivered, the other half quarantined by an outage.
    let data = dir.path().join("data");
    replay(delivered, &data);
    quarantine_as_sink_failed(&data, lost);
    assert_ne!(stats_by_window(&data), want, "the outage left a gap");

    // A filter that matches nothing requeues nothing.
    let none = requeue(&data, &["--reason", "malformed_json"]);
    assert_eq!(none["input"].as_u64(), Some(0), "{none}");

    let first = requeue(&data, &["--reason", "sink_failed"]);
    assert_eq!(first["input"].as_u64(), Some(lost.len() as u64), "{first}");
    assert_eq!(
        first["accepted"].as_u64(),
        Some(lost.len() as u64),
        "{first}"
    );
    assert_eq!(
        stats_by_window(&data),
        want,
        "the statistics are as if nothing happened"
    );

    let second = requeue(&data, &[]);
    assert_eq!(
        second["accepted"].as_u64(),
        Some(lost.len() as u64),
        "{second}"
    );
    assert_eq!(
        stats_by_window(&data),
        want,
        "a second requeue changes no statistic"
    );
}

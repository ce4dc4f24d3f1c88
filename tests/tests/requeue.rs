//! `iotpipe requeue`: quarantined payloads come home with their original receive time, and
//! a second requeue changes no statistic.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use iotpipe_tests::{
    SeededInput, check_stored_once, files_under, iotpipe, last_json_line, run, seeded_input,
    seeded_lines, stats_by_window, stdout_json,
};
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
    // A requeue is priced, but it is no fleet: no month (a month of it would price the
    // devices' messages a second time).
    assert!(
        first["cost"]["total_usd"].as_f64().unwrap() > 0.0,
        "{first}"
    );
    assert!(first["cost"]["month_fleet"].is_null(), "{first}");
    assert_eq!(first["cost"]["month_at_this_rate_usd"], 0.0, "{first}");
    assert!(
        first["cost"]["no_month"]
            .as_str()
            .is_some_and(|w| w.contains("requeue")),
        "{first}"
    );
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

/// `iotpipe replay --summary-json` of a seeded input into `data`, with `extra` arguments.
fn replay_input(input: &SeededInput, data: &Path, extra: &[&str]) -> Value {
    let mut cmd = iotpipe(&["replay", "--summary-json", "--rollup-every", "1h", "--data"]);
    cmd.arg(data).args(extra).arg(&input.file);
    last_json_line(&run(&mut cmd))
}

/// The ledger's totals against the devices' own ledger.
fn ledger_totals(data: &Path, input: &SeededInput) -> Value {
    let out = run(iotpipe(&["ledger", "--format", "json", "--data"])
        .arg(data)
        .arg("--sent")
        .arg(&input.sent));
    stdout_json(&out)["totals"].clone()
}

/// Quarantine records under `data` (one line each).
fn quarantine_lines(data: &Path) -> usize {
    files_under(&data.join("quarantine"))
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        })
        .sum()
}

/// The ledger's columns a requeue must leave as a clean run has them (`duplicated` grows
/// with every re-delivery by design: the rollup removes duplicates).
fn settled(t: &Value) -> (Value, Value, Value, Value) {
    (
        t["received"].clone(),
        t["missing"].clone(),
        t["rejected"].clone(),
        t["rejected_unattributed"].clone(),
    )
}

#[test]
fn requeue_brings_processing_failed_records_home_and_a_second_requeue_changes_no_statistic() {
    let dir = tempfile::tempdir().unwrap();
    let input = seeded_input(dir.path(), 3, "2m", 41);
    let clean = dir.path().join("clean");
    replay_input(&input, &clean, &[]);
    let want = stats_by_window(&clean);
    let clean_ledger = ledger_totals(&clean, &input);

    // Every transform invocation fails on every attempt: Firehose writes each record (the
    // rule's record of a raw payload, the good and the bad alike) to its error prefix.
    let data = dir.path().join("data");
    let failed = replay_input(&input, &data, &["--inject", "processor-error=1,seed=3"]);
    let records = input.messages + 2;
    assert_eq!(
        failed["firehose"]["processing_failed"].as_u64(),
        Some(records),
        "{failed}"
    );
    assert!(
        !files_under(&data.join(telemetry::layout::PROCESSING_FAILED_PREFIX)).is_empty(),
        "the error output holds the records"
    );
    assert_eq!(quarantine_lines(&data), 0, "nothing was validated yet");

    let first = requeue(&data, &[]);
    assert_eq!(
        first["from_processing_failed"].as_u64(),
        Some(records),
        "{first}"
    );
    assert_eq!(first["from_quarantine"].as_u64(), Some(0), "{first}");
    assert_eq!(first["from_ingest_failed"].as_u64(), Some(0), "{first}");
    assert_eq!(first["accepted"].as_u64(), Some(input.messages), "{first}");
    assert_eq!(
        first["quarantined"].as_u64(),
        Some(4),
        "the two bad payloads (`{{not json`, `[1,2,3]`: 4 messages): {first}"
    );
    check_stored_once("first requeue", &input, &data, &want);
    assert_eq!(
        settled(&ledger_totals(&data, &input)),
        settled(&clean_ledger)
    );
    let quarantined = quarantine_lines(&data);
    assert_eq!(
        quarantined,
        quarantine_lines(&clean),
        "quarantined once, as in a clean run"
    );

    // Again: the good payloads come again (the rollup removes the repeats), the bad ones
    // are in the quarantine already and are not fed a second time.
    let second = requeue(&data, &[]);
    assert_eq!(
        second["from_processing_failed"].as_u64(),
        Some(input.messages),
        "{second}"
    );
    assert_eq!(second["still_rejected"].as_u64(), Some(2), "{second}");
    assert_eq!(second["skipped_rejections"].as_u64(), Some(2), "{second}");
    assert_eq!(second["quarantined"].as_u64(), Some(0), "{second}");
    check_stored_once("second requeue", &input, &data, &want);
    assert_eq!(
        settled(&ledger_totals(&data, &input)),
        settled(&clean_ledger)
    );
    assert_eq!(
        quarantine_lines(&data),
        quarantined,
        "the quarantine did not grow"
    );
}

#[test]
fn requeueing_rejected_payloads_does_not_quarantine_them_a_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let input = seeded_input(dir.path(), 2, "1m", 43);
    let data = dir.path().join("data");
    let s = replay_input(&input, &data, &[]);
    assert_eq!(
        s["quarantined"].as_u64(),
        Some(4),
        "`{{not json`, `[1,2,3]`: {s}"
    );
    let want = stats_by_window(&data);
    let before = ledger_totals(&data, &input);
    let quarantined = quarantine_lines(&data);
    assert_eq!(quarantined, 2);

    // Without --reason: payload rejections are left alone.
    let all = requeue(&data, &[]);
    assert_eq!(all["input"].as_u64(), Some(0), "{all}");
    assert_eq!(all["skipped_rejections"].as_u64(), Some(2), "{all}");
    // Named: validated again, still rejected whole, not fed.
    for reason in ["malformed_json", "wrong_type"] {
        let named = requeue(&data, &["--reason", reason]);
        assert_eq!(named["input"].as_u64(), Some(0), "{named}");
        assert_eq!(named["still_rejected"].as_u64(), Some(1), "{named}");
    }
    assert_eq!(
        quarantine_lines(&data),
        quarantined,
        "the quarantine did not grow"
    );
    assert_eq!(settled(&ledger_totals(&data, &input)), settled(&before));
    assert_eq!(stats_by_window(&data), want);
}

//! `iotpipe up` end to end: simulated devices over a real MQTT broker (the embedded rumqttd,
//! and mosquitto), through every stage, to Parquet that an independent reader accepts and
//! aggregates that add up.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use iotpipe_tests::{iotpipe, last_json_line, need_env, python_json, query_json, run, total_count};
use serde_json::Value;

fn up(data: &Path, extra: &[&str]) -> Value {
    let mut cmd = iotpipe(&[
        "up",
        "--devices",
        "50",
        "--rate",
        "5",
        "--duration",
        "4s",
        "--flush-every",
        "2s",
        "--rollup-every",
        "2s",
        "--summary-json",
        "--data",
    ]);
    cmd.arg(data).args(extra);
    last_json_line(&run(&mut cmd))
}

fn check_run(data: &Path, s: &Value) {
    let sent = s["sent"].as_u64().unwrap();
    assert!(sent >= 50 * 5 * 3, "the fleet sent only {sent} messages");
    assert_eq!(
        s["received"], s["sent"],
        "the rule must receive every QoS 1 message: {s}"
    );
    assert_eq!(s["input"], s["received"]);
    assert_eq!(s["quarantined"], 0, "simulated payloads are valid: {s}");
    assert_eq!(s["accepted"], s["input"]);
    let readings = s["readings"].as_u64().unwrap();
    assert_eq!(
        s["rows"].as_u64().unwrap(),
        readings,
        "every accepted reading becomes a row"
    );

    // An independent reader (pyarrow and DuckDB) sees the same distinct readings.
    let parquet = python_json("parquet_check.py", &[&data.join("telemetry")]);
    assert_eq!(parquet["rows"].as_u64().unwrap(), readings);
    assert_eq!(parquet["distinct_readings"].as_u64().unwrap(), readings);
    for f in parquet["per_file"].as_array().unwrap() {
        let cols: Vec<&str> = f["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            cols,
            [
                "device_id",
                "seq",
                "event_time",
                "received_at",
                "metric",
                "value",
                "fw"
            ]
        );
        assert!(
            f["path"].as_str().unwrap().contains("dt="),
            "Hive partition folders: {f}"
        );
    }

    // The 1-minute aggregates count every distinct reading exactly once.
    let stats = query_json(data);
    assert!(!stats.is_empty());
    assert_eq!(total_count(&stats), readings);
    // The stats files read back independently too.
    let stats_files = python_json("parquet_check.py", &[&data.join("stats")]);
    assert!(stats_files["rows"].as_u64().unwrap() > 0);

    let functions: Vec<&str> = s["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap())
        .collect();
    if s["cost"]["topology"] == "per-message" {
        assert_eq!(functions, ["ingest", "rollup", "transform"]);
        assert_eq!(
            s["functions"][0]["invocations"], s["received"],
            "one ingest invocation per message"
        );
    } else {
        // The default topology, firehose: the rule puts into Firehose, no ingest runs.
        assert_eq!(s["cost"]["topology"], "firehose");
        assert_eq!(functions, ["rollup", "transform"]);
    }
    assert!(s["cost"]["total_usd"].as_f64().unwrap() > 0.0);

    // The delivery ledger of the run: every message the devices sent is in the Parquet,
    // once; the DuckDB reading of the same files agrees.
    let l = &s["ledger"];
    assert_eq!(l["sent"], s["sent"], "ledger: {l}");
    assert_eq!(l["missing"], 0, "ledger: {l}");
    assert_eq!(l["received"], s["sent"], "ledger: {l}");
    assert_eq!(l["rejected"], 0, "ledger: {l}");
    assert_eq!(l["late"], 0, "a local run delivers within seconds: {l}");
    assert_eq!(l["devices"], 50);
    let duck = python_json(
        "ledger_check.py",
        &[
            &data.join("telemetry"),
            Path::new("60000"),
            Path::new("60000"),
        ],
    );
    assert_eq!(duck["received"], l["received"], "DuckDB: {duck}");
    assert_eq!(duck["duplicated"], l["duplicated"], "DuckDB: {duck}");
}

#[test]
fn up_on_the_embedded_broker_lands_every_reading_in_parquet_and_the_stats() {
    let dir = tempfile::tempdir().unwrap();
    let s = up(dir.path(), &[]);
    assert!(
        s["broker"]
            .as_str()
            .unwrap()
            .starts_with("mqtt://127.0.0.1:")
    );
    check_run(dir.path(), &s);
}

#[test]
fn up_against_mosquitto_lands_every_reading_in_parquet_and_the_stats() {
    let broker = need_env("IOTPIPE_TEST_MQTT");
    let dir = tempfile::tempdir().unwrap();
    // The per-message topology here (ingest per message); the embedded-broker test runs the
    // default (firehose).
    let s = up(
        dir.path(),
        &["--broker", &broker, "--topology", "per-message"],
    );
    assert_eq!(s["broker"], broker.as_str());
    check_run(dir.path(), &s);
}

//! `iotpipe replay --pack`: device-side batches packed into few stream records, split by the
//! transform, with every reading in Parquet once (checked by pyarrow and DuckDB) and the
//! counts balanced.
//!
//! Needs `IOTPIPE_TEST_PYTHON`; fails without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use iotpipe_tests::{dump, iotpipe, last_json_line, python_json, query_json, run, total_count};
use serde_json::Value;

/// A replay file of device-side batches: the dump's messages grouped per device, 20 to a
/// JSON array, and one payload to quarantine.
fn batched_dump(dir: &Path) -> std::path::PathBuf {
    let raw = dir.join("raw.jsonl");
    let start = chrono::Utc::now().timestamp_millis() - 30 * 60 * 1000;
    dump(&raw, 4, "2m", 9, start);
    let mut per_device: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in std::fs::read_to_string(&raw).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        per_device
            .entry(v["device_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v);
    }
    let mut out = String::new();
    for msgs in per_device.values() {
        for chunk in msgs.chunks(20) {
            out.push_str(&serde_json::to_string(chunk).unwrap());
            out.push('\n');
        }
    }
    out.push_str("{\"device_id\":\"sensor-000001\",\"seq\":\"nope\"}\n");
    let batched = dir.join("batched.jsonl");
    std::fs::write(&batched, out).unwrap();
    batched
}

fn replay(file: &Path, data: &Path, pack: bool) -> Value {
    // Packing is ingest's: the per-message topology (the firehose topology has no ingest).
    let mut cmd = iotpipe(&[
        "replay",
        "--summary-json",
        "--topology",
        "per-message",
        "--data",
    ]);
    cmd.arg(data).arg(file);
    if pack {
        cmd.arg("--pack");
    }
    last_json_line(&run(&mut cmd))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn packed_batches_use_far_fewer_records_and_every_reading_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = batched_dump(dir.path());

    let plain = replay(&file, &dir.path().join("plain"), false);
    let data = dir.path().join("packed");
    let packed = replay(&file, &data, true);

    for s in [&plain, &packed] {
        assert_eq!(u(&s["input"]), 4 * 120 + 1);
        assert_eq!(u(&s["accepted"]), 4 * 120);
        assert_eq!(u(&s["quarantined"]), 1);
        let f = &s["firehose"];
        assert_eq!(
            u(&f["records_in"]),
            u(&f["ok"]) + u(&f["dropped"]) + u(&f["processing_failed"]),
            "{f}"
        );
        assert_eq!(u(&f["processing_failed"]), 0, "{f}");
        assert_eq!(u(&s["rows"]), u(&s["readings"]));
    }
    assert_eq!(
        u(&plain["firehose"]["records_in"]),
        4 * 120,
        "one message per record"
    );
    let records = u(&packed["firehose"]["records_in"]);
    assert!(
        records <= 4 * 120 / 20 + 8,
        "20-message batches of ~200 B fit in one 25 KB record each: {records} records"
    );

    let readings = u(&packed["readings"]);
    let parquet = python_json("parquet_check.py", &[&data.join("telemetry")]);
    assert_eq!(u(&parquet["distinct_readings"]), readings);
    assert_eq!(u(&parquet["rows"]), readings);
    assert_eq!(total_count(&query_json(&data)), readings);
}

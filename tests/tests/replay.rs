//! `iotpipe replay` and `iotpipe rollup` end to end: a seeded file with duplicates and late
//! messages gives the same 1-minute aggregates as DuckDB computes from the raw JSON; hostile
//! payloads are all accounted for; a second rollup does nothing and late data updates
//! exactly the windows it touches.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use iotpipe_tests::{
    close, files_under, iotpipe, last_json_line, python_json, query_json, replay, rfc3339_ms, run,
    seeded_lines, stdout_json, total_count, write_lines,
};
use serde_json::Value;

fn rollup(data: &Path) -> Value {
    last_json_line(&run(iotpipe(&["rollup", "--data"]).arg(data)))
}

/// Compares the pipeline's aggregates with DuckDB's over the same raw lines, column by
/// column of the stats schema (`iotpipe schema --json stats_1m`, which the reference script
/// also reads, so neither side keeps its own list).
fn assert_matches_reference(data: &Path, raw: &Path) {
    let columns_file = raw.with_file_name("stats_columns.json");
    let out = run(&mut iotpipe(&["schema", "--json", "stats_1m"]));
    std::fs::write(&columns_file, &out.stdout).unwrap();
    // Internal columns (m2, sketch) are merge state, not query output.
    let columns: Vec<(String, String)> = stdout_json(&out)
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["internal"].as_bool().unwrap())
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("name"), s("type"))
        })
        .collect();
    assert_eq!(columns.len(), 14, "{columns:?}");

    let ours = query_json(data);
    let reference = python_json("reference_stats.py", &[raw, columns_file.as_path()]);
    let reference = reference.as_array().unwrap();
    assert_eq!(ours.len(), reference.len(), "number of windows");
    let by_key: BTreeMap<(String, String, i64), &Value> = ours
        .iter()
        .map(|r| {
            let key = (
                r["device_id"].as_str().unwrap().to_string(),
                r["metric"].as_str().unwrap().to_string(),
                rfc3339_ms(&r["window_start"]),
            );
            (key, r)
        })
        .collect();
    for want in reference {
        let key = (
            want["device_id"].as_str().unwrap().to_string(),
            want["metric"].as_str().unwrap().to_string(),
            want["window_start"].as_i64().unwrap(),
        );
        let got = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("window {key:?} missing"));
        for (name, ty) in &columns {
            let (g, w) = (&got[name.as_str()], &want[name.as_str()]);
            match ty.as_str() {
                "string" | "bigint" => assert_eq!(g, w, "{name} of {key:?}"),
                "timestamp" => assert_eq!(rfc3339_ms(g), w.as_i64().unwrap(), "{name} of {key:?}"),
                "double" => match (g.as_f64(), w.as_f64()) {
                    (Some(a), Some(b)) => assert!(close(a, b), "{name} of {key:?}: {a} vs {b}"),
                    // Null on both sides (stddev of a single reading).
                    (a, b) => assert_eq!(a, b, "{name} of {key:?}"),
                },
                other => panic!("stats column {name} has Glue type {other}: compare it here"),
            }
        }
    }
}

#[test]
fn a_seeded_replay_with_duplicates_and_late_messages_matches_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = seeded_lines(5, 3, 7);
    // Every 7th message is delivered twice; the first 40 arrive last (late, out of order).
    let dups: Vec<String> = lines.iter().step_by(7).cloned().collect();
    lines.extend(dups);
    lines.rotate_left(40);
    let raw = dir.path().join("raw.jsonl");
    write_lines(&raw, &lines);

    let data = dir.path().join("data");
    let s = replay(&raw, &data);
    assert_eq!(s["input"].as_u64().unwrap(), lines.len() as u64);
    assert_eq!(s["quarantined"], 0);
    let distinct = 5 * 3 * 60 * 3; // messages × 3 metrics
    let parquet = python_json("parquet_check.py", &[&data.join("telemetry")]);
    assert_eq!(parquet["distinct_readings"].as_u64().unwrap(), distinct);
    assert_eq!(total_count(&query_json(&data)), distinct);
    assert_matches_reference(&data, &raw);
}

#[test]
fn hostile_payloads_are_all_quarantined_with_their_reasons_and_the_run_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let good = |seq: u64, extra: &str| {
        format!(
            r#"{{"device_id":"sensor-000001","seq":{seq},"ts":{now},"metrics":{{"temperature":20.5{extra}}}}}"#
        )
    };
    let many: Vec<String> = (0..65).map(|i| format!("\"m{i}\":1")).collect();
    let mut hostile: Vec<Vec<u8>> = vec![
        good(1, "").into_bytes(),
        b"{\"device_id\":".to_vec(),
        b"{\"device_id\":\"sensor-000001\",\"seq\":2,\"ts\":1,\"metrics\":{\"t\":\xff}}".to_vec(),
        good(3, "").replace("\"seq\":3,", "").into_bytes(),
        good(4, "").replace("20.5", "\"warm\"").into_bytes(),
        good(5, "").replace("20.5", "1e999").into_bytes(),
        good(6, "").replace(&now.to_string(), "1000").into_bytes(),
        format!(r#"{{"device_id":"sensor-000001","seq":7,"ts":{now},"metrics":{{{}}}}}"#, many.join(",")).into_bytes(),
        good(8, "").replace("temperature", "Temp").into_bytes(),
        good(9, "").replace("sensor-000001", "bad id").into_bytes(),
        b"[]".to_vec(),
        b"42".to_vec(),
        format!("[{},{}]", good(10, ""), good(11, "").replace("\"seq\":11,", "")).into_bytes(),
        format!(r#"{{"device_id":"sensor-000001","seq":12,"ts":{now},"metrics":{{"t":1}},"note":"{}"}}"#, "x".repeat(140_000)).into_bytes(),
    ];
    hostile.push(format!("{}{}", good(13, ""), " ".repeat(131_072)).into_bytes());
    let raw = dir.path().join("hostile.jsonl");
    let mut f = std::fs::File::create(&raw).unwrap();
    for h in &hostile {
        f.write_all(h).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);
    let data = dir.path().join("data");
    let s = replay(&raw, &data);
    let (input, accepted, quarantined) = (
        s["input"].as_u64().unwrap(),
        s["accepted"].as_u64().unwrap(),
        s["quarantined"].as_u64().unwrap(),
    );
    assert_eq!(input, accepted + quarantined, "{s}");
    assert_eq!(
        accepted, 2,
        "only seq 1 and the good half of the batch are valid: {s}"
    );

    // Every quarantined message is on disk with its reason and its bytes.
    let mut codes = Vec::new();
    for entry in files_under(&data.join("quarantine")) {
        for line in std::fs::read_to_string(&entry).unwrap().lines() {
            let q: Value = serde_json::from_str(line).unwrap();
            assert!(!q["reason"].as_str().unwrap().is_empty());
            assert!(q["payload_b64"].as_str().is_some());
            codes.push(q["reason_code"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(codes.len() as u64, quarantined);
    for code in [
        "malformed_json",
        "invalid_utf8",
        "missing_field",
        "wrong_type",
        "non_finite_value",
        "ts_out_of_range",
        "too_many_metrics",
        "bad_metric_name",
        "bad_device_id",
        "empty_batch",
        "oversize_payload",
    ] {
        assert!(codes.iter().any(|c| c == code), "no {code} among {codes:?}");
    }
}

#[test]
fn a_second_rollup_does_nothing_and_late_data_updates_only_its_windows() {
    let dir = tempfile::tempdir().unwrap();
    let lines = seeded_lines(3, 3, 11);
    // The first calendar minute is held back and arrives later.
    let (late, on_time): (Vec<String>, Vec<String>) = {
        let first_minute = lines.iter().map(|l| ts_of(l) / 60_000).min().unwrap();
        lines
            .iter()
            .cloned()
            .partition(|l| ts_of(l) / 60_000 == first_minute)
    };
    assert!(!late.is_empty() && !on_time.is_empty());
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    write_lines(&a, &on_time);
    write_lines(&b, &late);
    let data = dir.path().join("data");

    replay(&a, &data);
    let before = query_json(&data);
    let again = rollup(&data);
    assert_eq!(again["windows_updated"], 0, "nothing new: {again}");
    assert_eq!(again["new_files"], 0);
    assert_eq!(query_json(&data), before, "a no-op rollup changes nothing");

    let s = replay(&b, &data);
    let updated = s["rollup"]["windows_updated"].as_u64().unwrap();
    let after = query_json(&data);
    // The late minute adds exactly its own windows; every earlier window is unchanged.
    assert_eq!(after.len() - before.len(), updated as usize);
    for w in &before {
        assert!(after.contains(w), "an untouched window changed: {w}");
    }
    let all = dir.path().join("all.jsonl");
    write_lines(&all, &lines);
    assert_matches_reference(&data, &all);
}

/// `iotpipe replay -` reads standard input (an archive through `zcat`, device-sim's
/// `--dump -`): the same messages give the same rows and windows as the file did.
#[test]
fn replay_reads_standard_input_as_it_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let lines = seeded_lines(4, 3, 21);
    let file = dir.path().join("raw.jsonl");
    write_lines(&file, &lines);
    let from_file = replay(&file, &dir.path().join("a"));

    let data = dir.path().join("b");
    // Through a pipe, as from zcat: no length to show progress against.
    let mut child = iotpipe(&["replay", "--summary-json", "--rollup-every", "1h", "--data"])
        .arg(&data)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let text = std::fs::read(&file).unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&text).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_stdin = last_json_line(&out);

    assert_eq!(from_stdin["input"].as_u64(), Some(lines.len() as u64));
    for k in ["input", "accepted", "quarantined", "readings", "rows"] {
        assert_eq!(from_stdin[k], from_file[k], "{k}: {from_stdin}");
    }
    assert_eq!(query_json(&data), query_json(&dir.path().join("a")));

    // The month is priced at the devices' own pace, first to last event time (3 minutes
    // of 1 message/s), not at the replay's speed; the same either way the lines came.
    let times: Vec<i64> = lines.iter().map(|l| ts_of(l)).collect();
    let span_s = (times.iter().max().unwrap() - times.iter().min().unwrap()) as f64 / 1000.0;
    let fleet = &from_file["cost"]["month_fleet"];
    assert_eq!(fleet["devices"], 4, "{fleet}");
    assert_eq!(fleet["over"], "the events' times", "{fleet}");
    assert_eq!(fleet["over_s"].as_f64(), Some(span_s), "{fleet}");
    let rate = fleet["rate"].as_f64().unwrap();
    let expected = lines.len() as f64 / 4.0 / span_s;
    // Three significant digits.
    assert!(
        (rate - expected).abs() <= 0.005 * expected,
        "{fleet}: {expected}"
    );
    assert!(
        rate > 0.99 && rate < 1.02,
        "1 message/s per device: {fleet}"
    );
    assert_eq!(from_stdin["cost"]["month_fleet"], *fleet);
    assert_eq!(
        from_stdin["cost"]["month_at_this_rate_usd"],
        from_file["cost"]["month_at_this_rate_usd"]
    );
}

/// The commands that read what a run wrote refuse a `--data` directory that does not
/// exist (a typo) with an error naming it, instead of reporting an empty pipeline or
/// creating the directory.
#[test]
fn reading_a_data_directory_that_does_not_exist_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("dta");
    let name = missing.to_str().unwrap();
    for args in [
        &["query"][..],
        &["rollup"],
        &["ledger"],
        &["compact"],
        &["requeue"],
        &[
            "dashboard",
            "--out",
            dir.path().join("site").to_str().unwrap(),
        ],
    ] {
        let out = iotpipe(args).args(["--data", name]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
        assert!(
            stderr.contains(&format!("the data location {name} is not a directory")),
            "{args:?}: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} created {name}");
    }
}

fn ts_of(line: &str) -> i64 {
    serde_json::from_str::<Value>(line).unwrap()["ts"]
        .as_i64()
        .unwrap()
}

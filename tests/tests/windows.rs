//! The 1h and 1d windows, the fleet view and compaction, end to end through the CLI: a
//! seeded fleet spanning two hours is replayed (in three runs, so each hour holds several
//! small telemetry files, with duplicates), rolled up and queried at every resolution and
//! grouping; the coarser windows add up to their 1m rows, their quantiles are within the
//! sketch's bound of the exact ones; `iotpipe compact` then leaves fewer, larger files
//! per closed hour with the same distinct readings (DuckDB), and the rollups after it
//! change no stats file.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use iotpipe_tests::{
    close, dump, files_under, iotpipe, last_json_line, python_json, replay, rfc3339_ms, run,
    stdout_json, total_count, write_lines,
};
use serde_json::Value;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The sketch's relative accuracy (`analytics::sketch::ALPHA`, stated in README.md).
const ALPHA: f64 = 0.01;

/// `iotpipe query --format json --window W --group-by G` over `data`.
fn query_rows(data: &Path, window: &str, group: &str) -> Vec<Value> {
    let mut cmd = iotpipe(&["query", "--format", "json", "--window", window]);
    cmd.args(["--group-by", group]).arg("--data").arg(data);
    match stdout_json(&run(&mut cmd)) {
        Value::Array(rows) => rows,
        other => panic!("query did not print an array: {other}"),
    }
}

/// Every window and grouping, for comparing whole states.
fn all_queries(data: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for window in ["1m", "1h", "1d"] {
        for group in ["device", "fleet"] {
            out.insert(format!("{window}/{group}"), query_rows(data, window, group));
        }
    }
    out
}

fn rollup(data: &Path, extra: &[&str]) -> Value {
    last_json_line(&run(iotpipe(&["rollup"])
        .args(extra)
        .arg("--data")
        .arg(data)))
}

/// Every stats file (not the rollup's `_state`/`_pending` bookkeeping) with its bytes.
fn stats_files(data: &Path) -> BTreeMap<String, Vec<u8>> {
    let root = data.join("stats");
    files_under(&root)
        .into_iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let hidden = rel.split('/').any(|s| s.starts_with(['_', '.']));
            (!hidden).then(|| (rel, std::fs::read(&p).unwrap()))
        })
        .collect()
}

/// Per telemetry hour folder (`dt=…/hour=…`): (files, rows) of its Parquet files. Rows, not
/// bytes: Firehose's objects are Snappy and compaction's zstd, so bytes do not say which
/// files hold more.
fn telemetry_hours(data: &Path) -> BTreeMap<String, (usize, u64)> {
    use telemetry::parquet::file::reader::{FileReader, SerializedFileReader};
    let root = data.join("telemetry");
    let mut out: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for p in files_under(&root) {
        let rel = p
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let Some((hour, name)) = rel.rsplit_once('/') else {
            continue;
        };
        if name.starts_with(['_', '.']) || !name.ends_with(".parquet") {
            continue;
        }
        let e = out.entry(hour.to_string()).or_default();
        e.0 += 1;
        let reader = SerializedFileReader::new(std::fs::File::open(&p).unwrap()).unwrap();
        e.1 += reader.metadata().file_metadata().num_rows() as u64;
    }
    out
}

/// Continuous quantile with linear interpolation (DuckDB's `quantile_cont`) of sorted
/// values, with the sketch's bound at that rank: α·max(|x⌊h⌋|, |x⌈h⌉|).
fn exact_quantile(sorted: &[f64], q: f64) -> (f64, f64) {
    let h = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (sorted[h.floor() as usize], sorted[h.ceil() as usize]);
    (
        lo + (h - h.floor()) * (hi - lo),
        ALPHA * lo.abs().max(hi.abs()) + 1e-9,
    )
}

/// The distinct readings of the raw lines, per (device, metric, hour start): values sorted.
fn exact_hours(lines: &[String]) -> BTreeMap<(String, String, i64), Vec<f64>> {
    let mut seen = std::collections::HashSet::new();
    let mut out: BTreeMap<(String, String, i64), Vec<f64>> = BTreeMap::new();
    for line in lines {
        let m: Value = serde_json::from_str(line).unwrap();
        let device = m["device_id"].as_str().unwrap().to_string();
        let (seq, ts) = (m["seq"].as_u64().unwrap(), m["ts"].as_i64().unwrap());
        for (metric, v) in m["metrics"].as_object().unwrap() {
            if seen.insert((device.clone(), seq, ts, metric.clone())) {
                out.entry((device.clone(), metric.clone(), ts - ts.rem_euclid(HOUR_MS)))
                    .or_default()
                    .push(v.as_f64().unwrap());
            }
        }
    }
    for values in out.values_mut() {
        values.sort_by(f64::total_cmp);
    }
    out
}

/// Checks that every row of `coarse` (window `len_ms`) has the count, sum, min, max and
/// first/last event of the `fine` rows it covers, grouped by device (or fleet-wide when
/// `fleet`), and that no fine row is left uncovered.
fn assert_adds_up(coarse: &[Value], fine: &[Value], len_ms: i64, fleet: bool, what: &str) {
    type Key = (String, String, i64);
    let mut expect: BTreeMap<Key, (u64, f64, f64, f64, i64, i64)> = BTreeMap::new();
    for r in fine {
        let start = rfc3339_ms(&r["window_start"]);
        let device = if fleet {
            "*".to_string()
        } else {
            r["device_id"].as_str().unwrap().to_string()
        };
        let key = (
            device,
            r["metric"].as_str().unwrap().to_string(),
            start - start.rem_euclid(len_ms),
        );
        let (n, sum) = (r["count"].as_u64().unwrap(), r["sum"].as_f64().unwrap());
        let (min, max) = (r["min"].as_f64().unwrap(), r["max"].as_f64().unwrap());
        let (first, last) = (rfc3339_ms(&r["first_event"]), rfc3339_ms(&r["last_event"]));
        let e = expect.entry(key).or_insert((
            0,
            0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            i64::MAX,
            i64::MIN,
        ));
        e.0 += n;
        e.1 += sum;
        e.2 = e.2.min(min);
        e.3 = e.3.max(max);
        e.4 = e.4.min(first);
        e.5 = e.5.max(last);
    }
    assert_eq!(
        coarse.len(),
        expect.len(),
        "{what}: one row per covered window"
    );
    for r in coarse {
        let key = (
            r["device_id"].as_str().unwrap().to_string(),
            r["metric"].as_str().unwrap().to_string(),
            rfc3339_ms(&r["window_start"]),
        );
        let e = expect
            .get(&key)
            .unwrap_or_else(|| panic!("{what}: {key:?} has no finer rows"));
        assert_eq!(r["count"].as_u64().unwrap(), e.0, "{what} {key:?} count");
        assert!(close(r["sum"].as_f64().unwrap(), e.1), "{what} {key:?} sum");
        assert_eq!(r["min"].as_f64().unwrap(), e.2, "{what} {key:?} min");
        assert_eq!(r["max"].as_f64().unwrap(), e.3, "{what} {key:?} max");
        assert_eq!(
            rfc3339_ms(&r["first_event"]),
            e.4,
            "{what} {key:?} first_event"
        );
        assert_eq!(
            rfc3339_ms(&r["last_event"]),
            e.5,
            "{what} {key:?} last_event"
        );
        let mean = r["mean"].as_f64().unwrap();
        assert!(close(mean, e.1 / e.0 as f64), "{what} {key:?} mean");
    }
}

#[test]
fn coarser_windows_add_up_and_compaction_keeps_every_reading_and_every_stats_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Four minutes on each side of an hour boundary at least three hours ago: two hours,
    // both closed for `compact --closed-after 0s`, well inside the 7-day event window.
    let now = chrono::Utc::now().timestamp_millis();
    let boundary = (now - 3 * HOUR_MS) - (now - 3 * HOUR_MS).rem_euclid(HOUR_MS);
    let raw = dir.path().join("raw.jsonl");
    dump(&raw, 4, "8m", 13, boundary - 4 * 60_000);
    let mut lines: Vec<String> = std::fs::read_to_string(&raw)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 4 * 8 * 60);
    // Every 7th message delivered twice, in a later run.
    let repeats: Vec<String> = lines.iter().step_by(7).cloned().collect();
    lines.extend(repeats);
    // Three replays: several small telemetry files per hour, as Firehose leaves them.
    for (i, chunk) in lines.chunks(lines.len().div_ceil(3)).enumerate() {
        let part = dir.path().join(format!("raw-{i}.jsonl"));
        write_lines(&part, chunk);
        replay(&part, &data);
    }
    let first = rollup(&data, &[]);
    assert_eq!(
        first["units_planned"], 0,
        "replay already rolled up: {first}"
    );

    // Every resolution and grouping answers, with every distinct reading once.
    let telemetry = python_json("parquet_check.py", &[&data.join("telemetry")]);
    let distinct = telemetry["distinct_readings"].as_u64().unwrap();
    assert_eq!(distinct, 4 * 8 * 60 * 3, "{telemetry}");
    let before = all_queries(&data);
    for (name, rows) in &before {
        assert!(!rows.is_empty(), "{name} answered nothing");
        assert_eq!(total_count(rows), distinct, "{name}");
        let fleet_rows = rows.iter().filter(|r| r["device_id"] == "*").count();
        let fleet = name.ends_with("/fleet");
        assert_eq!(
            fleet_rows == rows.len(),
            fleet,
            "{name}: device `*` only in fleet"
        );
    }
    let hours: std::collections::BTreeSet<i64> = before["1h/device"]
        .iter()
        .map(|r| rfc3339_ms(&r["window_start"]))
        .collect();
    assert_eq!(hours.len(), 2, "the fleet spans two hours: {hours:?}");

    // The coarser windows add up to the finer ones, per device and fleet-wide.
    let m1 = &before["1m/device"];
    assert_adds_up(&before["1h/device"], m1, HOUR_MS, false, "1h");
    assert_adds_up(
        &before["1d/device"],
        &before["1h/device"],
        DAY_MS,
        false,
        "1d",
    );
    assert_adds_up(&before["1m/fleet"], m1, 60_000, true, "fleet 1m");
    assert_adds_up(
        &before["1h/fleet"],
        &before["1m/fleet"],
        HOUR_MS,
        true,
        "fleet 1h",
    );
    assert_adds_up(
        &before["1d/fleet"],
        &before["1h/fleet"],
        DAY_MS,
        true,
        "fleet 1d",
    );

    // 1h quantiles come from the merged sketches: within the stated bound of the exact
    // quantiles of the distinct readings.
    let exact = exact_hours(&lines);
    assert_eq!(exact.len(), before["1h/device"].len());
    for r in &before["1h/device"] {
        let key = (
            r["device_id"].as_str().unwrap().to_string(),
            r["metric"].as_str().unwrap().to_string(),
            rfc3339_ms(&r["window_start"]),
        );
        let values = &exact[&key];
        assert_eq!(r["count"].as_u64().unwrap(), values.len() as u64, "{key:?}");
        for (col, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)] {
            let (want, bound) = exact_quantile(values, q);
            let got = r[col].as_f64().unwrap();
            assert!(
                (got - want).abs() <= bound,
                "{key:?} {col}: sketch {got}, exact {want}, bound {bound}"
            );
        }
    }

    // Compaction: each closed hour ends with fewer, larger files and the same readings.
    let files_before = stats_files(&data);
    let tel_before = telemetry_hours(&data);
    assert_eq!(tel_before.len(), 2, "{tel_before:?}");
    assert!(tel_before.values().all(|(n, _)| *n >= 2), "{tel_before:?}");
    let mut cmd = iotpipe(&["compact", "--closed-after", "0s", "--target-mib", "64"]);
    let report = last_json_line(&run(cmd.arg("--data").arg(&data)));
    assert_eq!(report["hours_compacted"], 2, "{report}");
    assert_eq!(report["units_left_to_rollup"], 0, "{report}");
    let tel_after = telemetry_hours(&data);
    for (hour, (n_before, rows_before)) in &tel_before {
        let (n_after, rows_after) = tel_after[hour];
        assert!(n_after < *n_before, "{hour}: {n_before} -> {n_after} files");
        assert!(
            rows_after / n_after as u64 > rows_before / *n_before as u64,
            "{hour}: files did not get larger on average ({rows_before} rows in {n_before} \
             files -> {rows_after} in {n_after})"
        );
    }
    let compacted = python_json("parquet_check.py", &[&data.join("telemetry")]);
    assert_eq!(compacted["distinct_readings"].as_u64().unwrap(), distinct);
    assert_eq!(
        compacted["rows"].as_u64().unwrap(),
        distinct,
        "repeats dropped"
    );

    // The rollup does not take the compacted files for new data, and even a full scan
    // that recomputes nothing leaves every stats file byte for byte as it was.
    let after = rollup(&data, &[]);
    assert_eq!(after["units_planned"], 0, "{after}");
    let scanned = rollup(&data, &["--full-scan"]);
    assert_eq!(scanned["units_planned"], 0, "{scanned}");
    assert_eq!(scanned["stats_files_written"], 0, "{scanned}");
    assert_eq!(stats_files(&data), files_before);
    assert_eq!(all_queries(&data), before);
}

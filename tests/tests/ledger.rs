//! `iotpipe ledger` end to end: a seeded device-sim dump with faults this test injects
//! (lines dropped, lines the devices "dropped" themselves, duplicates, event times far in
//! the past, corrupt payloads) is replayed, and every count of the ledger equals what was
//! injected — and, for received, duplicated and late, what DuckDB computes independently
//! from the Parquet.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use iotpipe_tests::{bin, iotpipe, python_json, replay, run, stdout_json, write_lines};
use serde_json::{Value, json};

const DEVICES: usize = 4;
const MINUTES: u64 = 3;
/// Messages per device: 1 msg/s for `MINUTES`.
const PER_DEVICE: usize = MINUTES as usize * 60;
const TWO_HOURS_MS: i64 = 2 * 3_600_000;

/// One line of the dump, with what the faults need to know about it.
#[derive(Clone)]
struct Line {
    device: String,
    seq: u64,
    text: String,
}

/// A seeded dump starting now (so that undelayed messages are not late), grouped by
/// device in seq order.
fn seeded_dump() -> BTreeMap<String, Vec<Line>> {
    let start = chrono::Utc::now().timestamp_millis();
    let out = run(std::process::Command::new(bin("device-sim")).args([
        "--devices",
        &DEVICES.to_string(),
        "--rate",
        "1",
        "--duration",
        &format!("{MINUTES}m"),
        "--seed",
        "21",
        "--start",
        &start.to_string(),
        "--dump",
        "-",
    ]));
    let mut by_device: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    for text in String::from_utf8(out.stdout).unwrap().lines() {
        let v: Value = serde_json::from_str(text).unwrap();
        let device = v["device_id"].as_str().unwrap().to_string();
        let seq = v["seq"].as_u64().unwrap();
        by_device.entry(device.clone()).or_default().push(Line {
            device,
            seq,
            text: text.to_string(),
        });
    }
    assert_eq!(by_device.len(), DEVICES);
    for lines in by_device.values_mut() {
        lines.sort_by_key(|l| l.seq);
        assert_eq!(lines.len(), PER_DEVICE);
    }
    by_device
}

/// The ledger as JSON, and its stderr.
fn ledger(data: &Path, extra: &[&str]) -> (Value, String) {
    let mut cmd = iotpipe(&["ledger", "--format", "json", "--data"]);
    cmd.arg(data).args(extra);
    let out = run(&mut cmd);
    (
        stdout_json(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the test expects of one device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Expect {
    sent: u64,
    received: u64,
    duplicated: u64,
    missing: u64,
    late: u64,
    rejected: u64,
}

fn counts(v: &Value) -> Expect {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    Expect {
        sent: n("sent"),
        received: n("received"),
        duplicated: n("duplicated"),
        missing: n("missing"),
        late: n("late"),
        rejected: n("rejected"),
    }
}

#[test]
fn the_ledger_counts_exactly_the_faults_injected_into_a_seeded_replay() {
    let dir = tempfile::tempdir().unwrap();
    let dump = seeded_dump();
    let ids: Vec<String> = dump.keys().cloned().collect();
    let (d0, d1, d2, d3) = (&ids[0], &ids[1], &ids[2], &ids[3]);

    // The devices' own ledger, as device-sim --summary-json reports it, from the full dump.
    let mut per_device = serde_json::Map::new();
    for (id, lines) in &dump {
        per_device.insert(
            id.clone(),
            json!({"first_seq": lines[0].seq, "last_seq": lines[PER_DEVICE - 1].seq,
                   "sent": PER_DEVICE, "acknowledged": PER_DEVICE, "failed": 0, "dropped": 0}),
        );
    }

    let mut main: Vec<String> = Vec::new();
    let mut again: Vec<String> = Vec::new();
    let mut third: Vec<String> = Vec::new();
    let mut expect: BTreeMap<String, Expect> = ids
        .iter()
        .map(|id| {
            let e = Expect {
                sent: PER_DEVICE as u64,
                received: PER_DEVICE as u64,
                ..Expect::default()
            };
            (id.clone(), e)
        })
        .collect();
    let mut unattributed = 0;
    for (id, lines) in &dump {
        let e = expect.get_mut(id).unwrap();
        for (i, line) in lines.iter().enumerate() {
            let Line { device, text, .. } = line;
            assert_eq!(device, id);
            match (device == d0, device == d1, device == d2, device == d3, i) {
                // d0: the first message and five in the middle never arrive → missing.
                (true, _, _, _, 0 | 10..15) => {
                    e.received -= 1;
                    e.missing += 1;
                }
                // d0: five messages delivered twice (the copies in a later replay).
                (true, _, _, _, 100..105) => {
                    main.push(text.clone());
                    again.push(text.clone());
                    e.duplicated += 1;
                }
                // d1: three messages the device dropped itself (offline buffer) → neither
                // sent nor missing.
                (_, true, _, _, 50..53) => {
                    e.received -= 1;
                    e.sent -= 1;
                }
                // d1: four messages stamped two hours back → late in 1m and 1h windows.
                (_, true, _, _, 120..124) => {
                    let mut v: Value = serde_json::from_str(text).unwrap();
                    v["ts"] = json!(v["ts"].as_i64().unwrap() - TWO_HOURS_MS);
                    main.push(v.to_string());
                    e.late += 1;
                }
                // d2: the last message never arrives → missing (the range ends at last_seq).
                (_, _, true, _, i) if i == PER_DEVICE - 1 => {
                    e.received -= 1;
                    e.missing += 1;
                }
                // d2: one message delivered three times: two duplicates, one message.
                (_, _, true, _, 60) => {
                    main.push(text.clone());
                    again.push(text.clone());
                    third.push(text.clone());
                    e.duplicated += 2;
                }
                // d3: three payloads with a non-numeric reading → rejected; their seq is
                // readable, so they are not missing.
                (_, _, _, true, 20..23) => {
                    let mut v: Value = serde_json::from_str(text).unwrap();
                    let metrics = v["metrics"].as_object_mut().unwrap();
                    let first = metrics.keys().next().unwrap().clone();
                    metrics.insert(first, json!("warm"));
                    main.push(v.to_string());
                    e.received -= 1;
                    e.rejected += 1;
                }
                // d3: one payload cut in half → quarantined, attributable to no device
                // (not JSON, and replay files it under the topic of device "unknown"), so
                // its seq is missing.
                (_, _, _, true, 30) => {
                    main.push(text[..text.len() / 2].to_string());
                    e.received -= 1;
                    e.missing += 1;
                    unattributed += 1;
                }
                _ => main.push(text.clone()),
            }
        }
    }
    per_device.get_mut(d1.as_str()).unwrap()["dropped"] = json!(3);
    let summary = dir.path().join("summary.json");
    // As captured from device-sim's stdout: a human line, then the JSON object.
    std::fs::write(
        &summary,
        format!(
            "device-sim: done\n{}\n",
            json!({"sent": 4 * PER_DEVICE, "per_device": per_device})
        ),
    )
    .unwrap();

    let data = dir.path().join("data");
    let first = dir.path().join("main.jsonl");
    write_lines(&first, &main);
    let s = replay(&first, &data);
    assert_eq!(s["quarantined"], 4, "{s}");
    // The copies arrive in later replays: other Firehose invocations, so the transform
    // cannot drop them as in-batch duplicates and they reach the Parquet.
    for (name, lines) in [("again.jsonl", &again), ("third.jsonl", &third)] {
        let file = dir.path().join(name);
        write_lines(&file, lines);
        replay(&file, &data);
    }

    let (l, stderr) = ledger(&data, &["--sent", summary.to_str().unwrap()]);
    for (id, want) in &expect {
        let got = l["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no device {id} in {l}"));
        assert_eq!(counts(got), *want, "device {id}");
        assert_eq!(got["sent_from"], "summary");
    }
    let total = |f: fn(&Expect) -> u64| expect.values().map(f).sum::<u64>();
    let t = &l["totals"];
    assert_eq!(
        counts(t),
        Expect {
            sent: total(|e| e.sent),
            received: total(|e| e.received),
            duplicated: total(|e| e.duplicated),
            missing: total(|e| e.missing),
            late: total(|e| e.late),
            rejected: total(|e| e.rejected),
        }
    );
    assert_eq!(counts(t).missing, 8);
    assert_eq!(t["rejected_unattributed"], unattributed);
    assert_eq!(t["dropped_by_devices"], 3);
    assert_eq!(t["outside_range"], 0);
    assert!(
        stderr.contains("warning: 8 message(s) missing"),
        "no missing warning: {stderr}"
    );
    // Per window: the rows add up to the device totals, and sent = received + rejected
    // (readable seq) + missing everywhere (no unreadable rejection is attributed).
    let rows = l["rows"].as_array().unwrap();
    let mut summed = Expect::default();
    for r in rows {
        let c = counts(r);
        assert_eq!(c.sent, c.received + c.rejected + c.missing, "{r}");
        summed.sent += c.sent;
        summed.received += c.received;
        summed.duplicated += c.duplicated;
        summed.missing += c.missing;
        summed.late += c.late;
        summed.rejected += c.rejected;
    }
    assert_eq!(summed, counts(t));
    // The late messages sit in windows two hours back.
    let late_rows: Vec<&Value> = rows.iter().filter(|r| r["late"] != 0).collect();
    assert!(!late_rows.is_empty() && late_rows.iter().all(|r| r["device_id"] == d1.as_str()));

    // An independent computation over the same Parquet.
    let duck = python_json(
        "ledger_check.py",
        &[
            &data.join("telemetry"),
            Path::new("60000"),
            Path::new("60000"),
        ],
    );
    assert_eq!(duck["received"], t["received"], "DuckDB: {duck}");
    assert_eq!(duck["duplicated"], t["duplicated"], "DuckDB: {duck}");
    assert_eq!(duck["late"], t["late"], "DuckDB: {duck}");
    for d in l["devices"].as_array().unwrap() {
        let id = d["device_id"].as_str().unwrap();
        for k in ["received", "duplicated", "late"] {
            assert_eq!(duck["per_device"][id][k], d[k], "{k} of {id}");
        }
    }

    // Hour windows: the same totals (late messages are two hours late).
    let (h, _) = ledger(
        &data,
        &["--sent", summary.to_str().unwrap(), "--window", "1h"],
    );
    assert_eq!(counts(&h["totals"]), counts(t));
    let duck_h = python_json(
        "ledger_check.py",
        &[
            &data.join("telemetry"),
            Path::new("3600000"),
            Path::new("60000"),
        ],
    );
    assert_eq!(duck_h["late"], h["totals"]["late"]);

    // Without the devices' ledger the range is observed: d0's lost first message and
    // d2's lost last one cannot be seen, and d1's self-dropped messages look missing.
    let (o, _) = ledger(&data, &[]);
    let ot = counts(&o["totals"]);
    assert_eq!(ot.received, counts(t).received);
    assert_eq!(ot.missing, counts(t).missing - 2 + 3);
    assert!(
        o["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["sent_from"] == "observed")
    );

    // CSV: a header, the rows, a TOTAL line with the same totals.
    let mut cmd = iotpipe(&["ledger", "--format", "csv", "--data"]);
    cmd.arg(&data).args(["--sent", summary.to_str().unwrap()]);
    let csv = String::from_utf8(run(&mut cmd).stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "device_id,window_start,sent,received,duplicated,missing,late,rejected,sent_from"
    );
    assert_eq!(lines.len(), rows.len() + 2);
    let c = counts(t);
    assert_eq!(
        lines.last().copied().unwrap(),
        format!(
            "TOTAL,,{},{},{},{},{},{},summary",
            c.sent, c.received, c.duplicated, c.missing, c.late, c.rejected
        )
    );
}

#[test]
fn a_summary_without_a_per_device_ledger_is_refused_with_what_to_give_instead() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("dump-summary.json");
    std::fs::write(&summary, r#"{"mode":"dump","messages":3}"#).unwrap();
    let out = iotpipe(&["ledger", "--data"])
        .arg(dir.path())
        .arg("--sent")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a --dump run has none"), "{stderr}");
}

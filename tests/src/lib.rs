//! Helpers for the end-to-end tests: locate the workspace binaries, run them, and run the
//! independent checkers (pyarrow / DuckDB) from the test venv.
//!
//! The tests need what `tests/run.sh` sets up: the binaries built
//! (`cargo build --workspace --bins`), a Python with pyarrow and duckdb
//! (`IOTPIPE_TEST_PYTHON`), and for the mosquitto tests a broker (`IOTPIPE_TEST_MQTT`).
//! When something is missing the test **fails** and says how to get it; it never skips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The workspace root of the checkout the tests run in.
pub fn root() -> PathBuf {
    test_support::workspace_root()
}

/// The path of a workspace binary, built next to this test executable.
///
/// # Panics
/// When the binary has not been built.
pub fn bin(name: &str) -> PathBuf {
    // target/debug/deps/<test-exe> → target/debug/<name>
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (tests/run.sh does)",
        path.display()
    );
    path
}

/// An environment variable the test suite needs.
///
/// # Panics
/// When it is not set, naming the set-up that provides it.
pub fn need_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the suite with `bash tests/run.sh` (it starts the test services and exports it)"
        ),
    }
}

/// A mosquitto of the test's own on `port` (127.0.0.1): anonymous, no persistence, with
/// `extra` configuration lines. Returns once it listens; the caller kills it.
///
/// # Panics
/// When mosquitto is not on PATH (`tests/setup/services.sh` installs it) or does not listen
/// within 10 s.
// A test helper: a failure is the test failing.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub fn mosquitto(dir: &Path, port: u16, extra: &str) -> Child {
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n{extra}"),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto on PATH (tests/setup/services.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The last stdout line of a successful command, parsed as JSON.
pub fn last_json_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {line}"))
}

/// All of stdout, parsed as JSON.
pub fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs a checker script of `tests/py` with the test venv's Python and parses its JSON.
pub fn python_json(script: &str, args: &[&Path]) -> Value {
    let python = need_env("IOTPIPE_TEST_PYTHON");
    let out = run(Command::new(python)
        .arg(root().join("tests/py").join(script))
        .args(args));
    stdout_json(&out)
}

/// `iotpipe` with the given arguments.
pub fn iotpipe(args: &[&str]) -> Command {
    let mut c = Command::new(bin("iotpipe"));
    c.args(args).env("RUST_LOG", "warn");
    c
}

/// The aggregates of `iotpipe query --format json` over a data directory.
pub fn query_json(data: &Path) -> Vec<Value> {
    let out = run(iotpipe(&["query", "--format", "json", "--window", "1m", "--data"]).arg(data));
    match stdout_json(&out) {
        Value::Array(rows) => rows,
        other => panic!("query did not print an array: {other}"),
    }
}

/// Statistics keyed by (device, metric, window start): count, min, max and sum.
pub type WindowStats = std::collections::BTreeMap<String, (u64, String, String, String)>;

/// The 1-minute statistics of a data directory, keyed by (device, metric, window start):
/// count, min, max and sum (to 6 decimals) — what "the stats are the same" compares.
pub fn stats_by_window(
    data: &Path,
) -> std::collections::BTreeMap<String, (u64, String, String, String)> {
    query_json(data)
        .into_iter()
        .map(|r| {
            let key = format!("{} {} {}", r["device_id"], r["metric"], r["window_start"]);
            let val = (
                r["count"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no count in {r}")),
                r["min"].to_string(),
                r["max"].to_string(),
                format!(
                    "{:.6}",
                    r["sum"].as_f64().unwrap_or_else(|| panic!("no sum in {r}"))
                ),
            );
            (key, val)
        })
        .collect()
}

/// The sum of `field` (`quantity`, `usd`) over a run summary's cost lines whose item starts
/// with `prefix` (`--summary-json` of `iotpipe up` or `replay`).
///
/// # Panics
/// When the summary has no cost lines, or a line lacks the field.
pub fn cost_lines(summary: &Value, prefix: &str, field: &str) -> f64 {
    let Some(lines) = summary["cost"]["lines"].as_array() else {
        panic!("no cost lines in {summary}");
    };
    lines
        .iter()
        .filter(|l| l["item"].as_str().is_some_and(|i| i.starts_with(prefix)))
        .map(|l| {
            l[field]
                .as_f64()
                .unwrap_or_else(|| panic!("no {field} in {l}"))
        })
        .sum()
}

/// Sum of `count` over aggregate rows.
pub fn total_count(rows: &[Value]) -> u64 {
    rows.iter().map(|r| r["count"].as_u64().unwrap_or(0)).sum()
}

/// Every file under `dir`, recursively (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Epoch milliseconds of an RFC 3339 JSON string (a query row's window start).
///
/// # Panics
/// When the value is not such a string.
pub fn rfc3339_ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{v} is not an RFC 3339 time: {e}"))
        .timestamp_millis()
}

/// Whether two sums or means agree up to floating-point rounding (relative 1e-9).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// `device-sim --dump -` of `devices` devices at 1 message/s for `minutes`, seeded,
/// starting 40 minutes ago (inside the accepted event-time window): the payload lines.
///
/// # Panics
/// When device-sim fails or dumps another number of lines.
pub fn seeded_lines(devices: usize, minutes: u64, seed: u64) -> Vec<String> {
    let start = chrono::Utc::now().timestamp_millis() - 40 * 60 * 1000;
    let out = run(Command::new(bin("device-sim")).args([
        "--devices",
        &devices.to_string(),
        "--rate",
        "1",
        "--duration",
        &format!("{minutes}m"),
        "--seed",
        &seed.to_string(),
        "--start",
        &start.to_string(),
        "--dump",
        "-",
    ]));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len() as u64, devices as u64 * minutes * 60);
    lines
}

/// Writes `lines` to `path`, one per line (a replay input).
pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// `iotpipe replay --summary-json` of `file` into `data`, with no scheduled rollup during
/// the run (only the final one): the summary's JSON line.
pub fn replay(file: &Path, data: &Path) -> Value {
    let mut cmd = iotpipe(&["replay", "--summary-json", "--rollup-every", "1h", "--data"]);
    cmd.arg(data).arg(file);
    last_json_line(&run(&mut cmd))
}

/// `device-sim --dump path` of `devices` devices at 1 message/s for `duration`, seeded,
/// event times from `start_ms`.
pub fn dump(path: &Path, devices: u32, duration: &str, seed: u64, start_ms: i64) {
    run(Command::new(bin("device-sim"))
        .args(sim_args(devices, duration, seed, start_ms))
        .arg("--dump")
        .arg(path));
}

/// device-sim's arguments for `devices` devices at 1 message/s for `duration`, seeded,
/// event times from `start_ms`.
fn sim_args(devices: u32, duration: &str, seed: u64, start_ms: i64) -> Vec<String> {
    [
        "--devices",
        &devices.to_string(),
        "--rate",
        "1",
        "--duration",
        duration,
        "--seed",
        &seed.to_string(),
        "--start",
        &start_ms.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A replay input ([`seeded_input`]) and what it holds.
pub struct SeededInput {
    /// The replay file (`input.jsonl`).
    pub file: PathBuf,
    /// device-sim's per-device ledger, for `iotpipe ledger --sent`.
    pub sent: PathBuf,
    /// Valid messages (accepted by ingest).
    pub messages: u64,
    /// Their readings.
    pub readings: u64,
    /// The device-sim arguments that publish exactly these messages (one a second per
    /// device): `--devices`, `--rate`, `--duration`, `--seed`, `--start`.
    pub sim_args: Vec<String>,
}

/// Writes a replay input under `dir`: `devices` devices' messages for `duration` (one a
/// second, event times 50 minutes ago, device-sim `--seed seed`), then two payloads ingest
/// quarantines and no device can be charged with (`{not json`, `[1,2,3]`).
///
/// # Panics
/// When device-sim fails or the files cannot be written: the test fails.
// A test helper: a failure is the test failing.
#[allow(clippy::unwrap_used)]
pub fn seeded_input(dir: &Path, devices: u32, duration: &str, seed: u64) -> SeededInput {
    let file = dir.join("input.jsonl");
    let start_ms = chrono::Utc::now().timestamp_millis() - 50 * 60 * 1000;
    dump(&file, devices, duration, seed, start_ms);
    let mut text = std::fs::read_to_string(&file).unwrap();
    let mut per_device: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let (mut messages, mut readings) = (0, 0);
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        let e = per_device
            .entry(v["device_id"].as_str().unwrap().to_string())
            .or_insert((seq, seq, 0));
        e.0 = e.0.min(seq);
        e.1 = e.1.max(seq);
        e.2 += 1;
        messages += 1;
        readings += v["metrics"].as_object().unwrap().len() as u64;
    }
    // Quarantined, not attributable to a device: a kill must not turn them into losses.
    text.push_str("{not json\n[1,2,3]\n");
    std::fs::write(&file, text).unwrap();
    let per_device: serde_json::Map<String, Value> = per_device
        .into_iter()
        .map(|(id, (first, last, n))| {
            let d = json!({"first_seq": first, "last_seq": last, "sent": n,
                           "acknowledged": n, "failed": 0, "dropped": 0});
            (id, d)
        })
        .collect();
    let sent = dir.join("sent.json");
    let summary = json!({"sent": messages, "per_device": per_device});
    std::fs::write(&sent, summary.to_string()).unwrap();
    SeededInput {
        file,
        sent,
        messages,
        readings,
        sim_args: sim_args(devices, duration, seed, start_ms),
    }
}

/// Checks that `data` holds every message of `input` once after de-duplication — pyarrow
/// and DuckDB count the distinct readings, the delivery ledger (against the devices' seq
/// ranges) finds nothing missing — and that the statistics equal `want`. `point` names the
/// case in failure messages.
///
/// # Panics
/// When a check fails (that is the test failing).
#[allow(clippy::unwrap_used)]
pub fn check_stored_once(point: &str, input: &SeededInput, data: &Path, want: &WindowStats) {
    assert_eq!(
        &stats_by_window(data),
        want,
        "{point}: the statistics after the rerun differ from a clean run's"
    );
    let parquet = python_json("parquet_check.py", &[&data.join("telemetry")]);
    assert_eq!(
        parquet["distinct_readings"].as_u64(),
        Some(input.readings),
        "{point}: every accepted reading in Parquet once after dedup: {parquet}"
    );
    let out = run(iotpipe(&["ledger", "--format", "json", "--data"])
        .arg(data)
        .arg("--sent")
        .arg(&input.sent));
    let totals = stdout_json(&out)["totals"].clone();
    assert_eq!(
        totals["received"].as_u64(),
        Some(input.messages),
        "{point}: {totals}"
    );
    assert_eq!(totals["missing"].as_u64(), Some(0), "{point}: {totals}");
    assert_eq!(
        totals["sent"].as_u64(),
        Some(input.messages),
        "{point}: {totals}"
    );
}

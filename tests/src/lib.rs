//! Helpers for the end-to-end tests: locate the workspace binaries, run them, and run the
//! independent checkers (pyarrow / DuckDB) from the test venv.
//!
//! The tests need what `tests/run.sh` sets up: the binaries built
//! (`cargo build --workspace --bins`), a Python with pyarrow and duckdb
//! (`IOTPIPE_TEST_PYTHON`), and for the mosquitto tests a broker (`IOTPIPE_TEST_MQTT`).
//! When something is missing the test **fails** and says how to get it; it never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
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

/// Sum of `count` over aggregate rows.
pub fn total_count(rows: &[Value]) -> u64 {
    rows.iter().map(|r| r["count"].as_u64().unwrap_or(0)).sum()
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
        .args(["--devices", &devices.to_string(), "--rate", "1"])
        .args(["--duration", duration, "--seed", &seed.to_string()])
        .args(["--start", &start_ms.to_string(), "--dump"])
        .arg(path));
}

//! The emulated IoT rule survives a broker restart: `iotpipe up --devices 0 --broker URL`
//! on a mosquitto of the test's own, which is stopped and started again mid-run. The rule
//! reconnects and subscribes again (a clean session: the restarted broker forgot the
//! subscription), so a message published after the restart is ingested like one before.
//!
//! Needs `mosquitto` and `mosquitto_pub` on PATH (`tests/setup/services.sh` installs them).

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iotpipe_tests::{iotpipe, mosquitto, query_json, total_count};
use serde_json::{Value, json};
use test_support::free_port;

fn publish(port: u16, device: &str, seq: u64) {
    let payload = json!({"device_id": device, "seq": seq,
        "ts": chrono::Utc::now().timestamp_millis(), "metrics": {"temperature": 20.5}});
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", &format!("dt/lab/{device}/telemetry")])
        .args(["-m", &payload.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub failed: {status}");
}

/// Waits for a stderr line containing `needle`.
fn wait_for(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|l| l.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("no {needle:?} on stderr within 30 s:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn the_rule_subscribes_again_after_the_broker_restarts_and_ingests_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = mosquitto(dir.path(), port, "");
    let data = dir.path().join("data");
    let mut up = iotpipe(&["up", "--devices", "0", "--duration", "12s"])
        .args([
            "--flush-every",
            "1s",
            "--rollup-every",
            "1s",
            "--summary-json",
        ])
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}"), "--data"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = up.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    wait_for(&rx, &mut seen, "broker: ");
    publish(port, "lab-1", 1);

    broker.kill().unwrap();
    broker.wait().unwrap();
    wait_for(&rx, &mut seen, "rule lost the broker connection");
    let mut broker = mosquitto(dir.path(), port, "");
    // The broker has the subscription once it sent the SUBACK (a fixed sleep was not
    // enough on a loaded machine).
    wait_for(&rx, &mut seen, "rule subscribed again");
    publish(port, "lab-1", 2);

    let status = up.wait().unwrap();
    let mut stdout = String::new();
    up.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    broker.kill().unwrap();
    broker.wait().unwrap();
    seen.extend(rx.try_iter());
    assert!(
        status.success(),
        "iotpipe up failed: {status}\n{}",
        seen.join("\n")
    );
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    let summary: Value = serde_json::from_str(last).unwrap();
    assert_eq!(summary["received"].as_u64(), Some(2), "{summary}");
    assert_eq!(summary["accepted"].as_u64(), Some(2), "{summary}");
    assert_eq!(
        total_count(&query_json(&data)),
        2,
        "both readings are in the stats"
    );
}

/// A broker that drops what it acknowledged (here: a queue of one message for a slow
/// subscriber) fails the run, after the summary: the loss is outside the pipeline and
/// nothing can bring it back, so a script must not mistake the run for a good one.
#[test]
fn messages_the_broker_acknowledged_but_never_delivered_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = mosquitto(
        dir.path(),
        port,
        "max_queued_messages 1\nmax_inflight_messages 1\n",
    );
    let data = dir.path().join("data");
    let out = iotpipe(&["up", "--devices", "100", "--rate", "50", "--duration", "3s"])
        .args([
            "--flush-every",
            "1s",
            "--rollup-every",
            "1h",
            "--summary-json",
        ])
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}"), "--data"])
        .arg(&data)
        .output()
        .unwrap();
    broker.kill().unwrap();
    broker.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run succeeded:\n{stderr}");
    assert!(stderr.contains("never reached the rule"), "{stderr}");
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    let summary: Value = serde_json::from_str(last).unwrap();
    let (acknowledged, received) = (
        summary["acknowledged"].as_u64().unwrap(),
        summary["received"].as_u64().unwrap(),
    );
    assert!(received < acknowledged, "{summary}");
    assert_eq!(
        summary["ledger"]["missing"].as_u64(),
        Some(acknowledged - received),
        "{summary}"
    );
}

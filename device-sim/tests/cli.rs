//! The `device-sim` binary as a user runs it: `--dump`, `--summary-json`, errors and help.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::embedded_broker;

fn device_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_device-sim"))
        .args(args)
        .output()
        .expect("the device-sim binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

const DUMP: &[&str] = &[
    "--devices",
    "4",
    "--rate",
    "2",
    "--duration",
    "5s",
    "--seed",
    "42",
    "--start",
    "2025-11-25T12:00:00Z",
];

#[test]
fn dump_writes_the_same_payload_lines_for_the_same_seed_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    for path in [&a, &b] {
        let mut args = DUMP.to_vec();
        let p = path.to_str().unwrap();
        args.extend(["--dump", p]);
        let out = device_sim(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("wrote 40 payloads"),
            "{}",
            stderr(&out)
        );
    }
    let a = std::fs::read(&a).unwrap();
    assert_eq!(a, std::fs::read(&b).unwrap());
    assert_eq!(a.iter().filter(|b| **b == b'\n').count(), 40);

    // The same as stdout, and --start as epoch ms is the same instant.
    let mut args = DUMP.to_vec();
    args.extend(["--dump", "-", "--quiet"]);
    let pos = args
        .iter()
        .position(|a| *a == "2025-11-25T12:00:00Z")
        .unwrap();
    args[pos] = "1764072000000";
    let out = device_sim(&args);
    assert!(out.status.success());
    assert_eq!(out.stdout, a);

    // Another seed, other readings.
    let mut args = DUMP.to_vec();
    args.extend(["--dump", "-", "--quiet", "--seed", "43"]);
    assert_ne!(device_sim(&args).stdout, a);
}

#[test]
fn summary_json_is_the_last_stdout_line_of_a_dump() {
    let mut args = DUMP.to_vec();
    args.extend(["--dump", "-", "--summary-json", "--quiet"]);
    let out = device_sim(&args);
    let text = stdout(&out);
    let last = text.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["messages"], 40);
    assert_eq!(v["start_ms"], 1_764_072_000_000i64);
    assert_eq!(text.lines().count(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishing_run_prints_its_summary_as_json_on_the_last_stdout_line() {
    let broker = embedded_broker().await.to_string();
    let out = tokio::task::spawn_blocking(move || {
        device_sim(&[
            "--broker",
            &broker,
            "--devices",
            "5",
            "--rate",
            "4",
            "--duration",
            "1s",
            "--qos",
            "1",
            "--summary-json",
            "--fleet",
            "cli-test",
            "--device-prefix",
            "cli-",
        ])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(v["scheduled"], 20);
    assert_eq!(v["sent"], 20);
    assert_eq!(v["acknowledged"], 20);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["per_device"]["cli-000001"]["last_seq"], 3);
    // The human summary goes to stderr (no progress bar: stderr is not a terminal).
    let err = stderr(&out);
    assert!(err.contains("every message confirmed"), "{err}");
    assert!(!err.contains('\r'), "a progress bar was drawn: {err:?}");
}

#[test]
fn an_unreachable_broker_exits_1_and_says_what_to_do() {
    let port = common::free_port().to_string();
    let url = format!("mqtt://127.0.0.1:{port}");
    let out = device_sim(&["--broker", &url, "--devices", "2", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot connect to {url}: connection refused")),
        "{err}"
    );
    assert!(err.contains("iotpipe up"), "{err}");
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    for (args, hint) in [
        (&["--qos", "2"][..], "no QoS 2"),
        (&["--broker", "localhost:1883"][..], "mqtt://HOST:PORT"),
        (&["--start", "yesterday", "--dump", "-"][..], "RFC 3339"),
        (&["--rate", "0", "--dump", "-"][..], "invalid rate"),
        (&["--duration", "soon"][..], "--duration"),
    ] {
        let out = device_sim(args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(hint), "{args:?}: {err}");
    }
}

#[test]
fn help_explains_every_flag_and_shows_examples() {
    let out = device_sim(&["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for flag in [
        "--broker",
        "--fleet",
        "--devices",
        "--rate",
        "--duration",
        "--qos",
        "--seed",
        "--start",
        "--dump",
        "--summary-json",
        "--verbose",
        "Examples:",
        "Exit status",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

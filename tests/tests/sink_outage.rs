//! The sink goes away mid-run (moto: the Kinesis stream is deleted while `iotpipe replay`
//! runs): the run fails loudly and keeps the payloads it could not stream under
//! `errors/ingest-failed/`; once the stream exists again, `iotpipe requeue` brings every
//! payload home — the statistics equal a clean run's — and a second requeue changes none.
//!
//! Needs `IOTPIPE_TEST_MOTO` and `IOTPIPE_TEST_PYTHON`; fails without them.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iotpipe_tests::{
    dump, iotpipe, last_json_line, need_env, python_json, replay, root, run, stats_by_window,
};
use serde_json::Value;
use test_support::moto;

/// Readings (metrics) in replay lines.
fn readings(lines: &[String]) -> u64 {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["metrics"].as_object().unwrap().len() as u64
        })
        .sum()
}

/// Rows in the Parquet under `data/telemetry`, read by pyarrow (0 while there is none).
fn parquet_rows(data: &Path) -> u64 {
    let out = Command::new(need_env("IOTPIPE_TEST_PYTHON"))
        .arg(root().join("tests/py/parquet_check.py"))
        .arg(data.join("telemetry"))
        .output()
        .unwrap();
    if !out.status.success() {
        return 0;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["rows"].as_u64().unwrap()
}

fn requeue(data: &Path, stream: &str) -> Value {
    let mut cmd = iotpipe(&["requeue", "--summary-json", "--rollup-every", "1h"]);
    cmd.args(["--flush-every", "1s", "--stream", stream, "--data"])
        .arg(data)
        .envs(moto::s3_env());
    last_json_line(&run(&mut cmd))
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_stream_mid_run_fails_it_loudly_and_requeue_brings_every_payload_home() {
    let sdk = moto::sdk_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let name = moto::unique("iotpipe-outage");
    moto::create_kinesis_stream(&sdk, &name, 2).await;
    let stream = format!("kinesis:{name}");
    let dir = tempfile::tempdir().unwrap();

    // 4 devices × 1 minute; the reference is a clean run of all of it.
    let all = dir.path().join("all.jsonl");
    dump(
        &all,
        4,
        "1m",
        11,
        chrono::Utc::now().timestamp_millis() - 30 * 60 * 1000,
    );
    let lines: Vec<String> = std::fs::read_to_string(&all)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let clean = dir.path().join("clean");
    replay(&all, &clean);
    let want = stats_by_window(&clean);
    assert!(!want.is_empty());
    let (before, during) = lines.split_at(lines.len() / 2);

    // The run reads its input from a pipe, so that the outage falls between the halves.
    let fifo = dir.path().join("input.fifo");
    run(Command::new("mkfifo").arg(&fifo));
    let data = dir.path().join("data");
    let child = iotpipe(&["replay", "--summary-json", "--rollup-every", "1h"])
        .args(["--flush-every", "1s", "--stream", &stream, "--data"])
        .arg(&data)
        .arg(&fifo)
        .envs(moto::s3_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    for l in before {
        writeln!(input, "{l}").unwrap();
    }
    input.flush().unwrap();
    // The first half is durable (in Parquet, checkpointed) before the stream goes: a
    // deleted stream takes its unread records with it, which is not the fault under test.
    let want_rows = readings(before);
    let deadline = Instant::now() + Duration::from_secs(60);
    while parquet_rows(&data) < want_rows {
        assert!(
            Instant::now() < deadline,
            "the first half did not reach Parquet within 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    kinesis
        .delete_stream()
        .stream_name(&name)
        .send()
        .await
        .unwrap();
    for l in during {
        writeln!(input, "{l}").unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run must fail: {stderr}");
    assert!(
        stderr.contains("ingest invocation(s) failed")
            && stderr.contains("errors/ingest-failed")
            && stderr.contains("iotpipe requeue"),
        "the error says what failed, where the payloads are and what to do: {stderr}"
    );
    assert_ne!(stats_by_window(&data), want, "the outage left a gap");

    // The stream is back (new, empty, same name and shard ids): requeue.
    moto::create_kinesis_stream(&sdk, &name, 2).await;
    let first = requeue(&data, &stream);
    assert_eq!(
        first["input"].as_u64(),
        Some(during.len() as u64),
        "{first}"
    );
    assert_eq!(first["accepted"], first["input"], "{first}");
    assert_eq!(first["quarantined"].as_u64(), Some(0), "{first}");
    assert_eq!(
        stats_by_window(&data),
        want,
        "after requeue the statistics are as if nothing happened"
    );
    // An independent reader: every reading of the input is in Parquet, once after dedup.
    let parquet = python_json("parquet_check.py", &[&data.join("telemetry")]);
    assert_eq!(
        parquet["distinct_readings"].as_u64(),
        Some(readings(&lines)),
        "{parquet}"
    );

    let second = requeue(&data, &stream);
    assert_eq!(second["accepted"], first["accepted"], "{second}");
    assert_eq!(
        stats_by_window(&data),
        want,
        "a second requeue changes no statistic"
    );
}

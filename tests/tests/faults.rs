//! AWS-side faults in the whole local pipeline (`iotpipe replay --inject …`): throttled and
//! partially failed stream puts (and the IoT rule's failed actions, in the last test), puts that store and then time out (duplicates), and
//! failing transform invocations. Under each — and under all of them at once — the run
//! succeeds through the real retry paths, the faults were really injected (the summary
//! counts them), every message is in Parquet once after de-duplication (pyarrow + DuckDB),
//! the ledger balances with nothing missing, and the statistics equal a clean run's.
//!
//! Needs `IOTPIPE_TEST_PYTHON`; fails without it.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use iotpipe_tests::{
    SeededInput, check_stored_once, files_under, iotpipe, last_json_line, run, seeded_input,
    stats_by_window,
};
use serde_json::Value;

fn replay(input: &SeededInput, data: &Path, inject: Option<&str>) -> Value {
    // The put faults (throttle, partial, timeout) hit ingest's puts into the stream: the
    // per-message topology retries all of them (in the other topologies the rule's own put
    // fails to its error action: the last test).
    let mut cmd = iotpipe(&[
        "replay",
        "--topology",
        "per-message",
        "--summary-json",
        "--rollup-every",
        "1h",
    ]);
    cmd.args(["--flush-every", "200ms", "--data"])
        .arg(data)
        .arg(&input.file);
    if let Some(spec) = inject {
        cmd.args(["--inject", spec]);
    }
    last_json_line(&run(&mut cmd))
}

#[test]
fn the_ledger_balances_and_the_stats_hold_under_each_injected_fault() {
    let dir = tempfile::tempdir().unwrap();
    let input = seeded_input(dir.path(), 5, "2m", 21);
    replay(&input, &dir.path().join("clean"), None);
    let want = stats_by_window(&dir.path().join("clean"));

    // Rates high enough that a 600-message run meets each fault several times.
    for (spec, counter) in [
        ("throttle=0.2,seed=1", "throttled_calls"),
        ("partial=0.1,seed=2", "failed_entries"),
        ("timeout=0.05,seed=3", "timeouts"),
        // One invocation here (the input fits one processor buffer): seed 6 fails its first
        // attempt, and Firehose's retry succeeds.
        ("processor-error=0.5,seed=6", "processor_errors"),
        (
            "throttle=0.05,partial=0.01,timeout=0.01,processor-error=0.2,seed=5",
            "throttled_calls",
        ),
    ] {
        let data = dir.path().join(spec.replace([',', '='], "_"));
        let s = replay(&input, &data, Some(spec));
        let injected = s["faults"][counter].as_u64().unwrap_or(0);
        assert!(injected > 0, "{spec}: no {counter} injected: {s}");
        assert_eq!(
            s["accepted"].as_u64(),
            Some(input.messages),
            "{spec}: every valid message accepted: {s}"
        );
        assert_eq!(
            s["firehose"]["processing_failed"].as_u64(),
            Some(0),
            "{spec}: {s}"
        );
        check_stored_once(spec, &input, &data, &want);
    }
}

/// The put faults in the topologies without a per-message ingest: the rule's action (a put
/// into Firehose, or into the stream) is not retried by the rules engine, so its failures
/// go to the rule's error action (`errors/iot/`, AWS IoT's error-action format) and the run
/// fails after its summary; ingest's puts into Firehose (topology kinesis) are retried.
/// `iotpipe requeue` then brings every message home: stored once, nothing missing, the
/// statistics of a clean run.
#[test]
fn rule_action_faults_go_to_the_error_action_and_a_requeue_brings_them_home() {
    let dir = tempfile::tempdir().unwrap();
    let input = seeded_input(dir.path(), 5, "2m", 22);
    let clean = dir.path().join("clean");
    let mut cmd = iotpipe(&["replay", "--summary-json", "--rollup-every", "1h"]);
    run(cmd.arg("--data").arg(&clean).arg(&input.file));
    let want = stats_by_window(&clean);
    for topology in ["firehose", "kinesis"] {
        let data = dir.path().join(topology);
        let mut cmd = iotpipe(&[
            "replay",
            "--topology",
            topology,
            "--summary-json",
            "--rollup-every",
            "1h",
            "--flush-every",
            "200ms",
            "--inject",
            "throttle=0.05,partial=0.05,timeout=0.03,seed=4",
            "--data",
        ]);
        let out = cmd.arg(&data).arg(&input.file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{topology}: the run must fail: {stderr}"
        );
        assert!(
            stderr.contains("errors/iot/") && stderr.contains("iotpipe requeue"),
            "{topology}: the error names where the messages are and what to run: {stderr}"
        );
        // The summary is printed before the run fails.
        let s = last_json_line(&out);
        let failed = s["rule_errors"]["failed"].as_u64().unwrap();
        let timeouts = s["faults"]["timeouts"].as_u64().unwrap();
        assert!(failed > 0 && timeouts > 0, "{topology}: {s}");
        assert_eq!(s["rule_errors"]["kept"].as_u64(), Some(failed), "{s}");
        let kept: Vec<_> = files_under(&data.join("errors/iot"));
        assert_eq!(
            kept.len() as u64,
            failed,
            "{topology}: one object per message"
        );
        let first: Value = serde_json::from_slice(&std::fs::read(&kept[0]).unwrap()).unwrap();
        assert!(
            first["base64OriginalPayload"].is_string()
                && first["failures"][0]["errorMessage"].is_string(),
            "AWS IoT's error-action format: {first}"
        );
        if topology == "kinesis" {
            // Ingest's puts into Firehose met faults too, and retried them.
            assert!(s["faults"]["failed_entries"].as_u64().unwrap() > 0, "{s}");
        }
        let mut requeue = iotpipe(&["requeue", "--summary-json", "--topology", topology]);
        let r = last_json_line(&run(requeue.arg("--data").arg(&data)));
        assert_eq!(
            r["from_rule_errors"].as_u64(),
            Some(failed),
            "{topology}: {r}"
        );
        check_stored_once(topology, &input, &data, &want);
    }
}

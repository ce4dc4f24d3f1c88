//! AWS-side faults in the whole local pipeline (`iotpipe replay --inject …`): throttled and
//! partially failed stream puts, puts that store and then time out (duplicates), and
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
    SeededInput, check_stored_once, iotpipe, last_json_line, run, seeded_input, stats_by_window,
};
use serde_json::Value;

fn replay(input: &SeededInput, data: &Path, inject: Option<&str>) -> Value {
    // The put faults (throttle, partial, timeout) hit ingest's puts into the stream: the
    // per-message topology has them (the firehose topology has no stream, and refuses them).
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

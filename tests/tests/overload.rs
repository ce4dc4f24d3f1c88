//! Overload: `iotpipe up` driven past what its rule and ingest take per second. The
//! embedded broker acknowledges every QoS 1 publish and holds what the rule has not read
//! yet; after the devices stop, `up` waits for the rule as long as it makes progress, so
//! nothing acknowledged is dropped: the ledger shows nothing missing. (Before, `up` stopped
//! waiting after a fixed 15 s and lost the backlog without an error.)

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use iotpipe_tests::{iotpipe, last_json_line, run};

/// `iotpipe up` with 1,000 devices at 50 msg/s each (50,000 msg/s offered) for `duration`,
/// its summary as JSON on the last line, data in `data`; `extra` adds options.
fn up_at_50k(duration: &str, extra: &[&str], data: &Path) -> Command {
    let mut args = vec![
        "up",
        "--devices",
        "1000",
        "--rate",
        "50",
        "--duration",
        duration,
        "--rollup-every",
        "1h",
        "--summary-json",
    ];
    args.extend_from_slice(extra);
    args.push("--data");
    let mut cmd = iotpipe(&args);
    cmd.arg(data);
    cmd
}

#[test]
fn up_past_its_capacity_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    // 50,000 msg/s offered for 5 s: several times what a debug build ingests per second,
    // so that the backlog outlasts the old 15-second wait (measured before the fix: 124,810
    // of 250,000 acknowledged messages missing; after: none, in about 40 s).
    let s = last_json_line(&run(&mut up_at_50k(
        "5s",
        &["--flush-every", "2s"],
        dir.path(),
    )));
    let acknowledged = s["acknowledged"].as_u64().unwrap();
    assert!(
        acknowledged >= 100_000,
        "the fleet was not driven hard: {s}"
    );
    // QoS 1 is at least once: under overload the broker may deliver a message again (its
    // PUBACK came late); the rule takes each copy and the rollup's dedup drops the extra.
    let received = s["received"].as_u64().unwrap();
    let duplicated = s["ledger"]["duplicated"].as_u64().unwrap();
    assert_eq!(received, acknowledged + duplicated, "{s}");
    assert_eq!(s["accepted"].as_u64(), Some(received), "{s}");
    assert_eq!(s["ledger"]["missing"].as_u64(), Some(0), "{s}");
    assert_eq!(s["ledger"]["received"].as_u64(), Some(acknowledged), "{s}");
    assert_eq!(s["broker_dropped"].as_u64(), Some(0), "{s}");
    // It fell behind and caught up: the run outlasted the devices, and its summary says so.
    assert!(s["elapsed_s"].as_f64().unwrap() > 5.0, "{s}");
    assert!(s["behind_at_stop"].as_u64().unwrap() > 0, "{s}");
    assert!(s["caught_up_s"].as_f64().unwrap() > 0.0, "{s}");
    assert!(
        s["rule_rate"].as_f64().unwrap() < s["send_rate"].as_f64().unwrap(),
        "the rule took less per second than the devices sent: {s}"
    );
    assert!(
        s["rule_rate_while_sending"].as_f64().unwrap() < s["send_rate"].as_f64().unwrap(),
        "while they sent, the rule fell behind: {s}"
    );
}

/// The embedded broker keeps a bounded log of what the rule has not read
/// (`--broker-log-mib`); a backlog larger than that is dropped by the broker, oldest first.
/// Nothing in the pipeline can bring those messages back, so the run must say so: the
/// ledger counts them missing, `up` fails, and its error names the log and what to change.
#[test]
fn a_backlog_larger_than_the_brokers_log_fails_the_run_and_names_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB holds ~4,500 of the fleet's messages; 50,000 msg/s for 2 s is far more than a
    // debug build's rule takes in that time (the test above: tens of thousands behind).
    let out = up_at_50k("2s", &["--broker-log-mib", "1"], dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run hid its loss:\n{stderr}");
    // The summary is still printed, with every figure.
    let s = last_json_line(&out);
    let sent = s["sent"].as_u64().unwrap();
    let ledger = &s["ledger"];
    let missing = ledger["missing"].as_u64().unwrap();
    assert!(missing > 0, "{s}");
    // What came in = what was stored + what the broker dropped: nothing else went astray.
    assert_eq!(ledger["received"].as_u64().unwrap() + missing, sent, "{s}");
    // The run counted the broker's drops itself (its numbering jumped past them): every
    // missing message is among them, and every message the broker acknowledged either
    // reached the rule or was dropped (a copy a device sent again may be dropped too).
    let dropped = s["broker_dropped"].as_u64().unwrap();
    assert!(dropped >= missing, "{s}");
    assert!(
        s["received"].as_u64().unwrap() + dropped >= s["acknowledged"].as_u64().unwrap(),
        "{s}"
    );
    assert!(s["behind_at_stop"].as_u64().unwrap() > 4_500, "{s}");
    assert_eq!(s["caught_up_s"], serde_json::Value::Null, "{s}");
    assert!(
        stderr.contains(&format!(
            "{missing} of the {sent} messages the devices sent"
        )) && stderr.contains(&format!("dropped {dropped} of them unread"))
            && stderr.contains("keeps 1 MiB")
            && stderr.contains("--broker-log-mib"),
        "the error does not say what was lost and why:\n{stderr}"
    );
}

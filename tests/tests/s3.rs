//! `iotpipe replay`, `rollup`, `query` and `ledger` with `--data s3://bucket/prefix`, against moto's S3
//! (started by `tests/run.sh`): the same code paths as a local directory, through
//! object_store's S3 backend.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iotpipe_tests::{dump, iotpipe, last_json_line, run, stdout_json, total_count};
use test_support::moto;

#[test]
fn replay_rollup_query_and_ledger_work_on_an_s3_bucket() {
    let bucket = format!("iotpipe-e2e-{}", std::process::id());
    moto::create_bucket(&bucket);
    let data = format!("s3://{bucket}/run");

    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw.jsonl");
    let start = chrono::Utc::now().timestamp_millis() - 30 * 60 * 1000;
    dump(&raw, 4, "2m", 3, start);

    let mut replay = iotpipe(&["replay", "--summary-json", "--data", &data]);
    replay.arg(&raw);
    replay.envs(moto::s3_env());
    let s = last_json_line(&run(&mut replay));
    assert_eq!(s["input"], 4 * 2 * 60);
    assert_eq!(s["quarantined"], 0);
    let readings = s["readings"].as_u64().unwrap();
    assert_eq!(s["rows"].as_u64().unwrap(), readings);

    let mut query = iotpipe(&["query", "--format", "json", "--data", &data]);
    query.envs(moto::s3_env());
    let rows = stdout_json(&run(&mut query));
    assert_eq!(total_count(rows.as_array().unwrap()), readings);

    // The delivery ledger reads the same bucket: every message once, none missing; all are
    // stamped half an hour back, so all late in 1-minute windows.
    let ledger = |extra: &[&str]| {
        let mut cmd = iotpipe(&["ledger", "--format", "json", "--data", &data]);
        cmd.args(extra);
        cmd.envs(moto::s3_env());
        stdout_json(&run(&mut cmd))["totals"].clone()
    };
    let t = ledger(&[]);
    let n = |k: &str| t[k].as_u64().unwrap();
    let expected = 4 * 2 * 60;
    assert_eq!(
        (n("received"), n("duplicated"), n("missing"), n("late")),
        (expected, 0, 0, expected),
        "{t}"
    );
    // Nothing was received an hour from now: --since leaves everything out.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(ledger(&["--since", &later])["received"], 0);

    let mut rollup = iotpipe(&["rollup", "--data", &data]);
    rollup.envs(moto::s3_env());
    let again = last_json_line(&run(&mut rollup));
    assert_eq!(
        again["windows_updated"], 0,
        "a second rollup on S3 does nothing: {again}"
    );
}

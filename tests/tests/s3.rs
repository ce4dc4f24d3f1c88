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

/// `--data s3://…` takes its credentials from the AWS SDK's chain, as `--stream` does: a
/// named profile in a credentials file, no `AWS_ACCESS_KEY_ID` in the environment. (Before,
/// the S3 client did not read profiles and failed at the instance metadata service.) The
/// region too: the profile's, with no `AWS_REGION`, and each command says which it used
/// (before, S3 signed for us-east-1 whatever the profile said). moto checks no signature,
/// so the region is seen in what the commands print.
#[test]
fn an_aws_profile_is_enough_for_an_s3_data_location() {
    let bucket = format!("iotpipe-profile-{}", std::process::id());
    moto::create_bucket(&bucket);
    let data = format!("s3://{bucket}/run");
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[iotpipe-test]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            moto::ACCESS_KEY,
            moto::SECRET_KEY
        ),
    )
    .unwrap();
    let config = dir.path().join("config");
    std::fs::write(&config, "[profile iotpipe-test]\nregion = eu-west-3\n").unwrap();
    let profile = |cmd: &mut std::process::Command| {
        for (k, v) in moto::s3_env() {
            if !matches!(
                k,
                "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" | "AWS_REGION"
            ) {
                cmd.env(k, v);
            }
        }
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_PROFILE", "iotpipe-test")
            // Never the instance metadata service: all traffic stays on loopback.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // The line that names the region is at `info`, the commands' default.
            .env("RUST_LOG", "warn,local=info");
    };
    let raw = dir.path().join("raw.jsonl");
    dump(&raw, 2, "1m", 2, chrono::Utc::now().timestamp_millis());

    let mut replay = iotpipe(&["replay", "--summary-json", "--data", &data]);
    replay.arg(&raw);
    profile(&mut replay);
    let out = run(&mut replay);
    let s = last_json_line(&out);
    assert_eq!(s["input"], 2 * 60, "{s}");
    let readings = s["readings"].as_u64().unwrap();
    let said = "S3 region eu-west-3 (from the profile iotpipe-test)";
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(said), "{stderr}");

    let mut query = iotpipe(&["query", "--format", "json", "--data", &data]);
    profile(&mut query);
    let out = run(&mut query);
    let rows = stdout_json(&out);
    assert_eq!(total_count(rows.as_array().unwrap()), readings);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches(said).count(),
        1,
        "said once per process: {stderr}"
    );
}

//! `iotpipe replay --stream kinesis:NAME|firehose:NAME` against moto (started by
//! `tests/run.sh`): ingest puts into a real Kinesis API, the checkpointing reader feeds the
//! emulated Firehose, and the Parquet lands in an S3 bucket — checked with pyarrow's own
//! S3 client and DuckDB, and with `iotpipe query`. Each test makes its own stream and
//! bucket (moto is shared by the whole suite).
//!
//! Needs `IOTPIPE_TEST_MOTO` and `IOTPIPE_TEST_PYTHON`; fails without them.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use futures::TryStreamExt;
use iotpipe_tests::{bin, iotpipe, last_json_line, need_env, root, run, stdout_json, total_count};
use object_store::ObjectStoreExt;
use serde_json::Value;
use test_support::moto;

/// `device-sim --dump` of `devices` devices for one minute of event time, seqs from
/// `first_seq`, plus `bad` payloads that ingest must quarantine.
fn dump(path: &Path, devices: u32, first_seq: u64, seed: u64, bad: &[&str]) {
    let start = chrono::Utc::now().timestamp_millis() - 20 * 60 * 1000 + first_seq as i64 * 1000;
    run(Command::new(bin("device-sim"))
        .args([
            "--devices",
            &devices.to_string(),
            "--rate",
            "1",
            "--duration",
            "1m",
        ])
        .args(["--seed", &seed.to_string(), "--start", &start.to_string()])
        .args(["--first-seq", &first_seq.to_string(), "--dump"])
        .arg(path));
    let mut text = std::fs::read_to_string(path).unwrap();
    for b in bad {
        text.push_str(b);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn replay(file: &Path, stream: &str, data: &str) -> Value {
    let mut cmd = iotpipe(&["replay", "--summary-json", "--flush-every", "2s"]);
    cmd.args(["--stream", stream, "--data", data]).arg(file);
    cmd.envs(moto::s3_env());
    last_json_line(&run(&mut cmd))
}

/// The Parquet under s3://…/telemetry, read by pyarrow's S3 client and DuckDB.
fn s3_parquet(data: &str) -> Value {
    let out = run(Command::new(need_env("IOTPIPE_TEST_PYTHON"))
        .arg(root().join("tests/py/s3_parquet_check.py"))
        .arg(format!("{data}/telemetry"))
        .envs(moto::s3_env()));
    stdout_json(&out)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_through_kinesis_lands_every_accepted_reading_in_s3_and_a_second_replay_resumes() {
    let sdk = moto::sdk_config().await;
    let name = moto::unique("iotpipe-kin");
    moto::create_bucket(&name);
    moto::create_kinesis_stream(&sdk, &name, 2).await;
    let stream = format!("kinesis:{name}");
    let data = format!("s3://{name}/p");
    let dir = tempfile::tempdir().unwrap();

    // First run: 5 devices × 60 messages, and two payloads to quarantine.
    let first = dir.path().join("first.jsonl");
    dump(
        &first,
        5,
        0,
        11,
        &["{not json", r#"{"device_id":"sensor-000001","seq":1}"#],
    );
    let s = replay(&first, &stream, &data);
    assert_eq!(s["stream"], stream.as_str());
    assert_eq!(u(&s["input"]), 5 * 60 + 2);
    assert_eq!(
        u(&s["quarantined"]),
        2,
        "the bad payloads are quarantined: {s}"
    );
    assert_eq!(u(&s["accepted"]) + u(&s["quarantined"]), u(&s["input"]));
    let accepted = u(&s["accepted"]);
    let readings = u(&s["readings"]);
    let k = &s["kinesis"];
    assert_eq!(
        u(&k["records_read"]),
        accepted,
        "the reader drained what the run put: {k}"
    );
    assert_eq!(u(&k["shards_read"]), 2);
    assert_eq!(
        u(&k["shards_resumed"]),
        0,
        "a fresh stream starts at TRIM_HORIZON"
    );
    assert!(
        u(&k["checkpoints_written"]) >= 2,
        "one per shard at least: {k}"
    );
    let f = &s["firehose"];
    assert_eq!(u(&f["records_in"]), accepted);
    assert_eq!(
        u(&f["records_in"]),
        u(&f["ok"]) + u(&f["dropped"]) + u(&f["processing_failed"])
    );
    assert_eq!(u(&s["rows"]), readings);

    let parquet = s3_parquet(&data);
    assert_eq!(
        u(&parquet["distinct_readings"]),
        readings,
        "pyarrow/DuckDB on S3: distinct readings = accepted readings"
    );
    let mut query = iotpipe(&["query", "--format", "json", "--data", &data]);
    query.envs(moto::s3_env());
    let rows = stdout_json(&run(&mut query));
    assert_eq!(total_count(rows.as_array().unwrap()), readings);

    // Second run, new messages (seqs 60..120): only they are read, after the checkpoints.
    let second = dir.path().join("second.jsonl");
    dump(&second, 5, 60, 12, &[]);
    let s2 = replay(&second, &stream, &data);
    let k2 = &s2["kinesis"];
    assert_eq!(u(&k2["shards_resumed"]), 2, "both shards resume: {k2}");
    assert_eq!(
        u(&k2["records_read"]),
        u(&s2["accepted"]),
        "the first run's records are not read again"
    );
    let readings2 = u(&s2["readings"]);
    let parquet = s3_parquet(&data);
    assert_eq!(u(&parquet["distinct_readings"]), readings + readings2);
    assert_eq!(
        u(&parquet["rows"]),
        readings + readings2,
        "no record was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_into_firehose_puts_every_accepted_message_and_says_what_happens_next() {
    let sdk = moto::sdk_config().await;
    let name = moto::unique("iotpipe-fh");
    moto::create_bucket(&name);
    aws_sdk_firehose::Client::new(&sdk)
        .create_delivery_stream()
        .delivery_stream_name(&name)
        .delivery_stream_type(aws_sdk_firehose::types::DeliveryStreamType::DirectPut)
        .extended_s3_destination_configuration(
            aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::123456789012:role/firehose")
                .bucket_arn(format!("arn:aws:s3:::{name}"))
                .prefix("raw/")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("raw.jsonl");
    dump(&file, 3, 0, 5, &["{not json"]);
    let data = format!("s3://{name}/p");
    let s = replay(&file, &format!("firehose:{name}"), &data);
    assert_eq!(u(&s["accepted"]), 3 * 60);
    assert_eq!(u(&s["quarantined"]), 1);
    assert_eq!(
        u(&s["rows"]),
        0,
        "no Parquet from this run: Firehose does it on AWS"
    );
    let note = s["note"].as_str().unwrap_or_default();
    assert!(note.contains("moto only stores"), "{note}");
    let stream_line = s["cost"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["item"] == "Kinesis on-demand stream")
        .cloned()
        .unwrap();
    assert_eq!(
        stream_line["usd"], 0.0,
        "no Kinesis stream is used: {stream_line}"
    );

    // moto stores each PutRecordBatch as one object of the raw records, concatenated.
    let s3 = telemetry::store::open_store_with(&format!("s3://{name}"), moto::s3_env()).unwrap();
    let objects: Vec<_> = s3
        .list(Some(&object_store::path::Path::from("raw")))
        .try_collect()
        .await
        .unwrap();
    let mut records = 0u64;
    for o in objects {
        let body = s3.get(&o.location).await.unwrap().bytes().await.unwrap();
        for r in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
            let r = r.unwrap();
            assert!(
                r["device_id"].is_string() && r["received_at"].is_i64(),
                "{r}"
            );
            records += 1;
        }
    }
    assert_eq!(
        records,
        u(&s["accepted"]),
        "every accepted message reached the delivery stream"
    );
}

#[test]
fn a_missing_stream_fails_the_run_at_its_start_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("raw.jsonl");
    std::fs::write(&file, "{}\n").unwrap();
    for (stream, hint) in [
        ("kinesis:iotpipe-no-such-stream", "create the stream"),
        (
            "firehose:iotpipe-no-such-stream",
            "create the delivery stream",
        ),
    ] {
        let mut cmd = iotpipe(&["replay", "--stream", stream, "--data"]);
        cmd.arg(dir.path().join("data"))
            .arg(&file)
            .envs(moto::s3_env());
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stream}: {stderr}");
        assert!(
            stderr.contains("ResourceNotFoundException") && stderr.contains(hint),
            "{stream}: {stderr}"
        );
    }
}

//! The Kinesis reader (`local::kinesis_reader`) against a Kinesis API (moto server): ingest
//! puts through `KinesisSink`, the reader gets every accepted message back once and in
//! per-device order, a second read resumes after the checkpoints, and a split shard is
//! followed from the closed parent to its children.
//!
//! Needs `IOTPIPE_TEST_MOTO` (set by `bash tests/run.sh`); fails without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use test_support::moto as common;

use aws_sdk_kinesis::Client;
use ingest::{Ingest, IngestConfig, KinesisSink, RawPayload};
use local::kinesis_reader::{
    CHECKPOINT_PREFIX, KinesisSource, KinesisSourceConfig, SourceReport, checkpoint,
    read_checkpoint,
};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use telemetry::StreamRecord;
use telemetry::stream::StreamEntry;
use tokio::sync::{mpsc, watch};

/// A valid payload of `device` with sequence number `seq`.
fn valid(device: u64, seq: u64, now: i64) -> RawPayload {
    let id = format!("sensor-{device:06}");
    RawPayload {
        payload: format!(
            r#"{{"device_id":"{id}","seq":{seq},"ts":{ts},"metrics":{{"temperature":21.5}}}}"#,
            ts = now - 10_000 + seq as i64,
        )
        .into_bytes(),
        topic: format!("dt/fleet-a/{id}/telemetry"),
        received_at: now,
    }
}

/// Puts `seqs` of every device through the ingest core and the Kinesis sink.
async fn put(sdk: &aws_config::SdkConfig, stream: &str, devices: u64, seqs: std::ops::Range<u64>) {
    let ingest = Ingest::new(
        KinesisSink::from_sdk_config(sdk, stream),
        Arc::new(InMemory::new()),
        IngestConfig::default(),
    );
    let now = chrono::Utc::now().timestamp_millis();
    let payloads: Vec<RawPayload> = seqs
        .flat_map(|seq| (0..devices).map(move |d| valid(d, seq, now)))
        .collect();
    let report = ingest.ingest(&payloads).await.unwrap();
    assert_eq!(report.accepted, payloads.len() as u64, "{report:?}");
}

/// Reads the whole stream as a run that has already stopped its producers: drain to the
/// tips, then return the entries in arrival order.
async fn read(
    sdk: &aws_config::SdkConfig,
    store: Arc<dyn ObjectStore>,
    stream: &str,
) -> (Vec<StreamEntry>, SourceReport) {
    let source = KinesisSource::from_sdk_config(sdk, store, KinesisSourceConfig::new(stream));
    source.check_stream().await.unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let (_stop_tx, stop) = watch::channel(true);
    let task = tokio::spawn(source.run(tx, stop));
    let mut entries = Vec::new();
    while let Some(e) = rx.recv().await {
        entries.push(e);
    }
    let report = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the reader drains and ends")
        .unwrap()
        .unwrap();
    (entries, report)
}

/// Per device, the `seq`s in the order they were read.
fn seqs_by_device(entries: &[StreamEntry]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in entries {
        let r: StreamRecord = serde_json::from_slice(&e.data).unwrap();
        assert_eq!(e.partition_key, r.device_id, "partition key = device id");
        out.entry(r.device_id).or_default().push(r.seq);
    }
    out
}

/// The last sequence number read per shard: what the Firehose emulator reports durable
/// once everything read is in Parquet.
fn positions(entries: &[StreamEntry]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|e| (e.shard_id.clone(), e.sequence_number.clone()))
        .collect()
}

#[tokio::test]
async fn every_record_is_read_once_in_device_order_and_a_second_read_resumes_after_the_checkpoints()
{
    let sdk = common::sdk_config().await;
    let stream = common::unique("source-moto");
    common::create_kinesis_stream(&sdk, &stream, 3).await;
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());

    put(&sdk, &stream, 8, 0..30).await;
    let (first, report) = read(&sdk, store.clone(), &stream).await;
    assert_eq!(first.len(), 8 * 30, "every record once");
    assert_eq!(report.records_read, 8 * 30);
    assert_eq!(report.shards_read, 3);
    assert_eq!(report.shards_resumed, 0, "no checkpoint yet: TRIM_HORIZON");
    let expected: Vec<u64> = (0..30).collect();
    for (device, seqs) in seqs_by_device(&first) {
        assert_eq!(seqs, expected, "{device}: each seq once, in order");
    }

    // What the stack does once the records are durable: checkpoint their positions.
    let (ptx, prx) = mpsc::unbounded_channel();
    ptx.send(positions(&first)).unwrap();
    drop(ptx);
    let written = checkpoint(
        store.clone(),
        CHECKPOINT_PREFIX.into(),
        stream.clone(),
        None,
        prx,
    )
    .await
    .unwrap();
    assert_eq!(written, 3, "one checkpoint per shard");

    put(&sdk, &stream, 8, 30..40).await;
    let (second, report) = read(&sdk, store.clone(), &stream).await;
    assert_eq!(report.shards_resumed, 3);
    assert_eq!(
        second.len(),
        8 * 10,
        "only what was put after the checkpoints is read again"
    );
    let expected: Vec<u64> = (30..40).collect();
    for (device, seqs) in seqs_by_device(&second) {
        assert_eq!(
            seqs, expected,
            "{device}: resumes after its checkpoint, in order"
        );
    }
    let cp = read_checkpoint(
        store.as_ref(),
        CHECKPOINT_PREFIX,
        &stream,
        &first[0].shard_id,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(cp.stream, stream);
}

#[tokio::test]
async fn a_split_shard_is_read_to_its_end_and_then_its_children() {
    let sdk = common::sdk_config().await;
    let client = Client::new(&sdk);
    let stream = common::unique("source-split");
    common::create_kinesis_stream(&sdk, &stream, 1).await;
    put(&sdk, &stream, 5, 0..10).await;
    let parent = client
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap()
        .shards()[0]
        .shard_id()
        .to_owned();
    client
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&parent)
        .new_starting_hash_key((u128::MAX / 2).to_string())
        .send()
        .await
        .unwrap();
    put(&sdk, &stream, 5, 10..20).await;

    let (entries, report) = read(&sdk, Arc::new(InMemory::new()), &stream).await;
    assert_eq!(report.shards_read, 3, "the parent and both children");
    assert!(
        report.shards_ended >= 1,
        "the closed parent is read to its end: {report:?}"
    );
    let expected: Vec<u64> = (0..20).collect();
    let by_device = seqs_by_device(&entries);
    assert_eq!(by_device.len(), 5);
    for (device, seqs) in by_device {
        assert_eq!(
            seqs, expected,
            "{device}: once each, in order across the split"
        );
    }
}

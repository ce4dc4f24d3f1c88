//! The ingest core with the real Kinesis sink, against a Kinesis API (moto server): every
//! accepted message is read back with GetShardIterator/GetRecords exactly once, in
//! per-device order, and every other message is in the quarantine.
//!
//! Needs `IOTPIPE_TEST_MOTO` (set by `bash tests/run.sh`); fails without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use test_support::moto as common;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::ShardIteratorType;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::TryStreamExt;
use ingest::{Ingest, IngestConfig, IotRuleEvent, KinesisSink, RawPayload};
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use telemetry::StreamRecord;
use telemetry::quarantine::QuarantineRecord;

const DEVICES: u64 = 6;
const MESSAGES_PER_DEVICE: u64 = 50;
const SHARDS: i32 = 4;

/// A valid payload of `device` with sequence number `seq`.
fn valid(device: u64, seq: u64, now: i64) -> RawPayload {
    let id = format!("sensor-{device:06}");
    RawPayload {
        payload: format!(
            r#"{{"device_id":"{id}","seq":{seq},"ts":{ts},"metrics":{{"temperature":{t},"battery":3.7}},"fw":"1.4.2"}}"#,
            ts = now - 1000 + seq as i64,
            t = 20.0 + (seq % 10) as f64 / 10.0,
        )
        .into_bytes(),
        topic: format!("dt/fleet-a/{id}/telemetry"),
        received_at: now,
    }
}

/// Payloads the ingest must quarantine, one per class.
fn invalid(now: i64) -> Vec<RawPayload> {
    let raw = |payload: &str, topic: &str| RawPayload {
        payload: payload.as_bytes().to_vec(),
        topic: topic.into(),
        received_at: now,
    };
    vec![
        raw("{not json", "dt/fleet-a/sensor-000001/telemetry"),
        raw(
            &format!(r#"{{"device_id":"sensor-000002","seq":1,"ts":{now},"metrics":{{"t":1.0}}}}"#),
            "dt/fleet-a/sensor-000003/telemetry",
        ),
        raw(
            &format!(r#"{{"device_id":"sensor-000001","seq":1,"ts":{now},"metrics":{{}}}}"#),
            "dt/fleet-a/sensor-000001/telemetry",
        ),
        raw(
            r#"{"device_id":"sensor-000001","seq":1,"ts":0,"metrics":{"t":1.0}}"#,
            "dt/fleet-a/sensor-000001/telemetry",
        ),
    ]
}

/// Every record of every shard, each shard in order: (shard, partition key, record).
async fn read_all(client: &Client, stream: &str) -> Vec<(String, String, StreamRecord)> {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    assert_eq!(shards.shards().len(), SHARDS as usize);
    let mut out = Vec::new();
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator
            .expect("a shard iterator");
        // A bounded loop: the stream holds a few hundred records.
        for _ in 0..1000 {
            let page = client
                .get_records()
                .shard_iterator(&iterator)
                .limit(100)
                .send()
                .await
                .unwrap();
            for r in page.records() {
                let record: StreamRecord = serde_json::from_slice(r.data().as_ref()).unwrap();
                out.push((
                    shard.shard_id().to_owned(),
                    r.partition_key().unwrap_or_default().to_owned(),
                    record,
                ));
            }
            match page.next_shard_iterator {
                Some(next) if !page.records.is_empty() => iterator = next,
                _ => break,
            }
        }
    }
    out
}

async fn quarantined(store: &InMemory) -> Vec<QuarantineRecord> {
    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut out = Vec::new();
    for o in objects {
        let body = store.get(&o.location).await.unwrap().bytes().await.unwrap();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn every_accepted_message_reaches_kinesis_once_and_in_per_device_order() {
    let sdk = common::sdk_config().await;
    let client = Client::new(&sdk);
    let stream = common::unique("ingest-moto");
    common::create_kinesis_stream(&sdk, &stream, SHARDS).await;

    let store = Arc::new(InMemory::new());
    let ingest = Ingest::new(
        KinesisSink::from_sdk_config(&sdk, &stream),
        store.clone(),
        IngestConfig::default(),
    );
    let now = chrono::Utc::now().timestamp_millis();

    // Arrival order interleaves the devices, as a fleet's messages do.
    let mut payloads: Vec<RawPayload> = (0..MESSAGES_PER_DEVICE)
        .flat_map(|seq| (0..DEVICES).map(move |d| valid(d, seq, now)))
        .collect();
    let bad = invalid(now);
    payloads.splice(37..37, bad.iter().take(2).cloned());
    payloads.splice(150..150, bad.iter().skip(2).cloned());

    // The first messages as the IoT rule sends them, one event each; the rest in batches,
    // as a Kinesis event-source mapping would.
    let mut report = ingest::IngestReport::default();
    for p in &payloads[..20] {
        let event = IotRuleEvent {
            payload: STANDARD.encode(&p.payload),
            topic: p.topic.clone(),
            received_at: p.received_at,
            device_from_topic: None,
        };
        report.add(&ingest.handle_event(&event).await.unwrap());
    }
    for chunk in payloads[20..].chunks(97) {
        report.add(&ingest.ingest(chunk).await.unwrap());
    }

    let valid_count = DEVICES * MESSAGES_PER_DEVICE;
    assert_eq!(report.messages, valid_count + bad.len() as u64);
    assert_eq!(report.accepted, valid_count);
    assert_eq!(report.quarantined, bad.len() as u64);
    assert_eq!(report.sink_failed, 0);
    assert_eq!(report.messages, report.accepted + report.quarantined);

    let read = read_all(&client, &stream).await;
    assert_eq!(
        read.len() as u64,
        valid_count,
        "every accepted message, once"
    );

    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut shard_of: HashMap<String, String> = HashMap::new();
    for (shard, key, record) in &read {
        assert_eq!(key, &record.device_id, "the partition key is the device id");
        let first_shard = shard_of.entry(key.clone()).or_insert_with(|| shard.clone());
        assert_eq!(first_shard, shard, "one device, one shard");
        seqs.entry(record.device_id.clone())
            .or_default()
            .push(record.seq);
    }
    assert_eq!(seqs.len() as u64, DEVICES);
    let expected: Vec<u64> = (0..MESSAGES_PER_DEVICE).collect();
    for (device, got) in &seqs {
        assert_eq!(got, &expected, "{device}: each seq once, in order");
    }
    assert!(
        shard_of
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1,
        "the devices spread over more than one shard"
    );

    let q = quarantined(&store).await;
    assert_eq!(q.len(), bad.len());
    let mut raw_in: Vec<Vec<u8>> = bad.iter().map(|p| p.payload.clone()).collect();
    let mut raw_out: Vec<Vec<u8>> = q.iter().map(QuarantineRecord::raw).collect();
    raw_in.sort();
    raw_out.sort();
    assert_eq!(
        raw_out, raw_in,
        "the quarantine keeps the bytes that arrived"
    );
}

//! The raw-payload input (`IOTPIPE_INPUT=raw`, the `firehose` topology): the transform
//! validates what devices sent, quarantines the rejects and answers the rest like the
//! stream path.

// Test helpers outside #[test] functions panic on bad fixtures by design.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use aws_lambda_events::event::firehose::{KinesisFirehoseEvent, KinesisFirehoseResponse};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Value, json};
use telemetry::quarantine::QuarantineRecord;
use telemetry::{QuarantineReason, ValidationConfig};
use transform::{RawError, RawSummary, RawTransform, RuleRecord, TransformResult, transform};

/// Arrival time of every record: 2025-11-30T12:00:00Z.
const ARRIVAL: i64 = 1_764_504_000_000;

fn message(device: &str, seq: u64, ts_offset: i64) -> Value {
    json!({"device_id": device, "seq": seq, "ts": ARRIVAL + ts_offset,
           "metrics": {"temperature": 20.5 + seq as f64, "humidity": 40.0}, "fw": "1.0.0"})
}

fn topic(device: &str) -> String {
    format!("dt/fleet/{device}/telemetry")
}

/// A Firehose event whose records carry `(payload, topic)` the way the rule puts them.
fn raw_event(payloads: &[(Vec<u8>, String)]) -> KinesisFirehoseEvent {
    let records: Vec<Value> = payloads
        .iter()
        .enumerate()
        .map(|(i, (payload, topic))| {
            json!({"recordId": format!("r{i}"), "approximateArrivalTimestamp": ARRIVAL,
                   "data": STANDARD.encode(RuleRecord::new(payload, topic).to_json())})
        })
        .collect();
    serde_json::from_value(json!({"invocationId": "inv", "region": "eu-west-1",
        "deliveryStreamArn": "arn:aws:firehose:eu-west-1:123456789012:deliverystream/d",
        "records": records}))
    .unwrap()
}

/// The event the stream path gets for the same messages: ingest's stream records, one per
/// message, with the same receive time.
fn stream_event(messages: &[Value]) -> KinesisFirehoseEvent {
    let records: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut m = m.clone();
            m["received_at"] = json!(ARRIVAL);
            json!({"recordId": format!("s{i}"), "approximateArrivalTimestamp": ARRIVAL,
                   "data": STANDARD.encode(serde_json::to_vec(&m).unwrap())})
        })
        .collect();
    serde_json::from_value(json!({"invocationId": "inv", "region": "eu-west-1",
        "deliveryStreamArn": "arn:aws:firehose:eu-west-1:123456789012:deliverystream/d",
        "records": records}))
    .unwrap()
}

fn results(response: &KinesisFirehoseResponse) -> Vec<TransformResult> {
    response
        .records
        .iter()
        .map(|r| r.result.as_deref().unwrap().parse().unwrap())
        .collect()
}

/// Every Ok row of a response, with its partition keys, sorted.
fn ok_rows(response: &KinesisFirehoseResponse) -> Vec<(String, Vec<(String, String)>)> {
    let mut rows = Vec::new();
    for r in &response.records {
        if r.result.as_deref() == Some("Ok") {
            let mut keys: Vec<_> = r.metadata.partition_keys.clone().into_iter().collect();
            keys.sort();
            for line in std::str::from_utf8(&r.data.0).unwrap().lines() {
                rows.push((line.to_owned(), keys.clone()));
            }
        }
    }
    rows.sort();
    rows
}

/// Every quarantine record in `store`; the store holds nothing but the quarantine and
/// Parquet under `telemetry/`.
async fn quarantine(store: &InMemory) -> Vec<QuarantineRecord> {
    let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut out = Vec::new();
    for m in metas {
        if m.location.as_ref().starts_with("telemetry/") {
            continue;
        }
        assert!(
            m.location.as_ref().starts_with("quarantine/"),
            "{}",
            m.location
        );
        let body = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        for line in std::str::from_utf8(&body).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

fn assert_account(summary: &RawSummary, response: &KinesisFirehoseResponse, records: usize) {
    assert_eq!(response.records.len(), records);
    assert_eq!(summary.records, records);
    assert_eq!(
        summary.records,
        summary.ok + summary.quarantined + summary.duplicates + summary.processing_failed
    );
}

fn raw_transform(store: Arc<InMemory>) -> RawTransform {
    RawTransform::new(store, ValidationConfig::default(), "quarantine")
}

#[tokio::test]
async fn valid_payloads_become_the_same_rows_as_through_ingest_and_the_stream() {
    let messages = [
        message("dev-1", 1, -1_000),
        message("dev-2", 7, -2_000),
        message("dev-1", 2, -500),
        message("dev-1", 3, -400),
    ];
    let mut payloads: Vec<(Vec<u8>, String)> = messages[..2]
        .iter()
        .map(|m| {
            let d = m["device_id"].as_str().unwrap();
            (serde_json::to_vec(m).unwrap(), topic(d))
        })
        .collect();
    // A device-side batch of two messages.
    payloads.push((
        serde_json::to_vec(&json!([messages[2], messages[3]])).unwrap(),
        topic("dev-1"),
    ));
    let store = Arc::new(InMemory::new());
    let (response, summary) = raw_transform(store.clone())
        .transform(&raw_event(&payloads))
        .await
        .unwrap();
    assert_eq!(results(&response), vec![TransformResult::Ok; 3]);
    assert_account(&summary, &response, 3);
    assert_eq!(summary.readings, 8);
    assert_eq!(
        ok_rows(&response),
        ok_rows(&transform(&stream_event(&messages)))
    );
    assert!(quarantine(&store).await.is_empty());
}

#[tokio::test]
async fn a_mixed_batch_quarantines_the_hostile_payloads_with_their_reasons_and_drops_them() {
    let good = message("dev-1", 1, -1_000);
    let oversize = vec![b' '; 128 * 1024 + 1];
    let mixed = json!([message("dev-3", 1, -100), {"device_id": "dev-3", "seq": 2}]);
    let payloads = vec![
        (serde_json::to_vec(&good).unwrap(), topic("dev-1")),
        (b"{not json".to_vec(), topic("dev-2")),
        (oversize.clone(), topic("dev-2")),
        // Claims another device than its topic's.
        (
            serde_json::to_vec(&message("dev-9", 1, 0)).unwrap(),
            topic("dev-2"),
        ),
        (serde_json::to_vec(&mixed).unwrap(), topic("dev-3")),
        // A re-delivery of the first message.
        (serde_json::to_vec(&good).unwrap(), topic("dev-1")),
    ];
    let store = Arc::new(InMemory::new());
    let (response, summary) = raw_transform(store.clone())
        .transform(&raw_event(&payloads))
        .await
        .unwrap();
    use TransformResult::{Dropped, Ok};
    assert_eq!(
        results(&response),
        vec![Ok, Dropped, Dropped, Dropped, Ok, Dropped]
    );
    assert_account(&summary, &response, 6);
    assert_eq!(summary.quarantined, 3);
    assert_eq!(summary.duplicates, 1);
    assert_eq!(summary.rejected_messages, 4);
    for r in &response.records {
        if r.result.as_deref() == Some("Dropped") {
            assert!(
                r.data.0.is_empty(),
                "Firehose keeps no copy of a dropped record"
            );
        }
    }
    // The accepted element of the batch is there; the rows are the stream path's.
    assert_eq!(
        ok_rows(&response),
        ok_rows(&transform(&stream_event(&[good, mixed[0].clone()])))
    );

    let q = quarantine(&store).await;
    let codes: Vec<_> = q.iter().map(|r| r.reason_code).collect();
    assert_eq!(
        codes,
        vec![
            QuarantineReason::MalformedJson,
            QuarantineReason::OversizePayload,
            QuarantineReason::TopicDeviceMismatch,
            QuarantineReason::MissingField,
        ],
        "{q:#?}"
    );
    assert_eq!(q[0].raw(), b"{not json");
    assert_eq!(q[1].raw(), oversize);
    assert_eq!(q[0].topic, "dt/fleet/dev-2/telemetry");
    assert_eq!(q[0].received_at, ARRIVAL);
    assert_eq!(q[3].rejections.len(), 1);
    assert_eq!(q[3].rejections[0].index, 1);
}

/// Every Parquet object under `prefix/`: (key, seq column), sorted by key.
async fn parquet_objects(store: &InMemory, prefix: &str) -> Vec<(String, Vec<i64>)> {
    use arrow_array::Array as _;
    let metas: Vec<_> = store
        .list(Some(&object_store::path::Path::from(prefix)))
        .try_collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for m in metas {
        let body = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        let reader =
            telemetry::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body)
                .unwrap()
                .build()
                .unwrap();
        let mut seqs = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            assert_eq!(batch.schema(), telemetry::schema::telemetry_schema());
            let seq = batch
                .column_by_name("seq")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            seqs.extend((0..seq.len()).map(|i| seq.value(i)));
        }
        out.push((m.location.to_string(), seqs));
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_device_batch_spanning_two_hours_lands_each_reading_in_its_own_hours_partition() {
    // 11:59:59.000 and 11:59:59.500 (hour 11), then 12:00:01 (hour 12): one record, one
    // set of partition keys, two partitions.
    let batch = json!([
        message("dev-1", 1, -1_000),
        message("dev-1", 2, -500),
        message("dev-1", 3, 1_000)
    ]);
    let payloads = vec![
        (serde_json::to_vec(&batch).unwrap(), topic("dev-1")),
        (
            serde_json::to_vec(&message("dev-2", 1, 2_000)).unwrap(),
            topic("dev-2"),
        ),
    ];
    let store = Arc::new(InMemory::new());
    let (response, summary) = raw_transform(store.clone())
        .transform(&raw_event(&payloads))
        .await
        .unwrap();
    // Nothing fails and nothing is quarantined.
    assert_eq!(results(&response), vec![TransformResult::Ok; 2]);
    assert_account(&summary, &response, 2);
    assert_eq!(summary.rejected_messages, 0);
    assert!(quarantine(&store).await.is_empty());
    // The record's answer holds the first hour's readings under that hour's keys ...
    assert_eq!(
        ok_rows(&response),
        ok_rows(&transform(&stream_event(&[
            batch[0].clone(),
            batch[1].clone(),
            message("dev-2", 1, 2_000)
        ])))
    );
    // ... and the transform wrote the other hour's readings to that hour's partition.
    assert_eq!(summary.split_messages, 1);
    assert_eq!(summary.split_readings, 2);
    let objects = parquet_objects(&store, "telemetry").await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(
        objects[0].0.starts_with("telemetry/dt=2025-11-30/hour=12/"),
        "{objects:?}"
    );
    assert_eq!(objects[0].1, vec![3, 3]);
    assert_eq!(
        summary
            .split_files
            .iter()
            .map(|f| &f.path)
            .collect::<Vec<_>>(),
        vec![&objects[0].0]
    );
    // Every reading is somewhere, once: 3 messages x 2 metrics + 1 x 2.
    assert_eq!(summary.readings + summary.split_readings, 8);
}

#[tokio::test]
async fn a_split_that_cannot_be_written_fails_the_invocation() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the telemetry directory would be: every put under it fails.
    std::fs::write(dir.path().join("telemetry"), b"").unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let raw = RawTransform::new(store, ValidationConfig::default(), "quarantine");
    let batch = json!([message("dev-1", 1, -1_000), message("dev-1", 2, 1_000)]);
    let event = raw_event(&[(serde_json::to_vec(&batch).unwrap(), topic("dev-1"))]);
    let err = raw.transform(&event).await.unwrap_err();
    assert!(matches!(err, RawError::Split { .. }), "{err}");
    assert!(err.to_string().contains("Firehose retries"), "{err}");
}

#[tokio::test]
async fn a_record_that_is_not_the_rules_envelope_is_quarantined_whole() {
    let mut event = raw_event(&[(b"{}".to_vec(), topic("dev-1"))]);
    event.records[0].data.0 = b"\x00binary".to_vec();
    let store = Arc::new(InMemory::new());
    let (response, summary) = raw_transform(store.clone())
        .transform(&event)
        .await
        .unwrap();
    assert_eq!(results(&response), vec![TransformResult::Dropped]);
    assert_eq!(summary.quarantined, 1);
    let q = quarantine(&store).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].reason_code, QuarantineReason::BadEventEncoding);
    assert_eq!(q[0].raw(), b"\x00binary");
}

#[tokio::test]
async fn a_quarantine_that_cannot_be_written_fails_the_invocation() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the quarantine's directory would be: every put under it fails.
    std::fs::write(dir.path().join("quarantine"), b"").unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let raw = RawTransform::new(store, ValidationConfig::default(), "quarantine");
    let event = raw_event(&[(b"nope".to_vec(), topic("dev-1"))]);
    let err = raw.transform(&event).await.unwrap_err();
    assert!(matches!(err, RawError::Quarantine { .. }), "{err}");
    assert!(err.to_string().contains("Firehose retries"), "{err}");
    // Valid-only events need no quarantine and still succeed.
    let ok = raw_event(&[(
        serde_json::to_vec(&message("dev-1", 1, 0)).unwrap(),
        topic("dev-1"),
    )]);
    assert!(raw.transform(&ok).await.is_ok());
}

#[test]
fn the_input_kind_is_explicit() {
    assert_eq!(
        "raw".parse::<transform::Input>(),
        Result::Ok(transform::Input::Raw)
    );
    assert_eq!(
        "stream".parse::<transform::Input>(),
        Result::Ok(transform::Input::Stream)
    );
    let err = "kinesis"
        .parse::<transform::Input>()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("IOTPIPE_INPUT") && err.contains("`raw`"),
        "{err}"
    );
}

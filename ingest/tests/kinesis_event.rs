//! Ingest behind a Kinesis event-source mapping (topology kinesis): a batch of the rule's
//! `{payload, topic}` records becomes the same stream records and quarantine as the
//! per-message path, in one sink call.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod capture;

use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEvent;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::TryStreamExt;
use ingest::{Ingest, IngestConfig};
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Value, json};
use telemetry::quarantine::QuarantineRecord;
use telemetry::{QuarantineReason, RuleRecord, StreamRecord};

fn kinesis_event(datas: &[Vec<u8>], arrival_ms: i64) -> KinesisEvent {
    let records: Vec<Value> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            json!({"eventSource": "aws:kinesis", "eventID": format!("shardId-000000000000:{i}"),
                   "awsRegion": "eu-west-1", "eventName": "aws:kinesis:record",
                   "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "p",
                               "sequenceNumber": i.to_string(), "data": STANDARD.encode(d),
                               "approximateArrivalTimestamp": arrival_ms as f64 / 1000.0}})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
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
    out.sort_by_key(|q: &QuarantineRecord| format!("{:?}", q.reason_code));
    out
}

#[tokio::test]
async fn a_kinesis_batch_of_rule_records_is_validated_streamed_and_quarantined() {
    let arrival = chrono::Utc::now().timestamp_millis();
    let good = json!({"device_id": "dev-1", "seq": 1, "ts": arrival - 1000,
                      "metrics": {"t": 1.5}});
    let topic = "dt/fleet/dev-1/telemetry";
    let datas = vec![
        RuleRecord::new(good.to_string().as_bytes(), topic).to_json(),
        RuleRecord::new(b"{nope", topic).to_json(),
        b"not the rule's record".to_vec(),
    ];
    let store = Arc::new(InMemory::new());
    let (sink, mut out) = capture::capture();
    let ingest = Ingest::new(sink, store.clone(), IngestConfig::default());
    let report = ingest
        .handle_kinesis(&kinesis_event(&datas, arrival))
        .await
        .unwrap();
    assert_eq!(
        (report.messages, report.accepted, report.quarantined),
        (3, 1, 2)
    );

    let entry = out.try_recv().unwrap();
    let rec: StreamRecord = serde_json::from_slice(&entry.data).unwrap();
    assert_eq!((rec.device_id.as_str(), rec.seq), ("dev-1", 1));
    // The receive time is the record's arrival in the stream. Within a second:
    // aws_lambda_events 1.2 reads the fraction of `approximateArrivalTimestamp` (seconds)
    // digit for digit as milliseconds (".41" becomes 41 ms, not 410).
    assert!(
        (rec.received_at - arrival).abs() < 1000,
        "{} vs {arrival}",
        rec.received_at
    );
    assert!(out.try_recv().is_err(), "one stream record");

    let q = quarantined(&store).await;
    let codes: Vec<_> = q.iter().map(|r| r.reason_code).collect();
    assert_eq!(
        codes,
        [
            QuarantineReason::BadEventEncoding,
            QuarantineReason::MalformedJson
        ]
    );
    assert_eq!(q[0].raw(), b"not the rule's record");
    assert_eq!(q[1].raw(), b"{nope");
    assert_eq!(q[1].topic, topic);
}

//! Cost of the transform handler per record: a 500-record Firehose event of 4-metric
//! stream records (a typical device message), transformed end to end (parse, checks,
//! de-duplication, long-layout JSON, response budget); and the same messages as the
//! `firehose` topology's raw rule records (the default: the rule's base64 record decoded,
//! the payload validated, then the same stream path).
//!
//! Run: `cargo bench -p transform --bench transform`. Criterion reports the time per
//! event; divide by 500 for the time per record (the throughput line gives records/s).

#![allow(clippy::expect_used)]

use std::hint::black_box;

use aws_lambda_events::encodings::MillisecondTimestamp;
use aws_lambda_events::event::firehose::{
    KinesisFirehoseEvent, KinesisFirehoseEventRecord, KinesisFirehoseRecordMetadata,
};
use criterion::{Criterion, Throughput, criterion_main};
use telemetry::{RuleRecord, StreamRecord, Telemetry, ValidationConfig};
use test_support::fixtures::device_message;

/// Records per event: Firehose's processor buffer holds a few hundred typical records.
const RECORDS: usize = 500;
fn event() -> KinesisFirehoseEvent {
    let mut event = KinesisFirehoseEvent::default();
    event.invocation_id = Some("bench".into());
    event.records = (0..RECORDS)
        .map(|i| {
            let m = device_message(i);
            let device = m.device_id.clone();
            let record = StreamRecord {
                received_at: m.ts + 80,
                device_id: m.device_id,
                seq: m.seq,
                ts: m.ts,
                metrics: m.metrics,
                fw: m.fw,
            };
            let mut metadata = KinesisFirehoseRecordMetadata::default();
            metadata.shard_id = Some("shardId-000000000000".into());
            metadata.partition_key = Some(device);
            metadata.sequence_number = Some(format!("{:056}", i));
            let mut r = KinesisFirehoseEventRecord::default();
            r.record_id = Some(format!("{:056}", i));
            r.data.0 = record.to_json();
            r.kinesis_firehose_record_metadata = Some(metadata);
            r
        })
        .collect();
    event
}

/// The same messages as the rule's raw records (the `firehose` topology): the device's
/// payload (a [`telemetry::Telemetry`] object) base64 in a [`RuleRecord`] with its topic.
fn raw_event() -> KinesisFirehoseEvent {
    let mut event = event();
    for r in &mut event.records {
        let rec: StreamRecord = serde_json::from_slice(&r.data.0).expect("a stream record");
        let topic = telemetry::topic::telemetry_topic("acme", &rec.device_id);
        let message = Telemetry {
            device_id: rec.device_id,
            seq: rec.seq,
            ts: rec.ts,
            metrics: rec.metrics,
            fw: rec.fw,
        };
        let payload = serde_json::to_vec(&message).expect("a message serializes");
        r.data.0 = RuleRecord::new(&payload, &topic).to_json();
        r.approximate_arrival_timestamp = MillisecondTimestamp(
            chrono::DateTime::from_timestamp_millis(rec.received_at).expect("a time in range"),
        );
        r.kinesis_firehose_record_metadata = None;
    }
    event
}

fn bench_transform(c: &mut Criterion) {
    let event = event();
    let mut group = c.benchmark_group("transform");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("500 records x 4 metrics", |b| {
        b.iter(|| transform::transform(black_box(&event)))
    });
    let raw = raw_event();
    let store = std::sync::Arc::new(object_store::memory::InMemory::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let t = transform::raw::RawTransform::new(store, ValidationConfig::default(), "quarantine");
    let (response, summary) = rt
        .block_on(t.transform(&raw))
        .expect("the raw transform answers");
    assert_eq!((summary.ok, response.records.len()), (RECORDS, RECORDS));
    group.bench_function("raw: 500 rule records x 4 metrics", |b| {
        b.iter(|| rt.block_on(t.transform(black_box(&raw))).expect("answers"))
    });
    group.finish();
}

/// The generated group function has no doc comment; the lint is silenced here only.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench_transform);
}
criterion_main!(group::benches);

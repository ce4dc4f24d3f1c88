//! Record packing (`IngestConfig::pack`): many messages of one device per stream record,
//! every accepted message delivered once and in per-device order, and a record the sink
//! refuses quarantined message by message so that the counts still balance.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod capture;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use ingest::pack::Pack;
use ingest::sink::{BatchLimits, EntryOutcome, SinkError};
use ingest::{Ingest, IngestConfig, RawPayload, RecordSink, RetryPolicy, SinkRecord};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use telemetry::StreamRecord;

/// A device-side batch: `n` messages of `device` from `first` on, as one JSON array.
fn batch(device: &str, first: u64, n: u64, now: i64) -> RawPayload {
    let items: Vec<String> = (first..first + n)
        .map(|seq| {
            format!(
                r#"{{"device_id":"{device}","seq":{seq},"ts":{ts},"metrics":{{"temperature":21.5,"battery":3.7}}}}"#,
                ts = now - 60_000 + seq as i64
            )
        })
        .collect();
    RawPayload {
        payload: format!("[{}]", items.join(",")).into_bytes(),
        topic: format!("dt/fleet/{device}/telemetry"),
        received_at: now,
    }
}

fn payloads(now: i64) -> Vec<RawPayload> {
    let mut p = vec![
        batch("sensor-000001", 0, 40, now),
        batch("sensor-000002", 0, 40, now),
        batch("sensor-000001", 40, 40, now),
    ];
    p.push(RawPayload {
        payload: b"{broken".to_vec(),
        topic: "dt/fleet/sensor-000003/telemetry".into(),
        received_at: now,
    });
    p
}

fn packing(bytes: usize) -> IngestConfig {
    IngestConfig {
        pack: Pack::Bytes(bytes),
        ..IngestConfig::default()
    }
}

#[tokio::test]
async fn packed_records_carry_every_accepted_message_once_in_device_order() {
    // Anchor the event times mid-hour so that no batch spans two hours.
    let now = chrono::Utc::now().timestamp_millis() / 3_600_000 * 3_600_000 + 1_800_000;
    let (sink, mut rx) = capture::capture();
    let ingest = Ingest::new(sink, Arc::new(InMemory::new()), packing(2000));
    let report = ingest.ingest(&payloads(now)).await.unwrap();
    assert_eq!(
        (report.messages, report.accepted, report.quarantined),
        (121, 120, 1)
    );
    assert_eq!(report.readings, 240);
    drop(ingest);

    let mut records = 0;
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while let Some(e) = rx.recv().await {
        records += 1;
        assert!(e.data.len() <= 2000, "a record of {} bytes", e.data.len());
        for line in e.data.split(|b| *b == b'\n') {
            let r: StreamRecord = serde_json::from_slice(line).unwrap();
            assert_eq!(r.device_id, e.partition_key, "one device per record");
            seqs.entry(r.device_id).or_default().push(r.seq);
        }
    }
    assert!(
        records < 20,
        "120 messages of ~150 B in 2000 B records: {records} records"
    );
    assert_eq!(seqs["sensor-000001"], (0..80).collect::<Vec<_>>());
    assert_eq!(seqs["sensor-000002"], (0..40).collect::<Vec<_>>());
}

/// A sink that refuses every entry for good.
struct Refusing;

impl RecordSink for Refusing {
    fn limits(&self) -> BatchLimits {
        BatchLimits::KINESIS
    }

    async fn put_batch(&self, batch: &[SinkRecord]) -> Result<Vec<EntryOutcome>, SinkError> {
        Ok(batch
            .iter()
            .map(|_| EntryOutcome::Failed {
                code: "InvalidArgumentException".into(),
                message: "refused".into(),
                retriable: false,
            })
            .collect())
    }
}

#[tokio::test]
async fn a_packed_record_the_sink_refuses_fails_the_invocation_and_quarantines_nothing() {
    let now = chrono::Utc::now().timestamp_millis() / 3_600_000 * 3_600_000 + 1_800_000;
    let store = Arc::new(InMemory::new());
    let cfg = IngestConfig {
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        ..packing(4000)
    };
    let ingest = Ingest::new(Refusing, store.clone(), cfg);
    // Not the payloads' fault: Lambda is to retry the whole event, so nothing of it is
    // quarantined (not even its one rejected payload: the retry writes it once).
    let err = ingest.ingest(&payloads(now)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("InvalidArgumentException"), "{text}");
    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    assert!(objects.is_empty(), "{objects:?}");
}

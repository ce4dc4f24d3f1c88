//! The ingest handler on real-shaped IoT rule events: accepted messages reach the stream,
//! everything else is quarantined with its reason and raw bytes.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod capture;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::TryStreamExt;
use ingest::{Ingest, IngestConfig, IotRuleEvent};
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use telemetry::StreamRecord;
use telemetry::quarantine::QuarantineRecord;

fn fixture(name: &str) -> IotRuleEvent {
    let path = format!(
        "{}/tests/fixtures/{name}",
        test_support::package_dir().display()
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct Rig {
    ingest: Ingest<capture::CaptureSink>,
    store: Arc<InMemory>,
    out: tokio::sync::mpsc::UnboundedReceiver<telemetry::stream::StreamEntry>,
}

fn rig() -> Rig {
    let store = Arc::new(InMemory::new());
    let (sink, out) = capture::capture();
    let ingest = Ingest::new(sink, store.clone(), IngestConfig::default());
    Rig { ingest, store, out }
}

async fn quarantined(store: &InMemory) -> Vec<QuarantineRecord> {
    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut out = Vec::new();
    for o in objects {
        assert!(
            o.location.as_ref().starts_with("quarantine/dt="),
            "{}",
            o.location
        );
        let body = store.get(&o.location).await.unwrap().bytes().await.unwrap();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn a_valid_event_becomes_one_stream_record_keyed_by_device() {
    let mut rig = rig();
    let event = fixture("iot-rule-event.json");
    let report = rig.ingest.handle_event(&event).await.unwrap();
    assert_eq!(
        (
            report.messages,
            report.accepted,
            report.quarantined,
            report.readings
        ),
        (1, 1, 0, 3)
    );
    let entry = rig.out.recv().await.unwrap();
    assert_eq!(entry.partition_key, "sensor-000042");
    let rec: StreamRecord = serde_json::from_slice(&entry.data).unwrap();
    assert_eq!(rec.seq, 12345);
    assert_eq!(rec.received_at, event.received_at);
    assert!(quarantined(&rig.store).await.is_empty());
}

#[tokio::test]
async fn a_device_side_batch_is_split_and_its_bad_element_quarantined() {
    let rig = rig();
    let report = rig
        .ingest
        .handle_event(&fixture("iot-rule-event-batch.json"))
        .await
        .unwrap();
    assert_eq!(
        (report.messages, report.accepted, report.quarantined),
        (3, 2, 1)
    );
    let q = quarantined(&rig.store).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].reason_code, "wrong_type");
    // The payload is kept whole, once; the rejected element is named by its position.
    assert_eq!(q[0].index, None);
    assert_eq!(q[0].rejections.len(), 1);
    assert_eq!(q[0].rejections[0].index, 1);
    assert_eq!(q[0].rejections[0].reason_code, "wrong_type");
    assert!(String::from_utf8(q[0].raw()).unwrap().contains("\"hot\""));
}

#[tokio::test]
async fn a_hostile_batch_is_one_quarantine_record_whatever_its_shape() {
    let rig = rig();
    let base = fixture("iot-rule-event.json");
    let good = String::from_utf8(STANDARD.decode(&base.payload).unwrap()).unwrap();
    // 120 KB of [1,1,1,…] (within the payload limit): over the element cap, one message.
    let ones = format!("[{}1]", "1,".repeat(60_000));
    // Within the cap, most elements bad: still one record, each element counted.
    let mixed = format!("[{good},{}2]", "2,".repeat(900));
    let mut reports = Vec::new();
    for payload in [&ones, &mixed] {
        let mut event = base.clone();
        event.payload = STANDARD.encode(payload);
        reports.push(rig.ingest.handle_event(&event).await.unwrap());
    }
    assert_eq!(
        (reports[0].messages, reports[0].quarantined),
        (1, 1),
        "{:?}",
        reports[0]
    );
    assert_eq!(
        (
            reports[1].messages,
            reports[1].accepted,
            reports[1].quarantined
        ),
        (902, 1, 901)
    );
    let mut q = quarantined(&rig.store).await;
    q.sort_by_key(|r| r.rejections.len());
    assert_eq!(q.len(), 2, "one record per payload");
    assert_eq!(q[0].reason_code, "batch_too_large");
    assert_eq!(q[0].raw(), ones.as_bytes());
    assert_eq!(q[1].rejections.len(), 901);
    assert_eq!(q[1].messages(), 901);
    assert_eq!(q[1].raw(), mixed.as_bytes());
}

#[tokio::test]
async fn every_hostile_payload_is_quarantined_with_its_reason_and_bytes() {
    let rig = rig();
    let base = fixture("iot-rule-event.json");
    let good = String::from_utf8(STANDARD.decode(&base.payload).unwrap()).unwrap();
    let hostile: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            b"{not json".to_vec(),
            "dt/factory/sensor-000042/telemetry",
            "malformed_json",
        ),
        (
            vec![0xc3, 0x28],
            "dt/factory/sensor-000042/telemetry",
            "invalid_utf8",
        ),
        (
            good.replace("\"seq\":12345,", "").into_bytes(),
            "dt/factory/sensor-000042/telemetry",
            "missing_field",
        ),
        (
            good.clone().into_bytes(),
            "dt/factory/sensor-000099/telemetry",
            "topic_device_mismatch",
        ),
        (good.clone().into_bytes(), "devices/x", "bad_topic"),
        (
            vec![b'['; 200 * 1024],
            "dt/factory/sensor-000042/telemetry",
            "oversize_payload",
        ),
    ];
    for (payload, topic, _) in &hostile {
        let ev = IotRuleEvent {
            payload: STANDARD.encode(payload),
            topic: topic.to_string(),
            ..base.clone()
        };
        let r = rig.ingest.handle_event(&ev).await.unwrap();
        assert_eq!(
            (r.messages, r.accepted, r.quarantined),
            (1, 0, 1),
            "{topic}"
        );
    }
    let not_base64 = IotRuleEvent {
        payload: "%%%".into(),
        ..base.clone()
    };
    let r = rig.ingest.handle_event(&not_base64).await.unwrap();
    assert_eq!(r.quarantined, 1);

    let q = quarantined(&rig.store).await;
    let mut codes: Vec<&str> = q.iter().map(|r| r.reason_code.as_str()).collect();
    codes.sort();
    let mut expected: Vec<&str> = hostile.iter().map(|h| h.2).collect();
    expected.push("bad_event_encoding");
    expected.sort();
    assert_eq!(codes, expected);
    for r in &q {
        let original = hostile.iter().find(|h| r.reason_code == h.2);
        if let Some((payload, _, _)) = original {
            assert_eq!(&r.raw(), payload, "{} kept its exact bytes", r.reason_code);
        }
        assert!(!r.reason.is_empty());
    }
}

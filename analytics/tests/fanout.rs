//! The rollup's AWS side on moto, through the real SDK clients: the planner fans units out
//! on SQS, worker invocations drain the queue, S3 notifications become pending markers.
//! These tests need the moto server of the test set-up (`IOTPIPE_TEST_MOTO`): they fail
//! without it.

// Helpers outside `#[test]` functions (tests/common) panic on purpose too.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use analytics::RollupConfig;
use analytics::fanout::{
    FanoutReport, PlannerReport, SqsUnitQueue, UnitMessage, handle_units, run_fanout,
};
use analytics::notify::handle_notifications;
use analytics::units::Unit;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use common::*;
use object_store::{ObjectStore, ObjectStoreExt};
use telemetry::Partition;
use test_support::moto;

fn cfg() -> RollupConfig {
    RollupConfig {
        buckets: 4,
        ..RollupConfig::default()
    }
}

/// A fresh bucket on moto as an object store.
fn s3_store() -> Arc<dyn ObjectStore> {
    let bucket = moto::unique("fanout").to_lowercase();
    moto::create_bucket(&bucket);
    telemetry::store::open_store_with(&format!("s3://{bucket}"), moto::s3_env()).unwrap()
}

/// Two hours of readings from 12 devices, with a redelivered file, in both `stores`.
async fn seed(stores: &[&Arc<dyn ObjectStore>]) {
    let mut files: Vec<(String, Vec<telemetry::Reading>)> = Vec::new();
    for (h, hour) in [H15, H16].into_iter().enumerate() {
        let readings: Vec<_> = (0..12)
            .flat_map(|d| {
                (0..5).map(move |s| {
                    reading(
                        &format!("sensor-{d:03}"),
                        s,
                        hour + s * MINUTE + d * SECOND,
                        "temperature",
                        f64::from(d as u32) + s as f64 / 10.0,
                    )
                })
            })
            .collect();
        files.push((format!("a-{h}.parquet"), readings.clone()));
        // A Firehose redelivery: the same readings in another object.
        files.push((format!("b-{h}.parquet"), readings[..20].to_vec()));
    }
    for store in stores {
        for (name, readings) in &files {
            put_file(store, name, readings).await;
        }
    }
}

/// Receives every message of the queue in batches of up to 10, as the event-source
/// mapping does, turned into Lambda SQS events.
async fn receive_all(client: &aws_sdk_sqs::Client, url: &str) -> Vec<SqsEvent> {
    let mut events = Vec::new();
    loop {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return events;
        }
        let mut event = SqsEvent::default();
        for m in messages {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id;
            record.receipt_handle = m.receipt_handle;
            record.body = m.body;
            record.event_source = Some("aws:sqs".into());
            event.records.push(record);
        }
        events.push(event);
    }
}

/// Deletes the records of `event` not in its batch response's failures, as the
/// event-source mapping does after a partial-batch response.
async fn delete_succeeded(
    client: &aws_sdk_sqs::Client,
    url: &str,
    event: &SqsEvent,
    failed: &[String],
) {
    for r in &event.records {
        if !failed.contains(r.message_id.as_ref().unwrap()) {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(r.receipt_handle.clone().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_fanned_out_plan_drained_by_workers_equals_the_in_process_rollup() {
    let sdk = moto::sdk_config().await;
    let (url, _) = moto::create_sqs_queue(&sdk, &moto::unique("units")).await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    let queue = SqsUnitQueue {
        client: client.clone(),
        queue_url: url.clone(),
    };
    let store = s3_store();
    let reference = common::store();
    seed(&[&store, &reference]).await;
    let cfg = cfg();
    analytics::run_rollup(reference.clone(), &cfg)
        .await
        .unwrap();

    // Eight units (2 hours × 4 buckets), more than the threshold: fanned out.
    let report = run_fanout(store.clone(), &cfg, Some(&queue), 2, None)
        .await
        .unwrap();
    let PlannerReport::FannedOut(fanned) = report else {
        panic!("expected a fan-out, got {report:?}");
    };
    assert_eq!(fanned.units_planned, 8);
    assert_eq!(fanned.units_enqueued, 8);
    assert!(
        read_stats(&store, H16).await.is_empty(),
        "the planner wrote stats"
    );

    let events = receive_all(&client, &url).await;
    let received: usize = events.iter().map(|e| e.records.len()).sum();
    assert_eq!(received, 8);
    for event in events {
        let response = handle_units(event.clone(), &store, &cfg, "worker-test", None).await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        delete_succeeded(&client, &url, &event, &[]).await;
    }
    for hour in [H15, H16] {
        let (fanned_out, in_process) = (
            read_stats(&store, hour).await,
            read_stats(&reference, hour).await,
        );
        assert_eq!(in_process.len(), 12 * 5);
        assert_eq!(fanned_out, in_process);
    }

    // The next plan finds every unit done: it deletes the markers and records the
    // completed full scan, so the one after lists only markers.
    let next = run_fanout(store.clone(), &cfg, Some(&queue), 2, None)
        .await
        .unwrap();
    let PlannerReport::InProcess(next) = next else {
        panic!("nothing to fan out, got {next:?}");
    };
    assert_eq!(next.units_planned, 0);
    let markers = analytics::pending::list(&store, &cfg.pending_prefix)
        .await
        .unwrap();
    assert!(markers.is_empty(), "{markers:?}");
    // That plan also derived the hours' 1h/1d and fleet windows, as the in-process rollup
    // did, before deleting the markers.
    for window in analytics::Window::ALL {
        for group in [analytics::Group::Device, analytics::Group::Fleet] {
            let q = analytics::Query {
                window,
                group,
                ..analytics::Query::default()
            };
            let fanned_out = analytics::query(store.clone(), &q).await.unwrap();
            assert!(!fanned_out.is_empty(), "{window:?} {group}");
            let in_process = analytics::query(reference.clone(), &q).await.unwrap();
            assert_eq!(fanned_out, in_process, "{window:?} {group}");
        }
    }
    let last = run_fanout(store.clone(), &cfg, Some(&queue), 2, None)
        .await
        .unwrap();
    assert!(
        matches!(&last, PlannerReport::InProcess(r) if !r.full_scan && r.files_scanned == 0),
        "{last:?}"
    );
}

#[tokio::test]
async fn a_unit_that_fails_is_reported_and_the_others_succeed() {
    let sdk = moto::sdk_config().await;
    let (url, _) = moto::create_sqs_queue(&sdk, &moto::unique("units")).await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    let queue = SqsUnitQueue {
        client: client.clone(),
        queue_url: url.clone(),
    };
    let store = s3_store();
    seed(&[&store]).await;
    let cfg = cfg();
    let report = run_fanout(store.clone(), &cfg, Some(&queue), 0, None)
        .await
        .unwrap();
    assert!(matches!(
        report,
        PlannerReport::FannedOut(FanoutReport {
            units_enqueued: 8,
            ..
        })
    ));
    // Another worker holds one unit's lease; one message is not a unit at all.
    let held = Unit {
        partition: Partition::of_millis(H16),
        bucket: 2,
        buckets: 4,
    };
    let _lease =
        analytics::lease::acquire(&store, &held.lease_prefix(&cfg), "other", cfg.lease_ttl)
            .await
            .unwrap()
            .unwrap();
    client
        .send_message()
        .queue_url(&url)
        .message_body("{\"not\":\"a unit\"}")
        .send()
        .await
        .unwrap();

    let mut failed_bodies = Vec::new();
    let mut done = 0;
    for event in receive_all(&client, &url).await {
        let response = handle_units(event.clone(), &store, &cfg, "worker-test", None).await;
        let failed: Vec<String> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        for r in &event.records {
            if failed.contains(r.message_id.as_ref().unwrap()) {
                failed_bodies.push(r.body.clone().unwrap());
            } else {
                done += 1;
            }
        }
        delete_succeeded(&client, &url, &event, &failed).await;
    }
    assert_eq!(done, 7);
    failed_bodies.sort();
    let held_body = serde_json::to_string(&UnitMessage { unit: held.clone() }).unwrap();
    let mut expected_failures = vec![held_body, "{\"not\":\"a unit\"}".to_string()];
    expected_failures.sort();
    assert_eq!(failed_bodies, expected_failures);
    // The other units of the hour have their stats; the held one has none yet.
    let stats = read_stats(&store, H16).await;
    let devices: std::collections::BTreeSet<_> =
        stats.iter().map(|s| s.device_id.clone()).collect();
    let expected: std::collections::BTreeSet<_> = (0..12)
        .map(|d| format!("sensor-{d:03}"))
        .filter(|d| analytics::units::bucket_of(d, 4) != 2)
        .collect();
    assert_eq!(devices, expected);
}

#[tokio::test]
async fn s3_notifications_from_moto_become_pending_markers() {
    let sdk = moto::sdk_config().await;
    let (url, arn) = moto::create_sqs_queue(&sdk, &moto::unique("new-objects")).await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    let bucket = moto::unique("notify").to_lowercase();
    moto::create_bucket(&bucket);
    moto::notify_queue(&bucket, &arn, "telemetry/");
    let store =
        telemetry::store::open_store_with(&format!("s3://{bucket}"), moto::s3_env()).unwrap();
    // Written without a marker, as Firehose does on AWS.
    let scratch = common::store();
    let key = put_file(
        &scratch,
        "firehose-1.parquet",
        &[reading("d", 1, H16 + 1, "t", 1.0)],
    )
    .await;
    let bytes = scratch
        .get(&object_store::path::Path::from(key.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    store
        .put(&object_store::path::Path::from(key.as_str()), bytes.into())
        .await
        .unwrap();
    // Not telemetry: no notification (prefix filter).
    put_raw(&store, "stats/other.json", b"{}").await;

    let events = receive_all(&client, &url).await;
    let bodies: Vec<&str> = events
        .iter()
        .flat_map(|e| &e.records)
        .filter_map(|r| r.body.as_deref())
        .collect();
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("dt%3D") || b.contains("dt=")),
        "moto sent no notification of the telemetry object: {bodies:?}"
    );
    let cfg = RollupConfig::default();
    let bodies: Vec<String> = bodies.into_iter().map(String::from).collect();
    let mut marked = 0;
    for event in events {
        let (response, report) = handle_notifications(event, &store, &cfg).await;
        assert!(
            response.batch_item_failures.is_empty(),
            "{response:?} of {bodies:?}"
        );
        marked += report.marked;
    }
    assert_eq!(marked, 1);
    let markers = analytics::pending::list(&store, &cfg.pending_prefix)
        .await
        .unwrap();
    let keys: Vec<&str> = markers.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(keys, [key.as_str()]);
}

#[tokio::test]
async fn an_eventbridge_object_created_event_marks_its_object_and_junk_is_reported() {
    let store = common::store();
    let cfg = RollupConfig::default();
    let key = "telemetry/dt=2026-11-25/hour=16/firehose-2.parquet";
    let mut event = SqsEvent::default();
    for (id, body) in [
        (
            "m-1",
            include_str!("fixtures/s3-object-created-eventbridge.json").to_string(),
        ),
        ("m-2", "junk".to_string()),
    ] {
        let mut record = SqsMessage::default();
        record.message_id = Some(id.into());
        record.body = Some(body);
        event.records.push(record);
    }
    let (response, report) = handle_notifications(event, &store, &cfg).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(response.batch_item_failures[0].item_identifier, "m-2");
    assert_eq!(report.marked, 1);
    let markers = analytics::pending::list(&store, &cfg.pending_prefix)
        .await
        .unwrap();
    assert_eq!(markers[0].1, key);
}

#[tokio::test]
async fn the_s3_notification_fixture_marks_its_decoded_key() {
    let store = common::store();
    let cfg = RollupConfig::default();
    let mut record = SqsMessage::default();
    record.message_id = Some("m-1".into());
    record.body = Some(include_str!("fixtures/s3-object-created.json").into());
    let mut event = SqsEvent::default();
    event.records.push(record);
    let (response, report) = handle_notifications(event, &store, &cfg).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!((report.marked, report.ignored), (1, 1));
    let markers = analytics::pending::list(&store, &cfg.pending_prefix)
        .await
        .unwrap();
    assert_eq!(
        markers[0].1,
        "telemetry/dt=2026-11-25/hour=16/iotpipe-telemetry-1-2026-11-25-16-05-00-abc.parquet"
    );
}

#[tokio::test]
async fn the_planner_function_marks_notified_objects_and_rolls_a_small_plan_up_itself() {
    use analytics::dispatch::{PlannerDeps, planner};
    use lambda_runtime::{Context, LambdaEvent};
    // Written as Firehose does on AWS: no marker; the notification brings it.
    let store = common::store();
    let scratch = common::store();
    let key = put_file(
        &scratch,
        "fh-1.parquet",
        &[reading("d-1", 1, H16 + 1, "t", 1.0)],
    )
    .await;
    let bytes = scratch
        .get(&object_store::path::Path::from(key.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    store
        .put(&object_store::path::Path::from(key.as_str()), bytes.into())
        .await
        .unwrap();
    // Not the first run: only markers are trusted, so without the notification nothing
    // would be rolled up.
    let cfg = RollupConfig::default();
    common::put_raw(&store, &format!("{}/_initialized", cfg.state_prefix), b"").await;
    let notification = include_str!("fixtures/s3-object-created-eventbridge.json")
        .replace("telemetry/dt=2026-11-25/hour=16/firehose-2.parquet", &key);
    let mut event = SqsEvent::default();
    let mut record = SqsMessage::default();
    record.message_id = Some("m-1".into());
    record.body = Some(notification);
    event.records.push(record);
    let deps = PlannerDeps::<SqsUnitQueue> {
        store: store.clone(),
        cfg,
        queue: None,
        min_units: 8,
    };
    let response = planner(
        LambdaEvent::new(serde_json::to_value(&event).unwrap(), Context::default()),
        &deps,
    )
    .await
    .unwrap();
    assert_eq!(response["batchItemFailures"], serde_json::json!([]));
    let stats = read_stats(&store, H16).await;
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].device_id.as_str(), stats[0].count), ("d-1", 1));
}

//! The emulated Firehose delivery stream on an in-memory object store, with virtual time.

// Test helpers outside #[test] functions panic on bad fixtures by design.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::firehose::{KinesisFirehoseEvent, KinesisFirehoseResponse};
use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use local::firehose::{
    ErrorRecord, FirehoseConfig, FirehoseReport, Invoke, MAX_INVOKE_PAYLOAD_BYTES, error_code,
    local_invoke, run, run_with_progress,
};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use telemetry::Partition;
use telemetry::StreamRecord;
use telemetry::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use telemetry::parquet_writer::ParquetWriterConfig;
use telemetry::stream::{StreamEntry, shard_id};
use tokio::sync::mpsc;

/// 2025-11-25T13:45:00.123Z
const T0: i64 = 1_764_078_300_123;
const HOUR: i64 = 3_600_000;

fn record(device: &str, seq: u64, ts: i64, metrics: usize) -> StreamRecord {
    StreamRecord {
        device_id: device.into(),
        seq,
        ts,
        metrics: (0..metrics)
            .map(|m| (format!("metric_{m}"), seq as f64 + m as f64 / 10.0))
            .collect(),
        fw: Some("1.4.2".into()),
        received_at: ts + 50,
    }
}

fn entry_of(data: Vec<u8>, key: &str, n: u64) -> StreamEntry {
    StreamEntry {
        shard_id: shard_id((n % 2) as usize),
        sequence_number: format!("{:056}", 1_000 + n),
        partition_key: key.into(),
        data: Bytes::from(data),
        approximate_arrival_ms: T0 + 1_000 + n as i64,
    }
}

fn entry(device: &str, seq: u64, ts: i64, metrics: usize) -> StreamEntry {
    entry_of(record(device, seq, ts, metrics).to_json(), device, seq)
}

/// Small buffers and long intervals: only what a test asks for cuts a batch.
fn config() -> FirehoseConfig {
    FirehoseConfig {
        processor_buffer_bytes: 1024 * 1024,
        processor_buffer_interval: Duration::from_secs(60),
        parquet: ParquetWriterConfig::default(),
        destination_interval: Duration::from_secs(900),
        error_prefix: "errors/processing-failed".into(),
        delivery_stream_name: "test-stream".into(),
    }
}

/// `(records, encoded bytes)` of every event an invoke received.
type EventLog = Arc<Mutex<Vec<(usize, usize)>>>;

/// Wraps an invoke and records the size of every event.
fn recording(inner: Invoke) -> (Invoke, EventLog) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let invoke: Invoke = Arc::new(move |event: Arc<KinesisFirehoseEvent>| {
        let bytes = serde_json::to_vec(&*event).unwrap().len();
        seen.lock().unwrap().push((event.records.len(), bytes));
        inner(event)
    });
    (invoke, log)
}

/// An invoke that answers with `f(transform(event))`.
fn tampering(
    f: impl Fn(KinesisFirehoseResponse) -> KinesisFirehoseResponse + Send + Sync + 'static,
) -> Invoke {
    let f = Arc::new(f);
    Arc::new(move |event: Arc<KinesisFirehoseEvent>| {
        let f = f.clone();
        Box::pin(async move { Ok(f(transform::transform(&event))) })
            as BoxFuture<'static, Result<KinesisFirehoseResponse, String>>
    })
}

/// Feeds `entries` and closes the stream, returning the report.
async fn run_with(
    cfg: FirehoseConfig,
    entries: Vec<StreamEntry>,
    store: Arc<InMemory>,
    invoke: Invoke,
) -> FirehoseReport {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(run(cfg, rx, store, invoke));
    for e in entries {
        tx.send(e).await.unwrap();
    }
    drop(tx);
    task.await.unwrap().unwrap()
}

async fn keys(store: &InMemory, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

async fn parquet_rows(store: &InMemory, key: &str) -> usize {
    let data = store
        .get(&Path::from(key))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    ParquetRecordBatchReaderBuilder::try_new(data)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum()
}

async fn error_records(store: &InMemory) -> Vec<ErrorRecord> {
    let mut out = Vec::new();
    for key in keys(store, "errors/processing-failed").await {
        let data = store
            .get(&Path::from(key.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        for line in std::str::from_utf8(&data).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

fn assert_accounting(r: &FirehoseReport) {
    assert_eq!(
        r.records_in,
        r.ok + r.dropped + r.processing_failed,
        "{r:?}"
    );
    assert_eq!(
        r.files.iter().map(|f| f.rows as u64).sum::<u64>(),
        r.rows_written,
        "{r:?}"
    );
}

#[tokio::test]
async fn buffering_by_size_cuts_the_stream_into_invocations() {
    // Equal-sized records (same digit counts), ten of them per buffer.
    let entries: Vec<StreamEntry> = (0..100)
        .map(|i| entry("sensor-000042", 1_000 + i, T0, 4))
        .collect();
    let size = entries[0].data.len();
    assert!(entries.iter().all(|e| e.data.len() == size));
    let cfg = FirehoseConfig {
        processor_buffer_bytes: 10 * size,
        ..config()
    };
    let (invoke, log) = recording(local_invoke());
    let store = Arc::new(InMemory::new());
    let report = run_with(cfg, entries, store, invoke).await;
    let batches: Vec<usize> = log.lock().unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(batches, vec![10; 10]);
    assert_eq!(report.invocations, 10);
    assert_eq!(report.ok, 100);
    assert_eq!(report.rows_written, 400);
    assert_accounting(&report);
}

#[tokio::test(start_paused = true)]
async fn the_buffer_interval_flushes_a_partial_buffer() {
    let cfg = FirehoseConfig {
        processor_buffer_interval: Duration::from_secs(60),
        ..config()
    };
    let (invoke, log) = recording(local_invoke());
    let store = Arc::new(InMemory::new());
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(run(cfg, rx, store, invoke));
    for i in 0..3 {
        tx.send(entry("sensor-000042", i, T0, 4)).await.unwrap();
    }
    // Virtual time: just short of the interval nothing happened, just past it the partial
    // buffer went to the function while the stream is still open.
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(log.lock().unwrap().is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        log.lock()
            .unwrap()
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>(),
        vec![3]
    );
    drop(tx);
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.invocations, 1);
    assert_eq!(report.ok, 3);
    assert_accounting(&report);
}

#[tokio::test(start_paused = true)]
async fn the_destination_interval_closes_parquet_files_while_the_stream_runs() {
    let cfg = FirehoseConfig {
        processor_buffer_interval: Duration::from_secs(1),
        destination_interval: Duration::from_secs(5),
        ..config()
    };
    let store = Arc::new(InMemory::new());
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(run(cfg, rx, store.clone(), local_invoke()));
    for i in 0..5 {
        tx.send(entry("sensor-000042", i, T0, 4)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        keys(&store, "telemetry").await.is_empty(),
        "a file is visible before the destination interval closed it"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let landed = keys(&store, "telemetry").await;
    assert_eq!(landed.len(), 1, "{landed:?}");
    assert_eq!(parquet_rows(&store, &landed[0]).await, 20);
    drop(tx);
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.files.len(), 1);
    assert_accounting(&report);
}

#[tokio::test]
async fn parquet_files_land_under_their_event_hour_partitions_with_every_row() {
    let entries = vec![
        entry("sensor-000001", 1, T0, 4),
        entry("sensor-000002", 1, T0 + HOUR, 3),
        entry("sensor-000001", 2, T0 + 10, 4),
        entry("sensor-000003", 1, T0 + 11 * HOUR, 2),
        entry("sensor-000002", 2, T0 + HOUR + 5, 3),
    ];
    let store = Arc::new(InMemory::new());
    let report = run_with(config(), entries, store.clone(), local_invoke()).await;
    let mut rows: BTreeMap<String, usize> = BTreeMap::new();
    for key in keys(&store, "telemetry").await {
        assert!(key.ends_with(".parquet"), "{key}");
        let partition = Partition::find_in(&key).unwrap().path();
        *rows.entry(partition).or_default() += parquet_rows(&store, &key).await;
    }
    assert_eq!(
        rows,
        BTreeMap::from([
            ("dt=2025-11-25/hour=13".to_string(), 8),
            ("dt=2025-11-25/hour=14".to_string(), 6),
            ("dt=2025-11-26/hour=00".to_string(), 2),
        ])
    );
    let mut reported: Vec<String> = report.files.iter().map(|f| f.path.clone()).collect();
    reported.sort();
    assert_eq!(reported, keys(&store, "telemetry").await);
    assert_eq!(report.rows_written, 16);
    assert_accounting(&report);
}

#[tokio::test]
async fn processing_failed_records_land_under_the_error_prefix_with_their_raw_data() {
    let bad_device = record("bad id!", 1, T0, 2).to_json();
    let garbage = b"\xff\x00 not a record".to_vec();
    let entries = vec![
        entry("sensor-000001", 1, T0, 4),
        entry_of(bad_device.clone(), "bad id!", 7),
        entry_of(garbage.clone(), "sensor-000009", 8),
        entry("sensor-000001", 2, T0, 4),
    ];
    let store = Arc::new(InMemory::new());
    let report = run_with(config(), entries, store.clone(), local_invoke()).await;
    assert_eq!((report.ok, report.processing_failed), (2, 2));
    assert_eq!(report.error_objects, 1);

    let objects = keys(&store, "errors/processing-failed").await;
    assert_eq!(objects.len(), 1);
    // errors/processing-failed/YYYY/MM/DD/HH/test-stream-1-YYYY-MM-DD-HH-MM-SS-…
    let parts: Vec<&str> = objects[0].split('/').collect();
    assert_eq!(parts.len(), 7, "{}", objects[0]);
    assert!(parts[6].starts_with("test-stream-1-"), "{}", objects[0]);

    let errors = error_records(&store).await;
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].raw(), bad_device);
    assert_eq!(errors[1].raw(), garbage);
    for (e, n) in errors.iter().zip([7, 8]) {
        assert_eq!(e.error_code, error_code::PROCESSING_FAILED_STATUS);
        assert_eq!(e.attempts_made, 1);
        assert_eq!(e.arrival_timestamp, T0 + 1_000 + n);
        assert!(e.attempt_ending_timestamp > 0);
        assert!(
            e.lambda_arn
                .as_deref()
                .unwrap()
                .starts_with("arn:aws:lambda:")
        );
    }
    // The field names are Firehose's.
    let line: serde_json::Value = serde_json::to_value(&errors[0]).unwrap();
    for field in [
        "attemptsMade",
        "arrivalTimestamp",
        "errorCode",
        "errorMessage",
        "attemptEndingTimestamp",
        "rawData",
        "lambdaArn",
    ] {
        assert!(line.get(field).is_some(), "{field} missing from {line}");
    }
    assert_accounting(&report);
}

#[tokio::test]
async fn an_invoke_that_answers_a_record_twice_or_omits_one_fails_only_those_records() {
    let invoke = tampering(|mut response| {
        let first = response.records[0].clone();
        response.records.push(first);
        let last = response.records.len() - 2;
        response.records.remove(last);
        let mut stranger = response.records[1].clone();
        stranger.record_id = Some("not-in-the-event".into());
        response.records.push(stranger);
        response
    });
    let entries: Vec<StreamEntry> = (0..5).map(|i| entry("sensor-000001", i, T0, 4)).collect();
    let last_raw = entries[4].data.to_vec();
    let first_raw = entries[0].data.to_vec();
    let store = Arc::new(InMemory::new());
    let report = run_with(config(), entries, store.clone(), invoke).await;
    assert_eq!(report.ok, 3);
    assert_eq!(report.processing_failed, 2);
    assert_eq!(report.rows_written, 12);
    let errors = error_records(&store).await;
    let codes: Vec<(&str, Vec<u8>)> = errors
        .iter()
        .map(|e| (e.error_code.as_str(), e.raw()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (error_code::DUPLICATED_RECORD_ID, first_raw),
            (error_code::MISSING_RECORD_ID, last_raw),
        ]
    );
    assert_accounting(&report);
}

#[tokio::test]
async fn answers_in_another_order_than_the_events_are_matched_by_record_id() {
    // Rotated, so that no answer is at its record's position (the check's fast path).
    // The first record's answer says it failed: its error record must carry its data.
    let invoke = tampering(|mut response| {
        response.records[0].result = Some("ProcessingFailed".into());
        response.records.rotate_left(2);
        response
    });
    let entries: Vec<StreamEntry> = (0..5).map(|i| entry("sensor-000001", i, T0, 4)).collect();
    let first_raw = entries[0].data.to_vec();
    let store = Arc::new(InMemory::new());
    let report = run_with(config(), entries, store.clone(), invoke).await;
    assert_eq!((report.ok, report.processing_failed), (4, 1));
    assert_eq!(report.rows_written, 16);
    let errors = error_records(&store).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].raw(), first_raw);
    assert_accounting(&report);
}

#[tokio::test]
async fn an_invocation_that_keeps_failing_is_retried_then_written_as_function_errors() {
    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    let invoke: Invoke = Arc::new(move |_event| {
        *counted.lock().unwrap() += 1;
        Box::pin(async { Err("Runtime.ExitError: boom".to_string()) })
            as BoxFuture<'static, Result<KinesisFirehoseResponse, String>>
    });
    let entries: Vec<StreamEntry> = (0..3).map(|i| entry("sensor-000001", i, T0, 4)).collect();
    let store = Arc::new(InMemory::new());
    let report = run_with(config(), entries, store.clone(), invoke).await;
    assert_eq!(*calls.lock().unwrap(), 4, "one attempt and three retries");
    assert_eq!(report.invocations, 4);
    assert_eq!(report.processing_failed, 3);
    let errors = error_records(&store).await;
    assert_eq!(errors.len(), 3);
    for e in &errors {
        assert_eq!(e.error_code, error_code::FUNCTION_ERROR);
        assert_eq!(e.attempts_made, 4);
        assert!(e.error_message.contains("boom"), "{}", e.error_message);
    }
    assert_accounting(&report);
}

#[tokio::test]
async fn an_invocation_that_fails_once_is_retried_and_delivered() {
    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    let invoke: Invoke = Arc::new(move |event: Arc<KinesisFirehoseEvent>| {
        let mut n = counted.lock().unwrap();
        *n += 1;
        let fail = *n == 1;
        Box::pin(async move {
            if fail {
                Err("Lambda.ServiceException".to_string())
            } else {
                Ok(transform::transform(&event))
            }
        }) as BoxFuture<'static, Result<KinesisFirehoseResponse, String>>
    });
    let entries: Vec<StreamEntry> = (0..3).map(|i| entry("sensor-000001", i, T0, 4)).collect();
    let store = Arc::new(InMemory::new());
    let report = run_with(config(), entries, store.clone(), invoke).await;
    assert_eq!(report.invocations, 2);
    assert_eq!((report.ok, report.processing_failed), (3, 0));
    assert!(error_records(&store).await.is_empty());
    assert_accounting(&report);
}

#[tokio::test]
async fn readings_that_do_not_convert_and_ok_records_without_partition_keys_become_error_records() {
    let invoke = tampering(|mut response| {
        // Record 0: one document is not a reading.
        let mut data = b"{\"not\":\"a reading\"}\n".to_vec();
        data.extend_from_slice(&response.records[0].data.0);
        response.records[0].data.0 = data;
        // Record 1: Ok, but its partition keys were lost.
        response.records[1].metadata.partition_keys.clear();
        response
    });
    let entries: Vec<StreamEntry> = (0..3).map(|i| entry("sensor-000001", i, T0, 4)).collect();
    let store = Arc::new(InMemory::new());
    let report = run_with(config(), entries, store.clone(), invoke).await;
    assert_eq!(report.ok, 2);
    assert_eq!(report.processing_failed, 1);
    assert_eq!(report.conversion_failures, 1);
    assert_eq!(
        report.rows_written, 8,
        "two Ok records of four readings each"
    );
    let errors = error_records(&store).await;
    let codes: Vec<&str> = errors.iter().map(|e| e.error_code.as_str()).collect();
    assert_eq!(
        codes,
        vec![
            error_code::MALFORMED_DATA,
            error_code::MISSING_PARTITION_KEYS
        ]
    );
    assert_eq!(errors[0].raw(), b"{\"not\":\"a reading\"}".to_vec());
    assert_eq!(errors[0].lambda_arn, None);
    assert_accounting(&report);
}

#[tokio::test]
async fn an_event_never_exceeds_the_lambda_request_limit() {
    // Twenty 900 KiB records (a Kinesis record holds at most 1 MiB) with a buffer hint
    // far above the limit: the event limit cuts the batches.
    let drop_all = tampering(|mut response| {
        for r in &mut response.records {
            r.result = Some("Dropped".into());
            r.data.0.clear();
        }
        response
    });
    let (invoke, log) = recording(drop_all);
    let entries: Vec<StreamEntry> = (0..20)
        .map(|i| entry_of(vec![b'x'; 900 * 1024], "big", i))
        .collect();
    let cfg = FirehoseConfig {
        processor_buffer_bytes: 64 * 1024 * 1024,
        ..config()
    };
    let report = run_with(cfg, entries, Arc::new(InMemory::new()), invoke).await;
    let log = log.lock().unwrap().clone();
    assert!(log.len() >= 3, "{log:?}");
    assert!(
        log.iter()
            .all(|(_, bytes)| *bytes <= MAX_INVOKE_PAYLOAD_BYTES),
        "{log:?}"
    );
    // The budget is used: each event but the last would not have taken one more record.
    let one = 900 * 1024 * 4 / 3;
    assert!(
        log[..log.len() - 1]
            .iter()
            .all(|(_, bytes)| bytes + one > MAX_INVOKE_PAYLOAD_BYTES)
    );
    assert_eq!(log.iter().map(|(n, _)| n).sum::<usize>(), 20);
    assert_eq!(report.dropped, 20);
    assert_accounting(&report);
}

#[tokio::test]
async fn accounting_holds_for_a_mixed_stream_of_good_duplicate_and_bad_records() {
    let mut entries = Vec::new();
    for i in 0..40u64 {
        entries.push(entry("sensor-000001", i, T0 + i as i64 * 60_000, 3));
        if i % 5 == 0 {
            // A redelivery within the same buffer.
            entries.push(entry("sensor-000001", i, T0 + i as i64 * 60_000, 3));
        }
        if i % 7 == 0 {
            entries.push(entry_of(b"{}".to_vec(), "junk", 1_000 + i));
        }
    }
    let total = entries.len() as u64;
    let size = entries[0].data.len();
    let cfg = FirehoseConfig {
        processor_buffer_bytes: 7 * size,
        ..config()
    };
    let store = Arc::new(InMemory::new());
    let report = run_with(cfg, entries, store.clone(), local_invoke()).await;
    assert_eq!(report.records_in, total);
    // Eight redeliveries: dropped when they share an invocation with the original, else
    // delivered (the analytics de-duplicate those).
    assert_eq!(report.ok + report.dropped, 48);
    assert!(report.dropped >= 1, "{report:?}");
    assert_eq!(report.processing_failed, 6);
    assert_eq!(report.rows_written, 3 * report.ok);
    assert_eq!(error_records(&store).await.len(), 6);
    assert_accounting(&report);
}

#[tokio::test(start_paused = true)]
async fn durable_positions_are_reported_only_once_the_parquet_objects_are_complete() {
    let store = Arc::new(InMemory::new());
    let cfg = FirehoseConfig {
        // Every record is invoked at once; only the destination interval closes files.
        processor_buffer_bytes: 1,
        ..config()
    };
    let (tx, rx) = mpsc::channel(16);
    let (ptx, mut prx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run_with_progress(
        cfg,
        rx,
        store.clone(),
        local_invoke(),
        Some(ptx),
    ));
    let entries: Vec<StreamEntry> = (0..4).map(|n| entry("sensor-1", n, T0, 2)).collect();
    for e in entries.clone() {
        tx.send(e).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        keys(&store, "telemetry").await.is_empty(),
        "the rows are still in an open file"
    );
    assert!(
        prx.try_recv().is_err(),
        "nothing is durable while the Parquet file is open"
    );

    // The destination interval closes the file: now every record handled is durable.
    tokio::time::sleep(Duration::from_secs(900)).await;
    assert_eq!(keys(&store, "telemetry").await.len(), 1);
    let durable = prx.try_recv().expect("positions after the flush");
    let expected: BTreeMap<String, String> = entries
        .iter()
        .map(|e| (e.shard_id.clone(), e.sequence_number.clone()))
        .collect();
    assert_eq!(durable, expected, "the last record of each shard");

    drop(tx);
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.rows_written, 8);
    assert!(
        prx.recv().await.is_none(),
        "no further advance, and the channel closes with the run"
    );
}

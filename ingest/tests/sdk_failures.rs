//! The AWS sinks against scripted SDK responses (`aws-smithy-mocks`): what real servers
//! never produce on demand — partial failures, throttling storms, timeouts, fatal errors —
//! driven through [`ingest::sink::deliver`] on paused time, with clients configured
//! exactly as the Lambda configures them (`kinesis::configure`, `firehose::configure`).
//!
//! The invariant every test checks: each record is stored exactly once or handed back as
//! undelivered (to be quarantined) — never lost, and never sent again once stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_firehose::operation::put_record_batch::{PutRecordBatchInput, PutRecordBatchOutput};
use aws_sdk_firehose::types::PutRecordBatchResponseEntry;
use aws_sdk_kinesis::operation::put_records::{PutRecordsInput, PutRecordsOutput};
use aws_sdk_kinesis::types::PutRecordsResultEntry;
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use bytes::Bytes;
use futures::TryStreamExt;
use ingest::firehose::{self, FirehoseSink};
use ingest::kinesis::{self, KinesisSink};
use ingest::sink::{Delivery, RetryPolicy, SinkRecord, deliver};
use ingest::{Ingest, IngestConfig, RawPayload};
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::memory::InMemory;
use telemetry::QuarantineReason;
use telemetry::quarantine::QuarantineRecord;

/// What one scripted call answers, entry by entry: `None` stored, `Some(code)` failed.
type EntryScript = Vec<Option<&'static str>>;

/// Records for three devices; the data names the record, so that what was sent can be
/// compared with what went in.
fn records(n: usize) -> Vec<SinkRecord> {
    (0..n)
        .map(|i| SinkRecord {
            partition_key: format!("sensor-{:06}", i % 3),
            data: Bytes::from(format!(r#"{{"record":{i}}}"#)),
        })
        .collect()
}

/// The data of each record of each call, in call order.
type CallLog = Arc<Mutex<Vec<Vec<Bytes>>>>;

fn kinesis_output(script: &EntryScript) -> PutRecordsOutput {
    let mut out = PutRecordsOutput::builder()
        .failed_record_count(script.iter().filter(|e| e.is_some()).count() as i32);
    for (i, entry) in script.iter().enumerate() {
        out = out.records(match entry {
            None => PutRecordsResultEntry::builder()
                .sequence_number(format!("4962{i:040}"))
                .shard_id("shardId-000000000000")
                .build(),
            Some(code) => PutRecordsResultEntry::builder()
                .error_code(*code)
                .error_message(format!("scripted {code}"))
                .build(),
        });
    }
    out.build().unwrap()
}

fn firehose_output(script: &EntryScript) -> PutRecordBatchOutput {
    let mut out = PutRecordBatchOutput::builder()
        .failed_put_count(script.iter().filter(|e| e.is_some()).count() as i32);
    for (i, entry) in script.iter().enumerate() {
        out = out.request_responses(match entry {
            None => PutRecordBatchResponseEntry::builder()
                .record_id(format!("record-{i}"))
                .build(),
            Some(code) => PutRecordBatchResponseEntry::builder()
                .error_code(*code)
                .error_message(format!("scripted {code}"))
                .build(),
        });
    }
    out.build().unwrap()
}

/// A JSON-protocol error body, as Kinesis and Firehose send it.
fn error_body(code: &str) -> Option<String> {
    Some(format!(
        r#"{{"__type":"{code}","message":"scripted {code}"}}"#
    ))
}

/// Records each PutRecords request's data into `log`, and matches every request.
fn kinesis_recorder(log: &CallLog) -> impl Fn(&PutRecordsInput) -> bool + Send + Sync + 'static {
    let log = log.clone();
    move |req| {
        log.lock().unwrap().push(
            req.records()
                .iter()
                .map(|r| Bytes::copy_from_slice(r.data().as_ref()))
                .collect(),
        );
        true
    }
}

fn firehose_recorder(
    log: &CallLog,
) -> impl Fn(&PutRecordBatchInput) -> bool + Send + Sync + 'static {
    let log = log.clone();
    move |req| {
        log.lock().unwrap().push(
            req.records()
                .iter()
                .map(|r| Bytes::copy_from_slice(r.data().as_ref()))
                .collect(),
        );
        true
    }
}

fn kinesis_sink(rule: &Rule) -> KinesisSink {
    let client = mock_client!(
        aws_sdk_kinesis,
        RuleMode::Sequential,
        [rule],
        kinesis::configure
    );
    KinesisSink::new(client, "telemetry")
}

fn firehose_sink(rule: &Rule) -> FirehoseSink {
    let client = mock_client!(
        aws_sdk_firehose,
        RuleMode::Sequential,
        [rule],
        firehose::configure
    );
    FirehoseSink::new(client, "telemetry")
}

/// Replays the call log against the scripts: how often each record's data was stored.
/// `None` scripts are whole-call failures (nothing stored).
fn stored_counts(log: &[Vec<Bytes>], scripts: &[Option<EntryScript>]) -> HashMap<Bytes, usize> {
    let mut stored = HashMap::new();
    for (call, script) in log.iter().zip(scripts) {
        let Some(script) = script else { continue };
        assert_eq!(call.len(), script.len(), "the script fits the call");
        for (data, outcome) in call.iter().zip(script) {
            if outcome.is_none() {
                *stored.entry(data.clone()).or_insert(0) += 1;
            }
        }
    }
    stored
}

/// Every input record is stored exactly once or handed back, and nothing else happened.
fn assert_exactly_once_or_undelivered(
    input: &[SinkRecord],
    d: &Delivery,
    stored: &HashMap<Bytes, usize>,
) {
    let undelivered: Vec<&Bytes> = d.undelivered.iter().map(|u| &u.record.data).collect();
    for r in input {
        let times = stored.get(&r.data).copied().unwrap_or(0);
        let handed_back = undelivered.iter().filter(|u| ***u == r.data).count();
        assert_eq!(
            times + handed_back,
            1,
            "record {:?}: stored {times} time(s), handed back {handed_back} time(s)",
            r.data
        );
    }
    assert_eq!(d.delivered + d.undelivered.len(), input.len());
    assert_eq!(d.delivered, stored.values().sum::<usize>());
}

#[tokio::test(start_paused = true)]
async fn kinesis_partial_failures_retry_only_the_failed_entries_and_lose_nothing() {
    let input = records(10);
    let scripts: Vec<Option<EntryScript>> = vec![
        // FailedRecordCount = 3 in an HTTP 200 answer.
        Some(vec![
            None,
            None,
            Some("ProvisionedThroughputExceededException"),
            None,
            None,
            Some("InternalFailure"),
            None,
            Some("ServiceUnavailableException"),
            None,
            None,
        ]),
        // The retry of records 2, 5, 7: record 5 is throttled again.
        Some(vec![
            None,
            Some("ProvisionedThroughputExceededException"),
            None,
        ]),
        Some(vec![None]),
    ];
    let log = CallLog::default();
    let rule = mock!(aws_sdk_kinesis::Client::put_records)
        .match_requests(kinesis_recorder(&log))
        .sequence()
        .output({
            let s = scripts[0].clone().unwrap();
            move || kinesis_output(&s)
        })
        .output({
            let s = scripts[1].clone().unwrap();
            move || kinesis_output(&s)
        })
        .output({
            let s = scripts[2].clone().unwrap();
            move || kinesis_output(&s)
        })
        .build();
    let sink = kinesis_sink(&rule);

    let d = deliver(&sink, input.clone(), &RetryPolicy::default()).await;

    assert_eq!((d.delivered, d.undelivered.len()), (10, 0));
    assert_eq!((d.calls, d.retried_entries), (3, 4));
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(
        log[1],
        [&input[2].data, &input[5].data, &input[7].data].map(Clone::clone),
        "the retry holds exactly the failed entries, in their original order"
    );
    assert_eq!(log[2], [input[5].data.clone()]);
    assert_exactly_once_or_undelivered(&input, &d, &stored_counts(&log, &scripts));
}

#[tokio::test(start_paused = true)]
async fn firehose_partial_failures_retry_only_retriable_entries_and_hand_back_the_rest() {
    let input = records(6);
    let scripts: Vec<Option<EntryScript>> = vec![
        // Whole call: Firehose is briefly unavailable.
        None,
        // FailedPutCount = 3: two retriable, one that no retry will fix.
        Some(vec![
            Some("ServiceUnavailableException"),
            None,
            Some("InvalidArgumentException"),
            None,
            Some("InternalFailure"),
            None,
        ]),
        Some(vec![None, None]),
    ];
    let log = CallLog::default();
    let rule = mock!(aws_sdk_firehose::Client::put_record_batch)
        .match_requests(firehose_recorder(&log))
        .sequence()
        .http_status(400, error_body("ServiceUnavailableException"))
        .output({
            let s = scripts[1].clone().unwrap();
            move || firehose_output(&s)
        })
        .output({
            let s = scripts[2].clone().unwrap();
            move || firehose_output(&s)
        })
        .build();
    let sink = firehose_sink(&rule);

    let d = deliver(&sink, input.clone(), &RetryPolicy::default()).await;

    assert_eq!((d.delivered, d.calls), (5, 3));
    assert_eq!(d.undelivered.len(), 1);
    assert_eq!(d.undelivered[0].record, input[2]);
    assert!(
        d.undelivered[0].reason.contains("InvalidArgumentException"),
        "{}",
        d.undelivered[0].reason
    );
    let log = log.lock().unwrap();
    assert_eq!(log[0], log[1], "a failed call is retried whole");
    assert_eq!(log[2], [input[0].data.clone(), input[4].data.clone()]);
    assert_exactly_once_or_undelivered(&input, &d, &stored_counts(&log, &scripts));
}

#[tokio::test(start_paused = true)]
async fn a_throttling_storm_is_ridden_out_with_backoff_and_every_record_is_stored_once() {
    let input = records(40);
    let storm = [
        (400, error_body("ThrottlingException")),
        (400, error_body("ProvisionedThroughputExceededException")),
        (400, error_body("LimitExceededException")),
        (503, None),
        (500, error_body("InternalFailure")),
        (400, error_body("KMSThrottlingException")),
    ];
    let log = CallLog::default();
    let mut seq = mock!(aws_sdk_kinesis::Client::put_records)
        .match_requests(kinesis_recorder(&log))
        .sequence();
    for (status, body) in storm.iter().cloned() {
        seq = seq.http_status(status, body);
    }
    let ok = vec![None; 40];
    let rule = seq
        .output({
            let ok = ok.clone();
            move || kinesis_output(&ok)
        })
        .build();
    let sink = kinesis_sink(&rule);

    let started = tokio::time::Instant::now();
    let d = deliver(&sink, input.clone(), &RetryPolicy::default()).await;

    assert_eq!((d.delivered, d.undelivered.len()), (40, 0));
    assert_eq!(
        d.calls, 7,
        "six throttled calls, then the one that went through"
    );
    assert!(
        started.elapsed() < RetryPolicy::default().deadline,
        "backoff stays inside the deadline: {:?}",
        started.elapsed()
    );
    let log = log.lock().unwrap();
    assert!(log.iter().all(|call| call.len() == 40));
    let mut scripts: Vec<Option<EntryScript>> = vec![None; storm.len()];
    scripts.push(Some(ok));
    assert_exactly_once_or_undelivered(&input, &d, &stored_counts(&log, &scripts));
}

#[tokio::test(start_paused = true)]
async fn a_storm_that_outlasts_the_retries_hands_every_record_back() {
    let input = records(5);
    let rule = mock!(aws_sdk_kinesis::Client::put_records)
        .sequence()
        .http_status(400, error_body("ThrottlingException"))
        .repeatedly()
        .build();
    let sink = kinesis_sink(&rule);
    let policy = RetryPolicy {
        max_attempts: 4,
        ..RetryPolicy::default()
    };

    let d = deliver(&sink, input.clone(), &policy).await;

    assert_eq!((d.delivered, d.calls), (0, 4));
    let back: Vec<&SinkRecord> = d.undelivered.iter().map(|u| &u.record).collect();
    assert_eq!(back, input.iter().collect::<Vec<_>>());
    assert!(
        d.undelivered
            .iter()
            .all(|u| u.reason.contains("after 4 attempt(s)") && u.reason.contains("Throttling")),
        "{}",
        d.undelivered[0].reason
    );
}

#[tokio::test(start_paused = true)]
async fn fatal_errors_are_not_retried_and_every_record_is_handed_back() {
    for (status, code) in [
        (400, "ResourceNotFoundException"),
        (400, "AccessDeniedException"),
        (400, "ValidationException"),
        (400, "InvalidArgumentException"),
    ] {
        let input = records(3);
        let rule = mock!(aws_sdk_kinesis::Client::put_records)
            .sequence()
            .http_status(status, error_body(code))
            .build();
        let sink = kinesis_sink(&rule);

        let d = deliver(&sink, input.clone(), &RetryPolicy::default()).await;

        assert_eq!((d.delivered, d.calls), (0, 1), "{code}: one call, no retry");
        assert_eq!(d.undelivered.len(), 3, "{code}");
        assert!(
            d.undelivered[0].reason.contains(code),
            "{code}: {}",
            d.undelivered[0].reason
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_that_never_answers_times_out_and_is_retried_until_handed_back() {
    let never = aws_smithy_http_client::test_util::NeverClient::new();
    let client = aws_sdk_kinesis::Client::from_conf(
        kinesis::configure(
            aws_sdk_kinesis::Config::builder()
                .with_test_defaults_v2()
                .http_client(never.clone()),
        )
        .build(),
    );
    let sink = KinesisSink::new(client, "telemetry");
    let policy = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };

    let started = tokio::time::Instant::now();
    let d = deliver(&sink, records(2), &policy).await;

    assert_eq!((d.delivered, d.undelivered.len(), d.calls), (0, 2, 3));
    assert_eq!(never.num_calls(), 3);
    assert!(
        d.undelivered[0].reason.to_lowercase().contains("timeout"),
        "{}",
        d.undelivered[0].reason
    );
    // Three attempts of ATTEMPT_TIMEOUT each, plus at most two capped backoffs.
    assert!(started.elapsed() <= 3 * ingest::aws::ATTEMPT_TIMEOUT + 2 * policy.max_delay);
}

/// Four valid messages of one device and one payload the contract rejects.
fn payloads_with_one_rejection() -> Vec<RawPayload> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut payloads: Vec<RawPayload> = (0..4)
        .map(|seq| RawPayload {
            payload: format!(
                r#"{{"device_id":"sensor-000001","seq":{seq},"ts":{now},"metrics":{{"temperature":21.5}}}}"#
            )
            .into_bytes(),
            topic: "dt/fleet/sensor-000001/telemetry".into(),
            received_at: now,
        })
        .collect();
    payloads.push(RawPayload {
        payload: b"not json".to_vec(),
        topic: "dt/fleet/sensor-000001/telemetry".into(),
        received_at: now,
    });
    payloads
}

async fn quarantine_lines(store: &InMemory) -> Vec<QuarantineRecord> {
    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut quarantined: Vec<QuarantineRecord> = Vec::new();
    for o in objects {
        let body = store.get(&o.location).await.unwrap().bytes().await.unwrap();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            quarantined.push(serde_json::from_slice(line).unwrap());
        }
    }
    quarantined
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_refuses_for_its_own_reasons_fails_the_invocation_and_quarantines_nothing() {
    // Whole-call refusals: a missing stream, a revoked permission, a disabled key.
    for code in [
        "ResourceNotFoundException",
        "AccessDeniedException",
        "KMSDisabledException",
    ] {
        let rule = mock!(aws_sdk_kinesis::Client::put_records)
            .sequence()
            .http_status(400, error_body(code))
            .repeatedly()
            .build();
        let store = Arc::new(InMemory::new());
        let ingest = Ingest::new(kinesis_sink(&rule), store.clone(), IngestConfig::default());

        let err = ingest
            .ingest(&payloads_with_one_rejection())
            .await
            .expect_err("a sink outage must fail the invocation");

        let text = err.to_string();
        assert!(text.contains(code), "{text}");
        assert!(text.contains("the stream refused"), "{text}");
        // Nothing quarantined: neither the refused messages (not their fault) nor the
        // rejection (the retried event writes it once).
        assert!(quarantine_lines(&store).await.is_empty(), "{code}");
    }
}

#[tokio::test(start_paused = true)]
async fn per_entry_kms_errors_and_exhausted_retries_fail_the_invocation_too() {
    // A KMS error on one entry of an otherwise successful call.
    let rule = mock!(aws_sdk_kinesis::Client::put_records)
        .sequence()
        .output(|| kinesis_output(&vec![Some("KMSAccessDeniedException")]))
        .repeatedly()
        .build();
    let store = Arc::new(InMemory::new());
    let ingest = Ingest::new(kinesis_sink(&rule), store.clone(), IngestConfig::default());
    let err = ingest
        .ingest(&payloads_with_one_rejection()[..1])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("KMSAccessDeniedException"),
        "{err}"
    );
    assert!(quarantine_lines(&store).await.is_empty());

    // Throttling that outlasts the retry policy.
    let rule = mock!(aws_sdk_kinesis::Client::put_records)
        .sequence()
        .http_status(400, error_body("ProvisionedThroughputExceededException"))
        .repeatedly()
        .build();
    let config = IngestConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        },
        ..IngestConfig::default()
    };
    let ingest = Ingest::new(kinesis_sink(&rule), store.clone(), config);
    let err = ingest
        .ingest(&payloads_with_one_rejection())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("after 3 attempt(s)"), "{err}");
    assert!(quarantine_lines(&store).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn payload_rejections_keep_their_path_when_the_stream_takes_the_rest() {
    let rule = mock!(aws_sdk_kinesis::Client::put_records)
        .sequence()
        .output(|| kinesis_output(&vec![None; 4]))
        .repeatedly()
        .build();
    let store = Arc::new(InMemory::new());
    let ingest = Ingest::new(kinesis_sink(&rule), store.clone(), IngestConfig::default());

    let report = ingest.ingest(&payloads_with_one_rejection()).await.unwrap();

    assert_eq!(
        (
            report.messages,
            report.accepted,
            report.quarantined,
            report.sink_failed
        ),
        (5, 4, 1, 0)
    );
    let q = quarantine_lines(&store).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].reason_code, QuarantineReason::MalformedJson);
}

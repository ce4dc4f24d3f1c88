//! The transform handler against real-shaped Firehose events (Kinesis-stream source).

// Test helpers outside #[test] functions panic on bad fixtures by design.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use aws_lambda_events::event::firehose::{KinesisFirehoseEvent, KinesisFirehoseResponse};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use telemetry::{Reading, StreamRecord};
use transform::{MAX_RESPONSE_BYTES, Summary, TransformResult, transform, transform_with_summary};

fn fixture(name: &str) -> KinesisFirehoseEvent {
    let path = format!(
        "{}/tests/fixtures/{name}",
        test_support::package_dir().display()
    );
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn results(response: &KinesisFirehoseResponse) -> Vec<TransformResult> {
    response
        .records
        .iter()
        .map(|r| r.result.as_deref().unwrap().parse().unwrap())
        .collect()
}

fn readings(data: &[u8]) -> Vec<Reading> {
    let text = std::str::from_utf8(data).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_answers_every_record_in_order(
    event: &KinesisFirehoseEvent,
    response: &KinesisFirehoseResponse,
) {
    let ids_in: Vec<_> = event.records.iter().map(|r| r.record_id.clone()).collect();
    let ids_out: Vec<_> = response
        .records
        .iter()
        .map(|r| r.record_id.clone())
        .collect();
    assert_eq!(ids_in, ids_out);
}

fn assert_accounting(summary: &Summary, response: &KinesisFirehoseResponse) {
    assert_eq!(
        summary.records,
        summary.ok + summary.dropped + summary.processing_failed
    );
    assert_eq!(summary.records, response.records.len());
    assert_eq!(
        summary.response_bytes,
        serde_json::to_vec(response).unwrap().len(),
        "the handler's response size accounting is exact"
    );
}

#[test]
fn a_good_batch_is_answered_ok_record_by_record_in_input_order() {
    let event = fixture("firehose-good-batch.json");
    let (response, summary) = transform_with_summary(&event);
    assert_answers_every_record_in_order(&event, &response);
    assert_eq!(results(&response), vec![TransformResult::Ok; 4]);
    assert_eq!(summary.ok, 4);
    assert_eq!(summary.readings, 3 + 2 + 6 + 1);
    assert!(summary.failures.is_empty());
    assert_accounting(&summary, &response);
}

#[test]
fn ok_data_is_one_reading_json_per_metric_each_ending_in_a_newline() {
    let event = fixture("firehose-good-batch.json");
    let response = transform(&event);
    for (input, output) in event.records.iter().zip(&response.records) {
        let expected: Vec<Reading> = std::str::from_utf8(&input.data)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<StreamRecord>(l).unwrap())
            .flat_map(|r| r.to_readings().collect::<Vec<_>>())
            .collect();
        assert_eq!(readings(&output.data), expected);
    }
    let first = readings(&response.records[0].data);
    assert_eq!(first[0].device_id, "sensor-000042");
    assert_eq!(first[0].seq, 12345);
    assert_eq!(first[0].event_time, 1_764_078_300_123);
    assert_eq!(first[0].received_at, 1_764_078_300_200);
    assert_eq!(first[0].fw.as_deref(), Some("1.4.2"));
    let no_fw = readings(&response.records[1].data);
    assert!(no_fw.iter().all(|r| r.fw.is_none()));
}

#[test]
fn partition_keys_are_the_utc_date_and_hour_of_the_event_time() {
    let event = fixture("firehose-good-batch.json");
    let response = transform(&event);
    let keys: Vec<(String, String)> = response
        .records
        .iter()
        .map(|r| {
            let k = &r.metadata.partition_keys;
            assert_eq!(k.len(), 2, "{k:?}");
            (k["dt"].clone(), k["hour"].clone())
        })
        .collect();
    let p = |h: &str| ("2025-11-25".to_string(), h.to_string());
    assert_eq!(keys, vec![p("13"), p("13"), p("13"), p("12")]);
}

#[test]
fn every_bad_record_class_is_answered_processing_failed_with_its_reason() {
    let event = fixture("firehose-bad-records.json");
    let (response, summary) = transform_with_summary(&event);
    assert_answers_every_record_in_order(&event, &response);
    let failed = TransformResult::ProcessingFailed;
    let mut expected = vec![failed; 12];
    expected[0] = TransformResult::Ok;
    expected[11] = TransformResult::Ok;
    assert_eq!(results(&response), expected);

    let codes: Vec<(usize, &str)> = summary
        .failures
        .iter()
        .map(|f| (f.index, f.reason.code()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (1, "empty"),
            (2, "invalid_utf8"),
            (3, "not_a_stream_record"),
            (4, "not_a_stream_record"),
            (5, "no_metrics"),
            (6, "non_finite_value"),
            (7, "bad_device_id"),
            (8, "spans_partitions"),
            (9, "seq_out_of_range"),
            (10, "not_a_stream_record"),
        ]
    );
    let reason = |i: usize| {
        summary
            .failures
            .iter()
            .find(|f| f.index == i)
            .unwrap()
            .reason
            .to_string()
    };
    assert!(reason(4).contains("missing field `seq`"), "{}", reason(4));
    assert!(reason(8).contains("dt=2025-11-25/hour=13 then dt=2025-11-25/hour=14"));
    assert!(reason(10).starts_with("line 2:"), "{}", reason(10));
    assert_eq!(summary.failures_by_code()["not_a_stream_record"], 3);
    assert_accounting(&summary, &response);
}

#[test]
fn a_failed_record_echoes_its_original_data_and_has_no_partition_keys() {
    let event = fixture("firehose-bad-records.json");
    let response = transform(&event);
    for (input, output) in event.records.iter().zip(&response.records) {
        if output.result.as_deref() == Some("ProcessingFailed") {
            assert_eq!(output.data.0, input.data.0);
            assert!(output.metadata.partition_keys.is_empty());
        }
    }
}

#[test]
fn good_records_next_to_bad_ones_are_still_transformed() {
    let event = fixture("firehose-bad-records.json");
    let (response, summary) = transform_with_summary(&event);
    assert_eq!(summary.ok, 2);
    assert_eq!(summary.readings, 6);
    assert_eq!(
        readings(&response.records[11].data)[0].device_id,
        "sensor-000052"
    );
}

#[test]
fn a_record_whose_every_key_was_seen_earlier_in_the_invocation_is_dropped() {
    let event = fixture("firehose-duplicates.json");
    let (response, summary) = transform_with_summary(&event);
    assert_answers_every_record_in_order(&event, &response);
    use TransformResult::{Dropped, Ok, ProcessingFailed};
    assert_eq!(
        results(&response),
        vec![Ok, Ok, Dropped, Ok, Dropped, ProcessingFailed, Ok, Ok]
    );
    for dropped in [2, 4] {
        assert!(response.records[dropped].data.is_empty());
        assert!(response.records[dropped].metadata.partition_keys.is_empty());
    }
    assert_eq!(summary.dropped, 2);
    assert_accounting(&summary, &response);
}

#[test]
fn a_device_that_restarted_its_seq_is_not_a_duplicate_but_a_redelivery_is() {
    // Records 0 and 1: one message, its re-delivery (same seq and ts). Record 2: the same
    // device after a reboot, seq restarted at 0 with a later event time.
    let mut event = big_event(3, 2);
    let mut records: Vec<StreamRecord> = event
        .records
        .iter()
        .map(|r| serde_json::from_slice(&r.data).unwrap())
        .collect();
    records[1] = records[0].clone();
    records[2].seq = records[0].seq;
    for (record, data) in records.iter().zip(event.records.iter_mut()) {
        *data.data = record.to_json();
    }
    let response = transform(&event);
    use TransformResult::{Dropped, Ok};
    assert_eq!(results(&response), vec![Ok, Dropped, Ok]);
    let rebooted = readings(&response.records[2].data);
    assert_eq!(rebooted.len(), 2);
    assert!(
        rebooted
            .iter()
            .all(|r| r.seq as u64 == records[0].seq && r.event_time == records[2].ts)
    );
}

#[test]
fn a_packed_record_keeps_only_the_documents_not_seen_before() {
    let event = fixture("firehose-duplicates.json");
    let response = transform(&event);
    // Record 3 packs seq 100 (already answered by record 0) and seq 101.
    let seqs: Vec<i64> = readings(&response.records[3].data)
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![101; 3]);
    // Record 7 packs the same document twice: its readings appear once.
    assert_eq!(readings(&response.records[7].data).len(), 3);
}

#[test]
fn a_record_that_failed_does_not_make_a_later_copy_a_duplicate() {
    let event = fixture("firehose-duplicates.json");
    let response = transform(&event);
    let later = readings(&response.records[6].data);
    assert_eq!(later.len(), 3);
    assert!(
        later
            .iter()
            .all(|r| r.device_id == "sensor-000099" && r.seq == 300)
    );
}

#[test]
fn the_response_json_spells_results_and_partition_keys_as_firehose_expects() {
    let event = fixture("firehose-duplicates.json");
    let json: Value = serde_json::to_value(transform(&event)).unwrap();
    let records = json["records"].as_array().unwrap();
    let spelled: Vec<&str> = records
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        spelled,
        vec![
            "Ok",
            "Ok",
            "Dropped",
            "Ok",
            "Dropped",
            "ProcessingFailed",
            "Ok",
            "Ok"
        ]
    );
    assert_eq!(
        records[0]["metadata"],
        json!({"partitionKeys": {"dt": "2025-11-25", "hour": "13"}})
    );
    assert_eq!(
        records[0]["recordId"],
        "49546986683135544286507457936321625675700192471156785154000000000000000000000"
    );
    let data = STANDARD
        .decode(records[0]["data"].as_str().unwrap())
        .unwrap();
    assert!(data.starts_with(b"{\"device_id\":\"sensor-000042\""));
    // The enum itself serializes to the same strings.
    assert_eq!(
        serde_json::to_value([
            TransformResult::Ok,
            TransformResult::Dropped,
            TransformResult::ProcessingFailed
        ])
        .unwrap(),
        json!(["Ok", "Dropped", "ProcessingFailed"])
    );
}

/// A typed event of `n` records of `metrics` metrics each, all of device `dev` and in
/// one hour.
fn big_event(n: usize, metrics: usize) -> KinesisFirehoseEvent {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            let record = StreamRecord {
                device_id: "sensor-000042".into(),
                seq: i as u64,
                ts: 1_764_078_300_123 + i as i64,
                metrics: (0..metrics)
                    .map(|m| (format!("metric_{m:02}"), m as f64 + 0.25))
                    .collect(),
                fw: Some("1.4.2".into()),
                received_at: 1_764_078_300_200 + i as i64,
            };
            json!({
                "recordId": format!("{i:056}"),
                "approximateArrivalTimestamp": 1_764_078_301_000_i64,
                "data": STANDARD.encode(record.to_json()),
                "kinesisRecordMetadata": {
                    "shardId": "shardId-000000000000",
                    "partitionKey": "sensor-000042",
                    "approximateArrivalTimestamp": 1_764_078_301_000_i64,
                    "sequenceNumber": format!("{i:056}"),
                    "subsequenceNumber": 0
                }
            })
        })
        .collect();
    serde_json::from_value(json!({
        "invocationId": "big",
        "deliveryStreamArn": "arn:aws:firehose:eu-west-1:123456789012:deliverystream/iot-pipeline-telemetry",
        "sourceKinesisStreamArn": "arn:aws:kinesis:eu-west-1:123456789012:stream/iot-pipeline-telemetry",
        "region": "eu-west-1",
        "records": records
    }))
    .unwrap()
}

#[test]
fn records_past_the_6_mib_response_limit_fail_with_response_size_limit() {
    // 800 records of 64 metrics: about 1.4 MiB of input, over 9 MiB of base64 output.
    let event = big_event(800, 64);
    let (response, summary) = transform_with_summary(&event);
    assert_answers_every_record_in_order(&event, &response);
    let encoded = serde_json::to_vec(&response).unwrap();
    assert!(
        encoded.len() <= MAX_RESPONSE_BYTES,
        "{} bytes",
        encoded.len()
    );
    let ok = summary.ok;
    assert!(ok > 0 && ok < 800, "{ok} records answered Ok");
    // The Ok records are a prefix; everything after the cut failed with empty data.
    let res = results(&response);
    assert!(res[..ok].iter().all(|r| *r == TransformResult::Ok));
    assert!(
        res[ok..]
            .iter()
            .all(|r| *r == TransformResult::ProcessingFailed)
    );
    assert!(response.records[ok..].iter().all(|r| r.data.is_empty()));
    assert_eq!(summary.failures.len(), 800 - ok);
    assert!(summary.failures.iter().all(|f| {
        f.reason.code() == "response_size_limit"
            && f.reason.to_string().starts_with("response size limit")
    }));
    // The budget is used: one more Ok record (about 13 KiB) would not have fitted.
    let one_ok = STANDARD.encode(&response.records[0].data.0).len();
    assert!(
        encoded.len() + one_ok > MAX_RESPONSE_BYTES,
        "{} bytes used",
        encoded.len()
    );
    assert_accounting(&summary, &response);
}

#[test]
fn a_batch_of_500_four_metric_records_fits_the_response_limit() {
    let event = big_event(500, 4);
    let (response, summary) = transform_with_summary(&event);
    assert_eq!(summary.ok, 500);
    assert_eq!(summary.readings, 2000);
    assert!(summary.response_bytes < MAX_RESPONSE_BYTES);
    assert_accounting(&summary, &response);
}

#[test]
fn an_empty_event_gets_an_empty_response() {
    let event: KinesisFirehoseEvent = serde_json::from_value(json!({"records": []})).unwrap();
    let (response, summary) = transform_with_summary(&event);
    assert!(response.records.is_empty());
    assert_accounting(&summary, &response);
}

#[tokio::test]
async fn the_lambda_handler_answers_with_the_transform_and_never_errors() {
    let event = fixture("firehose-bad-records.json");
    let expected = transform(&event);
    let response = transform::handle(LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(response, expected);
}

#[test]
fn an_event_whose_data_is_not_base64_cannot_be_typed_at_all() {
    // Firehose base64-encodes record data itself; a hand-made event with invalid base64
    // fails while the runtime types it, before the handler runs (documented limitation).
    let mut raw: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/firehose-good-batch.json",
            test_support::package_dir().display()
        ))
        .unwrap(),
    )
    .unwrap();
    raw["records"][0]["data"] = json!("not base64 at all!");
    assert!(serde_json::from_value::<KinesisFirehoseEvent>(raw).is_err());
}

#[test]
fn fixtures_are_real_shaped_kinesis_source_events() {
    for name in [
        "firehose-good-batch.json",
        "firehose-bad-records.json",
        "firehose-duplicates.json",
    ] {
        let event = fixture(name);
        assert!(event.invocation_id.is_some());
        assert!(event.source_kinesis_stream_arn.is_some());
        let mut ids = HashMap::new();
        for r in &event.records {
            let meta = r.kinesis_firehose_record_metadata.as_ref().unwrap();
            assert!(meta.shard_id.as_deref().unwrap().starts_with("shardId-"));
            assert!(meta.sequence_number.is_some() && meta.partition_key.is_some());
            *ids.entry(r.record_id.clone().unwrap()).or_insert(0) += 1;
        }
        assert!(ids.values().all(|n| *n == 1), "{name}: record ids repeat");
    }
}

/// A typed event of the given record data, with `recordId`s of `id_len` characters.
fn event_of(data: &[Vec<u8>], id_len: usize) -> KinesisFirehoseEvent {
    let records: Vec<Value> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            json!({
                "recordId": format!("{i:0id_len$}"),
                "approximateArrivalTimestamp": 1_764_078_301_000_i64,
                "data": STANDARD.encode(d),
                "kinesisRecordMetadata": {
                    "shardId": "shardId-000000000000",
                    "partitionKey": "p",
                    "approximateArrivalTimestamp": 1_764_078_301_000_i64,
                    "sequenceNumber": format!("{i:056}"),
                    "subsequenceNumber": 0
                }
            })
        })
        .collect();
    serde_json::from_value(json!({"invocationId": "x", "records": records})).unwrap()
}

/// The message of the contract whose rows amplify most: 64 metrics of the shortest
/// distinct names and values, the longest device id and `fw`, a 19-digit seq.
fn worst_message(seq: u64) -> StreamRecord {
    let letters = b'a'..=b'z';
    let mut names: Vec<String> = letters.clone().map(|c| (c as char).to_string()).collect();
    for a in letters {
        for b in (b'a'..=b'z').chain(b'0'..=b'9').chain([b'_']) {
            names.push(format!("{}{}", a as char, b as char));
        }
    }
    names.truncate(telemetry::validate::MAX_METRICS);
    StreamRecord {
        device_id: "d".repeat(telemetry::validate::MAX_DEVICE_ID_LEN),
        seq,
        ts: 1_764_078_300_123,
        metrics: names.into_iter().map(|n| (n, 0.0)).collect(),
        fw: Some("v".repeat(telemetry::validate::MAX_FW_LEN)),
        received_at: 1_764_078_300_123,
    }
}

#[test]
fn the_contracts_worst_message_fits_its_share_of_the_response() {
    let msg = worst_message(i64::MAX as u64);
    // It is a message the contract accepts.
    let mut payload = serde_json::to_value(&msg).unwrap();
    payload.as_object_mut().unwrap().remove("received_at");
    let topic = format!("dt/fleet/{}/telemetry", msg.device_id);
    let v = telemetry::validate_payload(
        payload.to_string().as_bytes(),
        &topic,
        msg.received_at,
        &Default::default(),
    );
    assert_eq!(v.accepted.len(), 1, "{:?}", v.rejected);

    let data = msg.to_json();
    let event = event_of(std::slice::from_ref(&data), 128);
    let (response, summary) = transform_with_summary(&event);
    assert_eq!(summary.ok, 1, "{:?}", summary.failures);
    let answer = serde_json::to_vec(&response.records[0]).unwrap().len();
    assert!(
        transform::handler::within_share(answer, data.len()),
        "{answer} bytes of answer for {} bytes of data",
        data.len()
    );
    // The bound is tight: the worst message needs more than 29 bytes per data byte.
    assert!((answer + 1) > 29 * data.len(), "{answer} / {}", data.len());
}

#[test]
fn a_full_processor_buffer_of_the_worst_messages_fits_the_response_limit() {
    let mut data = Vec::new();
    let mut bytes = 0;
    let mut seq = i64::MAX as u64;
    while bytes < transform::handler::MAX_PROCESSOR_BUFFER_BYTES {
        let d = worst_message(seq).to_json();
        bytes += d.len();
        seq -= 1;
        data.push(d);
    }
    // Like Firehose's buffer: up to the hint, the last record crossing it.
    let event = event_of(&data, 128);
    let (response, summary) = transform_with_summary(&event);
    assert_eq!(summary.ok, data.len(), "{:?}", summary.failures_by_code());
    let encoded = serde_json::to_vec(&response).unwrap().len();
    assert!(encoded <= MAX_RESPONSE_BYTES, "{encoded} bytes");
    assert!(
        encoded > MAX_RESPONSE_BYTES * 9 / 10,
        "the bound is not loose: {encoded}"
    );
    assert_accounting(&summary, &response);
}

#[test]
fn one_enormous_record_among_500_normal_ones_fails_alone() {
    // Valid before fw was bounded: 64 metrics and a 100 KB fw, 8.5 MB of answer by itself.
    let mut enormous = worst_message(7);
    enormous.device_id = "sensor-big".into();
    enormous.fw = Some("1".repeat(100_000));
    let normal = big_event(500, 4);
    for position in [0, 250, 500] {
        let mut data: Vec<Vec<u8>> = normal.records.iter().map(|r| r.data.0.clone()).collect();
        data.insert(position, enormous.to_json());
        let event = event_of(&data, 56);
        let (response, summary) = transform_with_summary(&event);
        assert_answers_every_record_in_order(&event, &response);
        let res = results(&response);
        for (i, r) in res.iter().enumerate() {
            let expected = if i == position {
                TransformResult::ProcessingFailed
            } else {
                TransformResult::Ok
            };
            assert_eq!(*r, expected, "record {i} (the enormous one is {position})");
        }
        assert_eq!(summary.failures.len(), 1);
        assert_eq!(summary.failures[0].reason.code(), "over_response_share");
        // Its raw bytes go to the error prefix.
        assert_eq!(response.records[position].data.0, enormous.to_json());
        assert!(serde_json::to_vec(&response).unwrap().len() <= MAX_RESPONSE_BYTES);
        assert_accounting(&summary, &response);
    }
}

/// The raw transform hands its stream records over parsed (`transform_documents`): for the
/// same records it must answer exactly as the stream path that parses them
/// (`transform_with_summary`), byte for byte, with the same counts.
#[test]
fn pre_parsed_documents_are_answered_as_their_json_is() {
    for name in ["firehose-good-batch.json", "firehose-duplicates.json"] {
        let event = fixture(name);
        let records: Vec<Vec<StreamRecord>> = event
            .records
            .iter()
            .map(|r| {
                std::str::from_utf8(&r.data)
                    .unwrap()
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect()
            })
            .collect();
        let docs: Vec<Vec<_>> = records
            .iter()
            .map(|r| r.iter().map(StreamRecord::borrowed).collect())
            .collect();
        let (want, want_summary) = transform_with_summary(&event);
        let (got, got_summary) = transform::transform_documents(&event, &docs);
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::to_value(&want).unwrap(),
            "{name}"
        );
        assert_eq!(
            (got_summary.ok, got_summary.dropped, got_summary.readings),
            (want_summary.ok, want_summary.dropped, want_summary.readings),
            "{name}"
        );
        assert!(want_summary.ok > 0, "{name}: the fixture has Ok records");
    }
}

#[test]
fn the_response_size_is_exact_across_hours_record_ids_and_answers() {
    // Records of three hours interleaved (each shape's size is measured once per hour run),
    // record ids absent, escaped and non-ASCII, and every kind of answer.
    let hour = 3_600_000;
    let t0 = 1_764_078_300_123;
    let doc = |device: &str, seq: u64, ts: i64| {
        StreamRecord {
            device_id: device.into(),
            seq,
            ts,
            metrics: [("t".to_owned(), 1.5), ("rh".to_owned(), 40.0)]
                .into_iter()
                .collect(),
            fw: None,
            received_at: ts + 5,
        }
        .to_json()
    };
    let data: Vec<Vec<u8>> = vec![
        doc("a", 1, t0),
        doc("b", 1, t0 + hour),
        doc("a", 2, t0),
        doc("a", 1, t0), // duplicate: Dropped
        doc("c", 1, t0 + 2 * hour),
        b"not json".to_vec(), // ProcessingFailed
        doc("b", 2, t0 + hour),
        doc("c", 2, t0 - 10 * hour),
    ];
    let ids = [
        None,
        Some("q\"uote\\d".to_owned()),
        Some("\u{e9}t\u{e9}-\u{1}".to_owned()),
        Some(String::new()),
    ];
    let mut event = KinesisFirehoseEvent::default();
    event.records = data
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let mut r = aws_lambda_events::event::firehose::KinesisFirehoseEventRecord::default();
            r.record_id = ids[i % ids.len()].clone();
            r.data.0 = d;
            r
        })
        .collect();
    let (response, summary) = transform_with_summary(&event);
    assert_eq!(
        results(&response),
        [
            TransformResult::Ok,
            TransformResult::Ok,
            TransformResult::Ok,
            TransformResult::Dropped,
            TransformResult::Ok,
            TransformResult::ProcessingFailed,
            TransformResult::Ok,
            TransformResult::Ok,
        ]
    );
    assert_accounting(&summary, &response);
}

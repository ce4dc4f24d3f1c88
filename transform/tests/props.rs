//! Property tests of the transform: any event gets exactly one answer per `recordId`, in
//! order, never a panic; any event the contract allows fits Lambda's 6 MiB response.

#![allow(clippy::unwrap_used)]

use aws_lambda_events::event::firehose::{KinesisFirehoseEvent, KinesisFirehoseEventRecord};
use proptest::prelude::*;
use telemetry::StreamRecord;
use telemetry::validate::{MAX_FW_LEN, MAX_METRICS};
use transform::handler::MAX_PROCESSOR_BUFFER_BYTES;
use transform::{MAX_RESPONSE_BYTES, transform_with_summary};

const NOW: i64 = 1_764_078_300_123;

fn event(data: Vec<Vec<u8>>) -> KinesisFirehoseEvent {
    let mut event = KinesisFirehoseEvent::default();
    event.records = data
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let mut r = KinesisFirehoseEventRecord::default();
            r.record_id = Some(format!("{i:0>64}"));
            r.data.0 = d;
            r
        })
        .collect();
    event
}

/// A stream record of a message the contract allows, in one hour.
fn contract_record() -> impl Strategy<Value = StreamRecord> {
    (
        "[A-Za-z0-9_:-]{1,128}",
        0..=i64::MAX as u64,
        proptest::collection::btree_map(
            "[a-z][a-z0-9_]{0,63}",
            any::<f64>().prop_filter("finite", |x| x.is_finite()),
            1..=MAX_METRICS,
        ),
        proptest::option::of(
            proptest::string::string_regex(&format!("[ -!#-\\[\\]-~]{{1,{MAX_FW_LEN}}}")).unwrap(),
        ),
    )
        .prop_map(|(device_id, seq, metrics, fw)| StreamRecord {
            device_id,
            seq,
            ts: NOW,
            metrics,
            fw,
            received_at: NOW,
        })
}

fn assert_one_answer_per_record(event: &KinesisFirehoseEvent) -> usize {
    let (response, summary) = transform_with_summary(event);
    let ids_in: Vec<_> = event.records.iter().map(|r| r.record_id.clone()).collect();
    let ids_out: Vec<_> = response
        .records
        .iter()
        .map(|r| r.record_id.clone())
        .collect();
    assert_eq!(ids_in, ids_out);
    assert_eq!(
        summary.records,
        summary.ok + summary.dropped + summary.processing_failed
    );
    let encoded = serde_json::to_vec(&response).unwrap().len();
    assert_eq!(encoded, summary.response_bytes);
    encoded
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_record_data_gets_exactly_one_answer_per_record_id(
        data in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 0..40)
    ) {
        let encoded = assert_one_answer_per_record(&event(data));
        prop_assert!(encoded <= MAX_RESPONSE_BYTES);
    }

    #[test]
    fn any_event_the_contract_allows_is_answered_ok_within_the_response_limit(
        records in proptest::collection::vec(contract_record(), 1..64),
        copies in 1usize..400,
    ) {
        // Fill up to the processor buffer with copies (new seqs) of the generated records.
        let mut data = Vec::new();
        let mut bytes = 0;
        let mut seq = 0u64;
        'fill: for _ in 0..copies {
            for r in &records {
                let mut r = r.clone();
                r.seq = seq;
                seq += 1;
                let d = r.to_json();
                if bytes + d.len() > MAX_PROCESSOR_BUFFER_BYTES {
                    break 'fill;
                }
                bytes += d.len();
                data.push(d);
            }
        }
        prop_assume!(!data.is_empty());
        let n = data.len();
        let e = event(data);
        let encoded = assert_one_answer_per_record(&e);
        prop_assert!(encoded <= MAX_RESPONSE_BYTES, "{encoded} bytes");
        let (_, summary) = transform_with_summary(&e);
        prop_assert_eq!(summary.ok, n, "{:?}", summary.failures_by_code());
    }
}

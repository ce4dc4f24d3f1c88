//! Property tests of validation: any bytes are accepted or rejected with a reason, never a
//! panic; the messages the contract allows are accepted and round-trip.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use telemetry::validate::{MAX_BATCH_MESSAGES, MAX_FW_LEN, MAX_METRICS};
use telemetry::{Telemetry, ValidationConfig, validate_payload};

const NOW: i64 = 1_764_078_300_123;

/// A message the contract allows, on the topic of its device.
fn valid_message() -> impl Strategy<Value = Telemetry> {
    (
        "[A-Za-z0-9_:-]{1,128}",
        0..=i64::MAX as u64,
        -7 * 24 * 3600 * 1000i64..=5 * 60 * 1000,
        proptest::collection::btree_map(
            "[a-z][a-z0-9_]{0,63}",
            any::<f64>().prop_filter("finite", |x| x.is_finite()),
            1..=MAX_METRICS,
        ),
        proptest::option::of(
            proptest::string::string_regex(&format!("[ -!#-\\[\\]-~]{{1,{MAX_FW_LEN}}}")).unwrap(),
        ),
    )
        .prop_map(|(device_id, seq, offset, metrics, fw)| Telemetry {
            device_id,
            seq,
            ts: NOW + offset,
            metrics,
            fw,
        })
}

fn topic(device: &str) -> String {
    format!("dt/fleet/{device}/telemetry")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_are_accepted_or_rejected_with_a_reason(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let v = validate_payload(&raw, "dt/fleet/d1/telemetry", NOW, &ValidationConfig::default());
        prop_assert!(v.messages() >= 1);
        for r in &v.rejected {
            prop_assert!(!r.reason.to_string().is_empty());
            prop_assert!(!r.reason.code().is_empty());
        }
    }

    #[test]
    fn any_json_shaped_text_is_accepted_or_rejected_with_a_reason(
        raw in r#"[\[\]{}",:0-9a-z_ .e+-]{0,512}"#
    ) {
        let v = validate_payload(raw.as_bytes(), "dt/fleet/d1/telemetry", NOW, &ValidationConfig::default());
        prop_assert!(v.messages() >= 1);
        prop_assert!(v.rejected.len() <= MAX_BATCH_MESSAGES);
    }

    #[test]
    fn a_valid_message_is_accepted_and_round_trips(msg in valid_message()) {
        let raw = serde_json::to_vec(&msg).unwrap();
        let v = validate_payload(&raw, &topic(&msg.device_id), NOW, &ValidationConfig::default());
        prop_assert!(v.rejected.is_empty(), "{:?}", v.rejected);
        prop_assert_eq!(&v.accepted, &vec![msg.clone()]);
        // What ingest streams parses back to the same message.
        let again: Telemetry = serde_json::from_slice(&serde_json::to_vec(&v.accepted[0]).unwrap()).unwrap();
        prop_assert_eq!(again, msg);
    }

    #[test]
    fn a_batch_of_valid_messages_is_accepted_element_by_element(
        msgs in proptest::collection::vec(valid_message(), 1..8)
    ) {
        // One device per batch: the topic names it.
        let device = msgs[0].device_id.clone();
        let msgs: Vec<Telemetry> = msgs.into_iter().map(|mut m| { m.device_id = device.clone(); m }).collect();
        let raw = serde_json::to_vec(&msgs).unwrap();
        let v = validate_payload(&raw, &topic(&device), NOW, &ValidationConfig::default());
        prop_assert_eq!(v.accepted, msgs);
    }
}

#[test]
fn the_strategy_reaches_the_contracts_bounds() {
    // Guards the generator: a message at every bound is valid.
    let msg = Telemetry {
        device_id: "d".repeat(128),
        seq: i64::MAX as u64,
        ts: NOW,
        metrics: (0..MAX_METRICS)
            .map(|i| (format!("m{i:0>63}"), -1.5))
            .collect::<BTreeMap<_, _>>(),
        fw: Some("~".repeat(MAX_FW_LEN)),
    };
    let raw = serde_json::to_vec(&msg).unwrap();
    let v = validate_payload(
        &raw,
        &topic(&msg.device_id),
        NOW,
        &ValidationConfig::default(),
    );
    assert_eq!(v.accepted, vec![msg]);
}

//! Device-side batches and fault injection against the set-up's mosquitto
//! (`IOTPIPE_TEST_MQTT`; the tests fail when it is not configured), checked by an
//! independent subscriber and by the ingest validator; and the same faults in `--dump`.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use device_sim::faults::{FaultCounts, Faults};
use device_sim::{BrokerUrl, QoS, SimConfig, SimSummary};
use telemetry::{ValidationConfig, validate_payload};

use common::{START_MS, Subscriber, mosquitto, never_shut_down};

fn fleet(broker: BrokerUrl) -> SimConfig {
    let tag = format!("{:08x}", rand::random::<u32>());
    SimConfig {
        broker,
        fleet: format!("faults-{tag}"),
        device_prefix: format!("f{tag}-"),
        devices: 10,
        rate: 10.0,
        duration: Duration::from_secs(3),
        qos: QoS::AtLeastOnce,
        seed: 21,
        start_ms: Some(START_MS),
        ..SimConfig::default()
    }
}

/// Valid messages per device (by the ingest validator, which accepts batches), and the
/// number of payloads it rejected as a whole or in part.
fn validate_all(received: &[(String, Vec<u8>)]) -> (BTreeMap<String, Vec<u64>>, usize) {
    let mut by_device: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut rejected = 0;
    // A generous window: clock-skew faults stay valid.
    let cfg = ValidationConfig::default();
    for (topic, payload) in received {
        let v = validate_payload(payload, topic, START_MS + 60_000, &cfg);
        rejected += v.rejected.len();
        for m in v.accepted {
            by_device.entry(m.device_id).or_default().push(m.seq);
        }
    }
    (by_device, rejected)
}

fn ledger_sum(s: &SimSummary) -> FaultCounts {
    let mut total = FaultCounts::default();
    for l in s.per_device.values() {
        total.add(&l.faults);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arrive_as_arrays_that_ingest_accepts_and_the_ledger_counts_messages() {
    let broker = mosquitto();
    let sub = Subscriber::start(&broker).await;
    let cfg = SimConfig {
        batch: 4,
        ..fleet(broker)
    };

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    // 30 messages per device, in publishes of 4, 4, ..., 2.
    assert_eq!(summary.batch, 4);
    assert_eq!(summary.scheduled, 300, "{summary:#?}");
    assert_eq!(summary.sent, 300);
    assert_eq!(summary.acknowledged, 300);
    assert_eq!(summary.failed, 0);
    let received = sub.wait_for(&cfg.fleet, 10 * 8).await;
    assert_eq!(received.len(), 10 * 8, "publishes: ceil(30 / 4) per device");
    assert!(received.iter().all(|(_, p)| p.first() == Some(&b'[')));
    let (by_device, rejected) = validate_all(&received);
    assert_eq!(rejected, 0);
    for (device, mut seqs) in by_device {
        seqs.sort_unstable();
        assert_eq!(seqs, (0..30).collect::<Vec<u64>>(), "{device}");
        let l = &summary.per_device[&device];
        assert_eq!((l.first_seq, l.last_seq, l.sent), (0, Some(29), 30));
    }
    let mut got = received;
    let mut want: Vec<_> = device_sim::generate(&cfg).collect();
    got.sort();
    want.sort();
    assert!(got == want, "received publishes differ from generate()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_reach_the_broker_as_generated_and_are_counted() {
    let broker = mosquitto();
    let sub = Subscriber::start(&broker).await;
    let cfg = SimConfig {
        faults: Faults {
            duplicate: 0.1,
            out_of_order: 0.1,
            clock_skew: 0.1,
            clock_skew_by: Duration::from_secs(30),
            malformed: 0.05,
            oversize: 0.05,
            ..Faults::default()
        },
        ..fleet(broker)
    };
    // What the seed injects, without a broker.
    let mut planned = device_sim::try_publishes(&cfg).unwrap();
    let publishes = planned.by_ref().count();
    let want_counts = planned.counts();
    assert!(want_counts.duplicated > 0 && want_counts.malformed > 0 && want_counts.oversize > 0);

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    assert_eq!(summary.faults, want_counts, "{summary:#?}");
    assert_eq!(ledger_sum(&summary), want_counts);
    // Duplicates are extra packets, not extra messages.
    assert_eq!(summary.sent, 300);
    assert_eq!(summary.acknowledged, 300);
    assert_eq!(summary.failed, 0);

    let received = sub.wait_for(&cfg.fleet, publishes as u64).await;
    assert_eq!(received.len(), publishes);
    let mut got = received.clone();
    let mut want: Vec<_> = device_sim::generate(&cfg).collect();
    got.sort();
    want.sort();
    assert!(got == want, "received publishes differ from generate()");

    // The pipeline's view: the damaged ones are rejected, everything else is there.
    let (by_device, rejected) = validate_all(&received);
    let damaged = (want_counts.malformed + want_counts.oversize) as usize;
    // (A duplicated damaged publish is rejected twice.)
    assert!(rejected >= damaged, "{rejected} < {damaged}");
    let valid: usize = by_device
        .values()
        .map(|s| s.iter().collect::<BTreeSet<_>>().len())
        .sum();
    assert_eq!(valid, 300 - damaged);
    // Out-of-order sends: some device's seq arrives after a later one of its own (the
    // broker keeps one client's order, so this is the device's doing).
    assert!(want_counts.reordered > 0);
    let mut highest: BTreeMap<String, u64> = BTreeMap::new();
    let mut inversions = 0;
    for (topic, payload) in &received {
        let v = validate_payload(
            payload,
            topic,
            START_MS + 60_000,
            &ValidationConfig::default(),
        );
        for m in v.accepted {
            let top = highest.entry(m.device_id).or_insert(0);
            if m.seq < *top {
                inversions += 1;
            }
            *top = (*top).max(m.seq);
        }
    }
    assert!(inversions > 0, "no out-of-order arrival");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_storms_drop_every_device_and_lose_no_qos1_message() {
    let broker = mosquitto();
    let sub = Subscriber::start(&broker).await;
    let cfg = SimConfig {
        duration: Duration::from_secs(5),
        faults: Faults {
            disconnect_storms: 40.0,
            ..Faults::default()
        },
        ..fleet(broker)
    };
    let storms = cfg
        .faults
        .storm_times(cfg.seed, cfg.duration)
        .iter()
        .filter(|t| **t < Duration::from_millis(4500))
        .count() as u64;
    assert!(storms >= 1, "pick a seed with a storm inside the run");

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    assert!(summary.disconnect_storms >= storms, "{summary:#?}");
    // Every device was connected and publishing at the first storm; a device still
    // reconnecting from one storm is not hit by the next.
    assert!(summary.faults.disconnects >= 10, "{summary:#?}");
    assert!(summary.faults.disconnects <= summary.disconnect_storms * 10);
    assert_eq!(ledger_sum(&summary).disconnects, summary.faults.disconnects);
    assert_eq!(summary.acknowledged, 500, "{summary:#?}");
    assert_eq!(summary.failed, 0);
    let received = sub.wait_for(&cfg.fleet, 500).await;
    let (by_device, _) = validate_all(&received);
    for (device, seqs) in by_device {
        let distinct: BTreeSet<u64> = seqs.into_iter().collect();
        assert_eq!(distinct, (0..50).collect(), "{device}");
    }
}

#[test]
fn a_dump_carries_the_same_faults_and_batches_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let path = dir.path().join(name);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_device-sim"))
            .args(["--devices", "5", "--rate", "10", "--duration", "10s"])
            .args([
                "--seed",
                "4",
                "--start",
                "2025-11-25T12:00:00Z",
                "--batch",
                "3",
            ])
            .args(["--fault-duplicate", "0.1", "--fault-malformed", "0.1"])
            .args(["--fault-out-of-order", "0.1", "--fault-oversize", "0.02"])
            .args(["--summary-json", "--quiet", "--dump"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        (std::fs::read(&path).unwrap(), summary)
    };
    let (a, mut sa) = run("a.jsonl");
    let (b, mut sb) = run("b.jsonl");
    sa["file"].take();
    sb["file"].take();
    assert!(a == b, "same flags, different dumps");
    assert_eq!(sa, sb);
    assert_eq!(sa["readings"], 500);
    assert_eq!(sa["batch"], 3);
    let lines: Vec<&[u8]> = a.split(|&c| c == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len() as u64, sa["messages"].as_u64().unwrap());
    let broken = lines
        .iter()
        .filter(|l| serde_json::from_slice::<serde_json::Value>(l).is_err())
        .count() as u64;
    assert!(broken > 0, "no malformed line");
    // `malformed` counts messages (up to 3 per cut batch); a duplicate repeats a line.
    let f = &sa["faults"];
    assert!(broken <= f["malformed"].as_u64().unwrap() + f["duplicated"].as_u64().unwrap());
    assert!(sa["faults"]["oversize"].as_u64().unwrap() > 0);
}

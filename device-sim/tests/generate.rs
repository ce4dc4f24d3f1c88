//! The deterministic payload stream, without a broker: determinism, sequence numbers,
//! the data contract, time order and message counts.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use device_sim::schedule::messages_per_device;
use device_sim::{SimConfig, generate, try_generate};
use telemetry::topic::parse_topic;
use telemetry::{Telemetry, ValidationConfig, validate_payload};

const START_MS: i64 = 1_764_072_000_000;

fn cfg(devices: usize, rate: f64, secs: u64, seed: u64) -> SimConfig {
    SimConfig {
        devices,
        rate,
        duration: Duration::from_secs(secs),
        seed,
        start_ms: Some(START_MS),
        ..SimConfig::default()
    }
}

fn parse(payload: &[u8]) -> Telemetry {
    serde_json::from_slice(payload).unwrap()
}

#[test]
fn generate_is_byte_identical_for_the_same_seed_and_start() {
    let c = cfg(25, 2.0, 30, 42);
    let a: Vec<_> = generate(&c).collect();
    let b: Vec<_> = generate(&c).collect();
    assert_eq!(a.len(), 25 * 60);
    assert!(a == b);
}

#[test]
fn generate_differs_for_another_seed_but_keeps_ids_seqs_and_topics() {
    let a: Vec<_> = generate(&cfg(5, 1.0, 10, 1)).collect();
    let b: Vec<_> = generate(&cfg(5, 1.0, 10, 2)).collect();
    assert_eq!(a.len(), b.len());
    let readings =
        |v: &[(String, Vec<u8>)]| -> Vec<_> { v.iter().map(|(_, p)| parse(p).metrics).collect() };
    assert_ne!(readings(&a), readings(&b));
    // Same fleet shape: the same devices, each with seqs 0..10.
    let shape = |v: &[(String, Vec<u8>)]| -> BTreeMap<String, Vec<u64>> {
        let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (t, p) in v {
            let msg = parse(p);
            assert_eq!(parse_topic(t).unwrap().device_id, msg.device_id);
            m.entry(t.clone()).or_default().push(msg.seq);
        }
        m
    };
    assert_eq!(shape(&a), shape(&b));
}

#[test]
fn a_device_does_not_depend_on_the_size_of_its_fleet() {
    // Device streams are seeded per device index, so adding devices changes nothing for
    // the existing ones (the connection ramp only moves later devices).
    let small: Vec<_> = generate(&cfg(3, 1.0, 10, 9)).collect();
    let big: Vec<_> = generate(&cfg(30, 1.0, 10, 9)).collect();
    let of = |v: &[(String, Vec<u8>)], id: &str| -> Vec<Vec<u8>> {
        v.iter()
            .filter(|(_, p)| parse(p).device_id == id)
            .map(|(_, p)| p.clone())
            .collect()
    };
    for id in ["sensor-000001", "sensor-000002", "sensor-000003"] {
        assert_eq!(of(&small, id), of(&big, id), "{id}");
    }
}

#[test]
fn seq_increments_by_one_per_device_from_first_seq() {
    let c = SimConfig {
        first_seq: 1_000,
        ..cfg(7, 3.0, 10, 1)
    };
    let mut by_device: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, p) in generate(&c) {
        let m = parse(&p);
        by_device.entry(m.device_id).or_default().push(m.seq);
    }
    assert_eq!(by_device.len(), 7);
    for (id, seqs) in by_device {
        let want: Vec<u64> = (1_000..1_030).collect();
        assert_eq!(seqs, want, "{id}");
    }
}

#[test]
fn every_generated_payload_passes_contract_validation_on_its_topic() {
    let c = SimConfig {
        fleet: "plant-7".into(),
        device_prefix: "line:a_".into(),
        ..cfg(10, 5.0, 20, 3)
    };
    let vc = ValidationConfig::default();
    let mut n = 0;
    for (topic, payload) in generate(&c) {
        let ts = parse(&payload).ts;
        let v = validate_payload(&payload, &topic, ts, &vc);
        assert!(v.rejected.is_empty(), "{topic}: {:?}", v.rejected);
        assert_eq!(v.accepted.len(), 1);
        let msg = &v.accepted[0];
        assert!(topic.starts_with("dt/plant-7/line:a_0000"), "{topic}");
        assert_eq!(msg.fw.as_deref().map(|f| f.starts_with("1.")), Some(true));
        assert_eq!(
            msg.metrics.keys().collect::<Vec<_>>(),
            ["battery", "humidity", "temperature"]
        );
        n += 1;
    }
    assert_eq!(n, 10 * 100);
}

#[test]
fn the_payload_is_the_canonical_json_of_the_contract() {
    let (topic, payload) = generate(&cfg(1, 1.0, 1, 1)).next().unwrap();
    assert_eq!(topic, "dt/fleet/sensor-000001/telemetry");
    let text = String::from_utf8(payload.clone()).unwrap();
    assert!(
        text.starts_with(r#"{"device_id":"sensor-000001","seq":0,"ts":"#),
        "{text}"
    );
    // Exactly what telemetry::Telemetry serializes to.
    assert_eq!(serde_json::to_vec(&parse(&payload)).unwrap(), payload);
}

#[test]
fn the_stream_is_in_time_order_and_ts_follow_the_schedule() {
    let c = cfg(50, 4.0, 5, 1);
    let msgs: Vec<_> = try_generate(&c).unwrap().collect();
    assert!(msgs.windows(2).all(|w| w[0].ts <= w[1].ts));
    let mut by_device: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for m in &msgs {
        by_device.entry(m.device_index).or_default().push(m.ts);
    }
    for (i, ts) in by_device {
        // Device i starts after its ramp slot (i / 500 s) within one interval (250 ms).
        let ramp = (i as i64 * 1000) / 500;
        let first = ts[0] - START_MS;
        assert!(
            (ramp..ramp + 250).contains(&first),
            "device {i}: first ts +{first} ms"
        );
        // 250 ms apart, and all within the 5 s duration.
        assert!(
            ts.windows(2).all(|w| w[1] - w[0] == 250),
            "device {i}: {ts:?}"
        );
        assert!(ts[ts.len() - 1] - ts[0] < 5_000);
    }
}

#[test]
fn rate_times_duration_gives_the_message_count() {
    for (devices, rate, secs, per_device) in [
        (20, 5.0, 2, 10),
        (3, 1.0, 30, 30),
        (4, 0.5, 9, 5), // ceil(4.5): messages at 0, 2, 4, 6, 8 s
        (2, 10.0, 1, 10),
        (1, 0.1, 60, 6),
    ] {
        let c = cfg(devices, rate, secs, 1);
        assert_eq!(messages_per_device(rate, c.duration), per_device);
        assert_eq!(
            generate(&c).count() as u64,
            devices as u64 * per_device,
            "{devices} devices x {rate}/s x {secs}s"
        );
    }
}

#[test]
fn an_invalid_config_generates_nothing_and_try_generate_says_why() {
    let c = SimConfig {
        rate: -1.0,
        ..cfg(1, 1.0, 1, 1)
    };
    assert_eq!(generate(&c).count(), 0);
    let err = try_generate(&c).unwrap_err().to_string();
    assert!(err.contains("rate"), "{err}");
}

fn example_fleet() -> SimConfig {
    let path = test_support::package_dir().join("fleet.example.toml");
    SimConfig {
        start_ms: Some(START_MS),
        ..SimConfig::load(&path).unwrap()
    }
}

#[test]
fn the_example_fleet_file_is_valid_and_every_payload_passes_the_contract() {
    let cfg = example_fleet();
    cfg.validate().unwrap();
    let layout = device_sim::fleet::FleetLayout::new(&cfg);
    let vc = ValidationConfig::default();
    let mut per_prefix: BTreeMap<String, u64> = BTreeMap::new();
    for (topic, payload) in generate(&cfg) {
        let ts = parse(&payload).ts;
        let v = validate_payload(&payload, &topic, ts, &vc);
        assert!(v.rejected.is_empty(), "{topic}: {:?}", v.rejected);
        let id = &v.accepted[0].device_id;
        let prefix = id.trim_end_matches(|c: char| c.is_ascii_digit()).to_owned();
        *per_prefix.entry(prefix).or_default() += 1;
    }
    // 2 minutes: env every 5 s, trucks every 1 s, presses every 200 ms.
    assert_eq!(per_prefix["env-"], 40 * 24);
    assert_eq!(per_prefix["truck-"], 10 * 120);
    assert_eq!(per_prefix["press-"], 5 * 600);
    assert_eq!(per_prefix.values().sum::<u64>(), layout.total_messages());
}

#[test]
fn jittered_messages_keep_their_order_and_stay_within_the_jitter() {
    let cfg = SimConfig::from_toml(
        r#"
        duration = "1m"
        [[device_type]]
        name = "j"
        count = 20
        interval = "1s"
        jitter = "300ms"
        [device_type.metrics.x]
        kind = "uniform"
        min = 0
        max = 1
        "#,
    )
    .map(|c| SimConfig {
        start_ms: Some(START_MS),
        ..c
    })
    .unwrap();
    let mut by_device: BTreeMap<usize, Vec<(u64, i64)>> = BTreeMap::new();
    for m in try_generate(&cfg).unwrap() {
        by_device
            .entry(m.device_index)
            .or_default()
            .push((m.k, m.ts));
    }
    let mut moved = 0;
    for (i, msgs) in by_device {
        assert_eq!(msgs.len(), 60);
        assert!(
            msgs.windows(2).all(|w| w[0].1 < w[1].1),
            "device {i} out of order"
        );
        // Slot k is at (message 0's slot + k s); the jitter moves a message by <= 300 ms.
        // Message 0's slot itself is unknown here, so compare consecutive gaps instead.
        for w in msgs.windows(2) {
            let gap = w[1].1 - w[0].1;
            assert!((400..=1600).contains(&gap), "device {i}: gap {gap} ms");
            moved += u64::from(gap != 1000);
        }
    }
    assert!(moved > 0, "no message was jittered");
}

#[test]
fn adding_a_device_type_at_the_end_changes_nothing_for_the_devices_before_it() {
    let one = example_fleet();
    let mut two = one.clone();
    let mut extra = two.device_types[0].clone();
    extra.id_prefix = Some("extra-".into());
    two.device_types.push(extra);
    let of = |cfg: &SimConfig| -> Vec<Vec<u8>> {
        generate(cfg)
            .filter(|(t, _)| t.contains("/truck-000007/"))
            .map(|(_, p)| p)
            .collect()
    };
    assert_eq!(of(&one), of(&two));
}

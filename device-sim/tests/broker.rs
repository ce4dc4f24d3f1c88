//! `run()` against real MQTT brokers: an embedded rumqttd started by each test on a free
//! loopback port, and the mosquitto that `tests/run.sh` (or
//! `source tests/setup/services.sh && services_up`) starts and names in
//! `IOTPIPE_TEST_MQTT`. The mosquitto test fails when that variable is missing: a test
//! that silently skips proves nothing.
//!
//! Every test checks deliveries with an independent subscriber (its own rumqttc client on
//! `dt/+/+/telemetry`, QoS 1, subscribed before the fleet starts), not with the
//! simulator's own counters. Fleets get a unique fleet name and device-id prefix, so
//! tests sharing a broker (in parallel, or with other crates' tests) do not see each
//! other's messages or kick each other's client ids.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use device_sim::{BrokerUrl, QoS, SimConfig, SimError, SimSummary};
use telemetry::{Telemetry, ValidationConfig, validate_payload};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use common::{START_MS, Subscriber, embedded_broker, free_port, mosquitto, never_shut_down};

// --- helpers ----------------------------------------------------------------------------

/// A small fleet with a unique fleet name and device-id prefix.
fn test_fleet(broker: BrokerUrl, qos: QoS) -> SimConfig {
    let tag = format!("{:08x}", rand::random::<u32>());
    SimConfig {
        broker,
        fleet: format!("test-{tag}"),
        device_prefix: format!("t{tag}-"),
        devices: 20,
        rate: 5.0,
        duration: Duration::from_secs(2),
        qos,
        seed: 7,
        start_ms: Some(START_MS),
        first_seq: 100,
        ..SimConfig::default()
    }
}

/// `(device_id -> received seqs)`, after checking that every payload satisfies the
/// contract on the topic it arrived on.
fn seqs_by_device(received: &[(String, Vec<u8>)]) -> BTreeMap<String, Vec<u64>> {
    let mut by_device: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (topic, payload) in received {
        let msg: Telemetry = serde_json::from_slice(payload).unwrap();
        let v = validate_payload(payload, topic, msg.ts, &ValidationConfig::default());
        assert!(v.rejected.is_empty(), "{topic}: {:?}", v.rejected);
        by_device.entry(msg.device_id).or_default().push(msg.seq);
    }
    for seqs in by_device.values_mut() {
        seqs.sort_unstable();
    }
    by_device
}

/// Everything a complete, healthy run must show.
fn assert_complete_delivery(cfg: &SimConfig, s: &SimSummary, received: &[(String, Vec<u8>)]) {
    let per_device = 10; // 5 msg/s x 2 s
    let expected = cfg.devices as u64 * per_device;
    assert_eq!(s.scheduled, expected, "{s:#?}");
    assert_eq!(s.sent, expected);
    assert_eq!(s.acknowledged, expected);
    assert_eq!(s.failed, 0);
    assert_eq!(
        received.len() as u64,
        s.sent,
        "subscriber count differs from sent"
    );

    let by_device = seqs_by_device(received);
    assert_eq!(by_device.len(), cfg.devices);
    let want: Vec<u64> = (cfg.first_seq..cfg.first_seq + per_device).collect();
    for (device, seqs) in &by_device {
        assert_eq!(seqs, &want, "{device}: gaps or duplicates");
        let ledger = &s.per_device[device];
        assert_eq!(ledger.first_seq, cfg.first_seq);
        assert_eq!(ledger.last_seq, Some(cfg.first_seq + per_device - 1));
        assert_eq!(
            (ledger.sent, ledger.acknowledged, ledger.failed),
            (per_device, per_device, 0)
        );
    }

    // What arrived is exactly the deterministic stream, byte for byte.
    let mut got: Vec<_> = received.to_vec();
    let mut want: Vec<_> = device_sim::generate(cfg).collect();
    got.sort();
    want.sort();
    assert!(got == want, "received payloads differ from generate()");

    // The schedule was kept: the last messages are due ~1.8 s in, plus ramp and phase.
    assert!(s.elapsed >= Duration::from_millis(1700), "{:?}", s.elapsed);
    assert!(s.elapsed <= Duration::from_secs(6), "{:?}", s.elapsed);
}

// --- tests --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_fleet_delivers_every_message_exactly_once_through_the_embedded_broker() {
    let broker = embedded_broker().await;
    let sub = Subscriber::start(&broker).await;
    let cfg = test_fleet(broker, QoS::AtLeastOnce);

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    let received = sub.wait_for(&cfg.fleet, summary.sent).await;
    assert_complete_delivery(&cfg, &summary, &received);
    assert!(summary.publish_latency_p50_ms.is_some());
    assert!(summary.publish_latency_p99_ms >= summary.publish_latency_p50_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_fleet_delivers_every_message_exactly_once_through_mosquitto() {
    let broker = mosquitto();
    let sub = Subscriber::start(&broker).await;
    let cfg = test_fleet(broker, QoS::AtLeastOnce);

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    let received = sub.wait_for(&cfg.fleet, summary.sent).await;
    assert_complete_delivery(&cfg, &summary, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_fleet_counts_written_messages_as_acknowledged() {
    let broker = embedded_broker().await;
    let sub = Subscriber::start(&broker).await;
    let cfg = test_fleet(broker, QoS::AtMostOnce);

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    // QoS 0 may lose messages in principle; on loopback nothing is lost.
    let received = sub.wait_for(&cfg.fleet, summary.sent).await;
    assert_complete_delivery(&cfg, &summary, &received);
    assert_eq!(summary.publish_latency_p50_ms, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_fast_with_advice() {
    // Nothing listens on a port that was just free.
    let cfg = SimConfig {
        broker: BrokerUrl::mqtt("127.0.0.1", free_port()),
        devices: 5,
        ..SimConfig::default()
    };
    let started = Instant::now();
    let err = device_sim::run(cfg, never_shut_down()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(matches!(err, SimError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("connection refused"), "{text}");
    assert!(text.contains("is a broker running?"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_fleet_early_and_every_scheduled_message_is_accounted_for() {
    let broker = embedded_broker().await;
    let sub = Subscriber::start(&broker).await;
    let cfg = SimConfig {
        duration: Duration::from_secs(600),
        ..test_fleet(broker, QoS::AtLeastOnce)
    };
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        sleep(Duration::from_millis(1500)).await;
        tx.send(true).unwrap();
        // Keep the sender until the run is over.
        sleep(Duration::from_secs(3600)).await;
    });

    let summary = device_sim::run(cfg.clone(), rx).await.unwrap();

    assert!(
        summary.elapsed < Duration::from_secs(5),
        "{:?}",
        summary.elapsed
    );
    let full = cfg.devices as u64 * summary.messages_per_device;
    assert!(
        summary.scheduled > 0 && summary.scheduled < full,
        "{summary:#?}"
    );
    assert_eq!(summary.scheduled, summary.acknowledged + summary.failed);
    let received = sub.wait_for(&cfg.fleet, summary.acknowledged).await;
    assert!(received.len() as u64 >= summary.acknowledged);
    // Every device published a gap-free prefix of its stream.
    for (device, seqs) in seqs_by_device(&received) {
        let ledger = &summary.per_device[&device];
        let last = ledger.last_seq.unwrap();
        let want: Vec<u64> = (ledger.first_seq..=last).collect();
        assert!(seqs.len() as u64 >= ledger.acknowledged);
        assert_eq!(seqs, want[..seqs.len()], "{device}");
    }
}

/// A TCP proxy that can stall every connection through it (a black hole: writes are
/// accepted, nothing is forwarded or acknowledged) and then cut them all at once, like a
/// network path that dies.
struct FlakyProxy {
    url: BrokerUrl,
    frozen: watch::Sender<bool>,
    cut: watch::Sender<u64>,
}

impl FlakyProxy {
    async fn start(upstream: &BrokerUrl) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = format!("{}:{}", upstream.host, upstream.port);
        let (frozen, _) = watch::channel(false);
        let (cut, _) = watch::channel(0u64);
        let (frozen_tx, cut_tx) = (frozen.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let mut frozen = frozen_tx.subscribe();
                let mut cut = cut_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let stalled = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        _ = frozen.wait_for(|f| *f) => true,
                        _ = cut.changed() => false,
                    };
                    if stalled {
                        // Stop forwarding but hold both sockets open until the cut.
                        let _ = cut.changed().await;
                    }
                    // Dropping both sockets resets the connections.
                });
            }
        });
        Self {
            url: BrokerUrl::mqtt("127.0.0.1", port),
            frozen,
            cut,
        }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Drops every connection; new ones are forwarded normally.
    fn cut_all(&self) {
        self.frozen.send_replace(false);
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stalls_and_drops_mid_run_loses_no_qos1_message() {
    let broker = embedded_broker().await;
    let sub = Subscriber::start(&broker).await;
    let proxy = FlakyProxy::start(&broker).await;
    let cfg = SimConfig {
        rate: 20.0,
        duration: Duration::from_secs(3),
        ..test_fleet(proxy.url.clone(), QoS::AtLeastOnce)
    };
    let run = tokio::spawn(device_sim::run(cfg.clone(), never_shut_down()));
    sleep(Duration::from_millis(1000)).await;
    // ~0.4 s of publishes are written but never reach the broker, then the link drops.
    proxy.freeze();
    sleep(Duration::from_millis(400)).await;
    proxy.cut_all();

    let summary = run.await.unwrap().unwrap();

    let expected = cfg.devices as u64 * 60;
    assert!(
        summary.connection_errors >= cfg.devices as u64,
        "{summary:#?}"
    );
    // The stalled messages were unacknowledged at the cut: they went out again.
    assert!(summary.republished > 0, "{summary:#?}");
    assert_eq!(summary.scheduled, expected);
    assert_eq!(summary.acknowledged, expected, "{summary:#?}");
    assert_eq!(summary.failed, 0);
    // At least once: every (device, seq) arrived; duplicates are allowed.
    let received = sub.wait_for(&cfg.fleet, expected).await;
    let mut distinct: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for (device, seqs) in seqs_by_device(&received) {
        distinct.entry(device).or_default().extend(seqs);
    }
    assert_eq!(distinct.len(), cfg.devices);
    for (device, seqs) in distinct {
        let want: BTreeSet<u64> = (cfg.first_seq..cfg.first_seq + 60).collect();
        assert_eq!(seqs, want, "{device}");
    }
}

/// A TCP proxy that forwards what clients send at once and what the broker answers at
/// 4 bytes (one MQTT 3.1.1 PUBACK) per 10 ms: a broker that keeps acknowledging, slower
/// than the devices publish.
async fn slow_answers_proxy(upstream: &BrokerUrl) -> BrokerUrl {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = format!("{}:{}", upstream.host, upstream.port);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
            });
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    sleep(Duration::from_millis(10)).await;
                }
            });
        }
    });
    BrokerUrl::mqtt("127.0.0.1", port)
}

/// A device waits for a broker that is slow but still acknowledging, however long past
/// `--ack-timeout` that takes: 400 messages in 2 s against ~100 PUBACKs a second is ~4 s
/// of acknowledgements, where the device's last message was due at 2 s and the ack
/// timeout is 1 s. (Before, the device gave up 1 s after its last message was due and
/// counted about 100 as failed, though the broker had most of them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_that_keeps_acknowledging_is_waited_for() {
    let broker = embedded_broker().await;
    let sub = Subscriber::start(&broker).await;
    let proxy = slow_answers_proxy(&broker).await;
    let cfg = SimConfig {
        devices: 1,
        rate: 200.0,
        duration: Duration::from_secs(2),
        ack_timeout: Duration::from_secs(1),
        ..test_fleet(proxy, QoS::AtLeastOnce)
    };

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    assert_eq!(summary.scheduled, 400, "{summary:#?}");
    assert_eq!(summary.failed, 0, "{summary:#?}");
    assert_eq!(summary.acknowledged, 400, "{summary:#?}");
    // The acknowledgements took longer than the schedule plus the ack timeout.
    assert!(
        summary.elapsed > Duration::from_millis(3500),
        "{summary:#?}"
    );
    let received = sub.wait_for(&cfg.fleet, 400).await;
    let seqs = seqs_by_device(&received);
    let want: Vec<u64> = (cfg.first_seq..cfg.first_seq + 400).collect();
    assert_eq!(seqs.values().next(), Some(&want));
}

/// A broker that goes silent (connections open, nothing answered) costs what was
/// outstanding, and no more than `--ack-timeout` past the schedule: the devices give up,
/// count it as failed, and the run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_given_up_on_after_the_ack_timeout() {
    let broker = embedded_broker().await;
    let proxy = FlakyProxy::start(&broker).await;
    let cfg = SimConfig {
        devices: 2,
        rate: 20.0,
        duration: Duration::from_secs(2),
        ack_timeout: Duration::from_secs(1),
        ..test_fleet(proxy.url.clone(), QoS::AtLeastOnce)
    };
    let run = tokio::spawn(device_sim::run(cfg.clone(), never_shut_down()));
    sleep(Duration::from_millis(1000)).await;
    proxy.freeze();

    let summary = run.await.unwrap().unwrap();

    assert_eq!(summary.scheduled, 80, "{summary:#?}");
    assert!(summary.acknowledged > 0, "{summary:#?}");
    assert!(summary.failed >= 2 * 15, "{summary:#?}");
    assert_eq!(summary.scheduled, summary.acknowledged + summary.failed);
    // The last message was due at ~1.95 s (plus the ramp): given up on 1 s later.
    assert!(summary.elapsed < Duration::from_secs(5), "{summary:#?}");
    proxy.cut_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_drops_its_oldest_messages_beyond_the_offline_buffer() {
    let broker = embedded_broker().await;
    let sub = Subscriber::start(&broker).await;
    let proxy = FlakyProxy::start(&broker).await;
    let cfg = SimConfig {
        devices: 4,
        rate: 100.0,
        duration: Duration::from_secs(4),
        offline_buffer: 20,
        ..test_fleet(proxy.url.clone(), QoS::AtLeastOnce)
    };
    let run = tokio::spawn(device_sim::run(cfg.clone(), never_shut_down()));
    sleep(Duration::from_millis(500)).await;
    // 2.5 s offline at 100 msg/s: ~250 messages per device fall due. The MQTT client holds
    // ~116 (100 in flight, 16 queued; the in-flight ones are republished); of the rest,
    // all but the newest 20 are dropped (~130 per device, more while reconnecting).
    proxy.freeze();
    sleep(Duration::from_millis(2500)).await;
    proxy.cut_all();

    let summary = run.await.unwrap().unwrap();

    let expected = cfg.devices as u64 * 400;
    assert_eq!(summary.scheduled, expected, "{summary:#?}");
    assert!(summary.dropped >= 4 * 50, "{summary:#?}");
    assert!(summary.republished > 0, "{summary:#?}");
    // Nothing but the dropped messages is missing.
    assert_eq!(summary.failed, summary.dropped, "{summary:#?}");
    assert_eq!(summary.acknowledged, expected - summary.dropped);
    let ledger_dropped: u64 = summary.per_device.values().map(|l| l.dropped).sum();
    assert_eq!(ledger_dropped, summary.dropped);

    let received = sub.wait_for(&cfg.fleet, summary.acknowledged).await;
    let mut distinct: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for (device, seqs) in seqs_by_device(&received) {
        distinct.entry(device).or_default().extend(seqs);
    }
    for (device, seqs) in &distinct {
        let ledger = &summary.per_device[device];
        assert_eq!(seqs.len() as u64, 400 - ledger.dropped, "{device}");
        // The gap is one run of consecutive seqs (the oldest of the backlog), and the
        // stream resumes with the newest messages.
        let missing: Vec<u64> = (cfg.first_seq..cfg.first_seq + 400)
            .filter(|s| !seqs.contains(s))
            .collect();
        assert!(
            missing.windows(2).all(|w| w[1] == w[0] + 1),
            "{device}: missing {missing:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_device_types_publishes_each_types_schedule() {
    let broker = embedded_broker().await;
    let sub = Subscriber::start(&broker).await;
    let base = test_fleet(broker, QoS::AtLeastOnce);
    let toml = format!(
        r#"
        duration = "2s"
        [[device_type]]
        name = "fast"
        id_prefix = "{p}f-"
        count = 3
        interval = "200ms"
        [device_type.metrics.x]
        kind = "gaussian"
        mean = {{ min = 0, max = 10 }}
        sd = 1
        [[device_type]]
        name = "slow"
        id_prefix = "{p}s-"
        count = 3
        interval = "500ms"
        jitter = "100ms"
        firmware = [{{ version = "9.9.9", share = 1 }}]
        [device_type.metrics.pos]
        kind = "gps_track"
        lat = 48.1
        lon = 11.6
        speed_mps = 15
        "#,
        p = base.device_prefix
    );
    let cfg = SimConfig {
        device_types: SimConfig::from_toml(&toml).unwrap().device_types,
        duration: Duration::from_secs(2),
        ..base
    };

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    assert_eq!(summary.devices, 6);
    assert_eq!(summary.scheduled, 3 * 10 + 3 * 4, "{summary:#?}");
    assert_eq!(summary.acknowledged, summary.scheduled);
    let received = sub.wait_for(&cfg.fleet, summary.sent).await;
    assert_eq!(received.len() as u64, summary.sent);
    let by_device = seqs_by_device(&received);
    // Match the whole type prefix: the random run prefix itself may end in `f`.
    let fast = format!("{}f-", cfg.device_prefix);
    for (device, seqs) in by_device {
        let n = if device.starts_with(&fast) { 10 } else { 4 };
        assert_eq!(seqs, (100..100 + n).collect::<Vec<u64>>(), "{device}");
    }
}

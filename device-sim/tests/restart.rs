//! A broker restart in the middle of a QoS 1 run loses nothing: each test starts a
//! mosquitto of its own (the `mosquitto` binary on PATH, persistence on), stops it with
//! SIGTERM mid-run, starts it again on the same port, and counts the distinct
//! (device, seq) an independent subscriber with a persistent session received.
//!
//! Why this proves the simulator's side: a QoS 1 message the broker acknowledged before
//! the restart is in the subscriber's persisted session (mosquitto saves it on SIGTERM);
//! one it had not acknowledged is republished by the device after its reconnect. A
//! SIGKILL would also lose what the broker acknowledged but had not saved yet — that is
//! the broker's durability, not the publisher's.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use device_sim::tls::TlsConfig;
use device_sim::{MqttVersion, QoS, SimConfig};
use telemetry::Telemetry;
use tokio::time::sleep;

use common::{
    OwnMosquitto, START_MS, SubOptions, Subscriber, never_shut_down, test_certs, test_tls_client,
};

async fn restart_mid_run_loses_nothing(tls: bool, clean_session: bool, mqtt_version: MqttVersion) {
    let mut broker = OwnMosquitto::start(tls).await;
    let tag = format!("{:08x}", rand::random::<u32>());
    let fleet = format!("restart-{tag}");
    // A persistent session: what arrives while the subscriber is cut off by the restart
    // is queued for it, on disk.
    let sub = Subscriber::start_with(
        &broker.url,
        &format!("restart-sub-{tag}"),
        SubOptions {
            tls: tls.then(test_tls_client),
            clean_session: false,
            filter: format!("dt/{fleet}/+/telemetry"),
        },
    )
    .await;
    let tls_cfg = if tls {
        let d = test_certs();
        TlsConfig {
            ca: Some(d.join("ca.pem")),
            cert: Some(d.join("client.pem")),
            key: Some(d.join("client.key")),
            ..TlsConfig::default()
        }
    } else {
        TlsConfig::default()
    };
    let (devices, per_device) = (20u64, 60u64);
    let cfg = SimConfig {
        broker: broker.url.clone(),
        fleet: fleet.clone(),
        device_prefix: format!("r{tag}-"),
        devices: devices as usize,
        rate: 10.0,
        duration: Duration::from_secs(6),
        qos: QoS::AtLeastOnce,
        seed: 3,
        start_ms: Some(START_MS),
        clean_session,
        mqtt_version,
        // Reconnecting takes up to a few seconds of backoff: wait for the last PUBACKs.
        ack_timeout: Duration::from_secs(15),
        tls: tls_cfg,
        ..SimConfig::default()
    };
    let run = tokio::spawn(device_sim::run(cfg.clone(), never_shut_down()));
    sleep(Duration::from_millis(2000)).await;
    broker.stop().await;
    // Down for a second: every device and the subscriber lose their connection.
    sleep(Duration::from_millis(1000)).await;
    broker.restart().await;

    let summary = run.await.unwrap().unwrap();

    let expected = devices * per_device;
    assert!(summary.connection_errors >= devices, "{summary:#?}");
    assert_eq!(summary.scheduled, expected, "{summary:#?}");
    assert_eq!(summary.acknowledged, expected, "{summary:#?}");
    assert_eq!((summary.failed, summary.dropped), (0, 0));

    let received = sub.wait_for(&fleet, expected).await;
    let mut distinct: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (_, payload) in &received {
        let msg: Telemetry = serde_json::from_slice(payload).unwrap();
        distinct.entry(msg.device_id).or_default().insert(msg.seq);
    }
    assert_eq!(distinct.len() as u64, devices, "devices seen");
    let want: BTreeSet<u64> = (0..per_device).collect();
    for (device, seqs) in &distinct {
        let missing: Vec<_> = want.difference(seqs).collect();
        assert!(missing.is_empty(), "{device} lost seqs {missing:?}");
    }
    // At least once: duplicates (republished after the reconnect) are allowed.
    assert!(received.len() as u64 >= expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_no_qos1_message() {
    restart_mid_run_loses_nothing(false, true, MqttVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_no_qos1_message_with_persistent_device_sessions() {
    restart_mid_run_loses_nothing(false, false, MqttVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_no_qos1_message_over_mutual_tls() {
    restart_mid_run_loses_nothing(true, true, MqttVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_no_qos1_message_with_mqtt5_persistent_sessions() {
    restart_mid_run_loses_nothing(false, false, MqttVersion::V5).await;
}

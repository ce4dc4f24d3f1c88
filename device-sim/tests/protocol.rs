//! Protocol options against the set-up's mosquitto (`IOTPIPE_TEST_MQTT`,
//! `IOTPIPE_TEST_MQTTS`): MQTT 5 at QoS 0 and 1, persistent sessions, keep-alive, and the
//! Basic Ingest topic. The tests fail when the brokers are not configured.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use device_sim::tls::TlsConfig;
use device_sim::{BrokerUrl, MqttVersion, QoS, SimConfig};
use telemetry::{Telemetry, ValidationConfig, validate_payload};
use tokio::time::Instant;

use common::{
    START_MS, SubOptions, Subscriber, mosquitto, mosquitto_tls, never_shut_down, test_certs,
};

fn fleet(broker: BrokerUrl, version: MqttVersion, qos: QoS) -> SimConfig {
    let tag = format!("{:08x}", rand::random::<u32>());
    SimConfig {
        broker,
        fleet: format!("proto-{tag}"),
        device_prefix: format!("p{tag}-"),
        devices: 10,
        rate: 5.0,
        duration: Duration::from_secs(2),
        qos,
        mqtt_version: version,
        seed: 5,
        start_ms: Some(START_MS),
        ..SimConfig::default()
    }
}

/// Checks that `received` is exactly the configured stream, once each.
fn assert_exactly_the_stream(cfg: &SimConfig, received: &[(String, Vec<u8>)]) {
    let mut got: Vec<_> = received.to_vec();
    let mut want: Vec<_> = device_sim::generate(cfg).collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "message count");
    assert!(got == want, "received payloads differ from generate()");
}

async fn mqtt5_run(broker: BrokerUrl, qos: QoS) {
    let sub = Subscriber::start(&broker).await;
    let mut cfg = fleet(broker.clone(), MqttVersion::V5, qos);
    if broker.scheme == device_sim::Scheme::Mqtts {
        let d = test_certs();
        cfg.tls = TlsConfig {
            ca: Some(d.join("ca.pem")),
            cert: Some(d.join("client.pem")),
            key: Some(d.join("client.key")),
            ..TlsConfig::default()
        };
    }

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    assert_eq!(summary.mqtt_version, MqttVersion::V5);
    assert_eq!(summary.scheduled, 100, "{summary:#?}");
    assert_eq!(summary.acknowledged, 100, "{summary:#?}");
    assert_eq!(summary.failed, 0);
    if qos == QoS::AtLeastOnce {
        assert!(summary.publish_latency_p50_ms.is_some());
    }
    let received = sub.wait_for(&cfg.fleet, summary.sent).await;
    assert_exactly_the_stream(&cfg, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_qos1_fleet_delivers_every_message_through_mosquitto() {
    mqtt5_run(mosquitto(), QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_qos0_fleet_delivers_every_message_through_mosquitto() {
    mqtt5_run(mosquitto(), QoS::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_qos1_fleet_delivers_every_message_over_mutual_tls() {
    mqtt5_run(mosquitto_tls(), QoS::AtLeastOnce).await;
}

/// Connects as `client_id` without a clean session and reports whether the broker still
/// had one (`session_present`), then ends that session.
async fn session_present(broker: &BrokerUrl, client_id: &str, version: MqttVersion) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    match version {
        MqttVersion::V3_1_1 => {
            let mut o = rumqttc::MqttOptions::new(client_id, broker.host.clone(), broker.port);
            o.set_clean_session(false);
            let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
            loop {
                let ev = tokio::time::timeout_at(deadline, el.poll()).await.unwrap();
                if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) = ev {
                    return ack.session_present;
                }
            }
        }
        MqttVersion::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, broker.host.clone(), broker.port);
            o.set_clean_start(false)
                .set_session_expiry_interval(Some(0));
            let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
            loop {
                let ev = tokio::time::timeout_at(deadline, el.poll()).await.unwrap();
                if let Ok(rumqttc::v5::Event::Incoming(
                    rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack),
                )) = ev
                {
                    return ack.session_present;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_outlive_the_run_and_clean_ones_do_not() {
    let broker = mosquitto();
    for version in [MqttVersion::V3_1_1, MqttVersion::V5] {
        for clean_session in [true, false] {
            let cfg = SimConfig {
                devices: 2,
                rate: 2.0,
                duration: Duration::from_secs(1),
                clean_session,
                ..fleet(broker.clone(), version, QoS::AtLeastOnce)
            };
            let summary = device_sim::run(cfg.clone(), never_shut_down())
                .await
                .unwrap();
            assert_eq!(summary.failed, 0, "{summary:#?}");
            let id = device_sim::schedule::device_id(&cfg.device_prefix, 0);
            assert_eq!(
                session_present(&broker, &id, version).await,
                !clean_session,
                "MQTT {version}, clean_session {clean_session}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_keep_alive_holds_quiet_connections_open_with_pings() {
    let broker = mosquitto();
    // One message every 4 s, keep-alive 1 s: without PINGREQs the broker would drop every
    // device after 1.5 s of silence.
    let cfg = SimConfig {
        devices: 3,
        rate: 0.25,
        duration: Duration::from_secs(8),
        keep_alive: Duration::from_secs(1),
        ..fleet(broker, MqttVersion::V3_1_1, QoS::AtLeastOnce)
    };
    let summary = device_sim::run(cfg, never_shut_down()).await.unwrap();
    assert_eq!(summary.acknowledged, 6, "{summary:#?}");
    assert_eq!(summary.connection_errors, 0, "{summary:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_ingest_publishes_behind_the_rule_prefix() {
    let broker = mosquitto();
    let mut cfg = fleet(broker.clone(), MqttVersion::V3_1_1, QoS::AtLeastOnce);
    cfg.basic_ingest = Some("telemetry_ingest".into());
    // `$` topics do not match a leading wildcard: subscribe to the prefix itself.
    let sub = Subscriber::start_with(
        &broker,
        &format!("bi-sub-{:08x}", rand::random::<u32>()),
        SubOptions {
            filter: format!("$aws/rules/telemetry_ingest/dt/{}/+/telemetry", cfg.fleet),
            ..SubOptions::default()
        },
    )
    .await;

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    let received = sub.wait_for(&cfg.fleet, summary.sent).await;
    assert_eq!(received.len(), 100);
    let mut seqs: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (topic, payload) in &received {
        // The rule sees the topic without the prefix: that is what ingest validates.
        let plain = topic
            .strip_prefix("$aws/rules/telemetry_ingest/")
            .unwrap_or_else(|| panic!("{topic}"));
        let msg: Telemetry = serde_json::from_slice(payload).unwrap();
        let v = validate_payload(payload, plain, msg.ts, &ValidationConfig::default());
        assert!(v.rejected.is_empty(), "{plain}: {:?}", v.rejected);
        seqs.entry(msg.device_id).or_default().insert(msg.seq);
    }
    assert_eq!(seqs.len(), 10);
    assert_exactly_the_stream(&cfg, &received);
    // Rule names are checked.
    cfg.basic_ingest = Some("no/slashes".into());
    assert!(cfg.validate().is_err());
}

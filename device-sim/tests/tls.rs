//! Mutual TLS against the mosquitto of the test set-up (`IOTPIPE_TEST_MQTTS`, listener
//! with `require_certificate true`, certificates from the set-up's test CA in
//! `IOTPIPE_TEST_CERTS`). The tests fail when those are missing.
//!
//! Deliveries are checked by an independent subscriber: the tests' own rumqttc client
//! with its own rustls config and the set-up's client certificate.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use device_sim::tls::TlsConfig;
use device_sim::{BrokerUrl, QoS, SimConfig, SimError};
use telemetry::Telemetry;

use common::{START_MS, Subscriber, free_port, mosquitto_tls, never_shut_down, test_certs};

fn tls_fleet(broker: BrokerUrl, tls: TlsConfig) -> SimConfig {
    let tag = format!("{:08x}", rand::random::<u32>());
    SimConfig {
        broker,
        fleet: format!("tls-{tag}"),
        device_prefix: format!("s{tag}-"),
        devices: 20,
        rate: 5.0,
        duration: Duration::from_secs(2),
        qos: QoS::AtLeastOnce,
        seed: 11,
        start_ms: Some(START_MS),
        tls,
        ..SimConfig::default()
    }
}

/// The set-up's CA and its one client certificate, shared by every device.
fn shared_cert() -> TlsConfig {
    let d = test_certs();
    TlsConfig {
        ca: Some(d.join("ca.pem")),
        cert: Some(d.join("client.pem")),
        key: Some(d.join("client.key")),
        ..TlsConfig::default()
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client certificate for `device_id` signed by the test CA, in the layout
/// `infra/provision-devices.sh` writes: `dir/<device_id>/{cert.pem,private.key}`.
fn provision(dir: &Path, device_id: &str) {
    let ca = test_certs();
    let d = dir.join(device_id);
    std::fs::create_dir_all(&d).unwrap();
    let (key, csr, cert, ext) = (
        d.join("private.key"),
        d.join("req.csr"),
        d.join("cert.pem"),
        d.join("ext.cnf"),
    );
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
        "-subj",
        &format!("/CN={device_id}"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca.join("ca.pem")),
        "-CAkey",
        &s(&ca.join("ca.key")),
        "-CAcreateserial",
        "-CAserial",
        &s(&d.join("ca.srl")),
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]);
}

/// Distinct seqs per device, after checking the payloads against the data contract.
fn distinct_seqs(received: &[(String, Vec<u8>)]) -> BTreeMap<String, BTreeSet<u64>> {
    let mut by_device: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (_, payload) in received {
        let msg: Telemetry = serde_json::from_slice(payload).unwrap();
        by_device.entry(msg.device_id).or_default().insert(msg.seq);
    }
    by_device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_fleet_with_a_shared_client_certificate_delivers_every_message_over_mutual_tls() {
    let broker = mosquitto_tls();
    let sub = Subscriber::start(&broker).await;
    let cfg = tls_fleet(broker, shared_cert());

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    let expected = 20 * 10;
    assert_eq!(summary.scheduled, expected, "{summary:#?}");
    assert_eq!(summary.acknowledged, expected);
    assert_eq!(summary.failed, 0);
    assert_eq!(summary.connection_errors, 0);
    let received = sub.wait_for(&cfg.fleet, summary.sent).await;
    assert_eq!(received.len() as u64, summary.sent);
    let mut got = received.clone();
    let mut want: Vec<_> = device_sim::generate(&cfg).collect();
    got.sort();
    want.sort();
    assert!(got == want, "received payloads differ from generate()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_device_certificates_from_a_provisioned_directory_connect_every_device() {
    let broker = mosquitto_tls();
    let sub = Subscriber::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tls_fleet(
        broker,
        TlsConfig {
            ca: Some(test_certs().join("ca.pem")),
            cert_dir: Some(dir.path().to_owned()),
            ..TlsConfig::default()
        },
    );
    cfg.devices = 3;
    for i in 0..3 {
        provision(
            dir.path(),
            &device_sim::schedule::device_id(&cfg.device_prefix, i),
        );
    }

    let summary = device_sim::run(cfg.clone(), never_shut_down())
        .await
        .unwrap();

    assert_eq!(summary.acknowledged, 30, "{summary:#?}");
    assert_eq!(summary.failed, 0);
    let received = sub.wait_for(&cfg.fleet, 30).await;
    let by_device = distinct_seqs(&received);
    assert_eq!(by_device.len(), 3);
    assert!(by_device.values().all(|s| s.len() == 10), "{by_device:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_a_client_certificate_is_refused_with_advice() {
    let cfg = tls_fleet(
        mosquitto_tls(),
        TlsConfig {
            ca: Some(test_certs().join("ca.pem")),
            ..TlsConfig::default()
        },
    );
    let err = device_sim::run(cfg, never_shut_down()).await.unwrap_err();
    assert!(matches!(err, SimError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("TLS handshake failed"), "{text}");
    assert!(text.contains("refused the client certificate"), "{text}");
    assert!(text.contains("--cert"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        dir.path().join("other-ca.key").to_str().unwrap(),
        "-out",
        other.to_str().unwrap(),
        "-subj",
        "/CN=another test CA",
        "-days",
        "2",
    ]);
    let cfg = tls_fleet(
        mosquitto_tls(),
        TlsConfig {
            ca: Some(other),
            ..shared_cert()
        },
    );
    let err = device_sim::run(cfg, never_shut_down()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SimError::Connect { .. }), "{err:?}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(
        text.contains("not signed by the CA given with --ca"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_files_are_reported_before_connecting() {
    // Nothing listens here: each error must come from the files, not the network.
    let broker: BrokerUrl = format!("mqtts://127.0.0.1:{}", free_port())
        .parse()
        .unwrap();
    let d = test_certs();
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases = [
        (
            TlsConfig {
                key: Some(d.join("server.key")),
                ..shared_cert()
            },
            "key does not belong to the certificate",
        ),
        (
            TlsConfig {
                cert: Some(dir.path().join("missing.pem")),
                ..shared_cert()
            },
            "check the path",
        ),
        (
            TlsConfig {
                ca: Some(not_pem.clone()),
                ..shared_cert()
            },
            "no PEM section",
        ),
        (
            TlsConfig {
                key: Some(d.join("client.pem")),
                ..shared_cert()
            },
            "no PEM section",
        ),
        (
            TlsConfig {
                ca: Some(d.join("ca.pem")),
                cert_dir: Some(dir.path().to_owned()),
                ..TlsConfig::default()
            },
            "no certificate and key for 20 device(s)",
        ),
    ];
    for (tls, want) in cases {
        let cfg = tls_fleet(broker.clone(), tls.clone());
        let err = device_sim::run(cfg, never_shut_down()).await.unwrap_err();
        assert!(matches!(err, SimError::Tls { .. }), "{tls:?}: {err:?}");
        assert!(err.to_string().contains(want), "{tls:?}: {err}");
    }
    // TLS options on a plain broker are a mistake worth naming.
    let cfg = tls_fleet(BrokerUrl::mqtt("127.0.0.1", 1883), shared_cert());
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("mqtts://"), "{err}");
}

/// The "done when", scaled to a test: the `device-sim` binary over mutual TLS with
/// `--summary-json`; an independent subscriber receives every message it reports `sent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_over_mutual_tls_delivers_every_sent_message_to_an_independent_subscriber() {
    let broker = mosquitto_tls();
    let sub = Subscriber::start(&broker).await;
    let d = test_certs();
    let tag = format!("{:08x}", rand::random::<u32>());
    let fleet = format!("cli-tls-{tag}");
    let devices = 300;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_device-sim"))
        .args(["--broker", &broker.to_string()])
        .args(["--ca", d.join("ca.pem").to_str().unwrap()])
        .args(["--cert", d.join("client.pem").to_str().unwrap()])
        .args(["--key", d.join("client.key").to_str().unwrap()])
        .args(["--fleet", &fleet, "--device-prefix", &format!("c{tag}-")])
        .args(["--devices", &devices.to_string(), "--rate", "1"])
        .args([
            "--duration",
            "5s",
            "--qos",
            "1",
            "--summary-json",
            "--quiet",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let sent = summary["sent"].as_u64().unwrap();
    assert_eq!(sent, devices * 5, "{summary}");
    assert_eq!(summary["acknowledged"].as_u64(), Some(sent));
    assert_eq!(summary["failed"].as_u64(), Some(0));

    let received = sub.wait_for(&fleet, sent).await;
    assert_eq!(received.len() as u64, sent);
    let distinct: usize = distinct_seqs(&received).values().map(BTreeSet::len).sum();
    assert_eq!(distinct as u64, sent);
}

//! Helpers shared by the integration tests: brokers and an independent subscriber.
//!
//! Each test crate uses a different subset of these.
#![allow(dead_code)]
// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use device_sim::BrokerUrl;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

/// Event-time origin of every test fleet: payloads are then comparable with `generate()`.
pub const START_MS: i64 = 1_764_072_000_000;

// --- brokers ----------------------------------------------------------------------------

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts rumqttd on a free loopback port (in its own thread, for the life of the test
/// process) and returns its URL once it accepts connections.
pub async fn embedded_broker() -> BrokerUrl {
    use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

    let port = free_port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 128 * 1024,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some([("1".to_owned(), server)].into_iter().collect()),
        ..Config::default()
    };
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(e) = broker.start() {
            eprintln!("embedded rumqttd on {listen} stopped: {e}");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "embedded rumqttd did not listen on {listen}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    BrokerUrl::mqtt("127.0.0.1", port)
}

/// The mosquitto of the test set-up; fails the test when it is not configured.
pub fn mosquitto() -> BrokerUrl {
    let Ok(url) = std::env::var("IOTPIPE_TEST_MQTT") else {
        panic!("IOTPIPE_TEST_MQTT not set: run tests/run.sh (it starts mosquitto)");
    };
    url.parse()
        .unwrap_or_else(|e| panic!("IOTPIPE_TEST_MQTT={url:?} is not a broker URL: {e}"))
}

// --- the independent subscriber ---------------------------------------------------------

/// `(topic, payload)` pairs as they arrived.
pub type Received = Vec<(String, Vec<u8>)>;

/// A separate MQTT client subscribed to every telemetry topic, recording what arrives.
pub struct Subscriber {
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

/// How a [`Subscriber`] connects.
pub struct SubOptions {
    /// Its TLS client config for an `mqtts://` broker ([`tls_client`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `false`: a persistent session (the broker queues QoS 1 messages while the
    /// subscriber is away, and keeps the subscription across broker restarts with
    /// persistence on).
    pub clean_session: bool,
    /// The topic filter.
    pub filter: String,
}

impl Default for SubOptions {
    fn default() -> Self {
        Self {
            tls: None,
            clean_session: true,
            filter: telemetry::topic::TOPIC_FILTER.to_owned(),
        }
    }
}

/// A rustls client config of the tests' own (not device-sim's): trusts `ca`, presents
/// `cert`/`key` when given. aws-lc-rs, like device-sim.
pub fn tls_client(
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// The test CA's directory (`IOTPIPE_TEST_CERTS`: ca.pem, client.pem, client.key, ...);
/// fails the test when it is not configured.
pub fn test_certs() -> std::path::PathBuf {
    let Ok(dir) = std::env::var("IOTPIPE_TEST_CERTS") else {
        panic!("IOTPIPE_TEST_CERTS not set: run tests/run.sh (it makes the test CA)");
    };
    dir.into()
}

/// The mutual-TLS mosquitto of the test set-up; fails the test when it is not configured.
pub fn mosquitto_tls() -> BrokerUrl {
    let Ok(url) = std::env::var("IOTPIPE_TEST_MQTTS") else {
        panic!("IOTPIPE_TEST_MQTTS not set: run tests/run.sh (it starts mosquitto with mTLS)");
    };
    url.parse()
        .unwrap_or_else(|e| panic!("IOTPIPE_TEST_MQTTS={url:?} is not a broker URL: {e}"))
}

/// A TLS subscriber config with the test set-up's client certificate.
pub fn test_tls_client() -> Arc<rustls::ClientConfig> {
    let d = test_certs();
    tls_client(
        &d.join("ca.pem"),
        Some((&d.join("client.pem"), &d.join("client.key"))),
    )
}

impl Subscriber {
    /// Connects, subscribes to `dt/+/+/telemetry` at QoS 1 and returns once the broker
    /// has acknowledged the subscription.
    pub async fn start(broker: &BrokerUrl) -> Self {
        let tls = (broker.scheme == device_sim::Scheme::Mqtts).then(test_tls_client);
        Self::start_with(
            broker,
            &format!("test-sub-{:08x}", rand::random::<u32>()),
            SubOptions {
                tls,
                ..SubOptions::default()
            },
        )
        .await
    }

    /// [`Self::start`] with a given client id and options.
    pub async fn start_with(broker: &BrokerUrl, id: &str, o: SubOptions) -> Self {
        let mut opts = MqttOptions::new(id, broker.host.clone(), broker.port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(o.clean_session)
            .set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some(tls) = o.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        client
            .subscribe(o.filter.as_str(), rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let event = tokio::time::timeout_at(deadline, eventloop.poll())
                .await
                .expect("no SUBACK within 10 s")
                .unwrap_or_else(|e| panic!("subscriber cannot connect to {broker}: {e}"));
            if let Event::Incoming(Packet::SubAck(_)) = event {
                break;
            }
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let task = tokio::spawn(async move {
            // Keep the client alive as long as the loop runs.
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push((p.topic, p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("subscriber: {e}; reconnecting");
                        sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Self { received, task }
    }

    /// The messages of `fleet` received so far (also behind a Basic Ingest prefix).
    pub fn of_fleet(&self, fleet: &str) -> Vec<(String, Vec<u8>)> {
        let part = format!("dt/{fleet}/");
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.starts_with(&part) || t.contains(&format!("/{part}")))
            .cloned()
            .collect()
    }

    /// Waits until `fleet` has at least `n` messages (or 10 s pass), then a little
    /// longer so that extra or duplicate deliveries would show, and returns them.
    pub async fn wait_for(&self, fleet: &str, n: u64) -> Vec<(String, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while (self.of_fleet(fleet).len() as u64) < n && Instant::now() < deadline {
            sleep(Duration::from_millis(20)).await;
        }
        sleep(Duration::from_millis(300)).await;
        self.of_fleet(fleet)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A shutdown signal that never fires.
pub fn never_shut_down() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    // Keep the sender alive for the whole test process: a dropped sender means "never".
    std::mem::forget(tx);
    rx
}

// --- a mosquitto of the test's own, to restart ------------------------------------------

/// A mosquitto started by the test itself (the `mosquitto` binary on PATH) on a free
/// loopback port, with persistence on so that subscribers' persistent sessions and queued
/// QoS 1 messages survive a restart; plain or mutual TLS (the set-up's test CA).
pub struct OwnMosquitto {
    /// Its URL (`mqtt://` or `mqtts://127.0.0.1:PORT`); the same across restarts.
    pub url: BrokerUrl,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnMosquitto {
    /// Writes the config and starts the broker; returns once it accepts connections. A port
    /// taken between `free_port` and the broker's bind (another test's broker restarting on
    /// it, or a client's ephemeral port) is replaced by another, a few times.
    pub async fn start(tls: bool) -> Self {
        let mut broker = Self {
            url: "mqtt://127.0.0.1:1".parse().unwrap(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        for attempt in 1.. {
            let port = free_port();
            let d = broker.dir.path().display();
            let mut conf = format!(
                "# Written by device-sim's tests. As root mosquitto would switch to user\n\
                 # 'mosquitto', which cannot write this root-owned directory.\n\
                 user root\n\
                 per_listener_settings false\n\
                 allow_anonymous true\n\
                 persistence true\n\
                 persistence_location {d}/\n\
                 set_tcp_nodelay true\n\
                 max_inflight_messages 1000\n\
                 max_queued_messages 0\n\
                 log_dest file {d}/mosquitto.log\n\
                 connection_messages false\n\
                 listener {port} 127.0.0.1\n"
            );
            if tls {
                let c = test_certs();
                let c = c.display();
                conf.push_str(&format!(
                    "cafile {c}/ca.pem\ncertfile {c}/server.pem\nkeyfile {c}/server.key\n\
                     require_certificate true\n"
                ));
            }
            std::fs::write(broker.dir.path().join("mosquitto.conf"), conf).unwrap();
            let scheme = if tls { "mqtts" } else { "mqtt" };
            broker.url = format!("{scheme}://127.0.0.1:{port}").parse().unwrap();
            match broker.spawn().await {
                Ok(()) => break,
                Err(log) if log.contains("Address already in use") && attempt < 5 => {}
                Err(log) => panic!("mosquitto exited: {log}"),
            }
        }
        broker
    }

    /// Lines of the broker's log saying it runs: one per start, written once every listener
    /// is bound.
    fn runs_logged(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("mosquitto version") && l.ends_with(" running"))
            .count()
    }

    /// Starts mosquitto on the configured port and waits until this broker runs and accepts
    /// connections; the log when it exits instead. (A connection alone proves only that
    /// something listens on the port: another test's broker may, and this one then fails
    /// to bind.)
    async fn spawn(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("mosquitto.conf");
        let runs_before = self.runs_logged();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start mosquitto ({e}): install the mosquitto package \
                     (tests/run.sh does) so that it is on PATH"
                )
            });
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.url.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                let log = std::fs::read_to_string(self.dir.path().join("mosquitto.log"))
                    .unwrap_or_default();
                return Err(format!("({status}) {log}"));
            }
            if self.runs_logged() > runs_before && TcpStream::connect(&addr).await.is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {addr}"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the broker with SIGTERM (it writes its persistence file on the way out) and
    /// waits for it to exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM mosquitto failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not stop on SIGTERM"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts it again on the same port, from its persistence file.
    pub async fn restart(&mut self) {
        self.stop().await;
        if let Err(log) = self.spawn().await {
            panic!("mosquitto did not start again on its port: {log}");
        }
    }
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

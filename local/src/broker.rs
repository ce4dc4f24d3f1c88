//! The embedded MQTT broker (rumqttd), with an optional TLS listener in front of it.
//!
//! rumqttd serves plain MQTT on `127.0.0.1`. The TLS listener ([`start_tls_listener`])
//! terminates TLS — mutual TLS when a client CA is given, as AWS IoT Core requires — with
//! the workspace's rustls (aws-lc-rs) and forwards each connection's MQTT bytes to the
//! plain listener. (rumqttd's own TLS feature would build a second rustls on ring.)

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use device_sim::BrokerUrl;
use rumqttd::{
    Broker, Config, ConnectionSettings, Meter, MetricSettings, MetricType, RouterConfig,
    ServerSettings,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use telemetry::topic::TOPIC_FILTER;

/// Largest payload the embedded broker forwards: above IoT Core's 128 KiB so that an
/// oversize payload reaches ingest and is quarantined with its reason instead of vanishing
/// at the broker.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// The running embedded broker: where clients connect, and the in-process link the
/// emulated IoT rule takes its messages through.
pub struct EmbeddedBroker {
    /// The URL clients connect to (`mqtt://127.0.0.1:PORT`).
    pub url: BrokerUrl,
    /// The rule's link into the broker's router ([`crate::iot_rule::RuleFeed::Embedded`]).
    pub rule_link: RuleLink,
}

/// A client of the embedded broker's router inside the process: no socket, no MQTT
/// encoding, no acknowledgements — the broker's router hands over the publishes it routes
/// to the link's subscriptions, as it would hand them to a network connection.
pub struct RuleLink {
    pub(crate) tx: rumqttd::local::LinkTx,
    pub(crate) rx: rumqttd::local::LinkRx,
    /// What the broker appended to the log of the rule's filter.
    pub(crate) log: Arc<BrokerLog>,
}

/// How often the embedded broker's router reports what it appended to each filter's log
/// ([`BrokerLog`]): rumqttd's meters, whose period is whole seconds.
pub const METER_PERIOD: Duration = Duration::from_secs(1);

/// What the embedded broker appended to the log of the rule's filter (every message a
/// device published on the telemetry topics), as its router last reported it. The router
/// reports once a [`METER_PERIOD`], and only when something was appended since its last
/// report: the figures are up to a period old, and a report with nothing new never comes.
/// Against what the rule read of the log (its numbering: [`crate::iot_rule::Backlog`]) it
/// gives what still waits in the broker.
#[derive(Debug, Default)]
pub struct BrokerLog {
    appended: AtomicU64,
    appended_bytes: AtomicU64,
    /// Every publish the router took, on any topic (its router meter).
    published: AtomicU64,
    /// Epoch ms at which the router made its latest report; 0 before the first.
    reported_ms: AtomicI64,
}

impl BrokerLog {
    /// Messages appended to the log since the broker started, as of the latest report.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Their size as the log counts it (topic + payload + 4 bytes each).
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes.load(Ordering::Relaxed)
    }

    /// Epoch ms at which the router made its latest report (0 before the first).
    pub fn reported_ms(&self) -> i64 {
        self.reported_ms.load(Ordering::Relaxed)
    }

    /// Publishes the broker took on topics the rule does not take (not [`TOPIC_FILTER`]: a
    /// device publishing to the wrong topic), as of the latest report. They are in no
    /// pipeline, as an IoT rule never sees them.
    pub fn other_topics(&self) -> u64 {
        // The router's count first: a report adds the rule's log before it (`add_batch`),
        // so this never counts a rule message as another topic's.
        let published = self.published.load(Ordering::Acquire);
        published.saturating_sub(self.appended.load(Ordering::Acquire))
    }

    /// Adds one report of the router: `count` messages of `bytes` appended to the rule's
    /// log and `published` publishes taken on any topic since the last one, made at
    /// `at_ms` (`None`: nothing was appended to the rule's log).
    fn add_batch(&self, rule_log: Option<(u64, u64, i64)>, published: u64) {
        if let Some((count, bytes, at_ms)) = rule_log {
            self.appended.fetch_add(count, Ordering::Release);
            self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
            self.reported_ms.fetch_max(at_ms, Ordering::Relaxed);
        }
        self.published.fetch_add(published, Ordering::Release);
    }
}

/// The broker's in-memory log of the rule's subscription filter, in MiB, unless `iotpipe up
/// --broker-log-mib` says otherwise (every other filter keeps 16 MiB). It is counted
/// as rumqttd counts a message (topic + payload + 4) and split into ten segments
/// (`LOG_SEGMENTS`). What the rule has not read yet waits there; once the log is full
/// rumqttd drops its oldest segment, read or not, so it stays full: its size is the broker's
/// memory at any rate that filled it once (~400 B resident per 234 B counted). A backlog
/// larger than the log is lost: the rule counts it
/// ([`IotRule::dropped`](crate::iot_rule::IotRule::dropped)) and `up` fails. 320 MiB holds
/// ~1.4 M messages of the simulated fleet (~28 s of backlog at 50,000 msg/s).
pub const DEFAULT_LOG_MIB: u32 = 320;
/// How many segments the log is split into: rumqttd drops one at a time, so the log keeps
/// at least nine tenths of its size once it is full.
const LOG_SEGMENTS: usize = 10;
/// The log of every other subscription filter, in bytes: what a tool watching the broker
/// subscribes to (`mosquitto_sub -t 'dt/#'`). rumqttd keeps a log per distinct filter and
/// keeps it full once traffic filled it, read or not; with the rule's 320 MiB a watcher
/// grew the broker by up to ~550 MB. 16 MiB (4 segments) is ~70,000 messages of the
/// simulated fleet: a watcher further behind than that misses the oldest. (A topic that
/// no filter matches is kept nowhere.)
const OTHER_LOG_BYTES: usize = 16 * 1024 * 1024;
/// Segments of [`OTHER_LOG_BYTES`].
const OTHER_LOG_SEGMENTS: usize = 4;

/// Client id of the rule's link.
const RULE_LINK_ID: &str = "iotpipe-rule";

/// Starts rumqttd on `127.0.0.1:port` (`0` picks a free port) in its own threads, keeping
/// up to `log_mib` MiB of what the rule has not read ([`DEFAULT_LOG_MIB`]); it lives until
/// the process exits. Returns the URL clients connect to and the rule's link.
pub fn start_embedded(port: u16, log_mib: u32) -> anyhow::Result<EmbeddedBroker> {
    if log_mib == 0 {
        bail!("the embedded broker's log needs at least 1 MiB (--broker-log-mib)");
    }
    let port = if port == 0 { free_port()? } else { port };
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    // Fail here, with a clear message, rather than inside the broker's thread.
    TcpListener::bind(listen).with_context(|| {
        format!("port {port} on 127.0.0.1 is taken: pass --broker-port 0 to pick a free one")
    })?;
    let server = ServerSettings {
        name: "v4-local".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PAYLOAD,
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 20_010,
            // What the router forwards a QoS 0 subscriber (the rule's link) per turn.
            // It serves connections in turn, the rule's link among 1,000 devices' ones, and
            // the link waits for its next turn once it asked for more: with 1,000 per turn
            // the rule fell behind 1,000 devices at ~39,000–48,000 msg/s, with 10,000 it
            // took 53,000–58,000 (BENCHMARKS.md, session 22). The devices subscribe to
            // nothing; the link's channel holds a turn's publishes (~3 MB, estimated).
            max_outgoing_packet_count: 10_000,
            max_segment_size: OTHER_LOG_BYTES / OTHER_LOG_SEGMENTS,
            max_segment_count: OTHER_LOG_SEGMENTS,
            // The rule's filter keeps the large log (rumqttd matches the filter's own text
            // against these keys).
            custom_segment: Some(HashMap::from([(
                TOPIC_FILTER.to_owned(),
                rumqttd::SegmentConfig {
                    max_segment_size: log_mib as usize * 1024 * 1024 / LOG_SEGMENTS,
                    max_segment_count: LOG_SEGMENTS,
                },
            )])),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        // The router's meters, read below ([`BrokerLog`]). Alerts get a period too: rumqttd's
        // timer unwraps both periods whenever either is set (and nobody reads the alerts,
        // which the router keeps at most 100 of). The period's field is private: its serde
        // form is the only way to set it.
        metrics: Some(HashMap::from([
            (MetricType::Meters, meter_settings()?),
            (MetricType::Alerts, meter_settings()?),
        ])),
    };
    let mut broker = Broker::new(config);
    // The router runs from `Broker::new`; the link is its connection from now on.
    let (tx, rx) = broker
        .link(RULE_LINK_ID)
        .map_err(|e| anyhow::anyhow!("linking the IoT rule to the embedded broker: {e}"))?;
    let log = Arc::new(BrokerLog::default());
    let meters = broker
        .meters()
        .map_err(|e| anyhow::anyhow!("reading the embedded broker's meters: {e}"))?;
    let reports = log.clone();
    std::thread::Builder::new()
        .name("rumqttd-meters".into())
        .spawn(move || {
            // Until the router is gone (the process exits).
            while let Ok(batch) = futures::executor::block_on(meters.next()) {
                let (mut rule_log, mut published) = (None, 0);
                for m in batch {
                    match m {
                        Meter::Subscription(filter, m) if filter == TOPIC_FILTER => {
                            rule_log = Some((
                                m.count as u64,
                                m.total_size as u64,
                                i64::try_from(m.timestamp).unwrap_or(i64::MAX),
                            ));
                        }
                        Meter::Router(_, r) => published += r.total_publishes as u64,
                        Meter::Subscription(..) => {}
                    }
                }
                reports.add_batch(rule_log, published);
            }
        })
        .context("starting the embedded broker's meter thread")?;
    let rule_link = RuleLink { tx, rx, log };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .context("starting the embedded broker thread")?;
    // Wait until the listener accepts connections.
    for _ in 0..200 {
        if std::net::TcpStream::connect(listen).is_ok() {
            return Ok(EmbeddedBroker {
                url: BrokerUrl::mqtt("127.0.0.1", port),
                rule_link,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    bail!("the embedded broker did not start listening on {listen} within 2 s")
}

/// rumqttd's settings for a report every [`METER_PERIOD`].
fn meter_settings() -> anyhow::Result<MetricSettings> {
    serde_json::from_value(serde_json::json!({ "push_interval": METER_PERIOD.as_secs() }))
        .context("internal: rumqttd's meter settings changed shape")
}

/// The embedded broker's TLS listener (`iotpipe up --tls-cert …`).
#[derive(Debug, Clone)]
pub struct TlsListenerConfig {
    /// Port on 127.0.0.1 (`0` picks a free one).
    pub port: u16,
    /// PEM file of the broker's certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file of the CA that signs device certificates: when given, every client must
    /// present a certificate it signed (mutual TLS, as AWS IoT Core requires).
    pub client_ca: Option<PathBuf>,
}

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a TLS listener on `127.0.0.1:cfg.port` that forwards every connection, once its
/// handshake (and client certificate, with a client CA) is accepted, to the plain MQTT
/// listener at `plain`. Runs on the current tokio runtime until the process exits; returns
/// the `mqtts://` URL clients connect to.
pub fn start_tls_listener(plain: &BrokerUrl, cfg: &TlsListenerConfig) -> anyhow::Result<BrokerUrl> {
    let server = server_config(cfg)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let std_listener = TcpListener::bind(("127.0.0.1", cfg.port)).with_context(|| {
        format!(
            "port {} on 127.0.0.1 is taken: pass --tls-port 0 to pick a free one",
            cfg.port
        )
    })?;
    let port = std_listener.local_addr()?.port();
    std_listener
        .set_nonblocking(true)
        .context("configuring the TLS listener")?;
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .context("the TLS listener needs a tokio runtime")?;
    let upstream = (plain.host.clone(), plain.port);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Err(e) = forward(acceptor, tcp, &upstream).await {
                    tracing::info!(%peer, error = %e, "TLS client refused or disconnected");
                }
            });
        }
    });
    Ok(BrokerUrl {
        scheme: device_sim::Scheme::Mqtts,
        host: "127.0.0.1".into(),
        port,
    })
}

/// One TLS connection: handshake, then MQTT bytes both ways to the plain listener.
async fn forward(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    upstream: &(String, u16),
) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake failed")?;
    let mut plain = tokio::net::TcpStream::connect((upstream.0.as_str(), upstream.1))
        .await
        .context("connecting to the embedded broker")?;
    let _ = plain.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut tls, &mut plain).await?;
    Ok(())
}

/// The rustls server configuration of the TLS listener.
fn server_config(cfg: &TlsListenerConfig) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = read_certs(&cfg.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key {}: no private key read ({e}): pass the PEM key of the broker certificate",
            cfg.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("the TLS provider (aws-lc-rs) is unusable")?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca, "--tls-client-ca")? {
                roots.add(c).with_context(|| {
                    format!(
                        "--tls-client-ca {}: not a usable CA certificate",
                        ca.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("--tls-client-ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "--tls-cert {} / --tls-key {}: pass a certificate and the key it was made with",
            cfg.cert.display(),
            cfg.key.display()
        )
    })
}

/// Every certificate of a PEM file (at least one).
fn read_certs(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow::anyhow!(
                "{flag} {}: cannot read PEM certificates: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        bail!(
            "{flag} {}: no CERTIFICATE block in the file",
            path.display()
        );
    }
    Ok(certs)
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

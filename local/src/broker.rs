//! The embedded MQTT broker (rumqttd), with its listeners in front of it.
//!
//! rumqttd serves MQTT 3.1.1 and MQTT 5 on separate listeners. Devices reach both through
//! one port, as with AWS IoT Core and mosquitto: the plain listener clients connect to
//! reads the protocol level of each connection's CONNECT packet and forwards the
//! connection to rumqttd's listener of that version ([`Listeners`]). The TLS listener
//! ([`start_tls_listener`]) terminates TLS — mutual TLS when a client CA is given, as AWS
//! IoT Core requires — with the workspace's rustls (aws-lc-rs), then forwards the same
//! way. (rumqttd's own TLS feature would build a second rustls on ring.) The simulated
//! devices of `iotpipe up`, in the same process, connect to rumqttd's MQTT 3.1.1 listener
//! directly ([`Listeners::direct`]): no hop in the way of the pipeline's throughput.
//! What the devices outside publish through the ports is counted by topic, as IoT Core
//! meters it ([`PortPublishes`]).

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
use telemetry::topic::{BASIC_INGEST_PREFIX, DEFAULT_RULE_NAME, TOPIC_FILTER, rule_topic};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest payload the embedded broker forwards: above IoT Core's 128 KiB so that an
/// oversize payload reaches ingest and is quarantined with its reason instead of vanishing
/// at the broker.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// The running embedded broker: where clients connect, and the in-process link the
/// emulated IoT rule takes its messages through.
pub struct EmbeddedBroker {
    /// The URL clients connect to (`mqtt://127.0.0.1:PORT`), MQTT 3.1.1 or 5.
    pub url: BrokerUrl,
    /// rumqttd's own listeners behind it.
    pub listeners: Listeners,
    /// The rule's link into the broker's router ([`crate::iot_rule::RuleFeed::Embedded`]).
    pub rule_link: RuleLink,
}

/// rumqttd's listeners on 127.0.0.1, one per MQTT version: what the listeners clients
/// connect to forward each connection to; and the tally of what those connections publish.
#[derive(Debug, Clone)]
pub struct Listeners {
    v4: SocketAddr,
    v5: SocketAddr,
    publishes: Arc<PortPublishes>,
}

/// What devices outside the process publish through the embedded broker's ports (plain and
/// TLS), by how AWS IoT Core meters it: messaging per 5 KB unit of a publish on any topic
/// but a Basic Ingest one. The rule cannot tell these from `up`'s simulated devices (which
/// connect to rumqttd directly) once they reach the router; counted here, they correct its
/// meter ([`crate::iot_rule::BasicIngest::messaging_units`]).
#[derive(Debug, Default)]
pub struct PortPublishes {
    rule_plain: Tally,
    rule_basic_ingest: Tally,
    other_plain: Tally,
}

#[derive(Debug, Default)]
struct Tally {
    publishes: AtomicU64,
    units: AtomicU64,
}

impl Tally {
    fn add(&self, units: u64) {
        self.publishes.fetch_add(1, Ordering::Relaxed);
        self.units.fetch_add(units, Ordering::Relaxed);
    }

    fn read(&self) -> Published {
        Published {
            publishes: self.publishes.load(Ordering::Relaxed),
            units: self.units.load(Ordering::Relaxed),
        }
    }
}

/// Publishes, and their size in IoT Core's 5 KB message units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    /// PUBLISH packets.
    pub publishes: u64,
    /// Their payloads in 5 KB units.
    pub units: u64,
}

/// [`PortPublishes`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortCounts {
    /// To the rule's plain topic (`dt/+/+/telemetry`): metered as messages.
    pub rule_plain: Published,
    /// To the rule's Basic Ingest topic (`$aws/rules/<rule>/dt/…`): not metered.
    pub rule_basic_ingest: Published,
    /// To any other topic but a Basic Ingest one: metered, and no rule takes them.
    pub other_plain: Published,
}

impl PortPublishes {
    /// The counts so far.
    pub fn counts(&self) -> PortCounts {
        PortCounts {
            rule_plain: self.rule_plain.read(),
            rule_basic_ingest: self.rule_basic_ingest.read(),
            other_plain: self.other_plain.read(),
        }
    }

    fn add(&self, class: PublishClass, payload_len: usize) {
        let units =
            telemetry::metering::units(payload_len, telemetry::metering::IOT_MESSAGE_UNIT_BYTES);
        match class {
            PublishClass::RulePlain => self.rule_plain.add(units),
            PublishClass::RuleBasicIngest => self.rule_basic_ingest.add(units),
            PublishClass::OtherPlain => self.other_plain.add(units),
            PublishClass::OtherBasicIngest => {}
        }
    }
}

/// What a PUBLISH's topic is to IoT Core's meter and to the rule ([`PortPublishes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PublishClass {
    RulePlain,
    RuleBasicIngest,
    OtherPlain,
    /// Another rule's Basic Ingest topic: neither metered nor taken by this rule.
    OtherBasicIngest,
}

impl Listeners {
    /// rumqttd's MQTT 3.1.1 listener itself, for clients in this process that speak 3.1.1
    /// (`iotpipe up`'s simulated devices): no forwarding hop.
    pub fn direct(&self) -> BrokerUrl {
        BrokerUrl::mqtt("127.0.0.1", self.v4.port())
    }

    /// The listener of a connection whose CONNECT packet has protocol level `level`: MQTT
    /// 5's for 5, MQTT 3.1.1's for anything else (3.1.1, 3.1, or not a CONNECT at all,
    /// which rumqttd then refuses).
    fn for_level(&self, level: Option<u8>) -> SocketAddr {
        if level == Some(5) { self.v5 } else { self.v4 }
    }

    /// What devices outside the process published through the ports so far.
    pub fn port_counts(&self) -> PortCounts {
        self.publishes.counts()
    }
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

/// Starts rumqttd in its own threads, keeping up to `log_mib` MiB of what the rule has not
/// read ([`DEFAULT_LOG_MIB`]), and its listener for clients on `127.0.0.1:port` (`0` picks a
/// free port) on the current tokio runtime; they live until the process exits. Returns
/// the URL clients connect to (MQTT 3.1.1 or 5) and the rule's link.
pub fn start_embedded(port: u16, log_mib: u32) -> anyhow::Result<EmbeddedBroker> {
    if log_mib == 0 {
        bail!("the embedded broker's log needs at least 1 MiB (--broker-log-mib)");
    }
    let front = listen(port).with_context(|| {
        format!("port {port} on 127.0.0.1 is taken: pass --broker-port 0 to pick a free one")
    })?;
    let port = front.local_addr()?.port();
    let listeners = Listeners {
        v4: ([127, 0, 0, 1], free_port()?).into(),
        v5: ([127, 0, 0, 1], free_port()?).into(),
        publishes: Arc::default(),
    };
    let server = |name: &str, listen| ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: CONNECT_TIMEOUT_MS,
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
        v4: Some(HashMap::from([(
            "1".to_string(),
            server("v4-local", listeners.v4),
        )])),
        v5: Some(HashMap::from([(
            "1".to_string(),
            server("v5-local", listeners.v5),
        )])),
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
    // Wait until rumqttd's listeners accept connections.
    for listen in [listeners.v4, listeners.v5] {
        let mut tries = 0;
        while std::net::TcpStream::connect(listen).is_err() {
            tries += 1;
            if tries == 200 {
                bail!("the embedded broker did not start listening on {listen} within 2 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    tracing::debug!(
        v4 = %listeners.v4,
        v5 = %listeners.v5,
        "the embedded broker's own listeners (clients connect to port {port})"
    );
    serve(
        front,
        listeners.clone(),
        "the embedded broker's listener",
        |tcp| async move { Ok::<_, std::io::Error>(tcp) },
    )?;
    Ok(EmbeddedBroker {
        url: BrokerUrl::mqtt("127.0.0.1", port),
        listeners,
        rule_link,
    })
}

/// Connections a listener holds before it accepts them: as many as rumqttd's own listeners
/// (tokio's default), rather than the standard library's 128, for fleets that connect at
/// once.
const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `127.0.0.1:port` (`0`: a free port) on the current tokio runtime.
fn listen(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    tokio::runtime::Handle::try_current()
        .map_err(|_| std::io::Error::other("the listener needs a tokio runtime"))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    // As tokio's `TcpListener::bind` does: a port in TIME_WAIT from a run just stopped is
    // taken again.
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `listener` until the process exits: `open` turns each into a
/// stream (a TLS handshake, say), which is then forwarded to the rumqttd listener of its
/// MQTT version ([`route`]). `what` names the listener in errors.
fn serve<S, F, Fut>(
    listener: tokio::net::TcpListener,
    listeners: Listeners,
    what: &'static str,
    open: F,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<S, std::io::Error>> + Send + 'static,
{
    let open = Arc::new(open);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let open = Arc::clone(&open);
            let listeners = listeners.clone();
            tokio::spawn(async move {
                let routed = match tokio::time::timeout(HANDSHAKE_TIMEOUT, open(tcp)).await {
                    Ok(Ok(stream)) => route(stream, &listeners).await,
                    // Only a TLS listener's `open` can fail or take time: its handshake.
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("handshake failed")),
                    Err(_) => Err(anyhow::anyhow!("handshake timed out")),
                };
                if let Err(e) = routed {
                    tracing::info!(%peer, error = %format!("{e:#}"), "{what}: client refused or disconnected");
                }
            });
        }
    });
    Ok(())
}

/// What the start of a client's first packet says about its MQTT version.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    /// A CONNECT packet of this protocol level (3: MQTT 3.1, 4: 3.1.1, 5: 5.0).
    Level(u8),
    /// Not a CONNECT packet.
    NotConnect,
    /// Too few bytes yet to tell.
    NeedMore,
}

/// The protocol level of the CONNECT packet `head` starts with: the fixed header (type 1,
/// no flags), its remaining length (1–4 bytes), the protocol name (`MQTT`, or `MQIsdp` for
/// 3.1) with its 2-byte length, then the level byte.
fn sniff(head: &[u8]) -> Sniffed {
    match head.first() {
        None => return Sniffed::NeedMore,
        Some(&0x10) => {}
        Some(_) => return Sniffed::NotConnect,
    }
    let at = match remaining_length(head) {
        Fixed::Header { len, .. } => len,
        Fixed::NeedMore => return Sniffed::NeedMore,
        Fixed::Malformed => return Sniffed::NotConnect,
    };
    let (Some(&hi), Some(&lo)) = (head.get(at), head.get(at + 1)) else {
        return Sniffed::NeedMore;
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    if name_len > 6 {
        return Sniffed::NotConnect;
    }
    match head.get(at + 2 + name_len) {
        Some(&level) => Sniffed::Level(level),
        None => Sniffed::NeedMore,
    }
}

/// Reads a client's CONNECT far enough to know its MQTT version, connects to rumqttd's
/// listener of that version, hands it what was read, then copies bytes both ways until
/// either side closes.
async fn route<S>(mut client: S, listeners: &Listeners) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(16);
    let level = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS.into()), async {
        loop {
            match sniff(&head) {
                Sniffed::Level(level) => return Ok(Some(level)),
                Sniffed::NotConnect => return Ok(None),
                Sniffed::NeedMore => {}
            }
            let mut buf = [0u8; 16];
            let n = client.read(&mut buf).await?;
            if n == 0 {
                bail!("the client closed the connection before its CONNECT");
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .with_context(|| format!("no MQTT CONNECT within {} s", CONNECT_TIMEOUT_MS / 1000))??;
    let broker = tokio::net::TcpStream::connect(listeners.for_level(level))
        .await
        .context("connecting to the embedded broker")?;
    let _ = broker.set_nodelay(true);
    let (mut from_broker, to_broker) = broker.into_split();
    let (from_client, mut to_client) = tokio::io::split(client);
    // Either way ends the connection: a client that closed sends nothing more, and a broker
    // that closed the connection answers nothing more.
    tokio::select! {
        r = client_to_broker(from_client, to_broker, head, &listeners.publishes) => r,
        r = tokio::io::copy(&mut from_broker, &mut to_client) => r.map(drop).map_err(Into::into),
    }
}

/// Copies a client's MQTT packets to the broker as they come, with one change: a PUBLISH to
/// the rule's Basic Ingest topic (`$aws/rules/<rule>/dt/…`, what a device configured for
/// AWS publishes to in the firehose and kinesis topologies) goes on with its plain topic
/// (`dt/…`). rumqttd routes no `$` topic; the rule takes the plain topic as the Basic Ingest
/// publish it stands for (`iot_rule::BasicIngest::StandIn`). Another rule's Basic Ingest
/// topic is left as it is, and reaches no rule here, as on AWS. Only a packet's fixed
/// header and topic are held; payloads pass through as they arrive. `pending` holds what
/// was read of the connection already. Every PUBLISH is counted into `publishes` by how
/// IoT Core would meter it.
async fn client_to_broker<R, W>(
    mut from: R,
    mut to: W,
    mut pending: Vec<u8>,
    publishes: &PortPublishes,
) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(buf.len());
    // Bytes of the current packet still to pass through unchanged.
    let mut passing = 0usize;
    loop {
        let mut at = 0;
        loop {
            let n = passing.min(pending.len() - at);
            out.extend_from_slice(&pending[at..at + n]);
            at += n;
            passing -= n;
            if passing > 0 {
                break;
            }
            match packet_head(&pending[at..]) {
                Head::NeedMore => break,
                Head::Malformed => {
                    // Not MQTT as this reads it: the rest goes through as it is, and rumqttd
                    // answers it.
                    passing = usize::MAX;
                }
                Head::Packet {
                    head,
                    rest,
                    rewritten,
                    publish,
                } => {
                    if let Some((class, payload_len)) = publish {
                        publishes.add(class, payload_len);
                    }
                    match rewritten {
                        Some(new_head) => out.extend_from_slice(&new_head),
                        None => out.extend_from_slice(&pending[at..at + head]),
                    }
                    at += head;
                    passing = rest;
                }
            }
        }
        pending.drain(..at);
        if !out.is_empty() {
            to.write_all(&out).await?;
            out.clear();
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// A packet's fixed header, as [`remaining_length`] reads it.
enum Fixed {
    /// `len` bytes long (the first byte and the remaining length), followed by `remaining`.
    Header { len: usize, remaining: usize },
    /// Too few bytes yet.
    NeedMore,
    /// A remaining length of more than four bytes: not MQTT.
    Malformed,
}

/// The fixed header `bytes` starts with: its first byte, then the remaining length (a
/// variable byte integer, [`push_remaining_length`]).
fn remaining_length(bytes: &[u8]) -> Fixed {
    let (mut remaining, mut at, mut shift) = (0usize, 1usize, 0u32);
    loop {
        let Some(&b) = bytes.get(at) else {
            return Fixed::NeedMore;
        };
        remaining |= usize::from(b & 0x7f) << shift;
        at += 1;
        shift += 7;
        if b & 0x80 == 0 {
            return Fixed::Header { len: at, remaining };
        }
        if at > 4 {
            return Fixed::Malformed;
        }
    }
}

/// Appends `n` as an MQTT remaining length (a variable byte integer: 7 bits a byte, low
/// first, the high bit set on every byte but the last).
fn push_remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            return;
        }
    }
}

/// What the start of an MQTT packet says ([`packet_head`]).
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A packet whose first `head` bytes are its fixed header (and, for a PUBLISH, its
    /// topic), followed by `rest` more; `rewritten`: those first bytes as they go on, when
    /// they change.
    Packet {
        head: usize,
        rest: usize,
        rewritten: Option<Vec<u8>>,
        /// For a PUBLISH: its topic's class and the length of its payload (what follows
        /// the topic and, above QoS 0, the packet id; an MQTT 5 publish's properties
        /// count with it).
        publish: Option<(PublishClass, usize)>,
    },
    /// Too few bytes yet.
    NeedMore,
    /// Not a packet: a remaining length of more than four bytes, or a topic longer than
    /// its packet.
    Malformed,
}

/// The fixed header of the packet `bytes` starts with (and a PUBLISH's topic, rewritten
/// from the rule's Basic Ingest topic to the plain one: [`client_to_broker`]).
fn packet_head(bytes: &[u8]) -> Head {
    let Some(&first) = bytes.first() else {
        return Head::NeedMore;
    };
    let (fixed, remaining) = match remaining_length(bytes) {
        Fixed::Header { len, remaining } => (len, remaining),
        Fixed::NeedMore => return Head::NeedMore,
        Fixed::Malformed => return Head::Malformed,
    };
    // Anything but a PUBLISH (type 3) goes on as it is.
    if first >> 4 != 3 {
        return Head::Packet {
            head: fixed,
            rest: remaining,
            rewritten: None,
            publish: None,
        };
    }
    let (Some(&hi), Some(&lo)) = (bytes.get(fixed), bytes.get(fixed + 1)) else {
        return Head::NeedMore;
    };
    let topic_len = usize::from(u16::from_be_bytes([hi, lo]));
    if 2 + topic_len > remaining {
        return Head::Malformed;
    }
    let Some(topic) = bytes.get(fixed + 2..fixed + 2 + topic_len) else {
        return Head::NeedMore;
    };
    let head = fixed + 2 + topic_len;
    let rest = remaining - 2 - topic_len;
    let rule = std::str::from_utf8(topic)
        .ok()
        .and_then(|t| rule_topic(t, DEFAULT_RULE_NAME));
    let (plain, class) = if topic.starts_with(BASIC_INGEST_PREFIX.as_bytes()) {
        match rule {
            Some((plain, true)) => (Some(plain), PublishClass::RuleBasicIngest),
            _ => (None, PublishClass::OtherBasicIngest),
        }
    } else if rule.is_some() {
        (None, PublishClass::RulePlain)
    } else {
        (None, PublishClass::OtherPlain)
    };
    // QoS 1 and 2 publishes carry a 2-byte packet id before the payload.
    let packet_id = if first & 0b0110 != 0 { 2 } else { 0 };
    let publish = Some((class, rest.saturating_sub(packet_id)));
    let rewritten = plain.map(|plain| {
        let mut h = vec![first];
        push_remaining_length(&mut h, rest + 2 + plain.len());
        h.extend_from_slice(&(plain.len() as u16).to_be_bytes());
        h.extend_from_slice(plain.as_bytes());
        h
    });
    Head::Packet {
        head,
        rest,
        rewritten,
        publish,
    }
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

/// How long a connected client has to send its CONNECT, on the port devices connect to and
/// on rumqttd's own listeners behind it (the same wait both ways).
const CONNECT_TIMEOUT_MS: u16 = 60_000;

/// Starts a TLS listener on `127.0.0.1:cfg.port` that forwards every connection, once its
/// handshake (and client certificate, with a client CA) is accepted, to the embedded
/// broker's listener of its MQTT version. Runs on the current tokio runtime until the
/// process exits; returns the `mqtts://` URL clients connect to.
pub fn start_tls_listener(
    listeners: &Listeners,
    cfg: &TlsListenerConfig,
) -> anyhow::Result<BrokerUrl> {
    let server = server_config(cfg)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = listen(cfg.port).with_context(|| {
        format!(
            "port {} on 127.0.0.1 is taken: pass --tls-port 0 to pick a free one",
            cfg.port
        )
    })?;
    let port = listener.local_addr()?.port();
    serve(
        listener,
        listeners.clone(),
        "the TLS listener",
        move |tcp| acceptor.clone().accept(tcp),
    )?;
    Ok(BrokerUrl {
        scheme: device_sim::Scheme::Mqtts,
        host: "127.0.0.1".into(),
        port,
    })
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

#[cfg(test)]
mod tests {
    use super::{
        Head, PortCounts, PortPublishes, PublishClass, Published, Sniffed, client_to_broker,
        packet_head, push_remaining_length, sniff,
    };

    /// A PUBLISH packet (QoS 1, packet id 7) of `payload` to `topic`.
    fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&7u16.to_be_bytes());
        body.extend_from_slice(payload);
        let mut p = vec![0x32];
        push_remaining_length(&mut p, body.len());
        p.extend(body);
        p
    }

    const PLAIN: &str = "dt/fleet/sensor-1/telemetry";
    const BASIC_INGEST: &str = "$aws/rules/iotpipe_telemetry/dt/fleet/sensor-1/telemetry";

    #[test]
    fn a_publish_to_the_rules_basic_ingest_topic_goes_on_with_the_plain_topic() {
        // The remaining length takes two bytes before (140), one after (111).
        let payload = [b'x'; 80];
        let packet = publish(BASIC_INGEST, &payload);
        let Head::Packet {
            head,
            rest,
            rewritten: Some(new_head),
            publish: Some((PublishClass::RuleBasicIngest, 80)),
        } = packet_head(&packet)
        else {
            panic!("not rewritten: {:?}", packet_head(&packet));
        };
        assert_eq!(head + rest, packet.len());
        let mut out = new_head;
        out.extend_from_slice(&packet[head..]);
        assert_eq!(out, publish(PLAIN, &payload));
        // Anything else goes on as it is, its payload's length counted after the packet id.
        for (topic, class) in [
            (PLAIN, PublishClass::RulePlain),
            (
                "$aws/rules/another_rule/dt/fleet/sensor-1/telemetry",
                PublishClass::OtherBasicIngest,
            ),
            ("x/y", PublishClass::OtherPlain),
            ("dt/fleet/sensor-1/telemetry/more", PublishClass::OtherPlain),
        ] {
            let packet = publish(topic, b"{}");
            assert!(
                matches!(packet_head(&packet), Head::Packet { rewritten: None, head, rest, publish: Some((c, 2)) } if head + rest == packet.len() && c == class),
                "{topic}: {:?}",
                packet_head(&packet)
            );
        }
        // QoS 0: no packet id.
        let mut qos0 = publish(PLAIN, b"{}");
        qos0[0] = 0x30;
        qos0.drain(qos0.len() - 4..qos0.len() - 2);
        qos0[1] -= 2;
        assert!(
            matches!(
                packet_head(&qos0),
                Head::Packet {
                    publish: Some((PublishClass::RulePlain, 2)),
                    ..
                }
            ),
            "{:?}",
            packet_head(&qos0)
        );
        let pingreq = [0xc0, 0x00];
        assert_eq!(
            packet_head(&pingreq),
            Head::Packet {
                head: 2,
                rest: 0,
                rewritten: None,
                publish: None,
            }
        );
        assert_eq!(packet_head(&packet[..5]), Head::NeedMore);
        assert_eq!(
            packet_head(&[0x30, 0x03, 0x00, 0x09]),
            Head::Malformed,
            "a topic past its packet"
        );
    }

    #[tokio::test]
    async fn packets_arriving_a_few_bytes_at_a_time_are_rewritten_whole() {
        let connect = {
            let mut c = vec![0x10, 12, 0, 4];
            c.extend_from_slice(b"MQTT");
            c.extend_from_slice(&[4, 2, 0, 60, 0, 0]);
            c
        };
        let big = vec![b'y'; 300_000];
        let input: Vec<u8> = [
            connect.clone(),
            publish(BASIC_INGEST, b"{\"a\":1}"),
            publish(PLAIN, b"{}"),
            publish(BASIC_INGEST, &big),
            vec![0xe0, 0x00],
        ]
        .concat();
        let expected: Vec<u8> = [
            connect,
            publish(PLAIN, b"{\"a\":1}"),
            publish(PLAIN, b"{}"),
            publish(PLAIN, &big),
            vec![0xe0, 0x00],
        ]
        .concat();
        // A pipe of 7 bytes: every read gets at most 7, so headers and topics split.
        let (mut writer, reader) = tokio::io::duplex(7);
        let feed = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut writer, &input)
                .await
                .unwrap();
        });
        let mut out = Vec::new();
        let counted = PortPublishes::default();
        client_to_broker(reader, &mut out, Vec::new(), &counted)
            .await
            .unwrap();
        feed.await.unwrap();
        assert_eq!(out.len(), expected.len());
        assert!(out == expected, "the forwarded bytes differ");
        // Each publish counted once, in IoT Core's 5 KB units (300,000 B: 59 of them).
        assert_eq!(
            counted.counts(),
            PortCounts {
                rule_plain: Published {
                    publishes: 1,
                    units: 1
                },
                rule_basic_ingest: Published {
                    publishes: 2,
                    units: 1 + 59
                },
                other_plain: Published::default(),
            }
        );
    }

    /// A CONNECT packet's start: fixed header with `remaining` as its remaining length
    /// (encoded as MQTT's variable byte integer), protocol name, level, then some bytes of
    /// the rest.
    fn connect(name: &str, level: u8, remaining: usize) -> Vec<u8> {
        let mut p = vec![0x10];
        push_remaining_length(&mut p, remaining);
        p.extend_from_slice(&(name.len() as u16).to_be_bytes());
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&[level, 0x02, 0x00, 0x3c]);
        p
    }

    #[test]
    fn the_protocol_level_is_read_from_a_connects_start() {
        assert_eq!(sniff(&connect("MQTT", 4, 20)), Sniffed::Level(4));
        assert_eq!(sniff(&connect("MQTT", 5, 20)), Sniffed::Level(5));
        assert_eq!(sniff(&connect("MQIsdp", 3, 20)), Sniffed::Level(3));
        // A long CONNECT (a large will message): a remaining length of three bytes.
        assert_eq!(sniff(&connect("MQTT", 5, 300_000)), Sniffed::Level(5));
    }

    #[test]
    fn a_partial_connect_asks_for_more_and_anything_else_is_not_one() {
        let full = connect("MQTT", 5, 300_000);
        // Fixed header byte, a 3-byte remaining length, the name's length and the name.
        let level_at = 1 + 3 + 2 + 4;
        assert_eq!(sniff(&full[..=level_at]), Sniffed::Level(5));
        for cut in 0..=level_at {
            assert_eq!(sniff(&full[..cut]), Sniffed::NeedMore, "cut at {cut}");
        }
        assert_eq!(sniff(&[0x30, 0x05]), Sniffed::NotConnect, "a PUBLISH first");
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::NotConnect);
        assert_eq!(
            sniff(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Sniffed::NotConnect,
            "a remaining length of five bytes"
        );
        assert_eq!(
            sniff(&[0x10, 0x10, 0x00, 0x40]),
            Sniffed::NotConnect,
            "a 64-byte name"
        );
    }
}

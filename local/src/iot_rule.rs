//! The emulated IoT topic rule: subscribes to `dt/+/+/telemetry` and invokes the ingest
//! handler with the event AWS IoT Core would send for
//! `SELECT encode(*, 'base64') AS payload, topic() AS topic, timestamp() AS received_at`.
//!
//! It also subscribes to its own Basic Ingest topics,
//! `$aws/rules/<`[`DEFAULT_RULE_NAME`]`>/dt/+/+/telemetry`, which reach a rule on AWS
//! whatever the topology (devices of the firehose and kinesis topologies publish there): the
//! rule sees them without that prefix (`topic()`), and IoT Core meters no message for them
//! ([`telemetry::topic::rule_topic`] decides both; another rule's Basic Ingest topic is not
//! this rule's).
//!
//! [`BasicIngest`] says how: a broker that routes `$` topics (mosquitto, `--broker`) carries
//! them as they are ([`BasicIngest::Routed`]). The embedded rumqttd refuses any subscription
//! to a `$` filter and routes no `$` topic (hard-coded in rumqttd 0.20), so with it the
//! devices publish the plain topic — a device outside the process may publish the Basic
//! Ingest topic, which the broker's port turns into the plain one ([`crate::broker`]) — and
//! the rule counts each message as the Basic Ingest publish it stands for
//! ([`BasicIngest::StandIn`]) when the topology's devices would use Basic Ingest.
//!
//! Over an MQTT connection, a message is acknowledged (QoS 1 PUBACK) only after ingest ran
//! on it — in the order the messages arrived, as MQTT 3.1.1 (§4.6) asks and brokers enforce
//! (rumqttd drops an out-of-order ack and stalls the subscription) — and the rule
//! subscribes again after every reconnect (a restarted broker may have forgotten the
//! subscription).
//!
//! [`RuleFeed`] says how the messages reach the rule. From an MQTT broker (`--broker`) the
//! rule is a client like any other, over loopback. From the embedded broker it takes them
//! through an in-process link into rumqttd's router ([`crate::broker::RuleLink`]), as IoT
//! Core's rules engine sits inside the broker rather than behind a socket: no MQTT
//! encoding, no read and write per message, no acknowledgement. The acknowledgement had
//! nothing to protect there — the embedded broker and everything it holds die with the
//! run, whatever the rule acknowledged — and the pacing it gave is kept: the router
//! forwards a bounded batch and waits until the link asks for more, and the link is read
//! only while invocation slots are free. What one read of the link brings goes to the
//! rule's actions in batches of up to `LINK_BATCH` messages, a task each (a task per
//! message cost a task's creation and often a wake-up of the other core each).
//!
//! [`RuleSession`] says what an external broker keeps while the rule is away: the session is
//! persistent, under a client id named after the data location
//! ([`RuleSession::for_data`]): when the pipeline stops or is killed, the broker keeps the
//! subscription and queues what the devices go on publishing, and resends what the rule
//! had not acknowledged; the next run on the same data location picks it all up. Nothing
//! the broker acknowledged to a device is lost to a crash of the pipeline, as long as the
//! broker keeps the session (mosquitto: `max_queued_messages`, `persistent_client_expiration`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use device_sim::BrokerUrl;
use futures::FutureExt as _;
use ingest::IotRuleEvent;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use rumqttd::Notification;
use telemetry::topic::{DEFAULT_RULE_NAME, TOPIC_FILTER, basic_ingest_filter, rule_topic};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

use crate::broker::{BrokerLog, MAX_PAYLOAD, METER_PERIOD, PortCounts, RuleLink};
use crate::meter::DeviceCount;
use crate::stack::{RuleMessage, Stack};

/// Concurrent ingest invocations at most (a reserved-concurrency stand-in). While all are
/// busy the rule stops reading from the broker: backpressure.
pub const MAX_CONCURRENCY: usize = 64;

/// How Basic Ingest topics reach the rule (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasicIngest {
    /// The broker routes `$aws/rules/...` topics: the rule subscribes to its own, and meters
    /// each message by the topic it came on.
    Routed,
    /// The broker routes no `$` topic (the embedded rumqttd): devices publish the plain
    /// topic, and each of its messages counts as a Basic Ingest publish (not metered).
    StandIn,
    /// The broker routes no `$` topic and devices publish the plain topic as the
    /// per-message baseline does: each message is metered.
    Off,
}

impl BasicIngest {
    /// IoT Core's messaging units of a run on the embedded broker: the rule's own meter
    /// (`rule_units`: every message it took in [`BasicIngest::Off`], none in
    /// [`BasicIngest::StandIn`]) corrected by what devices outside the process published
    /// through the broker's ports (`port`), which the rule cannot tell from the simulated
    /// devices: there, every publish but a Basic Ingest one is a metered message — one on a
    /// topic no rule takes too, and one on the plain topic in a topology whose simulated
    /// devices stand in for Basic Ingest — and one to the rule's Basic Ingest topic is not,
    /// whatever the topology. [`BasicIngest::Routed`] (an external broker, which carries
    /// Basic Ingest topics as they are) keeps the rule's meter.
    pub fn messaging_units(self, rule_units: u64, port: PortCounts) -> u64 {
        match self {
            Self::Routed => rule_units,
            Self::StandIn => rule_units + port.rule_plain.units + port.other_plain.units,
            Self::Off => {
                rule_units.saturating_sub(port.rule_basic_ingest.units) + port.other_plain.units
            }
        }
    }
}

/// The rule's MQTT session with an external broker (module doc): persistent, under this
/// client id, so the broker keeps the subscription and the unacknowledged and queued
/// messages for the next run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSession(pub String);

impl RuleSession {
    /// The persistent session of the pipeline storing into `data` (the `--data` location as
    /// given; a local directory by its absolute path): `iotpipe-rule-` and 10 hex digits of
    /// its MD5, 23 characters, the longest client id MQTT 3.1.1 obliges a broker to accept.
    pub fn for_data(data: &str) -> Self {
        use md5::{Digest, Md5};
        let location = if data.contains("://") {
            data.to_owned()
        } else {
            std::path::absolute(data)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| data.to_owned())
        };
        let digest = Md5::digest(location.as_bytes());
        let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
        Self(format!("iotpipe-rule-{hex}"))
    }
}

/// Where the rule takes its messages from.
pub enum RuleFeed {
    /// An MQTT broker, through a client connection: the rule subscribes at QoS 1 in
    /// `session` and acknowledges each message once ingest ran on it.
    Broker {
        /// The broker (`mqtt://` only).
        url: BrokerUrl,
        /// What the broker keeps while the rule is away.
        session: RuleSession,
    },
    /// The embedded broker, through its in-process link (module doc).
    Embedded(RuleLink),
}

/// The running rule.
pub struct IotRule {
    /// Messages received from the broker.
    pub received: Arc<AtomicU64>,
    /// When the first and the latest of them arrived.
    pub window: Arc<ReceiveWindow>,
    /// Messages the embedded broker dropped from its full log before the rule read them:
    /// its numbering of the log jumps past them (`BrokerDrops`). Always 0 from an external
    /// broker, whose drops no subscriber can see (the ledger finds them as missing seqs).
    pub dropped: Arc<AtomicU64>,
    /// What waits for the rule in the embedded broker; `None` with an external broker,
    /// whose queue a subscriber cannot see.
    pub backlog: Option<Backlog>,
    stop: watch::Sender<bool>,
    /// The rule's loop; ends with the number of distinct devices seen in the topics.
    task: JoinHandle<anyhow::Result<u64>>,
}

impl IotRule {
    /// Subscribes through `feed` and returns once the subscription is acknowledged (so that
    /// no message published afterwards is missed). Messages a persistent session delivers
    /// before that are kept and ingested first.
    pub async fn start(
        feed: RuleFeed,
        stack: Arc<Stack>,
        basic_ingest: BasicIngest,
    ) -> anyhow::Result<Self> {
        let received = Arc::new(AtomicU64::new(0));
        let window = Arc::new(ReceiveWindow::default());
        let dropped = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let dispatcher = Dispatcher {
            stack,
            basic_ingest,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENCY)),
            received: received.clone(),
            window: window.clone(),
            devices: DeviceCount::default(),
        };
        let (task, backlog) = match feed {
            RuleFeed::Broker { url, session } => (
                mqtt_feed(&url, session, basic_ingest, dispatcher, stop_rx).await?,
                None,
            ),
            RuleFeed::Embedded(link) => {
                let drops = BrokerDrops::new(dropped.clone());
                let backlog = Backlog {
                    log: link.log.clone(),
                    read_to: drops.read_to.clone(),
                };
                (
                    link_feed(link, dispatcher, drops, stop_rx).await?,
                    Some(backlog),
                )
            }
        };
        Ok(Self {
            received,
            window,
            dropped,
            backlog,
            stop,
            task,
        })
    }

    /// Stops reading and waits for the in-flight invocations to finish; returns the number
    /// of distinct devices whose topics the rule saw.
    pub async fn stop(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(true);
        self.task.await.context("the IoT rule task panicked")?
    }
}

/// What waits for the rule in the embedded broker's log: what the broker appended to it
/// ([`BrokerLog`], as its router last reported, up to a [`METER_PERIOD`] ago) against how far
/// the rule's link got in the log's numbering (read, or dropped unread: `BrokerDrops`).
#[derive(Debug, Clone)]
pub struct Backlog {
    log: Arc<BrokerLog>,
    /// The log's number of the next message the rule expects: every message before it was
    /// read or dropped.
    read_to: Arc<AtomicU64>,
}

impl Backlog {
    /// Messages the broker appended to the rule's log since it started (as of the router's
    /// latest report): each was read by the rule, dropped unread, or still waits.
    pub fn appended(&self) -> u64 {
        self.log.appended()
    }

    /// Publishes the broker took on topics the rule does not take, as of the router's
    /// latest report ([`BrokerLog::other_topics`]).
    pub fn other_topics(&self) -> u64 {
        self.log.other_topics()
    }

    /// Messages in the broker's log the rule has not read yet, as of the router's latest
    /// report (what was appended since is not counted yet).
    pub fn waiting(&self) -> u64 {
        self.appended().saturating_sub(self.read_to())
    }

    /// Their size as the log counts it, estimated at the average size of what was appended.
    pub fn waiting_bytes(&self) -> u64 {
        let appended = self.log.appended();
        if appended == 0 {
            return 0;
        }
        (self.log.appended_bytes() as f64 * self.waiting() as f64 / appended as f64) as u64
    }

    /// How far into the log's numbering the rule has got: every message before it was read
    /// or dropped.
    pub fn read_to(&self) -> u64 {
        self.read_to.load(Ordering::Relaxed)
    }

    /// The log's count of messages once it includes everything appended before `since_ms`
    /// (epoch ms; it may include some appended after), or `None` while the router's latest
    /// report may still miss some of them: the router reports only when something was
    /// appended, so the count is complete once a report made after `since_ms` came, or
    /// once a whole [`METER_PERIOD`] (and some slack) passed after it without one. Once the
    /// rule's [`Backlog::read_to`] reaches it, the rule has taken all that the broker held
    /// before `since_ms`.
    pub fn appended_before(&self, since_ms: i64, now_ms: i64) -> Option<u64> {
        covers(self.log.reported_ms(), since_ms, now_ms).then(|| self.log.appended())
    }
}

/// How late a router's report may come after its period ends ([`covers`]).
const REPORT_SLACK_MS: i64 = 500;

/// Whether the router's latest report, made at `reported_ms`, counts everything appended
/// before `since_ms`. The router reports once a [`METER_PERIOD`] and only when something
/// was appended since its last report: so once a report made after `since_ms` came, or
/// once a whole period (and some slack) passed since `since_ms` with no new report —
/// nothing was appended in between.
fn covers(reported_ms: i64, since_ms: i64, now_ms: i64) -> bool {
    let period = METER_PERIOD.as_millis() as i64 + REPORT_SLACK_MS;
    reported_ms >= since_ms || now_ms - since_ms > period
}

/// When the rule received its first and its latest message: the pace at which the
/// pipeline took what the devices sent (`iotpipe up`'s summary), start-up and the final
/// flush left out.
#[derive(Debug, Default)]
pub struct ReceiveWindow {
    /// Epoch ms of the first message; 0 until one arrives.
    first_ms: AtomicI64,
    /// Epoch ms of the latest message.
    last_ms: AtomicI64,
}

impl ReceiveWindow {
    /// Notes a message received at `at_ms` (epoch ms).
    pub fn mark(&self, at_ms: i64) {
        let _ = self
            .first_ms
            .compare_exchange(0, at_ms, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ms.fetch_max(at_ms, Ordering::Relaxed);
    }

    /// Messages per second from the first message to the latest, for `received` messages;
    /// `None` before two milliseconds apart arrived.
    pub fn rate(&self, received: u64) -> Option<f64> {
        let first = self.first_ms.load(Ordering::Relaxed);
        let span_ms = self.last_ms.load(Ordering::Relaxed) - first;
        (first != 0 && span_ms > 0).then(|| received as f64 * 1000.0 / span_ms as f64)
    }
}

/// What the rule does with each message, whichever feed it came through.
struct Dispatcher {
    stack: Arc<Stack>,
    basic_ingest: BasicIngest,
    /// One per concurrent ingest invocation ([`MAX_CONCURRENCY`]).
    permits: Arc<Semaphore>,
    received: Arc<AtomicU64>,
    window: Arc<ReceiveWindow>,
    /// Distinct device ids in the topics: the fleet size of the run's cost.
    devices: DeviceCount,
}

impl Dispatcher {
    /// Hands `messages` (topic, payload), in order, to the rule's actions in a task of their
    /// own, once as many of the [`MAX_CONCURRENCY`] slots as there are messages are free
    /// (until then the feed is not read: backpressure); `done` fires when ingest has
    /// streamed or quarantined them all. Returns how many were taken: a message on a topic
    /// that is not this rule's is skipped.
    async fn dispatch<'a>(
        &mut self,
        messages: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        done: Option<oneshot::Sender<()>>,
    ) -> anyhow::Result<usize> {
        let received_at = chrono::Utc::now().timestamp_millis();
        let mut taken = Vec::new();
        let mut received = 0;
        for (topic, payload) in messages {
            received += 1;
            let Some((topic, via_basic_ingest)) = rule_topic(topic, DEFAULT_RULE_NAME) else {
                // Not this rule's (the subscriptions should not deliver it).
                tracing::warn!(topic, "message on a topic the rule does not take");
                continue;
            };
            let device_from_topic =
                telemetry::topic::parse_topic(topic).map(|t| t.device_id.to_string());
            if let Some(d) = &device_from_topic {
                self.devices.add(d);
            }
            taken.push(RuleMessage {
                event: IotRuleEvent {
                    payload: telemetry::RuleRecord::encode_payload(payload),
                    device_from_topic,
                    topic: topic.to_owned(),
                    received_at,
                },
                payload_len: payload.len(),
                basic_ingest: via_basic_ingest || self.basic_ingest == BasicIngest::StandIn,
            });
        }
        if received > 0 {
            self.received.fetch_add(received, Ordering::Relaxed);
            self.window.mark(received_at);
        }
        let n = taken.len();
        if n == 0 {
            return Ok(0);
        }
        let slots = u32::try_from(n).context("internal: a rule batch larger than u32")?;
        let permit = self.permits.clone().acquire_many_owned(slots).await?;
        let stack = self.stack.clone();
        tokio::spawn(async move {
            stack.on_messages(taken).await;
            // Acknowledged once ingest has streamed or quarantined them (a failed ingest
            // fails the run: `Stack::finish`).
            if let Some(done) = done {
                let _ = done.send(());
            }
            // Release the stack before the permits: once every permit is back, the caller
            // may take sole ownership of the stack.
            drop(stack);
            drop(permit);
        });
        Ok(n)
    }

    /// Waits for every in-flight invocation; returns the number of distinct devices seen.
    async fn drain(self) -> anyhow::Result<u64> {
        let _all = self.permits.acquire_many(MAX_CONCURRENCY as u32).await?;
        Ok(self.devices.len())
    }
}

/// The embedded broker's feed: the rule's link subscribes to the telemetry topics (rumqttd
/// routes no `$` topic, so there is no Basic Ingest filter to add) and reads what the
/// router forwards. The router forwards a bounded batch per turn (up to 10,000 publishes:
/// `broker::start_embedded`), then waits for the link to ask for more (`Unschedule`,
/// answered by `wake`) and serves the other connections first; the link is not read while
/// every invocation slot is taken: what the devices publish meanwhile waits in the broker's
/// log, as it waits behind a connection's full in-flight window.
async fn link_feed(
    link: RuleLink,
    mut dispatcher: Dispatcher,
    mut drops: BrokerDrops,
    mut stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
    let RuleLink { mut tx, mut rx, .. } = link;
    tx.subscribe(TOPIC_FILTER)
        .map_err(|e| anyhow::anyhow!("the rule's link cannot subscribe: {e}"))?;
    // Until the SUBACK, so that nothing published after `start` returns is missed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, rx.next())
            .await
            .context("no SUBACK from the embedded broker within 10 s")?
            .map_err(|e| anyhow::anyhow!("the embedded broker's router is gone: {e}"))?;
        match n {
            // The link's only request is the subscription (its CONNACK was taken when it
            // was made), so its first acknowledgement is the SUBACK. rumqttd exports no
            // name for the ack's type to match on.
            Some(Notification::DeviceAck(_)) => break,
            Some(Notification::Unschedule) => wake(&rx).await?,
            _ => {}
        }
    }
    Ok(tokio::spawn(async move {
        // The link is kept (not dropped) until the loop ends: dropping it disconnects.
        let _tx = tx;
        loop {
            let n = tokio::select! {
                n = rx.next() => n,
                _ = stop_rx.changed() => break,
            };
            // What the router handed over with it is taken too, up to a batch and without
            // waiting, and goes to the rule's actions together (a task per batch, not per
            // message).
            let mut next = Some(n);
            let mut batch = Vec::with_capacity(LINK_BATCH);
            while let Some(n) = next.take() {
                match n.map_err(|e| anyhow::anyhow!("the embedded broker's router is gone: {e}"))? {
                    Some(Notification::Forward(f)) => {
                        if let Some((_, offset)) = f.cursor {
                            drops.forwarded(offset);
                        }
                        batch.push(f.publish);
                    }
                    Some(Notification::Unschedule) => wake(&rx).await?,
                    _ => {}
                }
                if batch.len() < LINK_BATCH {
                    next = rx.next().now_or_never();
                }
            }
            dispatch_forwarded(&mut dispatcher, &mut batch).await?;
        }
        dispatcher.drain().await
    }))
}

/// Counts what the embedded broker dropped before the rule read it. rumqttd keeps what it
/// routes to a filter in a log of segments and numbers each message by its place in that
/// log (the `cursor` of what it forwards); when the log is full it drops its oldest
/// segment, read or not, and a reader behind it jumps to the oldest message left (rumqttd
/// only logs that, as a warning). A jump in the numbers the rule's link receives is
/// therefore exactly the number of messages dropped unread.
struct BrokerDrops {
    /// Messages dropped so far ([`IotRule::dropped`]).
    dropped: Arc<AtomicU64>,
    /// The number the next message should have, shared ([`Backlog`]).
    read_to: Arc<AtomicU64>,
}

impl BrokerDrops {
    /// Counts into `dropped`. The log starts at 0 with the rule's subscription (its link
    /// subscribes before `up` tells anyone the broker's address), so what went before the
    /// first message the rule reads was dropped too.
    fn new(dropped: Arc<AtomicU64>) -> Self {
        Self {
            dropped,
            read_to: Arc::default(),
        }
    }

    /// Notes a forwarded message at `offset` in the filter's log.
    fn forwarded(&mut self, offset: u64) {
        let next = self.read_to.load(Ordering::Relaxed);
        if offset > next {
            self.dropped.fetch_add(offset - next, Ordering::Relaxed);
        }
        // A message forwarded again (an earlier offset) does not move the expectation back.
        self.read_to.store(next.max(offset + 1), Ordering::Relaxed);
    }
}

/// Messages from the embedded broker's link dispatched together, at most: a quarter of the
/// slots, so that a few batches are in flight while the link is read. One task per message
/// (before) cost a task's creation and a wake-up of the other core each, and a journal write
/// each in `up`: 38,000–42,000 against 46,000 msg/s with batches (BENCHMARKS.md, session 20).
const LINK_BATCH: usize = MAX_CONCURRENCY / 4;

/// Dispatches (and empties) `batch`, publishes the router forwarded.
async fn dispatch_forwarded(
    dispatcher: &mut Dispatcher,
    batch: &mut Vec<rumqttd::protocol::Publish>,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut messages = Vec::with_capacity(batch.len());
    for p in batch.iter() {
        let topic = std::str::from_utf8(&p.topic)
            .context("the broker forwarded a topic that is not UTF-8")?;
        messages.push((topic, &p.payload[..]));
    }
    dispatcher.dispatch(messages, None).await?;
    batch.clear();
    Ok(())
}

/// Asks the router for more of what the link subscribes to.
async fn wake(rx: &rumqttd::local::LinkRx) -> anyhow::Result<()> {
    rx.wake()
        .await
        .map_err(|e| anyhow::anyhow!("the embedded broker's router is gone: {e}"))
}

/// An MQTT broker's feed (module doc): connects, subscribes at QoS 1, and acknowledges each
/// message in arrival order once ingest ran on it.
async fn mqtt_feed(
    broker: &BrokerUrl,
    session: RuleSession,
    basic_ingest: BasicIngest,
    mut dispatcher: Dispatcher,
    mut stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
    let mut opts = MqttOptions::new(session.0, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(MAX_PAYLOAD + 1024, 64 * 1024);
    opts.set_clean_session(false);
    // A QoS 1 message is acknowledged only after ingest ran on it, so the broker's
    // in-flight window paces the devices instead of the rule buffering what it acked.
    opts.set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let mut filters = vec![TOPIC_FILTER.to_owned()];
    if basic_ingest == BasicIngest::Routed {
        filters.push(basic_ingest_filter(DEFAULT_RULE_NAME));
    }
    for f in &filters {
        client.subscribe(f, QoS::AtLeastOnce).await?;
    }
    // Drive the connection until both SUBACKs arrive. A persistent session may deliver
    // messages first (queued while the rule was away, or unacknowledged by the last
    // run): they are kept for the loop below.
    let mut early = std::collections::VecDeque::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut acked = 0;
    while acked < filters.len() {
        let ev = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .with_context(|| format!("no SUBACK from {broker} within 10 s"))?
            .with_context(|| {
                format!("cannot connect to the broker at {broker}: is it running? (omit --broker to use the embedded one)")
            })?;
        if let Event::Incoming(Packet::SubAck(ack)) = ev {
            if ack
                .return_codes
                .iter()
                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
            {
                anyhow::bail!(
                    "the broker at {broker} refused the rule's subscriptions ({filters:?}): \
                     allow this client to subscribe to them"
                );
            }
            acked += 1;
        } else if let Event::Incoming(Packet::Publish(p)) = ev {
            early.push_back(p);
        }
    }
    Ok(tokio::spawn(async move {
        // Acks in arrival order: each message's ingest signals a oneshot, and one task
        // acknowledges them first-in first-out. Unbounded, but what it holds is bounded
        // by the broker's in-flight window (it sends no more until acked).
        let (ack_tx, mut ack_rx) =
            tokio::sync::mpsc::unbounded_channel::<(rumqttc::Publish, oneshot::Receiver<()>)>();
        let acker_client = client.clone();
        let acker = tokio::spawn(async move {
            while let Some((p, done)) = ack_rx.recv().await {
                // A dropped sender (the invocation panicked) is not acked: the broker
                // redelivers it if the session survives.
                if done.await.is_ok()
                    && let Err(e) = acker_client.ack(&p).await
                {
                    tracing::warn!(error = %e, "could not acknowledge a message");
                }
            }
        });
        loop {
            let ev = match early.pop_front() {
                Some(p) => Ok(Event::Incoming(Packet::Publish(p))),
                None => tokio::select! {
                    ev = eventloop.poll() => ev,
                    _ = stop_rx.changed() => break,
                },
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let (done, done_rx) = oneshot::channel();
                    if dispatcher
                        .dispatch([(p.topic.as_str(), &p.payload[..])], Some(done))
                        .await?
                        > 0
                    {
                        // The acker outlives this loop's sender; a send fails only if it
                        // panicked, and then nothing is acked any more: say so.
                        if ack_tx.send((p, done_rx)).is_err() {
                            tracing::error!("the rule's acknowledging task is gone");
                        }
                    } else if let Err(e) = client.ack(&p).await {
                        tracing::warn!(error = %e, "could not acknowledge a message");
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // A reconnect (the first CONNACK was read before this loop): a
                    // restarted broker may have forgotten the subscription (always, with
                    // a clean session), so subscribe again.
                    tracing::info!("rule reconnected to the broker; subscribing again");
                    for f in &filters {
                        if let Err(e) = client.try_subscribe(f, QoS::AtLeastOnce) {
                            tracing::error!(error = %e, "could not subscribe again after a reconnect");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    tracing::info!("rule subscribed again: messages flow");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "rule lost the broker connection; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let devices = dispatcher.drain().await?;
        // Put the last acks on the wire: the acker queues them, the event loop sends.
        drop(ack_tx);
        let flush = async { while eventloop.poll().await.is_ok() {} };
        tokio::select! {
            _ = acker => {}
            _ = flush => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let _ = client.disconnect().await;
        Ok(devices)
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{BasicIngest, BrokerDrops, ReceiveWindow, covers};
    use crate::broker::{PortCounts, Published};

    #[test]
    fn messaging_is_metered_by_the_topic_each_device_outside_published_to() {
        let units = |u| Published {
            publishes: u,
            units: u,
        };
        // Outside devices: 5 on the plain topic, 3 on the rule's Basic Ingest topic, 2 on
        // another topic; simulated devices: 100 (on the plain topic, through rumqttd).
        let port = PortCounts {
            rule_plain: units(5),
            rule_basic_ingest: units(3),
            other_plain: units(2),
        };
        // firehose and kinesis: the simulated devices stand in for Basic Ingest (the rule
        // meters none), the outside devices' plain publishes are messages.
        assert_eq!(BasicIngest::StandIn.messaging_units(0, port), 5 + 2);
        // per-message: the rule metered the 100, the 5 and the 3 it took; the 3 were Basic
        // Ingest, the 2 it never saw were not.
        assert_eq!(BasicIngest::Off.messaging_units(108, port), 100 + 5 + 2);
        // An external broker carries the topics as they are: the rule's meter stands.
        assert_eq!(BasicIngest::Routed.messaging_units(42, port), 42);
        // Nothing from outside: the rule's meter stands in every mode.
        for mode in [BasicIngest::StandIn, BasicIngest::Off] {
            assert_eq!(mode.messaging_units(9, PortCounts::default()), 9);
        }
    }

    #[test]
    fn a_jump_in_the_brokers_numbering_counts_the_messages_it_dropped() {
        let dropped = Arc::new(AtomicU64::new(0));
        let mut d = BrokerDrops::new(dropped.clone());
        for offset in [0, 1, 2] {
            d.forwarded(offset);
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
        // The oldest segment went before the rule read it: 3..=39 were never forwarded.
        d.forwarded(40);
        assert_eq!(dropped.load(Ordering::Relaxed), 37);
        d.forwarded(41);
        d.forwarded(42);
        assert_eq!(dropped.load(Ordering::Relaxed), 37);
        // The oldest segment went while the rule was behind: 43..=99 were never forwarded.
        d.forwarded(100);
        assert_eq!(dropped.load(Ordering::Relaxed), 37 + 57);
        // A message forwarded again is no jump, and does not reopen the gap.
        d.forwarded(70);
        d.forwarded(101);
        assert_eq!(dropped.load(Ordering::Relaxed), 37 + 57);
        d.forwarded(103);
        assert_eq!(dropped.load(Ordering::Relaxed), 37 + 58);
        // The backlog's view: everything before 104 was read or dropped.
        assert_eq!(d.read_to.load(Ordering::Relaxed), 104);
    }

    #[test]
    fn a_report_covers_the_stop_once_made_after_it_or_a_period_passed_without_one() {
        let stop = 100_000;
        // A report made after the stop counts everything appended before it.
        assert!(covers(stop + 300, stop, stop + 350));
        assert!(covers(stop, stop, stop + 10));
        // The latest report is older than the stop: messages appended just before the stop
        // may not be in it yet.
        assert!(!covers(stop - 200, stop, stop + 400));
        assert!(!covers(stop - 200, stop, stop + 1_400));
        // A whole period and the slack passed after the stop without a report: nothing was
        // appended since the latest one, which is then complete.
        assert!(covers(stop - 200, stop, stop + 1_600));
        assert!(
            covers(0, stop, stop + 1_600),
            "no report ever: nothing appended"
        );
    }

    #[test]
    fn the_receive_window_gives_the_rate_from_the_first_message_to_the_latest() {
        let w = ReceiveWindow::default();
        assert_eq!(w.rate(0), None, "nothing received yet");
        w.mark(10_000);
        assert_eq!(w.rate(5), None, "one instant is no span");
        w.mark(12_000);
        // A batch dispatched late (another task's clock read earlier) moves neither end back.
        w.mark(11_000);
        assert_eq!(w.rate(5), Some(2.5));
        w.mark(14_000);
        assert_eq!(w.rate(40_000), Some(10_000.0));
    }
}

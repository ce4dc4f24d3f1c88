//! One simulated device: an MQTT client with its own connection, publishing its stream.
//!
//! Each device is two tasks, in the shape rumqttc is built for:
//! - the **driver** polls the [`rumqttc::EventLoop`] and nothing else. `poll` is never
//!   raced against other futures in a `select!`, because cancelling it while a packet is
//!   being written can lose that packet. It counts writes and PUBACKs and reconnects with
//!   backoff and jitter.
//! - the **publisher** paces the device's [`DeviceStream`], hands each message to the
//!   [`rumqttc::AsyncClient`], then waits for the acknowledgements and disconnects.
//!
//! # Giving up
//! A device gives up (stops publishing, stops waiting for acknowledgements, counts what is
//! left as failed) when the broker has answered none of its publishes for `ack_timeout`
//! after its last message was due: a broker that is slow but still acknowledging (a busy
//! machine, a throttled link) is waited for as long as it keeps answering, and only one
//! that went silent costs messages. After a shutdown request the wait is at most
//! `ack_timeout`, answered or not.
//!
//! # Sessions and republishing
//! Devices connect with a clean session by default, so a simulation leaves no session
//! state behind on the broker (`--clean-session false` keeps sessions; with MQTT 5 for
//! the session expiry). rumqttc republishes unacknowledged QoS 1 messages after a reconnect only
//! when the broker resumes the session (it discards them when `session_present` is
//! false), so the driver keeps them itself: after a connection error it takes the
//! event loop's pending requests (the unacknowledged publishes plus the requests still
//! queued in the channel) and puts them back, DUP flag set, once the new connection is
//! up. QoS 1 is therefore at-least-once across reconnects; duplicates are expected and
//! de-duplicated downstream on (`device_id`, `seq`).
//!
//! # Pacing
//! Each message has an absolute due time on the run's timeline (`t0 + due`, see
//! [`crate::schedule`]) and the publisher sleeps until it. This is
//! [`tokio::time::MissedTickBehavior::Burst`] (which a plain `Interval` would also give)
//! generalised to jittered slots: when a message is late (the client channel was full
//! while reconnecting, the runtime was busy) the overdue ones go out back to back and the
//! device is on schedule again, so the asked rate holds over the run. `Delay` would shift
//! every later message and silently lower the rate.
//!
//! # Offline buffer
//! While the connection is down the publisher blocks on the full client channel (16
//! requests; up to 100 QoS 1 publishes wait in flight inside rumqttc). Messages falling due
//! meanwhile are not generated yet, so holding them costs nothing; when the device catches
//! up and finds `offline_buffer` or more later messages already due, it drops the oldest
//! (counted, and a gap in `seq`), like a device whose ring buffer overflowed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, Request,
    TlsConfiguration, Transport,
};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tracing::debug;

use crate::error::SimError;
use crate::faults::FaultCounts;
use crate::mqtt::{BrokerUrl, MqttVersion, QoS};
use crate::publish::SendStream;
use crate::summary::{LatencyHistogram, LiveCounters};
use crate::tls::explain_handshake_error;

/// Capacity of the channel between a device's publisher and its event loop. Small on
/// purpose: it is the backpressure that holds the publisher back while the connection is
/// down (the schedule catches up afterwards).
const REQUEST_CHANNEL_CAPACITY: usize = 16;
/// QoS 1 publishes in flight per connection before the event loop waits for PUBACKs.
const MAX_INFLIGHT: u16 = 100;
/// TCP connect + CONNACK timeout, seconds (rumqttc's unit).
const CONNECT_TIMEOUT_S: u64 = 5;
/// Largest MQTT packet a device sends or takes (rumqttc's default is 10 KiB): room for
/// the largest batch and for oversize faults (128 KiB + 1 KiB).
const MAX_PACKET_BYTES: usize = 1024 * 1024;
/// Most connection attempts (TCP + TLS handshake + CONNECT/CONNACK) in progress at once,
/// fleet-wide, on top of the `connect_rate` ramp. A broker that handshakes slower than
/// the ramp asks (mutual TLS on a busy single-threaded mosquitto manages ~100/s) would
/// otherwise pile up handshakes until clients time out and hang up mid-handshake, which
/// wastes the broker's work and collapses the connection rate; with the cap, the ramp
/// slows to what the broker sustains instead.
pub(crate) const MAX_CONNECTING: usize = 64;
/// Bound on the clean disconnect at the end of a device's run.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// First reconnect delay (before jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest reconnect delay (before jitter).
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What every device of a run shares.
#[derive(Debug)]
pub(crate) struct FleetCtx {
    pub broker: BrokerUrl,
    pub qos: QoS,
    /// MQTT keep-alive of every connection.
    pub keep_alive: Duration,
    /// Clean (true) or persistent (false) sessions.
    pub clean_session: bool,
    /// MQTT 3.1.1 or 5.
    pub mqtt_version: MqttVersion,
    /// MQTT 5 session expiry of a persistent session.
    pub session_expiry: Duration,
    /// The instant the run started: every schedule is anchored here.
    pub t0: Instant,
    pub ack_timeout: Duration,
    /// Most due messages a device holds back before dropping the oldest.
    pub offline_buffer: u64,
    pub live: Arc<LiveCounters>,
    pub latency: Arc<LatencyHistogram>,
    /// Becomes true on shutdown.
    pub stop: watch::Receiver<bool>,
    /// Disconnect storms so far: a driver that sees it change drops its connection.
    pub storms: AtomicU64,
    /// Connection attempts in progress, at most [`MAX_CONNECTING`]: see there.
    pub connecting: tokio::sync::Semaphore,
}

/// Counters a device's driver updates and its publisher reads.
#[derive(Debug)]
struct DeviceShared {
    /// Distinct messages written.
    sent: AtomicU64,
    /// Distinct QoS 1 messages acknowledged.
    acked: AtomicU64,
    /// First and last write, µs after `t0` (`u64::MAX` / 0 until the first write).
    first_write_us: AtomicU64,
    last_write_us: AtomicU64,
    /// The broker's last answer to a publish (a PUBACK, or a QoS 0 write), µs after `t0`
    /// (0 until the first): how long it has been silent.
    last_answer_us: AtomicU64,
    /// Woken by the driver after every write or PUBACK (the publisher's drain waits on it).
    progress: Notify,
    /// Messages in each publish handed to the client, in hand-off order (the event loop
    /// writes them in that order): the driver counts messages, not packets. A batch
    /// weighs its size, an injected duplicate copy 0.
    weights: std::sync::Mutex<VecDeque<u64>>,
    /// Connections this device dropped in disconnect storms.
    disconnects: AtomicU64,
    /// First CONNACK, µs after `t0` (`u64::MAX` until connected).
    connected_us: AtomicU64,
}

impl Default for DeviceShared {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            first_write_us: AtomicU64::new(u64::MAX),
            last_write_us: AtomicU64::new(0),
            last_answer_us: AtomicU64::new(0),
            progress: Notify::new(),
            weights: std::sync::Mutex::new(VecDeque::new()),
            disconnects: AtomicU64::new(0),
            connected_us: AtomicU64::new(u64::MAX),
        }
    }
}

/// QoS 1 publishes written and not yet acknowledged: packet id -> (first write, messages).
type Inflight = HashMap<u16, (Instant, u64)>;

impl DeviceShared {
    fn next_weight(&self) -> u64 {
        self.weights
            .lock()
            .ok()
            .and_then(|mut w| w.pop_front())
            .unwrap_or(1)
    }

    /// A publish was written (`pkid` 0 for QoS 0): counts its messages once.
    fn on_write(&self, ctx: &FleetCtx, inflight: &mut Inflight, pkid: u16) {
        let live = &ctx.live;
        let now = Instant::now();
        let us =
            u64::try_from(now.saturating_duration_since(ctx.t0).as_micros()).unwrap_or(u64::MAX);
        self.first_write_us.fetch_min(us, Ordering::AcqRel);
        self.last_write_us.fetch_max(us, Ordering::AcqRel);
        if ctx.qos == QoS::AtMostOnce {
            self.last_answer_us.fetch_max(us, Ordering::AcqRel);
            let w = self.next_weight();
            self.sent.fetch_add(w, Ordering::AcqRel);
            self.acked.fetch_add(w, Ordering::AcqRel);
            LiveCounters::add(&live.sent, w);
            LiveCounters::add(&live.acknowledged, w);
            self.progress.notify_one();
            return;
        }
        match inflight.entry(pkid) {
            // A republish of a publish already counted (a packet id is not reused while
            // its publish is unacknowledged).
            Entry::Occupied(_) => LiveCounters::add(&live.republished, 1),
            Entry::Vacant(slot) => {
                let w = self.next_weight();
                slot.insert((now, w));
                self.sent.fetch_add(w, Ordering::AcqRel);
                LiveCounters::add(&live.sent, w);
                self.progress.notify_one();
            }
        }
    }

    /// A PUBACK arrived; `ok` is false for an MQTT 5 error reason code.
    fn on_ack(&self, ctx: &FleetCtx, inflight: &mut Inflight, pkid: u16, ok: bool) {
        if let Some((at, w)) = inflight.remove(&pkid) {
            let us = u64::try_from(ctx.t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.last_answer_us.fetch_max(us, Ordering::AcqRel);
            if ok {
                ctx.latency.record(at.elapsed());
                self.acked.fetch_add(w, Ordering::AcqRel);
                LiveCounters::add(&ctx.live.acknowledged, w);
            }
            self.progress.notify_one();
        }
    }

    /// When the device gives up (see the module docs): `ack_timeout` after the broker's
    /// last answer, and not before `schedule_end` (its last message's due time plus
    /// `ack_timeout`).
    fn give_up_at(&self, ctx: &FleetCtx, schedule_end: Instant) -> Instant {
        let last = Duration::from_micros(self.last_answer_us.load(Ordering::Acquire));
        (ctx.t0 + last + ctx.ack_timeout).max(schedule_end)
    }

    /// Returns once the device gives up ([`Self::give_up_at`], re-read after every
    /// sleep: an answer meanwhile moves it).
    async fn gave_up(&self, ctx: &FleetCtx, schedule_end: Instant) {
        loop {
            let at = self.give_up_at(ctx, schedule_end);
            if Instant::now() >= at {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }

    /// Records the first CONNACK's time.
    fn on_connack(&self, ctx: &FleetCtx) {
        let us = u64::try_from(ctx.t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.connected_us.fetch_min(us, Ordering::AcqRel);
    }

    /// Whether a disconnect storm hit since `seen` (which it updates).
    fn storm_hit(&self, ctx: &FleetCtx, seen: &mut u64) -> bool {
        let now = ctx.storms.load(Ordering::Acquire);
        if now == *seen {
            return false;
        }
        *seen = now;
        self.disconnects.fetch_add(1, Ordering::AcqRel);
        true
    }
}

/// What a device did, collected into the summary.
#[derive(Debug, Clone)]
pub(crate) struct DeviceOutcome {
    pub device_id: String,
    pub first_seq: u64,
    /// Messages handed to the MQTT client.
    pub handed_off: u64,
    /// Messages dropped by the offline buffer (their seqs are skipped).
    pub dropped: u64,
    /// Messages whose time came.
    pub scheduled: u64,
    pub sent: u64,
    /// Confirmed: PUBACKed (QoS 1) or written (QoS 0).
    pub confirmed: u64,
    /// First and last write, µs after `t0` (`None` if nothing was written).
    pub writes_us: Option<(u64, u64)>,
    /// Faults injected into this device's publishes.
    pub faults: FaultCounts,
    /// When the device first connected, µs after `t0` (`None`: never).
    pub connected_us: Option<u64>,
}

impl DeviceOutcome {
    pub fn failed(&self) -> u64 {
        self.scheduled.saturating_sub(self.confirmed)
    }
}

/// Why the publisher stopped handing off messages.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Every message was handed off.
    Completed,
    /// Shutdown was requested at this instant.
    Shutdown(Instant),
    /// The deadline passed with messages left (the broker was unreachable too long).
    GaveUp,
    /// The event loop ended (only after a failed first connection).
    DriverGone,
}

/// Runs one device to completion: connect, publish its stream on schedule, drain, and
/// disconnect. `first_connect`, when given, receives the outcome of the first connection
/// attempt (the run uses device 0 to fail fast on an unreachable broker).
pub(crate) async fn run_device(
    mut stream: SendStream,
    tls: Option<Arc<rustls::ClientConfig>>,
    ctx: Arc<FleetCtx>,
    first_connect: Option<oneshot::Sender<Result<(), SimError>>>,
) -> DeviceOutcome {
    let shared = Arc::new(DeviceShared::default());
    let device_id = stream.readings().device_id().to_owned();
    let (client, mut driver) = match ctx.mqtt_version {
        MqttVersion::V3_1_1 => {
            let (client, eventloop) = client_v4(&device_id, tls, &ctx);
            let driver = tokio::spawn(drive(
                eventloop,
                Arc::clone(&shared),
                Arc::clone(&ctx),
                device_id.clone(),
                first_connect,
            ));
            (Client::V4(client), driver)
        }
        MqttVersion::V5 => {
            let (client, eventloop) = v5::client(&device_id, tls, &ctx);
            let driver = tokio::spawn(drive(
                eventloop,
                Arc::clone(&shared),
                Arc::clone(&ctx),
                device_id.clone(),
                first_connect,
            ));
            (Client::V5(client), driver)
        }
    };

    let qos = ctx.qos;
    let t0 = ctx.t0;
    let readings = stream.readings().clone();
    let count = readings.total();
    // The device gives up no earlier than ack_timeout after its last message was due (at
    // the latest, with jitter), and later while the broker keeps answering.
    let schedule_end =
        t0 + readings.due(count.saturating_sub(1)) + readings.jitter() + ctx.ack_timeout;
    let mut stop = ctx.stop.clone();
    let (mut handed_off, mut dropped) = (0u64, 0u64);

    let end = loop {
        // Generated ahead of its time (its contents do not depend on it), then held until due.
        let Some(msg) = stream.next() else {
            break End::Completed;
        };
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break End::Shutdown(Instant::now()),
            () = shared.gave_up(&ctx, schedule_end) => break End::GaveUp,
            () = tokio::time::sleep_until(t0 + msg.due) => {}
        }
        // The offline buffer: with `offline_buffer` later messages already due, the device
        // is that far behind (its connection was down); the oldest message goes.
        let due_now = readings.due_by(Instant::now().saturating_duration_since(t0));
        if due_now.saturating_sub(stream.taken()) >= ctx.offline_buffer {
            dropped += msg.messages;
            continue;
        }
        if let Ok(mut w) = shared.weights.lock() {
            w.push_back(msg.messages);
        }
        // Blocks while the channel is full (connection down): that is the backpressure.
        let cancelled = tokio::select! {
            biased;
            () = stopped(&mut stop) => Some(End::Shutdown(Instant::now())),
            () = shared.gave_up(&ctx, schedule_end) => Some(End::GaveUp),
            r = client.publish(msg.topic, qos, msg.payload) => match r {
                Ok(()) => {
                    handed_off += msg.messages;
                    None
                }
                Err(_) => Some(End::DriverGone),
            },
        };
        if let Some(end) = cancelled {
            // Not handed off: its weight must not count the next write.
            if let Ok(mut w) = shared.weights.lock() {
                w.pop_back();
            }
            break end;
        }
    };
    let now = Instant::now();
    // Messages are taken at or after their due time, so this covers those already taken.
    let scheduled = (handed_off + dropped).max(readings.due_by(now.saturating_duration_since(t0)));
    if dropped > 0 {
        LiveCounters::add(&ctx.live.dropped, dropped);
        debug!(device = %device_id, dropped, "offline buffer overflowed");
    }

    // Wait for the outstanding confirmations: while the broker answers, or at most
    // ack_timeout after a shutdown request.
    let drain_until = |s: &DeviceShared| match end {
        End::Shutdown(at) => (at + ctx.ack_timeout).min(schedule_end.max(at)),
        End::Completed | End::GaveUp => s.give_up_at(&ctx, schedule_end),
        End::DriverGone => now,
    };
    let confirmed = |s: &DeviceShared| match ctx.qos {
        QoS::AtLeastOnce => s.acked.load(Ordering::Acquire),
        QoS::AtMostOnce => s.sent.load(Ordering::Acquire),
    };
    while confirmed(&shared) < handed_off {
        // `notify_one` stores a permit, so a confirmation between the check and this wait
        // is not lost.
        if tokio::time::timeout_at(drain_until(&shared), shared.progress.notified())
            .await
            .is_err()
            && Instant::now() >= drain_until(&shared)
        {
            break;
        }
    }

    // Queued behind any QoS 0 publishes still in the channel, so those go out first. When
    // the connection is down the channel may be full: then the driver is stopped instead.
    let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, client.disconnect()).await;
    if tokio::time::timeout(DISCONNECT_TIMEOUT, &mut driver)
        .await
        .is_err()
    {
        driver.abort();
    }

    let mut faults = stream.counts();
    faults.disconnects = shared.disconnects.load(Ordering::Acquire);
    let connected_us = Some(shared.connected_us.load(Ordering::Acquire)).filter(|&t| t != u64::MAX);
    let outcome = DeviceOutcome {
        connected_us,
        device_id,
        first_seq: readings.first_seq(),
        faults,
        handed_off,
        dropped,
        scheduled,
        sent: shared.sent.load(Ordering::Acquire),
        confirmed: confirmed(&shared),
        writes_us: match (
            shared.first_write_us.load(Ordering::Acquire),
            shared.last_write_us.load(Ordering::Acquire),
        ) {
            (u64::MAX, _) => None,
            (first, last) => Some((first, last)),
        },
    };
    LiveCounters::add(&ctx.live.failed, outcome.failed());
    outcome
}

/// The MQTT 3.1.1 client of a device and its event loop.
fn client_v4(
    device_id: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    ctx: &FleetCtx,
) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(device_id, ctx.broker.host.clone(), ctx.broker.port);
    opts.set_keep_alive(ctx.keep_alive)
        .set_clean_session(ctx.clean_session)
        .set_inflight(MAX_INFLIGHT)
        // rumqttc's default limit is 10 KiB: too small for batches and oversize faults.
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some(tls) = tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CHANNEL_CAPACITY);
    eventloop.set_network_options(network_options());
    (client, eventloop)
}

fn network_options() -> NetworkOptions {
    let mut net = NetworkOptions::new();
    // Small telemetry packets: don't let Nagle hold them back waiting for the last ACK.
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(CONNECT_TIMEOUT_S);
    net
}

/// A device's MQTT client handle, of either protocol version.
enum Client {
    V4(AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    /// Queues a publish; fails only when the event loop is gone.
    async fn publish(&self, topic: String, qos: QoS, payload: Vec<u8>) -> Result<(), ()> {
        match self {
            Client::V4(c) => c
                .publish(topic, qos.to_rumqttc(), false, payload)
                .await
                .map_err(drop),
            Client::V5(c) => c
                .publish(topic, v5::qos(qos), false, payload)
                .await
                .map_err(drop),
        }
    }

    async fn disconnect(&self) -> Result<(), ()> {
        match self {
            Client::V4(c) => c.disconnect().await.map_err(drop),
            Client::V5(c) => c.disconnect().await.map_err(drop),
        }
    }
}

/// Completes when `stop` is (or becomes) true; never, if its sender is gone.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What the driver does with one event of an MQTT event loop, whatever the protocol
/// version.
enum Step<E> {
    /// The broker accepted the connection.
    ConnAck,
    /// A QoS 1 publish with this packet id was written to the socket.
    Written(u16),
    /// The broker answered the publish with this packet id; `ok` is false when MQTT 5's
    /// reason code refused it.
    Acked { pkid: u16, ok: bool },
    /// The client sent DISCONNECT: the device is done.
    Disconnected,
    /// Anything else (pings, other packets).
    Other,
    /// The connection failed or was lost.
    Failed(E),
}

/// The part of rumqttc's event loops (MQTT 3.1.1 and MQTT 5 are separate types) that the
/// driver uses, so that one [`drive`] serves both protocol versions.
trait DeviceLoop: Send {
    /// A request queued for the broker.
    type Request: Send;
    /// A connection error.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Drops the connection without a DISCONNECT (a disconnect storm).
    fn clean(&mut self);
    /// The requests not yet acknowledged by the broker, replayed after a reconnect.
    fn pending(&mut self) -> &mut VecDeque<Self::Request>;
    /// Marks a replayed QoS 1 publish as a duplicate delivery.
    fn mark_dup(request: Self::Request) -> Self::Request;
    /// Polls the next event, connecting first while disconnected.
    fn next_step(
        &mut self,
        device_id: &str,
    ) -> impl std::future::Future<Output = Step<Self::Error>> + Send;
}

impl DeviceLoop for EventLoop {
    type Request = Request;
    type Error = rumqttc::ConnectionError;

    fn clean(&mut self) {
        EventLoop::clean(self);
    }

    fn pending(&mut self) -> &mut VecDeque<Request> {
        &mut self.pending
    }

    fn mark_dup(request: Request) -> Request {
        mark_dup(request)
    }

    async fn next_step(&mut self, _device_id: &str) -> Step<Self::Error> {
        match self.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Step::ConnAck,
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Step::Written(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Step::Acked {
                pkid: ack.pkid,
                ok: true,
            },
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Step::Disconnected,
            Ok(_) => Step::Other,
            Err(e) => Step::Failed(e),
        }
    }
}

/// Polls the event loop until the device disconnects; counts writes and PUBACKs;
/// reconnects with backoff and jitter, republishing unacknowledged QoS 1 messages.
async fn drive<L: DeviceLoop>(
    mut eventloop: L,
    shared: Arc<DeviceShared>,
    ctx: Arc<FleetCtx>,
    device_id: String,
    mut first_connect: Option<oneshot::Sender<Result<(), SimError>>>,
) {
    let live = &ctx.live;
    let mut inflight = Inflight::new();
    // Requests of a lost connection, replayed once the next one is up.
    let mut stash: VecDeque<L::Request> = VecDeque::new();
    let mut attempt = 0u32;
    let mut connected = ConnectedGuard::new(live);
    let mut storms_seen = 0;

    loop {
        if connected.on && shared.storm_hit(&ctx, &mut storms_seen) {
            // A disconnect storm: drop the connection without a DISCONNECT packet, keep
            // what was not acknowledged for the replay, reconnect after a jittered pause.
            eventloop.clean();
            stash.append(eventloop.pending());
            connected.set(false);
            tokio::time::sleep(backoff(0)).await;
        }
        // While disconnected, `poll` connects first: take a connection slot for it.
        let slot = if connected.on {
            None
        } else {
            ctx.connecting.acquire().await.ok()
        };
        let step = eventloop.next_step(&device_id).await;
        drop(slot);
        match step {
            Step::ConnAck => {
                if let Some(tx) = first_connect.take() {
                    let _ = tx.send(Ok(()));
                }
                connected.set(true);
                shared.on_connack(&ctx);
                // Storms before this connection do not count for it.
                storms_seen = ctx.storms.load(Ordering::Acquire);
                attempt = 0;
                if !stash.is_empty() {
                    debug!(device = %device_id, requests = stash.len(), "replaying after reconnect");
                    // Ahead of anything queued in the channel since: the original order.
                    let mut replay: VecDeque<L::Request> =
                        stash.drain(..).map(L::mark_dup).collect();
                    replay.append(eventloop.pending());
                    *eventloop.pending() = replay;
                }
            }
            Step::Written(pkid) => shared.on_write(&ctx, &mut inflight, pkid),
            Step::Acked { pkid, ok } => shared.on_ack(&ctx, &mut inflight, pkid, ok),
            Step::Disconnected => break,
            Step::Other => {}
            Step::Failed(e) => {
                if let Some(tx) = first_connect.take() {
                    // The run decides: it aborts when the first device cannot connect.
                    let _ = tx.send(Err(connect_error(&ctx.broker.to_string(), &e)));
                    break;
                }
                LiveCounters::add(&live.connection_errors, 1);
                if connected.set(false) {
                    debug!(device = %device_id, error = %e, "connection lost; reconnecting");
                } else {
                    debug!(device = %device_id, error = %e, attempt, "connect failed; retrying");
                }
                // rumqttc moved the unacknowledged publishes (and the queued requests) to
                // `pending`, and would drop them on a clean-session CONNACK.
                stash.append(eventloop.pending());
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
    if !inflight.is_empty() {
        // Counted as failed in the summary; one line per device would flood the terminal.
        debug!(device = %device_id, unacknowledged = inflight.len(), "disconnected with QoS 1 messages unacknowledged");
    }
}

/// Marks a replayed QoS 1 publish as a duplicate delivery (MQTT 3.1.1 §3.3.1.1).
fn mark_dup(request: Request) -> Request {
    match request {
        Request::Publish(mut p) if p.pkid != 0 => {
            p.dup = true;
            Request::Publish(p)
        }
        other => other,
    }
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random, so that a
/// fleet that lost its broker at the same instant does not reconnect in lock-step.
fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(BACKOFF_MAX);
    let half = capped / 2;
    let jitter = rand::rng().random_range(0..=half.as_micros().max(1));
    half + Duration::from_micros(u64::try_from(jitter).unwrap_or(0))
}

/// Keeps [`LiveCounters::connected`] right even when the driver task is aborted.
struct ConnectedGuard<'a> {
    live: &'a LiveCounters,
    on: bool,
}

impl<'a> ConnectedGuard<'a> {
    fn new(live: &'a LiveCounters) -> Self {
        Self { live, on: false }
    }

    /// Sets the state; returns the previous one.
    fn set(&mut self, on: bool) -> bool {
        let was = self.on;
        if on && !was {
            self.live.connected.fetch_add(1, Ordering::Relaxed);
        } else if !on && was {
            self.live.connected.fetch_sub(1, Ordering::Relaxed);
        }
        self.on = on;
        was
    }
}

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// The MQTT 5 client: the same driver ([`drive`]) over `rumqttc::v5` types.
mod v5 {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions, Request};
    use rumqttc::{Outgoing, TlsConfiguration, Transport};
    use tracing::debug;

    use super::{
        CONNECT_TIMEOUT_S, DeviceLoop, FleetCtx, MAX_INFLIGHT, REQUEST_CHANNEL_CAPACITY, Step,
        network_options,
    };
    use crate::mqtt::QoS;

    pub(super) fn qos(q: QoS) -> rumqttc::v5::mqttbytes::QoS {
        match q {
            QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        }
    }

    /// The MQTT 5 client of a device and its event loop. A persistent session
    /// (`clean_session = false`) is clean start off plus a session expiry interval.
    pub(super) fn client(
        device_id: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        ctx: &FleetCtx,
    ) -> (AsyncClient, EventLoop) {
        let mut opts = MqttOptions::new(device_id, ctx.broker.host.clone(), ctx.broker.port);
        opts.set_keep_alive(ctx.keep_alive)
            .set_clean_start(ctx.clean_session)
            .set_outgoing_inflight_upper_limit(MAX_INFLIGHT)
            .set_connection_timeout(CONNECT_TIMEOUT_S)
            .set_network_options(network_options());
        if !ctx.clean_session {
            let secs = u32::try_from(ctx.session_expiry.as_secs()).unwrap_or(u32::MAX);
            opts.set_session_expiry_interval(Some(secs));
        }
        if let Some(tls) = tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        }
        AsyncClient::new(opts, REQUEST_CHANNEL_CAPACITY)
    }

    impl DeviceLoop for EventLoop {
        type Request = Request;
        type Error = rumqttc::v5::ConnectionError;

        fn clean(&mut self) {
            EventLoop::clean(self);
        }

        fn pending(&mut self) -> &mut VecDeque<Request> {
            &mut self.pending
        }

        fn mark_dup(request: Request) -> Request {
            match request {
                Request::Publish(mut p) if p.pkid != 0 => {
                    p.dup = true;
                    Request::Publish(p)
                }
                other => other,
            }
        }

        /// A PUBACK with an error reason code (quota exceeded, not authorized, ...) is not
        /// an acknowledgement: that message counts as failed.
        async fn next_step(&mut self, device_id: &str) -> Step<Self::Error> {
            match self.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Step::ConnAck,
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Step::Written(pkid),
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let ok = matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    );
                    if !ok {
                        debug!(device = %device_id, reason = ?ack.reason, "publish refused");
                    }
                    Step::Acked { pkid: ack.pkid, ok }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => Step::Disconnected,
                Ok(_) => Step::Other,
                Err(e) => Step::Failed(e),
            }
        }
    }
}

/// Wraps the first device's connection error (an MQTT 3.1.1 or 5
/// `rumqttc` `ConnectionError`), with a hint chosen by its kind.
fn connect_error(broker: &str, err: &(dyn std::error::Error + 'static)) -> SimError {
    use rumqttc::ConnectionError as E;
    use rumqttc::v5::ConnectionError as E5;
    use std::io::ErrorKind;
    if let Some((reason, hint)) = explain_handshake_error(err) {
        return SimError::Connect {
            broker: broker.to_owned(),
            reason,
            hint,
        };
    }
    let io = match (err.downcast_ref::<E>(), err.downcast_ref::<E5>()) {
        (Some(E::Io(e)), _) | (_, Some(E5::Io(e))) => Some(e.kind()),
        _ => None,
    };
    let refused = "is a broker running? try `iotpipe up`, or start mosquitto \
                   (`mosquitto -p PORT`), then pass --broker mqtt://HOST:PORT";
    let rejected = "the broker rejected the MQTT CONNECT: check that it allows anonymous \
                    clients (mosquitto: `allow_anonymous true`) and these client ids";
    let hint = match (io, err.downcast_ref::<E>(), err.downcast_ref::<E5>()) {
        (Some(ErrorKind::ConnectionRefused), _, _) => refused,
        (Some(ErrorKind::NotFound | ErrorKind::Other), _, _) => "check the host name in --broker",
        (_, Some(E::NetworkTimeout | E::FlushTimeout), _) | (_, _, Some(E5::Timeout(_))) => {
            "the host did not answer within 5 s: check the address, the port and any \
             firewall"
        }
        (_, Some(E::ConnectionRefused(_)), _) | (_, _, Some(E5::ConnectionRefused(_))) => rejected,
        (_, _, Some(_)) => {
            "check that --broker points at an MQTT 5 broker (or drop --mqtt-version 5)"
        }
        _ => "check that --broker points at an MQTT 3.1.1 broker",
    };
    let reason = match io {
        Some(ErrorKind::ConnectionRefused) => "connection refused".into(),
        _ => err.to_string(),
    };
    SimError::Connect {
        broker: broker.to_owned(),
        reason,
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_MAX);
            assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn only_qos1_publishes_with_a_packet_id_are_marked_duplicate() {
        let mut p = rumqttc::Publish::new("t", rumqttc::QoS::AtLeastOnce, vec![1]);
        p.pkid = 7;
        let Request::Publish(out) = mark_dup(Request::Publish(p)) else {
            panic!("not a publish");
        };
        assert!(out.dup);
        let fresh = rumqttc::Publish::new("t", rumqttc::QoS::AtLeastOnce, vec![1]);
        let Request::Publish(out) = mark_dup(Request::Publish(fresh)) else {
            panic!("not a publish");
        };
        assert!(!out.dup);
    }
}

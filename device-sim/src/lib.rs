//! Simulated IoT device fleets publishing telemetry over MQTT.
//!
//! Every simulated device is its own MQTT client (client id = device id) that publishes
//! the canonical telemetry payload of the data contract ([`telemetry::Telemetry`]) on
//! `dt/{fleet}/{device_id}/telemetry`, at a fixed rate, for a fixed span of event time.
//! Payloads are deterministic: the same [`SimConfig`] (seed and event-time origin
//! included) gives a byte-identical payload stream, whether it is published by [`run`] or
//! listed by [`generate`]. Each device's `seq` starts at [`SimConfig::first_seq`] and
//! counts up by one, and [`SimSummary::per_device`] records the range each device
//! published, so the pipeline can tell a lost message from a late one.
//!
//! ```no_run
//! # async fn demo() -> Result<(), device_sim::SimError> {
//! use std::time::Duration;
//! use device_sim::{SimConfig, run};
//!
//! let cfg = SimConfig {
//!     broker: "mqtt://127.0.0.1:1883".parse()?,
//!     devices: 20,
//!     rate: 5.0,
//!     duration: Duration::from_secs(2),
//!     ..SimConfig::default()
//! };
//! let (_stop, shutdown) = tokio::sync::watch::channel(false);
//! let summary = run(cfg, shutdown).await?;
//! assert_eq!(summary.scheduled, 200);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! Modules form a DAG: each imports only modules listed above it (checked by grepping
//! `crate::` paths; no cycles).
//! - [`error`]: the [`SimError`] enum. Imports nothing of the crate.
//! - `durations` (private): humantime (de)serialisation of durations (`"30s"`).
//! - [`mqtt`]: value types — [`BrokerUrl`] (also `iotpipe`'s `--broker`), [`Scheme`],
//!   [`QoS`], [`MqttVersion`].
//! - [`tls`]: mutual-TLS client settings ([`tls::TlsConfig`]) on rustls + aws-lc-rs.
//! - [`faults`]: fault-injection settings and counts ([`faults::Faults`],
//!   [`faults::FaultCounts`]) and the batch limit.
//! - [`device_type`]: the value types of a fleet file — [`device_type::DeviceType`], its
//!   metric specs and firmware — and the id / message-count arithmetic.
//! - [`model`]: a device's metric generators at run time (constant, uniform, gaussian,
//!   daily cycle, random walk, decay, pick-one, GPS track), one seeded random stream per
//!   device.
//! - [`config`]: the run's [`SimConfig`] (defaults, validation, fleet files). Sits on the
//!   value types above; the modules below take a `SimConfig`.
//! - [`fleet`]: the [`fleet::FleetLayout`] that maps a device index to its type and id.
//! - [`schedule`]: the publish schedule and the payload stream
//!   ([`schedule::DeviceStream`], merged into time order by [`schedule::FleetStream`]).
//! - [`publish`]: device-side batches with faults injected ([`publish::SendStream`]:
//!   what a device publishes, made from its readings) and the fleet's publishes in time
//!   order.
//! - [`summary`]: the run's [`SimSummary`], the per-device [`DeviceLedger`], live
//!   counters and the latency histogram.
//! - `device` (private): one device = an MQTT event-loop task plus a publisher task;
//!   pacing, acknowledgement counting, reconnects and republishing.
//! - this file: [`run`], [`generate`] and friends, on top of everything.
//! - `src/main.rs`: the `device-sim` command line.
//!
//! # Notes
//! - **Rate and count.** Each device publishes ⌈rate × duration⌉ messages, one every
//!   1/rate s (or every `interval` of its [`fleet::DeviceType`]); device *i* starts
//!   *i*/`connect_rate` s after the first (the connection ramp) plus a per-device phase in
//!   `[0, interval)`. A run therefore lasts about `duration + devices/connect_rate` plus
//!   the wait for the last acknowledgements.
//! - **Pacing** is by absolute due times anchored at the start of the run (the
//!   `MissedTickBehavior::Burst` policy): a device that fell behind catches up, so the
//!   asked rate holds over the run.
//! - **Event time** follows the same schedule from [`SimConfig::start_ms`], not the
//!   wall clock at send time, so payloads do not depend on network timing.
//! - **Delivery.** Devices connect with a clean session by default (nothing is left on
//!   the broker; [`SimConfig::clean_session`] asks for persistent ones);
//!   QoS 1 is still at-least-once across reconnects, because the simulator itself replays
//!   unacknowledged messages (DUP flag set) once it has reconnected with backoff and
//!   jitter. QoS 0 is at-most-once. A device that cannot publish for long holds at most
//!   [`SimConfig::offline_buffer`] due messages and drops the oldest beyond that. Every
//!   scheduled message ends up `acknowledged` or `failed` (which includes `dropped`).
//! - **Fleets** of several device types come from TOML fleet files ([`SimConfig::load`];
//!   `device-sim/fleet.example.toml`).
//! - **TLS** (`mqtts://`): mutual X.509 with one shared client certificate or one per
//!   device from a directory, ALPN `x-amzn-mqtt-ca` for AWS IoT Core on port 443; see
//!   [`tls`]. Files are checked before the first connection.

pub mod config;
mod device;
pub mod device_type;
mod durations;
pub mod error;
pub mod faults;
pub mod fleet;
pub mod model;
pub mod mqtt;
pub mod progress;
pub mod publish;
pub mod schedule;
pub mod summary;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

pub use config::SimConfig;
pub use error::SimError;
pub use mqtt::{BrokerUrl, MqttVersion, QoS, Scheme};
pub use summary::{DeviceLedger, LiveCounters, SimSummary};

use crate::device::{DeviceOutcome, FleetCtx, run_device, stopped};
use crate::faults::FaultCounts;
use crate::fleet::FleetLayout;
use crate::publish::{FleetSendStream, SendStream};
use crate::schedule::{DeviceStream, FleetStream};
use crate::summary::LatencyHistogram;
use crate::tls::TlsSetup;

/// Publishes the fleet's messages over MQTT until every device has published its share
/// (⌈rate × duration⌉ messages) or `shutdown` becomes true; then waits (at most
/// [`SimConfig::ack_timeout`]) for outstanding QoS 1 acknowledgements and disconnects
/// every device cleanly.
///
/// Fails fast with [`SimError::Connect`] when the first device cannot connect (nothing is
/// published then); later connection problems are retried with backoff and show up in
/// the summary's `connection_errors` and `failed`.
pub async fn run(cfg: SimConfig, shutdown: watch::Receiver<bool>) -> Result<SimSummary, SimError> {
    run_with_counters(cfg, shutdown, Arc::default()).await
}

/// [`run`], updating `live` as it goes, for progress displays.
pub async fn run_with_counters(
    cfg: SimConfig,
    shutdown: watch::Receiver<bool>,
    live: Arc<LiveCounters>,
) -> Result<SimSummary, SimError> {
    cfg.validate()?;
    let start_ms = cfg.start_ms.unwrap_or_else(now_ms);
    let broker = cfg.broker.to_string();
    let layout = FleetLayout::new(&cfg);
    let devices = layout.devices();
    // TLS files are read and checked before anything connects.
    let tls = match cfg.broker.scheme {
        Scheme::Mqtts => {
            let ids: Vec<String> = (0..devices).filter_map(|i| layout.device_id(i)).collect();
            Some(TlsSetup::new(
                &cfg.tls,
                &cfg.broker,
                ids.iter().map(String::as_str),
            )?)
        }
        Scheme::Mqtt => None,
    };
    let tls_for = |device_id: &str| tls.as_ref().map(|t| t.client_config(device_id)).transpose();

    // The fleet's own stop signal: set by `shutdown`, or by the run when it aborts.
    let (stop_tx, stop_rx) = watch::channel(false);
    let forward = tokio::spawn({
        let mut shutdown = shutdown;
        let stop_tx = stop_tx.clone();
        async move {
            stopped(&mut shutdown).await;
            let _ = stop_tx.send(true);
        }
    });
    let latency = Arc::new(LatencyHistogram::default());
    let ctx = Arc::new(FleetCtx {
        broker: cfg.broker.clone(),
        qos: cfg.qos,
        keep_alive: cfg.keep_alive,
        clean_session: cfg.clean_session,
        mqtt_version: cfg.mqtt_version,
        session_expiry: cfg.session_expiry,
        t0: Instant::now(),
        ack_timeout: cfg.ack_timeout,
        offline_buffer: cfg.offline_buffer,
        live: Arc::clone(&live),
        latency: Arc::clone(&latency),
        stop: stop_rx.clone(),
        storms: AtomicU64::new(0),
        connecting: tokio::sync::Semaphore::new(device::MAX_CONNECTING),
    });
    // Disconnect storms at their seeded instants on the run's timeline.
    // (Within the publishing span: the connection ramp plus the duration.)
    let storm_times = cfg.faults.storm_times(
        cfg.seed,
        cfg.duration + Duration::from_secs_f64(devices as f64 / cfg.connect_rate),
    );
    let storms_planned = storm_times.len();
    let storm_task = tokio::spawn({
        let ctx = Arc::clone(&ctx);
        async move {
            for at in storm_times {
                tokio::time::sleep_until(ctx.t0 + at).await;
                ctx.storms.fetch_add(1, Ordering::AcqRel);
                info!(
                    storm = ctx.storms.load(Ordering::Acquire),
                    "disconnect storm"
                );
            }
        }
    });
    let monitor = tokio::spawn(warn_on_connection_errors(Arc::clone(&live)));
    // Ended with the run, however it returns (an early `?` included).
    let background = AbortOnDrop([forward, monitor, storm_task]);
    info!(%broker, devices, rate = layout.nominal_rate(), qos = %cfg.qos, "starting fleet");

    let mut handles: Vec<JoinHandle<DeviceOutcome>> = Vec::with_capacity(devices);
    let mut ids = Vec::with_capacity(devices);
    let mut stop = stop_rx.clone();
    let stream_of = |index| {
        DeviceStream::new(&cfg, &layout, start_ms, index)
            .map(|d| SendStream::new(d, &cfg))
            .ok_or_else(|| SimError::InvalidConfig {
                field: "device_type",
                reason: format!("no device {index} in the fleet layout"),
            })
    };

    // Device 0 doubles as the connectivity probe: if it cannot connect at all, say so
    // now instead of retrying every device until the deadline.
    let first = stream_of(0)?;
    let first_tls = tls_for(first.readings().device_id())?;
    ids.push((
        first.readings().device_id().to_owned(),
        first.readings().first_seq(),
    ));
    let (probe_tx, probe_rx) = oneshot::channel();
    handles.push(tokio::spawn(run_device(
        first,
        first_tls,
        Arc::clone(&ctx),
        Some(probe_tx),
    )));
    LiveCounters::add(&live.started, 1);
    let probe = tokio::select! {
        r = probe_rx => r.ok(),
        () = stopped(&mut stop) => None,
    };
    if let Some(Err(e)) = probe {
        abort_devices(&stop_tx, &handles);
        return Err(e);
    }

    // The connection ramp: device i is started at its slot, i / connect_rate s in.
    for index in 1..devices {
        let stream = match stream_of(index) {
            Ok(s) => s,
            Err(e) => {
                abort_devices(&stop_tx, &handles);
                return Err(e);
            }
        };
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            () = tokio::time::sleep_until(ctx.t0 + stream.readings().connect_at()) => {}
        }
        let device_tls = match tls_for(stream.readings().device_id()) {
            Ok(t) => t,
            Err(e) => {
                // A device's certificate went bad after the check: stop the fleet.
                abort_devices(&stop_tx, &handles);
                return Err(e);
            }
        };
        ids.push((
            stream.readings().device_id().to_owned(),
            stream.readings().first_seq(),
        ));
        handles.push(tokio::spawn(run_device(
            stream,
            device_tls,
            Arc::clone(&ctx),
            None,
        )));
        LiveCounters::add(&live.started, 1);
    }
    let devices_started = handles.len();

    let mut outcomes = Vec::with_capacity(handles.len());
    for (h, (device_id, first_seq)) in handles.into_iter().zip(&ids) {
        match h.await {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                // A panicking device is a bug; keep the summary honest about it.
                warn!(device = %device_id, error = %e, "device task ended abnormally");
                outcomes.push(DeviceOutcome {
                    device_id: device_id.clone(),
                    first_seq: *first_seq,
                    handed_off: 0,
                    dropped: 0,
                    scheduled: 0,
                    sent: 0,
                    confirmed: 0,
                    writes_us: None,
                    faults: FaultCounts::default(),
                    connected_us: None,
                });
            }
        }
    }
    drop(background);
    let storms = ctx.storms.load(Ordering::Acquire);
    debug_assert!(storms as usize <= storms_planned);
    let elapsed = ctx.t0.elapsed();

    let mut summary = summarize(
        &cfg,
        &layout,
        start_ms,
        broker,
        devices_started,
        outcomes,
        &live,
        &latency,
        elapsed,
    );
    summary.disconnect_storms = storms;
    Ok(summary)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn summarize(
    cfg: &SimConfig,
    layout: &FleetLayout,
    start_ms: i64,
    broker: String,
    devices_started: usize,
    outcomes: Vec<DeviceOutcome>,
    live: &LiveCounters,
    latency: &LatencyHistogram,
    elapsed: Duration,
) -> SimSummary {
    let mut per_device = BTreeMap::new();
    let (mut scheduled, mut sent, mut acknowledged, mut failed, mut dropped) = (0, 0, 0, 0, 0);
    let (mut first_write, mut last_write) = (u64::MAX, 0);
    let mut faults = FaultCounts::default();
    let (mut first_conn, mut last_conn, mut devices_connected) = (u64::MAX, 0, 0usize);
    for o in &outcomes {
        faults.add(&o.faults);
        if let Some(t) = o.connected_us {
            devices_connected += 1;
            first_conn = first_conn.min(t);
            last_conn = last_conn.max(t);
        }
        scheduled += o.scheduled;
        sent += o.sent;
        acknowledged += o.confirmed;
        failed += o.failed();
        dropped += o.dropped;
        if let Some((first, last)) = o.writes_us {
            first_write = first_write.min(first);
            last_write = last_write.max(last);
        }
        per_device.insert(
            o.device_id.clone(),
            DeviceLedger {
                first_seq: o.first_seq,
                last_seq: (o.handed_off + o.dropped)
                    .checked_sub(1)
                    .map(|k| o.first_seq + k),
                sent: o.sent,
                acknowledged: o.confirmed,
                failed: o.failed(),
                dropped: o.dropped,
                faults: o.faults,
            },
        );
    }
    // Devices the ramp never reached (shutdown): in the ledger with nothing published.
    for index in outcomes.len()..layout.devices() {
        if let Some(id) = layout.device_id(index) {
            per_device.insert(
                id,
                DeviceLedger {
                    first_seq: cfg.first_seq,
                    last_seq: None,
                    sent: 0,
                    acknowledged: 0,
                    failed: 0,
                    dropped: 0,
                    faults: FaultCounts::default(),
                },
            );
        }
    }
    let span_s = last_write.saturating_sub(first_write) as f64 / 1e6;
    let send_rate = if sent > 1 && span_s > 0.0 {
        ((sent - 1) as f64 / span_s * 10.0).round() / 10.0
    } else {
        0.0
    };
    let qos1 = cfg.qos == QoS::AtLeastOnce;
    let connect_span_s = (devices_connected > 0)
        .then(|| (last_conn.saturating_sub(first_conn) as f64 / 1e3).round() / 1e3);
    let connect_rate = match connect_span_s {
        Some(span) if span > 0.0 && devices_connected > 1 => {
            ((devices_connected - 1) as f64 / span * 10.0).round() / 10.0
        }
        _ => 0.0,
    };
    SimSummary {
        devices_connected,
        connect_span_s,
        connect_rate,
        broker,
        fleet: cfg.fleet.clone(),
        devices: layout.devices(),
        devices_started,
        qos: cfg.qos,
        mqtt_version: cfg.mqtt_version,
        rate: cfg.device_types.is_empty().then_some(cfg.rate),
        nominal_rate: (layout.nominal_rate() * 1000.0).round() / 1000.0,
        messages_per_device: layout.max_messages_per_device(),
        seed: cfg.seed,
        start_ms,
        scheduled,
        sent,
        acknowledged,
        failed,
        dropped,
        republished: LiveCounters::get(&live.republished),
        connection_errors: LiveCounters::get(&live.connection_errors),
        elapsed,
        send_rate,
        publish_latency_p50_ms: latency.quantile_ms(0.50).filter(|_| qos1),
        publish_latency_p99_ms: latency.quantile_ms(0.99).filter(|_| qos1),
        batch: cfg.batch,
        faults,
        disconnect_storms: 0,
        per_device,
    }
}

/// Logs connection trouble once a second for the whole fleet, instead of once per device
/// (a broker restart would otherwise print a line per device).
async fn warn_on_connection_errors(live: Arc<LiveCounters>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = 0;
    loop {
        tick.tick().await;
        let errors = LiveCounters::get(&live.connection_errors);
        if errors > seen {
            warn!(
                new_errors = errors - seen,
                connected = LiveCounters::get(&live.connected),
                started = LiveCounters::get(&live.started),
                "connection errors; devices reconnect with backoff"
            );
            seen = errors;
        }
    }
}

/// The deterministic publish stream of `cfg` in the order it falls due, as `(topic,
/// payload)` pairs: exactly what [`run`] publishes (batches and injected faults
/// included), without a broker. `cfg.start_ms = None` uses the current time. An invalid
/// `cfg` yields nothing (check with [`SimConfig::validate`] or use [`try_publishes`] to
/// get the reason).
pub fn generate(cfg: &SimConfig) -> impl Iterator<Item = (String, Vec<u8>)> + use<> {
    try_publishes(cfg)
        .ok()
        .into_iter()
        .flatten()
        .map(|p| (p.topic, p.payload))
}

/// The readings of `cfg` in event-time order, one per `seq`, with each message's device,
/// `seq` and `ts` (before batching and faults), or why `cfg` is invalid.
pub fn try_generate(cfg: &SimConfig) -> Result<FleetStream, SimError> {
    cfg.validate()?;
    Ok(FleetStream::new(cfg, cfg.start_ms.unwrap_or_else(now_ms)))
}

/// The publishes of `cfg` (batched, faults injected) in the order they fall due, or why
/// `cfg` is invalid: what `--dump` writes.
pub fn try_publishes(cfg: &SimConfig) -> Result<FleetSendStream, SimError> {
    cfg.validate()?;
    Ok(FleetSendStream::new(
        cfg,
        cfg.start_ms.unwrap_or_else(now_ms),
    ))
}

/// The current time, epoch milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Tasks aborted when this is dropped: a run's background tasks (shutdown forwarding,
/// connection-error monitor, disconnect storms) end with the run on every return path.
struct AbortOnDrop<const N: usize>([JoinHandle<()>; N]);

impl<const N: usize> Drop for AbortOnDrop<N> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Stops a fleet that cannot go on: the stop signal for devices mid-publish, and abort for
/// every device task (a device waiting on a reconnect backoff would otherwise outlive the
/// run).
fn abort_devices(stop_tx: &watch::Sender<bool>, handles: &[JoinHandle<DeviceOutcome>]) {
    let _ = stop_tx.send(true);
    for h in handles {
        h.abort();
    }
}

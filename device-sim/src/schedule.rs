//! When each device publishes what: the deterministic schedule and payload stream.
//!
//! Device *i* (0-based) of a run, of type *T* ([`crate::fleet::FleetLayout`]; by default
//! every device is a default sensor sending every 1/`rate` s)
//! - is named `{prefix}{n:06}` (*n* 1-based within its type) and publishes on
//!   `dt/{fleet}/{device_id}/telemetry`;
//! - connects `i / connect_rate` seconds after the first device (the connection ramp);
//! - sends message 0 a phase offset after that, drawn from its own random stream in
//!   `[0, interval)`, so that a fleet does not publish in lock-step bursts;
//! - publishes one message every `interval` of its type (each shifted by up to ±`jitter`),
//!   message *k* due at `offset + k · interval (+ jitter)` with `seq = first_seq + k` and
//!   `ts = start_ms +` that due time (ms, floored).
//!
//! The wall-clock publish schedule of [`crate::run`] is the same timeline anchored at the
//! moment the run starts, so event time tracks wall time; payloads never depend on when a
//! message actually left.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use telemetry::Telemetry;

use crate::config::SimConfig;
pub use crate::device_type::{device_id, interval, messages_per_device};
use crate::fleet::FleetLayout;
use crate::model::DeviceModel;

/// The topic `device_id` publishes on: `dt/{fleet}/{device_id}/telemetry`, behind
/// `$aws/rules/{rule}/` with [`SimConfig::basic_ingest`].
pub fn topic(cfg: &SimConfig, device_id: &str) -> String {
    let plain = telemetry::topic::telemetry_topic(&cfg.fleet, device_id);
    match &cfg.basic_ingest {
        Some(rule) => telemetry::topic::basic_ingest_topic(rule, &plain),
        None => plain,
    }
}

/// One message of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// 0-based index of the device in the fleet.
    pub device_index: usize,
    /// Message number within the device (0-based): `seq - first_seq`.
    pub k: u64,
    /// The message's `seq`.
    pub seq: u64,
    /// The message's event time (epoch ms).
    pub ts: i64,
    /// When it is due, counted from the start of the run (the same instant as `ts`).
    pub due: Duration,
    /// The topic it is published on.
    pub topic: String,
    /// The canonical JSON payload.
    pub payload: Vec<u8>,
}

/// The schedule and payloads of one device, as an iterator over its messages.
#[derive(Debug, Clone)]
pub struct DeviceStream {
    index: usize,
    device_id: String,
    topic: String,
    model: DeviceModel,
    first_seq: u64,
    /// Event time at `offset` (message 0 before jitter).
    first_ts: i64,
    /// When the device connects, counted from the start of the run: its ramp slot.
    connect_at: Duration,
    /// When message 0 is due before jitter, counted from the start of the run: ramp slot
    /// + phase.
    offset: Duration,
    interval: Duration,
    jitter_ns: u64,
    count: u64,
    next_k: u64,
}

impl DeviceStream {
    /// The stream of device `index` of `cfg` (laid out by `layout`), whose event-time
    /// origin is `start_ms`. `None` past the end of the fleet. `cfg` is assumed valid
    /// ([`SimConfig::validate`]).
    pub fn new(cfg: &SimConfig, layout: &FleetLayout, start_ms: i64, index: usize) -> Option<Self> {
        let (slot, local) = layout.device(index)?;
        let ty = &slot.ty;
        let interval = ty.interval;
        let mut model = DeviceModel::new(ty, DeviceModel::rng(cfg.seed, index));
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let phase_ms = model.draw_below(interval_ms);
        // Float-to-int `as` saturates; the ramp of a valid config is far below that.
        let ramp_ms = (index as f64 * 1000.0 / cfg.connect_rate).floor() as u64;
        let connect_at = Duration::from_millis(ramp_ms);
        let offset = Duration::from_millis(ramp_ms.saturating_add(phase_ms));
        let device_id = device_id(&ty.prefix(), local);
        let offset_ms = i64::try_from(offset.as_millis()).unwrap_or(i64::MAX);
        Some(Self {
            index,
            topic: topic(cfg, &device_id),
            device_id,
            model,
            first_seq: cfg.first_seq,
            first_ts: start_ms.saturating_add(offset_ms),
            connect_at,
            offset,
            interval,
            jitter_ns: u64::try_from(ty.jitter.as_nanos()).unwrap_or(u64::MAX),
            count: slot.messages_per_device,
            next_k: 0,
        })
    }

    /// The device id (its MQTT client id and AWS IoT thing name).
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The topic the device publishes on.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// 0-based index in the fleet.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `seq` of the device's first message.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// How many messages the device publishes in a full run.
    pub fn total(&self) -> u64 {
        self.count
    }

    /// How many messages have been taken from the stream so far.
    pub fn taken(&self) -> u64 {
        self.next_k
    }

    /// When the device connects (its slot in the connection ramp), counted from the
    /// start of the run.
    pub fn connect_at(&self) -> Duration {
        self.connect_at
    }

    /// When message `k` is due before jitter, counted from the start of the run.
    pub fn due(&self, k: u64) -> Duration {
        let base = self.interval.as_nanos().saturating_mul(u128::from(k));
        self.offset.saturating_add(nanos(base))
    }

    /// The most a message is moved from its slot.
    pub fn jitter(&self) -> Duration {
        Duration::from_nanos(self.jitter_ns)
    }

    /// Time between two messages.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How many messages are due `elapsed` after the start of the run, by their slots
    /// before jitter (at most [`Self::total`]).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let Some(since_first) = elapsed.checked_sub(self.offset) else {
            return 0;
        };
        let n = since_first.as_nanos() / self.interval.as_nanos().max(1) + 1;
        u64::try_from(n).unwrap_or(u64::MAX).min(self.count)
    }

    /// The next message's offset from message 0's slot, with its jitter drawn.
    fn slot(&mut self, k: u64) -> Duration {
        let base = self.interval.as_nanos().saturating_mul(u128::from(k));
        let at = if self.jitter_ns == 0 {
            base
        } else {
            let j = self.model.draw_below(2 * self.jitter_ns + 1);
            // base + j - jitter, never before the run started.
            (base + u128::from(j)).saturating_sub(u128::from(self.jitter_ns))
        };
        nanos(at)
    }
}

impl Iterator for DeviceStream {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        if self.next_k >= self.count {
            return None;
        }
        let k = self.next_k;
        self.next_k += 1;
        let slot = self.slot(k);
        let ms = i64::try_from(slot.as_millis()).unwrap_or(i64::MAX);
        let ts = self.first_ts.saturating_add(ms);
        let msg = Telemetry {
            device_id: self.device_id.clone(),
            seq: self.first_seq + k,
            ts,
            metrics: self.model.readings(ts, self.first_ts),
            fw: self.model.fw.clone(),
        };
        // Serializing strings, integers and finite floats cannot fail; an empty payload
        // would be quarantined downstream rather than vanish.
        let payload = serde_json::to_vec(&msg).unwrap_or_default();
        Some(Message {
            device_index: self.index,
            k,
            seq: msg.seq,
            ts,
            due: self.offset.saturating_add(slot),
            topic: self.topic.clone(),
            payload,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.count - self.next_k).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

fn nanos(n: u128) -> Duration {
    let secs = u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9 and fits.
    let sub = u32::try_from(n % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, sub)
}

/// The messages of a whole fleet in time order (ties broken by device index), merged
/// lazily from the device streams.
#[derive(Debug)]
pub struct FleetStream {
    streams: Vec<DeviceStream>,
    heads: Vec<Option<Message>>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
}

impl FleetStream {
    /// The stream of `cfg` with event-time origin `start_ms`. `cfg` is assumed valid.
    pub fn new(cfg: &SimConfig, start_ms: i64) -> Self {
        let layout = FleetLayout::new(cfg);
        let mut streams: Vec<DeviceStream> = (0..layout.devices())
            .filter_map(|i| DeviceStream::new(cfg, &layout, start_ms, i))
            .collect();
        let mut heads = Vec::with_capacity(streams.len());
        let mut heap = BinaryHeap::with_capacity(streams.len());
        for (i, s) in streams.iter_mut().enumerate() {
            let head = s.next();
            if let Some(m) = &head {
                heap.push(Reverse((m.ts, i)));
            }
            heads.push(head);
        }
        Self {
            streams,
            heads,
            heap,
        }
    }
}

impl Iterator for FleetStream {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        let Reverse((_, i)) = self.heap.pop()?;
        let msg = self.heads.get_mut(i)?.take()?;
        if let Some(stream) = self.streams.get_mut(i) {
            let head = stream.next();
            if let Some(m) = &head {
                self.heap.push(Reverse((m.ts, i)));
            }
            self.heads[i] = head;
        }
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_per_device_is_rate_times_duration_rounded_up() {
        let s = Duration::from_secs;
        assert_eq!(messages_per_device(5.0, s(2)), 10);
        assert_eq!(messages_per_device(3.0, s(10)), 30);
        assert_eq!(messages_per_device(0.1, s(30)), 3);
        assert_eq!(messages_per_device(0.4, s(3)), 2); // at 0 s and 2.5 s
        assert_eq!(messages_per_device(1.0, Duration::from_millis(1500)), 2);
        assert_eq!(messages_per_device(1000.0, s(1)), 1000);
        assert_eq!(messages_per_device(1.0 / 3.0, s(9)), 3);
    }

    #[test]
    fn the_last_message_is_due_before_the_duration_ends() {
        let cfg = SimConfig {
            rate: 3.0,
            duration: Duration::from_secs(10),
            devices: 1,
            ..SimConfig::default()
        };
        let d = DeviceStream::new(&cfg, &FleetLayout::new(&cfg), 0, 0).unwrap();
        assert_eq!(d.total(), 30);
        let span = d.due(d.total() - 1) - d.due(0);
        assert!(span < cfg.duration, "{span:?}");
    }

    #[test]
    fn due_by_counts_the_messages_whose_time_has_come() {
        let cfg = SimConfig {
            rate: 10.0,
            duration: Duration::from_secs(1),
            devices: 1,
            ..SimConfig::default()
        };
        let d = DeviceStream::new(&cfg, &FleetLayout::new(&cfg), 0, 0).unwrap();
        let first = d.due(0);
        if let Some(before) = first.checked_sub(Duration::from_millis(1)) {
            assert_eq!(d.due_by(before), 0);
        }
        assert_eq!(d.due_by(first), 1);
        assert_eq!(d.due_by(first + Duration::from_millis(250)), 3);
        assert_eq!(d.due_by(Duration::from_secs(60)), 10);
    }

    #[test]
    fn device_ids_are_1_based_and_zero_padded() {
        assert_eq!(device_id("sensor-", 0), "sensor-000001");
        assert_eq!(device_id("s", 41), "s000042");
    }
}

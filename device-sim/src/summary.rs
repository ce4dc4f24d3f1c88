//! What a run did: live counters while it runs, the summary and per-device ledger after.
//!
//! The accounting identity, per device and for the fleet:
//! `scheduled = acknowledged + failed`, and `acknowledged ≤ sent ≤ scheduled`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::faults::FaultCounts;
use crate::mqtt::{MqttVersion, QoS};

/// Counters a caller can read while [`crate::run_with_counters`] runs (progress bars,
/// the `iotpipe up` dashboard). Monotonic except `connected`.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Messages written to the broker connection (first writes only, not republishes).
    pub sent: AtomicU64,
    /// Messages confirmed: PUBACKed (QoS 1) or written (QoS 0).
    pub acknowledged: AtomicU64,
    /// Messages given up on (see [`SimSummary::failed`]); known only as devices finish.
    pub failed: AtomicU64,
    /// QoS 1 messages written again after a reconnect.
    pub republished: AtomicU64,
    /// Messages dropped by full offline buffers; known only as devices finish.
    pub dropped: AtomicU64,
    /// Devices currently connected.
    pub connected: AtomicU64,
    /// Devices started so far (the connection ramp).
    pub started: AtomicU64,
    /// Connection attempts or connections that failed.
    pub connection_errors: AtomicU64,
}

impl LiveCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The outcome of a run, printed by `device-sim` and `iotpipe up`; serializes to the
/// `--summary-json` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimSummary {
    /// The broker published to.
    pub broker: String,
    /// The fleet name (topic segment).
    pub fleet: String,
    /// Devices in the fleet.
    pub devices: usize,
    /// Devices that were started (fewer than `devices` when shut down during the ramp).
    pub devices_started: usize,
    /// Devices that connected at least once.
    pub devices_connected: usize,
    /// Seconds from the first device's first CONNACK to the last one's (the connection
    /// ramp as it happened; `None` if none connected).
    pub connect_span_s: Option<f64>,
    /// Connections per second achieved over `connect_span_s` (0 with one device).
    pub connect_rate: f64,
    /// QoS of the publishes (0 or 1).
    pub qos: QoS,
    /// MQTT protocol version of the connections ("3.1.1" or "5").
    pub mqtt_version: MqttVersion,
    /// Asked rate per device, messages per second (`None` for a fleet of device types,
    /// whose intervals differ; see `nominal_rate`).
    pub rate: Option<f64>,
    /// Messages per second of the whole fleet once every device is up.
    pub nominal_rate: f64,
    /// Messages each device publishes in a full run: ⌈rate × duration⌉ (the largest
    /// number over the device types).
    pub messages_per_device: u64,
    /// The seed of the payloads.
    pub seed: u64,
    /// The event-time origin used (epoch ms): pass it as `--start` to reproduce the
    /// payloads with `--dump`.
    pub start_ms: i64,
    /// Messages whose scheduled time came during the run: `devices × messages_per_device`
    /// for a run that was not shut down. `scheduled = acknowledged + failed`.
    pub scheduled: u64,
    /// Distinct messages written to the broker connection (republishes not counted again).
    pub sent: u64,
    /// QoS 1: distinct messages the broker acknowledged (PUBACK). QoS 0: equal to `sent`
    /// (a message counts once written to the socket).
    pub acknowledged: u64,
    /// Scheduled messages not acknowledged by the end: dropped by the offline buffer,
    /// never handed to the client in time (broker unreachable), never written, or written
    /// but not PUBACKed before the device gave up (the broker answered nothing for the ack
    /// timeout).
    pub failed: u64,
    /// Of `failed`, the messages dropped by full offline buffers (oldest first).
    pub dropped: u64,
    /// QoS 1 messages written again after a reconnect (at-least-once: the pipeline
    /// de-duplicates on `device_id` + `seq`).
    pub republished: u64,
    /// Failed connection attempts and dropped connections, summed over devices.
    pub connection_errors: u64,
    /// Wall-clock time of the run, including the ramp and the wait for acknowledgements.
    #[serde(rename = "elapsed_s", serialize_with = "secs_f64")]
    pub elapsed: Duration,
    /// Fleet-wide messages per second between the first and the last write.
    pub send_rate: f64,
    /// Median time from writing a QoS 1 publish to its PUBACK, milliseconds (`None` for
    /// QoS 0 or when nothing was acknowledged). Histogram resolution: 1 %.
    pub publish_latency_p50_ms: Option<f64>,
    /// 99th percentile of the same, milliseconds.
    pub publish_latency_p99_ms: Option<f64>,
    /// Messages per publish (device-side batch; 1 = single objects).
    pub batch: usize,
    /// Faults injected, fleet-wide (all 0 unless fault injection was asked for).
    pub faults: FaultCounts,
    /// Disconnect storms that happened (each dropped every connected device).
    pub disconnect_storms: u64,
    /// The delivery ledger, by device id.
    pub per_device: BTreeMap<String, DeviceLedger>,
}

/// What one device published: enough for the pipeline to tell missing from late.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceLedger {
    /// `seq` of the device's first message.
    pub first_seq: u64,
    /// `seq` of the device's last message that was published or dropped (`None` if none
    /// was): the device published `first_seq..=last_seq` except `dropped` of them.
    pub last_seq: Option<u64>,
    /// Messages written to the connection.
    pub sent: u64,
    /// Of those, messages confirmed (PUBACK for QoS 1).
    pub acknowledged: u64,
    /// Scheduled but not confirmed (dropped ones included).
    pub failed: u64,
    /// Dropped by the offline buffer: missing from the range, never sent.
    pub dropped: u64,
    /// Faults injected into this device's publishes (`duplicated`, `reordered`,
    /// `skewed`, `malformed`, `oversize`, `disconnects`): malformed and oversize messages
    /// were sent but are quarantined downstream; duplicated ones arrive twice.
    #[serde(flatten)]
    pub faults: FaultCounts,
}

fn secs_f64<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Sub-buckets per power of two: 64 gives under 1 % relative error.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Largest power of two tracked: 2^40 µs ≈ 12.7 days; larger values land in the top bucket.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;

/// A lock-free log-linear histogram of durations in microseconds (HDR-style, 64
/// sub-buckets per power of two), shared by every device's event loop. Fixed size
/// (~19 KiB) however long the run.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(b) = self.buckets.get(bucket_of(us)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The `q`-quantile (0 < q ≤ 1) in milliseconds, as the midpoint of its bucket;
    /// `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // Nearest-rank: the smallest value with at least q·total values at or below it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                let (lo, hi) = bounds_of(i);
                let mid_us = (lo as f64 + hi as f64) / 2.0;
                // Microseconds to milliseconds, kept to the microsecond.
                return Some(mid_us.round() / 1000.0);
            }
        }
        None
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let exp = (63 - us.leading_zeros()).min(MAX_EXP);
    let us = us.min((1u64 << (MAX_EXP + 1)) - 1);
    let shift = exp - SUB_BITS;
    let sub = (us >> shift) - SUB; // the 6 bits below the leading one
    (SUB + u64::from(shift) * SUB + sub) as usize
}

/// Inclusive value range of a bucket, in microseconds.
fn bounds_of(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let shift = (i - SUB) / SUB;
    let sub = (i - SUB) % SUB;
    let lo = (SUB + sub) << shift;
    (lo, lo + (1 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_contain_their_values() {
        for us in [0, 1, 63, 64, 65, 127, 128, 1000, 12_345, 9_999_999, 1 << 39] {
            let (lo, hi) = bounds_of(bucket_of(us));
            assert!(lo <= us && us <= hi, "{us}: [{lo}, {hi}]");
            assert!(
                (hi - lo) as f64 <= us as f64 / 64.0 + 1.0,
                "{us}: [{lo}, {hi}]"
            );
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn histogram_quantiles_are_within_one_percent() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        // 1 ms .. 100 ms, one value each.
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 100);
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((p50 - 50.0).abs() <= 0.5, "{p50}");
        assert!((p99 - 99.0).abs() <= 1.0, "{p99}");
    }

    #[test]
    fn the_summary_serializes_elapsed_as_seconds() {
        let s = SimSummary {
            broker: "mqtt://127.0.0.1:1883".into(),
            fleet: "f".into(),
            devices: 1,
            devices_started: 1,
            devices_connected: 1,
            connect_span_s: Some(0.0),
            connect_rate: 0.0,
            qos: QoS::AtLeastOnce,
            mqtt_version: MqttVersion::V5,
            rate: Some(1.0),
            nominal_rate: 1.0,
            messages_per_device: 1,
            seed: 1,
            start_ms: 0,
            scheduled: 1,
            sent: 1,
            acknowledged: 1,
            failed: 0,
            dropped: 0,
            republished: 0,
            connection_errors: 0,
            elapsed: Duration::from_millis(1234),
            send_rate: 0.0,
            publish_latency_p50_ms: Some(1.5),
            publish_latency_p99_ms: None,
            batch: 1,
            faults: FaultCounts::default(),
            disconnect_storms: 0,
            per_device: BTreeMap::new(),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["elapsed_s"], 1.234);
        assert_eq!(v["qos"], 1);
        assert_eq!(v["mqtt_version"], "5");
        assert!(v["publish_latency_p99_ms"].is_null());
    }
}

//! What a device actually publishes: its messages, batched into JSON arrays
//! ([`SimConfig::batch`]), with reproducible faults injected ([`Faults`]).
//!
//! The *readings* stream ([`DeviceStream`]: one message per `seq`) is not changed by any
//! of this; a [`SendStream`] turns it into [`Publish`]es. Every fault is decided by a
//! random stream of its own (ChaCha8 keyed by the seed, one stream per device, apart
//! from the readings' stream), so the same seed and settings inject the same faults into
//! the same messages — in a publishing run and in a `--dump` alike — and turning faults
//! on does not change a single reading.
//!
//! # Faults (each a probability per publish, 0 = off, the default)
//! - **duplicate**: the publish is sent twice (the copy right after it, a new MQTT
//!   packet; not a DUP-flag retransmission). Downstream sees the same `(device_id, seq)`
//!   twice.
//! - **out_of_order**: the publish is held back and sent right after the next one.
//! - **clock_skew**: each message's `ts` is moved by ± [`Faults::clock_skew_by`] (a
//!   device with a wrong clock); the message is still valid unless that leaves the
//!   accepted window.
//! - **malformed**: the payload is cut in half (not JSON): the pipeline quarantines it.
//! - **oversize**: the payload is padded past 128 KiB (AWS IoT Core's limit) with an
//!   unknown field: the pipeline rejects it (AWS IoT Core itself disconnects the client).
//! - **disconnect_storms**: not per publish but *storms per minute*, fleet-wide: at seeded
//!   instants every connected device loses its connection at once (no DISCONNECT
//!   packet, like a network partition) and reconnects with backoff, republishing its
//!   unacknowledged QoS 1 messages.
//!
//! Each injected fault is counted per device in the summary's ledger
//! ([`crate::DeviceLedger`]) and for the fleet ([`FaultCounts`]), so a downstream ledger
//! can reconcile: received = sent − malformed − oversize (those are quarantined), plus
//! duplicates.

use std::collections::VecDeque;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{SimConfig, humantime_serde_compat};
use crate::error::SimError;
use crate::schedule::{DeviceStream, Message};

/// Added to the seed for the faults' random streams, so that they are independent of the
/// readings' streams.
const FAULT_SEED_SALT: u64 = 0x6661_756c_7473; // "faults"
/// Largest device-side batch.
pub const MAX_BATCH: usize = 1000;
/// An oversize payload is padded to this many bytes (128 KiB + 1 KiB).
pub const OVERSIZE_BYTES: usize = telemetry::validate::MAX_PAYLOAD_BYTES + 1024;
/// Default clock-skew offset.
pub const DEFAULT_CLOCK_SKEW_BY: Duration = Duration::from_secs(600);

/// Fault-injection rates of a run. All off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Probability that a publish is sent twice.
    pub duplicate: f64,
    /// Probability that a publish is sent after the next one instead of before it.
    pub out_of_order: f64,
    /// Probability that a message's `ts` is off by ±`clock_skew_by`.
    pub clock_skew: f64,
    /// How far a skewed clock is off. Default 10 min (outside the default 5-minute
    /// "ahead" window of ingest when positive, so half of the skewed messages are
    /// rejected as from the future).
    #[serde(with = "humantime_serde_compat")]
    pub clock_skew_by: Duration,
    /// Probability that a payload is cut in half (invalid JSON).
    pub malformed: f64,
    /// Probability that a payload is padded past 128 KiB.
    pub oversize: f64,
    /// Fleet-wide disconnect storms per minute (every device drops its connection at once).
    pub disconnect_storms: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            duplicate: 0.0,
            out_of_order: 0.0,
            clock_skew: 0.0,
            clock_skew_by: DEFAULT_CLOCK_SKEW_BY,
            malformed: 0.0,
            oversize: 0.0,
            disconnect_storms: 0.0,
        }
    }
}

impl Faults {
    /// Checks that every rate is a probability (storms: a non-negative rate).
    pub fn validate(&self) -> Result<(), SimError> {
        for (field, p) in [
            ("faults.duplicate", self.duplicate),
            ("faults.out_of_order", self.out_of_order),
            ("faults.clock_skew", self.clock_skew),
            ("faults.malformed", self.malformed),
            ("faults.oversize", self.oversize),
        ] {
            if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
                return Err(SimError::InvalidConfig {
                    field,
                    reason: format!("{p} is not a probability between 0 and 1 (0.01 = 1 %)"),
                });
            }
        }
        if !(self.disconnect_storms.is_finite() && self.disconnect_storms >= 0.0) {
            return Err(SimError::InvalidConfig {
                field: "faults.disconnect_storms",
                reason: format!(
                    "{} is not a number of storms per minute (0 = none)",
                    self.disconnect_storms
                ),
            });
        }
        Ok(())
    }

    /// Whether any per-publish fault is on.
    fn any_per_publish(&self) -> bool {
        self.duplicate > 0.0
            || self.out_of_order > 0.0
            || self.clock_skew > 0.0
            || self.malformed > 0.0
            || self.oversize > 0.0
    }

    /// The instants (from the start of the run) of the fleet's disconnect storms within
    /// `span`: exponential gaps of mean 1/rate, from the seed.
    pub fn storm_times(&self, seed: u64, span: Duration) -> Vec<Duration> {
        if self.disconnect_storms <= 0.0 {
            return Vec::new();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(FAULT_SEED_SALT));
        rng.set_stream(u64::MAX);
        let mean_s = 60.0 / self.disconnect_storms;
        let mut at = 0.0f64;
        let mut out = Vec::new();
        loop {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            at += -u.ln() * mean_s;
            if at >= span.as_secs_f64() || out.len() >= 10_000 {
                return out;
            }
            out.push(Duration::from_secs_f64(at));
        }
    }
}

/// Injected faults, counted (per device in the ledger, summed for the fleet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Extra copies published (each repeats one publish and all its messages' seqs).
    pub duplicated: u64,
    /// Publishes sent after their successor.
    pub reordered: u64,
    /// Messages whose `ts` was moved.
    pub skewed: u64,
    /// Messages inside publishes cut in half (quarantined downstream).
    pub malformed: u64,
    /// Messages inside publishes padded past 128 KiB (rejected downstream).
    pub oversize: u64,
    /// Connections dropped by disconnect storms.
    pub disconnects: u64,
}

impl FaultCounts {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &FaultCounts) {
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.skewed += other.skewed;
        self.malformed += other.malformed;
        self.oversize += other.oversize;
        self.disconnects += other.disconnects;
    }
}

/// One MQTT publish of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// 0-based index of the device in the fleet.
    pub device_index: usize,
    /// When it is due, counted from the start of the run: the due time of its last
    /// message (a batch goes out when it is full).
    pub due: Duration,
    /// `seq` of its first message.
    pub first_seq: u64,
    /// New messages it carries: the batch size (fewer for the last batch), 0 for an
    /// injected duplicate copy.
    pub messages: u64,
    /// Event time of its last message (epoch ms), for ordering a fleet's publishes.
    pub ts: i64,
    /// The topic.
    pub topic: String,
    /// The payload: one message object, or a JSON array of `batch` of them; damaged if a
    /// fault says so.
    pub payload: Vec<u8>,
}

/// A device's publishes: its [`DeviceStream`] batched, with faults injected.
#[derive(Debug, Clone)]
pub struct SendStream {
    inner: DeviceStream,
    batch: usize,
    faults: Faults,
    rng: ChaCha8Rng,
    /// Publishes ready to go, in order (a duplicate copy, a held-back one).
    ready: VecDeque<Publish>,
    /// A publish held back by an out-of-order fault, sent after the next one.
    held: Option<Publish>,
    /// Messages taken from the readings stream so far.
    taken: u64,
    counts: FaultCounts,
}

impl SendStream {
    /// The publishes of `inner` under `cfg`'s batch size and faults.
    pub fn new(inner: DeviceStream, cfg: &SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(FAULT_SEED_SALT));
        rng.set_stream(inner.index() as u64);
        Self {
            inner,
            batch: cfg.batch.max(1),
            faults: cfg.faults.clone(),
            rng,
            ready: VecDeque::new(),
            held: None,
            taken: 0,
            counts: FaultCounts::default(),
        }
    }

    /// The readings stream underneath (device id, schedule).
    pub fn readings(&self) -> &DeviceStream {
        &self.inner
    }

    /// Messages taken from the readings stream so far (publishes already returned, or
    /// ready to be).
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.counts
    }

    /// Records a disconnect-storm hit (the storm itself is the driver's).
    pub fn count_disconnect(&mut self) {
        self.counts.disconnects += 1;
    }

    fn hit(&mut self, p: f64) -> bool {
        // Always draw, so one fault's rate does not shift another's decisions.
        let u: f64 = self.rng.random();
        u < p
    }

    /// The next batch of readings as one publish, faults applied to its contents.
    fn next_batch(&mut self) -> Option<Publish> {
        let mut msgs: Vec<Message> = Vec::with_capacity(self.batch);
        while msgs.len() < self.batch {
            match self.inner.next() {
                Some(m) => msgs.push(m),
                None => break,
            }
        }
        let last = msgs.last()?;
        let (due, ts, topic) = (last.due, last.ts, last.topic.clone());
        let first_seq = msgs.first().map_or(0, |m| m.seq);
        let n = msgs.len() as u64;
        self.taken += n;
        let injecting = self.faults.any_per_publish();
        let mut bodies = Vec::with_capacity(msgs.len());
        for m in msgs {
            let skew = injecting && self.hit(self.faults.clock_skew);
            let positive = injecting && self.rng.random::<bool>();
            bodies.push(if skew {
                self.counts.skewed += 1;
                skewed(&m.payload, self.faults.clock_skew_by, positive)
            } else {
                m.payload
            });
        }
        let mut payload = if self.batch == 1 {
            bodies.pop().unwrap_or_default()
        } else {
            let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len() + 1).sum::<usize>() + 2);
            out.push(b'[');
            for (i, b) in bodies.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b);
            }
            out.push(b']');
            out
        };
        if injecting {
            if self.hit(self.faults.malformed) {
                self.counts.malformed += n;
                payload.truncate(payload.len() / 2);
            } else if self.hit(self.faults.oversize) {
                self.counts.oversize += n;
                payload = padded(&payload);
            }
        }
        Some(Publish {
            device_index: self.inner.index(),
            due,
            first_seq,
            messages: n,
            ts,
            topic,
            payload,
        })
    }
}

impl Iterator for SendStream {
    type Item = Publish;

    fn next(&mut self) -> Option<Publish> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Some(p);
            }
            let Some(p) = self.next_batch() else {
                // The end: a held-back publish goes last.
                return self.held.take();
            };
            let injecting = self.faults.any_per_publish();
            if let Some(mut held) = self.held.take() {
                // Sent right after its successor, at the same time.
                held.due = p.due;
                let dup = injecting && self.hit(self.faults.duplicate);
                self.push_with_copy(p, dup);
                self.ready.push_back(held);
                continue;
            }
            let dup = injecting && self.hit(self.faults.duplicate);
            if injecting && self.hit(self.faults.out_of_order) {
                // (A held-back publish is not also duplicated.)
                self.counts.reordered += 1;
                self.held = Some(p);
                continue;
            }
            self.push_with_copy(p, dup);
        }
    }
}

impl SendStream {
    fn push_with_copy(&mut self, p: Publish, dup: bool) {
        let copy = dup.then(|| Publish {
            messages: 0,
            ..p.clone()
        });
        self.ready.push_back(p);
        if let Some(c) = copy {
            self.counts.duplicated += 1;
            self.ready.push_back(c);
        }
    }
}

/// The payload with its `ts` moved by `by` (forward when `positive`).
fn skewed(payload: &[u8], by: Duration, positive: bool) -> Vec<u8> {
    let Ok(mut msg) = serde_json::from_slice::<telemetry::Telemetry>(payload) else {
        return payload.to_vec();
    };
    let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    msg.ts = if positive {
        msg.ts.saturating_add(by)
    } else {
        msg.ts.saturating_sub(by)
    };
    serde_json::to_vec(&msg).unwrap_or_else(|_| payload.to_vec())
}

/// The payload padded past the size limit with an unknown field `"pad"` in its first
/// object (still valid JSON: only the size is wrong).
fn padded(payload: &[u8]) -> Vec<u8> {
    let Some(brace) = payload.iter().position(|&b| b == b'{') else {
        return payload.to_vec();
    };
    let pad_len = OVERSIZE_BYTES.saturating_sub(payload.len());
    let mut out = Vec::with_capacity(payload.len() + pad_len + 10);
    out.extend_from_slice(&payload[..=brace]);
    out.extend_from_slice(b"\"pad\":\"");
    out.resize(out.len() + pad_len, b'x');
    out.extend_from_slice(b"\",");
    out.extend_from_slice(&payload[brace + 1..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetLayout;
    use telemetry::{ValidationConfig, validate_payload};

    fn cfg(batch: usize, faults: Faults) -> SimConfig {
        SimConfig {
            devices: 1,
            rate: 10.0,
            duration: Duration::from_secs(100),
            start_ms: Some(1_764_072_000_000),
            batch,
            faults,
            ..SimConfig::default()
        }
    }

    fn sends(cfg: &SimConfig) -> (Vec<Publish>, FaultCounts) {
        let layout = FleetLayout::new(cfg);
        let d = DeviceStream::new(cfg, &layout, 1_764_072_000_000, 0).unwrap();
        let mut s = SendStream::new(d, cfg);
        let out: Vec<_> = s.by_ref().collect();
        (out, s.counts())
    }

    #[test]
    fn without_faults_or_batches_publishes_are_the_readings() {
        let c = cfg(1, Faults::default());
        let (p, counts) = sends(&c);
        let layout = FleetLayout::new(&c);
        let readings: Vec<_> = DeviceStream::new(&c, &layout, 1_764_072_000_000, 0)
            .unwrap()
            .collect();
        assert_eq!(p.len(), readings.len());
        for (p, r) in p.iter().zip(&readings) {
            assert_eq!((&p.payload, p.due, p.messages), (&r.payload, r.due, 1));
        }
        assert_eq!(counts, FaultCounts::default());
    }

    #[test]
    fn batches_are_arrays_of_consecutive_messages_that_ingest_accepts() {
        let (p, _) = sends(&cfg(7, Faults::default()));
        // 1000 messages: 142 full batches and one of 6.
        assert_eq!(p.len(), 143);
        assert_eq!(p.iter().map(|p| p.messages).sum::<u64>(), 1000);
        assert_eq!(p.last().unwrap().messages, 6);
        for (i, publish) in p.iter().enumerate() {
            assert_eq!(publish.first_seq, 7 * i as u64);
            let v = validate_payload(
                &publish.payload,
                &publish.topic,
                publish.ts,
                &ValidationConfig::default(),
            );
            assert!(v.rejected.is_empty(), "{:?}", v.rejected);
            assert_eq!(v.accepted.len() as u64, publish.messages);
        }
    }

    #[test]
    fn faults_are_injected_at_their_rates_reproducibly_and_counted() {
        let f = Faults {
            duplicate: 0.05,
            out_of_order: 0.05,
            clock_skew: 0.05,
            malformed: 0.02,
            oversize: 0.02,
            ..Faults::default()
        };
        let c = cfg(1, f);
        let (a, counts) = sends(&c);
        let (b, again) = sends(&c);
        assert_eq!(a, b, "same seed, same faults");
        assert_eq!(counts, again);
        // 1000 messages: every count near its expectation.
        for (n, want) in [
            (counts.duplicated, 50),
            (counts.reordered, 50),
            (counts.skewed, 50),
            (counts.malformed, 20),
            (counts.oversize, 20),
        ] {
            assert!(n > want / 3 && n < want * 3, "{counts:?}");
        }
        assert_eq!(a.len() as u64, 1000 + counts.duplicated);
        assert_eq!(a.iter().map(|p| p.messages).sum::<u64>(), 1000);
        // What ingest says matches the counts.
        let (mut malformed, mut oversize, mut out_of_order) = (0, 0, 0);
        let mut last_seq = None;
        // (Duplicate copies repeat a damaged payload too; count the originals.)
        for p in a.iter().filter(|p| p.messages > 0) {
            let v = validate_payload(&p.payload, &p.topic, p.ts, &ValidationConfig::default());
            if p.payload.len() > telemetry::validate::MAX_PAYLOAD_BYTES {
                oversize += 1;
                assert_eq!(v.rejected.len(), 1);
            } else if serde_json::from_slice::<serde_json::Value>(&p.payload).is_err() {
                malformed += 1;
                assert_eq!(v.rejected.len(), 1);
            }
            if last_seq.is_some_and(|l| p.first_seq < l) {
                out_of_order += 1;
            }
            last_seq = Some(p.first_seq);
        }
        assert_eq!((malformed, oversize), (counts.malformed, counts.oversize));
        assert!(out_of_order > 0);
        // Another seed, other faults.
        let (other, _) = sends(&SimConfig { seed: 2, ..c });
        assert_ne!(a, other);
    }

    #[test]
    fn readings_do_not_change_when_faults_are_turned_on() {
        let f = Faults {
            duplicate: 0.5,
            ..Faults::default()
        };
        let (with, _) = sends(&cfg(1, f));
        let (without, _) = sends(&cfg(1, Faults::default()));
        let originals: Vec<_> = with.iter().filter(|p| p.messages > 0).collect();
        assert_eq!(originals.len(), without.len());
        assert!(
            originals
                .iter()
                .zip(&without)
                .all(|(a, b)| a.payload == b.payload)
        );
    }

    #[test]
    fn storms_are_seeded_and_about_their_rate() {
        let f = Faults {
            disconnect_storms: 6.0,
            ..Faults::default()
        };
        let t = f.storm_times(1, Duration::from_secs(600));
        assert_eq!(t, f.storm_times(1, Duration::from_secs(600)));
        assert!(t.len() > 30 && t.len() < 100, "{}", t.len());
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert!(
            Faults::default()
                .storm_times(1, Duration::from_secs(600))
                .is_empty()
        );
    }

    #[test]
    fn rates_must_be_probabilities() {
        for f in [
            Faults {
                duplicate: 1.5,
                ..Faults::default()
            },
            Faults {
                oversize: f64::NAN,
                ..Faults::default()
            },
            Faults {
                disconnect_storms: -1.0,
                ..Faults::default()
            },
        ] {
            assert!(f.validate().is_err(), "{f:?}");
        }
    }
}

//! What a device actually publishes: its messages, batched into JSON arrays
//! ([`SimConfig::batch`]), with the faults of [`crate::faults`] injected; and the whole
//! fleet's publishes in time order ([`FleetSendStream`]).
//!
//! A [`SendStream`] turns a device's readings ([`DeviceStream`]) into [`Publish`]es.
//! Every fault is decided by a random stream of its own (see [`crate::faults`]), so the
//! readings do not change when faults are turned on.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::SimConfig;
use crate::faults::{FAULT_SEED_SALT, FaultCounts, Faults, OVERSIZE_BYTES};
use crate::fleet::FleetLayout;
use crate::schedule::{DeviceStream, Message};

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

/// The publishes of a whole fleet ([`SendStream`]: batched, faults
/// injected) in the order they are due (ties by device index): what [`crate::run`]
/// publishes and `--dump` writes.
#[derive(Debug)]
pub struct FleetSendStream {
    streams: Vec<SendStream>,
    heads: Vec<Option<Publish>>,
    heap: BinaryHeap<Reverse<(Duration, usize)>>,
}

impl FleetSendStream {
    /// The publishes of `cfg` with event-time origin `start_ms`. `cfg` is assumed valid.
    pub fn new(cfg: &SimConfig, start_ms: i64) -> Self {
        let layout = FleetLayout::new(cfg);
        let mut streams: Vec<_> = (0..layout.devices())
            .filter_map(|i| DeviceStream::new(cfg, &layout, start_ms, i))
            .map(|d| SendStream::new(d, cfg))
            .collect();
        let mut heads = Vec::with_capacity(streams.len());
        let mut heap = BinaryHeap::with_capacity(streams.len());
        for (i, s) in streams.iter_mut().enumerate() {
            let head = s.next();
            if let Some(p) = &head {
                heap.push(Reverse((p.due, i)));
            }
            heads.push(head);
        }
        Self {
            streams,
            heads,
            heap,
        }
    }

    /// Faults injected into the publishes returned so far (and the few generated ahead).
    pub fn counts(&self) -> FaultCounts {
        let mut total = FaultCounts::default();
        for s in &self.streams {
            total.add(&s.counts());
        }
        total
    }
}

impl Iterator for FleetSendStream {
    type Item = Publish;

    fn next(&mut self) -> Option<Publish> {
        let Reverse((_, i)) = self.heap.pop()?;
        let p = self.heads.get_mut(i)?.take()?;
        if let Some(stream) = self.streams.get_mut(i) {
            let head = stream.next();
            if let Some(h) = &head {
                self.heap.push(Reverse((h.due, i)));
            }
            self.heads[i] = head;
        }
        Some(p)
    }
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
}

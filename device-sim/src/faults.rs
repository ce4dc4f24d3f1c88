//! Reproducible fault injection: the settings ([`Faults`]) and the counts ([`FaultCounts`]);
//! the batch limit ([`MAX_BATCH`]). [`crate::publish::SendStream`] applies them.
//!
//! The *readings* stream ([`crate::schedule::DeviceStream`]: one message per `seq`) is not
//! changed by any of this; a [`crate::publish::SendStream`] turns it into publishes. Every fault is decided by a
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

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::durations::humantime_serde_compat;
use crate::error::SimError;

/// Added to the seed for the faults' random streams, so that they are independent of the
/// readings' streams.
pub(crate) const FAULT_SEED_SALT: u64 = 0x6661_756c_7473; // "faults"
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
    pub(crate) fn any_per_publish(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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

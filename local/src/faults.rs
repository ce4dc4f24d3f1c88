//! Seeded AWS-side faults for the emulated services (`iotpipe up|replay --inject …`), so
//! that whole-pipeline runs go through the real retry paths, not only the unit tests'
//! scripted SDKs:
//! - `throttle=P`: a stream `PutRecords` call fails as a whole with
//!   `ProvisionedThroughputExceededException` (nothing stored; ingest retries the call).
//! - `partial=P`: each entry of a call fails on its own with that code (`FailedRecordCount`
//!   > 0 in a successful response; ingest retries only those entries).
//! - `timeout=P`: the call stores the records, then times out: the caller cannot know, so
//!   it retries and the stream holds duplicates (the rollup removes them).
//! - `processor-error=P`: the transform invocation fails (a Lambda function error);
//!   Firehose retries it ([`crate::firehose::MAX_INVOKE_RETRIES`]) before the error prefix.
//! - `seed=N`: the generator's seed (default 1): the same seed and input give the same
//!   faults wherever the calls are made in the same order.
//!
//! Each probability is in `[0, 1]`. The put faults hit every put call into an emulated
//! service: ingest's puts into the local stream (topology per-message) or into Firehose
//! (kinesis), and the IoT rule's action, one record per message (firehose: into Firehose;
//! kinesis: into the stream). Ingest retries its failed calls and entries; the rules
//! engine does not retry an action: the message goes to the rule's error action
//! (`errors/iot/`), and the run fails at its end until `iotpipe requeue` brings it home
//! (a timed-out action stored the message too: the requeue duplicates it, and the rollup
//! de-duplicates). A real stream's faults are its own.

use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// What to inject, parsed from `throttle=0.05,partial=0.01,timeout=0.001,processor-error=0.01`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultPlan {
    /// Probability that a put call is throttled as a whole.
    pub throttle: f64,
    /// Probability that one entry of a put call fails.
    pub partial: f64,
    /// Probability that a put call stores its records and then times out.
    pub timeout: f64,
    /// Probability that a transform invocation fails.
    pub processor_error: f64,
    /// The generator's seed.
    pub seed: u64,
}

impl FromStr for FaultPlan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut plan = Self {
            seed: 1,
            ..Self::default()
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: give KEY=VALUE, e.g. throttle=0.05"))?;
            if key == "seed" {
                plan.seed = value
                    .parse()
                    .map_err(|_| format!("seed={value}: give a non-negative integer"))?;
                continue;
            }
            let p: f64 = value
                .parse()
                .ok()
                .filter(|p: &f64| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("{key}={value}: give a probability from 0 to 1"))?;
            match key {
                "throttle" => plan.throttle = p,
                "partial" => plan.partial = p,
                "timeout" => plan.timeout = p,
                "processor-error" => plan.processor_error = p,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}: use throttle, partial, timeout, \
                         processor-error (and seed)"
                    ));
                }
            }
        }
        Ok(plan)
    }
}

/// How many faults were injected, for the run's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Put calls throttled as a whole.
    pub throttled_calls: u64,
    /// Entries failed on their own.
    pub failed_entries: u64,
    /// Put calls that stored their records and then timed out.
    pub timeouts: u64,
    /// Transform invocations failed.
    pub processor_errors: u64,
}

/// Draws the faults of a [`FaultPlan`] from its seeded generator.
#[derive(Debug)]
pub struct Injector {
    plan: FaultPlan,
    rng: Mutex<StdRng>,
    throttled_calls: AtomicU64,
    failed_entries: AtomicU64,
    timeouts: AtomicU64,
    processor_errors: AtomicU64,
}

/// What happens to one put call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutFault {
    /// Fails as a whole, nothing stored.
    Throttle,
    /// Stores, then fails as a whole.
    Timeout,
    /// The entries at these positions fail; the others are stored (maybe none fail).
    Entries(Vec<bool>),
}

impl Injector {
    /// An injector for `plan`.
    pub fn new(plan: FaultPlan) -> Self {
        Self {
            plan,
            rng: Mutex::new(StdRng::seed_from_u64(plan.seed)),
            throttled_calls: AtomicU64::default(),
            failed_entries: AtomicU64::default(),
            timeouts: AtomicU64::default(),
            processor_errors: AtomicU64::default(),
        }
    }

    fn draw(&self, p: f64) -> bool {
        p > 0.0
            && self
                .rng
                .lock()
                .map(|mut r| r.random_bool(p))
                .unwrap_or(false)
    }

    /// The fault of a put call of `entries` records.
    pub fn put(&self, entries: usize) -> PutFault {
        if self.draw(self.plan.throttle) {
            self.throttled_calls.fetch_add(1, Ordering::Relaxed);
            return PutFault::Throttle;
        }
        if self.draw(self.plan.timeout) {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
            return PutFault::Timeout;
        }
        let failed: Vec<bool> = (0..entries).map(|_| self.draw(self.plan.partial)).collect();
        let n = failed.iter().filter(|f| **f).count() as u64;
        self.failed_entries.fetch_add(n, Ordering::Relaxed);
        PutFault::Entries(failed)
    }

    /// Whether this transform invocation fails.
    pub fn processor_error(&self) -> bool {
        let fail = self.draw(self.plan.processor_error);
        if fail {
            self.processor_errors.fetch_add(1, Ordering::Relaxed);
        }
        fail
    }

    /// What was injected so far.
    pub fn counts(&self) -> FaultCounts {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultCounts {
            throttled_calls: n(&self.throttled_calls),
            failed_entries: n(&self.failed_entries),
            timeouts: n(&self.timeouts),
            processor_errors: n(&self.processor_errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_parses_and_bad_ones_say_what_to_give() {
        let p: FaultPlan = "throttle=0.05,partial=0.01,timeout=0.001,processor-error=0.01,seed=7"
            .parse()
            .unwrap();
        assert_eq!(
            p,
            FaultPlan {
                throttle: 0.05,
                partial: 0.01,
                timeout: 0.001,
                processor_error: 0.01,
                seed: 7
            }
        );
        assert!(
            "throttle=2"
                .parse::<FaultPlan>()
                .unwrap_err()
                .contains("from 0 to 1")
        );
        assert!(
            "lag=0.1"
                .parse::<FaultPlan>()
                .unwrap_err()
                .contains("unknown fault")
        );
        assert!(
            "throttle"
                .parse::<FaultPlan>()
                .unwrap_err()
                .contains("KEY=VALUE")
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_faults() {
        let plan: FaultPlan = "throttle=0.3,partial=0.2,timeout=0.1".parse().unwrap();
        let (a, b) = (Injector::new(plan), Injector::new(plan));
        let draws = |i: &Injector| (0..50).map(|_| i.put(5)).collect::<Vec<_>>();
        let first = draws(&a);
        assert_eq!(first, draws(&b));
        assert!(first.contains(&PutFault::Throttle) && first.contains(&PutFault::Timeout));
        assert!(a.counts().failed_entries > 0);
    }
}

//! Lambda-style metering of each handler invocation in the local stack.
//!
//! Every invocation gets what CloudWatch Logs shows for a real function:
//! `REPORT RequestId: … Duration: 1.23 ms Billed Duration: 2 ms Memory Size: 128 MB Max
//! Memory Used: 41 MB`. Duration is measured around the handler future; billed duration is
//! rounded up to the millisecond, as Lambda bills. Locally every function shares one
//! process, so *Max Memory Used is the process's peak RSS* — an upper bound of what the
//! function alone would use; BENCHMARKS.md has per-function figures measured on the real
//! binaries.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The functions and their configured memory are defined once, in `telemetry`.
pub use telemetry::metering::{INGEST, LambdaFn, ROLLUP, TRANSFORM};

#[derive(Debug, Default)]
struct FnStats {
    memory_mb: u32,
    durations_us: Vec<u64>,
    billed_ms: u64,
    max_memory_mb: u64,
    errors: u64,
}

/// Collects invocation figures per function (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Meter {
    stats: Arc<Mutex<BTreeMap<&'static str, FnStats>>>,
    next_request: Arc<AtomicU64>,
}

/// The figures of one function over a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FnReport {
    /// Function name.
    pub function: String,
    /// Configured memory, MB.
    pub memory_size_mb: u32,
    /// Invocations.
    pub invocations: u64,
    /// Invocations whose handler returned an error.
    pub errors: u64,
    /// Sum of durations, ms.
    pub total_duration_ms: f64,
    /// 99th percentile duration, ms.
    pub p99_duration_ms: f64,
    /// Sum of billed durations (each rounded up to 1 ms), ms.
    pub billed_duration_ms: u64,
    /// Peak RSS of the shared local process seen after an invocation, MB (upper bound).
    pub max_memory_used_mb: u64,
    /// GB-seconds billed: billed duration × configured memory.
    pub gb_seconds: f64,
}

impl Meter {
    /// A meter with no invocations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one invocation of `f`, measuring it. `is_error` tells whether the handler's
    /// output counts as a failed invocation.
    pub async fn invoke<T>(
        &self,
        f: &LambdaFn,
        is_error: impl FnOnce(&T) -> bool,
        fut: impl Future<Output = T>,
    ) -> T {
        let start = Instant::now();
        let out = fut.await;
        let elapsed = start.elapsed();
        let failed = is_error(&out);
        self.record(f, elapsed, failed);
        out
    }

    fn record(&self, f: &LambdaFn, elapsed: Duration, failed: bool) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let billed_ms = us.div_ceil(1000).max(1);
        let mem_mb = peak_rss_mb();
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "lambda_report",
            "REPORT RequestId: {:08x}-local Function: {} Duration: {:.2} ms Billed Duration: {} ms Memory Size: {} MB Max Memory Used: {} MB",
            id,
            f.name,
            us as f64 / 1000.0,
            billed_ms,
            f.memory_mb,
            mem_mb
        );
        if let Ok(mut stats) = self.stats.lock() {
            let s = stats.entry(f.name).or_default();
            s.memory_mb = f.memory_mb;
            s.durations_us.push(us);
            s.billed_ms += billed_ms;
            s.max_memory_mb = s.max_memory_mb.max(mem_mb);
            s.errors += u64::from(failed);
        }
    }

    /// Figures per function, by name.
    pub fn report(&self) -> Vec<FnReport> {
        let Ok(stats) = self.stats.lock() else {
            return Vec::new();
        };
        stats
            .iter()
            .map(|(name, s)| {
                let mut d = s.durations_us.clone();
                d.sort_unstable();
                let p99 = d
                    .get(((d.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
                    .copied()
                    .unwrap_or(0);
                FnReport {
                    function: (*name).to_string(),
                    memory_size_mb: s.memory_mb,
                    invocations: d.len() as u64,
                    errors: s.errors,
                    total_duration_ms: d.iter().sum::<u64>() as f64 / 1000.0,
                    p99_duration_ms: p99 as f64 / 1000.0,
                    billed_duration_ms: s.billed_ms,
                    max_memory_used_mb: s.max_memory_mb,
                    gb_seconds: s.billed_ms as f64 / 1000.0 * f64::from(s.memory_mb) / 1024.0,
                }
            })
            .collect()
    }
}

/// Peak resident set size of this process in MB (`VmHWM`), 0 where /proc is absent.
pub fn peak_rss_mb() -> u64 {
    proc_status_kb("VmHWM:")
        .map(|kb| kb.div_ceil(1024))
        .unwrap_or(0)
}

fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What a run used, in AWS's metering units.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Usage {
    /// Wall-clock length of the run, seconds.
    pub seconds: f64,
    /// Devices connected during the run.
    pub devices: u64,
    /// MQTT messages, counted in 5 KB units.
    pub iot_message_units: u64,
    /// Messages that triggered the topic rule.
    pub rule_triggers: u64,
    /// Kinesis data in 1 KB units (records rounded up).
    pub kinesis_kb_units: u64,
    /// Bytes read back from Kinesis by Firehose.
    pub kinesis_bytes_out: u64,
    /// Firehose ingestion in 5 KB units (records rounded up).
    pub firehose_5kb_units: u64,
    /// Bytes Firehose handed to the transform (before conversion).
    pub firehose_bytes: u64,
    /// Objects delivered by Firehose (Parquet files and error objects).
    pub firehose_objects: u64,
    /// S3 PUTs of any kind (Parquet, quarantine, stats, checkpoints).
    pub s3_puts: u64,
    /// Scheduler invocations.
    pub scheduler_invocations: u64,
    /// The run used no Kinesis data stream (ingest put straight into Firehose): no
    /// stream-hours are charged.
    pub no_kinesis_stream: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_invocation_is_billed_rounded_up_to_the_millisecond() {
        let meter = Meter::new();
        for _ in 0..3 {
            meter.invoke(&INGEST, |_: &()| false, async {}).await;
        }
        let _ = meter
            .invoke(&INGEST, |r: &Result<(), ()>| r.is_err(), async { Err(()) })
            .await;
        let r = &meter.report()[0];
        assert_eq!(r.function, "ingest");
        assert_eq!(r.invocations, 4);
        assert_eq!(r.errors, 1);
        assert_eq!(
            r.billed_duration_ms, 4,
            "sub-millisecond invocations bill 1 ms each"
        );
        assert!((r.gb_seconds - 4.0 / 1000.0 * 128.0 / 1024.0).abs() < 1e-12);
        assert!(r.max_memory_used_mb > 0);
    }
}

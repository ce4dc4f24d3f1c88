//! Lambda-style metering of each handler invocation in the local stack.
//!
//! Every invocation gets what CloudWatch Logs shows for a real function:
//! `REPORT RequestId: … Duration: 1.23 ms Billed Duration: 2 ms Memory Size: 128 MB Max
//! Memory Used: 41 MB`. Duration is measured around the handler future; billed duration is
//! rounded up to the millisecond, as Lambda bills. Locally every function shares one
//! process, so *Max Memory Used is the process's peak RSS* — an upper bound of what the
//! function alone would use; BENCHMARKS.md has per-function figures measured on the real
//! binaries.
//!
//! Besides the run's totals, each function's invocations are kept per UTC minute (by the
//! invocation's end, as a CloudWatch Logs query binning `REPORT` lines by their timestamp
//! would): the minute in progress is a fixed-size histogram, and a finished minute is
//! folded into one [`MinuteFigures`] (invocations, errors, Duration p50/p99/max). Memory is
//! one histogram per function plus one small record per function and minute with
//! invocations, whatever the rate.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The functions, their configured memory and the per-minute record are defined once, in
/// `telemetry` (the dashboard reads the record back from the run records).
pub use telemetry::metering::{INGEST, LambdaFn, MINUTE_MS, MinuteFigures, ROLLUP, TRANSFORM};

#[derive(Debug, Default)]
struct FnStats {
    memory_mb: u32,
    durations: Durations,
    billed_ms: u64,
    max_memory_mb: u64,
    errors: u64,
    /// The minute in progress: its start (epoch ms), durations and errors.
    minute: Option<OpenMinute>,
    /// The finished minutes, oldest first.
    minutes: Vec<MinuteFigures>,
}

/// The invocations of the minute in progress.
#[derive(Debug, Default)]
struct OpenMinute {
    start_ms: i64,
    durations: Durations,
    errors: u64,
}

impl OpenMinute {
    fn figures(&self) -> MinuteFigures {
        let d = &self.durations;
        MinuteFigures {
            minute_start_ms: self.start_ms,
            invocations: d.n,
            errors: self.errors,
            p50_duration_ms: d.quantile(0.5) as f64 / 1000.0,
            p99_duration_ms: d.quantile(0.99) as f64 / 1000.0,
            max_duration_ms: d.quantile(1.0) as f64 / 1000.0,
        }
    }
}

/// How often, at most, the process's peak RSS is read from `/proc` (an open, a read and a
/// close of a file the kernel formats: ~10 µs, once per invocation cost more than the
/// ingest handler itself). Between readings an invocation reports the last reading; the
/// run's figure is read again at [`Meter::report`], so the maximum is never missed.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Collects invocation figures per function (cheap to clone).
#[derive(Debug, Clone)]
pub struct Meter {
    stats: Arc<Mutex<BTreeMap<&'static str, FnStats>>>,
    next_request: Arc<AtomicU64>,
    rss: Arc<RssSampler>,
    clock: WallClock,
}

impl Default for Meter {
    fn default() -> Self {
        Self::starting_at(chrono::Utc::now().timestamp_millis())
    }
}

/// Wall-clock time read from tokio's monotonic clock: an origin instant and the epoch
/// milliseconds it stands for. Monotonic, so minutes never go back; tokio's, so that a test
/// with `tokio::time::pause()` decides which minute an invocation ends in.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    origin: tokio::time::Instant,
    origin_ms: i64,
}

impl WallClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.origin_ms.saturating_add(elapsed)
    }
}

/// The process's peak RSS, read at most every [`RSS_SAMPLE_EVERY`].
#[derive(Debug)]
struct RssSampler {
    origin: Instant,
    /// Microseconds after `origin` of the last reading (`u64::MAX`: never read).
    read_at_us: AtomicU64,
    peak_mb: AtomicU64,
}

impl RssSampler {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            read_at_us: AtomicU64::new(u64::MAX),
            peak_mb: AtomicU64::new(0),
        }
    }

    /// The peak RSS in MB: read anew when the last reading is older than the interval (or
    /// when `fresh`), else the last reading.
    fn peak_mb(&self, fresh: bool) -> u64 {
        let now = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        let last = self.read_at_us.load(Ordering::Relaxed);
        let every = u64::try_from(RSS_SAMPLE_EVERY.as_micros()).unwrap_or(u64::MAX);
        let stale = last == u64::MAX || now.saturating_sub(last) >= every;
        // One reader per interval: the others keep the last figure.
        if (fresh || stale)
            && self
                .read_at_us
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.peak_mb.fetch_max(peak_rss_mb(), Ordering::Relaxed);
        }
        self.peak_mb.load(Ordering::Relaxed)
    }
}

/// Invocation durations as a log-linear histogram (HDR-style: exact below 128 µs, then 64
/// buckets per power of two, so a percentile is off by at most 1/64 ≈ 1.6 %): its memory is
/// fixed, whatever the number of invocations, where a list of durations grew by 8 bytes per
/// invocation (1.4 GB for an hour at 50,000 msg/s).
#[derive(Debug, Clone)]
struct Durations {
    counts: Vec<u64>,
    n: u64,
    sum_us: u64,
}

/// Below this many microseconds every value has its own bucket.
const EXACT_US: u64 = 128;
/// Buckets per power of two above [`EXACT_US`].
const SUB_BUCKETS: u64 = 64;

impl Default for Durations {
    fn default() -> Self {
        Self {
            counts: vec![0; Self::bucket(u64::MAX) + 1],
            n: 0,
            sum_us: 0,
        }
    }
}

impl Durations {
    fn bucket(us: u64) -> usize {
        if us < EXACT_US {
            return us as usize;
        }
        let exp = u64::from(63 - us.leading_zeros()); // ≥ 7
        let sub = (us >> (exp - 6)) & (SUB_BUCKETS - 1);
        (EXACT_US + (exp - 7) * SUB_BUCKETS + sub) as usize
    }

    /// The largest value of bucket `i` (a percentile never reads low).
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < EXACT_US {
            return i;
        }
        let exp = (i - EXACT_US) / SUB_BUCKETS + 7;
        let sub = (i - EXACT_US) % SUB_BUCKETS;
        let width = 1u64 << (exp - 6);
        ((1u64 << exp) + sub * width).saturating_add(width - 1)
    }

    /// Forgets every value, keeping the buckets' memory.
    fn clear(&mut self) {
        self.counts.fill(0);
        self.n = 0;
        self.sum_us = 0;
    }

    fn record(&mut self, us: u64) {
        self.counts[Self::bucket(us)] += 1;
        self.n += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// The `q` quantile (0–1), rounded up to its bucket's upper bound.
    fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((self.n as f64 * q).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i);
            }
        }
        0
    }
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
    /// 99th percentile duration, ms (from a histogram: at most 1.6 % high).
    pub p99_duration_ms: f64,
    /// Invocations and Duration percentiles per UTC minute with invocations, oldest first.
    pub per_minute: Vec<MinuteFigures>,
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

    /// A meter whose clock reads `now_ms` (epoch ms) now: the minutes of
    /// [`FnReport::per_minute`] are counted from there (tests, or a replay on its own time
    /// axis). [`Meter::new`] starts from the system clock.
    pub fn starting_at(now_ms: i64) -> Self {
        Self {
            stats: Arc::default(),
            next_request: Arc::default(),
            rss: Arc::new(RssSampler::new()),
            clock: WallClock {
                origin: tokio::time::Instant::now(),
                origin_ms: now_ms,
            },
        }
    }

    /// Runs one invocation of `f`, measuring it. `is_error` tells whether the handler's
    /// output counts as a failed invocation.
    pub async fn invoke<T>(
        &self,
        f: &LambdaFn,
        is_error: impl FnOnce(&T) -> bool,
        fut: impl Future<Output = T>,
    ) -> T {
        // tokio's clock (the system's monotonic clock unless a test paused it).
        let start = tokio::time::Instant::now();
        let out = fut.await;
        let elapsed = start.elapsed();
        let failed = is_error(&out);
        self.record(f, elapsed, failed);
        out
    }

    fn record(&self, f: &LambdaFn, elapsed: Duration, failed: bool) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let billed_ms = us.div_ceil(1000).max(1);
        let mem_mb = self.rss.peak_mb(false);
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
            // Read under the lock: the minutes reach a function's record in order.
            let minute = self.clock.now_ms().div_euclid(MINUTE_MS) * MINUTE_MS;
            let s = stats.entry(f.name).or_default();
            s.memory_mb = f.memory_mb;
            s.durations.record(us);
            s.billed_ms += billed_ms;
            s.max_memory_mb = s.max_memory_mb.max(mem_mb);
            s.errors += u64::from(failed);
            let open = match s.minute.take() {
                Some(open) if open.start_ms >= minute => open,
                Some(mut done) => {
                    s.minutes.push(done.figures());
                    // The histogram's buckets are reused, not allocated again.
                    done.durations.clear();
                    OpenMinute {
                        start_ms: minute,
                        durations: done.durations,
                        errors: 0,
                    }
                }
                None => OpenMinute {
                    start_ms: minute,
                    ..OpenMinute::default()
                },
            };
            let open = s.minute.insert(open);
            open.durations.record(us);
            open.errors += u64::from(failed);
        }
    }

    /// Figures per function, by name.
    pub fn report(&self) -> Vec<FnReport> {
        let peak = self.rss.peak_mb(true);
        let Ok(stats) = self.stats.lock() else {
            return Vec::new();
        };
        stats
            .iter()
            .map(|(name, s)| {
                let d = &s.durations;
                FnReport {
                    function: (*name).to_string(),
                    memory_size_mb: s.memory_mb,
                    invocations: d.n,
                    errors: s.errors,
                    total_duration_ms: d.sum_us as f64 / 1000.0,
                    p99_duration_ms: d.quantile(0.99) as f64 / 1000.0,
                    per_minute: s
                        .minutes
                        .iter()
                        .cloned()
                        .chain(s.minute.as_ref().map(OpenMinute::figures))
                        .collect(),
                    billed_duration_ms: s.billed_ms,
                    // The process's peak is read once more now: a peak between two
                    // samples is not missed (an upper bound, as before).
                    max_memory_used_mb: s.max_memory_mb.max(peak),
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

/// The distinct devices of a run, for [`Usage::devices`] (the bill's connectivity): 128-bit
/// fingerprints of their ids rather than the ids, so that counting a message costs two hashes
/// and no allocation — a set of the ids was 4 % of a replay's CPU in perf (a pointer chase
/// and a string compare per message, on the reader that feeds every lane). Two of n devices
/// share a fingerprint with probability about n²/2^129.
#[derive(Debug, Default)]
pub struct DeviceCount {
    seen: std::collections::HashSet<u128, ahash::RandomState>,
}

impl DeviceCount {
    /// Counts `device_id` (once, however often it comes).
    pub fn add(&mut self, device_id: &str) {
        // Fixed seeds: two independent 64-bit hashes make the fingerprint.
        let hi = ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(device_id);
        let lo = ahash::RandomState::with_seeds(5, 6, 7, 8).hash_one(device_id);
        self.seen.insert((u128::from(hi) << 64) | u128::from(lo));
    }

    /// Distinct devices counted.
    pub fn len(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Whether no device was counted.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
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
    /// Those messages in 5 KB units: what rules triggered and actions executed are billed
    /// in.
    pub rule_units: u64,
    /// Bytes of those messages' payloads (MQTT publishes, or replayed lines).
    pub publish_bytes: u64,
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
    /// S3 PUT-class requests (PUT, COPY, multipart uploads: Parquet, quarantine, stats,
    /// markers), counted at the bucket ([`analytics::requests::CountingStore`]).
    pub s3_puts: u64,
    /// S3 LIST requests (pages of 1,000 keys), billed at the PUT-class price.
    pub s3_lists: u64,
    /// S3 GET-class requests (GET, HEAD: the rollups reading their hours back).
    pub s3_gets: u64,
    /// Scheduler invocations.
    pub scheduler_invocations: u64,
    /// SQS requests of the rollup's units queue (send, receive and delete batches).
    pub sqs_requests: u64,
    /// The run used no Kinesis data stream (ingest put straight into Firehose): no
    /// stream-hours are charged.
    pub no_kinesis_stream: bool,
    /// The topology the run took (`firehose`, `per-message`; empty when not told).
    pub topology: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_counted_once_each() {
        let mut count = DeviceCount::default();
        assert!(count.is_empty());
        for round in 0..3 {
            for i in 0..100_000 {
                count.add(&format!("sensor-{i:06}"));
            }
            count.add("");
            assert_eq!(count.len(), 100_001, "round {round}");
        }
        // Ids that differ in one byte, or only in length, are different devices.
        count.add("sensor-0000000");
        count.add("sensor-00000");
        assert_eq!(count.len(), 100_003);
    }

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

    /// `exact` ≤ `got` ≤ `exact` + the histogram's 1/64 (and tokio's 1 ms timer tick).
    fn within(got: f64, exact: f64) -> bool {
        got >= exact && got <= exact * (1.0 + 1.0 / 64.0) + 1.0
    }

    #[tokio::test(start_paused = true)]
    async fn each_minute_keeps_its_own_invocations_and_duration_percentiles() {
        // 00:10:00 UTC on the epoch's first day.
        let meter = Meter::starting_at(10 * MINUTE_MS);
        let sleep = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
        // Minute 10: 100 invocations of 1..=100 ms (5.05 s in all).
        for ms in 1..=100 {
            meter.invoke(&INGEST, |_: &()| false, sleep(ms)).await;
        }
        // Minute 11: 10 of 7 ms, one failed; then nothing in minute 12.
        tokio::time::advance(Duration::from_secs(60)).await;
        for i in 0..10 {
            let _ = meter
                .invoke(&INGEST, |r: &Result<(), ()>| r.is_err(), async move {
                    sleep(7).await;
                    if i == 3 { Err(()) } else { Ok(()) }
                })
                .await;
        }
        // Minute 13: one of 300 ms, and a rollup of 2 s that ends in minute 14.
        tokio::time::advance(Duration::from_secs(120)).await;
        meter.invoke(&INGEST, |_: &()| false, sleep(300)).await;
        tokio::time::advance(Duration::from_secs(59)).await;
        meter.invoke(&ROLLUP, |_: &()| false, sleep(2_000)).await;

        let report = meter.report();
        let ingest = report.iter().find(|r| r.function == "ingest").unwrap();
        let minutes: Vec<(i64, u64, u64)> = ingest
            .per_minute
            .iter()
            .map(|m| (m.minute_start_ms / MINUTE_MS, m.invocations, m.errors))
            .collect();
        assert_eq!(minutes, [(10, 100, 0), (11, 10, 1), (13, 1, 0)]);
        let [m10, m11, m13] = &ingest.per_minute[..] else {
            unreachable!()
        };
        for (got, exact) in [
            (m10.p50_duration_ms, 50.0),
            (m10.p99_duration_ms, 99.0),
            (m10.max_duration_ms, 100.0),
            (m11.p50_duration_ms, 7.0),
            (m11.p99_duration_ms, 7.0),
            (m13.p99_duration_ms, 300.0),
        ] {
            assert!(within(got, exact), "{got} ms vs exact {exact} ms");
        }
        // The run's totals are the minutes' sums.
        assert_eq!(ingest.invocations, 111);
        assert_eq!(ingest.errors, 1);
        let rollup = report.iter().find(|r| r.function == "rollup").unwrap();
        assert_eq!(rollup.per_minute.len(), 1);
        assert_eq!(rollup.per_minute[0].minute_start_ms, 14 * MINUTE_MS);
        assert!(within(rollup.per_minute[0].p50_duration_ms, 2_000.0));
    }

    #[test]
    fn the_duration_histogram_reads_percentiles_within_its_bound() {
        let mut d = Durations::default();
        // 1..=100,000 µs: the exact p99 is 99,000 µs and p50 50,000 µs.
        for us in 1..=100_000u64 {
            d.record(us);
        }
        assert_eq!(d.n, 100_000);
        assert_eq!(d.sum_us, 100_000 * 100_001 / 2);
        for (q, exact) in [(0.99, 99_000.0), (0.5, 50_000.0), (0.001, 100.0)] {
            let got = d.quantile(q) as f64;
            assert!(
                got >= exact && got <= exact * (1.0 + 1.0 / 64.0),
                "q{q}: {got} vs exact {exact}"
            );
        }
        // Every value lands in a bucket whose upper bound is at or above it.
        for us in [0, 1, 127, 128, 129, 1_000, 65_535, 1 << 40, u64::MAX] {
            let i = Durations::bucket(us);
            assert!(Durations::upper(i) >= us, "{us} in bucket {i}");
            assert!(i == 0 || Durations::upper(i - 1) < us, "{us} in bucket {i}");
        }
    }
}

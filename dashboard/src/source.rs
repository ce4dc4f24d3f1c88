//! The adapter: everything the dashboard reads from the data location, through today's
//! public APIs — [`analytics::query`](mod@analytics::query), [`analytics::ledger`], [`telemetry::quarantine`]
//! records, the telemetry Parquet's time columns and the run records under
//! [`RUNS_PREFIX`].
//!
//! This is the only module that names those APIs, so that a change elsewhere (object
//! prefixes moving to a `telemetry` layout module, a typed quarantine reason, the 1h/1d
//! windows and the fleet view of `analytics::query`) is absorbed here. Two stand-ins live
//! here until those land:
//! - [`fleet_of`] derives the fleet view from per-device rows: counts, sums, means, min and
//!   max are exact; p50/p95/p99 come from the analytics fleet view (`--group-by fleet`:
//!   merged DDSketches, within 1 % of the exact quantile) where it has the window, else
//!   they are the count-weighted means of the devices' quantiles, an approximation the
//!   pages label as such.
//! - the window is a parameter throughout ([`Options::window`]); [`window_for_range`]
//!   picks 1m, 1h or 1d from the range asked for, as the rollup produces all three.

use std::collections::BTreeMap;
use std::sync::Arc;

use analytics::columns::{self, ColumnError, Strings};
use analytics::ledger::{self, Ledger, LedgerConfig};
use analytics::{Query, Window, WindowStats};
use arrow_array::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use telemetry::layout::QUARANTINE_PREFIX;
pub use telemetry::metering::{MinuteFigures, RollupRun};
use telemetry::quarantine::QuarantineRecord;

/// Key prefix of the run records `iotpipe up` and `iotpipe replay` write when they end
/// (`_runs/<finished_at_ms>.json`): the run's Lambda figures and cost estimate, which
/// exist nowhere else. The leading `_` keeps them out of Hive/Athena listings.
pub use telemetry::layout::RUNS_PREFIX;

/// Key prefix of the telemetry Parquet (the rollup's default input).
const TELEMETRY_PREFIX: &str = analytics::config::DEFAULT_TELEMETRY_PREFIX;

/// Objects fetched at once.
const READ_CONCURRENCY: usize = 8;

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The window of the statistics and the ledger. Default `1m`.
    pub window: Window,
    /// Only windows starting at or after this instant (epoch ms). `None`: all.
    pub from_ms: Option<i64>,
    /// Only windows starting before this instant (epoch ms). `None`: all.
    pub to_ms: Option<i64>,
}

/// The longest range charted per minute (360 points a line).
pub const MINUTES_UP_TO_MS: i64 = 6 * 3_600_000;
/// The longest range charted per hour (336 points a line); beyond it, per day.
pub const HOURS_UP_TO_MS: i64 = 14 * 86_400_000;

/// The window a range of windows `[from_ms, to_ms)` is charted at: 1m up to 6 hours, 1h up
/// to 14 days, 1d beyond. Without a start the range is the data's, which a local run keeps
/// short: 1m.
pub fn window_for_range(from_ms: Option<i64>, to_ms: i64) -> Window {
    match from_ms {
        Some(from) if to_ms.saturating_sub(from) > HOURS_UP_TO_MS => Window::D1,
        Some(from) if to_ms.saturating_sub(from) > MINUTES_UP_TO_MS => Window::H1,
        _ => Window::M1,
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            window: Window::M1,
            from_ms: None,
            to_ms: None,
        }
    }
}

/// The data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The statistics could not be queried.
    #[error("querying the statistics: {0}")]
    Query(#[from] analytics::QueryError),
    /// The delivery ledger could not be computed.
    #[error("computing the delivery ledger: {0}")]
    Ledger(#[from] ledger::LedgerError),
    /// Listing or reading an object failed.
    #[error("reading {path}: {message} — check that --data points at a pipeline data location")]
    Read {
        /// The object or prefix.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// The Lambda figures of one function over a run (the fields of `local::meter::FnReport`
/// the dashboard shows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFunction {
    /// Function name.
    pub function: String,
    /// Configured memory, MB.
    pub memory_size_mb: u32,
    /// Invocations.
    pub invocations: u64,
    /// Invocations that failed.
    #[serde(default)]
    pub errors: u64,
    /// Sum of durations, ms.
    pub total_duration_ms: f64,
    /// 99th percentile duration, ms.
    pub p99_duration_ms: f64,
    /// Peak memory used, MB.
    pub max_memory_used_mb: u64,
    /// Invocations and Duration percentiles per UTC minute (the local meter's records;
    /// empty in records written before it kept them).
    #[serde(default)]
    pub per_minute: Vec<MinuteFigures>,
}

/// One priced line of a run's cost estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostItem {
    /// Service and item.
    pub item: String,
    /// USD for the run.
    pub usd: f64,
}

/// The fleet a run's month prices (`iotpipe::cost::RunFleet`, the fields shown here).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MonthFleet {
    /// Devices seen.
    pub devices: u64,
    /// Messages per second per device.
    pub rate: f64,
    /// What the rate is taken over (`the run`, `the events' times`).
    pub over: String,
    /// The `iotpipe cost` command that prints the month line by line.
    pub command: String,
}

/// A run's cost estimate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunCost {
    /// Priced lines.
    pub lines: Vec<CostItem>,
    /// Total USD for the run.
    pub total_usd: f64,
    /// A 730-hour month of the fleet the run showed (`iotpipe cost`'s model), USD; 0 when
    /// the run priced none (a requeue; records before session 26 scaled the run up).
    pub month_at_this_rate_usd: f64,
    /// The fleet that month prices (absent in records before session 26 and when none).
    #[serde(default)]
    pub month_fleet: Option<MonthFleet>,
    /// Date of the price table.
    #[serde(default)]
    pub prices_as_of: String,
}

/// What a run of `iotpipe up`/`replay` recorded (a subset of its `--summary-json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When the run ended, epoch ms.
    pub finished_at_ms: i64,
    /// Wall-clock length, seconds.
    pub elapsed_s: f64,
    /// Messages into ingest.
    pub input: u64,
    /// Messages accepted.
    pub accepted: u64,
    /// Messages quarantined.
    pub quarantined: u64,
    /// Per-function figures.
    pub functions: Vec<RunFunction>,
    /// The cost estimate.
    pub cost: RunCost,
    /// The run's rollup invocations (empty in records written before they were kept).
    #[serde(default)]
    pub rollup_runs: Vec<RollupRun>,
}

/// Stores a run record under [`RUNS_PREFIX`], named by its end time. `record` is the JSON
/// object of the run's summary; it must hold the fields of [`RunRecord`].
pub async fn save_run(
    store: &Arc<dyn ObjectStore>,
    finished_at_ms: i64,
    record: &serde_json::Value,
) -> Result<String, SourceError> {
    save_object(
        store,
        format!("{RUNS_PREFIX}/{finished_at_ms}.json"),
        record,
    )
    .await
}

async fn save_object(
    store: &Arc<dyn ObjectStore>,
    key: String,
    record: &serde_json::Value,
) -> Result<String, SourceError> {
    let bytes = serde_json::to_vec(record).map_err(|e| SourceError::Read {
        path: key.clone(),
        message: e.to_string(),
    })?;
    store
        .put(&Path::from(key.as_str()), PutPayload::from(bytes))
        .await
        .map_err(|e| SourceError::Read {
            path: key.clone(),
            message: e.to_string(),
        })?;
    Ok(key)
}

/// Suffix of a run's sent record (`_runs/<finished_at_ms>.sent.json`): the simulated
/// devices' seq ranges (`analytics::ledger::SentLedger`) and when the run started, which
/// make the devices page's *expected*.
pub const SENT_SUFFIX: &str = ".sent.json";

/// What a run's simulated devices published, stored beside its run record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSent {
    /// When the run started, epoch ms: the ledger counts what was received from then.
    pub since_ms: i64,
    /// Per device, its seq range.
    pub sent: ledger::SentLedger,
}

/// Stores the sent record of the run that ended at `finished_at_ms` (see [`SENT_SUFFIX`]).
pub async fn save_sent(
    store: &Arc<dyn ObjectStore>,
    finished_at_ms: i64,
    sent: &RunSent,
) -> Result<String, SourceError> {
    let value = serde_json::to_value(sent).map_err(|e| SourceError::Read {
        path: format!("{RUNS_PREFIX}/{finished_at_ms}{SENT_SUFFIX}"),
        message: e.to_string(),
    })?;
    save_object(
        store,
        format!("{RUNS_PREFIX}/{finished_at_ms}{SENT_SUFFIX}"),
        &value,
    )
    .await
}

/// Transit times of one reading, ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transit {
    /// Event time, epoch ms.
    pub event_time: i64,
    /// Received − event time, ms.
    pub to_received_ms: i64,
    /// Its Parquet object's last-modified time − event time, ms.
    pub to_parquet_ms: i64,
    /// The end of the first successful rollup of a recorded run that started after the
    /// Parquet object was written − event time, ms: when `iotpipe query` shows the reading
    /// (at most one rollup period late). `None` when no recorded rollup did.
    pub to_stats_ms: Option<i64>,
}

/// Everything the pages are drawn from, read once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The window of [`Snapshot::stats`] and the ledger.
    pub window: Window,
    /// Per (device, metric, window) statistics, as `iotpipe query` returns them.
    pub stats: Vec<WindowStats>,
    /// The fleet view (`iotpipe query --group-by fleet`): one row per (metric, window).
    pub fleet: Vec<WindowStats>,
    /// The delivery ledger (`iotpipe ledger` without `--sent`); `None` when there is no
    /// telemetry nor quarantine at all.
    pub ledger: Option<Ledger>,
    /// Every quarantine record.
    pub quarantine: Vec<QuarantineRecord>,
    /// Per telemetry row, its transit times.
    pub transits: Vec<Transit>,
    /// The messages in the telemetry and how many arrived out of order.
    pub arrivals: Arrivals,
    /// Run records, oldest first.
    pub runs: Vec<RunRecord>,
    /// Run records that could not be parsed (object keys).
    pub unreadable_runs: Vec<String>,
    /// The ledger of the last run with a sent record, against its devices' seq ranges:
    /// what they published (expected) against what arrived since the run started.
    pub run_ledger: Option<Ledger>,
}

impl Snapshot {
    /// True when there is nothing at all to show.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
            && self.quarantine.is_empty()
            && self.transits.is_empty()
            && self.runs.is_empty()
    }
}

/// Reads everything the dashboard shows from `store`.
pub async fn load(store: Arc<dyn ObjectStore>, opts: &Options) -> Result<Snapshot, SourceError> {
    let q = Query {
        window: opts.window,
        from_ms: opts.from_ms,
        to_ms: opts.to_ms,
        ..Query::default()
    };
    let stats = analytics::query(store.clone(), &q).await?;
    let fleet = analytics::query(
        store.clone(),
        &Query {
            group: analytics::Group::Fleet,
            ..q.clone()
        },
    )
    .await?;
    let ledger = ledger::compute(
        store.clone(),
        &LedgerConfig {
            window: opts.window,
            ..LedgerConfig::default()
        },
        None,
    )
    .await?;
    let quarantine = read_quarantine(&store).await?;
    let (mut transits, arrivals) = read_transits(&store).await?;
    let (runs, unreadable_runs) = read_runs(&store).await?;
    date_stats_arrival(&mut transits, &runs);
    let run_ledger = match read_last_sent(&store).await? {
        Some(r) => Some(
            ledger::compute(
                store.clone(),
                &LedgerConfig {
                    window: opts.window,
                    since_ms: Some(r.since_ms),
                    ..LedgerConfig::default()
                },
                Some(&r.sent),
            )
            .await?,
        ),
        None => None,
    };
    let has_ledger = !ledger.rows.is_empty() || ledger.quarantine_records > 0;
    Ok(Snapshot {
        window: opts.window,
        stats,
        fleet,
        ledger: has_ledger.then_some(ledger),
        quarantine,
        transits,
        arrivals,
        runs,
        unreadable_runs,
        run_ledger,
    })
}

/// One device's or the fleet's statistics of a metric in a window.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetPoint {
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Devices reporting.
    pub devices: u64,
    /// Readings (exact).
    pub count: u64,
    /// Sum of the values (exact).
    pub sum: f64,
    /// Mean (exact: sum / count).
    pub mean: f64,
    /// Smallest value (exact).
    pub min: f64,
    /// Largest value (exact).
    pub max: f64,
    /// Median: from the fleet view's sketch when [`FleetPoint::sketched`], else the
    /// count-weighted mean of the devices' p50 (≈).
    pub p50: f64,
    /// p95, the same way.
    pub p95: f64,
    /// p99, the same way.
    pub p99: f64,
    /// The quantiles come from the fleet view's merged sketch (within 1 %), not from the
    /// devices' quantiles.
    pub sketched: bool,
}

/// The fleet view per metric and window, from per-device rows and, for the quantiles, the
/// analytics fleet rows `fleet` where they have the window (see the module doc for what is
/// exact). Sorted by metric, then window.
pub fn fleet_of(stats: &[WindowStats], fleet: &[WindowStats]) -> BTreeMap<String, Vec<FleetPoint>> {
    let sketched: BTreeMap<(&str, i64), &WindowStats> = fleet
        .iter()
        .map(|f| ((f.metric.as_str(), f.window_start), f))
        .collect();
    let mut acc: BTreeMap<(String, i64), FleetPoint> = BTreeMap::new();
    for s in stats {
        let w = s.count as f64;
        let p = acc
            .entry((s.metric.clone(), s.window_start))
            .or_insert(FleetPoint {
                window_start: s.window_start,
                devices: 0,
                count: 0,
                sum: 0.0,
                mean: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                p50: 0.0,
                p95: 0.0,
                p99: 0.0,
                sketched: false,
            });
        p.devices += 1;
        p.count += s.count;
        p.sum += s.sum;
        p.min = p.min.min(s.min);
        p.max = p.max.max(s.max);
        p.p50 += s.p50 * w;
        p.p95 += s.p95 * w;
        p.p99 += s.p99 * w;
    }
    let mut out: BTreeMap<String, Vec<FleetPoint>> = BTreeMap::new();
    for ((metric, start), mut p) in acc {
        let n = p.count as f64;
        if n > 0.0 {
            p.mean = p.sum / n;
            p.p50 /= n;
            p.p95 /= n;
            p.p99 /= n;
        }
        // The fleet row counts the same readings when it is current (a rollup derived it
        // from these rows); a stale one is not used.
        if let Some(f) = sketched.get(&(metric.as_str(), start))
            && f.count == p.count
        {
            (p.p50, p.p95, p.p99, p.sketched) = (f.p50, f.p95, f.p99, true);
        }
        out.entry(metric).or_default().push(p);
    }
    out
}

async fn read_all(
    store: &Arc<dyn ObjectStore>,
    metas: Vec<ObjectMeta>,
) -> Result<Vec<(ObjectMeta, bytes::Bytes)>, SourceError> {
    futures::stream::iter(metas)
        .map(|meta| {
            let store = store.clone();
            async move {
                let got = match store.get(&meta.location).await {
                    Ok(g) => g.bytes().await,
                    Err(e) => Err(e),
                };
                got.map(|b| (meta.clone(), b))
                    .map_err(|e| SourceError::Read {
                        path: meta.location.to_string(),
                        message: e.to_string(),
                    })
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await
}

async fn list(store: &Arc<dyn ObjectStore>, prefix: &str) -> Result<Vec<ObjectMeta>, SourceError> {
    analytics::io::list_objects(store, prefix)
        .await
        .map_err(|e| SourceError::Read {
            path: format!("{prefix}/"),
            message: e.to_string(),
        })
}

async fn read_quarantine(
    store: &Arc<dyn ObjectStore>,
) -> Result<Vec<QuarantineRecord>, SourceError> {
    let metas: Vec<_> = list(store, QUARANTINE_PREFIX)
        .await?
        .into_iter()
        .filter(|m| m.location.as_ref().ends_with(".jsonl"))
        .collect();
    let mut out = Vec::new();
    for (_, bytes) in read_all(store, metas).await? {
        out.extend(
            bytes
                .split(|b| *b == b'\n')
                .filter_map(|line| serde_json::from_slice::<QuarantineRecord>(line).ok()),
        );
    }
    out.sort_by_key(|r| r.received_at);
    Ok(out)
}

/// One file's transits and, per device, its messages: (event time, seq, received at).
type FileTransits = (Vec<Transit>, BTreeMap<String, Vec<(i64, i64, i64)>>);

async fn read_transits(
    store: &Arc<dyn ObjectStore>,
) -> Result<(Vec<Transit>, Arrivals), SourceError> {
    let files = analytics::io::list_telemetry(store, TELEMETRY_PREFIX)
        .await
        .map_err(|e| SourceError::Read {
            path: format!("{TELEMETRY_PREFIX}/"),
            message: e.to_string(),
        })?;
    let per_file: Vec<FileTransits> = futures::stream::iter(files)
        .map(|f| {
            let store = store.clone();
            async move {
                let batches = analytics::io::read_parquet(
                    &store,
                    &f.meta,
                    Some(&["device_id", "seq", "event_time", "received_at"]),
                )
                .await
                .map_err(|e| SourceError::Read {
                    path: f.meta.location.to_string(),
                    message: e.to_string(),
                })?;
                let written = f.meta.last_modified.timestamp_millis();
                let mut out = (Vec::new(), BTreeMap::new());
                for b in &batches {
                    transits_of(b, written, &mut out).map_err(|e| SourceError::Read {
                        path: f.meta.location.to_string(),
                        message: e.to_string(),
                    })?;
                }
                Ok::<_, SourceError>(out)
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    let mut transits = Vec::new();
    let mut messages: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for (t, m) in per_file {
        transits.extend(t);
        for (device, v) in m {
            messages.entry(device).or_default().extend(v);
        }
    }
    transits.sort_by_key(|t| t.event_time);
    Ok((transits, arrivals(messages)))
}

/// Messages received out of order among every device's distinct messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrivals {
    /// Distinct messages (device, seq, event time) in the telemetry.
    pub messages: u64,
    /// Of those, messages first received after a message of the same device with a later
    /// (event time, seq): overtaken on the way. A device that restarts its seq after a
    /// reboot is not out of order, since its event times go on.
    pub out_of_order: u64,
}

/// Counts [`Arrivals`] from each device's (event time, seq, received at) of every row.
pub fn arrivals(by_device: BTreeMap<String, Vec<(i64, i64, i64)>>) -> Arrivals {
    let mut out = Arrivals::default();
    for (_, mut v) in by_device {
        // One entry per message (a reading per metric, and re-deliveries, repeat it), at
        // its first receipt.
        v.sort_unstable();
        v.dedup_by(|later, first| (later.0, later.1) == (first.0, first.1));
        out.messages += v.len() as u64;
        v.sort_unstable_by_key(|&(event, seq, received)| (received, event, seq));
        let mut latest = (i64::MIN, i64::MIN);
        for (event, seq, _) in v {
            if (event, seq) < latest {
                out.out_of_order += 1;
            } else {
                latest = (event, seq);
            }
        }
    }
    out
}

/// Fills each transit's [`Transit::to_stats_ms`] from the runs' successful rollups.
pub fn date_stats_arrival(transits: &mut [Transit], runs: &[RunRecord]) {
    let mut rollups: Vec<RollupRun> = runs
        .iter()
        .flat_map(|r| r.rollup_runs.iter().copied())
        .filter(|r| r.ok)
        .collect();
    rollups.sort_by_key(|r| r.started_at_ms);
    // The earliest end among the rollups that start at or after each index (a long run
    // that started first may end after a shorter one that started later).
    let mut first_end = vec![i64::MAX; rollups.len() + 1];
    for i in (0..rollups.len()).rev() {
        first_end[i] = first_end[i + 1].min(rollups[i].ended_at_ms);
    }
    for t in transits {
        let written = t.event_time + t.to_parquet_ms;
        let i = rollups.partition_point(|r| r.started_at_ms < written);
        t.to_stats_ms = (first_end[i] != i64::MAX).then(|| first_end[i] - t.event_time);
    }
}

fn transits_of(
    b: &RecordBatch,
    written_ms: i64,
    (transits, messages): &mut FileTransits,
) -> Result<(), ColumnError> {
    // The tolerant readers: Firehose's conversion on AWS writes plain strings and
    // timestamps of another unit.
    let event = columns::timestamps_ms(b, "event_time")?;
    let received = columns::timestamps_ms(b, "received_at")?;
    let seq = columns::int64(b, "seq")?;
    let device = Strings::new("device_id", columns::required(b, "device_id")?)?;
    for (i, (&e, &r)) in event.iter().zip(&received).enumerate() {
        transits.push(Transit {
            event_time: e,
            to_received_ms: r - e,
            to_parquet_ms: written_ms - e,
            to_stats_ms: None,
        });
        let d = device.value(i);
        let entry = match messages.get_mut(d) {
            Some(v) => v,
            None => messages.entry(d.to_string()).or_default(),
        };
        entry.push((e, seq.value(i), r));
    }
    Ok(())
}

async fn read_runs(
    store: &Arc<dyn ObjectStore>,
) -> Result<(Vec<RunRecord>, Vec<String>), SourceError> {
    let metas: Vec<_> = list(store, RUNS_PREFIX)
        .await?
        .into_iter()
        .filter(|m| {
            let key = m.location.as_ref();
            key.ends_with(".json") && !key.ends_with(SENT_SUFFIX)
        })
        .collect();
    let (mut runs, mut bad) = (Vec::new(), Vec::new());
    for (meta, bytes) in read_all(store, metas).await? {
        match serde_json::from_slice::<RunRecord>(&bytes) {
            Ok(r) => runs.push(r),
            Err(_) => bad.push(meta.location.to_string()),
        }
    }
    runs.sort_by_key(|r| r.finished_at_ms);
    bad.sort();
    Ok((runs, bad))
}

/// The sent record of the latest run that has one (by its end time), if any. An
/// unreadable one is skipped, as an unreadable run record is.
async fn read_last_sent(store: &Arc<dyn ObjectStore>) -> Result<Option<RunSent>, SourceError> {
    let mut metas: Vec<_> = list(store, RUNS_PREFIX)
        .await?
        .into_iter()
        .filter(|m| m.location.as_ref().ends_with(SENT_SUFFIX))
        .collect();
    let ended = |m: &ObjectMeta| {
        m.location
            .filename()
            .and_then(|f| f.strip_suffix(SENT_SUFFIX))
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(i64::MIN)
    };
    metas.sort_by_key(ended);
    let Some(last) = metas.pop() else {
        return Ok(None);
    };
    let read = read_all(store, vec![last]).await?;
    Ok(read
        .first()
        .and_then(|(_, bytes)| serde_json::from_slice::<RunSent>(bytes).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_overtaken_on_the_way_is_out_of_order_and_a_reboot_or_a_redelivery_is_not() {
        // (event time, seq, received at), a row per reading.
        let a = vec![
            (1_000, 1, 1_100),
            (1_000, 1, 1_100), // a second metric of the same message
            (2_000, 2, 2_500), // overtaken by seq 3 ...
            (3_000, 3, 2_400),
            (2_000, 2, 9_000), // ... and delivered again later: still one message
            (4_000, 1, 4_100), // a reboot: seq starts again, time goes on
            (5_000, 2, 5_100),
        ];
        let b = vec![(1_000, 7, 1_000), (1_000, 7, 1_000)];
        let got = arrivals(BTreeMap::from([("a".into(), a), ("b".into(), b)]));
        assert_eq!(
            got,
            Arrivals {
                messages: 6,
                out_of_order: 1
            }
        );
    }

    #[test]
    fn the_window_follows_the_range_asked_for() {
        let h = 3_600_000;
        let to = 1_795_622_400_000;
        assert_eq!(window_for_range(None, to), Window::M1);
        assert_eq!(window_for_range(Some(to - 6 * h), to), Window::M1);
        assert_eq!(window_for_range(Some(to - 6 * h - 1), to), Window::H1);
        assert_eq!(window_for_range(Some(to - 14 * 24 * h), to), Window::H1);
        assert_eq!(window_for_range(Some(to - 14 * 24 * h - 1), to), Window::D1);
    }
}

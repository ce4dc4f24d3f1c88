//! Coarser windows (1h, 1d) and the fleet view, merged from finer stats rows instead of
//! re-reading the readings.
//!
//! # What is derived, from what
//! For every hour the rollup touched ([`derive_coarse`]):
//! - `stats/window=1h/dt=…/hour=…/NAME` (per device) from each Parquet file `NAME` under
//!   the hour's `stats/window=1m/dt=…/hour=…/` folder (a unit's `part-BBBB-of-NNNN.parquet`:
//!   every row of its bucket's devices), one file at a time; a 1h file whose 1m file is gone
//!   is removed;
//! - `stats/fleet/window=1m/…` and `stats/fleet/window=1h/…` (device `*`, all devices of a
//!   metric) from the same rows;
//!
//! and for every day of those hours:
//! - `stats/window=1d/dt=…/NAME` from the day's 1h files of that name (one bucket) when all
//!   hours of the day share one unit layout, else one `stats.parquet` from all of them (a
//!   bucket count changed within the day); the fleet's 1d from the fleet's 1h files.
//!
//! # Exactness
//! `count`, `min`, `max`, `first_event`, `last_event` merge exactly; `sum` is the sum of
//! the finer sums (added in file order, then window order, so a recomputation is
//! bit-for-bit the same); `mean = sum / count`; `stddev` merges exactly from each row's
//! `m2 = Σ(x − mean)²` with Chan et al.'s parallel formula (`n = nₐ + n_b`,
//! `δ = mean_b − meanₐ`, `m2 = m2ₐ + m2_b + δ²·nₐ·n_b / n`), up to floating-point
//! rounding. Quantiles of every derived row come from the merged DDSketch
//! ([`crate::sketch`]): within 1 % of the exact continuous quantile for values of one
//! sign. 1m per-device quantiles stay exact (the rollup computes them from the values).
//!
//! # Memory
//! One accumulator per (device, metric) of one unit file (one device-hash bucket) of the
//! hour or day being derived, plus that file's Arrow batches, turned into rows one batch at
//! a time; the fleet's accumulators are one per (metric, minute). So the bucket count bounds
//! the derivation's memory as it bounds the units', not the fleet's size (a day whose hours
//! mix bucket counts is the exception: it is merged whole).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::stream::BoxStream;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use telemetry::Partition;
use telemetry::layout::{
    FLEET_DEVICE_ID, STATS_FILE_NAME, fleet_prefix, stats_day_path, stats_path,
};
use tracing::info;

use crate::config::{RollupConfig, window_prefix};
use crate::io::{self, ReadError};
use crate::schema::{stats_from_batch, stats_to_batch};
use crate::sketch::{Sketch, SketchError};
use crate::spread::spread;
use crate::stats::{RowSketch, WindowStats};
use crate::window::Window;

/// The merge of several windows' rows into one coarser row.
#[derive(Debug, Clone, Default)]
pub struct Merge {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// Running mean of the merged rows (for Chan's formula; the row's `mean` is
    /// `sum / count`).
    mean: f64,
    m2: f64,
    first: i64,
    last: i64,
    sketch: Sketch,
}

impl Merge {
    /// Adds a finer row. Fails when its sketch is not readable.
    pub fn add(&mut self, row: &WindowStats) -> Result<(), SketchError> {
        let sketch = row.decode_sketch()?;
        self.add_decoded(row, &sketch);
        Ok(())
    }

    /// Adds a finer row whose sketch is already decoded (`sketch`, from
    /// [`WindowStats::decode_sketch`]).
    pub fn add_decoded(&mut self, row: &WindowStats, sketch: &RowSketch) {
        if row.count == 0 {
            return;
        }
        sketch.merge_into(&mut self.sketch);
        // The row as a merge of itself (an empty sketch allocates nothing).
        self.add_moments(&Merge {
            count: row.count,
            sum: row.sum,
            min: row.min,
            max: row.max,
            mean: row.mean,
            m2: row.m2,
            first: row.first_event,
            last: row.last_event,
            sketch: Sketch::new(),
        });
    }

    /// Adds everything `other` merged.
    fn absorb(&mut self, other: Merge) {
        self.add_moments(&other);
        self.sketch.merge(&other.sketch);
    }

    /// Adds `other`'s count, sum, extremes and event times, and its mean and `m2` by
    /// Chan's formula; the sketch is left to the caller.
    fn add_moments(&mut self, other: &Merge) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            (self.count, self.sum, self.min, self.max) =
                (other.count, other.sum, other.min, other.max);
            (self.mean, self.m2, self.first, self.last) =
                (other.mean, other.m2, other.first, other.last);
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += other.m2 + delta * delta * na * nb / n;
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }

    /// The merged row; `None` when nothing was added.
    pub fn finish(self, device_id: &str, metric: &str, window_start: i64) -> Option<WindowStats> {
        if self.count == 0 {
            return None;
        }
        let n = self.count;
        let stddev = (n > 1).then(|| (self.m2.max(0.0) / (n - 1) as f64).sqrt());
        Some(WindowStats {
            device_id: device_id.to_string(),
            metric: metric.to_string(),
            window_start,
            count: n,
            min: self.min,
            max: self.max,
            sum: self.sum,
            mean: self.sum / n as f64,
            stddev,
            p50: self.sketch.quantile(0.5)?,
            p95: self.sketch.quantile(0.95)?,
            p99: self.sketch.quantile(0.99)?,
            first_event: self.first,
            last_event: self.last,
            m2: self.m2,
            sketch: self.sketch.to_bytes(),
        })
    }
}

/// Rows merged into coarser windows when they come sorted by (device, metric, window
/// start), as a unit's stats file is: a row extends the last group or starts the next one,
/// with no lookup. Rows out of that order are still merged correctly (sorted and combined
/// at the end), only not as cheaply.
#[derive(Debug, Default)]
struct Runs {
    groups: Vec<((String, String, i64), Merge)>,
    unsorted: bool,
}

impl Runs {
    fn add_decoded(&mut self, row: &WindowStats, sketch: &RowSketch, window: Window) {
        let start = window.start_of(row.window_start);
        if let Some(((device, metric, at), merge)) = self.groups.last_mut() {
            if *at == start && *device == row.device_id && *metric == row.metric {
                merge.add_decoded(row, sketch);
                return;
            }
            if (device.as_str(), metric.as_str(), *at)
                > (row.device_id.as_str(), row.metric.as_str(), start)
            {
                self.unsorted = true;
            }
        }
        let mut merge = Merge::default();
        merge.add_decoded(row, sketch);
        self.groups
            .push(((row.device_id.clone(), row.metric.clone(), start), merge));
    }

    fn finish(mut self) -> Vec<WindowStats> {
        if self.unsorted {
            // Stable: equal keys keep their arrival order.
            self.groups.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let mut out: Vec<WindowStats> = Vec::with_capacity(self.groups.len());
        let mut groups = self.groups.into_iter().peekable();
        while let Some((key, mut merge)) = groups.next() {
            while let Some((_, next)) = groups.next_if(|(k, _)| *k == key) {
                merge.absorb(next);
            }
            out.extend(merge.finish(&key.0, &key.1, key.2));
        }
        out
    }
}

/// Rows grouped by (device, metric, window start), merged in arrival order.
///
/// Nested maps, so that a row of an existing group is found by borrowed names: one row per
/// minute of every device goes through the fleet's groups, and allocating its key to look
/// it up was most of the derivation's allocations.
#[derive(Debug, Default)]
struct Groups(BTreeMap<String, BTreeMap<String, BTreeMap<i64, Merge>>>);

impl Groups {
    fn add(&mut self, device: &str, row: &WindowStats, window: Window) -> Result<(), SketchError> {
        let sketch = row.decode_sketch()?;
        self.add_decoded(device, row, &sketch, window);
        Ok(())
    }

    fn add_decoded(&mut self, device: &str, row: &WindowStats, sketch: &RowSketch, window: Window) {
        let start = window.start_of(row.window_start);
        if !self.0.contains_key(device) {
            self.0.insert(device.to_string(), BTreeMap::new());
        }
        let Some(metrics) = self.0.get_mut(device) else {
            return;
        };
        if !metrics.contains_key(row.metric.as_str()) {
            metrics.insert(row.metric.clone(), BTreeMap::new());
        }
        let Some(windows) = metrics.get_mut(row.metric.as_str()) else {
            return;
        };
        windows.entry(start).or_default().add_decoded(row, sketch);
    }

    fn finish(self) -> Vec<WindowStats> {
        let mut out = Vec::new();
        for (device, metrics) in self.0 {
            for (metric, windows) in metrics {
                out.extend(
                    windows
                        .into_iter()
                        .filter_map(|(start, merge)| merge.finish(&device, &metric, start)),
                );
            }
        }
        out
    }
}

/// What [`derive_coarse`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoarseReport {
    /// Hours whose 1h and fleet rows were derived.
    pub hours: usize,
    /// Days whose 1d rows were derived.
    pub days: usize,
    /// Stats files read.
    pub files_read: usize,
    /// Stats rows read.
    pub rows_read: u64,
    /// Stats files written (or removed, for an hour that lost all its 1m files); files
    /// whose content would not change are not rewritten and not counted.
    pub files_written: usize,
}

/// A derivation that could not complete; the finer stats are untouched, so running it
/// again (the next rollup of the same hour, or the compact job) repairs it.
#[derive(Debug, thiserror::Error)]
pub enum CoarseError {
    /// A derivation task was cancelled (the runtime is shutting down).
    #[error(
        "derivation cancelled: the runtime is shutting down; the next rollup derives the hour again"
    )]
    Aborted,
    /// Listing a stats folder failed.
    #[error("listing {prefix}/: {source}")]
    List {
        /// The listed prefix.
        prefix: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A finer stats file could not be read.
    #[error("reading {path}: {source}; rerun the rollup to rewrite it")]
    Read {
        /// Object key.
        path: String,
        /// The cause.
        #[source]
        source: ReadError,
    },
    /// A finer row's sketch could not be read.
    #[error("reading {path}: {source}")]
    Sketch {
        /// Object key.
        path: String,
        /// The cause.
        #[source]
        source: SketchError,
    },
    /// Encoding a derived file failed.
    #[error("building {path}: {source}")]
    Encode {
        /// Object key.
        path: String,
        /// Arrow's error.
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// Writing or removing a derived file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// Object key.
        path: String,
        /// The cause.
        #[source]
        source: io::WriteError,
    },
}

/// Derives the 1h and 1d windows, per device and fleet-wide, of the hours in
/// `hours_touched` (and of their days) from the 1m stats under `cfg.stats_prefix`: see
/// the [module documentation](self). Idempotent: deriving an hour twice writes the same
/// rows.
pub async fn derive_coarse(
    store: &Arc<dyn ObjectStore>,
    hours_touched: &[Partition],
    cfg: &RollupConfig,
) -> Result<CoarseReport, CoarseError> {
    let mut report = CoarseReport::default();
    let hours: BTreeSet<&Partition> = hours_touched.iter().collect();
    let fleet = fleet_prefix(&cfg.stats_prefix);
    let mut days = BTreeSet::new();
    for hour in hours {
        let folder = format!("{}/{}/", cfg.window_prefix(Window::M1), hour.path());
        let out_folder = format!("{}/{}/", cfg.window_prefix(Window::H1), hour.path());
        // One 1h file per 1m file, under the same name: a unit's file holds every row of
        // its devices (a device-hash bucket), so its devices' hours are complete in it, and
        // only one bucket's accumulators are in memory per worker. Each file also yields
        // its part of the fleet's minutes, merged below in file order (the same order
        // whatever the worker count, so the same sums).
        // Futures built in a loop rather than by a closure: a closure returning a future
        // is higher-ranked, and rustc then cannot prove the caller's future `Send`.
        let mut tasks = Vec::new();
        for meta in visible_files(store, &folder).await? {
            let (store, folder, out_folder) = (store.clone(), folder.clone(), out_folder.clone());
            tasks.push(
                async move { derive_hour_file(&store, &meta, &folder, &out_folder).await }.boxed(),
            );
        }
        let mut fleet_1m = Groups::default();
        let mut written = BTreeSet::new();
        for done in spread(tasks, cfg.workers).await {
            let done = done.ok_or(CoarseError::Aborted)??;
            report.files_read += 1;
            report.rows_read += done.rows_read;
            report.files_written += usize::from(done.written);
            for row in &done.fleet_1m {
                fleet_1m
                    .add(FLEET_DEVICE_ID, row, Window::M1)
                    .map_err(|source| CoarseError::Sketch {
                        path: done.path.clone(),
                        source,
                    })?;
            }
            written.insert(done.path.trim_start_matches('/').to_string());
        }
        // A 1h file whose 1m file is gone (or the single file of the layout before) goes.
        report.files_written += remove_others(store, &out_folder, &written).await?;
        let fleet_1m = fleet_1m.finish();
        let mut fleet_1h = Groups::default();
        for row in &fleet_1m {
            fleet_1h
                .add(FLEET_DEVICE_ID, row, Window::H1)
                .map_err(|source| CoarseError::Sketch {
                    path: folder.clone(),
                    source,
                })?;
        }
        let label = |w: Window| w.label();
        let outputs = [
            (stats_path(&fleet, label(Window::M1), hour), fleet_1m),
            (
                stats_path(&fleet, label(Window::H1), hour),
                fleet_1h.finish(),
            ),
        ];
        for (path, rows) in outputs {
            if write_or_remove(store, &path, &rows).await? {
                report.files_written += 1;
            }
        }
        report.hours += 1;
        days.insert(hour.dt.clone());
    }

    for dt in days {
        // Per device: the day's 1h files of one name (one bucket) at a time, when every
        // hour of the day has the same unit layout; otherwise (a bucket count changed
        // within the day, or hours of the layout before units) the whole day at once.
        let folder = format!(
            "{}/{}={dt}/",
            window_prefix(&cfg.stats_prefix, Window::H1),
            telemetry::partition::DT_KEY
        );
        let out_folder = format!(
            "{}/{}={dt}/",
            window_prefix(&cfg.stats_prefix, Window::D1),
            telemetry::partition::DT_KEY
        );
        let mut by_name: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
        for meta in visible_files(store, &folder).await? {
            let name = meta.location.filename().unwrap_or_default().to_string();
            by_name.entry(name).or_default().push(meta);
        }
        let layouts: BTreeSet<Option<u32>> = by_name.keys().map(|n| buckets_of(n)).collect();
        if layouts.len() > 1 || layouts.contains(&None) {
            let all = by_name.into_values().flatten().collect();
            by_name = BTreeMap::from([(STATS_FILE_NAME.to_string(), all)]);
        }
        // One 1d file per name (bucket), side by side like the hours' files.
        let mut tasks = Vec::new();
        for (name, metas) in by_name {
            let store = store.clone();
            let path = format!("{out_folder}{name}");
            tasks.push(
                async move {
                    let mut part = CoarseReport::default();
                    let mut per_day = Groups::default();
                    for meta in &metas {
                        add_file(&store, meta, None, &mut per_day, &mut part).await?;
                    }
                    let written = write_or_remove(&store, &path, &per_day.finish()).await?;
                    part.files_written = usize::from(written);
                    Ok::<_, CoarseError>((path, part))
                }
                .boxed(),
            );
        }
        let mut written = BTreeSet::new();
        for done in spread(tasks, cfg.workers).await {
            let (path, part) = done.ok_or(CoarseError::Aborted)??;
            report.files_read += part.files_read;
            report.rows_read += part.rows_read;
            report.files_written += part.files_written;
            written.insert(path.trim_start_matches('/').to_string());
        }
        report.files_written += remove_others(store, &out_folder, &written).await?;

        // The fleet's day: one small file (a row per metric).
        let fleet_folder = format!(
            "{}/{}={dt}/",
            window_prefix(&fleet, Window::H1),
            telemetry::partition::DT_KEY
        );
        let mut per_day = Groups::default();
        for meta in visible_files(store, &fleet_folder).await? {
            add_file(
                store,
                &meta,
                Some(FLEET_DEVICE_ID),
                &mut per_day,
                &mut report,
            )
            .await?;
        }
        let path = stats_day_path(&fleet, Window::D1.label(), &dt);
        if write_or_remove(store, &path, &per_day.finish()).await? {
            report.files_written += 1;
        }
        report.days += 1;
    }
    info!(
        hours = report.hours,
        days = report.days,
        files_read = report.files_read,
        files_written = report.files_written,
        "1h/1d and fleet windows derived"
    );
    Ok(report)
}

/// What deriving from one 1m file did ([`derive_hour_file`]).
struct HourFile {
    /// The 1h file written (or left unchanged).
    path: String,
    /// Whether it was written or removed.
    written: bool,
    /// Rows of the 1m file.
    rows_read: u64,
    /// The file's part of the fleet's 1m rows.
    fleet_1m: Vec<WindowStats>,
}

/// Writes the 1h rows of the 1m file `meta` (under `folder`) to the same name under
/// `out_folder`, and returns its part of the fleet's minutes.
async fn derive_hour_file(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    folder: &str,
    out_folder: &str,
) -> Result<HourFile, CoarseError> {
    let mut report = CoarseReport::default();
    let mut per_device = Runs::default();
    let mut fleet = Groups::default();
    let mut batches = read_batches(store, meta).await?;
    while let Some(batch) = next_batch(meta, &mut batches, &mut report).await? {
        for row in rows_of(meta, &batch)? {
            let sketch = row.decode_sketch().map_err(|source| CoarseError::Sketch {
                path: meta.location.to_string(),
                source,
            })?;
            per_device.add_decoded(&row, &sketch, Window::H1);
            fleet.add_decoded(FLEET_DEVICE_ID, &row, &sketch, Window::M1);
        }
    }
    let path = format!("{out_folder}{}", below(meta, folder));
    let written = write_or_remove(store, &path, &per_device.finish()).await?;
    Ok(HourFile {
        path,
        written,
        rows_read: report.rows_read,
        fleet_1m: fleet.finish(),
    })
}

/// Merges every row of the 1h stats file `meta` into `groups` as 1d rows, under `device`
/// (the fleet's id) or each row's own device.
async fn add_file(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    device: Option<&str>,
    groups: &mut Groups,
    report: &mut CoarseReport,
) -> Result<(), CoarseError> {
    let mut batches = read_batches(store, meta).await?;
    while let Some(batch) = next_batch(meta, &mut batches, report).await? {
        for row in rows_of(meta, &batch)? {
            let id = device.unwrap_or(row.device_id.as_str());
            groups
                .add(id, &row, Window::D1)
                .map_err(|source| CoarseError::Sketch {
                    path: meta.location.to_string(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// The path of `meta` below `folder` (a unit's file name).
fn below(meta: &ObjectMeta, folder: &str) -> String {
    let path = meta.location.as_ref();
    path.strip_prefix(folder.trim_start_matches('/'))
        .unwrap_or(path)
        .to_string()
}

/// The bucket count of a unit's file name (`part-BBBB-of-NNNN.parquet`), `None` for any
/// other name.
fn buckets_of(name: &str) -> Option<u32> {
    let (_, of) = name
        .strip_suffix(".parquet")?
        .strip_prefix("part-")?
        .split_once("-of-")?;
    of.parse().ok()
}

/// Removes every visible file under `folder` that is not in `keep` (derived files whose
/// source is gone); returns how many it removed.
async fn remove_others(
    store: &Arc<dyn ObjectStore>,
    folder: &str,
    keep: &BTreeSet<String>,
) -> Result<usize, CoarseError> {
    let mut removed = 0;
    for meta in visible_files(store, folder).await? {
        if keep.contains(meta.location.as_ref()) {
            continue;
        }
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
            Err(e) => {
                return Err(CoarseError::Write {
                    path: meta.location.to_string(),
                    source: e.into(),
                });
            }
        }
    }
    Ok(removed)
}

/// Every object under `folder` (recursively) whose path below it has no segment starting
/// with `.` or `_`, sorted by key so that merges happen in a stable order.
async fn visible_files(
    store: &Arc<dyn ObjectStore>,
    folder: &str,
) -> Result<Vec<ObjectMeta>, CoarseError> {
    let mut files: Vec<ObjectMeta> = io::list_objects(store, folder)
        .await
        .map_err(|source| CoarseError::List {
            prefix: folder.trim_end_matches('/').to_string(),
            source,
        })?
        .into_iter()
        .filter(|m| {
            let path = m.location.as_ref();
            let below = path
                .strip_prefix(folder.trim_start_matches('/'))
                .unwrap_or(path);
            !below
                .split('/')
                .any(|s| s.starts_with('.') || s.starts_with('_'))
        })
        .collect();
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files)
}

/// The record batches of one stats file, read one at a time ([`next_batch`]) and decoded
/// to rows one batch at a time by the caller ([`rows_of`]): a file's peak is one batch,
/// whatever the unit's number of windows.
async fn read_batches(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
) -> Result<BoxStream<'static, Result<RecordBatch, ReadError>>, CoarseError> {
    io::stream_parquet(store, meta)
        .await
        .map_err(|source| CoarseError::Read {
            path: meta.location.to_string(),
            source,
        })
}

/// The next batch of [`read_batches`], counted in `report` (the file when it ends).
async fn next_batch(
    meta: &ObjectMeta,
    batches: &mut BoxStream<'static, Result<RecordBatch, ReadError>>,
    report: &mut CoarseReport,
) -> Result<Option<RecordBatch>, CoarseError> {
    match batches.try_next().await {
        Ok(Some(batch)) => {
            report.rows_read += batch.num_rows() as u64;
            Ok(Some(batch))
        }
        Ok(None) => {
            report.files_read += 1;
            Ok(None)
        }
        Err(source) => Err(CoarseError::Read {
            path: meta.location.to_string(),
            source,
        }),
    }
}

/// The rows of one batch of the stats file `meta`.
fn rows_of(
    meta: &ObjectMeta,
    batch: &arrow_array::RecordBatch,
) -> Result<Vec<WindowStats>, CoarseError> {
    stats_from_batch(batch).map_err(|e| CoarseError::Read {
        path: meta.location.to_string(),
        source: e.into(),
    })
}

/// Writes `rows` to `path` with one put, or removes `path` when there are none (the finer
/// files disappeared), so that a derived file never outlives its source. Returns whether
/// the store changed: a file whose bytes would stay the same is not written again, so
/// re-deriving an unchanged hour (after a compaction, say) writes nothing.
async fn write_or_remove(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    rows: &[WindowStats],
) -> Result<bool, CoarseError> {
    let location = Path::from(path);
    let write_err = |source: io::WriteError| CoarseError::Write {
        path: path.to_string(),
        source,
    };
    let existing = match store.get(&location).await {
        Ok(got) => Some(got.bytes().await.map_err(|e| write_err(e.into()))?),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(write_err(e.into())),
    };
    if rows.is_empty() {
        if existing.is_none() {
            return Ok(false);
        }
        return match store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(write_err(e.into())),
        };
    }
    let batch = stats_to_batch(rows).map_err(|source| CoarseError::Encode {
        path: path.to_string(),
        source,
    })?;
    let encoded = io::encode_parquet(&batch).map_err(|e| write_err(e.into()))?;
    if existing.as_deref() == Some(encoded.as_slice()) {
        return Ok(false);
    }
    store
        .put(&location, encoded.into())
        .await
        .map_err(|e| write_err(e.into()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use telemetry::Reading;
    use telemetry::schema::readings_to_batch;

    use super::*;
    use crate::query::{Group, Query, query_prefix};
    use crate::stats::{aggregate, quantile_cont};

    const HOUR: i64 = 3_600_000;
    /// 2026-11-25T00:00:00Z.
    const DAY: i64 = 1_764_028_800_000;

    /// Two devices, two metrics, readings over two hours of one day, 1m stats written
    /// as two files per hour (as the sharded rollup does).
    #[test]
    fn sorted_runs_merge_like_groups_in_any_row_order() {
        let mut rng = StdRng::seed_from_u64(5);
        let readings: Vec<Reading> = (0..400)
            .map(|i| Reading {
                device_id: format!("d{}", i % 7),
                seq: i,
                event_time: i * 17_000,
                received_at: i * 17_000,
                metric: ["t", "h"][(i % 2) as usize].into(),
                value: rng.random_range(-5.0..40.0),
                fw: None,
            })
            .collect();
        let mut rows = aggregate(&[readings_to_batch(&readings).unwrap()], Window::M1).unwrap();
        let grouped = |rows: &[WindowStats]| {
            let mut g = Groups::default();
            for r in rows {
                g.add(&r.device_id, r, Window::H1).unwrap();
            }
            g.finish()
        };
        let runs = |rows: &[WindowStats]| {
            let mut r = Runs::default();
            for row in rows {
                r.add_decoded(row, &row.decode_sketch().unwrap(), Window::H1);
            }
            r.finish()
        };
        let expected = grouped(&rows);
        assert_eq!(runs(&rows), expected);
        rows.reverse();
        let shuffled = runs(&rows);
        assert_eq!(shuffled.len(), expected.len());
        for (a, b) in shuffled.iter().zip(&expected) {
            assert_eq!(
                (&a.device_id, &a.metric, a.window_start),
                (&b.device_id, &b.metric, b.window_start)
            );
            assert_eq!(
                (a.count, a.min, a.max, a.sketch.clone()),
                (b.count, b.min, b.max, b.sketch.clone())
            );
            assert!((a.sum - b.sum).abs() < 1e-9 && (a.m2 - b.m2).abs() < 1e-6);
        }
    }

    async fn seeded() -> (
        Arc<dyn ObjectStore>,
        Vec<Partition>,
        Vec<(String, i64, f64)>,
    ) {
        seeded_named(|_, d| format!("part-{d:04}-of-0002.parquet")).await
    }

    /// Two devices over two hours, each device's 1m rows of an hour in its own file named
    /// `name(hour, device index)`.
    async fn seeded_named(
        name: impl Fn(i64, usize) -> String,
    ) -> (
        Arc<dyn ObjectStore>,
        Vec<Partition>,
        Vec<(String, i64, f64)>,
    ) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = RollupConfig::default();
        let mut rng = StdRng::seed_from_u64(5);
        let mut readings = Vec::new();
        let mut raw = Vec::new();
        for (d, device) in ["a", "b"].into_iter().enumerate() {
            for seq in 0..600i64 {
                let t = DAY + rng.random_range(0..2 * HOUR);
                for metric in ["temperature", "pressure"] {
                    let value = if metric == "pressure" {
                        rng.random_range(-14.0f64..14.0).exp()
                    } else {
                        rng.random_range(15.0..30.0) + d as f64
                    };
                    raw.push((metric.to_string(), t, value));
                    readings.push(Reading {
                        device_id: device.into(),
                        seq,
                        event_time: t,
                        received_at: t,
                        metric: metric.into(),
                        value,
                        fw: None,
                    });
                }
            }
        }
        let mut hours = Vec::new();
        for h in 0..2 {
            let p = Partition::of_millis(DAY + h * HOUR);
            for (d, device) in ["a", "b"].into_iter().enumerate() {
                let mine: Vec<Reading> = readings
                    .iter()
                    .filter(|r| r.device_id == device && Partition::of_millis(r.event_time) == p)
                    .cloned()
                    .collect();
                let stats = aggregate(&[readings_to_batch(&mine).unwrap()], Window::M1).unwrap();
                let path = format!(
                    "{}/{}/{}",
                    cfg.window_prefix(Window::M1),
                    p.path(),
                    name(h, d)
                );
                io::write_parquet(&store, &path, &stats_to_batch(&stats).unwrap())
                    .await
                    .unwrap();
            }
            hours.push(p);
        }
        (store, hours, raw)
    }

    async fn rows(store: &Arc<dyn ObjectStore>, window: Window, group: Group) -> Vec<WindowStats> {
        let q = Query {
            window,
            group,
            ..Query::default()
        };
        query_prefix(store.clone(), "stats", &q).await.unwrap()
    }

    #[tokio::test]
    async fn coarser_counts_sums_and_extremes_add_up_from_the_finer_rows() {
        // Unit files (one 1h and one 1d file per bucket), and a day whose hours have
        // different layouts (the whole day merged at once): the same rows either way.
        let layouts: [fn(i64, usize) -> String; 2] = [
            |_, d| format!("part-{d:04}-of-0002.parquet"),
            |h, d| {
                if h == 0 {
                    format!("part-{d:04}-of-0002.parquet")
                } else {
                    format!("unit-{d}.parquet")
                }
            },
        ];
        for layout in layouts {
            coarser_rows_add_up(layout).await;
        }
    }

    async fn coarser_rows_add_up(layout: fn(i64, usize) -> String) {
        let (store, hours, _) = seeded_named(layout).await;
        // A 1h file of the layout before units: replaced, not counted twice.
        let stale = format!(
            "{}/{}/{STATS_FILE_NAME}",
            RollupConfig::default().window_prefix(Window::H1),
            hours[0].path()
        );
        store
            .put(&Path::from(stale.as_str()), b"not parquet".to_vec().into())
            .await
            .unwrap();
        let report = derive_coarse(&store, &hours, &RollupConfig::default())
            .await
            .unwrap();
        assert_eq!((report.hours, report.days), (2, 1));
        assert!(matches!(
            store.head(&Path::from(stale.as_str())).await,
            Err(object_store::Error::NotFound { .. })
        ));
        for group in [Group::Device, Group::Fleet] {
            let m1 = rows(&store, Window::M1, group).await;
            let h1 = rows(&store, Window::H1, group).await;
            let d1 = rows(&store, Window::D1, group).await;
            assert!(!m1.is_empty());
            for (fine, coarse, w) in [(&m1, &h1, Window::H1), (&h1, &d1, Window::D1)] {
                // Same key set: every coarse row has its finer rows and vice versa.
                let mut expected: BTreeMap<(String, String, i64), Vec<&WindowStats>> =
                    BTreeMap::new();
                for r in fine {
                    expected
                        .entry((
                            r.device_id.clone(),
                            r.metric.clone(),
                            w.start_of(r.window_start),
                        ))
                        .or_default()
                        .push(r);
                }
                assert_eq!(expected.len(), coarse.len(), "{group:?} {w}");
                for c in coarse {
                    let parts = &expected[&c.key()];
                    let count: u64 = parts.iter().map(|r| r.count).sum();
                    let sum: f64 = parts.iter().map(|r| r.sum).sum();
                    let min = parts.iter().map(|r| r.min).fold(f64::INFINITY, f64::min);
                    let max = parts
                        .iter()
                        .map(|r| r.max)
                        .fold(f64::NEG_INFINITY, f64::max);
                    assert_eq!(c.count, count, "{group:?} {w} {:?}", c.key());
                    assert!((c.sum - sum).abs() <= 1e-12 * sum.abs().max(1.0));
                    assert_eq!((c.min, c.max), (min, max));
                    assert_eq!(
                        c.first_event,
                        parts.iter().map(|r| r.first_event).min().unwrap()
                    );
                    assert_eq!(
                        c.last_event,
                        parts.iter().map(|r| r.last_event).max().unwrap()
                    );
                }
            }
            // The fleet view and the device view count the same readings.
            let total = |rows: &[WindowStats]| rows.iter().map(|r| r.count).sum::<u64>();
            assert_eq!(total(&m1), total(&d1));
        }
        let fleet = rows(&store, Window::D1, Group::Fleet).await;
        assert!(fleet.iter().all(|r| r.device_id == FLEET_DEVICE_ID));
        assert_eq!(fleet.len(), 2);
        assert_eq!(fleet.iter().map(|r| r.count).sum::<u64>(), 2 * 2 * 600);
    }

    #[tokio::test]
    async fn merged_stddev_and_quantiles_match_an_exact_computation() {
        let (store, hours, raw) = seeded().await;
        derive_coarse(&store, &hours, &RollupConfig::default())
            .await
            .unwrap();
        for r in rows(&store, Window::D1, Group::Fleet).await {
            let mut values: Vec<f64> = raw
                .iter()
                .filter(|(m, _, _)| *m == r.metric)
                .map(|(_, _, v)| *v)
                .collect();
            values.sort_by(f64::total_cmp);
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            let sd = r.stddev.unwrap();
            assert!(
                (sd - var.sqrt()).abs() <= 1e-9 * var.sqrt(),
                "{sd} vs {}",
                var.sqrt()
            );
            for (q, got) in [(0.5, r.p50), (0.95, r.p95), (0.99, r.p99)] {
                let exact = quantile_cont(&values, q).unwrap();
                // All values are positive: the stated 1 % relative bound applies.
                assert!(
                    (got - exact).abs() <= crate::sketch::ALPHA * exact,
                    "{} q{q}: {got} vs {exact}",
                    r.metric
                );
            }
        }
    }

    #[tokio::test]
    async fn an_hour_without_1m_files_loses_its_derived_rows() {
        let (store, hours, _) = seeded().await;
        let cfg = RollupConfig::default();
        derive_coarse(&store, &hours, &cfg).await.unwrap();
        let folder = format!("{}/{}/", cfg.window_prefix(Window::M1), hours[1].path());
        for meta in visible_files(&store, &folder).await.unwrap() {
            store.delete(&meta.location).await.unwrap();
        }
        derive_coarse(&store, &hours[1..], &cfg).await.unwrap();
        let h1 = rows(&store, Window::H1, Group::Device).await;
        assert!(h1.iter().all(|r| r.window_start == DAY), "{h1:?}");
        let m1 = rows(&store, Window::M1, Group::Device).await;
        let d1 = rows(&store, Window::D1, Group::Device).await;
        let total = |rows: &[WindowStats]| rows.iter().map(|r| r.count).sum::<u64>();
        assert_eq!(total(&m1), total(&d1));
    }
}

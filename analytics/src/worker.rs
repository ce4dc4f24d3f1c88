//! The worker: aggregates one [`Unit`] — one device-hash bucket of one hour — under its
//! lease.
//!
//! 1. Take the unit's lease ([`crate::lease`]); if another worker holds it, the unit is
//!    [`UnitOutcome::Busy`] and left alone.
//! 2. List the hour's telemetry objects and load the unit's state ([`crate::state`]). If the
//!    state names exactly the listed objects, the unit is up to date.
//! 3. Read every object of the hour (de-duplication needs all of them), in arrival order
//!    (last-modified time, then key), so that "the first reading seen" is the one that
//!    arrived first and stays so in later runs; each read keeps only the unit's bucket.
//!    The objects' footers come first: when their row counts put more than
//!    [`RollupConfig::pass_readings`] readings in the unit, it is aggregated in several
//!    passes, each reading every object for its range of the bucket's device ids
//!    ([`crate::units::pass_bounds`]), so that memory stays bounded as the fleet grows.
//! 4. Compute the windows pass by pass, in the file's order; compare each pass's with the
//!    unit's stats file (read along, a batch at a time) and encode them into the new file
//!    a chunk at a time, so that memory holds one pass's readings, a chunk of windows and
//!    the compressed file, never every window of the unit. Write the file with one put
//!    only if a row changed (a redelivered duplicate file costs no write).
//! 5. Write the state, then release the lease. A crash before the state is written
//!    leaves the old state: the next run recomputes the unit, with the same result.
//!
//! A unit's cost is its hour's data, never the history: the state is one hour's object
//! names, and nothing else is listed or read.
//!
//! # Failures
//! - A *new* object that cannot be read (corrupt, not Parquet, wrong columns, or a store
//!   error) is reported in [`UnitReport::skipped_files`] and left out of the state, so
//!   every later run tries it again; the unit is aggregated without it.
//! - An *already aggregated* object that cannot be re-read defers the unit
//!   ([`UnitOutcome::Deferred`]): recomputing without its readings would lose them.
//! - Readings whose event time lies outside the hour of their folder (a writer bug) are
//!   counted in [`UnitReport::rows_outside_partition`], logged and left out.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::errors::ParquetError;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::RollupConfig;
use crate::io::{self, ReadError, Slice, TelemetryFile};
use crate::lease::{self, LeaseError};
use crate::rollup::{HOUR_MS, ROLLUP_WINDOW, RollupError, SkippedFile};
use crate::schema::{stats_from_batch, stats_schema, stats_to_batch};
use crate::state::{self, UnitState};
use crate::stats::{Aggregator, INPUT_COLUMNS, WindowStats};
use crate::units::{Unit, pass_bounds};

/// How a unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitOutcome {
    /// Its state already named every object of the hour: nothing to do.
    UpToDate,
    /// Aggregated; its stats file and state are written (the stats file only if a row
    /// changed).
    Done,
    /// Another worker holds its lease.
    Busy,
    /// An already aggregated object could not be re-read; retried by a later run.
    Deferred,
}

/// What one unit did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitReport {
    /// The unit.
    pub unit: Unit,
    /// How it ended.
    pub outcome: UnitOutcome,
    /// Objects of the hour listed.
    pub files_listed: usize,
    /// Listed objects not in the unit's state.
    pub new_files: usize,
    /// Rows of the unit's bucket decoded.
    pub rows_read: u64,
    /// Rows dropped as repeats of an earlier (`device_id`, `seq`, event time, `metric`).
    pub duplicates_dropped: u64,
    /// Rows left out because their event time is outside their folder's hour.
    pub rows_outside_partition: u64,
    /// Passes the unit took ([`RollupConfig::pass_readings`]): 1 unless its hour held more
    /// readings per bucket than one pass may hold; 0 when it was not aggregated.
    #[serde(default)]
    pub passes: u32,
    /// Windows of the unit computed.
    pub windows: usize,
    /// Windows whose stored row was added, changed or removed.
    pub windows_updated: usize,
    /// Whether the stats file was written (or removed, when the bucket has no reading).
    pub stats_written: bool,
    /// Whether the state object was written.
    pub state_written: bool,
    /// Objects whose readings are not in the unit's stats, with the reason.
    pub skipped_files: Vec<SkippedFile>,
}

impl UnitReport {
    fn new(unit: &Unit, outcome: UnitOutcome) -> Self {
        Self {
            unit: unit.clone(),
            outcome,
            files_listed: 0,
            new_files: 0,
            rows_read: 0,
            duplicates_dropped: 0,
            rows_outside_partition: 0,
            passes: 0,
            windows: 0,
            windows_updated: 0,
            stats_written: false,
            state_written: false,
            skipped_files: Vec::new(),
        }
    }
}

/// Passes a unit needs so that none aggregates more than `pass_readings` readings, with
/// `hour_rows` readings in its hour spread over `buckets` buckets (the device hash spreads
/// devices evenly; a bucket's share is the hour's divided by the bucket count).
pub fn passes_for(hour_rows: u64, buckets: u32, pass_readings: u64) -> u32 {
    let per_bucket = hour_rows.div_ceil(u64::from(buckets.max(1)));
    u32::try_from(per_bucket.div_ceil(pass_readings.max(1)))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Reports a new object that could not be read: left out of the state, so that every later
/// run tries it again.
fn skip_new(report: &mut UnitReport, file: &TelemetryFile, e: &ReadError) {
    let path = file.meta.location.as_ref();
    warn!(path, error = %e, "skipping unreadable telemetry file; retried next run");
    report.skipped_files.push(SkippedFile {
        path: path.to_string(),
        reason: e.to_string(),
    });
}

fn lease_error(e: LeaseError) -> RollupError {
    RollupError::Lease(e)
}

/// Aggregates `unit` if it needs it: see the [module documentation](self). `owner` names
/// this worker in its lease.
pub async fn run_unit(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    unit: &Unit,
    owner: &str,
) -> Result<UnitReport, RollupError> {
    let Some(lease) = lease::acquire(store, &unit.lease_prefix(cfg), owner, cfg.lease_ttl)
        .await
        .map_err(lease_error)?
    else {
        info!(%unit, "unit busy: another worker holds its lease");
        return Ok(UnitReport::new(unit, UnitOutcome::Busy));
    };
    let result = aggregate_unit(store, cfg, unit, &lease).await;
    // Released whatever happened: a failed unit is retried at once by the next run
    // instead of after the lease's time to live.
    let released = lease.release().await;
    let report = result?;
    released.map_err(lease_error)?;
    Ok(report)
}

async fn aggregate_unit(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    unit: &Unit,
    lease: &lease::Lease,
) -> Result<UnitReport, RollupError> {
    let prefix = cfg.telemetry_prefix.trim_matches('/');
    let mut files = io::list_partition(store, prefix, &unit.partition)
        .await
        .map_err(|source| RollupError::List {
            prefix: format!("{prefix}/{}", unit.partition.path()),
            source,
        })?;
    let state_path = unit.state_path(cfg);
    let previous =
        state::load(store, &state_path)
            .await
            .map_err(|source| RollupError::ReadState {
                path: state_path.clone(),
                source,
            })?;
    let mut report = UnitReport::new(unit, UnitOutcome::Done);
    report.files_listed = files.len();
    let listed: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let known: BTreeSet<&str> = previous.objects.iter().map(String::as_str).collect();
    if listed == known {
        report.outcome = UnitOutcome::UpToDate;
        return Ok(report);
    }
    report.new_files = listed.difference(&known).count();

    // Arrival order, so that de-duplication keeps the reading that arrived first.
    files.sort_by(|a, b| {
        (a.meta.last_modified, &a.meta.location).cmp(&(b.meta.last_modified, &b.meta.location))
    });
    // Listing only yields canonical partitions, which always have a start.
    let start = unit.partition.start_millis().unwrap_or_default();
    let mut next = UnitState::new();
    let mut blocked: Option<(String, ReadError)> = None;
    let concurrency = cfg.read_concurrency.max(1);

    // Every object's footer first: their row counts size the passes. Futures are built in
    // loops rather than by closures over `files`: a closure returning a borrowing future
    // is higher-ranked, and rustc then cannot prove the caller's future `Send` (needed to
    // run units on spawned tasks).
    let mut pending = Vec::with_capacity(files.len());
    for file in &files {
        pending.push(async move {
            (
                file,
                io::open_telemetry(store, &file.meta, &INPUT_COLUMNS).await,
            )
        });
    }
    let mut footers = futures::stream::iter(pending).buffered(concurrency);
    let mut opened = Vec::with_capacity(files.len());
    while let Some((file, footer)) = footers.next().await {
        let file: &TelemetryFile = file;
        match footer {
            Ok(footer) => opened.push((file, footer)),
            Err(e) if !previous.objects.contains(&file.name) => skip_new(&mut report, file, &e),
            Err(e) => {
                blocked = Some((file.meta.location.to_string(), e));
                break;
            }
        }
    }
    drop(footers);
    let hour_rows: u64 = opened
        .iter()
        .map(|(_, f)| u64::try_from(f.metadata().file_metadata().num_rows()).unwrap_or(0))
        .sum();
    let mut passes = if blocked.is_some() {
        0
    } else {
        passes_for(hour_rows, unit.buckets, cfg.pass_readings)
    };
    // Several passes take ranges of the bucket's device ids, drawn from every object's ids,
    // so that each pass's windows follow the previous pass's in the file's order.
    let mut bounds: Arc<[String]> = Arc::new([]);
    if passes > 1 {
        let mut pending = Vec::with_capacity(opened.len());
        for (file, footer) in &opened {
            let footer = footer.clone();
            pending.push(async move {
                io::bucket_devices(store, &file.meta, footer, unit.bucket, unit.buckets).await
            });
        }
        let mut lists = futures::stream::iter(pending).buffered(concurrency);
        let mut ids: HashSet<String> = HashSet::new();
        while let Some(list) = lists.next().await {
            // An object unreadable here is the first pass's to report or defer on; the
            // ranges are drawn from the others' ids.
            ids.extend(list.into_iter().flatten());
        }
        drop(lists);
        bounds = pass_bounds(ids.into_iter().collect(), passes).into();
        passes = u32::try_from(bounds.len() + 1).unwrap_or(u32::MAX);
    }
    report.passes = passes;

    // Each pass's windows are compared with the stored ones and encoded as they come, a
    // chunk at a time: the unit holds one pass's readings and a chunk of windows, never
    // every window of the unit.
    let stats_path = unit.stats_path(cfg);
    let mut existing = Existing::open(store, &stats_path).await;
    let encode_error = |source: ParquetError| RollupError::WriteStats {
        path: stats_path.clone(),
        source: source.into(),
    };
    let mut output = io::ParquetBuffer::new(stats_schema()).map_err(encode_error)?;
    let mut last_key: Option<(String, String, i64)> = None;
    for pass in 0..passes {
        let slice = Slice {
            bucket: unit.bucket,
            buckets: unit.buckets,
            pass,
            bounds: bounds.clone(),
        };
        let mut agg = Aggregator::new(ROLLUP_WINDOW).with_bounds(start, start + HOUR_MS);
        let mut pending = Vec::with_capacity(opened.len());
        for (file, footer) in &opened {
            // Later passes read what the first one could read.
            if pass > 0 && !next.objects.contains(&file.name) {
                continue;
            }
            let footer = footer.clone();
            let slice = slice.clone();
            pending.push(async move {
                let read = io::read_slice(store, &file.meta, footer, &INPUT_COLUMNS, slice).await;
                (*file, read)
            });
        }
        let mut reads = futures::stream::iter(pending).buffered(concurrency);
        while let Some((file, read)) = reads.next().await {
            let new = !previous.objects.contains(&file.name);
            match read.and_then(|batches| Ok(agg.add_file(&batches)?)) {
                Ok(()) if pass == 0 => {
                    next.objects.insert(file.name.clone());
                }
                Ok(()) => {}
                Err(e) if new && pass == 0 => skip_new(&mut report, file, &e),
                // An object read before (by an earlier run, or by this one's first pass):
                // recomputing without its readings would lose them.
                Err(e) => {
                    blocked = Some((file.meta.location.to_string(), e));
                    break;
                }
            }
        }
        drop(reads);
        report.rows_read += agg.rows;
        report.rows_outside_partition += agg.outside;
        if blocked.is_some() {
            break;
        }
        // A chunk of windows at a time: compared, encoded, dropped.
        loop {
            let windows = agg.next_windows(io::BATCH_ROWS);
            let Some(last) = windows.last() else {
                break;
            };
            // Sorted within the pass; the passes' id ranges ascend.
            debug_assert!(
                windows
                    .first()
                    .is_none_or(|w| last_key.as_ref().is_none_or(|k| (
                        k.0.as_str(),
                        k.1.as_str(),
                        k.2
                    ) < key_of(w))),
                "windows of pass {pass} of {unit} out of order"
            );
            last_key = Some(last.key());
            report.windows += windows.len();
            report.windows_updated += existing.changed(&windows).await;
            let batch = stats_to_batch(&windows).map_err(|source| RollupError::Encode {
                path: stats_path.clone(),
                source,
            })?;
            output.write(&batch).map_err(encode_error)?;
        }
        report.duplicates_dropped += agg.duplicates;
    }
    if report.rows_outside_partition > 0 {
        warn!(%unit, rows = report.rows_outside_partition, "rows whose event time is outside their hour folder were left out");
    }
    if blocked.is_some() || next == previous {
        // Computed but not stored: no window was written or changed.
        (report.windows, report.windows_updated) = (0, 0);
    }
    if let Some((path, error)) = blocked {
        warn!(%unit, %path, %error, "an aggregated file could not be re-read; unit deferred");
        report.skipped_files.push(SkippedFile {
            path: path.clone(),
            reason: format!(
                "already aggregated but could not be re-read ({error}); unit {unit} deferred"
            ),
        });
        report.outcome = UnitOutcome::Deferred;
        return Ok(report);
    }
    if next == previous {
        // Every new object failed to read: nothing to recompute.
        return Ok(report);
    }
    // The stored rows after the last window computed are gone.
    report.windows_updated += existing.rest().await;
    if report.windows_updated > 0 || (!existing.intact() && report.windows > 0) {
        let file = if report.windows == 0 {
            None
        } else {
            Some(output.finish().map_err(encode_error)?)
        };
        lease.check().map_err(lease_error)?;
        write_stats(store, &stats_path, file).await?;
        report.stats_written = true;
    }
    lease.check().map_err(lease_error)?;
    state::save(store, &state_path, &next)
        .await
        .map_err(|source| RollupError::WriteState {
            path: state_path.clone(),
            source,
        })?;
    report.state_written = true;
    info!(
        %unit,
        new_files = report.new_files,
        windows = report.windows,
        windows_updated = report.windows_updated,
        written = report.stats_written,
        "unit rolled up"
    );
    Ok(report)
}

/// A window's identity, borrowed: the stats files' order.
fn key_of(w: &WindowStats) -> (&str, &str, i64) {
    (&w.device_id, &w.metric, w.window_start)
}

/// Writes the unit's stats file, or removes it when the bucket holds no reading (`None`: no
/// stale stats left behind).
async fn write_stats(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    file: Option<Vec<u8>>,
) -> Result<(), RollupError> {
    let written = match file {
        Some(bytes) => store
            .put(&Path::from(path), PutPayload::from(bytes))
            .await
            .map(drop),
        None => match store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        },
    };
    written.map_err(|source| RollupError::WriteStats {
        path: path.to_string(),
        source: source.into(),
    })
}

/// The unit's existing stats file, read a batch at a time while the new windows are
/// compared with it in key order (it was written in that order): only one batch of it is
/// held. A missing file, or one that cannot be read (logged), is not
/// [`Existing::intact`]: the unit's file is then rewritten. (A file out of key order needs
/// no check: its rows do not line up with the new ones, so they count as changed.)
struct Existing {
    path: String,
    found: bool,
    failed: bool,
    stream: Option<BoxStream<'static, Result<RecordBatch, ReadError>>>,
    /// The rest of the current batch's rows.
    rows: std::vec::IntoIter<WindowStats>,
    /// The next row, read but not yet compared.
    head: Option<WindowStats>,
}

impl Existing {
    async fn open(store: &Arc<dyn ObjectStore>, path: &str) -> Self {
        let mut existing = Self {
            path: path.to_string(),
            found: false,
            failed: false,
            stream: None,
            rows: Vec::new().into_iter(),
            head: None,
        };
        let meta = match store.head(&Path::from(path)).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return existing,
            Err(error) => {
                existing.fail(&error);
                return existing;
            }
        };
        existing.found = true;
        match io::stream_parquet(store, &meta).await {
            Ok(stream) => existing.stream = Some(stream),
            Err(error) => existing.fail(&error),
        }
        existing
    }

    /// Whether the file was there and read whole, in order (so far).
    fn intact(&self) -> bool {
        self.found && !self.failed
    }

    fn fail(&mut self, error: &dyn std::fmt::Display) {
        warn!(path = %self.path, %error, "existing stats unreadable; rewriting them");
        self.failed = true;
        self.stream = None;
        self.rows = Vec::new().into_iter();
        self.head = None;
    }

    async fn peek(&mut self) -> Option<&WindowStats> {
        if self.head.is_none() {
            self.head = self.next_row().await;
        }
        self.head.as_ref()
    }

    /// Marks the peeked row compared.
    fn take(&mut self) {
        self.head = None;
    }

    async fn next_row(&mut self) -> Option<WindowStats> {
        loop {
            if let Some(row) = self.rows.next() {
                return Some(row);
            }
            let next = self.stream.as_mut()?.next().await;
            match next {
                None => {
                    self.stream = None;
                    return None;
                }
                Some(Ok(batch)) => match stats_from_batch(&batch) {
                    Ok(rows) => self.rows = rows.into_iter(),
                    Err(error) => {
                        self.fail(&error);
                        return None;
                    }
                },
                Some(Err(error)) => {
                    self.fail(&error);
                    return None;
                }
            }
        }
    }

    /// Rows of `new` (sorted by key, and after every window of earlier calls) added or
    /// changed, plus the stored rows before `new`'s last that it no longer holds.
    async fn changed(&mut self, new: &[WindowStats]) -> usize {
        let mut changed = 0;
        for b in new {
            loop {
                let Some(a) = self.peek().await else {
                    changed += 1;
                    break;
                };
                match key_of(a).cmp(&key_of(b)) {
                    Ordering::Less => {
                        changed += 1;
                        self.take();
                    }
                    Ordering::Equal => {
                        changed += usize::from(a != b);
                        self.take();
                        break;
                    }
                    Ordering::Greater => {
                        changed += 1;
                        break;
                    }
                }
            }
        }
        changed
    }

    /// Stored rows not compared yet: removed.
    async fn rest(&mut self) -> usize {
        let mut removed = 0;
        while self.peek().await.is_some() {
            removed += 1;
            self.take();
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::passes_for;

    #[test]
    fn a_unit_takes_as_many_passes_as_its_share_of_the_hour_needs() {
        assert_eq!(passes_for(0, 16, 200_000), 1);
        assert_eq!(passes_for(3_200_000, 16, 200_000), 1);
        assert_eq!(passes_for(3_200_001, 16, 200_000), 2);
        assert_eq!(passes_for(15_000_000, 16, 200_000), 5);
        assert_eq!(passes_for(10, 0, 0), 10);
        assert_eq!(passes_for(u64::MAX, 1, 1), u32::MAX);
    }
}

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
//!    passes, each reading every object for its share of the bucket's devices
//!    ([`crate::units::slice_of`]), so that memory stays bounded as the fleet grows.
//! 4. Compute every window of the unit and compare with the unit's stats file: write it
//!    with one put only if a row changed (a redelivered duplicate file costs no write).
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

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::RollupConfig;
use crate::io::{self, ReadError, Slice, TelemetryFile};
use crate::lease::{self, LeaseError};
use crate::rollup::{HOUR_MS, ROLLUP_WINDOW, RollupError, SkippedFile};
use crate::schema::{stats_from_batch, stats_to_batch};
use crate::state::{self, UnitState};
use crate::stats::{Aggregator, INPUT_COLUMNS, WindowStats};
use crate::units::Unit;

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
    let passes = if blocked.is_some() {
        0
    } else {
        passes_for(hour_rows, unit.buckets, cfg.pass_readings)
    };
    report.passes = passes;

    let mut rows: Vec<WindowStats> = Vec::new();
    for pass in 0..passes {
        let slice = Slice {
            bucket: unit.bucket,
            buckets: unit.buckets,
            pass,
            passes,
        };
        let mut agg = Aggregator::new(ROLLUP_WINDOW).with_bounds(start, start + HOUR_MS);
        let mut pending = Vec::with_capacity(opened.len());
        for (file, footer) in &opened {
            // Later passes read what the first one could read.
            if pass > 0 && !next.objects.contains(&file.name) {
                continue;
            }
            let footer = footer.clone();
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
        rows.extend(agg.finish());
        report.duplicates_dropped += agg.duplicates;
    }
    if report.rows_outside_partition > 0 {
        warn!(%unit, rows = report.rows_outside_partition, "rows whose event time is outside their hour folder were left out");
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
    if passes > 1 {
        // Each pass is sorted; together they are the unit's windows in file order.
        rows.sort_by(|a, b| {
            (&a.device_id, &a.metric, a.window_start).cmp(&(
                &b.device_id,
                &b.metric,
                b.window_start,
            ))
        });
    }
    report.windows = rows.len();
    let stats_path = unit.stats_path(cfg);
    let existing = read_existing(store, &stats_path).await;
    report.windows_updated = changed_rows(existing.as_deref(), &rows);
    if report.windows_updated > 0 || (existing.is_none() && !rows.is_empty()) {
        lease.check().map_err(lease_error)?;
        write_stats(store, &stats_path, &rows).await?;
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

/// Rows of `new` that differ from `old` (added, changed or removed), both sorted by key.
fn changed_rows(old: Option<&[WindowStats]>, new: &[WindowStats]) -> usize {
    let Some(old) = old else {
        return new.len();
    };
    let (mut i, mut j, mut changed) = (0, 0, 0);
    loop {
        match (old.get(i), new.get(j)) {
            (None, None) => return changed,
            (Some(_), None) => (i, changed) = (i + 1, changed + 1),
            (None, Some(_)) => (j, changed) = (j + 1, changed + 1),
            (Some(a), Some(b)) => match a.key().cmp(&b.key()) {
                std::cmp::Ordering::Less => (i, changed) = (i + 1, changed + 1),
                std::cmp::Ordering::Greater => (j, changed) = (j + 1, changed + 1),
                std::cmp::Ordering::Equal => {
                    changed += usize::from(a != b);
                    (i, j) = (i + 1, j + 1);
                }
            },
        }
    }
}

/// Writes the unit's rows, or removes its file when the bucket holds no reading (no
/// empty files for readers to open).
async fn write_stats(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    rows: &[WindowStats],
) -> Result<(), RollupError> {
    if rows.is_empty() {
        return match store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(RollupError::WriteStats {
                path: path.to_string(),
                source: source.into(),
            }),
        };
    }
    let batch = stats_to_batch(rows).map_err(|source| RollupError::Encode {
        path: path.to_string(),
        source,
    })?;
    io::write_parquet(store, path, &batch)
        .await
        .map_err(|source| RollupError::WriteStats {
            path: path.to_string(),
            source,
        })
}

/// The rows of the unit's existing stats file, sorted by key; `None` when it is missing
/// or unreadable (logged) — the file is then rewritten.
async fn read_existing(store: &Arc<dyn ObjectStore>, path: &str) -> Option<Vec<WindowStats>> {
    let meta = match store.head(&Path::from(path)).await {
        Ok(meta) => meta,
        Err(object_store::Error::NotFound { .. }) => return None,
        Err(error) => {
            warn!(path, %error, "existing stats unreadable; rewriting them");
            return None;
        }
    };
    let rows = match io::read_parquet(store, &meta, None).await {
        Ok(batches) => batches
            .iter()
            .map(stats_from_batch)
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| parts.concat())
            .map_err(ReadError::from),
        Err(e) => Err(e),
    };
    match rows {
        Ok(mut rows) => {
            rows.sort_by_key(WindowStats::key);
            Some(rows)
        }
        Err(error) => {
            warn!(path, %error, "existing stats unreadable; rewriting them");
            None
        }
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

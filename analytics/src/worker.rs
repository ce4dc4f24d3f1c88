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
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
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
    /// Units whose rows were read together with this one's, itself included: each object
    /// of the hour was decoded once for all of them. 1 when it was read alone; 0 when it
    /// was not aggregated.
    #[serde(default)]
    pub read_with: u32,
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
            read_with: 0,
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

/// Aggregates `units` — distinct units of one hour, such as a worker invocation's batch —
/// each under its lease (`owner` names this worker in it): see the [module documentation](self).
/// Units small enough to share a pass (their share of the hour's readings together within
/// [`RollupConfig::pass_readings`]) are read together: each object of the hour is decoded
/// once for all of them, and its rows are split by bucket, instead of once per unit.
/// Returns one result per unit, in order.
pub async fn run_hour(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    units: &[Unit],
    owner: &str,
) -> Vec<Result<UnitReport, RollupError>> {
    let mut results: Vec<Option<Result<UnitReport, RollupError>>> =
        units.iter().map(|_| None).collect();
    let mut held = Vec::with_capacity(units.len());
    for (i, unit) in units.iter().enumerate() {
        match lease::acquire(store, &unit.lease_prefix(cfg), owner, cfg.lease_ttl).await {
            Ok(Some(lease)) => held.push((i, lease)),
            Ok(None) => {
                info!(%unit, "unit busy: another worker holds its lease");
                results[i] = Some(Ok(UnitReport::new(unit, UnitOutcome::Busy)));
            }
            Err(e) => results[i] = Some(Err(lease_error(e))),
        }
    }
    let (index, jobs): (Vec<usize>, Vec<(&Unit, lease::Lease)>) =
        held.into_iter().map(|(i, l)| (i, (&units[i], l))).unzip();
    for (i, report) in index
        .into_iter()
        .zip(aggregate_units(store, cfg, jobs).await)
    {
        results[i] = Some(report);
    }
    // Every unit was answered above: busy, failed to lease, or aggregated.
    results.into_iter().flatten().collect()
}

/// Releases a unit's lease as soon as the unit is done, whatever happened (a failed unit is
/// then retried at once by the next run instead of after the lease's time to live, and a
/// unit done early in a batch is not kept busy while the rest of the batch runs).
async fn release(
    lease: lease::Lease,
    result: Result<UnitReport, RollupError>,
) -> Result<UnitReport, RollupError> {
    let released = lease.release().await;
    result.and_then(|r| released.map(|()| r).map_err(lease_error))
}

/// One unit being aggregated: what it had, what it reads, what it writes.
struct Job<'a> {
    unit: &'a Unit,
    lease: lease::Lease,
    previous: UnitState,
    next: UnitState,
    report: UnitReport,
    /// An already aggregated object that could not be re-read (its path, the error): the
    /// unit is deferred.
    blocked: Option<(String, String)>,
    /// A failure that is not the input's (encoding the stats file).
    error: Option<RollupError>,
    state_path: String,
    stats_path: String,
    /// The stored stats file and the new one, opened when the first windows are given.
    output: Option<Output>,
    last_key: Option<(String, String, i64)>,
}

fn encode_error(path: &str, source: ParquetError) -> RollupError {
    RollupError::WriteStats {
        path: path.to_string(),
        source: source.into(),
    }
}

impl<'a> Job<'a> {
    /// The unit's job, or (its lease released) its report when its state already names
    /// exactly `files`, or the failure to read its state.
    async fn start(
        store: &Arc<dyn ObjectStore>,
        cfg: &RollupConfig,
        (unit, lease): (&'a Unit, lease::Lease),
        files: &[TelemetryFile],
    ) -> Result<Self, Result<UnitReport, RollupError>> {
        let state_path = unit.state_path(cfg);
        let previous = match state::load(store, &state_path).await {
            Ok(previous) => previous,
            Err(source) => {
                let error = RollupError::ReadState {
                    path: state_path.clone(),
                    source,
                };
                return Err(release(lease, Err(error)).await);
            }
        };
        let mut report = UnitReport::new(unit, UnitOutcome::Done);
        report.files_listed = files.len();
        let listed: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
        let known: BTreeSet<&str> = previous.objects.iter().map(String::as_str).collect();
        if listed == known {
            report.outcome = UnitOutcome::UpToDate;
            return Err(release(lease, Ok(report)).await);
        }
        report.new_files = listed.difference(&known).count();
        Ok(Self {
            unit,
            lease,
            previous,
            next: UnitState::new(),
            report,
            blocked: None,
            error: None,
            state_path,
            stats_path: unit.stats_path(cfg),
            output: None,
            last_key: None,
        })
    }

    /// Whether the unit reads no more (deferred, or failed).
    fn stopped(&self) -> bool {
        self.blocked.is_some() || self.error.is_some()
    }

    /// `file` could not be read (in pass `pass`): a new object is skipped and retried by a
    /// later run; one read before (by an earlier run, or by this one's first pass) defers
    /// the unit, since recomputing without its readings would lose them.
    fn unreadable(&mut self, file: &TelemetryFile, e: &ReadError, pass: u32) {
        if pass == 0 && !self.previous.objects.contains(&file.name) {
            skip_new(&mut self.report, file, e);
        } else if self.blocked.is_none() {
            self.blocked = Some((file.meta.location.to_string(), e.to_string()));
        }
    }

    /// The windows of a pass, a chunk at a time: compared with the stored ones, encoded,
    /// dropped. The unit holds one pass's readings and a chunk of windows, never every
    /// window of the unit.
    async fn emit(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        mut agg: Aggregator,
        pass: u32,
    ) -> Result<(), RollupError> {
        let Output { existing, file } = match &mut self.output {
            Some(output) => output,
            slot @ None => slot.insert(Output::open(store, &self.stats_path).await?),
        };
        loop {
            let windows = agg.next_windows(io::BATCH_ROWS);
            let Some(last) = windows.last() else {
                break;
            };
            // Sorted within the pass; the passes' id ranges ascend.
            debug_assert!(
                windows
                    .first()
                    .is_none_or(|w| self.last_key.as_ref().is_none_or(|k| (
                        k.0.as_str(),
                        k.1.as_str(),
                        k.2
                    ) < key_of(w))),
                "windows of pass {pass} of {} out of order",
                self.unit
            );
            self.last_key = Some(last.key());
            self.report.windows += windows.len();
            self.report.windows_updated += existing.changed(&windows).await;
            let batch = stats_to_batch(&windows).map_err(|source| RollupError::Encode {
                path: self.stats_path.clone(),
                source,
            })?;
            file.write(&batch)
                .map_err(|e| encode_error(&self.stats_path, e))?;
        }
        self.report.duplicates_dropped += agg.duplicates;
        Ok(())
    }

    /// Stores what the unit computed: its stats file if a row changed, then its state;
    /// then releases its lease, whatever happened.
    async fn finish(self, store: &Arc<dyn ObjectStore>) -> Result<UnitReport, RollupError> {
        let Self {
            unit,
            lease,
            previous,
            next,
            mut report,
            blocked,
            error,
            state_path,
            stats_path,
            output,
            last_key: _,
        } = self;
        let result: Result<UnitReport, RollupError> = async {
            if let Some(e) = error {
                return Err(e);
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
            // No window given (the unit's readings are all gone): an empty new file.
            let Output {
                mut existing,
                file: output,
            } = match output {
                Some(output) => output,
                None => Output::open(store, &stats_path).await?,
            };
            // The stored rows after the last window computed are gone.
            report.windows_updated += existing.rest().await;
            if report.windows_updated > 0 || (!existing.intact() && report.windows > 0) {
                let file = if report.windows == 0 {
                    None
                } else {
                    Some(output.finish().map_err(|e| encode_error(&stats_path, e))?)
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
                read_with = report.read_with,
                written = report.stats_written,
                "unit rolled up"
            );
            Ok(report)
        }
        .await;
        release(lease, result).await
    }
}

/// Aggregates the leased units `held` (of one hour), releasing each lease when its unit is
/// done: one result per unit, in order.
async fn aggregate_units(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    held: Vec<(&Unit, lease::Lease)>,
) -> Vec<Result<UnitReport, RollupError>> {
    let Some(&(first, _)) = held.first() else {
        return Vec::new();
    };
    let partition = &first.partition;
    let prefix = cfg.telemetry_prefix.trim_matches('/');
    let mut files = match io::list_partition(store, prefix, partition).await {
        Ok(files) => files,
        Err(source) => {
            let prefix = format!("{prefix}/{}", partition.path());
            let message = source.to_string();
            let mut source = Some(source);
            let mut results = Vec::with_capacity(held.len());
            for (_, lease) in held {
                let error = RollupError::List {
                    prefix: prefix.clone(),
                    source: source
                        .take()
                        .unwrap_or_else(|| object_store::Error::Generic {
                            store: "telemetry listing",
                            source: message.clone().into(),
                        }),
                };
                results.push(release(lease, Err(error)).await);
            }
            return results;
        }
    };
    // Arrival order, so that de-duplication keeps the reading that arrived first.
    files.sort_by(|a, b| {
        (a.meta.last_modified, &a.meta.location).cmp(&(b.meta.last_modified, &b.meta.location))
    });

    let mut results: Vec<Option<Result<UnitReport, RollupError>>> =
        held.iter().map(|_| None).collect();
    let mut jobs: Vec<(usize, Job<'_>)> = Vec::with_capacity(held.len());
    for (i, unit) in held.into_iter().enumerate() {
        match Job::start(store, cfg, unit, &files).await {
            Ok(job) => jobs.push((i, job)),
            Err(up_to_date_or_failed) => results[i] = Some(up_to_date_or_failed),
        }
    }
    for (i, report) in read_units(store, cfg, &files, jobs).await {
        results[i] = Some(report);
    }
    results.into_iter().flatten().collect()
}

/// Reads the hour's `files` for `jobs` and finishes each: every object's footer once, then
/// each group of units that fits one pass together in one read of each object (a unit too
/// large for one pass alone, in its passes). A group is stored before the next is read, so
/// memory holds one group's pass and stats files.
async fn read_units(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    files: &[TelemetryFile],
    mut jobs: Vec<(usize, Job<'_>)>,
) -> Vec<(usize, Result<UnitReport, RollupError>)> {
    let mut results = Vec::with_capacity(jobs.len());
    let Some((_, first)) = jobs.first() else {
        return results;
    };
    let buckets = first.unit.buckets;
    let concurrency = cfg.read_concurrency.max(1);
    // Every object's footer first: their row counts size the passes. Futures are built in
    // loops rather than by closures over `files`: a closure returning a borrowing future
    // is higher-ranked, and rustc then cannot prove the caller's future `Send` (needed to
    // run units on spawned tasks).
    let mut pending = Vec::with_capacity(files.len());
    for file in files {
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
            Err(e) => jobs.iter_mut().for_each(|(_, j)| j.unreadable(file, &e, 0)),
        }
    }
    drop(footers);
    let hour_rows: u64 = opened
        .iter()
        .map(|(_, f)| u64::try_from(f.metadata().file_metadata().num_rows()).unwrap_or(0))
        .sum();
    let passes = passes_for(hour_rows, buckets, cfg.pass_readings);
    // Units that fit one pass together share it: the device hash spreads the hour's
    // readings evenly over the buckets.
    let per_unit = hour_rows.div_ceil(u64::from(buckets.max(1))).max(1);
    let together = if passes > 1 {
        1
    } else {
        usize::try_from(cfg.pass_readings / per_unit)
            .unwrap_or(usize::MAX)
            .max(1)
    };
    // Deferred already (an aggregated object's footer is unreadable): nothing to read.
    let (stopped, mut live): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|(_, j)| j.stopped());
    for (i, job) in stopped {
        results.push((i, job.finish(store).await));
    }
    live.sort_by_key(|(_, j)| j.unit.bucket);
    while !live.is_empty() {
        let rest = live.split_off(together.min(live.len()));
        let mut group: Vec<&mut Job<'_>> = live.iter_mut().map(|(_, j)| j).collect();
        read_group(store, concurrency, &opened, &mut group, passes).await;
        drop(group);
        for (i, job) in live {
            results.push((i, job.finish(store).await));
        }
        live = rest;
    }
    results
}

/// Aggregates `group` (units of distinct buckets of one hour; a single unit when
/// `passes` > 1) from the `opened` objects: one read of each object per pass for the
/// whole group, its rows split by bucket.
async fn read_group(
    store: &Arc<dyn ObjectStore>,
    concurrency: usize,
    opened: &[(&TelemetryFile, ArrowReaderMetadata)],
    group: &mut [&mut Job<'_>],
    mut passes: u32,
) {
    let Some(first) = group.first() else {
        return;
    };
    let (partition, buckets, bucket) =
        (&first.unit.partition, first.unit.buckets, first.unit.bucket);
    // Listing only yields canonical partitions, which always have a start.
    let start = partition.start_millis().unwrap_or_default();
    let members: Arc<[u32]> = group.iter().map(|j| j.unit.bucket).collect();
    // Several passes take ranges of the bucket's device ids, drawn from every object's ids,
    // so that each pass's windows follow the previous pass's in the file's order.
    let mut bounds: Arc<[String]> = Arc::new([]);
    if passes > 1 {
        let mut pending = Vec::with_capacity(opened.len());
        for (file, footer) in opened {
            let footer = footer.clone();
            pending.push(async move {
                io::bucket_devices(store, &file.meta, footer, bucket, buckets).await
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
    let read_with = u32::try_from(group.len()).unwrap_or(u32::MAX);
    for job in group.iter_mut() {
        job.report.passes = passes;
        job.report.read_with = read_with;
    }
    for pass in 0..passes {
        if group.iter().all(|j| j.stopped()) {
            break;
        }
        let slice = Slice {
            members: members.clone(),
            buckets,
            pass,
            bounds: bounds.clone(),
        };
        let mut aggs: Vec<Aggregator> = group
            .iter()
            .map(|_| Aggregator::new(ROLLUP_WINDOW).with_bounds(start, start + HOUR_MS))
            .collect();
        let mut pending = Vec::with_capacity(opened.len());
        for (file, footer) in opened {
            // Later passes read what the first one could read.
            if pass > 0 && !group.iter().any(|j| j.next.objects.contains(&file.name)) {
                continue;
            }
            let footer = footer.clone();
            let slice = slice.clone();
            pending.push(async move {
                let read = io::read_slice(store, &file.meta, footer, &INPUT_COLUMNS, slice.clone())
                    .await
                    .and_then(|batches| io::split_by_member(batches, &slice));
                (*file, read)
            });
        }
        let mut reads = futures::stream::iter(pending).buffered(concurrency);
        while let Some((file, read)) = reads.next().await {
            match read {
                Ok(parts) => {
                    for ((job, agg), rows) in group.iter_mut().zip(&mut aggs).zip(parts) {
                        if job.stopped() {
                            continue;
                        }
                        match agg.add_file(&rows) {
                            Ok(()) if pass == 0 => {
                                job.next.objects.insert(file.name.clone());
                            }
                            Ok(()) => {}
                            Err(e) => job.unreadable(file, &e.into(), pass),
                        }
                    }
                }
                Err(e) => group
                    .iter_mut()
                    .filter(|j| !j.stopped())
                    .for_each(|j| j.unreadable(file, &e, pass)),
            }
            if group.iter().all(|j| j.stopped()) {
                break;
            }
        }
        drop(reads);
        for (job, agg) in group.iter_mut().zip(aggs) {
            job.report.rows_read += agg.rows;
            job.report.rows_outside_partition += agg.outside;
            if job.stopped() {
                continue;
            }
            if let Err(e) = job.emit(store, agg, pass).await {
                job.error = Some(e);
            }
        }
    }
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

/// A unit's stored stats file, compared with the windows as they are given, and its new
/// one.
struct Output {
    existing: Existing,
    file: io::ParquetBuffer,
}

impl Output {
    async fn open(store: &Arc<dyn ObjectStore>, stats_path: &str) -> Result<Self, RollupError> {
        Ok(Self {
            existing: Existing::open(store, stats_path).await,
            file: io::ParquetBuffer::new(stats_schema())
                .map_err(|e| encode_error(stats_path, e))?,
        })
    }
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

//! The rollup run: telemetry Parquet → per-minute statistics, one stats file per unit
//! (an hour partition's device-hash bucket, see [`crate::units`]).
//!
//! # Algorithm
//! 1. The planner ([`crate::planner`]) finds the units whose state is behind their hour's
//!    objects — from the new-object markers, not by listing history.
//! 2. Up to [`RollupConfig::workers`] units are aggregated at once by the
//!    worker ([`crate::worker`]), each under its lease: one writer per unit, whatever else
//!    runs (another `iotpipe rollup`, a scheduled Lambda, queue-driven worker functions).
//! 3. A partition whose units are all done has its 1h/1d and fleet windows derived from
//!    its units' 1m files ([`crate::coarse`]), then its markers deleted (and the single
//!    stats file of the layout before units, if any, removed first); an object that could
//!    not be read keeps a marker, so later runs retry it. After a full scan that reached every
//!    unit, the `_initialized` object is written, so later runs trust the markers.
//!
//! Memory is bounded by configuration, not by the fleet: about `workers` × (readings of one
//! pass, at most [`RollupConfig::pass_readings`]) × ~300 bytes at the peak, plus each
//! unit's compressed stats file (see [`crate::worker`] and BENCHMARKS.md).
//!
//! # Time limit
//! A Lambda invocation has a deadline, and a backlog may not fit in one.
//! [`run_rollup_until`] starts no new unit when the time left is less than twice the
//! slowest unit so far plus a reserve, and reports the rest in
//! [`RollupReport::units_remaining`]; the next run continues, oldest partitions first. At
//! least one unit is always attempted, so every run makes progress.
//!
//! # Concurrency and crashes
//! Overlapping runs are safe: a unit held by another worker is reported busy
//! ([`RollupReport::units_busy`]). After its own units, the run re-reads the states of
//! that partition's units: if all are up to date (the other worker finished), it completes
//! the partition (derives its coarser windows, deletes its markers); otherwise the markers
//! are kept, and the other run, checking after its own writes, sees this run's states. A run killed at any point leaves every unit either at its old state
//! (recomputed by the next run, with the same result) or done; a killed worker's lease
//! expires after [`RollupConfig::lease_ttl`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::coarse::{CoarseError, CoarseReport, derive_coarse};
use crate::config::RollupConfig;
use crate::io;
use crate::lease::LeaseError;
use crate::pending;
use crate::planner::{self, INITIALIZED, PartitionPlan, Plan};
use crate::spread::spread;
use crate::units::Unit;
use crate::window::Window;
use crate::worker::{self, UnitOutcome, UnitReport};

/// The window the rollup produces (`1m`). Longer windows are derived from it.
pub const ROLLUP_WINDOW: Window = Window::M1;

/// Length of an hour partition in milliseconds.
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// Time kept before the deadline for finishing the run and returning.
const DEADLINE_RESERVE: Duration = Duration::from_secs(5);

/// What one rollup run did. Serialised as the Lambda's response and logged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollupReport {
    /// Whether every telemetry object was listed (the first run of a store, or
    /// `--full-scan`) rather than only the new-object markers.
    pub full_scan: bool,
    /// Telemetry objects listed in the partitions looked at.
    pub files_scanned: usize,
    /// Objects new to some unit (the largest count over a partition's units, summed over
    /// partitions).
    pub new_files: usize,
    /// Telemetry rows decoded, over every unit (each unit reads its bucket of every object
    /// of its hour).
    pub rows_read: u64,
    /// Rows dropped as repeats of an earlier (`device_id`, `seq`, event time, `metric`).
    pub duplicates_dropped: u64,
    /// Rows left out because their event time is outside their folder's hour.
    pub rows_outside_partition: u64,
    /// Passes over their hour the units took: one per unit aggregated, more when a unit's
    /// bucket held more readings than one pass may ([`RollupConfig::pass_readings`]).
    #[serde(default)]
    pub unit_passes: u64,
    /// Units whose rows were read together with other units' of their hour: each object
    /// decoded once for several units ([`crate::worker::run_hour`]).
    #[serde(default)]
    pub units_read_together: u64,
    /// Hour partitions with at least one unit that needed work.
    pub partitions_touched: usize,
    /// Units that needed work.
    pub units_planned: usize,
    /// Units aggregated (or found up to date) by this run.
    pub units_done: usize,
    /// Units left because another worker held their lease.
    pub units_busy: usize,
    /// Units deferred because an aggregated object could not be re-read.
    pub units_deferred: usize,
    /// Units left for the next run because the deadline was near.
    pub units_remaining: usize,
    /// Windows whose stored row was added, changed or removed. 0 when the new objects only
    /// repeated known readings.
    pub windows_updated: usize,
    /// Stats files written (or removed when their bucket became empty).
    pub stats_files_written: usize,
    /// Unit state objects written.
    pub state_objects_written: usize,
    /// Objects whose readings did not make it into the stats in this run, with the reason;
    /// they stay out of the units' state and are retried by the next run.
    pub skipped_files: Vec<SkippedFile>,
    /// The 1h/1d and fleet windows derived from the hours this run recomputed
    /// ([`crate::coarse::derive_coarse`]).
    pub coarse: CoarseReport,
}

/// A telemetry object the run could not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// Object key.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// A rollup run that could not complete. Units already done are correct; the others are
/// recomputed by the next run.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    /// Listing telemetry objects or markers failed.
    #[error("listing {prefix}/: {source}")]
    List {
        /// The listed prefix.
        prefix: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Reading a unit's state failed (other than it being absent or unparseable).
    #[error("reading state {path}: {source}")]
    ReadState {
        /// State key.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Building the stats batch failed.
    #[error("building stats for {path}: {source}")]
    Encode {
        /// Stats file key.
        path: String,
        /// Arrow's error.
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// Writing a stats file failed.
    #[error("writing {path}: {source}")]
    WriteStats {
        /// Stats file key.
        path: String,
        /// The cause.
        #[source]
        source: io::WriteError,
    },
    /// Deriving the 1h/1d or fleet windows failed (before the partition's markers are
    /// deleted, so the next run derives them again).
    #[error("deriving 1h/1d windows: {0}")]
    Coarse(#[from] CoarseError),
    /// Writing a unit's state, a marker or the `_initialized` object failed.
    #[error("writing {path}: {source}")]
    WriteState {
        /// The key.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Taking, keeping or releasing a unit's lease failed.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A unit's task was cancelled (the runtime is shutting down); the unit keeps its old
    /// state and the next run aggregates it.
    #[error("unit task cancelled: the runtime is shutting down; the next run aggregates it")]
    Aborted,
}

impl RollupReport {
    /// Adds one unit's report.
    pub fn add_unit(&mut self, u: UnitReport) {
        match u.outcome {
            UnitOutcome::Done | UnitOutcome::UpToDate => self.units_done += 1,
            UnitOutcome::Busy => self.units_busy += 1,
            UnitOutcome::Deferred => self.units_deferred += 1,
        }
        self.rows_read += u.rows_read;
        self.duplicates_dropped += u.duplicates_dropped;
        self.rows_outside_partition += u.rows_outside_partition;
        self.unit_passes += u64::from(u.passes);
        self.units_read_together += u64::from(u.read_with > 1);
        self.windows_updated += u.windows_updated;
        self.stats_files_written += usize::from(u.stats_written);
        self.state_objects_written += usize::from(u.state_written);
        self.skipped_files.extend(u.skipped_files);
    }

    /// The report of a fanned-out plan ([`crate::fanout::FanoutReport`]) whose units the
    /// workers ran and reported (`units`): the plan's figures, every unit added up, and
    /// the partitions' figures taken from the units, as [`run_plan`] takes them.
    pub fn of_fanned_out(plan: &crate::fanout::FanoutReport, units: Vec<UnitReport>) -> Self {
        let mut report = RollupReport {
            full_scan: plan.full_scan,
            files_scanned: plan.files_scanned,
            units_planned: plan.units_planned,
            ..RollupReport::default()
        };
        let mut new_per_partition: std::collections::BTreeMap<telemetry::Partition, usize> =
            Default::default();
        for u in units {
            let n = new_per_partition
                .entry(u.unit.partition.clone())
                .or_default();
            *n = (*n).max(u.new_files);
            report.add_unit(u);
        }
        report.partitions_touched = new_per_partition.len();
        report.new_files = new_per_partition.values().sum();
        report
    }

    /// Adds what a later run of the same rollup did (the local fan-out's finishing planner
    /// run): its units, windows and files are added; the objects listed are the larger
    /// listing's.
    pub fn absorb(&mut self, later: RollupReport) {
        self.full_scan |= later.full_scan;
        self.files_scanned = self.files_scanned.max(later.files_scanned);
        self.new_files += later.new_files;
        self.rows_read += later.rows_read;
        self.duplicates_dropped += later.duplicates_dropped;
        self.rows_outside_partition += later.rows_outside_partition;
        self.unit_passes += later.unit_passes;
        self.units_read_together += later.units_read_together;
        self.partitions_touched = self.partitions_touched.max(later.partitions_touched);
        self.units_planned += later.units_planned;
        self.units_done += later.units_done;
        self.units_busy += later.units_busy;
        self.units_deferred += later.units_deferred;
        self.units_remaining += later.units_remaining;
        self.windows_updated += later.windows_updated;
        self.stats_files_written += later.stats_files_written;
        self.state_objects_written += later.state_objects_written;
        self.skipped_files.extend(later.skipped_files);
        let (c, l) = (&mut self.coarse, later.coarse);
        c.hours += l.hours;
        c.days += l.days;
        c.files_read += l.files_read;
        c.rows_read += l.rows_read;
        c.files_written += l.files_written;
    }
}

/// Runs one incremental rollup over the telemetry in `store`, however long it takes: see
/// the [module documentation](self).
pub async fn run_rollup(
    store: Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
) -> Result<RollupReport, RollupError> {
    run_rollup_until(store, cfg, None).await
}

/// [`run_rollup`] that starts no new unit as `deadline` (wall-clock time, like a Lambda
/// invocation's) approaches, leaving the rest to the next run. `None` means no limit.
pub async fn run_rollup_until(
    store: Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    deadline: Option<SystemTime>,
) -> Result<RollupReport, RollupError> {
    let plan = planner::plan(&store, cfg).await?;
    run_plan(store, cfg, plan, deadline).await
}

/// Runs the units of `plan` in this process (the second half of [`run_rollup_until`]):
/// the planner Lambda calls it for a plan too small to fan out ([`crate::fanout`]).
pub async fn run_plan(
    store: Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    plan: Plan,
    deadline: Option<SystemTime>,
) -> Result<RollupReport, RollupError> {
    let mut report = RollupReport {
        full_scan: plan.full_scan,
        files_scanned: plan.files_scanned,
        units_planned: plan.units().count(),
        partitions_touched: plan
            .partitions
            .iter()
            .filter(|p| !p.units.is_empty())
            .count(),
        ..RollupReport::default()
    };
    let owner = format!("rollup-{}-{}", std::process::id(), now_nanos());
    let units: Vec<Unit> = plan.units().cloned().collect();
    let results = run_units(&store, cfg, &units, &owner, deadline).await;

    let mut incomplete: std::collections::BTreeSet<telemetry::Partition> = Default::default();
    // Partitions whose only unfinished units were held by another worker.
    let mut busy: std::collections::BTreeSet<telemetry::Partition> = Default::default();
    let mut new_per_partition: std::collections::BTreeMap<telemetry::Partition, usize> =
        Default::default();
    let mut first_error = None;
    for (unit, result) in units.iter().zip(results) {
        match result {
            Some(Ok(u)) => {
                if u.outcome == UnitOutcome::Busy && u.skipped_files.is_empty() {
                    busy.insert(unit.partition.clone());
                } else if !matches!(u.outcome, UnitOutcome::Done | UnitOutcome::UpToDate)
                    || !u.skipped_files.is_empty()
                {
                    incomplete.insert(unit.partition.clone());
                }
                let n = new_per_partition.entry(unit.partition.clone()).or_default();
                *n = (*n).max(u.new_files);
                report.add_unit(u);
            }
            Some(Err(e)) => {
                incomplete.insert(unit.partition.clone());
                warn!(%unit, error = %e, "unit failed; retried by the next run");
                first_error.get_or_insert(e);
            }
            None => {
                incomplete.insert(unit.partition.clone());
                report.units_remaining += 1;
            }
        }
    }
    report.new_files = new_per_partition.values().sum();
    if let Some(e) = first_error {
        return Err(e);
    }
    // Another worker held some unit: if every unit of the hour is up to date now (that
    // worker finished), this run completes the hour. Of two runs sharing an hour, the one
    // that checks last sees the other's states (each checks after writing its own), so
    // the hour is never left underived.
    for partition in busy {
        if incomplete.contains(&partition)
            || !planner::hour_up_to_date(&store, cfg, &partition).await?
        {
            incomplete.insert(partition);
        }
    }
    report.coarse = finish_partitions(&store, cfg, &plan, &incomplete).await?;
    // A skipped object keeps (or, found by a full scan, gets) its marker, so that later
    // runs retry it without scanning everything again.
    let skipped: std::collections::BTreeSet<&str> = report
        .skipped_files
        .iter()
        .map(|s| s.path.as_str())
        .collect();
    for path in skipped {
        pending::ensure(&store, &cfg.pending_prefix, path)
            .await
            .map_err(|source| RollupError::WriteState {
                path: path.to_string(),
                source,
            })?;
    }
    // Only a full scan that completed every hour ends the first runs: a unit left busy
    // (held by a killed run's lease), deferred or remaining has no marker, so only another
    // full scan would find it again.
    if plan.full_scan && report.units_remaining == 0 && incomplete.is_empty() {
        let path = format!("{}/{INITIALIZED}", cfg.state_prefix);
        store
            .put(&Path::from(path.as_str()), PutPayload::from_static(b""))
            .await
            .map_err(|source| RollupError::WriteState { path, source })?;
    }
    if report.units_remaining > 0 {
        warn!(
            units_remaining = report.units_remaining,
            "deadline near: remaining units are left for the next run"
        );
    }
    info!(
        units = report.units_planned,
        done = report.units_done,
        busy = report.units_busy,
        "rollup finished"
    );
    Ok(report)
}

/// Units of one hour an in-process task takes at most: as many as a worker invocation's
/// batch (the template's `BatchSize`), so that the deadline is checked as often and the
/// hour's units still spread over the workers.
const UNITS_PER_TASK: usize = 4;

/// Runs `units` with up to `cfg.workers` tasks at once ([`spread`]: on the runtime's
/// threads when there are several), each on up to [`UNITS_PER_TASK`] units of one hour,
/// which it reads together when they fit one pass ([`worker::run_hour`]); `None` for a
/// unit not started because of the deadline.
async fn run_units(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    units: &[Unit],
    owner: &str,
    deadline: Option<SystemTime>,
) -> Vec<Option<Result<UnitReport, RollupError>>> {
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let started_any = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cfg = Arc::new(cfg.clone());
    let owner: Arc<str> = Arc::from(owner);
    // The units of each hour, in runs of at most UNITS_PER_TASK.
    let refs: Vec<&Unit> = units.iter().collect();
    let chunks = crate::units::hour_groups(&refs, UNITS_PER_TASK);
    let mut tasks = Vec::with_capacity(chunks.len());
    for chunk in &chunks {
        let (slowest, started_any) = (slowest.clone(), started_any.clone());
        let (store, cfg, owner) = (store.clone(), cfg.clone(), owner.clone());
        let hour: Vec<Unit> = chunk.iter().map(|&i| units[i].clone()).collect();
        tasks.push(
            async move {
                let so_far = slowest.lock().map(|s| *s).unwrap_or_default();
                if started_any.swap(true, std::sync::atomic::Ordering::SeqCst)
                    && !time_for_another(deadline, so_far)
                {
                    return None;
                }
                let started = Instant::now();
                let results = worker::run_hour(&store, &cfg, &hour, &owner).await;
                if let Ok(mut s) = slowest.lock() {
                    *s = (*s).max(started.elapsed());
                }
                Some(results)
            }
            .boxed(),
        );
    }
    let mut results: Vec<Option<Result<UnitReport, RollupError>>> =
        units.iter().map(|_| None).collect();
    for (chunk, done) in chunks.iter().zip(spread(tasks, cfg.workers).await) {
        match done {
            Some(Some(reports)) => {
                for (&i, report) in chunk.iter().zip(reports) {
                    results[i] = Some(report);
                }
            }
            // Not started: the deadline was near.
            Some(None) => {}
            None => chunk
                .iter()
                .for_each(|&i| results[i] = Some(Err(RollupError::Aborted))),
        }
    }
    results
}

/// For every partition whose units are all done: removes the stats files of its hour that
/// no unit of the current layout wrote (the single `stats.parquet` of the layout before
/// units, or parts of another bucket count), which would otherwise be counted twice;
/// derives its 1h/1d and fleet windows from its units' 1m files ([`derive_coarse`]); then
/// deletes its markers.
///
/// The derivation runs once per run for each hour whose units are *all* done, after the
/// last of them (not after each unit): an hour with a busy or failed unit keeps its
/// markers, so the run that completes it (or the next one) derives it. It is idempotent
/// — an unchanged hour rewrites no file — and comes before the markers' deletion, so a
/// crash in between is repaired by the next run.
pub(crate) async fn finish_partitions(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    plan: &Plan,
    incomplete: &std::collections::BTreeSet<telemetry::Partition>,
) -> Result<CoarseReport, RollupError> {
    let delete = |path: Path| async move {
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(RollupError::WriteState {
                path: path.to_string(),
                source,
            }),
        }
    };
    let current = format!("-of-{:04}.parquet", cfg.buckets.max(1));
    let complete: Vec<&PartitionPlan> = plan
        .partitions
        .iter()
        .filter(|p| !incomplete.contains(&p.partition))
        .collect();
    let mut hours = Vec::new();
    for p in &complete {
        if p.units.is_empty() && p.markers.is_empty() && !plan.full_scan {
            // Unreachable without a full scan (a partition is planned for its markers).
            continue;
        }
        // A full scan derives every complete hour again, even one whose units were all up
        // to date: a first run killed after its last unit state but before the derivation
        // left no markers behind, so nothing else would ever derive that hour. Deriving is
        // idempotent (unchanged files are not rewritten) and full scans are rare (a
        // store's first runs, `--full-scan`).
        hours.push(p.partition.clone());
        if p.units.is_empty() {
            continue;
        }
        let folder = format!(
            "{}/{}",
            cfg.window_prefix(ROLLUP_WINDOW),
            p.partition.path()
        );
        let listed =
            io::list_objects(store, &folder)
                .await
                .map_err(|source| RollupError::List {
                    prefix: folder.clone(),
                    source,
                })?;
        for meta in listed {
            let name = meta.location.filename().unwrap_or_default();
            let ours = name.starts_with("part-") && name.ends_with(&current);
            if !ours && !name.starts_with(['_', '.']) {
                warn!(path = %meta.location, "removing a stats file of another layout");
                delete(meta.location).await?;
            }
        }
    }
    let coarse = if cfg.derive_coarse {
        derive_coarse(store, &hours, cfg).await?
    } else {
        CoarseReport::default()
    };
    for p in &complete {
        for marker in &p.markers {
            delete(marker.clone()).await?;
        }
    }
    Ok(coarse)
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Whether another unit fits before `deadline`: twice the slowest so far, plus the
/// reserve.
pub(crate) fn time_for_another(deadline: Option<SystemTime>, slowest: Duration) -> bool {
    let Some(deadline) = deadline else {
        return true;
    };
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    left > slowest * 2 + DEADLINE_RESERVE
}

//! The incremental rollup: telemetry Parquet → per-minute statistics, one stats file per
//! hour partition.
//!
//! # Algorithm
//! 1. Load the [`checkpoint`](mod@crate::checkpoint) (the telemetry objects already
//!    aggregated) and list `telemetry/dt=…/hour=…/`. Objects not in the checkpoint are
//!    *new*. No new object: nothing is written at all.
//! 2. For each hour partition with a new object, read **every** object of the partition
//!    (de-duplication needs all of them), in arrival order (last-modified time, then key),
//!    so that "the first reading seen" is the one that arrived first, and stays so in
//!    later runs.
//! 3. Recompute only the windows the new objects touch, replace those rows of the hour's
//!    existing stats file (the others are kept as they are), and write the file with one
//!    put — only if some row actually changed, so a redelivered duplicate file costs no
//!    write. If the existing stats file is missing or unreadable, every window of the hour
//!    is recomputed instead, which heals it.
//! 4. Write the checkpoint, once every stats file is written.
//!
//! # Failures
//! - A *new* object that cannot be read (corrupt, not Parquet, wrong columns, or a store
//!   error) is listed in [`RollupReport::skipped_files`] with the reason and left out of
//!   the checkpoint, so every later run tries it again; the rest of its partition is
//!   aggregated without it. If it is readable later (a transient error), its windows are
//!   updated then.
//! - An *already aggregated* object that cannot be re-read defers its whole partition:
//!   recomputing windows without its readings would lose them. Objects are immutable, so
//!   such a failure is transient; the partition's new objects are reported as deferred and
//!   stay out of the checkpoint until a run succeeds.
//! - A failure to list, to read the checkpoint, or to write a stats file or the checkpoint
//!   aborts the run with an error. Stats files already written are correct, and the
//!   unchanged checkpoint makes the next run recompute them: repeated work, no loss.
//!
//! # Scope of de-duplication
//! Duplicates come from at-least-once delivery and carry the same event time, so they
//! always land in the same hour partition; de-duplication is therefore done per hour
//! partition, which bounds memory by the busiest hour touched rather than by the whole
//! history. Readings whose event time lies outside the hour of their folder (a writer
//! bug) cannot be attributed to the right stats file; they are counted in
//! [`RollupReport::rows_outside_partition`], logged and left out.
//!
//! # Time limit
//! A Lambda invocation has a deadline, and a backlog (the first run over months of data,
//! or after an outage) may not fit in one. [`run_rollup_until`] stops *between* hour
//! partitions when the time left is less than twice the slowest partition so far plus a
//! reserve for the checkpoint, writes the checkpoint for what it finished, and reports the
//! rest in [`RollupReport::partitions_remaining`]; the next run continues, oldest
//! partitions first. At least one partition is always completed, so every run makes
//! progress. Without this, a run that never finishes would never write its checkpoint and
//! would redo the same work forever.
//!
//! # Concurrency
//! Two overlapping runs can interleave their writes so that one's stats file overwrites
//! the other's newer one while the newer checkpoint survives. Run the rollup with a
//! concurrency of one (Lambda reserved concurrency 1, a flexible time window of zero on
//! the schedule).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use telemetry::Partition;
use tracing::{info, warn};

use crate::checkpoint::{self, Checkpoint, Loaded};
use crate::config::RollupConfig;
use crate::io::{self, ReadError, TelemetryFile};
use crate::schema::{stats_from_batch, stats_to_batch};
use crate::stats::{Aggregator, INPUT_COLUMNS, WindowKey, WindowStats};
use crate::window::Window;

/// The window the rollup produces. The computation takes the window as a parameter; only
/// one minute is produced today (hours and days will be derived by the compact function).
pub const ROLLUP_WINDOW: Window = Window::M1;

/// Length of an hour partition in milliseconds.
const HOUR_MS: i64 = 3_600_000;

/// Time kept before the deadline for writing the checkpoint (one small put) and
/// returning.
const CHECKPOINT_RESERVE: Duration = Duration::from_secs(5);

/// What one rollup run did. Serialised as the Lambda's response and logged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollupReport {
    /// Telemetry objects listed (all of them, processed before or not).
    pub files_scanned: usize,
    /// Listed objects not in the checkpoint, including those that then failed to read or
    /// were left for the next run.
    pub new_files: usize,
    /// Telemetry rows decoded, over every object read (old objects of touched partitions
    /// are re-read, so this exceeds the rows of the new objects).
    pub rows_read: u64,
    /// Rows dropped as repeats of an earlier (`device_id`, `seq`, `metric`).
    pub duplicates_dropped: u64,
    /// Rows left out because their event time is outside their folder's hour.
    pub rows_outside_partition: u64,
    /// Hour partitions whose windows were recomputed.
    pub partitions_touched: usize,
    /// Hour partitions with new objects left for the next run because the deadline was
    /// near (see the module documentation); 0 when the run caught up.
    pub partitions_remaining: usize,
    /// Windows recomputed (touched by new objects).
    pub windows_recomputed: usize,
    /// Windows whose stored row was added, changed or removed. 0 when the new objects only
    /// repeated known readings.
    pub windows_updated: usize,
    /// Stats files written (one per hour partition with an updated window).
    pub stats_files_written: usize,
    /// Whether the checkpoint was written (only when an object was newly aggregated or the
    /// old checkpoint was unusable).
    pub checkpoint_written: bool,
    /// Why the stored checkpoint was not used, when it was not (every window is then
    /// recomputed).
    pub checkpoint_reset: Option<String>,
    /// Objects whose readings did not make it into the stats in this run, with the reason;
    /// the new ones among them stay out of the checkpoint and are retried by the next run.
    pub skipped_files: Vec<SkippedFile>,
}

/// A telemetry object the run could not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// Object key.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// A rollup run that could not complete. Nothing after the failing step was written; see
/// the module documentation for why a partial run is safe.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    /// Listing the telemetry objects failed.
    #[error("listing {prefix}/: {source}")]
    List {
        /// The listed prefix.
        prefix: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Reading the checkpoint failed (other than it being absent or unparseable).
    #[error("reading checkpoint {path}: {source}")]
    ReadCheckpoint {
        /// Checkpoint key.
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
    /// Writing the checkpoint failed.
    #[error("writing checkpoint {path}: {source}")]
    WriteCheckpoint {
        /// Checkpoint key.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

/// Runs one incremental rollup over the telemetry in `store`, however long it takes: see
/// the [module documentation](self) for the algorithm and the failure handling.
pub async fn run_rollup(
    store: Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
) -> Result<RollupReport, RollupError> {
    run_rollup_until(store, cfg, None).await
}

/// [`run_rollup`] that stops between hour partitions as `deadline` (wall-clock time, like
/// a Lambda invocation's) approaches, leaving the rest to the next run. `None` means no
/// limit.
pub async fn run_rollup_until(
    store: Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    deadline: Option<SystemTime>,
) -> Result<RollupReport, RollupError> {
    let mut report = RollupReport::default();
    let prefix = cfg.telemetry_prefix.trim_matches('/');

    let loaded = checkpoint::load(&store, &cfg.checkpoint_path, prefix)
        .await
        .map_err(|source| RollupError::ReadCheckpoint {
            path: cfg.checkpoint_path.clone(),
            source,
        })?;
    let previous = match loaded {
        Loaded::Valid(cp) => cp,
        Loaded::Missing => Checkpoint::new(prefix),
        Loaded::Unusable { reason } => {
            warn!(%reason, "checkpoint not used; recomputing every window");
            report.checkpoint_reset = Some(reason);
            Checkpoint::new(prefix)
        }
    };

    let files = io::list_telemetry(&store, prefix)
        .await
        .map_err(|source| RollupError::List {
            prefix: prefix.to_string(),
            source,
        })?;
    report.files_scanned = files.len();

    let mut partitions: BTreeMap<Partition, Vec<Input>> = BTreeMap::new();
    for file in files {
        let new = !previous.contains(&file.partition, &file.name);
        partitions
            .entry(file.partition.clone())
            .or_default()
            .push(Input { file, new });
    }

    // The next checkpoint: what is still listed and was processed before (objects that
    // disappeared, for example after compaction, drop out), plus what this run processes.
    let mut next = Checkpoint::new(prefix);
    let mut newly_processed = 0;
    let mut slowest = Duration::ZERO;
    let mut completed = 0;
    for (partition, mut inputs) in partitions {
        for input in inputs.iter().filter(|i| !i.new) {
            next.insert(&partition, &input.file.name);
        }
        let new_files = inputs.iter().filter(|i| i.new).count();
        if new_files == 0 {
            continue;
        }
        report.new_files += new_files;
        if completed > 0 && !time_for_another(deadline, slowest) {
            report.partitions_remaining += 1;
            continue;
        }
        let started = Instant::now();
        // Arrival order, so that de-duplication keeps the reading that arrived first.
        inputs.sort_by(|a, b| {
            (a.file.meta.last_modified, &a.file.meta.location)
                .cmp(&(b.file.meta.last_modified, &b.file.meta.location))
        });
        let done = roll_partition(&store, cfg, &partition, &inputs, &mut report).await?;
        for file in done {
            next.insert(&partition, &file.name);
            newly_processed += 1;
        }
        slowest = slowest.max(started.elapsed());
        completed += 1;
    }
    if report.partitions_remaining > 0 {
        warn!(
            partitions_remaining = report.partitions_remaining,
            "deadline near: remaining partitions are left for the next run"
        );
    }

    if newly_processed > 0 || report.checkpoint_reset.is_some() {
        checkpoint::save(&store, &cfg.checkpoint_path, &next)
            .await
            .map_err(|source| RollupError::WriteCheckpoint {
                path: cfg.checkpoint_path.clone(),
                source,
            })?;
        report.checkpoint_written = true;
    }

    info!(
        files_scanned = report.files_scanned,
        new_files = report.new_files,
        rows_read = report.rows_read,
        duplicates_dropped = report.duplicates_dropped,
        partitions_touched = report.partitions_touched,
        partitions_remaining = report.partitions_remaining,
        windows_updated = report.windows_updated,
        stats_files_written = report.stats_files_written,
        checkpoint_written = report.checkpoint_written,
        skipped_files = report.skipped_files.len(),
        "rollup finished"
    );
    Ok(report)
}

/// Whether another partition fits before `deadline`: the slowest partition so far, twice
/// (partitions differ in size), plus the checkpoint reserve.
fn time_for_another(deadline: Option<SystemTime>, slowest: Duration) -> bool {
    let Some(deadline) = deadline else {
        return true;
    };
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    left > slowest.saturating_mul(2).saturating_add(CHECKPOINT_RESERVE)
}

/// A listed telemetry object and whether the checkpoint lacks it.
struct Input {
    file: TelemetryFile,
    new: bool,
}

/// Recomputes the windows of one hour partition touched by its new objects and writes the
/// partition's stats file if a row changed. Returns the new objects now aggregated (to be
/// added to the checkpoint).
async fn roll_partition<'a>(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    partition: &Partition,
    inputs: &'a [Input],
    report: &mut RollupReport,
) -> Result<Vec<&'a TelemetryFile>, RollupError> {
    // Listing only yields canonical partitions, which always have a start.
    let Some(start) = partition.start_millis() else {
        return Ok(Vec::new());
    };
    let mut agg = Aggregator::new(ROLLUP_WINDOW).with_bounds(start, start + HOUR_MS);
    let mut aggregated = Vec::new();
    let mut failed: HashSet<&str> = HashSet::new();
    let mut blocked: Option<(String, ReadError)> = None;

    // Futures built in a loop rather than by a closure over `inputs`: a closure returning a
    // borrowing future is higher-ranked, and rustc then cannot prove the caller's future
    // `Send` (needed to run the rollup on a spawned task).
    let mut pending = Vec::with_capacity(inputs.len());
    for input in inputs {
        pending.push(async move {
            let read = io::read_parquet(store, &input.file.meta, Some(&INPUT_COLUMNS)).await;
            (input, read)
        });
    }
    let mut reads = futures::stream::iter(pending).buffered(cfg.read_concurrency.max(1));
    while let Some((input, read)) = reads.next().await {
        let path = input.file.meta.location.as_ref();
        let added = read.and_then(|batches| Ok(agg.add_file(&batches, input.new)?));
        match added {
            Ok(()) if input.new => aggregated.push(&input.file),
            Ok(()) => {}
            Err(e) if input.new => {
                warn!(path, error = %e, "skipping unreadable telemetry file; retried next run");
                report.skipped_files.push(SkippedFile {
                    path: path.to_string(),
                    reason: e.to_string(),
                });
                failed.insert(path);
            }
            Err(e) => {
                blocked = Some((path.to_string(), e));
                break;
            }
        }
    }
    drop(reads);
    report.rows_read += agg.rows;
    report.duplicates_dropped += agg.duplicates;
    report.rows_outside_partition += agg.outside;
    if agg.outside > 0 {
        warn!(
            partition = %partition.path(),
            rows = agg.outside,
            "rows whose event time is outside their hour folder were left out"
        );
    }

    if let Some((path, error)) = blocked {
        warn!(
            partition = %partition.path(),
            %path,
            %error,
            "an aggregated file could not be re-read; partition deferred to the next run"
        );
        report.skipped_files.push(SkippedFile {
            path: path.clone(),
            reason: format!(
                "already aggregated but could not be re-read ({error}); partition {} deferred",
                partition.path()
            ),
        });
        for input in inputs.iter().filter(|i| i.new) {
            let p = input.file.meta.location.as_ref();
            if !failed.contains(p) {
                report.skipped_files.push(SkippedFile {
                    path: p.to_string(),
                    reason: format!("deferred: {path} in the same partition could not be re-read"),
                });
            }
        }
        return Ok(Vec::new());
    }
    if aggregated.is_empty() {
        // Every new object failed: there is nothing new to recompute.
        return Ok(Vec::new());
    }
    report.partitions_touched += 1;

    let stats_path = cfg.stats_path(ROLLUP_WINDOW, partition);
    let existing = read_existing(store, &stats_path).await;
    // Without the existing rows, the untouched windows would be lost: recompute them all.
    let touched = agg.touched();
    let computed = agg.finish(existing.is_some());
    report.windows_recomputed += computed.len();

    let had_existing = existing.is_some();
    let mut rows: BTreeMap<WindowKey, WindowStats> = existing
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.key(), s))
        .collect();
    let mut updated = 0;
    if had_existing {
        // A touched window may have lost every reading to de-duplication.
        let recomputed: HashSet<WindowKey> = computed.iter().map(WindowStats::key).collect();
        for key in touched.iter().filter(|k| !recomputed.contains(*k)) {
            if rows.remove(key).is_some() {
                updated += 1;
            }
        }
    }
    for stats in computed {
        let key = stats.key();
        if rows.get(&key) != Some(&stats) {
            rows.insert(key, stats);
            updated += 1;
        }
    }
    report.windows_updated += updated;

    if updated > 0 {
        let rows: Vec<WindowStats> = rows.into_values().collect();
        let batch = stats_to_batch(&rows).map_err(|source| RollupError::Encode {
            path: stats_path.clone(),
            source,
        })?;
        io::write_parquet(store, &stats_path, &batch)
            .await
            .map_err(|source| RollupError::WriteStats {
                path: stats_path.clone(),
                source,
            })?;
        report.stats_files_written += 1;
    }
    info!(
        partition = %partition.path(),
        new_files = aggregated.len(),
        windows_updated = updated,
        written = updated > 0,
        "partition rolled up"
    );
    Ok(aggregated)
}

/// The rows of the existing stats file; `None` when it is missing or unreadable (logged),
/// in which case the caller recomputes the whole hour.
async fn read_existing(store: &Arc<dyn ObjectStore>, path: &str) -> Option<Vec<WindowStats>> {
    let meta = match store.head(&Path::from(path)).await {
        Ok(meta) => meta,
        Err(object_store::Error::NotFound { .. }) => return None,
        Err(error) => {
            warn!(path, %error, "existing stats unreadable; recomputing the whole hour");
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
        Ok(rows) => Some(rows),
        Err(error) => {
            warn!(path, %error, "existing stats unreadable; recomputing the whole hour");
            None
        }
    }
}

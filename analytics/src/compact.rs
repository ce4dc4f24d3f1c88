//! Compaction: each *closed* hour's small telemetry files (Firehose writes one per buffer
//! flush, every few minutes) rewritten into large ones, rows sorted by (`device_id`,
//! `metric`, `event_time`) so that scans of one device or metric read few row groups.
//!
//! # The mechanism: write, record, hand over, then delete
//! For one hour folder `telemetry/dt=…/hour=…/`:
//! 1. read every file in arrival order (last-modified, then key), drop exact repeats of a
//!    reading — same (`device_id`, `seq`, `event_time`, `metric`), keeping the first that
//!    arrived, as the rollup does — and write the rest sorted into new files of about
//!    [`CompactConfig::target_file_bytes`] each. A file appears only when complete
//!    (multipart upload / rename), so no reader sees a partial one;
//! 2. write the manifest `_compaction.json` in the folder (inputs replaced, outputs
//!    written, counts). `_` names are skipped by the rollup, Athena, Hive and Spark;
//! 3. take the lease ([`crate::lease`]) of every rollup unit of the hour that has a state
//!    (`stats/_state/window=1m/dt=…/hour=…/part-*.json`), so that no worker aggregates it
//!    meanwhile;
//! 4. delete the inputs;
//! 5. in each leased unit's state that names every input, replace the inputs by the
//!    outputs ([hand-over](#what-the-rollup-sees)), then release the leases.
//!
//! At every instant each reading is in at least one visible file (before step 3 in both
//! the inputs and the outputs), and every reader of this pipeline already counts distinct
//! readings — Kinesis and Firehose deliver at least once, so the raw files hold repeats
//! anyway. Hence no reader ever misses a reading, and none that de-duplicates (the rollup,
//! `tests/py`'s DuckDB checks, the README's SQL) counts one twice. A crash between steps
//! leaves inputs and outputs side by side; the next run compacts them together again.
//!
//! # What the rollup sees
//! A unit's stats are a function of the distinct readings of the objects its state
//! names, and the outputs hold exactly the distinct readings of the inputs (the first
//! that arrived of each). So a state naming the inputs, with the inputs swapped for the
//! outputs, describes the same stats: after the hand-over the planner finds every unit
//! of the hour up to date, and the next rollup neither re-reads the hour nor treats the
//! compacted data as new. A unit that could not be handed over — its lease was busy, or
//! its state did not name every input (not rolled up yet, or an input skipped as
//! unreadable) — is left to the rollup: compaction leaves a pending marker for each
//! output, the planner sees the state differ from the listing, and the unit is
//! recomputed from the outputs to the same rows (sums run over sorted values), so no
//! stats file changes. Either way no 1m row, and hence no derived 1h/1d row, changes.
//!
//! # Memory
//! An hour is processed in `passes` over its files, each keeping only the devices whose
//! hash falls in that pass, so that at most about [`CompactConfig::memory_budget_bytes`]
//! of decoded rows are held at once whatever the fleet's size. Each pass writes its own
//! sorted files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arrow_array::{Array, RecordBatch};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use telemetry::Partition;
use telemetry::Reading;
use telemetry::parquet_writer::{ParquetWriterConfig, PartitionedWriter, WrittenFile};
use telemetry::schema::{readings_to_batch, telemetry_schema};
use tracing::info;

use crate::columns::{self, ColumnError, Strings};
use crate::config::RollupConfig;
use crate::io::{self, ReadError, TelemetryFile};
use crate::lease::{self, LeaseError};
use crate::pending;
use crate::state;
use crate::stats::Interner;
use crate::units::{Unit, bucket_of};

/// Default target size of a compacted file: 128 MiB (Athena's and Spark's sweet spot;
/// the issue asks for at least 64 MiB).
pub const DEFAULT_TARGET_FILE_BYTES: usize = 128 * 1024 * 1024;
// The floor for the default: at least 64 MiB.
const _: () = assert!(DEFAULT_TARGET_FILE_BYTES >= 64 * 1024 * 1024);
/// Default delay after an hour's end before it counts as closed: Firehose buffers up to
/// 900 s and devices may deliver late, so two hours.
pub const DEFAULT_CLOSED_AFTER: Duration = Duration::from_secs(2 * 3600);
/// Default bound on the decoded rows held at once: 512 MiB, which fits the template's
/// default 2048 MB compact function with the Parquet encoder's buffers beside it.
pub const DEFAULT_MEMORY_BUDGET_BYTES: usize = 512 * 1024 * 1024;
/// Assumed decoded size of a telemetry row per byte of Parquet (zstd long rows decode to
/// about 40-60 bytes from 4-8), to plan the passes from the listed sizes.
const DECODED_PER_PARQUET_BYTE: usize = 10;
/// Default look-back: the hours a run considers, from now back. Validation accepts
/// readings up to 7 days old, so 8 days cover every hour that can still change.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(8 * 24 * 3600);
/// An hour, milliseconds.
const HOUR_MS: i64 = 3_600_000;
/// Rows per batch handed to the writer.
const WRITE_BATCH_ROWS: usize = 64 * 1024;

/// The manifest's name within an hour folder.
pub const MANIFEST_NAME: &str = "_compaction.json";

/// What to compact and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactConfig {
    /// The rollup's layout: the telemetry prefix, and the unit states, leases and markers
    /// that compaction hands over (see the module's "What the rollup sees"). Default
    /// [`RollupConfig::default`].
    pub rollup: RollupConfig,
    /// Size at which an output file is closed and the next one started, bytes. Default
    /// 128 MiB.
    pub target_file_bytes: usize,
    /// An hour is closed (compacted) once this long has passed since its end. Default 2 h.
    pub closed_after: Duration,
    /// Decoded rows held at once, bytes (see the module's "Memory"). Default 512 MiB.
    pub memory_budget_bytes: usize,
    /// How far back from now hours are considered (each is listed on its own). Default
    /// 8 days.
    pub lookback: Duration,
}

impl Default for CompactConfig {
    fn default() -> Self {
        Self {
            rollup: RollupConfig::default(),
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
            closed_after: DEFAULT_CLOSED_AFTER,
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
            lookback: DEFAULT_LOOKBACK,
        }
    }
}

/// What one compaction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactReport {
    /// Closed hours with at least two files below the target size, compacted.
    pub hours_compacted: usize,
    /// Hours left alone: still open, or already compact.
    pub hours_skipped: usize,
    /// Hours due but left for the next run because the deadline was near.
    pub hours_remaining: usize,
    /// Files replaced.
    pub files_before: usize,
    /// Files written.
    pub files_after: usize,
    /// Bytes of the replaced files.
    pub bytes_before: u64,
    /// Bytes of the written files.
    pub bytes_after: u64,
    /// Rows read.
    pub rows_read: u64,
    /// Rows written (distinct readings).
    pub rows_written: u64,
    /// Exact repeats dropped.
    pub duplicates_dropped: u64,
    /// Rollup unit states whose inputs were replaced by the outputs (those units stay up
    /// to date without re-reading the hour).
    pub unit_states_handed_over: usize,
    /// Rollup units left to recompute the hour from the outputs (lease busy, or state not
    /// naming every input); a pending marker per output makes the next rollup do it.
    pub units_left_to_rollup: usize,
}

/// A compaction that could not complete. Inputs are deleted only after their hour's
/// outputs and manifest are written, so a failure loses nothing; rerun it.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// Listing failed.
    #[error("listing {prefix}/: {source}")]
    List {
        /// The listed prefix.
        prefix: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// An input could not be read; its hour is left as it is.
    #[error("reading {path}: {source}; fix or move the file, then rerun")]
    Read {
        /// Object key.
        path: String,
        /// The cause.
        #[source]
        source: ReadError,
    },
    /// Writing an output failed.
    #[error("writing compacted files: {0}")]
    Write(#[from] telemetry::parquet_writer::WriteError),
    /// Encoding rows failed.
    #[error("encoding rows: {0}")]
    Encode(#[from] arrow_schema::ArrowError),
    /// Taking or releasing a rollup unit's lease failed.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// Writing the manifest or deleting an input failed.
    #[error("{action} {path}: {source}")]
    Store {
        /// What was being done.
        action: &'static str,
        /// Object key.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

/// The manifest written into a compacted hour folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The files this compaction wrote, relative to the hour folder.
    pub outputs: Vec<String>,
    /// The files they replace (deleted after this manifest is written).
    pub replaced: Vec<String>,
    /// Rows read from `replaced`.
    pub rows_read: u64,
    /// Rows in `outputs` (distinct readings).
    pub rows_written: u64,
}

/// Compacts every closed hour of the look-back window under the telemetry prefix that
/// has at least two files below the target size, oldest first. `now_ms` is the current time, epoch milliseconds.
/// With a `deadline` (a Lambda invocation's), it stops between hours when the time left
/// is less than twice the slowest hour so far plus 10 s, and reports the rest in
/// [`CompactReport::hours_remaining`] for the next run.
pub async fn compact(
    store: &Arc<dyn ObjectStore>,
    cfg: &CompactConfig,
    now_ms: i64,
    deadline: Option<SystemTime>,
) -> Result<CompactReport, CompactError> {
    let prefix = cfg.rollup.telemetry_prefix.trim_matches('/');
    // Only the hours of the look-back window are listed, one folder each: the cost of a
    // run does not grow with the age of the deployment.
    let lookback_ms = i64::try_from(cfg.lookback.as_millis()).unwrap_or(i64::MAX);
    let first = now_ms.saturating_sub(lookback_ms);
    let first = first - first.rem_euclid(HOUR_MS);
    let mut hours: BTreeMap<Partition, Vec<TelemetryFile>> = BTreeMap::new();
    let mut start = first;
    while start < now_ms {
        let partition = Partition::of_millis(start);
        let folder = format!("{prefix}/{}", partition.path());
        let listed =
            io::list_objects(store, &folder)
                .await
                .map_err(|source| CompactError::List {
                    prefix: folder.clone(),
                    source,
                })?;
        let files: Vec<TelemetryFile> = listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta
                    .location
                    .as_ref()
                    .strip_prefix(folder.as_str())?
                    .strip_prefix('/')?
                    .to_string();
                let hidden = name
                    .split('/')
                    .any(|seg| seg.is_empty() || seg.starts_with('.') || seg.starts_with('_'));
                (!hidden).then(|| TelemetryFile {
                    meta,
                    partition: partition.clone(),
                    name,
                })
            })
            .collect();
        if !files.is_empty() {
            hours.insert(partition, files);
        }
        start += HOUR_MS;
    }
    let closed_ms = i64::try_from(cfg.closed_after.as_millis()).unwrap_or(i64::MAX);
    let mut report = CompactReport::default();
    let mut slowest = Duration::ZERO;
    for (hour, mut inputs) in hours {
        let end = hour.start_millis().map(|s| s + HOUR_MS);
        let closed = end.is_some_and(|e| e.saturating_add(closed_ms) <= now_ms);
        let small = inputs
            .iter()
            .filter(|f| (f.meta.size as usize) < cfg.target_file_bytes)
            .count();
        if !closed || small < 2 {
            report.hours_skipped += 1;
            continue;
        }
        let left = deadline.map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
        if report.hours_compacted > 0
            && left.is_some_and(|l| l < slowest * 2 + Duration::from_secs(10))
        {
            report.hours_remaining += 1;
            continue;
        }
        let started = Instant::now();
        inputs.sort_by(|a, b| {
            (a.meta.last_modified, &a.meta.location).cmp(&(b.meta.last_modified, &b.meta.location))
        });
        compact_hour(store, cfg, prefix, &hour, &inputs, &mut report).await?;
        report.hours_compacted += 1;
        slowest = slowest.max(started.elapsed());
    }
    info!(
        hours_compacted = report.hours_compacted,
        files_before = report.files_before,
        files_after = report.files_after,
        rows_written = report.rows_written,
        "compaction finished"
    );
    Ok(report)
}

/// One reading with interned strings (`fw` = `u32::MAX` when absent).
#[derive(Debug, Clone, Copy)]
struct Row {
    device: u32,
    metric: u32,
    seq: i64,
    event_time: i64,
    received_at: i64,
    value: f64,
    fw: u32,
}

/// Rows of one pass, de-duplicated in arrival order.
#[derive(Default)]
struct Pass {
    names: Interner,
    seen: HashSet<(u32, u32, i64, i64)>,
    rows: Vec<Row>,
    read: u64,
    duplicates: u64,
}

impl Pass {
    fn add(&mut self, batch: &RecordBatch, pass: u32, passes: u32) -> Result<(), ColumnError> {
        let device = Strings::new("device_id", columns::required(batch, "device_id")?)?;
        let metric = Strings::new("metric", columns::required(batch, "metric")?)?;
        let seq = columns::int64(batch, "seq")?;
        let event_time = columns::timestamps_ms(batch, "event_time")?;
        let received_at = columns::timestamps_ms(batch, "received_at")?;
        let value = columns::float64(batch, "value", false)?;
        let fw_col = batch.column_by_name("fw");
        let fw = fw_col.map(|c| Strings::new("fw", c)).transpose()?;
        let fw_nulls = fw_col.and_then(|c| c.logical_nulls());
        // Bucket decisions per distinct device, not per row.
        let mut in_pass: HashMap<&str, bool> = HashMap::new();
        for i in 0..batch.num_rows() {
            self.read += 1;
            let d = device.value(i);
            let mine = *in_pass
                .entry(d)
                .or_insert_with(|| passes <= 1 || bucket_of(d, passes) == pass);
            if !mine {
                continue;
            }
            let (dev, met) = (self.names.id(d), self.names.id(metric.value(i)));
            let (s, t) = (seq.value(i), event_time.get(i).copied().unwrap_or_default());
            if !self.seen.insert((dev, met, s, t)) {
                self.duplicates += 1;
                continue;
            }
            let fw = match (&fw, &fw_nulls) {
                (Some(f), nulls) if !nulls.as_ref().is_some_and(|n| n.is_null(i)) => {
                    self.names.id(f.value(i))
                }
                _ => u32::MAX,
            };
            self.rows.push(Row {
                device: dev,
                metric: met,
                seq: s,
                event_time: t,
                received_at: received_at.get(i).copied().unwrap_or_default(),
                value: value.value(i),
                fw,
            });
        }
        Ok(())
    }

    /// The rows sorted by (device_id, metric, event_time, seq), as readings, in chunks.
    fn sorted(mut self) -> (Vec<Row>, Interner) {
        let names = &self.names;
        self.rows.sort_by(|a, b| {
            (
                names.name(a.device),
                names.name(a.metric),
                a.event_time,
                a.seq,
            )
                .cmp(&(
                    names.name(b.device),
                    names.name(b.metric),
                    b.event_time,
                    b.seq,
                ))
        });
        (self.rows, self.names)
    }
}

async fn compact_hour(
    store: &Arc<dyn ObjectStore>,
    cfg: &CompactConfig,
    prefix: &str,
    hour: &Partition,
    inputs: &[TelemetryFile],
    report: &mut CompactReport,
) -> Result<(), CompactError> {
    let bytes: u64 = inputs.iter().map(|f| f.meta.size).sum();
    let decoded = (bytes as usize).saturating_mul(DECODED_PER_PARQUET_BYTE);
    let passes = u32::try_from(decoded.div_ceil(cfg.memory_budget_bytes.max(1)))
        .unwrap_or(u32::MAX)
        .max(1);
    let mut written: Vec<WrittenFile> = Vec::new();
    let (mut rows_read, mut rows_written) = (0, 0);
    for pass in 0..passes {
        let mut acc = Pass::default();
        for input in inputs {
            let read = |source| CompactError::Read {
                path: input.meta.location.to_string(),
                source,
            };
            let batches = io::read_parquet(store, &input.meta, None)
                .await
                .map_err(read)?;
            for batch in &batches {
                acc.add(batch, pass, passes)
                    .map_err(|e| read(ReadError::from(e)))?;
            }
        }
        rows_read += acc.read;
        report.duplicates_dropped += acc.duplicates;
        let (rows, names) = acc.sorted();
        rows_written += rows.len() as u64;
        let mut writer = PartitionedWriter::new(
            store.clone(),
            telemetry_schema(),
            ParquetWriterConfig {
                prefix: prefix.to_string(),
                target_file_bytes: cfg.target_file_bytes,
                ..ParquetWriterConfig::default()
            },
        );
        for chunk in rows.chunks(WRITE_BATCH_ROWS) {
            let readings: Vec<Reading> = chunk
                .iter()
                .map(|r| Reading {
                    device_id: names.name(r.device).to_string(),
                    seq: r.seq,
                    event_time: r.event_time,
                    received_at: r.received_at,
                    metric: names.name(r.metric).to_string(),
                    value: r.value,
                    fw: (r.fw != u32::MAX).then(|| names.name(r.fw).to_string()),
                })
                .collect();
            let batch = readings_to_batch(&readings)?;
            written.extend(writer.write(hour, &batch).await?);
        }
        written.extend(writer.flush().await?);
    }
    // Each pass read every row once; count them once.
    rows_read /= u64::from(passes);

    let folder = format!("{prefix}/{}/", hour.path());
    let relative = |p: &str| p.strip_prefix(&folder).unwrap_or(p).to_string();
    let manifest = Manifest {
        outputs: written.iter().map(|w| relative(&w.path)).collect(),
        replaced: inputs.iter().map(|f| f.name.clone()).collect(),
        rows_read,
        rows_written,
    };
    let manifest_path = format!("{folder}{MANIFEST_NAME}");
    let body = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    store
        .put(&Path::from(manifest_path.as_str()), PutPayload::from(body))
        .await
        .map_err(|source| CompactError::Store {
            action: "writing",
            path: manifest_path.clone(),
            source,
        })?;
    let leases = lease_units(store, &cfg.rollup, hour).await?;
    let deleted = delete_inputs(store, inputs).await;
    let handed = match deleted {
        Ok(()) => hand_over(store, &cfg.rollup, &leases, &manifest).await,
        Err(e) => Err(e),
    };
    let left = leases.busy + leases.held.len() - handed.as_ref().map_or(0, |h| *h);
    for (_, lease) in leases.held {
        lease.release().await.map_err(CompactError::Lease)?;
    }
    let handed = handed?;
    if left > 0 || handed == 0 {
        // Some unit (or, with no state yet, every unit) recomputes the hour: make sure the
        // planner looks at it.
        for output in &written {
            pending::ensure(store, &cfg.rollup.pending_prefix, &output.path)
                .await
                .map_err(|source| CompactError::Store {
                    action: "marking",
                    path: output.path.clone(),
                    source,
                })?;
        }
    }
    report.unit_states_handed_over += handed;
    report.units_left_to_rollup += left;
    report.files_before += inputs.len();
    report.bytes_before += bytes;
    report.files_after += written.len();
    report.bytes_after += written.iter().map(|w| w.bytes as u64).sum::<u64>();
    report.rows_read += rows_read;
    report.rows_written += rows_written;
    info!(
        hour = %hour.path(),
        files_before = inputs.len(),
        files_after = written.len(),
        passes,
        "hour compacted"
    );
    Ok(())
}

/// The rollup units of an hour that compaction holds while it swaps the files.
struct HourLeases {
    /// Units with a state whose lease compaction holds.
    held: Vec<(Unit, lease::Lease)>,
    /// Units with a state whose lease another worker holds.
    busy: usize,
}

/// Takes the lease of every unit of `hour` that has a state.
async fn lease_units(
    store: &Arc<dyn ObjectStore>,
    rollup: &RollupConfig,
    hour: &Partition,
) -> Result<HourLeases, CompactError> {
    let folder = Unit::state_folder(hour, rollup);
    let listed = io::list_objects(store, &folder)
        .await
        .map_err(|source| CompactError::List {
            prefix: folder.clone(),
            source,
        })?;
    let owner = format!("compact-{}", std::process::id());
    let mut leases = HourLeases {
        held: Vec::new(),
        busy: 0,
    };
    for meta in listed {
        let Some(unit) = meta
            .location
            .filename()
            .and_then(|name| Unit::from_part_name(hour, name))
        else {
            continue;
        };
        match lease::acquire(store, &unit.lease_prefix(rollup), &owner, rollup.lease_ttl).await {
            Ok(Some(lease)) => leases.held.push((unit, lease)),
            Ok(None) => leases.busy += 1,
            Err(e) => {
                for (_, held) in leases.held {
                    // The first error is the one to report; the rest expire on their own.
                    let _ = held.release().await;
                }
                return Err(CompactError::Lease(e));
            }
        }
    }
    Ok(leases)
}

/// Deletes the compacted inputs (already gone counts as deleted).
async fn delete_inputs(
    store: &Arc<dyn ObjectStore>,
    inputs: &[TelemetryFile],
) -> Result<(), CompactError> {
    for input in inputs {
        match store.delete(&input.meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => {
                return Err(CompactError::Store {
                    action: "deleting",
                    path: input.meta.location.to_string(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// In the state of each held unit that names every replaced file, replaces them by the
/// outputs; returns how many states were handed over.
async fn hand_over(
    store: &Arc<dyn ObjectStore>,
    rollup: &RollupConfig,
    leases: &HourLeases,
    manifest: &Manifest,
) -> Result<usize, CompactError> {
    let mut handed = 0;
    for (unit, lease) in &leases.held {
        let path = unit.state_path(rollup);
        let store_err = |action, source| CompactError::Store {
            action,
            path: path.clone(),
            source,
        };
        let mut st = state::load(store, &path)
            .await
            .map_err(|e| store_err("reading", e))?;
        if !manifest.replaced.iter().all(|r| st.objects.contains(r)) {
            continue;
        }
        for r in &manifest.replaced {
            st.objects.remove(r);
        }
        st.objects.extend(manifest.outputs.iter().cloned());
        lease.check().map_err(CompactError::Lease)?;
        state::save(store, &path, &st)
            .await
            .map_err(|e| store_err("writing", e))?;
        handed += 1;
    }
    Ok(handed)
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;
    use crate::{RollupConfig, run_rollup};

    const H: i64 = 1_764_086_400_000; // 2025-11-25T16:00:00Z

    fn reading(device: &str, seq: i64, t: i64, metric: &str, value: f64) -> Reading {
        Reading {
            device_id: device.into(),
            seq,
            event_time: t,
            received_at: t + 5,
            metric: metric.into(),
            value,
            fw: (seq % 2 == 0).then(|| "1.4.2".into()),
        }
    }

    async fn put(store: &Arc<dyn ObjectStore>, name: &str, rows: &[Reading]) {
        let path = format!("telemetry/{}/{name}", Partition::of_millis(H).path());
        io::write_parquet(store, &path, &readings_to_batch(rows).unwrap())
            .await
            .unwrap();
    }

    async fn hour_files(store: &Arc<dyn ObjectStore>) -> Vec<TelemetryFile> {
        io::list_telemetry(store, "telemetry").await.unwrap()
    }

    async fn stats_snapshot(store: &Arc<dyn ObjectStore>) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for meta in io::list_objects(store, "stats").await.unwrap() {
            // Stats files only: unit states change hands, markers come and go.
            if meta.location.parts().any(|p| p.as_ref().starts_with('_')) {
                continue;
            }
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            out.push((meta.location.to_string(), bytes.to_vec()));
        }
        out.sort();
        out
    }

    /// Five small files, with repeats across them, in one closed hour.
    async fn seeded() -> Arc<dyn ObjectStore> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for f in 0..5i64 {
            let mut rows = Vec::new();
            for d in 0..20 {
                for s in 0..10 {
                    let seq = f * 10 + s;
                    let t = H + seq * 30_000 + d;
                    for m in ["temperature", "humidity"] {
                        rows.push(reading(
                            &format!("sensor-{d:02}"),
                            seq,
                            t,
                            m,
                            (seq + d) as f64,
                        ));
                    }
                }
            }
            // The first two rows of the previous file, delivered again.
            if f > 0 {
                rows.push(reading(
                    "sensor-00",
                    (f - 1) * 10,
                    H + (f - 1) * 300_000,
                    "temperature",
                    ((f - 1) * 10) as f64,
                ));
            }
            put(&store, &format!("part-{f}.parquet"), &rows).await;
        }
        store
    }

    #[tokio::test]
    async fn a_closed_hour_becomes_one_sorted_file_with_the_same_distinct_readings() {
        let store = seeded().await;
        let cfg = CompactConfig::default();
        let report = compact(&store, &cfg, H + 10 * 3_600_000, None)
            .await
            .unwrap();
        assert_eq!(
            (
                report.hours_compacted,
                report.files_before,
                report.files_after
            ),
            (1, 5, 1)
        );
        assert_eq!(report.duplicates_dropped, 4);
        assert_eq!(report.rows_written, 5 * 20 * 10 * 2);
        let files = hour_files(&store).await;
        assert_eq!(files.len(), 1);
        let batches = io::read_parquet(&store, &files[0].meta, None)
            .await
            .unwrap();
        let mut keys = Vec::new();
        let mut fws = 0;
        for b in &batches {
            let dev = Strings::new("device_id", b.column_by_name("device_id").unwrap()).unwrap();
            let met = Strings::new("metric", b.column_by_name("metric").unwrap()).unwrap();
            let t = columns::timestamps_ms(b, "event_time").unwrap();
            fws += b.column_by_name("fw").unwrap().len()
                - b.column_by_name("fw").unwrap().null_count();
            for (i, &ti) in t.iter().enumerate() {
                keys.push((dev.value(i).to_string(), met.value(i).to_string(), ti));
            }
        }
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            keys, sorted,
            "rows are sorted by (device_id, metric, event_time)"
        );
        assert_eq!(keys.len(), 2000);
        assert_eq!(fws, 1000, "fw survives, nulls stay null");
        let manifest = store
            .get(&Path::from(
                "telemetry/dt=2025-11-25/hour=16/_compaction.json",
            ))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let manifest: Manifest = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(manifest.replaced.len(), 5);
        assert_eq!(manifest.outputs, vec![files[0].name.clone()]);
    }

    #[tokio::test]
    async fn an_open_hour_or_a_compact_one_is_left_alone() {
        let store = seeded().await;
        let cfg = CompactConfig::default();
        let open = compact(&store, &cfg, H + 3_600_000, None).await.unwrap();
        assert_eq!((open.hours_compacted, open.hours_skipped), (0, 1));
        assert_eq!(hour_files(&store).await.len(), 5);
        compact(&store, &cfg, H + 10 * 3_600_000, None)
            .await
            .unwrap();
        let again = compact(&store, &cfg, H + 10 * 3_600_000, None)
            .await
            .unwrap();
        assert_eq!((again.hours_compacted, again.hours_skipped), (0, 1));
        // Beyond the look-back window, nothing is even listed.
        let late = compact(&store, &cfg, H + 30 * 24 * 3_600_000, None)
            .await
            .unwrap();
        assert_eq!((late.hours_compacted, late.hours_skipped), (0, 0));
    }

    #[test]
    fn the_templates_target_size_default_is_this_one() {
        let template =
            std::fs::read_to_string(test_support::workspace_root().join("infra/template.yaml"))
                .unwrap();
        let default: usize = template
            .lines()
            .skip_while(|l| *l != "  CompactTargetFileMiB:")
            .find_map(|l| l.trim().strip_prefix("Default:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            default << 20,
            DEFAULT_TARGET_FILE_BYTES,
            "change one, change both"
        );
    }

    #[tokio::test]
    async fn a_small_memory_budget_takes_several_passes_and_loses_nothing() {
        let store = seeded().await;
        let cfg = CompactConfig {
            memory_budget_bytes: 20_000,
            ..CompactConfig::default()
        };
        let report = compact(&store, &cfg, H + 10 * 3_600_000, None)
            .await
            .unwrap();
        assert!(report.files_after > 1, "{report:?}");
        assert_eq!(report.rows_written, 2000);
        assert_eq!(report.rows_read, 2000 + 4);
    }

    #[tokio::test]
    async fn a_rollup_after_compaction_finds_every_unit_up_to_date_and_changes_no_stats() {
        let store = seeded().await;
        let rollup_cfg = RollupConfig::default();
        let first = run_rollup(store.clone(), &rollup_cfg).await.unwrap();
        assert!(first.stats_files_written > 1, "{first:?}");
        assert!(first.coarse.files_written > 0, "{first:?}");
        let before = stats_snapshot(&store).await;
        let report = compact(&store, &CompactConfig::default(), H + 10 * 3_600_000, None)
            .await
            .unwrap();
        assert_eq!(
            (report.unit_states_handed_over, report.units_left_to_rollup),
            (rollup_cfg.buckets as usize, 0),
            "{report:?}"
        );
        let after = run_rollup(store.clone(), &rollup_cfg).await.unwrap();
        assert_eq!(
            after.units_planned, 0,
            "compacted data is not new: {after:?}"
        );
        // A full scan lists the hour and compares every unit's state with it.
        let full = RollupConfig {
            full_scan: true,
            ..RollupConfig::default()
        };
        let scanned = run_rollup(store.clone(), &full).await.unwrap();
        assert_eq!(scanned.units_planned, 0, "{scanned:?}");
        assert_eq!(stats_snapshot(&store).await, before);
    }

    #[tokio::test]
    async fn a_unit_busy_during_compaction_is_recomputed_by_the_rollup_to_the_same_stats() {
        let store = seeded().await;
        let rollup_cfg = RollupConfig::default();
        run_rollup(store.clone(), &rollup_cfg).await.unwrap();
        let before = stats_snapshot(&store).await;
        let partition = Partition::of_millis(H);
        let busy_unit = Unit {
            partition: partition.clone(),
            bucket: 3,
            buckets: rollup_cfg.buckets,
        };
        let held = lease::acquire(
            &store,
            &busy_unit.lease_prefix(&rollup_cfg),
            "another-worker",
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
        let report = compact(&store, &CompactConfig::default(), H + 10 * 3_600_000, None)
            .await
            .unwrap();
        assert_eq!(report.units_left_to_rollup, 1, "{report:?}");
        assert_eq!(
            report.unit_states_handed_over,
            rollup_cfg.buckets as usize - 1
        );
        held.release().await.unwrap();
        let after = run_rollup(store.clone(), &rollup_cfg).await.unwrap();
        assert_eq!(after.units_planned, 1, "{after:?}");
        assert_eq!(after.units_done, 1);
        assert_eq!(after.windows_updated, 0, "{after:?}");
        assert_eq!(after.stats_files_written, 0);
        assert_eq!(after.coarse.files_written, 0);
        assert_eq!(stats_snapshot(&store).await, before);
        let again = run_rollup(store.clone(), &rollup_cfg).await.unwrap();
        assert_eq!(again.units_planned, 0, "{again:?}");
    }
}

//! Compaction: each *closed* hour's small telemetry files (Firehose writes one per buffer
//! flush, every few minutes) rewritten into large ones, rows sorted by (`device_id`,
//! `metric`, `event_time`) so that scans of one device or metric read few row groups.
//!
//! # The mechanism: write, record, then delete
//! For one hour folder `telemetry/dt=…/hour=…/`:
//! 1. read every file in arrival order (last-modified, then key), drop exact repeats of a
//!    reading — same (`device_id`, `seq`, `event_time`, `metric`), keeping the first that
//!    arrived, as the rollup does — and write the rest sorted into new files of about
//!    [`CompactConfig::target_file_bytes`] each. A file appears only when complete
//!    (multipart upload / rename), so no reader sees a partial one;
//! 2. write the manifest `_compaction.json` in the folder (inputs replaced, outputs
//!    written, counts). `_` names are skipped by the rollup, Athena, Hive and Spark;
//! 3. delete the inputs.
//!
//! At every instant each reading is in at least one visible file (before step 3 in both
//! the inputs and the outputs), and every reader of this pipeline already counts distinct
//! readings — Kinesis and Firehose deliver at least once, so the raw files hold repeats
//! anyway. Hence no reader ever misses a reading, and none that de-duplicates (the rollup,
//! `tests/py`'s DuckDB checks, the README's SQL) counts one twice. A crash between steps
//! leaves inputs and outputs side by side; the next run compacts them together again.
//!
//! # What the rollup sees
//! The outputs are new object names, so the next rollup re-reads the hour; it finds the
//! same distinct readings (and, for each, the same value), recomputes every window to the
//! same bits (sums run over sorted values), and writes no stats — `windows_updated` 0 and
//! no derived file rewritten. The cost is one re-read of each compacted hour, once.
//! `_compaction.json` names the files that replaced which, for a rollup whose
//! per-partition state wants to skip even that re-read.
//!
//! # Memory
//! An hour is processed in `passes` over its files, each keeping only the devices whose
//! hash falls in that pass, so that at most about [`CompactConfig::memory_budget_bytes`]
//! of decoded rows are held at once whatever the fleet's size. Each pass writes its own
//! sorted files.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
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
use crate::io::{self, ReadError, TelemetryFile};
use crate::stats::Interner;

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
    /// Key prefix of the telemetry files. Default `telemetry`.
    pub telemetry_prefix: String,
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
            telemetry_prefix: telemetry::layout::TELEMETRY_PREFIX.into(),
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

/// Compacts every closed hour of the look-back window under `cfg.telemetry_prefix` that
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
    let prefix = cfg.telemetry_prefix.trim_matches('/');
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

fn bucket_of(device: &str, passes: u64) -> u64 {
    let mut h = DefaultHasher::new();
    device.hash(&mut h);
    h.finish() % passes
}

impl Pass {
    fn add(&mut self, batch: &RecordBatch, pass: u64, passes: u64) -> Result<(), ColumnError> {
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
    let passes = decoded.div_ceil(cfg.memory_budget_bytes.max(1)).max(1) as u64;
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
    rows_read /= passes;

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
            if meta.location.as_ref().contains("_checkpoint") {
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
        let template = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml"),
        )
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
    async fn a_rollup_after_compaction_changes_no_stats() {
        let store = seeded().await;
        let rollup_cfg = RollupConfig::default();
        let first = run_rollup(store.clone(), &rollup_cfg).await.unwrap();
        assert_eq!(first.stats_files_written, 1);
        let before = stats_snapshot(&store).await;
        compact(&store, &CompactConfig::default(), H + 10 * 3_600_000, None)
            .await
            .unwrap();
        let after = run_rollup(store.clone(), &rollup_cfg).await.unwrap();
        assert_eq!(after.windows_updated, 0, "{after:?}");
        assert_eq!(after.stats_files_written, 0);
        assert_eq!(after.coarse.files_written, 0);
        assert_eq!(stats_snapshot(&store).await, before);
    }
}

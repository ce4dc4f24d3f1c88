//! Reading and writing Parquet in the object store, and finding the telemetry files.
//!
//! Only the object-store trait is used, so the same code reads the local data directory,
//! the in-memory store of the tests and S3.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::{DataType, FieldRef, Schema};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, RowFilter, RowSelectionPolicy,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use telemetry::Partition;

use crate::columns::{ColumnError, DictMemo, Strings};

/// Rows per decoded record batch: large enough to amortise per-batch work, small enough
/// that a batch of the five projected telemetry columns stays well under a megabyte.
pub const BATCH_ROWS: usize = 8192;

/// Bytes fetched from the end of a file in the first request: enough for the footer and
/// metadata of a telemetry or stats file, so opening one costs a single ranged GET.
const FOOTER_HINT: usize = 64 * 1024;

/// Why a Parquet object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The object store failed (missing object, network, permissions).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The object is not valid Parquet, or decoding failed (a store error while fetching
    /// column chunks also surfaces here, wrapped by the Parquet reader).
    #[error("Parquet: {0}")]
    Parquet(#[from] ParquetError),
    /// The file decodes but its columns are not the expected ones.
    #[error("schema: {0}")]
    Column(#[from] ColumnError),
}

/// Why a Parquet object could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Encoding failed.
    #[error("encoding Parquet: {0}")]
    Parquet(#[from] ParquetError),
    /// The object store refused the put.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// A telemetry object under `{prefix}/dt=YYYY-MM-DD/hour=HH/`.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryFile {
    /// Location, size, last-modified time and ETag, as listed.
    pub meta: ObjectMeta,
    /// Its hour partition.
    pub partition: Partition,
    /// Its path relative to the partition folder (usually just the file name).
    pub name: String,
}

/// Lists the telemetry objects under `prefix` (for example `telemetry`), in no particular
/// order.
///
/// Objects outside a well-formed `dt=YYYY-MM-DD/hour=HH/` folder are ignored, and so are
/// names starting with `.` or `_` (markers and temporary files, which Hive, Athena and
/// Spark skip too). No file extension is required: Firehose writes Parquet objects
/// without one unless configured to.
pub async fn list_telemetry(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
) -> Result<Vec<TelemetryFile>, object_store::Error> {
    let prefix = prefix.trim_matches('/');
    let listed: Vec<ObjectMeta> = store.list(Some(&Path::from(prefix))).try_collect().await?;
    Ok(listed
        .into_iter()
        .filter_map(|meta| {
            let (partition, name) = partition_of(prefix, meta.location.as_ref())?;
            Some(TelemetryFile {
                meta,
                partition,
                name,
            })
        })
        .collect())
}

/// Lists the telemetry objects of one hour `partition` under `prefix`: one listing of
/// the hour's folder, whatever else the store holds.
pub async fn list_partition(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    partition: &Partition,
) -> Result<Vec<TelemetryFile>, object_store::Error> {
    let prefix = prefix.trim_matches('/');
    let folder = if prefix.is_empty() {
        partition.path()
    } else {
        format!("{prefix}/{}", partition.path())
    };
    let listed: Vec<ObjectMeta> = store.list(Some(&Path::from(folder))).try_collect().await?;
    Ok(listed
        .into_iter()
        .filter_map(|meta| {
            let (p, name) = partition_of(prefix, meta.location.as_ref())?;
            (p == *partition).then_some(TelemetryFile {
                meta,
                partition: p,
                name,
            })
        })
        .collect())
}

/// The partition and name of a telemetry object key `{prefix}/dt=…/hour=…/{name}`;
/// `None` for keys that are not telemetry objects (see [`list_telemetry`]).
pub fn telemetry_object(prefix: &str, location: &str) -> Option<(Partition, String)> {
    partition_of(prefix.trim_matches('/'), location)
}

/// Splits `{prefix}/dt=…/hour=…/{name}` into the partition and the name.
fn partition_of(prefix: &str, location: &str) -> Option<(Partition, String)> {
    let rest = if prefix.is_empty() {
        location
    } else {
        location.strip_prefix(prefix)?.strip_prefix('/')?
    };
    let (partition, name) = Partition::parse_prefix(rest)?;
    let hidden = name
        .split('/')
        .any(|seg| seg.is_empty() || seg.starts_with('.') || seg.starts_with('_'));
    (!name.is_empty() && !hidden).then(|| (partition, name.to_string()))
}

/// Reads a whole Parquet object, projecting to `columns` (all columns when `None`).
///
/// Reads asynchronously with ranged GETs, so only the footer and the projected column
/// chunks are fetched.
/// A projected column the file lacks is a [`ColumnError::Missing`]; column types are
/// checked by whoever decodes the batches.
pub async fn read_parquet(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    columns: Option<&[&'static str]>,
) -> Result<Vec<RecordBatch>, ReadError> {
    let reader = StoreReader::new(store, meta);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let mask = match columns {
        Some(names) => {
            // Checked against the footer, so that even a file without rows is refused.
            let schema = builder.schema();
            if let Some(missing) = names.iter().find(|n| schema.field_with_name(n).is_err()) {
                return Err(ColumnError::Missing(missing).into());
            }
            ProjectionMask::columns(builder.parquet_schema(), names.iter().copied())
        }
        None => ProjectionMask::all(),
    };
    let stream = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()?;
    Ok(stream.try_collect().await?)
}

/// The footer of a telemetry object, checked to hold `columns` and `device_id`, with the
/// device and metric columns read as dictionaries: what [`read_slice`] decodes with. Its
/// row count sizes a unit's passes before any row is decoded.
pub async fn open_telemetry(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    columns: &[&'static str],
) -> Result<ArrowReaderMetadata, ReadError> {
    let mut reader = StoreReader::new(store, meta);
    let footer = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()).await?;
    for name in columns.iter().chain(&["device_id"]) {
        if footer.schema().field_with_name(name).is_err() {
            return Err(ColumnError::Missing(name).into());
        }
    }
    Ok(with_dictionaries(footer, &["device_id", "metric"])?)
}

/// Which devices a read keeps: those of the device-hash buckets `members` (of `buckets`;
/// one unit's bucket, or the buckets of several units of an hour read together), and of
/// those, the ones of pass `pass`: the range of ids that `bounds` gives it (a unit too
/// large for one pass of its memory budget is aggregated in several, each over its own
/// range of the devices: [`crate::units::pass_bounds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// The buckets read, each in `0..buckets`, ascending.
    pub members: Arc<[u32]>,
    /// Buckets per hour (at least 1).
    pub buckets: u32,
    /// The pass, `0..=bounds.len()`.
    pub pass: u32,
    /// Where the unit's passes split its devices' ids (empty: one pass).
    pub bounds: Arc<[String]>,
}

impl Slice {
    /// Whether the slice is every device (nothing to filter).
    fn is_everything(&self) -> bool {
        self.bounds.is_empty()
            && (0..self.buckets.max(1)).all(|b| self.members.binary_search(&b).is_ok())
    }

    /// The position in `members` of `device_id`'s bucket, if the slice reads it in its pass.
    pub fn member_of(&self, device_id: &str) -> Option<usize> {
        let bucket = crate::units::bucket_of(device_id, self.buckets);
        let member = self.members.binary_search(&bucket).ok()?;
        (crate::units::pass_of(device_id, &self.bounds) == self.pass).then_some(member)
    }

    /// Whether `device_id` is one of the slice's devices.
    pub fn contains(&self, device_id: &str) -> bool {
        self.member_of(device_id).is_some()
    }
}

/// The rows of `batches` (read with a [`Slice`] of several buckets) split by bucket: one
/// list of batches per member of `slice`, in the order of `members`, each holding the rows
/// of that bucket alone, in their order. A slice of one bucket is handed back as it is.
pub fn split_by_member(
    batches: Vec<RecordBatch>,
    slice: &Slice,
) -> Result<Vec<Vec<RecordBatch>>, ReadError> {
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new(); slice.members.len()];
    if slice.members.len() == 1 {
        out[0] = batches;
        return Ok(out);
    }
    let mut memo = DictMemo::default();
    for batch in batches {
        let ids = Strings::new("device_id", crate::columns::required(&batch, "device_id")?)?;
        // Rows of a device outside the slice were filtered out by the read; `usize::MAX`
        // keeps them out of every member if a caller passes other batches.
        let member = memo.per_row(&ids, |id| slice.member_of(id).unwrap_or(usize::MAX));
        for (m, rows) in out.iter_mut().enumerate() {
            let keep = BooleanArray::from_iter(member.iter().map(|&x| Some(x == m)));
            if keep.true_count() > 0 {
                let kept = arrow_select::filter::filter_record_batch(&batch, &keep)
                    .map_err(ParquetError::from)?;
                rows.push(kept);
            }
        }
    }
    Ok(out)
}

/// Reads the telemetry rows of one [`Slice`] of the devices of a Parquet object opened with
/// [`open_telemetry`], projecting to `columns` (which must include `device_id`).
///
/// The slice is a row filter evaluated while decoding: the `device_id` column is decoded
/// first (once per distinct value for a dictionary column, which Firehose and the local
/// writer produce), and the other columns only for the rows of the slice, so memory holds
/// the slice's rows rather than the file's.
pub async fn read_slice(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    footer: ArrowReaderMetadata,
    columns: &[&'static str],
    slice: Slice,
) -> Result<Vec<RecordBatch>, ReadError> {
    let reader = StoreReader::new(store, meta);
    let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, footer);
    let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    let mut stream_builder = builder.with_projection(mask).with_batch_size(BATCH_ROWS);
    if !slice.is_everything() {
        let device_only = ProjectionMask::columns(stream_builder.parquet_schema(), ["device_id"]);
        let mut memo = DictMemo::default();
        let predicate = ArrowPredicateFn::new(device_only, move |batch: RecordBatch| {
            in_slice(&batch, &slice, &mut memo)
        });
        // No predicate cache: it keeps the decoded `device_id` of the row group, to spare
        // decoding it again for the few rows the slice keeps. Without it the standalone
        // rollup of the 5 M-message hour peaked at 64 MB instead of 71 MB, the 1 M one at
        // 40 MB instead of 48 MB, in the same time (BENCHMARKS.md, session 8).
        //
        // The slice's rows are read as runs (skip n, read m), not through a mask: a slice is
        // a scattered 1/16 (or less) of the rows, and for so fragmented a selection parquet
        // would otherwise decode every row of a span holding `BATCH_ROWS` of the slice's —
        // 16 × (and with passes up to 80 ×) `BATCH_ROWS` rows per column per batch, buffers
        // of 0.5–4 MiB each allocated, faulted in and freed per batch. Read as runs, the
        // 1 M-message hour's standalone rollup took 1.2–1.4 s instead of 1.9–2.3 s (system
        // time 0.4–0.5 s instead of 1.5–1.6 s), the same windows (BENCHMARKS.md, session 14).
        stream_builder = stream_builder
            .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
            .with_max_predicate_cache_size(0)
            .with_row_selection_policy(RowSelectionPolicy::Selectors);
    }
    let stream = stream_builder.build()?;
    Ok(stream.try_collect().await?)
}

/// The distinct device ids of bucket `bucket` of `buckets` in a telemetry object opened
/// with [`open_telemetry`]: what a unit's pass ranges are drawn from
/// ([`crate::units::pass_bounds`]). Decodes the `device_id` column alone, and of a
/// dictionary column looks at each dictionary once rather than at every row.
pub async fn bucket_devices(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    footer: ArrowReaderMetadata,
    bucket: u32,
    buckets: u32,
) -> Result<Vec<String>, ReadError> {
    let reader = StoreReader::new(store, meta);
    let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, footer);
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["device_id"]);
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut keep = |id: &str| {
        if !seen.contains(id) && crate::units::bucket_of(id, buckets) == bucket {
            seen.insert(id.to_string());
        }
    };
    // The batches of a column chunk share its dictionary.
    let mut last_dict: Option<arrow_array::ArrayRef> = None;
    while let Some(batch) = stream.try_next().await? {
        let ids = Strings::new("device_id", crate::columns::required(&batch, "device_id")?)?;
        match &ids {
            Strings::Dict { values, dict, .. } => {
                if last_dict.as_ref().is_some_and(|d| Arc::ptr_eq(d, dict)) {
                    continue;
                }
                last_dict = Some((*dict).clone());
                (0..values.len()).for_each(|i| keep(values.value(i)));
            }
            plain => (0..plain.len()).for_each(|i| keep(plain.value(i))),
        }
    }
    Ok(seen.into_iter().collect())
}

/// The batches of a Parquet object, one at a time (all columns): for reading a file too
/// large to hold whole next to what is being computed from it.
pub async fn stream_parquet(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
) -> Result<BoxStream<'static, Result<RecordBatch, ReadError>>, ReadError> {
    let reader = StoreReader::new(store, meta);
    let stream = ParquetRecordBatchStreamBuilder::new(reader)
        .await?
        .with_batch_size(BATCH_ROWS)
        .build()?;
    Ok(stream.map_err(ReadError::from).boxed())
}

/// `footer` with the string columns `names` decoded as dictionaries (`Int32` keys): a
/// dictionary-encoded column chunk (what Firehose's and the local writer's Parquet hold for
/// device ids and metric names) is then handed over as its dictionary page plus keys, shared
/// by every batch of the chunk, instead of one copied string per row; a plain-encoded chunk
/// is dictionary-encoded by the reader. Other columns are left as they are.
fn with_dictionaries(
    footer: ArrowReaderMetadata,
    names: &[&str],
) -> Result<ArrowReaderMetadata, ParquetError> {
    let schema = footer.schema();
    let mut changed = false;
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 if names.contains(&f.name().as_str()) => {
                changed = true;
                let dict = DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(f.data_type().clone()),
                );
                Arc::new(f.as_ref().clone().with_data_type(dict))
            }
            _ => f.clone(),
        })
        .collect();
    if !changed {
        return Ok(footer);
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    ArrowReaderMetadata::try_new(
        footer.metadata().clone(),
        ArrowReaderOptions::new().with_schema(schema),
    )
}

/// Which rows of `batch` (its first column is `device_id`) belong to `slice`; `memo`
/// remembers the answer per dictionary value.
fn in_slice(
    batch: &RecordBatch,
    slice: &Slice,
    memo: &mut DictMemo<bool>,
) -> Result<BooleanArray, arrow_schema::ArrowError> {
    let to_arrow = |e: ColumnError| arrow_schema::ArrowError::ExternalError(Box::new(e));
    let col = crate::columns::required(batch, "device_id").map_err(to_arrow)?;
    let ids = Strings::new("device_id", col).map_err(to_arrow)?;
    // Hashing every row was a tenth of a 16-bucket rollup's CPU in perf (each unit hashes
    // the whole hour); the memo hashes each device once per dictionary.
    let ours = memo.per_row(&ids, |id| slice.contains(id));
    Ok(BooleanArray::from(ours))
}

/// A Parquet reader over one object of known size, fetching byte ranges on demand.
///
/// (parquet's own `ParquetObjectReader` is deprecated in favour of implementing
/// [`AsyncFileReader`] like this.)
struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// Object size from the listing, so that opening the file needs no HEAD request.
    size: u64,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl StoreReader {
    fn new(store: &Arc<dyn ObjectStore>, meta: &ObjectMeta) -> Self {
        Self {
            store: store.clone(),
            path: meta.location.clone(),
            size: meta.size,
        }
    }
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.store
            .get_range(&self.path, range)
            .map_err(external)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .with_prefetch_hint(Some(FOOTER_HINT))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Lists every object under `prefix`.
pub async fn list_objects(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
) -> Result<Vec<ObjectMeta>, object_store::Error> {
    let prefix = Path::from(prefix.trim_matches('/'));
    store.list(Some(&prefix)).try_collect().await
}

/// Writes `batch` as one Snappy-compressed Parquet object at `path` with a single put, so
/// that readers see either the previous object or the new one, never a partial file.
///
/// The file is encoded in memory first: stats files are small (one row per device,
/// metric and minute of an hour), and a single put is atomic on every store, where a
/// multipart upload is not on all of them.
pub async fn write_parquet(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    batch: &RecordBatch,
) -> Result<(), WriteError> {
    let buf = encode_parquet(batch)?;
    store.put(&Path::from(path), PutPayload::from(buf)).await?;
    Ok(())
}

/// `batch` as the bytes of a Snappy-compressed Parquet file, as [`write_parquet`] writes
/// it: the same rows always give the same bytes.
pub fn encode_parquet(batch: &RecordBatch) -> Result<Vec<u8>, ParquetError> {
    let mut file = ParquetBuffer::new(batch.schema())?;
    file.write(batch)?;
    file.finish()
}

/// A Parquet file encoded in memory a batch at a time, as [`encode_parquet`] encodes one
/// batch: the file's rows need not all be held at once, only its compressed bytes.
pub struct ParquetBuffer {
    writer: ArrowWriter<Vec<u8>>,
}

impl ParquetBuffer {
    /// An empty file of `schema`.
    pub fn new(schema: arrow_schema::SchemaRef) -> Result<Self, ParquetError> {
        // Dictionary encoding only where values repeat (names); on the statistics' floats,
        // times and sketches it built a dictionary per page only to fall back to plain (an
        // eighth of a rollup's CPU went to encoding). Snappy, not zstd: stats files are
        // written by every rollup and read back by the 1h/1d derivation and every query, and
        // zstd's compression was ~9 % of a rollup's CPU for files only 1.4× smaller
        // (BENCHMARKS.md, "The reference query fixed").
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false);
        for name in ["device_id", "metric"] {
            props = props.set_column_dictionary_enabled(ColumnPath::from(name), true);
        }
        let writer = ArrowWriter::try_new(Vec::new(), schema, Some(props.build()))?;
        Ok(Self { writer })
    }

    /// Appends `batch`'s rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        self.writer.write(batch)
    }

    /// The file's bytes.
    pub fn finish(self) -> Result<Vec<u8>, ParquetError> {
        self.writer.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::Field;

    /// A file of several row groups of many small pages, each slice's read skipping and
    /// reading runs across their bounds: every row is read once, by its own slice, whole.
    #[tokio::test]
    async fn every_row_of_a_file_of_many_row_groups_and_pages_is_read_once_by_its_slice() {
        let n = 5_000usize;
        // Devices interleaved as a stream interleaves them; some repeat back to back.
        let ids: Vec<String> = (0..n)
            .map(|i| format!("dev-{:03}", (i / 2 * 7919) % 301))
            .collect();
        let seq = Int64Array::from_iter_values(0..n as i64);
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("seq", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(ids.clone())), Arc::new(seq)],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(700))
            .set_data_page_row_count_limit(50)
            .set_write_batch_size(50)
            .build();
        let mut file = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut file, schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let path = Path::from("telemetry/dt=2026-12-02/hour=05/part-0.parquet");
        store.put(&path, file.into()).await.unwrap();
        let meta = store.head(&path).await.unwrap();

        let (buckets, passes) = (4, 3);
        let mut times_read = vec![0u32; n];
        for bucket in 0..buckets {
            // The pass ranges, drawn from the object's own ids of the bucket.
            let footer = open_telemetry(&store, &meta, &["seq"]).await.unwrap();
            let devices = bucket_devices(&store, &meta, footer, bucket, buckets)
                .await
                .unwrap();
            let mut expected: Vec<String> = ids
                .iter()
                .filter(|id| crate::units::bucket_of(id, buckets) == bucket)
                .cloned()
                .collect();
            expected.sort();
            expected.dedup();
            let mut got = devices.clone();
            got.sort();
            assert_eq!(got, expected, "bucket {bucket}'s devices");
            let bounds: Arc<[String]> = crate::units::pass_bounds(devices, passes).into();
            assert_eq!(bounds.len(), passes as usize - 1);
            for pass in 0..passes {
                let footer = open_telemetry(&store, &meta, &["seq"]).await.unwrap();
                assert_eq!(footer.metadata().num_row_groups(), 8);
                let slice = Slice {
                    members: Arc::new([bucket]),
                    buckets,
                    pass,
                    bounds: bounds.clone(),
                };
                let read = read_slice(&store, &meta, footer, &["device_id", "seq"], slice.clone())
                    .await
                    .unwrap();
                for b in &read {
                    let devices = Strings::new("device_id", b.column(0)).unwrap();
                    let seqs = b.column(1).as_primitive::<Int64Type>();
                    for (row, s) in seqs.values().iter().enumerate() {
                        let i = usize::try_from(*s).unwrap();
                        assert_eq!(devices.value(row), ids[i], "row {i}: another row's device");
                        assert_eq!(
                            crate::units::bucket_of(&ids[i], buckets),
                            bucket,
                            "row {i} read by another bucket"
                        );
                        assert_eq!(
                            crate::units::pass_of(&ids[i], &bounds),
                            pass,
                            "row {i} read by another pass"
                        );
                        assert!(slice.contains(&ids[i]));
                        times_read[i] += 1;
                    }
                }
            }
        }
        let wrong: Vec<_> = (0..n).filter(|&i| times_read[i] != 1).collect();
        assert!(wrong.is_empty(), "rows not read exactly once: {wrong:?}");

        // Several buckets read at once and split: each part holds its bucket's rows alone,
        // in file order; all of them read no filter at all.
        for members in [vec![1, 3], vec![0, 1, 2, 3]] {
            let slice = Slice {
                members: members.clone().into(),
                buckets,
                pass: 0,
                bounds: Arc::new([]),
            };
            assert_eq!(slice.is_everything(), members.len() == 4);
            let footer = open_telemetry(&store, &meta, &["seq"]).await.unwrap();
            let read = read_slice(&store, &meta, footer, &["device_id", "seq"], slice.clone())
                .await
                .unwrap();
            let parts = split_by_member(read, &slice).unwrap();
            assert_eq!(parts.len(), members.len());
            for (bucket, part) in members.iter().zip(&parts) {
                let got: Vec<i64> = part
                    .iter()
                    .flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec())
                    .collect();
                let expected: Vec<i64> = (0..n)
                    .filter(|&i| crate::units::bucket_of(&ids[i], buckets) == *bucket)
                    .map(|i| i as i64)
                    .collect();
                assert_eq!(got, expected, "bucket {bucket} of {members:?}");
            }
        }
    }

    #[test]
    fn only_canonical_partition_folders_and_visible_names_are_telemetry() {
        let p = |s: &str| partition_of("telemetry", s).map(|(p, n)| (p.path(), n));
        assert_eq!(
            p("telemetry/dt=2026-11-25/hour=16/part-1.parquet"),
            Some(("dt=2026-11-25/hour=16".into(), "part-1.parquet".into()))
        );
        assert_eq!(
            p("telemetry/dt=2026-11-25/hour=16/firehose-1-2026-11-25-16-05-00-abc"),
            Some((
                "dt=2026-11-25/hour=16".into(),
                "firehose-1-2026-11-25-16-05-00-abc".into()
            ))
        );
        assert_eq!(p("telemetry/dt=2026-11-25/hour=16/_SUCCESS"), None);
        assert_eq!(p("telemetry/dt=2026-11-25/hour=16/.tmp/x"), None);
        assert_eq!(p("telemetry/dt=2026-11-25/hour=24/x"), None);
        assert_eq!(p("telemetry/dt=2026-13-01/hour=01/x"), None);
        assert_eq!(p("telemetry/dt=2026-11-25/hour=1/x"), None);
        assert_eq!(p("telemetry/dt=2026-11-25/x"), None);
        assert_eq!(p("telemetryx/dt=2026-11-25/hour=16/x"), None);
        assert_eq!(
            partition_of("", "dt=2026-11-25/hour=16/x").map(|(_, n)| n),
            Some("x".into())
        );
    }
}

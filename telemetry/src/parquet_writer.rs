//! A rolling, partitioned Parquet writer over any [`ObjectStore`].
//!
//! Modelled on delta-rs's writer: a file is created only when the first batch for its
//! partition arrives, rolls to a new file at a target size, and lives under Hive-style
//! partition folders. Every file is written through a multipart upload that completes only
//! when the file is closed, so a reader never sees a half-written object (on S3 the object
//! does not exist until the upload completes; on the local filesystem it is renamed into
//! place).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use crate::partition::Partition;

/// Default target size of one Parquet file: 128 MiB, Firehose's largest buffer and a good
/// size for Athena scans.
pub const DEFAULT_TARGET_FILE_BYTES: usize = 128 * 1024 * 1024;
/// Default maximum rows per row group.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 512 * 1024;

/// How files are laid out and compressed.
#[derive(Debug, Clone)]
pub struct ParquetWriterConfig {
    /// Key prefix of every file, without a trailing slash (for example `telemetry`).
    pub prefix: String,
    /// A file is closed once its encoded size reaches this many bytes. Default 128 MiB.
    pub target_file_bytes: usize,
    /// Maximum rows in one row group. Default 512 Ki rows.
    pub row_group_rows: usize,
    /// Compression codec. Default zstd level 3.
    pub compression: Compression,
}

impl Default for ParquetWriterConfig {
    fn default() -> Self {
        Self {
            prefix: crate::layout::TELEMETRY_PREFIX.into(),
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            compression: Compression::ZSTD(ZstdLevel::default()),
        }
    }
}

/// A Parquet object that was completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Object key.
    pub path: String,
    /// Rows in the file.
    pub rows: usize,
    /// Size in bytes.
    pub bytes: usize,
}

/// Errors of the writer.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Encoding failed or the object store refused a part.
    #[error("writing Parquet to {path}: {source}")]
    Parquet {
        /// The object being written.
        path: String,
        /// The cause.
        #[source]
        source: ParquetError,
    },
    /// The batch's schema is not the writer's.
    #[error("batch schema does not match the writer's schema")]
    SchemaMismatch,
}

struct OpenFile {
    path: String,
    rows: usize,
    writer: AsyncArrowWriter<BufWriter>,
}

/// Writes record batches into per-partition Parquet files that roll at a target size.
pub struct PartitionedWriter {
    store: Arc<dyn ObjectStore>,
    schema: SchemaRef,
    config: ParquetWriterConfig,
    props: WriterProperties,
    /// Files currently being written, one per partition.
    open: BTreeMap<Partition, OpenFile>,
    /// Names files uniquely across runs and writers: creation time + a random tag.
    run_tag: String,
    next_file: AtomicU64,
}

impl PartitionedWriter {
    /// A writer of `schema` batches into `store`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        schema: SchemaRef,
        config: ParquetWriterConfig,
    ) -> Self {
        let props = WriterProperties::builder()
            .set_compression(config.compression)
            .set_max_row_group_row_count(Some(config.row_group_rows.max(1)))
            .build();
        Self {
            store,
            schema,
            config,
            props,
            open: BTreeMap::new(),
            run_tag: run_tag(),
            next_file: AtomicU64::new(0),
        }
    }

    /// Appends `batch` to the file of `partition`, creating it if needed. Returns the
    /// files completed because they reached the target size.
    pub async fn write(
        &mut self,
        partition: &Partition,
        batch: &RecordBatch,
    ) -> Result<Vec<WrittenFile>, WriteError> {
        if batch.schema() != self.schema {
            return Err(WriteError::SchemaMismatch);
        }
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        if !self.open.contains_key(partition) {
            let file = self.create(partition)?;
            self.open.insert(partition.clone(), file);
        }
        let Some(file) = self.open.get_mut(partition) else {
            return Ok(Vec::new());
        };
        file.writer
            .write(batch)
            .await
            .map_err(|source| WriteError::Parquet {
                path: file.path.clone(),
                source,
            })?;
        file.rows += batch.num_rows();
        let size = file.writer.bytes_written() + file.writer.in_progress_size();
        if size >= self.config.target_file_bytes
            && let Some(file) = self.open.remove(partition)
        {
            return Ok(vec![close(file).await?]);
        }
        Ok(Vec::new())
    }

    /// Closes every open file and returns what was completed.
    pub async fn flush(&mut self) -> Result<Vec<WrittenFile>, WriteError> {
        // Every file is closed even after one fails, so that no multipart upload is left
        // open; the first error is returned.
        let mut done = Vec::new();
        let mut first_error = None;
        for (_, file) in std::mem::take(&mut self.open) {
            match close(file).await {
                Ok(f) => done.push(f),
                Err(e) => {
                    tracing::error!(error = %e, "closing a Parquet file failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Number of rows buffered or written to files that are not yet complete.
    pub fn pending_rows(&self) -> usize {
        self.open.values().map(|f| f.rows).sum()
    }

    fn create(&self, partition: &Partition) -> Result<OpenFile, WriteError> {
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let path = format!(
            "{}/{}/part-{}-{n:05}.parquet",
            self.config.prefix.trim_end_matches('/'),
            partition.path(),
            self.run_tag
        );
        let sink = BufWriter::new(self.store.clone(), Path::from(path.as_str()));
        let writer = AsyncArrowWriter::try_new(sink, self.schema.clone(), Some(self.props.clone()))
            .map_err(|source| WriteError::Parquet {
                path: path.clone(),
                source,
            })?;
        Ok(OpenFile {
            path,
            rows: 0,
            writer,
        })
    }
}

async fn close(file: OpenFile) -> Result<WrittenFile, WriteError> {
    let OpenFile {
        path,
        rows,
        mut writer,
    } = file;
    writer
        .finish()
        .await
        .map_err(|source| WriteError::Parquet {
            path: path.clone(),
            source,
        })?;
    let bytes = writer.bytes_written();
    Ok(WrittenFile { path, rows, bytes })
}

/// Writes one batch as one complete Parquet object at `path` (for small outputs such as a
/// partition's aggregates). The object appears atomically.
pub async fn write_single(
    store: Arc<dyn ObjectStore>,
    path: &str,
    batches: &[RecordBatch],
    schema: SchemaRef,
    compression: Compression,
) -> Result<WrittenFile, WriteError> {
    let props = WriterProperties::builder()
        .set_compression(compression)
        .build();
    let sink = BufWriter::new(store, Path::from(path));
    let err = |source| WriteError::Parquet {
        path: path.to_string(),
        source,
    };
    let mut writer = AsyncArrowWriter::try_new(sink, schema, Some(props)).map_err(err)?;
    let mut rows = 0;
    for b in batches {
        writer.write(b).await.map_err(err)?;
        rows += b.num_rows();
    }
    writer.finish().await.map_err(err)?;
    Ok(WrittenFile {
        path: path.to_string(),
        rows,
        bytes: writer.bytes_written(),
    })
}

/// A tag unique enough to name files of concurrent writers apart: creation time in
/// milliseconds and 32 random bits from the standard library's hasher seed.
fn run_tag() -> String {
    use std::hash::{BuildHasher, RandomState};
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let random = RandomState::new().hash_one(ms) as u32;
    format!("{ms}-{random:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Reading;
    use crate::schema::{readings_to_batch, telemetry_schema};
    use bytes::Bytes;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn batch(n: usize, hour: i64) -> RecordBatch {
        let readings: Vec<Reading> = (0..n)
            .map(|i| Reading {
                device_id: format!("d{}", i % 7),
                seq: i as i64,
                event_time: hour * 3_600_000 + i as i64,
                received_at: hour * 3_600_000 + i as i64 + 5,
                metric: "temperature".into(),
                value: i as f64 * 0.5,
                fw: Some("1.0".into()),
            })
            .collect();
        readings_to_batch(&readings).unwrap()
    }

    async fn read_rows(store: &InMemory, path: &str) -> usize {
        let data: Bytes = store
            .get(&Path::from(path))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(data)
            .unwrap()
            .build()
            .unwrap();
        reader.map(|b| b.unwrap().num_rows()).sum()
    }

    #[tokio::test]
    async fn files_roll_at_the_target_size_and_nothing_is_visible_before_close() {
        let store = Arc::new(InMemory::new());
        let cfg = ParquetWriterConfig {
            target_file_bytes: 16 * 1024,
            row_group_rows: 1000,
            ..Default::default()
        };
        let mut w = PartitionedWriter::new(store.clone(), telemetry_schema(), cfg);
        let p = Partition::of_millis(0);
        let mut done = Vec::new();
        // The first write is buffered: no object exists yet.
        done.extend(w.write(&p, &batch(100, 0)).await.unwrap());
        let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert!(
            listed.is_empty(),
            "an object appeared before the file was closed"
        );
        for _ in 0..40 {
            done.extend(w.write(&p, &batch(1000, 0)).await.unwrap());
        }
        done.extend(w.flush().await.unwrap());
        assert!(
            done.len() > 1,
            "expected the writer to roll, got {} file(s)",
            done.len()
        );
        let mut total = 0;
        for f in &done {
            assert!(
                f.path.starts_with("telemetry/dt=1970-01-01/hour=00/part-"),
                "{}",
                f.path
            );
            let rows = read_rows(&store, &f.path).await;
            assert_eq!(rows, f.rows);
            total += rows;
        }
        assert_eq!(total, 100 + 40 * 1000);
    }

    #[tokio::test]
    async fn each_partition_gets_its_own_folder() {
        let store = Arc::new(InMemory::new());
        let mut w = PartitionedWriter::new(store.clone(), telemetry_schema(), Default::default());
        w.write(&Partition::of_millis(0), &batch(10, 0))
            .await
            .unwrap();
        w.write(&Partition::of_millis(3_600_000), &batch(10, 1))
            .await
            .unwrap();
        assert_eq!(w.pending_rows(), 20);
        let done = w.flush().await.unwrap();
        let mut dirs: Vec<_> = done
            .iter()
            .map(|f| f.path.rsplit_once('/').unwrap().0.to_string())
            .collect();
        dirs.sort();
        assert_eq!(
            dirs,
            [
                "telemetry/dt=1970-01-01/hour=00",
                "telemetry/dt=1970-01-01/hour=01"
            ]
        );
    }
}

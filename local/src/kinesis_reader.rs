//! A Kinesis Data Streams reader: what feeds the local Firehose emulation when the stream is
//! a real Kinesis stream (`iotpipe … --stream kinesis:NAME`), as a delivery stream with a
//! Kinesis source would read it on AWS.
//!
//! # How it reads
//! - `ListShards` finds the shards. A shard is read once its parents (a split's parent, a
//!   merge's two parents) have been read to their end, or are gone (past retention), so
//!   that one device's records stay in order across a reshard. When a shard ends (closed,
//!   read to its last record) the shards are listed again and its children are started.
//! - `GetShardIterator`: `AFTER_SEQUENCE_NUMBER` of the shard's checkpoint when there is
//!   one, else `TRIM_HORIZON`. An `ExpiredIteratorException` (an iterator is valid for
//!   5 minutes) gets a fresh iterator after the last record read.
//! - `GetRecords` per shard at most [`GET_RECORDS_PER_SECOND`] times a second and at most
//!   [`SHARD_READ_BYTES_PER_SECOND`] (the per-shard read limits of a provisioned stream);
//!   `ProvisionedThroughputExceededException` and other retriable failures back off
//!   (capped exponential, full jitter) and give up after [`MAX_CONSECUTIVE_FAILURES`].
//! - Records go out on a bounded channel in shard order: a slow consumer slows the reads.
//!
//! # Checkpoints (at least once)
//! [`checkpoint`] stores, per shard, the sequence number up to which records have been
//! **durably** handled downstream — the positions the Firehose emulator reports after the
//! records' Parquet objects are complete
//! ([`crate::firehose::run_with_progress`]) — as one small JSON object per shard under
//! `{prefix}/{stream}/{shard}` ([`CHECKPOINT_PREFIX`] by default). A record read but not
//! yet durable when the process stops is read again next time: duplicates, which the
//! rollup removes (it de-duplicates on `device_id`, `seq`, `metric`), never a loss.
//!
//! # When a run ends
//! After [`KinesisSource::run`]'s `stop` turns `true` (the producers have stopped and every
//! put was acknowledged), each open shard is read until a `GetRecords` call *issued after
//! the stop* returns no records with `MillisBehindLatest` 0 — the shard's tip — and, when
//! the producer noted what it put ([`KinesisSource::with_put_positions`]), until the last
//! record read is at or past the highest sequence number acknowledged on that shard: a
//! record that has not yet propagated to `GetRecords` (Kinesis takes up to about a second)
//! is waited for rather than missed, for at most [`DRAIN_TIMEOUT`]. Closed shards are read
//! to their end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rand::Rng;
use serde::{Deserialize, Serialize};
use telemetry::stream::StreamEntry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use ingest::aws::classify;
use ingest::sink::SinkError;

/// `GetRecords` calls per shard per second: Kinesis allows 5 (shared by every consumer of
/// the shard that is not an enhanced fan-out consumer).
pub const GET_RECORDS_PER_SECOND: u32 = 5;
/// Bytes per shard per second that `GetRecords` may return: 2 MiB (provisioned mode).
pub const SHARD_READ_BYTES_PER_SECOND: u64 = 2 * 1024 * 1024;
/// Records per `GetRecords` call: the API's maximum (10,000; at most 10 MiB).
pub const GET_RECORDS_LIMIT: i32 = 10_000;
/// Where checkpoints live in the object store: `{prefix}/{stream}/{shard}`.
pub const CHECKPOINT_PREFIX: &str = telemetry::layout::KINESIS_CHECKPOINT_PREFIX;
/// Consecutive retriable failures of one call before the reader gives up (with the
/// backoff below, about a minute and a half).
pub const MAX_CONSECUTIVE_FAILURES: u32 = 20;
/// How long, after the stop, a shard may stay short of what the run put on it before the
/// reader gives up with an error (the records are not lost: a later run reads them).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// First backoff after a retriable failure; doubles per attempt.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Cap of one backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The reader's settings.
#[derive(Debug, Clone)]
pub struct KinesisSourceConfig {
    /// The Kinesis data stream to read.
    pub stream_name: String,
    /// Key prefix of the checkpoints in the object store, without a trailing slash.
    /// Default [`CHECKPOINT_PREFIX`].
    pub checkpoint_prefix: String,
    /// Least time between two `GetRecords` calls on one shard. Default 200 ms
    /// (1 s / [`GET_RECORDS_PER_SECOND`]); shorter values break the shard's read limit.
    pub poll_interval: Duration,
}

impl KinesisSourceConfig {
    /// The defaults for `stream_name`.
    pub fn new(stream_name: impl Into<String>) -> Self {
        Self {
            stream_name: stream_name.into(),
            checkpoint_prefix: CHECKPOINT_PREFIX.to_owned(),
            poll_interval: Duration::from_secs(1) / GET_RECORDS_PER_SECOND,
        }
    }
}

/// What a read of the stream did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    /// The stream read.
    pub stream: String,
    /// Shards read (each counted once).
    pub shards_read: u64,
    /// Shards whose reading started after a checkpoint (not from the trim horizon).
    pub shards_resumed: u64,
    /// Shards read to their end (closed by a reshard) and followed to their children.
    pub shards_ended: u64,
    /// Records read.
    pub records_read: u64,
    /// Record data bytes read.
    pub bytes_read: u64,
    /// `GetRecords` calls made.
    pub get_records_calls: u64,
    /// Calls answered `ProvisionedThroughputExceededException` (or another throttle).
    pub throttled: u64,
    /// Iterators that expired and were renewed.
    pub expired_iterators: u64,
}

/// Failures that stop the reader.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A Kinesis call failed for good (or kept failing).
    #[error("Kinesis {operation} on stream {stream}: {detail}{hint}")]
    Kinesis {
        /// The API operation.
        operation: &'static str,
        /// The stream.
        stream: String,
        /// The error, with its context.
        detail: String,
        /// What to do about it, if known.
        hint: &'static str,
    },
    /// A checkpoint could not be read or written.
    #[error("checkpoint {key}: {detail}")]
    Checkpoint {
        /// The object key.
        key: String,
        /// What went wrong.
        detail: String,
    },
    /// The receiving end of the records went away (the Firehose emulation stopped).
    #[error("the records' consumer stopped while shard {shard} was being read")]
    ConsumerGone {
        /// The shard being read.
        shard: String,
    },
    /// A shard reader panicked.
    #[error("a shard reader panicked: {0}")]
    Panicked(String),
}

/// One shard's checkpoint, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The stream.
    pub stream: String,
    /// The shard.
    pub shard_id: String,
    /// Every record up to and including this sequence number is durably handled.
    pub sequence_number: String,
    /// When the checkpoint was written, epoch milliseconds.
    pub written_at_ms: i64,
    /// When the stream the checkpoint belongs to was created (`StreamCreationTimestamp`,
    /// epoch ms). A stream deleted and created again under the same name has the same
    /// shard ids but new sequence numbers (moto restarts them at 1), so a checkpoint of the
    /// old stream would skip the new one's records: it is ignored instead. Absent in
    /// checkpoints written before this field existed (then trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_created_ms: Option<i64>,
}

/// The key of a shard's checkpoint.
pub fn checkpoint_key(prefix: &str, stream: &str, shard_id: &str) -> Path {
    Path::from(format!(
        "{}/{stream}/{shard_id}",
        prefix.trim_end_matches('/')
    ))
}

/// Reads a shard's checkpoint; `None` when there is none.
pub async fn read_checkpoint(
    store: &dyn ObjectStore,
    prefix: &str,
    stream: &str,
    shard_id: &str,
) -> Result<Option<Checkpoint>, SourceError> {
    let key = checkpoint_key(prefix, stream, shard_id);
    let err = |detail: String| SourceError::Checkpoint {
        key: key.to_string(),
        detail,
    };
    let bytes = match store.get(&key).await {
        Ok(got) => got.bytes().await.map_err(|e| err(e.to_string()))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        err(format!(
            "not a checkpoint ({e}); delete the object to read the shard from its trim horizon"
        ))
    })
}

/// Writes the checkpoints of `positions` (shard → last durable sequence number) as they
/// arrive, until the channel closes; returns how many checkpoint objects were written.
/// Only shards whose position moved are written. `stream_created_ms` is the stream's
/// creation time ([`KinesisSource::check_stream`]), stored with each checkpoint.
pub async fn checkpoint(
    store: Arc<dyn ObjectStore>,
    prefix: String,
    stream: String,
    stream_created_ms: Option<i64>,
    mut positions: mpsc::UnboundedReceiver<BTreeMap<String, String>>,
) -> Result<u64, SourceError> {
    let mut written: HashMap<String, String> = HashMap::new();
    let mut objects = 0;
    while let Some(update) = positions.recv().await {
        for (shard_id, sequence_number) in update {
            if written.get(&shard_id) == Some(&sequence_number) {
                continue;
            }
            let key = checkpoint_key(&prefix, &stream, &shard_id);
            let cp = Checkpoint {
                stream: stream.clone(),
                shard_id: shard_id.clone(),
                sequence_number: sequence_number.clone(),
                written_at_ms: chrono::Utc::now().timestamp_millis(),
                stream_created_ms,
            };
            let body = serde_json::to_vec(&cp).map_err(|e| SourceError::Checkpoint {
                key: key.to_string(),
                detail: e.to_string(),
            })?;
            store
                .put(&key, PutPayload::from(body))
                .await
                .map_err(|e| SourceError::Checkpoint {
                    key: key.to_string(),
                    detail: e.to_string(),
                })?;
            tracing::debug!(shard_id, sequence_number, "kinesis checkpoint written");
            objects += 1;
            written.insert(shard_id, sequence_number);
        }
    }
    Ok(objects)
}

/// Counters shared by the shard readers.
#[derive(Debug, Default)]
struct Stats {
    shards_read: AtomicU64,
    shards_resumed: AtomicU64,
    shards_ended: AtomicU64,
    records_read: AtomicU64,
    bytes_read: AtomicU64,
    get_records_calls: AtomicU64,
    throttled: AtomicU64,
    expired_iterators: AtomicU64,
}

/// Reads every shard of a Kinesis data stream (see the module doc).
#[derive(Debug, Clone)]
pub struct KinesisSource {
    /// The SDK client (no SDK retries: the reader has its own backoff).
    client: Client,
    /// Where the checkpoints are read from.
    store: Arc<dyn ObjectStore>,
    /// Settings.
    cfg: KinesisSourceConfig,
    /// Counters, for the report.
    stats: Arc<Stats>,
    /// What the run's producer put, per shard (drain condition).
    put: Option<ingest::kinesis::PutPositions>,
    /// The stream's creation time, once [`KinesisSource::check_stream`] has described it:
    /// checkpoints of another incarnation of the stream are ignored.
    created: Arc<std::sync::OnceLock<Option<i64>>>,
}

/// How a shard's reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShardEnd {
    /// Closed and read to its last record: its children may start.
    Ended,
    /// Open, read to its tip after the stop.
    Drained,
}

impl KinesisSource {
    /// A reader of `cfg.stream_name` over `client`, with checkpoints in `store`. Build the
    /// client with [`ingest::kinesis::configure`] (bounded attempts, no SDK retries).
    pub fn new(client: Client, store: Arc<dyn ObjectStore>, cfg: KinesisSourceConfig) -> Self {
        Self {
            client,
            store,
            cfg,
            stats: Arc::default(),
            put: None,
            created: Arc::default(),
        }
    }

    /// Drains each shard, after the stop, at least to the highest sequence number the
    /// producer's [`ingest::KinesisSink`] noted in `positions` (see the module doc).
    pub fn with_put_positions(mut self, positions: ingest::kinesis::PutPositions) -> Self {
        self.put = Some(positions);
        self
    }

    /// A reader whose client is built from `sdk` (region, credentials, endpoint).
    pub fn from_sdk_config(
        sdk: &SdkConfig,
        store: Arc<dyn ObjectStore>,
        cfg: KinesisSourceConfig,
    ) -> Self {
        let client = Client::from_conf(ingest::kinesis::configure(sdk.into()).build());
        Self::new(client, store, cfg)
    }

    /// Checks that the stream exists and can be described, with a message saying what to
    /// do when it cannot; returns its creation time (epoch ms), which tells this stream's
    /// checkpoints from those of a deleted stream of the same name.
    pub async fn check_stream(&self) -> Result<Option<i64>, SourceError> {
        let summary = self
            .client
            .describe_stream_summary()
            .stream_name(&self.cfg.stream_name)
            .send()
            .await
            .map_err(|e| self.error("DescribeStreamSummary", &e))?;
        let created = summary
            .stream_description_summary()
            .map(|d| d.stream_creation_timestamp().to_millis())
            .and_then(Result::ok);
        let _ = self.created.set(created);
        Ok(created)
    }

    /// What has been read so far.
    pub fn report(&self) -> SourceReport {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SourceReport {
            stream: self.cfg.stream_name.clone(),
            shards_read: n(&s.shards_read),
            shards_resumed: n(&s.shards_resumed),
            shards_ended: n(&s.shards_ended),
            records_read: n(&s.records_read),
            bytes_read: n(&s.bytes_read),
            get_records_calls: n(&s.get_records_calls),
            throttled: n(&s.throttled),
            expired_iterators: n(&s.expired_iterators),
        }
    }

    /// Reads the stream into `out` until `stop` is `true` and every shard is read to its
    /// tip (or end), then reports.
    pub async fn run(
        self,
        out: mpsc::Sender<StreamEntry>,
        stop: watch::Receiver<bool>,
    ) -> Result<SourceReport, SourceError> {
        let mut finished: HashSet<String> = HashSet::new();
        let mut running: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<Result<(String, ShardEnd), SourceError>> = JoinSet::new();
        // Known once `check_stream` ran (the stack calls it before `run`); unknown, every
        // checkpoint is trusted.
        let created = self.created.get().copied().flatten();
        loop {
            let shards = self.list_shards().await?;
            let listed: HashSet<&str> = shards.iter().map(Shard::shard_id).collect();
            for shard in &shards {
                let id = shard.shard_id();
                if finished.contains(id) || running.contains(id) {
                    continue;
                }
                let parents_done = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .all(|p| !listed.contains(p) || finished.contains(p));
                if !parents_done {
                    continue;
                }
                let after = read_checkpoint(
                    self.store.as_ref(),
                    &self.cfg.checkpoint_prefix,
                    &self.cfg.stream_name,
                    id,
                )
                .await?
                .filter(|c| {
                    let stale =
                        matches!((c.stream_created_ms, created), (Some(a), Some(b)) if a != b);
                    if stale {
                        tracing::warn!(
                            stream = %self.cfg.stream_name,
                            shard_id = id,
                            "ignoring the checkpoint of a deleted stream of the same name; \
                             reading the shard from its trim horizon"
                        );
                    }
                    !stale
                })
                .map(|c| c.sequence_number);
                let closed = shard
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some();
                self.stats.shards_read.fetch_add(1, Ordering::Relaxed);
                if after.is_some() {
                    self.stats.shards_resumed.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(
                    stream = %self.cfg.stream_name,
                    shard_id = id,
                    after = after.as_deref().unwrap_or("TRIM_HORIZON"),
                    closed,
                    "reading shard"
                );
                running.insert(id.to_owned());
                let reader = self.clone();
                let (id, out, stop) = (id.to_owned(), out.clone(), stop.clone());
                tasks.spawn(async move { reader.read_shard(id, after, closed, out, stop).await });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (id, end) = joined.map_err(|e| SourceError::Panicked(e.to_string()))??;
            running.remove(&id);
            if end == ShardEnd::Ended {
                self.stats.shards_ended.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(shard_id = %id, end = ?end, "shard read");
            finished.insert(id);
        }
        Ok(self.report())
    }

    /// Every shard of the stream (`ListShards`, all pages).
    async fn list_shards(&self) -> Result<Vec<Shard>, SourceError> {
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        loop {
            // A page token replaces the stream name (the API rejects both together).
            let req = match &next {
                Some(token) => self.client.list_shards().next_token(token),
                None => self.client.list_shards().stream_name(&self.cfg.stream_name),
            };
            let out = self.retrying("ListShards", || req.clone().send()).await?;
            shards.extend(out.shards().iter().cloned());
            match out.next_token() {
                Some(t) => next = Some(t.to_owned()),
                None => return Ok(shards),
            }
        }
    }

    /// An iterator after `after`, or at the trim horizon.
    async fn iterator(&self, shard_id: &str, after: Option<&str>) -> Result<String, SourceError> {
        let mut req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.cfg.stream_name)
            .shard_id(shard_id);
        req = match after {
            Some(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = self
            .retrying("GetShardIterator", || req.clone().send())
            .await?;
        out.shard_iterator()
            .map(str::to_owned)
            .ok_or_else(|| SourceError::Kinesis {
                operation: "GetShardIterator",
                stream: self.cfg.stream_name.clone(),
                detail: format!("no iterator returned for shard {shard_id}"),
                hint: "",
            })
    }

    /// Reads one shard until its end, or its tip after the stop.
    async fn read_shard(
        self,
        shard_id: String,
        mut last: Option<String>,
        closed: bool,
        out: mpsc::Sender<StreamEntry>,
        stop: watch::Receiver<bool>,
    ) -> Result<(String, ShardEnd), SourceError> {
        let mut iterator = self.iterator(&shard_id, last.as_deref()).await?;
        let mut next_call = Instant::now();
        let mut failures = 0u32;
        // When the stop was first seen, for DRAIN_TIMEOUT.
        let mut stopped_at: Option<Instant> = None;
        loop {
            tokio::time::sleep_until(next_call).await;
            // Sampled before the call: a call issued after the stop sees every record put
            // before it.
            let stopping = *stop.borrow();
            let started = Instant::now();
            next_call = started + self.cfg.poll_interval;
            self.stats.get_records_calls.fetch_add(1, Ordering::Relaxed);
            let result = self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(GET_RECORDS_LIMIT)
                .send()
                .await;
            let output = match result {
                Ok(o) => o,
                Err(e) => {
                    if e.code() == Some("ExpiredIteratorException") {
                        self.stats.expired_iterators.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(shard_id, "iterator expired; renewing it");
                        iterator = self.iterator(&shard_id, last.as_deref()).await?;
                        continue;
                    }
                    let throttled = e.code() == Some("ProvisionedThroughputExceededException");
                    match classify(&e) {
                        SinkError::Retriable(detail) if failures < MAX_CONSECUTIVE_FAILURES => {
                            if throttled {
                                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                            }
                            tracing::debug!(shard_id, detail, "GetRecords failed; backing off");
                            next_call = Instant::now() + backoff(failures);
                            failures += 1;
                            continue;
                        }
                        _ => return Err(self.error("GetRecords", &e)),
                    }
                }
            };
            failures = 0;
            let mut bytes = 0u64;
            for r in output.records() {
                let data = r.data().as_ref();
                bytes += data.len() as u64;
                let entry = StreamEntry {
                    shard_id: shard_id.clone(),
                    sequence_number: r.sequence_number().to_owned(),
                    partition_key: r.partition_key().unwrap_or_default().to_owned(),
                    data: Bytes::copy_from_slice(data),
                    approximate_arrival_ms: r
                        .approximate_arrival_timestamp()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
                };
                last = Some(entry.sequence_number.clone());
                out.send(entry)
                    .await
                    .map_err(|_| SourceError::ConsumerGone {
                        shard: shard_id.clone(),
                    })?;
            }
            let n = output.records().len() as u64;
            self.stats.records_read.fetch_add(n, Ordering::Relaxed);
            self.stats.bytes_read.fetch_add(bytes, Ordering::Relaxed);
            // The shard's read bandwidth: a call that returned B bytes uses B / 2 MiB of a
            // second.
            let bandwidth =
                Duration::from_secs_f64(bytes as f64 / SHARD_READ_BYTES_PER_SECOND as f64);
            next_call = next_call.max(started + bandwidth);
            let Some(next) = output.next_shard_iterator() else {
                return Ok((shard_id, ShardEnd::Ended));
            };
            iterator = next.to_owned();
            if n == 0 && output.millis_behind_latest().unwrap_or(0) == 0 {
                if closed {
                    // At the end of a closed shard (AWS also returns no next iterator).
                    return Ok((shard_id, ShardEnd::Ended));
                }
                if stopping {
                    let put = self.put.as_ref().and_then(|p| p.get(&shard_id));
                    let caught_up = match (&put, &last) {
                        (None, _) => true,
                        (Some(put), Some(read)) => ingest::kinesis::sequence_cmp(read, put).is_ge(),
                        (Some(_), None) => false,
                    };
                    if caught_up {
                        return Ok((shard_id, ShardEnd::Drained));
                    }
                    let since = *stopped_at.get_or_insert(started);
                    if started.duration_since(since) > DRAIN_TIMEOUT {
                        return Err(SourceError::Kinesis {
                            operation: "GetRecords",
                            stream: self.cfg.stream_name.clone(),
                            detail: format!(
                                "shard {shard_id} stayed at {} for {DRAIN_TIMEOUT:?} after the \
                                 producers stopped, short of sequence number {} that the run put",
                                last.as_deref().unwrap_or("its start"),
                                put.unwrap_or_default()
                            ),
                            hint: "; a later run reads the rest (at least once)",
                        });
                    }
                }
            }
        }
    }

    /// Sends a request, retrying retriable failures with backoff.
    async fn retrying<T, E, F, Fut>(
        &self,
        operation: &'static str,
        send: F,
    ) -> Result<T, SourceError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<
                Output = Result<
                    T,
                    aws_sdk_kinesis::error::SdkError<
                        E,
                        aws_sdk_kinesis::config::http::HttpResponse,
                    >,
                >,
            >,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut failures = 0;
        loop {
            match send().await {
                Ok(out) => return Ok(out),
                Err(e) => match classify(&e) {
                    SinkError::Retriable(detail) if failures < MAX_CONSECUTIVE_FAILURES => {
                        tracing::debug!(operation, detail, "Kinesis call failed; backing off");
                        tokio::time::sleep(backoff(failures)).await;
                        failures += 1;
                    }
                    _ => return Err(self.error(operation, &e)),
                },
            }
        }
    }

    /// A call's error, with what to do about it.
    fn error<E>(
        &self,
        operation: &'static str,
        e: &aws_sdk_kinesis::error::SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>,
    ) -> SourceError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let hint = match e.code() {
            Some("ResourceNotFoundException") => {
                "; create the stream (aws kinesis create-stream --stream-name NAME --shard-count 1) \
                 or check AWS_REGION / AWS_ENDPOINT_URL"
            }
            Some("AccessDeniedException") | Some("UnrecognizedClientException") => {
                "; check the AWS credentials and that they may read the stream"
            }
            _ => "",
        };
        SourceError::Kinesis {
            operation,
            stream: self.cfg.stream_name.clone(),
            detail: ingest::aws::brief(e),
            hint,
        }
    }
}

/// Full jitter: uniform in `[0, min(BACKOFF_MAX, BACKOFF_BASE·2^attempt)]`.
fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_never_exceeds_its_cap() {
        for attempt in 0..40 {
            assert!(backoff(attempt) <= BACKOFF_MAX);
        }
        assert!(backoff(0) <= BACKOFF_BASE);
    }

    #[test]
    fn checkpoint_keys_are_per_stream_and_shard() {
        assert_eq!(
            checkpoint_key("_checkpoint/kinesis/", "s", "shardId-000000000001").as_ref(),
            "_checkpoint/kinesis/s/shardId-000000000001"
        );
    }

    #[tokio::test]
    async fn checkpoints_are_written_only_when_a_position_moves_and_read_back() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(checkpoint(
            store.clone(),
            CHECKPOINT_PREFIX.into(),
            "s".into(),
            Some(1),
            rx,
        ));
        let pos = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        tx.send(pos(&[("shard-a", "10")])).unwrap();
        tx.send(pos(&[("shard-a", "10"), ("shard-b", "7")]))
            .unwrap();
        tx.send(pos(&[("shard-a", "12"), ("shard-b", "7")]))
            .unwrap();
        drop(tx);
        assert_eq!(task.await.unwrap().unwrap(), 3, "a10, b7, a12");
        let a = read_checkpoint(store.as_ref(), CHECKPOINT_PREFIX, "s", "shard-a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.sequence_number, "12");
        assert_eq!(
            read_checkpoint(store.as_ref(), CHECKPOINT_PREFIX, "s", "shard-c")
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_corrupt_checkpoint_is_an_error_that_says_what_to_do() {
        let store = object_store::memory::InMemory::new();
        let key = checkpoint_key(CHECKPOINT_PREFIX, "s", "x");
        store
            .put(&key, PutPayload::from_static(b"nope"))
            .await
            .unwrap();
        let err = read_checkpoint(&store, CHECKPOINT_PREFIX, "s", "x")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("delete the object"), "{err}");
    }
}

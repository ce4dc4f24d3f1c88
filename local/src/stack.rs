//! The local stack: every AWS service of the pipeline emulated in this process, running the
//! same handler code as the Lambdas.
//!
//! ```text
//! IoT rule (emulated) ─invoke─▶ ingest handler ─put─▶ LocalStream (Kinesis semantics)
//!     ─▶ Firehose emulator ─invoke─▶ transform handler ─▶ Parquet (telemetry/dt=/hour=/)
//! Scheduler (emulated EventBridge) ─invoke─▶ rollup handler ─▶ stats/window=1m/
//! ```
//!
//! Shutdown order matters for accounting: the producers stop first, the stream is closed so
//! that the Firehose emulator drains and flushes, then a final rollup runs over everything.
//!
//! The stream can also be real ([`StreamTarget`]): with `kinesis:NAME` ingest puts into a
//! Kinesis data stream (`KinesisSink`) and a checkpointing reader
//! ([`crate::kinesis_reader`]) feeds the same Firehose emulator; at the end the reader
//! drains every shard to its tip, and its checkpoints (under `_checkpoint/kinesis/`) are
//! written only for records whose Parquet is complete. With `firehose:NAME` ingest puts
//! into a Firehose delivery stream (`FirehoseSink`) and nothing is emulated after it: on
//! AWS that delivery stream transforms, converts and writes Parquet itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use analytics::requests::CountingStore;
use anyhow::Context as _;
use aws_lambda_events::firehose::KinesisFirehoseEvent;
use futures::FutureExt;
use ingest::sink::{BatchLimits, EntryOutcome, SinkError, SinkRecord};
use ingest::{
    AnySink, FirehoseSink, Ingest, IngestConfig, IngestReport, IotRuleEvent, KinesisSink,
    RecordSink,
};
use lambda_runtime::{Context, LambdaEvent};
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;
use telemetry::metering::{
    FIREHOSE_INGEST_UNIT_BYTES, IOT_MESSAGE_UNIT_BYTES, KINESIS_ON_DEMAND_UNIT_BYTES, units,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::event_source::{EventSourceConfig, EventSourceReport};
use crate::firehose::{self, DurablePositions, FirehoseConfig, FirehoseReport};
use crate::journal::{Journal, Recovered};
use crate::kinesis_reader::{self, KinesisSource, KinesisSourceConfig, SourceError, SourceReport};
use crate::meter::{INGEST, Meter, TRANSFORM, Usage};
use crate::scheduler::{LocalRollup, Scheduler};
use crate::stream::{LocalStream, merge_shards};
use crate::topology::Topology;
use telemetry::stream::StreamEntry;

/// Settings of the local stack.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Where the data goes: a directory standing in for the bucket, or `s3://bucket/prefix`.
    pub data: String,
    /// Shards of the local stream.
    pub shards: usize,
    /// Records one shard holds before producers wait.
    pub shard_capacity: usize,
    /// The emulated Firehose delivery stream.
    pub firehose: FirehoseConfig,
    /// How often the emulated scheduler runs the rollup (`None`: only at the end).
    pub rollup_every: Option<Duration>,
    /// Ingest settings (validation window, retries).
    pub ingest: IngestConfig,
    /// Which stream ingest writes into.
    pub stream: StreamTarget,
    /// Seeded faults of the emulated services (`--inject`), if any.
    pub faults: Option<crate::faults::FaultPlan>,
    /// The path from the rule to Firehose ([`Topology`]; `firehose` needs the local stream).
    pub topology: Topology,
    /// Where the write-ahead journals of the in-memory services go ([`crate::journal`]):
    /// Firehose's DirectPut input and the local stream keep what they accepted across a
    /// killed run, and a run on the same directory
    /// delivers it; in topology kinesis the stream's checkpoint is the event-source
    /// mapping's progress. One subdirectory per topology and service. `None`: memory only
    /// (`replay` reads its file again instead).
    pub journal: Option<std::path::PathBuf>,
}

/// The stream ingest writes into (`--stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamTarget {
    /// The in-process stream with Kinesis semantics, then the emulated Firehose.
    Local,
    /// A Kinesis data stream (`PutRecords`), read back by [`KinesisSource`] into the
    /// emulated Firehose.
    Kinesis(String),
    /// A Firehose delivery stream (`PutRecordBatch`); the rest happens in that delivery
    /// stream, not here.
    Firehose(String),
}

impl std::str::FromStr for StreamTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let named = |name: &str, kind: &str| {
            let ok = !name.is_empty()
                && name.len() <= 128
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if ok {
                Ok(name.to_owned())
            } else {
                Err(format!(
                    "{kind} stream name {name:?} must be 1-128 characters of A-Z a-z 0-9 _ . -"
                ))
            }
        };
        match s.split_once(':') {
            None if s == "local" => Ok(Self::Local),
            Some(("kinesis", name)) => named(name, "Kinesis").map(Self::Kinesis),
            Some(("firehose", name)) => named(name, "Firehose").map(Self::Firehose),
            _ => Err(format!(
                "{s:?} is not a stream: use local, kinesis:NAME or firehose:NAME"
            )),
        }
    }
}

impl std::fmt::Display for StreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local => f.write_str("local"),
            Self::Kinesis(n) => write!(f, "kinesis:{n}"),
            Self::Firehose(n) => write!(f, "firehose:{n}"),
        }
    }
}

/// What the run's summary says happens to records put into a Firehose delivery stream.
pub const FIREHOSE_NOTE: &str = "records were put into the Firehose delivery stream; on AWS it \
     invokes the transform Lambda, converts to Parquet and writes telemetry/dt=/hour=/ in its \
     bucket after its buffering interval (60-900 s), so no Parquet is written by this run. An \
     AWS-compatible server such as moto only stores each PutRecordBatch as one object of raw \
     record bytes in the delivery stream's bucket: no transform, no Parquet.";

/// The record sink ingest writes through: the local stream or an AWS one.
pub enum StackSink {
    /// The in-process stream, and the faults injected into its put calls.
    Local(LocalStream, Option<Arc<crate::faults::Injector>>),
    /// Kinesis or Firehose; `counters` meter what Firehose direct put ingests.
    Aws {
        /// The SDK sink.
        sink: AnySink,
        /// Where Firehose direct-put bytes are counted (cost table).
        counters: Arc<Counters>,
    },
    /// The emulated Firehose's DirectPut input (topology kinesis: ingest's
    /// `PutRecordBatch`), metered like Firehose ingestion, and the faults injected into its
    /// put calls.
    DirectPut(DirectPutInput, Option<Arc<crate::faults::Injector>>),
}

/// The emulated Firehose's DirectPut input (`PutRecord` / `PutRecordBatch`): numbers each
/// record, writes it to the run's journal if it keeps one ([`crate::journal`]), and hands
/// it to the delivery stream. With a journal that happens under one lock, so that records
/// enter Firehose (and the journal) in sequence order, which the journal's checkpoint (the
/// durable positions) relies on; without one, concurrent puts do not wait for each other.
pub struct DirectPut {
    tx: mpsc::Sender<StreamEntry>,
    next: AtomicU64,
    /// Held from numbering to sending when there is a journal.
    order: tokio::sync::Mutex<()>,
    journal: Option<Arc<Journal>>,
}

/// One message for the emulated IoT rule ([`Stack::on_messages`]).
#[derive(Debug)]
pub struct RuleMessage {
    /// The event IoT Core would send.
    pub event: IotRuleEvent,
    /// The payload's size in bytes (what IoT Core meters a message by).
    pub payload_len: usize,
    /// It was published to the rule's Basic Ingest topic (not metered as a message).
    pub basic_ingest: bool,
}

/// A DirectPut that stored nothing: Firehose's error code and message.
struct PutFailed {
    code: &'static str,
    message: String,
}

impl DirectPut {
    /// The input `tx` of a delivery stream, journaled when `journal` is given: the records
    /// the journal recovered are sent first, and numbering goes on after them.
    async fn start(
        tx: mpsc::Sender<StreamEntry>,
        journal: Option<(Arc<Journal>, Recovered)>,
    ) -> anyhow::Result<Self> {
        let mut next = 0;
        let journal = match journal {
            Some((j, recovered)) => {
                next = recovered
                    .last
                    .get(DIRECT_PUT_SHARD)
                    .and_then(|s| s.parse::<u64>().ok())
                    .map_or(0, |n| n + 1);
                for segment in recovered.segments() {
                    for e in segment.context("cannot read the journal: it is damaged")? {
                        tx.send(e)
                            .await
                            .map_err(|_| anyhow::anyhow!("the emulated Firehose stopped"))?;
                    }
                }
                Some(j)
            }
            None => None,
        };
        Ok(Self {
            tx,
            next: AtomicU64::new(next),
            order: tokio::sync::Mutex::new(()),
            journal,
        })
    }

    /// Stores one record (waits while the delivery stream's input is full).
    async fn put(
        &self,
        partition_key: &str,
        data: bytes::Bytes,
        arrival_ms: i64,
    ) -> Result<(), PutFailed> {
        self.put_many(vec![(partition_key.to_owned(), data, arrival_ms)])
            .await
            .map_err(|(_, f)| f)
    }

    /// Stores `records` (partition key, data, arrival) in order, numbered together and
    /// journaled with one write (waits while the delivery stream's input is full). Each
    /// record is still a put of its own to the stream it stands for; only the emulator's
    /// bookkeeping is shared. On a failure, the index of the first record not stored: none
    /// when the journal could not be written, the ones before it when the delivery stream
    /// stopped.
    async fn put_many(
        &self,
        records: Vec<(String, bytes::Bytes, i64)>,
    ) -> Result<(), (usize, PutFailed)> {
        let _order = match &self.journal {
            Some(_) => Some(self.order.lock().await),
            None => None,
        };
        let first = self.next.fetch_add(records.len() as u64, Ordering::Relaxed);
        let entries: Vec<StreamEntry> = records
            .into_iter()
            .zip(first..)
            .map(|((partition_key, data, arrival_ms), n)| StreamEntry {
                shard_id: DIRECT_PUT_SHARD.to_owned(),
                sequence_number: n.to_string(),
                partition_key,
                data,
                approximate_arrival_ms: arrival_ms,
            })
            .collect();
        if let Some(j) = &self.journal {
            j.append(&entries).map_err(|e| {
                (
                    0,
                    PutFailed {
                        code: "ServiceUnavailableException",
                        message: format!(
                            "the emulated Firehose's journal could not be written: {e}"
                        ),
                    },
                )
            })?;
        }
        for (i, entry) in entries.into_iter().enumerate() {
            self.tx.send(entry).await.map_err(|_| {
                (
                    i,
                    PutFailed {
                        code: "ServiceUnavailableException",
                        message: "the emulated Firehose delivery stream has stopped".into(),
                    },
                )
            })?;
        }
        Ok(())
    }
}

/// Ingest's sink in topology kinesis: `PutRecordBatch` into the emulated Firehose.
pub struct DirectPutInput {
    /// The delivery stream's input.
    put: Arc<DirectPut>,
    /// Where the put bytes and 5 KB units are counted.
    counters: Arc<Counters>,
}

impl RecordSink for DirectPutInput {
    fn limits(&self) -> BatchLimits {
        BatchLimits::FIREHOSE
    }

    async fn put_batch(&self, batch: &[SinkRecord]) -> Result<Vec<EntryOutcome>, SinkError> {
        let now = chrono::Utc::now().timestamp_millis();
        let records = batch
            .iter()
            .map(|r| (r.partition_key.clone(), r.data.clone(), now))
            .collect();
        let (stored, failed) = match self.put.put_many(records).await {
            Ok(()) => (batch.len(), None),
            Err((stored, f)) => (stored, Some(f)),
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        for r in &batch[..stored] {
            count_direct_put(&self.counters, r.data.len());
            outcomes.push(EntryOutcome::Ok);
        }
        if let Some(f) = failed {
            outcomes.resize(
                batch.len(),
                EntryOutcome::Failed {
                    code: f.code.into(),
                    message: f.message,
                    retriable: false,
                },
            );
        }
        Ok(outcomes)
    }
}

impl RecordSink for StackSink {
    fn limits(&self) -> BatchLimits {
        match self {
            Self::Local(s, _) => s.limits(),
            Self::Aws { sink, .. } => sink.limits(),
            Self::DirectPut(d, _) => d.limits(),
        }
    }

    async fn put_batch(&self, batch: &[SinkRecord]) -> Result<Vec<EntryOutcome>, SinkError> {
        match self {
            Self::Local(s, None) => s.put_batch(batch).await,
            Self::Local(s, Some(faults)) => faulty_put(s, faults, batch).await,
            Self::Aws { sink, counters } => {
                let outcomes = sink.put_batch(batch).await?;
                if matches!(sink, AnySink::Firehose(_)) {
                    for (r, o) in batch.iter().zip(&outcomes) {
                        if *o == EntryOutcome::Ok {
                            let len = r.data.len() as u64;
                            counters
                                .firehose_put_bytes
                                .fetch_add(len, Ordering::Relaxed);
                            counters.firehose_5kb_units.fetch_add(
                                units(r.data.len(), sink.limits().metering_unit_bytes),
                                Ordering::Relaxed,
                            );
                        }
                    }
                }
                Ok(outcomes)
            }
            Self::DirectPut(d, None) => d.put_batch(batch).await,
            Self::DirectPut(d, Some(faults)) => faulty_put(d, faults, batch).await,
        }
    }
}

/// The journaled service of Firehose's DirectPut input.
const DIRECT_PUT_JOURNAL: &str = "directput";
/// The journaled service of the local stream.
const STREAM_JOURNAL: &str = "stream";
/// Every topology's journals (`<topology>/<service>` under [`StackConfig::journal`]).
const JOURNALS: [(Topology, &str); 4] = [
    (Topology::Firehose, DIRECT_PUT_JOURNAL),
    (Topology::Kinesis, DIRECT_PUT_JOURNAL),
    (Topology::Kinesis, STREAM_JOURNAL),
    (Topology::PerMessage, STREAM_JOURNAL),
];

/// Refuses to start while another topology's journal holds records a killed run accepted:
/// this run would not deliver them, and nobody would notice them waiting.
fn check_other_journals(cfg: &StackConfig) -> anyhow::Result<()> {
    let Some(root) = &cfg.journal else {
        return Ok(());
    };
    for (topology, service) in JOURNALS {
        if topology == cfg.topology {
            continue;
        }
        let dir = root.join(topology.name()).join(service);
        let n = crate::journal::pending(&dir)
            .with_context(|| format!("cannot read the journal {}", dir.display()))?;
        anyhow::ensure!(
            n == 0,
            "{n} records that a killed --topology {topology} run had accepted wait in {}: \
             run `iotpipe up --topology {topology}` on this --data first to deliver them (or \
             delete that directory to drop them)",
            dir.display()
        );
    }
    Ok(())
}

/// Opens this topology's journal of `service` under [`StackConfig::journal`], if the run
/// keeps one.
fn open_journal(
    cfg: &StackConfig,
    service: &str,
) -> anyhow::Result<Option<(Arc<Journal>, Recovered)>> {
    let Some(root) = &cfg.journal else {
        return Ok(None);
    };
    let dir = root.join(cfg.topology.name()).join(service);
    let (journal, recovered) = Journal::open(&dir).with_context(|| {
        format!(
            "cannot open the journal {}: check that the data directory is writable",
            dir.display()
        )
    })?;
    if recovered.pending > 0 {
        tracing::warn!(
            records = recovered.pending,
            journal = %dir.display(),
            "delivering again what a run that did not finish had accepted"
        );
    }
    Ok(Some((Arc::new(journal), recovered)))
}

/// Spawns the emulated Firehose on `input`; with a journal, also the task that makes its
/// durable positions the journal's checkpoint (it ends when Firehose does).
fn spawn_firehose(
    cfg: &StackConfig,
    input: mpsc::Receiver<StreamEntry>,
    store: Arc<dyn ObjectStore>,
    invoke: firehose::Invoke,
    journal: Option<&Arc<Journal>>,
) -> (
    JoinHandle<Result<FirehoseReport, firehose::EmulatorError>>,
    Option<JoinHandle<()>>,
) {
    let Some(journal) = journal else {
        let task = tokio::spawn(firehose::run(cfg.firehose.clone(), input, store, invoke));
        return (task, None);
    };
    let (tx, rx) = mpsc::unbounded_channel::<DurablePositions>();
    let task = tokio::spawn(firehose::run_with_progress(
        cfg.firehose.clone(),
        input,
        store,
        invoke,
        Some(tx),
    ));
    (task, Some(checkpoint_journal(journal.clone(), rx)))
}

/// The task that makes a consumer's durable positions `journal`'s checkpoint; it ends when
/// the consumer drops its sender.
fn checkpoint_journal(
    journal: Arc<Journal>,
    mut positions: mpsc::UnboundedReceiver<DurablePositions>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(p) = positions.recv().await {
            if let Err(e) = journal.checkpoint(&p) {
                tracing::warn!(error = %e, "could not write the journal's checkpoint: a rerun \
                    delivers more again (duplicates the rollup removes)");
            }
        }
    })
}

/// The shard id of records put into the emulated Firehose directly (no stream).
const DIRECT_PUT_SHARD: &str = "directput";

/// Meters one record put into Firehose directly: its bytes and 5 KB ingestion units.
fn count_direct_put(counters: &Counters, len: usize) {
    counters
        .firehose_put_bytes
        .fetch_add(len as u64, Ordering::Relaxed);
    counters
        .firehose_5kb_units
        .fetch_add(units(len, FIREHOSE_INGEST_UNIT_BYTES), Ordering::Relaxed);
}

/// A put into an emulated service with the injected faults (see [`crate::faults`]).
async fn faulty_put(
    stream: &impl RecordSink,
    faults: &crate::faults::Injector,
    batch: &[SinkRecord],
) -> Result<Vec<EntryOutcome>, SinkError> {
    use crate::faults::PutFault;
    match faults.put(batch.len()) {
        PutFault::Throttle => Err(SinkError::Retriable(
            "ProvisionedThroughputExceededException: Rate exceeded (injected)".into(),
        )),
        PutFault::Timeout => {
            // Stored, but the answer is lost: the caller retries, the stream holds both.
            stream.put_batch(batch).await?;
            Err(SinkError::Retriable(
                "timeout: no response within the client's timeout (injected; the records \
                 may have been stored)"
                    .into(),
            ))
        }
        PutFault::Entries(failed) => {
            let kept: Vec<SinkRecord> = batch
                .iter()
                .zip(&failed)
                .filter(|(_, f)| !**f)
                .map(|(r, _)| r.clone())
                .collect();
            let mut stored = stream.put_batch(&kept).await?.into_iter();
            Ok(failed
                .iter()
                .map(|f| {
                    if *f {
                        EntryOutcome::Failed {
                            code: "ProvisionedThroughputExceededException".into(),
                            message: "Rate exceeded (injected)".into(),
                            retriable: true,
                        }
                    } else {
                        stored.next().unwrap_or(EntryOutcome::Failed {
                            code: "StreamClosed".into(),
                            message: "the emulated service gave fewer answers than entries".into(),
                            retriable: false,
                        })
                    }
                })
                .collect())
        }
    }
}

/// Opens the data location: a directory (created if needed) or `s3://bucket/prefix`
/// (region and `AWS_ENDPOINT_URL` from the `AWS_*` environment; credentials from the AWS
/// SDK's default chain, profiles included ([`crate::s3_credentials`]), like the run's
/// Kinesis and Firehose clients).
pub fn open_store(data: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    // One provider for the process: a run opens its data location several times (the
    // stack, the ledger, the run record, the dashboard), and each provider would build the
    // chain (reading the profile files) and fetch the credentials again.
    static CREDENTIALS: std::sync::OnceLock<Arc<crate::s3_credentials::SdkCredentials>> =
        std::sync::OnceLock::new();
    let credentials = Arc::clone(CREDENTIALS.get_or_init(Arc::default));
    let region = match telemetry::store::StoreLocation::parse(data) {
        Ok(telemetry::store::StoreLocation::S3 { .. }) => s3_fallback_region(data),
        _ => None,
    };
    telemetry::store::open_store_with_credentials(data, credentials, region)
        .with_context(|| format!("opening the data location {data}"))
}

/// S3's region when no `AWS_REGION` / `AWS_DEFAULT_REGION` is set: the profile's, as the
/// run's SDK clients take it. Looked up once per process, and said once, with where it
/// came from: a wrong region fails every request, so the user should see which was used.
fn s3_fallback_region(data: &str) -> Option<String> {
    static REGION: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REGION
        .get_or_init(|| {
            let from_env = ["AWS_REGION", "AWS_DEFAULT_REGION"].iter().find_map(|k| {
                std::env::var(k)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| (*k, v))
            });
            if let Some((key, region)) = from_env {
                tracing::info!("data location {data}: S3 region {region} (from {key})");
                return None;
            }
            let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
            match crate::s3_credentials::profile_region() {
                Some(region) => {
                    tracing::info!(
                        "data location {data}: S3 region {region} (from the profile {profile})"
                    );
                    Some(region)
                }
                None => {
                    tracing::warn!(
                        "data location {data}: no AWS_REGION and no region in the profile \
                         {profile}, so S3 requests are signed for us-east-1: set AWS_REGION to \
                         the bucket's region if it is elsewhere"
                    );
                    None
                }
            }
        })
        .clone()
}

/// [`open_store`] for commands that read what a run wrote (query, ledger, rollup, compact,
/// requeue, dashboard): a local directory that does not exist is a mistyped `--data`, not
/// an empty pipeline, so it is an error that says so instead of being created.
pub fn open_existing_store(data: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    if let Ok(telemetry::store::StoreLocation::Local(dir)) =
        telemetry::store::StoreLocation::parse(data)
        && !dir.is_dir()
    {
        anyhow::bail!(
            "the data location {data} is not a directory: give --data (or IOTPIPE_DATA) the \
             directory `iotpipe up` or `iotpipe replay` wrote (default ./data), or an \
             s3://bucket/prefix"
        );
    }
    open_store(data)
}

/// Counters of what crossed the emulated services, in AWS's metering units.
#[derive(Debug, Default)]
pub struct Counters {
    /// MQTT messages the rule received (or replay lines).
    pub rule_triggers: AtomicU64,
    /// Those messages in 5 KB units (none for a Basic Ingest topic).
    pub iot_message_units: AtomicU64,
    /// Those messages in 5 KB units whatever their topic: rules triggered and actions
    /// executed are metered in these.
    pub rule_units: AtomicU64,
    /// Bytes of those messages' payloads.
    pub publish_bytes: AtomicU64,
    /// Records read by Firehose from the stream, in 1 KB units.
    pub kinesis_kb_units: AtomicU64,
    /// Bytes read by Firehose from the stream.
    pub kinesis_bytes: AtomicU64,
    /// Firehose records in 5 KB units.
    pub firehose_5kb_units: AtomicU64,
    /// Scheduler invocations.
    pub scheduler_invocations: AtomicU64,
    /// Bytes put into a Firehose delivery stream directly (`--stream firehose:NAME`).
    pub firehose_put_bytes: AtomicU64,
    /// Ingest invocations that failed (a sink outage, an unwritable quarantine): their
    /// payloads were neither streamed nor quarantined, so the run fails at its end.
    pub ingest_failures: AtomicU64,
    /// The first of those failures' errors.
    pub first_ingest_failure: std::sync::Mutex<Option<String>>,
    /// Failed invocations' payloads kept under `errors/ingest-failed/` (the local DLQ).
    pub dead_letters: AtomicU64,
    /// Failed invocations whose payload could not be kept either.
    pub dead_letters_lost: AtomicU64,
    /// Every rollup invocation's span (one per schedule period, plus the final one): what
    /// dates a reading's arrival in the statistics.
    pub rollup_runs: std::sync::Mutex<Vec<telemetry::metering::RollupRun>>,
    /// Parquet rows the raw transform wrote itself: readings of device batches in another
    /// event hour than their record's (topology firehose, `transform::raw`).
    pub split_rows: AtomicU64,
    /// The Parquet objects holding them.
    pub split_files: AtomicU64,
    /// Messages whose rule action (topologies firehose and kinesis: the put into Firehose
    /// or the stream) failed: handed to the rule's error action, the run fails at its end.
    pub rule_action_failures: AtomicU64,
    /// The first of those failures' errors.
    pub first_rule_action_failure: std::sync::Mutex<Option<String>>,
    /// Those the error action could not keep either (lost: the run says so).
    pub rule_errors_lost: AtomicU64,
}

/// What the emulated IoT rule's action does with each message, per topology.
enum RuleAction {
    /// `per-message`: invoke the ingest function, which puts into the stream.
    Ingest(Arc<Ingest<StackSink>>),
    /// `firehose`: the rule's Firehose action puts the raw payload into the emulated
    /// delivery stream (DirectPut); no ingest runs.
    DirectPut(DirectPut),
    /// `kinesis`: the rule's Kinesis action puts the raw payload into the emulated stream,
    /// which the event-source mapping ([`crate::event_source`]) reads for ingest.
    Kinesis(LocalStream),
}

/// The Kinesis reader of a `kinesis:NAME` run and its checkpointer.
struct KinesisReader {
    /// Tells the reader the producers have stopped: drain to the tips and end.
    stop: watch::Sender<bool>,
    /// The reader.
    task: JoinHandle<Result<SourceReport, SourceError>>,
    /// Writes checkpoints as the Firehose emulator reports durable positions.
    checkpointer: JoinHandle<Result<u64, SourceError>>,
}

/// The running stack.
pub struct Stack {
    /// The object store (the "bucket"), its requests counted as S3 bills them.
    pub store: Arc<dyn ObjectStore>,
    /// The counts of [`Stack::store`]'s requests.
    s3: CountingStore,
    /// Per-function invocation figures.
    pub meter: Meter,
    /// Service counters.
    pub counters: Arc<Counters>,
    /// Sum of every ingest invocation's report.
    pub ingested: Arc<std::sync::Mutex<IngestReport>>,
    /// What the emulated IoT rule's action does with a message (per the topology).
    action: RuleAction,
    /// The emulated Firehose (absent with a real Firehose delivery stream).
    firehose: Option<JoinHandle<Result<FirehoseReport, firehose::EmulatorError>>>,
    /// The Kinesis reader (only with `kinesis:NAME`).
    kinesis: Option<KinesisReader>,
    /// The event-source mapping invoking ingest (topology kinesis).
    event_source: Option<JoinHandle<EventSourceReport>>,
    stream: StreamTarget,
    /// The emulated EventBridge Scheduler (absent when rollups run only at the end).
    scheduler: Option<Scheduler>,
    started: Instant,
    /// The injected faults (`--inject`), counted for the report.
    faults: Option<Arc<crate::faults::Injector>>,
    /// Apply the consumers' durable positions to the journals as their checkpoints; each
    /// ends when its consumer does.
    journal_tasks: Vec<JoinHandle<()>>,
    topology: Topology,
    /// The rollup functions and their units queue (settings read once at start: the
    /// schedule's runs and the final one use the same).
    rollup: Arc<LocalRollup>,
}

/// What the stack did, at the end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StackReport {
    /// Sum of the ingest invocations.
    pub ingest: IngestReport,
    /// The emulated Firehose's accounting.
    pub firehose: FirehoseSummary,
    /// The final rollup.
    pub rollup: Option<analytics::RollupReport>,
    /// Usage in AWS's metering units.
    pub usage: Usage,
    /// The stream ingest wrote into (`local`, `kinesis:NAME`, `firehose:NAME`).
    pub stream: String,
    /// What the Kinesis reader did (`kinesis:NAME` only).
    pub kinesis: Option<KinesisSummary>,
    /// What happened after the stream, when this run could not do it itself.
    pub note: Option<String>,
    /// The faults injected into the emulated services (`--inject`), if any.
    pub faults: Option<crate::faults::FaultCounts>,
    /// The topology the run took.
    pub topology: String,
    /// The run's rollup invocations, in order.
    pub rollup_runs: Vec<telemetry::metering::RollupRun>,
    /// What the event-source mapping did (topology kinesis).
    pub event_source: Option<EventSourceReport>,
    /// Messages the rule handed to its error action (their action failed), if any.
    pub rule_errors: Option<RuleErrors>,
}

/// Messages whose rule action failed (topologies firehose and kinesis), for the summary;
/// [`RuleErrors::failure`] is what fails the run once the summary is out.
#[derive(Debug, Clone, Serialize)]
pub struct RuleErrors {
    /// Messages handed to the error action.
    pub failed: u64,
    /// Those kept under [`telemetry::layout::RULE_ERROR_PREFIX`].
    pub kept: u64,
    /// The first failure's action and error.
    pub first_error: String,
}

impl RuleErrors {
    fn of(counters: &Counters) -> Option<Self> {
        let failed = counters.rule_action_failures.load(Ordering::Relaxed);
        (failed > 0).then(|| Self {
            failed,
            kept: failed - counters.rule_errors_lost.load(Ordering::Relaxed),
            first_error: counters
                .first_rule_action_failure
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_default(),
        })
    }

    /// The error that fails the run: how many, the first cause, where they are kept, and
    /// what to run.
    pub fn failure(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "the IoT rule's action failed for {} message(s) (first: {}); the rules engine does \
             not retry an action, it hands the message to the rule's error action (on AWS the \
             IotRuleActionFailureAlarm fires). {} of them are kept under {}/; what was \
             delivered is in Parquet. Fix the cause, then run `iotpipe requeue --data <the \
             same --data>` with the same --topology: the rollup de-duplicates, so requeuing \
             twice is harmless.",
            self.failed,
            self.first_error,
            self.kept,
            telemetry::layout::RULE_ERROR_PREFIX
        )
    }
}

/// The Kinesis reader's figures, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct KinesisSummary {
    /// What the reader did.
    #[serde(flatten)]
    pub read: SourceReport,
    /// Checkpoint objects written (`_checkpoint/kinesis/<stream>/<shard>`).
    pub checkpoints_written: u64,
}

/// The Firehose emulator's figures, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct FirehoseSummary {
    /// Records read from the stream.
    pub records_in: u64,
    /// Records the transform answered `Ok`.
    pub ok: u64,
    /// Records it answered `Dropped` (duplicates within an invocation).
    pub dropped: u64,
    /// Records it answered `ProcessingFailed` (kept under the error prefix).
    pub processing_failed: u64,
    /// Parquet rows written.
    pub rows_written: u64,
    /// Parquet files written.
    pub files: usize,
    /// Error objects written.
    pub error_objects: u64,
    /// Parquet rows the raw transform wrote itself, in their own hour's partition: readings
    /// of device batches spanning event hours (topology firehose; `transform::raw`).
    pub split_rows: u64,
    /// The Parquet objects holding them.
    pub split_files: u64,
}

impl Stack {
    /// Starts the stream, the Firehose emulator and the scheduler. With an AWS stream it
    /// loads the AWS configuration the standard way (`AWS_REGION`, credentials,
    /// `AWS_ENDPOINT_URL`) and checks that the stream exists.
    pub async fn start(cfg: StackConfig) -> anyhow::Result<Self> {
        check_other_journals(&cfg)?;
        // A bad rollup setting fails now, not after the run's data went through.
        let mut rollup = LocalRollup::from_env(|var| std::env::var(var).ok())?;
        rollup.cfg.read_concurrency = crate::scheduler::read_concurrency_for(&cfg.data);
        let rollup = Arc::new(rollup);
        // What S3 would bill: every request of the services that use S3 on AWS (Firehose's
        // delivery, the functions, the new-object markers), counted by class. The Kinesis
        // reader's checkpoints are this process's own and go to the store uncounted.
        let bucket = crate::crash::from_env(open_store(&cfg.data)?)?;
        let s3 = CountingStore::new(bucket.clone());
        let store: Arc<dyn ObjectStore> = Arc::new(s3.clone());
        let meter = Meter::new();
        let counters = Arc::new(Counters::default());

        let faults = cfg
            .faults
            .map(|plan| Arc::new(crate::faults::Injector::new(plan)));
        // Records reach Firehose from a Kinesis stream (per-message), or by DirectPut
        // (kinesis: ingest's PutRecordBatch, metered by the sink).
        let from_stream = cfg.topology != Topology::Kinesis;
        let invoke = {
            let meter = meter.clone();
            let counters = counters.clone();
            let faults = faults.clone();
            Arc::new(move |event: Arc<KinesisFirehoseEvent>| {
                let meter = meter.clone();
                let counters = counters.clone();
                let faults = faults.clone();
                async move {
                    if faults.as_ref().is_some_and(|f| f.processor_error()) {
                        return Err(
                            "Lambda.ServiceException: the function failed (injected)".to_string()
                        );
                    }
                    for r in event.records.iter().filter(|_| from_stream) {
                        let len = r.data.0.len() as u64;
                        counters.kinesis_bytes.fetch_add(len, Ordering::Relaxed);
                        counters.kinesis_kb_units.fetch_add(
                            units(r.data.0.len(), KINESIS_ON_DEMAND_UNIT_BYTES),
                            Ordering::Relaxed,
                        );
                        counters.firehose_5kb_units.fetch_add(
                            units(r.data.0.len(), FIREHOSE_INGEST_UNIT_BYTES),
                            Ordering::Relaxed,
                        );
                    }
                    let ctx = Context::default();
                    // The Lambda handler takes its event by value: a copy, outside the
                    // metered time (the emulator keeps the event for the conversion).
                    let event = LambdaEvent::new(KinesisFirehoseEvent::clone(&event), ctx);
                    meter
                        .invoke(&TRANSFORM, |r: &Result<_, _>| r.is_err(), async {
                            transform::handle(event).await
                        })
                        .await
                        .map_err(|e| e.to_string())
                }
                .boxed()
            }) as firehose::Invoke
        };
        let ingested: Arc<std::sync::Mutex<IngestReport>> = Arc::default();
        if cfg.topology == Topology::Firehose {
            anyhow::ensure!(
                cfg.stream == StreamTarget::Local,
                "--topology firehose has no ingest and no stream: --stream {} needs --topology \
                 per-message",
                cfg.stream
            );
            anyhow::ensure!(
                cfg.ingest.pack == ingest::pack::Pack::Off,
                "--pack packs ingest's stream records, and --topology firehose has no ingest: \
                 drop --pack, or add --topology per-message"
            );
            let raw = Arc::new(
                transform::RawTransform::new(
                    store.clone(),
                    cfg.ingest.validation.clone(),
                    &cfg.ingest.quarantine_prefix,
                )
                .with_telemetry_prefix(&cfg.firehose.parquet.prefix),
            );
            let invoke = raw_invoke(
                raw,
                store.clone(),
                meter.clone(),
                counters.clone(),
                ingested.clone(),
                faults.clone(),
            );
            let (tx, rx) = mpsc::channel(cfg.shard_capacity.max(1));
            let journal = open_journal(&cfg, DIRECT_PUT_JOURNAL)?;
            let (firehose, journal_task) = spawn_firehose(
                &cfg,
                rx,
                store.clone(),
                invoke,
                journal.as_ref().map(|(j, _)| j),
            );
            let put = DirectPut::start(tx, journal).await?;
            let mut stack = Self {
                store,
                s3,
                meter,
                counters,
                ingested,
                action: RuleAction::DirectPut(put),
                firehose: Some(firehose),
                kinesis: None,
                event_source: None,
                stream: cfg.stream.clone(),
                scheduler: None,
                started: Instant::now(),
                faults,
                journal_tasks: journal_task.into_iter().collect(),
                topology: cfg.topology,
                rollup,
            };
            stack.start_scheduler(cfg.rollup_every);
            return Ok(stack);
        }
        if cfg.topology == Topology::Kinesis {
            anyhow::ensure!(
                cfg.stream == StreamTarget::Local,
                "--topology kinesis runs its stream in this process: --stream {} needs \
                 --topology per-message",
                cfg.stream
            );
            // Rule ─Kinesis action─▶ stream ─event-source mapping─▶ ingest ─DirectPut─▶ Firehose.
            // With a journal, each hop keeps what it accepted: Firehose's DirectPut input until
            // Firehose delivered it, the stream until the mapping's ingest put it into Firehose.
            let (tx, rx) = mpsc::channel(cfg.shard_capacity.max(1));
            let put_journal = open_journal(&cfg, DIRECT_PUT_JOURNAL)?;
            let (firehose, put_task) = spawn_firehose(
                &cfg,
                rx,
                store.clone(),
                invoke,
                put_journal.as_ref().map(|(j, _)| j),
            );
            let sink = StackSink::DirectPut(
                DirectPutInput {
                    put: Arc::new(DirectPut::start(tx, put_journal).await?),
                    counters: counters.clone(),
                },
                faults.clone(),
            );
            let ingest = Arc::new(Ingest::new(sink, store.clone(), cfg.ingest.clone()));
            let stream_journal = open_journal(&cfg, STREAM_JOURNAL)?;
            let (stream, readers) = match &stream_journal {
                Some((j, recovered)) => {
                    LocalStream::journaled(cfg.shards, cfg.shard_capacity, j.clone(), recovered)
                }
                None => LocalStream::new(cfg.shards, cfg.shard_capacity),
            };
            let (progress, stream_task) = match &stream_journal {
                Some((j, _)) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    (Some(tx), Some(checkpoint_journal(j.clone(), rx)))
                }
                None => (None, None),
            };
            let event_source = tokio::spawn(crate::event_source::run_with_progress(
                EventSourceConfig::default(),
                readers,
                esm_invoke(ingest, meter.clone(), counters.clone(), ingested.clone()),
                esm_on_failure(store.clone(), counters.clone()),
                progress,
            ));
            if let Some((_, recovered)) = stream_journal {
                stream.redeliver(&recovered).await?;
            }
            let mut stack = Self {
                store,
                s3,
                meter,
                counters,
                ingested,
                action: RuleAction::Kinesis(stream),
                firehose: Some(firehose),
                kinesis: None,
                event_source: Some(event_source),
                stream: cfg.stream.clone(),
                scheduler: None,
                started: Instant::now(),
                faults,
                journal_tasks: put_task.into_iter().chain(stream_task).collect(),
                topology: cfg.topology,
                rollup,
            };
            stack.start_scheduler(cfg.rollup_every);
            return Ok(stack);
        }
        let mut journal_tasks = Vec::new();
        let (sink, firehose, kinesis) = match &cfg.stream {
            StreamTarget::Local => {
                let journal = open_journal(&cfg, STREAM_JOURNAL)?;
                let (stream, readers) = match &journal {
                    Some((j, recovered)) => {
                        LocalStream::journaled(cfg.shards, cfg.shard_capacity, j.clone(), recovered)
                    }
                    None => LocalStream::new(cfg.shards, cfg.shard_capacity),
                };
                let source = merge_shards(readers, cfg.shard_capacity);
                let (firehose, task) = spawn_firehose(
                    &cfg,
                    source,
                    store.clone(),
                    invoke,
                    journal.as_ref().map(|(j, _)| j),
                );
                if let Some((_, recovered)) = journal {
                    stream.redeliver(&recovered).await?;
                }
                journal_tasks.extend(task);
                (
                    StackSink::Local(stream, faults.clone()),
                    Some(firehose),
                    None,
                )
            }
            StreamTarget::Kinesis(name) => {
                let sdk = ingest::aws::load_sdk_config().await;
                // What ingest puts, per shard: the reader drains at least that far.
                let put = ingest::kinesis::PutPositions::default();
                let reader = KinesisSource::from_sdk_config(
                    &sdk,
                    bucket.clone(),
                    KinesisSourceConfig::new(name),
                )
                .with_put_positions(put.clone());
                let created = reader.check_stream().await?;
                let (tx, rx) = mpsc::channel(cfg.shard_capacity.max(1));
                let (progress_tx, progress_rx) = mpsc::unbounded_channel();
                let firehose = tokio::spawn(firehose::run_with_progress(
                    cfg.firehose.clone(),
                    rx,
                    store.clone(),
                    invoke,
                    Some(progress_tx),
                ));
                let checkpointer = tokio::spawn(kinesis_reader::checkpoint(
                    bucket.clone(),
                    kinesis_reader::CHECKPOINT_PREFIX.to_owned(),
                    name.clone(),
                    created,
                    progress_rx,
                ));
                let (stop, stop_rx) = watch::channel(false);
                let task = tokio::spawn(async move {
                    let result = reader.run(tx, stop_rx).await;
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "the Kinesis reader stopped");
                    }
                    result
                });
                let sink = StackSink::Aws {
                    sink: AnySink::Kinesis(
                        KinesisSink::from_sdk_config(&sdk, name).with_put_positions(put),
                    ),
                    counters: counters.clone(),
                };
                let reader = KinesisReader {
                    stop,
                    task,
                    checkpointer,
                };
                (sink, Some(firehose), Some(reader))
            }
            StreamTarget::Firehose(name) => {
                let sdk = ingest::aws::load_sdk_config().await;
                let fh = FirehoseSink::from_sdk_config(&sdk, name);
                fh.check_delivery_stream()
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                let sink = StackSink::Aws {
                    sink: AnySink::Firehose(fh),
                    counters: counters.clone(),
                };
                (sink, None, None)
            }
        };

        let ingest = Arc::new(Ingest::new(sink, store.clone(), cfg.ingest.clone()));
        let mut stack = Self {
            store,
            s3,
            meter,
            counters,
            ingested,
            action: RuleAction::Ingest(ingest),
            firehose,
            kinesis,
            event_source: None,
            stream: cfg.stream.clone(),
            scheduler: None,
            started: Instant::now(),
            faults,
            journal_tasks,
            topology: cfg.topology,
            rollup,
        };
        stack.start_scheduler(cfg.rollup_every);
        Ok(stack)
    }

    /// Starts the emulated scheduler's rollups every `every` (none: only the final one).
    fn start_scheduler(&mut self, every: Option<Duration>) {
        if let Some(every) = every {
            self.scheduler = Some(Scheduler::start(
                every,
                self.store.clone(),
                self.meter.clone(),
                self.counters.clone(),
                self.rollup.clone(),
            ));
        }
    }

    /// The topology this stack runs.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// What the emulated IoT rule does for one message: invoke ingest with the event IoT
    /// Core would send. `basic_ingest`: the message was published to the rule's Basic
    /// Ingest topic (`$aws/rules/<rule>/dt/...`), which IoT Core does not meter as a
    /// message; `event.topic` is then the topic without that prefix, as `topic()` answers.
    ///
    /// Topology firehose: the rule's Firehose action instead: the raw payload goes into the
    /// emulated Firehose, and the report is empty (the transform's validation counts into
    /// [`Stack::ingested`]). Topology kinesis: the rule's Kinesis action: the raw payload
    /// goes into the emulated stream, and the report is empty (the event-source mapping's
    /// ingest invocations count into [`Stack::ingested`]).
    pub async fn on_message(
        &self,
        event: IotRuleEvent,
        payload_len: usize,
        basic_ingest: bool,
    ) -> IngestReport {
        self.count_triggers([(payload_len, basic_ingest)]);
        let ingest = match &self.action {
            RuleAction::DirectPut(put) => {
                self.put_raw(put, event).await;
                return IngestReport::default();
            }
            RuleAction::Kinesis(stream) => {
                self.put_kinesis(stream, event).await;
                return IngestReport::default();
            }
            RuleAction::Ingest(ingest) => ingest,
        };
        let result = self
            .meter
            .invoke(
                &INGEST,
                |r: &Result<_, _>| r.is_err(),
                ingest.handle_event(&event),
            )
            .await;
        match result {
            Ok(report) => {
                if let Ok(mut total) = self.ingested.lock() {
                    total.add(&report);
                }
                report
            }
            Err(e) => {
                // Lambda would retry the event; locally the error is loud, counted, and
                // fails the run at its end (`finish`).
                tracing::error!(error = %e, topic = %event.topic, "ingest invocation failed");
                dead_letter(&self.store, &self.counters, &event, &e.to_string()).await;
                count_ingest_failure(&self.counters, &e.to_string());
                IngestReport::default()
            }
        }
    }

    /// What [`Stack::on_message`] does, for each of `messages` in order. In topology
    /// firehose, unless faults are injected, the rule's Firehose actions are stored together
    /// (one journal write, one lock); each message is still its own
    /// rule trigger, action and Firehose record, metered as such.
    pub async fn on_messages(&self, messages: Vec<RuleMessage>) {
        let RuleAction::DirectPut(put) = &self.action else {
            for m in messages {
                self.on_message(m.event, m.payload_len, m.basic_ingest)
                    .await;
            }
            return;
        };
        if self.faults.is_some() {
            for m in messages {
                self.on_message(m.event, m.payload_len, m.basic_ingest)
                    .await;
            }
            return;
        }
        self.count_triggers(messages.iter().map(|m| (m.payload_len, m.basic_ingest)));
        let mut records = Vec::with_capacity(messages.len());
        let mut puts = Vec::with_capacity(messages.len());
        for m in messages {
            let record = transform::RuleRecord {
                payload: m.event.payload,
                topic: m.event.topic,
            };
            puts.push((
                String::new(),
                bytes::Bytes::from(record.to_json()),
                m.event.received_at,
            ));
            records.push((record, m.event.received_at));
        }
        let lens: Vec<usize> = puts.iter().map(|(_, data, _)| data.len()).collect();
        let (stored, failed) = match put.put_many(puts).await {
            Ok(()) => (records.len(), None),
            Err((stored, f)) => (stored, Some(format!("{}: {}", f.code, f.message))),
        };
        let bytes: usize = lens[..stored].iter().sum();
        self.counters
            .firehose_put_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if let Some(error) = failed {
            for (record, received_at) in &records[stored..] {
                self.rule_error(record, *received_at, "FirehoseAction", &error)
                    .await;
            }
        }
    }

    /// Counts a rule trigger for each message of `(payload_len, basic_ingest)` — the
    /// message itself too unless it came through Basic Ingest — adding to the shared
    /// counters once for all of them.
    fn count_triggers(&self, messages: impl IntoIterator<Item = (usize, bool)>) {
        let (mut triggers, mut bytes, mut rule_units, mut message_units) = (0, 0, 0, 0);
        for (payload_len, basic_ingest) in messages {
            let u = units(payload_len, IOT_MESSAGE_UNIT_BYTES);
            triggers += 1;
            bytes += payload_len as u64;
            rule_units += u;
            if !basic_ingest {
                message_units += u;
            }
        }
        let c = &self.counters;
        c.rule_triggers.fetch_add(triggers, Ordering::Relaxed);
        c.publish_bytes.fetch_add(bytes, Ordering::Relaxed);
        c.rule_units.fetch_add(rule_units, Ordering::Relaxed);
        c.iot_message_units
            .fetch_add(message_units, Ordering::Relaxed);
    }

    /// The rule's Kinesis action (topology kinesis): `{payload (base64), topic}` into the
    /// stream, partition key `${topic(3)}` (the device), as the template's rule puts it.
    async fn put_kinesis(&self, stream: &LocalStream, event: IotRuleEvent) {
        let received_at = event.received_at;
        let partition_key = telemetry::topic::parse_topic(&event.topic)
            .map(|t| t.device_id.to_owned())
            .unwrap_or_default();
        let record = transform::RuleRecord {
            payload: event.payload,
            topic: event.topic,
        };
        let data = bytes::Bytes::from(record.to_json());
        let len = data.len();
        let batch = [SinkRecord {
            partition_key,
            data,
        }];
        let put = match &self.faults {
            Some(f) => faulty_put(stream, f, &batch).await,
            None => stream.put_batch(&batch).await,
        };
        let error = match put.as_deref() {
            Ok([EntryOutcome::Ok]) => {
                self.counters
                    .kinesis_kb_units
                    .fetch_add(units(len, KINESIS_ON_DEMAND_UNIT_BYTES), Ordering::Relaxed);
                return;
            }
            Ok([EntryOutcome::Failed { code, message, .. }]) => format!("{code}: {message}"),
            Ok(other) => format!("{} answers for one record", other.len()),
            Err(e) => e.to_string(),
        };
        self.rule_error(&record, received_at, "KinesisAction", &error)
            .await;
    }

    /// The rule's error action: a message whose action failed is kept in AWS IoT's
    /// error-action format under [`telemetry::layout::RULE_ERROR_PREFIX`] (as the
    /// template's `ErrorAction` does), and the run fails at its end. The rules engine does
    /// not retry the action: `iotpipe requeue` brings the message home.
    async fn rule_error(
        &self,
        record: &transform::RuleRecord,
        received_at: i64,
        action: &str,
        error: &str,
    ) {
        let topic = record.topic.as_str();
        tracing::error!(
            topic,
            action,
            error,
            "the rule's action failed: to its error action"
        );
        let c = &self.counters;
        let n = c.rule_action_failures.fetch_add(1, Ordering::Relaxed);
        if n == 0
            && let Ok(mut first) = c.first_rule_action_failure.lock()
        {
            *first = Some(format!("{action}: {error}"));
        }
        let e = telemetry::RuleError::new(
            telemetry::topic::DEFAULT_RULE_NAME,
            topic,
            &record.payload,
            action,
            DELIVERY_RESOURCE,
            error,
        );
        let key =
            telemetry::RuleError::object_key(received_at, &format!("{}-{n}", std::process::id()));
        // A struct of strings always serializes.
        let body = serde_json::to_vec(&e).unwrap_or_default();
        if let Err(put) = self
            .store
            .put(&object_store::path::Path::from(key.as_str()), body.into())
            .await
        {
            tracing::error!(error = %put, key, topic, "the rule's error action failed too: the message is lost");
            c.rule_errors_lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The resource the local rule's actions name in an error-action message.
const DELIVERY_RESOURCE: &str = "local";

/// Counts a failed ingest invocation (the run fails at its end), keeping the first error.
fn count_ingest_failure(counters: &Counters, error: &str) {
    if counters.ingest_failures.fetch_add(1, Ordering::Relaxed) == 0
        && let Ok(mut first) = counters.first_ingest_failure.lock()
    {
        *first = Some(error.to_owned());
    }
}

/// The local dead-letter queue: keeps a failed invocation's payload under
/// [`telemetry::layout::INGEST_FAILED_PREFIX`] (what the ingest function's DLQ holds on
/// AWS), so that `iotpipe requeue` can bring it home once the cause is fixed.
async fn dead_letter(
    store: &Arc<dyn ObjectStore>,
    counters: &Counters,
    event: &IotRuleEvent,
    error: &str,
) {
    use base64::Engine as _;
    // The rule's payload is base64 of the raw bytes; keep the field itself if it is not.
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&event.payload)
        .unwrap_or_else(|_| event.payload.as_bytes().to_vec());
    let rec = telemetry::quarantine::QuarantineRecord::other(
        telemetry::QuarantineReason::SinkFailed,
        format!("the ingest invocation failed: {error}"),
        &event.topic,
        event.received_at,
        &raw,
    );
    let n = counters.dead_letters.fetch_add(1, Ordering::Relaxed);
    let key = telemetry::quarantine::object_key_under(
        telemetry::layout::INGEST_FAILED_PREFIX,
        event.received_at,
        &format!("{}-{n}", std::process::id()),
    );
    let body = telemetry::quarantine::to_json_lines(std::slice::from_ref(&rec));
    if let Err(e) = store
        .put(&object_store::path::Path::from(key.as_str()), body.into())
        .await
    {
        // The run fails anyway (`finish`); say that this payload is not kept either.
        tracing::error!(error = %e, key, topic = %event.topic,
            "could not keep a failed invocation's payload for requeue");
        counters.dead_letters_lost.fetch_add(1, Ordering::Relaxed);
    }
}

impl Stack {
    /// The rule's Firehose action: `{payload (base64), topic}` (the rule's SQL in the
    /// template), arrival time = the rule's receive time.
    async fn put_raw(&self, put: &DirectPut, event: IotRuleEvent) {
        use crate::faults::PutFault;
        let fault = self.faults.as_ref().map(|f| f.put(1));
        let error = match &fault {
            Some(PutFault::Throttle) => {
                Some("ThrottlingException: Rate exceeded (injected)".to_owned())
            }
            Some(PutFault::Entries(failed)) if failed.first() == Some(&true) => Some(
                "ServiceUnavailableException: Slow down (injected: the record failed)".to_owned(),
            ),
            _ => None,
        };
        let received_at = event.received_at;
        let record = transform::RuleRecord {
            payload: event.payload,
            topic: event.topic,
        };
        let data = bytes::Bytes::from(record.to_json());
        let error = match error {
            Some(e) => Some(e),
            None => {
                let len = data.len();
                if let Err(f) = put.put("", data, received_at).await {
                    Some(format!("{}: {}", f.code, f.message))
                } else {
                    self.counters
                        .firehose_put_bytes
                        .fetch_add(len as u64, Ordering::Relaxed);
                    // Stored, but the answer is lost: the rule hands the message to its
                    // error action too, and a requeue delivers it twice (the rollup
                    // de-duplicates).
                    (fault == Some(PutFault::Timeout)).then(|| {
                        "timeout: no response within the action's timeout (injected; the \
                         record was stored)"
                            .to_owned()
                    })
                }
            }
        };
        if let Some(error) = error {
            self.rule_error(&record, received_at, "FirehoseAction", &error)
                .await;
        }
    }

    /// Sum of ingest reports so far.
    pub fn ingested(&self) -> IngestReport {
        self.ingested.lock().map(|r| *r).unwrap_or_default()
    }

    /// Stops producing: closes the stream (or drains the Kinesis reader to the shards'
    /// tips), waits for Firehose to drain and flush (and the checkpoints to be written),
    /// stops the scheduler, runs a final rollup, and reports.
    pub async fn finish(self, devices: u64) -> anyhow::Result<StackReport> {
        let Stack {
            store,
            s3,
            meter,
            counters,
            ingested,
            action,
            firehose,
            kinesis,
            event_source,
            stream,
            scheduler,
            started,
            faults,
            journal_tasks,
            topology,
            rollup,
        } = self;
        // Dropping the rule's action closes what it wrote into: the Firehose emulator's
        // direct-put input (topology firehose), or the last producer handle of every local
        // shard, which the emulator then drains. A Kinesis reader is told that the
        // producers are done instead: it reads every shard to its tip, then drops its
        // sender, which ends the emulator.
        drop(action);
        // Topology kinesis: the event-source mapping drains the closed stream, then drops
        // ingest and with it the emulated Firehose's last DirectPut input.
        let event_source = match event_source {
            Some(t) => Some(t.await.context("the event-source mapping task panicked")?),
            None => None,
        };
        let mut reader = None;
        if let Some(k) = &kinesis {
            let _ = k.stop.send(true);
        }
        if let Some(k) = kinesis {
            let read = match k.task.await {
                Ok(r) => r.map_err(anyhow::Error::new),
                Err(e) => Err(anyhow::anyhow!("the Kinesis reader panicked: {e}")),
            };
            reader = Some((read, k.checkpointer));
        }
        let fh = match firehose {
            Some(f) => Some(
                f.await
                    .context("the Firehose emulator task panicked")?
                    .context("the Firehose emulator failed")?,
            ),
            None => None,
        };
        // The consumers reported their last durable positions: the journals' checkpoints.
        for t in journal_tasks {
            t.await.context("a journal's checkpoint task panicked")?;
        }
        let mut kinesis = None;
        if let Some((read, checkpointer)) = reader {
            // The emulator has reported its last durable positions and closed the channel.
            let checkpoints_written = checkpointer
                .await
                .context("the Kinesis checkpointer panicked")?
                .context("writing Kinesis checkpoints failed")?;
            let read = read
                .context(
                    "reading the Kinesis stream failed (what was read before is in Parquet and \
                     checkpointed: a new run resumes after the checkpoints)",
                )
                // Failed ingest invocations are the first thing to fix: say so first.
                .map_err(|e| match ingest_failures(&counters) {
                    Some(f) => f.context(format!("{e:#}")),
                    None => e,
                })?;
            kinesis = Some(KinesisSummary {
                read,
                checkpoints_written,
            });
        }
        let note = matches!(stream, StreamTarget::Firehose(_)).then(|| FIREHOSE_NOTE.to_owned());
        let fh = fh.unwrap_or_default();
        // What Firehose ingested: put directly (firehose, kinesis, a real delivery stream),
        // or read from the stream (per-message).
        let firehose_bytes = match stream {
            _ if topology != Topology::PerMessage => {
                counters.firehose_put_bytes.load(Ordering::Relaxed)
            }
            StreamTarget::Firehose(_) => counters.firehose_put_bytes.load(Ordering::Relaxed),
            _ => counters.kinesis_bytes.load(Ordering::Relaxed),
        };
        if let Some(s) = scheduler {
            s.stop().await;
        }
        let rollup_report = rollup.run(&store, &meter, &counters).await?;
        if let Some(e) = ingest_failures(&counters) {
            return Err(e);
        }
        let ingest = ingested.lock().map(|r| *r).unwrap_or_default();
        let s3_requests = s3.counts();
        tracing::debug!(?s3_requests, "the run's S3 requests");
        let usage = Usage {
            seconds: started.elapsed().as_secs_f64(),
            devices,
            iot_message_units: counters.iot_message_units.load(Ordering::Relaxed),
            rule_triggers: counters.rule_triggers.load(Ordering::Relaxed),
            rule_units: counters.rule_units.load(Ordering::Relaxed),
            publish_bytes: counters.publish_bytes.load(Ordering::Relaxed),
            kinesis_kb_units: counters.kinesis_kb_units.load(Ordering::Relaxed),
            kinesis_bytes_out: counters.kinesis_bytes.load(Ordering::Relaxed),
            firehose_5kb_units: counters.firehose_5kb_units.load(Ordering::Relaxed),
            firehose_bytes,
            firehose_objects: fh.files.len() as u64 + fh.error_objects,
            s3_puts: s3_requests.put,
            s3_lists: s3_requests.list,
            s3_gets: s3_requests.get,
            scheduler_invocations: counters.scheduler_invocations.load(Ordering::Relaxed),
            sqs_requests: rollup.queue.requests(),
            no_kinesis_stream: matches!(stream, StreamTarget::Firehose(_))
                || topology == Topology::Firehose,
            topology: topology.name().to_owned(),
        };
        Ok(StackReport {
            ingest,
            firehose: FirehoseSummary {
                records_in: fh.records_in,
                ok: fh.ok,
                dropped: fh.dropped,
                processing_failed: fh.processing_failed,
                rows_written: fh.rows_written,
                files: fh.files.len(),
                error_objects: fh.error_objects,
                split_rows: counters.split_rows.load(Ordering::Relaxed),
                split_files: counters.split_files.load(Ordering::Relaxed),
            },
            rollup: Some(rollup_report),
            usage,
            stream: stream.to_string(),
            kinesis,
            note,
            faults: faults.map(|f| f.counts()),
            topology: topology.name().to_owned(),
            rollup_runs: counters
                .rollup_runs
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default(),
            event_source,
            rule_errors: RuleErrors::of(&counters),
        })
    }
}

/// The error that fails a run whose ingest invocations failed, if any did: how many, the
/// first cause, and where their payloads are kept for `iotpipe requeue`.
fn ingest_failures(counters: &Counters) -> Option<anyhow::Error> {
    let failures = counters.ingest_failures.load(Ordering::Relaxed);
    if failures == 0 {
        return None;
    }
    let first = counters
        .first_ingest_failure
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .unwrap_or_default();
    let kept = counters.dead_letters.load(Ordering::Relaxed)
        - counters.dead_letters_lost.load(Ordering::Relaxed);
    Some(anyhow::anyhow!(
        "{failures} ingest invocation(s) failed: their payloads were neither streamed nor \
         quarantined (on AWS, Lambda retries such an event, then its dead-letter queue keeps \
         it). First error: {first}. {kept} of their payloads are kept under {}/ (reason \
         sink_failed); what was accepted before is in Parquet. Fix the cause, then run \
         `iotpipe requeue --data <the same --data> --reason sink_failed` with the same \
         --stream: the rollup de-duplicates, so requeuing twice is harmless.",
        telemetry::layout::INGEST_FAILED_PREFIX
    ))
}

/// A Firehose configuration for interactive local runs: small buffers so data lands
/// within seconds (AWS would buffer up to 900 s).
pub fn local_firehose(flush_every: Duration) -> FirehoseConfig {
    FirehoseConfig {
        processor_buffer_interval: Duration::from_secs(1).min(flush_every),
        destination_interval: flush_every,
        ..FirehoseConfig::default()
    }
}

/// The transform of topology firehose: [`transform::RawTransform`] metered as the transform
/// function, counting Firehose ingestion (5 KB units) and what validation did (into
/// `ingested`, as ingest would have), and the quarantine objects it writes. The Parquet
/// objects it writes itself (device batches spanning hours) get their new-object markers,
/// as S3 event notifications would announce them on AWS.
fn raw_invoke(
    raw: Arc<transform::RawTransform>,
    store: Arc<dyn ObjectStore>,
    meter: Meter,
    counters: Arc<Counters>,
    ingested: Arc<std::sync::Mutex<IngestReport>>,
    faults: Option<Arc<crate::faults::Injector>>,
) -> firehose::Invoke {
    Arc::new(move |event: Arc<KinesisFirehoseEvent>| {
        let raw = raw.clone();
        let store = store.clone();
        let meter = meter.clone();
        let counters = counters.clone();
        let ingested = ingested.clone();
        let faults = faults.clone();
        async move {
            if faults.as_ref().is_some_and(|f| f.processor_error()) {
                return Err("Lambda.ServiceException: the function failed (injected)".to_string());
            }
            for r in &event.records {
                counters.firehose_5kb_units.fetch_add(
                    units(r.data.0.len(), FIREHOSE_INGEST_UNIT_BYTES),
                    Ordering::Relaxed,
                );
            }
            let result = meter
                .invoke(
                    &TRANSFORM,
                    |r: &Result<_, _>| r.is_err(),
                    raw.transform(&event),
                )
                .await;
            match result {
                Ok((response, summary)) => {
                    for f in &summary.split_files {
                        analytics::pending::mark(
                            &store,
                            analytics::config::DEFAULT_PENDING_PREFIX,
                            &f.path,
                        )
                        .await
                        .map_err(|e| format!("writing the new-object marker of {}: {e}", f.path))?;
                        counters.split_files.fetch_add(1, Ordering::Relaxed);
                        counters
                            .split_rows
                            .fetch_add(f.rows as u64, Ordering::Relaxed);
                    }
                    if let Ok(mut total) = ingested.lock() {
                        total.add(&IngestReport {
                            messages: summary.messages as u64,
                            accepted: (summary.messages - summary.rejected_messages) as u64,
                            quarantined: summary.rejected_messages as u64,
                            readings: (summary.readings + summary.split_readings) as u64,
                            ..IngestReport::default()
                        });
                    }
                    Ok(response)
                }
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    })
}

/// The event-source mapping's function (topology kinesis): ingest's Kinesis handler
/// ([`Ingest::handle_kinesis`], what `ingest::kinesis_event::handle_kinesis` runs on
/// Lambda) metered as the ingest function, counting the bytes it reads from the stream and
/// what it ingested. It answers as that handler does: no `batchItemFailures` (a record's
/// problem is quarantined; what fails, fails the invocation).
fn esm_invoke(
    ingest: Arc<Ingest<StackSink>>,
    meter: Meter,
    counters: Arc<Counters>,
    ingested: Arc<std::sync::Mutex<IngestReport>>,
) -> crate::event_source::Invoke {
    Arc::new(move |event: aws_lambda_events::kinesis::KinesisEvent| {
        let ingest = ingest.clone();
        let meter = meter.clone();
        let counters = counters.clone();
        let ingested = ingested.clone();
        async move {
            for r in &event.records {
                counters
                    .kinesis_bytes
                    .fetch_add(r.kinesis.data.0.len() as u64, Ordering::Relaxed);
            }
            let result = meter
                .invoke(
                    &INGEST,
                    |r: &Result<_, _>| r.is_err(),
                    ingest.handle_kinesis(&event),
                )
                .await;
            match result {
                Ok(report) => {
                    if let Ok(mut total) = ingested.lock() {
                        total.add(&report);
                    }
                    Ok(aws_lambda_events::streams::KinesisEventResponse::default())
                }
                Err(e) => {
                    tracing::error!(error = %e, records = event.records.len(),
                        "ingest invocation failed (the event-source mapping retries)");
                    Err(e.to_string())
                }
            }
        }
        .boxed()
    })
}

/// The event-source mapping's on-failure destination (topology kinesis): each record that
/// still failed is kept like a failed per-message invocation's payload (the local
/// dead-letter queue, for `iotpipe requeue`) and fails the run at its end.
fn esm_on_failure(
    store: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
) -> crate::event_source::OnFailure {
    Arc::new(move |records: Vec<StreamEntry>, error: String| {
        let store = store.clone();
        let counters = counters.clone();
        async move {
            for r in records {
                let (payload, topic) = transform::RuleRecord::decode(&r.data)
                    .unwrap_or_else(|_| (r.data.to_vec(), Default::default()));
                let event = IotRuleEvent {
                    payload: transform::RuleRecord::encode_payload(&payload),
                    topic: topic.into_owned(),
                    received_at: r.approximate_arrival_ms,
                    device_from_topic: None,
                };
                dead_letter(&store, &counters, &event, &error).await;
                count_ingest_failure(&counters, &error);
            }
        }
        .boxed()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(root: &std::path::Path, topology: Topology) -> StackConfig {
        StackConfig {
            data: root.display().to_string(),
            shards: 2,
            shard_capacity: 10,
            firehose: local_firehose(Duration::from_secs(1)),
            rollup_every: None,
            ingest: IngestConfig::default(),
            stream: StreamTarget::Local,
            faults: None,
            topology,
            journal: Some(root.join(crate::journal::JOURNAL_DIR)),
        }
    }

    #[test]
    fn another_topologys_undelivered_journal_stops_the_run_and_says_how_to_deliver_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), Topology::Firehose);
        assert!(check_other_journals(&cfg).is_ok(), "no journal yet");
        let pm = cfg
            .journal
            .as_ref()
            .unwrap()
            .join(Topology::PerMessage.name())
            .join(STREAM_JOURNAL);
        let (journal, _) = Journal::open(&pm).unwrap();
        let entry = StreamEntry {
            shard_id: "shardId-000000000000".into(),
            sequence_number: "4900000000000000000000000000000000000000".into(),
            partition_key: "d".into(),
            data: bytes::Bytes::from_static(b"{}"),
            approximate_arrival_ms: 0,
        };
        journal.append(std::slice::from_ref(&entry)).unwrap();
        let err = check_other_journals(&cfg).unwrap_err().to_string();
        assert!(err.contains("1 records"), "{err}");
        assert!(err.contains("--topology per-message"), "{err}");
        // Its own topology delivers it: no objection.
        assert!(check_other_journals(&config(dir.path(), Topology::PerMessage)).is_ok());
        // Delivered (checkpointed): no objection either.
        journal
            .checkpoint(&[(entry.shard_id.clone(), entry.sequence_number.clone())].into())
            .unwrap();
        assert!(check_other_journals(&cfg).is_ok());
    }

    #[tokio::test]
    async fn a_direct_put_of_many_records_numbers_journals_and_sends_them_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, recovered) = Journal::open(dir.path()).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let put = DirectPut::start(tx, Some((Arc::new(journal), recovered)))
            .await
            .unwrap();
        let record = |i: i64| (format!("k{i}"), bytes::Bytes::from(format!("r{i}")), i);
        assert!(put.put_many((0..3).map(record).collect()).await.is_ok());
        assert!(put.put("k3", bytes::Bytes::from("r3"), 3).await.is_ok());
        let sent: Vec<StreamEntry> = (0..4).map(|_| rx.try_recv().unwrap()).collect();
        let seen = |entries: &[StreamEntry]| -> Vec<(String, String, String, i64)> {
            entries
                .iter()
                .map(|e| {
                    (
                        e.sequence_number.clone(),
                        e.partition_key.clone(),
                        String::from_utf8(e.data.to_vec()).unwrap(),
                        e.approximate_arrival_ms,
                    )
                })
                .collect()
        };
        let expected: Vec<_> = (0..4)
            .map(|i: i64| (i.to_string(), format!("k{i}"), format!("r{i}"), i))
            .collect();
        assert_eq!(seen(&sent), expected);
        // The delivery stream stopped: nothing of the batch is stored, and it says so.
        drop(rx);
        let Err((stored, failed)) = put.put_many((4..6).map(record).collect()).await else {
            panic!("a put into a stopped delivery stream succeeded");
        };
        assert_eq!((stored, failed.code), (0, "ServiceUnavailableException"));
        drop(put);
        // The journal has every record, in order; a new input sends them first and numbers
        // on after them.
        let (journal, recovered) = Journal::open(dir.path()).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let put = DirectPut::start(tx, Some((Arc::new(journal), recovered)))
            .await
            .unwrap();
        let recovered: Vec<StreamEntry> = (0..6).map(|_| rx.try_recv().unwrap()).collect();
        let mut expected = expected;
        expected.extend((4..6).map(|i: i64| (i.to_string(), format!("k{i}"), format!("r{i}"), i)));
        assert_eq!(seen(&recovered), expected);
        assert!(put.put_many(vec![record(6)]).await.is_ok());
        assert_eq!(rx.try_recv().unwrap().sequence_number, "6");
    }

    /// Runs `messages` through a firehose-topology stack, by [`Stack::on_messages`] in
    /// batches of `batch` or by [`Stack::on_message`] one at a time (`batch` 0).
    async fn firehose_run(messages: &[Vec<u8>], batch: usize) -> StackReport {
        let dir = tempfile::tempdir().unwrap();
        let stack = Stack::start(config(dir.path(), Topology::Firehose))
            .await
            .unwrap();
        let rule_message = |(i, payload): (usize, &Vec<u8>)| RuleMessage {
            event: IotRuleEvent {
                payload: telemetry::RuleRecord::encode_payload(payload),
                topic: format!("dt/fleet/sensor-{:06}/telemetry", i % 100),
                received_at: 1_764_078_300_000,
                device_from_topic: None,
            },
            payload_len: payload.len(),
            basic_ingest: true,
        };
        if batch == 0 {
            for m in messages.iter().enumerate().map(rule_message) {
                stack
                    .on_message(m.event, m.payload_len, m.basic_ingest)
                    .await;
            }
        } else {
            let all: Vec<RuleMessage> = messages.iter().enumerate().map(rule_message).collect();
            let mut all = all.into_iter().peekable();
            while all.peek().is_some() {
                stack.on_messages(all.by_ref().take(batch).collect()).await;
            }
        }
        stack.finish(100).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rules_batched_firehose_actions_store_and_meter_what_one_at_a_time_would() {
        let mut messages: Vec<Vec<u8>> = (0..250)
            .map(|i| serde_json::to_vec(&test_support::fixtures::device_message(i)).unwrap())
            .collect();
        messages[7] = b"{\"device_id\": 42}".to_vec();
        let one = firehose_run(&messages, 0).await;
        let batched = firehose_run(&messages, 16).await;
        let figures = |r: &StackReport| {
            (
                r.usage.rule_triggers,
                r.usage.iot_message_units,
                r.usage.firehose_5kb_units,
                r.usage.firehose_bytes,
                r.firehose.records_in,
                r.firehose.ok,
                r.firehose.processing_failed,
                r.firehose.rows_written,
                r.ingest.quarantined,
            )
        };
        assert_eq!(figures(&batched), figures(&one));
        let f = figures(&batched);
        assert_eq!((f.0, f.4, f.7), (250, 250, 249 * 4), "{f:?}");
        assert!(f.3 > 0 && f.8 == 1, "{f:?}");
        assert!(batched.rule_errors.is_none());
    }
}

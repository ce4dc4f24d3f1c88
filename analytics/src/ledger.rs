//! The delivery ledger: per device and event-time window, how many messages the devices
//! sent and what became of them — received, duplicated, missing, late, rejected.
//!
//! A message is identified by (`device_id`, `seq`, event time): devices number their
//! messages `first_seq, first_seq + 1, …` (device-sim records the range in its summary),
//! and a re-delivery repeats the whole message, event time included, while a device that
//! reboots restarts its `seq` with new event times — a new message, not a duplicate. The
//! telemetry Parquet is long-format (one row per reading), so one message is several rows
//! sharing (`device_id`, `seq`, `event_time`); the ledger counts **messages**, never rows.
//!
//! # Definitions
//! Each message is placed in the window of its event time (`[start, start + length)`,
//! aligned to UTC like the rollup's, see [`Window`]). When a message was delivered more
//! than once, its *first delivery* (the smallest `received_at`) stands for it.
//! - **received**: distinct messages in the telemetry Parquet.
//! - **duplicated**: extra deliveries of a message beyond the first. Every delivery of a
//!   message carries each of its metrics once, so a message's deliveries are counted as
//!   the rows of its first-seen metric; `duplicated = deliveries − 1`.
//! - **late**: messages whose first delivery was received at or after their window's end
//!   plus the allowed lateness ([`DEFAULT_ALLOWED_LATENESS_MS`], one minute by default):
//!   `received_at ≥ window_start + length + allowed_lateness`. The rollup has no watermark
//!   to reuse — it recomputes any window a new file touches, so late readings are never
//!   lost from the statistics — hence this definition: a late message changed its window's
//!   statistics after a reader looking at the window once it closed (plus the grace) had
//!   already seen them.
//! - **rejected**: quarantined messages (records under `quarantine/`, see
//!   [`telemetry::quarantine`]) attributed to the device: by the payload's `device_id`
//!   when the quarantined bytes are JSON with a valid one, otherwise by the topic's device
//!   segment when that device is otherwise known (in the telemetry or in the sent ledger).
//!   Records attributable to no device are counted in [`LedgerTotals::rejected_unattributed`]
//!   only. A rejected message's event time cannot be trusted (a bad `ts` is one reason for
//!   rejection), so it is placed in the window of its receive time.
//! - **sent range**: with the devices' own ledger ([`SentLedger`], from device-sim's
//!   `--summary-json`), `first_seq..=last_seq`, of which the device itself dropped
//!   `dropped` (full offline buffer: never published). Without it, the range observed:
//!   the smallest to the largest `seq` received or found in a rejected payload, with no
//!   drops — which cannot see messages lost at either end. [`LedgerRow::sent_from`] says
//!   which applies.
//! - **missing**: seqs of the sent range that were neither received nor found in a
//!   rejected payload, minus the device's `dropped`. A rejected payload whose `seq` cannot
//!   be read (not JSON) does not fill its hole, so it counts as rejected *and* missing.
//!   A missing message has no event time; it is placed in the window of the nearest
//!   received or rejected message before it in seq order (after it, for a hole at the
//!   start of the range; no window at all when the device has neither). The device's
//!   `dropped` are taken from its earliest holes, since which seqs it dropped is not known.
//! - **sent**: per window, the messages of the sent range placed in it: received plus
//!   rejected-with-a-readable-seq plus missing. Summed over a device's windows that is
//!   `last_seq − first_seq + 1 − dropped`: every message device-sim handed to its MQTT
//!   client (its own `sent` counts socket writes, so it is lower by any message it gave up
//!   on before writing, which the ledger rightly reports as missing).
//!
//! Received messages whose seq lies outside the device's sent range (data of an earlier
//! run in the same location: seqs restart at `first_seq`) count as received and are also
//! reported in [`LedgerTotals::outside_range`]; restrict the ledger to one run with
//! [`LedgerConfig::since_ms`].
//!
//! # Cost
//! One pass over the five key columns of every telemetry object (values are not read) and
//! the quarantine records; memory is about 60 bytes per distinct message.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::RecordBatch;
use chrono::SecondsFormat;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use telemetry::layout::QUARANTINE_PREFIX;
use telemetry::quarantine::QuarantineRecord;

use crate::columns::{self, ColumnError, DictMemo, Strings};
use crate::config::{DEFAULT_READ_CONCURRENCY, DEFAULT_TELEMETRY_PREFIX};
use crate::io::{self, ReadError};
use crate::render::{Column, Table};
use crate::stats::{Interner, format_time};
use crate::window::Window;

/// How long after its window closes a message may arrive without counting as late:
/// one minute, in milliseconds.
pub const DEFAULT_ALLOWED_LATENESS_MS: i64 = 60_000;

/// With [`LedgerConfig::since_ms`], objects last modified more than this long before it
/// are not read: they were written before the run, so they cannot hold its messages.
/// The margin covers clock skew between this machine and the store.
const SINCE_SLACK_MS: i64 = 5 * 60_000;

/// The telemetry columns the ledger reads.
const LEDGER_COLUMNS: [&str; 5] = ["device_id", "seq", "event_time", "received_at", "metric"];

/// What to compute, over which data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// The window length rows are grouped by (event time). Default `1m`.
    pub window: Window,
    /// How long after its window's end a message may be received without being late,
    /// milliseconds. Default [`DEFAULT_ALLOWED_LATENESS_MS`].
    pub allowed_lateness_ms: i64,
    /// Only messages received at or after this instant (epoch ms), such as the start of a
    /// run: readings and quarantine records received earlier are ignored. `None`: all.
    pub since_ms: Option<i64>,
    /// Only this device. `None`: every device.
    pub device: Option<String>,
    /// Key prefix of the telemetry Parquet. Default `telemetry`.
    pub telemetry_prefix: String,
    /// Key prefix of the quarantine records. Default `quarantine`.
    pub quarantine_prefix: String,
    /// Objects fetched at once. Default 8.
    pub read_concurrency: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            window: Window::M1,
            allowed_lateness_ms: DEFAULT_ALLOWED_LATENESS_MS,
            since_ms: None,
            device: None,
            telemetry_prefix: DEFAULT_TELEMETRY_PREFIX.into(),
            quarantine_prefix: QUARANTINE_PREFIX.into(),
            read_concurrency: DEFAULT_READ_CONCURRENCY,
        }
    }
}

/// What the devices say they published: device-sim's per-device ledger
/// (`per_device` of its `--summary-json` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentLedger {
    /// Device id → its sent range.
    pub per_device: BTreeMap<String, DeviceSent>,
}

/// One device's sent range (the fields of device-sim's `DeviceLedger` the ledger needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSent {
    /// `seq` of the device's first message.
    pub first_seq: u64,
    /// `seq` of its last message published or dropped; `None` when it published nothing.
    pub last_seq: Option<u64>,
    /// Messages of `first_seq..=last_seq` the device dropped itself (never published).
    #[serde(default)]
    pub dropped: u64,
}

/// A sent ledger that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SentError {
    /// Neither the text nor its last non-blank line is a JSON object.
    #[error(
        "not a device-sim summary: expected the JSON object device-sim --summary-json prints \
         on its last stdout line ({0})"
    )]
    NotJson(serde_json::Error),
    /// The object has no `per_device` ledger.
    #[error(
        "the summary has no per_device ledger: give the --summary-json output of a publishing \
         device-sim run (a --dump run has none)"
    )]
    NoPerDevice,
    /// `per_device` is malformed.
    #[error("per_device is malformed: {0}")]
    Malformed(serde_json::Error),
}

impl SentLedger {
    /// Parses device-sim's `--summary-json` output: either the JSON object alone, or the
    /// whole captured stdout, whose last non-blank line is the object.
    pub fn from_summary(text: &str) -> Result<Self, SentError> {
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(whole) => {
                let last = text.lines().rev().find(|l| !l.trim().is_empty());
                last.and_then(|l| serde_json::from_str(l).ok())
                    .ok_or(SentError::NotJson(whole))?
            }
        };
        let per_device = value
            .get("per_device")
            .filter(|v| v.is_object())
            .ok_or(SentError::NoPerDevice)?;
        let per_device =
            serde_json::from_value(per_device.clone()).map_err(SentError::Malformed)?;
        Ok(Self { per_device })
    }
}

/// Where a row's sent range comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SentFrom {
    /// The devices' own ledger (`--sent`): `first_seq..=last_seq` minus `dropped`.
    Summary,
    /// The seqs observed in the data: the smallest to the largest.
    Observed,
}

impl SentFrom {
    fn label(self) -> &'static str {
        match self {
            SentFrom::Summary => "summary",
            SentFrom::Observed => "observed",
        }
    }
}

/// The counts of one device in one window (or over all its windows, in
/// [`Ledger::devices`]). See the [module documentation](self) for the definitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// The device.
    pub device_id: String,
    /// Start of the event-time window, epoch ms (RFC 3339 in JSON); `None` for a device
    /// total, or for missing messages of a device of which nothing arrived.
    #[serde(with = "opt_time")]
    pub window_start: Option<i64>,
    /// Messages of the sent range placed in this window: received + rejected with a
    /// readable seq + missing.
    pub sent: u64,
    /// Distinct messages (`device_id`, `seq`, event time) in the telemetry.
    pub received: u64,
    /// Deliveries beyond the first of those messages.
    pub duplicated: u64,
    /// Seqs of the sent range never received nor rejected (minus the device's drops).
    pub missing: u64,
    /// Received messages whose first delivery came after the window's end plus the
    /// allowed lateness.
    pub late: u64,
    /// Quarantined messages of the device (placed by receive time).
    pub rejected: u64,
    /// Where the sent range comes from.
    pub sent_from: SentFrom,
}

impl LedgerRow {
    fn empty(device_id: &str, window_start: Option<i64>, sent_from: SentFrom) -> Self {
        Self {
            device_id: device_id.to_string(),
            window_start,
            sent: 0,
            received: 0,
            duplicated: 0,
            missing: 0,
            late: 0,
            rejected: 0,
            sent_from,
        }
    }

    fn add(&mut self, o: &LedgerRow) {
        self.sent += o.sent;
        self.received += o.received;
        self.duplicated += o.duplicated;
        self.missing += o.missing;
        self.late += o.late;
        self.rejected += o.rejected;
    }
}

/// The ledger's totals over every device and window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTotals {
    /// Devices in the ledger.
    pub devices: u64,
    /// Sum of [`LedgerRow::sent`].
    pub sent: u64,
    /// Sum of [`LedgerRow::received`].
    pub received: u64,
    /// Sum of [`LedgerRow::duplicated`].
    pub duplicated: u64,
    /// Sum of [`LedgerRow::missing`].
    pub missing: u64,
    /// Sum of [`LedgerRow::late`].
    pub late: u64,
    /// Sum of [`LedgerRow::rejected`].
    pub rejected: u64,
    /// Quarantine records attributable to no device (not in any row).
    pub rejected_unattributed: u64,
    /// Messages the devices dropped themselves (from the sent ledger): neither sent nor
    /// missing.
    pub dropped_by_devices: u64,
    /// Received messages whose seq is outside their device's sent range (data of another
    /// run?); included in `received`.
    pub outside_range: u64,
}

/// The delivery ledger of a data location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The window length of [`Ledger::rows`].
    pub window: Window,
    /// The allowed lateness, milliseconds.
    pub allowed_lateness_ms: i64,
    /// Only messages received at or after this instant were counted (RFC 3339 in JSON).
    #[serde(with = "opt_time")]
    pub since: Option<i64>,
    /// One row per device and window, sorted by device then window.
    pub rows: Vec<LedgerRow>,
    /// One row per device: its windows summed (`window_start` is `None`).
    pub devices: Vec<LedgerRow>,
    /// Everything summed.
    pub totals: LedgerTotals,
    /// Telemetry objects read.
    pub files_read: usize,
    /// Telemetry rows counted (after the `since` and device filters).
    pub rows_read: u64,
    /// Quarantine records counted (after the filters).
    pub quarantine_records: u64,
    /// Quarantine lines that are not quarantine records (skipped).
    pub quarantine_unreadable: u64,
}

impl Ledger {
    /// Warnings a person should see: missing messages, data outside the sent ranges.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let t = &self.totals;
        if t.missing > 0 {
            let devices = self.devices.iter().filter(|d| d.missing > 0).count();
            out.push(format!(
                "warning: {} message(s) missing from {devices} device(s): sent but neither \
                 received nor rejected (see the missing column)",
                t.missing
            ));
        }
        if t.outside_range > 0 {
            out.push(format!(
                "warning: {} received message(s) have a seq outside their device's sent range \
                 — data of another run in the same location? Restrict to one run with --since",
                t.outside_range
            ));
        }
        if self.quarantine_unreadable > 0 {
            out.push(format!(
                "warning: {} quarantine line(s) are not quarantine records and were skipped",
                self.quarantine_unreadable
            ));
        }
        out
    }
}

/// The ledger could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Listing objects failed.
    #[error("listing {prefix}/: {source}")]
    List {
        /// The listed prefix.
        prefix: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A telemetry object could not be read: the counts would be wrong without it.
    #[error(
        "reading {path}: {source} — the ledger needs every telemetry object; move the \
         unreadable one out of the telemetry prefix and run again"
    )]
    Read {
        /// Object key.
        path: String,
        /// The cause.
        #[source]
        source: ReadError,
    },
    /// A quarantine object could not be fetched.
    #[error("reading {path}: {source}")]
    Quarantine {
        /// Object key.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

/// Computes the ledger of the telemetry and quarantine records in `store`, with the
/// devices' own ledger `sent` when known. See the [module documentation](self).
pub async fn compute(
    store: Arc<dyn ObjectStore>,
    cfg: &LedgerConfig,
    sent: Option<&SentLedger>,
) -> Result<Ledger, LedgerError> {
    let recent = |meta: &ObjectMeta| {
        cfg.since_ms.is_none_or(|since| {
            meta.last_modified.timestamp_millis() >= since.saturating_sub(SINCE_SLACK_MS)
        })
    };
    let mut builder = LedgerBuilder::new(cfg.since_ms, cfg.device.as_deref());

    let prefix = cfg.telemetry_prefix.trim_matches('/');
    let files = io::list_telemetry(&store, prefix)
        .await
        .map_err(|source| LedgerError::List {
            prefix: prefix.to_string(),
            source,
        })?;
    let files: Vec<_> = files.into_iter().filter(|f| recent(&f.meta)).collect();
    let files_read = files.len();
    let mut reads = futures::stream::iter(files)
        .map(|file| {
            let store = store.clone();
            async move {
                let read = io::read_parquet(&store, &file.meta, Some(&LEDGER_COLUMNS)).await;
                (file.meta.location.to_string(), read)
            }
        })
        .buffer_unordered(cfg.read_concurrency.max(1));
    while let Some((path, read)) = reads.next().await {
        let err = |source| LedgerError::Read {
            path: path.clone(),
            source,
        };
        let batches = read.map_err(err)?;
        for batch in &batches {
            builder
                .add_batch(batch)
                .map_err(|e| err(ReadError::from(e)))?;
        }
    }
    drop(reads);

    let qprefix = cfg.quarantine_prefix.trim_matches('/');
    let objects = io::list_objects(&store, qprefix)
        .await
        .map_err(|source| LedgerError::List {
            prefix: qprefix.to_string(),
            source,
        })?;
    let objects = objects
        .into_iter()
        .filter(|m| m.location.as_ref().ends_with(".jsonl") && recent(m));
    let mut fetched = futures::stream::iter(objects)
        .map(|meta| {
            let store = store.clone();
            async move {
                let path = meta.location.to_string();
                let got = match store.get(&meta.location).await {
                    Ok(got) => got.bytes().await,
                    Err(e) => Err(e),
                };
                got.map_err(|source| LedgerError::Quarantine { path, source })
            }
        })
        .buffer_unordered(cfg.read_concurrency.max(1));
    while let Some(bytes) = fetched.try_next().await? {
        for line in bytes.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<QuarantineRecord>(line) {
                Ok(rec) => builder.add_quarantined(&rec),
                Err(_) => builder.quarantine_unreadable += 1,
            }
        }
    }

    let mut ledger = builder.finish(cfg.window, cfg.allowed_lateness_ms, sent);
    ledger.files_read = files_read;
    Ok(ledger)
}

/// A message's first delivery and how many times it was delivered.
#[derive(Debug, Clone, Copy)]
struct Message {
    event_time: i64,
    received_at: i64,
    /// The metric seen first: deliveries are counted on its rows.
    metric: u32,
    deliveries: u32,
}

/// A quarantined message, before it is attributed.
#[derive(Debug)]
struct Quarantined {
    payload_device: Option<String>,
    topic_device: Option<String>,
    seq: Option<i64>,
    received_at: i64,
}

/// Accumulates telemetry batches and quarantine records, then computes the [`Ledger`].
/// Works in memory on what it is given, so it is tested without a store; [`compute`]
/// feeds it from one.
#[derive(Debug)]
pub struct LedgerBuilder {
    since_ms: Option<i64>,
    device: Option<String>,
    devices: Interner,
    metrics: Interner,
    /// Interned ids of the current `device_id` and `metric` dictionaries.
    memos: (DictMemo<u32>, DictMemo<u32>),
    /// (device, seq, event time) → the message's first delivery.
    messages: HashMap<(u32, i64, i64), Message>,
    quarantined: Vec<Quarantined>,
    rows: u64,
    quarantine_unreadable: u64,
}

impl LedgerBuilder {
    /// An empty ledger counting only what was received at or after `since_ms` (when
    /// given), of `device` only (when given).
    pub fn new(since_ms: Option<i64>, device: Option<&str>) -> Self {
        Self {
            since_ms,
            device: device.map(str::to_string),
            devices: Interner::default(),
            metrics: Interner::default(),
            memos: (DictMemo::default(), DictMemo::default()),
            messages: HashMap::new(),
            quarantined: Vec::new(),
            rows: 0,
            quarantine_unreadable: 0,
        }
    }

    /// Adds one batch of telemetry rows (columns `device_id`, `seq`, `event_time`,
    /// `received_at`, `metric`, in any of the encodings the rollup accepts). The batch is
    /// checked before anything is added.
    pub fn add_batch(&mut self, batch: &RecordBatch) -> Result<(), ColumnError> {
        let device = Strings::new("device_id", columns::required(batch, "device_id")?)?;
        let metric = Strings::new("metric", columns::required(batch, "metric")?)?;
        let seq = columns::int64(batch, "seq")?;
        let event_time = columns::timestamps_ms(batch, "event_time")?;
        let received_at = columns::timestamps_ms(batch, "received_at")?;
        let devices = self.devices.column(&device, &mut self.memos.0);
        let metrics = self.metrics.column(&metric, &mut self.memos.1);
        let only = self.device.as_deref().map(|d| self.devices.id(d));
        let rows = devices
            .iter()
            .zip(seq.values())
            .zip(event_time.iter().zip(&received_at))
            .zip(&metrics);
        for (((&d, &seq), (&et, &r)), &m) in rows {
            if self.since_ms.is_some_and(|s| r < s) || only.is_some_and(|o| o != d) {
                continue;
            }
            self.rows += 1;
            match self.messages.entry((d, seq, et)) {
                Entry::Vacant(v) => {
                    v.insert(Message {
                        event_time: et,
                        received_at: r,
                        metric: m,
                        deliveries: 1,
                    });
                }
                Entry::Occupied(mut o) => {
                    let msg = o.get_mut();
                    if m == msg.metric {
                        msg.deliveries += 1;
                    }
                    // The event time is part of the key: only the receive time differs.
                    msg.received_at = msg.received_at.min(r);
                }
            }
        }
        Ok(())
    }

    /// Adds one quarantine record.
    pub fn add_quarantined(&mut self, rec: &QuarantineRecord) {
        if self.since_ms.is_some_and(|s| rec.received_at < s) {
            return;
        }
        let whole: Option<serde_json::Value> = serde_json::from_slice(&rec.raw()).ok();
        if !rec.rejections.is_empty() {
            // A batch kept once: each rejected element counts, read from its position.
            for r in &rec.rejections {
                let element = whole.as_ref().and_then(|w| w.get(r.index)).cloned();
                self.add_quarantined_message(rec, element);
            }
            return;
        }
        self.add_quarantined_message(rec, whole);
    }

    /// Adds one quarantined message: `payload` is its JSON, when it parses.
    fn add_quarantined_message(
        &mut self,
        rec: &QuarantineRecord,
        payload: Option<serde_json::Value>,
    ) {
        let field = |name: &str| payload.as_ref().and_then(|p| p.get(name));
        let payload_device = field("device_id")
            .and_then(serde_json::Value::as_str)
            .filter(|d| telemetry::validate::valid_device_id(d))
            .map(str::to_string);
        let seq = field("seq").and_then(serde_json::Value::as_i64);
        let topic_device = telemetry::topic::parse_topic(&rec.topic)
            .map(|t| t.device_id)
            .filter(|d| telemetry::validate::valid_device_id(d))
            .map(str::to_string);
        if let Some(only) = &self.device {
            let ours = |d: &Option<String>| d.as_deref() == Some(only.as_str());
            // The payload's device when it names one, else the topic's.
            let claimed = if payload_device.is_some() {
                &payload_device
            } else {
                &topic_device
            };
            if !ours(claimed) {
                return;
            }
        }
        self.quarantined.push(Quarantined {
            payload_device,
            topic_device,
            seq,
            received_at: rec.received_at,
        });
    }

    /// Computes the ledger in windows of `window`, with `allowed_lateness_ms`, against the
    /// devices' own ledger `sent` when given.
    pub fn finish(
        mut self,
        window: Window,
        allowed_lateness_ms: i64,
        sent: Option<&SentLedger>,
    ) -> Ledger {
        let len = window.millis();
        let mut totals = LedgerTotals::default();
        // Everything is keyed by interned device id; names come back at the end.
        let mut cells: HashMap<(u32, Option<i64>), Counts> = HashMap::new();
        // Per device: the seqs known (received or read from a rejected payload).
        let mut known: Vec<Vec<Known>> = Vec::new();
        fn of(known: &mut Vec<Vec<Known>>, d: u32) -> &mut Vec<Known> {
            let i = d as usize;
            if known.len() <= i {
                known.resize_with(i + 1, Vec::new);
            }
            // Just resized to hold `i`.
            known
                .get_mut(i)
                .unwrap_or_else(|| unreachable!("resized above"))
        }

        for (&(d, seq, _), msg) in &self.messages {
            let start = window.start_of(msg.event_time);
            let c = cells.entry((d, Some(start))).or_default();
            c.received += 1;
            c.duplicated += u64::from(msg.deliveries.saturating_sub(1));
            if msg.received_at
                >= start
                    .saturating_add(len)
                    .saturating_add(allowed_lateness_ms)
            {
                c.late += 1;
            }
            of(&mut known, d).push(Known {
                seq,
                window: start,
                received: true,
            });
        }

        // Devices with telemetry, or listed by the devices' own ledger: a rejection on such
        // a device's topic is the device's.
        let with_telemetry: HashSet<&str> = self
            .messages
            .keys()
            .map(|&(d, _, _)| d)
            .collect::<HashSet<u32>>()
            .into_iter()
            .map(|d| self.devices.name(d))
            .collect();
        let wanted = |id: &str| self.device.as_deref().is_none_or(|only| only == id);
        let resolved: Vec<Option<String>> = self
            .quarantined
            .iter()
            .map(|q| {
                q.payload_device.clone().or_else(|| {
                    q.topic_device.clone().filter(|d| {
                        with_telemetry.contains(d.as_str())
                            || sent.is_some_and(|s| s.per_device.contains_key(d))
                    })
                })
            })
            .collect();
        drop(with_telemetry);
        for (q, device) in self.quarantined.iter().zip(resolved) {
            let Some(device) = device else {
                totals.rejected_unattributed += 1;
                continue;
            };
            let d = self.devices.id(&device);
            let start = window.start_of(q.received_at);
            cells.entry((d, Some(start))).or_default().rejected += 1;
            let entries = of(&mut known, d);
            if let Some(seq) = q.seq {
                entries.push(Known {
                    seq,
                    window: start,
                    received: false,
                });
            }
        }

        // The sent range of each device listed by the devices' ledger.
        let mut ranges: HashMap<u32, DeviceSent> = HashMap::new();
        if let Some(s) = sent {
            for (id, r) in s.per_device.iter().filter(|(id, _)| wanted(id)) {
                let d = self.devices.id(id);
                of(&mut known, d);
                ranges.insert(d, *r);
            }
        }
        let mut from_of: HashMap<u32, SentFrom> = HashMap::new();
        for (i, entries) in known.iter_mut().enumerate() {
            let d = u32::try_from(i).unwrap_or(u32::MAX);
            let range = ranges.get(&d);
            if entries.is_empty() && range.is_none() {
                continue;
            }
            let from = if range.is_some() {
                SentFrom::Summary
            } else {
                SentFrom::Observed
            };
            from_of.insert(d, from);
            // Received before rejected for the same seq: a received message is the one
            // that counts.
            entries.sort_unstable_by_key(|k| (k.seq, !k.received));
            let (first, last, dropped) = match range {
                Some(r) => (
                    i64::try_from(r.first_seq).unwrap_or(i64::MAX),
                    r.last_seq.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
                    r.dropped,
                ),
                None => (
                    entries.first().map_or(0, |k| k.seq),
                    entries.last().map(|k| k.seq),
                    0,
                ),
            };
            let in_range = |seq: i64| last.is_some_and(|l| seq >= first && seq <= l);
            totals.outside_range += entries
                .iter()
                .filter(|k| k.received && !in_range(k.seq))
                .count() as u64;
            entries.retain(|k| in_range(k.seq));
            entries.dedup_by_key(|k| k.seq);

            // Holes, each with the window it is placed in, in seq order.
            let mut holes: Vec<(Option<i64>, u64)> = Vec::new();
            if let Some(last) = last {
                let mut next = first; // the first seq not yet accounted for
                let mut previous: Option<i64> = None; // the window of the entry before
                for k in entries.iter() {
                    let gap = seq_gap(next, k.seq);
                    if gap > 0 {
                        // Before the first entry the hole goes to that entry's window.
                        holes.push((Some(previous.unwrap_or(k.window)), gap));
                    }
                    next = k.seq.saturating_add(1);
                    previous = Some(k.window);
                }
                let tail = seq_gap(next, last.saturating_add(1));
                if tail > 0 {
                    holes.push((previous, tail));
                }
            }
            // The device's own drops are not missing: take them from the earliest holes.
            let mut to_drop = dropped;
            totals.dropped_by_devices += dropped;
            for (w, gap) in holes {
                let taken = gap.min(to_drop);
                to_drop -= taken;
                let missing = gap - taken;
                if missing > 0 {
                    let c = cells.entry((d, w)).or_default();
                    c.missing += missing;
                    c.sent += missing;
                }
            }
            for k in entries.iter() {
                cells.entry((d, Some(k.window))).or_default().sent += 1;
            }
            if range.is_some() {
                // Listed by the devices even if nothing was sent or arrived: still a row.
                cells.entry((d, None)).or_default();
            }
        }

        let mut rows: Vec<LedgerRow> = cells
            .into_iter()
            .map(|((d, w), c)| {
                let from = from_of.get(&d).copied().unwrap_or(SentFrom::Observed);
                c.row(self.devices.name(d), w, from)
            })
            .collect();
        rows.sort_unstable_by(|a, b| {
            (&a.device_id, a.window_start).cmp(&(&b.device_id, b.window_start))
        });
        // A device listed by the devices' ledger keeps its empty no-window row only when it
        // has no other row.
        let mut keep = vec![true; rows.len()];
        for (i, pair) in rows.windows(2).enumerate() {
            if let [a, b] = pair
                && a.device_id == b.device_id
                && a.window_start.is_none()
                && a.sent == 0
                && a.missing == 0
                && let Some(k) = keep.get_mut(i)
            {
                *k = false;
            }
        }
        let mut keep = keep.into_iter();
        rows.retain(|_| keep.next().unwrap_or(true));

        let mut devices: Vec<LedgerRow> = Vec::new();
        for row in &rows {
            match devices.last_mut() {
                Some(d) if d.device_id == row.device_id => d.add(row),
                _ => {
                    let mut d = LedgerRow::empty(&row.device_id, None, row.sent_from);
                    d.add(row);
                    devices.push(d);
                }
            }
        }
        for d in &devices {
            totals.devices += 1;
            totals.sent += d.sent;
            totals.received += d.received;
            totals.duplicated += d.duplicated;
            totals.missing += d.missing;
            totals.late += d.late;
            totals.rejected += d.rejected;
        }
        Ledger {
            window,
            allowed_lateness_ms,
            since: self.since_ms,
            rows,
            devices,
            totals,
            files_read: 0,
            rows_read: self.rows,
            quarantine_records: self.quarantined.len() as u64,
            quarantine_unreadable: self.quarantine_unreadable,
        }
    }
}

/// The counts of one cell (device, window) while the ledger is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    sent: u64,
    received: u64,
    duplicated: u64,
    missing: u64,
    late: u64,
    rejected: u64,
}

impl Counts {
    fn row(self, device: &str, window_start: Option<i64>, sent_from: SentFrom) -> LedgerRow {
        LedgerRow {
            device_id: device.to_string(),
            window_start,
            sent: self.sent,
            received: self.received,
            duplicated: self.duplicated,
            missing: self.missing,
            late: self.late,
            rejected: self.rejected,
            sent_from,
        }
    }
}

/// A seq the ledger has seen: received, or read from a rejected payload.
#[derive(Debug, Clone, Copy)]
struct Known {
    seq: i64,
    /// The window it is placed in.
    window: i64,
    received: bool,
}

/// Seqs in `from..to` (0 when empty).
fn seq_gap(from: i64, to: i64) -> u64 {
    u64::try_from(i128::from(to) - i128::from(from)).unwrap_or(0)
}

/// The column names of CSV and table output, in [`LedgerRow`] field order.
pub const COLUMNS: [&str; 9] = [
    "device_id",
    "window_start",
    "sent",
    "received",
    "duplicated",
    "missing",
    "late",
    "rejected",
    "sent_from",
];

/// The label of the totals line in CSV and table output.
pub const TOTAL_LABEL: &str = "TOTAL";

fn cells_of(r: &LedgerRow) -> [String; 9] {
    [
        r.device_id.clone(),
        r.window_start
            .and_then(|w| format_time(w, SecondsFormat::AutoSi))
            .unwrap_or_default(),
        r.sent.to_string(),
        r.received.to_string(),
        r.duplicated.to_string(),
        r.missing.to_string(),
        r.late.to_string(),
        r.rejected.to_string(),
        r.sent_from.label().to_string(),
    ]
}

fn total_cells(l: &Ledger) -> [String; 9] {
    let t = &l.totals;
    let from = if l.devices.iter().all(|d| d.sent_from == SentFrom::Summary) {
        SentFrom::Summary.label()
    } else if l.devices.iter().all(|d| d.sent_from == SentFrom::Observed) {
        SentFrom::Observed.label()
    } else {
        "mixed"
    };
    [
        TOTAL_LABEL.to_string(),
        String::new(),
        t.sent.to_string(),
        t.received.to_string(),
        t.duplicated.to_string(),
        t.missing.to_string(),
        t.late.to_string(),
        t.rejected.to_string(),
        from.to_string(),
    ]
}

/// The ledger as a [`Table`]: one row per device and window, a rule, the `TOTAL` row.
/// Device, window and source align left, counts right.
fn table(l: &Ledger) -> Table {
    let mut t = Table::new(
        COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < 2 || i == 8 {
                    Column::left(*c)
                } else {
                    Column::right(*c)
                }
            })
            .collect(),
    );
    for r in &l.rows {
        t.row(cells_of(r));
    }
    t.rule();
    t.row(total_cells(l));
    t
}

/// Renders the ledger as CSV (RFC 4180): a header, one line per device and window, then a
/// `TOTAL` line (empty `window_start`). Window starts are RFC 3339 UTC.
pub fn to_csv(l: &Ledger) -> String {
    table(l).to_csv()
}

/// Renders the ledger as an aligned table: a header, a rule, one line per device and
/// window, a rule and the `TOTAL` line.
pub fn to_table(l: &Ledger) -> String {
    table(l).to_text()
}

/// Serde for an optional instant: RFC 3339 UTC, or `null`.
mod opt_time {
    use chrono::SecondsFormat;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => {
                let text =
                    crate::stats::format_time(*ms, SecondsFormat::AutoSi).ok_or_else(|| {
                        serde::ser::Error::custom(format!("epoch ms {ms} out of range"))
                    })?;
                s.serialize_str(&text)
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            chrono::DateTime::parse_from_rfc3339(&t)
                .map(|t| t.timestamp_millis())
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use telemetry::Reading;
    use telemetry::schema::readings_to_batch;

    use super::*;

    const MIN: i64 = 60_000;
    /// A minute-aligned origin (2025-11-25T16:00:00Z).
    const T0: i64 = 1_764_086_400_000;

    /// The rows of one delivery of message `seq` of `device`: one per metric.
    fn delivery(device: &str, seq: i64, event_time: i64, received_at: i64) -> Vec<Reading> {
        ["temperature", "humidity", "battery"]
            .into_iter()
            .map(|metric| Reading {
                device_id: device.into(),
                seq,
                event_time,
                received_at,
                metric: metric.into(),
                value: 1.0,
                fw: None,
            })
            .collect()
    }

    fn ledger_of(rows: &[Reading], window: Window, sent: Option<&SentLedger>) -> Ledger {
        let mut b = LedgerBuilder::new(None, None);
        b.add_batch(&readings_to_batch(rows).unwrap()).unwrap();
        b.finish(window, DEFAULT_ALLOWED_LATENESS_MS, sent)
    }

    fn device<'a>(l: &'a Ledger, id: &str) -> &'a LedgerRow {
        l.devices.iter().find(|d| d.device_id == id).unwrap()
    }

    fn rejected(device: &str, payload: &str, received_at: i64) -> QuarantineRecord {
        QuarantineRecord::other(
            telemetry::QuarantineReason::WrongType,
            "test".into(),
            &telemetry::topic::telemetry_topic("f", device),
            received_at,
            payload.as_bytes(),
        )
    }

    #[test]
    fn duplicates_are_counted_in_messages_not_rows() {
        let mut rows = Vec::new();
        for seq in 0..5 {
            rows.extend(delivery("d", seq, T0 + seq * 1000, T0 + seq * 1000 + 5));
        }
        // seq 2 delivered twice more, seq 4 once more: 3 extra deliveries, 9 extra rows.
        rows.extend(delivery("d", 2, T0 + 2000, T0 + 9000));
        rows.extend(delivery("d", 2, T0 + 2000, T0 + 9500));
        rows.extend(delivery("d", 4, T0 + 4000, T0 + 9900));
        let l = ledger_of(&rows, Window::M1, None);
        assert_eq!(l.rows_read, 24);
        let t = &l.totals;
        assert_eq!((t.received, t.duplicated, t.missing, t.late), (5, 3, 0, 0));
        assert_eq!(t.sent, 5, "observed range 0..=4");
        assert_eq!(l.rows.len(), 1);
        assert_eq!(l.rows[0].sent_from, SentFrom::Observed);
    }

    #[test]
    fn the_first_delivery_stands_for_a_message_whatever_the_reading_order() {
        // A late redelivery read first: the earlier delivery decides lateness.
        let mut rows = delivery("d", 7, T0, T0 + 20 * MIN);
        rows.extend(delivery("d", 7, T0, T0 + 1000));
        let l = ledger_of(&rows, Window::M1, None);
        assert_eq!(l.rows.len(), 1);
        assert_eq!(l.rows[0].window_start, Some(T0));
        assert_eq!(
            (l.rows[0].received, l.rows[0].duplicated, l.rows[0].late),
            (1, 1, 0)
        );
    }

    #[test]
    fn a_device_that_restarted_its_seq_sent_new_messages_not_duplicates() {
        // seq 0..3, a reboot, seq 0..3 again ten minutes later, and one true re-delivery.
        let mut rows = Vec::new();
        for seq in 0..3 {
            rows.extend(delivery("d", seq, T0 + seq * 1000, T0 + seq * 1000 + 5));
            rows.extend(delivery(
                "d",
                seq,
                T0 + 10 * MIN + seq,
                T0 + 10 * MIN + seq + 5,
            ));
        }
        rows.extend(delivery("d", 1, T0 + 1000, T0 + 1000 + 50));
        let l = ledger_of(&rows, Window::M1, None);
        assert_eq!((l.totals.received, l.totals.duplicated), (6, 1));
        let windows: Vec<(Option<i64>, u64)> = l
            .rows
            .iter()
            .map(|r| (r.window_start, r.received))
            .collect();
        assert_eq!(windows, vec![(Some(T0), 3), (Some(T0 + 10 * MIN), 3)]);
    }

    #[test]
    fn late_means_received_after_the_window_end_plus_the_allowed_lateness() {
        // Window [T0, T0 + 1 min): late from T0 + 1 min + 60 s on.
        let rows: Vec<Reading> = [
            delivery("d", 0, T0, T0 + 2 * MIN - 1),
            delivery("d", 1, T0 + 59_999, T0 + 2 * MIN),
            delivery("d", 2, T0 + 30_000, T0 + 3 * 3_600_000),
        ]
        .concat();
        let m1 = ledger_of(&rows, Window::M1, None);
        assert_eq!(m1.totals.late, 2);
        assert_eq!(m1.rows[0].late, 2);
        // An hour window closes later: only the message three hours late is late.
        let h1 = ledger_of(&rows, Window::H1, None);
        assert_eq!(h1.totals.late, 1);
        // A message stamped in the future is never late.
        let early = ledger_of(&delivery("d", 0, T0 + 10 * MIN, T0), Window::M1, None);
        assert_eq!(early.totals.late, 0);
    }

    #[test]
    fn holes_in_the_observed_range_are_missing_and_placed_after_their_predecessor() {
        let rows: Vec<Reading> = [0, 1, 3, 6]
            .into_iter()
            .flat_map(|seq| delivery("d", seq, T0 + seq * MIN, T0 + seq * MIN + 10))
            .collect();
        let l = ledger_of(&rows, Window::M1, None);
        assert_eq!((l.totals.received, l.totals.missing), (4, 3));
        assert_eq!(l.totals.sent, 7);
        let missing: Vec<(i64, u64)> = l
            .rows
            .iter()
            .filter(|r| r.missing > 0)
            .map(|r| ((r.window_start.unwrap() - T0) / MIN, r.missing))
            .collect();
        assert_eq!(missing, [(1, 1), (3, 2)]);
        // Per row, sent = received + missing (no rejections here).
        for r in &l.rows {
            assert_eq!(r.sent, r.received + r.missing, "{r:?}");
        }
    }

    #[test]
    fn the_devices_ledger_sets_the_range_and_its_drops_are_not_missing() {
        // Device d sent 0..=9 and dropped 2 itself; 3 and 6..=9 never arrived.
        let rows: Vec<Reading> = [0, 1, 2, 4, 5]
            .into_iter()
            .flat_map(|seq| delivery("d", seq, T0 + seq * 1000, T0 + seq * 1000))
            .collect();
        let sent = SentLedger {
            per_device: BTreeMap::from([
                (
                    "d".to_string(),
                    DeviceSent {
                        first_seq: 0,
                        last_seq: Some(9),
                        dropped: 2,
                    },
                ),
                (
                    "silent".to_string(),
                    DeviceSent {
                        first_seq: 100,
                        last_seq: Some(104),
                        dropped: 0,
                    },
                ),
                (
                    "idle".to_string(),
                    DeviceSent {
                        first_seq: 0,
                        last_seq: None,
                        dropped: 0,
                    },
                ),
            ]),
        };
        let l = ledger_of(&rows, Window::M1, Some(&sent));
        let d = device(&l, "d");
        assert_eq!((d.sent, d.received, d.missing), (8, 5, 3));
        assert_eq!(d.sent_from, SentFrom::Summary);
        // Nothing of "silent" arrived: all 5 missing, in a row without a window.
        let s = device(&l, "silent");
        assert_eq!((s.sent, s.received, s.missing), (5, 0, 5));
        assert!(
            l.rows
                .iter()
                .any(|r| r.device_id == "silent" && r.window_start.is_none())
        );
        let i = device(&l, "idle");
        assert_eq!((i.sent, i.missing), (0, 0));
        assert_eq!(l.totals.missing, 8);
        assert_eq!(l.totals.dropped_by_devices, 2);
        assert_eq!(l.totals.devices, 3);
        assert!(
            l.warnings()
                .iter()
                .any(|w| w.contains("8 message(s) missing"))
        );
    }

    #[test]
    fn messages_outside_the_sent_range_are_received_and_flagged() {
        let rows: Vec<Reading> = (0..4).flat_map(|seq| delivery("d", seq, T0, T0)).collect();
        let sent = SentLedger {
            per_device: BTreeMap::from([(
                "d".to_string(),
                DeviceSent {
                    first_seq: 2,
                    last_seq: Some(3),
                    dropped: 0,
                },
            )]),
        };
        let l = ledger_of(&rows, Window::M1, Some(&sent));
        assert_eq!((l.totals.received, l.totals.sent), (4, 2));
        assert_eq!(l.totals.outside_range, 2);
        assert!(l.warnings().iter().any(|w| w.contains("--since")));
    }

    #[test]
    fn rejected_messages_are_attributed_and_fill_their_hole_when_their_seq_is_readable() {
        let rows: Vec<Reading> = [0, 3, 4]
            .into_iter()
            .flat_map(|seq| delivery("d", seq, T0 + seq * 1000, T0 + seq * 1000))
            .collect();
        let mut b = LedgerBuilder::new(None, None);
        b.add_batch(&readings_to_batch(&rows).unwrap()).unwrap();
        // seq 1: JSON with a bad value → rejected, its hole is explained.
        b.add_quarantined(&rejected(
            "d",
            r#"{"device_id":"d","seq":1,"ts":0,"metrics":{"t":"warm"}}"#,
            T0 + 5 * MIN,
        ));
        // seq 2: truncated, but the topic names a known device → rejected and missing.
        b.add_quarantined(&rejected("d", r#"{"device_id":"d","se"#, T0 + 5 * MIN));
        // Garbage on the topic of a device never seen → attributable to nobody.
        b.add_quarantined(&rejected("ghost", "not json", T0));
        let l = b.finish(Window::M1, DEFAULT_ALLOWED_LATENESS_MS, None);
        let d = device(&l, "d");
        assert_eq!((d.received, d.rejected, d.missing, d.sent), (3, 2, 1, 5));
        assert_eq!(l.totals.rejected_unattributed, 1);
        assert_eq!(l.totals.devices, 1);
        // Rejections are placed by receive time.
        let at_5 = l
            .rows
            .iter()
            .find(|r| r.window_start == Some(T0 + 5 * MIN))
            .unwrap();
        assert_eq!(at_5.rejected, 2);
    }

    #[test]
    fn since_and_device_filters_leave_out_other_runs_and_devices() {
        let rows: Vec<Reading> = [
            delivery("a", 0, T0, T0),
            delivery("a", 0, T0 + MIN, T0 + MIN),
            delivery("b", 0, T0 + MIN, T0 + MIN),
        ]
        .concat();
        let batch = readings_to_batch(&rows).unwrap();
        let mut b = LedgerBuilder::new(Some(T0 + MIN), Some("a"));
        b.add_batch(&batch).unwrap();
        b.add_quarantined(&rejected("a", "{}", T0));
        b.add_quarantined(&rejected("b", r#"{"device_id":"b"}"#, T0 + MIN));
        let l = b.finish(Window::M1, DEFAULT_ALLOWED_LATENESS_MS, None);
        assert_eq!(l.devices.len(), 1);
        let t = &l.totals;
        assert_eq!((t.received, t.duplicated, t.rejected), (1, 0, 0));
        assert_eq!(l.rows_read, 3);
    }

    #[test]
    fn device_sim_output_is_read_from_its_last_line() {
        let stdout = "device-sim: done\n{\"sent\":3,\"per_device\":{\"sensor-1\":{\"first_seq\":5,\
                      \"last_seq\":7,\"sent\":3,\"acknowledged\":3,\"failed\":0,\"dropped\":0}}}\n\n";
        let s = SentLedger::from_summary(stdout).unwrap();
        assert_eq!(
            s.per_device["sensor-1"],
            DeviceSent {
                first_seq: 5,
                last_seq: Some(7),
                dropped: 0
            }
        );
        let dump = r#"{"mode":"dump","messages":3}"#;
        let err = SentLedger::from_summary(dump).unwrap_err().to_string();
        assert!(err.contains("a --dump run has none"), "{err}");
        let err = SentLedger::from_summary("nope").unwrap_err().to_string();
        assert!(err.contains("--summary-json"), "{err}");
    }

    #[tokio::test]
    async fn compute_reads_telemetry_and_quarantine_from_a_store_and_refuses_a_corrupt_file() {
        use object_store::memory::InMemory;
        use object_store::path::Path;

        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let part = telemetry::Partition::of_millis(T0).path();
        // Two objects: seqs 0, 1, 3, then a redelivery of 1 (another Firehose invocation).
        let first: Vec<Reading> = [0, 1, 3]
            .into_iter()
            .flat_map(|seq| delivery("d", seq, T0 + seq * 1000, T0 + seq * 1000))
            .collect();
        let batch = readings_to_batch(&first).unwrap();
        io::write_parquet(&store, &format!("telemetry/{part}/a.parquet"), &batch)
            .await
            .unwrap();
        let again = readings_to_batch(&delivery("d", 1, T0 + 1000, T0 + 9000)).unwrap();
        io::write_parquet(&store, &format!("telemetry/{part}/b.parquet"), &again)
            .await
            .unwrap();
        // Seq 2 quarantined with its reason; a line that is not a record is counted apart.
        let rec = rejected(
            "d",
            r#"{"device_id":"d","seq":2,"ts":0,"metrics":{"t":"warm"}}"#,
            T0,
        );
        let mut jsonl = telemetry::quarantine::to_json_lines(&[rec]);
        jsonl.extend_from_slice(b"{oops\n");
        store
            .put(
                &Path::from(telemetry::quarantine::object_key(T0, "w")),
                jsonl.into(),
            )
            .await
            .unwrap();

        let l = compute(store.clone(), &LedgerConfig::default(), None)
            .await
            .unwrap();
        let t = &l.totals;
        assert_eq!(
            (t.sent, t.received, t.duplicated, t.missing, t.rejected),
            (4, 3, 1, 0, 1)
        );
        assert_eq!((l.files_read, l.rows_read), (2, 12));
        assert_eq!((l.quarantine_records, l.quarantine_unreadable), (1, 1));

        // Everything was written before `since` (minus the skew margin): nothing is read.
        let later = LedgerConfig {
            since_ms: Some(chrono::Utc::now().timestamp_millis() + 3_600_000),
            ..LedgerConfig::default()
        };
        let none = compute(store.clone(), &later, None).await.unwrap();
        assert_eq!((none.files_read, none.totals.received), (0, 0));

        // A telemetry object that is not Parquet stops the ledger, naming it.
        store
            .put(
                &Path::from(format!("telemetry/{part}/c.parquet")),
                b"not parquet".to_vec().into(),
            )
            .await
            .unwrap();
        let err = compute(store, &LedgerConfig::default(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.parquet") && err.contains("move the"),
            "{err}"
        );
    }

    #[test]
    fn csv_and_table_end_with_the_totals() {
        let rows: Vec<Reading> = [0, 2]
            .into_iter()
            .flat_map(|seq| delivery("sensor,1", seq, T0 + seq * MIN, T0))
            .collect();
        let l = ledger_of(&rows, Window::M1, None);
        let csv = to_csv(&l);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], COLUMNS.join(","));
        assert_eq!(
            lines[1],
            "\"sensor,1\",2025-11-25T16:00:00Z,2,1,0,1,0,0,observed"
        );
        assert_eq!(lines.last().copied(), Some("TOTAL,,3,2,0,1,0,0,observed"));
        let table = to_table(&l);
        assert!(
            table.lines().last().unwrap().starts_with("TOTAL"),
            "{table}"
        );
        assert_eq!(table.lines().count(), 2 + 2 + 2);
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["rows"][0]["window_start"], "2025-11-25T16:00:00Z");
        assert_eq!(json["devices"][0]["window_start"], serde_json::Value::Null);
        assert_eq!(json["window"], "1m");
    }
}

//! `iotpipe requeue`: feeds failed payloads back through the pipeline, for the day a
//! contract bug, a sink outage or a transform fault is fixed.
//!
//! It reads four failure stores:
//! - the quarantine (`quarantine/`: payloads ingest or the raw transform rejected, and
//!   records a sink could not take, reason `sink_failed`);
//! - the local dead-letter queue (`errors/ingest-failed/`: payloads of ingest invocations
//!   that failed, e.g. because the stream was gone; reason `sink_failed`);
//! - Firehose's error output (`errors/processing-failed/`: records the transform answered
//!   `ProcessingFailed` or whose invocation failed on every attempt, in Firehose's
//!   error-record JSON, data base64). Not the payload's fault by the transform's contract (a
//!   bad payload is `Dropped` and quarantined), so they are always taken when no `--reason`
//!   is given. The data is decoded as what the delivery stream held: the rule's record
//!   (topology firehose: the raw payload and its topic, received at the record's arrival
//!   time), a stream record (topologies kinesis and per-message: the normalized message and
//!   its receive time, published again on `dt/requeue/{device}/telemetry`; a packed record
//!   gives one payload per message), or one reading (a conversion failure).
//! - the IoT rule's error action (`errors/iot/`: messages whose rule action — the put into
//!   Firehose or Kinesis — failed, in AWS IoT's error-action format; the receive time is the
//!   key's, else the object's). Not the payload's fault either: taken when no `--reason` is
//!   given, or with `--reason sink_failed`.
//!
//! Each payload goes through the same stack as `replay` (the topology's rule action: the
//! raw transform, the Kinesis stream or ingest), with its **original receive time** (so the
//! event-time window is judged as it was then). Requeuing is idempotent for the data: a
//! payload accepted twice lands twice in Parquet, and the rollup de-duplicates on
//! (`device_id`, `seq`, event time, `metric`), so a second requeue changes no statistic.
//!
//! Idempotent for the quarantine too. The rule for payload rejections (every reason but
//! `sink_failed` and `bad_event_encoding`):
//! - without `--reason`, quarantine records of payload rejections are left alone (counted
//!   as skipped): the contract rejected them, and feeding them again would only quarantine
//!   them a second time;
//! - a `--reason` that names one (the record's reason or one of its batch elements') selects
//!   it, and every payload requeue is about to feed whose rejections are already in the
//!   quarantine (the record itself, or one of the same topic, receive time and bytes, e.g.
//!   a dead letter or error record of a payload quarantined before) is validated again
//!   first, with the stack's validation settings and its original receive time: still
//!   rejected whole, it is not fed (counted as still rejected; its one quarantine record
//!   stays); now accepted whole, it is fed as it is; a batch of which some elements are
//!   still rejected is fed as a batch of only its accepted messages. So no second
//!   quarantine record is written for the same bytes, and the ledger's `rejected` does not
//!   grow. A payload whose rejections are not quarantined yet (a bad payload in a failed
//!   transform invocation) is fed as it is and quarantined this once.

use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::TryStreamExt;
use ingest::IotRuleEvent;
use local::firehose::ErrorRecord;
use local::stack::Stack;
use telemetry::object_store::{self, ObjectStoreExt};
use telemetry::quarantine::QuarantineRecord;
use telemetry::{
    QuarantineReason, Reading, RuleError, RuleRecord, StreamRecord, Telemetry, ValidationConfig,
};

use crate::args::{DataArg, parse_time};
use crate::{Tuning, stack_config, summary};

/// The fleet segment of the topic a stream record from Firehose's error output is published
/// on again (the stream record does not keep the original topic's fleet).
const REQUEUE_FLEET: &str = "requeue";

/// `iotpipe requeue` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  iotpipe requeue --data ./data     # sink failures, dead letters, Firehose's error output
  iotpipe requeue --data ./data --reason ts_out_of_range  # one reason class
  iotpipe requeue --from 2026-11-25T16:00:00Z --to 2026-11-25T17:00:00Z
  # after a sink outage (the run failed and kept its payloads under errors/ingest-failed/):
  iotpipe requeue --data s3://bucket/p --stream kinesis:NAME --reason sink_failed

Sources: quarantine/, errors/ingest-failed/, errors/processing-failed/ (Firehose's
error output: records the transform answered ProcessingFailed or whose invocation failed;
taken whenever no --reason is given) and errors/iot/ (the IoT rule's error action: messages
whose put into Firehose or Kinesis failed; taken without --reason or with --reason
sink_failed). The summary says how many came from each.

Reason codes are those of the records' reason_code field (e.g. malformed_json,
ts_out_of_range, bad_fw, sink_failed). Payload rejections (every reason but sink_failed and
bad_event_encoding) are requeued only when --reason names them. A payload already in the
quarantine as a rejection is validated again before it is fed: one still rejected whole is
left alone (never quarantined a second time), a batch with some elements still rejected is
fed with only its accepted messages.
Running it twice is harmless: the rollup de-duplicates, so the statistics do not change,
and the quarantine does not grow.")]
pub(crate) struct RequeueArgs {
    #[command(flatten)]
    data: DataArg,
    /// Only quarantine records of this reason code (repeat for several); needed to requeue
    /// a payload rejection. With it, errors/processing-failed/ is not read.
    #[arg(long, value_parser = parse_reason)]
    reason: Vec<QuarantineReason>,
    /// Only records received at or after this time (RFC 3339 or epoch ms).
    #[arg(long, value_parser = parse_time)]
    from: Option<i64>,
    /// Only records received before this time (RFC 3339 or epoch ms).
    #[arg(long, value_parser = parse_time)]
    to: Option<i64>,
    #[command(flatten)]
    tuning: Tuning,
    /// Print the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    summary_json: bool,
}

fn parse_reason(s: &str) -> Result<QuarantineReason, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{s:?} is not a quarantine reason code (see a record's reason_code)"))
}

/// Where a requeued payload was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// `quarantine/`.
    Quarantine,
    /// `errors/ingest-failed/`.
    IngestFailed,
    /// `errors/processing-failed/`.
    ProcessingFailed,
    /// `errors/iot/`.
    RuleError,
}

/// One payload to feed again, as the rule would have received it.
#[derive(Debug)]
struct Item {
    /// The bytes the device sent (or what stands for them, see the module doc).
    raw: Vec<u8>,
    /// The topic, without a Basic Ingest prefix.
    topic: String,
    /// The original receive time, epoch milliseconds.
    received_at: i64,
    /// Which store it came from.
    origin: Origin,
}

/// What was selected and what was left alone.
#[derive(Debug, Default)]
struct Selection {
    /// The payloads to feed, oldest first.
    items: Vec<Item>,
    /// Payload rejections no `--reason` named.
    skipped_rejections: u64,
    /// Payloads already quarantined as rejections that the contract still rejects whole.
    still_rejected: u64,
    /// Error records whose data could not be decoded.
    unreadable: u64,
}

impl Selection {
    /// Takes a payload of an error store (topic, bytes, receive time, origin) as
    /// [`to_feed`] decides, given the payloads already quarantined as rejections.
    fn take(
        &mut self,
        (topic, raw, received_at, origin): (String, Vec<u8>, i64, Origin),
        rejected: &std::collections::HashSet<PayloadKey>,
        validation: &ValidationConfig,
    ) {
        let known = rejected.contains(&(topic.clone(), received_at, STANDARD.encode(&raw)));
        match to_feed(raw, &topic, received_at, known, validation) {
            Some(raw) => self.items.push(Item {
                raw,
                topic,
                received_at,
                origin,
            }),
            None => self.still_rejected += 1,
        }
    }
}

/// Lists and reads every object under `prefix`, in key order: key, body and last-modified
/// time (epoch ms).
async fn read_all(
    store: &Arc<dyn object_store::ObjectStore>,
    prefix: &str,
) -> anyhow::Result<Vec<(String, Vec<u8>, i64)>> {
    let prefix = object_store::path::Path::from(prefix);
    let mut listed: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .with_context(|| format!("listing {prefix}/"))?;
    listed.sort_by(|x, y| x.location.cmp(&y.location));
    let mut out = Vec::with_capacity(listed.len());
    for o in listed {
        let body = store
            .get(&o.location)
            .await
            .with_context(|| format!("reading {}", o.location))?
            .bytes()
            .await
            .with_context(|| format!("reading {}", o.location))?;
        out.push((
            o.location.to_string(),
            body.to_vec(),
            o.last_modified.timestamp_millis(),
        ));
    }
    Ok(out)
}

/// The non-empty lines of an object.
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

impl RequeueArgs {
    /// Whether a receive time is inside `--from` / `--to`.
    fn in_time(&self, received_at: i64) -> bool {
        self.from.is_none_or(|f| received_at >= f) && self.to.is_none_or(|t| received_at < t)
    }

    /// Whether `--reason` names the record's reason or one of its batch elements'.
    fn names(&self, rec: &QuarantineRecord) -> bool {
        self.reason.contains(&rec.reason_code)
            || rec
                .rejections
                .iter()
                .any(|r| self.reason.contains(&r.reason_code))
    }
}

/// What to feed for a payload, validated again with the stack's settings and its original
/// receive time, when its rejections are already quarantined (`known`): the payload itself
/// if the contract now accepts it whole, a batch of only its accepted messages if some are
/// still rejected (so that the quarantine does not get a second record of the same bytes),
/// or `None` if it is still rejected whole. A payload whose rejections are not quarantined
/// yet is fed as it is, and quarantined this once.
fn to_feed(
    raw: Vec<u8>,
    topic: &str,
    received_at: i64,
    known: bool,
    cfg: &ValidationConfig,
) -> Option<Vec<u8>> {
    let v = telemetry::validate_payload(&raw, topic, received_at, cfg);
    if v.rejected.is_empty() || !known {
        Some(raw)
    } else if v.accepted.is_empty() {
        None
    } else {
        // A list of validated messages always serializes.
        serde_json::to_vec(&v.accepted).ok()
    }
}

/// One message of a stream record or a reading, as a payload: its topic, bytes and receive
/// time.
fn from_document(line: &[u8]) -> Option<(String, Vec<u8>, i64)> {
    let (msg, received_at) = if let Ok(r) = serde_json::from_slice::<StreamRecord>(line) {
        let received_at = r.received_at;
        let msg = Telemetry {
            device_id: r.device_id,
            seq: r.seq,
            ts: r.ts,
            metrics: r.metrics,
            fw: r.fw,
        };
        (msg, received_at)
    } else {
        let r = serde_json::from_slice::<Reading>(line).ok()?;
        let msg = Telemetry {
            device_id: r.device_id,
            seq: u64::try_from(r.seq).ok()?,
            ts: r.event_time,
            metrics: [(r.metric, r.value)].into_iter().collect(),
            fw: r.fw,
        };
        (msg, r.received_at)
    };
    let topic = format!("dt/{REQUEUE_FLEET}/{}/telemetry", msg.device_id);
    Some((topic, serde_json::to_vec(&msg).ok()?, received_at))
}

/// The payloads an error record of Firehose's error output stands for: topic, bytes and
/// receive time of each (see the module doc; a packed stream record holds several), or
/// `None` if its data is none of the known shapes.
fn from_error_record(e: &ErrorRecord) -> Option<Vec<(String, Vec<u8>, i64)>> {
    let data = e.raw();
    if let Ok((payload, topic)) = RuleRecord::decode(&data) {
        return Some(vec![(topic.into_owned(), payload, e.arrival_timestamp)]);
    }
    let docs: Option<Vec<_>> = lines(&data).map(from_document).collect();
    docs.filter(|d| !d.is_empty())
}

/// The topic (without a Basic Ingest prefix) and payload of an error-action message, or
/// `None` if the object is not one.
fn from_rule_error(body: &[u8]) -> Option<(String, Vec<u8>)> {
    let e: RuleError = serde_json::from_slice(body).ok()?;
    let raw = e.payload().ok()?;
    let topic = telemetry::topic::rule_topic(&e.topic, telemetry::topic::DEFAULT_RULE_NAME)
        .map_or_else(|| e.topic.clone(), |(plain, _)| plain.to_owned());
    Some((topic, raw))
}

/// The identity of a quarantined payload: topic, receive time and raw bytes (base64).
type PayloadKey = (String, i64, String);

/// The payloads under `--data` that match the filters, oldest first. Listed once, before
/// anything is requeued: records this run writes are not read back.
async fn select(
    store: &Arc<dyn object_store::ObjectStore>,
    a: &RequeueArgs,
    validation: &ValidationConfig,
) -> anyhow::Result<Selection> {
    let mut sel = Selection::default();
    // Every quarantine and dead-letter record, and the payloads already quarantined as
    // rejections (whatever the filters: they decide what is fed, not what is known).
    let mut records = Vec::new();
    let mut rejected: std::collections::HashSet<PayloadKey> = std::collections::HashSet::new();
    for (prefix, origin) in [
        (telemetry::layout::QUARANTINE_PREFIX, Origin::Quarantine),
        (
            telemetry::layout::INGEST_FAILED_PREFIX,
            Origin::IngestFailed,
        ),
    ] {
        for (key, body, _) in read_all(store, prefix).await? {
            for line in lines(&body) {
                let Ok(rec) = serde_json::from_slice::<QuarantineRecord>(line) else {
                    tracing::warn!(object = %key, "skipping a line that is not a quarantine record");
                    continue;
                };
                if rec.reason_code.is_payload_rejection() {
                    rejected.insert((rec.topic.clone(), rec.received_at, rec.payload_b64.clone()));
                }
                records.push((rec, origin));
            }
        }
    }
    for (rec, origin) in records {
        if !a.in_time(rec.received_at) || !(a.reason.is_empty() || a.names(&rec)) {
            continue;
        }
        let own_rejection = rec.reason_code.is_payload_rejection();
        if own_rejection && a.reason.is_empty() {
            sel.skipped_rejections += 1;
            continue;
        }
        let raw = if rec.reason_code == QuarantineReason::BadEventEncoding {
            // The rule's payload field itself was kept: it is what to decode.
            STANDARD.decode(rec.raw()).unwrap_or_else(|_| rec.raw())
        } else {
            rec.raw()
        };
        let known = own_rejection
            || rejected.contains(&(rec.topic.clone(), rec.received_at, STANDARD.encode(&raw)));
        let Some(raw) = to_feed(raw, &rec.topic, rec.received_at, known, validation) else {
            sel.still_rejected += 1;
            continue;
        };
        sel.items.push(Item {
            raw,
            topic: rec.topic,
            received_at: rec.received_at,
            origin,
        });
    }
    if a.reason.is_empty() {
        for (key, body, _) in read_all(store, telemetry::layout::PROCESSING_FAILED_PREFIX).await? {
            for line in lines(&body) {
                let decoded = serde_json::from_slice::<ErrorRecord>(line)
                    .ok()
                    .and_then(|e| from_error_record(&e));
                let Some(payloads) = decoded else {
                    tracing::warn!(object = %key,
                        "leaving an error record whose data is not a rule record, stream record or reading");
                    sel.unreadable += 1;
                    continue;
                };
                for (topic, raw, received_at) in payloads {
                    if a.in_time(received_at) {
                        let item = (topic, raw, received_at, Origin::ProcessingFailed);
                        sel.take(item, &rejected, validation);
                    }
                }
            }
        }
    }
    if a.reason.is_empty() || a.reason.contains(&QuarantineReason::SinkFailed) {
        for (key, body, modified) in read_all(store, telemetry::layout::RULE_ERROR_PREFIX).await? {
            let Some((topic, raw)) = from_rule_error(&body) else {
                tracing::warn!(object = %key, "leaving an object that is not an IoT rule error-action message");
                sel.unreadable += 1;
                continue;
            };
            let received_at = RuleError::received_at_of_key(&key).unwrap_or(modified);
            if a.in_time(received_at) {
                sel.take(
                    (topic, raw, received_at, Origin::RuleError),
                    &rejected,
                    validation,
                );
            }
        }
    }
    sel.items.sort_by_key(|r| r.received_at);
    Ok(sel)
}

/// Runs `iotpipe requeue`.
pub(crate) async fn run(a: RequeueArgs) -> anyhow::Result<()> {
    let store = local::stack::open_existing_store(&a.data.data)?;
    let cfg = stack_config(&a.data, &a.tuning);
    let sel = select(&store, &a, &cfg.ingest.validation).await?;
    let stack = Stack::start(cfg).await?;
    let mut devices = local::meter::DeviceCount::default();
    let count = |o: Origin| sel.items.iter().filter(|i| i.origin == o).count() as u64;
    for item in &sel.items {
        if let Some(t) = telemetry::topic::parse_topic(&item.topic) {
            devices.add(t.device_id);
        }
        let event = IotRuleEvent {
            payload: telemetry::RuleRecord::encode_payload(&item.raw),
            topic: item.topic.clone(),
            received_at: item.received_at,
            device_from_topic: None,
        };
        stack
            .on_message(event, item.raw.len(), stack.topology().basic_ingest())
            .await;
    }
    let meter = stack.meter.clone();
    let report = stack.finish(devices.len()).await?;
    let s = summary::Summary::new(
        summary::Source::Requeue {
            from_quarantine: count(Origin::Quarantine),
            from_ingest_failed: count(Origin::IngestFailed),
            from_processing_failed: count(Origin::ProcessingFailed),
            from_rule_errors: count(Origin::RuleError),
            skipped_rejections: sel.skipped_rejections,
            still_rejected: sel.still_rejected,
            unreadable_errors: sel.unreadable,
        },
        &report,
        meter.report(),
        &a.data.data,
        summary::MonthOver::Not("a requeue re-sends what earlier runs kept, it is no fleet"),
    )?;
    crate::dashboard::record_run(&a.data.data, &s, None).await;
    s.print(a.summary_json)?;
    s.rule_errors_fail()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_record(data: &[u8]) -> ErrorRecord {
        ErrorRecord {
            attempts_made: 4,
            arrival_timestamp: 1_764_000_000_500,
            error_code: local::firehose::error_code::FUNCTION_ERROR.to_string(),
            error_message: "failed".to_string(),
            attempt_ending_timestamp: 1_764_000_001_000,
            raw_data: STANDARD.encode(data),
            lambda_arn: None,
        }
    }

    const PAYLOAD: &str =
        r#"{"device_id":"d-1","seq":7,"ts":1764000000000,"metrics":{"t":1.5},"fw":"1.0"}"#;

    #[test]
    fn a_rule_record_gives_back_the_raw_payload_its_topic_and_its_arrival_time() {
        let rec = RuleRecord::new(b"{not json", "dt/f/d-1/telemetry").to_json();
        let got = from_error_record(&error_record(&rec)).unwrap();
        assert_eq!(
            got,
            vec![(
                "dt/f/d-1/telemetry".to_string(),
                b"{not json".to_vec(),
                1_764_000_000_500
            )]
        );
    }

    #[test]
    fn a_packed_stream_record_gives_one_payload_per_message_with_its_receive_time() {
        let a = r#"{"device_id":"d-1","seq":7,"ts":1764000000000,"metrics":{"t":1.5},"fw":"1.0","received_at":1764000000100}"#;
        let b = r#"{"device_id":"d-1","seq":8,"ts":1764000001000,"metrics":{"t":2.5},"received_at":1764000001100}"#;
        let got = from_error_record(&error_record(format!("{a}\n{b}\n").as_bytes())).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "dt/requeue/d-1/telemetry");
        assert_eq!(got[0].1, PAYLOAD.as_bytes());
        assert_eq!(got[0].2, 1_764_000_000_100);
        assert_eq!(got[1].2, 1_764_000_001_100);
    }

    #[test]
    fn a_reading_gives_a_one_metric_payload_of_the_same_identity() {
        let r = r#"{"device_id":"d-1","seq":7,"event_time":1764000000000,"received_at":1764000000100,"metric":"t","value":1.5,"fw":"1.0"}"#;
        let got = from_error_record(&error_record(r.as_bytes())).unwrap();
        assert_eq!(got[0].1, PAYLOAD.as_bytes());
    }

    #[test]
    fn data_of_no_known_shape_is_left_alone() {
        assert_eq!(from_error_record(&error_record(b"[1,2,3]")), None);
        assert_eq!(from_error_record(&error_record(b"")), None);
    }

    #[test]
    fn a_payload_already_quarantined_is_fed_only_for_what_the_contract_now_accepts() {
        let cfg = ValidationConfig::default();
        let topic = "dt/f/d-1/telemetry";
        let at = 1_764_000_000_100;
        let bad = br#"{"device_id":"d-1"}"#.to_vec();
        assert_eq!(to_feed(bad.clone(), topic, at, true, &cfg), None);
        assert_eq!(to_feed(bad.clone(), topic, at, false, &cfg), Some(bad));
        let batch = format!(r#"[{PAYLOAD},{{"device_id":"d-1"}}]"#).into_bytes();
        let fed = to_feed(batch, topic, at, true, &cfg).unwrap();
        assert_eq!(fed, format!("[{PAYLOAD}]").into_bytes());
        let good = PAYLOAD.as_bytes().to_vec();
        assert_eq!(to_feed(good.clone(), topic, at, true, &cfg), Some(good));
    }
}

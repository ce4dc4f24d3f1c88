//! `iotpipe requeue`: feeds quarantined payloads back through ingest, for the day a
//! contract bug or a sink outage is fixed.
//!
//! It reads the quarantine (`quarantine/`: payloads ingest rejected) and the local
//! dead-letter queue (`errors/ingest-failed/`: payloads of ingest invocations that failed,
//! e.g. because the stream was gone; reason `sink_failed`).
//!
//! Each record's raw bytes go through the same stack as `replay`, on the topic
//! they arrived on and with their **original receive time** (so the event-time window is
//! judged as it was then). Requeuing is idempotent for the data: a payload accepted twice
//! lands twice in Parquet, and the rollup de-duplicates on (`device_id`, `seq`, event time,
//! `metric`), so a second requeue changes no statistic. What is still rejected is quarantined again
//! (a new record with the same reason); filter with `--reason` to requeue one class.

use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::TryStreamExt;
use ingest::IotRuleEvent;
use local::stack::Stack;
use telemetry::QuarantineReason;
use telemetry::object_store::{self, ObjectStoreExt};
use telemetry::quarantine::QuarantineRecord;

use crate::args::{DataArg, parse_time};
use crate::{Tuning, stack_config, summary};

/// `iotpipe requeue` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  iotpipe requeue --data ./data                           # every quarantined payload
  iotpipe requeue --data ./data --reason ts_out_of_range  # one reason class
  iotpipe requeue --from 2026-11-25T16:00:00Z --to 2026-11-25T17:00:00Z
  # after a sink outage (the run failed and kept its payloads under errors/ingest-failed/):
  iotpipe requeue --data s3://bucket/p --stream kinesis:NAME --reason sink_failed

Reason codes are those of the records' reason_code field (e.g. malformed_json,
ts_out_of_range, bad_fw, sink_failed). Running it twice is harmless: the rollup
de-duplicates, so the statistics do not change.")]
pub(crate) struct RequeueArgs {
    #[command(flatten)]
    data: DataArg,
    /// Only records of this reason code (repeat for several).
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

/// The quarantine records under `--data` that match the filters, oldest first.
async fn select(
    store: &Arc<dyn object_store::ObjectStore>,
    a: &RequeueArgs,
) -> anyhow::Result<Vec<QuarantineRecord>> {
    let mut objects = Vec::new();
    for prefix in [
        telemetry::layout::QUARANTINE_PREFIX,
        telemetry::layout::INGEST_FAILED_PREFIX,
    ] {
        let prefix = object_store::path::Path::from(prefix);
        let listed: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .with_context(|| format!("listing {prefix}/"))?;
        objects.extend(listed);
    }
    // Listed once, before anything is requeued: records this run writes are not read back.
    objects.sort_by(|x, y| x.location.cmp(&y.location));
    let mut out = Vec::new();
    for o in objects {
        let body = store
            .get(&o.location)
            .await
            .with_context(|| format!("reading {}", o.location))?
            .bytes()
            .await
            .with_context(|| format!("reading {}", o.location))?;
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(rec) = serde_json::from_slice::<QuarantineRecord>(line) else {
                tracing::warn!(object = %o.location, "skipping a line that is not a quarantine record");
                continue;
            };
            let reason_ok = a.reason.is_empty() || a.reason.contains(&rec.reason_code);
            let from_ok = a.from.is_none_or(|f| rec.received_at >= f);
            let to_ok = a.to.is_none_or(|t| rec.received_at < t);
            if reason_ok && from_ok && to_ok {
                out.push(rec);
            }
        }
    }
    out.sort_by_key(|r| r.received_at);
    Ok(out)
}

/// Runs `iotpipe requeue`.
pub(crate) async fn run(a: RequeueArgs) -> anyhow::Result<()> {
    let store = local::stack::open_store(&a.data.data)?;
    let records = select(&store, &a).await?;
    let stack = Stack::start(stack_config(&a.data, &a.tuning)).await?;
    let mut devices = std::collections::HashSet::new();
    for rec in &records {
        let raw = if rec.reason_code == QuarantineReason::BadEventEncoding {
            // The rule's payload field itself was kept: it is what to decode.
            STANDARD.decode(rec.raw()).unwrap_or_else(|_| rec.raw())
        } else {
            rec.raw()
        };
        if let Some(t) = telemetry::topic::parse_topic(&rec.topic) {
            devices.insert(t.device_id.to_string());
        }
        let event = IotRuleEvent {
            payload: STANDARD.encode(&raw),
            topic: rec.topic.clone(),
            received_at: rec.received_at,
            device_from_topic: None,
        };
        stack
            .on_message(event, raw.len(), stack.topology().basic_ingest())
            .await;
    }
    let meter = stack.meter.clone();
    let report = stack.finish(devices.len() as u64).await?;
    let s = summary::Summary::new(
        summary::Source::Replay {
            file: format!(
                "{}/{} (requeue)",
                a.data.data,
                telemetry::layout::QUARANTINE_PREFIX
            ),
            lines: records.len() as u64,
        },
        &report,
        meter.report(),
        &a.data.data,
    )?;
    crate::dashboard::record_run(&a.data.data, &s, None).await;
    s.print(a.summary_json)
}

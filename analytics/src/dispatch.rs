//! The rollup Lambdas on AWS: which event does what.
//!
//! - `IOTPIPE_JOB=rollup` ([`planner`]): a scheduled EventBridge event (the clock, a
//!   backstop) or an SQS batch of S3 new-object notifications (freshness: the rollup runs
//!   as soon as new telemetry lands). Notifications first become pending markers
//!   ([`crate::notify`]); then the planner runs, and rolls the plan up itself or fans it
//!   out ([`crate::fanout::run_fanout`]).
//! - `IOTPIPE_JOB=rollup-worker` ([`worker`]): an SQS batch of units from the units queue
//!   ([`crate::fanout::handle_units`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use object_store::ObjectStore;
use tracing::{info, warn};

use crate::config::RollupConfig;
use crate::fanout::{self, UnitQueue};
use crate::handler::check_scheduled;
use crate::notify;

/// What the planner function needs, built once per cold start.
#[derive(Debug)]
pub struct PlannerDeps<Q> {
    /// The bucket (or local directory).
    pub store: Arc<dyn ObjectStore>,
    /// Prefixes and unit settings.
    pub cfg: RollupConfig,
    /// The units queue; `None` rolls every plan up in-process.
    pub queue: Option<Q>,
    /// Plans of more units than this are fanned out (`IOTPIPE_FANOUT_MIN_UNITS`).
    pub min_units: usize,
}

/// The wall-clock deadline of an invocation; `None` when unknown (a hand-built context).
fn deadline(context: &lambda_runtime::Context) -> Option<SystemTime> {
    (context.deadline > 0).then(|| UNIX_EPOCH + Duration::from_millis(context.deadline))
}

/// The planner function: see the [module documentation](self). The response is the
/// planner's report for a scheduled event, and an `SqsBatchResponse` (the notifications
/// whose markers could not be written) for a queue batch.
pub async fn planner<Q: UnitQueue>(
    event: LambdaEvent<serde_json::Value>,
    deps: &PlannerDeps<Q>,
) -> Result<serde_json::Value, lambda_runtime::Error> {
    let (payload, context) = event.into_parts();
    let deadline = deadline(&context);
    if payload.get("Records").is_some() {
        let batch: SqsEvent = serde_json::from_value(payload)?;
        let (response, report) = notify::handle_notifications(batch, &deps.store, &deps.cfg).await;
        info!(
            request_id = %context.request_id,
            marked = report.marked,
            ignored = report.ignored,
            failed = report.failed,
            "new objects marked"
        );
        // The markers are durable now: a failed plan is retried by the next notification
        // or the schedule, so it does not fail (and redeliver) the notifications.
        match fanout::run_fanout(
            deps.store.clone(),
            &deps.cfg,
            deps.queue.as_ref(),
            deps.min_units,
            deadline,
        )
        .await
        {
            Ok(planned) => info!(report = ?planned, "rollup after notifications"),
            Err(e) => warn!(error = %e, "rollup after notifications failed; the next run retries"),
        }
        return Ok(serde_json::to_value(response)?);
    }
    let scheduled: EventBridgeEvent<serde_json::Value> = serde_json::from_value(payload)?;
    check_scheduled(&scheduled)?;
    info!(request_id = %context.request_id, source = %scheduled.source, "rollup invoked");
    let report = fanout::run_fanout(
        deps.store.clone(),
        &deps.cfg,
        deps.queue.as_ref(),
        deps.min_units,
        deadline,
    )
    .await?;
    Ok(serde_json::to_value(report)?)
}

/// The worker function: one unit per record, partial-batch response.
pub async fn worker(
    event: LambdaEvent<SqsEvent>,
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let (payload, context) = event.into_parts();
    let owner = format!("worker-{}", context.request_id);
    Ok(fanout::handle_units(payload, store, cfg, &owner, deadline(&context)).await)
}

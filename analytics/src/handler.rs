//! The scheduled Lambdas' handlers: a scheduled EventBridge event in, a [`RollupReport`]
//! ([`handle`], the rollup) or a [`CompactReport`] ([`handle_compact`]) out.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::LambdaEvent;
use object_store::ObjectStore;
use tracing::info;

use crate::compact::{CompactConfig, CompactReport, compact};
use crate::config::RollupConfig;
use crate::rollup::{RollupReport, run_rollup_until};

/// The `detail-type` of a scheduled event.
pub const SCHEDULED_DETAIL_TYPE: &str = "Scheduled Event";
/// The sources a scheduled event may come from: an EventBridge rule with a schedule
/// expression (`aws.events`) or EventBridge Scheduler (`aws.scheduler`, whose target input
/// the template sets to this envelope).
pub const SCHEDULE_SOURCES: [&str; 2] = ["aws.events", "aws.scheduler"];

/// An invocation the handler refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The event is not a scheduled event: the function is wired to the wrong trigger.
    /// Refusing makes that visible (a failed invocation) instead of rolling up on every
    /// unrelated event.
    #[error(
        "expected a scheduled event (detail-type \"Scheduled Event\" from aws.events or \
         aws.scheduler), got detail-type {detail_type:?} from {event_source:?}"
    )]
    NotScheduled {
        /// The event's `detail-type`.
        detail_type: String,
        /// The event's `source`.
        event_source: String,
    },
}

/// The compact function's handler: checks that the event is a scheduled event, then
/// compacts every closed hour's small telemetry files ([`crate::compact::compact`]),
/// stopping between hours before the invocation's deadline.
pub async fn handle_compact(
    event: LambdaEvent<EventBridgeEvent<serde_json::Value>>,
    store: Arc<dyn ObjectStore>,
    cfg: &CompactConfig,
) -> Result<CompactReport, lambda_runtime::Error> {
    let (payload, context) = event.into_parts();
    check_scheduled(&payload)?;
    info!(request_id = %context.request_id, source = %payload.source, "compact invoked");
    let deadline =
        (context.deadline > 0).then(|| UNIX_EPOCH + Duration::from_millis(context.deadline));
    let now_ms = chrono::Utc::now().timestamp_millis();
    Ok(compact(&store, cfg, now_ms, deadline).await?)
}

/// Handles one scheduled invocation: checks that the event is a scheduled event, then
/// runs one incremental rollup over `store`, stopping between hour partitions before the
/// invocation's deadline (a backlog is finished by the next invocations). The event
/// carries no input beyond that: the store, the markers and the units' state say what to do.
///
/// Files that could not be read do not fail the invocation; they are listed in the
/// report's `skipped_files` (and logged as warnings) and retried by the next run.
pub async fn handle(
    event: LambdaEvent<EventBridgeEvent<serde_json::Value>>,
    store: Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
) -> Result<RollupReport, lambda_runtime::Error> {
    let (payload, context) = event.into_parts();
    check_scheduled(&payload)?;
    info!(
        request_id = %context.request_id,
        source = %payload.source,
        scheduled_time = ?payload.time,
        "rollup invoked"
    );
    // 0 means "unknown" (a hand-built context, as in local runs and tests): no limit.
    let deadline =
        (context.deadline > 0).then(|| UNIX_EPOCH + Duration::from_millis(context.deadline));
    Ok(run_rollup_until(store, cfg, deadline).await?)
}

/// Refuses an event that is not a scheduled event ([`HandlerError::NotScheduled`]).
pub fn check_scheduled(payload: &EventBridgeEvent<serde_json::Value>) -> Result<(), HandlerError> {
    if payload.detail_type != SCHEDULED_DETAIL_TYPE
        || !SCHEDULE_SOURCES.contains(&payload.source.as_str())
    {
        return Err(HandlerError::NotScheduled {
            detail_type: payload.detail_type.clone(),
            event_source: payload.source.clone(),
        });
    }
    Ok(())
}

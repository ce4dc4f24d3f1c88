//! The report function's handler: on its schedule (after the rollup's), re-renders the
//! site from the bucket and writes it back under `dashboard/` — the same rendering code
//! as `iotpipe dashboard`.

use std::sync::Arc;

use analytics::handler::{SCHEDULE_SOURCES, SCHEDULED_DETAIL_TYPE};
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::LambdaEvent;
use object_store::ObjectStore;
use serde::Serialize;

use crate::{Options, publish};

/// What one invocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportOutput {
    /// Pages written.
    pub pages: usize,
    /// The key prefix they were written under.
    pub prefix: String,
}

/// The event is not a scheduled event: the function is wired to the wrong trigger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected a scheduled event (detail-type \"Scheduled Event\" from aws.events or \
     aws.scheduler), got detail-type {detail_type:?} from {event_source:?}"
)]
pub struct NotScheduled {
    /// The event's `detail-type`.
    pub detail_type: String,
    /// The event's `source`.
    pub event_source: String,
}

/// Handles one scheduled invocation: renders the site of `store` and writes it under
/// `prefix` in the same store.
pub async fn handle(
    event: LambdaEvent<EventBridgeEvent<serde_json::Value>>,
    store: Arc<dyn ObjectStore>,
    prefix: &str,
) -> Result<ReportOutput, lambda_runtime::Error> {
    let (payload, context) = event.into_parts();
    if payload.detail_type != SCHEDULED_DETAIL_TYPE
        || !SCHEDULE_SOURCES.contains(&payload.source.as_str())
    {
        return Err(NotScheduled {
            detail_type: payload.detail_type,
            event_source: payload.source,
        }
        .into());
    }
    let now = chrono::Utc::now().timestamp_millis();
    let site = crate::build(store.clone(), &Options::default(), now).await?;
    let pages = publish(&site, &store, prefix).await?;
    tracing::info!(request_id = %context.request_id, pages, prefix, "dashboard written");
    Ok(ReportOutput {
        pages,
        prefix: prefix.to_string(),
    })
}

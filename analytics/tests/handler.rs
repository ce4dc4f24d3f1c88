//! The rollup Lambda handler, driven by a real-shaped EventBridge scheduled event.

// Helpers outside `#[test]` functions (tests/common) panic on purpose too.
#![allow(clippy::unwrap_used)]

mod common;

use analytics::RollupConfig;
use analytics::handler::{HandlerError, handle};
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use common::*;
use lambda_runtime::{Context, LambdaEvent};

const FIXTURE: &str = include_str!("fixtures/scheduled-event.json");

fn event(json: &str) -> LambdaEvent<EventBridgeEvent<serde_json::Value>> {
    LambdaEvent::new(serde_json::from_str(json).unwrap(), Context::default())
}

#[tokio::test]
async fn the_scheduled_event_fixture_runs_a_rollup() {
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    let report = handle(event(FIXTURE), store.clone(), &RollupConfig::default())
        .await
        .unwrap();
    assert_eq!(report.new_files, 1);
    assert_eq!(report.stats_files_written, 1);
    // The response is the report as JSON.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["windows_updated"], 1);
    // Every unit of the hour records the new object, whether its bucket had readings.
    assert_eq!(
        json["state_objects_written"],
        RollupConfig::default().buckets
    );
}

#[tokio::test]
async fn an_eventbridge_scheduler_event_is_accepted() {
    let json = FIXTURE.replace("\"aws.events\"", "\"aws.scheduler\"");
    let report = handle(event(&json), store(), &RollupConfig::default())
        .await
        .unwrap();
    assert_eq!(report.files_scanned, 0);
}

#[tokio::test]
async fn an_event_that_is_not_scheduled_is_refused_naming_what_arrived() {
    let json = FIXTURE
        .replace("Scheduled Event", "Object Created")
        .replace("\"aws.events\"", "\"aws.s3\"");
    let store = store();
    put_file(&store, "a.parquet", &[reading("d", 1, H16 + 1, "t", 1.0)]).await;
    let before = snapshot(&store).await;
    let err = handle(event(&json), store.clone(), &RollupConfig::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<HandlerError>(),
        Some(&HandlerError::NotScheduled {
            detail_type: "Object Created".into(),
            event_source: "aws.s3".into(),
        })
    );
    assert!(
        err.to_string()
            .contains("\"Object Created\" from \"aws.s3\""),
        "{err}"
    );
    assert_eq!(
        snapshot(&store).await,
        before,
        "a refused event must not roll up"
    );
}

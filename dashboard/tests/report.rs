//! The `report` Lambda's handler, from a real-shaped scheduled event: it writes the site
//! under `dashboard/` in the store it reads, and refuses any other event.

#![allow(clippy::unwrap_used)]

mod common;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::{Context, LambdaEvent};
use object_store::ObjectStoreExt;
use object_store::path::Path;

const FIXTURE: &str = include_str!("fixtures/scheduled-event.json");

fn event(json: &str) -> LambdaEvent<EventBridgeEvent<serde_json::Value>> {
    LambdaEvent::new(serde_json::from_str(json).unwrap(), Context::default())
}

#[tokio::test]
async fn a_scheduled_event_writes_every_page_under_the_dashboard_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry::store::open_store(dir.path().to_str().unwrap()).unwrap();
    common::fixture(&store).await;
    let out = dashboard::report::handle(event(FIXTURE), store.clone(), dashboard::SITE_PREFIX)
        .await
        .unwrap();
    // 5 pages + one per device of the fixture.
    assert_eq!(out.pages, 8);
    let index = store
        .get(&Path::from("dashboard/index.html"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let index = String::from_utf8(index.to_vec()).unwrap();
    assert!(index.contains("fleet-table-temperature"));
    assert!(
        store
            .get(&Path::from("dashboard/device/sensor-b.html"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn any_other_event_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry::store::open_store(dir.path().to_str().unwrap()).unwrap();
    let other = FIXTURE.replace("Scheduled Event", "Object Created");
    let err = dashboard::report::handle(event(&other), store.clone(), "dashboard")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("expected a scheduled event"),
        "{err}"
    );
    assert!(
        store
            .get(&Path::from("dashboard/index.html"))
            .await
            .is_err()
    );
}

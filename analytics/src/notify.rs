//! New-object notifications on AWS: S3 `ObjectCreated` events, delivered through an SQS
//! queue, become the same [pending markers](crate::pending) the local Firehose writes.
//!
//! The planner then lists only the markers, never the history of `telemetry/`. Each SQS
//! record's body is one of:
//! - an S3 event notification (`{"Records":[{"eventName":"ObjectCreated:Put","s3":{…}}]}`,
//!   the bucket's `QueueConfigurations`); its keys are URL-encoded (`dt%3D2025-11-25`);
//! - an EventBridge `Object Created` event from S3 (`{"detail-type":"Object Created",
//!   "detail":{"object":{"key":…}}}`, the bucket's EventBridge notifications and a rule
//!   targeting the queue, which `infra/template.yaml` uses); its keys are plain;
//! - the `s3:TestEvent` S3 sends when a notification is configured: ignored.
//!
//! Keys outside the telemetry prefix or outside an hour partition are ignored (the rollup
//! could not use them). A record whose markers could not all be written is reported in
//! `batchItemFailures`, so SQS redelivers it; writing a marker twice is harmless.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::config::RollupConfig;
use crate::io;
use crate::pending;

/// What one batch of notifications did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyReport {
    /// Markers written.
    pub marked: usize,
    /// Objects ignored: not telemetry of an hour partition, or not a creation.
    pub ignored: usize,
    /// Records reported as failed (SQS redelivers them).
    pub failed: usize,
}

/// The object keys a queue message's body names as created, decoded. `Err` for a body
/// that is none of the shapes of the [module documentation](self).
pub fn created_keys(body: &str) -> Result<Vec<String>, String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(records) = value.get("Records") {
        // Read leniently, field by field: only the event name and the key matter, and
        // not every sender fills the rest of aws_lambda_events' S3EventRecord (moto omits
        // userIdentity and requestParameters).
        let records = records
            .as_array()
            .ok_or("an S3 event notification whose Records is not a list")?;
        let mut keys = Vec::new();
        for r in records {
            let created = r
                .get("eventName")
                .and_then(|n| n.as_str())
                .is_some_and(|n| n.starts_with("ObjectCreated:"));
            if !created {
                continue;
            }
            let key = r
                .pointer("/s3/object/key")
                .and_then(|k| k.as_str())
                .ok_or("an ObjectCreated record without s3.object.key")?;
            keys.push(url_decode(key));
        }
        return Ok(keys);
    }
    if value.get("detail-type").and_then(|v| v.as_str()) == Some("Object Created") {
        let key = value
            .pointer("/detail/object/key")
            .and_then(|k| k.as_str())
            .ok_or("an Object Created event without detail.object.key")?;
        return Ok(vec![key.to_string()]);
    }
    if value.get("Event").and_then(|v| v.as_str()) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    Err("neither an S3 event notification nor an EventBridge Object Created event".into())
}

/// Writes the pending marker of every new telemetry object the records name.
pub async fn handle_notifications(
    event: SqsEvent,
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
) -> (SqsBatchResponse, NotifyReport) {
    let mut response = SqsBatchResponse::default();
    let mut report = NotifyReport::default();
    let prefix = cfg.telemetry_prefix.trim_matches('/');
    for record in event.records {
        let id = record.message_id.unwrap_or_default();
        let keys = match created_keys(record.body.as_deref().unwrap_or_default()) {
            Ok(keys) => keys,
            Err(e) => {
                // Redelivered until maxReceiveCount, then kept in the dead-letter queue
                // for a look: never silently dropped.
                warn!(message_id = %id, error = %e, "unreadable notification");
                report.failed += 1;
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
                continue;
            }
        };
        let mut ok = true;
        for key in keys {
            if io::telemetry_object(prefix, &key).is_none() {
                debug!(key, "not a telemetry object of an hour partition; ignored");
                report.ignored += 1;
                continue;
            }
            match pending::mark(store, &cfg.pending_prefix, &key).await {
                Ok(()) => report.marked += 1,
                Err(e) => {
                    warn!(key, error = %e, "cannot write the pending marker");
                    ok = false;
                }
            }
        }
        if !ok {
            report.failed += 1;
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    (response, report)
}

/// Decodes an S3 notification key: `+` is a space, `%XX` a byte. An invalid escape is
/// kept as written.
fn url_decode(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_keys_are_url_decoded() {
        assert_eq!(
            url_decode("telemetry/dt%3D2025-11-25/hour%3D16/a+b%2B.parquet"),
            "telemetry/dt=2025-11-25/hour=16/a b+.parquet"
        );
        assert_eq!(url_decode("bad%zz%4"), "bad%zz%4");
    }

    #[test]
    fn the_test_event_names_no_key_and_garbage_is_an_error() {
        let test_event = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2025-11-25T16:05:00.000Z","Bucket":"b","RequestId":"r","HostId":"h"}"#;
        assert_eq!(created_keys(test_event).unwrap(), Vec::<String>::new());
        assert!(created_keys("{\"hello\":1}").is_err());
        assert!(created_keys("not json").is_err());
    }
}

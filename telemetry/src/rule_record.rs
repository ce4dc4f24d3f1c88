//! The record the topic rule of the `firehose` and `kinesis` topologies puts into Firehose
//! or Kinesis: `SELECT encode(*, 'base64') AS payload, topic() AS topic FROM
//! 'dt/+/+/telemetry'` (infra/template.yaml).
//!
//! The payload stays unparsed (base64) so that a payload that is not JSON still reaches the
//! pipeline and is quarantined with its reason, and the topic travels with it because its
//! device segment is what an IoT policy authenticated (validation checks the payload's
//! `device_id` against it). The receive time is the record's arrival time in the stream.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// One record the rule puts: the device's payload, base64, and the topic it was published on
/// (without the Basic Ingest prefix `$aws/rules/<rule>/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    /// The payload exactly as the device sent it, base64 (`encode(*, 'base64')`).
    pub payload: String,
    /// The MQTT topic, `dt/{fleet}/{device_id}/telemetry` (`topic()`).
    pub topic: String,
}

impl RuleRecord {
    /// The record for `payload` published on `topic`, as the rule encodes it.
    pub fn new(payload: &[u8], topic: &str) -> Self {
        Self {
            payload: STANDARD.encode(payload),
            topic: topic.to_owned(),
        }
    }

    /// Compact JSON: the stream or Firehose record's data.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of two strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record's data back: the payload's bytes and the topic, or what is wrong
    /// with the data (it is not the rule's record: check the rule's SQL).
    pub fn decode(data: &[u8]) -> Result<(Vec<u8>, String), String> {
        let r: RuleRecord = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        let payload = STANDARD
            .decode(r.payload.as_bytes())
            .map_err(|e| format!("payload is not base64: {e}"))?;
        Ok((payload, r.topic))
    }
}

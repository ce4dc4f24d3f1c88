//! The message a device publishes and the record that travels through the stream.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One telemetry message, as a device publishes it (after validation).
///
/// `device_id` + `seq` is the idempotency key: Kinesis and Firehose deliver at least once,
/// and the analytics de-duplicate on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// The device (an AWS IoT thing name): 1–128 chars of `[A-Za-z0-9_:-]`.
    pub device_id: String,
    /// Per-device sequence number, +1 per message.
    pub seq: u64,
    /// Event time, epoch milliseconds (UTC).
    pub ts: i64,
    /// Readings by metric name; ordered so that the encoding is deterministic.
    pub metrics: BTreeMap<String, f64>,
    /// Firmware version, when the device reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw: Option<String>,
}

/// A normalized message plus the time the pipeline received it: the data of one Kinesis or
/// Firehose record (compact JSON), partitioned by `device_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// The device (partition key).
    pub device_id: String,
    /// Per-device sequence number.
    pub seq: u64,
    /// Event time, epoch milliseconds (UTC).
    pub ts: i64,
    /// Readings by metric name.
    pub metrics: BTreeMap<String, f64>,
    /// Firmware version, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw: Option<String>,
    /// Receive time at the IoT rule (epoch milliseconds, UTC).
    pub received_at: i64,
}

impl StreamRecord {
    /// Attaches the receive time to a validated message.
    pub fn new(msg: Telemetry, received_at: i64) -> Self {
        Self {
            device_id: msg.device_id,
            seq: msg.seq,
            ts: msg.ts,
            metrics: msg.metrics,
            fw: msg.fw,
            received_at,
        }
    }

    /// The compact JSON that is the stream record's data.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings, integers and finite floats cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Number of readings (one Parquet row each).
    pub fn readings(&self) -> usize {
        self.metrics.len()
    }
}

/// One reading in the long layout: the unit the Parquet files and the aggregates count.
///
/// This is also what the transform function emits as JSON for Firehose's record-format
/// conversion (timestamps as epoch milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The device.
    pub device_id: String,
    /// Per-device sequence number of the message the reading came in.
    pub seq: i64,
    /// Event time, epoch milliseconds (UTC).
    pub event_time: i64,
    /// Receive time, epoch milliseconds (UTC).
    pub received_at: i64,
    /// Metric name.
    pub metric: String,
    /// Reading value (finite).
    pub value: f64,
    /// Firmware version, when reported.
    #[serde(default)]
    pub fw: Option<String>,
}

impl StreamRecord {
    /// Explodes the record into one [`Reading`] per metric (the long layout).
    pub fn to_readings(&self) -> impl Iterator<Item = Reading> + '_ {
        // seq is validated to fit in i64 (Parquet int64).
        let seq = i64::try_from(self.seq).unwrap_or(i64::MAX);
        self.metrics.iter().map(move |(metric, value)| Reading {
            device_id: self.device_id.clone(),
            seq,
            event_time: self.ts,
            received_at: self.received_at,
            metric: metric.clone(),
            value: *value,
            fw: self.fw.clone(),
        })
    }
}

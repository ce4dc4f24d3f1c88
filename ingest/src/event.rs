//! The event an AWS IoT topic rule sends the ingest function, and what the function answers.

use serde::{Deserialize, Serialize};

/// What the topic rule
/// `SELECT encode(*, 'base64') AS payload, topic() AS topic, timestamp() AS received_at
/// FROM 'dt/+/+/telemetry'` hands the function.
///
/// The payload arrives base64-encoded and unparsed, so that a malformed payload reaches the
/// function (and is quarantined with its reason) instead of failing inside the rule engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IotRuleEvent {
    /// The raw MQTT payload, base64.
    pub payload: String,
    /// The topic the message was published on.
    pub topic: String,
    /// When IoT Core received the message, epoch milliseconds (`timestamp()`).
    pub received_at: i64,
    /// The topic's device segment (`topic(3)`), when the rule selects it. Informational:
    /// the function parses the topic itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_from_topic: Option<String>,
}

/// One raw payload as the ingest core sees it (decoded from an [`IotRuleEvent`], or read
/// from a replay file or a raw Kinesis stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPayload {
    /// The bytes as the device sent them.
    pub payload: Vec<u8>,
    /// The MQTT topic.
    pub topic: String,
    /// Receive time, epoch milliseconds.
    pub received_at: i64,
}

/// What one ingest invocation did. `messages = accepted + quarantined` always holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestReport {
    /// Messages seen (a device-side batch counts each element; an unparseable payload
    /// counts as one).
    pub messages: u64,
    /// Messages delivered to the stream.
    pub accepted: u64,
    /// Messages quarantined: rejected by validation, or undeliverable after retries.
    pub quarantined: u64,
    /// Of the quarantined, those the sink could not deliver within its retry deadline.
    pub sink_failed: u64,
    /// Readings (metric values) in the accepted messages: the rows they become.
    pub readings: u64,
    /// Put calls made to the sink, retries included.
    pub put_calls: u64,
}

impl IngestReport {
    /// Adds another report's counts to this one.
    pub fn add(&mut self, other: &IngestReport) {
        self.messages += other.messages;
        self.accepted += other.accepted;
        self.quarantined += other.quarantined;
        self.sink_failed += other.sink_failed;
        self.readings += other.readings;
        self.put_calls += other.put_calls;
    }
}

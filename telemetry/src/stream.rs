//! One record as a Kinesis data stream holds it: the unit the local stream hands to its
//! consumer (the emulated Firehose), with the metadata Kinesis attaches.

use bytes::Bytes;

/// A record read from a (real or emulated) Kinesis data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The shard the record was routed to, Kinesis-style (`shardId-000000000000`).
    pub shard_id: String,
    /// The record's sequence number within its shard (increasing, as a decimal string
    /// like Kinesis's).
    pub sequence_number: String,
    /// The partition key (the device id) that chose the shard.
    pub partition_key: String,
    /// The record data: a [`crate::StreamRecord`] as compact JSON.
    pub data: Bytes,
    /// When the stream accepted the record, epoch milliseconds.
    pub approximate_arrival_ms: i64,
}

/// Kinesis's shard id format.
pub fn shard_id(index: usize) -> String {
    format!("shardId-{index:012}")
}

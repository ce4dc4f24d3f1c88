//! How a rejected payload is kept: one JSON line per rejected message, with the reason and
//! the raw bytes, under `quarantine/dt=YYYY-MM-DD/hour=HH/` (by receive time).
//!
//! Nothing that enters the pipeline is dropped silently: a payload that fails validation,
//! and a record that a sink still cannot deliver after its retries, both end up here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::partition::Partition;
use crate::validate::Rejected;

/// Key prefix of quarantined payloads.
pub const QUARANTINE_PREFIX: &str = "quarantine";

/// Reason code of a record a sink could not deliver within its retry deadline.
pub const SINK_FAILED: &str = "sink_failed";

/// One quarantined message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// Stable code of the rejection class (see [`crate::Rejection::code`]).
    pub reason_code: String,
    /// Human-readable reason, saying what was wrong.
    pub reason: String,
    /// The MQTT topic the payload arrived on.
    pub topic: String,
    /// Receive time, epoch milliseconds.
    pub received_at: i64,
    /// Position in a device-side batch, if the payload was a JSON array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The raw bytes, base64: exactly what arrived (or the failing array element).
    pub payload_b64: String,
}

impl QuarantineRecord {
    /// A record of a validation rejection.
    pub fn from_rejected(r: &Rejected, topic: &str, received_at: i64) -> Self {
        Self {
            reason_code: r.reason.code().to_string(),
            reason: r.reason.to_string(),
            topic: topic.to_string(),
            received_at,
            index: r.index,
            payload_b64: STANDARD.encode(&r.raw),
        }
    }

    /// A record of something a later stage could not handle.
    pub fn other(code: &str, reason: String, topic: &str, received_at: i64, raw: &[u8]) -> Self {
        Self {
            reason_code: code.to_string(),
            reason,
            topic: topic.to_string(),
            received_at,
            index: None,
            payload_b64: STANDARD.encode(raw),
        }
    }

    /// The raw bytes, decoded.
    pub fn raw(&self) -> Vec<u8> {
        STANDARD.decode(&self.payload_b64).unwrap_or_default()
    }
}

/// Encodes records as JSON lines.
pub fn to_json_lines(records: &[QuarantineRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        if serde_json::to_writer(&mut out, r).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// The object key for a batch of records quarantined at `received_at` by `writer`
/// (a name unique to the writing invocation), under [`QUARANTINE_PREFIX`].
pub fn object_key(received_at: i64, writer: &str) -> String {
    object_key_under(QUARANTINE_PREFIX, received_at, writer)
}

/// Like [`object_key`], under another key prefix (the deployed function's
/// `IOTPIPE_QUARANTINE_PREFIX`). Slashes around `prefix` are ignored; an empty prefix puts
/// the partitions at the store's root.
pub fn object_key_under(prefix: &str, received_at: i64, writer: &str) -> String {
    let partition = Partition::of_millis(received_at).path();
    match prefix.trim_matches('/') {
        "" => format!("{partition}/{received_at}-{writer}.jsonl"),
        p => format!("{p}/{partition}/{received_at}-{writer}.jsonl"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Rejection;

    #[test]
    fn a_quarantined_payload_keeps_its_bytes_and_reason() {
        let rej = Rejected {
            raw: vec![0xff, b'{'],
            index: None,
            reason: Rejection::InvalidUtf8 { offset: 0 },
        };
        let q = QuarantineRecord::from_rejected(&rej, "dt/f/d/telemetry", 5);
        assert_eq!(q.raw(), vec![0xff, b'{']);
        assert_eq!(q.reason_code, "invalid_utf8");
        let lines = to_json_lines(&[q.clone(), q]);
        assert_eq!(lines.iter().filter(|b| **b == b'\n').count(), 2);
        assert_eq!(
            object_key(0, "x"),
            "quarantine/dt=1970-01-01/hour=00/0-x.jsonl"
        );
    }

    #[test]
    fn a_configured_prefix_replaces_the_default_one_whatever_its_slashes() {
        for prefix in [
            "errors/quarantine",
            "errors/quarantine/",
            "/errors/quarantine/",
        ] {
            assert_eq!(
                object_key_under(prefix, 0, "x"),
                "errors/quarantine/dt=1970-01-01/hour=00/0-x.jsonl"
            );
        }
        assert_eq!(
            object_key_under("", 0, "x"),
            "dt=1970-01-01/hour=00/0-x.jsonl"
        );
    }
}

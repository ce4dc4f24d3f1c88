//! How a rejected payload is kept: one JSON line per rejected payload (a device-side batch
//! once, with its rejected elements listed), with the reason and the raw bytes, under
//! `quarantine/dt=YYYY-MM-DD/hour=HH/` (by receive time).
//!
//! Nothing that enters the pipeline is dropped silently: a payload that fails validation,
//! and a record over a sink's record limit, both end up here (a sink outage fails the
//! ingest invocation instead: see `ingest::IngestError::Sink`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::layout::{QUARANTINE_PREFIX, join};
use crate::partition::Partition;
use crate::validate::Rejected;

/// Declares [`QuarantineReason`] from one table: each variant with its doc and its stable
/// code, so that the enum, [`QuarantineReason::as_str`] and [`QuarantineReason::ALL`]
/// cannot drift apart (serde's snake_case spelling is checked against the codes in the
/// tests).
macro_rules! quarantine_reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident => $code:literal, )*) => {
        /// Why a message was quarantined: the stable code of its class, serialised as the
        /// `reason_code` of a [`QuarantineRecord`] (`"invalid_utf8"`, `"sink_failed"`, …).
        ///
        /// The validation classes mirror [`crate::Rejection`]; the others come from later
        /// stages.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum QuarantineReason {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl QuarantineReason {
            /// Every reason, in declaration order.
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            /// The code as it is written in quarantine records and logs.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $code, )*
                }
            }
        }
    };
}

quarantine_reasons! {
    /// Larger than the IoT Core message limit.
    OversizePayload => "oversize_payload",
    /// Not UTF-8.
    InvalidUtf8 => "invalid_utf8",
    /// Not parseable as JSON.
    MalformedJson => "malformed_json",
    /// A field (or the payload itself) has the wrong JSON type.
    WrongType => "wrong_type",
    /// A required field is absent.
    MissingField => "missing_field",
    /// The event time is outside the accepted window around the receive time.
    TsOutOfRange => "ts_out_of_range",
    /// The device id is not a valid AWS IoT thing name.
    BadDeviceId => "bad_device_id",
    /// The topic is not `dt/{fleet}/{device_id}/telemetry`.
    BadTopic => "bad_topic",
    /// The payload's device id differs from the topic's.
    TopicDeviceMismatch => "topic_device_mismatch",
    /// More metrics than allowed.
    TooManyMetrics => "too_many_metrics",
    /// No metric at all.
    NoMetrics => "no_metrics",
    /// A metric name outside `[a-z][a-z0-9_]{0,63}`.
    BadMetricName => "bad_metric_name",
    /// A metric value that is not a finite number.
    NonFiniteValue => "non_finite_value",
    /// `seq` does not fit Parquet's int64.
    SeqOutOfRange => "seq_out_of_range",
    /// A device-side batch with no message in it.
    EmptyBatch => "empty_batch",
    /// A device-side batch with more elements than the contract allows.
    BatchTooLarge => "batch_too_large",
    /// `fw` too long or with characters outside printable ASCII.
    BadFw => "bad_fw",
    /// A valid message a sink could not deliver within its retry deadline.
    SinkFailed => "sink_failed",
    /// The IoT rule's event carried a payload field that is not base64.
    BadEventEncoding => "bad_event_encoding",
}

impl QuarantineReason {
    /// Whether the contract rejected the payload itself, as opposed to a failure after
    /// validation (a sink that refused a valid message, an event that mangled it) that
    /// `iotpipe requeue` is meant to repair once the cause is fixed.
    pub fn is_payload_rejection(self) -> bool {
        !matches!(self, Self::SinkFailed | Self::BadEventEncoding)
    }
}

impl std::fmt::Display for QuarantineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for QuarantineReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One quarantined message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// The reason class (see [`crate::Rejection::reason`]), as its stable code.
    pub reason_code: QuarantineReason,
    /// Human-readable reason, saying what was wrong.
    pub reason: String,
    /// The MQTT topic the payload arrived on.
    pub topic: String,
    /// Receive time, epoch milliseconds.
    pub received_at: i64,
    /// Position in a device-side batch, if the payload was a JSON array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The raw bytes, base64: exactly what arrived, whole (a device-side batch is kept
    /// once, whatever number of its elements were rejected).
    pub payload_b64: String,
    /// For a device-side batch of which some elements were rejected: each one's position
    /// and reason (the others were accepted). Empty when the payload was rejected whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejections: Vec<ElementRejection>,
}

/// One rejected element of a device-side batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ElementRejection {
    /// Its position in the JSON array.
    pub index: usize,
    /// The reason class.
    pub reason_code: QuarantineReason,
    /// Human-readable reason.
    pub reason: String,
}

impl QuarantineRecord {
    /// A record of a validation rejection.
    pub fn from_rejected(r: &Rejected, topic: &str, received_at: i64) -> Self {
        Self {
            reason_code: r.reason.reason(),
            reason: r.reason.to_string(),
            topic: topic.to_string(),
            received_at,
            index: r.index,
            payload_b64: STANDARD.encode(&r.raw),
            rejections: Vec::new(),
        }
    }

    /// The one record of a payload whose validation rejected `rejected` (non-empty): the
    /// payload's raw bytes, once, with every rejected element's position and reason.
    pub fn from_payload(raw: &[u8], rejected: &[Rejected], topic: &str, received_at: i64) -> Self {
        match rejected {
            [one] if one.index.is_none() => Self::from_rejected(one, topic, received_at),
            _ => {
                let first = rejected.first();
                let rejections: Vec<ElementRejection> = rejected
                    .iter()
                    .map(|r| ElementRejection {
                        index: r.index.unwrap_or(0),
                        reason_code: r.reason.reason(),
                        reason: r.reason.to_string(),
                    })
                    .collect();
                Self {
                    reason_code: first.map_or(QuarantineReason::EmptyBatch, |r| r.reason.reason()),
                    reason: format!(
                        "{} element(s) of the batch rejected (see rejections); the first, [{}]: {}",
                        rejected.len(),
                        first.and_then(|r| r.index).unwrap_or(0),
                        first.map(|r| r.reason.to_string()).unwrap_or_default()
                    ),
                    topic: topic.to_string(),
                    received_at,
                    index: None,
                    payload_b64: STANDARD.encode(raw),
                    rejections,
                }
            }
        }
    }

    /// How many messages the record stands for: each rejected element of a batch, or 1.
    pub fn messages(&self) -> usize {
        self.rejections.len().max(1)
    }

    /// A record of something a later stage could not handle.
    pub fn other(
        code: QuarantineReason,
        reason: String,
        topic: &str,
        received_at: i64,
        raw: &[u8],
    ) -> Self {
        Self {
            reason_code: code,
            reason,
            topic: topic.to_string(),
            received_at,
            index: None,
            payload_b64: STANDARD.encode(raw),
            rejections: Vec::new(),
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
    join(prefix, &format!("{partition}/{received_at}-{writer}.jsonl"))
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
        assert_eq!(q.reason_code, QuarantineReason::InvalidUtf8);
        let json = serde_json::to_value(&q).unwrap();
        assert_eq!(json["reason_code"], "invalid_utf8");
        let lines = to_json_lines(&[q.clone(), q]);
        assert_eq!(lines.iter().filter(|b| **b == b'\n').count(), 2);
        assert_eq!(
            object_key(0, "x"),
            "quarantine/dt=1970-01-01/hour=00/0-x.jsonl"
        );
    }

    #[test]
    fn every_reason_is_written_and_read_back_as_its_code() {
        for &r in QuarantineReason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<QuarantineReason>(&json).unwrap(), r);
        }
        assert!(serde_json::from_str::<QuarantineReason>("\"no_such_code\"").is_err());
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

//! Validation of raw payloads against the data contract, with one typed reason per
//! rejection class.
//!
//! Validation never fails as a whole: every message of a payload ends up either accepted
//! or rejected with a [`Rejection`], so that `input = accepted + rejected` holds at every
//! stage. A payload that cannot be split into messages (bad UTF-8, bad JSON, not an object
//! or array, oversize, bad topic) counts as one rejected message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::{MessageRef, Telemetry};
use crate::quarantine::QuarantineReason;
use crate::topic::parse_topic;

/// AWS IoT Core's maximum MQTT message size (128 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;
/// Maximum number of metrics in one message.
pub const MAX_METRICS: usize = 64;
/// Maximum length of a device id (an AWS IoT thing name).
pub const MAX_DEVICE_ID_LEN: usize = 128;
/// Maximum length of a metric name.
pub const MAX_METRIC_NAME_LEN: usize = 64;
/// Maximum length of `fw`, in characters (printable ASCII, no `"` or `\`).
///
/// Every reading of a message repeats `fw` in the long layout, so its length multiplies
/// the transform's output; the bound keeps the worst case a Firehose processor buffer can
/// hold within Lambda's 6 MiB response (`transform::handler::RESPONSE_BYTES_PER_DATA_BYTE`).
/// 16 characters hold a semantic version with a pre-release tag (`12.4.10-rc.3+b7`).
pub const MAX_FW_LEN: usize = 16;
/// Maximum number of messages in one device-side batch (a JSON array payload).
///
/// A 128 KiB array of tiny elements would otherwise cost one validation, one log line and
/// one rejection per element; 1,000 ordinary messages (~130 bytes each) fill the payload.
pub const MAX_BATCH_MESSAGES: usize = 1000;
/// Default accepted event-time lag behind the receive time: 7 days.
pub const DEFAULT_MAX_PAST_MS: i64 = 7 * 24 * 3600 * 1000;
/// Default accepted event-time lead over the receive time (clock skew): 5 minutes.
pub const DEFAULT_MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// Tunables of validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationConfig {
    /// How far an event time may lie before the receive time, in milliseconds.
    /// Default 7 days.
    pub max_past_ms: i64,
    /// How far an event time may lie after the receive time (device clock skew), in
    /// milliseconds. Default 5 minutes.
    pub max_future_ms: i64,
    /// Largest accepted payload in bytes. Default 128 KiB, the AWS IoT Core message limit.
    pub max_payload_bytes: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            max_past_ms: DEFAULT_MAX_PAST_MS,
            max_future_ms: DEFAULT_MAX_FUTURE_MS,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
        }
    }
}

/// Why a payload or one message of it was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// Larger than the IoT Core message limit.
    #[error("payload is {len} bytes, over the {max}-byte limit (AWS IoT Core's message size)")]
    Oversize {
        /// Payload length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// Not UTF-8.
    #[error("payload is not valid UTF-8 (first invalid byte at offset {offset})")]
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// Not parseable as JSON.
    #[error("payload is not valid JSON: {detail}")]
    MalformedJson {
        /// The parser's message, with line and column.
        detail: String,
    },
    /// A field (or the payload itself) has the wrong JSON type.
    #[error("`{field}` must be {expected}, found {found}")]
    WrongType {
        /// Dotted path of the field (`payload` for the top level).
        field: String,
        /// What the contract expects.
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// A required field is absent.
    #[error("required field `{field}` is missing")]
    MissingField {
        /// The field's name.
        field: &'static str,
    },
    /// The event time is outside the accepted window around the receive time.
    #[error(
        "ts {ts} is outside the accepted window [{earliest}, {latest}] around receive time {received_at} (epoch ms)"
    )]
    TsOutOfRange {
        /// The event time given.
        ts: i64,
        /// The receive time.
        received_at: i64,
        /// Earliest accepted event time.
        earliest: i64,
        /// Latest accepted event time.
        latest: i64,
    },
    /// The device id is not a valid AWS IoT thing name.
    #[error("device_id {device_id:?} is not 1-128 characters of [A-Za-z0-9_:-]")]
    BadDeviceId {
        /// The offending id (truncated to 200 chars).
        device_id: String,
    },
    /// The topic is not `dt/{fleet}/{device_id}/telemetry`.
    #[error("topic {topic:?} is not of the form dt/{{fleet}}/{{device_id}}/telemetry")]
    BadTopic {
        /// The topic the message arrived on.
        topic: String,
    },
    /// The payload's device id differs from the topic's device segment.
    #[error("device_id {device_id:?} does not match the topic's device {topic_device:?}")]
    TopicMismatch {
        /// The device segment of the topic.
        topic_device: String,
        /// The payload's device id.
        device_id: String,
    },
    /// More metrics than allowed.
    #[error("{count} metrics, over the limit of {max}")]
    TooManyMetrics {
        /// How many were sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// No metric at all.
    #[error("`metrics` is empty: a message carries 1 to 64 readings")]
    NoMetrics,
    /// A metric name that does not match `[a-z][a-z0-9_]{0,63}`.
    #[error("metric name {name:?} does not match [a-z][a-z0-9_]{{0,63}}")]
    BadMetricName {
        /// The offending name (truncated to 200 chars).
        name: String,
    },
    /// A metric value that is not a finite number (JSON has no NaN; this is an overflow
    /// such as `1e999`).
    #[error("a metric value is not a finite number: {detail}")]
    NonFiniteValue {
        /// What was found.
        detail: String,
    },
    /// `seq` does not fit Parquet's int64.
    #[error("seq {seq} is larger than 2^63-1")]
    SeqOutOfRange {
        /// The value given.
        seq: u64,
    },
    /// A device-side batch with no message in it.
    #[error("payload is an empty JSON array")]
    EmptyBatch,
    /// A device-side batch with more messages than [`MAX_BATCH_MESSAGES`].
    #[error("the batch holds {count} elements, over the limit of {max}: send several batches")]
    BatchTooLarge {
        /// How many elements the array has.
        count: usize,
        /// The limit ([`MAX_BATCH_MESSAGES`]).
        max: usize,
    },
    /// `fw` is longer than [`MAX_FW_LEN`] or holds characters outside printable ASCII
    /// (or `"` / `\`).
    #[error("fw {fw:?} must be 1-{max} printable ASCII characters without '\"' or '\\'")]
    BadFw {
        /// The offending value (at most 200 characters of it).
        fw: String,
        /// The limit ([`MAX_FW_LEN`]).
        max: usize,
    },
}

impl Rejection {
    /// The reason class, as quarantine records and counters name it.
    pub fn reason(&self) -> QuarantineReason {
        match self {
            Rejection::Oversize { .. } => QuarantineReason::OversizePayload,
            Rejection::InvalidUtf8 { .. } => QuarantineReason::InvalidUtf8,
            Rejection::MalformedJson { .. } => QuarantineReason::MalformedJson,
            Rejection::WrongType { .. } => QuarantineReason::WrongType,
            Rejection::MissingField { .. } => QuarantineReason::MissingField,
            Rejection::TsOutOfRange { .. } => QuarantineReason::TsOutOfRange,
            Rejection::BadDeviceId { .. } => QuarantineReason::BadDeviceId,
            Rejection::BadTopic { .. } => QuarantineReason::BadTopic,
            Rejection::TopicMismatch { .. } => QuarantineReason::TopicDeviceMismatch,
            Rejection::TooManyMetrics { .. } => QuarantineReason::TooManyMetrics,
            Rejection::NoMetrics => QuarantineReason::NoMetrics,
            Rejection::BadMetricName { .. } => QuarantineReason::BadMetricName,
            Rejection::NonFiniteValue { .. } => QuarantineReason::NonFiniteValue,
            Rejection::SeqOutOfRange { .. } => QuarantineReason::SeqOutOfRange,
            Rejection::EmptyBatch => QuarantineReason::EmptyBatch,
            Rejection::BatchTooLarge { .. } => QuarantineReason::BatchTooLarge,
            Rejection::BadFw { .. } => QuarantineReason::BadFw,
        }
    }

    /// A stable machine-readable code for the class (used in quarantine records and
    /// counters): [`Rejection::reason`] spelled as on disk.
    pub fn code(&self) -> &'static str {
        self.reason().as_str()
    }
}

/// A message (or an unsplittable payload) that failed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The raw bytes: the whole payload, or the JSON of the one array element that failed.
    pub raw: Vec<u8>,
    /// Position in a device-side batch (JSON array), if the payload was one.
    pub index: Option<usize>,
    /// Why.
    pub reason: Rejection,
}

/// The outcome of validating one payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validated {
    /// Messages that satisfy the contract, in payload order.
    pub accepted: Vec<Telemetry>,
    /// Messages that do not, each with its reason.
    pub rejected: Vec<Rejected>,
}

impl Validated {
    /// Number of messages the payload counted as (accepted + rejected).
    pub fn messages(&self) -> usize {
        self.accepted.len() + self.rejected.len()
    }
}

/// The outcome of validating one payload, its accepted messages borrowing from the
/// payload ([`validate_payload_borrowed`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidatedRef<'a> {
    /// Messages that satisfy the contract, in payload order.
    pub accepted: Vec<MessageRef<'a>>,
    /// Messages that do not, each with its reason.
    pub rejected: Vec<Rejected>,
}

impl ValidatedRef<'_> {
    /// Number of messages the payload counted as (accepted + rejected).
    pub fn messages(&self) -> usize {
        self.accepted.len() + self.rejected.len()
    }

    /// The owned outcome.
    pub fn into_owned(self) -> Validated {
        Validated {
            accepted: self
                .accepted
                .into_iter()
                .map(MessageRef::into_owned)
                .collect(),
            rejected: self.rejected,
        }
    }

    fn reject_whole(raw: &[u8], reason: Rejection) -> Self {
        Self {
            accepted: Vec::new(),
            rejected: vec![Rejected {
                raw: raw.to_vec(),
                index: None,
                reason,
            }],
        }
    }
}

/// Validates one raw MQTT payload received on `topic` at `received_at` (epoch ms).
///
/// The payload is one message object or a JSON array of them (a device-side batch); each
/// array element is judged on its own.
pub fn validate_payload(
    raw: &[u8],
    topic: &str,
    received_at: i64,
    cfg: &ValidationConfig,
) -> Validated {
    validate_payload_borrowed(raw, topic, received_at, cfg).into_owned()
}

/// [`validate_payload`] with the accepted messages borrowing their strings from `raw`
/// where they hold no escape: the same judgement, without a `String` per field (the raw
/// transform explodes them into rows and drops them).
pub fn validate_payload_borrowed<'a>(
    raw: &'a [u8],
    topic: &str,
    received_at: i64,
    cfg: &ValidationConfig,
) -> ValidatedRef<'a> {
    if raw.len() > cfg.max_payload_bytes {
        return ValidatedRef::reject_whole(
            raw,
            Rejection::Oversize {
                len: raw.len(),
                max: cfg.max_payload_bytes,
            },
        );
    }
    if let Err(e) = std::str::from_utf8(raw) {
        return ValidatedRef::reject_whole(
            raw,
            Rejection::InvalidUtf8 {
                offset: e.valid_up_to(),
            },
        );
    }
    let Some(parts) = parse_topic(topic) else {
        return ValidatedRef::reject_whole(
            raw,
            Rejection::BadTopic {
                topic: truncate(topic),
            },
        );
    };
    if let Some(accepted) = fast_accept(raw, parts.device_id, received_at, cfg) {
        return ValidatedRef {
            accepted,
            rejected: Vec::new(),
        };
    }
    validate_general(raw, parts.device_id, received_at, cfg)
}

/// [`validate_payload`] of a UTF-8 payload of accepted size on a valid topic, through a
/// `serde_json::Value` tree: judges every message and names each rejection's reason.
fn validate_general<'a>(
    raw: &[u8],
    topic_device: &str,
    received_at: i64,
    cfg: &ValidationConfig,
) -> ValidatedRef<'a> {
    let value: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => {
            let detail = e.to_string();
            let reason = if detail.starts_with("number out of range") {
                Rejection::NonFiniteValue { detail }
            } else {
                Rejection::MalformedJson { detail }
            };
            return ValidatedRef::reject_whole(raw, reason);
        }
    };
    let check = |obj: &Value| check_message(obj, topic_device, received_at, cfg);
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return ValidatedRef::reject_whole(raw, Rejection::EmptyBatch);
            }
            if items.len() > MAX_BATCH_MESSAGES {
                return ValidatedRef::reject_whole(
                    raw,
                    Rejection::BatchTooLarge {
                        count: items.len(),
                        max: MAX_BATCH_MESSAGES,
                    },
                );
            }
            let mut out = ValidatedRef::default();
            for (i, item) in items.iter().enumerate() {
                match check(item) {
                    Ok(msg) => out.accepted.push(msg.into()),
                    Err(reason) => out.rejected.push(Rejected {
                        raw: serde_json::to_vec(item).unwrap_or_default(),
                        index: Some(i),
                        reason,
                    }),
                }
            }
            out
        }
        other => match check(&other) {
            Ok(msg) => ValidatedRef {
                accepted: vec![msg.into()],
                rejected: Vec::new(),
            },
            Err(reason) => ValidatedRef::reject_whole(raw, reason),
        },
    }
}

/// The fast path of [`validate_payload`]: a payload that deserializes straight into
/// [`Telemetry`] (one object, or an array of 1 to [`MAX_BATCH_MESSAGES`] objects) and whose
/// every message satisfies [`contract_holds`] is accepted without building a
/// `serde_json::Value` tree (a tenth of the local pipeline's CPU went there). Anything
/// else — a duplicate key, a wrong type, a rule broken — returns `None`, and the general
/// path judges the payload and names the reason, so the outcome is the same either way
/// (`tests::the_fast_path_agrees_with_the_general_one`). A payload it does not accept is
/// parsed twice; that cost falls on bad input only, which is quarantined anyway. A single
/// message spelled as serde writes one is read by [`MessageRef::read_plain`] (what it
/// reads, serde reads the same), anything else by serde.
fn fast_accept<'a>(
    raw: &'a [u8],
    topic_device: &str,
    received_at: i64,
    cfg: &ValidationConfig,
) -> Option<Vec<MessageRef<'a>>> {
    let holds = |m: &MessageRef<'_>| contract_holds(m, topic_device, received_at, cfg);
    match raw.iter().find(|b| !b.is_ascii_whitespace())? {
        b'{' => {
            let msg: MessageRef<'a> = match MessageRef::read_plain(raw) {
                Some(msg) => msg,
                None => serde_json::from_slice(raw).ok()?,
            };
            holds(&msg).then(|| vec![msg])
        }
        b'[' => {
            let msgs: Vec<MessageRef<'a>> = serde_json::from_slice(raw).ok()?;
            let size_ok = (1..=MAX_BATCH_MESSAGES).contains(&msgs.len());
            (size_ok && msgs.iter().all(holds)).then_some(msgs)
        }
        _ => None,
    }
}

/// Whether a well-typed message satisfies every rule [`check_message`] enforces (the same
/// predicates; `check_message` decides the reason when one fails).
fn contract_holds(
    m: &MessageRef<'_>,
    topic_device: &str,
    received_at: i64,
    cfg: &ValidationConfig,
) -> bool {
    let earliest = received_at.saturating_sub(cfg.max_past_ms);
    let latest = received_at.saturating_add(cfg.max_future_ms);
    valid_device_id(&m.device_id)
        && m.device_id == topic_device
        && i64::try_from(m.seq).is_ok()
        && (earliest..=latest).contains(&m.ts)
        && (1..=MAX_METRICS).contains(&m.metrics.len())
        && m.metrics
            .iter()
            .all(|(name, x)| valid_metric_name(name) && x.is_finite())
        && m.fw.as_deref().is_none_or(valid_fw)
}

fn check_message(
    value: &Value,
    topic_device: &str,
    received_at: i64,
    cfg: &ValidationConfig,
) -> Result<Telemetry, Rejection> {
    let obj = value.as_object().ok_or_else(|| Rejection::WrongType {
        field: "payload".into(),
        expected: "a JSON object or an array of objects",
        found: type_name(value).into(),
    })?;

    let device_id = match required(obj, "device_id")? {
        Value::String(s) => s,
        v => return Err(wrong("device_id", "a string", v)),
    };
    if !valid_device_id(device_id) {
        return Err(Rejection::BadDeviceId {
            device_id: truncate(device_id),
        });
    }
    if device_id != topic_device {
        return Err(Rejection::TopicMismatch {
            topic_device: truncate(topic_device),
            device_id: device_id.clone(),
        });
    }

    let seq_v = required(obj, "seq")?;
    let seq = seq_v
        .as_u64()
        .ok_or_else(|| wrong("seq", "a non-negative integer", seq_v))?;
    if i64::try_from(seq).is_err() {
        return Err(Rejection::SeqOutOfRange { seq });
    }

    let ts_v = required(obj, "ts")?;
    let ts = ts_v
        .as_i64()
        .ok_or_else(|| wrong("ts", "an integer (epoch milliseconds)", ts_v))?;
    let earliest = received_at.saturating_sub(cfg.max_past_ms);
    let latest = received_at.saturating_add(cfg.max_future_ms);
    if ts < earliest || ts > latest {
        return Err(Rejection::TsOutOfRange {
            ts,
            received_at,
            earliest,
            latest,
        });
    }

    let metrics_v = required(obj, "metrics")?;
    let metrics_obj = metrics_v
        .as_object()
        .ok_or_else(|| wrong("metrics", "an object of name: number", metrics_v))?;
    if metrics_obj.is_empty() {
        return Err(Rejection::NoMetrics);
    }
    if metrics_obj.len() > MAX_METRICS {
        return Err(Rejection::TooManyMetrics {
            count: metrics_obj.len(),
            max: MAX_METRICS,
        });
    }
    let mut metrics = BTreeMap::new();
    for (name, v) in metrics_obj {
        if !valid_metric_name(name) {
            return Err(Rejection::BadMetricName {
                name: truncate(name),
            });
        }
        let x = match v {
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
        .ok_or_else(|| wrong_owned(format!("metrics.{name}"), "a number", v))?;
        if !x.is_finite() {
            return Err(Rejection::NonFiniteValue {
                detail: format!("metrics.{name} = {x}"),
            });
        }
        metrics.insert(name.clone(), x);
    }

    let fw = match obj.get("fw") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if valid_fw(s) => Some(s.clone()),
        Some(Value::String(s)) => {
            return Err(Rejection::BadFw {
                fw: truncate(s),
                max: MAX_FW_LEN,
            });
        }
        Some(v) => return Err(wrong("fw", "a string", v)),
    };

    Ok(Telemetry {
        device_id: device_id.clone(),
        seq,
        ts,
        metrics,
        fw,
    })
}

fn required<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a Value, Rejection> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(Rejection::MissingField { field }),
        Some(v) => Ok(v),
    }
}

fn wrong(field: &str, expected: &'static str, found: &Value) -> Rejection {
    wrong_owned(field.to_string(), expected, found)
}

fn wrong_owned(field: String, expected: &'static str, found: &Value) -> Rejection {
    let found = match found {
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", truncate(s)),
        v => type_name(v).to_string(),
    };
    Rejection::WrongType {
        field,
        expected,
        found,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// True when `id` is a valid AWS IoT thing name: 1–128 chars of `[A-Za-z0-9_:-]`.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
}

/// True when `fw` is 1–[`MAX_FW_LEN`] printable ASCII characters other than `"` and `\`,
/// so that its JSON encoding is exactly its bytes plus the quotes.
pub fn valid_fw(fw: &str) -> bool {
    !fw.is_empty()
        && fw.len() <= MAX_FW_LEN
        && fw
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// True when `name` matches `[a-z][a-z0-9_]{0,63}`.
pub fn valid_metric_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_METRIC_NAME_LEN
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_078_300_123;
    const TOPIC: &str = "dt/fleet/sensor-000042/telemetry";

    fn check(raw: &str) -> Validated {
        validate_payload(raw.as_bytes(), TOPIC, NOW, &ValidationConfig::default())
    }

    fn reason(raw: &str) -> Rejection {
        let v = check(raw);
        assert!(v.accepted.is_empty(), "accepted {raw}");
        assert_eq!(v.rejected.len(), 1);
        v.rejected[0].reason.clone()
    }

    fn good() -> String {
        format!(
            r#"{{"device_id":"sensor-000042","seq":12345,"ts":{NOW},"metrics":{{"temperature":21.53,"humidity":40.1}},"fw":"1.4.2"}}"#
        )
    }

    #[test]
    fn the_fast_path_agrees_with_the_general_one() {
        let cfg = ValidationConfig::default();
        let msg = |body: &str| format!(r#"{{"device_id":"sensor-000042","seq":1,{body}}}"#);
        let ts = format!(r#""ts":{NOW}"#);
        let many: Vec<String> = (0..65).map(|i| format!(r#""m{i}":1"#)).collect();
        let big_batch = format!("[{}]", vec![good(); MAX_BATCH_MESSAGES + 1].join(","));
        let payloads = [
            good(),
            format!(" \n{}", good()),
            format!("[{},{}]", good(), good()),
            format!("[{},{}]", good(), msg(&format!(r#"{ts},"metrics":{{}}"#))),
            "[]".to_string(),
            big_batch,
            msg(&format!(r#"{ts},"metrics":{{"t":1}},"fw":null"#)),
            msg(&format!(r#"{ts},"metrics":{{"t":1}},"fw":7"#)),
            msg(&format!(
                r#"{ts},"metrics":{{"t":1}},"fw":"way-too-long-firmware-1.2.3""#
            )),
            msg(&format!(r#"{ts},"metrics":{{"t":1,"t":2}}"#)),
            msg(&format!(r#"{ts},"ts":{NOW},"metrics":{{"t":1}}"#)),
            msg(&format!(r#"{ts},"metrics":{{"T":1}}"#)),
            msg(&format!(r#"{ts},"metrics":{{"t":"1"}}"#)),
            msg(&format!(r#"{ts},"metrics":{{"t":1e999}}"#)),
            msg(&format!(r#"{ts},"metrics":{{{}}}"#, many.join(","))),
            msg(r#""ts":1,"metrics":{"t":1}"#),
            msg(&format!(r#""ts":{NOW}.0,"metrics":{{"t":1}}"#)),
            msg(&format!(r#"{ts},"metrics":{{"t":1}},"extra":[1,2]"#)),
            format!(
                r#"{{"device_id":"sensor-000042","seq":18446744073709551615,{ts},"metrics":{{"t":1}}}}"#
            ),
            format!(r#"{{"device_id":"other","seq":1,{ts},"metrics":{{"t":1}}}}"#),
            format!(r#"{{"device_id":"bad id","seq":1,{ts},"metrics":{{"t":1}}}}"#),
            format!(r#"{{"device_id":"sensor-000042","seq":-1,{ts},"metrics":{{"t":1}}}}"#),
            format!(r#"{{"device_id":"sensor-000042",{ts},"metrics":{{"t":1}}}}"#),
            "42".to_string(),
            "{".to_string(),
        ];
        for p in &payloads {
            assert_eq!(
                validate_payload(p.as_bytes(), TOPIC, NOW, &cfg),
                validate_general(p.as_bytes(), "sensor-000042", NOW, &cfg).into_owned(),
                "{p}"
            );
        }
        // The corpus exercises both outcomes of the fast path.
        assert!(fast_accept(good().as_bytes(), "sensor-000042", NOW, &cfg).is_some());
        assert!(fast_accept(payloads[3].as_bytes(), "sensor-000042", NOW, &cfg).is_none());
    }

    #[test]
    fn the_canonical_payload_is_accepted_as_is() {
        let v = check(&good());
        assert!(v.rejected.is_empty());
        let m = &v.accepted[0];
        assert_eq!(m.device_id, "sensor-000042");
        assert_eq!(m.seq, 12345);
        assert_eq!(m.ts, NOW);
        assert_eq!(m.metrics["temperature"], 21.53);
        assert_eq!(m.fw.as_deref(), Some("1.4.2"));
    }

    #[test]
    fn unknown_fields_are_ignored_and_fw_is_optional() {
        let v = check(&format!(
            r#"{{"device_id":"sensor-000042","seq":1,"ts":{NOW},"metrics":{{"t":1}},"extra":[1,2]}}"#
        ));
        assert_eq!(v.accepted.len(), 1);
        assert_eq!(v.accepted[0].fw, None);
    }

    #[test]
    fn every_rejection_class_has_its_own_code() {
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "malformed_json"),
            ("42".into(), "wrong_type"),
            (
                good().replace("\"seq\":12345", "\"seq\":\"x\""),
                "wrong_type",
            ),
            (good().replace("\"seq\":12345", "\"seq\":-1"), "wrong_type"),
            (good().replace("\"seq\":12345,", ""), "missing_field"),
            (good().replace(&NOW.to_string(), "1000"), "ts_out_of_range"),
            (
                good().replace(&NOW.to_string(), &(NOW + 3_600_000).to_string()),
                "ts_out_of_range",
            ),
            (good().replace("21.53", "1e999"), "non_finite_value"),
            (good().replace("21.53", "\"hot\""), "wrong_type"),
            (
                good().replace("temperature", "Temperature"),
                "bad_metric_name",
            ),
            (
                good().replace("{\"temperature\":21.53,\"humidity\":40.1}", "{}"),
                "no_metrics",
            ),
            ("[]".into(), "empty_batch"),
            (
                good().replace("\"seq\":12345", "\"seq\":18446744073709551615"),
                "seq_out_of_range",
            ),
        ];
        for (raw, code) in cases {
            assert_eq!(reason(&raw).code(), code, "{raw}");
        }
    }

    #[test]
    fn a_device_id_that_is_not_a_thing_name_is_rejected() {
        let r = validate_payload(
            good().replace("sensor-000042", "bad id!").as_bytes(),
            "dt/fleet/bad id!/telemetry",
            NOW,
            &ValidationConfig::default(),
        );
        assert_eq!(r.rejected[0].reason.code(), "bad_device_id");
    }

    #[test]
    fn a_payload_from_another_devices_topic_is_rejected() {
        let r = validate_payload(
            good().as_bytes(),
            "dt/fleet/other/telemetry",
            NOW,
            &Default::default(),
        );
        assert_eq!(r.rejected[0].reason.code(), "topic_device_mismatch");
        let r = validate_payload(
            good().as_bytes(),
            "dt/fleet/other/status",
            NOW,
            &Default::default(),
        );
        assert_eq!(r.rejected[0].reason.code(), "bad_topic");
    }

    #[test]
    fn too_many_metrics_are_rejected() {
        let metrics: Vec<String> = (0..65).map(|i| format!("\"m{i}\":1")).collect();
        let raw = format!(
            r#"{{"device_id":"sensor-000042","seq":1,"ts":{NOW},"metrics":{{{}}}}}"#,
            metrics.join(",")
        );
        assert_eq!(reason(&raw).code(), "too_many_metrics");
    }

    #[test]
    fn invalid_utf8_and_oversize_payloads_are_rejected_with_raw_bytes_kept() {
        let raw = b"{\"device_id\":\"\xff\"}";
        let v = validate_payload(raw, TOPIC, NOW, &Default::default());
        assert_eq!(v.rejected[0].reason.code(), "invalid_utf8");
        assert_eq!(v.rejected[0].raw, raw.to_vec());

        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        let v = validate_payload(&big, TOPIC, NOW, &Default::default());
        assert_eq!(v.rejected[0].reason.code(), "oversize_payload");
        assert_eq!(v.rejected[0].raw.len(), MAX_PAYLOAD_BYTES + 1);
    }

    #[test]
    fn a_batch_is_judged_element_by_element() {
        let bad = good().replace("\"seq\":12345,", "");
        let v = check(&format!(
            "[{},{bad},{}]",
            good(),
            good().replace("12345", "12346")
        ));
        assert_eq!(v.accepted.len(), 2);
        assert_eq!(v.rejected.len(), 1);
        assert_eq!(v.rejected[0].index, Some(1));
        assert_eq!(v.rejected[0].reason.code(), "missing_field");
        assert_eq!(v.messages(), 3);
    }

    #[test]
    fn a_firmware_string_past_its_bound_or_outside_printable_ascii_is_rejected() {
        let with_fw = |fw: &str| good().replace("\"1.4.2\"", &serde_json::to_string(fw).unwrap());
        assert_eq!(check(&with_fw("12.4.10-rc.3+b7x")).accepted.len(), 1);
        for fw in [
            "x".repeat(MAX_FW_LEN + 1),
            "3000".repeat(750),
            String::new(),
        ] {
            assert_eq!(
                reason(&with_fw(&fw)).code(),
                "bad_fw",
                "fw of {} chars",
                fw.len()
            );
        }
        for fw in ["1\"2", "1\\2", "1\n2", "v\u{e9}"] {
            assert_eq!(reason(&with_fw(fw)).code(), "bad_fw", "{fw:?}");
        }
    }

    #[test]
    fn a_batch_over_the_element_cap_is_one_rejected_message() {
        let elems = vec!["1"; MAX_BATCH_MESSAGES + 1].join(",");
        let v = check(&format!("[{elems}]"));
        assert_eq!(v.messages(), 1);
        assert_eq!(v.rejected[0].reason.code(), "batch_too_large");
        assert_eq!(v.rejected[0].index, None);
        let at_cap = vec![good(); MAX_BATCH_MESSAGES].join(",");
        assert_eq!(
            check(&format!("[{at_cap}]")).accepted.len(),
            MAX_BATCH_MESSAGES
        );
    }

    #[test]
    fn name_rules_follow_the_contract() {
        assert!(valid_device_id("a:b_c-1"));
        assert!(!valid_device_id(""));
        assert!(!valid_device_id(&"a".repeat(129)));
        assert!(valid_metric_name("battery_v2"));
        assert!(!valid_metric_name("2x"));
        assert!(!valid_metric_name(&format!("a{}", "b".repeat(64))));
    }
}

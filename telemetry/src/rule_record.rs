//! The record the topic rule of the `firehose` and `kinesis` topologies puts into Firehose
//! or Kinesis: `SELECT encode(*, 'base64') AS payload, topic() AS topic FROM
//! 'dt/+/+/telemetry'` (infra/template.yaml).
//!
//! The payload stays unparsed (base64) so that a payload that is not JSON still reaches the
//! pipeline and is quarantined with its reason, and the topic travels with it because its
//! device segment is what an IoT policy authenticated (validation checks the payload's
//! `device_id` against it). The receive time is the record's arrival time in the stream.

use std::borrow::Cow;

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
            payload: Self::encode_payload(payload),
            topic: topic.to_owned(),
        }
    }

    /// The rule's `encode(*, 'base64')` of a payload: standard alphabet, padded. Vectorized
    /// (`base64_simd`): the scalar `base64` engine was ~2 % of a replay's CPU, once here and
    /// once in [`RuleRecord::decode`].
    pub fn encode_payload(payload: &[u8]) -> String {
        base64_simd::STANDARD.encode_to_string(payload)
    }

    /// The rule's `payload` field decoded: the SIMD engine of
    /// [`RuleRecord::encode_payload`], as strict as `base64`'s STANDARD (padding, canonical
    /// trailing bits); what it refuses, STANDARD decodes again to say why.
    pub fn decode_payload(payload: &str) -> Result<Vec<u8>, String> {
        base64_simd::STANDARD
            .decode_to_vec(payload)
            .or_else(|_| STANDARD.decode(payload).map_err(|e| e.to_string()))
    }

    /// Compact JSON: the stream or Firehose record's data.
    pub fn to_json(&self) -> Vec<u8> {
        // Sized up front: `{"payload":"…","topic":"…"}` (a growing buffer reallocated
        // twice per record). Each string is copied as it is when it holds nothing JSON
        // escapes (base64 never does): serde's byte-by-byte escaping of the payload was 4 %
        // of a replay's CPU.
        let mut out = Vec::with_capacity(self.payload.len() + self.topic.len() + 32);
        out.extend_from_slice(b"{\"payload\":");
        crate::row::write_json_str(&mut out, &self.payload);
        out.extend_from_slice(b",\"topic\":");
        crate::row::write_json_str(&mut out, &self.topic);
        out.push(b'}');
        out
    }

    /// Reads a record's data back: the payload's bytes and the topic (borrowed from `data`
    /// unless it holds an escape), or what is wrong with the data (it is not the rule's
    /// record: check the rule's SQL).
    pub fn decode(data: &[u8]) -> Result<(Vec<u8>, Cow<'_, str>), String> {
        match Self::decode_plain(data) {
            Some(decoded) => Ok(decoded),
            None => Self::decode_json(data),
        }
    }

    /// [`RuleRecord::decode`] of a record spelled as [`RuleRecord::to_json`] writes it, with
    /// a topic without escapes: the payload's end found by a vectorized search instead of
    /// serde's byte-by-byte scan of the long base64 string (which showed in the raw
    /// transform's profile). `None` for anything else (another spelling, an escape, a payload that is not base64),
    /// which [`RuleRecord::decode_json`] reads, or says what is wrong with.
    fn decode_plain(data: &[u8]) -> Option<(Vec<u8>, Cow<'_, str>)> {
        let rest = data.strip_prefix(b"{\"payload\":\"")?;
        // Base64 has no quote, and a payload with an escape fails to decode below.
        let (base64, rest) = rest.split_at(memchr::memchr(b'"', rest)?);
        let rest = rest.strip_prefix(b"\",\"topic\":\"")?;
        let end = rest.iter().position(|&b| crate::row::escaped_in_json(b))?;
        if rest[end] != b'"' || &rest[end + 1..] != b"}" {
            return None;
        }
        let topic = std::str::from_utf8(&rest[..end]).ok()?;
        // As strict as `base64`'s STANDARD (padding, canonical trailing bits): what it
        // refuses, `decode_json` refuses again and says why.
        let payload = base64_simd::STANDARD.decode_to_vec(base64).ok()?;
        Some((payload, Cow::Borrowed(topic)))
    }

    /// [`RuleRecord::decode`] through `serde_json`: any spelling of the record.
    fn decode_json(data: &[u8]) -> Result<(Vec<u8>, Cow<'_, str>), String> {
        let r: Borrowed<'_> = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        let payload =
            Self::decode_payload(&r.payload).map_err(|e| format!("payload is not base64: {e}"))?;
        Ok((payload, r.topic))
    }
}

/// A [`RuleRecord`] read without copying its strings (the base64 text is only decoded).
#[derive(Deserialize)]
struct Borrowed<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
    #[serde(borrow)]
    topic: Cow<'a, str>,
}

/// The message AWS IoT's rules engine hands the rule's error action when an action failed
/// (AWS IoT Core developer guide, "Error handling (error action)"): one per rule and
/// message, with the original payload base64 and every failed action. The template's error
/// action writes it to S3 under [`crate::layout::RULE_ERROR_PREFIX`] at
/// [`RuleError::object_key`], and the local rule writes the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleError {
    /// The rule's name.
    pub rule_name: String,
    /// The topic the original message was received on.
    pub topic: String,
    /// The publishing client's id (empty when unknown).
    #[serde(default)]
    pub client_id: String,
    /// The original payload, base64.
    pub base64_original_payload: String,
    /// Each failed action.
    pub failures: Vec<RuleActionFailure>,
}

/// One failed action of a [`RuleError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleActionFailure {
    /// The action, e.g. `FirehoseAction`, `KinesisAction`, `LambdaAction`.
    pub failed_action: String,
    /// The resource it acted on (the delivery stream, stream or function).
    pub failed_resource: String,
    /// Why it failed.
    pub error_message: String,
}

impl RuleError {
    /// The error-action message of a payload (`base64_payload`, as the rule's record holds
    /// it) received on `topic` whose `action` on `resource` failed with `error`.
    pub fn new(
        rule_name: &str,
        topic: &str,
        base64_payload: &str,
        action: &str,
        resource: &str,
        error: &str,
    ) -> Self {
        Self {
            rule_name: rule_name.to_owned(),
            topic: topic.to_owned(),
            client_id: String::new(),
            base64_original_payload: base64_payload.to_owned(),
            failures: vec![RuleActionFailure {
                failed_action: action.to_owned(),
                failed_resource: resource.to_owned(),
                error_message: error.to_owned(),
            }],
        }
    }

    /// The original payload's bytes, or why the field is not base64.
    pub fn payload(&self) -> Result<Vec<u8>, String> {
        STANDARD
            .decode(self.base64_original_payload.as_bytes())
            .map_err(|e| format!("base64OriginalPayload is not base64: {e}"))
    }

    /// Where the error action keeps the message of a message received at `received_at`
    /// (epoch ms): `errors/iot/YYYY-MM-DD/<received_at>-<unique>.json`, as the template's
    /// `errors/iot/${parse_time("yyyy-MM-dd", timestamp())}/${timestamp()}-${newuuid()}.json`.
    pub fn object_key(received_at: i64, unique: &str) -> String {
        let date = crate::Partition::of_millis(received_at).dt;
        crate::layout::join(
            crate::layout::RULE_ERROR_PREFIX,
            &format!("{date}/{received_at}-{unique}.json"),
        )
    }

    /// The receive time an [`RuleError::object_key`] names (its file name's first field),
    /// if the key has that shape.
    pub fn received_at_of_key(key: &str) -> Option<i64> {
        let name = key.rsplit('/').next()?;
        name.split_once('-')?.0.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_error_reads_back_as_aws_writes_it() {
        // The developer guide's example, shortened.
        let aws = r#"{"ruleName":"TestAction","topic":"testme/action",
            "cloudwatchTraceId":"7e146a2c","clientId":"iotconsole-1",
            "base64OriginalPayload":"eyJhIjoxfQ==",
            "failures":[{"failedAction":"S3Action","failedResource":"b",
            "errorMessage":"Failed to put S3 object."}]}"#;
        let e: RuleError = serde_json::from_str(aws).unwrap();
        assert_eq!(e.payload().unwrap(), br#"{"a":1}"#);
        assert_eq!(e.failures[0].failed_action, "S3Action");
        let ours = RuleError::new("r", "dt/f/d/telemetry", "/w==", "FirehoseAction", "s", "x");
        let back: RuleError = serde_json::from_slice(&serde_json::to_vec(&ours).unwrap()).unwrap();
        assert_eq!(back, ours);
        assert_eq!(back.payload().unwrap(), b"\xff");
    }

    #[test]
    fn a_rule_record_is_written_as_serde_writes_it() {
        for (payload, topic) in [
            (&b"{\"device_id\":\"d\"}"[..], "dt/f/d/telemetry"),
            (b"\xff\xfe", "dt/f/\"q\\u/telemetry"),
            (b"", ""),
            (b"\x00\n\t", "dt/f/\u{1}\u{e9}/telemetry"),
        ] {
            let r = RuleRecord::new(payload, topic);
            assert_eq!(r.to_json(), serde_json::to_vec(&r).unwrap());
        }
        // Payloads that are not base64 (the fields are public): with bytes JSON escapes,
        // and without (non-ASCII, DEL), each written as serde writes it.
        for payload in ["a\"b\\c\n", "\u{1f}", "é\u{7f}ü", "plain"] {
            let odd = RuleRecord {
                payload: payload.into(),
                topic: "t".into(),
            };
            assert_eq!(
                odd.to_json(),
                serde_json::to_vec(&odd).unwrap(),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn a_rule_record_is_read_as_serde_reads_it_whatever_its_spelling() {
        let ours = |payload: &[u8], topic: &str| RuleRecord::new(payload, topic).to_json();
        let mut inputs: Vec<Vec<u8>> = vec![
            ours(b"{\"device_id\":\"d\"}", "dt/f/d/telemetry"),
            ours(b"", ""),
            ours(b"\xff\x00", "dt/f/\u{e9}/telemetry"),
            // A topic with escapes, then other spellings serde reads too.
            ours(b"x", "dt/f/\"q\\/telemetry"),
            br#"{"payload":"eA==","topic":"t"} "#.to_vec(),
            br#"{"topic":"t","payload":"eA=="}"#.to_vec(),
            br#"{"payload":"e\u0041==","topic":"t"}"#.to_vec(),
            br#"{"payload":"eA\/=","topic":"t"}"#.to_vec(),
            br#"{ "payload":"eA==","topic":"t"}"#.to_vec(),
            // And what neither reads: not base64, a quote cut short, no topic, not JSON.
            br#"{"payload":"e!==","topic":"t"}"#.to_vec(),
            br#"{"payload":"eA==","topic":"t"#.to_vec(),
            br#"{"payload":"eA=="}"#.to_vec(),
            b"not json".to_vec(),
            br#"{"payload":"eA==","topic":"t","x":1}"#.to_vec(),
        ];
        inputs.push(b"{\"payload\":\"eA==\",\"topic\":\"t\x01\"}".to_vec());
        let mut plain = 0;
        for data in &inputs {
            let json = RuleRecord::decode_json(data);
            plain += usize::from(RuleRecord::decode_plain(data).is_some());
            assert_eq!(
                RuleRecord::decode(data),
                json,
                "{}",
                String::from_utf8_lossy(data)
            );
        }
        // The records `to_json` writes with a plain topic take the short way.
        assert_eq!(plain, 3);
    }

    proptest::proptest! {
        /// The vectorized payload codec is `base64`'s STANDARD engine: the same text for
        /// any bytes, and for any text the same bytes or the same refusal (short and long
        /// strings, wrong padding, non-canonical last characters, bytes outside the
        /// alphabet).
        #[test]
        fn the_payload_codec_is_the_standard_engine(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            text in "[A-Za-z0-9+/]{0,90}(=|==)?",
            junk in "[A-Za-z0-9+/=!\\-_ ]{0,40}",
            cut in 0usize..4,
        ) {
            let ours = RuleRecord::encode_payload(&payload);
            proptest::prop_assert_eq!(&ours, &STANDARD.encode(&payload));
            proptest::prop_assert_eq!(RuleRecord::decode_payload(&ours), Ok(payload));
            // Whole quads (decodable unless the last characters are not canonical), quads
            // cut short, and text with bytes outside the alphabet.
            let quads = &text[..text.len() - text.len() % 4];
            let short = &text[..text.len().saturating_sub(cut)];
            for t in [text.as_str(), quads, short, junk.as_str()] {
                proptest::prop_assert_eq!(
                    base64_simd::STANDARD.decode_to_vec(t).ok(),
                    STANDARD.decode(t).ok(),
                    "{:?}", t
                );
                // The errors are STANDARD's own words.
                proptest::prop_assert_eq!(
                    RuleRecord::decode_payload(t),
                    STANDARD.decode(t).map_err(|e| e.to_string())
                );
            }
        }
    }

    #[test]
    fn the_key_of_a_rule_error_names_its_receive_time() {
        let key = RuleError::object_key(1_764_000_000_123, "u-1");
        assert_eq!(key, "errors/iot/2025-11-24/1764000000123-u-1.json");
        assert_eq!(RuleError::received_at_of_key(&key), Some(1_764_000_000_123));
        assert_eq!(RuleError::received_at_of_key("errors/iot/x/abc.json"), None);
    }
}

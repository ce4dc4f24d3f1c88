//! The message a device publishes and the record that travels through the stream.

use std::borrow::Cow;
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
    /// The compact JSON that is the stream record's data.
    pub fn to_json(&self) -> Vec<u8> {
        // Sized up front for typical ids and names (a growing buffer is reallocated a few
        // times per record). Serializing a struct of strings, integers and finite floats
        // cannot fail.
        let mut out = Vec::with_capacity(96 + self.device_id.len() + 32 * self.metrics.len());
        let _ = serde_json::to_writer(&mut out, self);
        out
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

/// A [`Reading`] whose strings are borrowed where they can be: what the transform writes
/// (from a parsed stream record) and the emulated Firehose's conversion reads (from the
/// transform's rows), without allocating a `String` per field. The same fields and the same
/// JSON as [`Reading`] (a test holds them equal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingRef<'a> {
    /// The device.
    #[serde(borrow)]
    pub device_id: Cow<'a, str>,
    /// Per-device sequence number of the message the reading came in.
    pub seq: i64,
    /// Event time, epoch milliseconds (UTC).
    pub event_time: i64,
    /// Receive time, epoch milliseconds (UTC).
    pub received_at: i64,
    /// Metric name.
    #[serde(borrow)]
    pub metric: Cow<'a, str>,
    /// Reading value (finite).
    pub value: f64,
    /// Firmware version, when reported (borrowed too: a `serde(borrow)` `Cow` inside an
    /// `Option` is copied, which was a `String` per reading in the emulated Firehose's
    /// conversion).
    #[serde(borrow, default, deserialize_with = "optional_str")]
    pub fw: Option<Cow<'a, str>>,
}

/// A [`Telemetry`] message as validation reads it from a payload: its strings borrowed from
/// the payload where they hold no escape, and its metrics a list sorted by name (a map's
/// semantics: each name once, the last value written wins, as `serde_json` fills a
/// [`BTreeMap`]) instead of a map of owned names. What the raw transform validates and
/// explodes without a `String` per field; [`MessageRef::into_owned`] gives the
/// [`Telemetry`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MessageRef<'a> {
    /// The device.
    #[serde(borrow)]
    pub device_id: Cow<'a, str>,
    /// Per-device sequence number.
    pub seq: u64,
    /// Event time, epoch milliseconds (UTC).
    pub ts: i64,
    /// Readings, sorted by metric name, each name once.
    #[serde(borrow, deserialize_with = "sorted_metrics")]
    pub metrics: Vec<(Cow<'a, str>, f64)>,
    /// Firmware version, when the device reports it.
    #[serde(borrow, default, deserialize_with = "optional_str")]
    pub fw: Option<Cow<'a, str>>,
}

impl MessageRef<'_> {
    /// The owned message.
    pub fn into_owned(self) -> Telemetry {
        Telemetry {
            device_id: self.device_id.into_owned(),
            seq: self.seq,
            ts: self.ts,
            metrics: self
                .metrics
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v))
                .collect(),
            fw: self.fw.map(Cow::into_owned),
        }
    }
}

impl<'a> MessageRef<'a> {
    /// The message in `raw` when it is spelled exactly as `serde_json` writes a
    /// [`Telemetry`] (compact, fields in declaration order, floats with a fraction or an
    /// exponent, metric names in increasing order, no escapes) — what device-sim and most
    /// device firmware send; `None` for any other spelling (whitespace, another order, an
    /// integer value, an escape, a repeated name, an unknown field, …), which the caller
    /// then gives to `serde_json`. For every payload it reads, the result is what
    /// `serde_json` gives (tests hold them equal), so validation does not depend on it; it
    /// only skips serde's general machinery for the common spelling.
    pub fn read_plain(raw: &'a [u8]) -> Option<Self> {
        let (message, rest) = read_plain_message(raw)?;
        (rest == b"}").then_some(message)
    }
}

impl From<Telemetry> for MessageRef<'_> {
    fn from(m: Telemetry) -> Self {
        Self {
            device_id: Cow::Owned(m.device_id),
            seq: m.seq,
            ts: m.ts,
            // A BTreeMap iterates sorted, each name once.
            metrics: m
                .metrics
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k), v))
                .collect(),
            fw: m.fw.map(Cow::Owned),
        }
    }
}

/// A [`StreamRecord`] read without copying its strings (see [`MessageRef`]): what the
/// transform explodes into rows, parsed from a stream record's data or built from a
/// validated raw payload ([`StreamRecordRef::new`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecordRef<'a> {
    /// The device.
    #[serde(borrow)]
    pub device_id: Cow<'a, str>,
    /// Per-device sequence number.
    pub seq: u64,
    /// Event time, epoch milliseconds (UTC).
    pub ts: i64,
    /// Readings, sorted by metric name, each name once.
    #[serde(
        borrow,
        deserialize_with = "sorted_metrics",
        serialize_with = "metrics_map"
    )]
    pub metrics: Vec<(Cow<'a, str>, f64)>,
    /// Firmware version, when reported.
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub fw: Option<Cow<'a, str>>,
    /// Receive time at the IoT rule (epoch milliseconds, UTC).
    pub received_at: i64,
}

impl<'a> StreamRecordRef<'a> {
    /// Attaches the receive time to a validated message.
    pub fn new(msg: MessageRef<'a>, received_at: i64) -> Self {
        Self {
            device_id: msg.device_id,
            seq: msg.seq,
            ts: msg.ts,
            metrics: msg.metrics,
            fw: msg.fw,
            received_at,
        }
    }

    /// The stream record in `data` when it is spelled as [`StreamRecordRef::to_json`]
    /// writes it (see [`MessageRef::read_plain`]: `None` for any other spelling, which the
    /// caller then gives to `serde_json`; what it reads, `serde_json` reads the same).
    pub fn read_plain(data: &'a [u8]) -> Option<Self> {
        let (message, rest) = read_plain_message(data)?;
        let (received_at, rest) = crate::row::read_int(rest.strip_prefix(b",\"received_at\":")?)?;
        (rest == b"}").then(|| Self::new(message, received_at))
    }

    /// Number of readings (one Parquet row each).
    pub fn readings(&self) -> usize {
        self.metrics.len()
    }

    /// The compact JSON that is the stream record's data: the same bytes as
    /// [`StreamRecord::to_json`] of the owned record.
    pub fn to_json(&self) -> Vec<u8> {
        // Sized up front, as StreamRecord::to_json; serializing cannot fail.
        let mut out = Vec::with_capacity(96 + self.device_id.len() + 32 * self.metrics.len());
        let _ = serde_json::to_writer(&mut out, self);
        out
    }

    /// Explodes the record into one [`ReadingRef`] per metric, borrowing its strings.
    pub fn reading_refs(&self) -> impl Iterator<Item = ReadingRef<'_>> + '_ {
        // seq is validated to fit in i64 (Parquet int64).
        let seq = i64::try_from(self.seq).unwrap_or(i64::MAX);
        self.metrics.iter().map(move |(metric, value)| ReadingRef {
            device_id: Cow::Borrowed(&self.device_id),
            seq,
            event_time: self.ts,
            received_at: self.received_at,
            metric: Cow::Borrowed(metric),
            value: *value,
            fw: self.fw.as_deref().map(Cow::Borrowed),
        })
    }

    /// Appends the record's readings as newline-terminated JSON rows and returns how many:
    /// byte for byte what `serde_json::to_writer` of each of [`StreamRecordRef::reading_refs`]
    /// (the [`Reading`] JSON) followed by `\n` writes (a test holds them equal), with the
    /// fields every reading of the message shares (device, seq, times, firmware) encoded
    /// once per message instead of once per reading. The transform's rows were a fifth of
    /// its time.
    pub fn write_rows(&self, out: &mut Vec<u8>) -> usize {
        // seq is validated to fit in i64 (Parquet int64).
        let seq = i64::try_from(self.seq).unwrap_or(i64::MAX);
        // Writing to a Vec cannot fail, and every value here serializes (finite floats).
        let head_start = out.len();
        out.extend_from_slice(b"{\"device_id\":");
        crate::row::write_json_str(out, &self.device_id);
        out.extend_from_slice(b",\"seq\":");
        let _ = serde_json::to_writer(&mut *out, &seq);
        out.extend_from_slice(b",\"event_time\":");
        let _ = serde_json::to_writer(&mut *out, &self.ts);
        out.extend_from_slice(b",\"received_at\":");
        let _ = serde_json::to_writer(&mut *out, &self.received_at);
        out.extend_from_slice(b",\"metric\":");
        let head = head_start..out.len();
        let mut tail = None;
        for (i, (metric, value)) in self.metrics.iter().enumerate() {
            if i > 0 {
                out.extend_from_within(head.clone());
            }
            crate::row::write_json_str(out, metric);
            out.extend_from_slice(b",\"value\":");
            let _ = serde_json::to_writer(&mut *out, value);
            match &tail {
                Some(range) => out.extend_from_within(std::ops::Range::clone(range)),
                None => {
                    let start = out.len();
                    out.extend_from_slice(b",\"fw\":");
                    let _ = serde_json::to_writer(&mut *out, &self.fw);
                    out.extend_from_slice(b"}\n");
                    tail = Some(start..out.len());
                }
            }
        }
        if self.metrics.is_empty() {
            out.truncate(head_start);
        }
        self.metrics.len()
    }
}

impl StreamRecord {
    /// The record borrowed as a [`StreamRecordRef`] (its metrics listed in name order).
    pub fn borrowed(&self) -> StreamRecordRef<'_> {
        StreamRecordRef {
            device_id: Cow::Borrowed(&self.device_id),
            seq: self.seq,
            ts: self.ts,
            metrics: self
                .metrics
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), *v))
                .collect(),
            fw: self.fw.as_deref().map(Cow::Borrowed),
            received_at: self.received_at,
        }
    }
}

/// `{"device_id":…,"seq":…,"ts":…,"metrics":{…}` and an optional `,"fw":…` as serde writes
/// them (see [`MessageRef::read_plain`]), and what follows: the fields a device message and
/// a stream record share, in the order both declare them.
fn read_plain_message(raw: &[u8]) -> Option<(MessageRef<'_>, &[u8])> {
    use crate::row::{read_float, read_int, read_str};
    let (device_id, rest) = read_str(raw.strip_prefix(b"{\"device_id\":")?)?;
    let (seq, rest) = read_int(rest.strip_prefix(b",\"seq\":")?)?;
    let seq = u64::try_from(seq).ok()?;
    let (ts, rest) = read_int(rest.strip_prefix(b",\"ts\":")?)?;
    let mut rest = rest.strip_prefix(b",\"metrics\":{")?;
    let mut metrics: Vec<(Cow<'_, str>, f64)> = Vec::with_capacity(4);
    loop {
        let (name, after) = read_str(rest)?;
        let (value, after) = read_float(after.strip_prefix(b":")?)?;
        // Increasing names: serde's sort and de-duplication would change nothing.
        if metrics.last().is_some_and(|(last, _)| *last >= name) {
            return None;
        }
        metrics.push((name, value));
        match after.split_first()? {
            (b',', after) => rest = after,
            (b'}', after) => {
                rest = after;
                break;
            }
            _ => return None,
        }
    }
    let (fw, rest) = match rest.strip_prefix(b",\"fw\":") {
        None => (None, rest),
        Some(after) => match after.strip_prefix(b"null") {
            Some(after) => (None, after),
            None => {
                let (fw, after) = read_str(after)?;
                (Some(fw), after)
            }
        },
    };
    let message = MessageRef {
        device_id,
        seq,
        ts,
        metrics,
        fw,
    };
    Some((message, rest))
}

/// Deserializes a JSON object of `name: number` into a list sorted by name with each name
/// once, the last value written winning (what deserializing into a [`BTreeMap`] keeps),
/// borrowing the names that hold no escape.
fn sorted_metrics<'de, D>(d: D) -> Result<Vec<(Cow<'de, str>, f64)>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Metrics;
    impl<'de> serde::de::Visitor<'de> for Metrics {
        type Value = Vec<(Cow<'de, str>, f64)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of name: number")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(Cow<'de, str>, f64)> =
                Vec::with_capacity(map.size_hint().unwrap_or(4).min(64));
            while let Some(CowStr(name)) = map.next_key()? {
                out.push((name, map.next_value()?));
            }
            // Stable sort of the reversed list: of equal names the last written comes
            // first, and `dedup_by` keeps the first of each run.
            out.reverse();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out.dedup_by(|later, first| later.0 == first.0);
            Ok(out)
        }
    }
    d.deserialize_map(Metrics)
}

/// Serializes a sorted metrics list as the JSON object a [`BTreeMap`] of them makes.
fn metrics_map<S: serde::Serializer>(
    metrics: &[(Cow<'_, str>, f64)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(metrics.iter().map(|(k, v)| (k.as_ref(), v)))
}

/// An optional string (`null` or absent: `None`), borrowed when it holds no escape
/// (`serde(borrow)` borrows a `Cow` but not one inside an `Option`).
fn optional_str<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<CowStr<'de>>::deserialize(d)?.map(|s| s.0))
}

/// A string deserialized borrowed when the input allows it (no escape), owned otherwise.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> serde::de::Visitor<'de> for Str {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(Str).map(CowStr)
    }
}

/// The columns of a reading, whichever way its strings are held: what
/// [`crate::schema::readings_to_batch`] builds a batch from.
pub trait ReadingColumns {
    /// The device.
    fn device_id(&self) -> &str;
    /// Per-device sequence number.
    fn seq(&self) -> i64;
    /// Event time, epoch ms.
    fn event_time(&self) -> i64;
    /// Receive time, epoch ms.
    fn received_at(&self) -> i64;
    /// Metric name.
    fn metric(&self) -> &str;
    /// Value.
    fn value(&self) -> f64;
    /// Firmware version.
    fn fw(&self) -> Option<&str>;
}

/// Implements [`ReadingColumns`] for a reading type whose fields deref to the columns.
macro_rules! reading_columns {
    ($t:ty) => {
        impl ReadingColumns for $t {
            fn device_id(&self) -> &str {
                &self.device_id
            }
            fn seq(&self) -> i64 {
                self.seq
            }
            fn event_time(&self) -> i64 {
                self.event_time
            }
            fn received_at(&self) -> i64 {
                self.received_at
            }
            fn metric(&self) -> &str {
                &self.metric
            }
            fn value(&self) -> f64 {
                self.value
            }
            fn fw(&self) -> Option<&str> {
                self.fw.as_deref()
            }
        }
    };
}
reading_columns!(Reading);
reading_columns!(ReadingRef<'_>);

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_reading_ref_has_the_json_of_its_reading_both_ways() {
        let rec = StreamRecord {
            device_id: "d-1".into(),
            seq: 7,
            ts: 1_764_000_000_000,
            received_at: 1_764_000_000_500,
            metrics: [("temp \"c\"".to_owned(), 21.5), ("rh".to_owned(), 40.0)]
                .into_iter()
                .collect(),
            fw: Some("1.2.3".into()),
        };
        let borrowed_rec = rec.borrowed();
        for (owned, borrowed) in rec.to_readings().zip(borrowed_rec.reading_refs()) {
            let json = serde_json::to_string(&owned).unwrap();
            assert_eq!(serde_json::to_string(&borrowed).unwrap(), json);
            let back: ReadingRef<'_> = serde_json::from_str(&json).unwrap();
            assert_eq!(back, borrowed);
            assert_eq!(serde_json::from_str::<Reading>(&json).unwrap(), owned);
        }
        let mut rows = Vec::new();
        assert_eq!(rec.borrowed().write_rows(&mut rows), 2);
        assert_eq!(rows, serde_rows(&rec));
        // Without fw, and with an escape that cannot be borrowed.
        let back: ReadingRef<'_> = serde_json::from_str(
            r#"{"device_id":"d","seq":1,"event_time":2,"received_at":3,"metric":"a\nb","value":1.0}"#,
        )
        .unwrap();
        assert_eq!((back.metric.as_ref(), back.fw), ("a\nb", None));
        let back: ReadingRef<'_> = serde_json::from_str(
            r#"{"device_id":"d","seq":1,"event_time":2,"received_at":3,"metric":"m","value":1.0,"fw":"1.2"}"#,
        )
        .unwrap();
        assert!(matches!(back.fw, Some(Cow::Borrowed("1.2"))));
    }

    /// The rows as serde writes them: each reading's JSON and a newline.
    fn serde_rows(rec: &StreamRecord) -> Vec<u8> {
        let mut out = Vec::new();
        for reading in rec.borrowed().reading_refs() {
            serde_json::to_writer(&mut out, &reading).unwrap();
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn rows_are_written_as_serde_writes_them() {
        let mut rec = StreamRecord {
            device_id: "sensor-\u{e9}\"7\\".into(),
            seq: u64::MAX,
            ts: -1,
            received_at: i64::MAX,
            metrics: [
                ("a".to_owned(), -0.0),
                ("b\n\u{1}".to_owned(), 1e300),
                ("c".to_owned(), 1e-7),
                ("d".to_owned(), 40.0),
                ("e".to_owned(), -67.123_456_789_012_34),
            ]
            .into_iter()
            .collect(),
            fw: Some("1.\"4\"".into()),
        };
        for fw in [Some("1.\"4\"".to_owned()), None] {
            rec.fw = fw;
            // Appends: what the buffer held stays.
            let mut rows = b"x\n".to_vec();
            assert_eq!(rec.borrowed().write_rows(&mut rows), 5);
            let mut expected = b"x\n".to_vec();
            expected.extend(serde_rows(&rec));
            assert_eq!(
                String::from_utf8(rows).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
        rec.metrics.clear();
        let mut rows = b"x".to_vec();
        assert_eq!(rec.borrowed().write_rows(&mut rows), 0);
        assert_eq!(rows, b"x");
    }

    #[test]
    fn a_message_ref_reads_what_telemetry_reads_borrowing_what_it_can() {
        let cases = [
            r#"{"device_id":"d-1","seq":7,"ts":5,"metrics":{"t":1.5,"a":2,"t":3.5},"fw":"1.2"}"#,
            r#"{"device_id":"d\u002d1","seq":7,"ts":5,"metrics":{"b\n":1e300},"fw":null,"x":[1]}"#,
            r#"{"metrics":{"z":-0.0,"y":1,"x":2},"ts":-1,"seq":0,"device_id":"d"}"#,
        ];
        for json in cases {
            let owned: Telemetry = serde_json::from_str(json).unwrap();
            let borrowed: MessageRef<'_> = serde_json::from_str(json).unwrap();
            assert_eq!(borrowed.clone().into_owned(), owned, "{json}");
            assert_eq!(MessageRef::from(owned), borrowed, "{json}");
        }
        let first: MessageRef<'_> = serde_json::from_str(cases[0]).unwrap();
        assert!(matches!(first.device_id, Cow::Borrowed("d-1")));
        assert!(matches!(first.fw, Some(Cow::Borrowed("1.2"))));
        assert!(matches!(first.metrics[0].0, Cow::Borrowed("a")));
        assert_eq!(
            first.metrics[1],
            (Cow::Borrowed("t"), 3.5),
            "the last value wins"
        );
        // What Telemetry refuses, MessageRef refuses.
        for bad in [
            r#"{"device_id":"d","seq":1,"ts":1,"metrics":{"t":"x"}}"#,
            r#"{"device_id":"d","device_id":"e","seq":1,"ts":1,"metrics":{}}"#,
            r#"{"device_id":"d","seq":-1,"ts":1,"metrics":{}}"#,
            r#"{"device_id":"d","seq":1,"ts":1,"metrics":[]}"#,
            r#"{"device_id":"d","seq":1,"ts":1,"metrics":{},"fw":1}"#,
        ] {
            assert!(serde_json::from_str::<Telemetry>(bad).is_err(), "{bad}");
            assert!(
                serde_json::from_str::<MessageRef<'_>>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_stream_record_ref_reads_what_a_stream_record_reads() {
        let rec = StreamRecord {
            device_id: "d-1".into(),
            seq: 7,
            ts: 1_764_000_000_000,
            received_at: 1_764_000_000_500,
            metrics: [("b".to_owned(), 1.0), ("a\"".to_owned(), 2.0)]
                .into_iter()
                .collect(),
            fw: None,
        };
        let json = rec.to_json();
        let back: StreamRecordRef<'_> = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, rec.borrowed());
        assert_eq!(back.to_json(), json);
        let with_fw = StreamRecord {
            fw: Some("1.0".into()),
            ..rec.clone()
        };
        assert_eq!(with_fw.borrowed().to_json(), with_fw.to_json());
        assert_eq!(back.reading_refs().count(), 2);
        assert!(back.reading_refs().zip(rec.to_readings()).all(|(r, o)| {
            serde_json::to_string(&r).unwrap() == serde_json::to_string(&o).unwrap()
        }));
    }

    /// A message spelled by hand: `fw` absent (`None`), `null` (`Some(None)`) or a string;
    /// metrics in the given order, repeats included; strings and numbers as serde writes them.
    fn spell(
        device: &str,
        seq: u64,
        ts: i64,
        metrics: &[(String, f64)],
        fw: Option<Option<&str>>,
    ) -> Vec<u8> {
        let json = |s: &str| serde_json::to_string(s).unwrap();
        let mut out = format!(
            "{{\"device_id\":{},\"seq\":{seq},\"ts\":{ts},\"metrics\":{{",
            json(device)
        );
        for (i, (name, value)) in metrics.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out += &format!("{}:{}", json(name), serde_json::to_string(value).unwrap());
        }
        out.push('}');
        match fw {
            None => {}
            Some(None) => out += ",\"fw\":null",
            Some(Some(fw)) => out += &format!(",\"fw\":{}", json(fw)),
        }
        out.push('}');
        out.into_bytes()
    }

    /// Equal as serde reads them, values to the bit (`-0.0` is not `0.0`).
    fn same(a: &MessageRef<'_>, b: &MessageRef<'_>) -> bool {
        a == b
            && a.metrics
                .iter()
                .zip(&b.metrics)
                .all(|((_, x), (_, y))| x.to_bits() == y.to_bits())
    }

    fn serde_message(raw: &[u8]) -> Option<MessageRef<'_>> {
        serde_json::from_slice(raw).ok()
    }

    #[test]
    fn a_plain_message_is_read_as_serde_reads_it() {
        let m = |pairs: &[(&str, f64)]| -> Vec<(String, f64)> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        for raw in [
            spell(
                "sensor-000001",
                7,
                1_764_078_300_123,
                &m(&[("battery", 3.712), ("rssi", -67.0)]),
                Some(Some("1.4.2")),
            ),
            spell(
                "d",
                0,
                -5,
                &m(&[("a", -0.0), ("b", 5e-324), ("c", 1.7976931348623157e308)]),
                None,
            ),
            spell(
                "é-ü",
                u64::try_from(i64::MAX).unwrap(),
                0,
                &m(&[("x", 1e-7)]),
                Some(None),
            ),
        ] {
            let fast = MessageRef::read_plain(&raw).expect("the plain spelling is read");
            let slow = serde_message(&raw).expect("serde reads it");
            assert!(same(&fast, &slow), "{fast:?} != {slow:?}");
        }
        // Device-sim's own spelling.
        let sent = Telemetry {
            device_id: "sensor-000042".into(),
            seq: 3,
            ts: 1_764_078_300_123,
            metrics: [
                ("temperature".to_owned(), 21.5),
                ("humidity".to_owned(), 40.1),
            ]
            .into_iter()
            .collect(),
            fw: Some("1.4.2".into()),
        };
        let raw = serde_json::to_vec(&sent).unwrap();
        let fast = MessageRef::read_plain(&raw).expect("device-sim's spelling is read");
        assert_eq!(fast.into_owned(), sent);
    }

    #[test]
    fn other_spellings_of_a_message_are_left_to_serde() {
        for raw in [
            // Unsorted names, a repeated name (serde keeps the last), an integer value, an
            // escape, whitespace, another field order, a negative seq, a seq past i64, an
            // unknown field, no metrics, trailing bytes, a value out of range.
            &br#"{"device_id":"d","seq":1,"ts":2,"metrics":{"b":1.0,"a":2.0}}"#[..],
            br#"{"device_id":"d","seq":1,"ts":2,"metrics":{"a":1.0,"a":2.0}}"#,
            br#"{"device_id":"d","seq":1,"ts":2,"metrics":{"a":1}}"#,
            br#"{"device_id":"d\u0041","seq":1,"ts":2,"metrics":{"a":1.0}}"#,
            br#"{"device_id": "d","seq":1,"ts":2,"metrics":{"a":1.0}}"#,
            br#"{"seq":1,"device_id":"d","ts":2,"metrics":{"a":1.0}}"#,
            br#"{"device_id":"d","seq":-1,"ts":2,"metrics":{"a":1.0}}"#,
            br#"{"device_id":"d","seq":9223372036854775808,"ts":2,"metrics":{"a":1.0}}"#,
            br#"{"device_id":"d","seq":1,"ts":2,"metrics":{"a":1.0},"x":1}"#,
            br#"{"device_id":"d","seq":1,"ts":2,"metrics":{}}"#,
            br#"{"device_id":"d","seq":1,"ts":2,"metrics":{"a":1.0}} "#,
            br#"{"device_id":"d","seq":1,"ts":2,"metrics":{"a":1e999}}"#,
        ] {
            assert!(
                MessageRef::read_plain(raw).is_none(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        // What serde makes of the first two: sorted, the last value of a name.
        let sorted = serde_message(
            br#"{"device_id":"d","seq":1,"ts":2,"metrics":{"b":1.0,"a":2.0,"b":3.0}}"#,
        )
        .unwrap();
        assert_eq!(sorted.metrics, vec![("a".into(), 2.0), ("b".into(), 3.0)]);
    }

    /// A message's fields: device, seq, ts, metrics in order, fw absent / null / a string.
    type Fields = (String, u64, i64, Vec<(String, f64)>, Option<Option<String>>);

    fn message() -> impl Strategy<Value = Fields> {
        (
            "\\PC{0,12}|[a-z0-9-]{1,16}",
            prop_oneof![any::<u64>(), 0..1000u64],
            any::<i64>(),
            proptest::collection::vec(
                (
                    "[a-d]{1,2}|\\PC{0,4}",
                    any::<f64>().prop_filter("finite", |v| v.is_finite()),
                ),
                0..6,
            ),
            proptest::option::of(proptest::option::of("\\PC{0,6}|[0-9.]{1,8}")),
        )
    }

    proptest! {
        /// Whatever the message, the shortcut reads it as serde does or declines it; a
        /// plain one (no escapes, names increasing, seq within i64) is always read; a
        /// mangled one is never read differently from serde. The same for stream records.
        #[test]
        fn messages_are_read_as_serde_reads_them(
            (device, seq, ts, metrics, fw) in message(),
            received_at in any::<i64>(),
            cut in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let raw = spell(&device, seq, ts, &metrics, fw.as_ref().map(|f| f.as_deref()));
            let slow = serde_message(&raw).expect("serde reads a message of any spelling");
            let plain = |s: &str| !s.bytes().any(crate::row::escaped_in_json);
            let increasing = metrics.windows(2).all(|w| w[0].0 < w[1].0);
            let expected = plain(&device)
                && i64::try_from(seq).is_ok()
                && !metrics.is_empty()
                && increasing
                && metrics.iter().all(|(k, _)| plain(k))
                && fw.as_ref().and_then(|f| f.as_deref()).is_none_or(plain);
            match MessageRef::read_plain(&raw) {
                Some(fast) => prop_assert!(same(&fast, &slow), "{:?} != {:?}", fast, slow),
                None => prop_assert!(!expected, "declined {}", String::from_utf8_lossy(&raw)),
            }
            let record = StreamRecordRef::new(slow.clone(), received_at).to_json();
            let slow_record: StreamRecordRef<'_> = serde_json::from_slice(&record).expect("serde reads a record");
            match StreamRecordRef::read_plain(&record) {
                Some(fast) => prop_assert!(
                    fast == slow_record && same(&MessageRef { device_id: fast.device_id.clone(), seq: fast.seq, ts: fast.ts, metrics: fast.metrics.clone(), fw: fast.fw.clone() }, &slow),
                    "{:?} != {:?}", fast, slow_record
                ),
                None => prop_assert!(!expected, "declined {}", String::from_utf8_lossy(&record)),
            }
            let mut mangled = raw.clone();
            let at = cut.index(mangled.len());
            mangled[at] = byte;
            if let Some(fast) = MessageRef::read_plain(&mangled) {
                let slow = serde_message(&mangled);
                prop_assert!(slow.as_ref().is_some_and(|s| same(&fast, s)), "{:?} vs {:?}", fast, slow);
            }
            let mut mangled = record.clone();
            let at = cut.index(mangled.len());
            mangled[at] = byte;
            if let Some(fast) = StreamRecordRef::read_plain(&mangled) {
                let slow: Option<StreamRecordRef<'_>> = serde_json::from_slice(&mangled).ok();
                prop_assert!(slow.as_ref().is_some_and(|s| *s == fast), "{:?} vs {:?}", fast, slow);
            }
        }
    }
}

//! Reading the transform's rows back without a general JSON parser.
//!
//! The emulated Firehose converts each row the transform answers (one JSON document per
//! line) into a Parquet row, as Firehose's record-format conversion does; parsing them
//! with `serde_json` was about two thirds of that conversion. The transform writes every
//! row the same way ([`crate::StreamRecordRef::write_rows`]: serde's compact JSON of a
//! [`ReadingRef`], its fields in declaration order), and the readings of one message share
//! everything before `"metric"` and everything from `,"fw"` on. [`RowReader`] reads that
//! one spelling directly, reusing what a row shares with the previous one, and declines
//! anything else (escapes in a string, another field order, whitespace, an integer
//! `value`, …), which the caller then gives to `serde_json`: for every line it reads, the
//! result is what `serde_json` would give (tests hold them equal), so the conversion's
//! answer does not depend on the shortcut.

use std::borrow::Cow;

use crate::ReadingRef;

/// Reads rows of the transform's spelling, remembering the previous row's shared parts
/// (module doc). One reader per buffer of rows: what it remembers borrows from them.
#[derive(Debug, Default)]
pub struct RowReader<'a> {
    /// The previous row's bytes up to and including `"metric":`, and what they said.
    head: Option<(&'a [u8], Head<'a>)>,
    /// The previous row's bytes from `,"fw":` to its end, and the firmware they gave.
    tail: Option<(&'a [u8], Option<Cow<'a, str>>)>,
}

/// The fields a message's rows share, before the metric.
#[derive(Debug, Clone)]
struct Head<'a> {
    device_id: Cow<'a, str>,
    seq: i64,
    event_time: i64,
    received_at: i64,
}

const DEVICE: &[u8] = b"{\"device_id\":";
const SEQ: &[u8] = b",\"seq\":";
const EVENT_TIME: &[u8] = b",\"event_time\":";
const RECEIVED_AT: &[u8] = b",\"received_at\":";
const METRIC: &[u8] = b",\"metric\":";
const VALUE: &[u8] = b",\"value\":";
const FW: &[u8] = b",\"fw\":";

impl<'a> RowReader<'a> {
    /// A reader that remembers nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The reading in `line` when it is spelled as the transform writes rows; `None` when
    /// it is not (then parse it with `serde_json`, which also says what is wrong with it).
    pub fn read(&mut self, line: &'a [u8]) -> Option<ReadingRef<'a>> {
        let (head, rest) = match &self.head {
            Some((bytes, head)) if line.starts_with(bytes) => (head.clone(), &line[bytes.len()..]),
            _ => {
                let (head, rest) = read_head(line)?;
                let consumed = line.len() - rest.len();
                self.head = Some((&line[..consumed], head.clone()));
                (head, rest)
            }
        };
        let (metric, rest) = read_str(rest)?;
        let rest = rest.strip_prefix(VALUE)?;
        let (value, tail) = read_float(rest)?;
        let fw = match &self.tail {
            Some((bytes, fw)) if *bytes == tail => fw.clone(),
            _ => {
                let fw = read_tail(tail)?;
                self.tail = Some((tail, fw.clone()));
                fw
            }
        };
        Some(ReadingRef {
            device_id: head.device_id,
            seq: head.seq,
            event_time: head.event_time,
            received_at: head.received_at,
            metric,
            value,
            fw,
        })
    }
}

/// Whether JSON writes byte `b` of a string as an escape (`"`, `\\`, a control character):
/// a string without such bytes is its own JSON text between quotes. The one definition the
/// shortcuts past `serde_json` share.
pub const fn escaped_in_json(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// `{"device_id":"…","seq":…,"event_time":…,"received_at":…,"metric":` and what follows.
fn read_head(line: &[u8]) -> Option<(Head<'_>, &[u8])> {
    let (device_id, rest) = read_str(line.strip_prefix(DEVICE)?)?;
    let (seq, rest) = read_int(rest.strip_prefix(SEQ)?)?;
    let (event_time, rest) = read_int(rest.strip_prefix(EVENT_TIME)?)?;
    let (received_at, rest) = read_int(rest.strip_prefix(RECEIVED_AT)?)?;
    let rest = rest.strip_prefix(METRIC)?;
    let head = Head {
        device_id,
        seq,
        event_time,
        received_at,
    };
    Some((head, rest))
}

/// `,"fw":null}` or `,"fw":"…"}`, ending the line.
fn read_tail(tail: &[u8]) -> Option<Option<Cow<'_, str>>> {
    let rest = tail.strip_prefix(FW)?;
    if rest == b"null}" {
        return Some(None);
    }
    let (fw, rest) = read_str(rest)?;
    (rest == b"}").then_some(Some(fw))
}

/// A string without escapes or control characters (those are serde's to read), and what
/// follows its closing quote.
pub(crate) fn read_str(s: &[u8]) -> Option<(Cow<'_, str>, &[u8])> {
    let s = s.strip_prefix(b"\"")?;
    let end = s.iter().position(|&b| escaped_in_json(b))?;
    if s[end] != b'"' {
        return None;
    }
    let text = std::str::from_utf8(&s[..end]).ok()?;
    Some((Cow::Borrowed(text), &s[end + 1..]))
}

/// A JSON integer (`-?(0|[1-9][0-9]*)`) that fits in `i64`, and what follows it.
pub(crate) fn read_int(s: &[u8]) -> Option<(i64, &[u8])> {
    let digits_from = usize::from(s.first() == Some(&b'-'));
    let len = digits_from
        + s[digits_from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
    let digits = &s[digits_from..len];
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let n = std::str::from_utf8(&s[..len]).ok()?.parse::<i64>().ok()?;
    Some((n, &s[len..]))
}

/// A JSON number with a fraction or an exponent (`serde_json` writes every `f64` so; an
/// integer literal is left to serde), finite, and what follows it.
pub(crate) fn read_float(s: &[u8]) -> Option<(f64, &[u8])> {
    let digits = |from: usize| s[from..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut i = usize::from(s.first() == Some(&b'-'));
    let int = digits(i);
    if int == 0 || (int > 1 && s[i] == b'0') {
        return None;
    }
    i += int;
    let mut decimal = false;
    if s.get(i) == Some(&b'.') {
        let frac = digits(i + 1);
        if frac == 0 {
            return None;
        }
        i += 1 + frac;
        decimal = true;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp = digits(i);
        if exp == 0 {
            return None;
        }
        i += exp;
        decimal = true;
    }
    if !decimal {
        return None;
    }
    let value = std::str::from_utf8(&s[..i]).ok()?.parse::<f64>().ok()?;
    value.is_finite().then_some((value, &s[i..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamRecordRef;
    use proptest::prelude::*;

    fn serde(line: &[u8]) -> Option<ReadingRef<'_>> {
        serde_json::from_slice(line).ok()
    }

    /// Equal as `serde_json` reads them, the value to the bit (`-0.0` is not `0.0`).
    fn same(a: &ReadingRef<'_>, b: &ReadingRef<'_>) -> bool {
        a == b && a.value.to_bits() == b.value.to_bits()
    }

    fn message(device: &str, fw: Option<&str>, values: &[(&str, f64)]) -> Vec<u8> {
        let msg = crate::MessageRef {
            device_id: Cow::Borrowed(device),
            seq: 42,
            ts: 1_764_078_300_123,
            metrics: values
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), *v))
                .collect(),
            fw: fw.map(Cow::Borrowed),
        };
        let mut out = Vec::new();
        StreamRecordRef::new(msg, 1_764_078_300_200).write_rows(&mut out);
        out
    }

    #[test]
    fn the_transforms_rows_are_read_as_serde_reads_them_and_shared_parts_reused() {
        let rows = [
            message(
                "sensor-000001",
                Some("1.4.2"),
                &[("battery", 3.712), ("rssi", -67.0)],
            ),
            message(
                "sensor-000001",
                None,
                &[("a", -0.0), ("b", 5e-324), ("c", 1.7976931348623157e308)],
            ),
            message("sensor-000002", Some("1.4.2"), &[("temperature", 21.53)]),
            message("é-ü", Some("ß"), &[("x", 1e-7), ("y", 123_456_789.125)]),
        ]
        .concat();
        let mut reader = RowReader::new();
        let mut n = 0;
        for line in rows.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let fast = reader.read(line).expect("the transform's spelling is read");
            let slow = serde(line).expect("serde reads the row");
            assert!(same(&fast, &slow), "{fast:?} != {slow:?}");
            n += 1;
        }
        assert_eq!(n, 8);
    }

    #[test]
    fn other_spellings_are_left_to_serde() {
        let mut reader = RowReader::new();
        let ok = br#"{"device_id":"d","seq":1,"event_time":2,"received_at":3,"metric":"m","value":1.5,"fw":null}"#;
        assert!(reader.read(ok).is_some());
        for line in [
            // An escape, an integer value, whitespace, another order, a leading zero, an
            // out-of-range float, an extra field, a trailing space, a bare `-`.
            &br#"{"device_id":"d\"","seq":1,"event_time":2,"received_at":3,"metric":"m","value":1.5,"fw":null}"#[..],
            br#"{"device_id":"d","seq":1,"event_time":2,"received_at":3,"metric":"m","value":3,"fw":null}"#,
            br#"{"device_id": "d","seq":1,"event_time":2,"received_at":3,"metric":"m","value":1.5,"fw":null}"#,
            br#"{"seq":1,"device_id":"d","event_time":2,"received_at":3,"metric":"m","value":1.5,"fw":null}"#,
            br#"{"device_id":"d","seq":01,"event_time":2,"received_at":3,"metric":"m","value":1.5,"fw":null}"#,
            br#"{"device_id":"d","seq":1,"event_time":2,"received_at":3,"metric":"m","value":1e400,"fw":null}"#,
            br#"{"device_id":"d","seq":1,"event_time":2,"received_at":3,"metric":"m","value":1.5,"fw":null,"x":1}"#,
            br#"{"device_id":"d","seq":1,"event_time":2,"received_at":3,"metric":"m","value":1.5,"fw":null} "#,
            br#"{"device_id":"d","seq":-,"event_time":2,"received_at":3,"metric":"m","value":1.5,"fw":null}"#,
            br#"{"device_id":"d","seq":9223372036854775808,"event_time":2,"received_at":3,"metric":"m","value":1.5,"fw":null}"#,
        ] {
            assert!(reader.read(line).is_none(), "{}", String::from_utf8_lossy(line));
        }
    }

    fn reading() -> impl Strategy<Value = (String, i64, i64, i64, String, f64, Option<String>)> {
        (
            "\\PC{0,12}|[a-z0-9-]{1,16}",
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            "\\PC{0,8}|[a-z_]{1,12}|[\\x00-\\x7f]{0,6}",
            any::<f64>().prop_filter("finite", |v| v.is_finite()),
            proptest::option::of("\\PC{0,6}|[0-9.]{1,8}"),
        )
    }

    proptest! {
        /// Whatever the reading, a row serde wrote is read as serde reads it, or declined;
        /// one without escapes is always read; a mangled one is never read differently
        /// from serde (when the shortcut reads it, serde reads the same).
        #[test]
        fn rows_are_read_as_serde_reads_them(
            rows in proptest::collection::vec(reading(), 1..6),
            cut in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let lines: Vec<Vec<u8>> = rows
                .iter()
                .map(|(d, s, e, r, m, v, fw)| {
                    serde_json::to_vec(&ReadingRef {
                        device_id: Cow::Borrowed(d),
                        seq: *s,
                        event_time: *e,
                        received_at: *r,
                        metric: Cow::Borrowed(m),
                        value: *v,
                        fw: fw.as_deref().map(Cow::Borrowed),
                    })
                    .expect("a reading serializes")
                })
                .collect();
            let mut reader = RowReader::new();
            for (line, row) in lines.iter().zip(&rows) {
                let slow = serde(line).expect("serde reads its own rows");
                match reader.read(line) {
                    Some(fast) => prop_assert!(same(&fast, &slow), "{:?} != {:?}", fast, slow),
                    None => {
                        let plain = |s: &str| !s.bytes().any(escaped_in_json);
                        prop_assert!(
                            !(plain(&row.0) && plain(&row.4) && row.6.as_deref().is_none_or(plain)),
                            "declined a plain row: {}",
                            String::from_utf8_lossy(line)
                        );
                    }
                }
            }
            let mut mangled = lines[lines.len() - 1].clone();
            let at = cut.index(mangled.len());
            mangled[at] = byte;
            if let Some(fast) = reader.read(&mangled) {
                let slow = serde(&mangled);
                prop_assert!(slow.as_ref().is_some_and(|s| same(&fast, s)), "{:?} vs {:?}", fast, slow);
            }
        }
    }
}

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

/// Appends `s` as a JSON string, as `serde_json` writes it: copied between quotes when it
/// holds nothing to escape (checked without an early exit, so that it vectorizes), else
/// through `serde_json`. Its byte-at-a-time escaping was ~2 % of a replay's instructions.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().fold(false, |any, b| any | escaped_in_json(b)) {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
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

/// The newline-separated lines of `data`, as `data.split(|b| *b == b'\n')` gives them (a
/// final newline is followed by an empty line), each newline found by `memchr`: the
/// byte-at-a-time split was 3 % of a replay's instructions in the emulated conversion.
pub fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let text = rest?;
        match memchr::memchr(b'\n', text) {
            Some(i) => {
                rest = Some(&text[i + 1..]);
                Some(&text[..i])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
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

/// A JSON integer (`-?(0|[1-9][0-9]*)`) that fits in `i64`, and what follows it. The
/// digits are accumulated as they are scanned: `str::parse` after a UTF-8 check was ~280
/// instructions per timestamp, and every message and row holds two or three.
pub(crate) fn read_int(s: &[u8]) -> Option<(i64, &[u8])> {
    let negative = s.first() == Some(&b'-');
    let from = usize::from(negative);
    let mut i = from;
    let mut magnitude: u64 = 0;
    while let Some(&d) = s.get(i).filter(|b| b.is_ascii_digit()) {
        // More than `u64` holds is more than `i64` does.
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    let digits = &s[from..i];
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let n = if negative {
        0i64.checked_sub_unsigned(magnitude)?
    } else {
        i64::try_from(magnitude).ok()?
    };
    Some((n, &s[i..]))
}

/// Powers of ten a `f64` holds exactly (10^22 is the last: 5^22 < 2^53).
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// A JSON number with a fraction or an exponent (`serde_json` writes every `f64` so; an
/// integer literal is left to serde), finite, and what follows it.
///
/// A number whose digits make an integer `w` ≤ 2^53 scaled by 10^q with |q| ≤ 22 (a
/// sensor's `21.53`: 2153 / 10^2) is computed as one multiplication or division of two
/// exactly held values, which IEEE 754 rounds correctly: the same bits `str::parse` gives
/// (Clinger's fast path, which `str::parse` itself takes after a slower scan). Anything
/// else goes to `str::parse`.
pub(crate) fn read_float(s: &[u8]) -> Option<(f64, &[u8])> {
    let negative = s.first() == Some(&b'-');
    let mut i = usize::from(negative);
    // The significand's digits, integer part then fraction, as one integer: exact while
    // there are at most 19 of them.
    let mut w: u64 = 0;
    let mut digits_of = |i: &mut usize| {
        let from = *i;
        while let Some(&d) = s.get(*i).filter(|b| b.is_ascii_digit()) {
            w = w.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            *i += 1;
        }
        *i - from
    };
    let int = digits_of(&mut i);
    if int == 0 || (int > 1 && s[i - int] == b'0') {
        return None;
    }
    let mut digits = int;
    let mut scale: i64 = 0;
    let mut decimal = false;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let frac = digits_of(&mut i);
        if frac == 0 {
            return None;
        }
        digits += frac;
        scale -= frac as i64;
        decimal = true;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative_exp = s.get(i) == Some(&b'-');
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let from = i;
        let mut exp: i64 = 0;
        while let Some(&d) = s.get(i).filter(|b| b.is_ascii_digit()) {
            exp = exp.saturating_mul(10).saturating_add(i64::from(d - b'0'));
            i += 1;
        }
        if i == from {
            return None;
        }
        scale = scale.saturating_add(if negative_exp { -exp } else { exp });
        decimal = true;
    }
    if !decimal {
        return None;
    }
    let power = usize::try_from(scale.unsigned_abs())
        .ok()
        .and_then(|p| EXACT_POWERS_OF_TEN.get(p));
    let exact = digits <= 19 && w <= 1 << 53;
    let value = match power {
        Some(&power) if exact => {
            let magnitude = if scale >= 0 {
                w as f64 * power
            } else {
                w as f64 / power
            };
            if negative { -magnitude } else { magnitude }
        }
        _ => std::str::from_utf8(&s[..i]).ok()?.parse::<f64>().ok()?,
    };
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
    fn strings_are_written_as_serde_writes_them() {
        for text in [
            "",
            "sensor-000001",
            "a\"b",
            "back\\slash",
            "\u{1}\n\t",
            "é-ü ß",
            "\u{7f}",
            "/",
        ] {
            let mut ours = b"x".to_vec();
            write_json_str(&mut ours, text);
            let mut serde = b"x".to_vec();
            serde_json::to_writer(&mut serde, text).unwrap();
            assert_eq!(ours, serde, "{text:?}");
        }
    }

    #[test]
    fn lines_are_the_newline_split() {
        for data in [
            &b""[..],
            b"\n",
            b"\n\n",
            b"a",
            b"a\n",
            b"a\nbc",
            b"\na\n\nbc\n",
            b"{\"x\":1}\n{\"y\":2}",
        ] {
            let ours: Vec<&[u8]> = lines(data).collect();
            let split: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
            assert_eq!(ours, split, "{}", String::from_utf8_lossy(data));
        }
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
        /// The number readers give `str::parse`'s value to the bit, or decline what is not a
        /// JSON number of their kind: numbers as serde writes them (any `f64`), decimal
        /// literals short and long, with and without exponents, and integers at `i64`'s ends.
        #[test]
        fn numbers_are_read_as_str_parse_reads_them(
            bits in any::<u64>(),
            int in "-?(0|[1-9][0-9]{0,24})",
            frac in proptest::option::of("[0-9]{1,24}"),
            exp in proptest::option::of("[eE][+-]?[0-9]{1,4}"),
            n in any::<i64>(),
        ) {
            let written = serde_json::to_string(&f64::from_bits(bits)).expect("serde writes any f64");
            let literal = format!(
                "{int}{}{}",
                frac.map(|f| format!(".{f}")).unwrap_or_default(),
                exp.unwrap_or_default()
            );
            for text in [written, literal] {
                let decimal = text.contains(['.', 'e', 'E']);
                let expected = text
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && decimal && text.as_bytes()[0] != b'n');
                let input = format!("{text},");
                let got = read_float(input.as_bytes());
                prop_assert_eq!(
                    got.map(|(v, rest)| (v.to_bits(), rest.to_vec())),
                    expected.map(|v| (v.to_bits(), b",".to_vec())),
                    "{}", text
                );
            }
            for text in [n.to_string(), int.clone()] {
                let input = format!("{text}}}");
                let got = read_int(input.as_bytes());
                prop_assert_eq!(
                    got.map(|(v, rest)| (v, rest.to_vec())),
                    text.parse::<i64>().ok().map(|v| (v, b"}".to_vec())),
                    "{}", text
                );
            }
        }
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

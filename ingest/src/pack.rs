//! Record packing: several messages of one device in one stream record, as
//! newline-delimited JSON.
//!
//! # Why
//! The services meter records, not bytes: Firehose rounds every record up to 5 KB, Kinesis
//! on-demand to 1 KB and provisioned Kinesis counts 25 KB PUT payload units; a shard takes
//! at most 1,000 records a second. A telemetry message is a few hundred bytes, so one
//! message per record pays for far more than it sends. Packed up to the sink's unit
//! ([`crate::sink::BatchLimits::metering_unit_bytes`], from [`telemetry::metering`]) the
//! same messages use a fraction of the records and units.
//!
//! # Rules
//! - Only messages of the **same device and the same event hour** share a record: the
//!   partition key stays the device id (per-device order), and the transform can give the
//!   record the one set of `dt`/`hour` partition keys a Firehose record has.
//! - A device's messages keep their order: a device has at most one open pack, closed when
//!   the next message would overflow the target or belongs to another hour.
//! - A record never exceeds the target, nor the sink's per-record limit (1 MiB Kinesis,
//!   1,000 KiB Firehose); a single message larger than the target gets a record of its own.
//! - Packing works within one invocation: it pays where an invocation carries many
//!   messages (device-side batches — a JSON array payload — and the batched Kinesis
//!   event-source mapping), not with the per-message IoT rule action.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

/// Whether and how far ingest packs (`IOTPIPE_PACK`, `iotpipe --pack`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pack {
    /// One message per record (the default).
    #[default]
    Off,
    /// Up to the sink's metering unit: 25 KB for Kinesis, 5 KB for Firehose.
    SinkUnit,
    /// Up to this many bytes of record data (capped at the sink's record limit).
    Bytes(usize),
}

impl std::str::FromStr for Pack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "off" | "false" | "0" => Ok(Self::Off),
            "on" | "true" | "unit" => Ok(Self::SinkUnit),
            n => match n.parse::<usize>() {
                Ok(b) if b >= 64 => Ok(Self::Bytes(b)),
                _ => Err(format!(
                    "{s:?} is not a packing setting: off, on (the sink's unit: 25 KB Kinesis, \
                     5 KB Firehose) or a record size in bytes (at least 64)"
                )),
            },
        }
    }
}

impl Pack {
    /// The target record size for a sink with `unit` metering and `max_record` limit;
    /// `None` when packing is off.
    pub fn target(self, unit: usize, max_record: usize) -> Option<usize> {
        match self {
            Self::Off => None,
            Self::SinkUnit => Some(unit.min(max_record)),
            Self::Bytes(n) => Some(n.min(max_record)),
        }
    }
}

/// One message to pack.
#[derive(Debug, Clone)]
pub struct Message<T> {
    /// Partition key: the device id.
    pub key: String,
    /// Event hour the message belongs to ([`telemetry::Partition::hour_of_millis`]: equal
    /// hours, equal `dt`/`hour` partitions).
    pub hour: i64,
    /// The message's stream-record JSON.
    pub data: Bytes,
    /// What the caller needs back for this message (its origin, its readings).
    pub tag: T,
}

/// One stream record and the messages in it, in order.
#[derive(Debug, Clone)]
pub struct Packed<T> {
    /// Partition key: the device id.
    pub key: String,
    /// The record data: the messages' JSON separated by newlines.
    pub data: Bytes,
    /// The messages, in the order they are in `data`.
    pub parts: Vec<Message<T>>,
}

/// Packs `messages` into records of at most `target` bytes (see the module doc). With
/// `target = None` every message is its own record.
pub fn pack<T>(messages: Vec<Message<T>>, target: Option<usize>) -> Vec<Packed<T>> {
    let Some(target) = target else {
        return messages
            .into_iter()
            .map(|m| Packed {
                key: m.key.clone(),
                data: m.data.clone(),
                parts: vec![m],
            })
            .collect();
    };
    let mut out = Vec::new();
    // The open pack of each device: its position in `out` once closed would break order,
    // so open packs are kept apart and closed in place.
    let mut open: HashMap<String, (i64, usize, Vec<Message<T>>)> = HashMap::new();
    // Order in which packs were opened, to flush the remainder deterministically.
    let mut opened: Vec<(String, u64)> = Vec::new();
    let mut generation: HashMap<String, u64> = HashMap::new();
    for m in messages {
        let fits = open
            .get(&m.key)
            .is_some_and(|(hour, len, _)| *hour == m.hour && *len + 1 + m.data.len() <= target);
        if fits {
            if let Some((_, len, parts)) = open.get_mut(&m.key) {
                *len += 1 + m.data.len();
                parts.push(m);
            }
            continue;
        }
        if let Some((_, _, parts)) = open.remove(&m.key) {
            out.push(join(parts));
        }
        let g = generation.entry(m.key.clone()).or_default();
        *g += 1;
        opened.push((m.key.clone(), *g));
        open.insert(m.key.clone(), (m.hour, m.data.len(), vec![m]));
    }
    // Flush what is still open, in the order those packs were opened.
    for (key, g) in opened {
        if generation.get(&key) == Some(&g)
            && let Some((_, _, parts)) = open.remove(&key)
        {
            out.push(join(parts));
        }
    }
    out
}

fn join<T>(parts: Vec<Message<T>>) -> Packed<T> {
    let len = parts.iter().map(|p| p.data.len() + 1).sum::<usize>();
    let mut data = BytesMut::with_capacity(len);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            data.put_u8(b'\n');
        }
        data.extend_from_slice(&p.data);
    }
    Packed {
        key: parts.first().map(|p| p.key.clone()).unwrap_or_default(),
        data: data.freeze(),
        parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry::Partition;

    fn msg(key: &str, hour: i64, i: usize, len: usize) -> Message<usize> {
        let body = format!("{key}-{i}-");
        let pad = "x".repeat(len.saturating_sub(body.len()));
        Message {
            key: key.into(),
            hour: Partition::hour_of_millis(hour * 3_600_000),
            data: Bytes::from(format!("{body}{pad}")),
            tag: i,
        }
    }

    #[test]
    fn without_a_target_every_message_is_its_own_record() {
        let p = pack((0..3).map(|i| msg("a", 0, i, 10)).collect(), None);
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|r| r.parts.len() == 1));
    }

    #[test]
    fn records_stay_under_the_target_and_keep_each_devices_order() {
        let messages: Vec<_> = (0..100)
            .map(|i| msg(if i % 3 == 0 { "a" } else { "b" }, 0, i, 100))
            .collect();
        let packed = pack(messages, Some(1000));
        for r in &packed {
            assert!(r.data.len() <= 1000, "{} bytes", r.data.len());
            assert!(
                r.parts.iter().all(|p| p.key == r.key),
                "one device per record"
            );
            let lines: Vec<&[u8]> = r.data.split(|b| *b == b'\n').collect();
            assert_eq!(lines.len(), r.parts.len());
            for (line, part) in lines.iter().zip(&r.parts) {
                assert_eq!(*line, &part.data[..]);
            }
        }
        for key in ["a", "b"] {
            let order: Vec<usize> = packed
                .iter()
                .filter(|r| r.key == key)
                .flat_map(|r| r.parts.iter().map(|p| p.tag))
                .collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted, "{key}: in order");
        }
        let total: usize = packed.iter().map(|r| r.parts.len()).sum();
        assert_eq!(total, 100, "every message once");
        assert!(
            packed.len() < 20,
            "9 messages of 100 B fit in 1000 B: {}",
            packed.len()
        );
    }

    #[test]
    fn messages_of_different_hours_never_share_a_record() {
        let messages = vec![msg("a", 0, 0, 10), msg("a", 1, 1, 10), msg("a", 1, 2, 10)];
        let packed = pack(messages, Some(1000));
        let tags: Vec<Vec<usize>> = packed
            .iter()
            .map(|r| r.parts.iter().map(|p| p.tag).collect())
            .collect();
        assert_eq!(tags, vec![vec![0], vec![1, 2]]);
    }

    #[test]
    fn a_message_larger_than_the_target_gets_its_own_record() {
        let packed = pack(vec![msg("a", 0, 0, 50), msg("a", 0, 1, 500)], Some(100));
        assert_eq!(packed.len(), 2);
    }

    #[test]
    fn the_setting_parses_off_on_and_sizes() {
        assert_eq!("off".parse(), Ok(Pack::Off));
        assert_eq!("on".parse(), Ok(Pack::SinkUnit));
        assert_eq!("65536".parse(), Ok(Pack::Bytes(65536)));
        assert!("12".parse::<Pack>().is_err());
        assert!("lots".parse::<Pack>().unwrap_err().contains("off, on"));
        assert_eq!(Pack::SinkUnit.target(25_600, 1 << 20), Some(25_600));
        assert_eq!(Pack::Bytes(2 << 20).target(25_600, 1 << 20), Some(1 << 20));
    }
}

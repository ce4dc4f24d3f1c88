//! What a simulation run is: the broker, the fleet, the schedule and the seed.
//!
//! [`SimConfig`] is plain data with a [`Default`]; build it with struct-update syntax
//! (`SimConfig { devices: 50, ..SimConfig::default() }`) so that fields added later do not
//! break callers. [`SimConfig::validate`] says what is wrong in words a user can act on;
//! [`crate::run`] and [`crate::generate`] call it.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::device_type::{DeviceType, device_id, messages_in, messages_per_device};
use crate::durations::humantime_serde_compat;
use crate::error::SimError;
use crate::faults::{Faults, MAX_BATCH};
pub use crate::mqtt::{BrokerUrl, MqttVersion, QoS, Scheme};
use crate::tls::TlsConfig;

/// Default broker: a local mosquitto or the `iotpipe up` embedded broker.
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";
/// Default fleet name (the `{fleet}` segment of `dt/{fleet}/{device_id}/telemetry`).
pub const DEFAULT_FLEET: &str = "fleet";
/// Default device-id prefix: device 1 is `sensor-000001`.
pub const DEFAULT_DEVICE_PREFIX: &str = "sensor-";
/// Default number of new MQTT connections per second while the fleet comes up. Brokers
/// (and AWS IoT Core's per-account connect quota, 500/s by default) stall or refuse when
/// thousands of clients connect in the same instant.
pub const DEFAULT_CONNECT_RATE: f64 = 500.0;
/// Default bound on waiting for QoS 1 acknowledgements once a device has published its
/// last message (or the run was shut down).
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default MQTT keep-alive of every device connection. AWS IoT Core accepts 30–1200 s.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Default MQTT 5 session expiry of a persistent session (AWS IoT Core's default).
pub const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(3600);
/// Longest keep-alive MQTT can express (a 16-bit number of seconds).
pub const MAX_KEEP_ALIVE: Duration = Duration::from_secs(65_535);
/// Highest per-device publish rate, in messages per second. Event times are epoch
/// milliseconds, so a faster device would publish several messages with the same `ts`.
pub const MAX_RATE: f64 = 1000.0;
/// Largest fleet one process simulates.
pub const MAX_DEVICES: usize = 1_000_000;
/// Default size of a device's offline buffer, in messages.
pub const DEFAULT_OFFLINE_BUFFER: u64 = 1000;

/// Everything that defines a simulation run.
///
/// The payload stream is a pure function of `fleet`, `devices`, `rate`, `duration`,
/// `seed`, `start_ms`, `device_prefix`, `first_seq`, `connect_rate` and `device_types`:
/// two runs (or a run and a [`crate::generate`] dump) with the same values publish
/// byte-identical payloads.
///
/// It also reads from a fleet file ([`SimConfig::load`], TOML): every field optional,
/// plus `[[device_type]]` tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Where to publish. Default `mqtt://127.0.0.1:1883`.
    pub broker: BrokerUrl,
    /// Fleet name: the `{fleet}` topic segment. Default `fleet`.
    pub fleet: String,
    /// Number of simulated devices, each its own MQTT connection. Default 10.
    /// Ignored when `device_types` is not empty.
    pub devices: usize,
    /// Messages per second *per device*; fractions are allowed (`0.1` = one every 10 s).
    /// At most 1000. Default 1. Ignored when `device_types` is not empty.
    pub rate: f64,
    /// How much event time each device covers: it publishes ⌈`rate` × `duration`⌉
    /// messages, one every 1/`rate` s. Default 30 s.
    #[serde(with = "humantime_serde_compat")]
    pub duration: Duration,
    /// MQTT quality of service of the publishes: 0 or 1 (AWS IoT Core has no QoS 2).
    /// Default 1.
    pub qos: QoS,
    /// Seed of every generated value; the same seed gives the same payloads. Default 1.
    pub seed: u64,
    /// Event-time origin, epoch milliseconds: the `ts` of the fleet's first message.
    /// `None` (the default) means "now", which makes `ts` — and so the payloads —
    /// differ between runs; pin it for byte-identical output.
    pub start_ms: Option<i64>,
    /// Device ids are this prefix plus a 6-digit, 1-based number: `sensor-000001`.
    /// Default `sensor-`. Ignored when `device_types` is not empty.
    pub device_prefix: String,
    /// `seq` of each device's first message; later ones count up by 1. Default 0.
    pub first_seq: u64,
    /// New connections per second while the fleet comes up (device *i* connects
    /// *i*/`connect_rate` s after the first). Default 500. At most 64 connection attempts
    /// are in progress at once, so a broker that handshakes slower than this (mutual TLS
    /// on a small broker) slows the ramp down instead of timing clients out.
    pub connect_rate: f64,
    /// How long the broker may leave a device's publishes unanswered (no PUBACK) after the
    /// device's last message was due before the device gives up on what is outstanding and
    /// disconnects; while acknowledgements keep arriving it keeps waiting. After shutdown
    /// the wait is at most this long. Default 5 s.
    #[serde(with = "humantime_serde_compat")]
    pub ack_timeout: Duration,
    /// Most messages a device holds back while it cannot publish (connection down,
    /// broker slow), beyond the MQTT client's own in-flight window (100) and queue (16).
    /// When more fall due, the *oldest* are dropped and counted in
    /// [`crate::SimSummary::dropped`] (the payload stream is unchanged: a dropped message
    /// leaves a gap in `seq`). Default 1000.
    pub offline_buffer: u64,
    /// The kinds of device in the fleet, in id order. Empty (the default): `devices`
    /// default sensors ([`crate::fleet::DeviceType::default_sensor`]) publishing `rate`
    /// messages per second, named `device_prefix` + number.
    #[serde(rename = "device_type")]
    pub device_types: Vec<DeviceType>,
    /// TLS settings (CA, client certificates, ALPN) for an `mqtts://` broker; must be
    /// empty for `mqtt://`. Default: no client certificate, the system trust store.
    pub tls: TlsConfig,
    /// MQTT keep-alive: the longest a connection stays silent before a PINGREQ; the
    /// broker drops a client silent for 1.5 × this. 0 disables it. Default 30 s (AWS IoT
    /// Core accepts 30–1200 s).
    #[serde(with = "humantime_serde_compat")]
    pub keep_alive: Duration,
    /// Connect with a clean session (the default). `false` asks the broker to keep each
    /// device's session (subscriptions, queued QoS 1 messages) after it disconnects; the
    /// sessions then outlive the run on the broker, keyed by device id. Publishing is
    /// at-least-once either way: the simulator republishes unacknowledged QoS 1 messages
    /// itself after a reconnect.
    pub clean_session: bool,
    /// AWS IoT Basic Ingest: publish to `$aws/rules/RULE/dt/{fleet}/{device_id}/telemetry`,
    /// which goes straight to the IoT rule `RULE` without the message broker (no
    /// messaging charge, no subscribers see it). Default `None`: the plain topic.
    pub basic_ingest: Option<String>,
    /// MQTT protocol version: 3.1.1 (the default) or 5.
    pub mqtt_version: MqttVersion,
    /// MQTT 5 only: how long the broker keeps a persistent session (`clean_session =
    /// false`) after the device disconnects. Default 1 h (AWS IoT Core's default; its
    /// maximum is 7 days).
    #[serde(with = "humantime_serde_compat")]
    pub session_expiry: Duration,
    /// Device-side batching: each publish carries this many consecutive messages as a
    /// JSON array (the last one fewer); 1 (the default) publishes single objects. The
    /// ledger still counts messages (seqs), not publishes. At most 1000; keep the
    /// payload under 128 KiB for AWS IoT Core (a default sensor message is ~130 bytes).
    pub batch: usize,
    /// Reproducible fault injection (duplicates, reordering, clock skew, malformed and
    /// oversize payloads, disconnect storms); all off by default. See [`crate::faults`].
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            broker: BrokerUrl::default(),
            fleet: DEFAULT_FLEET.to_owned(),
            devices: 10,
            rate: 1.0,
            duration: Duration::from_secs(30),
            qos: QoS::AtLeastOnce,
            seed: 1,
            start_ms: None,
            device_prefix: DEFAULT_DEVICE_PREFIX.to_owned(),
            first_seq: 0,
            connect_rate: DEFAULT_CONNECT_RATE,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            offline_buffer: DEFAULT_OFFLINE_BUFFER,
            device_types: Vec::new(),
            tls: TlsConfig::default(),
            keep_alive: KEEP_ALIVE,
            clean_session: true,
            basic_ingest: None,
            mqtt_version: MqttVersion::V3_1_1,
            session_expiry: DEFAULT_SESSION_EXPIRY,
            batch: 1,
            faults: Faults::default(),
        }
    }
}

impl SimConfig {
    /// Checks every field; the error names the field and what to do.
    pub fn validate(&self) -> Result<(), SimError> {
        let invalid =
            |field: &'static str, reason: String| SimError::InvalidConfig { field, reason };
        if self.device_types.is_empty() {
            if self.devices == 0 || self.devices > MAX_DEVICES {
                return Err(invalid(
                    "devices",
                    format!("{} is not between 1 and {MAX_DEVICES}", self.devices),
                ));
            }
            if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE) {
                return Err(invalid(
                    "rate",
                    format!(
                        "{} is not a number of messages per second per device in (0, {MAX_RATE}]",
                        self.rate
                    ),
                ));
            }
        }
        if self.duration.is_zero() {
            return Err(invalid("duration", "must be longer than 0 s".into()));
        }
        if !(self.connect_rate.is_finite() && self.connect_rate > 0.0) {
            return Err(invalid(
                "connect_rate",
                format!(
                    "{} is not a positive number of connections per second",
                    self.connect_rate
                ),
            ));
        }
        if !valid_topic_segment(&self.fleet) {
            return Err(invalid(
                "fleet",
                format!(
                    "{:?} must be 1-128 characters of [A-Za-z0-9_:-] (it is a topic segment)",
                    self.fleet
                ),
            ));
        }
        if !(self.keep_alive.is_zero()
            || (self.keep_alive >= Duration::from_secs(1) && self.keep_alive <= MAX_KEEP_ALIVE))
        {
            return Err(invalid(
                "keep_alive",
                format!(
                    "{} is not 0 (off) or between 1 s and 65535 s (AWS IoT Core: 30-1200 s)",
                    humantime::format_duration(self.keep_alive)
                ),
            ));
        }
        if let Some(rule) = &self.basic_ingest
            && !valid_rule_name(rule)
        {
            return Err(invalid(
                "basic_ingest",
                format!("{rule:?} is not an AWS IoT rule name: 1-128 characters of [A-Za-z0-9_]"),
            ));
        }
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(invalid(
                "batch",
                format!("{} is not between 1 and {MAX_BATCH} messages", self.batch),
            ));
        }
        self.faults.validate()?;
        self.tls.validate(&self.broker)?;
        // Device types, ids (they must be AWS IoT thing names) and seq ranges.
        self.check_device_types()
    }

    /// The fleet's device types with the messages each of their devices publishes in a
    /// full run: `device_types`, or `devices` default sensors at `rate`. What
    /// [`crate::fleet::FleetLayout`] lays out, and what [`SimConfig::validate`] checks.
    pub(crate) fn types_and_messages(&self) -> Vec<(DeviceType, u64)> {
        if self.device_types.is_empty() {
            let default = DeviceType::default_sensor(self.devices, &self.device_prefix, self.rate);
            // From the asked rate, not the rounded interval: 3/s for 10 s is 30.
            vec![(default, messages_per_device(self.rate, self.duration))]
        } else {
            self.device_types
                .iter()
                .map(|ty| (ty.clone(), messages_in(self.duration, ty.interval)))
                .collect()
        }
    }

    /// Checks the device types against the contract and each other.
    fn check_device_types(&self) -> Result<(), SimError> {
        let cfg = self;
        let invalid = |reason: String| SimError::InvalidConfig {
            field: "device_type",
            reason,
        };
        let mut prefixes: Vec<String> = Vec::new();
        let mut devices = 0usize;
        for (i, (ty, messages_per_device)) in self.types_and_messages().iter().enumerate() {
            devices = devices.saturating_add(ty.count);
            let at = format!("device_type[{i}] ({:?})", ty.name);
            if !cfg.device_types.is_empty() {
                ty.check(&at).map_err(invalid)?;
            }
            let prefix = ty.prefix();
            // Ids of two types must never collide (they are MQTT client ids).
            if let Some(other) = prefixes
                .iter()
                .find(|p| p.starts_with(prefix.as_str()) || prefix.starts_with(p.as_str()))
            {
                return Err(invalid(format!(
                    "{at}: id prefix {prefix:?} overlaps {other:?}; give each type its own id_prefix"
                )));
            }
            let last_id = device_id(&prefix, ty.count.saturating_sub(1));
            if !valid_topic_segment(&last_id) {
                return Err(SimError::InvalidConfig {
                    field: if cfg.device_types.is_empty() {
                        "device_prefix"
                    } else {
                        "device_type"
                    },
                    reason: format!(
                        "{prefix:?} makes ids like {last_id:?}; ids must be 1-128 characters \
                         of [A-Za-z0-9_:-]"
                    ),
                });
            }
            prefixes.push(prefix);
            // seq must fit Parquet's int64 (the contract rejects larger ones).
            let last_seq = cfg
                .first_seq
                .checked_add(messages_per_device.saturating_sub(1));
            if last_seq.is_none_or(|s| i64::try_from(s).is_err()) {
                return Err(SimError::InvalidConfig {
                    field: "first_seq",
                    reason: format!(
                        "{} + {} messages overflows 2^63-1",
                        cfg.first_seq, messages_per_device
                    ),
                });
            }
        }
        if devices == 0 || devices > MAX_DEVICES {
            return Err(invalid(format!(
                "the fleet has {} devices; it needs 1 to {MAX_DEVICES}",
                devices
            )));
        }
        Ok(())
    }

    /// Reads a fleet file: a [`SimConfig`] in TOML, every field optional, with
    /// `[[device_type]]` tables (see the [module docs](crate::fleet)).
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        toml::from_str(text).map_err(|e| SimError::FleetFile {
            path: None,
            reason: e.to_string(),
        })
    }

    /// [`SimConfig::from_toml`] on the contents of `path`.
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let with_path = |reason: String| SimError::FleetFile {
            path: Some(path.to_owned()),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| with_path(e.to_string()))?;
        Self::from_toml(&text).map_err(|e| match e {
            SimError::FleetFile { reason, .. } => with_path(reason),
            other => other,
        })
    }
}

/// Device ids and fleet names: the AWS IoT thing-name alphabet, which is also safe as an
/// MQTT topic segment (no `/`, `+`, `#`).
pub(crate) fn valid_topic_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= telemetry::validate::MAX_DEVICE_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
}

/// AWS IoT rule names: `[A-Za-z0-9_]`, 1–128 characters.
fn valid_rule_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid() {
        SimConfig::default().validate().unwrap();
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let base = SimConfig::default();
        let cases = [
            (
                "devices",
                SimConfig {
                    devices: 0,
                    ..base.clone()
                },
            ),
            (
                "rate",
                SimConfig {
                    rate: 0.0,
                    ..base.clone()
                },
            ),
            (
                "rate",
                SimConfig {
                    rate: f64::NAN,
                    ..base.clone()
                },
            ),
            (
                "rate",
                SimConfig {
                    rate: 5000.0,
                    ..base.clone()
                },
            ),
            (
                "duration",
                SimConfig {
                    duration: Duration::ZERO,
                    ..base.clone()
                },
            ),
            (
                "fleet",
                SimConfig {
                    fleet: "a/b".into(),
                    ..base.clone()
                },
            ),
            (
                "fleet",
                SimConfig {
                    fleet: "+".into(),
                    ..base.clone()
                },
            ),
            (
                "device_prefix",
                SimConfig {
                    device_prefix: "bad id ".into(),
                    ..base.clone()
                },
            ),
            (
                "first_seq",
                SimConfig {
                    first_seq: i64::MAX as u64,
                    ..base.clone()
                },
            ),
            (
                "connect_rate",
                SimConfig {
                    connect_rate: 0.0,
                    ..base.clone()
                },
            ),
        ];
        for (field, cfg) in cases {
            match cfg.validate() {
                Err(SimError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_config_round_trips_through_json_with_readable_durations() {
        let cfg = SimConfig {
            start_ms: Some(1_764_000_000_000),
            ..SimConfig::default()
        };
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains(r#""duration":"30s""#), "{json}");
        assert!(
            json.contains(r#""broker":"mqtt://127.0.0.1:1883""#),
            "{json}"
        );
        let back: SimConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }
}

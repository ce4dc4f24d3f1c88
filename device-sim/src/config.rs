//! What a simulation run is: the broker, the fleet, the schedule and the seed.
//!
//! [`SimConfig`] is plain data with a [`Default`]; build it with struct-update syntax
//! (`SimConfig { devices: 50, ..SimConfig::default() }`) so that fields added later do not
//! break callers. [`SimConfig::validate`] says what is wrong in words a user can act on;
//! [`crate::run`] and [`crate::generate`] call it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SimError;
use crate::faults::{Faults, MAX_BATCH};
use crate::fleet::{DeviceType, FleetLayout};
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
    /// How long a device waits for outstanding QoS 1 acknowledgements after its last
    /// publish (or after shutdown) before it gives up on them and disconnects. Default 5 s.
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
        FleetLayout::new(self).check(self)
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

/// MQTT quality of service. AWS IoT Core supports 0 and 1 only, so QoS 2 is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QoS {
    /// QoS 0: fire and forget. A message counts as acknowledged once written to the socket.
    AtMostOnce,
    /// QoS 1: the broker acknowledges each message (PUBACK); unacknowledged ones are
    /// republished after a reconnect. The default.
    #[default]
    AtLeastOnce,
}

impl QoS {
    /// 0 or 1.
    pub fn level(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
        }
    }

    pub(crate) fn to_rumqttc(self) -> rumqttc::QoS {
        match self {
            QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        }
    }
}

impl fmt::Display for QoS {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.level())
    }
}

impl TryFrom<u8> for QoS {
    type Error = SimError;

    fn try_from(level: u8) -> Result<Self, SimError> {
        match level {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            other => Err(SimError::InvalidConfig {
                field: "qos",
                reason: format!("{other} is not 0 or 1 (AWS IoT Core has no QoS 2)"),
            }),
        }
    }
}

impl FromStr for QoS {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        match s.trim() {
            "0" => Ok(QoS::AtMostOnce),
            "1" => Ok(QoS::AtLeastOnce),
            other => Err(SimError::InvalidConfig {
                field: "qos",
                reason: format!("{other:?} is not 0 or 1 (AWS IoT Core has no QoS 2)"),
            }),
        }
    }
}

// Serialized as the number users know (0/1), not as a variant name.
impl Serialize for QoS {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.level())
    }
}

impl<'de> Deserialize<'de> for QoS {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        QoS::try_from(u8::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The MQTT protocol version of the device connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4), the default: what every broker and AWS IoT Core speak.
    #[default]
    V3_1_1,
    /// MQTT 5: reason codes on PUBACK (a refused publish counts as failed), session
    /// expiry instead of clean session.
    V5,
}

impl fmt::Display for MqttVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MqttVersion::V3_1_1 => "3.1.1",
            MqttVersion::V5 => "5",
        })
    }
}

impl FromStr for MqttVersion {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        match s.trim() {
            "3.1.1" | "3" | "4" | "311" => Ok(MqttVersion::V3_1_1),
            "5" | "5.0" => Ok(MqttVersion::V5),
            other => Err(SimError::InvalidConfig {
                field: "mqtt_version",
                reason: format!("{other:?} is not 3.1.1 or 5"),
            }),
        }
    }
}

impl Serialize for MqttVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // "5" and 5 both work in a fleet file.
        let v = serde_json::Value::deserialize(d)?;
        let s = match &v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The transport of a [`BrokerUrl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain TCP (`mqtt://`, default port 1883).
    Mqtt,
    /// TLS (`mqtts://`, default port 8883; 443 for AWS IoT Core with ALPN), see
    /// [`crate::tls`].
    Mqtts,
}

impl Scheme {
    /// The IANA port of the scheme.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
        }
    }
}

/// A broker address: `mqtt://host:port` (port defaults to 1883) or `mqtts://host:port`
/// (8883). IPv6 hosts go in brackets: `mqtt://[::1]:1883`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl {
    /// `mqtt` or `mqtts`.
    pub scheme: Scheme,
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Default for BrokerUrl {
    fn default() -> Self {
        Self {
            scheme: Scheme::Mqtt,
            host: "127.0.0.1".to_owned(),
            port: 1883,
        }
    }
}

impl BrokerUrl {
    /// A plain-TCP broker address.
    pub fn mqtt(host: impl Into<String>, port: u16) -> Self {
        Self {
            scheme: Scheme::Mqtt,
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = SimError;

    fn from_str(url: &str) -> Result<Self, SimError> {
        let bad = |reason: &str| SimError::BadBrokerUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("it has no scheme; write mqtt://HOST:PORT"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Scheme::Mqtt,
            "mqtts" | "ssl" => Scheme::Mqtts,
            _ => return Err(bad("the scheme must be mqtt:// or mqtts://")),
        };
        // Tolerate a trailing slash (`mqtt://host:1883/`), nothing else after the authority.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "only mqtt://HOST:PORT is understood (no path, query or credentials)",
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 host needs a closing ]"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| bad("expected :PORT after ]"))?,
                    ),
                ),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
        })
    }
}

impl Serialize for BrokerUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BrokerUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Durations as humantime strings (`"30s"`, `"1m 30s"`) in config files and JSON.
pub(crate) mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports_and_ipv6() {
        let u: BrokerUrl = "mqtt://127.0.0.1:1884".parse().unwrap();
        assert_eq!(u, BrokerUrl::mqtt("127.0.0.1", 1884));
        assert_eq!(u.to_string(), "mqtt://127.0.0.1:1884");
        let u: BrokerUrl = "mqtt://broker.local".parse().unwrap();
        assert_eq!(u.port, 1883);
        let u: BrokerUrl = "mqtts://example.iot.eu-west-1.amazonaws.com"
            .parse()
            .unwrap();
        assert_eq!((u.scheme, u.port), (Scheme::Mqtts, 8883));
        let u: BrokerUrl = "mqtt://[::1]:1999/".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1999));
        assert_eq!(u.to_string(), "mqtt://[::1]:1999");
    }

    #[test]
    fn malformed_broker_urls_say_what_is_wrong() {
        for (url, hint) in [
            ("127.0.0.1:1883", "no scheme"),
            ("http://h:1", "mqtt:// or mqtts://"),
            ("mqtt://h:0", "port"),
            ("mqtt://h:99999", "port"),
            ("mqtt://:1883", "host is empty"),
            ("mqtt://u:p@h:1883", "no path"),
        ] {
            let err = url.parse::<BrokerUrl>().unwrap_err().to_string();
            assert!(err.contains(hint), "{url}: {err}");
        }
    }

    #[test]
    fn qos_accepts_only_0_and_1() {
        assert_eq!("0".parse::<QoS>().unwrap(), QoS::AtMostOnce);
        assert_eq!("1".parse::<QoS>().unwrap(), QoS::AtLeastOnce);
        assert!(
            "2".parse::<QoS>()
                .unwrap_err()
                .to_string()
                .contains("no QoS 2")
        );
        assert_eq!(serde_json::to_string(&QoS::AtLeastOnce).unwrap(), "1");
    }

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

//! MQTT value types: the broker address ([`BrokerUrl`], also what `iotpipe` parses its
//! `--broker` into), the quality of service and the protocol version.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SimError;

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
}

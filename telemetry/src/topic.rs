//! The MQTT topic convention: `dt/{fleet}/{device_id}/telemetry`.

/// The topic filter the IoT rule subscribes to.
pub const TOPIC_FILTER: &str = "dt/+/+/telemetry";

/// Builds the telemetry topic for a device of a fleet.
pub fn telemetry_topic(fleet: &str, device_id: &str) -> String {
    format!("dt/{fleet}/{device_id}/telemetry")
}

/// The parts of a telemetry topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicParts<'a> {
    /// The fleet segment.
    pub fleet: &'a str,
    /// The device segment (the thing name an IoT policy pins the client to).
    pub device_id: &'a str,
}

/// Parses `dt/{fleet}/{device_id}/telemetry`, also behind a Basic Ingest prefix
/// (`$aws/rules/{rule}/dt/...`). Returns `None` for any other shape.
pub fn parse_topic(topic: &str) -> Option<TopicParts<'_>> {
    let topic = match topic.strip_prefix("$aws/rules/") {
        Some(rest) => rest.split_once('/')?.1,
        None => topic,
    };
    let mut parts = topic.split('/');
    let (dt, fleet, device_id, kind) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || dt != "dt" || kind != "telemetry" {
        return None;
    }
    if fleet.is_empty() || device_id.is_empty() {
        return None;
    }
    Some(TopicParts { fleet, device_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canonical_topic_yields_fleet_and_device() {
        let p = parse_topic("dt/factory/sensor-1/telemetry").unwrap();
        assert_eq!(p.fleet, "factory");
        assert_eq!(p.device_id, "sensor-1");
        assert_eq!(
            telemetry_topic("factory", "sensor-1"),
            "dt/factory/sensor-1/telemetry"
        );
    }

    #[test]
    fn a_basic_ingest_topic_is_understood() {
        let p = parse_topic("$aws/rules/ingest_rule/dt/f/d-1/telemetry").unwrap();
        assert_eq!(p.device_id, "d-1");
    }

    #[test]
    fn other_shapes_are_refused() {
        for t in [
            "dt/f/d/status",
            "dt/f/telemetry",
            "x/f/d/telemetry",
            "dt/f/d/telemetry/x",
            "dt//d/telemetry",
        ] {
            assert!(parse_topic(t).is_none(), "{t}");
        }
    }
}

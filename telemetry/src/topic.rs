//! The MQTT topic convention: `dt/{fleet}/{device_id}/telemetry`.

/// The topic filter the IoT rule subscribes to.
pub const TOPIC_FILTER: &str = "dt/+/+/telemetry";

/// The topic rule's name: the AWS template's `TopicRuleName` default, and the rule the
/// local stack emulates. Basic Ingest topics name it (`$aws/rules/<rule>/dt/...`).
pub const DEFAULT_RULE_NAME: &str = "iotpipe_telemetry";

/// The prefix of AWS IoT Basic Ingest topics, followed by the rule's name.
pub const BASIC_INGEST_PREFIX: &str = "$aws/rules/";

/// The topic filter of `rule`'s Basic Ingest topics (`$aws/rules/<rule>/dt/+/+/telemetry`).
pub fn basic_ingest_filter(rule: &str) -> String {
    format!("{BASIC_INGEST_PREFIX}{rule}/{TOPIC_FILTER}")
}

/// The Basic Ingest topic of `topic` for `rule`: `$aws/rules/<rule>/<topic>`.
pub fn basic_ingest_topic(rule: &str, topic: &str) -> String {
    format!("{BASIC_INGEST_PREFIX}{rule}/{topic}")
}

/// What the topic rule named `rule` (`FROM 'dt/+/+/telemetry'`) makes of a message published
/// on `topic`, as AWS IoT Core does: a plain telemetry topic reaches it through the message
/// broker (metered as a message), and so does its own Basic Ingest topic
/// (`$aws/rules/<rule>/dt/...`, not metered). Returns the topic `topic()` answers in the
/// rule (without the Basic Ingest prefix) and whether it came through Basic Ingest; `None`
/// for a topic this rule never sees (another rule's Basic Ingest topic, another shape).
pub fn rule_topic<'a>(topic: &'a str, rule: &str) -> Option<(&'a str, bool)> {
    let (plain, basic_ingest) = match topic.strip_prefix(BASIC_INGEST_PREFIX) {
        Some(rest) => {
            let (name, plain) = rest.split_once('/')?;
            if name != rule {
                return None;
            }
            (plain, true)
        }
        None => (topic, false),
    };
    // The rule's FROM filter matches the plain telemetry shape only (`parse_topic` would
    // also take a Basic Ingest prefix).
    if plain.starts_with(BASIC_INGEST_PREFIX) {
        return None;
    }
    parse_topic(plain)?;
    Some((plain, basic_ingest))
}

/// Builds the telemetry topic for a device of a fleet.
pub fn telemetry_topic(fleet: &str, device_id: &str) -> String {
    // Built by hand: `format!` was 1.5 % of a replay's CPU (one topic per message).
    let mut topic = String::with_capacity(fleet.len() + device_id.len() + 14);
    topic.push_str("dt/");
    topic.push_str(fleet);
    topic.push('/');
    topic.push_str(device_id);
    topic.push_str("/telemetry");
    topic
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
    fn the_rule_takes_the_plain_topic_and_its_own_basic_ingest_topic_only() {
        let rule = DEFAULT_RULE_NAME;
        assert_eq!(
            rule_topic("dt/f/d-1/telemetry", rule),
            Some(("dt/f/d-1/telemetry", false))
        );
        let basic = basic_ingest_topic(rule, "dt/f/d-1/telemetry");
        assert_eq!(basic, "$aws/rules/iotpipe_telemetry/dt/f/d-1/telemetry");
        assert_eq!(rule_topic(&basic, rule), Some(("dt/f/d-1/telemetry", true)));
        // Another rule's Basic Ingest topic goes to that rule only.
        assert_eq!(
            rule_topic("$aws/rules/other_rule/dt/f/d-1/telemetry", rule),
            None
        );
        // Shapes the rule's FROM 'dt/+/+/telemetry' does not match.
        for t in [
            "$aws/rules/iotpipe_telemetry/dt/f/d-1/status",
            "$aws/rules/iotpipe_telemetry",
            "$aws/rules/iotpipe_telemetry/$aws/rules/iotpipe_telemetry/dt/f/d/telemetry",
            "dt/f/d-1/telemetry/extra",
            "cmd/f/d-1/telemetry",
        ] {
            assert_eq!(rule_topic(t, rule), None, "{t}");
        }
        assert_eq!(
            basic_ingest_filter(rule),
            "$aws/rules/iotpipe_telemetry/dt/+/+/telemetry"
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

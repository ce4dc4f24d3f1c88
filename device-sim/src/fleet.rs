//! Fleets of several device types, as described in a fleet file (TOML).
//!
//! A fleet file is a [`SimConfig`] in TOML: every field is optional (defaults as in
//! [`SimConfig::default`]) and `[[device_type]]` tables describe the devices. Without
//! device types the fleet is `devices` default sensors named `device_prefix` + number,
//! publishing `rate` messages per second — exactly what the flags describe.
//!
//! ```toml
//! fleet = "factory"
//! seed = 7
//! duration = "5m"
//!
//! [[device_type]]
//! name = "env"              # ids env-000001, env-000002, ... (id_prefix overrides)
//! count = 100
//! interval = "10s"          # one message every 10 s ...
//! jitter = "500ms"          # ... each shifted by up to ±0.5 s
//! firmware = [{ version = "2.1.0", share = 0.9 }, { version = "2.0.3", share = 0.1 }]
//!
//! [device_type.metrics.temperature]
//! kind = "daily_cycle"
//! mean = { min = 18.0, max = 24.0 }   # drawn once per device
//! amplitude = 3.0
//! peak_hour = 15.0
//! noise_sd = 0.2
//! decimals = 2
//! ```
//!
//! Device *i* of the fleet (0-based, counting through the types in file order) keeps
//! random stream *i* and ramp slot *i*, so adding a type at the end changes nothing for
//! the devices before it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{MAX_DEVICES, SimConfig};
use crate::error::SimError;
use crate::model::{Generator, MetricSpec, Param};
use crate::schedule;

/// Most metrics one message may carry (the data contract's limit).
const MAX_METRICS: usize = telemetry::validate::MAX_METRICS;

/// A kind of device in a fleet: how many, how often they publish, and what they measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceType {
    /// Name of the type (for people; also the default id prefix `{name}-`).
    pub name: String,
    /// Number of devices of this type.
    pub count: usize,
    /// Device ids are this prefix plus a 6-digit, 1-based number within the type.
    /// Default `{name}-`.
    #[serde(default)]
    pub id_prefix: Option<String>,
    /// Time between two messages of a device, e.g. `"1s"`, `"250ms"`; at least 1 ms.
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub interval: Duration,
    /// Each message is shifted by a random amount in `[-jitter, +jitter]` (event time
    /// and send time alike); below half the interval, so a device's messages keep their
    /// order. Default 0.
    #[serde(default, with = "crate::config::humantime_serde_compat")]
    pub jitter: Duration,
    /// Firmware versions and their shares of the type's devices; empty (the default)
    /// omits the `fw` field.
    #[serde(default)]
    pub firmware: Vec<Firmware>,
    /// The metrics, by name (`[a-z][a-z0-9_]{0,63}`). Parameters are drawn per device in
    /// name order.
    pub metrics: BTreeMap<String, MetricSpec>,
}

/// A firmware version and the share of devices that run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    /// The version string reported as `fw`.
    pub version: String,
    /// Relative share (shares need not add up to 1).
    pub share: f64,
}

impl DeviceType {
    /// The default environmental sensor: temperature (°C, daily cycle + noise), relative
    /// humidity (%, bounded random walk) and battery (V, slow decay); a fleet mid
    /// firmware roll-out. Used when a [`SimConfig`] has no device types.
    pub fn default_sensor(count: usize, id_prefix: &str, rate: f64) -> Self {
        let range = |min, max| Param::Range { min, max };
        let metrics = [
            (
                "battery",
                MetricSpec::new(
                    Generator::Decay {
                        start: range(3.7, 4.2),
                        per_hour: range(0.0005, 0.002),
                        floor: 3.3.into(),
                        noise_sd: 0.002.into(),
                    },
                    3,
                ),
            ),
            (
                "humidity",
                MetricSpec::new(
                    Generator::RandomWalk {
                        start: range(35.0, 60.0),
                        step_sd: 0.3.into(),
                        min: 5.0.into(),
                        max: 95.0.into(),
                    },
                    1,
                ),
            ),
            (
                "temperature",
                MetricSpec::new(
                    Generator::DailyCycle {
                        mean: range(18.0, 24.0),
                        amplitude: range(2.0, 5.0),
                        peak_hour: 15.0.into(),
                        noise_sd: 0.2.into(),
                    },
                    2,
                ),
            ),
        ]
        .into_iter()
        .map(|(name, spec)| (name.to_owned(), spec))
        .collect();
        Self {
            name: "sensor".into(),
            count,
            id_prefix: Some(id_prefix.to_owned()),
            interval: schedule::interval(rate),
            jitter: Duration::ZERO,
            firmware: [("1.4.2", 0.80), ("1.4.1", 0.15), ("1.3.9", 0.05)]
                .into_iter()
                .map(|(version, share)| Firmware {
                    version: version.into(),
                    share,
                })
                .collect(),
            metrics,
        }
    }

    /// The id prefix: `id_prefix`, or `{name}-`.
    pub fn prefix(&self) -> String {
        self.id_prefix
            .clone()
            .unwrap_or_else(|| format!("{}-", self.name))
    }

    /// What is wrong with the type, if anything; `at` names it in the message.
    fn check(&self, at: &str) -> Result<(), String> {
        if self.count == 0 {
            return Err(format!("{at}: count must be at least 1"));
        }
        if self.interval < Duration::from_millis(1) {
            return Err(format!("{at}: interval must be at least 1ms"));
        }
        if self.jitter.saturating_mul(2) >= self.interval {
            return Err(format!(
                "{at}: jitter must be below half the interval, so that messages keep their order"
            ));
        }
        let names: Vec<String> = self
            .metrics
            .iter()
            .flat_map(|(name, spec)| spec.generator.metric_names(name))
            .collect();
        if names.is_empty() || names.len() > MAX_METRICS {
            return Err(format!(
                "{at}: a message carries 1 to {MAX_METRICS} metrics, this type has {}",
                names.len()
            ));
        }
        for name in &names {
            if !valid_metric_name(name) {
                return Err(format!(
                    "{at}: metric name {name:?} does not match [a-z][a-z0-9_]{{0,63}}"
                ));
            }
        }
        for (name, spec) in &self.metrics {
            if let Some(problem) = spec.generator.problem() {
                return Err(format!("{at}.metrics.{name}: {problem}"));
            }
            if spec.decimals.is_some_and(|d| d > 9) {
                return Err(format!("{at}.metrics.{name}: decimals must be 0 to 9"));
            }
        }
        if self
            .firmware
            .iter()
            .any(|f| !f.share.is_finite() || f.share < 0.0 || f.version.is_empty())
        {
            return Err(format!(
                "{at}: firmware needs a version and a non-negative share"
            ));
        }
        Ok(())
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A device type with its place in the fleet.
#[derive(Debug, Clone)]
pub struct TypeSlot {
    /// The type.
    pub ty: DeviceType,
    /// Fleet index of its first device.
    pub first_index: usize,
    /// Messages each of its devices publishes in a full run.
    pub messages_per_device: u64,
}

/// Which device is which: the device types of a [`SimConfig`] laid out one after another.
#[derive(Debug, Clone)]
pub struct FleetLayout {
    slots: Vec<TypeSlot>,
    devices: usize,
}

impl FleetLayout {
    /// The layout of `cfg`: its device types, or `devices` default sensors.
    pub fn new(cfg: &SimConfig) -> Self {
        let (types, from_rate) = if cfg.device_types.is_empty() {
            let default = DeviceType::default_sensor(cfg.devices, &cfg.device_prefix, cfg.rate);
            (vec![default], true)
        } else {
            (cfg.device_types.clone(), false)
        };
        let mut slots = Vec::with_capacity(types.len());
        let mut first_index = 0usize;
        for ty in types {
            let messages_per_device = if from_rate {
                // From the asked rate, not the rounded interval: 3/s for 10 s is 30.
                schedule::messages_per_device(cfg.rate, cfg.duration)
            } else {
                messages_in(cfg.duration, ty.interval)
            };
            let count = ty.count;
            slots.push(TypeSlot {
                ty,
                first_index,
                messages_per_device,
            });
            first_index = first_index.saturating_add(count);
        }
        Self {
            slots,
            devices: first_index,
        }
    }

    /// Number of devices in the fleet.
    pub fn devices(&self) -> usize {
        self.devices
    }

    /// The device types in fleet order.
    pub fn slots(&self) -> &[TypeSlot] {
        &self.slots
    }

    /// The type of device `index` and the device's 0-based number within it.
    pub fn device(&self, index: usize) -> Option<(&TypeSlot, usize)> {
        let pos = self.slots.partition_point(|s| s.first_index <= index);
        let slot = self.slots.get(pos.checked_sub(1)?)?;
        let local = index - slot.first_index;
        (local < slot.ty.count).then_some((slot, local))
    }

    /// The id of device `index`.
    pub fn device_id(&self, index: usize) -> Option<String> {
        self.device(index)
            .map(|(slot, local)| schedule::device_id(&slot.ty.prefix(), local))
    }

    /// Messages the whole fleet publishes in a full run.
    pub fn total_messages(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.messages_per_device.saturating_mul(s.ty.count as u64))
            .fold(0, u64::saturating_add)
    }

    /// The most messages any device publishes in a full run.
    pub fn max_messages_per_device(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.messages_per_device)
            .max()
            .unwrap_or(0)
    }

    /// Messages per second of the whole fleet at full strength.
    pub fn nominal_rate(&self) -> f64 {
        self.slots
            .iter()
            .map(|s| s.ty.count as f64 / s.ty.interval.as_secs_f64())
            .sum()
    }

    /// Checks the device types against the contract and each other.
    pub(crate) fn check(&self, cfg: &SimConfig) -> Result<(), SimError> {
        let invalid = |reason: String| SimError::InvalidConfig {
            field: "device_type",
            reason,
        };
        let mut prefixes: Vec<String> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let at = format!("device_type[{i}] ({:?})", slot.ty.name);
            if !cfg.device_types.is_empty() {
                slot.ty.check(&at).map_err(invalid)?;
            }
            let prefix = slot.ty.prefix();
            // Ids of two types must never collide (they are MQTT client ids).
            if let Some(other) = prefixes
                .iter()
                .find(|p| p.starts_with(prefix.as_str()) || prefix.starts_with(p.as_str()))
            {
                return Err(invalid(format!(
                    "{at}: id prefix {prefix:?} overlaps {other:?}; give each type its own id_prefix"
                )));
            }
            let last_id = schedule::device_id(&prefix, slot.ty.count.saturating_sub(1));
            if !crate::config::valid_topic_segment(&last_id) {
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
                .checked_add(slot.messages_per_device.saturating_sub(1));
            if last_seq.is_none_or(|s| i64::try_from(s).is_err()) {
                return Err(SimError::InvalidConfig {
                    field: "first_seq",
                    reason: format!(
                        "{} + {} messages overflows 2^63-1",
                        cfg.first_seq, slot.messages_per_device
                    ),
                });
            }
        }
        if self.devices == 0 || self.devices > MAX_DEVICES {
            return Err(invalid(format!(
                "the fleet has {} devices; it needs 1 to {MAX_DEVICES}",
                self.devices
            )));
        }
        Ok(())
    }
}

/// Messages a device sending every `interval` publishes in `duration`: every *k* with
/// `k · interval < duration`.
pub fn messages_in(duration: Duration, interval: Duration) -> u64 {
    let (d, i) = (duration.as_nanos(), interval.as_nanos().max(1));
    u64::try_from(d.div_ceil(i)).unwrap_or(u64::MAX)
}

impl SimConfig {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_TYPES: &str = r#"
        fleet = "factory"
        seed = 7
        duration = "1m"
        qos = 0

        [[device_type]]
        name = "env"
        count = 3
        interval = "10s"
        jitter = "1s"
        firmware = [{ version = "2.1.0", share = 1 }]
        [device_type.metrics.temperature]
        kind = "gaussian"
        mean = { min = 18, max = 24 }
        sd = 0.5

        [[device_type]]
        name = "truck"
        id_prefix = "truck:"
        count = 2
        interval = "500ms"
        [device_type.metrics.position]
        kind = "gps_track"
        lat = 52.5
        lon = 13.4
        speed_mps = { min = 5, max = 20 }
        [device_type.metrics.state]
        kind = "pick_one"
        values = [0, 1, 2]
        decimals = 0
    "#;

    #[test]
    fn a_fleet_file_with_two_device_types_is_read_and_laid_out() {
        let cfg = SimConfig::from_toml(TWO_TYPES).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.fleet, "factory");
        assert_eq!(cfg.duration, Duration::from_secs(60));
        let layout = FleetLayout::new(&cfg);
        assert_eq!(layout.devices(), 5);
        assert_eq!(layout.device_id(0).as_deref(), Some("env-000001"));
        assert_eq!(layout.device_id(2).as_deref(), Some("env-000003"));
        assert_eq!(layout.device_id(3).as_deref(), Some("truck:000001"));
        assert_eq!(layout.device_id(5), None);
        // 60 s / 10 s = 6 for env, 60 s / 0.5 s = 120 for trucks.
        assert_eq!(layout.total_messages(), 3 * 6 + 2 * 120);
        assert_eq!(layout.max_messages_per_device(), 120);
        assert!((layout.nominal_rate() - (0.3 + 4.0)).abs() < 1e-9);
    }

    #[test]
    fn without_device_types_the_fleet_is_the_flags_default_sensors() {
        let cfg = SimConfig {
            devices: 4,
            rate: 3.0,
            duration: Duration::from_secs(10),
            ..SimConfig::default()
        };
        let layout = FleetLayout::new(&cfg);
        assert_eq!(layout.devices(), 4);
        assert_eq!(layout.total_messages(), 4 * 30);
        assert_eq!(layout.device_id(3).as_deref(), Some("sensor-000004"));
    }

    #[test]
    fn fleet_file_mistakes_are_reported_with_their_place() {
        let typo = SimConfig::from_toml("devcies = 3").unwrap_err().to_string();
        assert!(typo.contains("devcies"), "{typo}");

        for (toml, hint) in [
            (
                "[[device_type]]\nname='a'\ncount=0\ninterval='1s'\n[device_type.metrics.x]\nkind='constant'\nvalue=1",
                "count",
            ),
            (
                "[[device_type]]\nname='a'\ncount=1\ninterval='1s'\njitter='600ms'\n[device_type.metrics.x]\nkind='constant'\nvalue=1",
                "jitter",
            ),
            (
                "[[device_type]]\nname='a'\ncount=1\ninterval='1s'\n[device_type.metrics.Bad]\nkind='constant'\nvalue=1",
                "metric name",
            ),
            (
                "[[device_type]]\nname='a'\ncount=1\ninterval='1s'\n[device_type.metrics.x]\nkind='uniform'\nmin={min=2,max=1}\nmax=3",
                "metrics.x",
            ),
            (
                "[[device_type]]\nname='a'\ncount=1\ninterval='1s'\n[device_type.metrics.x]\nkind='constant'\nvalue=1\n[[device_type]]\nname='a'\ncount=1\ninterval='1s'\n[device_type.metrics.x]\nkind='constant'\nvalue=1",
                "overlaps",
            ),
        ] {
            let err = SimConfig::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(hint), "{hint}: {err}");
        }
    }

    #[test]
    fn messages_in_counts_every_slot_before_the_end() {
        let ms = Duration::from_millis;
        assert_eq!(messages_in(ms(60_000), ms(10_000)), 6);
        assert_eq!(messages_in(ms(60_001), ms(10_000)), 7);
        assert_eq!(messages_in(ms(1), ms(10_000)), 1);
    }
}

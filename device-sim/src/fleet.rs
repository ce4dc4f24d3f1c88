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
//!
//! This module lays the types out ([`FleetLayout`]: device index → type and id); the
//! types themselves are [`DeviceType`]s ([`crate::device_type`]) and
//! [`SimConfig::load`] reads the file.

use crate::config::SimConfig;
use crate::device_type::device_id;
pub use crate::device_type::{DeviceType, Firmware, messages_in};

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
        let types = cfg.types_and_messages();
        let mut slots = Vec::with_capacity(types.len());
        let mut first_index = 0usize;
        for (ty, messages_per_device) in types {
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
            .map(|(slot, local)| device_id(&slot.ty.prefix(), local))
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

//! The value types of a fleet file: a kind of device ([`DeviceType`]), its metrics
//! ([`MetricSpec`], [`Generator`], [`Param`]) and firmware, and the arithmetic of a
//! type's ids and message counts. Plain data and pure functions: this module imports
//! nothing else of the crate but the duration serde helpers.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::durations::humantime_serde_compat;

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
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    /// Each message is shifted by a random amount in `[-jitter, +jitter]` (event time
    /// and send time alike); below half the interval, so a device's messages keep their
    /// order. Default 0.
    #[serde(default, with = "humantime_serde_compat")]
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
    /// firmware roll-out. Used when a [`SimConfig`](crate::config::SimConfig) has no device types.
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
            interval: interval(rate),
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
    pub(crate) fn check(&self, at: &str) -> Result<(), String> {
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

/// A generator parameter: a fixed number, or a range each device draws its value from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Param {
    /// The same value for every device.
    Fixed(f64),
    /// Drawn uniformly from `[min, max)` once per device.
    Range {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
}

impl Param {
    /// The device's value. A `Range` always consumes one draw, a `Fixed` none.
    fn draw(self, rng: &mut ChaCha8Rng) -> f64 {
        match self {
            Param::Fixed(v) => v,
            Param::Range { min, max } => min + (max - min) * rng.random::<f64>(),
        }
    }

    /// Finite, and `min <= max` for a range.
    pub(crate) fn is_valid(self) -> bool {
        match self {
            Param::Fixed(v) => v.is_finite(),
            Param::Range { min, max } => min.is_finite() && max.is_finite() && min <= max,
        }
    }
}

impl From<f64> for Param {
    fn from(v: f64) -> Self {
        Param::Fixed(v)
    }
}

/// How one metric's values evolve over a device's messages; `P` is [`Param`] in a fleet
/// description and `f64` once a device has drawn its values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    bound(deserialize = "P: Deserialize<'de> + From<f64>")
)]
pub enum Generator<P = f64> {
    /// Always `value`.
    Constant {
        /// The value.
        value: P,
    },
    /// Uniformly distributed in `[min, max)`.
    Uniform {
        /// Lower bound (inclusive).
        min: P,
        /// Upper bound (exclusive).
        max: P,
    },
    /// Normally distributed around `mean`.
    Gaussian {
        /// Mean.
        mean: P,
        /// Standard deviation.
        sd: P,
    },
    /// A daily cycle: `mean + amplitude · cos(2π (hour − peak_hour) / 24)` plus gaussian
    /// noise, where `hour` is the UTC hour of day of the message's event time.
    DailyCycle {
        /// Daily mean.
        mean: P,
        /// Half the peak-to-trough swing.
        amplitude: P,
        /// UTC hour (0–24, fractional) of the daily maximum.
        peak_hour: P,
        /// Standard deviation of the noise added to every reading.
        #[serde(default = "zero")]
        noise_sd: P,
    },
    /// A random walk: each message moves the value by a gaussian step, reflected back
    /// into `[min, max]`. The first message reads `start`.
    RandomWalk {
        /// Value of the first message.
        start: P,
        /// Standard deviation of one step.
        step_sd: P,
        /// Lower bound.
        min: P,
        /// Upper bound.
        max: P,
    },
    /// Linear decay with event time (a battery): `start − per_hour · hours since the
    /// device's first message`, never below `floor`, plus gaussian noise.
    Decay {
        /// Value at the device's first message.
        start: P,
        /// Loss per hour of event time.
        per_hour: P,
        /// The value never goes below this.
        floor: P,
        /// Standard deviation of the measurement noise.
        #[serde(default = "zero")]
        noise_sd: P,
    },
    /// One of `values` per message (a state code, a setting), with optional `weights`
    /// (default: equally likely).
    PickOne {
        /// The candidates.
        values: Vec<f64>,
        /// Relative weights, one per value.
        #[serde(default)]
        weights: Vec<f64>,
    },
    /// A vehicle moving at `speed_mps` with a heading that wanders by `turn_sd_deg` per
    /// message. Emits two metrics, `{name}_lat` and `{name}_lon` (degrees).
    GpsTrack {
        /// Starting latitude, degrees.
        lat: P,
        /// Starting longitude, degrees.
        lon: P,
        /// Speed, metres per second.
        speed_mps: P,
        /// Standard deviation of the heading change per message, degrees.
        #[serde(default = "zero")]
        turn_sd_deg: P,
    },
}

fn zero<P: From<f64>>() -> P {
    P::from(0.0)
}

impl Generator<Param> {
    /// The device's generator: every [`Param`] drawn, in declaration order.
    pub fn instantiate(&self, rng: &mut ChaCha8Rng) -> Generator<f64> {
        let mut d = |p: &Param| p.draw(rng);
        match self {
            Generator::Constant { value } => Generator::Constant { value: d(value) },
            Generator::Uniform { min, max } => Generator::Uniform {
                min: d(min),
                max: d(max),
            },
            Generator::Gaussian { mean, sd } => Generator::Gaussian {
                mean: d(mean),
                sd: d(sd),
            },
            Generator::DailyCycle {
                mean,
                amplitude,
                peak_hour,
                noise_sd,
            } => Generator::DailyCycle {
                mean: d(mean),
                amplitude: d(amplitude),
                peak_hour: d(peak_hour),
                noise_sd: d(noise_sd),
            },
            Generator::RandomWalk {
                start,
                step_sd,
                min,
                max,
            } => Generator::RandomWalk {
                start: d(start),
                step_sd: d(step_sd),
                min: d(min),
                max: d(max),
            },
            Generator::Decay {
                start,
                per_hour,
                floor,
                noise_sd,
            } => Generator::Decay {
                start: d(start),
                per_hour: d(per_hour),
                floor: d(floor),
                noise_sd: d(noise_sd),
            },
            Generator::PickOne { values, weights } => Generator::PickOne {
                values: values.clone(),
                weights: weights.clone(),
            },
            Generator::GpsTrack {
                lat,
                lon,
                speed_mps,
                turn_sd_deg,
            } => Generator::GpsTrack {
                lat: d(lat),
                lon: d(lon),
                speed_mps: d(speed_mps),
                turn_sd_deg: d(turn_sd_deg),
            },
        }
    }

    /// Why the parameters cannot work, if they cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        let params: Vec<Param> = match self {
            Generator::Constant { value } => vec![*value],
            Generator::Uniform { min, max } => vec![*min, *max],
            Generator::Gaussian { mean, sd } => vec![*mean, *sd],
            Generator::DailyCycle {
                mean,
                amplitude,
                peak_hour,
                noise_sd,
            } => vec![*mean, *amplitude, *peak_hour, *noise_sd],
            Generator::RandomWalk {
                start,
                step_sd,
                min,
                max,
            } => vec![*start, *step_sd, *min, *max],
            Generator::Decay {
                start,
                per_hour,
                floor,
                noise_sd,
            } => vec![*start, *per_hour, *floor, *noise_sd],
            Generator::PickOne { values, weights } => {
                if values.is_empty() {
                    return Some("pick_one needs at least one value".into());
                }
                if !weights.is_empty() && weights.len() != values.len() {
                    return Some(format!(
                        "pick_one has {} values but {} weights",
                        values.len(),
                        weights.len()
                    ));
                }
                if values.iter().any(|v| !v.is_finite())
                    || weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                    || (!weights.is_empty() && weights.iter().sum::<f64>() <= 0.0)
                {
                    return Some("pick_one values must be finite and weights non-negative".into());
                }
                vec![]
            }
            Generator::GpsTrack {
                lat,
                lon,
                speed_mps,
                turn_sd_deg,
            } => vec![*lat, *lon, *speed_mps, *turn_sd_deg],
        };
        params.iter().any(|p| !p.is_valid()).then(|| {
            "parameters must be finite numbers or { min, max } ranges with min <= max".into()
        })
    }

    /// The metric names a metric called `name` emits.
    pub(crate) fn metric_names(&self, name: &str) -> Vec<String> {
        match self {
            Generator::GpsTrack { .. } => vec![format!("{name}_lat"), format!("{name}_lon")],
            _ => vec![name.to_owned()],
        }
    }
}

/// One metric of a device type: its generator and how many decimals it keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// The generator and its parameters (`kind = "..."` selects it).
    #[serde(flatten)]
    pub generator: Generator<Param>,
    /// Decimal places kept (payloads carry `21.53`, not `21.531934712`). Default 2;
    /// 6 for `gps_track`.
    #[serde(default)]
    pub decimals: Option<u8>,
}

impl MetricSpec {
    /// A metric with `decimals` places.
    pub fn new(generator: Generator<Param>, decimals: u8) -> Self {
        Self {
            generator,
            decimals: Some(decimals),
        }
    }

    pub(crate) fn decimals(&self) -> u8 {
        self.decimals.unwrap_or(match self.generator {
            Generator::GpsTrack { .. } => 6,
            _ => 2,
        })
    }
}

/// The id of device `index` (0-based): the prefix and a 6-digit, 1-based number.
pub fn device_id(prefix: &str, index: usize) -> String {
    format!("{prefix}{:06}", index + 1)
}

/// Messages each device publishes: ⌈`rate` × `duration`⌉, i.e. every message *k* with
/// `k / rate < duration`. Exactly `rate × duration` when that is a whole number (up to
/// floating-point noise, which is rounded away rather than turned into an extra message).
pub fn messages_per_device(rate: f64, duration: Duration) -> u64 {
    let x = rate * duration.as_secs_f64();
    if !x.is_finite() || x <= 0.0 {
        return 0;
    }
    let nearest = x.round();
    let n = if (x - nearest).abs() <= 1e-9 * nearest.max(1.0) {
        nearest
    } else {
        x.ceil()
    };
    // Float-to-int `as` saturates; validated rates and durations are far below u64::MAX.
    n as u64
}

/// Time between two messages of a device at `rate` messages per second, rounded to the
/// nanosecond.
pub fn interval(rate: f64) -> Duration {
    Duration::from_nanos((1e9 / rate).round() as u64)
}

/// Messages a device sending every `interval` publishes in `duration`: every *k* with
/// `k · interval < duration`.
pub fn messages_in(duration: Duration, interval: Duration) -> u64 {
    let (d, i) = (duration.as_nanos(), interval.as_nanos().max(1));
    u64::try_from(d.div_ceil(i)).unwrap_or(u64::MAX)
}

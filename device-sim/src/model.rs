//! What a simulated device measures: metric generators, their per-device parameters, and
//! the state that evolves from one message to the next.
//!
//! A [`DeviceModel`] owns its own random stream (ChaCha8 keyed by the run's seed, stream
//! number = device index), so a device's values depend only on `(seed, device index,
//! device type, message number, event time)` — never on other devices, task scheduling
//! or the network. A message draws the same number of random values whatever the values
//! drawn, which keeps payloads byte-identical from run to run.
//!
//! Generator parameters are written as [`Param`]s: a number, or a `{ min, max }` range from
//! which each device draws its own value once, so that no two sensors read alike.

use std::collections::BTreeMap;
use std::f64::consts::TAU;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::device_type::DeviceType;
pub use crate::device_type::{Generator, MetricSpec, Param};

const MS_PER_HOUR: f64 = 3_600_000.0;
const MS_PER_DAY: i64 = 86_400_000;
/// Metres per degree of latitude (and of longitude at the equator).
const M_PER_DEG: f64 = 111_320.0;

/// One metric of one device: its drawn generator and evolving state.
#[derive(Debug, Clone)]
struct MetricModel {
    name: String,
    generator: Generator<f64>,
    decimals: u8,
    /// Random-walk position; GPS position, heading and last event time.
    walk: Option<f64>,
    track: Option<Track>,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    lat: f64,
    lon: f64,
    heading: f64,
    ts: i64,
}

impl MetricModel {
    /// Appends this message's readings to `out`. Values are rounded and always finite
    /// (a non-finite intermediate result reads as 0).
    fn emit(
        &mut self,
        rng: &mut ChaCha8Rng,
        ts: i64,
        first_ts: i64,
        out: &mut BTreeMap<String, f64>,
    ) {
        let value = match &self.generator {
            Generator::Constant { value } => *value,
            Generator::Uniform { min, max } => min + (max - min) * rng.random::<f64>(),
            Generator::Gaussian { mean, sd } => mean + sd * standard_normal(rng),
            Generator::DailyCycle {
                mean,
                amplitude,
                peak_hour,
                noise_sd,
            } => {
                let hour = ts.rem_euclid(MS_PER_DAY) as f64 / MS_PER_HOUR;
                mean + amplitude * (TAU * (hour - peak_hour) / 24.0).cos()
                    + noise_sd * standard_normal(rng)
            }
            Generator::RandomWalk {
                start,
                step_sd,
                min,
                max,
            } => {
                // The step is drawn for the first message too, so that every message
                // consumes the same amount of randomness.
                let step = step_sd * standard_normal(rng);
                let x = match self.walk {
                    None => *start,
                    Some(prev) => reflect(prev + step, *min, *max),
                };
                self.walk = Some(x);
                x
            }
            Generator::Decay {
                start,
                per_hour,
                floor,
                noise_sd,
            } => {
                let hours = (ts - first_ts) as f64 / MS_PER_HOUR;
                let noise = noise_sd * standard_normal(rng);
                (start - per_hour * hours).max(*floor) + noise
            }
            Generator::PickOne { values, weights } => pick(values, weights, rng.random()),
            Generator::GpsTrack {
                lat,
                lon,
                speed_mps,
                turn_sd_deg,
            } => {
                let turn = turn_sd_deg.to_radians() * standard_normal(rng);
                let initial_heading = TAU * rng.random::<f64>();
                let t = match self.track {
                    None => Track {
                        lat: *lat,
                        lon: *lon,
                        heading: initial_heading,
                        ts,
                    },
                    Some(prev) => {
                        let metres = speed_mps * (ts - prev.ts) as f64 / 1000.0;
                        let heading = prev.heading + turn;
                        let new_lat =
                            (prev.lat + metres * heading.cos() / M_PER_DEG).clamp(-89.9, 89.9);
                        let lon_scale = (M_PER_DEG * prev.lat.to_radians().cos()).max(1.0);
                        let new_lon =
                            (prev.lon + metres * heading.sin() / lon_scale + 540.0) % 360.0 - 180.0;
                        Track {
                            lat: new_lat,
                            lon: new_lon,
                            heading,
                            ts,
                        }
                    }
                };
                self.track = Some(t);
                out.insert(
                    format!("{}_lat", self.name),
                    finite(round_to(t.lat, self.decimals)),
                );
                out.insert(
                    format!("{}_lon", self.name),
                    finite(round_to(t.lon, self.decimals)),
                );
                return;
            }
        };
        out.insert(self.name.clone(), finite(round_to(value, self.decimals)));
    }
}

/// The deterministic state of one simulated device.
#[derive(Debug, Clone)]
pub struct DeviceModel {
    rng: ChaCha8Rng,
    metrics: Vec<MetricModel>,
    /// Firmware version reported in every message (`None`: the `fw` field is omitted).
    pub fw: Option<String>,
}

impl DeviceModel {
    /// The random stream of device `index` in a run seeded with `seed`: ChaCha8 keyed by
    /// the seed, on stream `index`, so that devices are independent of one another.
    pub fn rng(seed: u64, index: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index as u64);
        rng
    }

    /// A device of type `ty`: its parameters are drawn from `rng` (metrics in name
    /// order, then the firmware), which then drives its readings.
    pub fn new(ty: &DeviceType, mut rng: ChaCha8Rng) -> Self {
        let metrics = ty
            .metrics
            .iter()
            .map(|(name, spec)| MetricModel {
                name: name.clone(),
                generator: spec.generator.instantiate(&mut rng),
                decimals: spec.decimals(),
                walk: None,
                track: None,
            })
            .collect();
        let fw = if ty.firmware.is_empty() {
            None
        } else {
            let weights: Vec<f64> = ty.firmware.iter().map(|f| f.share).collect();
            let i = pick_index(&weights, rng.random());
            ty.firmware.get(i).map(|f| f.version.clone())
        };
        Self { rng, metrics, fw }
    }

    /// Draws a value uniformly from `0..n` from the device's stream.
    pub fn draw_below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            0
        } else {
            self.rng.random_range(0..n)
        }
    }

    /// The readings of the next message, at event time `ts`; `first_ts` is the event time
    /// of the device's first message.
    pub fn readings(&mut self, ts: i64, first_ts: i64) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for m in &mut self.metrics {
            m.emit(&mut self.rng, ts, first_ts, &mut out);
        }
        out
    }
}

/// A standard normal variate (Box–Muller). Always draws exactly two uniforms, so the
/// amount of randomness a message consumes never depends on the values drawn.
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // 1 - [0, 1) = (0, 1]: ln(0) is avoided.
    let u1 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
}

/// The index chosen by `u` in `[0, 1)` among `weights` (empty or all-zero: uniform over
/// `n = weights.len().max(1)`).
fn pick_index(weights: &[f64], u: f64) -> usize {
    let total: f64 = weights.iter().sum();
    if weights.is_empty() || total <= 0.0 {
        return 0;
    }
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w / total;
        if u < acc {
            return i;
        }
    }
    weights.len() - 1
}

fn pick(values: &[f64], weights: &[f64], u: f64) -> f64 {
    let i = if weights.is_empty() {
        // Float-to-int `as` saturates; u < 1 keeps it in range.
        ((u * values.len() as f64) as usize).min(values.len().saturating_sub(1))
    } else {
        pick_index(weights, u)
    };
    values.get(i).copied().unwrap_or(0.0)
}

/// Folds `x` back into `[min, max]` as a walk bouncing off the bounds would.
fn reflect(x: f64, min: f64, max: f64) -> f64 {
    // Also catches NaN bounds.
    if min.partial_cmp(&max) != Some(std::cmp::Ordering::Less) {
        return min;
    }
    let x = if x > max { max - (x - max) } else { x };
    let x = if x < min { min + (min - x) } else { x };
    x.clamp(min, max)
}

/// Rounds to `decimals` places (at most 9).
fn round_to(x: f64, decimals: u8) -> f64 {
    let scale = 10f64.powi(i32::from(decimals.min(9)));
    (x * scale).round() / scale
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensor(seed: u64, index: usize) -> DeviceModel {
        DeviceModel::new(
            &DeviceType::default_sensor(1, "s-", 1.0),
            DeviceModel::rng(seed, index),
        )
    }

    #[test]
    fn the_same_seed_and_index_give_the_same_readings() {
        let (mut a, mut b, mut c) = (sensor(7, 3), sensor(7, 3), sensor(7, 4));
        let (ra, rb, rc) = (a.readings(0, 0), b.readings(0, 0), c.readings(0, 0));
        assert_eq!(ra, rb);
        assert_ne!(ra, rc);
    }

    #[test]
    fn default_readings_are_plausible_and_rounded() {
        let mut d = sensor(1, 0);
        let t0 = 1_764_000_000_000;
        for k in 0..5_000 {
            // One reading a minute for ~3.5 days.
            let r = d.readings(t0 + k * 60_000, t0);
            let (t, h, b) = (r["temperature"], r["humidity"], r["battery"]);
            assert!((10.0..35.0).contains(&t), "temperature {t}");
            assert!((5.0..=95.0).contains(&h), "humidity {h}");
            assert!((3.29..4.21).contains(&b), "battery {b}");
            assert_eq!(round_to(t, 2), t);
            assert_eq!(round_to(h, 1), h);
            assert_eq!(round_to(b, 3), b);
        }
    }

    #[test]
    fn the_battery_decays_over_event_time() {
        let mut d = sensor(1, 0);
        let first = d.readings(0, 0)["battery"];
        let day_later = d.readings(MS_PER_DAY, 0)["battery"];
        assert!(day_later < first, "{first} -> {day_later}");
    }

    fn one_metric(generator: Generator<Param>, decimals: u8) -> DeviceModel {
        let mut ty = DeviceType::default_sensor(1, "x-", 1.0);
        ty.metrics = [("x".to_owned(), MetricSpec::new(generator, decimals))].into();
        ty.firmware.clear();
        DeviceModel::new(&ty, DeviceModel::rng(1, 0))
    }

    #[test]
    fn a_random_walk_stays_within_its_bounds() {
        let mut d = one_metric(
            Generator::RandomWalk {
                start: 0.5.into(),
                step_sd: 10.0.into(),
                min: 0.0.into(),
                max: 1.0.into(),
            },
            6,
        );
        assert_eq!(d.fw, None);
        for _ in 0..1000 {
            let v = d.readings(0, 0)["x"];
            assert!((0.0..=1.0).contains(&v), "{v}");
        }
    }

    #[test]
    fn pick_one_returns_only_its_values_in_proportion() {
        let mut d = one_metric(
            Generator::PickOne {
                values: vec![0.0, 1.0, 2.0],
                weights: vec![1.0, 0.0, 3.0],
            },
            0,
        );
        let mut counts = [0u32; 3];
        for _ in 0..4000 {
            let v = d.readings(0, 0)["x"];
            counts[v as usize] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn a_gps_track_moves_at_its_speed_and_emits_lat_and_lon() {
        let mut d = one_metric(
            Generator::GpsTrack {
                lat: 52.52.into(),
                lon: 13.405.into(),
                speed_mps: 10.0.into(),
                turn_sd_deg: 0.0.into(),
            },
            6,
        );
        let a = d.readings(0, 0);
        let b = d.readings(100_000, 0); // 100 s later: 1 km
        assert_eq!(a.keys().collect::<Vec<_>>(), ["x_lat", "x_lon"]);
        let dlat = (b["x_lat"] - a["x_lat"]) * M_PER_DEG;
        let dlon = (b["x_lon"] - a["x_lon"]) * M_PER_DEG * 52.52f64.to_radians().cos();
        let metres = (dlat * dlat + dlon * dlon).sqrt();
        assert!((990.0..1010.0).contains(&metres), "{metres}");
    }

    #[test]
    fn range_params_differ_between_devices_and_fixed_ones_do_not() {
        let g = Generator::Gaussian {
            mean: Param::Range {
                min: 0.0,
                max: 100.0,
            },
            sd: Param::Fixed(1.0),
        };
        let a = g.instantiate(&mut DeviceModel::rng(1, 0));
        let b = g.instantiate(&mut DeviceModel::rng(1, 1));
        let (Generator::Gaussian { mean: ma, sd: sa }, Generator::Gaussian { mean: mb, sd: sb }) =
            (a, b)
        else {
            panic!("not gaussian");
        };
        assert_ne!(ma, mb);
        assert_eq!((sa, sb), (1.0, 1.0));
    }

    #[test]
    fn generators_read_from_json_with_a_kind_tag_and_ranges() {
        let spec: MetricSpec = serde_json::from_str(
            r#"{"kind":"gaussian","mean":{"min":1,"max":2},"sd":0.5,"decimals":1}"#,
        )
        .unwrap();
        assert_eq!(
            spec.generator,
            Generator::Gaussian {
                mean: Param::Range { min: 1.0, max: 2.0 },
                sd: Param::Fixed(0.5)
            }
        );
        assert_eq!(spec.decimals, Some(1));
    }

    #[test]
    fn impossible_parameters_are_reported() {
        let bad = [
            Generator::Uniform {
                min: Param::Range { min: 2.0, max: 1.0 },
                max: 3.0.into(),
            },
            Generator::Constant {
                value: f64::NAN.into(),
            },
            Generator::PickOne {
                values: vec![],
                weights: vec![],
            },
            Generator::PickOne {
                values: vec![1.0],
                weights: vec![1.0, 2.0],
            },
        ];
        for g in bad {
            assert!(g.problem().is_some(), "{g:?}");
        }
    }
}

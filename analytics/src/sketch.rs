//! A mergeable quantile sketch (DDSketch, Masson, Rim & Lee, VLDB 2019) with a stated
//! relative-accuracy bound, so that 1h and 1d quantiles can be computed from the 1m rows
//! instead of the raw readings.
//!
//! # The mapping
//! A value `x > 0` goes to bucket `i = ⌈ln x / ln γ⌉` with `γ = (1 + α) / (1 − α)`; the
//! bucket covers `(γ^(i−1), γ^i]` and stands for `2γ^i / (γ + 1)`, which is within a
//! relative error `α` of every value of the bucket. Negative values use the same mapping on
//! `|x|` in a store of their own; values with `|x| <` [`MIN_INDEXABLE`] count as zero.
//! Buckets are integer counts, so merging two sketches adds counts: merging is exact,
//! associative and commutative — a 1d sketch is the same whether it is merged from 1m or
//! 1h rows, or built from the readings directly.
//!
//! # The error bound
//! [`Sketch::quantile`] follows `quantile_cont` (linear interpolation between the closest
//! ranks `⌊h⌋` and `⌈h⌉`, `h = (n − 1)·q`), estimating each of the two ranked values from
//! its bucket. With [`ALPHA`] = 0.01:
//! - when the two ranked values have the same sign (always, for a metric that is never
//!   negative), the result is within **1 % of the exact continuous quantile**;
//! - otherwise it is within `α · max(|x⌊h⌋|, |x⌈h⌉|)` of it;
//! - values below [`MIN_INDEXABLE`] in magnitude are estimated as 0 (an absolute error
//!   below 1e-9).
//!
//! The sketch keeps every bucket (no collapsing), so it never loses accuracy; its size
//! grows with the logarithm of the values' range: about 115 buckets per factor of 10, at
//! most a few thousand for any real sensor, two to four bytes each when serialised.
//!
//! # Binary form ([`Sketch::to_bytes`])
//! Version byte `1` (which fixes `α` = [`ALPHA`]), then LEB128 varints: the zero count,
//! the number of positive buckets and, per bucket in ascending order, the zigzag delta of
//! its index from the previous one and its count; then the same for the negative store. A
//! 1m window of one or two readings takes about 8 bytes.

use std::collections::BTreeMap;

/// The relative accuracy of every sketch the pipeline writes (1 %).
pub const ALPHA: f64 = 0.01;

/// Magnitudes below this are counted as zero (the log mapping needs `x > 0`).
pub const MIN_INDEXABLE: f64 = 1e-9;

/// Version byte of the binary form.
const VERSION: u8 = 1;

/// A DDSketch with relative accuracy [`ALPHA`]: see the [module documentation](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    /// Bucket index → count, for values ≥ [`MIN_INDEXABLE`].
    positive: BTreeMap<i32, u64>,
    /// Bucket index of `|x|` → count, for values ≤ −[`MIN_INDEXABLE`].
    negative: BTreeMap<i32, u64>,
    /// Values with `|x| <` [`MIN_INDEXABLE`] (and NaN, which validation never lets in).
    zero: u64,
}

/// A byte string that is not a sketch written by [`Sketch::to_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SketchError {
    /// The bytes end early or carry bytes after the end.
    #[error("sketch is {0} bytes long, which is not a whole sketch; rewrite the stats file")]
    Length(usize),
    /// Another version than this code's (a version fixes the accuracy, [`ALPHA`]).
    #[error(
        "sketch has format version {0}, this code reads version {VERSION}; recompute the \
         stats with this version of iotpipe"
    )]
    Version(u8),
}

fn gamma_ln() -> f64 {
    ((1.0 + ALPHA) / (1.0 - ALPHA)).ln()
}

/// The bucket of a magnitude `m ≥ MIN_INDEXABLE`.
fn index(m: f64) -> i32 {
    // |ln m| ≤ 710 for any finite f64, so the index fits an i32 with room to spare.
    (m.ln() / gamma_ln()).ceil() as i32
}

/// The representative value of bucket `i`: `2γ^i / (γ + 1)`.
fn value(i: i32) -> f64 {
    let gamma = gamma_ln().exp();
    2.0 * (f64::from(i) * gamma_ln()).exp() / (gamma + 1.0)
}

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value.
    pub fn add(&mut self, x: f64) {
        let m = x.abs();
        if m.is_nan() || m < MIN_INDEXABLE {
            self.zero += 1;
        } else if x > 0.0 {
            *self.positive.entry(index(m)).or_default() += 1;
        } else {
            *self.negative.entry(index(m)).or_default() += 1;
        }
    }

    /// Adds every value of `other` (exact: bucket counts add up).
    pub fn merge(&mut self, other: &Sketch) {
        for (&i, &c) in &other.positive {
            *self.positive.entry(i).or_default() += c;
        }
        for (&i, &c) in &other.negative {
            *self.negative.entry(i).or_default() += c;
        }
        self.zero += other.zero;
    }

    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.positive.values().sum::<u64>() + self.negative.values().sum::<u64>() + self.zero
    }

    /// The estimate of the value of rank `r` (0-based, ascending); `None` past the end.
    fn ranked(&self, r: u64) -> Option<f64> {
        let mut seen = 0u64;
        // Ascending: the most negative values (largest |x| buckets) first.
        for (&i, &c) in self.negative.iter().rev() {
            seen += c;
            if r < seen {
                return Some(-value(i));
            }
        }
        seen += self.zero;
        if r < seen {
            return Some(0.0);
        }
        for (&i, &c) in &self.positive {
            seen += c;
            if r < seen {
                return Some(value(i));
            }
        }
        None
    }

    /// The continuous quantile `q` (0 ≤ q ≤ 1, clamped) interpolated like
    /// [`crate::stats::quantile_cont`], within the bound stated in the
    /// [module documentation](self); `None` for an empty sketch.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let last = self.count().checked_sub(1)?;
        let h = last as f64 * q.clamp(0.0, 1.0);
        let lo = h.floor();
        let below = self.ranked(lo as u64)?;
        if lo == h {
            return Some(below);
        }
        let above = self.ranked(h.ceil() as u64)?;
        Some(below + (h - lo) * (above - below))
    }

    /// The binary form (see the [module documentation](self)).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 4 * (self.positive.len() + self.negative.len()));
        out.push(VERSION);
        put_varint(&mut out, self.zero);
        for store in [&self.positive, &self.negative] {
            put_varint(&mut out, store.len() as u64);
            let mut previous = 0i64;
            for (&i, &c) in store {
                let delta = i64::from(i) - previous;
                // Zigzag: small deltas of either sign take one byte.
                put_varint(&mut out, ((delta << 1) ^ (delta >> 63)) as u64);
                put_varint(&mut out, c);
                previous = i64::from(i);
            }
        }
        out
    }

    /// Reads the binary form written by [`Sketch::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SketchError> {
        let mut r = Reader { bytes, at: 0 };
        let short = || SketchError::Length(bytes.len());
        let version = *bytes.first().ok_or_else(short)?;
        if version != VERSION {
            return Err(SketchError::Version(version));
        }
        r.at = 1;
        let zero = r.varint().ok_or_else(short)?;
        let mut stores = [BTreeMap::new(), BTreeMap::new()];
        for store in &mut stores {
            let n = r.varint().ok_or_else(short)?;
            let mut previous = 0i64;
            for _ in 0..n {
                let z = r.varint().ok_or_else(short)?;
                let delta = (z >> 1) as i64 ^ -((z & 1) as i64);
                let i = previous.checked_add(delta).ok_or_else(short)?;
                let c = r.varint().ok_or_else(short)?;
                store.insert(i32::try_from(i).map_err(|_| short())?, c);
                previous = i;
            }
        }
        if r.at != bytes.len() {
            return Err(short());
        }
        let [positive, negative] = stores;
        Ok(Self {
            positive,
            negative,
            zero,
        })
    }
}

/// Appends `v` as a LEB128 varint (7 bits a byte, high bit = more follow).
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over the binary form.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    /// The next varint; `None` when the bytes end first or it overflows a u64.
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::stats::quantile_cont;

    const QS: [f64; 7] = [0.0, 0.01, 0.25, 0.5, 0.95, 0.99, 1.0];

    /// Checks every quantile of `values` against the exact `quantile_cont`, within the
    /// stated bound, for the sketch built directly and for one merged from pieces.
    fn check(mut values: Vec<f64>) {
        let mut whole = Sketch::new();
        let mut merged = Sketch::new();
        for chunk in values.chunks(97) {
            let mut part = Sketch::new();
            for &x in chunk {
                whole.add(x);
                part.add(x);
            }
            let round_trip = Sketch::from_bytes(&part.to_bytes()).unwrap();
            merged.merge(&round_trip);
        }
        assert_eq!(whole, merged, "merging pieces must equal the whole");
        values.sort_by(f64::total_cmp);
        for q in QS {
            let exact = quantile_cont(&values, q).unwrap();
            let h = (values.len() - 1) as f64 * q;
            let lo = values[h.floor() as usize].abs();
            let hi = values[h.ceil() as usize].abs();
            let bound = ALPHA * lo.max(hi) + MIN_INDEXABLE;
            let got = whole.quantile(q).unwrap();
            assert!(
                (got - exact).abs() <= bound * (1.0 + 1e-9),
                "q={q}: sketch {got}, exact {exact}, bound {bound}"
            );
            if values[h.floor() as usize] > 0.0 {
                assert!((got - exact).abs() <= ALPHA * exact * (1.0 + 1e-9));
            }
        }
    }

    #[test]
    fn uniform_values_are_within_the_relative_bound() {
        let mut rng = StdRng::seed_from_u64(7);
        check((0..20_000).map(|_| rng.random_range(15.0..30.0)).collect());
    }

    #[test]
    fn skewed_values_are_within_the_relative_bound() {
        // Log-normal-like (exp of a uniform over 12 orders of magnitude) and exponential.
        let mut rng = StdRng::seed_from_u64(11);
        check(
            (0..20_000)
                .map(|_| rng.random_range(-14.0f64..14.0).exp())
                .collect(),
        );
        check(
            (0..20_000)
                .map(|_| -rng.random_range(f64::EPSILON..1.0).ln() * 3.7)
                .collect(),
        );
    }

    #[test]
    fn negative_zero_and_mixed_values_keep_their_order() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut v: Vec<f64> = (0..5_000).map(|_| rng.random_range(-40.0..40.0)).collect();
        v.extend([0.0; 50]);
        check(v);
        let mut s = Sketch::new();
        for x in [-5.0, 0.0, 5.0] {
            s.add(x);
        }
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert!(s.quantile(0.0).unwrap() < -4.9 && s.quantile(1.0).unwrap() > 4.9);
        assert_eq!(Sketch::new().quantile(0.5), None);
    }

    #[test]
    fn damaged_bytes_are_refused_with_what_to_do() {
        let mut s = Sketch::new();
        s.add(1.0);
        let bytes = s.to_bytes();
        let err = Sketch::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.to_string().contains("rewrite"), "{err}");
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(Sketch::from_bytes(&other), Err(SketchError::Version(9)));
        assert!(bytes.len() <= 8, "{} bytes for one value", bytes.len());
    }
}

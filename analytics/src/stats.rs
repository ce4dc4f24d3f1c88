//! The aggregation: de-duplicated readings grouped into per-(device, metric, window)
//! statistics.
//!
//! Definitions (they match DuckDB, which the end-to-end tests use as the reference):
//! - readings are de-duplicated on (`device_id`, `seq`, event time, `metric`) before
//!   anything is counted, keeping the first one seen (input order): a re-delivery repeats
//!   the whole message, while a device that reboots restarts `seq` with new event times;
//! - `stddev` is the sample standard deviation (`stddev_samp`): `None` for one reading;
//! - `p50`/`p95`/`p99` interpolate linearly between the closest ranks (`quantile_cont`):
//!   with the values sorted ascending, `h = (n − 1)·q`, result
//!   `x[⌊h⌋] + (h − ⌊h⌋)·(x[⌈h⌉] − x[⌊h⌋])`;
//! - `first_event`/`last_event` are the smallest and largest event times;
//! - `m2` (`Σ(x − mean)²`) and `sketch` (a DDSketch of the values) are kept so that
//!   coarser windows merge exactly ([`crate::coarse`]); 1m quantiles stay exact.
//!
//! `sum`, `mean` and `stddev` are computed over the values in ascending order, so a
//! window's statistics are bit-for-bit the same whatever order its files were read in:
//! that is what lets an incremental run tell that a recomputed window did not change.

use std::collections::HashMap;

use arrow_array::RecordBatch;
use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::columns::{self, ColumnError, DictMemo, Strings};
use crate::sketch::{Sketch, SketchError};
use crate::window::Window;

/// The statistics of one metric of one device over one window: a row of the stats files
/// and of query results.
///
/// Times are epoch milliseconds (UTC) in Rust; in JSON they are RFC 3339 UTC strings
/// (`window_start` like `"2026-11-25T16:05:00Z"`, `first_event`/`last_event` with
/// milliseconds like `"2026-11-25T16:05:01.250Z"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    /// The device (AWS IoT thing name).
    pub device_id: String,
    /// The metric name.
    pub metric: String,
    /// Start of the window, epoch milliseconds (inclusive; the window is
    /// `[window_start, window_start + length)`).
    #[serde(with = "rfc3339_auto")]
    pub window_start: i64,
    /// Number of distinct readings (after de-duplication); at least 1.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of the values.
    pub sum: f64,
    /// Arithmetic mean (`sum / count`).
    pub mean: f64,
    /// Sample standard deviation; `None` (JSON `null`) when `count` is 1.
    pub stddev: Option<f64>,
    /// Median (continuous quantile 0.5).
    pub p50: f64,
    /// Continuous quantile 0.95.
    pub p95: f64,
    /// Continuous quantile 0.99.
    pub p99: f64,
    /// Earliest event time in the window, epoch milliseconds.
    #[serde(with = "rfc3339_millis")]
    pub first_event: i64,
    /// Latest event time in the window, epoch milliseconds.
    #[serde(with = "rfc3339_millis")]
    pub last_event: i64,
    /// Sum of squared deviations from the mean, `Σ(x − mean)²` (0 for one reading): what
    /// lets windows merge their `stddev` exactly (Chan et al.'s parallel formula, see
    /// [`crate::coarse`]). Kept in the files, left out of query output (and JSON).
    #[serde(skip)]
    pub m2: f64,
    /// The values' DDSketch ([`crate::sketch::Sketch::to_bytes`]), from which coarser
    /// windows merge their quantiles; empty for a 1m window of at most
    /// [`SKETCH_FREE_COUNT`] readings (read it with [`WindowStats::decode_sketch`]). Kept in the files, left out of query output (and
    /// JSON).
    #[serde(skip)]
    pub sketch: Vec<u8>,
}

/// A stats row's contribution to a merged sketch ([`WindowStats::decode_sketch`]).
#[derive(Debug, Clone, PartialEq)]
pub enum RowSketch {
    /// The exact values of a sketch-free row: the first `.1` of `.0`.
    Exact([f64; 3], usize),
    /// The row's decoded sketch.
    Sketch(Sketch),
}

impl RowSketch {
    /// Adds these values to `into` (merging a sketch adds its counts).
    pub fn merge_into(&self, into: &mut Sketch) {
        match self {
            RowSketch::Exact(values, n) => {
                for &x in values.iter().take(*n) {
                    into.add(x);
                }
            }
            RowSketch::Sketch(s) => into.merge(s),
        }
    }
}

/// Identifies a window's row: (`device_id`, `metric`, `window_start` in epoch ms). Its
/// ordering is the order of stats files and query results.
pub type WindowKey = (String, String, i64);

/// 1m windows of at most this many readings store an empty `sketch`: their values are
/// exactly `min` (one reading), `min, max` (two) or `min, p50, max` (three, whose median
/// is the middle value), so [`WindowStats::decode_sketch`] rebuilds the same sketch from
/// them. Most windows of a fleet that reports every few tens of seconds hold one or two
/// readings, and building, encoding, storing and decoding a sketch for each was a sixth of
/// a rollup's time.
pub const SKETCH_FREE_COUNT: u64 = 3;

impl WindowStats {
    /// What a merge adds to its sketch for this row: the decoded `sketch`, or, for a
    /// window of at most [`SKETCH_FREE_COUNT`] readings that stores none, its exact values.
    pub fn decode_sketch(&self) -> Result<RowSketch, SketchError> {
        if !self.sketch.is_empty() || self.count > SKETCH_FREE_COUNT {
            return Sketch::from_bytes(&self.sketch).map(RowSketch::Sketch);
        }
        Ok(match self.count {
            0 => RowSketch::Exact([0.0; 3], 0),
            1 => RowSketch::Exact([self.min, 0.0, 0.0], 1),
            2 => RowSketch::Exact([self.min, self.max, 0.0], 2),
            _ => RowSketch::Exact([self.min, self.p50, self.max], 3),
        })
    }

    /// The row's identity.
    pub fn key(&self) -> WindowKey {
        (
            self.device_id.clone(),
            self.metric.clone(),
            self.window_start,
        )
    }
}

/// Formats epoch milliseconds as an RFC 3339 UTC string (`Z` suffix); `None` outside
/// chrono's range (±262 000 years).
pub(crate) fn format_time(ms: i64, format: SecondsFormat) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(format, true))
}

fn parse_time<E: serde::de::Error>(s: &str) -> Result<i64, E> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| E::custom(format!("invalid RFC 3339 time {s:?}: {e}")))
}

fn serialize_time<S: serde::Serializer>(
    ms: i64,
    format: SecondsFormat,
    s: S,
) -> Result<S::Ok, S::Error> {
    let text = format_time(ms, format).ok_or_else(|| {
        serde::ser::Error::custom(format!("epoch milliseconds {ms} are out of range"))
    })?;
    s.serialize_str(&text)
}

/// Serde for a window start: whole seconds print without a fraction.
mod rfc3339_auto {
    use chrono::SecondsFormat;

    pub fn serialize<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        super::serialize_time(*ms, SecondsFormat::AutoSi, s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        super::parse_time(&text)
    }
}

/// Serde for event times: always three fraction digits.
mod rfc3339_millis {
    use chrono::SecondsFormat;

    pub fn serialize<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        super::serialize_time(*ms, SecondsFormat::Millis, s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        super::parse_time(&text)
    }
}

/// The continuous quantile `q` (0 ≤ q ≤ 1) of values sorted ascending, interpolating
/// linearly between the closest ranks (DuckDB's `quantile_cont`, R's type 7). `None` for
/// an empty slice.
pub fn quantile_cont(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let h = last as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor();
    // Both ranks are within 0..=last because q is clamped.
    let below = *sorted.get(lo as usize)?;
    let above = *sorted.get(h.ceil() as usize)?;
    if lo == h {
        return Some(below);
    }
    Some(below + (h - lo) * (above - below))
}

/// Device ids and metric names as small integers, so that the hot maps hash 16-byte keys
/// instead of strings.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    pub(crate) fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        // More than 4 billion distinct names in one partition is not a real workload;
        // saturating keeps this total without a panic path.
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// One id per row of `col`: a dictionary column is interned once per distinct value
    /// while its dictionary lasts (`memo`), any other once per run of equal values.
    pub(crate) fn column(&mut self, col: &Strings<'_>, memo: &mut DictMemo<u32>) -> Vec<u32> {
        memo.per_row(col, |name| self.id(name))
    }
}

/// The validated columns of one telemetry batch.
struct Rows<'a> {
    device: Strings<'a>,
    metric: Strings<'a>,
    seq: &'a arrow_array::Int64Array,
    event_time: Vec<i64>,
    value: &'a arrow_array::Float64Array,
}

impl<'a> Rows<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self, ColumnError> {
        Ok(Self {
            device: Strings::new("device_id", columns::required(batch, "device_id")?)?,
            metric: Strings::new("metric", columns::required(batch, "metric")?)?,
            seq: columns::int64(batch, "seq")?,
            event_time: columns::timestamps_ms(batch, "event_time")?,
            value: columns::float64(batch, "value", false)?,
        })
    }
}

/// The telemetry columns the aggregation reads; everything else is left on disk.
pub(crate) const INPUT_COLUMNS: [&str; 5] = ["device_id", "seq", "event_time", "metric", "value"];

/// One reading as the aggregation keeps it: 40 bytes, names interned.
#[derive(Debug, Clone, Copy)]
struct Compact {
    device: u32,
    metric: u32,
    event_time: i64,
    seq: i64,
    /// Input order, so that of identical readings the first one seen wins.
    order: u32,
    value: f64,
}

/// Memory the aggregation holds per reading fed in (the compact row), used to size
/// units of work.
pub const BYTES_PER_READING: usize = std::mem::size_of::<Compact>();

/// Accumulates de-duplicated readings of one unit of work (an hour partition, or one
/// device-hash bucket of it) and computes its windows.
///
/// Readings are kept as fixed-size rows and sorted once at the end by (device, metric,
/// event time, seq, input order): duplicates are then neighbours (the first seen comes
/// first) and each window is a contiguous run. That is less memory than hash maps of
/// windows and seen keys (40 bytes per reading, no per-window allocation) and faster,
/// since the sort is cache-friendly.
#[derive(Debug)]
pub(crate) struct Aggregator {
    window: Window,
    /// Event-time range `[start, end)` the input belongs to (its hour partition); rows
    /// outside it are counted and ignored, because their window belongs to another
    /// partition's stats file.
    bounds: Option<(i64, i64)>,
    names: Interner,
    /// Interned ids of the current `device_id` and `metric` dictionaries.
    device_memo: DictMemo<u32>,
    metric_memo: DictMemo<u32>,
    readings: Vec<Compact>,
    /// Whether `readings` were sorted (input has ended), and their names' ids by rank.
    sorted: bool,
    by_name: Vec<u32>,
    /// The next reading [`Aggregator::next_windows`] looks at.
    cursor: usize,
    /// Rows fed in.
    pub(crate) rows: u64,
    /// Rows dropped as repeats of an earlier (device, seq, event time, metric); known
    /// after [`Aggregator::finish`] (or the last [`Aggregator::next_windows`]).
    pub(crate) duplicates: u64,
    /// Rows ignored because their event time is outside `bounds`.
    pub(crate) outside: u64,
}

impl Aggregator {
    /// An empty aggregation into windows of `window`.
    pub(crate) fn new(window: Window) -> Self {
        Self {
            window,
            bounds: None,
            names: Interner::default(),
            device_memo: DictMemo::default(),
            metric_memo: DictMemo::default(),
            readings: Vec::new(),
            sorted: false,
            by_name: Vec::new(),
            cursor: 0,
            rows: 0,
            duplicates: 0,
            outside: 0,
        }
    }

    /// Restricts the input to event times in `[start_ms, end_ms)`.
    pub(crate) fn with_bounds(mut self, start_ms: i64, end_ms: i64) -> Self {
        self.bounds = Some((start_ms, end_ms));
        self
    }

    /// Adds the batches of one file, in order. All batches are validated first, so a bad
    /// file adds nothing.
    pub(crate) fn add_file(&mut self, batches: &[RecordBatch]) -> Result<(), ColumnError> {
        let views = batches
            .iter()
            .map(Rows::new)
            .collect::<Result<Vec<_>, _>>()?;
        for rows in &views {
            self.add_rows(rows);
        }
        Ok(())
    }

    fn add_rows(&mut self, rows: &Rows<'_>) {
        debug_assert!(!self.sorted, "input after the first window was given");
        let devices = self.names.column(&rows.device, &mut self.device_memo);
        let metrics = self.names.column(&rows.metric, &mut self.metric_memo);
        let readings = devices
            .iter()
            .zip(&metrics)
            .zip(rows.seq.values())
            .zip(&rows.event_time)
            .zip(rows.value.values());
        self.readings.reserve(devices.len());
        for ((((&device, &metric), &seq), &event_time), &value) in readings {
            self.rows += 1;
            if let Some((start, end)) = self.bounds
                && (event_time < start || event_time >= end)
            {
                self.outside += 1;
                continue;
            }
            // More than 4 billion rows in one unit is far beyond any memory bound;
            // saturating keeps this total (ties then keep an arbitrary one of equals).
            let order = u32::try_from(self.readings.len()).unwrap_or(u32::MAX);
            self.readings.push(Compact {
                device,
                metric,
                event_time,
                seq,
                order,
                value,
            });
        }
    }

    /// The statistics of every window, sorted by (`device_id`, `metric`,
    /// `window_start`); counts the duplicates dropped.
    pub(crate) fn finish(&mut self) -> Vec<WindowStats> {
        self.next_windows(usize::MAX)
    }

    /// The next (at most) `max` windows in (`device_id`, `metric`, `window_start`) order,
    /// empty once every window was given: the caller holds a chunk of windows at a time,
    /// never every window of the input (a window's row is ~10× a reading's). The first call
    /// ends the input; [`Aggregator::duplicates`] is known once the last window is given.
    pub(crate) fn next_windows(&mut self, max: usize) -> Vec<WindowStats> {
        self.sort();
        let names = &self.names;
        let by_name = &self.by_name;
        // Names by rank, for the output.
        let name_of = |r: u32| by_name.get(r as usize).map_or("", |&id| names.name(id));
        let readings = &self.readings;
        let mut out = Vec::new();
        let mut values: Vec<f64> = Vec::new();
        let mut duplicates = 0;
        let mut i = self.cursor;
        while out.len() < max
            && let Some(first) = readings.get(i)
        {
            let start = self.window.start_of(first.event_time);
            let end = start.saturating_add(self.window.millis());
            values.clear();
            let mut last_event = first.event_time;
            let mut prev: Option<(i64, i64)> = None;
            while let Some(r) = readings.get(i) {
                if r.device != first.device || r.metric != first.metric || r.event_time >= end {
                    break;
                }
                i += 1;
                // Sorted by (event time, seq, order): a repeat directly follows the first
                // reading with the same identity.
                if prev == Some((r.event_time, r.seq)) {
                    duplicates += 1;
                    continue;
                }
                prev = Some((r.event_time, r.seq));
                values.push(r.value);
                last_event = r.event_time;
            }
            if let Some(stats) = window_stats(
                name_of(first.device),
                name_of(first.metric),
                start,
                &mut values,
                first.event_time,
                last_event,
            ) {
                out.push(stats);
            }
        }
        self.cursor = i;
        self.duplicates += duplicates;
        if self.cursor >= self.readings.len() {
            // Every window given: the readings' memory goes back now, not when the
            // aggregator is dropped.
            self.readings = Vec::new();
            self.cursor = 0;
        }
        out
    }

    /// Sorts the readings once, before the first window is given.
    fn sort(&mut self) {
        if self.sorted {
            return;
        }
        self.sorted = true;
        let names = &self.names;
        // Sort on the names' ranks rather than the names: integer comparisons instead of
        // string comparisons, and the output comes out in file order.
        let mut by_name: Vec<u32> = (0..names.names.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| names.name(a).cmp(names.name(b)));
        let mut rank = vec![0u32; by_name.len()];
        for (r, &id) in by_name.iter().enumerate() {
            if let Some(slot) = rank.get_mut(id as usize) {
                *slot = r as u32;
            }
        }
        let rank_of = |id: u32| rank.get(id as usize).copied().unwrap_or(u32::MAX);
        for r in &mut self.readings {
            r.device = rank_of(r.device);
            r.metric = rank_of(r.metric);
        }
        sort_readings(&mut self.readings, by_name.len());
        self.by_name = by_name;
    }
}

/// Sorts readings whose `device` and `metric` are name ranks below `names` by (`device`,
/// `metric`, `event_time`, `seq`, `order`).
///
/// A comparison sort of a unit's readings was the rollup's largest cost (a fifth of a
/// worker's time, on 5-field keys). The readings are a few (device, metric) groups of a
/// few dozen readings each, so they are first copied to their group's place by counting
/// (in input order, so a group comes out mostly in time order already), then each group is
/// sorted on its own, in cache: a sixth less of a standalone rollup's CPU, for a second
/// copy of the readings while they are placed (40 bytes per reading of one unit). When the
/// groups would outnumber the readings by far (names that are nearly all distinct),
/// counting costs more than it saves, and one comparison sort is used.
fn sort_readings(readings: &mut Vec<Compact>, names: usize) {
    let key = |r: &Compact| (r.device, r.metric, r.event_time, r.seq, r.order);
    // The metrics that occur, numbered densely in rank order.
    let mut metric_slot = vec![u32::MAX; names];
    for r in readings.iter() {
        if let Some(slot) = metric_slot.get_mut(r.metric as usize) {
            *slot = 0;
        }
    }
    let mut metrics = 0u32;
    for slot in metric_slot.iter_mut().filter(|s| **s == 0) {
        *slot = metrics;
        metrics += 1;
    }
    let groups = names.saturating_mul(metrics as usize);
    if readings.len() < 64 || groups > readings.len().saturating_mul(4).max(1 << 16) {
        readings.sort_unstable_by_key(key);
        return;
    }
    let group_of = |r: &Compact| {
        let metric = metric_slot.get(r.metric as usize).copied().unwrap_or(0) as usize;
        (r.device as usize * metrics as usize + metric).min(groups - 1)
    };
    // Counting: `next[g]` is where group g's next reading goes, and ends up where its
    // place ends. The readings are copied to their places in input order, so a group
    // comes out in its files' order, mostly in time order already.
    let mut next = vec![0usize; groups];
    for r in readings.iter() {
        next[group_of(r)] += 1;
    }
    let mut at = 0;
    for n in next.iter_mut() {
        let len = *n;
        *n = at;
        at += len;
    }
    // Every place is written below; the copy only sizes the second buffer.
    let mut placed = readings.clone();
    for r in readings.iter() {
        let g = group_of(r);
        placed[next[g]] = *r;
        next[g] += 1;
    }
    *readings = placed;
    let end = next;
    let mut start = 0;
    for &e in &end {
        if let Some(group) = readings.get_mut(start..e)
            && group.len() > 1
        {
            group.sort_unstable_by_key(key);
        }
        start = e;
    }
}

/// The statistics of one window's values (any order; sorted here); `None` when empty.
fn window_stats(
    device_id: &str,
    metric: &str,
    window_start: i64,
    values: &mut [f64],
    first_event: i64,
    last_event: i64,
) -> Option<WindowStats> {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    let min = *values.first()?;
    let max = *values.last()?;
    let sum: f64 = values.iter().sum();
    let mean = sum / n as f64;
    let m2: f64 = values.iter().map(|x| (x - mean) * (x - mean)).sum();
    let stddev = (n > 1).then(|| (m2 / (n - 1) as f64).sqrt());
    let sketch = if n as u64 <= SKETCH_FREE_COUNT {
        // Rebuilt from min/p50/max when merged (`WindowStats::decode_sketch`).
        Vec::new()
    } else {
        let mut sketch = Sketch::new();
        for &x in values.iter() {
            sketch.add(x);
        }
        sketch.to_bytes()
    };
    Some(WindowStats {
        device_id: device_id.to_string(),
        metric: metric.to_string(),
        window_start,
        count: n as u64,
        min,
        max,
        sum,
        mean,
        stddev,
        p50: quantile_cont(values, 0.5)?,
        p95: quantile_cont(values, 0.95)?,
        p99: quantile_cont(values, 0.99)?,
        first_event,
        last_event,
        m2,
        sketch,
    })
}

/// The window statistics of telemetry record batches (schema
/// [`telemetry::schema::telemetry_schema`], or the same columns in another string or
/// timestamp encoding), de-duplicated in input order, sorted by (`device_id`, `metric`,
/// `window_start`).
///
/// This is the whole computation without the storage around it; the rollup applies it
/// per unit of work (an hour partition's device-hash bucket).
pub fn aggregate(batches: &[RecordBatch], window: Window) -> Result<Vec<WindowStats>, ColumnError> {
    let mut agg = Aggregator::new(window);
    agg.add_file(batches)?;
    Ok(agg.finish())
}

#[cfg(test)]
mod tests {
    use telemetry::Reading;
    use telemetry::schema::readings_to_batch;

    use super::*;

    fn reading(device: &str, seq: i64, t: i64, metric: &str, value: f64) -> Reading {
        Reading {
            device_id: device.into(),
            seq,
            event_time: t,
            received_at: t + 10,
            metric: metric.into(),
            value,
            fw: None,
        }
    }

    #[test]
    fn quantiles_interpolate_between_the_closest_ranks() {
        let x = [1.0, 2.0, 4.0, 10.0];
        // h = 3q: 1.5 → 2 + 0.5·2; 2.85 → 4 + 0.85·6; 2.97 → 4 + 0.97·6.
        assert_eq!(quantile_cont(&x, 0.5), Some(3.0));
        assert!((quantile_cont(&x, 0.95).unwrap() - 9.1).abs() < 1e-12);
        assert!((quantile_cont(&x, 0.99).unwrap() - 9.82).abs() < 1e-12);
        assert_eq!(quantile_cont(&x, 0.0), Some(1.0));
        assert_eq!(quantile_cont(&x, 1.0), Some(10.0));
        assert_eq!(quantile_cont(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile_cont(&[], 0.5), None);
    }

    #[test]
    fn stddev_is_the_sample_deviation_and_absent_for_a_single_reading() {
        let batch = readings_to_batch(&[
            reading("d", 1, 0, "t", 2.0),
            reading("d", 2, 1, "t", 4.0),
            reading("d", 3, 2, "t", 4.0),
            reading("d", 4, 3, "t", 4.0),
            reading("d", 5, 4, "t", 5.0),
            reading("d", 6, 5, "t", 5.0),
            reading("d", 7, 6, "t", 7.0),
            reading("d", 8, 7, "t", 9.0),
            reading("d", 9, 60_000, "t", 1.0),
        ])
        .unwrap();
        let stats = aggregate(&[batch], Window::M1).unwrap();
        assert_eq!(stats.len(), 2);
        // Mean 5, squared deviations sum to 32, 32 / 7.
        assert!((stats[0].stddev.unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(stats[1].count, 1);
        assert_eq!(stats[1].stddev, None);
    }

    #[test]
    fn windows_given_in_chunks_are_the_windows_given_at_once() {
        // 7 devices × 2 metrics × 3 minutes, each reading twice (a redelivery), given in
        // device order reversed so that the sort has work to do.
        let mut readings = Vec::new();
        for d in (0..7).rev() {
            for seq in 0..9 {
                for metric in ["t", "h"] {
                    let r = reading(&format!("d{d}"), seq, seq * 20_000, metric, seq as f64);
                    readings.push(r.clone());
                    readings.push(r);
                }
            }
        }
        let batch = readings_to_batch(&readings).unwrap();
        let mut whole = Aggregator::new(Window::M1);
        whole.add_file(std::slice::from_ref(&batch)).unwrap();
        let expected = whole.finish();
        assert_eq!(expected.len(), 7 * 2 * 3);
        for chunk in [1, 4, 5, 42, 1000] {
            let mut agg = Aggregator::new(Window::M1);
            agg.add_file(std::slice::from_ref(&batch)).unwrap();
            let mut got = Vec::new();
            loop {
                let windows = agg.next_windows(chunk);
                assert!(windows.len() <= chunk);
                if windows.is_empty() {
                    break;
                }
                got.extend(windows);
            }
            assert_eq!(got, expected, "chunks of {chunk}");
            assert_eq!(agg.duplicates, whole.duplicates, "chunks of {chunk}");
            assert_eq!(agg.duplicates, 7 * 2 * 9);
            assert!(agg.next_windows(chunk).is_empty());
        }
    }

    #[test]
    fn the_first_reading_seen_wins_over_a_later_repeat() {
        let batch = readings_to_batch(&[
            reading("d", 1, 0, "t", 1.0),
            reading("d", 1, 0, "t", 100.0),
            reading("d", 1, 0, "h", 3.0),
        ])
        .unwrap();
        let stats = aggregate(&[batch], Window::M1).unwrap();
        assert_eq!(stats.len(), 2);
        let t = stats.iter().find(|s| s.metric == "t").unwrap();
        assert_eq!((t.count, t.max), (1, 1.0));
    }

    #[test]
    fn rows_outside_the_partition_are_counted_not_aggregated() {
        let batch = readings_to_batch(&[
            reading("d", 1, 10, "t", 1.0),
            reading("d", 2, 3_600_000, "t", 2.0),
        ])
        .unwrap();
        let mut agg = Aggregator::new(Window::M1).with_bounds(0, 3_600_000);
        agg.add_file(&[batch]).unwrap();
        assert_eq!((agg.rows, agg.outside), (2, 1));
        let stats = agg.finish();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].window_start, 0);
    }

    #[test]
    fn small_windows_store_no_sketch_and_merge_as_if_they_had_one() {
        for n in 1..=5usize {
            let values: Vec<f64> = (0..n).map(|i| 20.0 + (i * i) as f64 * 1.5).collect();
            let rows: Vec<Reading> = values
                .iter()
                .enumerate()
                .map(|(i, &v)| reading("d", i as i64, 1_000 * i as i64, "t", v))
                .collect();
            let stats = aggregate(&[readings_to_batch(&rows).unwrap()], Window::M1).unwrap();
            let row = &stats[0];
            assert_eq!(
                row.sketch.is_empty(),
                n as u64 <= SKETCH_FREE_COUNT,
                "n = {n}"
            );
            let mut expected = Sketch::new();
            values.iter().for_each(|&x| expected.add(x));
            let mut merged = Sketch::new();
            row.decode_sketch().unwrap().merge_into(&mut merged);
            assert_eq!(merged, expected, "n = {n}");
        }
    }

    #[test]
    fn a_device_that_restarted_its_seq_is_counted_twice_and_a_redelivery_once() {
        let batch = readings_to_batch(&[
            reading("d", 1, 1_000, "t", 1.0),
            // A re-delivery of the same message.
            reading("d", 1, 1_000, "t", 1.0),
            // The device rebooted and numbers from 1 again, with a later event time.
            reading("d", 1, 2_000, "t", 3.0),
        ])
        .unwrap();
        let mut agg = Aggregator::new(Window::M1);
        agg.add_file(&[batch]).unwrap();
        let stats = agg.finish();
        assert_eq!(stats.len(), 1);
        assert_eq!((stats[0].count, stats[0].sum), (2, 4.0));
        assert_eq!((stats[0].first_event, stats[0].last_event), (1_000, 2_000));
        assert_eq!(agg.duplicates, 1);
    }

    #[test]
    fn readings_grouped_by_counting_sort_as_one_comparison_sort_does() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(11);
        // (readings, names, metrics): counted groups, few readings (one comparison sort),
        // and groups far outnumbering readings (the fallback).
        for (n, names, metrics) in [(5_000, 300, 4), (40, 10, 2), (2_000, 3_000, 2_000)] {
            let mut readings: Vec<Compact> = (0..n)
                .map(|i| Compact {
                    device: rng.random_range(0..names),
                    metric: rng.random_range(0..metrics),
                    // Few distinct times and seqs, so that ties reach `order`.
                    event_time: rng.random_range(0..20),
                    seq: rng.random_range(0..3),
                    order: i,
                    value: f64::from(i),
                })
                .collect();
            // Time order, as files mostly are, and then some out of order.
            readings.sort_by_key(|r| r.event_time);
            readings.swap(0, n as usize - 1);
            for (i, r) in readings.iter_mut().enumerate() {
                r.order = i as u32;
            }
            let mut expected = readings.clone();
            expected.sort_by_key(|r| (r.device, r.metric, r.event_time, r.seq, r.order));
            sort_readings(&mut readings, names as usize);
            let order = |v: &[Compact]| v.iter().map(|r| r.order).collect::<Vec<_>>();
            assert_eq!(
                order(&readings),
                order(&expected),
                "{n} readings, {names} names"
            );
        }
    }
}

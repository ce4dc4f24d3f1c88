//! The query library: window statistics filtered by device, metric and time, read from
//! the stats files of any object store, and rendered as CSV or a terminal table (with
//! [`crate::render`], over the columns of [`output_columns`]).
//!
//! Stats files are found recursively under `stats/window={label}/` (per device) or
//! `stats/fleet/window={label}/` (fleet-wide); folders named
//! `dt=YYYY-MM-DD` (and `hour=HH` within them) whose time span cannot intersect the
//! requested range are skipped by their path, before anything is read.

use std::sync::Arc;

use chrono::SecondsFormat;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use telemetry::Partition;
use telemetry::layout::fleet_prefix;

use crate::config::{DEFAULT_STATS_PREFIX, window_prefix};
use crate::io::{self, ReadError};
use crate::render::{Column, Table};
use crate::schema::{StatsType, StatsValue, output_columns, stats_from_batch};
use crate::stats::{WindowStats, format_time};
use crate::window::Window;

/// Stats files read concurrently by a query.
const READ_CONCURRENCY: usize = 8;

/// What to return. Every filter is optional; the default selects every one-minute window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this device (exact match).
    pub device: Option<String>,
    /// Only this metric (exact match).
    pub metric: Option<String>,
    /// The window length (`1m`, `1h`, `1d`). Default `1m`.
    pub window: Window,
    /// Per device, or fleet-wide (one row per metric and window, device `*`). Default
    /// per device.
    pub group: Group,
    /// Windows starting at or after this instant, epoch milliseconds (inclusive).
    pub from_ms: Option<i64>,
    /// Windows starting before this instant, epoch milliseconds (exclusive).
    pub to_ms: Option<i64>,
}

/// How rows are grouped: per device, or all devices of a metric together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Group {
    /// One row per (device, metric, window). The default.
    #[default]
    Device,
    /// One row per (metric, window) over every device, `device_id` =
    /// [`telemetry::layout::FLEET_DEVICE_ID`]; read from `stats/fleet/`.
    Fleet,
}

impl Group {
    /// The label used on the command line: `device` or `fleet`.
    pub const fn label(self) -> &'static str {
        match self {
            Group::Device => "device",
            Group::Fleet => "fleet",
        }
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A grouping that is not `device` or `fleet`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown grouping {0:?}: expected device or fleet")]
pub struct ParseGroupError(pub String);

impl std::str::FromStr for Group {
    type Err = ParseGroupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Group::Device, Group::Fleet]
            .into_iter()
            .find(|g| g.label() == s.trim())
            .ok_or_else(|| ParseGroupError(s.to_string()))
    }
}

/// A query that could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// `from` is not before `to`, so no window can match.
    #[error("empty time range: from ({from_ms} ms) must be before to ({to_ms} ms)")]
    EmptyRange {
        /// Start, epoch milliseconds.
        from_ms: i64,
        /// End, epoch milliseconds.
        to_ms: i64,
    },
    /// Listing the stats files failed.
    #[error("listing {prefix}/: {source}")]
    List {
        /// The listed prefix.
        prefix: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A stats file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// Object key.
        path: String,
        /// The cause.
        #[source]
        source: ReadError,
    },
}

/// The window statistics matching `q`, sorted by (`device_id`, `metric`, `window_start`),
/// from stats files under the default prefix `stats/`.
pub async fn query(store: Arc<dyn ObjectStore>, q: &Query) -> Result<Vec<WindowStats>, QueryError> {
    query_prefix(store, DEFAULT_STATS_PREFIX, q).await
}

/// [`query`] over stats files under `stats_prefix` (the rollup's
/// [`RollupConfig::stats_prefix`](crate::RollupConfig::stats_prefix)).
pub async fn query_prefix(
    store: Arc<dyn ObjectStore>,
    stats_prefix: &str,
    q: &Query,
) -> Result<Vec<WindowStats>, QueryError> {
    let from = q.from_ms.unwrap_or(i64::MIN);
    let to = q.to_ms.unwrap_or(i64::MAX);
    if let (Some(from_ms), Some(to_ms)) = (q.from_ms, q.to_ms)
        && from_ms >= to_ms
    {
        return Err(QueryError::EmptyRange { from_ms, to_ms });
    }

    let prefix = match q.group {
        Group::Device => window_prefix(stats_prefix, q.window),
        Group::Fleet => window_prefix(&fleet_prefix(stats_prefix), q.window),
    };
    let objects = io::list_objects(&store, &prefix)
        .await
        .map_err(|source| QueryError::List {
            prefix: prefix.clone(),
            source,
        })?;
    let wanted = objects.into_iter().filter(|meta| {
        let path = meta.location.as_ref();
        let hidden = path
            .strip_prefix(prefix.as_str())
            .unwrap_or(path)
            .split('/')
            .any(|seg| seg.starts_with('.') || seg.starts_with('_'));
        !hidden && span_of(path).is_none_or(|(start, end)| start < to && end > from)
    });

    let batches: Vec<Vec<WindowStats>> = futures::stream::iter(wanted)
        .map(|meta| {
            let store = store.clone();
            async move {
                let read = |e| QueryError::Read {
                    path: meta.location.to_string(),
                    source: e,
                };
                let batches = io::read_parquet(&store, &meta, None).await.map_err(read)?;
                let mut rows = Vec::new();
                for batch in &batches {
                    rows.extend(stats_from_batch(batch).map_err(|e| read(e.into()))?);
                }
                Ok::<_, QueryError>(rows)
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;

    let mut rows: Vec<WindowStats> = batches
        .into_iter()
        .flatten()
        .filter(|s| q.device.as_ref().is_none_or(|d| *d == s.device_id))
        .filter(|s| q.metric.as_ref().is_none_or(|m| *m == s.metric))
        .filter(|s| s.window_start >= from && s.window_start < to)
        .collect();
    rows.sort_by(|a, b| {
        (&a.device_id, &a.metric, a.window_start).cmp(&(&b.device_id, &b.metric, b.window_start))
    });
    Ok(rows)
}

/// The time span `[start, end)` (epoch ms) a stats file can cover, from its `dt=` and
/// `hour=` folders; `None` when the path does not say, and the file must be read.
fn span_of(path: &str) -> Option<(i64, i64)> {
    if let Some(p) = Partition::find_in(path) {
        return p.start_millis().map(|s| (s, s.saturating_add(3_600_000)));
    }
    Partition::find_day_in(path)?
        .start_millis()
        .map(|s| (s, s.saturating_add(86_400_000)))
}

fn time(ms: i64, format: SecondsFormat) -> String {
    format_time(ms, format).unwrap_or_else(|| ms.to_string())
}

/// A float that any CSV reader parses back to the same value: Rust's shortest round-trip
/// form, in scientific notation when it would otherwise run to many digits.
fn csv_float(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-6..1e15).contains(&a) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// Renders rows as CSV (RFC 4180, `\n` line ends) with a header line: the columns of
/// [`output_columns`]. Times are RFC 3339 UTC (event times with milliseconds); `stddev` is
/// empty when null; floats keep full precision.
pub fn to_csv(rows: &[WindowStats]) -> String {
    let mut t = Table::new(output_columns().map(|c| Column::left(c.name)).collect());
    for r in rows {
        t.row(output_columns().map(|c| match ((c.get)(r), c.ty) {
            (StatsValue::Text(s), _) => s.to_string(),
            (StatsValue::Count(n), _) => n.to_string(),
            (StatsValue::Float(x), _) => x.map(csv_float).unwrap_or_default(),
            (StatsValue::Time(ms), StatsType::EventTime) => time(ms, SecondsFormat::Millis),
            (StatsValue::Time(ms), _) => time(ms, SecondsFormat::AutoSi),
            (StatsValue::Bytes(b), _) => format!("{} bytes", b.len()),
        }));
    }
    t.to_csv()
}

/// A float for a terminal: three decimals, scientific notation for very large or small
/// magnitudes so that columns stay narrow.
fn table_float(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e9).contains(&a) {
        format!("{x:.3e}")
    } else {
        format!("{x:.3}")
    }
}

/// The time of day of an event (`HH:MM:SS.mmm`, UTC): the date is the window's, shown in
/// `window_start`, because windows never cross a UTC day.
fn time_of_day(ms: i64) -> String {
    let full = time(ms, SecondsFormat::Millis);
    match full.split_once('T') {
        Some((_, t)) => t.trim_end_matches('Z').to_string(),
        None => full,
    }
}

/// Renders rows as an aligned plain-text table for a terminal: a header (the columns of
/// [`output_columns`]), a rule, one line per row. Text and window starts are left-aligned,
/// numbers right-aligned with three decimals; a null `stddev` prints as `-`;
/// `first_event`/`last_event` show the UTC time of day. An empty slice gives the header
/// and the rule only.
pub fn to_table(rows: &[WindowStats]) -> String {
    let mut t = Table::new(
        output_columns()
            .map(|c| match c.ty {
                StatsType::Text | StatsType::WindowTime => Column::left(c.name),
                StatsType::Count | StatsType::Float | StatsType::EventTime | StatsType::Bytes => {
                    Column::right(c.name)
                }
            })
            .collect(),
    );
    for r in rows {
        t.row(output_columns().map(|c| match ((c.get)(r), c.ty) {
            (StatsValue::Text(s), _) => s.to_string(),
            (StatsValue::Count(n), _) => n.to_string(),
            (StatsValue::Float(x), _) => x.map(table_float).unwrap_or_else(|| "-".into()),
            (StatsValue::Time(ms), StatsType::EventTime) => time_of_day(ms),
            (StatsValue::Time(ms), _) => time(ms, SecondsFormat::AutoSi),
            (StatsValue::Bytes(b), _) => format!("{} bytes", b.len()),
        }));
    }
    t.to_text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_paths_tell_their_time_span() {
        assert_eq!(
            span_of("stats/window=1m/dt=1970-01-01/hour=01/stats.parquet"),
            Some((3_600_000, 7_200_000))
        );
        assert_eq!(
            span_of("stats/window=1m/dt=1970-01-02/stats.parquet"),
            Some((86_400_000, 172_800_000))
        );
        assert_eq!(span_of("stats/window=1m/stats.parquet"), None);
    }

    #[test]
    fn csv_floats_round_trip() {
        for x in [21.53, 0.1 + 0.2, 1e300, -2.5e-9, 0.0] {
            assert_eq!(csv_float(x).parse::<f64>().unwrap(), x);
        }
    }
}

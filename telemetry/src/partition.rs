//! Hive-style partitions by event time: `dt=YYYY-MM-DD/hour=HH`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// The partition key (and folder name) of the event date, `YYYY-MM-DD` (UTC).
pub const DT_KEY: &str = "dt";
/// The partition key (and folder name) of the event hour, `HH` (00–23, UTC).
pub const HOUR_KEY: &str = "hour";

/// Milliseconds in an hour: a partition's span.
const MILLIS_PER_HOUR: i64 = 3_600_000;

/// The partition a reading belongs to, by its event time (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Partition {
    /// `YYYY-MM-DD`.
    pub dt: String,
    /// `HH` (00–23).
    pub hour: String,
}

impl Partition {
    /// The hour an event time falls in, as whole hours since the epoch: two times have the
    /// same partition exactly when they have the same hour, so comparing these avoids
    /// building partitions (two strings each) only to compare them.
    pub const fn hour_of_millis(ms: i64) -> i64 {
        ms.div_euclid(MILLIS_PER_HOUR)
    }

    /// The partition of an hour as [`Partition::hour_of_millis`] numbers it: that of every
    /// event time in the hour.
    pub fn of_hour(hour: i64) -> Self {
        Self::of_millis(hour.saturating_mul(MILLIS_PER_HOUR))
    }

    /// The partition of an event time in epoch milliseconds. Times outside chrono's range
    /// (impossible after validation) fall into the epoch partition.
    pub fn of_millis(ms: i64) -> Self {
        // Messages come in runs of the same hour: the last hour's partition is kept per
        // thread, so most calls copy two short strings instead of converting and formatting
        // a date (2 % of a replay's CPU before).
        thread_local! {
            static LAST: std::cell::RefCell<Option<(i64, Partition)>> =
                const { std::cell::RefCell::new(None) };
        }
        let hour_start = Self::hour_of_millis(ms);
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some((h, p)) = last.as_ref()
                && *h == hour_start
            {
                return p.clone();
            }
            let p = Self::compute(ms);
            *last = Some((hour_start, p.clone()));
            p
        })
    }

    fn compute(ms: i64) -> Self {
        let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        Self {
            dt: format!("{:04}-{:02}-{:02}", t.year(), t.month(), t.day()),
            hour: format!("{:02}", t.hour()),
        }
    }

    /// The relative path `dt=YYYY-MM-DD/hour=HH`.
    pub fn path(&self) -> String {
        format!("{DT_KEY}={}/{HOUR_KEY}={}", self.dt, self.hour)
    }

    /// The partition of a `dt` (`YYYY-MM-DD`) and an `hour` (`HH`) value, such as a
    /// Firehose record's partition keys; `None` unless they name a real date and hour in
    /// the canonical spelling (so the partition names the same folder when turned back
    /// into a path, and nothing that could escape it).
    pub fn new(dt: &str, hour: &str) -> Option<Self> {
        let partition = Self {
            dt: dt.to_string(),
            hour: hour.to_string(),
        };
        let canonical = partition.start_millis().map(Self::of_millis)?;
        (canonical == partition).then_some(partition)
    }

    /// Parses a partition path, `dt=YYYY-MM-DD/hour=HH`, exactly; `None` for anything
    /// else (see [`Partition::new`]).
    pub fn parse(path: &str) -> Option<Self> {
        match Self::parse_prefix(path)? {
            (partition, "") => Some(partition),
            _ => None,
        }
    }

    /// Parses a path that starts with a partition, `dt=YYYY-MM-DD/hour=HH[/rest]`, into the
    /// partition and the rest (empty when there is none).
    pub fn parse_prefix(path: &str) -> Option<(Self, &str)> {
        let (dt, rest) = path.split_once('/')?;
        let (hour, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let partition = Self::new(
            dt.strip_prefix(DT_KEY)?.strip_prefix('=')?,
            hour.strip_prefix(HOUR_KEY)?.strip_prefix('=')?,
        )?;
        Some((partition, rest))
    }

    /// Finds the partition in a longer key (`…/dt=…/hour=…/…`): the first `dt=` folder,
    /// which must be followed by its `hour=` folder.
    pub fn find_in(path: &str) -> Option<Self> {
        let at = path
            .split('/')
            .position(|seg| seg.strip_prefix(DT_KEY).is_some_and(|v| v.starts_with('=')))?;
        let rest: Vec<&str> = path.split('/').skip(at).take(2).collect();
        Self::parse(&rest.join("/"))
    }

    /// The first hour (`00`) of the day named by the first `dt=` folder of a key, for keys
    /// partitioned by day only (`…/dt=YYYY-MM-DD/…`).
    pub fn find_day_in(path: &str) -> Option<Self> {
        let dt = path
            .split('/')
            .find_map(|seg| seg.strip_prefix(DT_KEY)?.strip_prefix('='))?;
        Self::new(dt, "00")
    }

    /// Start of the partition's hour, epoch milliseconds.
    pub fn start_millis(&self) -> Option<i64> {
        let s = format!("{}T{}:00:00Z", self.dt, self.hour);
        DateTime::parse_from_rfc3339(&s)
            .ok()
            .map(|t| t.timestamp_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_of_the_last_hour_answers_like_the_conversion() {
        // Back and forth across hour, day and year boundaries, and out of chrono's range.
        let times = [
            1_700_000_000_000,
            1_700_000_000_001,
            1_700_002_400_000,
            1_700_000_000_000,
            1_703_980_799_999,
            1_703_980_800_000,
            -1,
            0,
            i64::MAX,
        ];
        for ms in times {
            assert_eq!(Partition::of_millis(ms), Partition::compute(ms), "{ms}");
        }
    }

    #[test]
    fn the_partition_of_an_event_times_hour_is_the_event_times() {
        let times = [
            1_700_000_000_000,
            1_703_980_799_999,
            1_703_980_800_000,
            -1,
            -3_600_000,
            -3_600_001,
            0,
            i64::MIN,
            i64::MAX,
        ];
        for ms in times {
            let hour = Partition::hour_of_millis(ms);
            assert_eq!(Partition::of_hour(hour), Partition::compute(ms), "{ms}");
        }
    }

    #[test]
    fn event_time_maps_to_its_utc_date_and_hour() {
        // 2025-11-25T13:45:00.123Z
        let p = Partition::of_millis(1_764_078_300_123);
        assert_eq!(p.path(), "dt=2025-11-25/hour=13");
        assert_eq!(
            Partition::find_in("telemetry/dt=2025-11-25/hour=13/x.parquet"),
            Some(p.clone())
        );
        assert_eq!(Partition::parse("dt=2025-11-25/hour=13"), Some(p.clone()));
        assert_eq!(p.start_millis(), Some(1_764_075_600_000));
    }

    #[test]
    fn only_a_real_date_and_hour_in_the_canonical_spelling_is_a_partition() {
        for bad in [
            "dt=2025-11-25/hour=24",
            "dt=2025-13-01/hour=00",
            "dt=2025-11-25/hour=1",
            "dt=../../etc/hour=00",
            "dt=2025-11-25",
            "hour=13/dt=2025-11-25",
            "dt=2025-11-25/hour=13/x",
            "x/dt=2025-11-25/hour=13",
        ] {
            assert_eq!(Partition::parse(bad), None, "{bad}");
        }
        assert_eq!(Partition::new("2025-11-25", "7"), None);
        assert_eq!(Partition::find_in("a/dt=2025-11-25/x/hour=13"), None);
    }

    #[test]
    fn a_prefixed_key_splits_into_its_partition_and_the_rest() {
        let (p, rest) = Partition::parse_prefix("dt=2025-11-25/hour=13/a/b.parquet").unwrap();
        assert_eq!(
            (p.path().as_str(), rest),
            ("dt=2025-11-25/hour=13", "a/b.parquet")
        );
        assert_eq!(
            Partition::find_day_in("stats/window=1d/dt=2025-11-25/stats.parquet")
                .and_then(|p| p.start_millis()),
            Some(1_764_028_800_000)
        );
    }
}

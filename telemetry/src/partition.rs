//! Hive-style partitions by event time: `dt=YYYY-MM-DD/hour=HH`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// The partition a reading belongs to, by its event time (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Partition {
    /// `YYYY-MM-DD`.
    pub dt: String,
    /// `HH` (00–23).
    pub hour: String,
}

impl Partition {
    /// The partition of an event time in epoch milliseconds. Times outside chrono's range
    /// (impossible after validation) fall into the epoch partition.
    pub fn of_millis(ms: i64) -> Self {
        let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        Self {
            dt: format!("{:04}-{:02}-{:02}", t.year(), t.month(), t.day()),
            hour: format!("{:02}", t.hour()),
        }
    }

    /// The relative path `dt=YYYY-MM-DD/hour=HH`.
    pub fn path(&self) -> String {
        format!("dt={}/hour={}", self.dt, self.hour)
    }

    /// Parses a path containing `dt=…/hour=…` segments.
    pub fn from_path(path: &str) -> Option<Self> {
        let mut dt = None;
        let mut hour = None;
        for seg in path.split('/') {
            if let Some(v) = seg.strip_prefix("dt=") {
                dt = Some(v.to_string());
            } else if let Some(v) = seg.strip_prefix("hour=") {
                hour = Some(v.to_string());
            }
        }
        Some(Self {
            dt: dt?,
            hour: hour?,
        })
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
    fn event_time_maps_to_its_utc_date_and_hour() {
        // 2025-11-25T13:45:00.123Z
        let p = Partition::of_millis(1_764_078_300_123);
        assert_eq!(p.path(), "dt=2025-11-25/hour=13");
        assert_eq!(
            Partition::from_path("telemetry/dt=2025-11-25/hour=13/x.parquet"),
            Some(p.clone())
        );
        assert_eq!(p.start_millis(), Some(1_764_075_600_000));
    }
}

//! Window lengths of the statistics: `1m`, `1h`, `1d`, aligned to UTC.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The length of an aggregation window. Windows are aligned to the Unix epoch (so to UTC
/// minutes, hours and days) and half-open: `[start, start + length)`.
///
/// The rollup aggregates readings into [`Window::M1`]; `1h` and `1d` rows are merged from
/// the 1m rows ([`crate::coarse`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    /// One minute (`1m`), aggregated from the readings. The default.
    #[default]
    M1,
    /// One hour (`1h`), merged from the 1m rows.
    H1,
    /// One day (`1d`), UTC, merged from the 1h rows.
    D1,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 3] = [Window::M1, Window::H1, Window::D1];

    /// The window length in milliseconds.
    pub const fn millis(self) -> i64 {
        match self {
            Window::M1 => 60_000,
            Window::H1 => 3_600_000,
            Window::D1 => 86_400_000,
        }
    }

    /// The label used in paths (`stats/window=1m/…`), on the command line and in JSON.
    pub const fn label(self) -> &'static str {
        match self {
            Window::M1 => "1m",
            Window::H1 => "1h",
            Window::D1 => "1d",
        }
    }

    /// The start (epoch milliseconds) of the window holding the instant `ms` (epoch
    /// milliseconds). Floors towards negative infinity, so instants before 1970 land in
    /// the window that contains them rather than the next one.
    pub const fn start_of(self, ms: i64) -> i64 {
        ms - ms.rem_euclid(self.millis())
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A window label that is not `1m`, `1h` or `1d`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown window {0:?}: expected one of 1m, 1h, 1d")]
pub struct ParseWindowError(pub String);

impl FromStr for Window {
    type Err = ParseWindowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Window::ALL
            .into_iter()
            .find(|w| w.label() == s.trim())
            .ok_or_else(|| ParseWindowError(s.to_string()))
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_from_their_labels_and_print_them_back() {
        for w in Window::ALL {
            assert_eq!(w.label().parse::<Window>(), Ok(w));
            assert_eq!(w.to_string(), w.label());
        }
        let err = "5m".parse::<Window>().unwrap_err();
        assert!(err.to_string().contains("1m, 1h, 1d"), "{err}");
    }

    #[test]
    fn a_window_start_floors_to_the_utc_boundary_even_before_1970() {
        assert_eq!(Window::M1.start_of(1_764_086_702_123), 1_764_086_700_000);
        assert_eq!(Window::M1.start_of(60_000), 60_000);
        assert_eq!(Window::M1.start_of(-1), -60_000);
        assert_eq!(Window::H1.start_of(3_599_999), 0);
        assert_eq!(Window::D1.start_of(86_400_000 + 5), 86_400_000);
    }
}

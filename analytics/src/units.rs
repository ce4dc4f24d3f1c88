//! Units of work: one hour partition's device-hash bucket.
//!
//! A fleet's hour can hold more readings than one function's memory, so the rollup
//! splits it: device `d` belongs to bucket `fnv1a(d) % buckets`, and a unit aggregates
//! the readings of one bucket of one hour, reading every telemetry object of the hour
//! with a row filter on `device_id` (only the unit's rows are decoded beyond that
//! column). All readings of a device land in one unit, so de-duplication and every
//! (device, metric, minute) window are complete within it; a unit's memory is about
//! [`crate::stats::BYTES_PER_READING`] per reading of its bucket. The bucket count is
//! fixed per deployment while a fleet grows, so a unit whose hour holds more readings than
//! [`RollupConfig::pass_readings`] is aggregated in several passes, each over its own share
//! of the bucket's devices ([`slice_of`]) and each reading every object again: memory is
//! bounded by that setting, whatever the fleet size, and time grows by a decode of the
//! `device_id` column per extra pass.
//!
//! Each unit writes its own stats file and its own state object:
//! ```text
//! stats/window=1m/dt=YYYY-MM-DD/hour=HH/part-BBBB-of-NNNN.parquet   the unit's 1m stats
//! stats/_state/window=1m/dt=YYYY-MM-DD/hour=HH/part-BBBB-of-NNNN.json   what it aggregated
//! stats/_state/_lease/window=1m/dt=…/hour=…/part-BBBB-of-NNNN/gen-…      its single writer
//! ```
//! The bucket count is part of every name; it is fixed per deployment (changing it
//! means recomputing: delete `stats/` and run the rollup again).

use std::fmt;

use serde::{Deserialize, Serialize};
use telemetry::Partition;

use crate::config::RollupConfig;
use crate::rollup::ROLLUP_WINDOW;

/// The bucket of `device_id` among `buckets` (at least 1): FNV-1a (64-bit) of its bytes,
/// modulo `buckets`. A fixed, documented hash, so that every worker, process and version
/// agrees on it.
pub fn bucket_of(device_id: &str, buckets: u32) -> u32 {
    slice_of(device_id, buckets, 1).0
}

/// The bucket of `device_id` among `buckets`, and its pass among the `passes` of a unit
/// aggregated in several ([`crate::RollupConfig::pass_readings`]): with `h` the FNV-1a
/// hash of [`bucket_of`], the bucket is `h mod buckets` and the pass
/// `(h div buckets) mod passes`, so the passes split a bucket's devices evenly and the
/// bucket does not depend on the pass count.
pub fn slice_of(device_id: &str, buckets: u32, passes: u32) -> (u32, u32) {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = device_id
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    let buckets = u64::from(buckets.max(1));
    // Both remainders are below a u32.
    (
        (hash % buckets) as u32,
        ((hash / buckets) % u64::from(passes.max(1))) as u32,
    )
}

/// One unit of work: bucket `bucket` of `buckets` of the hour `partition`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unit {
    /// The hour partition (`dt=…/hour=…`).
    pub partition: Partition,
    /// The device-hash bucket, `0..buckets`.
    pub bucket: u32,
    /// How many buckets the hour is split into.
    pub buckets: u32,
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.partition.path(), self.part_name())
    }
}

impl Unit {
    /// Every unit of `partition` with `buckets` buckets.
    pub fn all_of(partition: &Partition, buckets: u32) -> impl Iterator<Item = Unit> + '_ {
        let buckets = buckets.max(1);
        (0..buckets).map(move |bucket| Unit {
            partition: partition.clone(),
            bucket,
            buckets,
        })
    }

    /// The unit named `part-BBBB-of-NNNN` (with or without an extension) in `partition`'s
    /// folders; `None` for any other name.
    pub fn from_part_name(partition: &Partition, name: &str) -> Option<Unit> {
        let stem = name.split('.').next()?;
        let (bucket, buckets) = stem.strip_prefix("part-")?.split_once("-of-")?;
        let (bucket, buckets) = (bucket.parse().ok()?, buckets.parse().ok()?);
        (bucket < buckets).then(|| Unit {
            partition: partition.clone(),
            bucket,
            buckets,
        })
    }

    /// The folder of the state objects of every unit of `partition`.
    pub fn state_folder(partition: &Partition, cfg: &RollupConfig) -> String {
        format!(
            "{}/window={ROLLUP_WINDOW}/{}",
            cfg.state_prefix,
            partition.path()
        )
    }

    /// `part-BBBB-of-NNNN`: the unit's name inside its hour folders.
    pub fn part_name(&self) -> String {
        format!("part-{:04}-of-{:04}", self.bucket, self.buckets)
    }

    /// The key of the unit's 1-minute stats file.
    pub fn stats_path(&self, cfg: &RollupConfig) -> String {
        format!(
            "{}/{}/{}.parquet",
            cfg.window_prefix(ROLLUP_WINDOW),
            self.partition.path(),
            self.part_name()
        )
    }

    /// The key of the unit's state object (what it has aggregated).
    pub fn state_path(&self, cfg: &RollupConfig) -> String {
        format!(
            "{}/{}.json",
            Self::state_folder(&self.partition, cfg),
            self.part_name()
        )
    }

    /// The folder of the unit's lease generations.
    pub fn lease_prefix(&self, cfg: &RollupConfig) -> String {
        format!(
            "{}/_lease/window={ROLLUP_WINDOW}/{}/{}",
            cfg.state_prefix,
            self.partition.path(),
            self.part_name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_split_a_bucket_evenly_without_moving_devices_between_buckets() {
        let (buckets, passes) = (16, 5);
        let mut counts = [0u32; 5];
        for i in 0..80_000 {
            let id = format!("sensor-{i:06}");
            let (bucket, pass) = slice_of(&id, buckets, passes);
            assert_eq!(bucket, bucket_of(&id, buckets), "{id}");
            assert_eq!(slice_of(&id, buckets, 1), (bucket, 0));
            if bucket == 3 {
                counts[pass as usize] += 1;
            }
        }
        // 1,000 devices per pass on average.
        assert!(
            counts.iter().all(|&c| (900..1100).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn buckets_are_stable_and_spread_devices() {
        // Fixed values: a change of hash would silently split devices across units.
        assert_eq!(bucket_of("sensor-000042", 8), bucket_of("sensor-000042", 8));
        assert_eq!(bucket_of("", 8), (0xcbf2_9ce4_8422_2325_u64 % 8) as u32);
        assert_eq!(bucket_of("anything", 1), 0);
        assert_eq!(bucket_of("anything", 0), 0);
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[bucket_of(&format!("sensor-{i:06}"), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn unit_paths_follow_the_documented_layout() {
        let cfg = RollupConfig::default();
        let unit = Unit {
            partition: Partition::of_millis(1_764_086_700_000),
            bucket: 3,
            buckets: 8,
        };
        assert_eq!(
            unit.stats_path(&cfg),
            "stats/window=1m/dt=2025-11-25/hour=16/part-0003-of-0008.parquet"
        );
        assert_eq!(
            unit.state_path(&cfg),
            "stats/_state/window=1m/dt=2025-11-25/hour=16/part-0003-of-0008.json"
        );
        assert_eq!(
            Unit::from_part_name(&unit.partition, "part-0003-of-0008.json"),
            Some(unit.clone())
        );
        for other in [
            "stats.parquet",
            "part-0008-of-0008.json",
            "part-x-of-0008.json",
        ] {
            assert_eq!(
                Unit::from_part_name(&unit.partition, other),
                None,
                "{other}"
            );
        }
        assert_eq!(
            unit.lease_prefix(&cfg),
            "stats/_state/_lease/window=1m/dt=2025-11-25/hour=16/part-0003-of-0008"
        );
    }
}

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
//! of the bucket's devices (a range of their ids, [`pass_bounds`]) and each reading every
//! object again: memory is bounded by that setting, whatever the fleet size, and time
//! grows by a decode of the `device_id` column per extra pass (and one to draw the ranges).
//!
//! Each unit writes its own stats file and its own state object:
//! ```text
//! stats/window=1m/dt=YYYY-MM-DD/hour=HH/part-BBBB-of-NNNN.parquet   the unit's 1m stats
//! stats/_state/window=1m/dt=YYYY-MM-DD/hour=HH/part-BBBB-of-NNNN.json   what it aggregated
//! stats/_state/_lease/window=1m/dt=…/hour=…/part-BBBB-of-NNNN/gen-…      its single writer
//! ```
//! The bucket count is part of every name; it is fixed per deployment (changing it
//! means recomputing: delete `stats/` and run the rollup again).

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use telemetry::Partition;

use crate::config::RollupConfig;
use crate::rollup::ROLLUP_WINDOW;

/// The bucket of `device_id` among `buckets` (at least 1): FNV-1a (64-bit) of its bytes,
/// modulo `buckets`. A fixed, documented hash, so that every worker, process and version
/// agrees on it.
pub fn bucket_of(device_id: &str, buckets: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = device_id
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    // The remainder is below a u32.
    (hash % u64::from(buckets.max(1))) as u32
}

/// Where the passes of a unit aggregated in several ([`crate::RollupConfig::pass_readings`])
/// split its bucket's devices: pass `p` takes the device ids in
/// `[bounds[p - 1], bounds[p])` (the first from the smallest id, the last to the largest).
/// The passes are ranges of ids in their sort order, so each pass's windows follow the
/// previous pass's in the stats file's order (device, metric, window start) and can be
/// written as they come, instead of being held until the last pass.
///
/// `ids` are the bucket's distinct device ids (in any order, repeats allowed); the bounds
/// split them into `passes` ranges of as equal a count as they allow. Fewer bounds than
/// `passes - 1` come back when there are fewer distinct ids than passes (a range is
/// never empty of known ids).
pub fn pass_bounds(mut ids: Vec<String>, passes: u32) -> Vec<String> {
    ids.sort_unstable();
    ids.dedup();
    let n = ids.len();
    // Each range at least one id: `n / parts >= 1`, so the indices strictly increase.
    let parts = usize::try_from(passes.max(1)).unwrap_or(usize::MAX).min(n);
    (1..parts)
        .filter_map(|p| ids.get(p * n / parts).cloned())
        .collect()
}

/// Which range of [`pass_bounds`] `device_id` falls in: its pass.
pub fn pass_of(device_id: &str, bounds: &[String]) -> u32 {
    // Ranges are `[from, to)`: an id equal to a bound starts that bound's pass.
    let pass = bounds.partition_point(|b| b.as_str() <= device_id);
    u32::try_from(pass).unwrap_or(u32::MAX)
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

/// Groups `units` for [`crate::worker::run_hour`]: each group holds distinct units of one
/// hour, at most `max` of them (at least 1), in their given order; a unit given again goes
/// to a later group, so it runs after its first delivery is stored. Groups are lists of
/// positions in `units`, in the order of their first unit.
pub fn hour_groups(units: &[&Unit], max: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    // The group each hour's units go to now.
    let mut open: HashMap<&Partition, usize> = HashMap::new();
    for (i, unit) in units.iter().enumerate() {
        let fits = |g: &Vec<usize>| g.len() < max.max(1) && g.iter().all(|&j| units[j] != *unit);
        match open.get(&unit.partition) {
            Some(&g) if fits(&groups[g]) => groups[g].push(i),
            _ => {
                open.insert(&unit.partition, groups.len());
                groups.push(vec![i]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_grouped_by_hour_in_runs_of_at_most_max_and_a_repeat_runs_later() {
        let hour = |h: i64| Partition::of_millis(1_780_000_000_000 + h * 3_600_000);
        let unit = |h, bucket| Unit {
            partition: hour(h),
            bucket,
            buckets: 16,
        };
        let units = [
            unit(0, 0),
            unit(1, 0),
            unit(0, 1),
            unit(0, 0), // a repeat
            unit(0, 2),
            unit(0, 3),
            unit(0, 4),
            unit(1, 1),
        ];
        let refs: Vec<&Unit> = units.iter().collect();
        assert_eq!(
            hour_groups(&refs, usize::MAX),
            [vec![0, 2], vec![1, 7], vec![3, 4, 5, 6]]
        );
        assert_eq!(
            hour_groups(&refs, 2),
            [vec![0, 2], vec![1, 7], vec![3, 4], vec![5, 6]]
        );
        assert_eq!(hour_groups(&refs, 0).len(), units.len());
    }

    #[test]
    fn passes_split_a_bucket_into_ordered_ranges_of_even_counts() {
        let buckets = 16;
        let ids: Vec<String> = (0..80_000)
            .map(|i| format!("sensor-{i:06}"))
            .filter(|id| bucket_of(id, buckets) == 3)
            .collect();
        let n = ids.len();
        // Given in any order and with repeats, as the objects of an hour hold them.
        let mut given: Vec<String> = ids.iter().rev().cloned().collect();
        given.extend(ids.iter().take(100).cloned());
        let bounds = pass_bounds(given, 5);
        assert_eq!(bounds.len(), 4, "{bounds:?}");
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        let mut counts = [0usize; 5];
        let mut last_pass = 0;
        let mut sorted = ids.clone();
        sorted.sort();
        for id in &sorted {
            let pass = pass_of(id, &bounds);
            // In sort order, the passes follow each other.
            assert!(pass >= last_pass, "{id}");
            last_pass = pass;
            counts[pass as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| c.abs_diff(n / 5) <= 1),
            "{counts:?} of {n}"
        );
        // Ids no object held when the bounds were drawn still fall in one range.
        assert_eq!(pass_of("", &bounds), 0);
        assert_eq!(pass_of("zzz", &bounds), 4);
        assert_eq!(pass_of(&bounds[1], &bounds), 2);
    }

    #[test]
    fn fewer_ids_than_passes_give_fewer_passes_and_one_pass_none() {
        let ids = |n: usize| (0..n).map(|i| format!("d{i}")).collect::<Vec<_>>();
        assert_eq!(
            pass_bounds(ids(3), 5),
            vec!["d1".to_string(), "d2".to_string()]
        );
        assert!(pass_bounds(ids(100), 1).is_empty());
        assert!(pass_bounds(Vec::new(), 4).is_empty());
        assert_eq!(pass_of("d0", &[]), 0);
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

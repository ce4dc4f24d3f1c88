//! Configuration of the rollup and of the store it runs against.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;

use crate::window::Window;

/// Default key prefix of the telemetry Parquet files ([`telemetry::layout`]).
pub const DEFAULT_TELEMETRY_PREFIX: &str = telemetry::layout::TELEMETRY_PREFIX;
/// Default key prefix of the statistics ([`telemetry::layout`]).
pub const DEFAULT_STATS_PREFIX: &str = telemetry::layout::STATS_PREFIX;
/// Default folder of the rollup's per-unit state and leases. Under `stats/` so that one
/// bucket policy covers the rollup's writes; the `_` folder is skipped by Athena and Hive,
/// and the query library only reads `stats/window=…/`.
pub const DEFAULT_STATE_PREFIX: &str = telemetry::layout::ROLLUP_STATE_PREFIX;
/// Default folder of the new-object markers ([`crate::pending`]).
pub const DEFAULT_PENDING_PREFIX: &str = telemetry::layout::ROLLUP_PENDING_PREFIX;
/// Default number of device-hash buckets per hour (units of work per hour partition).
/// Measured: a unit holds about 300 bytes per reading of its bucket at its peak (rows,
/// windows, the stats file), so 16 buckets keep a 10,000-device hour (4 M readings) near
/// 80 MB per unit. See BENCHMARKS.md for the ceiling per Lambda memory size.
pub const DEFAULT_BUCKETS: u32 = 16;
/// Default most readings one pass of a unit aggregates ([`RollupConfig::pass_readings`])
/// in a local `iotpipe rollup`: at [`PASS_BYTES_PER_READING`], about 60 MB per worker; the
/// seeded 10,000-device file of `bench/compare.sh` (3 M readings in one hour, 16 buckets)
/// needs one pass per unit. The rollup functions, and the local stack that emulates them,
/// size it from their memory ([`pass_readings_for_memory`]).
pub const DEFAULT_PASS_READINGS: u64 = 200_000;
/// Memory one reading of a unit's pass takes at the pass's peak, measured (the compact row,
/// the decoded batches and the sort; BENCHMARKS.md): sizes the passes from a memory budget.
pub const PASS_BYTES_PER_READING: u64 = 300;
/// [`RollupConfig::pass_readings`] for a function of `memory_mb` MB: a quarter of its
/// memory for the pass, the rest for the readers' buffers, the stats file and the runtime.
/// (A 1,024 MB worker: 894,784 readings.)
pub fn pass_readings_for_memory(memory_mb: u64) -> u64 {
    (memory_mb.saturating_mul(1024 * 1024) / 4 / PASS_BYTES_PER_READING).max(1)
}
/// [`RollupConfig::pass_readings`] from its variable's text: a whole number, at least 1.
pub fn parse_pass_readings(value: &str) -> Option<u64> {
    value.parse().ok().filter(|n| *n >= 1)
}
/// Environment variable of [`RollupConfig::pass_readings`], read by `iotpipe rollup` and the
/// rollup, worker and compact functions.
pub const PASS_READINGS_ENV: &str = "IOTPIPE_ROLLUP_PASS_READINGS";
/// Most device-hash buckets per hour a deployment may use (the CLI and the Lambdas refuse more).
pub const MAX_BUCKETS: u32 = 4096;
/// Environment variable of the bucket count, read by `iotpipe rollup`/`compact` and the
/// rollup, worker and compact functions (the template's `RollupBuckets`): all must agree.
pub const BUCKETS_ENV: &str = "IOTPIPE_ROLLUP_BUCKETS";
/// Default number of units aggregated at once in one process.
pub const DEFAULT_WORKERS: usize = 1;
/// Default time to live of a unit's lease: Lambda's longest timeout (15 minutes), so a
/// worker function can never outlive its lease.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(900);
/// Default number of telemetry files fetched concurrently.
pub const DEFAULT_READ_CONCURRENCY: usize = 8;
/// The environment variable naming the local data directory (until S3 configuration
/// arrives).
pub const DATA_DIR_ENV: &str = "IOTPIPE_DATA";

/// Where the rollup reads and writes, within one object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupConfig {
    /// Key prefix of the telemetry files, without a trailing slash. Files are expected
    /// under `{telemetry_prefix}/dt=YYYY-MM-DD/hour=HH/`. Default `telemetry`.
    pub telemetry_prefix: String,
    /// Key prefix of the output, without a trailing slash. Stats files go to
    /// `{stats_prefix}/window=1m/dt=YYYY-MM-DD/hour=HH/part-BBBB-of-NNNN.parquet`, one per
    /// unit (see [`crate::units`]). Default `stats`.
    pub stats_prefix: String,
    /// Folder of the per-unit state objects and leases (see [`crate::units`]). Default
    /// `stats/_state`.
    pub state_prefix: String,
    /// Folder of the new-object markers (see [`crate::pending`]). Default `stats/_pending`.
    pub pending_prefix: String,
    /// Device-hash buckets per hour partition: the units of work (at least 1). A unit's
    /// memory is about 1/`buckets` of the hour's. Fixed per deployment: the stats files
    /// are named after it. Default 16.
    pub buckets: u32,
    /// Most readings one pass of a unit aggregates (at least 1). A unit whose hour holds
    /// more (the row counts of the objects' footers, divided by `buckets`) is aggregated in
    /// several passes over shares of its devices, so a unit's memory is bounded by this
    /// rather than by the fleet: about [`PASS_BYTES_PER_READING`] per reading. Unlike
    /// `buckets`, it may change from run to run. Default 200,000 (the functions: a quarter
    /// of their memory, [`pass_readings_for_memory`]).
    pub pass_readings: u64,
    /// Units aggregated at once by one process (`iotpipe rollup --workers N`); memory
    /// grows with it. Default 1.
    pub workers: usize,
    /// How long a unit's lease lasts; a crashed worker's unit is taken again after it.
    /// Default 15 minutes.
    pub lease_ttl: Duration,
    /// List every telemetry object instead of only the pending markers (heals markers lost
    /// to a crash). The first run of a store always does. Default false.
    pub full_scan: bool,
    /// How many telemetry files are fetched and decoded at once (at least 1). Latency to
    /// S3 dominates small-file reads, so a few in flight keep the CPU busy; each holds its
    /// decoded batches in memory until it is aggregated. Default 8.
    pub read_concurrency: usize,
    /// Derive the 1h/1d and fleet windows of the hours whose units this run completed
    /// ([`crate::coarse`]). Off, those windows are left as they were (stale until their
    /// hour changes again and a run with it on completes it): for measuring the
    /// derivation's cost, and for callers that derive themselves
    /// ([`crate::coarse::derive_coarse`]). Default true.
    pub derive_coarse: bool,
}

impl Default for RollupConfig {
    fn default() -> Self {
        Self {
            telemetry_prefix: DEFAULT_TELEMETRY_PREFIX.into(),
            stats_prefix: DEFAULT_STATS_PREFIX.into(),
            state_prefix: DEFAULT_STATE_PREFIX.into(),
            pending_prefix: DEFAULT_PENDING_PREFIX.into(),
            buckets: DEFAULT_BUCKETS,
            pass_readings: DEFAULT_PASS_READINGS,
            workers: DEFAULT_WORKERS,
            lease_ttl: DEFAULT_LEASE_TTL,
            full_scan: false,
            read_concurrency: DEFAULT_READ_CONCURRENCY,
            derive_coarse: true,
        }
    }
}

impl RollupConfig {
    /// The key of the stats file of `window` for the partition `dt=…/hour=…`.
    pub fn stats_path(&self, window: Window, partition: &telemetry::Partition) -> String {
        telemetry::layout::stats_path(&self.stats_prefix, window.label(), partition)
    }

    /// The folder holding every stats file of `window`: `{stats_prefix}/window={label}`.
    pub fn window_prefix(&self, window: Window) -> String {
        window_prefix(&self.stats_prefix, window)
    }
}

/// `{stats_prefix}/window={label}`.
pub(crate) fn window_prefix(stats_prefix: &str, window: Window) -> String {
    telemetry::layout::window_prefix(stats_prefix, window.label())
}

/// The store could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The variable naming the data directory is not set.
    #[error(
        "{var} is not set: set it to the local data directory that holds telemetry/ and stats/"
    )]
    Missing {
        /// The variable's name.
        var: &'static str,
    },
    /// The variable is set but does not name a usable directory.
    #[error("{var}={path} is not a usable data directory: {source}")]
    Directory {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        path: String,
        /// Why the directory cannot be used.
        #[source]
        source: object_store::Error,
    },
}

/// A local-filesystem store rooted at the directory named by [`DATA_DIR_ENV`].
pub fn local_store_from_env() -> Result<Arc<dyn ObjectStore>, ConfigError> {
    local_store(std::env::var_os(DATA_DIR_ENV))
}

/// A local-filesystem store rooted at `dir` — the value of [`DATA_DIR_ENV`], `None` when
/// unset. Split from [`local_store_from_env`] so that it can be tested without changing
/// the process environment.
pub fn local_store(dir: Option<OsString>) -> Result<Arc<dyn ObjectStore>, ConfigError> {
    let dir = dir
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .ok_or(ConfigError::Missing { var: DATA_DIR_ENV })?;
    telemetry::synced::local_dir_store(&dir).map_err(|source| ConfigError::Directory {
        var: DATA_DIR_ENV,
        path: dir.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_data_directory_variable_fails_naming_the_variable() {
        let err = local_store(None).err().unwrap().to_string();
        assert!(err.starts_with("IOTPIPE_DATA is not set"), "{err}");
        let err = local_store(Some("".into())).err().unwrap().to_string();
        assert!(err.starts_with("IOTPIPE_DATA is not set"), "{err}");
        let err = local_store(Some("/nonexistent/iotpipe".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("IOTPIPE_DATA=/nonexistent/iotpipe"),
            "{err}"
        );
    }

    #[test]
    fn an_existing_directory_becomes_a_store() {
        let dir = tempfile::tempdir().unwrap();
        assert!(local_store(Some(dir.path().into())).is_ok());
    }
}

//! Configuration of the rollup and of the store it runs against.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

use crate::window::Window;

/// Default key prefix of the telemetry Parquet files ([`telemetry::layout`]).
pub const DEFAULT_TELEMETRY_PREFIX: &str = telemetry::layout::TELEMETRY_PREFIX;
/// Default key prefix of the statistics ([`telemetry::layout`]).
pub const DEFAULT_STATS_PREFIX: &str = telemetry::layout::STATS_PREFIX;
/// Default location of the rollup checkpoint ([`telemetry::layout::ROLLUP_CHECKPOINT_PATH`]).
/// Under `stats/` so that one bucket policy covers the rollup's writes; the `_` folder is
/// skipped by Athena and Hive, and the query library only reads `stats/window=…/`.
pub const DEFAULT_CHECKPOINT_PATH: &str = telemetry::layout::ROLLUP_CHECKPOINT_PATH;
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
    /// `{stats_prefix}/window=1m/dt=YYYY-MM-DD/hour=HH/stats.parquet`. Default `stats`.
    pub stats_prefix: String,
    /// Key of the checkpoint object. Default `stats/_checkpoint/rollup.json`.
    pub checkpoint_path: String,
    /// How many telemetry files are fetched and decoded at once (at least 1). Latency to
    /// S3 dominates small-file reads, so a few in flight keep the CPU busy; each holds its
    /// decoded batches in memory until it is aggregated. Default 8.
    pub read_concurrency: usize,
}

impl Default for RollupConfig {
    fn default() -> Self {
        Self {
            telemetry_prefix: DEFAULT_TELEMETRY_PREFIX.into(),
            stats_prefix: DEFAULT_STATS_PREFIX.into(),
            checkpoint_path: DEFAULT_CHECKPOINT_PATH.into(),
            read_concurrency: DEFAULT_READ_CONCURRENCY,
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
    let store =
        LocalFileSystem::new_with_prefix(&dir).map_err(|source| ConfigError::Directory {
            var: DATA_DIR_ENV,
            path: dir.display().to_string(),
            source,
        })?;
    Ok(Arc::new(store))
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

    #[test]
    fn stats_paths_follow_the_documented_layout() {
        let cfg = RollupConfig::default();
        let p = telemetry::Partition::of_millis(1_764_086_700_000);
        assert_eq!(
            cfg.stats_path(Window::M1, &p),
            "stats/window=1m/dt=2025-11-25/hour=16/stats.parquet"
        );
    }
}

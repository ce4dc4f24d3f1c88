//! The `rollup` Lambda binary, deployed twice: as the rollup (`IOTPIPE_JOB=rollup` or
//! unset: [`analytics::handler::handle`]) and as the compact function
//! (`IOTPIPE_JOB=compact`: [`analytics::handler::handle_compact`]). It wires tracing, the
//! store and the runtime.
//!
//! The store is the S3 bucket named by `IOTPIPE_BUCKET` (as deployed by
//! `infra/template.yaml`; region, credentials and an optional `AWS_ENDPOINT_URL` come from
//! the standard AWS variables), or for local runs the directory named by `IOTPIPE_DATA`.
//! `IOTPIPE_TELEMETRY_PREFIX`, `IOTPIPE_STATS_PREFIX` and `IOTPIPE_STATE_PREFIX` (the
//! units' state and leases) override the default layout. The compact job also reads
//! `IOTPIPE_COMPACT_TARGET_MIB` (size of a compacted file, default 128, at least 1) and
//! sizes its memory budget to a quarter of `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`. A missing,
//! contradictory or unusable
//! setting fails the cold start, naming the variable, not an invocation.

use std::sync::Arc;

use analytics::RollupConfig;
use analytics::compact::CompactConfig;
use analytics::config::{DATA_DIR_ENV, local_store};
use analytics::handler::{handle, handle_compact};
use lambda_runtime::{Error, run, service_fn};
use object_store::ObjectStore;
use tracing_subscriber::EnvFilter;

/// Which scheduled job this function runs (`infra/template.yaml` deploys this binary as
/// `rollup` and as `compact`).
const JOB_VAR: &str = "IOTPIPE_JOB";
/// The S3 bucket holding `telemetry/` and `stats/`.
const BUCKET_VAR: &str = "IOTPIPE_BUCKET";
/// Key prefix of the telemetry files (default `telemetry`).
const TELEMETRY_PREFIX_VAR: &str = "IOTPIPE_TELEMETRY_PREFIX";
/// Key prefix of the statistics (default `stats`).
const STATS_PREFIX_VAR: &str = "IOTPIPE_STATS_PREFIX";
/// Target size of a compacted telemetry file, MiB (compact job).
const COMPACT_TARGET_VAR: &str = "IOTPIPE_COMPACT_TARGET_MIB";
/// The function's memory, MB, as the Lambda runtime sets it.
const MEMORY_VAR: &str = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE";
/// Folder of the rollup's per-unit state and leases (default `stats/_state`).
const STATE_PREFIX_VAR: &str = "IOTPIPE_STATE_PREFIX";

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON lines for CloudWatch; `RUST_LOG` overrides the default level.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_current_span(false)
        .init();

    // Non-UTF-8 values are read lossily: validation then names them invalid, instead of
    // calling them missing.
    let env = |var: &str| std::env::var_os(var).map(|v| v.to_string_lossy().into_owned());
    let (store, cfg, job) = setup(env).map_err(|e| {
        // The log line is what CloudWatch shows for a failed init; the returned message
        // (Display, not Debug) is what a local run prints.
        tracing::error!(error = %e, "cold start failed");
        e.to_string()
    })?;
    match job {
        Job::Rollup => {
            let cfg = &cfg;
            run(service_fn(|event| handle(event, store.clone(), cfg))).await
        }
        Job::Compact(compact) => {
            let compact = &compact;
            run(service_fn(|event| {
                handle_compact(event, store.clone(), compact)
            }))
            .await
        }
    }
}

/// The job this deployment runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    /// The incremental rollup (and its 1h/1d derivation).
    Rollup,
    /// Compaction of closed hours.
    Compact(CompactConfig),
}

/// A setting that stops the cold start.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    /// Neither store variable is set, or both are.
    #[error(
        "set exactly one of {BUCKET_VAR} (an S3 bucket) or {DATA_DIR_ENV} (a local data \
         directory); {0}"
    )]
    Store(&'static str),
    /// A variable holds something unusable.
    #[error("{var}={value:?} is not valid: {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// The local data directory cannot be used.
    #[error(transparent)]
    Local(#[from] analytics::config::ConfigError),
    /// The S3 store cannot be built.
    #[error("{BUCKET_VAR}: {0}")]
    S3(#[from] telemetry::store::StoreError),
}

/// The store and the rollup settings, from variables read through `lookup` (a closure,
/// so that tests need not change the process environment).
fn setup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(Arc<dyn ObjectStore>, RollupConfig, Job), SetupError> {
    let get = |var| lookup(var).filter(|v| !v.is_empty());

    let compacting = match get(JOB_VAR).as_deref() {
        None | Some("rollup") => false,
        Some("compact") => true,
        Some(job) => {
            return Err(SetupError::Invalid {
                var: JOB_VAR,
                value: job.to_string(),
                expected: "`rollup` (or unset) or `compact`",
            });
        }
    };

    let store = match (get(BUCKET_VAR), get(DATA_DIR_ENV)) {
        (Some(bucket), None) => {
            let valid = (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-".contains(&b));
            if !valid {
                return Err(SetupError::Invalid {
                    var: BUCKET_VAR,
                    value: bucket,
                    expected: "an S3 bucket name (3-63 characters of a-z 0-9 . -), without \
                               s3:// or a prefix",
                });
            }
            telemetry::store::open_store(&format!("{}{bucket}", telemetry::store::S3_SCHEME))?
        }
        (None, Some(dir)) => local_store(Some(dir.into()))?,
        (None, None) => return Err(SetupError::Store("neither is set")),
        (Some(_), Some(_)) => return Err(SetupError::Store("both are set")),
    };

    let mut cfg = RollupConfig::default();
    if let Some(p) = prefix(&lookup, TELEMETRY_PREFIX_VAR)? {
        cfg.telemetry_prefix = p;
    }
    if let Some(p) = prefix(&lookup, STATS_PREFIX_VAR)? {
        cfg.stats_prefix = p;
    }
    if let Some(p) = prefix(&lookup, STATE_PREFIX_VAR)? {
        cfg.state_prefix = p;
    }
    if !compacting {
        return Ok((store, cfg, Job::Rollup));
    }
    let mut compact = CompactConfig {
        rollup: cfg.clone(),
        ..CompactConfig::default()
    };
    if let Some(v) = get(COMPACT_TARGET_VAR) {
        let mib = v.parse::<usize>().ok().filter(|m| *m >= 1);
        compact.target_file_bytes =
            mib.map(|m| m.saturating_mul(1024 * 1024))
                .ok_or(SetupError::Invalid {
                    var: COMPACT_TARGET_VAR,
                    value: v,
                    expected: "a whole number of MiB, at least 1 (default 128)",
                })?;
    }
    if let Some(mb) = get(MEMORY_VAR).and_then(|v| v.parse::<usize>().ok()) {
        // A quarter of the function's memory for decoded rows: the rest holds the
        // encoder's buffers, the sort and the runtime.
        compact.memory_budget_bytes = mb.saturating_mul(1024 * 1024) / 4;
    }
    Ok((store, cfg, Job::Compact(compact)))
}

/// A key prefix variable without its surrounding slashes; `None` when unset.
fn prefix(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<String>, SetupError> {
    let Some(value) = lookup(var) else {
        return Ok(None);
    };
    let trimmed = value.trim_matches('/');
    if trimmed.is_empty() || object_store::path::Path::parse(trimmed).is_err() {
        return Err(SetupError::Invalid {
            var,
            value,
            expected: "a non-empty key prefix such as `stats/`",
        });
    }
    Ok(Some(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn setup_with(vars: &[(&str, &str)]) -> Result<RollupConfig, String> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        setup(|k| env.get(k).cloned())
            .map(|(_, cfg, _)| cfg)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_templates_environment_reads_s3_with_its_prefixes() {
        let cfg = setup_with(&[
            ("IOTPIPE_JOB", "rollup"),
            ("IOTPIPE_BUCKET", "iotpipe-data-123"),
            ("IOTPIPE_TELEMETRY_PREFIX", "telemetry/"),
            ("IOTPIPE_STATS_PREFIX", "stats/"),
            ("IOTPIPE_STATE_PREFIX", "state/"),
        ])
        .unwrap();
        assert_eq!(cfg.telemetry_prefix, "telemetry");
        assert_eq!(cfg.stats_prefix, "stats");
        assert_eq!(cfg.state_prefix, "state");
    }

    #[test]
    fn the_compact_deployment_runs_the_compact_job_with_its_settings() {
        let env: HashMap<String, String> = [
            ("IOTPIPE_JOB", "compact"),
            ("IOTPIPE_BUCKET", "iotpipe-data-123"),
            ("IOTPIPE_TELEMETRY_PREFIX", "telemetry/"),
            ("IOTPIPE_COMPACT_TARGET_MIB", "64"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (_, _, job) = setup(|k| env.get(k).cloned()).unwrap();
        let Job::Compact(c) = job else {
            panic!("expected the compact job, got {job:?}");
        };
        assert_eq!(c.target_file_bytes, 64 << 20);
        assert_eq!(c.memory_budget_bytes, 512 << 20);
        assert_eq!(c.rollup.telemetry_prefix, "telemetry");
    }

    #[test]
    fn a_local_data_directory_keeps_the_default_layout() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = setup_with(&[("IOTPIPE_DATA", dir.path().to_str().unwrap())]).unwrap();
        assert_eq!(cfg, RollupConfig::default());
    }

    #[test]
    fn exactly_one_store_must_be_named() {
        let err = setup_with(&[]).unwrap_err();
        assert!(
            err.contains("IOTPIPE_BUCKET") && err.contains("neither"),
            "{err}"
        );
        let err = setup_with(&[("IOTPIPE_BUCKET", "b-1"), ("IOTPIPE_DATA", "/tmp")]).unwrap_err();
        assert!(err.contains("both are set"), "{err}");
    }

    #[test]
    fn bad_values_fail_naming_their_variable() {
        for (var, value) in [
            ("IOTPIPE_JOB", "reindex"),
            ("IOTPIPE_COMPACT_TARGET_MIB", "0"),
            ("IOTPIPE_BUCKET", "s3://bucket"),
            ("IOTPIPE_STATS_PREFIX", "/"),
            ("IOTPIPE_STATE_PREFIX", "a//b"),
        ] {
            let mut vars = vec![
                ("IOTPIPE_BUCKET", "iotpipe-data-123"),
                ("IOTPIPE_JOB", "compact"),
            ];
            vars.retain(|(k, _)| *k != var);
            vars.push((var, value));
            let err = setup_with(&vars).unwrap_err();
            assert!(err.starts_with(&format!("{var}=")), "{err}");
        }
    }
}

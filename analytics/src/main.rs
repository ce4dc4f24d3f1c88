//! The `rollup` Lambda binary, deployed three times: as the rollup planner
//! (`IOTPIPE_JOB=rollup` or unset), its units' worker (`IOTPIPE_JOB=rollup-worker`) and the
//! compact function (`IOTPIPE_JOB=compact`: [`analytics::handler::handle_compact`]). It
//! wires tracing, the store and the runtime.
//!
//! The store is the S3 bucket named by `IOTPIPE_BUCKET` (as deployed by
//! `infra/template.yaml`; region, credentials and an optional `AWS_ENDPOINT_URL` come from
//! the standard AWS variables), or for local runs the directory named by `IOTPIPE_DATA`.
//! `IOTPIPE_TELEMETRY_PREFIX`, `IOTPIPE_STATS_PREFIX` and `IOTPIPE_STATE_PREFIX` (the
//! units' state and leases) override the default layout; `IOTPIPE_ROLLUP_BUCKETS` (the
//! template's `RollupBuckets`, 1–4096, default 16) sets the units per hour, the same for
//! the planner, its workers and compaction. The compact job also reads
//! `IOTPIPE_COMPACT_TARGET_MIB` (size of a compacted file, default 128, at least 1) and
//! sizes its memory budget to a quarter of `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`. A missing,
//! contradictory or unusable
//! setting fails the cold start, naming the variable, not an invocation.
//!
//! `IOTPIPE_JOB` picks the function: `rollup` (the planner: scheduled events and S3
//! new-object notifications from a queue, see [`analytics::dispatch`]), `rollup-worker`
//! (units from the units queue) or `compact`. The planner fans a plan of more than
//! `IOTPIPE_FANOUT_MIN_UNITS` units (default 8) out to the queue named by
//! `IOTPIPE_UNITS_QUEUE_URL`; without that variable it rolls every plan up itself.

use std::sync::Arc;

use analytics::RollupConfig;
use analytics::compact::CompactConfig;
use analytics::config::{DATA_DIR_ENV, local_store};
use analytics::dispatch::{self, PlannerDeps};
use analytics::fanout::{DEFAULT_FANOUT_MIN_UNITS, SqsUnitQueue};
use analytics::handler::handle_compact;
use lambda_runtime::{Error, run, service_fn};
use object_store::ObjectStore;

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
/// URL of the units queue the planner fans large plans out to (unset: no fan-out).
const UNITS_QUEUE_VAR: &str = "IOTPIPE_UNITS_QUEUE_URL";
/// Plans of more units than this are fanned out (default [`DEFAULT_FANOUT_MIN_UNITS`]).
const FANOUT_MIN_UNITS_VAR: &str = "IOTPIPE_FANOUT_MIN_UNITS";
/// Device-hash buckets per hour (the template's `RollupBuckets`; default
/// [`analytics::config::DEFAULT_BUCKETS`]).
const BUCKETS_VAR: &str = analytics::config::BUCKETS_ENV;
/// Most readings one pass of a unit aggregates (default
/// [`analytics::config::DEFAULT_PASS_READINGS`]).
const PASS_READINGS_VAR: &str = analytics::config::PASS_READINGS_ENV;
/// The planner job (the default).
const JOB_ROLLUP: &str = "rollup";
/// The worker job, behind the units queue's event-source mapping.
const JOB_WORKER: &str = "rollup-worker";
/// The compaction job (the `compact` function).
const JOB_COMPACT: &str = "compact";

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::logging::init_lambda();

    // Non-UTF-8 values are read lossily: validation then names them invalid, instead of
    // calling them missing.
    let env = |var: &str| std::env::var_os(var).map(|v| v.to_string_lossy().into_owned());
    let (store, cfg, job) = setup(env).map_err(cold_start_failed)?;
    if let Job::Compact(compact) = job {
        let (store, compact) = (&store, &compact);
        return run(service_fn(|event| {
            handle_compact(event, store.clone(), compact)
        }))
        .await;
    }
    let extra = setup_fanout(env).map_err(cold_start_failed)?;
    if extra.job == JOB_WORKER {
        let (store, cfg) = (&store, &cfg);
        return run(service_fn(|event| dispatch::worker(event, store, cfg))).await;
    }
    let queue = match extra.queue_url {
        Some(queue_url) => {
            let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await;
            Some(SqsUnitQueue {
                client: aws_sdk_sqs::Client::new(&sdk),
                queue_url,
            })
        }
        None => None,
    };
    let deps = &PlannerDeps {
        store,
        cfg,
        queue,
        min_units: extra.min_units,
    };
    run(service_fn(|event| dispatch::planner(event, deps))).await
}

/// Logs a setting that stops the cold start and turns it into the returned error.
fn cold_start_failed(e: SetupError) -> String {
    // The log line is what CloudWatch shows for a failed init; the returned message
    // (Display, not Debug) is what a local run prints.
    tracing::error!(error = %e, "cold start failed");
    e.to_string()
}

/// The job and its fan-out settings.
#[derive(Debug, PartialEq, Eq)]
struct FanoutSetup {
    /// `rollup` or `rollup-worker`.
    job: String,
    /// The units queue, if the planner fans out.
    queue_url: Option<String>,
    /// Plans of more units than this are fanned out.
    min_units: usize,
}

/// The job, the units queue and the fan-out threshold, from `lookup`.
fn setup_fanout(lookup: impl Fn(&str) -> Option<String>) -> Result<FanoutSetup, SetupError> {
    let get = |var| lookup(var).filter(|v| !v.is_empty());
    let min_units = match get(FANOUT_MIN_UNITS_VAR) {
        None => DEFAULT_FANOUT_MIN_UNITS,
        Some(v) => v.parse().map_err(|_| SetupError::Invalid {
            var: FANOUT_MIN_UNITS_VAR,
            value: v,
            expected: "a number of units (0 fans every plan out)",
        })?,
    };
    let queue_url = get(UNITS_QUEUE_VAR);
    if let Some(url) = queue_url
        .as_ref()
        .filter(|u| !u.starts_with("https://") && !u.starts_with("http://"))
    {
        return Err(SetupError::Invalid {
            var: UNITS_QUEUE_VAR,
            value: url.clone(),
            expected: "an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)",
        });
    }
    Ok(FanoutSetup {
        job: get(JOB_VAR).unwrap_or_else(|| JOB_ROLLUP.into()),
        queue_url,
        min_units,
    })
}

/// The job this deployment runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    /// The rollup: the planner or, with `IOTPIPE_JOB=rollup-worker`, the units' worker
    /// ([`setup_fanout`]).
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
        None | Some(JOB_ROLLUP | JOB_WORKER) => false,
        Some(JOB_COMPACT) => true,
        Some(job) => {
            return Err(SetupError::Invalid {
                var: JOB_VAR,
                value: job.to_string(),
                expected: "`rollup` (or unset), `rollup-worker` or `compact`",
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
    if let Some(v) = get(BUCKETS_VAR) {
        cfg.buckets = v
            .parse()
            .ok()
            .filter(|b| (1..=analytics::config::MAX_BUCKETS).contains(b))
            .ok_or(SetupError::Invalid {
                var: BUCKETS_VAR,
                value: v,
                expected: "a bucket count from 1 to 4096, the same for every rollup function",
            })?;
    }
    if let Some(mb) = get(MEMORY_VAR).and_then(|v| v.parse::<u64>().ok()) {
        cfg.pass_readings = analytics::config::pass_readings_for_memory(mb);
    }
    if let Some(v) = get(PASS_READINGS_VAR) {
        cfg.pass_readings =
            analytics::config::parse_pass_readings(&v).ok_or(SetupError::Invalid {
                var: PASS_READINGS_VAR,
                value: v,
                expected: "a whole number of readings, at least 1 (default 200000)",
            })?;
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
    fn the_bucket_count_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let cfg = setup_with(&[("IOTPIPE_DATA", data), ("IOTPIPE_ROLLUP_BUCKETS", "64")]).unwrap();
        assert_eq!(cfg.buckets, 64);
        for bad in ["0", "4097", "x"] {
            let err =
                setup_with(&[("IOTPIPE_DATA", data), ("IOTPIPE_ROLLUP_BUCKETS", bad)]).unwrap_err();
            assert!(
                err.contains("IOTPIPE_ROLLUP_BUCKETS") && err.contains("1 to 4096"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_pass_budget_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let var = "IOTPIPE_ROLLUP_PASS_READINGS";
        assert_eq!(
            setup_with(&[("IOTPIPE_DATA", data)]).unwrap().pass_readings,
            analytics::config::DEFAULT_PASS_READINGS
        );
        let cfg = setup_with(&[("IOTPIPE_DATA", data), (var, "50000")]).unwrap();
        assert_eq!(cfg.pass_readings, 50_000);
        // On Lambda: a quarter of the function's memory, unless set.
        let lambda = [
            ("IOTPIPE_DATA", data),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024"),
        ];
        assert_eq!(setup_with(&lambda).unwrap().pass_readings, 894_784);
        let set = [lambda[0], lambda[1], (var, "1000")];
        assert_eq!(setup_with(&set).unwrap().pass_readings, 1000);
        for bad in ["0", "-1", "x"] {
            let err = setup_with(&[("IOTPIPE_DATA", data), (var, bad)]).unwrap_err();
            assert!(err.contains(var) && err.contains("at least 1"), "{err}");
        }
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
    fn the_worker_job_and_the_fanout_settings_are_read() {
        let env: HashMap<&str, &str> = [
            ("IOTPIPE_JOB", "rollup-worker"),
            (
                "IOTPIPE_UNITS_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/1/units",
            ),
            ("IOTPIPE_FANOUT_MIN_UNITS", "0"),
        ]
        .into();
        let setup = setup_fanout(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(setup.job, "rollup-worker");
        assert_eq!(setup.min_units, 0);
        assert!(setup_with(&[("IOTPIPE_JOB", "rollup-worker"), ("IOTPIPE_BUCKET", "b-1")]).is_ok());
        let defaults = setup_fanout(|_| None).unwrap();
        assert_eq!(
            (defaults.job.as_str(), defaults.queue_url),
            ("rollup", None)
        );
        for (var, value) in [
            ("IOTPIPE_FANOUT_MIN_UNITS", "many"),
            ("IOTPIPE_UNITS_QUEUE_URL", "units"),
        ] {
            let err = setup_fanout(|k| (k == var).then(|| value.to_string())).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{var}=")), "{err}");
        }
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

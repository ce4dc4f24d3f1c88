//! The emulated EventBridge Scheduler: fires the rollup handler on a fixed period with the
//! event a schedule sends, metered like a Lambda invocation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use futures::FutureExt;
use object_store::ObjectStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::meter::{Meter, ROLLUP};
use crate::stack::Counters;
use crate::units_queue::{MAX_RECEIVE_COUNT, UnitsQueue};
use analytics::fanout::PlannerReport;
use telemetry::metering::RollupRun;
use telemetry::metering::WORKER;

/// A running schedule; [`Scheduler::stop`] ends it after the invocation in progress.
pub struct Scheduler {
    /// Tells the loop to stop.
    stop: watch::Sender<bool>,
    /// The loop.
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Runs [`LocalRollup::run`] every `every`, the first time one period from now. A
    /// failed rollup is logged and left to the next run, as a scheduled Lambda's would be.
    pub fn start(
        every: Duration,
        store: Arc<dyn ObjectStore>,
        meter: Meter,
        counters: Arc<Counters>,
        rollup: Arc<LocalRollup>,
    ) -> Self {
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = rollup_task(store.clone(), meter.clone(), counters.clone(), rollup.clone()).await {
                            tracing::warn!(error = %e, "scheduled rollup failed; the next run retries");
                        }
                    }
                    _ = rx.changed() => break,
                }
            }
        });
        Self { stop, task }
    }

    /// Stops the schedule and waits for the invocation in progress, if any.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The EventBridge Scheduler event a scheduled rule sends.
pub fn scheduled_event() -> EventBridgeEvent<serde_json::Value> {
    let now = chrono::Utc::now();
    let json = serde_json::json!({
        "version": "0",
        "id": format!("local-{}", now.timestamp_millis()),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": "000000000000",
        "time": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": "local",
        "resources": ["arn:aws:scheduler:local:000000000000:schedule/default/iotpipe-rollup"],
        "detail": {"job": "rollup"}
    });
    // The literal above always has every required field.
    serde_json::from_value(json).unwrap_or_else(|_| unreachable!("scheduled event literal"))
}

/// [`LocalRollup::run`] as an owned, boxed future: the scheduler task needs a future the
/// compiler can prove `Send` without higher-ranked lifetimes.
fn rollup_task(
    store: Arc<dyn ObjectStore>,
    meter: Meter,
    counters: Arc<Counters>,
    rollup: Arc<LocalRollup>,
) -> futures::future::BoxFuture<'static, anyhow::Result<analytics::RollupReport>> {
    async move { rollup.run(&store, &meter, &counters).await }.boxed()
}

/// The rollup as the template deploys it: the planner function, which runs a small plan
/// itself and fans a large one out to the units queue, and the worker function that
/// drains the queue ([`crate::units_queue`]).
#[derive(Debug, Clone)]
pub struct LocalRollup {
    /// The functions' settings ([`local_rollup_config`]).
    pub cfg: analytics::RollupConfig,
    /// The emulated units queue.
    pub queue: UnitsQueue,
    /// Plans of more units than this are fanned out (the template's `RollupFanoutMinUnits`
    /// default).
    pub min_units: usize,
    /// Worker invocations at once ([`crate::units_queue::worker_concurrency`]).
    pub workers: usize,
}

impl LocalRollup {
    /// The deployed defaults, with the settings `lookup` finds ([`local_rollup_config`]).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            cfg: local_rollup_config(lookup)?,
            queue: UnitsQueue::default(),
            min_units: analytics::fanout::DEFAULT_FANOUT_MIN_UNITS,
            workers: crate::units_queue::worker_concurrency(),
        })
    }

    /// The rollup in this process alone (`iotpipe rollup`): the planner runs every plan
    /// itself, `cfg.workers` units at once, and nothing is queued.
    pub fn in_process(cfg: analytics::RollupConfig) -> Self {
        Self {
            cfg,
            queue: UnitsQueue::default(),
            min_units: usize::MAX,
            workers: 1,
        }
    }

    /// One scheduled rollup, as on AWS: the scheduler invokes the planner (metered as
    /// `rollup`). A plan of more than [`LocalRollup::min_units`] units goes to the units
    /// queue, which the worker invocations (metered as `worker`) drain, up to
    /// [`LocalRollup::workers`] at once; then the planner runs once more, as the next
    /// schedule would, finding the hours' units up to date and finishing them (the 1h/1d
    /// and fleet windows; the markers deleted). The report adds the invocations up.
    /// Units that failed with an error fail the run (their messages wait for the next one,
    /// as after SQS's visibility timeout), as [`analytics::rollup::run_plan`] fails on a
    /// unit's error.
    pub async fn run(
        &self,
        store: &Arc<dyn ObjectStore>,
        meter: &Meter,
        counters: &Counters,
    ) -> anyhow::Result<analytics::RollupReport> {
        counters
            .scheduler_invocations
            .fetch_add(1, Ordering::Relaxed);
        let started_at_ms = chrono::Utc::now().timestamp_millis();
        let result = self.plan_and_drain(store, meter).await;
        if let Ok(mut runs) = counters.rollup_runs.lock() {
            runs.push(RollupRun {
                started_at_ms,
                ended_at_ms: chrono::Utc::now().timestamp_millis(),
                ok: result.is_ok(),
            });
        }
        let report = result?;
        tracing::debug!(
            windows_updated = report.windows_updated,
            new_files = report.new_files,
            units_planned = report.units_planned,
            "rollup"
        );
        Ok(report)
    }

    async fn plan_and_drain(
        &self,
        store: &Arc<dyn ObjectStore>,
        meter: &Meter,
    ) -> anyhow::Result<analytics::RollupReport> {
        let plan = |store: &Arc<dyn ObjectStore>| {
            let event = scheduled_event();
            let store = store.clone();
            async move {
                analytics::handler::check_scheduled(&event)?;
                let report = analytics::fanout::run_fanout(
                    store,
                    &self.cfg,
                    Some(&self.queue),
                    self.min_units,
                    None,
                )
                .await?;
                Ok::<_, lambda_runtime::Error>(report)
            }
        };
        let planned = meter
            .invoke(&ROLLUP, |r: &Result<_, _>| r.is_err(), plan(store))
            .await
            .map_err(|e| anyhow::anyhow!("rollup failed: {e}"))?;
        // The event-source mapping drains the queue whatever the planner did: messages of
        // an earlier run's failed units are due again.
        let drained = self
            .queue
            .drain(store, &self.cfg, meter, self.workers)
            .await;
        let report = match planned {
            PlannerReport::InProcess(mut report) => {
                // Units of an earlier fan-out, redelivered.
                report.units_planned += drained.units.len();
                for unit in drained.units {
                    report.add_unit(unit);
                }
                report
            }
            PlannerReport::FannedOut(fanned) => {
                let mut report = analytics::RollupReport::of_fanned_out(&fanned, drained.units);
                let finished = meter
                    .invoke(&ROLLUP, |r: &Result<_, _>| r.is_err(), plan(store))
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("rollup failed finishing the fanned-out plan: {e}")
                    })?;
                match finished {
                    PlannerReport::InProcess(later) => report.absorb(later),
                    // Units failed again: their messages wait for the next run's workers.
                    PlannerReport::FannedOut(again) => {
                        report.units_remaining += again.units_enqueued;
                    }
                }
                report
            }
        };
        if let Some(first) = drained.errors.first() {
            anyhow::bail!(
                "rollup failed: {} unit(s) failed in the workers (first: {first}); the next \
                 rollup retries them",
                drained.errors.len()
            );
        }
        if drained.dead_lettered > 0 {
            anyhow::bail!(
                "rollup failed: {} unit(s) in the units queue's dead-letter queue after \
                 {MAX_RECEIVE_COUNT} receives; run `iotpipe rollup --data …` to roll their \
                 hours up again",
                drained.dead_lettered
            );
        }
        Ok(report)
    }
}

/// How many telemetry objects a rollup unit reads at once from the data location `data`
/// (what `--data` names): the functions' default from S3, where a few requests in flight
/// hide its latency; one from a local directory, which has no latency to hide. Each object
/// in flight holds a row group's column chunks, so reading the objects of a large hour
/// eight at a time raised the local peak with the hour's object count (a 5 M-message replay
/// writes three per hour, a 1 M one writes one: BENCHMARKS.md, session 12), for no gain in
/// time: the objects are decoded on the unit's task either way.
pub fn read_concurrency_for(data: &str) -> usize {
    match telemetry::store::StoreLocation::parse(data) {
        Ok(telemetry::store::StoreLocation::Local(_)) => 1,
        _ => analytics::config::DEFAULT_READ_CONCURRENCY,
    }
}

/// The emulated rollup functions' settings: the defaults, with the pass budget the deployed
/// worker sizes from its memory ([`analytics::config::pass_readings_for_memory`] of
/// [`WORKER`]'s), so that the local run passes over an hour and reads its units together
/// as the functions do, and its REPORT lines predict theirs; or the budget of
/// `IOTPIPE_ROLLUP_PASS_READINGS` (`lookup` reads the environment), as the functions take
/// it — more readings per pass, fewer passes over a large hour, more memory.
pub fn local_rollup_config(
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<analytics::RollupConfig> {
    let var = analytics::config::PASS_READINGS_ENV;
    let mut cfg = analytics::RollupConfig {
        pass_readings: analytics::config::pass_readings_for_memory(u64::from(WORKER.memory_mb)),
        ..analytics::RollupConfig::default()
    };
    if let Some(v) = lookup(var).filter(|v| !v.is_empty()) {
        let default = cfg.pass_readings;
        cfg.pass_readings = analytics::config::parse_pass_readings(&v).ok_or_else(|| {
            anyhow::anyhow!(
                "{var}={v:?} is not a whole number of readings, at least 1: unset it for the \
                 functions' default ({default}) or give the most readings one pass of a \
                 rollup unit may hold"
            )
        })?;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::{local_rollup_config, read_concurrency_for};

    #[test]
    fn a_local_directory_is_read_one_object_at_a_time_and_s3_as_the_functions_read_it() {
        assert_eq!(read_concurrency_for("/tmp/iotpipe-data"), 1);
        assert_eq!(read_concurrency_for("data"), 1);
        assert_eq!(
            read_concurrency_for("s3://bucket/prefix"),
            analytics::config::DEFAULT_READ_CONCURRENCY
        );
    }

    #[test]
    fn the_local_rollup_takes_the_functions_pass_budget() {
        let var = analytics::config::PASS_READINGS_ENV;
        let unset = local_rollup_config(|_| None).unwrap();
        // What the deployed worker of 1,024 MB takes (analytics' `Setup`).
        assert_eq!(unset.pass_readings, 894_784);
        let set = local_rollup_config(|v| (v == var).then(|| "750000".to_owned())).unwrap();
        assert_eq!(set.pass_readings, 750_000);
        for bad in ["0", "many", "-3"] {
            let err = local_rollup_config(|v| (v == var).then(|| bad.to_owned())).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}

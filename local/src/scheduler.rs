//! The emulated EventBridge Scheduler: fires the rollup handler on a fixed period with the
//! event a schedule sends, metered like a Lambda invocation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use futures::FutureExt;
use lambda_runtime::{Context, LambdaEvent};
use object_store::ObjectStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::meter::{Meter, ROLLUP};
use crate::stack::Counters;
use telemetry::metering::RollupRun;

/// A running schedule; [`Scheduler::stop`] ends it after the invocation in progress.
pub struct Scheduler {
    /// Tells the loop to stop.
    stop: watch::Sender<bool>,
    /// The loop.
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Runs [`scheduled_rollup_with`] `cfg` every `every`, the first time one period from
    /// now. A failed rollup is logged and left to the next run, as a scheduled Lambda's
    /// would be.
    pub fn start(
        every: Duration,
        store: Arc<dyn ObjectStore>,
        meter: Meter,
        counters: Arc<Counters>,
        cfg: analytics::RollupConfig,
    ) -> Self {
        let cfg = Arc::new(cfg);
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = rollup_task(store.clone(), meter.clone(), counters.clone(), cfg.clone()).await {
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

/// [`scheduled_rollup_with`] as an owned, boxed future: the scheduler task needs a future
/// the compiler can prove `Send` without higher-ranked lifetimes.
fn rollup_task(
    store: Arc<dyn ObjectStore>,
    meter: Meter,
    counters: Arc<Counters>,
    cfg: Arc<analytics::RollupConfig>,
) -> futures::future::BoxFuture<'static, anyhow::Result<analytics::RollupReport>> {
    async move { scheduled_rollup_with(&store, &meter, &counters, &cfg).await }.boxed()
}

/// The local rollup's settings: the defaults, with the pass budget of
/// `IOTPIPE_ROLLUP_PASS_READINGS` (`lookup` reads the environment) as the rollup function
/// takes it — more readings per pass, fewer passes over a large hour, more memory.
pub fn local_rollup_config(
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<analytics::RollupConfig> {
    let var = analytics::config::PASS_READINGS_ENV;
    let mut cfg = analytics::RollupConfig::default();
    if let Some(v) = lookup(var).filter(|v| !v.is_empty()) {
        cfg.pass_readings = analytics::config::parse_pass_readings(&v).ok_or_else(|| {
            anyhow::anyhow!(
                "{var}={v:?} is not a whole number of readings, at least 1: unset it for the \
                 default ({}) or give the most readings one pass of a rollup unit may hold",
                analytics::config::DEFAULT_PASS_READINGS
            )
        })?;
    }
    Ok(cfg)
}

/// Invokes the rollup handler as the scheduler would, metered, with the rollup settings
/// `cfg` ([`local_rollup_config`]; `iotpipe rollup --workers N`).
pub async fn scheduled_rollup_with(
    store: &Arc<dyn ObjectStore>,
    meter: &Meter,
    counters: &Counters,
    cfg: &analytics::RollupConfig,
) -> anyhow::Result<analytics::RollupReport> {
    counters
        .scheduler_invocations
        .fetch_add(1, Ordering::Relaxed);
    let event = LambdaEvent::new(scheduled_event(), Context::default());
    let started_at_ms = chrono::Utc::now().timestamp_millis();
    let report = meter
        .invoke(
            &ROLLUP,
            |r: &Result<_, _>| r.is_err(),
            analytics::handler::handle(event, store.clone(), cfg),
        )
        .await;
    if let Ok(mut runs) = counters.rollup_runs.lock() {
        runs.push(RollupRun {
            started_at_ms,
            ended_at_ms: chrono::Utc::now().timestamp_millis(),
            ok: report.is_ok(),
        });
    }
    let report = report.map_err(|e| anyhow::anyhow!("rollup failed: {e}"))?;
    counters.rollup_objects.fetch_add(
        (report.stats_files_written + report.state_objects_written + report.coarse.files_written)
            as u64,
        Ordering::Relaxed,
    );
    tracing::debug!(
        windows_updated = report.windows_updated,
        new_files = report.new_files,
        "rollup"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::local_rollup_config;

    #[test]
    fn the_local_rollup_takes_the_functions_pass_budget() {
        let var = analytics::config::PASS_READINGS_ENV;
        let unset = local_rollup_config(|_| None).unwrap();
        assert_eq!(
            unset.pass_readings,
            analytics::config::DEFAULT_PASS_READINGS
        );
        let set = local_rollup_config(|v| (v == var).then(|| "750000".to_owned())).unwrap();
        assert_eq!(set.pass_readings, 750_000);
        for bad in ["0", "many", "-3"] {
            let err = local_rollup_config(|v| (v == var).then(|| bad.to_owned())).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}

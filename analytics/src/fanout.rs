//! Fan-out on AWS: the planner enqueues units on SQS, worker invocations roll them up.
//!
//! ```text
//! rollup (planner) ── plan ──▶ ≤ fanout_min_units units? ── yes ─▶ run in-process (rollup::run_plan)
//!                                        │ no
//!                                        ▼
//!                 SendMessageBatch (≤ 10 entries, ≤ 256 KiB) ─▶ units queue ─▶ event-source mapping
//!                                                                    (MaximumConcurrency cap)
//!                                                                          ▼
//!                         rollup-worker: one unit per record ─▶ worker::run_hour under their leases
//!                         → SqsBatchResponse (only the failed units are retried; after
//!                           maxReceiveCount they go to the dead-letter queue)
//! ```
//!
//! The queue is an existing distributed engine: it gives at-least-once delivery,
//! retries with a visibility timeout, a concurrency cap and a dead-letter queue; the
//! unit's lease ([`crate::lease`]) makes a duplicate delivery harmless (it finds the unit
//! busy or up to date). The planner never waits for the workers: the partitions' markers
//! stay until a later plan finds all of the partition's units up to date, and deletes them
//! then ([`run_fanout`]). A unit enqueued twice (a plan repeated before its worker ran)
//! costs one message and a state read.
//!
//! The handler is generic over [`UnitQueue`], so the batching and the retry of only the
//! failed entries are tested without a network; [`SqsUnitQueue`] is the real one.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::RollupConfig;
use crate::pending;
use crate::planner::Plan;
use crate::rollup::{RollupError, RollupReport};
use crate::units::Unit;
use crate::worker::{self, UnitOutcome, UnitReport};

/// SQS `SendMessageBatch`: at most 10 entries per call.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// SQS `SendMessageBatch`: at most 256 KiB of message bodies per call (and per message).
pub const MAX_BATCH_BYTES: usize = 262_144;
/// Default smallest plan (in units) that is fanned out rather than run by the planner
/// itself: a unit of a 10,000-device hour takes about a second (BENCHMARKS.md), so eight
/// fit easily in one invocation, while a backlog (a first run, an outage) spreads out.
pub const DEFAULT_FANOUT_MIN_UNITS: usize = 8;

/// What a queue message of the units queue carries: one unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitMessage {
    /// The unit to roll up.
    pub unit: Unit,
}

/// One entry of a `SendMessageBatch` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    /// Entry id, unique within the call (SQS echoes it in its per-entry results).
    pub id: String,
    /// The message body (a [`UnitMessage`] as JSON).
    pub body: String,
}

/// An entry that SQS did not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEntry {
    /// The entry's id.
    pub id: String,
    /// SQS's error code.
    pub code: String,
    /// Whether the request itself is at fault (SQS's `SenderFault`): retrying it cannot
    /// succeed.
    pub sender_fault: bool,
}

/// The queue the planner sends units to: the port over SQS `SendMessageBatch`.
pub trait UnitQueue: Send + Sync {
    /// Sends one batch (≤ [`MAX_BATCH_ENTRIES`] entries, ≤ [`MAX_BATCH_BYTES`]); `Ok`
    /// holds the entries that failed (a partial failure), `Err` a failed call.
    fn send_batch(
        &self,
        entries: &[BatchEntry],
    ) -> impl Future<Output = Result<Vec<FailedEntry>, String>> + Send;
}

/// Retry policy of [`enqueue`]: capped exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls per batch before the remaining entries are given up (at least 1).
    pub attempts: u32,
    /// Backoff base: the n-th retry sleeps a random time below `base × 2ⁿ`.
    pub base: Duration,
    /// Longest sleep between two attempts.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        }
    }
}

/// Why units could not be enqueued. Their markers stay, so the next plan enqueues them
/// again: nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// Some entries still failed after the policy's attempts, or were refused as the
    /// sender's fault.
    #[error(
        "{} of {total} units could not be sent to the units queue (last error: {last}); \
         check the queue URL, the function's sqs:SendMessage permission and the queue's \
         health — the next run enqueues them again",
        units.len()
    )]
    Undelivered {
        /// The units not enqueued.
        units: Vec<Unit>,
        /// Units in the plan.
        total: usize,
        /// The last error seen.
        last: String,
    },
    /// A unit could not be serialised (cannot happen with the derived encoding).
    #[error("encoding a unit message: {0}")]
    Encode(#[from] serde_json::Error),
    /// Planning, or finishing the partitions, failed.
    #[error(transparent)]
    Rollup(#[from] RollupError),
}

/// Sends every unit as its own message, in batches within the SQS limits, retrying only
/// the entries that failed. Returns the number of messages sent.
pub async fn enqueue(
    queue: &impl UnitQueue,
    units: &[Unit],
    policy: RetryPolicy,
) -> Result<usize, FanoutError> {
    let mut entries = Vec::with_capacity(units.len());
    for (i, unit) in units.iter().enumerate() {
        let body = serde_json::to_string(&UnitMessage { unit: unit.clone() })?;
        entries.push((
            unit,
            BatchEntry {
                id: i.to_string(),
                body,
            },
        ));
    }
    let mut undelivered = Vec::new();
    let mut last = String::new();
    for batch in batches(&entries) {
        let mut todo: Vec<BatchEntry> = batch.iter().map(|(_, e)| e.clone()).collect();
        for attempt in 0..policy.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(backoff(policy, attempt)).await;
            }
            match queue.send_batch(&todo).await {
                Ok(failed) => {
                    let mut retry = Vec::new();
                    for f in failed {
                        last = format!("{}: {}", f.id, f.code);
                        let Some(entry) = todo.iter().find(|e| e.id == f.id) else {
                            continue;
                        };
                        if f.sender_fault {
                            // Resending the same entry cannot succeed.
                            undelivered.push(entry.id.clone());
                        } else {
                            retry.push(entry.clone());
                        }
                    }
                    todo = retry;
                }
                Err(e) => last = e,
            }
            if todo.is_empty() {
                break;
            }
        }
        undelivered.extend(todo.into_iter().map(|e| e.id));
    }
    if undelivered.is_empty() {
        return Ok(entries.len());
    }
    let units = entries
        .iter()
        .filter(|(_, e)| undelivered.contains(&e.id))
        .map(|(u, _)| (*u).clone())
        .collect();
    Err(FanoutError::Undelivered {
        units,
        total: entries.len(),
        last,
    })
}

/// Cuts `entries` into batches of at most [`MAX_BATCH_ENTRIES`] and [`MAX_BATCH_BYTES`]
/// of bodies.
fn batches<T>(entries: &[(T, BatchEntry)]) -> Vec<&[(T, BatchEntry)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, e)) in entries.iter().enumerate() {
        let full = i - start == MAX_BATCH_ENTRIES || bytes + e.body.len() > MAX_BATCH_BYTES;
        if i > start && full {
            out.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += e.body.len();
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// Full jitter: a random time below `min(cap, base × 2^attempt)`.
fn backoff(policy: RetryPolicy, attempt: u32) -> Duration {
    let ceiling = policy
        .base
        .saturating_mul(1 << attempt.min(16))
        .min(policy.cap);
    // The clock's sub-second nanoseconds are random enough to spread retries apart.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    ceiling.mul_f64(f64::from(nanos) / 1e9)
}

/// What a planner invocation did when it fanned its plan out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutReport {
    /// Whether every telemetry object was listed (rather than only the markers).
    pub full_scan: bool,
    /// Telemetry objects listed in the partitions looked at.
    pub files_scanned: usize,
    /// Units that needed work.
    pub units_planned: usize,
    /// Messages sent to the units queue (one per unit).
    pub units_enqueued: usize,
    /// Partitions found up to date whose markers were deleted.
    pub partitions_finished: usize,
}

/// What the planner did: the units ran in this invocation, or were enqueued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PlannerReport {
    /// A small plan, rolled up in-process.
    InProcess(RollupReport),
    /// A large plan, sent to the units queue.
    FannedOut(FanoutReport),
}

/// Plans, then runs the plan in this process when it has at most `min_units` units (or
/// there is no queue), or enqueues one message per unit otherwise. Partitions with no
/// unit left to do have their markers deleted in both cases.
pub async fn run_fanout<Q: UnitQueue>(
    store: Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    queue: Option<&Q>,
    min_units: usize,
    deadline: Option<SystemTime>,
) -> Result<PlannerReport, FanoutError> {
    let plan = crate::planner::plan(&store, cfg).await?;
    let units: Vec<Unit> = plan.units().cloned().collect();
    let Some(queue) = queue.filter(|_| units.len() > min_units) else {
        let report = crate::rollup::run_plan(store, cfg, plan, deadline).await?;
        return Ok(PlannerReport::InProcess(report));
    };
    let units_enqueued = enqueue(queue, &units, RetryPolicy::default()).await?;
    let finished = finish_done(&store, cfg, &plan).await?;
    info!(
        units = units.len(),
        enqueued = units_enqueued,
        partitions_finished = finished,
        "rollup plan fanned out"
    );
    Ok(PlannerReport::FannedOut(FanoutReport {
        full_scan: plan.full_scan,
        files_scanned: plan.files_scanned,
        units_planned: units.len(),
        units_enqueued,
        partitions_finished: finished,
    }))
}

/// Deletes the markers of the plan's partitions that need no work (every unit up to date:
/// the workers of an earlier fan-out finished them).
async fn finish_done(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    plan: &Plan,
) -> Result<usize, RollupError> {
    let busy = plan
        .partitions
        .iter()
        .filter(|p| !p.units.is_empty())
        .map(|p| p.partition.clone())
        .collect();
    crate::rollup::finish_partitions(store, cfg, plan, &busy).await?;
    Ok(plan.partitions.len() - busy.len())
}

/// The SQS port over the real client.
#[derive(Debug, Clone)]
pub struct SqsUnitQueue {
    /// The SQS client (built once per cold start).
    pub client: aws_sdk_sqs::Client,
    /// The units queue's URL.
    pub queue_url: String,
}

impl UnitQueue for SqsUnitQueue {
    async fn send_batch(&self, entries: &[BatchEntry]) -> Result<Vec<FailedEntry>, String> {
        let mut req = self.client.send_message_batch().queue_url(&self.queue_url);
        for e in entries {
            let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(&e.id)
                .message_body(&e.body)
                .build()
                .map_err(|e| e.to_string())?;
            req = req.entries(entry);
        }
        let out = req
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        Ok(out
            .failed
            .into_iter()
            .map(|f| FailedEntry {
                id: f.id,
                code: f.code,
                sender_fault: f.sender_fault,
            })
            .collect())
    }
}

/// The worker invocation: one unit per SQS record, each under its lease; the units of an
/// hour are read together when they fit one pass of [`RollupConfig::pass_readings`]
/// ([`worker::run_hour`]: each object decoded once for them all), otherwise one after the
/// other (memory stays one pass's). A unit that failed, was busy (another worker holds it)
/// or deferred — and a record whose body is not a unit — is reported in
/// `batchItemFailures`, so SQS redelivers only those after the visibility timeout (and
/// moves them to the dead-letter queue after `maxReceiveCount`). Records not started
/// before `deadline` are reported too. Objects a unit could not read get a pending marker,
/// so a later plan retries them. A unit of another bucket count than `cfg.buckets` (planned
/// before a redeployment) is dropped: the current planner plans its hour again.
pub async fn handle_units(
    event: SqsEvent,
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    owner: &str,
    deadline: Option<SystemTime>,
) -> SqsBatchResponse {
    handle_units_reporting(event, store, cfg, owner, deadline)
        .await
        .response
}

/// What a worker invocation did ([`handle_units_reporting`]).
#[derive(Debug, Default)]
pub struct UnitsHandled {
    /// The partial-batch response: the records SQS redelivers.
    pub response: SqsBatchResponse,
    /// The report of each unit the invocation ran, in order (a unit that failed with an
    /// error, a record that was not a unit or was not started has none).
    pub units: Vec<UnitReport>,
    /// The units that failed with an error, each with its error.
    pub errors: Vec<String>,
}

/// [`handle_units`], also returning each unit's report: the local stack's emulated
/// event-source mapping adds them up for its run summary.
pub async fn handle_units_reporting(
    event: SqsEvent,
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    owner: &str,
    deadline: Option<SystemTime>,
) -> UnitsHandled {
    let mut response = SqsBatchResponse::default();
    let mut units = Vec::new();
    let mut errors = Vec::new();
    let fail = |response: &mut SqsBatchResponse, id: &str, reason: &str| {
        warn!(message_id = %id, reason, "unit not done; SQS redelivers it");
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id.to_string();
        response.batch_item_failures.push(failure);
    };
    // The batch's units, then grouped by hour ([`crate::units::hour_groups`]): the units
    // of an hour are read together ([`worker::run_hour`]).
    let mut given: Vec<(String, Unit)> = Vec::new();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let message: UnitMessage =
            match serde_json::from_str(record.body.as_deref().unwrap_or_default()) {
                Ok(m) => m,
                Err(e) => {
                    fail(&mut response, &id, &format!("not a unit message: {e}"));
                    continue;
                }
            };
        if message.unit.buckets != cfg.buckets.max(1) {
            // Planned under another bucket count (a redeployment while messages were in
            // flight): the current layout's planner plans the hour again, and stats of the
            // old layout would only be removed. Done, not retried.
            warn!(unit = %message.unit, buckets = cfg.buckets, "unit of another bucket count; dropped");
            continue;
        }
        given.push((id, message.unit));
    }
    let refs: Vec<&Unit> = given.iter().map(|(_, u)| u).collect();
    let groups: Vec<Vec<(String, Unit)>> = crate::units::hour_groups(&refs, usize::MAX)
        .into_iter()
        .map(|g| g.into_iter().map(|i| given[i].clone()).collect())
        .collect();
    let mut slowest = Duration::ZERO;
    for (g, group) in groups.into_iter().enumerate() {
        if g > 0 && !crate::rollup::time_for_another(deadline, slowest) {
            for (id, _) in &group {
                fail(&mut response, id, "deadline near");
            }
            continue;
        }
        let started = Instant::now();
        let hour: Vec<Unit> = group.iter().map(|(_, u)| u.clone()).collect();
        let results = worker::run_hour(store, cfg, &hour, owner).await;
        slowest = slowest.max(started.elapsed());
        for ((id, unit), result) in group.into_iter().zip(results) {
            match result {
                Ok(report) => {
                    for skipped in &report.skipped_files {
                        if let Err(e) =
                            pending::ensure(store, &cfg.pending_prefix, &skipped.path).await
                        {
                            warn!(path = %skipped.path, error = %e, "cannot mark a skipped object");
                        }
                    }
                    match report.outcome {
                        UnitOutcome::Done | UnitOutcome::UpToDate => {
                            info!(%unit, outcome = ?report.outcome, "unit rolled up");
                        }
                        UnitOutcome::Busy => {
                            fail(&mut response, &id, "busy: another worker holds its lease");
                        }
                        UnitOutcome::Deferred => fail(
                            &mut response,
                            &id,
                            "deferred: an aggregated object is unreadable",
                        ),
                    }
                    units.push(report);
                }
                Err(e) => {
                    let e = e.to_string();
                    fail(&mut response, &id, &e);
                    errors.push(format!("unit {unit}: {e}"));
                }
            }
        }
    }
    UnitsHandled {
        response,
        units,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use telemetry::Partition;

    /// A queue that fails the entries it is told to, a given number of times each.
    #[derive(Default)]
    struct ScriptedQueue {
        calls: Mutex<Vec<Vec<String>>>,
        fail_times: Mutex<std::collections::HashMap<String, u32>>,
        sender_fault: bool,
    }

    impl UnitQueue for ScriptedQueue {
        async fn send_batch(&self, entries: &[BatchEntry]) -> Result<Vec<FailedEntry>, String> {
            self.calls
                .lock()
                .unwrap()
                .push(entries.iter().map(|e| e.id.clone()).collect());
            let mut fail_times = self.fail_times.lock().unwrap();
            let mut failed = Vec::new();
            for e in entries {
                if let Some(n) = fail_times.get_mut(&e.id).filter(|n| **n > 0) {
                    *n -= 1;
                    failed.push(FailedEntry {
                        id: e.id.clone(),
                        code: "InternalError".into(),
                        sender_fault: self.sender_fault,
                    });
                }
            }
            Ok(failed)
        }
    }

    fn units(n: u32) -> Vec<Unit> {
        let partition = Partition::of_millis(1_764_086_700_000);
        (0..n)
            .map(|bucket| Unit {
                partition: partition.clone(),
                bucket,
                buckets: n,
            })
            .collect()
    }

    const FAST: RetryPolicy = RetryPolicy {
        attempts: 3,
        base: Duration::ZERO,
        cap: Duration::ZERO,
    };

    #[tokio::test]
    async fn units_go_out_in_batches_of_at_most_ten() {
        let queue = ScriptedQueue::default();
        let sent = enqueue(&queue, &units(23), FAST).await.unwrap();
        assert_eq!(sent, 23);
        let sizes: Vec<usize> = queue.calls.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 3]);
    }

    #[tokio::test]
    async fn only_the_failed_entries_are_sent_again() {
        let queue = ScriptedQueue::default();
        queue.fail_times.lock().unwrap().insert("3".into(), 2);
        enqueue(&queue, &units(5), FAST).await.unwrap();
        let calls = queue.calls.lock().unwrap().clone();
        assert_eq!(calls, [vec!["0", "1", "2", "3", "4"], vec!["3"], vec!["3"]]);
    }

    #[tokio::test]
    async fn entries_still_failing_after_the_attempts_are_named_in_the_error() {
        let queue = ScriptedQueue::default();
        queue.fail_times.lock().unwrap().insert("1".into(), 99);
        let err = enqueue(&queue, &units(3), FAST).await.unwrap_err();
        match err {
            FanoutError::Undelivered {
                units: u, total, ..
            } => {
                assert_eq!(total, 3);
                assert_eq!(u, vec![units(3)[1].clone()]);
            }
            other => panic!("{other}"),
        }
        assert_eq!(queue.calls.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_sender_fault_is_not_retried() {
        let queue = ScriptedQueue {
            sender_fault: true,
            ..ScriptedQueue::default()
        };
        queue.fail_times.lock().unwrap().insert("0".into(), 1);
        assert!(enqueue(&queue, &units(2), FAST).await.is_err());
        assert_eq!(queue.calls.lock().unwrap().len(), 1);
    }

    fn record(id: &str, body: String) -> aws_lambda_events::event::sqs::SqsMessage {
        let mut r = aws_lambda_events::event::sqs::SqsMessage::default();
        r.message_id = Some(id.into());
        r.body = Some(body);
        r
    }

    #[tokio::test]
    async fn a_unit_of_another_bucket_count_is_dropped_and_junk_is_reported() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let cfg = RollupConfig::default();
        // An object in the unit's hour: a worker that ran the unit would leave a state, or a
        // marker of the unreadable object, under stats/.
        let hour = units(4)[1].partition.path();
        object_store::ObjectStoreExt::put(
            &store,
            &object_store::path::Path::from(format!("telemetry/{hour}/x.parquet")),
            object_store::PutPayload::from_static(b"not parquet"),
        )
        .await
        .unwrap();
        let old_layout = serde_json::to_string(&UnitMessage {
            unit: units(4)[1].clone(),
        })
        .unwrap();
        let mut event = SqsEvent::default();
        event.records = vec![record("old", old_layout), record("junk", "{}".into())];
        let response = handle_units(event, &store, &cfg, "test", None).await;
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(failed, ["junk"]);
        let stats = object_store::path::Path::from("stats");
        let written: Vec<_> =
            futures::TryStreamExt::try_collect::<Vec<_>>(store.list(Some(&stats)))
                .await
                .unwrap();
        assert!(written.is_empty(), "{written:?}");
    }

    #[test]
    fn batches_respect_the_byte_limit() {
        let big = "x".repeat(MAX_BATCH_BYTES / 3 + 1);
        let entries: Vec<((), BatchEntry)> = (0..5)
            .map(|i| {
                (
                    (),
                    BatchEntry {
                        id: i.to_string(),
                        body: big.clone(),
                    },
                )
            })
            .collect();
        let sizes: Vec<usize> = batches(&entries).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
    }
}

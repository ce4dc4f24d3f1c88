//! The emulated units queue (SQS) and the worker function's event-source mapping: the
//! rollup's fan-out ([`analytics::fanout`]), run locally as the template deploys it.
//!
//! ```text
//! planner (rollup) ── plan > fanout_min_units ──▶ UnitsQueue (SendMessageBatch)
//!      ▲                                              │ receive ≤ BATCH_SIZE
//!      │                                              ▼
//!      │                 worker invocations (≤ concurrency at once, metered as `worker`)
//!      │                        │ SqsBatchResponse: only the failed units come back,
//!      │                        ▼ visible again at the next run; after MAX_RECEIVE_COUNT
//!      │                          receives they go to the dead-letter queue
//!      └── the next planner run finds the hour's units up to date and finishes it
//!          (1h/1d and fleet windows, markers deleted)
//! ```
//!
//! The worker invocations run [`analytics::fanout::handle_units_reporting`], the code the
//! `rollup-worker` Lambda runs, on events built as SQS sends them. A message that failed
//! becomes visible again at the next drain — the next scheduled rollup stands in for the
//! visibility timeout — so a unit another run holds is not retried at once five times.
//! The queue lives in memory: a message lost with the process is harmless, since the
//! partition's pending markers stay until every unit of the hour is up to date, and the
//! next plan enqueues the unit again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use analytics::fanout::{BatchEntry, FailedEntry, UnitQueue, UnitsHandled};
use analytics::worker::UnitReport;
use aws_lambda_events::event::sqs::SqsEvent;
use object_store::ObjectStore;

use crate::meter::Meter;
use telemetry::metering::WORKER;

/// Units per worker invocation at most: the template's `BatchSize` of the units queue's
/// event-source mapping.
pub const BATCH_SIZE: usize = 4;
/// Receives of a message before SQS moves it to the dead-letter queue: the template's
/// `maxReceiveCount` of the units queue's redrive policy.
pub const MAX_RECEIVE_COUNT: u32 = 5;
/// The template's default `RollupWorkerMaxConcurrency`; locally the workers are also
/// capped at the machine's cores ([`worker_concurrency`]).
pub const TEMPLATE_MAX_CONCURRENCY: usize = 10;

/// Worker invocations run at once locally: the template's default cap, and no more than
/// the machine has cores (each holds one unit's memory; on AWS each has its own).
pub fn worker_concurrency() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(TEMPLATE_MAX_CONCURRENCY)
}

/// One message of the queue.
#[derive(Debug, Clone)]
struct Message {
    id: String,
    body: String,
    receive_count: u32,
}

#[derive(Debug, Default)]
struct State {
    /// Messages a receive may take.
    visible: VecDeque<Message>,
    /// Messages a worker failed: visible again at the next drain.
    in_flight_failed: Vec<Message>,
    /// Messages received [`MAX_RECEIVE_COUNT`] times without success.
    dead: Vec<Message>,
    /// Messages ever sent (their ids).
    sent: u64,
    /// SQS API requests: SendMessageBatch, ReceiveMessage, DeleteMessageBatch.
    requests: u64,
}

/// The emulated units queue; clones share it.
#[derive(Debug, Clone, Default)]
pub struct UnitsQueue {
    state: Arc<Mutex<State>>,
}

/// What one drain of the queue did.
#[derive(Debug, Default)]
pub struct Drained {
    /// Every unit report of the worker invocations, in completion order.
    pub units: Vec<UnitReport>,
    /// Worker invocations.
    pub invocations: u64,
    /// Units that failed with an error (the message comes back at the next drain), with
    /// the error.
    pub errors: Vec<String>,
    /// Messages moved to the dead-letter queue by this drain.
    pub dead_lettered: usize,
}

impl UnitQueue for UnitsQueue {
    async fn send_batch(&self, entries: &[BatchEntry]) -> Result<Vec<FailedEntry>, String> {
        let mut s = self.lock();
        s.requests += 1;
        for e in entries {
            s.sent += 1;
            let id = format!("local-unit-{}", s.sent);
            s.visible.push_back(Message {
                id,
                body: e.body.clone(),
                receive_count: 0,
            });
        }
        Ok(Vec::new())
    }
}

impl UnitsQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// SQS API requests made so far (what SQS bills).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Messages in the dead-letter queue.
    pub fn dead_letters(&self) -> usize {
        self.lock().dead.len()
    }

    /// Messages waiting (visible or coming back at the next drain).
    pub fn waiting(&self) -> usize {
        let s = self.lock();
        s.visible.len() + s.in_flight_failed.len()
    }

    /// Takes up to [`BATCH_SIZE`] visible messages, as one ReceiveMessage.
    fn receive(&self) -> Vec<Message> {
        let mut s = self.lock();
        if s.visible.is_empty() {
            return Vec::new();
        }
        s.requests += 1;
        let n = s.visible.len().min(BATCH_SIZE);
        let mut batch: Vec<Message> = s.visible.drain(..n).collect();
        for m in &mut batch {
            m.receive_count += 1;
        }
        batch
    }

    /// Runs worker invocations until no message is visible: up to `concurrency` at once,
    /// each on a batch of up to [`BATCH_SIZE`] units, metered as the `worker` function.
    /// Messages the workers report failed wait for the next drain, or go to the
    /// dead-letter queue after [`MAX_RECEIVE_COUNT`] receives; the others are deleted.
    pub async fn drain(
        &self,
        store: &Arc<dyn ObjectStore>,
        cfg: &analytics::RollupConfig,
        meter: &Meter,
        concurrency: usize,
    ) -> Drained {
        let dead_before = {
            let mut s = self.lock();
            let back = std::mem::take(&mut s.in_flight_failed);
            s.visible.extend(back);
            s.dead.len()
        };
        let mut drained = Drained::default();
        let cfg = Arc::new(cfg.clone());
        // Each invocation is a task of its own, as each is its own Lambda: on a
        // multi-threaded runtime the workers run on as many cores, and each one's Duration is
        // its own (futures polled by one task would take turns). Dropping the set aborts them.
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < concurrency.max(1) {
                let batch = self.receive();
                if batch.is_empty() {
                    break;
                }
                drained.invocations += 1;
                let owner = format!("worker-local-{}", drained.invocations);
                let (store, cfg, meter) = (store.clone(), cfg.clone(), meter.clone());
                let event = sqs_event(&batch);
                running.spawn(async move {
                    let handled = meter
                        .invoke(
                            &WORKER,
                            |_: &UnitsHandled| false,
                            analytics::fanout::handle_units_reporting(
                                event, &store, &cfg, &owner, None,
                            ),
                        )
                        .await;
                    (batch, handled)
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (batch, handled) = match joined {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: the runtime is shutting down, and the in-memory queue with it
                // (the partitions' markers keep the units for the next run).
                Err(_) => continue,
            };
            self.settle(batch, &handled);
            drained.errors.extend(handled.errors);
            drained.units.extend(handled.units);
        }
        drained.dead_lettered = self.lock().dead.len() - dead_before;
        drained
    }

    /// Deletes the batch's messages that succeeded (one DeleteMessageBatch, as the
    /// event-source mapping does) and keeps the failed ones for the next drain or the
    /// dead-letter queue.
    fn settle(&self, batch: Vec<Message>, handled: &UnitsHandled) {
        let failed: std::collections::HashSet<&str> = handled
            .response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        let mut s = self.lock();
        if batch.iter().any(|m| !failed.contains(m.id.as_str())) {
            s.requests += 1;
        }
        for m in batch {
            if !failed.contains(m.id.as_str()) {
                continue;
            }
            if m.receive_count >= MAX_RECEIVE_COUNT {
                tracing::error!(
                    message_id = %m.id,
                    body = %m.body,
                    "unit received {MAX_RECEIVE_COUNT} times without success: moved to the \
                     dead-letter queue (on AWS its alarm fires); `iotpipe rollup` rolls the \
                     hour up again"
                );
                s.dead.push(m);
            } else {
                s.in_flight_failed.push(m);
            }
        }
    }
}

/// The event Lambda's SQS poller hands the worker for `batch`, built from the JSON SQS
/// sends (so the handler parses what it would parse on AWS).
fn sqs_event(batch: &[Message]) -> SqsEvent {
    let records: Vec<serde_json::Value> = batch
        .iter()
        .map(|m| {
            serde_json::json!({
                "messageId": m.id,
                "receiptHandle": format!("local-receipt-{}-{}", m.id, m.receive_count),
                "body": m.body,
                "attributes": {
                    "ApproximateReceiveCount": m.receive_count.to_string(),
                    "SentTimestamp": chrono::Utc::now().timestamp_millis().to_string(),
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:local:000000000000:iotpipe-rollup-units",
                "awsRegion": "local",
            })
        })
        .collect();
    // The records above hold every field SqsEvent requires.
    serde_json::from_value(serde_json::json!({ "Records": records }))
        .unwrap_or_else(|e| unreachable!("SQS event literal: {e}"))
}

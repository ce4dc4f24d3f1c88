//! The rollup's fan-out in the local stack ([`local::scheduler::LocalRollup`]): a large
//! plan goes to the emulated units queue and worker invocations, as the template deploys
//! it, with the in-process rollup's result; failed units come back, then go to the
//! dead-letter queue.

// Test helpers outside #[test] functions panic on bad fixtures by design.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use analytics::{Group, Query, RollupConfig, Window};
use local::meter::Meter;
use local::scheduler::LocalRollup;
use local::stack::Counters;
use local::units_queue::{BATCH_SIZE, MAX_RECEIVE_COUNT, UnitsQueue};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use telemetry::after_write::{AfterWrite, Write, WriteHook};
use telemetry::parquet_writer::{ParquetWriterConfig, PartitionedWriter};
use telemetry::schema::{readings_to_batch, telemetry_schema};
use telemetry::{Partition, Reading};

/// 2026-11-25T16:00:00Z.
const H16: i64 = 1_795_622_400_000;
const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;

/// Eight buckets over two hours: 16 units, more than the template's fan-out threshold (8).
fn cfg() -> RollupConfig {
    RollupConfig {
        buckets: 8,
        ..RollupConfig::default()
    }
}

fn rollup(cfg: RollupConfig) -> LocalRollup {
    LocalRollup {
        cfg,
        queue: UnitsQueue::default(),
        min_units: analytics::fanout::DEFAULT_FANOUT_MIN_UNITS,
        workers: 2,
    }
}

/// Two hours of 40 devices' readings, written as the Firehose emulation writes them (one
/// file per hour, then a second holding part of the first again, as a redelivery would),
/// each marked pending.
async fn seed(store: &Arc<dyn ObjectStore>) {
    let mut writer = PartitionedWriter::new(
        store.clone(),
        telemetry_schema(),
        ParquetWriterConfig::default(),
    );
    let mut files = Vec::new();
    for rows in [240, 50] {
        for hour in [H16 - HOUR, H16] {
            let readings: Vec<Reading> = (0..rows)
                .map(|i| Reading {
                    device_id: format!("sensor-{:03}", i % 40),
                    seq: i / 40,
                    event_time: hour + (i / 40) * MINUTE + (i % 40) * 1_000,
                    received_at: hour + (i / 40) * MINUTE + 250,
                    metric: "temperature".into(),
                    value: (i % 40) as f64 + (i / 40) as f64 / 10.0,
                    fw: None,
                })
                .collect();
            let batch = readings_to_batch(&readings).unwrap();
            let partition = Partition::of_millis(hour);
            files.extend(writer.write(&partition, &batch).await.unwrap());
        }
        files.extend(writer.flush().await.unwrap());
    }
    assert_eq!(files.len(), 4);
    for f in files {
        analytics::pending::mark(store, analytics::config::DEFAULT_PENDING_PREFIX, &f.path)
            .await
            .unwrap();
    }
}

fn invocations(meter: &Meter, function: &str) -> u64 {
    meter
        .report()
        .iter()
        .find(|f| f.function == function)
        .map_or(0, |f| f.invocations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_plan_is_fanned_out_to_worker_invocations_with_the_in_process_result() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let reference: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    seed(&store).await;
    seed(&reference).await;
    let in_process = analytics::run_rollup(reference.clone(), &cfg())
        .await
        .unwrap();
    assert_eq!(in_process.units_planned, 16);

    let rollup = rollup(cfg());
    let (meter, counters) = (Meter::new(), Counters::default());
    let report = rollup.run(&store, &meter, &counters).await.unwrap();

    // The summary adds the invocations up to what the in-process run reports.
    assert_eq!(report.units_planned, 16);
    assert_eq!(report.units_done, 16);
    assert_eq!(report.partitions_touched, 2);
    assert_eq!(report.new_files, in_process.new_files);
    assert_eq!(report.rows_read, in_process.rows_read);
    assert_eq!(report.duplicates_dropped, in_process.duplicates_dropped);
    assert!(report.duplicates_dropped > 0);
    assert_eq!(report.windows_updated, in_process.windows_updated);
    assert_eq!(report.coarse.hours, 2, "{report:?}");
    // The planner twice (the plan, then the finishing run), 16 units in batches of 4.
    assert_eq!(invocations(&meter, "rollup"), 2);
    assert_eq!(invocations(&meter, "worker"), 16 / BATCH_SIZE as u64);
    // SendMessageBatch of 10 and 6, a ReceiveMessage and a DeleteMessageBatch per batch.
    assert_eq!(rollup.queue.requests(), 2 + 2 * 4);
    assert_eq!(rollup.queue.waiting(), 0);

    // Every window the queries serve equals the in-process rollup's.
    for window in Window::ALL {
        for group in [Group::Device, Group::Fleet] {
            let q = Query {
                window,
                group,
                ..Query::default()
            };
            let fanned_out = analytics::query(store.clone(), &q).await.unwrap();
            assert!(!fanned_out.is_empty(), "{window:?} {group}");
            let expected = analytics::query(reference.clone(), &q).await.unwrap();
            assert_eq!(fanned_out, expected, "{window:?} {group}");
        }
    }
    // The markers are gone: the next run has nothing to plan, in one invocation.
    let next = rollup.run(&store, &meter, &counters).await.unwrap();
    assert_eq!(next.units_planned, 0);
    assert_eq!(invocations(&meter, "rollup"), 3);
    assert_eq!(invocations(&meter, "worker"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_that_keeps_failing_goes_to_the_dead_letter_queue_and_fails_the_run() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    seed(&store).await;
    let cfg = cfg();
    // Another run holds one unit's lease (a killed `iotpipe up`'s, say) for longer than
    // this test: the unit is busy at every receive.
    let held = analytics::units::Unit {
        partition: Partition::of_millis(H16),
        bucket: 3,
        buckets: 8,
    };
    let _lease =
        analytics::lease::acquire(&store, &held.lease_prefix(&cfg), "other", cfg.lease_ttl)
            .await
            .unwrap()
            .unwrap();
    let rollup = rollup(cfg);
    let (meter, counters) = (Meter::new(), Counters::default());
    for receive in 1..MAX_RECEIVE_COUNT {
        let report = rollup.run(&store, &meter, &counters).await.unwrap();
        assert!(report.units_busy >= 1, "receive {receive}: {report:?}");
        assert_eq!(rollup.queue.waiting(), 1, "receive {receive}");
        assert_eq!(rollup.queue.dead_letters(), 0);
    }
    let err = rollup.run(&store, &meter, &counters).await.unwrap_err();
    assert!(err.to_string().contains("dead-letter"), "{err}");
    assert_eq!(rollup.queue.dead_letters(), 1);
    assert_eq!(rollup.queue.waiting(), 0);
    // The other 15 units were rolled up by the first run's workers.
    let stats = analytics::query(
        store.clone(),
        &Query {
            window: Window::M1,
            ..Query::default()
        },
    )
    .await
    .unwrap();
    assert!(!stats.is_empty());
}

/// Counts the stats writes in progress at once (clones share the counts); each holds its
/// thread for a while, as a unit's CPU-bound work does.
#[derive(Debug, Clone, Default)]
struct Overlap(Arc<(AtomicUsize, AtomicUsize)>);

#[async_trait::async_trait]
impl WriteHook for Overlap {
    async fn written(&self, _: Write, location: &Path) -> object_store::Result<()> {
        let (now, most) = &*self.0;
        if location.as_ref().contains("window=1m") {
            most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(40));
            now.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn deleted(&self, _: &Path) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_invocations_run_at_once_on_two_threads() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    seed(&inner).await;
    let overlap = Overlap::default();
    let store: Arc<dyn ObjectStore> = Arc::new(AfterWrite::new(inner, overlap.clone()));
    let report = rollup(cfg())
        .run(&store, &Meter::new(), &Counters::default())
        .await
        .unwrap();
    assert_eq!(report.units_done, 16);
    // Polled by one task, the invocations would take turns: one stats write at a time.
    assert_eq!(overlap.0.1.load(Ordering::SeqCst), 2);
}

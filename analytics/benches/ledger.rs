//! Throughput of the delivery ledger: the same busy hour of telemetry as the aggregation
//! bench (500 devices, 540 000 readings, a tenth redelivered), into 1-minute windows.
//!
//! `cargo bench -p analytics --bench ledger`

// Set-up that cannot work should stop the benchmark loudly.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use analytics::Window;
use analytics::ledger::{DEFAULT_ALLOWED_LATENESS_MS, LedgerBuilder};
use arrow_array::RecordBatch;
use criterion::{Criterion, Throughput, criterion_main};
use telemetry::Reading;
use telemetry::schema::readings_to_batch;

/// 500 devices × 3 metrics × one message every 10 s for an hour = 540 000 readings,
/// followed by a redelivered tenth of them; every 100th message never arrives.
fn hour_of_telemetry() -> Vec<RecordBatch> {
    let start = 1_795_622_400_000_i64;
    let mut readings = Vec::new();
    for tick in 0..360_i64 {
        for device in 0..500 {
            if (tick * 500 + device) % 100 == 99 {
                continue;
            }
            for (m, metric) in ["temperature", "humidity", "battery"].iter().enumerate() {
                readings.push(Reading {
                    device_id: format!("sensor-{device:06}"),
                    seq: tick,
                    event_time: start + tick * 10_000 + device,
                    received_at: start + tick * 10_000 + device + 300,
                    metric: (*metric).into(),
                    value: (tick * 7 + device * 3 + m as i64) as f64 * 0.01,
                    fw: Some("1.4.2".into()),
                });
            }
        }
    }
    let redelivered: Vec<Reading> = readings.iter().step_by(10).cloned().collect();
    readings.extend(redelivered);
    readings
        .chunks(8192)
        .map(|chunk| readings_to_batch(chunk).expect("valid readings"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let batches = hour_of_telemetry();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut group = c.benchmark_group("ledger");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("one_hour_into_1m_windows", |b| {
        b.iter(|| {
            let mut builder = LedgerBuilder::new(None, None);
            for batch in black_box(&batches) {
                builder.add_batch(batch).expect("valid batch");
            }
            builder.finish(Window::M1, DEFAULT_ALLOWED_LATENESS_MS, None)
        })
    });
    group.finish();
}

mod group {
    // `criterion_group!` defines an undocumented public function.
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);

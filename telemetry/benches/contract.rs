//! Criterion benchmarks of the data contract: validating payloads, writing Parquet, and
//! reading the transform's rows back.
//!
//! `cargo bench -p telemetry --bench contract`

// Benchmarks abort on a broken fixture, like tests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use object_store::memory::InMemory;
use std::borrow::Cow;
use telemetry::parquet_writer::{ParquetWriterConfig, PartitionedWriter};
use telemetry::schema::{readings_to_batch, telemetry_schema};

use telemetry::row::RowReader;
use telemetry::{
    MessageRef, Partition, Reading, ReadingRef, StreamRecordRef, ValidationConfig,
    validate_payload, validate_payload_borrowed,
};

const NOW: i64 = 1_764_078_300_123;

fn payload(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"device_id":"sensor-000042","seq":{seq},"ts":{NOW},"metrics":{{"temperature":21.53,"humidity":40.1,"battery":3.712}},"fw":"1.4.2"}}"#
    )
    .into_bytes()
}

fn validation(c: &mut Criterion) {
    let cfg = ValidationConfig::default();
    let good = payload(1);
    let batch = format!(
        "[{}]",
        (0..50)
            .map(|i| String::from_utf8(payload(i)).unwrap())
            .collect::<Vec<_>>()
            .join(",")
    )
    .into_bytes();
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one message (3 metrics)", |b| {
        b.iter(|| validate_payload(black_box(&good), "dt/f/sensor-000042/telemetry", NOW, &cfg))
    });
    // What the transform and ingest run: the same judgement, the messages kept borrowed.
    g.bench_function("one message (3 metrics), borrowed", |b| {
        b.iter(|| {
            validate_payload_borrowed(black_box(&good), "dt/f/sensor-000042/telemetry", NOW, &cfg)
        })
    });
    g.bench_function("malformed json", |b| {
        b.iter(|| {
            validate_payload(
                black_box(b"{\"device_id\":"),
                "dt/f/sensor-000042/telemetry",
                NOW,
                &cfg,
            )
        })
    });
    g.throughput(Throughput::Elements(50));
    g.bench_function("device batch of 50", |b| {
        b.iter(|| validate_payload(black_box(&batch), "dt/f/sensor-000042/telemetry", NOW, &cfg))
    });
    g.finish();
}

fn parquet(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let readings: Vec<Reading> = (0..100_000)
        .map(|i| Reading {
            device_id: format!("sensor-{:06}", i % 500),
            seq: i / 3,
            event_time: NOW + i,
            received_at: NOW + i + 40,
            metric: ["temperature", "humidity", "battery"][(i % 3) as usize].into(),
            value: (i as f64).sin() * 20.0,
            fw: Some("1.4.2".into()),
        })
        .collect();
    let mut g = c.benchmark_group("parquet");
    g.sample_size(10);
    g.throughput(Throughput::Elements(readings.len() as u64));
    g.bench_function("readings_to_batch 100k", |b| {
        b.iter(|| readings_to_batch(black_box(&readings)).unwrap())
    });
    let batch = readings_to_batch(&readings).unwrap();
    g.bench_function("write 100k rows (zstd) to memory", |b| {
        b.iter(|| {
            rt.block_on(async {
                let store = Arc::new(InMemory::new());
                let mut w = PartitionedWriter::new(
                    store,
                    telemetry_schema(),
                    ParquetWriterConfig::default(),
                );
                w.write(&Partition::of_millis(NOW), &batch).await.unwrap();
                w.flush().await.unwrap()
            })
        })
    });
    g.finish();
}

/// Reading the transform's rows back (the emulated Firehose's conversion): 500 messages of
/// 4 metrics as `StreamRecordRef::write_rows` writes them, by `serde_json` and by
/// [`RowReader`] (which reads that spelling directly).
fn rows(c: &mut Criterion) {
    let mut data = Vec::new();
    for i in 0..500u64 {
        let msg = MessageRef {
            device_id: Cow::Owned(format!("sensor-{:06}", i % 100)),
            seq: 10_000 + i,
            ts: NOW + i as i64 * 10,
            metrics: [("battery", 3.712), ("humidity", 40.1), ("rssi", -67.0)]
                .into_iter()
                .chain([("temperature", 21.53 + i as f64 / 100.0)])
                .map(|(k, v)| (Cow::Borrowed(k), v))
                .collect(),
            fw: Some(Cow::Borrowed("1.4.2")),
        };
        StreamRecordRef::new(msg, NOW + 80).write_rows(&mut data);
    }
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 2000);
    let mut g = c.benchmark_group("rows");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("2000 rows, serde_json", |b| {
        b.iter(|| {
            lines
                .iter()
                .map(|l| {
                    serde_json::from_slice::<ReadingRef<'_>>(black_box(l))
                        .unwrap()
                        .value
                })
                .sum::<f64>()
        })
    });
    g.bench_function("2000 rows, RowReader", |b| {
        b.iter(|| {
            let mut reader = RowReader::new();
            lines
                .iter()
                .map(|l| reader.read(black_box(l)).unwrap().value)
                .sum::<f64>()
        })
    });
    g.finish();
}

criterion_group!(benches, validation, parquet, rows);
criterion_main!(benches);

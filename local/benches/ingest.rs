//! Cost of the ingest function per message in the `per-message` topology, as the local
//! pipeline runs it: the IoT rule's event (base64 payload, topic, arrival time) handed to
//! the ingest handler inside the meter's emulated invocation, the payload validated, its
//! stream record written and put into the local stream (whose reader drains it on another
//! task), with and without the stream's journal.
//!
//! Run: `cargo bench -p local --bench ingest`. Criterion reports the time per 500
//! invocations; divide by 500 for the time per message (the throughput line gives
//! messages/s).

#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use criterion::{Criterion, Throughput, criterion_main};
use ingest::{Ingest, IngestConfig, IotRuleEvent};
use local::journal::Journal;
use local::meter::{INGEST, Meter};
use local::stream::{LocalStream, ShardReader, merge_shards};
use test_support::fixtures::device_message;

/// Messages (invocations) per iteration.
const MESSAGES: usize = 500;

/// What the rule sends for a typical 4-metric device message.
fn events() -> Vec<IotRuleEvent> {
    (0..MESSAGES)
        .map(|i| {
            let message = device_message(i);
            let payload = serde_json::to_vec(&message).expect("a message serializes");
            IotRuleEvent {
                payload: STANDARD.encode(payload),
                topic: telemetry::topic::telemetry_topic("acme", &message.device_id),
                received_at: message.ts + 80,
                device_from_topic: None,
            }
        })
        .collect()
}

/// Drains every shard as the pipeline's consumer reads it ([`merge_shards`]: in batches,
/// pausing when a shard had less than a full one), on the runtime's worker threads.
fn drain(rt: &tokio::runtime::Runtime, readers: Vec<ShardReader>) {
    let _entered = rt.enter();
    let mut merged = merge_shards(readers, 10_000);
    rt.spawn(async move {
        let mut batch = Vec::new();
        while merged.recv_many(&mut batch, 10_000).await > 0 {
            batch.clear();
        }
    });
}

fn bench_ingest(c: &mut Criterion) {
    let events = events();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a runtime");
    let store = Arc::new(object_store::memory::InMemory::new());
    let meter = Meter::new();
    let run = |ingest: &Ingest<LocalStream>| {
        rt.block_on(async {
            for e in &events {
                let r = meter
                    .invoke(
                        &INGEST,
                        |r: &Result<_, _>| r.is_err(),
                        ingest.handle_event(e),
                    )
                    .await
                    .expect("ingest answers");
                assert_eq!(r.accepted, 1);
            }
        })
    };
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(MESSAGES as u64));

    let (stream, readers) = LocalStream::new(4, 10_000);
    drain(&rt, readers);
    let ingest = Ingest::new(stream, store.clone(), IngestConfig::default());
    group.bench_function("per-message: 500 invocations x 4 metrics", |b| {
        b.iter(|| run(black_box(&ingest)))
    });

    let dir = tempfile::tempdir().expect("a temporary directory");
    let (journal, recovered) = Journal::open(dir.path()).expect("a journal");
    let (stream, readers) = LocalStream::journaled(4, 10_000, Arc::new(journal), &recovered);
    drain(&rt, readers);
    let ingest = Ingest::new(stream, store, IngestConfig::default());
    group.bench_function("per-message, journaled: 500 invocations x 4 metrics", |b| {
        b.iter(|| run(black_box(&ingest)))
    });
    group.finish();
}

/// The generated group function has no doc comment; the lint is silenced here only.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench_ingest);
}
criterion_main!(group::benches);

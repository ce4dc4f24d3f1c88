//! Criterion benchmarks of payload generation: how many messages per second one core can
//! produce for the publisher (or `--dump`), with the default sensors and the example
//! fleet.
//!
//! `cargo bench -p device-sim --bench generate`

// Benchmarks abort on a broken fixture, like tests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use device_sim::{SimConfig, try_generate};

fn generation(c: &mut Criterion) {
    let sensors = SimConfig {
        devices: 100,
        rate: 1.0,
        duration: Duration::from_secs(100),
        start_ms: Some(1_764_072_000_000),
        ..SimConfig::default()
    };
    let path = test_support::package_dir().join("fleet.example.toml");
    let example = SimConfig {
        start_ms: Some(1_764_072_000_000),
        ..SimConfig::load(&path).unwrap()
    };
    let mut g = c.benchmark_group("generate");
    for (name, cfg) in [("default sensors", sensors), ("example fleet", example)] {
        let n = try_generate(&cfg).unwrap().count() as u64;
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("{name} ({n} messages, time-ordered)"), |b| {
            b.iter(|| {
                let bytes: usize = try_generate(black_box(&cfg))
                    .unwrap()
                    .map(|m| m.payload.len())
                    .sum();
                black_box(bytes)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, generation);
criterion_main!(benches);

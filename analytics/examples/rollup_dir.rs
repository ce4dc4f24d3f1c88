//! Runs the rollup over a local data directory and prints its report and the process's
//! peak RSS: the benchmark's measurement without the rest of the CLI.
//!
//! ```text
//! cargo run --release -p analytics --example rollup_dir -- DATA [BUCKETS] [WORKERS] [no-coarse]
//! ```
//! `no-coarse` leaves out the 1h/1d and fleet derivation (`RollupConfig::derive_coarse`).

use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .ok_or("usage: rollup_dir DATA [BUCKETS] [WORKERS] [no-coarse]")?;
    let mut cfg = analytics::RollupConfig::default();
    if let Some(b) = args.next() {
        cfg.buckets = b.parse()?;
    }
    if let Some(w) = args.next() {
        cfg.workers = w.parse()?;
    }
    if let Some(flag) = args.next() {
        if flag != "no-coarse" {
            return Err(format!("unknown argument {flag:?}: expected no-coarse").into());
        }
        cfg.derive_coarse = false;
    }
    let store = analytics::config::local_store(Some(data.into()))?;
    let started = Instant::now();
    let report = analytics::run_rollup(store, &cfg).await?;
    let secs = started.elapsed().as_secs_f64();
    // VmHWM: the peak resident set size, as Lambda's Max Memory Used reports it.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    eprintln!(
        "buckets {} workers {} coarse {}: {secs:.2} s, {peak}",
        cfg.buckets, cfg.workers, cfg.derive_coarse
    );
    eprintln!("{}", serde_json::to_string(&report)?);
    Ok(())
}

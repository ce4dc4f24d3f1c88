//! Kill and rerun: `iotpipe replay` is killed at seeded random points — with `SIGKILL` after
//! a seeded random delay, and by `IOTPIPE_CRASH_AFTER_WRITES=N` right after its N-th
//! durable write (a Parquet file, a quarantine object, a rollup state, lease or stats
//! object) — then run again on the same input and data directory. After the rerun, every
//! accepted message is in Parquet exactly once after de-duplication (pyarrow + DuckDB, and
//! the delivery ledger: nothing missing), and the statistics equal a clean run's.
//!
//! The same with `--stream kinesis:NAME` on moto: the rerun reads on from the killed
//! run's checkpoints and re-puts every message (duplicates the rollup removes).
//!
//! The seed is fixed (`SEED`), so a failure names a kill point that reproduces.
//! Needs `IOTPIPE_TEST_PYTHON` and `IOTPIPE_TEST_MOTO`; fails without them.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iotpipe_tests::{
    SeededInput, WindowStats, check_stored_once, iotpipe, seeded_input, stats_by_window,
};
use test_support::moto;

/// The seed of the kill points.
const SEED: u64 = 0x10_4b11;
/// Kill points per way of killing with the local stream (two ways: ≥ 20 in the suite).
const KILLS: usize = 12;
/// Kill points through a Kinesis stream on moto (slower: each has its own stream).
const KINESIS_KILLS: usize = 6;

/// xorshift64*: a small seeded generator, so that kill points reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `iotpipe replay` of the input into `data`, with Parquet files closed and rollups run
/// every few hundred milliseconds, so that a run has durable steps all along.
fn replay_cmd(input: &SeededInput, data: &Path) -> Command {
    replay_on(input, data, "local")
}

/// [`replay_cmd`] with ingest putting into `stream` (`local` or `kinesis:NAME` on moto).
fn replay_on(input: &SeededInput, data: &Path, stream: &str) -> Command {
    let mut cmd = iotpipe(&["replay", "--summary-json", "--stream", stream]);
    cmd.envs(moto::s3_env());
    cmd.args(["--flush-every", "100ms", "--rollup-every", "150ms"])
        .args(["--shards", "2", "--data"])
        .arg(data)
        .arg(&input.file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Objects under `dir` (each was written at least once by the run).
fn objects(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        n += if p.is_dir() { objects(&p) } else { 1 };
    }
    n
}

/// The clean run: its statistics (what a rerun must reproduce) and how long it took (ms).
fn clean_run(data: &Path, input: &SeededInput) -> (WindowStats, u64) {
    let started = Instant::now();
    let status = replay_cmd(input, data).status().unwrap();
    let took = started.elapsed().as_millis() as u64;
    assert!(status.success(), "the clean run failed: {status}");
    let stats = stats_by_window(data);
    assert!(!stats.is_empty());
    (stats, took)
}

/// Reruns the replay after a kill and checks the outcome against the clean run.
fn rerun_and_check(point: &str, input: &SeededInput, data: &Path, want: &WindowStats) {
    rerun_on_and_check(point, input, data, "local", want);
}

/// [`rerun_and_check`] through `stream`.
fn rerun_on_and_check(
    point: &str,
    input: &SeededInput,
    data: &Path,
    stream: &str,
    want: &WindowStats,
) {
    let status = replay_on(input, data, stream).status().unwrap();
    assert!(status.success(), "{point}: the rerun failed: {status}");
    check_stored_once(point, input, data, want);
}

#[test]
fn replay_killed_at_seeded_random_times_and_rerun_stores_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = seeded_input(dir.path(), 5, "3m", SEED);
    let (want, clean_ms) = clean_run(&dir.path().join("clean"), &input);
    let mut rng = Rng(SEED);
    let mut kills = 0;
    let mut attempts = 0;
    while kills < KILLS {
        attempts += 1;
        assert!(
            attempts <= 3 * KILLS,
            "only {kills} of {attempts} runs were still running at their kill time"
        );
        let delay = rng.between(20, clean_ms.max(40));
        let data = dir.path().join(format!("killed-{attempts}"));
        let mut child = replay_cmd(&input, &data).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_some() {
            continue; // finished first: not a kill point
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        rerun_and_check(&format!("SIGKILL after {delay} ms"), &input, &data, &want);
    }
}

#[test]
fn replay_crashed_right_after_seeded_durable_writes_and_rerun_stores_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = seeded_input(dir.path(), 5, "3m", SEED);
    let (want, _) = clean_run(&dir.path().join("clean"), &input);
    // Every object of a clean run was written at least once: a crash point ≤ this count
    // always falls inside the run.
    let writes = objects(&dir.path().join("clean"));
    assert!(writes >= 5, "a clean run writes {writes} objects");
    let mut rng = Rng(SEED ^ 0xc4a5);
    for i in 0..KILLS {
        let n = rng.between(1, writes);
        let data = dir.path().join(format!("crashed-{i}"));
        let status = replay_cmd(&input, &data)
            .env("IOTPIPE_CRASH_AFTER_WRITES", n.to_string())
            .status()
            .unwrap();
        assert!(
            status.code().is_none(),
            "crash after write {n}: the run was to abort, it ended with {status}"
        );
        rerun_and_check(&format!("crash after write {n}"), &input, &data, &want);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_through_kinesis_killed_at_seeded_random_times_and_rerun_stores_every_message_once()
{
    let sdk = moto::sdk_config().await;
    let dir = tempfile::tempdir().unwrap();
    // Small: each message is one PutRecords call to moto.
    let input = seeded_input(dir.path(), 3, "1m", SEED);
    let (want, _) = clean_run(&dir.path().join("clean"), &input);
    // How long a run through moto takes, on a stream of its own.
    let name = moto::unique("iotpipe-kill");
    moto::create_kinesis_stream(&sdk, &name, 2).await;
    let started = Instant::now();
    let clean = dir.path().join("clean-kinesis");
    let status = replay_on(&input, &clean, &format!("kinesis:{name}"))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the clean run through Kinesis failed: {status}"
    );
    assert_eq!(
        stats_by_window(&clean),
        want,
        "Kinesis and the local stream agree"
    );
    let clean_ms = started.elapsed().as_millis() as u64;

    let mut rng = Rng(SEED ^ 0x4b1);
    let (mut kills, mut attempts) = (0, 0);
    while kills < KINESIS_KILLS {
        attempts += 1;
        assert!(
            attempts <= 3 * KINESIS_KILLS,
            "only {kills} of {attempts} runs were still running at their kill time"
        );
        let name = moto::unique("iotpipe-kill");
        moto::create_kinesis_stream(&sdk, &name, 2).await;
        let stream = format!("kinesis:{name}");
        let delay = rng.between(20, clean_ms.max(40));
        let data = dir.path().join(format!("kinesis-killed-{attempts}"));
        let mut child = replay_on(&input, &data, &stream).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if child.try_wait().unwrap().is_some() {
            continue; // finished first: not a kill point
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        rerun_on_and_check(
            &format!("kinesis: SIGKILL after {delay} ms"),
            &input,
            &data,
            &stream,
            &want,
        );
    }
}

/// Kill points of `iotpipe up` while devices publish (the devices' run lasts ~20 s).
const UP_KILLS: usize = 8;

/// `iotpipe up --devices 0` on the external `broker` with `args` (the stream, the
/// topology), its stderr in `log` (appended: one file for every run of a test).
fn up_on(broker: u16, data: &Path, args: &[&str], duration: &str, log: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = iotpipe(&["up", "--devices", "0", "--duration", duration]);
    cmd.envs(moto::s3_env());
    cmd.args(args)
        .args([
            "--shards",
            "2",
            "--flush-every",
            "200ms",
            "--rollup-every",
            "300ms",
        ])
        .args(["--broker", &format!("mqtt://127.0.0.1:{broker}"), "--data"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

/// Waits until the `n`-th run logged to `log` has subscribed (its `broker:` line).
fn wait_subscribed(log: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches("broker: ").count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "run {n} did not subscribe within 30 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `iotpipe up` on an external broker (mosquitto) is killed with SIGKILL at seeded random
/// points while device-sim goes on publishing, and started again each time; a last run
/// drains what the broker queued. The rule's persistent session keeps, across the kills,
/// what the broker acknowledged to the devices: every message is then in Parquet once
/// after dedup, nothing is missing in the ledger, and the statistics equal a clean replay
/// of the same messages.
fn up_killed_while_devices_publish(
    args: &[&str],
    input: &SeededInput,
    want: &WindowStats,
    seed: u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let port = test_support::free_port();
    let mut broker = iotpipe_tests::mosquitto(
        dir.path(),
        port,
        "max_inflight_messages 100\nmax_queued_messages 0\n",
    );
    let data = dir.path().join("data");
    let log = dir.path().join("up.log");
    let mut runs = 1;
    let mut up = up_on(port, &data, args, "5m", &log).spawn().unwrap();
    // The rule's session exists once it subscribed: from then on the broker keeps what the
    // devices publish for it, whether a run is up or not.
    wait_subscribed(&log, runs);
    let mut sim = Command::new(iotpipe_tests::bin("device-sim"))
        .args(&input.sim_args)
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
        .args(["--qos", "1", "--summary-json", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut rng = Rng(seed);
    let mut kills = Vec::new();
    while kills.len() < UP_KILLS || sim.try_wait().unwrap().is_none() {
        let delay = rng.between(200, 2500);
        std::thread::sleep(Duration::from_millis(delay));
        assert!(
            up.try_wait().unwrap().is_none(),
            "run {runs} ended by itself:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        up.kill().unwrap(); // SIGKILL
        up.wait().unwrap();
        kills.push(delay);
        // Down for a while: the broker queues what the devices publish meanwhile.
        std::thread::sleep(Duration::from_millis(rng.between(0, 500)));
        runs += 1;
        up = up_on(port, &data, args, "5m", &log).spawn().unwrap();
    }
    up.kill().unwrap();
    up.wait().unwrap();
    let out = sim.wait_with_output().unwrap();
    assert!(out.status.success(), "device-sim failed: {}", out.status);
    let summary = iotpipe_tests::last_json_line(&out);
    assert_eq!(
        summary["acknowledged"].as_u64(),
        Some(input.messages),
        "the broker acknowledged every message: {summary}"
    );
    // The last run takes what the broker queued while the pipeline was down.
    let status = up_on(port, &data, args, "3s", &log).status().unwrap();
    broker.kill().unwrap();
    broker.wait().unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "the last run failed: {status}\n{log_text}"
    );
    check_stored_once(
        &format!("{args:?}: up killed after {kills:?} ms"),
        input,
        &data,
        want,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn up_through_kinesis_killed_while_devices_publish_and_rerun_stores_every_message_once() {
    let sdk = moto::sdk_config().await;
    let dir = tempfile::tempdir().unwrap();
    let seed = SEED ^ 0x0b;
    let input = seeded_input(dir.path(), 10, "20s", seed);
    let (want, _) = clean_run(&dir.path().join("clean"), &input);
    let name = moto::unique("iotpipe-up-kill");
    moto::create_kinesis_stream(&sdk, &name, 2).await;
    let stream = format!("kinesis:{name}");
    tokio::task::spawn_blocking(move || {
        up_killed_while_devices_publish(&["--stream", &stream], &input, &want, seed);
    })
    .await
    .unwrap();
}

/// The local stream and Firehose's DirectPut input are in memory: their journals
/// (`local::journal`) keep what they accepted across the kills.
fn up_on_the_local_stream_killed_while_devices_publish(topology: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let input = seeded_input(dir.path(), 10, "20s", seed);
    let (want, _) = clean_run(&dir.path().join("clean"), &input);
    up_killed_while_devices_publish(&["--topology", topology], &input, &want, seed);
}

#[test]
fn up_of_the_firehose_topology_killed_while_devices_publish_and_rerun_stores_every_message_once() {
    up_on_the_local_stream_killed_while_devices_publish("firehose", SEED ^ 0xf1);
}

#[test]
fn up_of_the_kinesis_topology_killed_while_devices_publish_and_rerun_stores_every_message_once() {
    up_on_the_local_stream_killed_while_devices_publish("kinesis", SEED ^ 0x4e);
}

#[test]
fn up_of_the_per_message_topology_killed_while_devices_publish_and_rerun_stores_every_message_once()
{
    up_on_the_local_stream_killed_while_devices_publish("per-message", SEED ^ 0x9e);
}

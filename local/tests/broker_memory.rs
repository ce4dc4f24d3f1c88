//! The embedded broker's memory: another subscriber's filter (a tool watching the broker)
//! keeps a small log, not the rule's (rumqttd keeps a log per filter, full once traffic
//! filled it, read or not). Its own test binary: it measures the process's resident memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// This process's resident set size in MiB (`VmRSS`).
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

/// An MQTT client of the embedded broker at `port`, and its event loop.
fn client(id: &str, port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(512 * 1024, 512 * 1024);
    AsyncClient::new(opts, 16)
}

/// Small enough that what rumqttd buffers for a lagging watcher's connection (~330
/// publishes) stays a few MiB.
const PAYLOAD: usize = 16 * 1024;
/// 160 MiB.
const PUBLISHES: usize = 10_240;
/// Published before the first measurement: the allocator's arenas grow once.
const WARM_UP: usize = 512;

/// A watcher subscribed to `dt/#` reads 160 MiB of status messages as they come; the
/// broker keeps 16 MiB of them for it, so the process grows by far less than what passed.
/// (Before, the watcher's filter had a log as large as the rule's 320 MiB: this run grew
/// the process by about what was published.) A watcher more than 16 MiB behind misses the
/// oldest (1,024 of these messages): on a busy machine it may, so only its memory is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchers_filter_keeps_a_small_log() {
    let broker = local::broker::start_embedded(0, 320).unwrap();
    let (watcher, mut watcher_events) = client("watcher", broker.url.port);
    watcher.subscribe("dt/#", QoS::AtMostOnce).await.unwrap();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let seen = Arc::new(AtomicUsize::new(0));
    let watched = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match watcher_events.poll().await.unwrap() {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(_)) => {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };
    subscribed.await.unwrap();

    let (publisher, mut events) = client("status-publisher", broker.url.port);
    let acked = tokio::spawn(async move {
        let mut acked = 0;
        while acked < PUBLISHES {
            if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
                acked += 1;
            }
        }
    });
    let payload = vec![b'x'; PAYLOAD];
    let mut before = 0;
    for i in 0..PUBLISHES {
        if i == WARM_UP {
            tokio::time::sleep(Duration::from_millis(500)).await;
            before = rss_mib();
        }
        publisher
            .publish(
                "dt/fleet/d1/status",
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(120), acked)
        .await
        .expect("the broker did not acknowledge every publish within 120 s")
        .unwrap();
    // The watcher has taken what the broker still had for it once its count stands still.
    let mut last = usize::MAX;
    while seen.load(Ordering::Relaxed) != last {
        last = seen.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(last > 0, "the watcher got nothing");
    let grown = rss_mib().saturating_sub(before);
    watched.abort();
    assert!(
        grown < 64,
        "the process grew by {grown} MiB while 152 MiB passed a watcher's filter"
    );
}

//! `iotpipe up --devices 0`: a local pipeline for real devices. `mosquitto_pub` plays the
//! devices, on the plain listener and on the mutual-TLS one; Ctrl-C (SIGINT) ends the run
//! with a flush and a summary, and what was published is in `iotpipe query` and in
//! `quarantine/` with its reason.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iotpipe_tests::{bin, cost_lines, iotpipe, last_json_line, need_env, query_json, total_count};
use serde_json::Value;

/// A running `iotpipe up`, its stderr lines arriving on a channel.
struct Up {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// Everything read from stderr so far (for failure messages).
    seen: Vec<String>,
}

impl Up {
    fn start(data: &Path, extra: &[&str]) -> Self {
        let mut child = iotpipe(&[
            "up",
            "--devices",
            "0",
            "--flush-every",
            "1s",
            "--rollup-every",
            "1s",
            "--summary-json",
            "--data",
        ])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iotpipe up starts");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stderr: rx,
            seen: Vec::new(),
        }
    }

    /// The URLs printed on the `broker:` lines, waiting until `n` of them are printed.
    fn broker_urls(&mut self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let urls: Vec<String> = self
                .seen
                .iter()
                .filter_map(|l| l.strip_prefix("broker: "))
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .collect();
            if urls.len() >= n {
                return urls;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "iotpipe up printed no {n} broker URL(s) within 30 s; stderr:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends SIGINT (what Ctrl-C sends) and returns the summary JSON once it exits; the
    /// run must succeed.
    fn interrupt(self) -> Value {
        let (exit, summary, stderr) = self.interrupt_with_status();
        assert!(
            exit.success(),
            "iotpipe up exited with {exit} after SIGINT\n--- summary\n{summary}\n--- stderr\n{stderr}"
        );
        summary
    }

    /// Sends SIGINT and returns, once it exits, its exit status, the summary JSON (the
    /// last stdout line) and everything it wrote to stderr.
    fn interrupt_with_status(mut self) -> (std::process::ExitStatus, Value, String) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(status.success(), "kill -INT {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        let exit = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "iotpipe up did not exit within 60 s of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        // The reader thread ends with the process's stderr.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let stderr = self.seen.join("\n");
        let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
        let summary = serde_json::from_str(last.unwrap_or_default()).unwrap_or_else(|e| {
            panic!("no summary JSON on stdout ({e}), exit {exit}:\n{stdout}\n--- stderr\n{stderr}")
        });
        (exit, summary, stderr)
    }
}

/// A test that fails before it interrupts the run stops it anyway: a left-over `up` keeps
/// its broker's connections and ports, and the next tests run beside it.
impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `host` and `port` of an `mqtt://` / `mqtts://` URL.
fn host_port(url: &str) -> (String, String) {
    let rest = url.split_once("://").unwrap().1;
    let (h, p) = rest.rsplit_once(':').unwrap();
    (h.to_owned(), p.trim_end_matches('/').to_owned())
}

/// `mosquitto_pub -q 1` of one payload; returns whether the broker accepted it.
fn publish(url: &str, topic: &str, payload: &str, tls: &[&str]) -> bool {
    let (host, port) = host_port(url);
    let out = Command::new("mosquitto_pub")
        .args([
            "-h", &host, "-p", &port, "-q", "1", "-t", topic, "-m", payload,
        ])
        .args(tls)
        .output()
        .expect("mosquitto_pub is installed (tests/setup/services.sh installs it)");
    out.status.success()
}

fn reading(device: &str, seq: u64, ts: i64) -> String {
    format!(
        r#"{{"device_id":"{device}","seq":{seq},"ts":{ts},"metrics":{{"temperature":21.5,"humidity":40.25}},"fw":"1.0.0"}}"#
    )
}

/// Every quarantine record (one JSON object per line) under `data/quarantine/`.
fn quarantine_records(data: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let mut dirs = vec![data.join("quarantine")];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.map_while(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let text = std::fs::read_to_string(&p).unwrap();
                out.extend(
                    text.lines()
                        .map(|l| serde_json::from_str::<Value>(l).unwrap()),
                );
            }
        }
    }
    out
}

#[test]
fn up_without_simulated_devices_takes_mosquitto_pub_over_plain_and_mutual_tls_mqtt_3_and_5_and_basic_ingest_until_ctrl_c()
 {
    let certs = need_env("IOTPIPE_TEST_CERTS");
    let cert = |f: &str| format!("{certs}/{f}");
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(
        dir.path(),
        &[
            "--tls-cert",
            &cert("server.pem"),
            "--tls-key",
            &cert("server.key"),
            "--tls-client-ca",
            &cert("ca.pem"),
        ],
    );
    let urls = up.broker_urls(2);
    let plain = urls.iter().find(|u| u.starts_with("mqtt://")).unwrap();
    let tls = urls.iter().find(|u| u.starts_with("mqtts://")).unwrap();

    let now = chrono::Utc::now().timestamp_millis();
    let a = "dt/fleet/sensor-a/telemetry";
    assert!(publish(plain, a, &reading("sensor-a", 1, now), &[]));
    assert!(publish(plain, a, &reading("sensor-a", 2, now + 1000), &[]));
    let malformed = r#"{"device_id":"sensor-a","seq":3,"ts":"#;
    assert!(publish(plain, a, malformed, &[]));
    // A device on the wrong topic: the broker takes it, the rule never sees it.
    assert!(publish(
        plain,
        "sensors/sensor-a/telemetry",
        &reading("sensor-a", 4, now),
        &[]
    ));
    let ca = cert("ca.pem");
    let (client_cert, client_key) = (cert("client.pem"), cert("client.key"));
    let mtls = [
        "--cafile",
        &ca,
        "--cert",
        &client_cert,
        "--key",
        &client_key,
    ];
    assert!(
        publish(
            tls,
            "dt/fleet/sensor-b/telemetry",
            &reading("sensor-b", 1, now),
            &mtls
        ),
        "a client with a certificate of the CA publishes over mutual TLS"
    );
    assert!(
        !publish(
            tls,
            "dt/fleet/sensor-c/telemetry",
            &reading("sensor-c", 1, now),
            &["--cafile", &ca]
        ),
        "a TLS client without a certificate is refused"
    );
    // MQTT 5 clients, as AWS IoT Core takes them, on the same ports (before, the embedded
    // broker spoke 3.1.1 only and closed their connections).
    let v5 = ["-V", "mqttv5"];
    assert!(
        publish(
            plain,
            "dt/fleet/sensor-d/telemetry",
            &reading("sensor-d", 1, now),
            &v5
        ),
        "an MQTT 5 client publishes on the plain port"
    );
    let mtls_v5: Vec<&str> = mtls.iter().chain(&v5).copied().collect();
    assert!(
        publish(
            tls,
            "dt/fleet/sensor-e/telemetry",
            &reading("sensor-e", 1, now),
            &mtls_v5
        ),
        "an MQTT 5 client publishes over mutual TLS"
    );

    // A device configured for AWS publishes to the rule's Basic Ingest topic (before, the
    // embedded broker routed no `$` topic and the message reached no rule); another rule's
    // Basic Ingest topic reaches no rule of ours, as on AWS.
    let basic_ingest = "$aws/rules/iotpipe_telemetry/dt/fleet/sensor-f/telemetry";
    assert!(publish(
        plain,
        basic_ingest,
        &reading("sensor-f", 1, now),
        &[]
    ));
    assert!(publish(
        plain,
        basic_ingest,
        &reading("sensor-f", 2, now + 1000),
        &v5
    ));
    let another = "$aws/rules/another_rule/dt/fleet/sensor-g/telemetry";
    assert!(publish(plain, another, &reading("sensor-g", 1, now), &[]));

    let s = up.interrupt();
    assert_eq!(s["source"], "devices", "{s}");
    assert_eq!(s["broker"].as_str(), Some(plain.as_str()));
    assert_eq!(s["tls_broker"].as_str(), Some(tls.as_str()));
    assert_eq!(
        s["received"], 8,
        "three plain + one mutual-TLS message, one of each over MQTT 5, two over Basic \
         Ingest: {s}"
    );
    assert_eq!(
        s["broker_appended"], 8,
        "the broker's meter of the rule's log: {s}"
    );
    assert_eq!(s["received_after_stop"], 0, "{s}");
    assert_eq!(
        s["other_topics"], 2,
        "the publishes to sensors/… and to another rule: {s}"
    );
    // IoT Core meters a message per publish on any topic but a Basic Ingest one: the six
    // on dt/… and the one on sensors/…, not the three Basic Ingest ones, although the
    // default topology's rule counts every message it takes as Basic Ingest.
    let port = &s["port"];
    assert_eq!(port["rule_plain"]["publishes"], 6, "{port}");
    assert_eq!(port["rule_basic_ingest"]["publishes"], 2, "{port}");
    assert_eq!(port["other_plain"]["publishes"], 1, "{port}");
    assert_eq!(
        cost_lines(&s, "IoT Core messaging", "quantity"),
        7.0,
        "{}",
        s["cost"]
    );
    assert_eq!(s["accepted"], 7, "{s}");
    assert_eq!(s["quarantined"], 1, "{s}");
    assert_eq!(s["rows"], 14, "seven messages of two readings: {s}");
    assert_eq!(s["firehose"]["files"].as_u64().map(|f| f > 0), Some(true));

    // The valid readings are in the aggregates.
    let stats = query_json(dir.path());
    assert_eq!(total_count(&stats), 14, "{stats:?}");
    let mut devices: Vec<&str> = stats
        .iter()
        .map(|r| r["device_id"].as_str().unwrap())
        .collect();
    devices.sort_unstable();
    devices.dedup();
    assert_eq!(
        devices,
        ["sensor-a", "sensor-b", "sensor-d", "sensor-e", "sensor-f"]
    );

    // The malformed one is in quarantine/ with its reason and its bytes.
    let q = quarantine_records(dir.path());
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["reason_code"], "malformed_json", "{q:?}");
    assert_eq!(q[0]["topic"], a);
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(q[0]["payload_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, malformed.as_bytes());
}

#[test]
fn up_without_simulated_devices_ends_after_an_explicit_duration() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = iotpipe(&[
        "up",
        "--devices",
        "0",
        "--duration",
        "2s",
        "--summary-json",
        "--data",
    ])
    .arg(dir.path())
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    let s = iotpipe_tests::last_json_line(&out);
    assert_eq!(s["received"], 0, "{s}");
    assert_eq!(s["rows"], 0, "{s}");
}

/// Real devices that publish faster than the pipeline takes them, into a 1 MiB broker log:
/// the embedded broker drops what the rule has not read, oldest first. Nobody told `up`
/// what the devices sent, yet nothing may vanish silently: the rule counts the drops (the
/// broker's numbering of its log jumps past them), the summary shows them, and the run
/// fails naming the log and the option that sizes it.
#[test]
fn real_devices_outrunning_the_brokers_log_fail_the_run_with_the_drops_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &["--broker-log-mib", "1"]);
    let url = up.broker_urls(1).remove(0);
    // Two device-sims play 2,000 devices at 50 msg/s each for 2 s: ~100,000 msg/s offered
    // on two cores, more than a debug build's rule takes while they run (one device-sim
    // alone, ~50,000 msg/s, it sometimes kept up), and 1 MiB holds only ~4,500 of their
    // messages.
    let sims: Vec<_> = ["a-", "b-"]
        .iter()
        .map(|prefix| {
            Command::new(bin("device-sim"))
                .args([
                    "--broker",
                    &url,
                    "--device-prefix",
                    prefix,
                    "--devices",
                    "1000",
                    "--rate",
                    "50",
                    "--duration",
                    "2s",
                    "--summary-json",
                    "--quiet",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // What the broker acknowledged to the devices (a device-sim whose publishes were not
    // all acknowledged in time exits non-zero; its summary still counts them).
    let acknowledged: u64 = sims
        .into_iter()
        .map(|sim| {
            let out = sim.wait_with_output().unwrap();
            last_json_line(&out)["acknowledged"].as_u64().unwrap()
        })
        .sum();
    assert!(acknowledged >= 100_000, "the devices were not driven hard");
    let (exit, s, stderr) = up.interrupt_with_status();
    assert!(
        !exit.success(),
        "the run hid the broker's drops (acknowledged {acknowledged}): {s}\n{stderr}"
    );
    let dropped = s["broker_dropped"].as_u64().unwrap();
    let received = s["received"].as_u64().unwrap();
    assert!(dropped > 0, "{s}");
    // Every message the broker acknowledged reached the rule or was counted dropped (a
    // copy a device sent again counts twice), and everything received was stored.
    assert!(received + dropped >= acknowledged, "{s}");
    // The broker's own meter of its log agrees to the message: the drops counted from the
    // jumps in its numbering are exactly what it took and never forwarded.
    assert_eq!(
        s["broker_appended"].as_u64(),
        Some(received + dropped),
        "{s}"
    );
    assert_eq!(s["accepted"].as_u64(), Some(received), "{s}");
    assert!(
        stderr.contains(&format!("dropped {dropped} of the messages"))
            && stderr.contains("keeps 1 MiB")
            && stderr.contains("--broker-log-mib"),
        "the error does not say what was dropped and why:\n{stderr}"
    );
}

/// Everything the embedded broker took on the rule's topics is accounted for at Ctrl-C:
/// the broker's own meter of what it appended to the rule's log (`broker_appended`) equals
/// what the rule received plus what the broker dropped — here everything the devices had
/// acknowledged, received and stored. The run drains the broker until that meter says
/// nothing waits (it used to stop after five seconds, whatever was left).
#[test]
fn ctrl_c_accounts_for_everything_the_embedded_broker_took() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &[]);
    let url = up.broker_urls(1).remove(0);
    let out = Command::new(bin("device-sim"))
        .args([
            "--broker",
            &url,
            "--devices",
            "50",
            "--rate",
            "100",
            "--duration",
            "2s",
            "--summary-json",
            "--quiet",
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "device-sim failed");
    let acknowledged = last_json_line(&out)["acknowledged"].as_u64().unwrap();
    assert_eq!(
        acknowledged, 10_000,
        "device-sim did not send what it was told"
    );
    let s = up.interrupt();
    let received = s["received"].as_u64().unwrap();
    assert_eq!(s["broker_appended"].as_u64(), Some(acknowledged), "{s}");
    assert_eq!(s["broker_dropped"], 0, "{s}");
    // Every acknowledged message reached the rule (device-sim's QoS 1 publishes are not
    // sent twice without a reconnect), and all of them were stored.
    assert_eq!(received, acknowledged, "{s}");
    assert_eq!(s["accepted"].as_u64(), Some(received), "{s}");
    assert_eq!(s["rows"].as_u64(), Some(3 * received), "{s}");
}

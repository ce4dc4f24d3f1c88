//! `iotpipe up` end to end: simulated devices over a real MQTT broker (the embedded rumqttd,
//! and mosquitto), through every stage, to Parquet that an independent reader accepts and
//! aggregates that add up.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use iotpipe_tests::{
    cost_lines, files_under, iotpipe, last_json_line, need_env, python_json, query_json, run,
    total_count,
};
use serde_json::Value;

/// The tests against the shared mosquitto take turns: the rule subscribes to every
/// fleet's topics (`dt/+/+/telemetry`, as on AWS), so two runs at once would each receive
/// the other's messages.
static MOSQUITTO: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn up(data: &Path, extra: &[&str]) -> Value {
    let mut cmd = iotpipe(&[
        "up",
        "--devices",
        "50",
        "--rate",
        "5",
        "--duration",
        "4s",
        "--flush-every",
        "2s",
        "--rollup-every",
        "2s",
        "--summary-json",
        "--data",
    ]);
    cmd.arg(data).args(extra);
    last_json_line(&run(&mut cmd))
}

fn check_run(data: &Path, s: &Value) {
    let sent = s["sent"].as_u64().unwrap();
    assert!(sent >= 50 * 5 * 3, "the fleet sent only {sent} messages");
    assert_eq!(
        s["received"], s["sent"],
        "the rule must receive every QoS 1 message: {s}"
    );
    assert_eq!(s["input"], s["received"]);
    // The pace: a rule that received everything caught up, and it took messages at a rate.
    assert!(s["caught_up_s"].is_f64(), "{s}");
    assert!(s["behind_at_stop"].as_u64().unwrap() <= sent, "{s}");
    assert!(s["rule_rate"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["rule_rate_while_sending"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["send_rate"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["quarantined"], 0, "simulated payloads are valid: {s}");
    assert_eq!(s["accepted"], s["input"]);
    let readings = s["readings"].as_u64().unwrap();
    assert_eq!(
        s["rows"].as_u64().unwrap(),
        readings,
        "every accepted reading becomes a row"
    );

    // An independent reader (pyarrow and DuckDB) sees the same distinct readings.
    let parquet = python_json("parquet_check.py", &[&data.join("telemetry")]);
    assert_eq!(parquet["rows"].as_u64().unwrap(), readings);
    assert_eq!(parquet["distinct_readings"].as_u64().unwrap(), readings);
    for f in parquet["per_file"].as_array().unwrap() {
        let cols: Vec<&str> = f["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            cols,
            [
                "device_id",
                "seq",
                "event_time",
                "received_at",
                "metric",
                "value",
                "fw"
            ]
        );
        assert!(
            f["path"].as_str().unwrap().contains("dt="),
            "Hive partition folders: {f}"
        );
    }

    // The 1-minute aggregates count every distinct reading exactly once.
    let stats = query_json(data);
    assert!(!stats.is_empty());
    assert_eq!(total_count(&stats), readings);
    // The stats files read back independently too.
    let stats_files = python_json("parquet_check.py", &[&data.join("stats")]);
    assert!(stats_files["rows"].as_u64().unwrap() > 0);

    let mut functions: Vec<&str> = s["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap())
        .collect();
    // The final rollup's plan (16 buckets of the run's hour) is larger than the fan-out
    // threshold: its units ran on worker invocations, 4 to a batch, as on AWS.
    let planned = s["rollup"]["units_planned"].as_u64().unwrap();
    if planned > analytics::fanout::DEFAULT_FANOUT_MIN_UNITS as u64 {
        assert_eq!(functions.pop(), Some("worker"), "{functions:?}");
        let workers = &s["functions"].as_array().unwrap()[functions.len()];
        assert!(
            workers["invocations"].as_u64().unwrap()
                >= planned.div_ceil(local::units_queue::BATCH_SIZE as u64),
            "{workers}"
        );
        assert!(
            s["cost"]["lines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["item"] == "SQS (rollup units queue)"
                    && l["quantity"].as_f64().unwrap() > 0.0)
        );
    }
    if s["cost"]["topology"] == "per-message" {
        assert_eq!(functions, ["ingest", "rollup", "transform"]);
        assert_eq!(
            s["functions"][0]["invocations"], s["received"],
            "one ingest invocation per message"
        );
    } else if s["cost"]["topology"] == "kinesis" {
        // Ingest behind the event-source mapping: one invocation per batch.
        assert_eq!(functions, ["ingest", "rollup", "transform"]);
        assert_eq!(
            s["functions"][0]["invocations"], s["event_source"]["invocations"],
            "one ingest invocation per batch"
        );
    } else {
        // The default topology, firehose: the rule puts into Firehose, no ingest runs.
        assert_eq!(s["cost"]["topology"], "firehose");
        assert_eq!(functions, ["rollup", "transform"]);
    }
    assert!(s["cost"]["total_usd"].as_f64().unwrap() > 0.0);
    // S3 requests are counted at the bucket, as S3 bills them: at least a PUT per object
    // the run left (Parquet, stats, the rollup's state), and the rollups' GETs read every
    // Parquet object back at least once.
    let left = |dir: &str| files_under(&data.join(dir)).len() as f64;
    let parquet = left("telemetry");
    assert!(parquet > 0.0);
    assert!(
        line_quantity(s, "S3 PUT and LIST requests") > parquet + left("stats"),
        "{}",
        s["cost"]
    );
    assert!(
        line_quantity(s, "S3 GET requests") >= parquet,
        "{}",
        s["cost"]
    );

    // The month is the model's bill of the fleet the run showed: 50 devices at 5 messages/s
    // each (over their publishing, not the run's start, drain and final rollup), and the
    // command it prints gives the same total.
    let fleet = &s["cost"]["month_fleet"];
    assert_eq!(fleet["devices"], 50, "{fleet}");
    let rate = fleet["rate"].as_f64().unwrap();
    assert!((4.5..=5.5).contains(&rate), "{fleet}");
    assert_eq!(
        fleet["metrics"],
        s["readings"].as_u64().unwrap() / sent,
        "{fleet}"
    );
    assert_eq!(fleet["batch"], 1, "{fleet}");
    let command = fleet["command"].as_str().unwrap();
    let args: Vec<&str> = command
        .strip_prefix("iotpipe ")
        .unwrap()
        .split(' ')
        .chain(["--format", "json"])
        .collect();
    let bills: Value = serde_json::from_slice(&run(&mut iotpipe(&args)).stdout).unwrap();
    assert_eq!(
        bills[0]["monthly_usd"], s["cost"]["month_at_this_rate_usd"],
        "{command}"
    );
    // What grows with the messages agrees between the run's meter, scaled to the month,
    // and the model's lines: rules triggered and actions executed (the model's rate keeps
    // three significant digits).
    let model = |prefix: &str| -> f64 {
        bills[0]["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["component"].as_str().unwrap().starts_with(prefix))
            .map(|l| l["usd"].as_f64().unwrap())
            .sum()
    };
    let scaled = cost_lines(s, "IoT rules triggered", "usd") * 730.0 * 3600.0
        / fleet["over_s"].as_f64().unwrap();
    let modelled = model("IoT Core rules triggered") + model("IoT Core actions executed");
    assert!(
        (scaled - modelled).abs() <= 0.01 * modelled,
        "rules: run {scaled} vs model {modelled}"
    );

    // The delivery ledger of the run: every message the devices sent is in the Parquet,
    // once; the DuckDB reading of the same files agrees.
    let l = &s["ledger"];
    assert_eq!(l["sent"], s["sent"], "ledger: {l}");
    assert_eq!(l["missing"], 0, "ledger: {l}");
    assert_eq!(l["received"], s["sent"], "ledger: {l}");
    assert_eq!(l["rejected"], 0, "ledger: {l}");
    assert_eq!(l["late"], 0, "a local run delivers within seconds: {l}");
    assert_eq!(l["devices"], 50);
    let duck = python_json(
        "ledger_check.py",
        &[
            &data.join("telemetry"),
            Path::new("60000"),
            Path::new("60000"),
        ],
    );
    assert_eq!(duck["received"], l["received"], "DuckDB: {duck}");
    assert_eq!(duck["duplicated"], l["duplicated"], "DuckDB: {duck}");
}

#[test]
fn up_on_the_embedded_broker_lands_every_reading_in_parquet_and_the_stats() {
    let dir = tempfile::tempdir().unwrap();
    let s = up(dir.path(), &[]);
    assert!(
        s["broker"]
            .as_str()
            .unwrap()
            .starts_with("mqtt://127.0.0.1:")
    );
    check_run(dir.path(), &s);
}

#[test]
fn up_against_mosquitto_lands_every_reading_in_parquet_and_the_stats() {
    let _alone = MOSQUITTO.lock().unwrap_or_else(|e| e.into_inner());
    let broker = need_env("IOTPIPE_TEST_MQTT");
    let dir = tempfile::tempdir().unwrap();
    // The per-message topology here (ingest per message); the embedded-broker test runs the
    // default (firehose).
    let s = up(
        dir.path(),
        &["--broker", &broker, "--topology", "per-message"],
    );
    assert_eq!(s["broker"], broker.as_str());
    check_run(dir.path(), &s);
}

/// The quantity of the cost lines named `prefix`.
fn line_quantity(s: &Value, prefix: &str) -> f64 {
    cost_lines(s, prefix, "quantity")
}

#[test]
fn the_kinesis_topology_against_mosquitto_takes_basic_ingest_topics_without_a_message_charge() {
    let _alone = MOSQUITTO.lock().unwrap_or_else(|e| e.into_inner());
    let broker = need_env("IOTPIPE_TEST_MQTT");
    let dir = tempfile::tempdir().unwrap();
    // mosquitto routes `$aws/rules/...`: the devices publish there, the rule subscribes to
    // its own Basic Ingest topic (and would get nothing if it did not).
    let s = up(dir.path(), &["--broker", &broker, "--topology", "kinesis"]);
    check_run(dir.path(), &s);
    let input = s["input"].as_u64().unwrap();
    assert!(input > 0, "{s}");
    assert_eq!(line_quantity(&s, "IoT Core messaging"), 0.0, "{s}");
    assert_eq!(
        line_quantity(&s, "IoT rules triggered"),
        input as f64,
        "{s}"
    );
    // The event-source mapping read every message and invoked ingest in batches.
    assert_eq!(s["event_source"]["records"], input, "{s}");
    let batches = s["event_source"]["invocations"].as_u64().unwrap();
    assert!(batches > 0 && batches < input, "{s}");
    assert_eq!(s["cost"]["topology"], "kinesis");

    // The per-message baseline's devices publish the plain topic: one charge per message.
    let pm_dir = tempfile::tempdir().unwrap();
    let pm = up(
        pm_dir.path(),
        &["--broker", &broker, "--topology", "per-message"],
    );
    assert!(
        line_quantity(&pm, "IoT Core messaging") >= pm["input"].as_f64().unwrap(),
        "{pm}"
    );
}

/// Log lines go around the status line. In a terminal (a pseudo-terminal from `script`),
/// the line the Firehose emulator logs at the default level during the final flush starts
/// on a cleared line; before, it was written after the status line's text and the next
/// redraw left the two torn together on one line. Piped, the log has no colour codes.
#[test]
fn log_lines_go_around_the_status_line_and_carry_no_colour_codes_when_piped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let typescript = dir.path().join("typescript");
    let cmd = format!(
        "'{}' up --devices 2 --rate 5 --duration 2s --data '{}'",
        iotpipe_tests::bin("iotpipe").display(),
        data.display()
    );
    let status = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd])
        .arg(&typescript)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("script (util-linux) on PATH, for a pseudo-terminal");
    assert!(status.success(), "iotpipe up under script failed: {status}");
    let text = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    let logged = "emulated Firehose delivery stream finished";
    let at = text
        .find(logged)
        .unwrap_or_else(|| panic!("no {logged:?} in {text}"));
    // What is on screen of the log's terminal line when its text starts: what follows the
    // last carriage return or erase-line since the last newline, colour codes removed.
    let line = &text[text[..at].rfind('\n').map_or(0, |i| i + 1)..at];
    let from = [
        line.rfind('\r').map(|i| i + 1),
        line.rfind("\x1b[2K").map(|i| i + 4),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    let on_screen = strip_colour(&line[from..]);
    assert!(
        !on_screen.contains("flushing") && on_screen.trim_end().ends_with("local::firehose:"),
        "the log line shares its terminal line with the status line: {on_screen:?}"
    );

    let mut piped = iotpipe(&["up", "--devices", "2", "--rate", "5", "--duration", "1s"]);
    piped
        .arg("--data")
        .arg(dir.path().join("piped"))
        .env("RUST_LOG", "info");
    let stderr = String::from_utf8_lossy(&run(&mut piped).stderr).into_owned();
    assert!(stderr.contains(logged), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in piped logs: {stderr}"
    );
}

/// `s` without its ANSI escape sequences (`ESC [` … a letter).
fn strip_colour(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

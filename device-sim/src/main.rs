//! `device-sim`: simulate a fleet of IoT devices publishing telemetry over MQTT.
//!
//! Parses flags into a [`device_sim::SimConfig`], then either publishes
//! ([`device_sim::run_with_counters`], with a progress bar and a summary) or writes the
//! payload stream to a file (`--dump`).

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use device_sim::config::{DEFAULT_BROKER, DEFAULT_CONNECT_RATE};
use device_sim::fleet::FleetLayout;
use device_sim::progress::BarWriter;
use device_sim::{BrokerUrl, LiveCounters, MqttVersion, QoS, SimConfig, SimSummary};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

const AFTER_HELP: &str = "\
What it publishes:
  Each device is its own MQTT client (client id = device id, e.g. sensor-000001) and
  publishes on dt/FLEET/DEVICE_ID/telemetry the JSON of the data contract:
    {\"device_id\":\"sensor-000001\",\"seq\":0,\"ts\":1764072000123,
     \"metrics\":{\"battery\":3.912,\"humidity\":41.3,\"temperature\":22.87},\"fw\":\"1.4.2\"}
  seq counts up by 1 per device from --first-seq; ts (epoch ms) follows the schedule from
  --start. Each device sends ceil(rate x duration) messages; devices connect at
  --connect-rate per second, so a run takes about duration + devices/connect-rate.
  QoS 1 messages unacknowledged when a connection drops are republished after the
  reconnect (backoff with jitter); --offline-buffer bounds what a device holds back.
  Large fleets: every device is a socket; device-sim raises its open-file limit to the
  hard limit (`ulimit -Hn`) and says so when that is too low.

Examples:
  # 10 devices, 1 message/s each, for 30 s, to a local broker (`iotpipe up`, or mosquitto):
  device-sim

  # 2000 devices at 1 message/s for 15 s, QoS 1, summary as JSON on the last stdout line:
  device-sim --broker mqtt://127.0.0.1:1883 --devices 2000 --rate 1 --duration 15s \\
      --qos 1 --summary-json

  # The same payloads every time, without a broker (one JSON object per line):
  device-sim --devices 3 --rate 2 --duration 10s --seed 42 \\
      --start 2025-11-25T12:00:00Z --dump payloads.jsonl

  # A fleet of several device types (env sensors, GPS trucks, presses) from a file:
  device-sim --fleet device-sim/fleet.example.toml --duration 1m

  # Mutual TLS with one certificate for every device (e.g. a mosquitto with
  # require_certificate true):
  device-sim --broker mqtts://127.0.0.1:8883 --ca ca.pem --cert client.pem --key client.key

  # AWS IoT Core, one certificate per device (infra/provision-devices.sh --out certs):
  device-sim --broker mqtts://PREFIX-ats.iot.eu-west-1.amazonaws.com:8883 \\
      --cert-dir certs --devices 10 --device-prefix sensor-
  # ... the same through port 443 (ALPN x-amzn-mqtt-ca is offered automatically):
  device-sim --broker mqtts://PREFIX-ats.iot.eu-west-1.amazonaws.com:443 --cert-dir certs

  # MQTT 5 with persistent sessions (kept 1 h after each device disconnects):
  device-sim --mqtt-version 5 --clean-session false --session-expiry 1h

  # A reproducible reliability test: 1 % duplicates and reordering, 0.1 % broken payloads,
  # a disconnect storm every 2 minutes; the summary counts every fault per device:
  device-sim --devices 500 --duration 10m --fault-duplicate 0.01 --fault-out-of-order 0.01 \\
      --fault-malformed 0.001 --fault-disconnect-storms 0.5 --summary-json

  # Device-side batches of 20 readings per publish (JSON arrays ingest accepts):
  device-sim --batch 20 --rate 10

  # Watch what arrives at the broker (package mosquitto-clients):
  mosquitto_sub -h 127.0.0.1 -p 1883 -t 'dt/+/+/telemetry' -v

Exit status: 0 when every message was confirmed (PUBACK for QoS 1, written for QoS 0);
1 on an error (bad flag, broker unreachable); 2 when some messages failed.";

/// Simulate a fleet of IoT devices publishing telemetry over MQTT.
///
/// Every device connects with its own client id and publishes the canonical telemetry
/// JSON at a fixed rate. Payloads are deterministic: the same --seed and --start give a
/// byte-identical stream, which --dump writes to a file without any broker.
#[derive(Debug, Parser)]
#[command(name = "device-sim", version, after_help = AFTER_HELP)]
struct Cli {
    /// MQTT broker to publish to: mqtt://HOST:PORT (port 1883 when omitted) or, with TLS, mqtts://HOST:PORT (8883; AWS IoT Core: mqtts://PREFIX-ats.iot.REGION.amazonaws.com, port 8883 or 443).
    #[arg(long, value_name = "URL", default_value = DEFAULT_BROKER)]
    broker: BrokerUrl,

    /// TLS: PEM file of the CA that signed the broker's certificate (AWS IoT Core: AmazonRootCA1.pem). Default: DIR/AmazonRootCA1.pem with --cert-dir if present, else the system trust store.
    #[arg(long, value_name = "FILE", help_heading = "TLS (mqtts://)")]
    ca: Option<PathBuf>,

    /// TLS: PEM client certificate shared by every device (mutual TLS); needs --key.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "TLS (mqtts://)",
        requires = "key"
    )]
    cert: Option<PathBuf>,

    /// TLS: PEM private key of --cert.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "TLS (mqtts://)",
        requires = "cert"
    )]
    key: Option<PathBuf>,

    /// TLS: one certificate per device from DIR: DIR/DEVICE_ID/cert.pem + private.key (what infra/provision-devices.sh --out DIR writes) or DIR/DEVICE_ID.pem + DEVICE_ID.key.
    #[arg(long, value_name = "DIR", help_heading = "TLS (mqtts://)", conflicts_with_all = ["cert", "key"])]
    cert_dir: Option<PathBuf>,

    /// TLS: ALPN protocol(s) to offer, comma-separated. Default: x-amzn-mqtt-ca for an AWS IoT host on port 443 (MQTT over 443), none otherwise.
    #[arg(
        long,
        value_name = "PROTO",
        help_heading = "TLS (mqtts://)",
        value_delimiter = ','
    )]
    alpn: Vec<String>,

    /// MQTT keep-alive (e.g. 30s, 5m; 0 = off): the broker drops a device silent for 1.5 x this. AWS IoT Core accepts 30s-20m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration, help_heading = "MQTT")]
    keep_alive: Duration,

    /// true: every connection starts a clean session. false: the broker keeps each device's session after it disconnects (persistent session; it outlives the run).
    #[arg(long, value_name = "true|false", default_value_t = true, action = clap::ArgAction::Set, help_heading = "MQTT")]
    clean_session: bool,

    /// MQTT protocol version: 3.1.1 or 5.
    #[arg(
        long,
        value_name = "3.1.1|5",
        default_value = "3.1.1",
        help_heading = "MQTT"
    )]
    mqtt_version: MqttVersion,

    /// MQTT 5 with --clean-session false: how long the broker keeps a device's session after it disconnects (AWS IoT Core: default 1h, at most 7 days).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration, help_heading = "MQTT")]
    session_expiry: Duration,

    /// AWS IoT Basic Ingest: publish to $aws/rules/RULE/dt/FLEET/DEVICE_ID/telemetry, straight to the IoT rule RULE (no broker fan-out, no messaging charge).
    #[arg(long, value_name = "RULE", help_heading = "MQTT")]
    basic_ingest: Option<String>,

    /// Fleet name (the FLEET segment of the topic dt/FLEET/DEVICE_ID/telemetry), or a fleet file (*.toml) with device types, metric generators and defaults for these flags (see device-sim/fleet.example.toml).
    #[arg(long, value_name = "NAME|FILE.toml", default_value = device_sim::config::DEFAULT_FLEET)]
    fleet: String,

    /// Number of simulated devices, each its own MQTT connection.
    #[arg(long, value_name = "N", default_value_t = 10)]
    devices: usize,

    /// Messages per second per device; fractions allowed (0.1 = one every 10 s), at most 1000.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 1.0)]
    rate: f64,

    /// Event time each device covers, e.g. 30s, 2m, 1h 30m; a device sends ceil(rate x duration) messages.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// MQTT quality of service: 0 (at most once) or 1 (at least once: the broker acknowledges every message).
    #[arg(long, value_name = "0|1", default_value = "1", help_heading = "MQTT")]
    qos: QoS,

    /// Seed of the generated readings: the same seed with the same --start gives byte-identical payloads.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// Event time of the first message: RFC 3339 (2025-11-25T12:00:00Z) or epoch milliseconds. Default: now.
    #[arg(long, value_name = "TIME", value_parser = parse_start)]
    start: Option<i64>,

    /// Device-id prefix: "sensor-" names the devices sensor-000001, sensor-000002, ...
    #[arg(long, value_name = "PREFIX", default_value = device_sim::config::DEFAULT_DEVICE_PREFIX)]
    device_prefix: String,

    /// seq of every device's first message (later messages count up by 1).
    #[arg(long, value_name = "N", default_value_t = 0)]
    first_seq: u64,

    /// New connections per second while the fleet comes up, so a large fleet does not stampede the broker.
    #[arg(long, value_name = "PER_SECOND", default_value_t = DEFAULT_CONNECT_RATE)]
    connect_rate: f64,

    /// How long the broker may go without acknowledging anything at the end before a device gives up on its outstanding QoS 1 messages (a broker still acknowledging is waited for; after Ctrl-C, at most this long).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    ack_timeout: Duration,

    /// Messages a device holds back while it cannot publish (broker down); beyond that the oldest are dropped and counted.
    #[arg(long, value_name = "MESSAGES", default_value_t = device_sim::config::DEFAULT_OFFLINE_BUFFER)]
    offline_buffer: u64,

    /// Device-side batching: each publish is a JSON array of N consecutive messages (the ledger still counts messages). 1 = single objects.
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,

    /// Probability (0-1) that a publish is sent twice.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        help_heading = "Fault injection (seeded by --seed; counted in the summary)"
    )]
    fault_duplicate: f64,

    /// Probability (0-1) that a publish is sent after the next one.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        help_heading = "Fault injection (seeded by --seed; counted in the summary)"
    )]
    fault_out_of_order: f64,

    /// Probability (0-1) that a message's ts is off by +/- --fault-clock-skew-by.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        help_heading = "Fault injection (seeded by --seed; counted in the summary)"
    )]
    fault_clock_skew: f64,

    /// How far a skewed clock is off.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration, help_heading = "Fault injection (seeded by --seed; counted in the summary)")]
    fault_clock_skew_by: Duration,

    /// Probability (0-1) that a payload is cut in half (invalid JSON; quarantined downstream).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        help_heading = "Fault injection (seeded by --seed; counted in the summary)"
    )]
    fault_malformed: f64,

    /// Probability (0-1) that a payload is padded past 128 KiB (rejected downstream; AWS IoT Core disconnects such a client).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        help_heading = "Fault injection (seeded by --seed; counted in the summary)"
    )]
    fault_oversize: f64,

    /// Disconnect storms per minute: at seeded instants every device drops its connection at once and reconnects.
    #[arg(
        long,
        value_name = "PER_MINUTE",
        default_value_t = 0.0,
        help_heading = "Fault injection (seeded by --seed; counted in the summary)"
    )]
    fault_disconnect_storms: f64,

    /// Write the JSON payloads to FILE, one per line in time order, instead of publishing ("-" = stdout). No broker needed.
    #[arg(long, value_name = "FILE")]
    dump: Option<PathBuf>,

    /// Print the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    summary_json: bool,

    /// No progress bar and no human summary (errors and warnings still go to stderr).
    #[arg(short, long)]
    quiet: bool,

    /// More log output on stderr: -v info, -vv debug, -vvv debug for the MQTT client too. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Flags that describe the default sensors, which a fleet file's device types replace.
const DEFAULT_FLEET_FLAGS: [&str; 3] = ["devices", "rate", "device_prefix"];

impl Cli {
    /// The fleet file named by `--fleet`, if it names one (a fleet name cannot contain `.`
    /// or `/`).
    fn fleet_file(&self) -> Option<PathBuf> {
        (self.fleet.ends_with(".toml") || self.fleet.contains(std::path::MAIN_SEPARATOR))
            .then(|| PathBuf::from(&self.fleet))
    }

    /// The run's configuration: the fleet file's (if any) with the flags given on the
    /// command line on top, or the flags alone. `given(id)` says whether a flag was typed.
    fn sim_config(&self, given: impl Fn(&str) -> bool) -> anyhow::Result<SimConfig> {
        let file = self.fleet_file();
        let mut cfg = match &file {
            Some(path) => SimConfig::load(path)?,
            None => SimConfig {
                fleet: self.fleet.clone(),
                ..SimConfig::default()
            },
        };
        // Without a file every flag applies (its default is the library's default).
        let set = |id: &str| file.is_none() || given(id);
        let conflicting = DEFAULT_FLEET_FLAGS.iter().find(|f| given(f));
        if let (false, Some(flag)) = (cfg.device_types.is_empty(), conflicting) {
            anyhow::bail!(
                "--{} does not apply to a fleet file with [[device_type]] tables: \
                 change count, interval or id_prefix in {}",
                flag.replace('_', "-"),
                self.fleet
            );
        }
        if set("broker") {
            cfg.broker = self.broker.clone();
        }
        if set("devices") {
            cfg.devices = self.devices;
        }
        if set("rate") {
            cfg.rate = self.rate;
        }
        if set("duration") {
            cfg.duration = self.duration;
        }
        if set("qos") {
            cfg.qos = self.qos;
        }
        if set("seed") {
            cfg.seed = self.seed;
        }
        if self.start.is_some() {
            cfg.start_ms = self.start;
        }
        if set("device_prefix") {
            cfg.device_prefix = self.device_prefix.clone();
        }
        if set("first_seq") {
            cfg.first_seq = self.first_seq;
        }
        if set("connect_rate") {
            cfg.connect_rate = self.connect_rate;
        }
        if set("ack_timeout") {
            cfg.ack_timeout = self.ack_timeout;
        }
        if set("offline_buffer") {
            cfg.offline_buffer = self.offline_buffer;
        }
        if set("keep_alive") {
            cfg.keep_alive = self.keep_alive;
        }
        if set("clean_session") {
            cfg.clean_session = self.clean_session;
        }
        if set("batch") {
            cfg.batch = self.batch;
        }
        let f = &mut cfg.faults;
        for (id, value, slot) in [
            ("fault_duplicate", self.fault_duplicate, &mut f.duplicate),
            (
                "fault_out_of_order",
                self.fault_out_of_order,
                &mut f.out_of_order,
            ),
            ("fault_clock_skew", self.fault_clock_skew, &mut f.clock_skew),
            ("fault_malformed", self.fault_malformed, &mut f.malformed),
            ("fault_oversize", self.fault_oversize, &mut f.oversize),
            (
                "fault_disconnect_storms",
                self.fault_disconnect_storms,
                &mut f.disconnect_storms,
            ),
        ] {
            if set(id) {
                *slot = value;
            }
        }
        if set("fault_clock_skew_by") {
            f.clock_skew_by = self.fault_clock_skew_by;
        }
        if set("mqtt_version") {
            cfg.mqtt_version = self.mqtt_version;
        }
        if set("session_expiry") {
            cfg.session_expiry = self.session_expiry;
        }
        if self.basic_ingest.is_some() {
            cfg.basic_ingest.clone_from(&self.basic_ingest);
        }
        // TLS flags replace the fleet file's settings one by one.
        if self.ca.is_some() {
            cfg.tls.ca.clone_from(&self.ca);
        }
        if self.cert.is_some() {
            cfg.tls.cert.clone_from(&self.cert);
            cfg.tls.key.clone_from(&self.key);
            cfg.tls.cert_dir = None;
        }
        if self.cert_dir.is_some() {
            cfg.tls.cert_dir.clone_from(&self.cert_dir);
            cfg.tls.cert = None;
            cfg.tls.key = None;
        }
        if !self.alpn.is_empty() {
            cfg.tls.alpn.clone_from(&self.alpn);
        }
        // Pin the event-time origin now, so that the summary can say how to reproduce it.
        cfg.start_ms = Some(cfg.start_ms.unwrap_or_else(device_sim::now_ms));
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `--start`: epoch milliseconds or RFC 3339.
fn parse_start(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!(
                "{e}: give RFC 3339 (2025-11-25T12:00:00Z) or epoch milliseconds (1764072000000)"
            )
        })
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    let cfg = match cli.sim_config(given) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {}", telemetry::logging::error_chain(e.as_ref()));
            return ExitCode::FAILURE;
        }
    };
    if cli.dump.is_none()
        && let Err(msg) = raise_open_file_limit(FleetLayout::new(&cfg).devices())
    {
        eprintln!("device-sim: warning: {msg}");
    }
    // A progress bar only for an interactive publishing run; logs are routed around it.
    let bar = if cli.quiet || cli.dump.is_some() {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    init_tracing(cli.verbose, bar.clone());

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.dump {
            Some(path) => dump(&cli, &cfg, path).map(|()| ExitCode::SUCCESS),
            None => publish(&cli, &cfg, bar).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", telemetry::logging::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// File descriptors a run needs beyond one socket per device (runtime, stdio, TLS files).
const SPARE_FDS: u64 = 256;

/// Every device is a socket: raises the soft open-file limit (often 1024) to the hard
/// limit when the fleet needs more, or says what to do when even that is too low.
#[cfg(unix)]
fn raise_open_file_limit(devices: usize) -> Result<(), String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let need = devices as u64 + SPARE_FDS;
    let lim = getrlimit(Resource::Nofile);
    let current = lim.current.unwrap_or(u64::MAX);
    if current >= need {
        return Ok(());
    }
    let hard = lim.maximum.unwrap_or(u64::MAX);
    let raised = rustix::process::Rlimit {
        current: Some(hard.min(need.max(current))),
        maximum: lim.maximum,
    };
    setrlimit(Resource::Nofile, raised)
        .map_err(|e| format!("cannot raise the open-file limit from {current}: {e}"))?;
    if hard < need {
        return Err(format!(
            "{devices} devices need about {need} open files but the hard limit is {hard}: \
             raise it (`ulimit -Hn {need}` as root, or LimitNOFILE= in a systemd unit)"
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn raise_open_file_limit(_devices: usize) -> Result<(), String> {
    Ok(())
}

fn init_tracing(verbose: u8, bar: ProgressBar) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,device_sim=info",
        2 => "warn,device_sim=debug",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BarWriter::new(bar))
        .with_ansi(io::stderr().is_terminal())
        .with_target(verbose >= 3)
        .init();
}

/// The `--summary-json` object of a `--dump` run.
#[derive(Serialize)]
struct DumpSummary<'a> {
    mode: &'static str,
    file: &'a str,
    devices: usize,
    /// Payload lines written (publishes: a batch is one line; a duplicate is a line).
    messages: u64,
    /// Readings (seqs) in them, duplicates not counted again.
    readings: u64,
    bytes: u64,
    seed: u64,
    start_ms: i64,
    batch: usize,
    faults: device_sim::faults::FaultCounts,
}

fn dump(cli: &Cli, cfg: &SimConfig, path: &PathBuf) -> anyhow::Result<()> {
    let start_ms = cfg.start_ms.unwrap_or_default();
    let mut stream = device_sim::try_publishes(cfg)?;
    let devices = FleetLayout::new(cfg).devices();
    let to_stdout = path.as_os_str() == "-";
    let out: Box<dyn Write> = if to_stdout {
        Box::new(io::stdout().lock())
    } else {
        Box::new(
            File::create(path)
                .with_context(|| format!("cannot create the dump file {}", path.display()))?,
        )
    };
    let mut out = BufWriter::new(out);
    let (mut messages, mut readings, mut bytes) = (0u64, 0u64, 0u64);
    let written = (|| -> io::Result<()> {
        for p in stream.by_ref() {
            out.write_all(&p.payload)?;
            out.write_all(b"\n")?;
            messages += 1;
            readings += p.messages;
            bytes += p.payload.len() as u64 + 1;
        }
        out.flush()
    })();
    match written {
        Ok(()) => {}
        // `device-sim --dump - | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot write the dump to {}", path.display()));
        }
    }
    drop(out);
    let shown = path.display().to_string();
    if !cli.quiet {
        eprintln!(
            "device-sim: wrote {messages} payloads ({bytes} bytes) of {devices} devices to {}; \
             --seed {} --start {start_ms} reproduces them",
            if to_stdout { "stdout" } else { shown.as_str() },
            cfg.seed,
        );
    }
    if cli.summary_json {
        let line = serde_json::to_string(&DumpSummary {
            mode: "dump",
            file: &shown,
            devices,
            messages,
            readings,
            bytes,
            seed: cfg.seed,
            start_ms,
            batch: cfg.batch,
            faults: stream.counts(),
        })?;
        print_stdout_line(&line)?;
    }
    Ok(())
}

async fn publish(cli: &Cli, cfg: &SimConfig, bar: ProgressBar) -> anyhow::Result<ExitCode> {
    let layout = FleetLayout::new(cfg);
    let total = layout.total_messages();

    let (stop_tx, stop_rx) = watch::channel(false);
    let ack_timeout = cfg.ack_timeout;
    let stopper_bar = bar.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stopper_bar.suspend(|| {
                eprintln!(
                    "device-sim: stopping; waiting up to {} for acknowledgements \
                     (Ctrl-C again to quit at once)",
                    humantime::format_duration(ack_timeout)
                );
            });
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });

    let live = Arc::new(LiveCounters::default());
    bar.set_length(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:20}] {pos}/{len} sent {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let ticker = tokio::spawn(update_bar(bar.clone(), Arc::clone(&live), layout.devices()));

    let result = device_sim::run_with_counters(cfg.clone(), stop_rx, live).await;
    ticker.abort();
    bar.finish_and_clear();
    let summary = result?;

    if !cli.quiet {
        eprint!("{}", human_summary(&summary, cfg));
    }
    if cli.summary_json {
        print_stdout_line(&serde_json::to_string(&summary)?)?;
    }
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Refreshes the progress bar five times a second: sent, rate, acknowledgements, errors.
async fn update_bar(bar: ProgressBar, live: Arc<LiveCounters>, devices: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last = (tokio::time::Instant::now(), 0u64);
    let mut rate = 0.0;
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let sent = LiveCounters::get(&live.sent);
        let dt = now.duration_since(last.0).as_secs_f64();
        if dt >= 1.0 {
            rate = (sent - last.1) as f64 / dt;
            last = (now, sent);
        }
        bar.set_position(sent);
        bar.set_message(format!(
            "{rate:.0}/s | acked {} | failed {} | online {}/{devices} | conn errors {}",
            LiveCounters::get(&live.acknowledged),
            LiveCounters::get(&live.failed),
            LiveCounters::get(&live.connected),
            LiveCounters::get(&live.connection_errors),
        ));
    }
}

fn human_summary(s: &SimSummary, cfg: &SimConfig) -> String {
    let latency = match (s.publish_latency_p50_ms, s.publish_latency_p99_ms) {
        (Some(p50), Some(p99)) => format!("p50 {p50:.3} ms, p99 {p99:.3} ms (write to PUBACK)"),
        _ if s.qos == QoS::AtMostOnce => "n/a at QoS 0".to_owned(),
        _ => "n/a (nothing acknowledged)".to_owned(),
    };
    let start = chrono::DateTime::from_timestamp_millis(s.start_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| s.start_ms.to_string());
    let verdict = if s.failed == 0 {
        "every message confirmed".to_owned()
    } else {
        format!(
            "{} messages FAILED (the broker acknowledged nothing for --ack-timeout {})",
            s.failed,
            humantime::format_duration(cfg.ack_timeout)
        )
    };
    let f = &s.faults;
    let faults = if *f == device_sim::faults::FaultCounts::default() && s.disconnect_storms == 0 {
        String::new()
    } else {
        format!(
            "  faults        duplicated {} reordered {} skewed {} malformed {} oversize {} \
             disconnects {} (in {} storms)\n",
            f.duplicated,
            f.reordered,
            f.skewed,
            f.malformed,
            f.oversize,
            f.disconnects,
            s.disconnect_storms
        )
    };
    format!(
        "device-sim: {devices} devices, {nominal} msg/s fleet-wide for {dur} (QoS {qos}, MQTT {version}) to {broker}, fleet {fleet:?}\n\
         \x20 scheduled     {scheduled}\n\
         \x20 sent          {sent}  ({send_rate} msg/s)\n\
         \x20 acknowledged  {acked}\n\
         \x20 failed        {failed}  (dropped by offline buffers: {dropped})\n\
         \x20 republished   {repub}   connection errors {errors}\n\
         \x20 latency       {latency}\n\
         {faults}\
         \x20 elapsed       {elapsed:.2} s; {started}/{devices} devices started, {connected} connected ({conn_rate} connections/s)\n\
         \x20 event time    from {start}; the same flags with --seed {seed} --start {start_ms} reproduce the payloads\n\
         device-sim: {verdict}\n",
        devices = s.devices,
        nominal = s.nominal_rate,
        dur = humantime::format_duration(cfg.duration),
        qos = s.qos,
        version = s.mqtt_version,
        broker = s.broker,
        fleet = s.fleet,
        scheduled = s.scheduled,
        sent = s.sent,
        send_rate = s.send_rate,
        acked = s.acknowledged,
        failed = s.failed,
        dropped = s.dropped,
        repub = s.republished,
        errors = s.connection_errors,
        elapsed = s.elapsed.as_secs_f64(),
        started = s.devices_started,
        connected = s.devices_connected,
        conn_rate = s.connect_rate,
        seed = s.seed,
        start_ms = s.start_ms,
    )
}

/// The one place this binary writes to stdout (payload dumps aside): a machine-readable
/// line for scripts.
fn print_stdout_line(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use device_sim::config::DEFAULT_ACK_TIMEOUT;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn start_accepts_rfc3339_and_epoch_milliseconds() {
        assert_eq!(parse_start("1764072000000"), Ok(1_764_072_000_000));
        assert_eq!(parse_start("2025-11-25T12:00:00Z"), Ok(1_764_072_000_000));
        assert_eq!(
            parse_start("2025-11-25T13:00:00+01:00"),
            Ok(1_764_072_000_000)
        );
        assert!(parse_start("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let cli = Cli::parse_from(["device-sim", "--start", "0"]);
        let cfg = cli.sim_config(|_| false).unwrap();
        let lib = SimConfig {
            start_ms: Some(0),
            ..SimConfig::default()
        };
        assert_eq!(cfg, lib);
        assert_eq!(cli.ack_timeout, DEFAULT_ACK_TIMEOUT);
    }

    #[test]
    fn a_fleet_file_gives_defaults_that_typed_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "fleet = \"plant\"\nseed = 9\nduration = \"1m\"\nqos = 0\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let cli = Cli::parse_from(["device-sim", "--fleet", p, "--seed", "3"]);
        let cfg = cli.sim_config(|id| id == "seed").unwrap();
        assert_eq!((cfg.fleet.as_str(), cfg.seed), ("plant", 3));
        assert_eq!(cfg.duration, Duration::from_secs(60));
        assert_eq!(cfg.qos, QoS::AtMostOnce);
    }

    #[test]
    fn default_sensor_flags_conflict_with_device_types() {
        let cli = Cli::parse_from([
            "device-sim",
            "--fleet",
            "fleet.example.toml",
            "--devices",
            "5",
        ]);
        let err = cli
            .sim_config(|id| id == "devices")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--devices does not apply"), "{err}");
    }
}

//! `iotpipe ledger`, and the ledger totals of `iotpipe up`'s summary: thin wiring around
//! [`analytics::ledger`], where the definitions live.

use std::path::PathBuf;
use std::time::Duration;

use analytics::ledger::{self, LedgerConfig, LedgerTotals, SentLedger};
use anyhow::Context as _;

use local::stack;

use crate::args::{DataArg, Format, parse_time};
use crate::summary;

/// The help after the flags: what each column means.
const COLUMNS_HELP: &str = "\
Columns (one row per device and event-time window, then a TOTAL row):
  device_id     the device (AWS IoT thing name)
  window_start  start of the window (UTC) the messages' event time falls in
  sent          messages of the device's sent range placed in this window
                (= received + rejected with a readable seq + missing)
  received      distinct messages (device_id, seq) in the telemetry Parquet
  duplicated    extra deliveries of those messages beyond the first (messages, not rows)
  missing       seqs of the sent range never received nor rejected; a missing message is
                placed in the window of the previous message of the device (by seq)
  late          messages first received at or after window end + --allowed-lateness
  rejected      quarantined messages of the device (by receive time)
  sent_from     summary: the range is first_seq..=last_seq of --sent, minus what the
                device dropped itself; observed: the smallest to the largest seq seen
                (cannot see messages lost at either end)

A message is (device_id, seq): devices number their messages +1 each. The rollup has no
watermark (it recomputes any window late data touches), so `late` uses its own rule: a
late message changed its window's statistics after the window closed plus the grace.
Exit status is 0 even when messages are missing; a warning line says so on stderr.

Examples:
  device-sim --broker mqtt://127.0.0.1:1883 --devices 10 --duration 60s --summary-json > sim.out
  iotpipe ledger --data ./data --sent sim.out
  iotpipe ledger --data ./data --window 1h --format json
  iotpipe ledger --data s3://my-bucket/iotpipe --since 2026-11-25T16:00:00Z --format csv";

/// Arguments of `iotpipe ledger`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = COLUMNS_HELP)]
pub(crate) struct LedgerArgs {
    #[command(flatten)]
    data: DataArg,
    /// device-sim's summary (the output of `device-sim --summary-json`, or its last line):
    /// each device's first_seq, last_seq and dropped set its sent range. Without it the
    /// range is the seqs observed in the data.
    #[arg(long, value_name = "FILE")]
    sent: Option<PathBuf>,
    /// Window length the rows are grouped by (event time): 1m, 1h or 1d.
    #[arg(long, default_value = "1m")]
    window: analytics::Window,
    /// How long after its window ends a message may arrive without counting as late.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    allowed_lateness: Duration,
    /// Count only what was received at or after this time (RFC 3339 or epoch ms), e.g.
    /// the start of one run when the data location holds several (seqs restart per run).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Only this device.
    #[arg(long)]
    device: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// `iotpipe ledger`.
pub(crate) async fn run(a: LedgerArgs) -> anyhow::Result<()> {
    let sent = match &a.sent {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read {}: give the file device-sim --summary-json wrote",
                    path.display()
                )
            })?;
            Some(SentLedger::from_summary(&text).with_context(|| path.display().to_string())?)
        }
        None => None,
    };
    let store = stack::open_existing_store(&a.data.data)?;
    let cfg = LedgerConfig {
        window: a.window,
        allowed_lateness_ms: i64::try_from(a.allowed_lateness.as_millis()).unwrap_or(i64::MAX),
        since_ms: a.since,
        device: a.device,
        ..LedgerConfig::default()
    };
    let started = std::time::Instant::now();
    let l = ledger::compute(store, &cfg, sent.as_ref()).await?;
    let elapsed = started.elapsed();
    let out = match a.format {
        Format::Json => serde_json::to_string_pretty(&l)?,
        Format::Csv => ledger::to_csv(&l),
        Format::Table => ledger::to_table(&l),
    };
    summary::print_line(out.trim_end());
    eprintln!(
        "ledger: windows of {}, allowed lateness {}; {} telemetry file(s), {} row(s), {} \
         quarantine record(s) ({} attributable to no device) in {:.2} s",
        l.window,
        humantime::format_duration(a.allowed_lateness),
        l.files_read,
        l.rows_read,
        l.quarantine_records,
        l.totals.rejected_unattributed,
        elapsed.as_secs_f64()
    );
    if l.rows.is_empty() {
        eprintln!("no messages found: run `iotpipe up` or `iotpipe replay` first");
    }
    for w in l.warnings() {
        eprintln!("{w}");
    }
    Ok(())
}

/// The ledger totals of an `iotpipe up` run: what was received at or after `since_ms`
/// (the run's start) in `data`, against the simulator's own ledger.
/// The simulator's per-device seq ranges, as the ledger takes them.
pub(crate) fn sent_of(sim: &device_sim::SimSummary) -> SentLedger {
    SentLedger {
        per_device: sim
            .per_device
            .iter()
            .map(|(id, d)| {
                let s = ledger::DeviceSent {
                    first_seq: d.first_seq,
                    last_seq: d.last_seq,
                    dropped: d.dropped,
                };
                (id.clone(), s)
            })
            .collect(),
    }
}

pub(crate) async fn run_totals(
    data: &str,
    since_ms: i64,
    sim: &device_sim::SimSummary,
) -> anyhow::Result<LedgerTotals> {
    let sent = sent_of(sim);
    let cfg = LedgerConfig {
        since_ms: Some(since_ms),
        ..LedgerConfig::default()
    };
    let store = stack::open_store(data)?;
    let l = ledger::compute(store, &cfg, Some(&sent)).await?;
    Ok(l.totals)
}

//! The end-of-run summary: for people on stdout, and as one JSON object on the last line
//! with `--summary-json` (for scripts and tests).

use std::io::Write;

use analytics::render::{Column, Table};
use serde::Serialize;

use crate::cost::{Estimate, Traffic, estimate, run_fleet};
use crate::prices;
use local::meter::FnReport;
use local::stack::{FirehoseSummary, KinesisSummary, StackReport};
use telemetry::topic::{BASIC_INGEST_PREFIX, DEFAULT_RULE_NAME, TOPIC_FILTER};

/// Where the messages came from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum Source {
    /// Simulated devices over MQTT.
    Mqtt {
        /// Broker URL.
        broker: String,
        /// Messages the simulator published.
        sent: u64,
        /// Of those, acknowledged by the broker (QoS 1) or written (QoS 0).
        acknowledged: u64,
        /// Messages the IoT rule received from the broker.
        received: u64,
        /// Messages the embedded broker dropped from its full log before the rule read
        /// them (`--broker-log-mib`); `None` with an external broker, whose drops no
        /// subscriber can see (the ledger finds them as missing seqs).
        broker_dropped: Option<u64>,
        /// Whether the pipeline kept pace with the devices (`None`: not measured).
        #[serde(flatten)]
        pace: Option<Pace>,
    },
    /// Devices of the user's own (`iotpipe up --devices 0`) over MQTT.
    Devices {
        /// The plain MQTT URL.
        broker: String,
        /// The TLS URL, when the TLS listener ran.
        tls_broker: Option<String>,
        /// Messages the IoT rule received from the broker.
        received: u64,
        /// Messages the embedded broker dropped from its full log before the rule read
        /// them (`--broker-log-mib`); `None` with an external broker, whose drops no
        /// subscriber can see (the ledger finds them as missing seqs).
        broker_dropped: Option<u64>,
        /// Of `received`, what the rule took after the stop (Ctrl-C, `--duration`): what the
        /// broker still held for it then, and what the devices published while it drained.
        received_after_stop: u64,
        /// Messages the embedded broker took on the rule's topics (its meter of the rule's
        /// log, counted at least up to the moment the rule stopped reading): `received` +
        /// `broker_dropped` + what arrived after the rule stopped. `None` with an external
        /// broker.
        broker_appended: Option<u64>,
        /// Publishes the embedded broker took on topics the rule does not take (a device
        /// on the wrong topic: in no pipeline, as an IoT rule never sees them), counted
        /// like `broker_appended`. `None` with an external broker.
        other_topics: Option<u64>,
        /// What the devices published through the embedded broker's ports, by how IoT
        /// Core meters it. `None` with an external broker.
        port: Option<local::broker::PortCounts>,
    },
    /// A replay file.
    Replay {
        /// The file.
        file: String,
        /// Non-blank lines read (one payload each).
        lines: u64,
    },
    /// `iotpipe requeue`: what it took from each failure store.
    Requeue {
        /// Payloads fed from `quarantine/` (payload rejections and sink failures).
        from_quarantine: u64,
        /// Payloads fed from `errors/ingest-failed/` (the local dead letters).
        from_ingest_failed: u64,
        /// Payloads fed from `errors/processing-failed/` (Firehose's error output).
        from_processing_failed: u64,
        /// Payloads fed from `errors/iot/` (the IoT rule's error action).
        from_rule_errors: u64,
        /// Quarantined payload rejections left alone because no `--reason` named them.
        skipped_rejections: u64,
        /// Payloads already quarantined as rejections that the contract still rejects
        /// whole: not fed again, so that they are not quarantined a second time.
        still_rejected: u64,
        /// Error records whose data is neither a rule record, a stream record nor a
        /// reading (left where they are; see the warnings).
        unreadable_errors: u64,
    },
}

/// What the summary's MQTT line adds about the embedded broker's drops: nothing unless it
/// dropped some.
fn dropped_note(broker_dropped: Option<u64>) -> String {
    match broker_dropped {
        Some(n) if n > 0 => format!(", dropped unread by the broker (its log was full) {n}"),
        _ => String::new(),
    }
}

/// What the embedded broker took on the rule's topics and neither forwarded to the rule nor
/// dropped: what the devices published after the rule stopped reading.
fn unread_after_stop(appended: Option<u64>, received: u64, dropped: Option<u64>) -> u64 {
    appended.map_or(0, |a| a.saturating_sub(received + dropped.unwrap_or(0)))
}

/// Whether the pipeline kept pace with the simulated devices: the rate it sustained is
/// the rule's, as long as it was not behind when the devices stopped. (The run's
/// `messages_per_s` also counts start-up, the final flush and the rollup.)
#[derive(Debug, Clone, Serialize)]
pub struct Pace {
    /// Messages per second the devices sent, first write to last (device-sim's figure).
    pub send_rate: f64,
    /// Messages per second the rule received, first message to last.
    pub rule_rate: Option<f64>,
    /// Messages per second the rule received from its first message to its latest one
    /// before the devices stopped: what it took while they sent. Lower than `rule_rate` when the rule was
    /// starved while they sent and drained the broker's backlog fast after (1,000
    /// connections: BENCHMARKS.md, session 22).
    pub rule_rate_while_sending: Option<f64>,
    /// Messages the devices had sent that the rule had not received yet when they stopped
    /// (the broker held them).
    pub behind_at_stop: u64,
    /// Seconds after the devices stopped until the rule had received as many messages as
    /// they sent; `None` when it never did.
    pub caught_up_s: Option<f64>,
}

impl Pace {
    /// The summary's line.
    fn line(&self) -> String {
        let rate = |r: Option<f64>| r.map_or_else(|| "—".to_owned(), |r| format!("{r:.0}"));
        let rule = rate(self.rule_rate);
        let rule = if self.behind_at_stop == 0 {
            format!("{rule} msg/s (first message to last)")
        } else {
            format!(
                "{} msg/s while they sent, {rule} msg/s first message to last",
                rate(self.rule_rate_while_sending)
            )
        };
        let caught_up = match self.caught_up_s {
            _ if self.behind_at_stop == 0 => "kept up".to_owned(),
            Some(s) => format!(
                "{} message(s) behind when the devices stopped, caught up {s:.1} s later",
                self.behind_at_stop
            ),
            None => format!(
                "{} message(s) behind when the devices stopped, never caught up",
                self.behind_at_stop
            ),
        };
        format!(
            "pace: the devices sent {:.0} msg/s, the rule received {rule}; {caught_up}\n",
            self.send_rate
        )
    }
}

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Where the input came from.
    #[serde(flatten)]
    pub source: Source,
    /// Messages that entered ingest (an array payload counts each element).
    pub input: u64,
    /// Messages delivered to the stream.
    pub accepted: u64,
    /// Messages quarantined with their reason (under quarantine/).
    pub quarantined: u64,
    /// Readings in the accepted messages.
    pub readings: u64,
    /// Rows written to Parquet (by Firehose, plus what the raw transform wrote itself for
    /// device batches spanning event hours).
    pub rows: u64,
    /// The stream ingest wrote into: `local`, `kinesis:NAME` or `firehose:NAME`.
    pub stream: String,
    /// The topology the run took (`firehose`: no ingest, no stream; `kinesis`; `per-message`).
    pub topology: String,
    /// What the Kinesis reader did (`kinesis:NAME` only).
    pub kinesis: Option<KinesisSummary>,
    /// What the event-source mapping did (topology kinesis only).
    pub event_source: Option<local::event_source::EventSourceReport>,
    /// What happens after the stream when this run does not do it (`firehose:NAME`).
    pub note: Option<String>,
    /// The faults injected into the emulated services (`--inject`), if any.
    pub faults: Option<local::faults::FaultCounts>,
    /// Messages the rule handed to its error action, if any: the run fails after the
    /// summary ([`Summary::rule_errors_fail`]).
    pub rule_errors: Option<local::stack::RuleErrors>,
    /// Firehose accounting.
    pub firehose: FirehoseSummary,
    /// The final rollup.
    pub rollup: Option<analytics::RollupReport>,
    /// Every rollup invocation of the run (the dashboard dates a reading's arrival in the
    /// statistics from them).
    pub rollup_runs: Vec<telemetry::metering::RollupRun>,
    /// Per-function Lambda figures.
    pub functions: Vec<FnReport>,
    /// What it would have cost on AWS.
    pub cost: Estimate,
    /// The data directory.
    pub data: String,
    /// When the run ended (the summary was made), epoch ms.
    pub finished_at_ms: i64,
    /// Wall-clock length of the run, seconds.
    pub elapsed_s: f64,
    /// Messages ingested per second of wall clock.
    pub messages_per_s: f64,
    /// Mean handler time per message / record / run, µs, by function.
    pub us_per_item: Vec<(String, f64)>,
    /// Peak RSS of the whole process, MB.
    pub peak_rss_mb: u64,
    /// The delivery ledger's totals (`iotpipe up`: what this run's devices sent against
    /// what the run's data holds); `None` when not computed.
    pub ledger: Option<analytics::ledger::LedgerTotals>,
}

/// What one item of a function's handler time is: ingest handles messages, the transform
/// Firehose records, every other function whole runs (invocations).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Item {
    Message,
    Record,
    Run,
}

impl Item {
    fn of(function: &str) -> Self {
        match function {
            "ingest" => Self::Message,
            "transform" => Self::Record,
            _ => Self::Run,
        }
    }
}

/// A rate for people: whole numbers from 10 up, two significant digits below (a run of a
/// few real devices takes 0.2 messages/s, not 0).
fn rate(per_s: f64) -> String {
    if per_s >= 10.0 || per_s == 0.0 {
        format!("{per_s:.0}")
    } else if per_s >= 1.0 {
        format!("{per_s:.1}")
    } else {
        let decimals = (1 - per_s.log10().floor() as i32).clamp(2, 6) as usize;
        format!("{per_s:.decimals$}")
    }
}

/// What a run's month is priced over ([`crate::cost`]).
#[derive(Debug, Clone, Copy)]
pub enum MonthOver {
    /// The seconds devices published for, live (`iotpipe up`: the simulated fleet's first
    /// to last publish, or real devices' run until its stop).
    Publishing(f64),
    /// The events' own times, first and last `ts` (epoch ms) when any was read
    /// (`iotpipe replay`: a backfill runs as fast as the machine, not at the fleet's pace).
    EventTimes(Option<(i64, i64)>),
    /// No month: why (`iotpipe requeue` re-sends what a run already had).
    Not(&'static str),
}

impl Summary {
    /// Assembles the summary of a run; its month is priced over `over`.
    pub fn new(
        source: Source,
        r: &StackReport,
        functions: Vec<FnReport>,
        data: &str,
        over: MonthOver,
    ) -> anyhow::Result<Self> {
        let traffic = Traffic {
            messages: r.ingest.messages,
            accepted: r.ingest.accepted,
            readings: r.ingest.readings,
        };
        let fleet = match over {
            MonthOver::Publishing(s) => run_fleet(&r.usage, traffic, s, "their publishing"),
            MonthOver::EventTimes(Some((first, last))) => run_fleet(
                &r.usage,
                traffic,
                (last - first) as f64 / 1000.0,
                "the events' times",
            ),
            MonthOver::EventTimes(None) => Err("no message had an event time (`ts`)".into()),
            MonthOver::Not(why) => Err(why.to_owned()),
        };
        let cost = estimate(
            prices::embedded().map_err(anyhow::Error::msg)?,
            &r.usage,
            &functions,
            fleet,
        );
        let elapsed_s = r.usage.seconds;
        let messages_per_s = if elapsed_s > 0.0 {
            r.ingest.messages as f64 / elapsed_s
        } else {
            0.0
        };
        // Per item each function handles ([`Item`]).
        let us_per_item = functions
            .iter()
            .map(|f| {
                let items = match Item::of(&f.function) {
                    Item::Message => r.ingest.messages,
                    Item::Record => r.firehose.records_in,
                    Item::Run => f.invocations,
                };
                let us = if items > 0 {
                    f.total_duration_ms * 1000.0 / items as f64
                } else {
                    0.0
                };
                (f.function.clone(), us)
            })
            .collect();
        Ok(Self {
            source,
            input: r.ingest.messages,
            accepted: r.ingest.accepted,
            quarantined: r.ingest.quarantined,
            readings: r.ingest.readings,
            rows: r.firehose.rows_written + r.firehose.split_rows,
            stream: r.stream.clone(),
            topology: r.topology.clone(),
            kinesis: r.kinesis.clone(),
            event_source: r.event_source.clone(),
            note: r.note.clone(),
            faults: r.faults,
            rule_errors: r.rule_errors.clone(),
            firehose: r.firehose.clone(),
            rollup: r.rollup.clone(),
            rollup_runs: r.rollup_runs.clone(),
            functions,
            cost,
            data: data.to_string(),
            finished_at_ms: chrono::Utc::now().timestamp_millis(),
            elapsed_s,
            messages_per_s,
            us_per_item,
            peak_rss_mb: local::meter::peak_rss_mb(),
            ledger: None,
        })
    }

    /// Fails the run when the rule handed messages to its error action (after the summary
    /// is printed, so that every figure is out): they are not in Parquet until requeued.
    pub fn rule_errors_fail(&self) -> anyhow::Result<()> {
        match &self.rule_errors {
            Some(e) => Err(e.failure()),
            None => Ok(()),
        }
    }

    /// Prints the human summary, then (with `json`) the JSON object as the last line.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        let mut out = String::new();
        match &self.source {
            Source::Mqtt {
                broker,
                sent,
                acknowledged,
                received,
                broker_dropped,
                pace,
            } => {
                out.push_str(&format!(
                    "MQTT ({broker}): sent {sent}, acknowledged {acknowledged}, received by the rule {received}{}\n",
                    dropped_note(*broker_dropped)
                ));
                if let Some(p) = pace {
                    out.push_str(&p.line());
                }
            }
            Source::Devices {
                broker,
                tls_broker,
                received,
                broker_dropped,
                received_after_stop,
                broker_appended,
                other_topics,
                port,
            } => {
                let tls = tls_broker
                    .as_ref()
                    .map(|t| format!(", {t}"))
                    .unwrap_or_default();
                let after = if *received_after_stop > 0 {
                    format!(" ({received_after_stop} of them after the stop)")
                } else {
                    String::new()
                };
                let unread = unread_after_stop(*broker_appended, *received, *broker_dropped);
                let unread = if unread > 0 {
                    format!(
                        ", left in the broker {unread} (published after the rule stopped \
                         reading: not in the pipeline)"
                    )
                } else {
                    String::new()
                };
                let other = match other_topics {
                    Some(n) if *n > 0 => format!(
                        "; {n} published to topics the rule does not take ({TOPIC_FILTER} \
                         and its Basic Ingest topics): in no pipeline, as on AWS"
                    ),
                    _ => String::new(),
                };
                out.push_str(&format!(
                    "MQTT ({broker}{tls}): received by the rule {received} from your devices{after}{}{unread}{other}\n",
                    dropped_note(*broker_dropped)
                ));
                if let Some(p) = port
                    && p.rule_plain.publishes > 0
                    && self.topology != "per-message"
                {
                    out.push_str(&format!(
                        "  IoT Core meters your devices' {} publish(es) to {TOPIC_FILTER} as \
                         messages ({} x 5 KB, in the bill below); published to the rule's Basic \
                         Ingest topic, {BASIC_INGEST_PREFIX}{DEFAULT_RULE_NAME}/<the same topic>, \
                         they would not be (topology {} is priced for that)\n",
                        p.rule_plain.publishes,
                        p.rule_plain.units,
                        self.topology
                    ));
                }
            }
            Source::Replay { file, lines } => {
                out.push_str(&format!("replayed {lines} payload line(s) from {file}\n"))
            }
            Source::Requeue {
                from_quarantine,
                from_ingest_failed,
                from_processing_failed,
                from_rule_errors,
                skipped_rejections,
                still_rejected,
                unreadable_errors,
            } => out.push_str(&format!(
                "requeued from {}: {from_quarantine} from quarantine/, {from_ingest_failed} \
                 from errors/ingest-failed/, {from_processing_failed} from \
                 errors/processing-failed/, {from_rule_errors} from errors/iot/; left alone: {skipped_rejections} payload \
                 rejection(s) no --reason named, {still_rejected} still rejected by the \
                 contract, {unreadable_errors} unreadable error record(s)\n",
                self.data
            )),
        }
        out.push_str(&format!(
            "ingest: {} message(s) in = {} accepted + {} quarantined ({} readings accepted)\n",
            self.input, self.accepted, self.quarantined, self.readings
        ));
        out.push_str(&format!("topology: {}\n", self.topology));
        out.push_str(&format!("stream: {}\n", self.stream));
        if let Some(f) = &self.faults {
            out.push_str(&format!(
                "injected faults: {} throttled put call(s), {} failed entries, {} timed-out \
                 put(s) (stored, then retried: duplicates), {} failed transform invocation(s)\n",
                f.throttled_calls, f.failed_entries, f.timeouts, f.processor_errors
            ));
        }
        if let Some(e) = &self.rule_errors {
            out.push_str(&format!(
                "IoT rule: {} message(s) whose action failed went to the error action ({} kept \
                 under {}/, for `iotpipe requeue`)\n",
                e.failed,
                e.kept,
                telemetry::layout::RULE_ERROR_PREFIX
            ));
        }
        if let Some(e) = &self.event_source {
            out.push_str(&format!(
                "event-source mapping: {} record(s) in {} batch(es), {} ingest invocation(s) ({} failed, {} bisection(s), {} item failure(s) reported, {} record(s) retried, {} to the on-failure destination)\n",
                e.records,
                e.batches,
                e.invocations,
                e.function_errors,
                e.bisections,
                e.item_failures,
                e.retried_records,
                e.on_failure_records
            ));
        }
        if let Some(k) = &self.kinesis {
            out.push_str(&format!(
                "kinesis read: {} record(s) from {} shard(s) ({} resumed after a checkpoint, {} closed and followed to children); {} GetRecords call(s), {} throttled, {} expired iterator(s); {} checkpoint(s) written\n",
                k.read.records_read,
                k.read.shards_read,
                k.read.shards_resumed,
                k.read.shards_ended,
                k.read.get_records_calls,
                k.read.throttled,
                k.read.expired_iterators,
                k.checkpoints_written
            ));
        }
        let f = &self.firehose;
        let dropped = dropped_label(&self.topology);
        match &self.note {
            Some(note) => out.push_str(&format!("firehose: {note}\n")),
            None => out.push_str(&format!(
                "firehose: {} record(s) in = {} ok + {} {dropped} + {} processing-failed; {} row(s) in {} Parquet file(s)\n",
                f.records_in, f.ok, f.dropped, f.processing_failed, f.rows_written, f.files
            )),
        }
        if f.split_files > 0 {
            out.push_str(&format!(
                "transform: {} row(s) of device batches spanning event hours written to their own hours' partitions in {} Parquet file(s)\n",
                f.split_rows, f.split_files
            ));
        }
        if let Some(r) = &self.rollup {
            out.push_str(&format!(
                "rollup: {} window(s) updated from {} new file(s)\n",
                r.windows_updated, r.new_files
            ));
            if r.units_busy > 0 {
                out.push_str(&format!(
                    "rollup: {} unit(s) leased by another rollup (a concurrent `iotpipe rollup`, \
                     or a process on another machine): their statistics are not up to date \
                     yet; run `iotpipe rollup --data {}` once it is done\n",
                    r.units_busy, self.data
                ));
            }
        }
        if let Some(l) = &self.ledger {
            out.push_str(&format!(
                "ledger: {} sent, {} received, {} duplicated, {} missing, {} late, {} rejected (iotpipe ledger for details)\n",
                l.sent, l.received, l.duplicated, l.missing, l.late, l.rejected
            ));
            if l.missing > 0 {
                out.push_str(&format!(
                    "warning: {} message(s) sent by the devices never reached the telemetry\n",
                    l.missing
                ));
            }
        }
        out.push_str("functions (Lambda REPORT figures; Max Memory Used is the shared process's peak RSS):\n");
        let mut table = Table::new(vec![
            Column::left("function"),
            Column::right("invocations"),
            Column::right("total Duration"),
            Column::right("p99"),
            Column::right("Billed Dur."),
            Column::right("Memory Size"),
            Column::right("Max Used"),
        ])
        .indent("  ");
        for f in &self.functions {
            table.row([
                f.function.clone(),
                f.invocations.to_string(),
                format!("{:.1} ms", f.total_duration_ms),
                format!("{:.2} ms", f.p99_duration_ms),
                format!("{} ms", f.billed_duration_ms),
                format!("{} MB", f.memory_size_mb),
                format!("{} MB", f.max_memory_used_mb),
            ]);
        }
        out.push_str(&table.to_text());
        let per_item: Vec<String> = self
            .us_per_item
            .iter()
            .map(|(f, us)| match Item::of(f) {
                Item::Message => format!("{f} {us:.1} µs per message"),
                Item::Record => format!("{f} {us:.1} µs per record"),
                Item::Run => format!("{f} {:.1} ms per run", us / 1000.0),
            })
            .collect();
        out.push_str(&format!(
            "throughput: {} messages/s over {:.1} s; handler time: {}; peak RSS {} MB\n",
            rate(self.messages_per_s),
            self.elapsed_s,
            per_item.join(", "),
            self.peak_rss_mb
        ));
        out.push_str(&self.cost.to_table());
        out.push_str(&format!(
            "data: {} (try: iotpipe query --data {} --window 1m)\n",
            self.data, self.data
        ));
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        if json {
            writeln!(stdout, "{}", serde_json::to_string(self)?)?;
        }
        Ok(())
    }
}

/// Writes one line to stdout (the CLI's results; logs go to stderr).
pub fn print_line(s: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{s}");
}

/// What the Firehose line calls the records the transform answered `Dropped` in
/// `topology`. Topology firehose has no ingest function: its transform validates, and
/// answers `Dropped` for a record whose messages it all quarantined, as for a duplicate.
fn dropped_label(topology: &str) -> &'static str {
    if topology == local::topology::Topology::Firehose.name() {
        "dropped (duplicates, or all of the record quarantined)"
    } else {
        "dropped (duplicates)"
    }
}

#[cfg(test)]
mod tests {
    use super::{Pace, dropped_label, rate, unread_after_stop};
    use local::topology::Topology;

    #[test]
    fn only_the_validating_transform_drops_quarantined_records() {
        assert!(dropped_label(Topology::Firehose.name()).contains("quarantined"));
        for t in [Topology::Kinesis, Topology::PerMessage] {
            assert_eq!(dropped_label(t.name()), "dropped (duplicates)");
        }
    }

    #[test]
    fn what_the_broker_took_and_neither_forwarded_nor_dropped_is_left_in_it() {
        assert_eq!(unread_after_stop(Some(100), 90, Some(10)), 0);
        assert_eq!(unread_after_stop(Some(100), 80, Some(5)), 15);
        // Never below zero, whatever the counts.
        assert_eq!(unread_after_stop(Some(100), 101, Some(0)), 0);
        // An external broker's log is not seen.
        assert_eq!(unread_after_stop(None, 5, None), 0);
    }

    #[test]
    fn the_pace_line_says_whether_the_rule_kept_up() {
        let pace = |behind_at_stop, caught_up_s| Pace {
            send_rate: 50_000.0,
            rule_rate: Some(46_512.4),
            rule_rate_while_sending: Some(15_500.2),
            behind_at_stop,
            caught_up_s,
        };
        assert!(pace(0, Some(0.0)).line().ends_with(
            "the devices sent 50000 msg/s, the rule received 46512 msg/s (first message to last); kept up\n"
        ));
        assert!(pace(120_000, Some(2.46)).line().contains(
            "the rule received 15500 msg/s while they sent, 46512 msg/s first message to \
                 last; 120000 message(s) behind when the devices stopped, caught up 2.5 s later"
        ));
        assert!(
            pace(7, None)
                .line()
                .contains("7 message(s) behind when the devices stopped, never caught up")
        );
    }

    #[test]
    fn rates_below_ten_keep_two_significant_digits() {
        let shown: Vec<String> = [303_860.8, 10.4, 9.96, 2.45, 0.208, 0.0213, 0.0]
            .into_iter()
            .map(rate)
            .collect();
        assert_eq!(shown, ["303861", "10", "10.0", "2.5", "0.21", "0.021", "0"]);
    }
}

//! The pages, drawn from a [`Snapshot`]: fleet (the index), devices and a page per
//! device, latency, pipeline health and the bill. Each chart has a data table beside it
//! (in a `<details>`) holding the exact numbers, which the tests compare with
//! `iotpipe query` and `iotpipe ledger`.

use std::collections::{BTreeMap, BTreeSet};

use analytics::WindowStats;
use analytics::ledger::LedgerRow;

use crate::chart::{self, Chart, ChartError, Series};
use crate::html::{Cell, card, empty, esc, figure, num, page, table, utc};
use crate::source::{MinuteFigures, RunRecord, Snapshot, fleet_of};

/// How many devices the "noisiest" and "most rejected" lists show.
const TOP: usize = 10;

/// A device is *silent* when it has no reading in this many of the fleet's latest windows.
const SILENT_AFTER_WINDOWS: i64 = 2;

/// The rendered site: relative path → HTML.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Site {
    /// Pages by relative path (`index.html`, `device/<id>.html`, …).
    pub pages: BTreeMap<String, String>,
}

/// The file of a device's page, relative to the site root. `:` (allowed in thing names)
/// would read as a URL scheme in a relative link, so it becomes `~`, which thing names
/// cannot contain.
pub fn device_file(device_id: &str) -> String {
    format!("device/{}.html", device_id.replace(':', "~"))
}

/// Renders every page. `generated` is the time shown in the footers (UTC text).
pub fn render(s: &Snapshot, generated: &str) -> Result<Site, ChartError> {
    let mut site = Site::default();
    let page_of = |title: &str, root: &str, current: &str, body: String| {
        page(title, root, current, generated, &body)
    };
    site.pages.insert(
        "index.html".into(),
        page_of("Fleet", "", "index.html", fleet(s)?),
    );
    site.pages.insert(
        "devices.html".into(),
        page_of("Devices", "", "devices.html", devices(s)),
    );
    for device in s
        .stats
        .iter()
        .map(|r| r.device_id.as_str())
        .collect::<BTreeSet<_>>()
    {
        site.pages.insert(
            device_file(device),
            page_of(device, "../", "devices.html", device_page(s, device)?),
        );
    }
    site.pages.insert(
        "latency.html".into(),
        page_of("Latency", "", "latency.html", latency(s)?),
    );
    site.pages.insert(
        "health.html".into(),
        page_of("Pipeline health", "", "health.html", health(s)?),
    );
    site.pages.insert(
        "bill.html".into(),
        page_of("Bill", "", "bill.html", bill(s)?),
    );
    Ok(site)
}

const NO_STATS: &str = "No statistics yet: the data location has no stats/ files.";
const MAKE_STATS: &str = "Run the pipeline, then the rollup: iotpipe up --devices 50 --rate 5 --duration 2m --data ./data (it rolls up at the end), or iotpipe replay FILE followed by iotpipe rollup --data ./data.";

fn window_label(s: &Snapshot) -> &'static str {
    s.window.label()
}

fn fleet(s: &Snapshot) -> Result<String, ChartError> {
    let mut b = String::from("<div class=\"cards\">");
    let devices: BTreeSet<&str> = s.stats.iter().map(|r| r.device_id.as_str()).collect();
    let readings: u64 = s.stats.iter().map(|r| r.count).sum();
    let quarantined = s.quarantine.len() as u64;
    b.push_str(&card(
        "devices reporting",
        &devices.len().to_string(),
        "devices.html",
    ));
    b.push_str(&card(
        "readings (distinct)",
        &readings.to_string(),
        "index.html",
    ));
    if let Some(l) = &s.ledger {
        b.push_str(&card(
            "messages received",
            &l.totals.received.to_string(),
            "health.html",
        ));
        b.push_str(&card(
            "messages missing",
            &l.totals.missing.to_string(),
            "latency.html",
        ));
    }
    b.push_str(&card(
        "quarantined",
        &quarantined.to_string(),
        "health.html",
    ));
    if let Some(run) = s.runs.last() {
        b.push_str(&card(
            "last run's cost (USD)",
            &format!("{:.6}", run.cost.total_usd),
            "bill.html",
        ));
    }
    b.push_str("</div>");
    if s.stats.is_empty() {
        b.push_str("<h2>Fleet</h2>");
        b.push_str(&empty(NO_STATS, MAKE_STATS));
        return Ok(b);
    }
    let w = window_label(s);
    let fleet = fleet_of(&s.stats, &s.fleet);
    for (metric, points) in &fleet {
        b.push_str(&format!("<h2>{} — fleet, per {w}</h2>", esc(metric)));
        // Sketched quantiles (the analytics fleet view) are within 1 %; the stand-in is
        // an approximation of unknown error, and labelled so.
        let sketched = points.iter().all(|p| p.sketched);
        let q = if sketched { "" } else { "≈" };
        let band = Series::Band {
            name: format!("{q} p50–p99 band").trim_start().to_string(),
            points: points
                .iter()
                .map(|p| (p.window_start, p.p50, p.p99))
                .collect(),
        };
        let p95 = Series::Line {
            name: format!("{q} p95").trim_start().to_string(),
            points: points.iter().map(|p| (p.window_start, p.p95)).collect(),
        };
        let mean = Series::Line {
            name: "mean (exact)".into(),
            points: points.iter().map(|p| (p.window_start, p.mean)).collect(),
        };
        let c = chart::time_chart(
            metric,
            &format!("{metric} (device units)"),
            &[band, mean, p95],
            false,
        )?;
        b.push_str(&figure(
            &format!("fleet-{metric}"),
            &format!("{metric}: fleet mean with its p50–p95–p99 band, per {w}"),
            &c,
            if sketched {
                "Mean, count, min and max are exact over all devices; p50/p95/p99 are the \
                 analytics fleet view's, from the devices' merged DDSketches: within 1 % of \
                 the exact quantile over every reading."
            } else {
                "Mean, count, min and max are exact over all devices; p50/p95/p99 (≈) are the \
                 count-weighted means of the devices' own quantiles where the analytics \
                 fleet view has no current row (a rollup derives it): an approximation."
            },
        ));
        let rows: Vec<Vec<Cell>> = points
            .iter()
            .map(|p| {
                vec![
                    Cell::Time(p.window_start),
                    Cell::Int(p.devices),
                    Cell::Int(p.count),
                    Cell::Float(p.mean),
                    Cell::Float(p.min),
                    Cell::Float(p.max),
                    Cell::Float(p.p50),
                    Cell::Float(p.p95),
                    Cell::Float(p.p99),
                ]
            })
            .collect();
        b.push_str("<details><summary>the numbers</summary>");
        b.push_str(&table(
            &format!("fleet-table-{metric}"),
            &format!("{metric}, fleet per {w}"),
            &[
                "window start",
                "devices",
                "count",
                "mean",
                "min",
                "max",
                &format!("{q}p50"),
                &format!("{q}p95"),
                &format!("{q}p99"),
            ],
            &rows,
        ));
        b.push_str("</details>");
    }
    // Readings per window (all metrics) and the message rate (from the ledger).
    let mut readings: BTreeMap<i64, u64> = BTreeMap::new();
    for r in &s.stats {
        *readings.entry(r.window_start).or_default() += r.count;
    }
    let per_min = s.window.millis() as f64 / 60_000.0;
    let mut series = vec![Series::Line {
        name: "readings per minute".into(),
        points: readings
            .iter()
            .map(|(&t, &n)| (t, n as f64 / per_min))
            .collect(),
    }];
    let mut messages: BTreeMap<i64, u64> = BTreeMap::new();
    if let Some(l) = &s.ledger {
        for r in &l.rows {
            if let Some(t) = r.window_start {
                *messages.entry(t).or_default() += r.received;
            }
        }
        series.push(Series::Line {
            name: "messages per minute".into(),
            points: messages
                .iter()
                .map(|(&t, &n)| (t, n as f64 / per_min))
                .collect(),
        });
    }
    b.push_str(&format!("<h2>Throughput, per {w}</h2>"));
    let c = chart::time_chart("throughput", "per minute", &series, true)?;
    b.push_str(&figure(
        "throughput",
        "Readings and messages per minute (by event time)",
        &c,
        "Readings are distinct (device, seq, time, metric) after de-duplication; messages are \
         the ledger's distinct (device, seq).",
    ));
    let rows: Vec<Vec<Cell>> = readings
        .iter()
        .map(|(&t, &n)| {
            vec![
                Cell::Time(t),
                Cell::Int(n),
                Cell::Int(messages.get(&t).copied().unwrap_or(0)),
            ]
        })
        .collect();
    b.push_str("<details><summary>the numbers</summary>");
    b.push_str(&table(
        "throughput-table",
        &format!("readings and messages per {w}"),
        &["window start", "readings", "messages"],
        &rows,
    ));
    b.push_str("</details>");
    Ok(b)
}

/// Per device: readings, last window, and its ledger totals.
struct DeviceLine<'a> {
    id: &'a str,
    readings: u64,
    last_window: i64,
    ledger: Option<&'a LedgerRow>,
    /// Its row in the last run's ledger against what the simulator sent, if recorded.
    run: Option<&'a LedgerRow>,
}

fn devices(s: &Snapshot) -> String {
    if s.stats.is_empty() && s.ledger.is_none() {
        return empty(NO_STATS, MAKE_STATS);
    }
    let mut by: BTreeMap<&str, DeviceLine<'_>> = BTreeMap::new();
    for r in &s.stats {
        let d = by.entry(r.device_id.as_str()).or_insert(DeviceLine {
            id: &r.device_id,
            readings: 0,
            last_window: i64::MIN,
            ledger: None,
            run: None,
        });
        d.readings += r.count;
        d.last_window = d.last_window.max(r.window_start);
    }
    if let Some(l) = &s.ledger {
        for row in &l.devices {
            by.entry(row.device_id.as_str())
                .or_insert(DeviceLine {
                    id: &row.device_id,
                    readings: 0,
                    last_window: i64::MIN,
                    ledger: None,
                    run: None,
                })
                .ledger = Some(row);
        }
    }
    // The last run's devices, with what they sent: a device none of whose messages
    // arrived is known too.
    if let Some(l) = &s.run_ledger {
        for row in &l.devices {
            by.entry(row.device_id.as_str())
                .or_insert(DeviceLine {
                    id: &row.device_id,
                    readings: 0,
                    last_window: i64::MIN,
                    ledger: None,
                    run: None,
                })
                .run = Some(row);
        }
    }
    let latest = by.values().map(|d| d.last_window).max().unwrap_or(i64::MIN);
    let silent_before = latest.saturating_sub((SILENT_AFTER_WINDOWS - 1) * s.window.millis());
    let link = |d: &DeviceLine<'_>| {
        if d.readings > 0 {
            Cell::Link(device_file(d.id), d.id.to_string())
        } else {
            Cell::Text(d.id.to_string())
        }
    };
    let ledger_cells = |d: &DeviceLine<'_>| match d.ledger {
        Some(l) => vec![
            Cell::Int(l.sent),
            Cell::Int(l.received),
            Cell::Int(l.missing),
            Cell::Int(l.rejected),
        ],
        None => vec![Cell::Text("–".into()); 4],
    };
    let mut b = String::new();
    let w = window_label(s);
    b.push_str("<h2>Silent devices</h2>");
    let silent: Vec<&DeviceLine<'_>> = by
        .values()
        .filter(|d| d.last_window < silent_before)
        .collect();
    if silent.is_empty() {
        b.push_str(&format!(
            "<p>None: every known device has readings in the latest {SILENT_AFTER_WINDOWS} \
             {w} windows of the data.</p>"
        ));
    } else {
        let rows: Vec<Vec<Cell>> = silent
            .iter()
            .map(|d| {
                let mut r = vec![
                    link(d),
                    if d.last_window == i64::MIN {
                        Cell::Text("never".into())
                    } else {
                        Cell::Time(d.last_window)
                    },
                ];
                // Expected: what the last run's simulator sent, where recorded.
                r.extend(ledger_cells(&DeviceLine {
                    ledger: d.run.or(d.ledger),
                    ..**d
                }));
                r
            })
            .collect();
        b.push_str(&table(
            "silent",
            &format!("no reading in the latest {SILENT_AFTER_WINDOWS} {w} windows"),
            &[
                "device",
                "last window",
                "expected (sent)",
                "received",
                "missing",
                "rejected",
            ],
            &rows,
        ));
    }
    b.push_str(
        "<p class=\"note\">Expected = what the last iotpipe up run's simulated devices \
         sent (their seq ranges, recorded under _runs/), so a device none of whose messages \
         arrived is listed; for other devices, the seq range seen (iotpipe ledger without \
         --sent), so a real device that never got through is not known.</p>",
    );

    let mut noisy: Vec<&DeviceLine<'_>> = by.values().filter(|d| d.readings > 0).collect();
    noisy.sort_by(|a, b| b.readings.cmp(&a.readings).then(a.id.cmp(b.id)));
    b.push_str("<h2>Noisiest devices</h2>");
    let rows: Vec<Vec<Cell>> = noisy
        .iter()
        .take(TOP)
        .map(|d| vec![link(d), Cell::Int(d.readings)])
        .collect();
    b.push_str(&table(
        "noisiest",
        "most readings",
        &["device", "readings"],
        &rows,
    ));

    let mut rejected: Vec<&DeviceLine<'_>> = by
        .values()
        .filter(|d| d.ledger.is_some_and(|l| l.rejected > 0))
        .collect();
    rejected.sort_by(|a, b| {
        let r = |d: &DeviceLine<'_>| d.ledger.map_or(0, |l| l.rejected);
        r(b).cmp(&r(a)).then(a.id.cmp(b.id))
    });
    b.push_str("<h2>Most rejected devices</h2>");
    if rejected.is_empty() {
        b.push_str("<p>No device had a message quarantined.</p>");
    } else {
        let rows: Vec<Vec<Cell>> = rejected
            .iter()
            .take(TOP)
            .map(|d| vec![link(d), Cell::Int(d.ledger.map_or(0, |l| l.rejected))])
            .collect();
        b.push_str(&table(
            "most-rejected",
            "most quarantined messages",
            &["device", "rejected"],
            &rows,
        ));
    }

    b.push_str("<h2>All devices</h2>");
    let rows: Vec<Vec<Cell>> = by
        .values()
        .map(|d| {
            let mut r = vec![link(d), Cell::Int(d.readings)];
            r.extend(ledger_cells(d));
            r
        })
        .collect();
    b.push_str(&table(
        "devices",
        "every device",
        &[
            "device", "readings", "sent", "received", "missing", "rejected",
        ],
        &rows,
    ));
    b
}

fn stats_cells(r: &WindowStats) -> Vec<Cell> {
    vec![
        Cell::Text(r.metric.clone()),
        Cell::Time(r.window_start),
        Cell::Int(r.count),
        Cell::Float(r.min),
        Cell::Float(r.max),
        Cell::Float(r.mean),
        Cell::Float(r.p50),
        Cell::Float(r.p95),
        Cell::Float(r.p99),
    ]
}

fn device_page(s: &Snapshot, device: &str) -> Result<String, ChartError> {
    let w = window_label(s);
    let rows: Vec<&WindowStats> = s.stats.iter().filter(|r| r.device_id == device).collect();
    let mut b = String::from("<p><a href=\"../devices.html\">← all devices</a></p>");
    let metrics: BTreeSet<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
    for metric in metrics {
        let pts: Vec<&&WindowStats> = rows.iter().filter(|r| r.metric == metric).collect();
        let band = Series::Band {
            name: "p50–p99 band".into(),
            points: pts.iter().map(|r| (r.window_start, r.p50, r.p99)).collect(),
        };
        let mean = Series::Line {
            name: "mean".into(),
            points: pts.iter().map(|r| (r.window_start, r.mean)).collect(),
        };
        let c = chart::time_chart(
            metric,
            &format!("{metric} (device units)"),
            &[band, mean],
            false,
        )?;
        b.push_str(&format!("<h2>{}</h2>", esc(metric)));
        b.push_str(&figure(
            &format!("device-{metric}"),
            &format!("{device} · {metric} per {w}"),
            &c,
            "",
        ));
    }
    let cells: Vec<Vec<Cell>> = rows.iter().map(|r| stats_cells(r)).collect();
    b.push_str("<h2>Statistics</h2><details><summary>the numbers (as iotpipe query)</summary>");
    b.push_str(&table(
        "stats",
        &format!("{device}, per metric and {w}"),
        &[
            "metric",
            "window start",
            "count",
            "min",
            "max",
            "mean",
            "p50",
            "p95",
            "p99",
        ],
        &cells,
    ));
    b.push_str("</details>");
    b.push_str("<h2>Ledger</h2>");
    match &s.ledger {
        Some(l) => {
            let rows: Vec<Vec<Cell>> = l
                .rows
                .iter()
                .filter(|r| r.device_id == device)
                .map(|r| {
                    vec![
                        r.window_start.map_or(Cell::Text("–".into()), Cell::Time),
                        Cell::Int(r.sent),
                        Cell::Int(r.received),
                        Cell::Int(r.duplicated),
                        Cell::Int(r.missing),
                        Cell::Int(r.late),
                        Cell::Int(r.rejected),
                    ]
                })
                .collect();
            b.push_str(&table(
                "ledger",
                &format!("{device}: messages per {w} (as iotpipe ledger)"),
                &[
                    "window start",
                    "sent",
                    "received",
                    "duplicated",
                    "missing",
                    "late",
                    "rejected",
                ],
                &rows,
            ));
        }
        None => b.push_str(&empty(
            "No ledger: no telemetry nor quarantine.",
            MAKE_STATS,
        )),
    }
    Ok(b)
}

/// The nearest-rank quantile `q` of sorted `v`.
fn quantile(v: &[i64], q: f64) -> i64 {
    let i = ((v.len() as f64 * q).ceil() as usize).saturating_sub(1);
    v.get(i.min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

fn latency(s: &Snapshot) -> Result<String, ChartError> {
    let w = window_label(s);
    let mut b = String::new();
    if s.transits.is_empty() {
        b.push_str(&empty(
            "No telemetry Parquet yet, so no travel times.",
            MAKE_STATS,
        ));
    } else {
        // Per window of event time: the delays to received, to Parquet and to the stats.
        let mut by: BTreeMap<i64, [Vec<i64>; 3]> = BTreeMap::new();
        for t in &s.transits {
            let e = by.entry(s.window.start_of(t.event_time)).or_default();
            e[0].push(t.to_received_ms);
            e[1].push(t.to_parquet_ms);
            e[2].extend(t.to_stats_ms);
        }
        let dated = s.transits.iter().any(|t| t.to_stats_ms.is_some());
        let stages = if dated { 3 } else { 2 };
        let mut rows = Vec::new();
        let mut lines: [Vec<(i64, f64)>; 6] = Default::default();
        for (t, mut delays) in by {
            let mut row = vec![Cell::Time(t), Cell::Int(delays[0].len() as u64)];
            for (stage, d) in delays.iter_mut().enumerate().take(stages) {
                d.sort_unstable();
                for (k, q) in [0.5, 0.99].into_iter().enumerate() {
                    // A window whose readings no recorded rollup dated has no point.
                    if d.is_empty() {
                        row.push(Cell::Text("–".into()));
                        continue;
                    }
                    let x = quantile(d, q) as f64 / 1000.0;
                    lines[stage * 2 + k].push((t, x));
                    row.push(Cell::Float(x));
                }
            }
            if dated {
                row.push(Cell::Int(delays[2].len() as u64));
            }
            rows.push(row);
        }
        let names = [
            "device → received, p50",
            "device → received, p99",
            "device → in Parquet, p50",
            "device → in Parquet, p99",
            "device → in stats, p50",
            "device → in stats, p99",
        ];
        let series: Vec<Series> = names
            .iter()
            .zip(lines)
            .take(stages * 2)
            .map(|(n, points)| Series::Line {
                name: (*n).into(),
                points,
            })
            .collect();
        let c = chart::time_chart("latency", "seconds", &series, true)?;
        b.push_str(&format!(
            "<h2>Travel time of a reading, per {w} of event time</h2>"
        ));
        b.push_str(&figure(
            "latency",
            "How long a reading takes to arrive, to be in Parquet and to be in the stats",
            &c,
            if dated {
                "Received = the IoT rule's timestamp; in Parquet = the last-modified time of \
                 the object holding the row (queryable with Athena from then); in stats = the \
                 end of the first successful rollup that started after that (iotpipe query \
                 shows it from then), from the rollups the run records under _runs/ list."
            } else {
                "Received = the IoT rule's timestamp; in Parquet = the last-modified time of \
                 the object holding the row (queryable with Athena from then). In stats is not \
                 shown: no run record lists a rollup that ran after these objects were written \
                 (iotpipe up and replay record theirs; on AWS, the rollup's schedule and S3 \
                 events bound it: README, Freshness)."
            },
        ));
        let mut header = vec![
            "window start",
            "readings",
            "→received p50",
            "→received p99",
            "→Parquet p50",
            "→Parquet p99",
        ];
        if dated {
            header.extend(["→stats p50", "→stats p99", "readings dated in stats"]);
        }
        b.push_str("<details><summary>the numbers</summary>");
        b.push_str(&table(
            "latency-table",
            &format!("seconds, per {w}"),
            &header,
            &rows,
        ));
        b.push_str("</details>");
    }
    b.push_str("<h2>Delivery ratios</h2>");
    match &s.ledger {
        Some(l) => {
            let t = &l.totals;
            let a = &s.arrivals;
            let rows: Vec<Vec<Cell>> = [
                ("loss (missing / sent)", t.missing, t.sent),
                ("late / received", t.late, t.received),
                ("out of order / messages", a.out_of_order, a.messages),
                ("duplicated / received", t.duplicated, t.received),
                ("rejected / sent", t.rejected, t.sent),
            ]
            .into_iter()
            .map(|(name, count, of)| {
                let ratio = if of == 0 {
                    0.0
                } else {
                    count as f64 / of as f64
                };
                vec![
                    Cell::Text(name.into()),
                    Cell::Int(count),
                    Cell::Int(of),
                    Cell::Float(ratio),
                ]
            })
            .collect();
            b.push_str(&table(
                "ratios",
                "the delivery ledger's totals",
                &["ratio", "count", "of", "ratio"],
                &rows,
            ));
            b.push_str("<p class=\"note\">Late: first received at or after its window's end plus one minute. Out of order: first received after a message of the same device with a later event time (overtaken on the way), among the distinct messages of the telemetry.</p>");
        }
        None => b.push_str(&empty(
            "No ledger: no telemetry nor quarantine.",
            MAKE_STATS,
        )),
    }
    Ok(b)
}

fn health(s: &Snapshot) -> Result<String, ChartError> {
    let w = window_label(s);
    let mut b = String::new();
    b.push_str(&format!("<h2>Accepted vs quarantined, per {w}</h2>"));
    let mut quarantined: BTreeMap<i64, u64> = BTreeMap::new();
    let mut reasons: BTreeMap<&str, BTreeMap<i64, u64>> = BTreeMap::new();
    for q in &s.quarantine {
        let t = s.window.start_of(q.received_at);
        *quarantined.entry(t).or_default() += 1;
        *reasons
            .entry(q.reason_code.as_str())
            .or_default()
            .entry(t)
            .or_default() += 1;
    }
    let mut accepted: BTreeMap<i64, u64> = BTreeMap::new();
    if let Some(l) = &s.ledger {
        for r in &l.rows {
            if let Some(t) = r.window_start {
                *accepted.entry(t).or_default() += r.received;
            }
        }
    }
    if accepted.is_empty() && quarantined.is_empty() {
        b.push_str(&empty(
            "Nothing received yet: no telemetry nor quarantine.",
            MAKE_STATS,
        ));
    } else {
        let times: BTreeSet<i64> = accepted.keys().chain(quarantined.keys()).copied().collect();
        let at = |m: &BTreeMap<i64, u64>, t: i64| m.get(&t).copied().unwrap_or(0) as f64;
        let mut series = vec![
            Series::Line {
                name: "accepted".into(),
                points: times.iter().map(|&t| (t, at(&accepted, t))).collect(),
            },
            Series::Line {
                name: "quarantined (all reasons)".into(),
                points: times.iter().map(|&t| (t, at(&quarantined, t))).collect(),
            },
        ];
        for (code, m) in &reasons {
            series.push(Series::Line {
                name: format!("quarantined: {code}"),
                points: times.iter().map(|&t| (t, at(m, t))).collect(),
            });
        }
        let c = chart::time_chart("accepted", &format!("messages per {w}"), &series, true)?;
        b.push_str(&figure(
            "accepted",
            "Messages accepted and quarantined, with the reasons",
            &c,
            "Accepted: distinct messages in the telemetry, by event time; quarantined: by receive time.",
        ));
        if reasons.is_empty() {
            b.push_str("<p>No message was quarantined.</p>");
        } else {
            let rows: Vec<Vec<Cell>> = reasons
                .iter()
                .map(|(code, m)| vec![Cell::Text((*code).into()), Cell::Int(m.values().sum())])
                .collect();
            b.push_str(&table(
                "reasons",
                "quarantined messages by reason",
                &["reason code", "messages"],
                &rows,
            ));
        }
    }

    b.push_str("<h2>Functions</h2>");
    match s.runs.last() {
        None => b.push_str(&empty(
            "No run record yet: Lambda figures (invocations, Duration per minute, memory) are recorded under _runs/ when iotpipe up or iotpipe replay ends. On AWS nothing writes them: the report function reads no CloudWatch, so see each function's Monitor tab in the Lambda console.",
            "Locally: run iotpipe up (or replay) with this --data.",
        )),
        Some(run) => {
            let inv: Vec<(String, f64)> = run.functions.iter().map(|f| (f.function.clone(), f.invocations as f64)).collect();
            b.push_str(&figure(
                "invocations",
                &format!("Invocations in the run that ended {}", utc(run.finished_at_ms)),
                &chart::bar_chart("invocations", "invocations", &inv)?,
                "",
            ));
            b.push_str(&per_minute(run)?);
            b.push_str(&runs_chart(&s.runs)?);
            let mut mem = Vec::new();
            for f in &run.functions {
                mem.push((format!("{} used", f.function), f.max_memory_used_mb as f64));
                mem.push((format!("{} size", f.function), f64::from(f.memory_size_mb)));
            }
            b.push_str(&figure(
                "memory",
                "Max Memory Used vs Memory Size",
                &chart::bar_chart("memory", "MB", &mem)?,
                "Locally every function shares one process: Max Memory Used is the process's peak RSS, an upper bound per function.",
            ));
            let rows: Vec<Vec<Cell>> = run
                .functions
                .iter()
                .map(|f| {
                    let mean = if f.invocations > 0 { f.total_duration_ms / f.invocations as f64 } else { 0.0 };
                    vec![
                        Cell::Text(f.function.clone()),
                        Cell::Int(f.invocations),
                        Cell::Int(f.errors),
                        Cell::Float(mean),
                        Cell::Float(f.p99_duration_ms),
                        Cell::Int(u64::from(f.memory_size_mb)),
                        Cell::Int(f.max_memory_used_mb),
                    ]
                })
                .collect();
            b.push_str(&table(
                "functions",
                "the last run's REPORT figures",
                &["function", "invocations", "errors", "mean Duration (ms)", "p99 Duration (ms)", "Memory Size (MB)", "Max Memory Used (MB)"],
                &rows,
            ));
        }
    }
    Ok(b)
}

/// Invocations per minute (one line per function), Duration p50/p99 per minute (a chart per
/// function: their scales differ by orders of magnitude) and the table of the meter's
/// per-minute records, of the run `run`.
fn per_minute(run: &RunRecord) -> Result<String, ChartError> {
    let mut b = format!(
        "<h2>Per minute, in the run that ended {}</h2>",
        utc(run.finished_at_ms)
    );
    let functions: Vec<_> = run
        .functions
        .iter()
        .filter(|f| !f.per_minute.is_empty())
        .collect();
    if functions.is_empty() {
        b.push_str(&empty(
            "This run record has no per-minute figures (it predates them).",
            "Run iotpipe up (or replay) again with this --data.",
        ));
        return Ok(b);
    }
    let series: Vec<Series> = functions
        .iter()
        .map(|f| Series::Line {
            name: f.function.clone(),
            points: f
                .per_minute
                .iter()
                .map(|m| (m.minute_start_ms, m.invocations as f64))
                .collect(),
        })
        .collect();
    b.push_str(&figure(
        "invocations-per-minute",
        "Invocations per minute, per function",
        &chart::time_chart(
            "invocations per minute",
            "invocations per minute",
            &series,
            true,
        )?,
        "By each invocation's end (the minute of its REPORT line); a minute without \
         invocations has no point.",
    ));
    for f in &functions {
        let line = |name: &str, get: fn(&MinuteFigures) -> f64| Series::Line {
            name: format!("{} {name}", f.function),
            points: f
                .per_minute
                .iter()
                .map(|m| (m.minute_start_ms, get(m)))
                .collect(),
        };
        let c = chart::time_chart(
            &format!("{} Duration", f.function),
            "Duration (ms)",
            &[
                line("p50", |m| m.p50_duration_ms),
                line("p99", |m| m.p99_duration_ms),
            ],
            true,
        )?;
        b.push_str(&figure(
            &format!("duration-{}", f.function),
            &format!("{}: Duration p50 and p99 per minute", f.function),
            &c,
            "From the meter's log-linear histogram: at most 1.6 % above the exact percentile.",
        ));
    }
    let rows: Vec<Vec<Cell>> = functions
        .iter()
        .flat_map(|f| {
            f.per_minute.iter().map(|m| {
                vec![
                    Cell::Text(f.function.clone()),
                    Cell::Time(m.minute_start_ms),
                    Cell::Int(m.invocations),
                    Cell::Int(m.errors),
                    Cell::Float(m.p50_duration_ms),
                    Cell::Float(m.p99_duration_ms),
                    Cell::Float(m.max_duration_ms),
                ]
            })
        })
        .collect();
    b.push_str("<details><summary>the numbers</summary>");
    b.push_str(&table(
        "functions-per-minute",
        "the meter's records per function and minute",
        &[
            "function",
            "minute",
            "invocations",
            "errors",
            "p50 Duration (ms)",
            "p99 Duration (ms)",
            "max Duration (ms)",
        ],
        &rows,
    ));
    b.push_str("</details>");
    Ok(b)
}

/// Duration p99 per function over the recorded runs (one point per run).
fn runs_chart(runs: &[RunRecord]) -> Result<String, ChartError> {
    let mut by: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    for r in runs {
        for f in &r.functions {
            by.entry(f.function.as_str())
                .or_default()
                .push((r.finished_at_ms, f.p99_duration_ms));
        }
    }
    let series: Vec<Series> = by
        .into_iter()
        .map(|(name, points)| Series::Line {
            name: format!("{name} p99"),
            points,
        })
        .collect();
    let c: Chart = chart::time_chart("durations", "Duration p99 (ms)", &series, true)?;
    Ok(figure(
        "durations",
        "Duration p99 per function, one point per run (by the run's end)",
        &c,
        "Each run's p99 over all its invocations; the charts above break the last run down by minute.",
    ))
}

/// The service of a cost line (its first word; `IoT` → `IoT Core`).
fn service(item: &str) -> String {
    match item.split_whitespace().next().unwrap_or(item) {
        "IoT" => "IoT Core".into(),
        s => s.to_string(),
    }
}

fn bill(s: &Snapshot) -> Result<String, ChartError> {
    let Some(run) = s.runs.last() else {
        return Ok(empty(
            "No run record yet: the bill is the cost estimate iotpipe up or iotpipe replay records under _runs/ when it ends.",
            "Run iotpipe up (or replay) with this --data.",
        ));
    };
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    for l in &run.cost.lines {
        *by.entry(service(&l.item)).or_default() += l.usd;
    }
    let bars: Vec<(String, f64)> = by.into_iter().collect();
    let mut b = format!(
        "<div class=\"cards\">{}{}</div>",
        card(
            "this run (USD)",
            &format!("{:.6}", run.cost.total_usd),
            "bill.html"
        ),
        card(
            "a month of this fleet (USD)",
            &num(run.cost.month_at_this_rate_usd),
            "bill.html"
        ),
    );
    if let Some(f) = &run.cost.month_fleet {
        b.push_str(&format!(
            "<p class=\"note\" id=\"month-fleet\">The month is the bill of the fleet the run \
             showed — {} device(s) × {} msg/s (over {}) — on <code>iotpipe cost</code>'s \
             model, not the run scaled up. Line by line: <code>{}</code></p>",
            f.devices,
            f.rate,
            esc(&f.over),
            esc(&f.command)
        ));
    }
    b.push_str(&format!(
        "<h2>The run that ended {}</h2>",
        utc(run.finished_at_ms)
    ));
    b.push_str(&figure(
        "bill",
        "Cost of the run by service (USD)",
        &chart::bar_chart("bill", "USD", &bars)?,
        &format!(
            "us-east-1 list prices as of {}, no free tier; {:.0} s run, {} messages.",
            run.cost.prices_as_of, run.elapsed_s, run.input
        ),
    ));
    let rows: Vec<Vec<Cell>> = run
        .cost
        .lines
        .iter()
        .map(|l| vec![Cell::Text(l.item.clone()), Cell::Float(l.usd)])
        .collect();
    b.push_str(&table(
        "bill-lines",
        "priced lines (USD)",
        &["item", "USD"],
        &rows,
    ));
    let rows: Vec<Vec<Cell>> = s
        .runs
        .iter()
        .rev()
        .map(|r| {
            vec![
                Cell::Time(r.finished_at_ms),
                Cell::Int(r.input),
                Cell::Float(r.cost.total_usd),
                Cell::Float(r.cost.month_at_this_rate_usd),
            ]
        })
        .collect();
    b.push_str(&table(
        "runs",
        "every recorded run",
        &["ended", "messages", "USD", "USD / month of its fleet"],
        &rows,
    ));
    Ok(b)
}

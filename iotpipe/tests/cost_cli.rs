//! `iotpipe cost` against `infra/cost.py` and `infra/deploy.sh --dry-run`: one price table,
//! two estimators (Rust for the CLI, Python for the deploy script, which needs nothing
//! built), and the same figures for the same fleet.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    test_support::workspace_root()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(root())
        .output()
        .expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn iotpipe(args: &[&str]) -> String {
    run(Command::new(env!("CARGO_BIN_EXE_iotpipe"))
        .arg("cost")
        .args(args))
}

fn cost_py(args: &[&str]) -> String {
    run(Command::new("python3").arg("infra/cost.py").args(args))
}

/// The fleets both estimators price: the reference fleet, device batches, a payload above
/// one 5 KB unit, an idle stack, x86_64, a longer freshness.
const FLEETS: [&[&str]; 6] = [
    &["--devices", "1000", "--rate", "0.2", "--freshness", "600"],
    &["--devices", "1000", "--rate", "0.2"],
    &["--devices", "1000", "--rate", "0.2", "--batch", "10"],
    &[
        "--devices",
        "37",
        "--rate",
        "3.5",
        "--payload-bytes",
        "6000",
        "--metrics",
        "12",
    ],
    &["--devices", "0", "--rate", "0"],
    &[
        "--devices",
        "250",
        "--rate",
        "1",
        "--arch",
        "x86_64",
        "--batch",
        "4",
    ],
];

#[test]
fn iotpipe_cost_and_cost_py_print_the_same_bill_line_for_line() {
    for fleet in FLEETS {
        let mut args = fleet.to_vec();
        args.extend(["--topology", "all", "--format", "json"]);
        let rust: Value = serde_json::from_str(&iotpipe(&args)).unwrap();
        let py: Value = serde_json::from_str(&cost_py(&args)).unwrap();
        let (rust, py) = (rust.as_array().unwrap(), py.as_array().unwrap());
        assert_eq!(rust.len(), 3, "{fleet:?}: three topologies");
        assert_eq!(rust.len(), py.len());
        for (r, p) in rust.iter().zip(py) {
            assert_eq!(r["topology"], p["topology"], "{fleet:?}");
            let (rl, pl) = (
                r["lines"].as_array().unwrap(),
                p["lines"].as_array().unwrap(),
            );
            let names = |l: &[Value]| -> Vec<String> {
                l.iter().map(|x| x["component"].to_string()).collect()
            };
            assert_eq!(names(rl), names(pl), "{fleet:?} {}", r["topology"]);
            for (a, b) in rl.iter().zip(pl) {
                let (x, y) = (a["usd"].as_f64().unwrap(), b["usd"].as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                    "{fleet:?} {}: {} is ${x} in iotpipe, ${y} in cost.py",
                    r["topology"],
                    a["component"]
                );
                assert_eq!(a["usage"], b["usage"], "{fleet:?}");
            }
            for k in ["monthly_usd", "idle_usd"] {
                let (x, y) = (r[k].as_f64().unwrap(), p[k].as_f64().unwrap());
                assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{fleet:?} {k}");
            }
        }
    }
}

#[test]
fn deploy_dry_run_prints_the_totals_iotpipe_cost_computes() {
    let json: Value = serde_json::from_str(&iotpipe(&[
        "--devices",
        "1000",
        "--rate",
        "0.2",
        "--topology",
        "all",
        "--format",
        "json",
    ]))
    .unwrap();
    let dry = run(Command::new("bash").args([
        "infra/deploy.sh",
        "--dry-run",
        "--devices",
        "1000",
        "--rate",
        "0.2",
        "--topology",
        "all",
    ]));
    let totals: Vec<&str> = dry
        .lines()
        .filter(|l| l.trim_start().starts_with("TOTAL per month"))
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    let expected: Vec<String> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let usd = b["monthly_usd"].as_f64().unwrap();
            let cents = (usd * 100.0).round() as u64;
            let whole = cents / 100;
            let whole = if whole >= 1000 {
                format!("{},{:03}", whole / 1000, whole % 1000)
            } else {
                whole.to_string()
            };
            format!("${whole}.{:02}", cents % 100)
        })
        .collect();
    assert_eq!(totals, expected, "{dry}");
}

#[test]
fn the_reference_fleet_shows_three_bills_and_names_the_cheapest() {
    let out = iotpipe(&["--devices", "1000", "--rate", "0.2", "--topology", "all"]);
    assert_eq!(out.matches("TOTAL per month").count(), 3, "{out}");
    assert_eq!(out.matches("IDLE per month").count(), 3, "{out}");
    assert!(
        out.contains("Topology firehose (the default: template.yaml's Topology parameter)"),
        "{out}"
    );
    assert!(out.contains("Cheapest: firehose"), "{out}");
    let stream = iotpipe(&["--topology", "all", "--need-stream"]);
    assert!(
        stream.contains("Cheapest with a Kinesis stream (--need-stream): kinesis"),
        "{stream}"
    );
}

#[test]
fn compare_always_on_gives_a_break_even_rate_per_topology() {
    let json: Value = serde_json::from_str(&iotpipe(&[
        "--devices",
        "100",
        "--rate",
        "0.2",
        "--topology",
        "all",
        "--compare",
        "always-on",
        "--format",
        "json",
    ]))
    .unwrap();
    for b in json.as_array().unwrap() {
        let r = b["break_even_rate"].as_f64().unwrap();
        if b["topology"] == "firehose" {
            assert!(r > 0.0 && r < 50.0, "{b}");
        } else {
            // A deployed on-demand stream alone ($29.20) costs more than the instance.
            assert_eq!(r, 0.0, "{b}");
        }
    }
    let out = iotpipe(&["--devices", "100", "--compare", "always-on"]);
    assert!(out.contains("always-on break-even:"), "{out}");
}

#[test]
fn a_batch_above_the_iot_limit_is_refused_with_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_iotpipe"))
        .args(["cost", "--batch", "1000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("128 KiB") && err.contains("at most 652"),
        "{err}"
    );
}

#[test]
fn a_freshness_below_what_firehose_allows_is_refused_by_both_with_the_shortest() {
    for out in [
        Command::new(env!("CARGO_BIN_EXE_iotpipe"))
            .args(["cost", "--freshness", "60"])
            .output()
            .unwrap(),
        Command::new("python3")
            .current_dir(root())
            .args(["infra/cost.py", "--freshness", "60"])
            .output()
            .unwrap(),
    ] {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("at least 120"), "{err}");
    }
    // The default is the template's: 120 s, a 60 s Firehose buffer.
    let text = iotpipe(&[]);
    assert!(
        text.contains("Freshness: 120 s p99 to the 1m stats (FirehoseBufferIntervalSeconds 60)"),
        "{text}"
    );
}

//! The Arrow schemas are the single source of truth: the Glue tables in the AWS template
//! must list exactly the columns `iotpipe schema --glue` generates from them.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iotpipe_tests::{iotpipe, root, run};

/// The columns listed under `# generated: iotpipe schema --glue TABLE` in the template.
fn template_columns(table: &str) -> Vec<String> {
    let template = std::fs::read_to_string(root().join("infra/template.yaml")).unwrap();
    let marker = format!("# generated: iotpipe schema --glue {table};");
    let mut lines = template
        .lines()
        .skip_while(|l| !l.contains(&marker))
        .skip(1);
    assert_eq!(
        lines.next().map(str::trim),
        Some("Columns:"),
        "no Columns list after the marker for {table}"
    );
    lines
        .map(str::trim)
        .take_while(|l| l.starts_with("- { Name:"))
        .map(|l| {
            let inner = l.trim_start_matches("- {").trim_end_matches('}');
            let mut name = "";
            let mut ty = "";
            for part in inner.split(',') {
                let (k, v) = part.split_once(':').unwrap();
                match k.trim() {
                    "Name" => name = v.trim(),
                    "Type" => ty = v.trim(),
                    other => panic!("unexpected key {other} in {l}"),
                }
            }
            format!("{name} {ty}")
        })
        .collect()
}

fn generated(table: &str) -> Vec<String> {
    let out = run(&mut iotpipe(&["schema", "--glue", table]));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_templates_telemetry_table_matches_the_arrow_schema() {
    let want = generated("telemetry");
    assert_eq!(want.len(), 7);
    assert_eq!(template_columns("telemetry"), want);
}

#[test]
fn the_templates_stats_tables_match_the_arrow_schema() {
    let want = generated("stats_1m");
    assert_eq!(want.len(), 16);
    for table in [
        "stats_1m",
        "stats_1h",
        "stats_1d",
        "stats_fleet_1m",
        "stats_fleet_1h",
        "stats_fleet_1d",
    ] {
        assert_eq!(generated(table), want, "{table}");
        assert_eq!(template_columns(table), want, "{table}");
    }
}

//! The Lambda functions' memory sizes are defined once, in `telemetry::metering`: the AWS
//! template's `…MemorySize` parameter defaults, the functions' `MemorySize`, and the
//! deployment cost estimator (`infra/cost.py`, which reads them from telemetry's source) must
//! all say the same.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iotpipe_tests::root;
use telemetry::metering::FUNCTIONS;

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

/// The `Default:` of the template parameter `name` (a top-level `Parameters` entry).
fn parameter_default(template: &str, name: &str) -> Option<u32> {
    let header = format!("  {name}:");
    template
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .find_map(|l| l.trim().strip_prefix("Default:"))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn the_templates_memory_size_defaults_are_the_metered_ones() {
    let template = read("infra/template.yaml");
    for f in FUNCTIONS {
        assert_eq!(
            parameter_default(&template, f.memory_parameter),
            Some(f.memory_mb),
            "template parameter {} must default to {} MB, as telemetry::metering::{} says \
             (change one, change both)",
            f.memory_parameter,
            f.memory_mb,
            f.name.to_uppercase()
        );
        let reference = format!("MemorySize: !Ref {}", f.memory_parameter);
        assert_eq!(
            template.matches(&reference).count(),
            1,
            "exactly one function of the template takes `{reference}`"
        );
    }
    // Every MemorySize parameter of the template is one of the table's.
    let params: Vec<&str> = template
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.strip_suffix("MemorySize:"))
        .filter(|p| !p.starts_with(' '))
        .collect();
    assert_eq!(params.len(), FUNCTIONS.len(), "{params:?}");
}

#[test]
fn the_cost_estimator_reads_the_metered_memory_sizes_and_units() {
    // infra/cost.py reads them from telemetry/src/metering.rs rather than keeping a copy;
    // this holds its reader to the Rust constants.
    let out = std::process::Command::new("python3")
        .arg(root().join("infra/cost.py"))
        .arg("--print-metering")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for f in FUNCTIONS {
        assert_eq!(
            m[format!("{}_mb", f.name)].as_u64(),
            Some(u64::from(f.memory_mb)),
            "infra/cost.py reads {} MB for {}",
            m[format!("{}_mb", f.name)],
            f.name
        );
    }
    use telemetry::metering as t;
    for (name, bytes) in [
        ("IOT_MESSAGE_UNIT_BYTES", t::IOT_MESSAGE_UNIT_BYTES),
        ("FIREHOSE_INGEST_UNIT_BYTES", t::FIREHOSE_INGEST_UNIT_BYTES),
        (
            "KINESIS_ON_DEMAND_UNIT_BYTES",
            t::KINESIS_ON_DEMAND_UNIT_BYTES,
        ),
    ] {
        assert_eq!(m[name].as_u64(), Some(bytes as u64), "{name}");
    }
}

#[test]
fn every_rollup_function_gets_the_templates_bucket_count_and_it_defaults_to_the_rollups() {
    let template = read("infra/template.yaml");
    assert_eq!(
        parameter_default(&template, "RollupBuckets"),
        Some(analytics::config::DEFAULT_BUCKETS),
        "RollupBuckets must default to analytics::config::DEFAULT_BUCKETS (change one, change both)"
    );
    // The planner, its workers and compaction take the same units' leases: one count.
    let reference = format!("{}: !Ref RollupBuckets", analytics::config::BUCKETS_ENV);
    for job in ["rollup", "rollup-worker", "compact"] {
        let env = template
            .split(&format!("IOTPIPE_JOB: {job}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no function runs IOTPIPE_JOB {job}"));
        let variables: Vec<&str> = env
            .lines()
            .take_while(|l| l.starts_with("          "))
            .map(str::trim)
            .collect();
        assert!(
            variables.contains(&reference.as_str()),
            "the {job} function lacks `{reference}`: {variables:?}"
        );
    }
}

#[test]
fn the_local_event_source_mapping_and_rule_name_are_the_templates() {
    use telemetry::metering::{
        INGEST_BATCH_SIZE, INGEST_BATCH_WINDOW_SECONDS, INGEST_MAX_RETRY_ATTEMPTS,
    };
    let template = read("infra/template.yaml");
    assert_eq!(
        parameter_default(&template, "IngestBatchSize"),
        Some(INGEST_BATCH_SIZE as u32),
        "IngestBatchSize must default to telemetry::metering::INGEST_BATCH_SIZE"
    );
    assert_eq!(
        parameter_default(&template, "IngestBatchWindowSeconds"),
        Some(INGEST_BATCH_WINDOW_SECONDS as u32),
        "IngestBatchWindowSeconds must default to INGEST_BATCH_WINDOW_SECONDS"
    );
    let mapping: String = template
        .lines()
        .skip_while(|l| *l != "  IngestStreamMapping:")
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        mapping.contains(&format!(
            "MaximumRetryAttempts: {INGEST_MAX_RETRY_ATTEMPTS}"
        )),
        "IngestStreamMapping's MaximumRetryAttempts must be INGEST_MAX_RETRY_ATTEMPTS: {mapping}"
    );
    let rule_default = template
        .lines()
        .skip_while(|l| *l != "  TopicRuleName:")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .find_map(|l| l.trim().strip_prefix("Default:"))
        .map(str::trim);
    assert_eq!(
        rule_default,
        Some(telemetry::topic::DEFAULT_RULE_NAME),
        "TopicRuleName must default to telemetry::topic::DEFAULT_RULE_NAME"
    );
}

#[test]
fn the_local_rollup_fans_out_as_the_template_deploys_it() {
    use local::units_queue::{BATCH_SIZE, MAX_RECEIVE_COUNT, TEMPLATE_MAX_CONCURRENCY};
    let template = read("infra/template.yaml");
    assert_eq!(
        parameter_default(&template, "RollupFanoutMinUnits"),
        Some(analytics::fanout::DEFAULT_FANOUT_MIN_UNITS as u32),
        "RollupFanoutMinUnits must default to analytics::fanout::DEFAULT_FANOUT_MIN_UNITS"
    );
    assert_eq!(
        parameter_default(&template, "RollupWorkerMaxConcurrency"),
        Some(TEMPLATE_MAX_CONCURRENCY as u32),
        "RollupWorkerMaxConcurrency must default to local::units_queue::TEMPLATE_MAX_CONCURRENCY"
    );
    let section = |name: &str| -> String {
        template
            .lines()
            .skip_while(|l| *l != format!("  {name}:"))
            .skip(1)
            .take_while(|l| !l.starts_with("  ") || l.starts_with("   "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let worker = section("RollupWorkerFunction");
    let units_event = worker
        .split("Queue: !GetAtt RollupUnitsQueue.Arn")
        .nth(1)
        .expect("the worker's event source is RollupUnitsQueue");
    assert!(
        units_event
            .lines()
            .any(|l| l.trim() == format!("BatchSize: {BATCH_SIZE}")),
        "the units queue's BatchSize must be local::units_queue::BATCH_SIZE: {units_event}"
    );
    let queue = section("RollupUnitsQueue");
    assert!(
        queue.contains(&format!("maxReceiveCount: {MAX_RECEIVE_COUNT}")),
        "the units queue's maxReceiveCount must be local::units_queue::MAX_RECEIVE_COUNT: {queue}"
    );
}

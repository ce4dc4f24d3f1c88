//! The Firehose processor buffer follows from the transform's response budget: the
//! template's `BufferSizeInMBs` and the emulator's default may not exceed the bound for
//! which any event the contract allows fits Lambda's 6 MiB response.
//! The emulated conversion compresses Parquet as the template's delivery stream does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use local::firehose::DEFAULT_PROCESSOR_BUFFER_BYTES;
use transform::handler::MAX_PROCESSOR_BUFFER_BYTES;

/// The line after the template's line that reads `line` (trimmed), trimmed.
fn template_line_after(line: &str) -> String {
    let path = test_support::workspace_root().join("infra/template.yaml");
    let template = std::fs::read_to_string(path).unwrap();
    let mut lines = template.lines().map(str::trim);
    lines
        .by_ref()
        .find(|l| *l == line)
        .unwrap_or_else(|| panic!("infra/template.yaml has no line {line:?}"));
    lines.next().unwrap().to_owned()
}

#[test]
fn the_templates_processor_buffer_fits_the_transforms_response_budget() {
    let value: f64 = template_line_after("- ParameterName: BufferSizeInMBs")
        .strip_prefix("ParameterValue:")
        .unwrap()
        .trim()
        .trim_matches('"')
        .parse()
        .unwrap();
    // Whichever megabyte Firehose means (10^6 or 2^20 bytes), the bound holds.
    let bytes = value * 1024.0 * 1024.0;
    assert!(
        bytes <= MAX_PROCESSOR_BUFFER_BYTES as f64,
        "BufferSizeInMBs {value} is {bytes} bytes, over MAX_PROCESSOR_BUFFER_BYTES \
         ({MAX_PROCESSOR_BUFFER_BYTES}): lower it"
    );
    assert!(value >= 0.2, "AWS accepts 0.2 to 3 MB");
    assert_eq!(DEFAULT_PROCESSOR_BUFFER_BYTES, MAX_PROCESSOR_BUFFER_BYTES);
}

#[test]
fn the_emulated_conversion_compresses_parquet_as_the_templates_delivery_stream() {
    let after = template_line_after("ParquetSerDe:");
    let codec = after
        .strip_prefix("Compression:")
        .expect("ParquetSerDe names its Compression")
        .trim();
    // parquet's codec names are Firehose's (SNAPPY, GZIP, UNCOMPRESSED).
    assert_eq!(
        format!("{:?}", local::firehose::PARQUET_COMPRESSION),
        codec,
        "local::firehose::PARQUET_COMPRESSION must be the template's ParquetSerDe Compression"
    );
    assert_eq!(
        local::firehose::FirehoseConfig::default()
            .parquet
            .compression,
        local::firehose::PARQUET_COMPRESSION
    );
}

//! Argument types that several subcommands share, so that subcommand modules
//! (e.g. [`crate::ledger`]) do not reach into `main.rs`.

use clap::ValueEnum;

/// `--data`: where the pipeline's objects live.
#[derive(Debug, clap::Args)]
pub(crate) struct DataArg {
    /// Where the data lives: a directory standing in for the S3 bucket, or
    /// s3://bucket/prefix (AWS_REGION and AWS_ENDPOINT_URL from the environment; credentials
    /// as the AWS SDK finds them: AWS_ACCESS_KEY_ID/…, AWS_PROFILE, a role).
    #[arg(long, default_value = "./data", env = "IOTPIPE_DATA")]
    pub(crate) data: String,
}

/// `--format`: how query-like subcommands print their rows.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for people.
    Table,
    /// A pretty-printed JSON array.
    Json,
    /// Comma-separated values with a header line.
    Csv,
}

/// Parses `--from`/`--to`: RFC 3339 (`2026-11-25T16:00:00Z`) or epoch milliseconds.
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{s:?} is neither RFC 3339 (2026-11-25T16:00:00Z) nor epoch ms: {e}"))
}

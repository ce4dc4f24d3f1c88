//! The deployed function's configuration, from its environment (set by
//! `infra/template.yaml`). Read once at cold start: a missing or bad variable fails the
//! cold start with a message naming it, instead of failing every request.

use crate::handler::IngestConfig;

/// Which sink (`kinesis` or `firehose`).
pub const SINK_VAR: &str = "IOTPIPE_SINK";
/// The Kinesis stream, or the Firehose delivery stream, to put records into.
pub const STREAM_NAME_VAR: &str = "IOTPIPE_STREAM_NAME";
/// The S3 bucket that holds the quarantine.
pub const BUCKET_VAR: &str = "IOTPIPE_BUCKET";
/// The quarantine's key prefix in the bucket (optional).
pub const QUARANTINE_PREFIX_VAR: &str = "IOTPIPE_QUARANTINE_PREFIX";
/// Record packing (optional): `off` (default), `on` (up to the sink's metering unit) or a
/// record size in bytes; see [`crate::pack`].
pub const PACK_VAR: &str = "IOTPIPE_PACK";

/// Default of [`QUARANTINE_PREFIX_VAR`].
pub const DEFAULT_QUARANTINE_PREFIX: &str = telemetry::layout::QUARANTINE_PREFIX;

/// Kinesis stream names: 1–128 characters of `[A-Za-z0-9_.-]`.
pub const KINESIS_STREAM_NAME_MAX: usize = 128;
/// Firehose delivery stream names: 1–64 characters of `[A-Za-z0-9_.-]`.
pub const FIREHOSE_STREAM_NAME_MAX: usize = 64;
/// S3 bucket names: 3–63 characters.
pub const BUCKET_NAME_LEN: std::ops::RangeInclusive<usize> = 3..=63;

/// Where the function puts the records it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// Kinesis Data Streams, `PutRecords` (the default deployment).
    Kinesis,
    /// Firehose direct put, `PutRecordBatch` (small fleets).
    Firehose,
}

/// The ingest function's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The sink ([`SINK_VAR`]: `kinesis` or `firehose`).
    pub sink: SinkKind,
    /// The stream or delivery stream name ([`STREAM_NAME_VAR`]).
    pub stream_name: String,
    /// The bucket of the quarantine ([`BUCKET_VAR`]).
    pub bucket: String,
    /// The quarantine's key prefix, without surrounding slashes ([`QUARANTINE_PREFIX_VAR`],
    /// default `quarantine`).
    pub quarantine_prefix: String,
    /// Record packing ([`PACK_VAR`], default off).
    pub pack: crate::pack::Pack,
}

/// A variable that is missing or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set (or is empty).
    #[error("{var} is not set: {expected}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// What it should hold.
        expected: &'static str,
    },
    /// A variable holds something unusable.
    #[error("{var}={value:?} is not valid: {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // Non-UTF-8 values are read lossily: validation then names them invalid, instead
        // of calling them missing.
        Self::from_lookup(|var| std::env::var_os(var).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the configuration through `lookup` (variable name → value); lets tests
    /// configure without touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var| lookup(var).filter(|v| !v.is_empty());

        const SINK_EXPECTED: &str = "`kinesis` or `firehose`";
        let sink = match get(SINK_VAR).as_deref() {
            Some("kinesis") => SinkKind::Kinesis,
            Some("firehose") => SinkKind::Firehose,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: SINK_VAR,
                    value: other.into(),
                    expected: SINK_EXPECTED,
                });
            }
            None => {
                return Err(ConfigError::Missing {
                    var: SINK_VAR,
                    expected: SINK_EXPECTED,
                });
            }
        };

        let (max, expected) = match sink {
            SinkKind::Kinesis => (
                KINESIS_STREAM_NAME_MAX,
                "a Kinesis stream name: 1-128 characters of A-Z a-z 0-9 _ . -",
            ),
            SinkKind::Firehose => (
                FIREHOSE_STREAM_NAME_MAX,
                "a Firehose delivery stream name: 1-64 characters of A-Z a-z 0-9 _ . -",
            ),
        };
        let stream_name = get(STREAM_NAME_VAR).ok_or(ConfigError::Missing {
            var: STREAM_NAME_VAR,
            expected,
        })?;
        let stream_ok = stream_name.len() <= max
            && stream_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !stream_ok {
            return Err(ConfigError::Invalid {
                var: STREAM_NAME_VAR,
                value: stream_name,
                expected,
            });
        }

        const BUCKET_EXPECTED: &str =
            "an S3 bucket name (3-63 characters of a-z 0-9 . -), without s3:// or a prefix";
        let bucket = get(BUCKET_VAR).ok_or(ConfigError::Missing {
            var: BUCKET_VAR,
            expected: BUCKET_EXPECTED,
        })?;
        let bucket_ok = BUCKET_NAME_LEN.contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-".contains(&b));
        if !bucket_ok {
            return Err(ConfigError::Invalid {
                var: BUCKET_VAR,
                value: bucket,
                expected: BUCKET_EXPECTED,
            });
        }

        let quarantine_prefix = match lookup(QUARANTINE_PREFIX_VAR) {
            None => DEFAULT_QUARANTINE_PREFIX.to_owned(),
            Some(p) => {
                let trimmed = p.trim_matches('/');
                // An empty prefix would scatter quarantine objects over the bucket's root,
                // next to telemetry/ and stats/.
                let valid = !trimmed.is_empty() && object_store::path::Path::parse(trimmed).is_ok();
                if !valid {
                    return Err(ConfigError::Invalid {
                        var: QUARANTINE_PREFIX_VAR,
                        value: p,
                        expected: "a non-empty key prefix such as `quarantine/` (unset: quarantine)",
                    });
                }
                trimmed.to_owned()
            }
        };

        let pack = match get(PACK_VAR) {
            None => crate::pack::Pack::Off,
            Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
                var: PACK_VAR,
                value: v,
                expected: "off, on (the sink's unit: 25 KB Kinesis, 5 KB Firehose) or a record size in bytes (>= 64)",
            })?,
        };

        Ok(Self {
            sink,
            stream_name,
            bucket,
            quarantine_prefix,
            pack,
        })
    }

    /// The bucket as a store location for [`telemetry::store::open_store`].
    pub fn bucket_url(&self) -> String {
        format!("{}{}", telemetry::store::S3_SCHEME, self.bucket)
    }

    /// The handler's settings: defaults, with the configured quarantine prefix.
    pub fn ingest_config(&self) -> IngestConfig {
        IngestConfig {
            quarantine_prefix: self.quarantine_prefix.clone(),
            pack: self.pack,
            ..IngestConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The environment `infra/template.yaml` gives the function.
    const TEMPLATE: [(&str, &str); 4] = [
        ("IOTPIPE_SINK", "kinesis"),
        ("IOTPIPE_STREAM_NAME", "iotpipe-telemetry"),
        ("IOTPIPE_BUCKET", "iotpipe-data-123"),
        ("IOTPIPE_QUARANTINE_PREFIX", "quarantine/"),
    ];

    /// The template's environment with `var` set to `value` (`None`: unset).
    fn with(var: &str, value: Option<&str>) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = TEMPLATE
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match value {
            Some(v) => env.insert(var.to_owned(), v.to_owned()),
            None => env.remove(var),
        };
        env
    }

    fn config(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| env.get(k).cloned())
    }

    #[test]
    fn iotpipe_pack_turns_packing_on_and_a_bad_value_names_the_variable() {
        let on = config(&with(PACK_VAR, Some("on"))).unwrap();
        assert_eq!(on.ingest_config().pack, crate::pack::Pack::SinkUnit);
        let sized = config(&with(PACK_VAR, Some("100000"))).unwrap();
        assert_eq!(sized.pack, crate::pack::Pack::Bytes(100_000));
        let err = config(&with(PACK_VAR, Some("sometimes")))
            .unwrap_err()
            .to_string();
        assert!(err.contains(PACK_VAR), "{err}");
    }

    #[test]
    fn the_templates_environment_configures_a_kinesis_sink() {
        let c = config(&with("-", None)).unwrap();
        assert_eq!(
            c,
            Config {
                sink: SinkKind::Kinesis,
                stream_name: "iotpipe-telemetry".into(),
                bucket: "iotpipe-data-123".into(),
                quarantine_prefix: "quarantine".into(),
                pack: crate::pack::Pack::Off,
            }
        );
        assert_eq!(c.bucket_url(), "s3://iotpipe-data-123");
        assert_eq!(c.ingest_config().quarantine_prefix, "quarantine");
    }

    #[test]
    fn the_quarantine_prefix_defaults_to_quarantine() {
        let c = config(&with("IOTPIPE_QUARANTINE_PREFIX", None)).unwrap();
        assert_eq!(c.quarantine_prefix, "quarantine");
    }

    #[test]
    fn firehose_is_the_other_sink() {
        let c = config(&with("IOTPIPE_SINK", Some("firehose"))).unwrap();
        assert_eq!(c.sink, SinkKind::Firehose);
    }

    #[test]
    fn each_missing_variable_is_named() {
        for var in ["IOTPIPE_SINK", "IOTPIPE_STREAM_NAME", "IOTPIPE_BUCKET"] {
            for value in [None, Some("")] {
                let err = config(&with(var, value)).unwrap_err().to_string();
                assert!(err.starts_with(&format!("{var} is not set")), "{err}");
            }
        }
    }

    #[test]
    fn each_bad_value_is_named_with_what_was_expected() {
        let long = "s".repeat(129);
        for (var, value, expected) in [
            ("IOTPIPE_SINK", "sqs", "`kinesis` or `firehose`"),
            ("IOTPIPE_STREAM_NAME", "has space", "Kinesis stream name"),
            ("IOTPIPE_STREAM_NAME", long.as_str(), "1-128"),
            ("IOTPIPE_BUCKET", "s3://bucket", "without s3://"),
            ("IOTPIPE_BUCKET", "Upper", "S3 bucket name"),
            ("IOTPIPE_QUARANTINE_PREFIX", "/", "non-empty key prefix"),
            ("IOTPIPE_QUARANTINE_PREFIX", "", "non-empty key prefix"),
            ("IOTPIPE_QUARANTINE_PREFIX", "a//b", "non-empty key prefix"),
        ] {
            let err = config(&with(var, Some(value))).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{var}=")), "{err}");
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn firehose_stream_names_are_held_to_firehose_limits() {
        let mut env = with("IOTPIPE_SINK", Some("firehose"));
        env.insert("IOTPIPE_STREAM_NAME".into(), "f".repeat(65));
        let err = config(&env).unwrap_err().to_string();
        assert!(err.contains("1-64"), "{err}");
    }
}

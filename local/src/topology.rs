//! Which path a local run takes from the IoT rule to Firehose: the template's `Topology`
//! parameter (infra/template.yaml), for the topologies that run in this process.
//!
//! - [`Topology::Firehose`] (the template's default): the emulated rule puts each raw payload
//!   (the rule's `{payload (base64), topic}` record, [`transform::RuleRecord`]) straight into
//!   the emulated Firehose, whose transform runs in raw mode ([`transform::RawTransform`]:
//!   validation, quarantine, long rows). No ingest invocation and no stream; Basic Ingest
//!   topics carry no messaging charge.
//! - [`Topology::PerMessage`]: the rule invokes ingest per message, ingest puts stream
//!   records, Firehose reads the stream and the transform explodes them.
//!
//! The `kinesis` topology (batched ingest behind an event-source mapping) is not emulated yet.

use std::fmt;
use std::str::FromStr;

/// The path of a local run (`iotpipe up|replay --topology`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// Rule → Firehose (DirectPut, raw payloads) → transform in raw mode.
    #[default]
    Firehose,
    /// Rule → ingest per message → stream → Firehose → transform.
    PerMessage,
}

impl Topology {
    /// The name the template and `iotpipe cost` use.
    pub const fn name(self) -> &'static str {
        match self {
            Topology::Firehose => "firehose",
            Topology::PerMessage => "per-message",
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Topology {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "firehose" => Ok(Topology::Firehose),
            "per-message" => Ok(Topology::PerMessage),
            "kinesis" => Err(
                "topology kinesis (batched ingest behind an event-source mapping) does not run \
                 locally yet: use firehose or per-message (iotpipe cost --topology kinesis \
                 prices it)"
                    .to_owned(),
            ),
            other => Err(format!(
                "{other:?} is not a topology: use firehose (default) or per-message"
            )),
        }
    }
}

//! Which path a local run takes from the IoT rule to Firehose: the template's `Topology`
//! parameter (infra/template.yaml), for the topologies that run in this process.
//!
//! - [`Topology::Firehose`] (the template's default): the emulated rule puts each raw payload
//!   (the rule's `{payload (base64), topic}` record, [`transform::RuleRecord`]) straight into
//!   the emulated Firehose, whose transform runs in raw mode ([`transform::RawTransform`]:
//!   validation, quarantine, long rows). No ingest invocation and no stream; Basic Ingest
//!   topics carry no messaging charge.
//! - [`Topology::Kinesis`]: the rule's Kinesis action puts the same raw record into the
//!   emulated stream; an emulated event-source mapping ([`crate::event_source`]) invokes
//!   ingest with batches of them (`ingest::kinesis_event`), and ingest puts stream records
//!   straight into the emulated Firehose (DirectPut), whose transform explodes them.
//! - [`Topology::PerMessage`]: the rule invokes ingest per message, ingest puts stream
//!   records, Firehose reads the stream and the transform explodes them.

use std::fmt;
use std::str::FromStr;

/// The path of a local run (`iotpipe up|replay --topology`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// Rule → Firehose (DirectPut, raw payloads) → transform in raw mode.
    #[default]
    Firehose,
    /// Rule → Kinesis (raw records) → event-source mapping → ingest in batches → Firehose
    /// (DirectPut) → transform.
    Kinesis,
    /// Rule → ingest per message → stream → Firehose → transform.
    PerMessage,
}

impl Topology {
    /// The name the template and `iotpipe cost` use.
    pub const fn name(self) -> &'static str {
        match self {
            Topology::Firehose => "firehose",
            Topology::Kinesis => "kinesis",
            Topology::PerMessage => "per-message",
        }
    }

    /// True when devices publish to Basic Ingest topics (`$aws/rules/<rule>/dt/...`) in this
    /// topology, as the template's devices do: every topology but the per-message baseline.
    pub const fn basic_ingest(self) -> bool {
        !matches!(self, Topology::PerMessage)
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
            "kinesis" => Ok(Topology::Kinesis),
            "per-message" => Ok(Topology::PerMessage),
            other => Err(format!(
                "{other:?} is not a topology: use firehose (default), kinesis or per-message"
            )),
        }
    }
}

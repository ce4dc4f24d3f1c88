//! The metering units AWS bills per record or message: every byte-to-unit conversion of
//! the pipeline (record packing, the local stack's counters, the cost estimate) uses these.
//!
//! The services round each record (or message) up to a whole unit, so a record of a few
//! hundred bytes pays for a full unit; [`units`] is that rounding.

/// Kinesis Data Streams, provisioned mode: PUT payload units of 25 KB per record. Record
/// packing fills this unit for a Kinesis sink.
pub const KINESIS_PUT_PAYLOAD_UNIT_BYTES: usize = 25 * 1024;

/// Kinesis Data Streams, on-demand mode: data ingested is billed per record rounded up to
/// 1 KB. The cost estimate prices the stream in this mode.
pub const KINESIS_ON_DEMAND_UNIT_BYTES: usize = 1024;

/// Kinesis Data Firehose: ingestion is billed per record rounded up to 5 KB.
pub const FIREHOSE_INGEST_UNIT_BYTES: usize = 5 * 1024;

/// AWS IoT Core: messages are metered in 5 KB increments.
pub const IOT_MESSAGE_UNIT_BYTES: usize = 5 * 1024;

/// The units a record (or message) of `len` bytes is billed as, with `unit_bytes` per
/// unit: rounded up, and at least one (an empty record still counts).
pub fn units(len: usize, unit_bytes: usize) -> u64 {
    len.div_ceil(unit_bytes.max(1)).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_pays_for_whole_units_and_at_least_one() {
        assert_eq!(units(0, FIREHOSE_INGEST_UNIT_BYTES), 1);
        assert_eq!(units(5 * 1024, FIREHOSE_INGEST_UNIT_BYTES), 1);
        assert_eq!(units(5 * 1024 + 1, FIREHOSE_INGEST_UNIT_BYTES), 2);
        assert_eq!(units(300, KINESIS_ON_DEMAND_UNIT_BYTES), 1);
        assert_eq!(units(2049, KINESIS_ON_DEMAND_UNIT_BYTES), 3);
    }
}

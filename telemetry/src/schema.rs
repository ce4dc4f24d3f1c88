//! The Arrow schema of the telemetry Parquet files: the single source of truth from which
//! the Glue table of the AWS template is generated.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Float64Builder, Int64Builder, StringBuilder, StringDictionaryBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::message::ReadingColumns;

/// Time zone of every timestamp column.
pub const UTC: &str = "UTC";

fn dict_utf8() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

fn ts_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
}

static TELEMETRY_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("device_id", dict_utf8(), false),
        Field::new("seq", DataType::Int64, false),
        Field::new("event_time", ts_ms(), false),
        Field::new("received_at", ts_ms(), false),
        Field::new("metric", dict_utf8(), false),
        Field::new("value", DataType::Float64, false),
        Field::new("fw", DataType::Utf8, true),
    ]))
});

/// The schema of a telemetry Parquet file: one row per reading ("long" layout).
pub fn telemetry_schema() -> SchemaRef {
    TELEMETRY_SCHEMA.clone()
}

/// Builds a record batch in [`telemetry_schema`] from readings ([`crate::Reading`]s, or
/// [`crate::message::ReadingRef`]s that borrow their strings).
pub fn readings_to_batch<R: ReadingColumns>(readings: &[R]) -> Result<RecordBatch, ArrowError> {
    let n = readings.len();
    let mut device = StringDictionaryBuilder::<Int32Type>::new();
    let mut seq = Int64Builder::with_capacity(n);
    let mut event_time = TimestampMillisecondBuilder::with_capacity(n).with_timezone(UTC);
    let mut received_at = TimestampMillisecondBuilder::with_capacity(n).with_timezone(UTC);
    let mut metric = StringDictionaryBuilder::<Int32Type>::new();
    let mut value = Float64Builder::with_capacity(n);
    let mut fw = StringBuilder::with_capacity(n, n * 6);
    for r in readings {
        device.append_value(r.device_id());
        seq.append_value(r.seq());
        event_time.append_value(r.event_time());
        received_at.append_value(r.received_at());
        metric.append_value(r.metric());
        value.append_value(r.value());
        fw.append_option(r.fw());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(device.finish()),
        Arc::new(seq.finish()),
        Arc::new(event_time.finish()),
        Arc::new(received_at.finish()),
        Arc::new(metric.finish()),
        Arc::new(value.finish()),
        Arc::new(fw.finish()),
    ];
    RecordBatch::try_new(telemetry_schema(), columns)
}

/// The Glue/Hive type of an Arrow type, as the AWS template declares it.
///
/// Returns `None` for types this project does not use.
pub fn glue_type(dt: &DataType) -> Option<&'static str> {
    Some(match dt {
        DataType::Utf8 | DataType::LargeUtf8 => "string",
        DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::LargeUtf8) => {
            "string"
        }
        DataType::Int64 | DataType::UInt64 => "bigint",
        DataType::Int32 => "int",
        DataType::Float64 => "double",
        DataType::Boolean => "boolean",
        DataType::Binary | DataType::LargeBinary => "binary",
        DataType::Timestamp(_, _) => "timestamp",
        _ => return None,
    })
}

/// `(name, glue type)` of every column of a schema, in order.
pub fn glue_columns(schema: &Schema) -> Vec<(String, &'static str)> {
    schema
        .fields()
        .iter()
        .map(|f| {
            (
                f.name().clone(),
                glue_type(f.data_type()).unwrap_or("unsupported"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reading;

    #[test]
    fn readings_become_a_batch_of_the_schema() {
        let r = Reading {
            device_id: "d".into(),
            seq: 1,
            event_time: 10,
            received_at: 11,
            metric: "t".into(),
            value: 1.5,
            fw: None,
        };
        let b = readings_to_batch(&[
            r.clone(),
            Reading {
                fw: Some("1".into()),
                ..r
            },
        ])
        .unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema(), telemetry_schema());
    }

    #[test]
    fn the_glue_columns_follow_the_arrow_schema() {
        let cols = glue_columns(&telemetry_schema());
        let flat: Vec<String> = cols.iter().map(|(n, t)| format!("{n} {t}")).collect();
        assert_eq!(
            flat,
            [
                "device_id string",
                "seq bigint",
                "event_time timestamp",
                "received_at timestamp",
                "metric string",
                "value double",
                "fw string"
            ]
        );
    }
}

//! The Arrow schema of the telemetry Parquet files: the single source of truth from which
//! the Glue table of the AWS template is generated.

use std::sync::{Arc, LazyLock};

use std::collections::HashMap;

use arrow_array::builder::{
    ArrayBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, DictionaryArray, Int32Array, RecordBatch};
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
    let mut device = DictColumn::with_capacity(n);
    let mut seq = Int64Builder::with_capacity(n);
    let mut event_time = TimestampMillisecondBuilder::with_capacity(n).with_timezone(UTC);
    let mut received_at = TimestampMillisecondBuilder::with_capacity(n).with_timezone(UTC);
    let mut metric = DictColumn::with_capacity(n);
    let mut value = Float64Builder::with_capacity(n);
    let mut fw = StringBuilder::with_capacity(n, n * 6);
    for r in readings {
        device.append(r.device_id());
        seq.append_value(r.seq());
        event_time.append_value(r.event_time());
        received_at.append_value(r.received_at());
        metric.append(r.metric());
        value.append_value(r.value());
        fw.append_option(r.fw());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(device.finish()?),
        Arc::new(seq.finish()),
        Arc::new(event_time.finish()),
        Arc::new(received_at.finish()),
        Arc::new(metric.finish()?),
        Arc::new(value.finish()),
        Arc::new(fw.finish()),
    ];
    RecordBatch::try_new(telemetry_schema(), columns)
}

/// A `Dictionary(Int32, Utf8)` column of borrowed strings, its values in order of first
/// appearance (what arrow's `StringDictionaryBuilder` makes). Rows come in runs and short
/// cycles (a message's readings share its device; its metric names repeat message after
/// message), so a value is first compared with the previous row's, then searched among the
/// values while there are at most [`DictColumn::FEW`], and hashed only in a larger
/// dictionary: hashing every row was ~2 % of a replay's CPU.
struct DictColumn<'a> {
    keys: Vec<i32>,
    values: StringBuilder,
    /// The previous row's value and key.
    last: Option<(&'a str, i32)>,
    /// The values while there are at most [`DictColumn::FEW`], searched in order (their
    /// keys are their positions).
    few: Vec<&'a str>,
    /// Key by value, once there are more (`few` is then empty).
    index: HashMap<&'a str, i32, ahash::RandomState>,
}

impl<'a> DictColumn<'a> {
    const FEW: usize = 8;

    fn with_capacity(rows: usize) -> Self {
        Self {
            keys: Vec::with_capacity(rows),
            values: StringBuilder::new(),
            last: None,
            few: Vec::with_capacity(Self::FEW),
            index: HashMap::default(),
        }
    }

    fn append(&mut self, value: &'a str) {
        let key = match self.last {
            Some((last, key)) if last == value => key,
            _ => {
                let key = self.key_of(value);
                self.last = Some((value, key));
                key
            }
        };
        self.keys.push(key);
    }

    /// The key of `value`, added when new.
    fn key_of(&mut self, value: &'a str) -> i32 {
        let known = if self.index.is_empty() {
            self.few.iter().position(|v| *v == value).map(|i| i as i32)
        } else {
            self.index.get(value).copied()
        };
        if let Some(key) = known {
            return key;
        }
        let key = self.values.len() as i32;
        self.values.append_value(value);
        if !self.index.is_empty() {
            self.index.insert(value, key);
        } else if self.few.len() < Self::FEW {
            self.few.push(value);
        } else {
            // The dictionary outgrew a linear search: hashed from now on.
            self.index
                .extend(self.few.drain(..).enumerate().map(|(i, v)| (v, i as i32)));
            self.index.insert(value, key);
        }
        key
    }

    fn finish(mut self) -> Result<DictionaryArray<Int32Type>, ArrowError> {
        DictionaryArray::try_new(Int32Array::from(self.keys), Arc::new(self.values.finish()))
    }
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

    proptest::proptest! {
        /// A dictionary column is what arrow's own builder makes of the same values (keys
        /// and values in order of first appearance), with runs, cycles and more distinct
        /// values than the few searched before hashing.
        #[test]
        fn a_dictionary_column_is_arrows_dictionary(
            picks in proptest::collection::vec((0usize..40, 1usize..4), 0..300),
        ) {
            let names: Vec<String> = (0..40).map(|i| format!("name-{i}")).collect();
            let values: Vec<&str> = picks
                .iter()
                .flat_map(|&(i, run)| std::iter::repeat_n(names[i].as_str(), run))
                .collect();
            let mut ours = DictColumn::with_capacity(values.len());
            let mut arrows = arrow_array::builder::StringDictionaryBuilder::<Int32Type>::new();
            for v in &values {
                ours.append(v);
                arrows.append_value(v);
            }
            // Keys and values compared as stored: `DictionaryArray`'s `==` compares the
            // values the keys stand for, which a dictionary holding a value twice would pass.
            let (ours, arrows) = (ours.finish().unwrap(), arrows.finish());
            proptest::prop_assert_eq!(ours.keys(), arrows.keys());
            proptest::prop_assert_eq!(ours.values().as_ref(), arrows.values().as_ref());
        }
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

//! The Arrow schema of the stats files, and conversion between its record batches and
//! [`WindowStats`].

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BinaryBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use telemetry::schema::UTC;

use crate::columns::{self, ColumnError, Strings};
use crate::stats::WindowStats;

/// The type of a stats column: its Arrow type (and so its Glue type, which
/// `iotpipe schema --glue stats_1m` derives from the Arrow schema) and its text forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsType {
    /// A string (Arrow `Utf8`, Glue `string`).
    Text,
    /// A number of readings (Arrow `Int64`, Glue `bigint`).
    Count,
    /// A statistic of the values (Arrow `Float64`, Glue `double`).
    Float,
    /// A window's start (Arrow timestamp ms UTC, Glue `timestamp`); printed to the second.
    WindowTime,
    /// An event time (Arrow timestamp ms UTC, Glue `timestamp`); printed to the
    /// millisecond.
    EventTime,
    /// Opaque bytes (Arrow `Binary`, Glue `binary`): a serialised sketch.
    Bytes,
}

impl StatsType {
    /// The Arrow type of the column in the stats files.
    pub fn arrow_type(self) -> DataType {
        match self {
            StatsType::Text => DataType::Utf8,
            StatsType::Count => DataType::Int64,
            StatsType::Float => DataType::Float64,
            StatsType::WindowTime | StatsType::EventTime => {
                DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
            }
            StatsType::Bytes => DataType::Binary,
        }
    }
}

/// One cell of a stats row, read from a [`WindowStats`] by [`StatsColumn::get`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatsValue<'a> {
    /// A [`StatsType::Text`] cell.
    Text(&'a str),
    /// A [`StatsType::Count`] cell.
    Count(u64),
    /// A [`StatsType::Float`] cell; `None` only in a nullable column.
    Float(Option<f64>),
    /// A [`StatsType::WindowTime`] or [`StatsType::EventTime`] cell, epoch milliseconds.
    Time(i64),
    /// A [`StatsType::Bytes`] cell.
    Bytes(&'a [u8]),
}

/// A column of the stats files and of query output.
#[derive(Debug, Clone, Copy)]
pub struct StatsColumn {
    /// Column name (Parquet, CSV header, table header, Glue column).
    pub name: &'static str,
    /// Its type.
    pub ty: StatsType,
    /// Whether the column may hold nulls.
    pub nullable: bool,
    /// What it holds, for people (`iotpipe schema --json stats_1m`).
    pub doc: &'static str,
    /// Merge state (`m2`, `sketch`): stored in the files and the Glue tables so that
    /// coarser windows can be derived, but not a statistic — left out of query output
    /// ([`output_columns`]).
    pub internal: bool,
    /// The cell of a row.
    pub get: fn(&WindowStats) -> StatsValue<'_>,
}

/// The stats columns, in order: the one definition the Arrow schema ([`stats_schema`]),
/// the record batches ([`stats_to_batch`]), CSV and table output
/// ([`crate::query::to_csv`], [`crate::query::to_table`]), the Glue table
/// (`iotpipe schema --glue stats_1m`, checked against `infra/template.yaml`) and the
/// reference check (`tests/py/reference_stats.py`, given `iotpipe schema --json
/// stats_1m`) follow. Names and order are those of [`WindowStats`]'s fields.
pub const STATS_COLUMNS: [StatsColumn; 16] = {
    use StatsType::{Bytes, Count, EventTime, Float, Text, WindowTime};
    use StatsValue as V;
    const fn col(
        name: &'static str,
        ty: StatsType,
        doc: &'static str,
        get: fn(&WindowStats) -> StatsValue<'_>,
    ) -> StatsColumn {
        StatsColumn {
            name,
            ty,
            nullable: false,
            doc,
            internal: false,
            get,
        }
    }
    [
        col("device_id", Text, "the device (AWS IoT thing name)", |r| {
            V::Text(&r.device_id)
        }),
        col("metric", Text, "the metric name", |r| V::Text(&r.metric)),
        col(
            "window_start",
            WindowTime,
            "start of the window (UTC, inclusive)",
            |r| V::Time(r.window_start),
        ),
        col(
            "count",
            Count,
            "distinct readings in the window (after de-duplication)",
            |r| V::Count(r.count),
        ),
        col("min", Float, "smallest value", |r| V::Float(Some(r.min))),
        col("max", Float, "largest value", |r| V::Float(Some(r.max))),
        col("sum", Float, "sum of the values", |r| V::Float(Some(r.sum))),
        col("mean", Float, "arithmetic mean (sum / count)", |r| {
            V::Float(Some(r.mean))
        }),
        // Null when the window holds a single reading (sample deviation is undefined).
        StatsColumn {
            nullable: true,
            ..col(
                "stddev",
                Float,
                "sample standard deviation; null when count is 1",
                |r| V::Float(r.stddev),
            )
        },
        col("p50", Float, "median (continuous quantile 0.5)", |r| {
            V::Float(Some(r.p50))
        }),
        col("p95", Float, "continuous quantile 0.95", |r| {
            V::Float(Some(r.p95))
        }),
        col("p99", Float, "continuous quantile 0.99", |r| {
            V::Float(Some(r.p99))
        }),
        col("first_event", EventTime, "earliest event time (UTC)", |r| {
            V::Time(r.first_event)
        }),
        col("last_event", EventTime, "latest event time (UTC)", |r| {
            V::Time(r.last_event)
        }),
        StatsColumn {
            internal: true,
            ..col(
                "m2",
                Float,
                "sum of squared deviations from the mean (merges stddev across windows)",
                |r| V::Float(Some(r.m2)),
            )
        },
        StatsColumn {
            internal: true,
            ..col(
                "sketch",
                Bytes,
                "DDSketch of the values, relative accuracy 1% (merges quantiles); empty for a 1m window so small that min, p50 and max are its values",
                |r| V::Bytes(&r.sketch),
            )
        },
    ]
};

/// The columns of query output (CSV, table, JSON): [`STATS_COLUMNS`] without the merge
/// state.
pub fn output_columns() -> impl Iterator<Item = &'static StatsColumn> {
    STATS_COLUMNS.iter().filter(|c| !c.internal)
}

static STATS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(
        STATS_COLUMNS
            .iter()
            .map(|c| Field::new(c.name, c.ty.arrow_type(), c.nullable))
            .collect::<Vec<_>>(),
    ))
});

/// The schema of a stats file (`stats/window=…/dt=…/hour=…/stats.parquet`): one row per
/// (`device_id`, `metric`, `window_start`), timestamps in milliseconds UTC, only `stddev`
/// nullable; the fields of [`STATS_COLUMNS`].
pub fn stats_schema() -> SchemaRef {
    STATS_SCHEMA.clone()
}

/// Builds a record batch in [`stats_schema`] from rows.
pub fn stats_to_batch(rows: &[WindowStats]) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let columns: Vec<ArrayRef> = STATS_COLUMNS
        .iter()
        .map(|c| {
            let cells = rows.iter().map(|r| (c.get)(r));
            // A cell of another type than its column's is appended as null, which the
            // batch then refuses (only `stddev` is nullable).
            match c.ty {
                StatsType::Text => {
                    let mut b = StringBuilder::with_capacity(n, n * 16);
                    for v in cells {
                        match v {
                            StatsValue::Text(s) => b.append_value(s),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish()) as ArrayRef
                }
                StatsType::Count => {
                    let mut b = Int64Builder::with_capacity(n);
                    for v in cells {
                        match v {
                            // A window never holds more than i64::MAX readings; saturate
                            // rather than wrap.
                            StatsValue::Count(c) => {
                                b.append_value(i64::try_from(c).unwrap_or(i64::MAX))
                            }
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                StatsType::Float => {
                    let mut b = Float64Builder::with_capacity(n);
                    for v in cells {
                        match v {
                            StatsValue::Float(x) => b.append_option(x),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                StatsType::WindowTime | StatsType::EventTime => {
                    let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone(UTC);
                    for v in cells {
                        match v {
                            StatsValue::Time(t) => b.append_value(t),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                StatsType::Bytes => {
                    let mut b = BinaryBuilder::with_capacity(n, n * 8);
                    for v in cells {
                        match v {
                            StatsValue::Bytes(x) => b.append_value(x),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
            }
        })
        .collect();
    RecordBatch::try_new(stats_schema(), columns)
}

/// Reads the rows of a batch in [`stats_schema`] (strings may also be dictionary or
/// large strings, timestamps of any unit).
pub fn stats_from_batch(batch: &RecordBatch) -> Result<Vec<WindowStats>, ColumnError> {
    let device = Strings::new("device_id", columns::required(batch, "device_id")?)?;
    let metric = Strings::new("metric", columns::required(batch, "metric")?)?;
    let window_start = columns::timestamps_ms(batch, "window_start")?;
    let count = columns::int64(batch, "count")?;
    let f = |name| columns::float64(batch, name, false);
    let (min, max, sum, mean) = (f("min")?, f("max")?, f("sum")?, f("mean")?);
    let stddev = columns::float64(batch, "stddev", true)?;
    let (p50, p95, p99) = (f("p50")?, f("p95")?, f("p99")?);
    let first_event = columns::timestamps_ms(batch, "first_event")?;
    let last_event = columns::timestamps_ms(batch, "last_event")?;
    let m2 = f("m2")?;
    let sketch = columns::binary(batch, "sketch")?;
    let rows = (0..batch.num_rows())
        .map(|i| WindowStats {
            device_id: device.value(i).to_string(),
            metric: metric.value(i).to_string(),
            window_start: window_start.get(i).copied().unwrap_or_default(),
            // Counts are written from u64 and are never negative.
            count: u64::try_from(count.value(i)).unwrap_or_default(),
            min: min.value(i),
            max: max.value(i),
            sum: sum.value(i),
            mean: mean.value(i),
            stddev: (!stddev.is_null(i)).then(|| stddev.value(i)),
            p50: p50.value(i),
            p95: p95.value(i),
            p99: p99.value(i),
            first_event: first_event.get(i).copied().unwrap_or_default(),
            last_event: last_event.get(i).copied().unwrap_or_default(),
            m2: m2.value(i),
            sketch: sketch.value(i).to_vec(),
        })
        .collect();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_names_the_fields_of_window_stats_in_order() {
        // Spelled out once more on purpose: a reordering of STATS_COLUMNS changes the
        // files' layout and must be a deliberate change of this test too.
        let names: Vec<_> = stats_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "device_id",
                "metric",
                "window_start",
                "count",
                "min",
                "max",
                "sum",
                "mean",
                "stddev",
                "p50",
                "p95",
                "p99",
                "first_event",
                "last_event",
                "m2",
                "sketch"
            ]
        );
        let nullable: Vec<_> = stats_schema()
            .fields()
            .iter()
            .filter(|f| f.is_nullable())
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(nullable, ["stddev"]);
    }

    #[test]
    fn rows_survive_a_round_trip_through_a_batch() {
        // Every value distinct, so that two columns swapped cannot round-trip.
        let row = WindowStats {
            device_id: "sensor-1".into(),
            metric: "temperature".into(),
            window_start: 1_764_086_700_000,
            count: 3,
            min: 1.0,
            max: 2.0,
            sum: 4.5,
            mean: 1.5,
            stddev: None,
            p50: 1.25,
            p95: 1.75,
            p99: 1.9,
            first_event: 1_764_086_701_250,
            last_event: 1_764_086_702_500,
            m2: 0.0,
            sketch: vec![1, 0, 1, 2, 1, 0],
        };
        let two = WindowStats {
            count: 4,
            stddev: Some(0.25),
            m2: 0.1875,
            ..row.clone()
        };
        let batch = stats_to_batch(&[row.clone(), two.clone()]).unwrap();
        assert_eq!(batch.schema(), stats_schema());
        assert_eq!(stats_from_batch(&batch).unwrap(), vec![row, two]);
    }
}

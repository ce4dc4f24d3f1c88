//! The Arrow schema of the stats files, and conversion between its record batches and
//! [`WindowStats`].

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use telemetry::schema::UTC;

use crate::columns::{self, ColumnError, Strings};
use crate::stats::WindowStats;

fn ts_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
}

static STATS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let f64_col = |name| Field::new(name, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("window_start", ts_ms(), false),
        Field::new("count", DataType::Int64, false),
        f64_col("min"),
        f64_col("max"),
        f64_col("sum"),
        f64_col("mean"),
        // Null when the window holds a single reading (sample deviation is undefined).
        Field::new("stddev", DataType::Float64, true),
        f64_col("p50"),
        f64_col("p95"),
        f64_col("p99"),
        Field::new("first_event", ts_ms(), false),
        Field::new("last_event", ts_ms(), false),
    ]))
});

/// The schema of a stats file (`stats/window=…/dt=…/hour=…/stats.parquet`): one row per
/// (`device_id`, `metric`, `window_start`), timestamps in milliseconds UTC, only `stddev`
/// nullable. Column names and order are those of [`WindowStats`]'s fields.
pub fn stats_schema() -> SchemaRef {
    STATS_SCHEMA.clone()
}

/// Builds a record batch in [`stats_schema`] from rows.
pub fn stats_to_batch(rows: &[WindowStats]) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let strings = |f: fn(&WindowStats) -> &str| {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let times = |f: fn(&WindowStats) -> i64| {
        let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone(UTC);
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let floats = |f: fn(&WindowStats) -> Option<f64>| {
        let mut b = Float64Builder::with_capacity(n);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let mut count = Int64Builder::with_capacity(n);
    for r in rows {
        // A window never holds more than i64::MAX readings; saturate rather than wrap.
        count.append_value(i64::try_from(r.count).unwrap_or(i64::MAX));
    }
    let columns: Vec<ArrayRef> = vec![
        strings(|r| &r.device_id),
        strings(|r| &r.metric),
        times(|r| r.window_start),
        Arc::new(count.finish()),
        floats(|r| Some(r.min)),
        floats(|r| Some(r.max)),
        floats(|r| Some(r.sum)),
        floats(|r| Some(r.mean)),
        floats(|r| r.stddev),
        floats(|r| Some(r.p50)),
        floats(|r| Some(r.p95)),
        floats(|r| Some(r.p99)),
        times(|r| r.first_event),
        times(|r| r.last_event),
    ];
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
        })
        .collect();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_names_the_fields_of_window_stats_in_order() {
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
                "last_event"
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
        let row = WindowStats {
            device_id: "sensor-1".into(),
            metric: "temperature".into(),
            window_start: 1_764_086_700_000,
            count: 1,
            min: 1.5,
            max: 1.5,
            sum: 1.5,
            mean: 1.5,
            stddev: None,
            p50: 1.5,
            p95: 1.5,
            p99: 1.5,
            first_event: 1_764_086_701_250,
            last_event: 1_764_086_701_250,
        };
        let two = WindowStats {
            count: 2,
            stddev: Some(0.25),
            ..row.clone()
        };
        let batch = stats_to_batch(&[row.clone(), two.clone()]).unwrap();
        assert_eq!(batch.schema(), stats_schema());
        assert_eq!(stats_from_batch(&batch).unwrap(), vec![row, two]);
    }
}

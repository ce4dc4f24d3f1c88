#!/usr/bin/env python3
"""polars' side of the benchmark: JSON lines -> the pipeline's long-format Parquet.

    polars_convert.py FILE.jsonl OUT_DIR

Reads the device payloads (one JSON object per line, as `device-sim --dump` writes them),
turns each into one row per reading with the telemetry table's columns (device_id, seq,
event_time, received_at, metric, value, fw) and writes zstd Parquet partitioned Hive-style
by event hour (OUT_DIR/dt=YYYY-MM-DD/hour=HH/). No validation beyond what parsing does.
Prints the row count.
"""

import sys
import time

import polars as pl


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    received_at = int(time.time() * 1000)
    df = pl.read_ndjson(src)
    metric_fields = [f.name for f in df.schema["metrics"].fields]
    long = (
        df.select("device_id", "seq", "ts", "fw", pl.col("metrics").struct.unnest())
        .unpivot(index=["device_id", "seq", "ts", "fw"], on=metric_fields,
                 variable_name="metric", value_name="value")
        .drop_nulls("value")
        .with_columns(
            event_time=pl.from_epoch("ts", time_unit="ms"),
            received_at=pl.lit(received_at).cast(pl.Datetime("ms")),
        )
        .with_columns(
            dt=pl.col("event_time").dt.strftime("%Y-%m-%d"),
            hour=pl.col("event_time").dt.strftime("%H"),
        )
        .select(
            pl.col("device_id").cast(pl.Categorical),
            pl.col("seq").cast(pl.Int64),
            "event_time", "received_at",
            pl.col("metric").cast(pl.Categorical),
            pl.col("value").cast(pl.Float64),
            pl.col("fw").cast(pl.String),
            "dt", "hour",
        )
    )
    long.write_parquet(out, compression="zstd", partition_by=["dt", "hour"])
    print(long.height)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""DuckDB's side of the benchmark: the 1-minute rollup of the long-format Parquet.

    duckdb_aggregate.py PARQUET_DIR OUT.parquet

De-duplicates readings on (device_id, seq, event_time, metric), as the pipeline's rollup
does, then per (device_id, metric, 1-minute window): count, min, max, sum, mean, stddev,
p50, p95, p99 (exact), first and last event; writes them to OUT.parquet and prints the
number of windows.
"""

import sys

import duckdb


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    con = duckdb.connect()
    con.execute(f"""
        COPY (
          WITH r AS (
            SELECT DISTINCT device_id::VARCHAR AS device_id, seq, event_time,
                   metric::VARCHAR AS metric, value
            FROM read_parquet('{src}/**/*.parquet', hive_partitioning = true)
          )
          SELECT device_id, metric, time_bucket(INTERVAL 1 MINUTE, event_time) AS window_start,
                 count(*) AS count, min(value) AS min, max(value) AS max, sum(value) AS sum,
                 avg(value) AS mean, stddev_pop(value) AS stddev,
                 quantile_cont(value, 0.5) AS p50, quantile_cont(value, 0.95) AS p95,
                 quantile_cont(value, 0.99) AS p99,
                 min(event_time) AS first_event, max(event_time) AS last_event
          FROM r GROUP BY ALL
        ) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
    """)
    print(con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0])


if __name__ == "__main__":
    main()

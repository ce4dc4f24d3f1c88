#!/usr/bin/env python3
"""The reference engine for the rollup benchmark: DuckDB's de-duplication and 1-minute
GROUP BY with exact quantiles over the same telemetry Parquet the rollup reads. Run with
$IOTPIPE_TEST_PYTHON under /usr/bin/time -v for its peak RSS:

    /usr/bin/time -v $IOTPIPE_TEST_PYTHON analytics/bench/duckdb_rollup.py DATA

Prints the number of windows and the time of the query. With `--write OUT.parquet` the
windows are also written, sorted like the rollup's stats files and zstd-compressed, as
the rollup writes its own (the same work, not only the aggregation):

    $IOTPIPE_TEST_PYTHON analytics/bench/duckdb_rollup.py DATA --write /tmp/duck.parquet
 Identity of a reading as in the
rollup: (device_id, seq, event_time, metric), the first in file order kept.
"""

import sys
import time

import duckdb

data = sys.argv[1]
out = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] in ("--write", "--write-unsorted") else None
sort = " ORDER BY device_id, metric, w" if "--write" in sys.argv else ""
con = duckdb.connect(":memory:")
start = time.monotonic()
windows_sql = f"""
    WITH rows AS (
        SELECT device_id, seq, event_time, metric, value
        FROM read_parquet('{data}/telemetry/*/*/*.parquet', hive_partitioning = false,
                          filename = true)
        QUALIFY row_number() OVER (
            PARTITION BY device_id, seq, event_time, metric ORDER BY filename) = 1
    )
    SELECT device_id, metric, time_bucket(INTERVAL 1 MINUTE, event_time) AS w,
           count(*) AS count, min(value) AS min, max(value) AS max, sum(value) AS sum,
           avg(value) AS mean, stddev_samp(value) AS stddev,
           quantile_cont(value, 0.5) AS p50, quantile_cont(value, 0.95) AS p95,
           quantile_cont(value, 0.99) AS p99, min(event_time) AS first_event,
           max(event_time) AS last_event
    FROM rows GROUP BY ALL
"""
if out:
    con.execute(
        f"COPY ({windows_sql}{sort}) TO '{out}' "
        "(FORMAT parquet, COMPRESSION zstd)"
    )
    windows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
else:
    # Every column is used, so that DuckDB's optimiser cannot drop an aggregate (with a
    # bare count(*) over the GROUP BY it removes the unused quantiles and statistics).
    windows = con.execute(
        "SELECT count(*), sum(count), sum(min), sum(max), sum(sum), sum(mean), "
        "sum(stddev), sum(p50), sum(p95), sum(p99), max(first_event), max(last_event) "
        f"FROM ({windows_sql})"
    ).fetchone()[0]
print(f"duckdb: {windows} windows in {time.monotonic() - start:.2f} s")

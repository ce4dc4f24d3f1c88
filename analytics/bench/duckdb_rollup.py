#!/usr/bin/env python3
"""The reference engine for the rollup benchmark: DuckDB's de-duplication and 1-minute
GROUP BY with exact quantiles over the same telemetry Parquet the rollup reads. Run with
$IOTPIPE_TEST_PYTHON under /usr/bin/time -v for its peak RSS:

    /usr/bin/time -v $IOTPIPE_TEST_PYTHON analytics/bench/duckdb_rollup.py DATA

Prints the number of windows and the time of the query. Identity of a reading as in the
rollup: (device_id, seq, event_time, metric), the first in file order kept.
"""

import sys
import time

import duckdb

data = sys.argv[1]
con = duckdb.connect(":memory:")
start = time.monotonic()
windows = con.execute(
    f"""
    WITH rows AS (
        SELECT device_id, seq, event_time, metric, value
        FROM read_parquet('{data}/telemetry/*/*/*.parquet', hive_partitioning = false,
                          filename = true)
        QUALIFY row_number() OVER (
            PARTITION BY device_id, seq, event_time, metric ORDER BY filename) = 1
    )
    SELECT count(*) FROM (
        SELECT device_id, metric, time_bucket(INTERVAL 1 MINUTE, event_time) AS w,
               count(*), min(value), max(value), sum(value), avg(value), stddev_samp(value),
               quantile_cont(value, 0.5), quantile_cont(value, 0.95),
               quantile_cont(value, 0.99), min(event_time), max(event_time)
        FROM rows GROUP BY ALL
    )
    """
).fetchone()[0]
print(f"duckdb: {windows} windows in {time.monotonic() - start:.2f} s")

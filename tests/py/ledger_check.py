#!/usr/bin/env python3
"""Independent delivery-ledger figures from the pipeline's telemetry Parquet, computed with
DuckDB SQL (run with $IOTPIPE_TEST_PYTHON). `iotpipe ledger` is compared against this.

    ledger_check.py DIR WINDOW_MS ALLOWED_LATENESS_MS

Reads every *.parquet under DIR (the telemetry prefix, long format: one row per reading)
and prints ONE JSON object on stdout:

    {"received": R, "duplicated": D, "late": L,
     "per_device": {device_id: {"received": r, "duplicated": d, "late": l}}}

Definitions, written independently of analytics/src/ledger.rs:
  * a message is a distinct (device_id, seq); received = number of messages;
  * a message's deliveries = the largest number of rows any one of its metrics has
    (each delivery carries each metric once); duplicated = sum of (deliveries - 1);
  * its first delivery is the row with the smallest received_at (ties: smallest
    event_time); late when that received_at >= window end + ALLOWED_LATENESS_MS, the
    window being event_time floored to WINDOW_MS (UTC epoch alignment).
Exit status: 0 ok; 2 on bad arguments or when DIR holds no Parquet file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb

SQL = """
WITH rows AS (
    SELECT CAST(device_id AS VARCHAR) AS device_id, seq, CAST(metric AS VARCHAR) AS metric,
           epoch_ms(event_time) AS et, epoch_ms(received_at) AS rx
    FROM read_parquet($files, union_by_name = true, hive_partitioning = false)
),
per_metric AS (
    SELECT device_id, seq, metric, count(*) AS n FROM rows GROUP BY device_id, seq, metric
),
deliveries AS (
    SELECT device_id, seq, max(n) AS deliveries FROM per_metric GROUP BY device_id, seq
),
first_delivery AS (
    SELECT device_id, seq, min(struct_pack(rx := rx, et := et)) AS first
    FROM rows GROUP BY device_id, seq
),
messages AS (
    SELECT d.device_id, d.seq, d.deliveries,
           f.first.rx AS rx,
           (CAST(floor(f.first.et / $window) AS BIGINT) * $window) AS window_start
    FROM deliveries d JOIN first_delivery f USING (device_id, seq)
)
SELECT device_id,
       count(*) AS received,
       sum(deliveries - 1) AS duplicated,
       sum(CASE WHEN rx >= window_start + $window + $lateness THEN 1 ELSE 0 END) AS late
FROM messages
GROUP BY device_id
ORDER BY device_id
"""


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    root, window, lateness = Path(argv[1]), int(argv[2]), int(argv[3])
    files = sorted(str(p) for p in root.rglob("*.parquet") if p.is_file())
    if not files:
        print(f"ledger_check: no *.parquet file under {root}", file=sys.stderr)
        return 2
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(
            SQL, {"files": files, "window": window, "lateness": lateness}
        ).fetchall()
    finally:
        con.close()
    per_device = {
        d: {"received": int(r), "duplicated": int(dup), "late": int(late)}
        for d, r, dup, late in rows
    }
    out = {
        key: sum(v[key] for v in per_device.values())
        for key in ("received", "duplicated", "late")
    }
    out["per_device"] = per_device
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Reference 1-minute statistics of raw device payloads, computed with DuckDB SQL
(run with $IOTPIPE_TEST_PYTHON). The pipeline's aggregates are compared against this.

    reference_stats.py RAW.jsonl COLUMNS.json

COLUMNS.json is the pipeline's own list of stats columns (`iotpipe schema --json stats_1m`):
the output has exactly those columns, in that order, so this check never keeps a copy of
the list. Each column needs a SQL definition below (KEYS or AGGREGATES); a column without
one is an error, not a silent gap.

RAW.jsonl holds one MQTT payload per line: a message object

    {"device_id":"sensor-000042","seq":12345,"ts":1764078300123,
     "metrics":{"temperature":21.53,"humidity":40.1},"fw":"1.4.2"}

or a JSON array of such objects (a device-side batch; each element judged on its own).
Messages that break the data contract are skipped, as the pipeline quarantines them
(the rules of telemetry/src/validate.rs, minus the topic and the receive-time window,
which a file does not carry):

  * the whole line: over 128 KiB, not UTF-8, not JSON (NaN/Infinity literals included),
    a number out of f64 range (e.g. 1e999), an empty array;
  * one message: not an object; device_id not a string matching ^[A-Za-z0-9_:-]{1,128}$;
    seq not an integer in [0, 2^63-1]; ts not an integer in i64; metrics not an object of
    1..64 entries named ^[a-z][a-z0-9_]{0,63}$ with finite numeric values; fw present,
    not null and not a string. Unknown fields are ignored.

Everything after validation is SQL: the accepted messages are exploded to long rows
(device_id, seq, event_time = ts, metric, value), de-duplicated on (device_id, seq, event_time, metric)
keeping the first in file order, and aggregated per (device_id, metric, window_start =
event_time floored to the minute): count, min, max, sum, mean (avg), stddev (stddev_samp,
null when count = 1), p50/p95/p99 (quantile_cont, linear interpolation), first_event,
last_event (min/max event_time). Prints a JSON array sorted by (device_id, metric,
window_start); times are epoch-millisecond integers. A summary goes to stderr.

DuckDB runs single-threaded so that floating-point sums are reproducible run to run.
"""

from __future__ import annotations

import json
import math
import re
import sys

import duckdb
import pyarrow as pa

MAX_PAYLOAD_BYTES = 128 * 1024
MAX_METRICS = 64
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
DEVICE_RE = re.compile(r"[A-Za-z0-9_:-]{1,128}")
METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class _RejectLine(Exception):
    """The whole payload is rejected (as serde_json would fail on it)."""


def _parse_constant(name: str):
    raise _RejectLine(f"{name} is not JSON")


def _parse_float(s: str) -> float:
    x = float(s)
    if not math.isfinite(x):
        raise _RejectLine(f"number out of range: {s[:40]}")
    return x


def _parse_int(s: str):
    n = int(s)
    if n == 0 and s.startswith("-"):
        return -0.0  # serde_json reads "-0" as a float: not an integer seq/ts
    if not (I64_MIN <= n <= 2**64 - 1):
        # serde_json falls back to f64 for integers outside i64/u64; beyond f64 it fails.
        try:
            return float(n)
        except OverflowError:
            raise _RejectLine(f"number out of range: {s[:40]}") from None
    return n


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_message(obj):
    """Returns (device_id, seq, ts, {metric: float}) or None when the message is invalid."""
    if not isinstance(obj, dict):
        return None
    device_id = obj.get("device_id")
    if not isinstance(device_id, str) or not DEVICE_RE.fullmatch(device_id):
        return None
    seq = obj.get("seq")
    if not _is_int(seq) or not (0 <= seq <= I64_MAX):
        return None
    ts = obj.get("ts")
    if not _is_int(ts) or not (I64_MIN <= ts <= I64_MAX):
        return None
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict) or not (1 <= len(metrics) <= MAX_METRICS):
        return None
    values = {}
    for name, v in metrics.items():
        if not METRIC_RE.fullmatch(name) or not _is_num(v):
            return None
        try:
            x = float(v)
        except OverflowError:
            return None
        if not math.isfinite(x):
            return None
        values[name] = x
    fw = obj.get("fw")
    if fw is not None and not isinstance(fw, str):
        return None
    return device_id, seq, ts, values


def load(path: str):
    """Reads RAW.jsonl; returns (accepted messages, counters)."""
    accepted = []
    stats = {"lines": 0, "messages": 0, "accepted": 0, "rejected": 0}
    with open(path, "rb") as f:
        for raw in f:
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            stats["lines"] += 1
            try:
                if len(raw) > MAX_PAYLOAD_BYTES:
                    raise _RejectLine("oversize")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise _RejectLine("not UTF-8") from None
                try:
                    value = json.loads(
                        text,
                        parse_constant=_parse_constant,
                        parse_float=_parse_float,
                        parse_int=_parse_int,
                    )
                except ValueError:
                    raise _RejectLine("bad JSON") from None
                if isinstance(value, list):
                    if not value:
                        raise _RejectLine("empty batch")
                    items = value
                else:
                    items = [value]
            except _RejectLine:
                stats["messages"] += 1
                stats["rejected"] += 1
                continue
            for item in items:
                stats["messages"] += 1
                msg = check_message(item)
                if msg is None:
                    stats["rejected"] += 1
                else:
                    stats["accepted"] += 1
                    accepted.append(msg)
    return accepted, stats


QUERY = """
WITH exploded AS (
    SELECT ord, device_id, seq, ts, unnest(map_entries(metrics)) AS entry
    FROM messages
),
long AS (
    SELECT ord, device_id, seq, ts AS event_time, entry.key AS metric, entry.value AS value
    FROM exploded
),
dedup AS (
    SELECT * FROM long
    QUALIFY row_number() OVER (PARTITION BY device_id, seq, event_time, metric ORDER BY ord) = 1
),
windowed AS (
    SELECT *,
           -- floor to the minute, also for negative times (% keeps the dividend's sign)
           event_time - (((event_time % 60000) + 60000) % 60000) AS window_start
    FROM dedup
)
SELECT {select}
FROM windowed
GROUP BY device_id, metric, window_start
ORDER BY device_id, metric, window_start
"""

# The grouping keys and the statistics, by column name: the reference definitions. Which of
# them are output, and in which order, comes from COLUMNS.json.
KEYS = ("device_id", "metric", "window_start")
AGGREGATES = {
    "count": "count(*)",
    "min": "min(value)",
    "max": "max(value)",
    "sum": "sum(value)",
    "mean": "avg(value)",
    "stddev": "stddev_samp(value)",
    "p50": "quantile_cont(value, 0.5)",
    "p95": "quantile_cont(value, 0.95)",
    "p99": "quantile_cont(value, 0.99)",
    "first_event": "min(event_time)",
    "last_event": "max(event_time)",
}


def load_columns(path: str) -> list[dict]:
    """Reads `iotpipe schema --json stats_1m`; fails on a column with no definition here."""
    with open(path, encoding="utf-8") as f:
        # Internal columns (m2, sketch) are merge state, not query output.
        columns = [c for c in json.load(f) if not c.get("internal")]
    names = [c["name"] for c in columns]
    unknown = [n for n in names if n not in KEYS and n not in AGGREGATES]
    if unknown:
        raise SystemExit(
            f"reference_stats.py: no SQL definition for stats column(s) {unknown}: "
            "add them to AGGREGATES"
        )
    missing = [n for n in KEYS if n not in names]
    if missing:
        raise SystemExit(f"reference_stats.py: grouping key(s) {missing} not in {path}")
    return columns


def select_list(columns: list[dict]) -> str:
    return ",\n       ".join(
        c["name"] if c["name"] in KEYS else f'{AGGREGATES[c["name"]]} AS "{c["name"]}"'
        for c in columns
    )


def compute(messages, columns: list[dict]) -> list[dict]:
    table = pa.table(
        {
            "ord": pa.array(range(len(messages)), pa.int64()),
            "device_id": pa.array([m[0] for m in messages], pa.string()),
            "seq": pa.array([m[1] for m in messages], pa.int64()),
            "ts": pa.array([m[2] for m in messages], pa.int64()),
            "metrics": pa.array(
                [list(m[3].items()) for m in messages], pa.map_(pa.string(), pa.float64())
            ),
        }
    )
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET threads = 1")
        con.register("messages", table)
        cur = con.execute(QUERY.format(select=select_list(columns)))
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.close()
    out = []
    for r in rows:
        rec = dict(zip(cols, r))
        for c in columns:
            k, x = c["name"], rec[c["name"]]
            if c["type"] in ("bigint", "timestamp"):
                rec[k] = int(x)
            elif c["type"] == "double":
                # JSON has no inf/nan (a sum can overflow): report null.
                rec[k] = float(x) if x is not None and math.isfinite(x) else None
        out.append(rec)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    columns = load_columns(argv[2])
    messages, stats = load(argv[1])
    result = compute(messages, columns)
    json.dump(result, sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    print(
        "reference_stats: {lines} lines, {messages} messages, {accepted} accepted, "
        "{rejected} rejected, {n} windows".format(n=len(result), **stats),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

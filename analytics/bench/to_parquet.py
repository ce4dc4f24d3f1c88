#!/usr/bin/env python3
"""Writes benchmark payloads (one message per line, see mix.py) as telemetry Parquet in
the pipeline's layout and schema, without running the pipeline: DATA/telemetry/dt=…/
hour=…/part-NNNN.parquet, one file per `--per-file` lines in file order (as Firehose
would buffer them), zstd, dictionary strings. Run with $IOTPIPE_TEST_PYTHON (pyarrow).

    to_parquet.py bench.jsonl DATA [--per-file 20000]
"""

import argparse
import json
import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("device_id", pa.dictionary(pa.int32(), pa.string())),
    ("seq", pa.int64()),
    ("event_time", pa.timestamp("ms", tz="UTC")),
    ("received_at", pa.timestamp("ms", tz="UTC")),
    ("metric", pa.dictionary(pa.int32(), pa.string())),
    ("value", pa.float64()),
    ("fw", pa.string()),
])


def flush(rows, data: Path, n: int) -> None:
    by_part = {}
    for r in rows:
        t = dt.datetime.fromtimestamp(r[2] / 1000, dt.timezone.utc)
        by_part.setdefault((t.strftime("%Y-%m-%d"), t.strftime("%H")), []).append(r)
    for (day, hour), part in by_part.items():
        cols = list(zip(*part))
        table = pa.table([
            pa.array(cols[0]).dictionary_encode(), pa.array(cols[1], pa.int64()),
            pa.array(cols[2], pa.timestamp("ms", tz="UTC")),
            pa.array(cols[3], pa.timestamp("ms", tz="UTC")),
            pa.array(cols[4]).dictionary_encode(), pa.array(cols[5], pa.float64()),
            pa.array(cols[6], pa.string()),
        ], schema=SCHEMA)
        folder = data / "telemetry" / f"dt={day}" / f"hour={hour}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"part-{n:04d}.parquet", compression="zstd")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("payloads")
    ap.add_argument("data", type=Path)
    ap.add_argument("--per-file", type=int, default=20000)
    a = ap.parse_args()
    rows, lines, n = [], 0, 0
    with open(a.payloads) as f:
        for line in f:
            m = json.loads(line)
            for name, value in m["metrics"].items():
                rows.append((m["device_id"], m["seq"], m["ts"], m["ts"] + 200, name,
                             float(value), m.get("fw")))
            lines += 1
            if lines % a.per_file == 0:
                flush(rows, a.data, n)
                rows, n = [], n + 1
    if rows:
        flush(rows, a.data, n)


if __name__ == "__main__":
    main()

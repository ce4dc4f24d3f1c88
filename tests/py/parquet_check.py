#!/usr/bin/env python3
"""Independent reader of the pipeline's Parquet output (run with $IOTPIPE_TEST_PYTHON).

    parquet_check.py DIR

Finds every *.parquet under DIR (recursively), reads each with pyarrow and prints ONE JSON
object on stdout:

    {"files": N, "rows": total_rows, "schemas": [distinct schema strings],
     "per_file": [{"path": rel_path, "rows": n,
                   "columns": [{"name": ..., "type": str(arrow type)}]}],
     "distinct_readings": K}

distinct_readings is the number of distinct (device_id, seq, metric) tuples over all files
that have those three columns, counted twice, independently: with DuckDB SQL and with
pyarrow. Exit status: 0 ok; 1 when the two counts disagree or a file cannot be read (the
JSON is still printed when it could be built); 2 when DIR holds no Parquet file.

Files are read one by one (no hive partition columns are added from the path), so the
columns reported are exactly those stored in each file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

KEY = ("device_id", "seq", "metric")


def _plain(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary-decodes and normalises a key column so that files can be combined."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return arr.cast(pa.large_string())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return arr.cast(pa.large_binary())
    if pa.types.is_integer(t):
        # Decimal text is exact for every integer width and sign (uint64 does not fit
        # int64), so files with int32/int64/uint64 keys still combine.
        return pc.cast(arr, pa.large_string())
    return arr


def distinct_pyarrow(tables: list[pa.Table]) -> int:
    if not tables:
        return 0
    parts = [pa.table({k: _plain(t.column(k)) for k in KEY}) for t in tables]
    combined = pa.concat_tables(parts, promote_options="permissive")
    return combined.group_by(list(KEY)).aggregate([]).num_rows


def distinct_duckdb(paths: list[Path]) -> int:
    if not paths:
        return 0
    con = duckdb.connect(":memory:")
    try:
        row = con.execute(
            """
            SELECT count(*) FROM (
                SELECT DISTINCT device_id, seq, metric
                FROM read_parquet($files, union_by_name = true, hive_partitioning = false)
            )
            """,
            {"files": [str(p) for p in paths]},
        ).fetchone()
    finally:
        con.close()
    return int(row[0])


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    root = Path(argv[1])
    if not root.is_dir():
        print(f"parquet_check: {root} is not a directory", file=sys.stderr)
        return 2
    files = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    if not files:
        print(f"parquet_check: no *.parquet file under {root}", file=sys.stderr)
        return 2

    per_file = []
    schemas: list[str] = []
    total = 0
    key_tables: list[pa.Table] = []
    key_paths: list[Path] = []
    errors = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            # partitioning=None: the file's own columns, none derived from directory names.
            table = pq.read_table(path, partitioning=None)
        except Exception as e:  # noqa: BLE001 - any reader error is a failed check
            errors.append(f"{rel}: {type(e).__name__}: {e}")
            continue
        schema_str = table.schema.to_string(show_schema_metadata=False)
        if schema_str not in schemas:
            schemas.append(schema_str)
        per_file.append(
            {
                "path": rel,
                "rows": table.num_rows,
                "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
            }
        )
        total += table.num_rows
        if all(k in table.column_names for k in KEY):
            key_tables.append(table.select(list(KEY)))
            key_paths.append(path)

    if errors:
        for e in errors:
            print(f"parquet_check: cannot read {e}", file=sys.stderr)
        return 1

    by_arrow = distinct_pyarrow(key_tables)
    by_duckdb = distinct_duckdb(key_paths)
    out = {
        "files": len(per_file),
        "rows": total,
        "schemas": schemas,
        "per_file": per_file,
        "distinct_readings": by_duckdb,
    }
    print(json.dumps(out))
    if by_arrow != by_duckdb:
        print(
            f"parquet_check: distinct (device_id, seq, metric): duckdb {by_duckdb} "
            f"!= pyarrow {by_arrow}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

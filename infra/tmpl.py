#!/usr/bin/env python3
"""Line-level reader for infra/template.yaml (stdlib only, no YAML library).

The template keeps a few things in a fixed one-line form so that simple tools (this script,
the Rust schema test, the deploy script's dry run) can read them without a YAML parser:

* resources: a two-space-indented ``LogicalId:`` under ``Resources:`` followed by
  ``    Type: AWS::...``;
* Glue columns: ``# generated: iotpipe schema --glue <table>; ...`` then ``Columns:`` then
  one ``- { Name: <name>, Type: <type> }`` per line.

Usage:
  tmpl.py resources TEMPLATE            print "LogicalId<TAB>Type<TAB>Condition" per resource
                                        (Condition: the ``    Condition: X`` line right
                                        after Type, or empty)
  tmpl.py glue-columns TABLE TEMPLATE   print "name type" per column of TABLE
  tmpl.py check-glue TEMPLATE           check both tables' generated blocks are well formed
"""

from __future__ import annotations

import re
import sys

GENERATED_RE = re.compile(r"^\s*# generated: iotpipe schema --glue (\w+);")
COLUMN_RE = re.compile(r"^\s*- \{ Name: ([A-Za-z0-9_]+), Type: ([a-z0-9_<>,:()]+) \}\s*$")
RESOURCE_RE = re.compile(r"^  ([A-Za-z0-9]+):\s*$")
TYPE_RE = re.compile(r"^    Type:\s*([A-Za-z0-9:]+)\s*$")

# The tables whose Glue columns are generated. Their columns are defined once, in Rust
# (the Arrow schemas); tests/tests/glue_schema.rs compares each block with
# `iotpipe schema --glue <table>`. This script only checks that the blocks are there and
# well formed, so a broken block is caught before any Rust is built.
GENERATED_TABLES = (
    "telemetry",
    "stats_1m",
    "stats_1h",
    "stats_1d",
    "stats_fleet_1m",
    "stats_fleet_1h",
    "stats_fleet_1d",
)
GLUE_TYPES = {"string", "bigint", "int", "double", "boolean", "timestamp", "binary"}


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


CONDITION_RE = re.compile(r"^    Condition:\s*([A-Za-z0-9]+)\s*$")


def resources(lines: list[str]) -> list[tuple[str, str, str]]:
    """(logical id, type, condition or "") of every resource, in template order."""
    out: list[tuple[str, str, str]] = []
    in_resources = False
    pending: str | None = None
    typed = False
    for line in lines:
        if typed:
            typed = False
            m = CONDITION_RE.match(line)
            if m:
                out[-1] = (out[-1][0], out[-1][1], m.group(1))
                continue
        if re.match(r"^[A-Za-z]", line):
            in_resources = line.startswith("Resources:")
            pending = None
            continue
        if not in_resources:
            continue
        m = RESOURCE_RE.match(line)
        if m:
            pending = m.group(1)
            continue
        m = TYPE_RE.match(line)
        if m and pending:
            out.append((pending, m.group(1), ""))
            pending = None
            typed = True
    return out


def glue_columns(lines: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Columns of each table that carries the ``# generated:`` marker."""
    tables: dict[str, list[tuple[str, str]]] = {}
    i = 0
    while i < len(lines):
        m = GENERATED_RE.match(lines[i])
        if not m:
            i += 1
            continue
        table = m.group(1)
        if table in tables:
            raise ValueError(f"table {table}: more than one '# generated:' marker")
        i += 1
        if i >= len(lines) or lines[i].strip() != "Columns:":
            raise ValueError(f"table {table}: 'Columns:' must follow the '# generated:' line")
        i += 1
        cols: list[tuple[str, str]] = []
        while i < len(lines) and lines[i].lstrip().startswith("- "):
            cm = COLUMN_RE.match(lines[i])
            if not cm:
                raise ValueError(
                    f"table {table}: line {i + 1} is not '- {{ Name: x, Type: y }}': {lines[i]!r}"
                )
            cols.append((cm.group(1), cm.group(2)))
            i += 1
        if not cols:
            raise ValueError(f"table {table}: no columns after the marker")
        tables[table] = cols
    return tables


def check_glue(path: str) -> int:
    try:
        tables = glue_columns(read_lines(path))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    status = 0
    for table in GENERATED_TABLES:
        got = tables.get(table)
        if got is None:
            print(f"error: no '# generated: iotpipe schema --glue {table};' block", file=sys.stderr)
            status = 1
            continue
        odd = [(n, t) for n, t in got if t not in GLUE_TYPES]
        if odd:
            print(f"error: {table}: types the schema never generates: {odd}", file=sys.stderr)
            status = 1
        else:
            print(
                f"{table}: {len(got)} well-formed columns "
                "(their contents: tests/tests/glue_schema.rs against `iotpipe schema --glue`)"
            )
    return status


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "resources":
        for logical_id, rtype, condition in resources(read_lines(argv[2])):
            print(f"{logical_id}\t{rtype}\t{condition}")
        return 0
    if len(argv) == 4 and argv[1] == "glue-columns":
        cols = glue_columns(read_lines(argv[3])).get(argv[2])
        if cols is None:
            print(f"error: no generated column block for table {argv[2]}", file=sys.stderr)
            return 1
        for name, typ in cols:
            print(f"{name} {typ}")
        return 0
    if len(argv) == 3 and argv[1] == "check-glue":
        return check_glue(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
